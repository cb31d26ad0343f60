//! The `quic-proxy` command: run the proxy, check a config, or run a demo backend.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use quic_proxy::app;
use quic_proxy::config::{parse_listen_addr, Config, LogFormat, LoggingConfig};
use quic_proxy::demo_backend::DemoBackend;
use quic_proxy::routing::Snapshot;
use quic_proxy::runtime::inherit::{Inherited, Program, TAG_KEY, TAG_READY};
use quic_proxy::runtime::notify::notify;
use quic_proxy::runtime::{bind_tcp, Shared, Shutdown, UpgradeRequest};
use quic_proxy::tls::{self, CertStore};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a bad config or bad arguments (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// Where the config is looked for when `--config` is not given, after the `QUIC_PROXY_CONFIG` variable.
const CONFIG_SEARCH: [&str; 2] = ["configs/proxy.yaml", "/etc/quic-proxy/proxy.yaml"];

#[derive(Parser)]
#[command(name = "quic-proxy", version, about = "A QUIC/HTTP-3-first edge reverse proxy")]
struct Cli {
    /// Config file to run with; default: $QUIC_PROXY_CONFIG, else ./configs/proxy.yaml, else
    /// /etc/quic-proxy/proxy.yaml.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Reload the configuration whenever its file changes (a Kubernetes ConfigMap update included).
    #[arg(long)]
    watch: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file and print a summary.
    Check,
    /// Certificate tools.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Start a new binary in place of the running proxy without dropping connections (a binary upgrade,
    /// through the admin API: `POST /api/upgrade` with the config's admin token); prints the new process's ID.
    Upgrade {
        /// The admin listener to ask, when not the config's `telemetry.metrics.address` (which may be port 0).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Run a demo backend.
    Backend {
        /// Address to listen on, like 127.0.0.1:8001.
        #[arg(long)]
        listen: String,
        /// The name it answers with.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and key (server.crt, server.key) for development.
    Generate {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Names and addresses the certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        hosts: Vec<String>,
    },
}

fn main() -> ExitCode {
    tls::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match config_path(cli.config) {
            Ok((path, how)) => check(&path, how),
            Err(code) => code,
        },
        Some(Command::Cert(CertCommand::Generate { out, hosts })) => generate_cert(&out, &hosts),
        Some(Command::Backend { listen, name }) => run_backend(&listen, &name),
        Some(Command::Upgrade { admin }) => match config_path(cli.config) {
            Ok((path, _)) => request_upgrade(&path, admin.as_deref()),
            Err(code) => code,
        },
        None => match config_path(cli.config) {
            Ok((path, how)) => run_proxy(&path, how, cli.watch),
            Err(code) => code,
        },
    }
}

/// The config file to use and how it was found: `--config`, `$QUIC_PROXY_CONFIG`, or the first of
/// [`CONFIG_SEARCH`] that exists.
fn config_path(given: Option<PathBuf>) -> Result<(PathBuf, &'static str), ExitCode> {
    if let Some(path) = given {
        return Ok((path, "--config"));
    }
    if let Some(path) = std::env::var_os("QUIC_PROXY_CONFIG").filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(path), "QUIC_PROXY_CONFIG"));
    }
    match CONFIG_SEARCH.iter().map(Path::new).find(|p| p.exists()) {
        Some(path) => Ok((path.to_owned(), "the default search path")),
        None => {
            eprintln!(
                "quic-proxy: invalid config: no config file: pass --config FILE, set QUIC_PROXY_CONFIG, or create {}",
                CONFIG_SEARCH.join(" or ")
            );
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// Reads and validates the config, backends' TLS files included.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path)
        .and_then(|config| Snapshot::check(&config).map(|()| config))
        .map_err(|error| {
            eprintln!("quic-proxy: invalid config: {error}");
            ExitCode::from(EXIT_USAGE)
        })
}

/// Certificates are part of the configuration: a bad one stops start-up before anything is bound.
fn load_certs(path: &Path, config: &Config) -> Result<Option<Arc<CertStore>>, ExitCode> {
    config
        .server
        .tls
        .as_ref()
        .map(CertStore::load)
        .transpose()
        .map_err(|error| {
            eprintln!("quic-proxy: invalid config: {}: {error}", path.display());
            ExitCode::from(EXIT_USAGE)
        })
}

fn check(path: &Path, found_by: &str) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(code) = load_certs(path, &config) {
        return code;
    }
    println!(
        "{}: valid (configuration {}, found by {found_by})",
        path.display(),
        config.digest
    );
    match &config.server.tls {
        Some(tls) => {
            let mut sources: Vec<String> = tls
                .files()
                .iter()
                .map(|(_, pair)| format!("cert {}", pair.cert_file.display()))
                .collect();
            if let Some(acme) = &tls.acme {
                sources.push(format!("acme {} from {}", acme.domains.join(" "), acme.directory));
            }
            println!(
                "listeners: http/1.1 {}, https+quic {} ({})",
                config.server.fallback_address,
                config.server.address,
                sources.join(", ")
            );
        }
        None => println!(
            "listeners: http/1.1 {} (no server.tls: HTTPS and HTTP/3 off)",
            config.server.fallback_address
        ),
    }
    if config.telemetry.metrics.enabled {
        println!("admin: {}", config.telemetry.metrics.address);
    }
    let backends: usize = config.upstreams.iter().map(|u| u.backends.len()).sum();
    println!(
        "upstreams: {}, backends: {backends}, routes: {}",
        config.upstreams.len(),
        config.routes.len()
    );
    for upstream in &config.upstreams {
        let names: Vec<String> = upstream
            .backends
            .iter()
            .map(|b| format!("{} ({}, weight {})", b.name, b.authority, b.weight))
            .collect();
        println!(
            "  upstream {} [{}]: {}",
            upstream.name,
            upstream.balancer.algorithm,
            names.join(", ")
        );
    }
    for route in &config.routes {
        let actions = route.actions.names();
        let actions = if actions.is_empty() {
            String::new()
        } else {
            format!(" ({})", actions.join(", "))
        };
        println!(
            "  route host={} path={} -> {}{actions}",
            route.host, route.path, route.target
        );
    }
    ExitCode::SUCCESS
}

