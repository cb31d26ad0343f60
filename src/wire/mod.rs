//! HTTP/1 wire syntax (RFC 9110, RFC 9112): the one reading of it that every part of the proxy uses, so
//! that the client side, the backend side and the HTTP/2 and HTTP/3 listeners never disagree on a length,
//! a coding or where a message ends. Disagreement between two parsers of one stream is what request
//! smuggling is made of; here there is one parser per rule.
//!
//! - where a head ends ([`head_end`]), with the line endings httparse accepts, and a backend's response head
//!   read into a status and fields ([`response_head`]);
//! - Content-Length ([`content_length`]): one value, digits only, at most [`MAX_LENGTH_DIGITS`] of them;
//! - Transfer-Encoding ([`transfer_coding`]): exactly `chunked`, or a coding the proxy does not decode;
//! - chunked framing ([`chunked::Decoder`]), shared by the framing watch on client connections and the
//!   response reader on backend connections;
//! - tokens and field values ([`is_token`], [`is_field_value`]);
//! - the WebSocket handshake's Sec-WebSocket-Accept ([`websocket_accept`], RFC 6455 4.2.2).

pub mod chunked;
mod head;

pub use head::{response_head, ResponseHead, MAX_RESPONSE_FIELDS};

/// RFC 6455 1.3: the GUID appended to a WebSocket key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The Sec-WebSocket-Accept that answers a WebSocket handshake's Sec-WebSocket-Key (RFC 6455 4.2.2).
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WEBSOCKET_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Where a head ends: just past its empty line. A line ends with CRLF or a bare LF (RFC 9112 2.2, as
/// httparse reads them), so `\n\n`, `\n\r\n`, `\r\n\n` and `\r\n\r\n` all end a head.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&b| b == b'\n') {
        let newline = from + offset;
        match bytes.get(newline + 1..) {
            Some([b'\n', ..]) => return Some(newline + 2),
            Some([b'\r', b'\n', ..]) => return Some(newline + 3),
            _ => from = newline + 1,
        }
    }
    None
}

/// The most digits a Content-Length may have: 19 digits always fit in a `u64` (and below every limit a
/// parser downstream has), and no body that long will ever be sent.
pub const MAX_LENGTH_DIGITS: usize = 19;

/// Why a Content-Length is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    /// Not 1 to [`MAX_LENGTH_DIGITS`] ASCII digits: a sign, spaces inside, hex, a comma list, nothing.
    #[error("invalid Content-Length")]
    Invalid,
    /// More than one Content-Length field, equal or not.
    #[error("more than one Content-Length")]
    Repeated,
}

/// The message's Content-Length from every value of the field (RFC 9110 8.6: `1*DIGIT`). One field with
/// one value: a list (`5, 5`), a repeated field, a sign (`+5`), surrounding or inner spaces (` 5`), hex
/// (`0x5`) or more than [`MAX_LENGTH_DIGITS`] digits make the message malformed. RFC 9110 lets a recipient
/// either refuse identical repeated values or collapse them; refusing them is what HTTP/2's framing layer
/// does too, so every listener gives the same answer.
pub fn content_length<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<u64>, LengthError> {
    let mut values = values.into_iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(LengthError::Repeated);
    }
    if value.is_empty() || value.len() > MAX_LENGTH_DIGITS || !value.iter().all(u8::is_ascii_digit) {
        return Err(LengthError::Invalid);
    }
    Ok(Some(
        value
            .iter()
            .fold(0u64, |length, digit| length * 10 + u64::from(digit - b'0')),
    ))
}

/// What a request's Transfer-Encoding asks of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferCoding {
    /// No Transfer-Encoding field.
    None,
    /// Exactly `chunked`.
    Chunked,
}

/// Why a Transfer-Encoding is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodingError {
    /// Empty, `chunked` twice or not last: the body's length cannot be known (RFC 9112 6.3), 400.
    #[error("{0}")]
    Malformed(&'static str),
    /// A coding the proxy does not decode (gzip, deflate, ...): 501 (RFC 9112 6.1).
    #[error("unsupported transfer coding")]
    Unsupported,
}

