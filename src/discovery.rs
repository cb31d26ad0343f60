//! DNS discovery: a backend whose URL names a host (not an IP address) stands for every address that name
//! resolves to, each an endpoint of the pool with its own health, metrics and connections (a Kubernetes
//! headless Service, a round-robin DNS name). This module resolves; names are resolved before the first
//! snapshot is built, when a reload adds some, and by the control thread's refresh (`control::discovery`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::{BackendConfig, Config, DiscoveryConfig, IpFamily};

/// The addresses DNS discovery found, by host and port.
pub type Resolved = HashMap<(String, u16), Vec<SocketAddr>>;

/// The DNS name and port of a backend whose URL names its host (not an IP address).
pub fn dns_name(backend: &BackendConfig) -> Option<(String, u16)> {
    let host = backend.authority.host();
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    let default_port = if backend.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    Some((
        host.to_ascii_lowercase(),
        backend.authority.port_u16().unwrap_or(default_port),
    ))
}

/// Resolves backend names with the configured (or the system's) DNS servers.
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    /// A resolver asking `config.nameservers`, or those of /etc/resolv.conf when none are set.
    pub fn new(config: &DiscoveryConfig) -> Result<Self, String> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
        } else {
            let mut servers = ResolverConfig::new();
            for &address in &config.nameservers {
                servers.add_name_server(NameServerConfig::new(address, Protocol::Udp));
                servers.add_name_server(NameServerConfig::new(address, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(servers, provider)
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = config.timeout;
        options.ip_strategy = match config.ip_family {
            IpFamily::Ipv4Preferred => LookupIpStrategy::Ipv4thenIpv6,
            IpFamily::All => LookupIpStrategy::Ipv4AndIpv6,
            IpFamily::Ipv4 => LookupIpStrategy::Ipv4Only,
            IpFamily::Ipv6 => LookupIpStrategy::Ipv6Only,
        };
        options.attempts = 2;
        // Every refresh asks the servers: the proxy keeps the answer itself, for dns_refresh.
        options.cache_size = 0;
        Ok(Self {
            inner: builder.build(),
            timeout: config.timeout,
        })
    }

    /// The addresses of `host`, with `port`, sorted; an error says why there are none.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        // A fully qualified name never goes through the search list.
        let name = if host.ends_with('.') || !host.contains('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let lookup = tokio::time::timeout(self.timeout.saturating_mul(3), self.inner.lookup_ip(name))
            .await
            .map_err(|_| format!("resolving {host} timed out"))?
            .map_err(|e| format!("resolving {host} failed: {e}"))?;
        let addresses: BTreeSet<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        Ok(addresses.into_iter().collect())
    }
}

/// The DNS names (with ports) the backends of `config` use.
pub fn names(config: &Config) -> BTreeSet<(String, u16)> {
    config
        .upstreams
        .iter()
        .flat_map(|u| u.backends.iter().filter_map(dns_name))
        .collect()
}

/// Resolves every name `config` uses. A name that does not resolve has no endpoints (and a warning says
/// why) until a later refresh finds some; a name that fails to resolve again keeps its last addresses.
pub async fn resolve_all(config: &Config, previous: &Resolved) -> Resolved {
    resolve(config, previous, false).await
}

/// The endpoints for a configuration about to be applied: names already known keep their addresses (the
/// next refresh looks again), names new to it are resolved now, so that a reload adding a backend by name
/// installs its endpoints at once.
pub async fn resolve_new(config: &Config, previous: &Resolved) -> Resolved {
    resolve(config, previous, true).await
}

async fn resolve(config: &Config, previous: &Resolved, only_new: bool) -> Resolved {
    let mut wanted = names(config);
    let mut resolved = Resolved::new();
    if only_new {
        wanted.retain(|name| match previous.get(name) {
            Some(addresses) => {
                resolved.insert(name.clone(), addresses.clone());
                false
            }
            None => true,
        });
    }
    if wanted.is_empty() {
        return resolved;
    }
    let resolver = match Resolver::new(&config.discovery) {
        Ok(resolver) => resolver,
        Err(error) => {
            tracing::error!("DNS discovery: {error}");
            for name in wanted {
                let kept = previous.get(&name).cloned().unwrap_or_default();
                resolved.insert(name, kept);
            }
            return resolved;
        }
    };
    for (host, port) in wanted {
        let addresses = match resolver.resolve(&host, port).await {
            Ok(addresses) => addresses,
            Err(error) => {
                let kept = previous.get(&(host.clone(), port)).cloned().unwrap_or_default();
                tracing::warn!(
                    host,
                    port,
                    "{error}; keeping the {} endpoint(s) known so far",
                    kept.len()
                );
                kept
            }
        };
        resolved.insert((host, port), addresses);
    }
    resolved
}
