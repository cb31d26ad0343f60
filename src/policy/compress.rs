//! Response compression: the coding negotiated from `Accept-Encoding` (q-values, `*`, `identity`), only for
//! responses worth it (a compressible type, at least `min_size`, no `Content-Encoding` already, no range, no
//! `no-transform`), and a body that compresses as it streams: input is fed to the encoder as it comes and
//! the encoder is flushed whenever the source has nothing more for now, so a slow stream is never held
//! back, and memory stays flat (one encoder and one output buffer per response). At most
//! `server.max_compressed_streams` responses are compressed at once; beyond that they go out as they are.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use compression_codecs::EncodeV2;
use compression_core::util::{PartialBuffer, WriteBuffer};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::config::{Coding, Compress};

/// Output is handed on once this much has accumulated, even while input keeps coming.
const OUTPUT_CHUNK: usize = 16 * 1024;

/// Compressed responses in flight, over every worker, against `server.max_compressed_streams`.
#[derive(Debug, Default)]
pub struct Streams(Arc<AtomicUsize>);

/// One compressed response's place under the limit.
#[derive(Debug)]
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Streams {
    fn acquire(&self, limit: usize) -> Option<Permit> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Permit(Arc::clone(&self.0)))
    }

    /// Responses being compressed now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The coding to answer with, among `offered` (in the server's order of preference), by the client's
/// `Accept-Encoding`: the highest q-value wins, the server's order breaks ties, `q=0` refuses, `*` stands
/// for every coding not named. `None`: the client takes none of them (or sent no `Accept-Encoding`).
pub fn negotiate(request: &HeaderMap, offered: &[Coding]) -> Option<Coding> {
    let mut named: Vec<(&str, f32)> = Vec::new();
    for value in request.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            if coding.is_empty() {
                continue;
            }
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .map_or(Some(1.0), |q| {
                    q.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))
                });
            if let Some(q) = q {
                named.push((coding, q));
            }
        }
    }
    let weight = |coding: Coding| {
        let token = coding.token();
        named
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(token))
            .or_else(|| named.iter().find(|(name, _)| *name == "*"))
            .map_or(0.0, |(_, q)| *q)
    };
    let mut best: Option<(Coding, f32)> = None;
    for &coding in offered {
        let q = weight(coding);
        if q > 0.0 && best.is_none_or(|(_, top)| q > top) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

/// True when `content_type` matches one of `patterns` (`text/*`, `application/*+json`, exact types).
pub fn type_matches(content_type: &str, patterns: &[String]) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    // Server-sent events must reach the client as they are written; compression would hold them back.
    if essence == "text/event-stream" {
        return false;
    }
    patterns.iter().any(|pattern| match pattern.split_once('/') {
        Some((p_kind, "*")) => p_kind == kind,
        Some((p_kind, p_sub)) if p_sub.starts_with("*+") => p_kind == kind && subtype.ends_with(&p_sub[1..]),
        Some(_) => *pattern == essence,
        None => false,
    })
}

/// Whether a response is one compression applies to at all (so that it also varies by `Accept-Encoding`).
pub fn applies(compress: &Compress, method: &Method, ranged: bool, response: &Response<Body>) -> bool {
    let headers = response.headers();
    let status = response.status();
    let no_transform = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-transform")));
    let large_enough = match response.body().size_hint().exact() {
        Some(length) => length >= compress.min_size,
        None => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|length| length >= compress.min_size),
    };
    *method != Method::HEAD
        && !ranged
        && matches!(
            status,
            StatusCode::OK | StatusCode::CREATED | StatusCode::ACCEPTED | StatusCode::NON_AUTHORITATIVE_INFORMATION
        )
        && !headers.contains_key(header::CONTENT_ENCODING)
        && !headers.contains_key(header::CONTENT_RANGE)
        && !no_transform
        && large_enough
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| type_matches(t, &compress.types))
}

