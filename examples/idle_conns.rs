//! Holds connections open for the benchmark's memory figures:
//! `idle_conns MODE URL CONNECTIONS [--streams N] [--concurrency N] [--hold SECONDS]`.
//!
//! MODE is one of:
//! - `http1`, `https1`, `h2`, `h3`: each connection sends one GET, reads the whole response, then stays
//!   open and idle (a keep-alive connection between requests). HTTPS trusts any certificate.
//! - `h3-stalled`: each QUIC connection opens its control stream, then `--streams` request streams that
//!   send the start of a HEADERS frame (type, a declared length of 32, two bytes of it) and nothing more.
//!
//! QUIC connections send a PING every second so idle timeouts never close them. At most `--concurrency`
//! connections are set up at a time. Once all are set up it prints one JSON line with `"ready": true`; then
//! each line read on stdin is answered with a `"status"` line (connections still open, stalled streams the
//! server has cut or answered), and end of input, or `--hold` seconds, ends the program.
#![forbid(unsafe_code)]

#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncBufReadExt as _;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Http1,
    Https1,
    H2,
    H3,
    H3Stalled,
}

struct Options {
    mode: Mode,
    url: http::Uri,
    connections: usize,
    streams: usize,
    concurrency: usize,
    hold: Duration,
}

fn options() -> anyhow::Result<Options> {
    let usage = "usage: idle_conns http1|https1|h2|h3|h3-stalled URL CONNECTIONS [--streams N] [--concurrency N] [--hold SECONDS]";
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let (mut streams, mut concurrency, mut hold) = (1, 32, 300);
    while let Some(arg) = args.next() {
        let mut value = || -> anyhow::Result<usize> {
            args.next()
                .ok_or_else(|| anyhow!("{arg} needs a value; {usage}"))?
                .parse()
                .with_context(|| format!("{arg}: expected a number"))
        };
        match arg.as_str() {
            "--streams" => streams = value()?,
            "--concurrency" => concurrency = value()?,
            "--hold" => hold = value()?,
            _ if arg.starts_with("--") => bail!("unknown option {arg}; {usage}"),
            _ => positional.push(arg),
        }
    }
    let [mode, url, connections] = positional.as_slice() else {
        bail!("{usage}");
    };
    let mode = match mode.as_str() {
        "http1" => Mode::Http1,
        "https1" => Mode::Https1,
        "h2" => Mode::H2,
        "h3" => Mode::H3,
        "h3-stalled" => Mode::H3Stalled,
        other => bail!("unknown mode {other}; {usage}"),
    };
    let connections: usize = connections.parse().context("CONNECTIONS")?;
    if connections == 0 || streams == 0 || concurrency == 0 {
        bail!("CONNECTIONS, --streams and --concurrency must be positive");
    }
    Ok(Options {
        mode,
        url: url.parse().context("URL")?,
        connections,
        streams,
        concurrency,
        hold: Duration::from_secs(hold as u64),
    })
}

/// What the status lines report.
#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    cut_streams: AtomicUsize,
}

