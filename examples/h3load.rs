//! A load generator for the benchmark, HTTP/3 first:
//! `h3load URL CONNECTIONS STREAMS SECONDS [--http-version 3|2|1.1] [--rate N] [--connect-concurrency N]
//! [--timeout SECONDS]`.
//!
//! Opens CONNECTIONS connections (QUIC by default; HTTPS over TCP with `--http-version 2` or `1.1`, plain
//! HTTP/1.1 for an `http://` URL), each from its own socket as real clients do, at most
//! `--connect-concurrency` handshakes at a time, and keeps them alive while the others are set up. Once every
//! connection is up it prints `{"connected": N, ...}` and starts its clock: for SECONDS it keeps STREAMS
//! requests in flight on each connection (HTTP/1.1: one), or with `--rate` sends N requests per second in
//! total, spread over every stream (a request whose turn comes while its stream is busy goes as soon as the
//! stream is free). So a run with thousands of connections measures the steady state, not the handshakes.
//! A stream whose connection closes stops (and is counted as lost) rather than failing again and again.
//! Trusts any certificate (loopback benchmarks only). Ends with one JSON line: 2xx responses, other
//! responses, errors, requests/s over SECONDS, latency p50/p99 in milliseconds, and how the connections went.
#![forbid(unsafe_code)]

#[allow(dead_code)]
mod support;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf as _, Bytes};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Clone, Copy, PartialEq)]
enum Version {
    H3,
    H2,
    Http11,
}

struct Options {
    url: http::Uri,
    connections: usize,
    streams: usize,
    seconds: u64,
    version: Version,
    rate: Option<u64>,
    connect_concurrency: usize,
    timeout: Duration,
}

fn options() -> anyhow::Result<Options> {
    let usage = "usage: h3load URL CONNECTIONS STREAMS SECONDS [--http-version 3|2|1.1] [--rate N] \
                 [--connect-concurrency N] [--timeout SECONDS]";
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut options = Options {
        url: http::Uri::default(),
        connections: 0,
        streams: 0,
        seconds: 0,
        version: Version::H3,
        rate: None,
        connect_concurrency: 128,
        timeout: Duration::from_secs(5),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow!("{arg} needs a value; {usage}"));
        match arg.as_str() {
            "--http-version" => {
                options.version = match value()?.as_str() {
                    "3" => Version::H3,
                    "2" => Version::H2,
                    "1.1" => Version::Http11,
                    other => bail!("--http-version {other}: expected 3, 2 or 1.1"),
                }
            }
            "--rate" => options.rate = Some(value()?.parse().context("--rate")?),
            "--connect-concurrency" => {
                options.connect_concurrency = value()?.parse().context("--connect-concurrency")?
            }
            "--timeout" => options.timeout = Duration::from_secs(value()?.parse().context("--timeout")?),
            _ if arg.starts_with("--") => bail!("unknown option {arg}; {usage}"),
            _ => positional.push(arg),
        }
    }
    let [url, connections, streams, seconds] = positional.as_slice() else {
        bail!("{usage}");
    };
    options.url = url.parse().context("URL")?;
    options.connections = connections.parse().context("CONNECTIONS")?;
    options.streams = streams.parse().context("STREAMS")?;
    options.seconds = seconds.parse().context("SECONDS")?;
    if options.connections == 0 || options.streams == 0 || options.seconds == 0 || options.connect_concurrency == 0 {
        bail!("CONNECTIONS, STREAMS, SECONDS and --connect-concurrency must be positive");
    }
    if options.rate == Some(0) {
        bail!("--rate must be positive");
    }
    if options.version == Version::Http11 && options.streams != 1 {
        bail!("HTTP/1.1 carries one request at a time: STREAMS must be 1");
    }
    if options.url.scheme_str() == Some("http") && options.version != Version::Http11 {
        bail!("an http:// URL needs --http-version 1.1");
    }
    Ok(options)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    other_status: u64,
    errors: u64,
    /// Streams that stopped because their connection closed.
    lost: u64,
    first_error: Option<String>,
    /// Microseconds, of 2xx responses.
    latencies: Vec<u32>,
}

