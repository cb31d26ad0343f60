//! W3C Trace Context (`traceparent`): parsed from a request, written on the request sent upstream.

use http::HeaderValue;

/// A 16-byte trace id.
pub type TraceId = [u8; 16];
/// An 8-byte span id.
pub type SpanId = [u8; 8];

const SAMPLED: u8 = 0x01;

/// The fields of a `traceparent` header (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`. Later versions are read by their first four fields, as the
    /// specification asks; all-zero ids and version `ff` are invalid.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let text = value.to_str().ok()?.trim();
        let mut fields = text.split('-');
        let version = hex_byte(fields.next()?)?;
        let trace_id = hex_array::<16>(fields.next()?)?;
        let parent_id = hex_array::<8>(fields.next()?)?;
        let flags = fields.next()?;
        let flags = hex_byte(flags.get(..2)?)?;
        if version == 0xff || (version == 0 && (fields.next().is_some() || text.len() != 55)) {
            return None;
        }
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & SAMPLED != 0,
        })
    }

    /// The header naming `span_id` as the parent of whatever the receiver does next.
    pub fn header(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            hex(trace_id),
            hex(span_id),
            if sampled { SAMPLED } else { 0 }
        );
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_byte(text: &str) -> Option<u8> {
    (text.len() == 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u8::from_str_radix(text, 16).ok())
        .flatten()
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = hex_byte(text.get(index * 2..index * 2 + 2)?)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<TraceParent> {
        TraceParent::parse(&HeaderValue::from_str(text).ok()?)
    }

    #[test]
    fn reads_the_specification_examples() {
        let parent = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            parent,
            Some(TraceParent {
                trace_id: [
                    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36
                ],
                parent_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
                sampled: true,
            })
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").map(|p| p.sampled),
            Some(false)
        );
        let future = parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever");
        assert!(future.is_some_and(|p| p.sampled));
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let header = TraceParent::header(&[7; 16], &[9; 8], true);
        let parsed = TraceParent::parse(&header);
        assert_eq!(
            parsed,
            Some(TraceParent {
                trace_id: [7; 16],
                parent_id: [9; 8],
                sampled: true
            })
        );
    }
}