/// The transfer coding of a request from every value of its Transfer-Encoding field. Only `chunked`,
/// alone, is accepted: lenient readings of this field are how requests get smuggled past one hop and
/// reframed by the next.
pub fn transfer_coding<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<TransferCoding, CodingError> {
    let (mut present, mut first, mut more) = (false, None, false);
    for value in values {
        present = true;
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() {
                continue;
            }
            match first {
                None => first = Some(coding),
                Some(_) => more = true,
            }
        }
    }
    match first {
        None if present => Err(CodingError::Malformed("empty Transfer-Encoding")),
        None => Ok(TransferCoding::None),
        Some(coding) if !coding.eq_ignore_ascii_case(b"chunked") => Err(CodingError::Unsupported),
        Some(_) if more => Err(CodingError::Malformed("chunked is not the only transfer coding")),
        Some(_) => Ok(TransferCoding::Chunked),
    }
}

/// RFC 9110 5.6.2: `token = 1*tchar`.
pub fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// RFC 9110 5.5: a field value is visible characters, spaces and tabs (and obs-text), with no leading or
/// trailing whitespace; CR, LF, NUL and other controls never. RFC 9113 8.2.1 and RFC 9114 4.2 make a
/// message with any other value malformed.
pub fn is_field_value(bytes: &[u8]) -> bool {
    let edge = |b: &u8| *b == b' ' || *b == b'\t';
    !bytes.first().is_some_and(edge)
        && !bytes.last().is_some_and(edge)
        && bytes.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length(values: &[&str]) -> Result<Option<u64>, LengthError> {
        content_length(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn the_websocket_accept_is_the_one_rfc_6455_gives_for_its_sample_key() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn content_length_is_one_value_of_digits() {
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(length(&["0"]), Ok(Some(0)));
        assert_eq!(length(&["5"]), Ok(Some(5)));
        assert_eq!(length(&["0005"]), Ok(Some(5)));
        assert_eq!(length(&["9999999999999999999"]), Ok(Some(9_999_999_999_999_999_999)));
        for bad in [
            "",
            "+5",
            "-5",
            " 5",
            "5 ",
            "5, 5",
            "5,6",
            "0x5",
            "5a",
            "1e3",
            "99999999999999999999",
        ] {
            assert_eq!(length(&[bad]), Err(LengthError::Invalid), "{bad:?}");
        }
        assert_eq!(length(&["5", "5"]), Err(LengthError::Repeated));
        assert_eq!(length(&["5", "6"]), Err(LengthError::Repeated));
    }

    fn coding(values: &[&str]) -> Result<TransferCoding, CodingError> {
        transfer_coding(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn transfer_coding_is_chunked_alone() {
        assert_eq!(coding(&[]), Ok(TransferCoding::None));
        assert_eq!(coding(&["chunked"]), Ok(TransferCoding::Chunked));
        assert_eq!(coding(&["Chunked "]), Ok(TransferCoding::Chunked));
        assert!(matches!(coding(&[""]), Err(CodingError::Malformed(_))));
        assert!(matches!(coding(&["chunked, chunked"]), Err(CodingError::Malformed(_))));
        assert!(matches!(
            coding(&["chunked", "chunked"]),
            Err(CodingError::Malformed(_))
        ));
        assert_eq!(coding(&["gzip, chunked"]), Err(CodingError::Unsupported));
        assert_eq!(coding(&["gzip"]), Err(CodingError::Unsupported));
        assert!(matches!(coding(&["chunked, gzip"]), Err(CodingError::Malformed(_))));
    }

    #[test]
    fn heads_end_with_either_line_ending() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\n\r\n"), Some(26));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn tokens_and_field_values() {
        assert!(is_token(b"x-request-id"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a:b"));
        assert!(is_field_value(b"text/html; q=0.9"));
        assert!(is_field_value(b""));
        assert!(!is_field_value(b" 5"));
        assert!(!is_field_value(b"5\t"));
        assert!(!is_field_value(b"a\r\nb"));
        assert!(!is_field_value(b"a\0b"));
    }
}
