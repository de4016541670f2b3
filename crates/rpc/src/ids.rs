//! ULID-style identifiers: 48 bits of unix milliseconds then 80 random bits, written as 26
//! characters of Crockford base32, so ids sort by creation time and never collide in practice.
//! Event ids are `evt_<ulid>`, trace ids `tr_<ulid>`, subscriptions `sub_<ulid>`.

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Length of the ULID part of an id.
pub const ULID_LEN: usize = 26;

/// Random bytes fetched from the OS per refill; one refill serves 409 ids.
const POOL_LEN: usize = 4096;

/// Why no id could be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

/// Encodes a 48-bit timestamp and 80 random bits as a 26-character ULID.
pub fn ulid(ms: u64, random: [u8; 10]) -> String {
    prefixed_ulid("", ms, random)
}

/// `prefix` followed by the ULID, built in one allocation.
fn prefixed_ulid(prefix: &str, ms: u64, random: [u8; 10]) -> String {
    let mut value: u128 = u128::from(ms & 0xFFFF_FFFF_FFFF) << 80;
    for (index, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (8 * (9 - index));
    }
    let mut text = String::with_capacity(prefix.len() + ULID_LEN);
    text.push_str(prefix);
    for position in 0..ULID_LEN {
        let shift = 5 * (ULID_LEN - 1 - position);
        // The mask keeps the index below 32, the alphabet's length.
        let digit = ((value >> shift) & 0x1F) as usize;
        text.push(char::from(ALPHABET[digit]));
    }
    text
}

/// Makes ids, drawing randomness from the OS in blocks so that an id costs no system call.
/// Owned by one thread (the store's writer); not shared.
pub struct IdGenerator {
    pool: Box<[u8; POOL_LEN]>,
    position: usize,
}

impl IdGenerator {
    /// A generator whose pool is filled on first use.
    pub fn new() -> IdGenerator {
        IdGenerator {
            pool: Box::new([0; POOL_LEN]),
            position: POOL_LEN,
        }
    }

    fn random10(&mut self) -> Result<[u8; 10], RandomError> {
        if self.position + 10 > POOL_LEN {
            getrandom::fill(&mut self.pool[..]).map_err(|error| RandomError(error.to_string()))?;
            self.position = 0;
        }
        let mut out = [0u8; 10];
        out.copy_from_slice(&self.pool[self.position..self.position + 10]);
        self.position += 10;
        Ok(out)
    }

    /// A fresh `evt_` id for an event created at `ms`.
    pub fn event_id(&mut self, ms: u64) -> Result<String, RandomError> {
        Ok(prefixed_ulid("evt_", ms, self.random10()?))
    }

    /// A fresh `tr_` id for a trace started at `ms`.
    pub fn trace_id(&mut self, ms: u64) -> Result<String, RandomError> {
        Ok(prefixed_ulid("tr_", ms, self.random10()?))
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

thread_local! {
    static GENERATOR: std::cell::RefCell<IdGenerator> = std::cell::RefCell::new(IdGenerator::new());
}

/// A new `<prefix>_<ulid>` id from this thread's generator.
pub fn prefixed(prefix: &str) -> String {
    let ms = crate::time::now_ms();
    let random = GENERATOR.with(|generator| generator.borrow_mut().random10());
    let random = random.unwrap_or_else(|_| {
        // Without an OS random source, a per-process counter mixed with the time keeps ids unique.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) ^ ms.rotate_left(17);
        let mut bytes = [0u8; 10];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        bytes
    });
    prefixed_ulid(&format!("{prefix}_"), ms, random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn known_encoding() {
        assert_eq!(ulid(0, [0; 10]), "00000000000000000000000000");
        assert_eq!(ulid(0xFFFF_FFFF_FFFF, [0xFF; 10]), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        // The first ten characters carry the time: 1 ms is the last time digit.
        assert_eq!(&ulid(1, [0; 10])[..10], "0000000001");
        assert_eq!(&ulid(32, [0; 10])[..10], "0000000010");
    }

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let mut generator = IdGenerator::new();
        let early = generator.event_id(1_700_000_000_000).unwrap();
        let late = generator.event_id(1_700_000_000_001).unwrap();
        assert!(early < late);
        assert!(early.starts_with("evt_") && early.len() == 4 + ULID_LEN);
        let trace = generator.trace_id(5).unwrap();
        assert!(trace.starts_with("tr_") && trace.len() == 3 + ULID_LEN);
        assert!(aiventbus_proto::event::validate_prefixed_id(&early, "evt_").is_ok());
        assert!(aiventbus_proto::event::validate_prefixed_id(&trace, "tr_").is_ok());

        let seen: HashSet<String> = (0..5000).map(|_| generator.event_id(42).unwrap()).collect();
        assert_eq!(seen.len(), 5000, "ids made in the same millisecond collide");
    }
}
