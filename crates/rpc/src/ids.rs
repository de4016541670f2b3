//! Prefixed ULID identifiers (`evt_…`, `tr_…`, `sub_…`): 48 bits of milliseconds then 80 random
//! bits, Crockford base32, so ids sort by creation time and never collide in practice.

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new 26-character ULID.
pub fn ulid() -> String {
    let mut random = [0u8; 10];
    if getrandom::fill(&mut random).is_err() {
        // Without an OS RNG fall back to hashing time and a counter; ids stay unique per process.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) ^ crate::time::now_ms().rotate_left(17);
        random[..8].copy_from_slice(&n.to_le_bytes());
    }
    encode(crate::time::now_ms(), random)
}

fn encode(ms: u64, random: [u8; 10]) -> String {
    let mut value: u128 = u128::from(ms & 0xFFFF_FFFF_FFFF) << 80;
    for (i, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (72 - 8 * i);
    }
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as u32;
        *slot = ALPHABET[((value >> shift) & 0x1F) as usize];
    }
    // The alphabet is ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

/// `<prefix>_<ulid>`.
pub fn prefixed(prefix: &str) -> String {
    format!("{prefix}_{}", ulid())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape_and_order() {
        let a = super::encode(1, [0; 10]);
        let b = super::encode(2, [0xFF; 10]);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert_eq!(super::encode(0, [0; 10]), "0".repeat(26));
        let id = super::prefixed("evt");
        assert!(id.starts_with("evt_") && id.len() == 30);
        assert_ne!(super::ulid(), super::ulid());
    }
}
