//! Answers to ACME challenges in progress, written by the ACME client and read by the listeners: http-01
//! key authorizations by token (the plain listener), tls-alpn-01 certificates by name (the TLS listener).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::sign::CertifiedKey;

/// The protocol a tls-alpn-01 validation negotiates (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of http-01 challenges (RFC 8555 section 8.3).
pub const HTTP_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Challenges being validated now. Only the ACME client adds to them, one order at a time per name, so
/// they stay as small as the list of names.
#[derive(Debug, Default)]
pub struct Challenges {
    /// Token -> (name, key authorization).
    http: Mutex<HashMap<String, (String, String)>>,
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub fn set_http(&self, name: &str, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_owned(), (name.to_owned(), key_authorization.to_owned()));
    }

    /// Forgets every http-01 answer for `name`.
    pub fn remove_http_for(&self, name: &str) {
        lock(&self.http).retain(|_, (owner, _)| owner != name);
    }

    /// The key authorization for the token in `path` (`/.well-known/acme-challenge/TOKEN`), if it is one.
    pub fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP_CHALLENGE_PREFIX)?;
        lock(&self.http).get(token).map(|(_, answer)| answer.clone())
    }

    pub fn set_tls_alpn(&self, name: &str, key: Arc<CertifiedKey>) {
        lock(&self.tls_alpn).insert(name.to_owned(), key);
    }

    pub fn remove_tls_alpn(&self, name: &str) {
        lock(&self.tls_alpn).remove(name);
    }

    pub fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn).get(name).cloned()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
