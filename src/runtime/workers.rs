//! Worker threads: each runs a current-thread tokio runtime with its own listeners, QUIC endpoint and
//! upstream connections, so a request is served start to finish on one thread with no cross-thread
//! wake-ups. What workers share is read-mostly: the configuration snapshot and atomics.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::sync::oneshot;

/// A running worker thread.
#[derive(Debug)]
pub struct Worker {
    index: usize,
    done: oneshot::Receiver<()>,
}

impl Worker {
    /// Starts worker `index`: a thread with its own runtime that runs `serve()` to completion. `serve` is
    /// called on the worker thread, so sockets it registers belong to that thread's runtime.
    pub fn spawn<F, Fut>(index: usize, serve: F) -> io::Result<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (done, finished) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("quic-proxy-worker-{index}"))
            .spawn(move || {
                crate::upstream::worker::enter(index);
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(serve()),
                    Err(error) => tracing::error!(worker = index, "cannot start the worker's runtime: {error}"),
                }
                let _finished = done.send(());
            })?;
        Ok(Self { index, done: finished })
    }

    /// Waits up to `timeout` for the worker to finish; false if it did not (or died).
    pub async fn join(self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.done).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                tracing::error!(worker = self.index, "worker thread ended abnormally");
                false
            }
            Err(_) => false,
        }
    }
}
