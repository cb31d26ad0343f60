//! Host and path routing: the first route that matches wins; the default upstream takes the rest. Each
//! route carries its target and its policy (what it does besides choosing the target), compiled here once
//! per snapshot.

use std::sync::Arc;

use crate::balancer::{Backend, BackendKey};
use crate::config::{Config, HostMatch, PathMatch, StaticFiles, Target};
use crate::discovery::Resolved;
use crate::events::Events;
use crate::policy::{Limiter, RoutePolicy};

use super::upstream::Upstream;

/// Routes requests to their targets.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    /// Requests no route matches: the default upstream, with `route_defaults`.
    default: Option<Route>,
    upstreams: Vec<Arc<Upstream>>,
}

/// One route: what it matches, where its requests end, and what happens on the way.
#[derive(Debug)]
pub struct Route {
    host: HostMatch,
    path: PathMatch,
    pub target: RouteTarget,
    pub policy: RoutePolicy,
}

/// Where a route's requests end.
#[derive(Debug)]
pub enum RouteTarget {
    Upstream(Arc<Upstream>),
    Static(StaticFiles),
    /// A redirect or a direct answer, as configured.
    Answer(Target),
}

impl RouteTarget {
    /// As the console and the API describe it.
    pub fn describe(&self) -> String {
        match self {
            Self::Upstream(upstream) => format!("upstream {}", upstream.name),
            Self::Static(files) => format!("static {}", files.root.display()),
            Self::Answer(answer) => answer.to_string(),
        }
    }
}

impl Router {
    /// Builds every upstream pool and the route table from a validated config; `existing` hands back
    /// backends a previous snapshot already has (see `Upstream::new`), and `limiter` the rate limiter a
    /// route of that label had, so that reloads keep clients' buckets.
    pub fn new(
        config: &Config,
        resolved: &Resolved,
        existing: impl Fn(&BackendKey) -> Option<Arc<Backend>>,
        limiter: impl Fn(&str) -> Option<Arc<Limiter>>,
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
                let target = match &r.target {
                    Target::Upstream(name) => RouteTarget::Upstream(find(name)?),
                    Target::Static(files) => RouteTarget::Static(files.clone()),
                    answer => RouteTarget::Answer(answer.clone()),
                };
                let label: Arc<str> = Arc::from(format!("{} {}", r.host, r.path));
                let carried = limiter(&label);
                Some(Route {
                    host: r.host.clone(),
                    path: r.path.clone(),
                    policy: RoutePolicy::new(label, &r.actions, &r.target, carried),
                    target,
                })
            })
            .collect();
        let default = config.default_upstream.as_deref().and_then(find).map(|upstream| {
            let label: Arc<str> = Arc::from("default");
            let target = Target::Upstream(upstream.name.clone());
            Route {
                host: HostMatch::Any,
                path: PathMatch::Prefix("/".to_owned()),
                policy: RoutePolicy::new(Arc::clone(&label), &config.route_defaults, &target, limiter(&label)),
                target: RouteTarget::Upstream(upstream),
            }
        });
        Ok(Self {
            routes,
            default,
            upstreams,
        })
    }

    /// The upstream a request to `host` (as sent, port allowed) and `path` goes to, if it goes to one.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Upstream>> {
        match &self.destination(host, path)?.target {
            RouteTarget::Upstream(upstream) => Some(upstream),
            _ => None,
        }
    }

    /// The route for a request to `host` (as sent, port allowed) and `path`: the first that matches, else
    /// the default one.
    pub fn destination(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(normalize_host);
        self.routes
            .iter()
            .find(|r| host_matches(&r.host, host.as_deref()) && path_matches(&r.path, path))
            .or(self.default.as_ref())
    }

    /// Every route, in config order, then the default one.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(self.default.as_ref())
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
            Ok(config) => match Router::new(&config, &Resolved::default(), |_| None, |_| None, &Arc::default()) {
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
