//! Log output: JSON lines or text, at the configured level (`RUST_LOG` overrides it). The level can be
//! changed while running (a configuration reload does).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::{LogFormat, LoggingConfig};

/// The installed filter, swappable; absent when another subscriber was installed first.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber; a second call in the same process is ignored.
pub fn init(config: &LoggingConfig) {
    let (filter, handle) = reload::Layer::new(filter_for(&config.level));
    let json = (config.format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
    });
    let text = (config.format == LogFormat::Text).then(|| fmt::layer().with_writer(std::io::stderr));
    // A subscriber already installed (tests starting several proxies) keeps logging.
    if tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .try_init()
        .is_ok()
    {
        drop(FILTER.set(handle));
    }
}

/// Applies a reloaded log level, unless `RUST_LOG` decides it.
pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let Some(handle) = FILTER.get() {
        if let Err(error) = handle.reload(EnvFilter::new(level)) {
            tracing::warn!("cannot change the log level: {error}");
        }
    }
}

fn filter_for(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
}

/// Lets a repeated log line through at most once a second: for events that can happen on every request
/// (a circuit breaker refusing), where one line says as much as a thousand.
#[derive(Debug)]
pub struct RateLimit {
    start: std::time::Instant,
    /// When a line last went through, in ms after `start`, plus one; 0 when none has.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            start: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl RateLimit {
    /// True when a line may be logged now (and then not again for a second).
    pub fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1_000)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
