//! Checks an HTTP/3 request's encoded field section for what h3 does not reject: a pseudo-header field
//! repeated, placed after a regular field, or one that belongs to responses (`:status`) or to nobody
//! (RFC 9114 4.3). h3 keeps the last value of a repeated pseudo-header, so `:method: GET` followed by
//! `:method: POST` would otherwise pass as a POST, and it ignores `:status` in a request.
//!
//! Only field names are looked at. The section is walked the way QPACK encodes it (RFC 9204 4.5): static
//! table references name pseudo-headers by index; literal names may be Huffman-coded. References to the
//! dynamic table cannot occur (the server advertises no dynamic table) and end the walk; h3 rejects them.

/// Why a request's field section is malformed.
pub type Malformed = &'static str;

const METHOD: u8 = 1;
const SCHEME: u8 = 2;
const AUTHORITY: u8 = 4;
const PATH: u8 = 8;
const PROTOCOL: u8 = 16;
const STATUS: u8 = 32;

/// The pseudo-header a QPACK static table entry names, if any (RFC 9204 Appendix A).
fn static_pseudo(index: u64) -> Option<u8> {
    match index {
        0 => Some(AUTHORITY),
        1 => Some(PATH),
        15..=21 => Some(METHOD),
        22 | 23 => Some(SCHEME),
        24..=28 | 63..=71 => Some(STATUS),
        _ => None,
    }
}

fn named_pseudo(name: &[u8]) -> Option<u8> {
    match name {
        b":method" => Some(METHOD),
        b":scheme" => Some(SCHEME),
        b":authority" => Some(AUTHORITY),
        b":path" => Some(PATH),
        b":protocol" => Some(PROTOCOL),
        // `:status` and any other name starting with ':' have no place in a request.
        [b':', ..] => Some(STATUS),
        _ => None,
    }
}

/// Walks a request's encoded field section; `Err` names the problem.
pub fn check_request(section: &[u8]) -> Result<(), Malformed> {
    let mut input = Reader { bytes: section };
    // Required Insert Count, then the sign bit and Delta Base.
    if input.integer(8).is_none() || input.integer(7).is_none() {
        return Ok(());
    }
    let mut seen = 0u8;
    let mut regular_seen = false;
    while let Some(&first) = input.bytes.first() {
        let pseudo = if first & 0x80 != 0 {
            // Indexed field line; T (0x40) says static.
            let index = input.integer(6);
            match (first & 0x40 != 0, index) {
                (true, Some(index)) => static_pseudo(index),
                _ => return Ok(()),
            }
        } else if first & 0x40 != 0 {
            // Literal with name reference; T (0x10) says static.
            let index = input.integer(4);
            let pseudo = match (first & 0x10 != 0, index) {
                (true, Some(index)) => static_pseudo(index),
                _ => return Ok(()),
            };
            if input.string(7).is_none() {
                return Ok(());
            }
            pseudo
        } else if first & 0x20 != 0 {
            // Literal with literal name; H (0x08) says the name is Huffman-coded.
            let Some(name) = input.string(3) else { return Ok(()) };
            if input.string(7).is_none() {
                return Ok(());
            }
            named_pseudo(&name)
        } else {
            // Post-base references need the dynamic table, which this server never offers.
            return Ok(());
        };
        match pseudo {
            Some(STATUS) => return Err("response or unknown pseudo-header field in a request"),
            Some(_) if regular_seen => return Err("pseudo-header field after a regular field"),
            Some(bit) if seen & bit != 0 => return Err("repeated pseudo-header field"),
            Some(bit) => seen |= bit,
            None => regular_seen = true,
        }
    }
    Ok(())
}

/// What h3 is given for `:protocol: websocket`, which it cannot parse (it knows `webtransport` and
/// `connect-udp` only): a name it accepts, with the real protocol noted beside the stream.
pub const WEBSOCKET_STAND_IN: &[u8] = b"webtransport";