impl Tally {
    fn error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Hands out send times, one every 1/rate seconds from the start, to whichever stream asks next.
struct Schedule {
    start: Instant,
    rate: u64,
    issued: AtomicU64,
}

impl Schedule {
    fn next(&self) -> Instant {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.start + Duration::from_nanos(n.saturating_mul(1_000_000_000) / self.rate)
    }
}

/// One connection's request handle; HTTP/3 and HTTP/2 ones are cloned for each stream.
enum Sender {
    H3(h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>, quinn::Connection),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    Http11(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// A handle for one more stream on the same connection (HTTP/1.1 has one, checked by `options`).
    fn stream(&mut self) -> Option<Self> {
        match self {
            Self::H3(sender, connection) => Some(Self::H3(sender.clone(), connection.clone())),
            Self::H2(sender) => Some(Self::H2(sender.clone())),
            Self::Http11(_) => None,
        }
    }

    /// True once the connection is gone: its stream stops rather than spinning on errors.
    fn closed(&self) -> bool {
        match self {
            Self::H3(_, connection) => connection.close_reason().is_some(),
            Self::H2(sender) => sender.is_closed(),
            Self::Http11(sender) => sender.is_closed(),
        }
    }

    async fn get(&mut self, url: &http::Uri, authority: &str) -> anyhow::Result<http::StatusCode> {
        match self {
            Self::H3(sender, _) => {
                let mut stream = sender.send_request(http::Request::get(url.clone()).body(())?).await?;
                stream.finish().await?;
                let status = stream.recv_response().await?.status();
                while let Some(mut chunk) = stream.recv_data().await? {
                    chunk.advance(chunk.remaining());
                }
                Ok(status)
            }
            Self::H2(sender) => {
                let response = sender
                    .send_request(http::Request::get(url.clone()).body(Empty::new())?)
                    .await?;
                drain(response).await
            }
            Self::Http11(sender) => {
                sender.ready().await?;
                let path = url.path_and_query().map_or("/", |p| p.as_str());
                let request = http::Request::get(path)
                    .header(http::header::HOST, authority)
                    .body(Empty::new())?;
                drain(sender.send_request(request).await?).await
            }
        }
    }
}

async fn drain(response: http::Response<hyper::body::Incoming>) -> anyhow::Result<http::StatusCode> {
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

/// What keeps a connection open besides its sender: the QUIC endpoint (its socket).
type Guard = Option<quinn::Endpoint>;

async fn connect(options: &Options, target: &support::Target) -> anyhow::Result<(Sender, Guard)> {
    match options.version {
        Version::H3 => {
            // PINGs keep the first connections open while thousands of others are still being set up.
            let config = support::h3_client_config(Some(Duration::from_secs(5)))?;
            let endpoint = support::quic_endpoint(target.address, &config)?;
            let connection = endpoint
                .connect(target.address, &target.host)?
                .await
                .context("QUIC handshake")?;
            let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection.clone())).await?;
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
            Ok((Sender::H3(sender, connection), Some(endpoint)))
        }
        Version::H2 | Version::Http11 => {
            let tcp = tokio::net::TcpStream::connect(target.address).await?;
            tcp.set_nodelay(true)?;
            if options.url.scheme_str() == Some("http") {
                return Ok((http11(TokioIo::new(tcp)).await?, None));
            }
            let alpn: &[u8] = if options.version == Version::H2 {
                b"h2"
            } else {
                b"http/1.1"
            };
            let tls = Arc::new(support::insecure_tls(&[alpn], false)?);
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())?;
            let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
            if options.version == Version::H2 {
                let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await?;
                tokio::spawn(connection);
                Ok((Sender::H2(sender), None))
            } else {
                Ok((http11(TokioIo::new(stream)).await?, None))
            }
        }
    }
}

