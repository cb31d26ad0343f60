//! The HTTP/3 ceiling for the benchmark: a quinn + h3 server that answers every request itself with a fixed
//! response, so its cost per request is what QUIC, TLS and HTTP/3 alone cost with the crates and transport
//! settings quic-proxy uses (its defaults: 100 concurrent streams, 1 MiB stream and 8 MiB connection
//! windows, 30 s idle timeout, 4 MiB UDP buffers, TLS 1.3 only, no 0-RTT, GREASE on).
//!
//! `h3bare --listen 127.0.0.1:0 --cert server.crt --key server.key [--workers N] [--single-endpoint]
//! [--body-bytes N]`
//!
//! Thread per core: `--workers` threads (default one per core), each with a current-thread tokio runtime
//! and its own quinn endpoint on a UDP socket of one SO_REUSEPORT group, so a connection lives on one
//! thread from its first packet and nothing crosses threads per request. The kernel spreads clients over
//! the sockets by address, so clients with one UDP socket each (like browsers, oha and h3load) are spread.
//! A client that changes address mid-connection may land on another thread's socket, which does not know
//! the connection; a benchmark's clients never do. `--single-endpoint` instead runs one endpoint on a
//! multi-thread runtime with `--workers` threads, for comparison.
//! Prints `{"listening": "ADDR", "workers": N}` once every socket is bound.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Buf as _, Bytes};
use clap::Parser;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Parser)]
struct Args {
    /// UDP address; port 0 picks a free one.
    #[arg(long)]
    listen: SocketAddr,
    /// PEM certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
    /// Worker threads, each with its own endpoint; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// One endpoint on a multi-thread runtime instead of one endpoint per thread.
    #[arg(long)]
    single_endpoint: bool,
    /// Size of the response body (the benchmark passes what the demo backend answers through the proxy).
    #[arg(long, default_value_t = 512)]
    body_bytes: usize,
}

const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let server_config = server_config(&args)?;
    let body = Bytes::from(vec![b'x'; args.body_bytes]);

    if args.single_endpoint {
        let socket = udp_socket(args.listen, false).with_context(|| format!("cannot bind {}", args.listen))?;
        let address = socket.local_addr()?.as_socket().context("not an IP socket")?;
        println!("{{\"listening\": \"{address}\", \"workers\": {workers}}}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?;
        return runtime.block_on(serve(socket.into(), server_config, body));
    }
    let mut sockets = Vec::with_capacity(workers);
    let mut address = args.listen;
    for _ in 0..workers {
        let socket = udp_socket(address, workers > 1).with_context(|| format!("cannot bind {address}"))?;
        // The others join the first socket's port, which the OS may have chosen.
        address = socket.local_addr()?.as_socket().context("not an IP socket")?;
        sockets.push(socket);
    }
    println!("{{\"listening\": \"{address}\", \"workers\": {workers}}}");

    let threads: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let (server_config, body) = (server_config.clone(), body.clone());
            std::thread::Builder::new()
                .name(format!("h3bare-{index}"))
                .spawn(move || -> anyhow::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(serve(socket.into(), server_config, body))
                })
        })
        .collect::<Result<_, _>>()?;
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
    }
    Ok(())
}

fn server_config(args: &Args) -> anyhow::Result<quinn::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(&args.cert)?.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(&args.key)?.as_slice())?.context("no private key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(100))
        .max_concurrent_uni_streams(VarInt::from_u32(3))
        .max_idle_timeout(Some(IdleTimeout::try_from(Duration::from_secs(30))?))
        .stream_receive_window(VarInt::from_u32(1024 * 1024))
        .receive_window(VarInt::from_u32(8 * 1024 * 1024))
        .send_window(8 * 1024 * 1024);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn udp_socket(address: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

async fn serve(socket: std::net::UdpSocket, config: quinn::ServerConfig, body: Bytes) -> anyhow::Result<()> {
    let runtime = quinn::default_runtime().context("no async runtime")?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime)?;
    while let Some(incoming) = endpoint.accept().await {
        let body = body.clone();
        tokio::spawn(async move {
            if let Ok(connection) = incoming.await {
                serve_connection(connection, body).await;
            }
        });
    }
    Ok(())
}

async fn serve_connection(connection: quinn::Connection, body: Bytes) {
    let built = h3::server::builder()
        .max_field_section_size(64 * 1024)
        .send_grease(true)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await;
    let Ok(mut h3) = built else { return };
    while let Ok(Some(resolver)) = h3.accept().await {
        let body = body.clone();
        tokio::spawn(async move {
            let Ok((_request, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            // Read the request to its end, as a server that honours request bodies must.
            while let Ok(Some(mut chunk)) = stream.recv_data().await {
                chunk.advance(chunk.remaining());
            }
            let response = http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::CONTENT_LENGTH, body.len())
                .header("x-backend", "h3bare")
                .body(())
                .unwrap_or_default();
            if stream.send_response(response).await.is_ok() && stream.send_data(body).await.is_ok() {
                let _ = stream.finish().await;
            }
        });
    }
}
