//! The request path's metric handles, resolved once when the core is built: per protocol a duration
//! histogram, an in-flight gauge and body-size histograms; per backend (held by the backend) and for
//! requests no backend answered, `http_requests_total` counters by method, status and protocol.

use std::time::Duration;

use http::{Method, StatusCode};
use metrics::{gauge, histogram, Gauge, Histogram, SharedString};

use crate::balancer::BackendMetrics;
use crate::metrics::{
    method_label, request_counter, GaugeGuard, RequestCounters, HTTP_REQUESTS_IN_FLIGHT, HTTP_REQUEST_DURATION_SECONDS,
    HTTP_REQUEST_SIZE_BYTES, HTTP_RESPONSE_SIZE_BYTES,
};
use crate::protocol::Protocol;

/// The per-protocol handles of the request path.
#[derive(Debug)]
struct ProtocolMetrics {
    duration: Histogram,
    in_flight: Gauge,
    request_size: Histogram,
    response_size: Histogram,
}

impl ProtocolMetrics {
    fn new(protocol: Protocol) -> Self {
        let label = protocol.label();
        Self {
            duration: histogram!(HTTP_REQUEST_DURATION_SECONDS, "protocol" => label),
            in_flight: gauge!(HTTP_REQUESTS_IN_FLIGHT, "protocol" => label),
            request_size: histogram!(HTTP_REQUEST_SIZE_BYTES, "protocol" => label),
            response_size: histogram!(HTTP_RESPONSE_SIZE_BYTES, "protocol" => label),
        }
    }
}

/// The request path's metric handles.
#[derive(Debug)]
pub struct RequestMetrics {
    protocols: [ProtocolMetrics; 4],
    /// Requests answered without a backend (no route, refused, no backend available).
    unrouted: RequestCounters,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            protocols: Protocol::ALL.map(ProtocolMetrics::new),
            unrouted: RequestCounters::default(),
        }
    }
}

impl RequestMetrics {
    /// Counts a request in flight until the returned guard is dropped.
    pub fn in_flight(&self, protocol: Protocol) -> GaugeGuard {
        GaugeGuard::new(self.protocols[protocol.index()].in_flight.clone())
    }

    /// The histogram a request body's size goes to.
    pub fn request_size(&self, protocol: Protocol) -> Histogram {
        self.protocols[protocol.index()].request_size.clone()
    }

    /// The histogram a response body's size goes to.
    pub fn response_size(&self, protocol: Protocol) -> Histogram {
        self.protocols[protocol.index()].response_size.clone()
    }

    /// Records one answered request, by the backend that answered it (if any).
    pub fn record_request(
        &self,
        method: &Method,
        status: StatusCode,
        backend: Option<&BackendMetrics>,
        protocol: Protocol,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let (counters, backend_label) = match backend {
            Some(b) => (&b.requests, b.label.clone()),
            None => (&self.unrouted, SharedString::const_str("-")),
        };
        counters.increment((method, status.as_u16(), protocol.label()), || {
            request_counter(method, status, backend_label, protocol.label())
        });
        self.protocols[protocol.index()].duration.record(elapsed.as_secs_f64());
    }
}
