//! Newline-delimited framing with a hard size limit: a frame is one line without its `\n`. A line
//! longer than the limit is an error the connection answers with -32006 before closing.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The line exceeded the limit.
    #[error("message longer than {0} bytes")]
    TooLong(usize),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    scanned: usize,
}

impl LineCodec {
    /// A codec with a limit of `max` bytes per line (the newline not counted).
    pub fn new(max: usize) -> LineCodec {
        LineCodec { max, scanned: 0 }
    }
}

impl Decoder for LineCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let start = self.scanned;
        match memchr_newline(&buf[start..]) {
            Some(offset) => {
                let end = start + offset;
                self.scanned = 0;
                if end > self.max {
                    return Err(FrameError::TooLong(self.max));
                }
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                Ok(Some(line))
            }
            None => {
                if buf.len() > self.max {
                    return Err(FrameError::TooLong(self.max));
                }
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None if buf.iter().all(u8::is_ascii_whitespace) => {
                buf.advance(buf.len());
                Ok(None)
            }
            None => {
                // A last line without its newline still counts as a message.
                self.scanned = 0;
                Ok(Some(buf.split_to(buf.len())))
            }
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_limits_length() {
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"abc\r\ndef\nxy"[..]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"abc");
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"def");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(&codec.decode_eof(&mut buf).unwrap().unwrap()[..], b"xy");

        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLong(8))));
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"012345678\n"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLong(8))));
        let mut buf = BytesMut::from(&b"01234567\n"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 8);
    }
}
