//! Static files (`static: {root, index, precompressed}`): GET and HEAD of the files under a root directory,
//! streamed from disk, never read whole.
//!
//! Nothing outside the root is ever served: the path is percent-decoded once and refused if it holds NUL,
//! a backslash, an encoded slash or a `..` segment (so `%2e%2e` is refused too), and the file found is
//! resolved (symbolic links included) and must still lie under the (canonical) root. A directory is served
//! by its first index file; asked for without its trailing slash, it is redirected to it. There is no
//! directory listing.
//!
//! Each file has a content type by its extension, an `ETag` (its modification time and size) and a
//! `Last-Modified`; `If-None-Match` and `If-Modified-Since` answer 304. A single `Range` gets 206 (with
//! `If-Range`), an unsatisfiable one 416, several the whole file. A sibling `name.zst`, `name.br` or
//! `name.gz` is served instead, with its `Content-Encoding`, to clients that accept it.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Frame;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::compress::{negotiate, vary_on_encoding};
use crate::body::{Body, BoxError};
use crate::config::{Coding, StaticFiles};

/// How much of a file is read at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What serving a request came to, for the route's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// 200, or 206 for a range.
    File,
    Partial,
    NotModified,
    /// 404 (absent, outside the root, or a directory with no index).
    NotFound,
    /// 400, 405, 416, or a redirect to the directory's slash.
    Refused,
}

impl Served {
    /// As the `result` label names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::File => "served",
            Self::Partial => "partial",
            Self::NotModified => "not_modified",
            Self::NotFound => "not_found",
            Self::Refused => "refused",
        }
    }
}

/// Answers `method` on `path` (the request path after the route's rewriting) from `files`; `requested` is
/// the path as the client sent it, for the redirect a directory named without its slash gets.
pub async fn serve(
    files: &StaticFiles,
    method: &Method,
    path: &str,
    requested: &str,
    request: &HeaderMap,
) -> (Response<Body>, Served) {
    if *method != Method::GET && *method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return (response, Served::Refused);
    }
    let Some(relative) = safe_relative(path) else {
        return (plain(StatusCode::NOT_FOUND, "not found\n"), Served::NotFound);
    };
    let Some((found, metadata)) = locate(&files.root, &relative, &files.index).await else {
        return (plain(StatusCode::NOT_FOUND, "not found\n"), Served::NotFound);
    };
    if found.is_dir_without_slash(path) {
        let mut response = plain(StatusCode::PERMANENT_REDIRECT, "");
        if let Ok(location) = HeaderValue::from_str(&format!("{requested}/")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return (response, Served::Refused);
    }
    let file = found.path();
    let content_type = content_type(file);

    // A precompressed sibling the client accepts, when there is one.
    let mut encoding = None;
    let mut representation = (file.to_owned(), metadata);
    if files.precompressed {
        let available: Vec<Coding> = futures_util::stream::iter(Coding::ALL)
            .filter(|coding| {
                let sibling = sibling(file, *coding);
                let root = files.root.clone();
                async move { regular_file_under(&root, &sibling).await.is_some() }
            })
            .collect()
            .await;
        if let Some(coding) = negotiate(request, &available) {
            let sibling = sibling(file, coding);
            if let Some(metadata) = regular_file_under(&files.root, &sibling).await {
                representation = (sibling, metadata);
                encoding = Some(coding);
            }
        }
    }
    let (path_on_disk, metadata) = representation;
    let length = metadata.len();
    let modified = metadata.modified().ok();
    let etag = etag(length, modified, encoding);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if let Some(modified) = modified {
        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            headers.insert(header::LAST_MODIFIED, value);
        }
    }
    if files.precompressed {
        vary_on_encoding(&mut headers);
    }
    if let Some(coding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    } else {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }

    if not_modified(request, &etag, modified) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        headers.remove(header::CONTENT_TYPE);
        *response.headers_mut() = headers;
        return (response, Served::NotModified);
    }

    let range = match (encoding, request.get(header::RANGE)) {
        (None, Some(range)) if if_range_holds(request, &etag, modified) => match byte_range(range.as_bytes(), length) {
            Ranged::One(start, end) => Some((start, end)),
            Ranged::Whole => None,
            Ranged::Unsatisfiable => {
                let mut response = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return (response, Served::Refused);
            }
        },
        _ => None,
    };
    let (status, start, count, served) = match range {
        Some((start, end)) => {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1, Served::Partial)
        }
        None => (StatusCode::OK, 0, length, Served::File),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let body = if *method == Method::HEAD || count == 0 {
        Body::empty()
    } else {
        match stream(&path_on_disk, start, count).await {
            Some(body) => body,
            None => return (plain(StatusCode::NOT_FOUND, "not found\n"), Served::NotFound),
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    (response, served)
}

/// The request path as a relative path under the root: percent-decoded once, with every segment plain.
/// `None` for anything that could climb out or mean two things (`..`, NUL, `\`, an encoded `/`).
fn safe_relative(path: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode(segment)?;
        if decoded == "." {
            continue;
        }
        if decoded == ".." || decoded.contains(['\0', '/', '\\']) {
            return None;
        }
        relative.push(decoded);
    }
    Some(relative)
}

/// `%XX` decoded once; `None` for a malformed escape or text that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a path under the root names.
enum Found {
    File(PathBuf),
    /// A directory's index file, and whether the request named the directory with its trailing slash.
    Index(PathBuf),
}

impl Found {
    fn path(&self) -> &Path {
        match self {
            Self::File(path) | Self::Index(path) => path,
        }
    }

    fn is_dir_without_slash(&self, request_path: &str) -> bool {
        matches!(self, Self::Index(_)) && !request_path.ends_with('/')
    }
}

