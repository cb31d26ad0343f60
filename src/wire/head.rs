//! A response head read into a status, a version and fields, by httparse's rules (the same line endings
//! [`super::head_end`] follows), with a bound on the number of fields.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

/// Response header fields read at most.
pub const MAX_RESPONSE_FIELDS: usize = 256;

/// A response head as read.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// The response head at the front of `bytes` and its length, or `None` while it is incomplete; an error
/// says what is malformed.
pub fn response_head(bytes: &[u8]) -> Result<Option<(ResponseHead, usize)>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header fields"),
        Err(_) => return Err("malformed response head"),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or("invalid response status")?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "invalid response header name")?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| "invalid response header value")?;
        headers.append(name, value);
    }
    Ok(Some((
        ResponseHead {
            status,
            version,
            headers,
        },
        length,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_whole_and_not_before() {
        let bytes = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok";
        let Ok(Some((head, length))) = response_head(bytes) else {
            panic!("not parsed");
        };
        assert_eq!(
            (head.status, head.version, length),
            (StatusCode::CREATED, Version::HTTP_11, bytes.len() - 2)
        );
        assert_eq!(head.headers.len(), 2);
        assert!(matches!(response_head(&bytes[..20]), Ok(None)));
        assert_eq!(
            response_head(b"HTTP/1.1 2000 No\r\n\r\n").err(),
            Some("malformed response head")
        );
    }
}
