//! Cutting a process's output into `exec.output` chunks: text when the bytes are UTF-8 (an
//! incomplete character at the end of a read is carried into the next chunk, never split), base64
//! otherwise; and the capped copy of the output that goes into an agent's result.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

/// Largest chunk published, in bytes.
pub const CHUNK_MAX: usize = 16 * 1024;

/// Text of each stream kept for an agent's result.
pub const RESULT_MAX: usize = 16 * 1024;

/// One chunk ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Valid UTF-8 (`data`).
    Text(String),
    /// Anything else (`data_b64`).
    Binary(Vec<u8>),
}

impl Chunk {
    /// Adds `data` or `data_b64` to an event payload.
    pub fn write_to(self, payload: &mut Map<String, Value>) {
        match self {
            Chunk::Text(text) => payload.insert("data".into(), Value::String(text)),
            Chunk::Binary(bytes) => payload.insert("data_b64".into(), Value::String(B64.encode(bytes))),
        };
    }
}

/// Per-stream state: the incomplete UTF-8 sequence carried over from the last read.
#[derive(Debug, Default)]
pub struct Chunker {
    carry: Vec<u8>,
}

impl Chunker {
    /// Bytes carried from the previous chunk (at most 3).
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// The chunk to publish for `bytes` (read after the carried ones). With `end` (the stream or
    /// the kept output ended) nothing is carried. `None` when there is nothing to publish yet.
    pub fn cut(&mut self, bytes: &[u8], end: bool) -> Option<Chunk> {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(bytes);
        if data.is_empty() {
            return None;
        }
        match std::str::from_utf8(&data) {
            Ok(_) => Some(Chunk::Text(into_string(data))),
            // The only problem is an incomplete character at the very end: keep it for later.
            Err(error) if error.error_len().is_none() && !end => {
                let valid = error.valid_up_to();
                self.carry = data.split_off(valid);
                (!data.is_empty()).then(|| Chunk::Text(into_string(data)))
            }
            Err(_) => Some(Chunk::Binary(data)),
        }
    }
}

fn into_string(bytes: Vec<u8>) -> String {
    // Checked to be UTF-8 by the caller; the lossy form never copies valid input twice in practice.
    String::from_utf8(bytes).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// Accounting of one stream: what is kept (up to the cap), what the result shows.
#[derive(Debug)]
pub struct Kept {
    cap: u64,
    /// Bytes the process wrote.
    pub total: u64,
    /// Bytes kept (published).
    pub kept: u64,
    /// The start of the output, for the result.
    pub head: Vec<u8>,
}

impl Kept {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: u64) -> Kept {
        Kept {
            cap,
            total: 0,
            kept: 0,
            head: Vec::new(),
        }
    }

    /// Accounts for `bytes` read; returns the part to publish (empty past the cap).
    pub fn admit<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        self.total += bytes.len() as u64;
        let room = self.cap.saturating_sub(self.kept);
        let take = (bytes.len() as u64).min(room) as usize;
        let admitted = &bytes[..take];
        self.kept += take as u64;
        let head_room = RESULT_MAX.saturating_sub(self.head.len());
        self.head.extend_from_slice(&admitted[..admitted.len().min(head_room)]);
        admitted
    }

    /// The cap was reached: everything after it is discarded.
    pub fn full(&self) -> bool {
        self.kept >= self.cap
    }

    /// More was written than kept.
    pub fn truncated(&self) -> bool {
        self.total > self.kept
    }

    /// The start of the output as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_text_and_bytes_are_base64() {
        let mut chunker = Chunker::default();
        assert_eq!(chunker.cut(b"hello", false), Some(Chunk::Text("hello".into())));
        assert_eq!(chunker.cut(b"\xff\xfe", false), Some(Chunk::Binary(vec![0xff, 0xfe])));
        assert_eq!(chunker.cut(b"", false), None);
        let mut payload = Map::new();
        Chunk::Binary(vec![0xff, 0xfe]).write_to(&mut payload);
        assert_eq!(payload["data_b64"], "//4=");
    }

    #[test]
    fn a_character_split_across_reads_is_carried() {
        let euro = "€".as_bytes(); // e2 82 ac
        let mut chunker = Chunker::default();
        let mut first = b"price: ".to_vec();
        first.extend_from_slice(&euro[..2]);
        assert_eq!(chunker.cut(&first, false), Some(Chunk::Text("price: ".into())));
        assert_eq!(chunker.carried(), 2);
        // Only the incomplete part so far: nothing to publish.
        let mut chunker2 = Chunker::default();
        assert_eq!(chunker2.cut(&euro[..1], false), None);
        assert_eq!(chunker2.cut(&euro[1..2], false), None);
        assert_eq!(chunker2.cut(&euro[2..], false), Some(Chunk::Text("€".into())));
        // The rest arrives.
        assert_eq!(chunker.cut(&euro[2..], false), Some(Chunk::Text("€".into())));
        assert_eq!(chunker.carried(), 0);
    }

    #[test]
    fn an_incomplete_character_at_the_end_is_flushed_as_bytes() {
        let mut chunker = Chunker::default();
        assert_eq!(chunker.cut(b"a\xe2\x82", false), Some(Chunk::Text("a".into())));
        assert_eq!(chunker.cut(b"", true), Some(Chunk::Binary(vec![0xe2, 0x82])));
    }

    #[test]
    fn the_cap_keeps_the_start_and_counts_the_rest() {
        let mut kept = Kept::new(5);
        assert_eq!(kept.admit(b"abc"), b"abc");
        assert_eq!(kept.admit(b"defg"), b"de");
        assert!(kept.full());
        assert_eq!(kept.admit(b"hij"), b"");
        assert_eq!((kept.total, kept.kept, kept.truncated()), (10, 5, true));
        assert_eq!(kept.text(), "abcde");

        let mut big = Kept::new(1 << 20);
        big.admit(&vec![b'x'; RESULT_MAX + 10]);
        assert_eq!(big.head.len(), RESULT_MAX);
        assert!(!big.truncated());
    }
}
