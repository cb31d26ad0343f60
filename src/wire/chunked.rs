//! Chunked framing (RFC 9112 7.1), read strictly and a byte at a time, so the same decoder serves a reader
//! that keeps what it reads (the backend response reader) and one that only follows it (the framing watch
//! on client connections):
//!
//! ```text
//! chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size = 1*HEXDIG                      (at most 16 digits' worth: it must fit in 64 bits)
//! chunk-ext  = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )   (no control characters)
//! last-chunk = 1*("0") [ chunk-ext ] CRLF
//! trailers   = *( field-line CRLF ) CRLF
//! ```
//!
//! Every line ends with CRLF: a bare LF anywhere in the framing is malformed, as are whitespace after a size
//! without an extension, and a size line or trailer section over its limit. Stricter than hyper's reading,
//! never looser, so the two never accept one stream with different meanings.

/// The longest chunk-size line, extensions included.
pub const MAX_SIZE_LINE: usize = 4096;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line.
    SizeStart,
    /// In the hex digits of a chunk size.
    Size(u64),
    /// Whitespace after the size: an extension must follow.
    BeforeExtension(u64),
    /// In chunk extensions, up to the line's CR.
    Extension(u64),
    /// The size line's CR was seen.
    SizeLf(u64),
    /// Chunk data, this many bytes of it left.
    Data(u64),
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the empty line that ends the body.
    TrailerStart,
    TrailerLine,
    /// A trailer line's CR was seen; `empty` when the line was empty, which ends the body.
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// What the bytes at the front of the input were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many bytes of framing (size lines, the CRLF after data) were read.
    Framing(usize),
    /// The next this many bytes are chunk data.
    Data(usize),
    /// This many bytes of the trailer section were read (ending with its empty line once the body is done):
    /// the caller keeps them if it wants the fields.
    Trailers(usize),
}

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// A chunked body's decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    state: State,
    /// Bytes of the current size line, or of the trailer section, so far.
    line: usize,
    max_trailers: usize,
}

impl Decoder {
    /// A decoder at the start of a body whose trailer section may be `max_trailers` bytes long.
    pub fn new(max_trailers: usize) -> Self {
        Self {
            state: State::SizeStart,
            line: 0,
            max_trailers,
        }
    }

    /// True once the body has ended (its trailer section too).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True between the last chunk and the end of the body.
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart | State::TrailerLine | State::TrailerLf { .. }
        )
    }

    /// Reads from the front of `input` up to the next boundary between framing, data and trailers (or its
    /// end). `Framing(0)` means there was nothing to read: the input was empty, or the body is done.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, Malformed> {
        match self.state {
            State::Done => Ok(Step::Framing(0)),
            State::Data(left) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                self.state = if take as u64 == left {
                    State::DataCr
                } else {
                    State::Data(left - take as u64)
                };
                Ok(Step::Data(take))
            }
            _ if self.in_trailers() => {
                let mut used = 0;
                for &byte in input {
                    used += 1;
                    self.line += 1;
                    if self.line > self.max_trailers {
                        return Err(Malformed("trailer section too large"));
                    }
                    self.state = self.trailer_byte(byte)?;
                    if self.state == State::Done {
                        break;
                    }
                }
                Ok(Step::Trailers(used))
            }
            _ => {
                let mut used = 0;
                for &byte in input {
                    used += 1;
                    self.line += 1;
                    if self.line > MAX_SIZE_LINE {
                        return Err(Malformed("chunk size line too long"));
                    }
                    self.state = self.framing_byte(byte)?;
                    if matches!(self.state, State::Data(_) | State::TrailerStart) {
                        self.line = 0;
                        break;
                    }
                    if self.state == State::SizeStart {
                        self.line = 0;
                    }
                }
                Ok(Step::Framing(used))
            }
        }
    }

    fn framing_byte(&self, byte: u8) -> Result<State, Malformed> {
        const BAD_SIZE: Malformed = Malformed("invalid chunk size");
        const NO_CRLF: Malformed = Malformed("chunk framing line not ended by CRLF");
        Ok(match self.state {
            State::SizeStart => State::Size(hex(byte).ok_or(BAD_SIZE)?),
            State::Size(size) => match byte {
                b';' => State::Extension(size),
                b' ' | b'\t' => State::BeforeExtension(size),
                b'\r' => State::SizeLf(size),
                _ => {
                    let digit = hex(byte).ok_or(BAD_SIZE)?;
                    let shifted = size.checked_mul(16).ok_or(Malformed("chunk size too large"))?;
                    State::Size(shifted + digit)
                }
            },
            State::BeforeExtension(size) => match byte {
                b' ' | b'\t' => self.state,
                b';' => State::Extension(size),
                _ => return Err(Malformed("whitespace after a chunk size without an extension")),
            },
            State::Extension(size) => match byte {
                b'\r' => State::SizeLf(size),
                b'\t' => self.state,
                _ if byte < 0x20 || byte == 0x7f => return Err(Malformed("control character in a chunk extension")),
                _ => self.state,
            },
            State::SizeLf(size) => match byte {
                b'\n' if size == 0 => State::TrailerStart,
                b'\n' => State::Data(size),
                _ => return Err(NO_CRLF),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(Malformed("chunk data not followed by CRLF")),
            },
            State::DataLf => match byte {
                b'\n' => State::SizeStart,
                _ => return Err(Malformed("chunk data not followed by CRLF")),
            },
            State::Data(_) | State::TrailerStart | State::TrailerLine | State::TrailerLf { .. } | State::Done => {
                self.state
            }
        })
    }

    fn trailer_byte(&self, byte: u8) -> Result<State, Malformed> {
        Ok(match (self.state, byte) {
            (State::TrailerStart, b'\r') => State::TrailerLf { empty: true },
            (State::TrailerLine, b'\r') => State::TrailerLf { empty: false },
            (State::TrailerLf { empty: true }, b'\n') => State::Done,
            (State::TrailerLf { empty: false }, b'\n') => State::TrailerStart,
            (State::TrailerLf { .. }, _) | (_, b'\n') => return Err(Malformed("trailer line not ended by CRLF")),
            (_, b'\t') => State::TrailerLine,
            (_, byte) if byte < 0x20 || byte == 0x7f => return Err(Malformed("control character in a trailer")),
            _ => State::TrailerLine,
        })
    }
}

