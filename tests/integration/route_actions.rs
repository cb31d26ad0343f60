//! What a route does besides proxying, the same over HTTP/1.1, HTTP/2 and HTTP/3: redirects and direct
//! answers with placeholders, static files (index, content types, validators and 304, ranges, precompressed
//! siblings, nothing outside the root), access lists, rate limits with the RateLimit fields, path rewriting,
//! header rules, compression negotiated by q-value, request IDs, and per-client connection limits.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use quic_proxy::app::Running;
use tempfile::TempDir;

use crate::support::http3::*;
use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    Http3,
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Http3];

impl Protocol {
    fn tenant(self) -> &'static str {
        match self {
            Self::Http1 => "tenant-h1",
            Self::Http2 => "tenant-h2",
            Self::Http3 => "tenant-h3",
        }
    }
}

/// A style sheet big enough to compress, and compressible.
fn stylesheet() -> Vec<u8> {
    let mut css = Vec::new();
    for n in 0..200 {
        css.extend_from_slice(format!(".item-{n} {{ color: #333; margin: 0 auto; padding: 4px; }}\n").as_bytes());
    }
    css
}

/// The site under a fresh root: an index, a style sheet with a brotli sibling, binary data, a directory
/// with its own index, a symbolic link inside the root and one that leads out of it.
fn site(outside: &Path) -> TempDir {
    let root = tempfile::tempdir().expect("a temporary root");
    let write = |name: &str, bytes: &[u8]| {
        let path = root.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a directory");
        }
        std::fs::write(path, bytes).expect("write a file");
    };
    write(
        "index.html",
        b"<!doctype html><title>home</title><link rel=stylesheet href=app.css>",
    );
    write("app.css", &stylesheet());
    let mut brotli = Vec::new();
    {
        let mut encoder = brotli::CompressorWriter::new(&mut brotli, 4096, 5, 20);
        encoder.write_all(&stylesheet()).expect("compress the sibling");
    }
    write("app.css.br", &brotli);
    write("data.bin", &(0..=255u8).cycle().take(5000).collect::<Vec<u8>>());
    write("docs/index.html", b"<!doctype html><title>docs</title>");
    std::fs::write(outside.join("secret.txt"), b"never served").expect("a file outside the root");
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.path().join("leak.txt")).expect("a link out");
    std::os::unix::fs::symlink(root.path().join("data.bin"), root.path().join("alias.bin")).expect("a link in");
    root
}

struct Fixture {
    running: Running,
    certs: TestCerts,
    _root: TempDir,
    _outside: TempDir,
}

async fn fixture(server_extra: &[&str]) -> Fixture {
    let outside = tempfile::tempdir().expect("a directory outside the root");
    let root = site(outside.path());
    let api = start_backends(&["api1"])[0];
    let certs = TestCerts::generate();
    let tls = certs.server_line();
    let mut server: Vec<&str> = vec![tls.as_str()];
    server.extend_from_slice(server_extra);
    let rest = format!(
        r#"upstreams:
  api: {{backends: [{{name: api1, url: "http://{api}"}}]}}
route_defaults:
  response_headers: {{set: {{x-served-by: quic-proxy}}}}
routes:
  - {{path: "/old/*", strip_prefix: "/old", redirect: {{to: "{{scheme}}://{{host}}/new{{path}}?{{query}}", status: 301}}}}
  - {{path: "/maint", respond: {{status: 503, body: "down for maintenance ({{request_id}})"}}}}
  - {{path: "/static/*", static: {{root: {root:?}}}, strip_prefix: "/static", compress: true}}
  - {{path: "/private/*", upstream: api, allow: ["10.0.0.0/8"]}}
  - {{path: "/open/*", upstream: api, deny: ["10.0.0.0/8"]}}
  - {{path: "/login", upstream: api, rate_limit: {{requests_per_second: 0.1, burst: 2, key: {{header: x-tenant}}}}}}
  - path: "/api/*"
    upstream: api
    strip_prefix: "/api"
    request_headers: {{set: {{x-env: prod}}, add: {{x-client: "{{client_ip}}"}}, remove: [x-debug]}}
    response_headers: {{set: {{strict-transport-security: "max-age=31536000"}}, remove: [x-backend]}}
    compress: {{algorithms: [gzip], min_size: 10}}
  - {{path: "/v1/*", upstream: api, rewrite: {{regex: "^/v1/(.*)$", replacement: "/v2/$1"}}}}
"#,
        root = root.path().display().to_string(),
    );
    let running = start_tls_proxy(&render_config(&server, &rest)).await;
    Fixture {
        running,
        certs,
        _root: root,
        _outside: outside,
    }
}

