//! What a route does besides proxying, compiled once per configuration snapshot and run by the routing
//! core for every listener alike:
//!
//! ```text
//! request:  access list ─► rate limit ─► path rewriting ─► request header rules ─┐
//! target:   upstream │ static files (files.rs) │ redirect │ direct answer  ◄──────┘
//! response: response header rules ─► RateLimit fields ─► compression (compress.rs)
//! ```
//!
//! - `client.rs`: the client's address behind trusted proxies;
//! - `limit.rs`: GCRA rate limits with a bounded key table, shared by every worker;
//! - `rewrite.rs`, `headers.rs`: path rewriting and header rules with placeholders;
//! - `files.rs`: static files; `compress.rs`: negotiated, streaming compression.
//!
//! Every action counts its outcomes in `route_actions_total{route, action, result}`.

pub mod client;
mod compress;
mod context;
pub mod files;
mod headers;
pub mod limit;
mod rewrite;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use metrics::{counter, Counter};

use crate::body::Body;
use crate::config::{Actions, Target, Template};
use crate::metrics::ROUTE_ACTIONS_TOTAL;

pub use compress::Streams as CompressionStreams;
pub use context::Context;
pub use files::Served;
pub use limit::{Admitted, Limiter};

/// Every action's label in `route_actions_total`, and the results it counts.
const ACTIONS: [(&str, &[&str]); 9] = [
    ("access", &["allowed", "denied"]),
    ("rate_limit", &["allowed", "limited"]),
    ("rewrite", &["rewritten", "unchanged"]),
    ("request_headers", &["applied"]),
    ("response_headers", &["applied"]),
    ("compress", &["compressed", "uncompressed", "over_limit"]),
    ("redirect", &["answered"]),
    ("respond", &["answered"]),
    ("static", &["served", "partial", "not_modified", "not_found", "refused"]),
];

/// A route's counters, registered for the actions it has, so each shows from zero; kept beside the metric
/// too, so the admin API can show them.
#[derive(Debug)]
struct ActionCounters {
    counters: Vec<(&'static str, &'static str, Counter, AtomicU64)>,
}

