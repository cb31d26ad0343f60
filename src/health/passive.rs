//! Passive checks: what a proxied request's outcome says about its backend.

use http::StatusCode;

use crate::error::{Origin, ProxyError};

/// The health verdict of one forwarding attempt; `None` when it says nothing about the backend.
pub fn verdict(result: Result<StatusCode, &ProxyError>, failure_statuses: &[u16]) -> Option<Result<(), String>> {
    match result {
        Ok(status) if failure_statuses.contains(&status.as_u16()) => Some(Err(format!("status {}", status.as_u16()))),
        Ok(_) => Some(Ok(())),
        Err(error) if error.origin() == Origin::Upstream => Some(Err(error.cause())),
        Err(_) => None,
    }
}
