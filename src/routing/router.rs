//! Host and path routing: the first route that matches wins; the default upstream takes the rest.

use std::sync::Arc;

use crate::balancer::{Backend, BackendKey};
use crate::config::{Config, HostMatch, PathMatch};
use crate::events::Events;

use super::upstream::Upstream;
use crate::discovery::Resolved;

/// Routes requests to upstream pools.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    default: Option<Arc<Upstream>>,
    upstreams: Vec<Arc<Upstream>>,
}

#[derive(Debug)]
struct Route {
    host: HostMatch,
    path: PathMatch,
    upstream: Arc<Upstream>,
    /// `host path`, as traces name the route.
    label: Arc<str>,
}

/// Where a request goes: its upstream, and the route that sent it there (as `host path`; `default` for the
/// default upstream).
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub upstream: &'a Arc<Upstream>,
    pub route: &'a str,
}

impl Router {
    /// Builds every upstream pool and the route table from a validated config; `existing` hands back
    /// backends a previous snapshot already has (see `Upstream::new`).
    pub fn new(
        config: &Config,
        resolved: &Resolved,
        existing: impl Fn(&BackendKey) -> Option<Arc<Backend>>,
        events: &Arc<Events>,
    ) -> Result<Self, (String, String)> {
        let workers = config.workers();
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, resolved, &existing, events, workers).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let find = |name: &str| upstreams.iter().find(|u| u.name == name).cloned();
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    host: r.host.clone(),
                    path: r.path.clone(),
                    upstream: find(&r.upstream)?,
                    label: Arc::from(format!("{} {}", r.host, r.path)),
                })
            })
            .collect();
        let default = config.default_upstream.as_deref().and_then(find);
        Ok(Self {
            routes,
            default,
            upstreams,
        })
    }

    /// The upstream for a request to `host` (as sent, port allowed) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Upstream>> {
        self.destination(host, path).map(|d| d.upstream)
    }

    /// The upstream and route for a request to `host` (as sent, port allowed) and `path`.
    pub fn destination(&self, host: Option<&str>, path: &str) -> Option<Destination<'_>> {
        let host = host.map(normalize_host);
        self.routes
            .iter()
            .find(|r| host_matches(&r.host, host.as_deref()) && path_matches(&r.path, path))
            .map(|r| Destination {
                upstream: &r.upstream,
                route: &r.label,
            })
            .or_else(|| {
                self.default.as_ref().map(|upstream| Destination {
                    upstream,
                    route: "default",
                })
            })
    }

    /// Every upstream pool, in config order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }
}

/// Lowercase, without port and trailing dot: `API.Example.com.:443` -> `api.example.com`.
fn normalize_host(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn host_matches(pattern: &HostMatch, host: Option<&str>) -> bool {
    match (pattern, host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(expected), Some(host)) => host == expected,
        (HostMatch::Suffix(suffix), Some(host)) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        (_, None) => false,
    }
}

fn path_matches(pattern: &PathMatch, path: &str) -> bool {
    match pattern {
        PathMatch::Exact(expected) => path == expected,
        PathMatch::Prefix(prefix) => {
            path.starts_with(prefix.as_str()) || path == prefix.strip_suffix('/').unwrap_or(prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn router(yaml: &str) -> Router {
        match Config::parse(Path::new("test.yaml"), yaml) {
            Ok(config) => match Router::new(&config, &Resolved::default(), |_| None, &Arc::default()) {
                Ok(router) => router,
                Err(e) => panic!("test router not built: {e:?}"),
            },
            Err(e) => panic!("test config invalid: {e}"),
        }
    }

    fn upstream_of(router: &Router, host: Option<&str>, path: &str) -> Option<String> {
        router.route(host, path).map(|u| u.name.clone())
    }

    const ROUTED: &str = r#"
backends: [{name: web, url: "http://127.0.0.1:1"}]
upstreams:
  api: {backends: [{name: a, url: "http://127.0.0.1:2"}]}
  admin: {backends: [{name: b, url: "http://127.0.0.1:3"}]}
  wild: {backends: [{name: c, url: "http://127.0.0.1:4"}]}
routes:
  - {host: "admin.example.com", path: "/admin/*", upstream: admin}
  - {path: "/api/*", upstream: api}
  - {host: "*.example.org", upstream: wild}
  - {path: "/exact", upstream: api}
"#;

    #[test]
    fn first_match_wins_and_default_takes_the_rest() {
        let r = router(ROUTED);
        assert_eq!(
            upstream_of(&r, Some("admin.example.com"), "/admin/users").as_deref(),
            Some("admin")
        );
        assert_eq!(
            upstream_of(&r, Some("ADMIN.example.com:443"), "/admin").as_deref(),
            Some("admin")
        );
        assert_eq!(
            upstream_of(&r, Some("other.example.com"), "/admin/users").as_deref(),
            Some("default")
        );
        assert_eq!(
            upstream_of(&r, Some("admin.example.com"), "/api/v1").as_deref(),
            Some("api")
        );
        assert_eq!(upstream_of(&r, None, "/api").as_deref(), Some("api"));
        assert_eq!(upstream_of(&r, None, "/apix").as_deref(), Some("default"));
        assert_eq!(upstream_of(&r, Some("x.example.org"), "/").as_deref(), Some("wild"));
        assert_eq!(upstream_of(&r, Some("a.b.example.org."), "/").as_deref(), Some("wild"));
        assert_eq!(upstream_of(&r, Some("example.org"), "/").as_deref(), Some("default"));
        assert_eq!(upstream_of(&r, None, "/exact").as_deref(), Some("api"));
        assert_eq!(upstream_of(&r, None, "/exact/more").as_deref(), Some("default"));
    }

    #[test]
    fn without_default_unmatched_requests_have_no_upstream() {
        let r = router(
            r#"
upstreams:
  api: {backends: [{name: a, url: "http://127.0.0.1:2"}]}
routes:
  - {host: "api.example.com", upstream: api}
"#,
        );
        assert_eq!(upstream_of(&r, Some("api.example.com"), "/x").as_deref(), Some("api"));
        assert_eq!(upstream_of(&r, Some("[::1]:8080"), "/x"), None);
        assert_eq!(upstream_of(&r, None, "/x"), None);
    }
}
