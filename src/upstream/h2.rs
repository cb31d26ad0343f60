//! HTTP/2 to backends (h2c with prior knowledge, or h2 by ALPN over TLS): one multiplexed connection per
//! backend and worker, driven by a task on that worker, shared by its requests; replaced when it closes.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::Body;

use super::connect::Stream;

/// How often an idle HTTP/2 connection is pinged, and how long an answer may take, so a backend that
/// vanished is noticed before a request waits on it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest header section (response head or trailers) taken from a backend, as for HTTP/1.1 backends.
/// Past it a head is refused (502); trailers are cut by the HTTP/2 library, so the bound is set well above
/// what gRPC metadata needs.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// One worker's HTTP/2 connection to one backend.
#[derive(Debug, Default)]
pub struct Pool {
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Held while a connection is being made, so that requests arriving meanwhile wait for it.
    connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// Waits until no other request of this worker is making a connection, and holds that turn.
    pub async fn connecting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.connecting.lock().await
    }

    /// The open connection, if there is one.
    pub fn sender(&self) -> Option<SendRequest<Body>> {
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        match sender.as_ref() {
            Some(open) if !open.is_closed() => Some(open.clone()),
            _ => {
                *sender = None;
                None
            }
        }
    }

    fn keep(&self, sender: &SendRequest<Body>) {
        *self.sender.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
    }

    /// Starts HTTP/2 on `stream` and keeps the connection for the requests that follow.
    pub async fn handshake(&self, stream: Stream, backend: &str) -> Result<SendRequest<Body>, hyper::Error> {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake(TokioIo::new(stream))
            .await?;
        let backend = backend.to_owned();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(backend, "HTTP/2 connection to the backend ended: {error}");
            }
        });
        self.keep(&sender);
        Ok(sender)
    }
}
