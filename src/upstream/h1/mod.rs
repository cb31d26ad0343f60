//! HTTP/1.1 to backends, driven by the request's own task: no connection task, no channel, no hop between
//! tasks. The task writes the request (head and body, Content-Length or chunked, trailers included) while
//! it reads the response head; the response body then reads straight from the connection, and hands the
//! connection back to its worker's pool once the exchange is complete and the connection reusable.
//!
//! Responses are read strictly: a head larger than the limit, a malformed head or chunk, or a body that ends
//! early fails the exchange (the backend's fault). Chunked framing wins over a Content-Length sent with it
//! (RFC 9112 6.3) and the Content-Length is dropped. Nothing ambiguous is ever relayed as complete.
//!
//! - `request.rs`: the head encoded once (so a request can go again on a fresh connection) and the body
//!   writer;
//! - `response.rs`: head parsing, framing, and the response body read from the connection;
//! - `pool.rs`: a worker's idle connections to one backend;
//! - `upgrade.rs`: a connection switched to another protocol.
//!
//! The client is generic over the request body: it only needs frames of bytes.

mod failure;
mod pool;
mod request;
mod response;
mod upgrade;

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::io::AsyncWriteExt as _;

use crate::error::BoxError;

pub use failure::Failure;
pub use pool::{Conn, Pool};
pub use request::EncodedHead;
pub use response::{BodyError, ResponseBody};
pub use upgrade::Upgraded;

use request::Writer;
use response::{keeps_alive, poll_head, response_framing, Framing, Reader};

/// A response (its body read from the connection), or the connection the backend switched to another
/// protocol (101) with its answer.
pub enum Answer {
    Response(Response<ResponseBody>),
    Upgraded(Response<()>, Upgraded),
}

/// Sends a request (`head`, then `body`) on `conn` and reads the response head. The body is written while
/// the head is read, so a backend that answers before reading the whole body (413, an early 401) is heard.
/// `response_timeout` runs from the moment the request has been written in full; `on_sent` is told then.
pub async fn exchange<B>(
    mut conn: Conn,
    head: &EncodedHead,
    mut body: B,
    response_timeout: Duration,
    on_sent: impl FnOnce(),
    pool: &Arc<Pool>,
) -> Result<Answer, Failure>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    let mut writer = Writer::new(head, body.is_end_stream());
    let mut on_sent = Some(on_sent);
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let head_read = std::future::poll_fn(|cx| {
        if !writer.done {
            match writer.poll(cx, &mut conn.stream, &mut body) {
                Poll::Ready(Ok(())) => {
                    writer.done = true;
                    if let Some(on_sent) = on_sent.take() {
                        on_sent();
                    }
                    deadline = Some(Box::pin(tokio::time::sleep(response_timeout)));
                }
                Poll::Ready(Err(failure)) => return Poll::Ready(Err(failure)),
                Poll::Pending => {}
            }
        }
        loop {
            let response = match poll_head(cx, &mut conn) {
                Poll::Ready(response) => response?,
                Poll::Pending => {
                    let expired = deadline
                        .as_mut()
                        .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                    return if expired {
                        Poll::Ready(Err(Failure::Timeout))
                    } else {
                        Poll::Pending
                    };
                }
            };
            // Interim answers (100 Continue, 103 Early Hints) are skipped; 101 ends the exchange.
            if response.status.is_informational() && response.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Poll::Ready(Ok(response));
        }
    })
    .await?;

    let mut headers = head_read.headers;
    let mut response = Response::new(());
    *response.status_mut() = head_read.status;
    *response.version_mut() = head_read.version;
    if head_read.status == StatusCode::SWITCHING_PROTOCOLS {
        if !head.upgrade {
            return Err(Failure::Protocol(
                "101 Switching Protocols to a request that asked for no upgrade",
            ));
        }
        *response.headers_mut() = headers;
        let upgraded = Upgraded {
            leftover: conn.buffer.split().freeze(),
            stream: conn.stream,
        };
        return Ok(Answer::Upgraded(response, upgraded));
    }
    let framing = response_framing(head_read.status, head.head_request, &mut headers)?;
    let reusable = keeps_alive(head_read.version, &headers) && !matches!(framing, Framing::UntilClose);
    *response.headers_mut() = headers;
    let body = if writer.done {
        if matches!(framing, Framing::Length(0)) && reusable && conn.buffer.is_empty() {
            pool.checkin(conn);
            return Ok(Answer::Response(response.map(|()| ResponseBody::empty(pool))));
        }
        ResponseBody::new(Reader::Whole(conn), framing, reusable, pool)
    } else {
        // The backend answered before it had the whole request (it streams a reply to a streamed request,
        // like an echo or a gRPC bidirectional call, or refuses an upload early): a task of its own writes
        // the rest, so that request and response flow independently. The connection is not reused.
        let (half, mut write) = tokio::io::split(conn.stream);
        tokio::spawn(async move {
            let written = std::future::poll_fn(|cx| writer.poll(cx, &mut write, &mut body)).await;
            if let Err(failure) = written {
                tracing::debug!("request not sent in full while the response streamed: {failure:?}");
                // The backend must not take a request cut off here for a complete one: its side of the
                // connection ends now, so it notices at once.
                let _ = write.shutdown().await;
            }
        });
        let reader = Reader::Half {
            half,
            buffer: conn.buffer,
        };
        ResponseBody::new(reader, framing, false, pool)
    };
    Ok(Answer::Response(response.map(|()| body)))
}