/// When a request's field section carries `:protocol: websocket` (an extended CONNECT for WebSocket, RFC
/// 9220), the section with that line replaced by `:protocol` [`WEBSOCKET_STAND_IN`]. `None` otherwise.
pub fn websocket_stand_in(section: &[u8]) -> Option<Vec<u8>> {
    let mut input = Reader { bytes: section };
    input.integer(8)?;
    input.integer(7)?;
    while let Some(&first) = input.bytes.first() {
        let start = section.len() - input.bytes.len();
        if first & 0x80 != 0 {
            input.integer(6)?;
        } else if first & 0x40 != 0 {
            input.integer(4)?;
            input.string(7)?;
        } else if first & 0x20 != 0 {
            let name = input.string(3)?;
            let value = input.string(7)?;
            if name == b":protocol" && value == b"websocket" {
                let end = section.len() - input.bytes.len();
                let mut rewritten = Vec::with_capacity(section.len() + WEBSOCKET_STAND_IN.len());
                rewritten.extend_from_slice(&section[..start]);
                // Literal field line with literal name (RFC 9204 4.5.6): `001NHxxx`, the name's length in 3
                // bits (9 = 7 + 2), then the value's length in 7 bits; neither Huffman-coded.
                rewritten.extend_from_slice(&[0x20 | 0x07, 9 - 7]);
                rewritten.extend_from_slice(b":protocol");
                rewritten.push(u8::try_from(WEBSOCKET_STAND_IN.len()).unwrap_or(0));
                rewritten.extend_from_slice(WEBSOCKET_STAND_IN);
                rewritten.extend_from_slice(&section[end..]);
                return Some(rewritten);
            }
        } else {
            return None;
        }
    }
    None
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    /// A prefix-coded integer (RFC 7541 5.1) whose first byte holds `prefix` bits of it.
    fn integer(&mut self, prefix: u32) -> Option<u64> {
        let (&first, mut rest) = self.bytes.split_first()?;
        let mask = u8::try_from((1u16 << prefix) - 1).unwrap_or(u8::MAX);
        let mut value = u64::from(first & mask);
        if value == u64::from(mask) {
            let mut shift = 0u32;
            loop {
                let (&byte, tail) = rest.split_first()?;
                rest = tail;
                value = value.checked_add(u64::from(byte & 0x7f).checked_shl(shift)?)?;
                shift += 7;
                if byte & 0x80 == 0 || shift > 56 {
                    break;
                }
            }
        }
        self.bytes = rest;
        Some(value)
    }

    /// A string literal whose length has `prefix` bits in the first byte, after its Huffman flag.
    fn string(&mut self, prefix: u32) -> Option<Vec<u8>> {
        let huffman = self.bytes.first()? & (1 << prefix) != 0;
        let length = usize::try_from(self.integer(prefix)?).ok()?;
        if length > self.bytes.len() {
            return None;
        }
        let (raw, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        if !huffman {
            return Some(raw.to_vec());
        }
        let mut decoded = Vec::with_capacity(length * 2);
        httlib_huffman::decode(raw, &mut decoded, httlib_huffman::DecoderSpeed::FourBits).ok()?;
        Some(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Section prefix: Required Insert Count 0, Delta Base 0.
    const PREFIX: [u8; 2] = [0x00, 0x00];
    const GET: u8 = 0xc0 | 17;
    const POST: u8 = 0xc0 | 20;
    const HTTPS: u8 = 0xc0 | 23;
    const PATH_ROOT: u8 = 0xc1;

    fn section(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = PREFIX.to_vec();
        for line in lines {
            out.extend_from_slice(line);
        }
        out
    }

    /// `:authority` by static name reference with a plain value.
    fn authority(value: &str) -> Vec<u8> {
        let mut line = vec![0x50, u8::try_from(value.len()).unwrap_or(0)];
        line.extend_from_slice(value.as_bytes());
        line
    }

    /// A literal name and value, the name Huffman-coded when asked.
    fn literal(name: &str, value: &str, huffman: bool) -> Vec<u8> {
        let mut name_bytes = name.as_bytes().to_vec();
        if huffman {
            let mut coded = Vec::new();
            if httlib_huffman::encode(name.as_bytes(), &mut coded).is_ok() {
                name_bytes = coded;
            }
        }
        let mut line = vec![0x20 | if huffman { 0x08 } else { 0 } | u8::try_from(name_bytes.len()).unwrap_or(0).min(7)];
        if name_bytes.len() >= 7 {
            line.push(u8::try_from(name_bytes.len() - 7).unwrap_or(0));
        }
        line.extend_from_slice(&name_bytes);
        line.push(u8::try_from(value.len()).unwrap_or(0));
        line.extend_from_slice(value.as_bytes());
        line
    }

    #[test]
    fn a_well_formed_request_passes() {
        let lines = section(&[
            &[GET, HTTPS, PATH_ROOT],
            &authority("example.com"),
            &literal("user-agent", "t", true),
        ]);
        assert_eq!(check_request(&lines), Ok(()));
    }

    #[test]
    fn a_repeated_pseudo_header_is_malformed_whatever_its_encoding() {
        assert_eq!(
            check_request(&section(&[&[GET, HTTPS, PATH_ROOT, POST]])),
            Err("repeated pseudo-header field")
        );
        let huffman_method = literal(":method", "DELETE", true);
        let plain_path = literal(":path", "/admin", false);
        for repeated in [&huffman_method, &plain_path] {
            let lines = section(&[&[GET, HTTPS, PATH_ROOT], repeated]);
            assert_eq!(
                check_request(&lines),
                Err("repeated pseudo-header field"),
                "{repeated:?}"
            );
        }
        let twice = section(&[&[GET, HTTPS, PATH_ROOT], &authority("a"), &authority("b")]);
        assert_eq!(check_request(&twice), Err("repeated pseudo-header field"));
    }

    #[test]
    fn a_pseudo_header_after_a_regular_field_is_malformed() {
        let lines = section(&[&[GET, HTTPS], &literal("x-a", "1", false), &[PATH_ROOT]]);
        assert_eq!(check_request(&lines), Err("pseudo-header field after a regular field"));
        let lines = section(&[
            &[GET, HTTPS, PATH_ROOT],
            &literal("accept", "*", true),
            &literal(":authority", "x", true),
        ]);
        assert_eq!(check_request(&lines), Err("pseudo-header field after a regular field"));
    }

    #[test]
    fn status_and_unknown_pseudo_headers_are_malformed_in_a_request() {
        const STATUS_200: u8 = 0xc0 | 25;
        for line in [
            vec![STATUS_200],
            literal(":status", "200", false),
            literal(":status", "204", true),
            literal(":foo", "x", false),
        ] {
            let lines = section(&[&[GET, HTTPS, PATH_ROOT], &line]);
            assert_eq!(
                check_request(&lines),
                Err("response or unknown pseudo-header field in a request"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_websocket_protocol_is_given_to_h3_as_its_stand_in_whatever_its_encoding() {
        const CONNECT: u8 = 0xc0 | 15;
        for huffman in [false, true] {
            let lines = section(&[
                &[CONNECT, HTTPS, PATH_ROOT],
                &literal(":protocol", "websocket", huffman),
                &authority("example.com"),
            ]);
            let rewritten = websocket_stand_in(&lines).expect("a websocket extended CONNECT");
            let expected = section(&[
                &[CONNECT, HTTPS, PATH_ROOT],
                &literal(":protocol", "webtransport", false),
                &authority("example.com"),
            ]);
            assert_eq!(rewritten, expected, "huffman: {huffman}");
            assert_eq!(check_request(&rewritten), Ok(()));
        }
        let other = section(&[
            &[CONNECT, HTTPS, PATH_ROOT],
            &literal(":protocol", "connect-udp", false),
        ]);
        assert_eq!(websocket_stand_in(&other), None);
        assert_eq!(websocket_stand_in(&section(&[&[GET, HTTPS, PATH_ROOT]])), None);
    }

    #[test]
    fn truncated_or_dynamic_sections_are_left_to_h3() {
        assert_eq!(check_request(&[]), Ok(()));
        assert_eq!(check_request(&[0x00, 0x00, 0x50, 0x05, b'a']), Ok(()));
        // Post-base indexed line (0001xxxx) references the dynamic table.
        assert_eq!(check_request(&[0x00, 0x00, 0x10, GET, GET]), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_walked_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = check_request(&bytes);
        }
    }
}
