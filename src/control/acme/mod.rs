//! Automatic HTTPS: a certificate for every name in `server.tls.acme.domains`, from storage when one is
//! there and still fresh, otherwise ordered from the CA (RFC 8555) while the listeners go on serving the
//! default certificate to that name; renewed in the background before it expires; failures retried with
//! exponential backoff, never sooner than the CA's Retry-After.
//!
//! One task per name. Instances sharing `storage` take a lock file per name before ordering, so a name is
//! never ordered twice at once: the others wait, then serve what the holder stored.

mod client;
mod storage;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::AcmeConfig;
use crate::runtime::{Shared, Shutdown};
use crate::tls::{AcmeName, CertStore, Served};

use client::Client;
use storage::Storage;

/// The first wait after a failed order; it doubles after each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const LONGEST_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// How often an instance waiting for another's order looks at the storage again.
const LOCK_POLL: Duration = Duration::from_millis(500);

/// Runs until shutdown: obtains, serves and renews the certificates the bound configuration's
/// `server.tls.acme` names (a change to that section applies at the next restart).
pub async fn run(shared: Arc<Shared>, shutdown: Shutdown) {
    let Some(certs) = shared.certs().cloned() else { return };
    let Some(config) = shared.bound().server.tls.as_ref().and_then(|tls| tls.acme.clone()) else {
        return;
    };
    let setup = Storage::open(&config.storage)
        .map_err(|e| format!("storage {}: {e}", config.storage.display()))
        .and_then(|storage| Client::new(&config).map(|client| (storage, client)));
    let (storage, client) = match setup {
        Ok(parts) => parts,
        Err(error) => {
            tracing::error!("ACME is off until a restart fixes it: {error}");
            for name in &config.domains {
                certs.set_acme_status(AcmeName {
                    name: name.clone(),
                    state: "failed",
                    last_error: Some(error.clone()),
                    ..AcmeName::default()
                });
            }
            return;
        }
    };
    let manager = Arc::new(Manager {
        certs,
        storage,
        client,
        config,
    });
    let tasks: Vec<_> = manager
        .config
        .domains
        .iter()
        .map(|name| tokio::spawn(Arc::clone(&manager).manage(name.clone())))
        .collect();
    shutdown.begun().await;
    for task in tasks {
        task.abort();
    }
}

/// Serves the certificates already in storage before the listeners take their first connection, so a
/// restart presents the same certificates from its first handshake. Anything unusable is left for `run`.
pub fn load_stored(shared: &Shared) {
    let Some(certs) = shared.certs() else { return };
    let Some(config) = shared.bound().server.tls.as_ref().and_then(|tls| tls.acme.as_ref()) else {
        return;
    };
    let Ok(storage) = Storage::open(&config.storage) else {
        return;
    };
    for name in &config.domains {
        if let Ok(Some(stored)) = storage.certificate(name) {
            if stored.not_after > unix_now() {
                tracing::info!(
                    name,
                    not_after = stored.not_after,
                    serial = stored.serial,
                    "ACME certificate loaded from storage"
                );
                certs.install_acme(name, stored);
            }
        }
    }
}

struct Manager {
    certs: Arc<CertStore>,
    storage: Storage,
    client: Client,
    config: AcmeConfig,
}