/// The control plane's runtime (signals, admin listener, health probes, reloads): one thread. The data
/// plane runs on worker threads of its own.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn generate_cert(out: &Path, hosts: &[String]) -> ExitCode {
    quic_proxy::logging::init(&LoggingConfig {
        format: LogFormat::Text,
        ..LoggingConfig::default()
    });
    match tls::generate_self_signed(out, hosts) {
        Ok((cert, key)) => {
            tracing::info!(cert = %cert.display(), key = %key.display(), hosts = %hosts.join(","), "generated a self-signed development certificate");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("quic-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_proxy(path: &Path, found_by: &str, watch: bool) -> ExitCode {
    // Claimed before any thread starts: the descriptors and the variables naming them.
    let inherited = match Inherited::from_env() {
        Ok(inherited) => inherited,
        Err(error) => {
            eprintln!("quic-proxy: cannot take over the previous process's sockets: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let program = Program::current();
    let mut config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    quic_proxy::logging::init(&config.telemetry.logging);
    let link = match inherited
        .as_ref()
        .map(|inherited| take_key(inherited, &mut config))
        .transpose()
    {
        Ok(link) => link,
        Err(error) => {
            eprintln!("quic-proxy: upgrade: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let certs = match load_certs(path, &config) {
        Ok(certs) => certs,
        Err(code) => return code,
    };
    if certs.is_none() {
        tracing::info!("no server.tls section: HTTPS and HTTP/3 are off, plain HTTP/1.1 only");
    }
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            // Signal handlers first: a SIGHUP or SIGTERM right after start-up must not hit the default action.
            let signals = Signals::install()?;
            let digest = config.digest.clone();
            let running = app::start_with(config, certs, inherited).await?;
            let pid = std::process::id();
            tracing::info!(config = %path.display(), found_by, digest, pid, "quic-proxy started");
            match &link {
                Some(link) => {
                    link.send(&[TAG_READY])
                        .context("cannot tell the previous process this one serves")?;
                    notify(&format!("MAINPID={pid}\nREADY=1"));
                }
                None => notify("READY=1"),
            }
            let watcher = watch.then(|| quic_proxy::control::watch::spawn(path, Arc::clone(running.shared())));
            let stop = signals.wait(&running, program.as_ref().ok()).await;
            drop(watcher);
            let timeout = running.shared().snapshot().config.server.drain_timeout;
            let finished = match stop {
                Stop::Terminate => {
                    tracing::info!(?timeout, "shutting down: draining in-flight requests");
                    running.shutdown().await
                }
                Stop::HandOver(successor) => running.hand_over(successor).await,
            };
            if !finished {
                tracing::warn!("drain timeout reached; closing remaining connections");
            }
            anyhow::Ok(())
        })
    });
    exit_with(result)
}

/// Reads the previous process's QUIC key from the upgrade link: without a configured
/// `quic.stateless_reset_key` this process takes it over, so that it reads the previous process's
/// connection IDs and issues resets and Retry tokens under the same key. Returns the link.
fn take_key(inherited: &Inherited, config: &mut Config) -> anyhow::Result<std::os::unix::net::UnixDatagram> {
    let link = inherited.link.try_clone().context("cannot use the upgrade link")?;
    link.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut message = vec![0u8; 256];
    let length = link.recv(&mut message).context("no key from the previous process")?;
    match message[..length].split_first() {
        Some((&TAG_KEY, key)) => {
            if config.quic_secret.is_none() && !key.is_empty() {
                config.quic_secret = Some(key.to_vec());
            }
        }
        _ => anyhow::bail!("the previous process sent something other than its key"),
    }
    link.set_read_timeout(None)?;
    Ok(link)
}

/// `quic-proxy upgrade`: asks the running proxy (the config's admin listener, with its admin token) for a
/// binary upgrade and prints the outcome. Exit 0 once the new process serves, 1 when it did not (the running
/// proxy then serves on), 64 when the config gives no way to ask.
fn request_upgrade(path: &Path, admin: Option<&str>) -> ExitCode {
    use http_body_util::BodyExt as _;
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(token) = config.admin_token.clone().filter(|_| config.telemetry.metrics.enabled) else {
        eprintln!(
            "quic-proxy upgrade: needs the admin listener and admin.token in {}",
            path.display()
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let mut address = match admin.map(parse_listen_addr).transpose() {
        Ok(given) => given.unwrap_or(config.telemetry.metrics.address),
        Err(message) => {
            eprintln!("quic-proxy upgrade: --admin: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let asked = runtime().and_then(|rt| {
        rt.block_on(async {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
            let request = http::Request::post(format!("http://{address}/api/upgrade"))
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .body(http_body_util::Empty::new())
                .context("cannot build the request")?;
            let response = client
                .request(request)
                .await
                .with_context(|| format!("cannot reach the admin listener at {address}"))?;
            let status = response.status();
            let body = response.into_body().collect().await.context("no answer")?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
    });
    match asked {
        Ok((status, body)) if status.is_success() => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("quic-proxy upgrade: {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("quic-proxy upgrade: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_backend(listen: &str, name: &str) -> ExitCode {
    quic_proxy::logging::init(&LoggingConfig::default());
    let address = match parse_listen_addr(listen) {
        Ok(address) => address,
        Err(message) => {
            eprintln!("quic-proxy backend: --listen: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let listener = bind_tcp(address).with_context(|| format!("cannot bind {address}"))?;
            tracing::info!(name, address = %listener.local_addr()?, "demo backend listening");
            let shutdown = Shutdown::default();
            tokio::spawn(DemoBackend::new(name).serve(listener, shutdown.clone()));
            Signals::install()?.terminated().await;
            shutdown.drain(std::time::Duration::from_secs(5)).await;
            anyhow::Ok(())
        })
    });
    exit_with(result)
}

fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quic-proxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM, SIGINT, SIGHUP and SIGUSR2, listened for from the moment they are installed.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    user2: tokio::signal::unix::Signal,
}

/// Why the proxy stops serving.
enum Stop {
    /// SIGTERM or SIGINT: drain and exit.
    Terminate,
    /// A binary upgrade: the new process serves; hand over and exit.
    HandOver(app::Successor),
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            user2: signal(SignalKind::user_defined2()).context("cannot listen for SIGUSR2")?,
        })
    }

    /// Waits for SIGTERM or SIGINT, or a binary upgrade that succeeded (SIGUSR2 or `POST /api/upgrade`);
    /// on SIGHUP reloads the whole configuration (a bad file changes nothing). A failed upgrade changes
    /// nothing either: this process serves on.
    async fn wait(mut self, running: &app::Running, program: Option<&Program>) -> Stop {
        let shared: &Shared = running.shared();
        let mut requests = shared.take_upgrade_requests();
        loop {
            let reply: Option<UpgradeRequest> = tokio::select! {
                _ = self.terminate.recv() => return Stop::Terminate,
                _ = self.interrupt.recv() => return Stop::Terminate,
                _ = self.hangup.recv() => {
                    match shared.reload_from_file().await {
                        Ok(report) => tracing::info!("SIGHUP: {report}"),
                        Err(error) => tracing::error!("SIGHUP: configuration not reloaded, the running one stays: {error}"),
                    }
                    continue;
                }
                _ = self.user2.recv() => None,
                Some(reply) = async { match requests.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => Some(reply),
            };
            let outcome = match program {
                Some(program) => running.upgrade(program).await.map_err(|error| format!("{error:#}")),
                None => Err("the running binary's path is unknown".to_owned()),
            };
            let answer = outcome.as_ref().map(|successor| successor.pid).map_err(Clone::clone);
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
            match outcome {
                Ok(successor) => return Stop::HandOver(successor),
                Err(error) => tracing::error!("upgrade failed, this process serves on: {error}"),
            }
        }
    }

    /// Waits for SIGTERM or SIGINT, ignoring SIGHUP.
    async fn terminated(mut self) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => {}
            }
        }
    }
}