fn hex(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes: the data, the trailer section, and whether the body
    /// ended (or why it is malformed).
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>, bool), Malformed> {
        let mut decoder = Decoder::new(1024);
        let (mut data, mut trailers) = (Vec::new(), Vec::new());
        for mut chunk in input.chunks(piece.max(1)) {
            while !chunk.is_empty() && !decoder.is_done() {
                let used = match decoder.step(chunk)? {
                    Step::Framing(n) => n,
                    Step::Data(n) => {
                        data.extend_from_slice(&chunk[..n]);
                        n
                    }
                    Step::Trailers(n) => {
                        trailers.extend_from_slice(&chunk[..n]);
                        n
                    }
                };
                chunk = &chunk[used..];
            }
        }
        Ok((data, trailers, decoder.is_done()))
    }

    #[test]
    fn bodies_with_and_without_trailers_however_split() {
        let plain = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let trailed = b"3\r\nabc\r\n0 ;last\r\ngrpc-status: 0\r\nx-a: b\r\n\r\n";
        for piece in 1..=plain.len() {
            assert_eq!(
                decode(plain, piece),
                Ok((b"hello world".to_vec(), b"\r\n".to_vec(), true)),
                "{piece}"
            );
            assert_eq!(
                decode(trailed, piece),
                Ok((b"abc".to_vec(), b"grpc-status: 0\r\nx-a: b\r\n\r\n".to_vec(), true)),
                "{piece}"
            );
        }
        assert_eq!(
            decode(b"A\r\n0123456789\r\n", 100),
            Ok((b"0123456789".to_vec(), Vec::new(), false))
        );
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3;a\0\r\nabc\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx: y\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: \x01\r\n\r\n",
        ] {
            assert!(decode(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(decode(bad, bad.len()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let mut long = b"1;".to_vec();
        long.resize(MAX_SIZE_LINE + 10, b'x');
        assert_eq!(decode(&long, 64), Err(Malformed("chunk size line too long")));
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b"x-a: b\r\n".as_slice(), 200).flatten());
        assert_eq!(decode(&trailers, 64), Err(Malformed("trailer section too large")));
    }

    proptest! {
        /// Any body encoded in chunks, with any extensions and trailers, read in any pieces, decodes to
        /// exactly what was encoded.
        #[test]
        fn encoded_bodies_decode_whole(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..8),
            extension in "[a-z]{0,5}",
            trailers in proptest::collection::vec("[a-z]{1,8}: [a-z0-9]{0,8}", 0..3),
            piece in 1usize..64,
        ) {
            let mut encoded = Vec::new();
            let mut expected = Vec::new();
            for chunk in &chunks {
                encoded.extend_from_slice(format!("{:X}", chunk.len()).as_bytes());
                if !extension.is_empty() {
                    encoded.extend_from_slice(format!(" ;{extension}").as_bytes());
                }
                encoded.extend_from_slice(b"\r\n");
                encoded.extend_from_slice(chunk);
                encoded.extend_from_slice(b"\r\n");
                expected.extend_from_slice(chunk);
            }
            encoded.extend_from_slice(b"0\r\n");
            let mut section = Vec::new();
            for field in &trailers {
                section.extend_from_slice(field.as_bytes());
                section.extend_from_slice(b"\r\n");
            }
            section.extend_from_slice(b"\r\n");
            encoded.extend_from_slice(&section);
            prop_assert_eq!(decode(&encoded, piece), Ok((expected, section, true)));
        }
    }
}
