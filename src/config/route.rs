//! Routes, validated: which requests a route takes, where they go (an upstream, static files, a redirect,
//! a direct answer), and the actions on the way (access list, rate limit, path rewriting, header rules,
//! compression), with `route_defaults` filled in. Every value is parsed and checked here, at load and on
//! reload, so a bad placeholder, regex, root or address list is an error with its line, never a surprise
//! at request time.

use std::fmt;
use std::path::PathBuf;

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use ipnet::IpNet;

use super::file::{FileActions, FileCompress, FileHeaderRules, FileRoute, RateKey};
use super::problem::{with_suggestion, Invalid};
use super::template::Template;

/// A route: which requests go where, and what happens to them on the way.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub host: HostMatch,
    pub path: PathMatch,
    pub target: Target,
    pub actions: Actions,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lowercase host, no port.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any name ending so, not the bare domain.
    Suffix(String),
}

/// How a route matches the request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// `/api/*`, stored as `/api/`; `/api` itself matches too.
    Prefix(String),
}

/// Where a route's requests end.
#[derive(Debug, Clone)]
pub enum Target {
    /// Proxied to an upstream pool, by name.
    Upstream(String),
    /// Answered with a redirect to `to`.
    Redirect { to: Template, status: StatusCode },
    /// Answered by the proxy itself.
    Respond {
        status: StatusCode,
        body: Template,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Files under a directory.
    Static(StaticFiles),
}

/// `static`: files under `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFiles {
    /// Canonical: symbolic links resolved, so that containment checks compare real paths.
    pub root: PathBuf,
    /// Files tried, in order, for a request naming a directory.
    pub index: Vec<String>,
    /// Serve `name.zst`, `name.br` or `name.gz` to clients that accept them, when present.
    pub precompressed: bool,
}

/// A route's path rewriting, before the request goes on.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// The prefix is removed from the path (`/static/a.css` -> `/a.css`).
    StripPrefix(String),
    /// The path is rewritten by a regular expression; `$1` and `${name}` in the replacement name groups.
    Regex { regex: regex::Regex, replacement: String },
}

/// Header fields set (replacing any), added, and removed, in that order of removal, then set, then add.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, Template)>,
    pub add: Vec<(HeaderName, Template)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// True when the rules do nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A content coding the proxy compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Brotli,
    Gzip,
}

impl Coding {
    /// As `Content-Encoding` and `Accept-Encoding` name it.
    pub fn token(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Brotli => "br",
            Self::Gzip => "gzip",
        }
    }

    /// The file name suffix of a precompressed sibling.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Zstd => ".zst",
            Self::Brotli => ".br",
            Self::Gzip => ".gz",
        }
    }

    /// Every coding, in the server's order of preference.
    pub const ALL: [Self; 3] = [Self::Zstd, Self::Brotli, Self::Gzip];
}

/// `compress`: which codings, from what size, for which content types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compress {
    /// In the server's order of preference, used when the client weighs them equally.
    pub algorithms: Vec<Coding>,
    pub min_size: u64,
    /// `type/subtype`, `type/*` or `type/*+suffix` patterns.
    pub types: Vec<String>,
}

/// The content types compressed by default: text and the structured formats browsers and APIs send.
pub const COMPRESSIBLE_TYPES: [&str; 9] = [
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
    "application/wasm",
    "font/ttf",
];

/// Responses smaller than this are not compressed by default: the coding's framing would eat the gain.
pub const DEFAULT_MIN_COMPRESS: u64 = 1024;

/// `rate_limit`: a GCRA bucket of `burst` requests refilled at `requests_per_second`, per key.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
    pub key: RateKey,
}

/// What a route does besides choosing its target.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    /// Client networks let in; empty lets every client in (unless denied).
    pub allow: Vec<IpNet>,
    /// Client networks refused (403).
    pub deny: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    pub compress: Option<Compress>,
}

