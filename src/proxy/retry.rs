//! What retries need: the backoff between attempts, which methods may be sent twice, and the request body
//! kept whole (up to `retry_buffer`) so that another backend can be sent the same bytes.

use bytes::Bytes;
use http::Method;
use http_body::Body as _;
use http_body_util::BodyExt as _;

use crate::body::Body;
use crate::config::BalancerConfig;
use crate::error::ProxyError;

/// The wait before retry number `retry`: a random time up to `retry_backoff` doubled for each retry before
/// it, at most `retry_backoff_max` (full jitter, so that retries from many clients spread out).
pub fn backoff(policy: &BalancerConfig, retry: u32) -> std::time::Duration {
    let doublings = retry.saturating_sub(1).min(16);
    let ceiling = policy
        .retry_backoff
        .saturating_mul(1 << doublings)
        .min(policy.retry_backoff_max);
    ceiling.mul_f64(fastrand::f64())
}

/// GET, HEAD, PUT, DELETE, OPTIONS and TRACE may be sent twice without changing the outcome.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// A request body read completely, so that it can be sent again.
pub struct Kept {
    data: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl Kept {
    pub fn body(&self) -> Body {
        Body::complete(self.data.clone(), self.trailers.clone())
    }
}

/// Splits a request body into what the first attempt sends and, when retries may need it again, a copy.
/// Empty bodies and bodies of known size up to `limit` are kept; anything else streams once, unretried.
pub async fn replayable(body: Body, retries: u32, limit: u64) -> Result<(Body, Option<Kept>), ProxyError> {
    if retries == 0 {
        return Ok((body, None));
    }
    if body.is_end_stream() {
        let empty = Kept {
            data: Bytes::new(),
            trailers: None,
        };
        return Ok((body, Some(empty)));
    }
    match body.size_hint().exact() {
        Some(length) if length <= limit => {
            let collected = body.collect().await.map_err(|error| {
                // A stalled or failed client body says why; anything else is the client's body failing.
                error
                    .downcast_ref::<ProxyError>()
                    .cloned()
                    .unwrap_or(ProxyError::ClientBodyFailed)
            })?;
            let trailers = collected.trailers().cloned();
            let kept = Kept {
                data: collected.to_bytes(),
                trailers,
            };
            Ok((Body::empty(), Some(kept)))
        }
        _ => Ok((body, None)),
    }
}
