//! `Transfer-Encoding: chunked` (RFC 9112 §7.1): a decoder that works on a read buffer, and the
//! encoder's framing.

use bytes::{Buf, Bytes, BytesMut};

use super::H1Error;

/// Longest chunk-size line (size, extensions, CRLF) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted (they are read and dropped).
const MAX_TRAILERS: usize = 64 * 1024;

/// Where the decoder is within the chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting `<hex size>[;ext]\r\n`.
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines until an empty one; `usize` counts bytes.
    Trailers(usize),
    /// The body is complete.
    Done,
}

/// Decodes a chunked body from a connection's read buffer.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body data (never empty).
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The body ended (the last chunk and the trailers were consumed).
    End,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size }
    }
}

impl Decoder {
    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes what it can from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(H1Error::Chunked("trailers over 64 KiB"));
                    }
                    self.state = State::Trailers(seen);
                }
            }
        }
    }
}

/// The next CRLF-terminated line (without the CRLF), or `None` when it is not all there yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, H1Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > MAX_LINE => Err(H1Error::Chunked("chunk line over 4 KiB")),
        Some(end) => {
            let line = buf.split_to(end);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(H1Error::Chunked("chunk line over 4 KiB")),
        None => Ok(None),
    }
}

/// `<hex>[ ;ext...]`: at most 16 hex digits, optional whitespace before extensions.
fn parse_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(H1Error::Chunked("invalid chunk size"));
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty()
        || rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .is_none_or(|i| rest[i] == b';');
    if !rest_ok {
        return Err(H1Error::Chunked("invalid chunk size"));
    }
    let hex =
        std::str::from_utf8(&line[..digits]).map_err(|_| H1Error::Chunked("invalid chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| H1Error::Chunked("invalid chunk size"))
}

/// Appends the framing line before a chunk of `len` bytes (formatted in place).
pub fn push_chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write as _;
    let _ = write!(out, "{len:X}\r\n");
}

/// The last chunk, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool, usize), H1Error> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((out, true, buf.len())),
                }
            }
        }
        Ok((out, d.is_done(), buf.len()))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers_at_any_split() {
        let body = b"5\r\nhello\r\n7;name=v\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 1..body.len() {
            let (out, done, left) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello, world", "split {split}");
            assert!(done, "split {split}");
            // The bytes after the body (a next response) stay in the buffer.
            assert!(left <= 4, "split {split}");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"12345678901234567\r\n",
            b"5 x\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'a'; 5000];
        assert!(decode_all(&long, 5000).is_err());
    }

    #[test]
    fn encodes_chunk_headers() {
        let mut out = Vec::new();
        push_chunk_header(&mut out, 255);
        assert_eq!(out, b"FF\r\n");
        assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    }
}