/// The regular file `relative` names under `root` (a directory: its first index file), resolved, still
/// under the root.
async fn locate(root: &Path, relative: &Path, index: &[String]) -> Option<(Found, std::fs::Metadata)> {
    let candidate = root.join(relative);
    let resolved = tokio::fs::canonicalize(&candidate).await.ok()?;
    if !resolved.starts_with(root) {
        return None;
    }
    let metadata = tokio::fs::metadata(&resolved).await.ok()?;
    if metadata.is_file() {
        return Some((Found::File(resolved), metadata));
    }
    if !metadata.is_dir() {
        return None;
    }
    for name in index {
        let file = resolved.join(name);
        if let Some(metadata) = regular_file_under(root, &file).await {
            return Some((Found::Index(file), metadata));
        }
    }
    None
}

/// The metadata of `path` when it resolves to a regular file under `root`.
async fn regular_file_under(root: &Path, path: &Path) -> Option<std::fs::Metadata> {
    let resolved = tokio::fs::canonicalize(path).await.ok()?;
    if !resolved.starts_with(root) {
        return None;
    }
    tokio::fs::metadata(&resolved)
        .await
        .ok()
        .filter(std::fs::Metadata::is_file)
}

fn sibling(file: &Path, coding: Coding) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(coding.suffix());
    PathBuf::from(name)
}

/// The content type by extension; text types in UTF-8.
fn content_type(file: &Path) -> String {
    let guess = mime_guess::from_path(file).first_or_octet_stream();
    let essence = guess.essence_str();
    if guess.type_() == mime_guess::mime::TEXT || essence == "application/javascript" || essence == "application/json" {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

/// A strong validator from the file's modification time and size (and its coding, for a precompressed one).
fn etag(length: u64, modified: Option<SystemTime>, encoding: Option<Coding>) -> String {
    let nanos = modified
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    match encoding {
        Some(coding) => format!("\"{nanos:x}-{length:x}-{}\"", coding.token()),
        None => format!("\"{nanos:x}-{length:x}\""),
    }
}

/// RFC 9110 13.1.2 and 13.1.3: `If-None-Match` (weak comparison) decides when present, else
/// `If-Modified-Since`.
fn not_modified(request: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(list) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let opaque = etag.trim_start_matches("W/");
        return list
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == opaque);
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified) {
        (Some(since), Some(modified)) => seconds(modified) <= seconds(since),
        _ => false,
    }
}

/// `If-Range` (RFC 9110 13.1.5): the range applies only if the validator still matches (strongly for an
/// ETag, exactly for a date).
fn if_range_holds(request: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    let Some(value) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if value.starts_with('"') {
        return value == etag;
    }
    match (httpdate::parse_http_date(value), modified) {
        (Ok(date), Some(modified)) => seconds(modified) == seconds(date),
        _ => false,
    }
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a `Range` field asks of a file of `length` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// One satisfiable range, as first and last byte.
    One(u64, u64),
    /// Not a single byte range this server honours (other units, several ranges, malformed): the whole file.
    Whole,
    Unsatisfiable,
}

fn byte_range(value: &[u8], length: u64) -> Ranged {
    let Some(spec) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => return Ranged::Unsatisfiable,
            Some(suffix) => (length.saturating_sub(suffix), length.saturating_sub(1)),
            None => return Ranged::Whole,
        },
        (false, true) => match number(first) {
            Some(start) => (start, length.saturating_sub(1)),
            None => return Ranged::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => (start, end.min(length.saturating_sub(1))),
            _ => return Ranged::Whole,
        },
        (true, true) => return Ranged::Whole,
    };
    if length == 0 || start >= length {
        return Ranged::Unsatisfiable;
    }
    Ranged::One(start, end)
}

/// `count` bytes of `path` from `start`, read as the client reads them.
async fn stream(path: &Path, start: u64, count: u64) -> Option<Body> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.ok()?;
    }
    let reader = file.take(count);
    let frames = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK)
        .map(|chunk: std::io::Result<Bytes>| chunk.map(Frame::data).map_err(BoxError::from));
    Some(Body::boxed(SizedStream {
        inner: http_body_util::StreamBody::new(frames),
        remaining: count,
    }))
}

pin_project_lite::pin_project! {
    /// A stream of file chunks that knows its length, so that the response can say it.
    struct SizedStream<S> {
        #[pin]
        inner: http_body_util::StreamBody<S>,
        remaining: u64,
    }
}

impl<S> http_body::Body for SizedStream<S>
where
    S: futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                *this.remaining = this.remaining.saturating_sub(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_climb_out() {
        assert_eq!(safe_relative("/a/b.css"), Some(PathBuf::from("a/b.css")));
        assert_eq!(safe_relative("/a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative("/"), Some(PathBuf::new()));
        assert_eq!(safe_relative("/caf%C3%A9.txt"), Some(PathBuf::from("café.txt")));
        for bad in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/a%2fb",
            "/a%5cb",
            "/a%00b",
            "/%zz",
            "/%c3",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_by_rfc_9110() {
        assert_eq!(byte_range(b"bytes=0-9", 100), Ranged::One(0, 9));
        assert_eq!(byte_range(b"bytes=90-", 100), Ranged::One(90, 99));
        assert_eq!(byte_range(b"bytes=-10", 100), Ranged::One(90, 99));
        assert_eq!(byte_range(b"bytes=-200", 100), Ranged::One(0, 99));
        assert_eq!(byte_range(b"bytes=50-500", 100), Ranged::One(50, 99));
        assert_eq!(byte_range(b"bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(byte_range(b"bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(byte_range(b"bytes=0-1,5-6", 100), Ranged::Whole);
        assert_eq!(byte_range(b"items=0-1", 100), Ranged::Whole);
        assert_eq!(byte_range(b"bytes=9-1", 100), Ranged::Whole);
    }
}
