//! Microbenchmarks of the pure pieces every request runs through, for a fast loop while working on speed
//! (`make bench-micro`). The side-by-side figures against other proxies live in `make bench`.

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::uri::{Authority, Scheme};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use quic_proxy::balancer::{Backend, Balancer};
use quic_proxy::body::{Body, FailureFlag};
use quic_proxy::config::{Algorithm, BackendConfig, UpstreamProtocol};
use quic_proxy::error::ProxyError;
use quic_proxy::server::framing::FramingWatch;
use quic_proxy::wire::{self, chunked};

/// A keep-alive stream of requests as a client sends them: GETs, a Content-Length upload and a chunked one.
fn request_stream(rounds: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    for _ in 0..rounds {
        stream.extend_from_slice(
            b"GET /api/items?page=2 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\
              Accept-Encoding: gzip, br\r\nCookie: session=0123456789abcdef\r\n\r\n",
        );
        stream.extend_from_slice(
            b"POST /api/items HTTP/1.1\r\nHost: example.test\r\nContent-Type: application/json\r\n\
              Content-Length: 27\r\n\r\n{\"name\":\"widget\",\"n\":12345}",
        );
        stream.extend_from_slice(
            b"POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              10\r\n0123456789abcdef\r\n8;ext=1\r\n01234567\r\n0\r\n\r\n",
        );
    }
    stream
}

/// Reads everything the framing watch passes on, as hyper would.
fn drain(watch: &mut FramingWatch<TokioIo<std::io::Cursor<Vec<u8>>>>, buffer: &mut [u8]) -> usize {
    use hyper::rt::Read as _;
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        let mut read = hyper::rt::ReadBuf::new(buffer);
        match Pin::new(&mut *watch).poll_read(&mut cx, read.unfilled()) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return total,
            Poll::Ready(Ok(())) => total += read.filled().len(),
            Poll::Ready(Err(_)) | Poll::Pending => return total,
        }
    }
}

fn framing(c: &mut Criterion) {
    let stream = request_stream(100);
    let mut group = c.benchmark_group("framing watch");
    group.throughput(Throughput::Elements(300));
    group.bench_function("300 keep-alive requests", |b| {
        let mut buffer = vec![0u8; 8192];
        b.iter_batched(
            || FramingWatch::new(TokioIo::new(std::io::Cursor::new(stream.clone())), 64 * 1024).0,
            |mut watch| black_box(drain(&mut watch, &mut buffer)),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn response_head(c: &mut Criterion) {
    let head = b"HTTP/1.1 200 OK\r\nServer: backend\r\nDate: Mon, 07 Dec 2026 03:40:55 GMT\r\n\
                 Content-Type: application/json\r\nContent-Length: 512\r\nCache-Control: no-cache\r\n\
                 X-Request-Id: 0123456789abcdef\r\nVary: Accept-Encoding\r\nConnection: keep-alive\r\n\r\n";
    c.bench_function("response head, 8 fields", |b| {
        b.iter(|| black_box(wire::response_head(black_box(head))))
    });
}

fn chunked_body(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend_from_slice(&[b'x'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\ngrpc-status: 0\r\n\r\n");
    let mut group = c.benchmark_group("chunked decoder");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("64 KiB in 4 KiB chunks", |b| {
        b.iter(|| {
            let mut decoder = chunked::Decoder::new(64 * 1024);
            let mut input = &body[..];
            let mut data = 0;
            while !decoder.is_done() {
                let used = match decoder.step(input) {
                    Ok(chunked::Step::Framing(n) | chunked::Step::Trailers(n)) => n,
                    Ok(chunked::Step::Data(n)) => {
                        data += n;
                        n
                    }
                    Err(_) => break,
                };
                input = &input[used..];
            }
            black_box(data)
        })
    });
    group.finish();
}

fn backends(count: usize) -> Vec<Arc<Backend>> {
    (0..count)
        .map(|n| {
            let config = BackendConfig {
                name: format!("backend{n}"),
                scheme: Scheme::HTTP,
                authority: Authority::try_from(format!("127.0.0.1:{}", 9000 + n)).expect("authority"),
                weight: 1 + (n as u32 % 3),
                health_url: None,
                protocol: UpstreamProtocol::Auto,
                tls: None,
                address: None,
            };
            Arc::new(Backend::new("bench", &config).expect("backend"))
        })
        .collect()
}

fn maglev(c: &mut Criterion) {
    let pool = backends(10);
    c.bench_function("maglev build, 10 backends", |b| {
        b.iter(|| black_box(Balancer::new(Algorithm::Hash, black_box(&pool))))
    });
    let balancer = Balancer::new(Algorithm::Hash, &pool);
    let mut key = 0u64;
    c.bench_function("maglev lookup", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            black_box(balancer.select(&pool, |_| true, Some(key)))
        })
    });
}

/// Polls a body to its end, counting its bytes.
fn read_all(mut body: Body) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut bytes = 0;
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        bytes += frame.data_ref().map_or(0, Bytes::len);
    }
    bytes
}

fn body_chain(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime for the body timers");
    let _entered = runtime.enter();
    let data = Bytes::from_static(&[b'x'; 512]);
    let mut group = c.benchmark_group("body");
    group.bench_function("full, bare", |b| {
        b.iter(|| black_box(read_all(Body::full(data.clone()))))
    });
    group.bench_function("full, boxed", |b| {
        b.iter(|| {
            black_box(read_all(Body::boxed(
                http_body_util::Full::new(data.clone()).map_err(|never| match never {}),
            )))
        })
    });
    group.bench_function("full, every wrapper of a proxied response", |b| {
        b.iter(|| {
            let body = Body::full(data.clone())
                .with_exact_length()
                .with_idle_timeout(Duration::from_secs(60), ProxyError::ClientBodyFailed)
                .with_observer(FailureFlag::default())
                .with_meter(metrics::Histogram::noop());
            black_box(read_all(body))
        })
    });
    group.finish();
}

criterion_group!(hot_paths, framing, response_head, chunked_body, maglev, body_chain);
criterion_main!(hot_paths);
