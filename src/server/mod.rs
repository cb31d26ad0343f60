//! Listeners: each turns its protocol into `http::Request<Body>` for the shared core and writes the
//! core's response back. They run on worker threads, on sockets the runtime layer bound.

pub mod framing;
pub mod http1;
pub mod quic;
pub mod tls;

use std::future::Future;
use std::pin::Pin;

use crate::runtime::Shutdown;

/// Drives a hyper connection; once shutdown begins, calls `graceful` (hyper's `graceful_shutdown`) so it
/// finishes its in-flight requests and closes.
pub async fn serve_until_drained<C>(connection: C, drain: &Shutdown, graceful: impl FnOnce(Pin<&mut C>)) -> C::Output
where
    C: Future,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = drain.begun() => {
            graceful(connection.as_mut());
            connection.await
        }
    }
}
