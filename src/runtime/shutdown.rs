//! Shutdown: stop accepting, let tracked work finish, bounded by a drain timeout.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Stops accept loops and tells open connections to finish their requests and close.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
    /// Set when the listeners pass to a new process (binary upgrade) rather than going away: connections
    /// then need not hurry, and an idle HTTP/1.1 connection is left to its client's next request (answered
    /// with `Connection: close`) or its header timeout, instead of being closed under a request in flight.
    handover: Arc<AtomicBool>,
}

impl Shutdown {
    /// Resolves once shutdown has begun.
    pub async fn begun(&self) {
        self.token.cancelled().await;
    }

    /// True once shutdown has begun.
    pub fn has_begun(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Runs `task` as part of the work shutdown waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Begins shutdown because another process takes over the listeners (see the `handover` field).
    pub fn begin_handover(&self) {
        self.handover.store(true, Ordering::Relaxed);
        self.begin();
    }

    /// True once a hand-over to another process has begun.
    pub fn is_handover(&self) -> bool {
        self.handover.load(Ordering::Relaxed)
    }

    /// Begins shutdown without waiting.
    pub fn begin(&self) {
        self.token.cancel();
        self.tasks.close();
    }

    /// Waits up to `timeout` for tracked work to finish after shutdown began; true if everything finished.
    pub async fn finished(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.tasks.wait()).await.is_ok()
    }

    /// Begins shutdown and waits up to `timeout` for tracked work to finish; true if everything finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.begin();
        self.finished(timeout).await
    }
}