/// Adds `Accept-Encoding` to the response's `Vary`, unless it is there already.
pub fn vary_on_encoding(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*" || v.trim().eq_ignore_ascii_case("accept-encoding"));
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The response compressed with `coding`, when a place under `limit` is free (else as it is): the body
/// wrapped, `Content-Encoding` set, the length dropped, a strong `ETag` made weak (the bytes differ, the
/// meaning does not), `Accept-Ranges` removed.
pub fn compress(response: Response<Body>, coding: Coding, streams: &Streams, limit: usize) -> (Response<Body>, bool) {
    let Some(permit) = streams.acquire(limit) else {
        return (response, false);
    };
    let (mut parts, body) = response.into_parts();
    let headers = &mut parts.headers;
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    if let Some(etag) = headers.get(header::ETAG).filter(|e| e.as_bytes().starts_with(b"\"")) {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, weak);
        }
    }
    let body = Body::boxed(Compressed {
        inner: body,
        encoder: encoder(coding),
        scratch: vec![0; OUTPUT_CHUNK].into_boxed_slice(),
        out: BytesMut::new(),
        trailers: None,
        state: State::Streaming,
        _permit: permit,
    });
    (Response::from_parts(parts, body), true)
}

/// Encoder settings chosen for speed on the request path and a small, bounded state per response (measured
/// in the README's Limits table): zstd level 1 with a 128 KiB window, brotli quality 3 with a 128 KiB window,
/// gzip level 5 (its window is 32 KiB).
fn encoder(coding: Coding) -> Box<dyn EncodeV2 + Send + Sync> {
    use compression_codecs::zstd::params::CParameter;
    match coding {
        Coding::Zstd => Box::new(compression_codecs::ZstdEncoder::new_with_params(
            1,
            &[
                CParameter::window_log(17),
                CParameter::hash_log(15),
                CParameter::chain_log(15),
            ],
        )),
        Coding::Brotli => Box::new(compression_codecs::BrotliEncoder::new(
            compression_codecs::brotli::params::EncoderParams::default()
                .quality(compression_core::Level::Precise(3))
                .window_size(17),
        )),
        Coding::Gzip => Box::new(compression_codecs::GzipEncoder::new(
            compression_core::Level::Precise(5).into(),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The source ended: the encoder's last bytes, then the trailers, then the end.
    Finished,
    Done,
}

/// A body compressed as it streams.
struct Compressed {
    inner: Body,
    encoder: Box<dyn EncodeV2 + Send + Sync>,
    /// The encoder writes here; what it wrote is moved to `out`.
    scratch: Box<[u8]>,
    out: BytesMut,
    trailers: Option<HeaderMap>,
    state: State,
    _permit: Permit,
}

impl Compressed {
    /// Feeds `data` to the encoder, collecting its output.
    fn encode(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut input = PartialBuffer::new(data);
        while !input.unwritten().is_empty() {
            let mut output = WriteBuffer::new_initialized(&mut self.scratch);
            self.encoder.encode(&mut input, &mut output)?;
            self.out.extend_from_slice(output.written());
        }
        Ok(())
    }

    /// Flushes (or, at the end, finishes) the encoder, collecting its output.
    fn drain(&mut self, finish: bool) -> std::io::Result<()> {
        loop {
            let mut output = WriteBuffer::new_initialized(&mut self.scratch);
            let done = if finish {
                self.encoder.finish(&mut output)?
            } else {
                self.encoder.flush(&mut output)?
            };
            self.out.extend_from_slice(output.written());
            if done {
                return Ok(());
            }
        }
    }

    fn take(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))))
    }
}