/// One request over `protocol`, its answer read whole.
async fn send(fixture: &Fixture, protocol: Protocol, request: Request<Bytes>) -> Reply {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    match protocol {
        Protocol::Http1 => {
            let client = HttpClient::new(fixture.running.fallback_addr);
            let mut request = client.request(parts.method.as_str(), &path);
            for (name, value) in &parts.headers {
                request = request.header(name, value);
            }
            client.send(request.body(full(body)).expect("request")).await
        }
        Protocol::Http2 => {
            let (mut sender, authority) = h2_connect(&fixture.running, &fixture.certs).await;
            let mut request = Request::builder()
                .method(parts.method.clone())
                .uri(format!("https://{authority}{path}"));
            for (name, value) in &parts.headers {
                request = request.header(name, value);
            }
            let response = sender
                .send_request(request.body(full(body)).expect("request"))
                .await
                .expect("HTTP/2 request");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("the body").to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        }
        Protocol::Http3 => {
            let mut client = H3Client::connect(quic_addr(&fixture.running), &fixture.certs).await;
            let mut request = client.sender.request(parts.method.as_str(), &path);
            for (name, value) in &parts.headers {
                request = request.header(name, value);
            }
            let chunks = if body.is_empty() { vec![] } else { vec![body] };
            let reply = client
                .sender
                .send(request.body(()).expect("request"), chunks)
                .await
                .expect("HTTP/3 request");
            client.close().await;
            Reply {
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
            }
        }
    }
}

