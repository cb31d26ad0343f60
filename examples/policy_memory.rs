//! What route actions cost in memory, for the README's Limits table and `make bench`:
//! `cargo run --release --example policy_memory`.
//!
//! - A rate limit's key table filled to its bound (65,536 keys), and after 1,000,000 distinct keys in a row
//!   (a client rotating addresses): keys kept, keys evicted, RSS growth.
//! - A compressing response, per coding: 200 responses each fed 64 KiB of text and polled once, so every
//!   encoder holds its working state; RSS growth per response.
//!
//! RSS is read from /proc/self/status, with the proxy's allocator, so the figures are what the proxy pays.
#![forbid(unsafe_code)]

use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Waker};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http_body::Body as _;
use quic_proxy::body::Body;
use quic_proxy::config::{Actions, Coding, Compress, RateKey, RateLimit, Target};
use quic_proxy::policy::limit::{Key, Limiter, MAX_KEYS};
use quic_proxy::policy::{CompressionStreams, Request, RoutePolicy};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Compressing responses measured at once, per coding.
const STREAMS: usize = 200;
/// Distinct keys a rotating client sends.
const ROTATING_KEYS: u64 = 1_000_000;

fn rss_kib() -> Result<u64, Box<dyn Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kib = line.split_whitespace().next().ok_or("an empty VmRSS line")?;
    Ok(kib.parse()?)
}

fn limit() -> RateLimit {
    RateLimit {
        requests_per_second: 10.0,
        burst: 5,
        key: RateKey::ClientAddress,
    }
}

/// Text like HTML, JSON and CSS: words from a vocabulary in a pseudo-random order, the same every run.
fn text(length: usize) -> Vec<u8> {
    let words: Vec<String> = (0..2000)
        .map(|n| format!("w{}{}", n * 7919 % 10007, ["ing", "ed", "s", ""][n % 4]))
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut text = Vec::with_capacity(length + 16);
    while text.len() < length {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        text.extend_from_slice(words[(seed % 2000) as usize].as_bytes());
        text.push(if seed.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    text.truncate(length);
    text
}

fn rate_limits() -> Result<(), Box<dyn Error>> {
    let before = rss_kib()?;
    let filled = Limiter::new(&limit(), MAX_KEYS);
    for n in 0..MAX_KEYS as u64 {
        let _ = filled.check(Key::numbered(n));
    }
    let grown = rss_kib()?.saturating_sub(before);
    println!(
        "rate limit, table full: {} keys tracked, RSS +{} KiB ({:.0} bytes per key)",
        filled.keys(),
        grown,
        grown as f64 * 1024.0 / filled.keys().max(1) as f64
    );
    drop(filled);

    let before = rss_kib()?;
    let rotating = Limiter::new(&limit(), MAX_KEYS);
    for n in 0..ROTATING_KEYS {
        let _ = rotating.check(Key::numbered(n));
    }
    println!(
        "rate limit, {ROTATING_KEYS} distinct keys in a row: {} kept, {} evicted, RSS +{} KiB",
        rotating.keys(),
        rotating.evicted(),
        rss_kib()?.saturating_sub(before)
    );
    Ok(())
}

fn compression(runtime: &tokio::runtime::Runtime) -> Result<(), Box<dyn Error>> {
    let input = Bytes::from(text(64 * 1024));
    for coding in [Coding::Zstd, Coding::Brotli, Coding::Gzip] {
        let streams = CompressionStreams::default();
        let actions = Actions {
            compress: Some(Compress {
                algorithms: vec![coding],
                min_size: 0,
                types: vec!["text/*".into()],
            }),
            ..Default::default()
        };
        let policy = RoutePolicy::new("measure".into(), &actions, &Target::Upstream("x".into()), None);
        let mut accept = HeaderMap::new();
        accept.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static(coding.token()));
        let request = Request {
            method: &http::Method::GET,
            headers: &accept,
            ranged: false,
            admitted: None,
            streams: &streams,
            max_streams: STREAMS,
        };
        let before = rss_kib()?;
        let mut bodies = Vec::with_capacity(STREAMS);
        let mut senders = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS {
            let (sender, body) = Body::channel(None);
            let mut response = http::Response::new(body);
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            let response = policy.respond(response, &request, None);
            if !response.headers().contains_key(http::header::CONTENT_ENCODING) {
                return Err(format!("{coding:?}: the response was not compressed").into());
            }
            bodies.push(response.into_body());
            senders.push(sender);
        }
        runtime.block_on(async {
            for sender in &senders {
                let _ = sender.data(input.clone()).await;
            }
        });
        let mut cx = Context::from_waker(Waker::noop());
        for body in &mut bodies {
            let _ = Pin::new(body).poll_frame(&mut cx);
        }
        let grown = rss_kib()?.saturating_sub(before);
        println!(
            "compression, {coding:?}: RSS +{grown} KiB for {STREAMS} responses after 64 KiB of text each, {:.0} KiB per response",
            grown as f64 / STREAMS as f64
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _entered = runtime.enter();
    rate_limits()?;
    compression(&runtime)
}