impl ActionCounters {
    fn new(route: &Arc<str>, actions: &[&'static str]) -> Self {
        let mut counters = Vec::new();
        for (action, results) in ACTIONS.iter().filter(|(a, _)| actions.contains(a)) {
            for result in results.iter() {
                let counter = counter!(ROUTE_ACTIONS_TOTAL, "route" => route.to_string(), "action" => *action, "result" => *result);
                counters.push((*action, *result, counter, AtomicU64::new(0)));
            }
        }
        Self { counters }
    }

    fn record(&self, action: &str, result: &str) {
        if let Some((_, _, counter, count)) = self.counters.iter().find(|(a, r, _, _)| *a == action && *r == result) {
            counter.increment(1);
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A route's actions for one snapshot.
#[derive(Debug)]
pub struct RoutePolicy {
    /// `host path`, as metrics, traces and the console name the route.
    pub label: Arc<str>,
    actions: Actions,
    request_headers: headers::Rules,
    response_headers: headers::Rules,
    limiter: Option<Arc<Limiter>>,
    /// The limiter's `RateLimit-Policy` value, the same on every answer.
    rate_policy: Option<HeaderValue>,
    counters: ActionCounters,
    /// Some action or the target renders placeholders.
    templates: bool,
}

impl RoutePolicy {
    /// Compiles `actions` for the route `label` ending at `target`; `carried` is the limiter of the same
    /// limit in the previous snapshot, so a reload does not hand every client a fresh bucket.
    pub fn new(label: Arc<str>, actions: &Actions, target: &Target, carried: Option<Arc<Limiter>>) -> Self {
        let limiter = actions.rate_limit.as_ref().map(|limit| {
            carried
                .filter(|c| c.config() == limit)
                .unwrap_or_else(|| Arc::new(Limiter::new(limit, limit::MAX_KEYS)))
        });
        let mut names = Vec::new();
        let present = [
            ("access", !actions.allow.is_empty() || !actions.deny.is_empty()),
            ("rate_limit", limiter.is_some()),
            ("rewrite", actions.rewrite.is_some()),
            ("request_headers", !actions.request_headers.is_empty()),
            ("response_headers", !actions.response_headers.is_empty()),
            ("compress", actions.compress.is_some()),
            ("redirect", matches!(target, Target::Redirect { .. })),
            ("respond", matches!(target, Target::Respond { .. })),
            ("static", matches!(target, Target::Static(_))),
        ];
        for (name, here) in present {
            if here {
                names.push(name);
            }
        }
        let request_headers = headers::Rules::new(&actions.request_headers);
        let response_headers = headers::Rules::new(&actions.response_headers);
        Self {
            counters: ActionCounters::new(&label, &names),
            templates: request_headers.renders()
                || response_headers.renders()
                || matches!(target, Target::Redirect { .. } | Target::Respond { .. }),
            rate_policy: limiter.as_deref().and_then(rate_policy),
            request_headers,
            response_headers,
            label,
            actions: actions.clone(),
            limiter,
        }
    }

    /// How often each action had each result in this snapshot: (action, result, count).
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.counters
            .counters
            .iter()
            .map(|(action, result, _, count)| (*action, *result, count.load(Ordering::Relaxed)))
    }

    /// The actions this policy runs.
    pub fn actions(&self) -> &Actions {
        &self.actions
    }

    /// The route's rate limiter, if it has one.
    pub fn limiter(&self) -> Option<&Arc<Limiter>> {
        self.limiter.as_ref()
    }

    /// True when the route renders placeholders, so the caller prepares a [`Context`].
    pub fn uses_placeholders(&self) -> bool {
        self.templates
    }

    /// The access list, then the rate limit: what is left of the client's bucket, or the refusal (403,
    /// 429 with `Retry-After` and the `RateLimit` fields).
    pub fn admit(&self, client: IpAddr, headers: &HeaderMap) -> Admission {
        let actions = &self.actions;
        if !actions.allow.is_empty() || !actions.deny.is_empty() {
            let denied = actions.deny.iter().any(|net| net.contains(&client))
                || (!actions.allow.is_empty() && !actions.allow.iter().any(|net| net.contains(&client)));
            if denied {
                self.counters.record("access", "denied");
                return Admission::Refused(Box::new(answer(
                    StatusCode::FORBIDDEN,
                    "403 Forbidden: this route does not serve your address\n",
                )));
            }
            self.counters.record("access", "allowed");
        }
        let Some(limiter) = &self.limiter else {
            return Admission::Admitted(None);
        };
        match limiter.check(limiter.key(client, headers)) {
            Ok(admitted) => {
                self.counters.record("rate_limit", "allowed");
                Admission::Admitted(Some(admitted))
            }
            Err(refused) => {
                self.counters.record("rate_limit", "limited");
                let mut response = answer(StatusCode::TOO_MANY_REQUESTS, "429 Too Many Requests\n");
                let seconds = refused.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                self.rate_fields(
                    response.headers_mut(),
                    Admitted {
                        remaining: 0,
                        reset: refused.retry_after,
                    },
                );
                Admission::Refused(Box::new(response))
            }
        }
    }

    /// The path after the route's rewriting, when it changes it.
    pub fn rewrite(&self, path: &str) -> Option<String> {
        let rule = self.actions.rewrite.as_ref()?;
        let rewritten = rewrite::path(rule, path);
        self.counters
            .record("rewrite", if rewritten.is_some() { "rewritten" } else { "unchanged" });
        rewritten
    }

    /// `uri` with its path replaced, its query kept.
    pub fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
        rewrite::with_path(uri, path)
    }

    /// The request header rules, before the request goes to its target.
    pub fn request_headers(&self, headers: &mut HeaderMap, context: Option<&Context<'_>>) {
        if !self.request_headers.is_empty() {
            self.request_headers.apply(headers, context);
            self.counters.record("request_headers", "applied");
        }
    }

    /// Counts what the route's target did.
    pub fn record_target(&self, action: &'static str, result: &'static str) {
        self.counters.record(action, result);
    }

    /// The response actions: header rules, the `RateLimit` fields of an admitted request, compression.
    pub fn respond(
        &self,
        response: Response<Body>,
        request: &Request<'_>,
        context: Option<&Context<'_>>,
    ) -> Response<Body> {
        let mut response = response;
        if !self.response_headers.is_empty() {
            self.response_headers.apply(response.headers_mut(), context);
            self.counters.record("response_headers", "applied");
        }
        if let Some(admitted) = request.admitted {
            self.rate_fields(response.headers_mut(), admitted);
        }
        let Some(compress) = &self.actions.compress else {
            return response;
        };
        if !compress::applies(compress, request.method, request.ranged, &response) {
            return response;
        }
        compress::vary_on_encoding(response.headers_mut());
        let Some(coding) = compress::negotiate(request.headers, &compress.algorithms) else {
            self.counters.record("compress", "uncompressed");
            return response;
        };
        let (response, compressed) = compress::compress(response, coding, request.streams, request.max_streams);
        self.counters
            .record("compress", if compressed { "compressed" } else { "over_limit" });
        response
    }
}

/// What the request actions decided.
pub enum Admission {
    /// On its way, with what is left of the client's bucket under a rate limit.
    Admitted(Option<Admitted>),
    /// Answered at once: 403 or 429.
    Refused(Box<Response<Body>>),
}

/// What the response actions need to know of the request.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The request asked for a range.
    pub ranged: bool,
    pub admitted: Option<Admitted>,
    pub streams: &'a CompressionStreams,
    pub max_streams: usize,
}

/// The `RateLimit-Policy` value of `limiter` (draft-ietf-httpapi-ratelimit-headers): its quota and the
/// seconds it takes to refill.
fn rate_policy(limiter: &Limiter) -> Option<HeaderValue> {
    let (quota, window) = limiter.window();
    let window = window.as_secs_f64().ceil().max(1.0) as u64;
    HeaderValue::try_from(format!("\"route\";q={quota};w={window}")).ok()
}

impl RoutePolicy {
    /// The IETF `RateLimit-Policy` and `RateLimit` fields: the route's quota and window, and what is left of
    /// it with the seconds until it is whole again.
    fn rate_fields(&self, headers: &mut HeaderMap, admitted: Admitted) {
        const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
        const LIMIT: HeaderName = HeaderName::from_static("ratelimit");
        if let Some(policy) = &self.rate_policy {
            headers.insert(POLICY, policy.clone());
        }
        let reset = admitted.reset.as_secs_f64().ceil() as u64;
        let mut value = String::with_capacity(32);
        value.push_str("\"route\";r=");
        context::push_decimal(&mut value, u64::from(admitted.remaining));
        value.push_str(";t=");
        context::push_decimal(&mut value, reset);
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(LIMIT, value);
        }
    }
}

/// A redirect to `to`, rendered.
pub fn redirect(to: &Template, status: StatusCode, context: &Context<'_>) -> Response<Body> {
    let mut response = answer(status, "");
    match HeaderValue::try_from(context.render(to)) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    response
}

/// A direct answer: `status`, the rendered `body`, and the configured `headers`.
pub fn respond(
    status: StatusCode,
    body: &Template,
    headers: &[(HeaderName, HeaderValue)],
    context: &Context<'_>,
    method: &Method,
) -> Response<Body> {
    let text = context.render(body);
    let length = text.len();
    let mut response = Response::new(if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::full(text)
    });
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

fn answer(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