impl Actions {
    /// The actions set, by their keys, in the order they run.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("allow", !self.allow.is_empty()),
            ("deny", !self.deny.is_empty()),
            ("rate_limit", self.rate_limit.is_some()),
            (
                match self.rewrite {
                    Some(Rewrite::StripPrefix(_)) => "strip_prefix",
                    _ => "rewrite",
                },
                self.rewrite.is_some(),
            ),
            ("request_headers", !self.request_headers.is_empty()),
            ("response_headers", !self.response_headers.is_empty()),
            ("compress", self.compress.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// The actions of requests that match no route: `route_defaults` alone.
pub(super) fn defaults(raw: &FileActions) -> Result<Actions, Invalid> {
    actions("route_defaults", raw, None)
}

/// A route from the file, with `defaults` filling the actions it does not set.
pub(super) fn route(
    index: usize,
    raw: FileRoute,
    defaults: &FileActions,
    upstreams: &[&str],
) -> Result<RouteConfig, Invalid> {
    let key = format!("routes[{index}]");
    let at = |field: &str| format!("{key}.{field}");
    let host = host(raw.host.as_deref(), &at("host"))?;
    let path = path(&raw.path, &at("path"))?;
    let target = target(&raw, &key, upstreams)?;
    let mut actions = actions(&key, &raw.actions(defaults), Some(&raw))?;
    actions.rewrite = rewrite(&raw, &key, &path)?;
    Ok(RouteConfig {
        host,
        path,
        target,
        actions,
    })
}

fn host(host: Option<&str>, key: &str) -> Result<HostMatch, Invalid> {
    Ok(match host.map(str::trim) {
        None | Some("") | Some("*") => HostMatch::Any,
        Some(host) => {
            let host = host.to_ascii_lowercase();
            if let Some(domain) = host.strip_prefix("*.") {
                if domain.is_empty() || domain.contains('*') {
                    return Err((
                        key.to_owned(),
                        format!("`{host}` is not a valid wildcard; write *.example.com"),
                    ));
                }
                HostMatch::Suffix(format!(".{domain}"))
            } else if host.contains('*') || host.contains('/') || host.contains(':') {
                return Err((
                    key.to_owned(),
                    format!("`{host}` is not a host name; write example.com or *.example.com (no port)"),
                ));
            } else {
                HostMatch::Exact(host)
            }
        }
    })
}

fn path(path: &str, key: &str) -> Result<PathMatch, Invalid> {
    if !path.starts_with('/') {
        return Err((key.to_owned(), format!("`{path}` must start with /")));
    }
    let wildcard = || {
        Err((
            key.to_owned(),
            format!("`{path}`: a wildcard is only allowed as a final /*, like /api/*"),
        ))
    };
    match path.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') && !prefix.contains('*') => Ok(PathMatch::Prefix(prefix.to_owned())),
        Some(_) => wildcard(),
        None if path.contains('*') => wildcard(),
        None => Ok(PathMatch::Exact(path.to_owned())),
    }
}

fn target(raw: &FileRoute, key: &str, upstreams: &[&str]) -> Result<Target, Invalid> {
    let at = |field: &str| format!("{key}.{field}");
    let given: Vec<&str> = [
        ("upstream", raw.upstream.is_some()),
        ("redirect", raw.redirect.is_some()),
        ("respond", raw.respond.is_some()),
        ("static", raw.static_files.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match given.as_slice() {
        [] => {
            return Err((
                key.to_owned(),
                "where do its requests go? set one of upstream, redirect, respond or static".into(),
            ))
        }
        [_] => {}
        [first, second, ..] => return Err((at(second), format!("a route has one target; `{first}` is set already"))),
    }
    if let Some(name) = &raw.upstream {
        if !upstreams.contains(&name.as_str()) {
            return Err((
                at("upstream"),
                with_suggestion(
                    &format!("unknown upstream `{name}`; defined: {}", upstreams.join(", ")),
                    name,
                    upstreams,
                ),
            ));
        }
        return Ok(Target::Upstream(name.clone()));
    }
    if let Some(redirect) = &raw.redirect {
        let status = StatusCode::from_u16(redirect.status)
            .ok()
            .filter(|s| [301, 302, 303, 307, 308].contains(&s.as_u16()))
            .ok_or_else(|| (at("redirect.status"), "must be 301, 302, 303, 307 or 308".to_owned()))?;
        let to = template(&redirect.to, &at("redirect.to"))?;
        if redirect.to.trim().is_empty() {
            return Err((at("redirect.to"), "the redirect needs a target".into()));
        }
        return Ok(Target::Redirect { to, status });
    }
    if let Some(respond) = &raw.respond {
        let status = StatusCode::from_u16(respond.status)
            .ok()
            .filter(|s| !s.is_informational())
            .ok_or_else(|| (at("respond.status"), "must be a final status, 200 to 599".to_owned()))?;
        let mut headers = Vec::new();
        let content_type = respond.content_type.as_deref().unwrap_or("text/plain; charset=utf-8");
        let entries = std::iter::once(("content-type", content_type))
            .chain(respond.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        for (name, value) in entries {
            let field = at(&format!("respond.headers.{name}"));
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (field.clone(), format!("`{name}` is not a header name")))?;
            let value =
                HeaderValue::from_str(value).map_err(|_| (field, format!("`{value}` is not a valid header value")))?;
            headers.push((name, value));
        }
        return Ok(Target::Respond {
            status,
            body: template(&respond.body, &at("respond.body"))?,
            headers,
        });
    }
    let Some(files) = &raw.static_files else {
        return Err((key.to_owned(), "no target".into()));
    };
    let root = files.root.canonicalize().map_err(|e| {
        (
            at("static.root"),
            format!("`{}` cannot be served: {e}", files.root.display()),
        )
    })?;
    if !root.is_dir() {
        return Err((
            at("static.root"),
            format!("`{}` is not a directory", files.root.display()),
        ));
    }
    if let Some(bad) = files
        .index
        .iter()
        .find(|name| name.is_empty() || name.contains('/') || *name == "." || *name == "..")
    {
        return Err((at("static.index"), format!("`{bad}` is not a file name")));
    }
    Ok(Target::Static(StaticFiles {
        root,
        index: files.index.clone(),
        precompressed: files.precompressed,
    }))
}

fn rewrite(raw: &FileRoute, key: &str, path: &PathMatch) -> Result<Option<Rewrite>, Invalid> {
    let at = |field: &str| format!("{key}.{field}");
    match (&raw.strip_prefix, &raw.rewrite) {
        (Some(_), Some(_)) => Err((
            at("rewrite"),
            "a route either strips a prefix or rewrites by regex, not both".into(),
        )),
        (Some(prefix), None) => {
            let route_path = match path {
                PathMatch::Exact(exact) => exact.as_str(),
                PathMatch::Prefix(prefix) => prefix.as_str(),
            };
            if !prefix.starts_with('/') || prefix.len() < 2 {
                return Err((
                    at("strip_prefix"),
                    format!("`{prefix}` must start with / and name something"),
                ));
            }
            let prefix = prefix.trim_end_matches('/');
            if !route_path.starts_with(prefix) {
                return Err((
                    at("strip_prefix"),
                    format!("`{prefix}` is not a prefix of the route's path `{route_path}`: it would never apply"),
                ));
            }
            Ok(Some(Rewrite::StripPrefix(prefix.to_owned())))
        }
        (None, Some(rewrite)) => {
            let regex = regex::Regex::new(&rewrite.regex)
                .map_err(|e| (at("rewrite.regex"), format!("does not compile: {e}")))?;
            if !rewrite.replacement.starts_with('/') && !rewrite.replacement.starts_with('$') {
                return Err((
                    at("rewrite.replacement"),
                    "the rewritten path must start with / (or with a group that does)".into(),
                ));
            }
            Ok(Some(Rewrite::Regex {
                regex,
                replacement: rewrite.replacement.clone(),
            }))
        }
        (None, None) => Ok(None),
    }
}

fn actions(key: &str, raw: &FileActions, route: Option<&FileRoute>) -> Result<Actions, Invalid> {
    // Errors name the key where the value was written: the route's own, or route_defaults.
    let owner = |set_here: bool| {
        if set_here || route.is_none() {
            key
        } else {
            "route_defaults"
        }
    };
    let at = |set_here: bool, field: &str| format!("{}.{field}", owner(set_here));
    let allow = raw.allow.clone().unwrap_or_default();
    let deny = raw.deny.clone().unwrap_or_default();
    if let Some((a, d)) = allow.iter().find_map(|a| {
        deny.iter()
            .find(|d| a.contains(&d.network()) || d.contains(&a.network()))
            .map(|d| (a, d))
    }) {
        let here = route.is_some_and(|r| r.deny.is_some());
        return Err((
            at(here, "deny"),
            format!("{d} overlaps {a} in allow: an address in both would be ambiguous; keep the lists apart"),
        ));
    }
    let rate_limit = match &raw.rate_limit {
        None => None,
        Some(limit) => {
            let here = route.is_some_and(|r| r.rate_limit.is_some());
            if !(limit.requests_per_second.is_finite() && limit.requests_per_second > 0.0) {
                return Err((at(here, "rate_limit.requests_per_second"), "must be above zero".into()));
            }
            let burst = limit
                .burst
                .unwrap_or_else(|| limit.requests_per_second.ceil().max(1.0) as u32);
            if burst == 0 {
                return Err((at(here, "rate_limit.burst"), "must be at least 1".into()));
            }
            Some(RateLimit {
                requests_per_second: limit.requests_per_second,
                burst,
                key: limit.key.clone(),
            })
        }
    };
    let request_headers = header_rules(
        &at(route.is_some_and(|r| r.request_headers.is_some()), "request_headers"),
        raw.request_headers.as_ref(),
    )?;
    let response_headers = header_rules(
        &at(route.is_some_and(|r| r.response_headers.is_some()), "response_headers"),
        raw.response_headers.as_ref(),
    )?;
    let compress = compress(
        &at(route.is_some_and(|r| r.compress.is_some()), "compress"),
        raw.compress.as_ref(),
    )?;
    Ok(Actions {
        allow,
        deny,
        rate_limit,
        rewrite: None,
        request_headers,
        response_headers,
        compress,
    })
}

fn template(text: &str, key: &str) -> Result<Template, Invalid> {
    Template::parse(text).map_err(|message| (key.to_owned(), message))
}

fn header_rules(key: &str, raw: Option<&FileHeaderRules>) -> Result<HeaderRules, Invalid> {
    let Some(raw) = raw else {
        return Ok(HeaderRules::default());
    };
    let name = |field: &str, name: &str| {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| (format!("{key}.{field}"), format!("`{name}` is not a header name")))
    };
    let value = |field: &str, name: &str, text: &str| {
        let at = format!("{key}.{field}.{name}");
        let template = template(text, &at)?;
        if template
            .literals()
            .any(|literal| HeaderValue::from_str(literal).is_err())
        {
            return Err((at, format!("`{text}` is not a valid header value")));
        }
        Ok(template)
    };
    let mut rules = HeaderRules::default();
    for (field, list) in [("set", &raw.set), ("add", &raw.add)] {
        for (header, text) in list {
            let entry = (name(field, header)?, value(field, header, text)?);
            if field == "set" {
                rules.set.push(entry);
            } else {
                rules.add.push(entry);
            }
        }
    }
    for header in &raw.remove {
        rules.remove.push(name("remove", header)?);
    }
    Ok(rules)
}

fn compress(key: &str, raw: Option<&FileCompress>) -> Result<Option<Compress>, Invalid> {
    let defaults = || Compress {
        algorithms: Coding::ALL.to_vec(),
        min_size: DEFAULT_MIN_COMPRESS,
        types: COMPRESSIBLE_TYPES.iter().map(|t| (*t).to_owned()).collect(),
    };
    let options = match raw {
        None | Some(FileCompress::Enabled(false)) => return Ok(None),
        Some(FileCompress::Enabled(true)) => return Ok(Some(defaults())),
        Some(FileCompress::Options(options)) => options,
    };
    let mut compress = defaults();
    if let Some(names) = &options.algorithms {
        compress.algorithms.clear();
        for name in names {
            let coding = Coding::ALL
                .into_iter()
                .find(|c| c.token() == name.as_str() || (name == "brotli" && *c == Coding::Brotli))
                .ok_or_else(|| {
                    (
                        format!("{key}.algorithms"),
                        format!("`{name}` is not a coding the proxy compresses with; use zstd, br or gzip"),
                    )
                })?;
            if !compress.algorithms.contains(&coding) {
                compress.algorithms.push(coding);
            }
        }
        if compress.algorithms.is_empty() {
            return Err((format!("{key}.algorithms"), "name at least one coding".into()));
        }
    }
    if let Some(min_size) = options.min_size {
        compress.min_size = min_size;
    }
    if let Some(types) = &options.types {
        if let Some(bad) = types.iter().find(|t| !is_type_pattern(t)) {
            return Err((
                format!("{key}.types"),
                format!("`{bad}` is not a content type or pattern like text/* or application/*+json"),
            ));
        }
        compress.types = types.iter().map(|t| t.to_ascii_lowercase()).collect();
    }
    Ok(Some(compress))
}

fn is_type_pattern(pattern: &str) -> bool {
    let Some((kind, subtype)) = pattern.split_once('/') else {
        return false;
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    token(kind) && (subtype == "*" || token(subtype.strip_prefix("*+").unwrap_or(subtype)))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Upstream(name) => write!(f, "upstream {name}"),
            Self::Redirect { to, status } => write!(f, "redirect {} {to}", status.as_u16()),
            Self::Respond { status, .. } => write!(f, "respond {}", status.as_u16()),
            Self::Static(files) => write!(f, "static {}", files.root.display()),
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(path) => f.write_str(path),
            PathMatch::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}
