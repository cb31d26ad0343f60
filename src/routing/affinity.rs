//! What ties a request to a backend: its hash key (`algorithm: hash` on a header, a cookie, the client's
//! address or the path) and the backend its sticky cookie names.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::request::Parts;

use crate::balancer::maglev::hash_bytes;
use crate::balancer::Backend;
use crate::config::{BalancerConfig, HashOn};

/// A request's hash key and the backend its sticky cookie names, read once per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Affinity {
    pub key: Option<u64>,
    pub sticky: Option<u64>,
}

impl Affinity {
    /// What in `request` ties it to a backend, by a pool's `hash_on` and sticky cookie.
    pub fn of(request: &Parts, client: IpAddr, policy: &BalancerConfig) -> Self {
        let key = policy.hash_on.as_ref().and_then(|on| match on {
            HashOn::Header(name) => {
                let values = request.headers.get_all(name.as_str());
                let mut values = values.iter().peekable();
                values.peek()?;
                // Every value of the field, in order, as one key.
                let mut hash = 0;
                for value in values {
                    hash = hash_bytes(value.as_bytes(), hash);
                }
                Some(hash)
            }
            HashOn::Cookie(name) => cookie(request, name).map(|value| hash_bytes(value, 0)),
            HashOn::ClientAddress => Some(match client {
                IpAddr::V4(ip) => hash_bytes(&ip.octets(), 0),
                IpAddr::V6(ip) => hash_bytes(&ip.octets(), 0),
            }),
            HashOn::Path => Some(hash_bytes(request.uri.path().as_bytes(), 0)),
        });
        let sticky = policy.sticky_cookie.as_ref().and_then(|sticky| {
            let value = cookie(request, &sticky.name)?;
            u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
        });
        Self { key, sticky }
    }

    /// The `Set-Cookie` value that ties the client to `backend`, when `policy` has a sticky cookie and the
    /// request's cookie named another backend (or none).
    pub fn sticky_cookie(&self, policy: &BalancerConfig, backend: &Backend, secure: bool) -> Option<HeaderValue> {
        let sticky = policy.sticky_cookie.as_ref()?;
        let token = sticky_token(backend);
        if self.sticky == Some(token) {
            return None;
        }
        let mut cookie = format!(
            "{}={token:016x}; Path={}; HttpOnly; SameSite=Lax",
            sticky.name, sticky.path
        );
        if let Some(max_age) = sticky.max_age {
            cookie.push_str(&format!("; Max-Age={}", max_age.as_secs()));
        }
        if secure {
            cookie.push_str("; Secure");
        }
        HeaderValue::from_str(&cookie).ok()
    }
}

/// An opaque, stable name for a backend in the sticky cookie: it says nothing of its address.
pub(super) fn sticky_token(backend: &Backend) -> u64 {
    hash_bytes(format!("{}/{}", backend.upstream, backend.name).as_bytes(), 0x571c)
}

/// The value of the first cookie called `name` in the request's Cookie fields.
fn cookie<'a>(request: &'a Parts, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (key == name.as_bytes()).then(|| value[1..].trim_ascii())
        })
}
