//! The `quic-proxy` binary as an operator runs it: exit statuses and what it prints.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// sysexits EX_USAGE: the status for a bad config or bad arguments.
const EXIT_USAGE: i32 = 64;

/// Long enough for a slow, loaded CI machine; a healthy run exits in milliseconds.
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

const VALID: &str = r#"server:
  address: "127.0.0.1:8443"
  fallback_address: "127.0.0.1:8080"
telemetry:
  metrics:
    address: "127.0.0.1:9091"
backends:
  - name: web1
    url: "http://127.0.0.1:8001"
  - name: web2
    url: "http://127.0.0.1:8002"
    weight: 2
upstreams:
  api:
    load_balancer:
      algorithm: least_connections
    backends:
      - name: api1
        url: "http://127.0.0.1:9001"
routes:
  - host: api.example.com
    upstream: api
  - path: /static/*
    upstream: default
"#;

const ONE_BACKEND: &str = "backends:\n  - name: web1\n    url: \"http://127.0.0.1:8001\"\n";

/// `algorithm` misspelt, on line 5.
fn misspelt() -> String {
    format!("{ONE_BACKEND}load_balancer:\n  algoritm: round_robin\n")
}

/// A directory holding one config file; removed when dropped.
struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
}

fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, text).unwrap();
    ConfigFile { dir, path }
}

/// The binary, run from `dir` so relative paths in a config can never reach the repository.
fn quic_proxy(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quic-proxy"));
    command.current_dir(dir).env_remove("RUST_LOG").stdin(Stdio::null());
    command
}

/// Runs to completion, failing the test (and killing the process) if it has not exited by the deadline.
fn run(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Drained concurrently so a chatty process can never block on a full pipe.
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > EXIT_DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "still running after {EXIT_DEADLINE:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        bytes
    })
}

fn check(config: &ConfigFile) -> Output {
    let mut command = quic_proxy(config.dir.path());
    command.arg("check").arg("--config").arg(&config.path);
    run(command)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn assert_status(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

#[test]
fn check_prints_a_summary_of_a_valid_config() {
    let config = config_file(VALID);
    let output = check(&config);
    assert_status(&output, 0);
    let expected = format!(
        "{}: valid (configuration {}, found by --config)\n\
         listeners: http/1.1 127.0.0.1:8080 (no server.tls: HTTPS and HTTP/3 off)\n\
         admin: 127.0.0.1:9091\n\
         upstreams: 2, backends: 3, routes: 2\n  \
         upstream default [round_robin]: web1 (127.0.0.1:8001, weight 1), web2 (127.0.0.1:8002, weight 2)\n  \
         upstream api [least_connections]: api1 (127.0.0.1:9001, weight 1)\n  \
         route host=api.example.com path=/* -> upstream api\n  \
         route host=* path=/static/* -> upstream default\n",
        config.path.display(),
        quic_proxy::config::digest(VALID)
    );
    assert_eq!(stdout(&output), expected);
    assert_eq!(stderr(&output), "");
}

/// The first line `check` prints: which file it read and how it found it.
fn first_line(output: &Output) -> String {
    stdout(output).lines().next().unwrap_or_default().to_owned()
}

#[test]
fn without_config_the_environment_variable_then_the_search_path_decide() {
    let from_env = config_file(VALID);
    let searched = config_file(ONE_BACKEND);
    std::fs::create_dir(searched.dir.path().join("configs")).unwrap();
    std::fs::write(searched.dir.path().join("configs/proxy.yaml"), ONE_BACKEND).unwrap();

    let mut command = quic_proxy(searched.dir.path());
    command.arg("check").env("QUIC_PROXY_CONFIG", &from_env.path);
    let output = run(command);
    assert_status(&output, 0);
    assert_eq!(
        first_line(&output),
        format!(
            "{}: valid (configuration {}, found by QUIC_PROXY_CONFIG)",
            from_env.path.display(),
            quic_proxy::config::digest(VALID)
        )
    );

    let mut command = quic_proxy(searched.dir.path());
    command.arg("check").env_remove("QUIC_PROXY_CONFIG");
    let output = run(command);
    assert_status(&output, 0);
    assert_eq!(
        first_line(&output),
        format!(
            "configs/proxy.yaml: valid (configuration {}, found by the default search path)",
            quic_proxy::config::digest(ONE_BACKEND)
        )
    );
}

#[test]
fn without_any_config_file_the_proxy_says_where_it_looked() {
    let empty = tempfile::tempdir().unwrap();
    for args in [&["check"][..], &[][..]] {
        let mut command = quic_proxy(empty.path());
        command.args(args).env_remove("QUIC_PROXY_CONFIG");
        let output = run(command);
        assert_status(&output, EXIT_USAGE);
        let message = stderr(&output);
        assert!(message.contains("QUIC_PROXY_CONFIG"), "{message}");
        assert!(
            message.contains("configs/proxy.yaml or /etc/quic-proxy/proxy.yaml"),
            "{message}"
        );
    }
}

#[test]
fn check_reports_a_misspelt_key_with_file_line_and_key() {
    let config = config_file(&misspelt());
    let output = check(&config);
    assert_status(&output, EXIT_USAGE);
    assert_eq!(stdout(&output), "");
    let stderr = stderr(&output);
    assert!(
        stderr.starts_with(&format!(
            "quic-proxy: invalid config: {}:5: load_balancer.algoritm: ",
            config.path.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown field `algoritm`, expected one of `algorithm`,"),
        "{stderr}"
    );
}

#[test]
fn check_suggests_the_intended_key() {
    let config = config_file(&misspelt());
    let output = check(&config);
    assert_status(&output, EXIT_USAGE);
    assert_eq!(
        stderr(&output),
        format!(
            "quic-proxy: invalid config: {}:5: load_balancer.algoritm: unknown field `algoritm`, \
             expected one of `algorithm`, `hash_on`, `sticky_cookie`, `when_all_unhealthy`, `min_healthy_percent`, \
             `slow_start`, `retries`, `retry_buffer`, `retry_on_statuses`, `retry_backoff`, `retry_backoff_max`, \
             `retry_budget`, `circuit_breaker`; \
             did you mean `algorithm`?\n",
            config.path.display()
        )
    );
}

#[test]
fn check_names_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.yaml");
    let mut command = quic_proxy(dir.path());
    command.arg("check").arg("--config").arg(&missing);
    let output = run(command);
    assert_status(&output, EXIT_USAGE);
    let stderr = stderr(&output);
    assert!(
        stderr.starts_with(&format!(
            "quic-proxy: invalid config: {}: cannot read the file: ",
            missing.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_rejects_unreadable_certificates() {
    let config = config_file(&format!(
        "server:\n  tls:\n    cert_file: missing.crt\n    key_file: missing.key\n{ONE_BACKEND}"
    ));
    let output = check(&config);
    assert_status(&output, EXIT_USAGE);
    assert!(stderr(&output).contains("missing.crt"), "{}", stderr(&output));
}

/// A port that stays taken for as long as the listener lives; whatever tries to bind it fails.
fn held_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

fn run_proxy(config: &ConfigFile) -> Output {
    let mut command = quic_proxy(config.dir.path());
    command.arg("--config").arg(&config.path);
    run(command)
}

/// Every listener on `address`, no TLS, with `extra` appended.
fn config_on(address: &str, extra: &str) -> ConfigFile {
    config_file(&format!(
        "server:\n  address: \"{address}\"\n  fallback_address: \"{address}\"\n\
         telemetry:\n  metrics:\n    address: \"{address}\"\n\
         {ONE_BACKEND}{extra}"
    ))
}

#[test]
fn proxy_with_an_invalid_config_exits_64_before_binding() {
    let (_held, address) = held_port();
    let config = config_on(&address, "    weight: 0\n");
    let output = run_proxy(&config);
    // A bind attempt would fail on the held port and exit 1 with "cannot bind ...": 64 proves none was made.
    assert_status(&output, EXIT_USAGE);
    assert_eq!(
        stderr(&output),
        format!(
            "quic-proxy: invalid config: {}:10: backends[0].weight: must be at least 1 (drain a backend \
             instead of weighting it 0)\n",
            config.path.display()
        )
    );
}

/// The other half of the test above: the same config made valid does reach the bind, and fails on it.
#[test]
fn proxy_with_a_valid_config_fails_to_bind_a_taken_port() {
    let (_held, address) = held_port();
    let config = config_on(&address, "");
    let output = run_proxy(&config);
    assert_status(&output, 1);
    assert!(
        stderr(&output).contains(&format!("cannot bind server.fallback_address {address}")),
        "{}",
        stderr(&output)
    );
}

#[test]
fn backend_with_a_bad_listen_address_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = quic_proxy(dir.path());
    command.args(["backend", "--listen", "nope", "--name", "x"]);
    let output = run(command);
    assert_status(&output, EXIT_USAGE);
    assert_eq!(
        stderr(&output),
        "quic-proxy backend: --listen: `nope` is not a listen address; write it like :80, \
         127.0.0.1:8080 or [::1]:8443\n"
    );
}