async fn get(fixture: &Fixture, protocol: Protocol, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(fixture, protocol, request.body(Bytes::new()).expect("request")).await
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

/// The host the client named, as `{host}` renders it.
fn host_of(fixture: &Fixture, protocol: Protocol) -> String {
    match protocol {
        Protocol::Http1 => fixture.running.fallback_addr.ip().to_string(),
        _ => SERVER_NAME.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_direct_answers_render_their_placeholders() {
    guarded(async {
        let fixture = fixture(&[]).await;
        for protocol in PROTOCOLS {
            let moved = get(&fixture, protocol, "/old/a/b?x=1", &[]).await;
            assert_eq!(moved.status, StatusCode::MOVED_PERMANENTLY, "{protocol:?}");
            let scheme = if protocol == Protocol::Http1 { "http" } else { "https" };
            let expected = format!("{scheme}://{}/new/a/b?x=1", host_of(&fixture, protocol));
            assert_eq!(moved.header("location"), Some(expected.as_str()), "{protocol:?}");
            assert_eq!(moved.header("x-served-by"), Some("quic-proxy"), "route_defaults apply");

            let down = get(&fixture, protocol, "/maint", &[]).await;
            assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
            let id = down.header("x-request-id").expect("a request ID").to_owned();
            assert_eq!(id.len(), 32, "{id}");
            assert_eq!(down.text(), format!("down for maintenance ({id})"));
            assert_eq!(down.header("content-type"), Some("text/plain; charset=utf-8"));
        }
        assert!(fixture.running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_served_with_validators_ranges_and_encodings() {
    guarded(async {
        let fixture = fixture(&[]).await;
        let css = stylesheet();
        for protocol in PROTOCOLS {
            let home = get(&fixture, protocol, "/static/", &[]).await;
            assert_eq!(home.status, StatusCode::OK, "{protocol:?}");
            assert_eq!(home.header("content-type"), Some("text/html; charset=utf-8"));
            assert!(home.text().contains("<title>home</title>"));
            let docs = get(&fixture, protocol, "/static/docs", &[]).await;
            assert_eq!(docs.status, StatusCode::PERMANENT_REDIRECT);
            assert_eq!(docs.header("location"), Some("/static/docs/"));
            assert!(get(&fixture, protocol, "/static/docs/", &[])
                .await
                .text()
                .contains("docs"));

            // Identity: the file as it is, with its validators.
            let plain = get(&fixture, protocol, "/static/app.css", &[]).await;
            assert_eq!(plain.status, StatusCode::OK);
            assert_eq!(plain.body.as_ref(), css.as_slice());
            assert_eq!(plain.header("content-type"), Some("text/css; charset=utf-8"));
            assert_eq!(plain.header("accept-ranges"), Some("bytes"));
            let etag = plain.header("etag").expect("an ETag").to_owned();
            assert!(etag.starts_with('"'), "a strong ETag: {etag}");
            let modified = plain.header("last-modified").expect("Last-Modified").to_owned();
            assert_eq!(
                get(&fixture, protocol, "/static/app.css", &[("if-none-match", &etag)])
                    .await
                    .status,
                StatusCode::NOT_MODIFIED
            );
            assert_eq!(
                get(
                    &fixture,
                    protocol,
                    "/static/app.css",
                    &[("if-modified-since", &modified)]
                )
                .await
                .status,
                StatusCode::NOT_MODIFIED
            );

            // The brotli sibling for a client that takes brotli; compressed on the fly for gzip.
            let br = get(
                &fixture,
                protocol,
                "/static/app.css",
                &[("accept-encoding", "gzip;q=0.5, br")],
            )
            .await;
            assert_eq!(br.header("content-encoding"), Some("br"), "{protocol:?}");
            let mut decoded = Vec::new();
            brotli::Decompressor::new(br.body.as_ref(), 4096)
                .read_to_end(&mut decoded)
                .expect("a brotli body");
            assert_eq!(decoded, css);
            assert!(br.header("vary").is_some_and(|v| v.contains("Accept-Encoding")));
            let gz = get(&fixture, protocol, "/static/app.css", &[("accept-encoding", "gzip")]).await;
            assert_eq!(gz.header("content-encoding"), Some("gzip"));
            assert_eq!(gunzip(&gz.body), css);
            assert!(
                gz.header("etag").is_some_and(|e| e.starts_with("W/")),
                "compressed: a weak ETag"
            );

            // Ranges: one range 206, unsatisfiable 416; never compressed.
            let part = get(
                &fixture,
                protocol,
                "/static/data.bin",
                &[("range", "bytes=10-19"), ("accept-encoding", "gzip")],
            )
            .await;
            assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(part.header("content-range"), Some("bytes 10-19/5000"));
            assert_eq!(part.body.as_ref(), &(10..20).collect::<Vec<u8>>()[..]);
            assert_eq!(part.header("content-encoding"), None);
            let past = get(&fixture, protocol, "/static/data.bin", &[("range", "bytes=9000-")]).await;
            assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
            assert_eq!(past.header("content-range"), Some("bytes */5000"));

            // HEAD: the headers, no body.
            let head = send(
                &fixture,
                protocol,
                Request::head("/static/data.bin").body(Bytes::new()).expect("request"),
            )
            .await;
            assert_eq!(head.header("content-length"), Some("5000"));
            assert!(head.body.is_empty());

            // Nothing outside the root; links inside it are fine.
            for outside in [
                "/static/leak.txt",
                "/static/%2e%2e/secret.txt",
                "/static/a%2f..%2fsecret.txt",
                "/static/missing.txt",
            ] {
                let refused = get(&fixture, protocol, outside, &[]).await;
                assert_eq!(refused.status, StatusCode::NOT_FOUND, "{protocol:?} {outside}");
                assert!(!refused.text().contains("never served"));
            }
            assert_eq!(get(&fixture, protocol, "/static/alias.bin", &[]).await.body.len(), 5000);
            let post = send(
                &fixture,
                protocol,
                Request::post("/static/app.css")
                    .body(Bytes::from_static(b"x"))
                    .expect("request"),
            )
            .await;
            assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        }
        assert!(fixture.running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lists_rate_limits_rewrites_header_rules_and_compression() {
    guarded(async {
        let fixture = fixture(&[]).await;
        for protocol in PROTOCOLS {
            assert_eq!(
                get(&fixture, protocol, "/private/x", &[]).await.status,
                StatusCode::FORBIDDEN
            );
            let open = get(&fixture, protocol, "/open/x", &[]).await;
            assert_eq!(open.status, StatusCode::OK, "{protocol:?}");
            assert_eq!(open.header("x-served-by"), Some("quic-proxy"));

            // Two requests of the burst, then 429 until the bucket refills (one per 10 s).
            let tenant = [("x-tenant", protocol.tenant())];
            let first = get(&fixture, protocol, "/login", &tenant).await;
            assert_eq!(first.status, StatusCode::OK, "{protocol:?}");
            assert_eq!(first.header("ratelimit-policy"), Some("\"route\";q=2;w=20"));
            assert!(first
                .header("ratelimit")
                .is_some_and(|v| v.starts_with("\"route\";r=1;")));
            assert_eq!(get(&fixture, protocol, "/login", &tenant).await.status, StatusCode::OK);
            let limited = get(&fixture, protocol, "/login", &tenant).await;
            assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
            let retry_after: u64 = limited
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .expect("Retry-After");
            assert!((1..=10).contains(&retry_after), "{retry_after}");
            assert!(limited
                .header("ratelimit")
                .is_some_and(|v| v.starts_with("\"route\";r=0;")));

            // Strip the prefix, set, add and remove request fields; set and remove response fields;
            // compress with gzip only.
            let api = get(
                &fixture,
                protocol,
                "/api/items?page=2",
                &[("x-debug", "1"), ("accept-encoding", "br, gzip;q=0.5")],
            )
            .await;
            assert_eq!(api.status, StatusCode::OK);
            assert_eq!(api.header("content-encoding"), Some("gzip"), "{protocol:?}");
            assert_eq!(api.header("strict-transport-security"), Some("max-age=31536000"));
            assert_eq!(api.header("x-backend"), None, "removed");
            assert_eq!(
                api.header("x-served-by"),
                None,
                "the route's own rules replace route_defaults"
            );
            let seen: serde_json::Value = serde_json::from_slice(&gunzip(&api.body)).expect("JSON");
            assert_eq!(seen["path"], "/items");
            assert_eq!(seen["query"], "page=2");
            let header = |name: &str| seen_header_values(&seen, name);
            assert_eq!(header("x-env"), Some(vec!["prod".to_owned()]));
            assert_eq!(header("x-client"), Some(vec!["127.0.0.1".to_owned()]));
            assert_eq!(header("x-debug"), None);
            assert_eq!(
                header("x-request-id"),
                api.header("x-request-id").map(|id| vec![id.to_owned()]),
                "the backend sees the ID the client gets"
            );
            let rewritten = get(&fixture, protocol, "/v1/users/7", &[]).await;
            assert_eq!(rewritten.json()["path"], "/v2/users/7");
        }
        assert!(fixture.running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_client_is_the_one_access_lists_and_ids_believe() {
    guarded(async {
        let fixture = fixture(&["trusted_proxies: [\"127.0.0.1/32\"]"]).await;
        let forwarded = [("x-forwarded-for", "10.1.2.3"), ("x-request-id", "upstream-id-1")];
        let inside = get(&fixture, Protocol::Http1, "/private/x", &forwarded).await;
        assert_eq!(inside.status, StatusCode::OK);
        assert_eq!(
            inside.header("x-request-id"),
            Some("upstream-id-1"),
            "a trusted hop's ID is kept"
        );
        assert_eq!(
            get(&fixture, Protocol::Http1, "/open/x", &forwarded).await.status,
            StatusCode::FORBIDDEN
        );
        assert!(fixture.running.shutdown().await);

        let untrusted = fixture_without_trust().await;
        let reply = get(&untrusted, Protocol::Http1, "/private/x", &forwarded).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "an untrusted peer's X-Forwarded-For is not believed"
        );
        assert_ne!(
            reply.header("x-request-id"),
            Some("upstream-id-1"),
            "nor its request ID"
        );
        assert!(untrusted.running.shutdown().await);
    })
    .await;
}

async fn fixture_without_trust() -> Fixture {
    fixture(&[]).await
}

/// Opens TCP connections to `addr` until one is closed without an answer; how many stayed open.
async fn tcp_connections_kept(addr: SocketAddr, tries: usize) -> (usize, Vec<tokio::net::TcpStream>) {
    let mut kept = Vec::new();
    for _ in 0..tries {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        if head.is_empty() {
            break;
        }
        kept.push(stream);
    }
    (kept.len(), kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_has_its_share_of_connections_and_no_more() {
    guarded(async {
        let fixture = fixture(&["max_connections_per_client: 2"]).await;
        let (kept, streams) = tcp_connections_kept(fixture.running.fallback_addr, 5).await;
        assert_eq!(kept, 2, "the third TCP connection is closed on accept");
        drop(streams);
        // Freed when they close: another connection gets in.
        wait_until(|| fixture.running.shared().clients_connected().0 == 0).await;
        assert_eq!(tcp_connections_kept(fixture.running.fallback_addr, 1).await.0, 1);

        let mut quic = Vec::new();
        for _ in 0..2 {
            let mut client = H3Client::connect(quic_addr(&fixture.running), &fixture.certs).await;
            assert_eq!(client.get("/open/x").await.expect("an answer").status, StatusCode::OK);
            quic.push(client);
        }
        let (_endpoint, third) = connect_quic(quic_addr(&fixture.running), &fixture.certs)
            .await
            .expect("the handshake completes; the connection is closed after it");
        let closed = third.closed().await;
        assert!(
            format!("{closed:?}").contains("too many connections from this address"),
            "{closed:?}"
        );
        let metrics = quic_proxy::metrics::install().expect("the recorder").render();
        for protocol in ["tcp", "quic"] {
            assert!(
                sample_sum(&metrics, "client_connections_refused_total", &[("protocol", protocol)]) >= 1.0,
                "{protocol}"
            );
        }
        drop(quic);
        assert!(fixture.running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_routes_rate_limit_unless_its_settings_change() {
    guarded(async {
        let api = start_backends(&["api1"])[0];
        let config = |front: &str, burst: u32| {
            render_config(
                &[],
                &format!(
                    "upstreams:\n  api: {{backends: [{{name: api1, url: \"http://{api}\"}}]}}\nroutes:\n{front}  \
                     - {{path: /login, upstream: api, rate_limit: {{requests_per_second: 0.01, burst: {burst}, key: route}}}}\n"
                ),
            )
        };
        let parse = |yaml: &str| {
            quic_proxy::config::Config::parse(Path::new("integration-test.yaml"), yaml)
                .unwrap_or_else(|e| panic!("config rejected: {e}"))
        };
        let running = start_proxy(&config("", 1)).await;
        let client = HttpClient::new(running.fallback_addr);
        let login = || client.get("/login");
        assert_eq!(login().await.status, StatusCode::OK);
        assert_eq!(login().await.status, StatusCode::TOO_MANY_REQUESTS);

        // Another route in front, the same limit: the bucket is the same, still empty.
        let front = "  - {path: /health-page, respond: {status: 200, body: ok}}\n";
        running.shared().reload(parse(&config(front, 1))).await.expect("reload");
        assert_eq!(client.get("/health-page").await.status, StatusCode::OK);
        assert_eq!(login().await.status, StatusCode::TOO_MANY_REQUESTS, "carried over");

        // A new burst is a new limit, with full buckets.
        running.shared().reload(parse(&config(front, 2))).await.expect("reload");
        assert_eq!(login().await.status, StatusCode::OK);
        assert_eq!(login().await.status, StatusCode::OK);
        assert_eq!(login().await.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(running.shutdown().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_streamed_answer_compresses_whole_on_every_protocol() {
    guarded(async {
        let fixture = fixture(&[]).await;
        // The demo backend's JSON lines, 200 KB streamed in 64 KiB pieces: more than one encoder flush.
        const SIZE: usize = 200_000;
        let path = format!("/api/text/{SIZE}");
        let plain = get(&fixture, Protocol::Http1, &path, &[]).await;
        assert_eq!(plain.status, StatusCode::OK);
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.body.len(), SIZE);
        assert!(plain
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")));
        for protocol in PROTOCOLS {
            let packed = get(&fixture, protocol, &path, &[("accept-encoding", "gzip")]).await;
            assert_eq!(packed.status, StatusCode::OK, "{protocol:?}");
            assert_eq!(packed.header("content-encoding"), Some("gzip"), "{protocol:?}");
            assert_eq!(packed.header("content-length"), None, "{protocol:?}");
            assert_eq!(gunzip(&packed.body), plain.body, "{protocol:?}");
            // As compressible as a typical API answer, so the benchmark's per-KiB cost means something.
            assert!(
                packed.body.len() * 3 < SIZE,
                "{protocol:?}: {} bytes",
                packed.body.len()
            );
        }
        assert!(fixture.running.shutdown().await);
    })
    .await;
}