impl http_body::Body for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Finished => {
                    if !this.out.is_empty() {
                        return this.take();
                    }
                    this.state = State::Done;
                    return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                State::Streaming => {}
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.encode(&data)?;
                        if this.out.len() >= OUTPUT_CHUNK {
                            return this.take();
                        }
                    }
                    Err(frame) => this.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(error))) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    this.drain(true)?;
                    this.state = State::Finished;
                }
                Poll::Pending => {
                    if this.out.is_empty() {
                        this.drain(false)?;
                    }
                    return if this.out.is_empty() {
                        Poll::Pending
                    } else {
                        this.take()
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(header::ACCEPT_ENCODING, value);
        }
        headers
    }

    #[test]
    fn negotiation_follows_q_values_then_the_servers_order() {
        let all = Coding::ALL;
        assert_eq!(
            negotiate(&accepting("gzip, deflate, br, zstd"), &all),
            Some(Coding::Zstd)
        );
        assert_eq!(negotiate(&accepting("gzip, br;q=0.9"), &all), Some(Coding::Gzip));
        assert_eq!(
            negotiate(&accepting("br;q=1.0, gzip;q=0.8"), &all),
            Some(Coding::Brotli)
        );
        assert_eq!(negotiate(&accepting("*"), &all), Some(Coding::Zstd));
        assert_eq!(negotiate(&accepting("*;q=0.5, zstd;q=0"), &all), Some(Coding::Brotli));
        assert_eq!(negotiate(&accepting("identity"), &all), None);
        assert_eq!(negotiate(&accepting("gzip;q=0"), &all), None);
        assert_eq!(negotiate(&accepting("gzip;q=2"), &all), None, "an invalid q refuses");
        assert_eq!(negotiate(&HeaderMap::new(), &all), None);
        assert_eq!(negotiate(&accepting("zstd, gzip"), &[Coding::Gzip]), Some(Coding::Gzip));
    }

    #[test]
    fn types_match_patterns() {
        let patterns: Vec<String> = crate::config::COMPRESSIBLE_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        assert!(type_matches("text/html; charset=utf-8", &patterns));
        assert!(type_matches("application/json", &patterns));
        assert!(type_matches("application/problem+json", &patterns));
        assert!(type_matches("image/svg+xml", &patterns));
        assert!(!type_matches("image/png", &patterns));
        assert!(!type_matches("text/event-stream", &patterns));
        assert!(!type_matches("application/octet-stream", &patterns));
    }

    fn compressed(coding: Coding, chunks: &[&'static [u8]]) -> Vec<u8> {
        let (sender, body) = Body::channel(None);
        let response = Response::new(body);
        let (response, done) = compress(response, coding, &Streams::default(), 1);
        assert!(done);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|_| unreachable!());
        runtime.block_on(async move {
            let chunks: Vec<Bytes> = chunks.iter().map(|c| Bytes::from_static(c)).collect();
            let feeding = tokio::spawn(async move {
                for chunk in chunks {
                    let _ = sender.data(chunk).await;
                }
                sender.finish().await;
            });
            let mut body = response.into_body();
            let mut out = Vec::new();
            while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                if let Ok(data) = frame.map(|f| f.into_data()) {
                    out.extend_from_slice(&data.unwrap_or_default());
                }
            }
            let _ = feeding.await;
            out
        })
    }

    #[test]
    fn every_coding_round_trips_through_its_decoder() {
        let text: &'static [u8] = b"the quick brown fox jumps over the lazy dog; ";
        let chunks = [text; 200];
        let plain: Vec<u8> = chunks.concat();
        let gz = compressed(Coding::Gzip, &chunks);
        let mut decoded = Vec::new();
        assert!(flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut decoded).is_ok());
        assert_eq!(decoded, plain);
        assert!(gz.len() < plain.len() / 4, "{} of {}", gz.len(), plain.len());
        let zst = compressed(Coding::Zstd, &chunks);
        assert_eq!(zstd::stream::decode_all(&zst[..]).ok(), Some(plain.clone()));
        let br = compressed(Coding::Brotli, &chunks);
        let mut decoded = Vec::new();
        assert!(brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut decoded)
            .is_ok());
        assert_eq!(decoded, plain);
    }

    #[test]
    fn the_limit_sends_the_rest_uncompressed() {
        let streams = Streams::default();
        let (first, compressed_first) = compress(Response::new(Body::full("a")), Coding::Gzip, &streams, 1);
        let (_, compressed_second) = compress(Response::new(Body::full("b")), Coding::Gzip, &streams, 1);
        assert!(compressed_first && !compressed_second);
        assert_eq!(streams.open(), 1);
        drop(first);
        assert_eq!(streams.open(), 0);
    }
}