async fn http11<T>(io: TokioIo<T>) -> anyhow::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await?;
    tokio::spawn(connection);
    Ok(Sender::Http11(sender))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let options = Arc::new(options()?);
    let target = Arc::new(support::target(&options.url)?);

    let connect_started = Instant::now();
    let outcomes: Vec<anyhow::Result<(Sender, Guard)>> = futures_util::stream::iter(0..options.connections)
        .map(|_| {
            let (options, target) = (Arc::clone(&options), Arc::clone(&target));
            async move {
                match tokio::time::timeout(Duration::from_secs(30), connect(&options, &target)).await {
                    Ok(result) => result,
                    Err(_) => Err(anyhow!("connection not set up within 30 s")),
                }
            }
        })
        .buffer_unordered(options.connect_concurrency)
        .collect()
        .await;
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let mut connect_error = None;
    let mut connections = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(connection) => connections.push(connection),
            Err(error) => {
                connect_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let connect_errors = options.connections - connections.len();
    if connections.is_empty() {
        bail!(
            "no connection to {} succeeded: {}",
            options.url,
            connect_error.unwrap_or_default()
        );
    }
    println!(
        "{}",
        serde_json::json!({"connected": connections.len(), "connect_seconds": (connect_seconds * 1000.0).round() / 1000.0})
    );
    std::io::stdout().flush()?;

    let start = Instant::now();
    let deadline = start + Duration::from_secs(options.seconds);
    let schedule = options.rate.map(|rate| {
        Arc::new(Schedule {
            start,
            rate,
            issued: AtomicU64::new(0),
        })
    });
    let mut workers = Vec::new();
    let mut guards = Vec::new();
    for (mut sender, guard) in connections {
        guards.push(guard);
        for _ in 1..options.streams {
            if let Some(stream) = sender.stream() {
                workers.push(tokio::spawn(run_stream(
                    stream,
                    Arc::clone(&options),
                    Arc::clone(&target),
                    schedule.clone(),
                    deadline,
                )));
            }
        }
        workers.push(tokio::spawn(run_stream(
            sender,
            Arc::clone(&options),
            Arc::clone(&target),
            schedule.clone(),
            deadline,
        )));
    }
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await?;
        total.ok += tally.ok;
        total.other_status += tally.other_status;
        total.errors += tally.errors;
        total.lost += tally.lost;
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
        total.latencies.extend(tally.latencies);
    }
    drop(guards);
    total.latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((total.latencies.len() as f64 * p) as usize).min(total.latencies.len().saturating_sub(1));
        total.latencies.get(index).map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    let summary = serde_json::json!({
        "ok": total.ok,
        "other_status": total.other_status,
        "errors": total.errors,
        "streams_lost": total.lost,
        "first_error": total.first_error.or(connect_error),
        "rps": (total.ok as f64 / options.seconds as f64).round(),
        "p50_ms": (percentile(0.50) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(0.99) * 1000.0).round() / 1000.0,
        "connected": options.connections - connect_errors,
        "connect_errors": connect_errors,
        "connect_seconds": (connect_seconds * 1000.0).round() / 1000.0,
        "rate": options.rate,
    });
    println!("{summary}");
    Ok(())
}

async fn run_stream(
    mut sender: Sender,
    options: Arc<Options>,
    target: Arc<support::Target>,
    schedule: Option<Arc<Schedule>>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        if let Some(schedule) = &schedule {
            let at = schedule.next();
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        } else if Instant::now() >= deadline {
            break;
        }
        let started = Instant::now();
        match tokio::time::timeout(options.timeout, sender.get(&options.url, &target.authority)).await {
            Ok(Ok(status)) if status.is_success() => {
                tally.ok += 1;
                tally
                    .latencies
                    .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok(Ok(_)) => tally.other_status += 1,
            Ok(Err(error)) => tally.error(format!("{error:#}")),
            Err(_) => tally.error(format!("no response within {} s", options.timeout.as_secs())),
        }
        if sender.closed() {
            tally.lost += 1;
            break;
        }
    }
    tally
}