/// A connection's client-side handles: dropping them would close it.
type Held = Box<dyn std::any::Any + Send>;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let options = Arc::new(options()?);
    let counters = Arc::new(Counters::default());
    let quic_config = support::h3_client_config(Some(Duration::from_secs(1)))?;

    let outcomes: Vec<anyhow::Result<Held>> = futures_util::stream::iter(0..options.connections)
        .map(|_| {
            let (options, counters, quic_config) = (Arc::clone(&options), Arc::clone(&counters), quic_config.clone());
            async move {
                match tokio::time::timeout(Duration::from_secs(15), open(&options, &counters, &quic_config)).await {
                    Ok(result) => result,
                    Err(_) => Err(anyhow!("not set up within 15 s")),
                }
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let mut held = Vec::with_capacity(outcomes.len());
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(connection) => held.push(connection),
            Err(error) => {
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let ready = serde_json::json!({
        "ready": true,
        "connections": held.len(),
        "failed": options.connections - held.len(),
        "streams_per_connection": if options.mode == Mode::H3Stalled { options.streams } else { 0 },
        "first_error": first_error,
    });
    println!("{ready}");

    let hold = tokio::time::sleep(options.hold);
    tokio::pin!(hold);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            () = &mut hold => break,
            line = lines.next_line() => match line {
                Ok(Some(_)) => {
                    let status = serde_json::json!({
                        "status": true,
                        "open_connections": counters.open.load(Ordering::Relaxed),
                        "cut_streams": counters.cut_streams.load(Ordering::Relaxed),
                    });
                    println!("{status}");
                }
                _ => break,
            },
        }
    }
    drop(held);
    Ok(())
}

async fn open(options: &Options, counters: &Arc<Counters>, quic_config: &quinn::ClientConfig) -> anyhow::Result<Held> {
    let target = support::target(&options.url)?;
    match options.mode {
        Mode::Http1 | Mode::Https1 | Mode::H2 => {
            let tcp = tokio::net::TcpStream::connect(target.address).await?;
            tcp.set_nodelay(true)?;
            if options.mode == Mode::Http1 {
                return http1(TokioIo::new(tcp), &target, &options.url, counters).await;
            }
            let alpn: &[u8] = if options.mode == Mode::H2 { b"h2" } else { b"http/1.1" };
            let tls = support::insecure_tls(&[alpn], false)?;
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await?;
            if options.mode == Mode::H2 {
                h2(TokioIo::new(stream), &options.url, counters).await
            } else {
                http1(TokioIo::new(stream), &target, &options.url, counters).await
            }
        }
        Mode::H3 => {
            let endpoint = support::quic_endpoint(target.address, quic_config)?;
            let connection = endpoint.connect(target.address, &target.host)?.await?;
            watch_quic(&connection, counters);
            let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(connection)).await?;
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
            let mut stream = sender
                .send_request(http::Request::get(options.url.clone()).body(())?)
                .await?;
            stream.finish().await?;
            let status = stream.recv_response().await?.status();
            while stream.recv_data().await?.is_some() {}
            check_status(status)?;
            Ok(Box::new((endpoint, sender)))
        }
        Mode::H3Stalled => {
            let endpoint = support::quic_endpoint(target.address, quic_config)?;
            let connection = endpoint.connect(target.address, &target.host)?.await?;
            watch_quic(&connection, counters);
            // The control stream (type 0) with an empty SETTINGS frame; it must stay open.
            let mut control = connection.open_uni().await?;
            control.write_all(&[0x00, 0x04, 0x00]).await?;
            let mut held = vec![control];
            for _ in 0..options.streams {
                let (mut send, mut recv) = connection.open_bi().await?;
                // HEADERS (type 1) declaring 32 bytes, of which only the QPACK prefix's two arrive.
                send.write_all(&[0x01, 0x20, 0x00, 0x00]).await?;
                let stopped = send.stopped();
                let counters = Arc::clone(counters);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    tokio::select! {
                        _ = stopped => {}
                        _ = recv.read(&mut buffer) => {}
                    }
                    counters.cut_streams.fetch_add(1, Ordering::Relaxed);
                });
                held.push(send);
            }
            Ok(Box::new((endpoint, held)))
        }
    }
}

fn check_status(status: http::StatusCode) -> anyhow::Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        bail!("answered {status}")
    }
}

/// Counts the connection as open until the QUIC connection closes.
fn watch_quic(connection: &quinn::Connection, counters: &Arc<Counters>) {
    counters.open.fetch_add(1, Ordering::Relaxed);
    let (connection, counters) = (connection.clone(), Arc::clone(counters));
    tokio::spawn(async move {
        connection.closed().await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
    });
}

async fn http1<T>(
    io: TokioIo<T>,
    target: &support::Target,
    url: &http::Uri,
    counters: &Arc<Counters>,
) -> anyhow::Result<Held>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await?;
    counters.open.fetch_add(1, Ordering::Relaxed);
    let counters = Arc::clone(counters);
    tokio::spawn(async move {
        let _ = connection.await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
    });
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, &target.authority)
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    check_status(status)?;
    Ok(Box::new(sender))
}

async fn h2<T>(io: TokioIo<T>, url: &http::Uri, counters: &Arc<Counters>) -> anyhow::Result<Held>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), io).await?;
    counters.open.fetch_add(1, Ordering::Relaxed);
    let counters = Arc::clone(counters);
    tokio::spawn(async move {
        let _ = connection.await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
    });
    let response = sender
        .send_request(http::Request::get(url.clone()).body(Empty::new())?)
        .await?;
    let status = response.status();
    response.into_body().collect().await?;
    check_status(status)?;
    Ok(Box::new(sender))
}