impl Manager {
    /// One name, for as long as the proxy runs.
    async fn manage(self: Arc<Self>, name: String) {
        let mut backoff = FIRST_BACKOFF;
        let mut last_error: Option<String> = None;
        loop {
            self.pick_up_stored(&name);
            let served = self.certs.acme_certificate(&name);
            let renew_at = served.as_deref().map(|served| self.renew_at(served));
            if let (Some(served), Some(renew_at)) = (&served, renew_at) {
                if renew_at > SystemTime::now() {
                    self.status(&name, "valid", Some(served), Some(renew_at), last_error.clone(), None);
                    sleep_until(renew_at).await;
                    continue;
                }
            }
            // Due, or nothing yet: order, unless another instance is at it.
            let lock = match self.storage.try_lock(&name) {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    self.status(&name, "waiting", served.as_deref(), renew_at, last_error.clone(), None);
                    tokio::time::sleep(LOCK_POLL).await;
                    continue;
                }
                Err(error) => {
                    let error = format!("lock in {}: {error}", self.storage.root().display());
                    let retry = self.failed(&name, &error, None, &mut backoff);
                    last_error = Some(error);
                    sleep_until(retry).await;
                    continue;
                }
            };
            // Another instance may have stored a fresh certificate just before the lock was free.
            if self.pick_up_stored(&name) {
                drop(lock);
                continue;
            }
            self.status(&name, "ordering", served.as_deref(), renew_at, last_error.clone(), None);
            tracing::info!(name, renewal = served.is_some(), "ACME order started");
            match self.client.order(&name, &self.storage, &self.certs).await {
                Ok((chain, key)) => match self.store_and_serve(&name, &chain, &key) {
                    Ok(served) => {
                        crate::metrics::record_acme_order(true);
                        let renewal = renew_at.is_some();
                        tracing::info!(
                            name,
                            renewal,
                            not_after = served.not_after,
                            serial = served.serial,
                            "ACME certificate issued"
                        );
                        backoff = FIRST_BACKOFF;
                        last_error = None;
                    }
                    Err(error) => {
                        let retry = self.failed(&name, &error, None, &mut backoff);
                        last_error = Some(error);
                        drop(lock);
                        sleep_until(retry).await;
                    }
                },
                Err(failure) => {
                    let retry = self.failed(&name, &failure.message, failure.retry_after, &mut backoff);
                    last_error = Some(failure.message);
                    drop(lock);
                    sleep_until(retry).await;
                }
            }
        }
    }

    /// Serves the stored certificate for `name` if it differs from the one served; true when it is fresh
    /// (not due for renewal).
    fn pick_up_stored(&self, name: &str) -> bool {
        let stored = match self.storage.certificate(name) {
            Ok(Some(stored)) => stored,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(name, "stored ACME certificate not usable: {error}");
                return false;
            }
        };
        let fresh = self.renew_at(&stored) > SystemTime::now();
        let newer = self
            .certs
            .acme_certificate(name)
            .is_none_or(|served| served.serial != stored.serial);
        if newer && stored.not_after > unix_now() {
            tracing::info!(
                name,
                not_after = stored.not_after,
                serial = stored.serial,
                "ACME certificate loaded from storage"
            );
            self.certs.install_acme(name, stored);
        }
        fresh
    }

    fn store_and_serve(&self, name: &str, chain: &str, key: &str) -> Result<Arc<Served>, String> {
        self.storage
            .save_certificate(name, chain, key)
            .map_err(|e| format!("storing the certificate in {}: {e}", self.storage.root().display()))?;
        match self.storage.certificate(name)? {
            Some(served) => {
                self.certs.install_acme(name, served);
                self.certs
                    .acme_certificate(name)
                    .ok_or_else(|| "the new certificate was not installed".to_owned())
            }
            None => Err("the stored certificate vanished".to_owned()),
        }
    }

    /// Records a failed order; returns when to try again.
    fn failed(&self, name: &str, error: &str, retry_after: Option<SystemTime>, backoff: &mut Duration) -> SystemTime {
        crate::metrics::record_acme_order(false);
        let now = SystemTime::now();
        let mut retry = now + *backoff;
        if let Some(asked) = retry_after {
            // The CA's Retry-After, within reason.
            retry = retry.max(asked.min(now + Duration::from_secs(86_400)));
        }
        let retry_in = retry.duration_since(now).unwrap_or_default().as_secs();
        tracing::warn!(name, error, retry_in_seconds = retry_in, "ACME order failed");
        let served = self.certs.acme_certificate(name);
        let renew_at = served.as_deref().map(|served| self.renew_at(served));
        self.status(
            name,
            "failed",
            served.as_deref(),
            renew_at,
            Some(error.to_owned()),
            Some(retry),
        );
        *backoff = (*backoff * 2).min(LONGEST_BACKOFF);
        retry
    }

    /// When `served` should be renewed: `renew_before` ahead of expiry, or with a third of its lifetime left.
    /// `renew_before` counts for at most two thirds of the lifetime, so that a CA issuing shorter
    /// certificates than it expects never makes every new certificate due at once (an order loop).
    fn renew_at(&self, served: &Served) -> SystemTime {
        let lifetime = served.not_after.saturating_sub(served.not_before).max(0);
        let before = self
            .config
            .renew_before
            .map_or(lifetime / 3, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .min(lifetime * 2 / 3);
        at(served.not_after.saturating_sub(before))
    }

    fn status(
        &self,
        name: &str,
        state: &'static str,
        served: Option<&Served>,
        renew_at: Option<SystemTime>,
        last_error: Option<String>,
        next_attempt: Option<SystemTime>,
    ) {
        self.certs.set_acme_status(AcmeName {
            name: name.to_owned(),
            state,
            not_after: served.map(|s| s.not_after),
            renew_at: renew_at.map(unix),
            last_error,
            next_attempt: next_attempt.map(unix),
        });
    }
}

async fn sleep_until(when: SystemTime) {
    let wait = when.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait).await;
}

fn at(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => UNIX_EPOCH,
    }
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_now() -> i64 {
    unix(SystemTime::now())
}
