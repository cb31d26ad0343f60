//! TLS material: the certificates the HTTPS and QUIC listeners present, chosen by SNI from files, ACME and
//! a self-signed fallback, swappable at runtime; their rustls configs (ALPN); answers to ACME challenges;
//! and self-signed generation with rcgen.

mod challenge;
mod error;
mod files;
mod provider;
mod served;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;

use crate::config::{ChallengeType, TlsConfig};

pub use challenge::{Challenges, ACME_TLS_ALPN, HTTP_CHALLENGE_PREFIX};
pub use error::TlsError;
pub use files::{from_pem, generate_self_signed, write_private, Problem};
pub use provider::{install_crypto_provider, provider};
pub use served::{Served, Source};

use served::Table;

/// How one ACME name is doing, for the API, the console and the logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AcmeName {
    pub name: String,
    /// `waiting` (no attempt yet), `ordering`, `valid`, `failed`.
    pub state: &'static str,
    pub not_after: Option<i64>,
    pub renew_at: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt: Option<i64>,
}

/// Every certificate the listeners serve, swappable at runtime (a reload, an ACME issuance) without
/// touching any other TLS or QUIC setting: open connections keep the certificate they were served.
#[derive(Debug)]
pub struct CertStore {
    from_files: ArcSwap<Vec<Arc<Served>>>,
    /// Also serialises rebuilding `table`: every change is followed by a rebuild that starts after it.
    from_acme: Mutex<BTreeMap<String, Arc<Served>>>,
    /// Served to every name nothing else covers when no file certificate is configured.
    fallback: Option<Arc<Served>>,
    table: ArcSwap<Table>,
    challenges: Challenges,
    /// ACME names, and those already logged as served the default certificate while they wait for theirs.
    acme_names: Vec<String>,
    waiting_logged: Mutex<HashSet<String>>,
    acme_status: Mutex<BTreeMap<String, AcmeName>>,
    tls_alpn: bool,
}

impl CertStore {
    /// Loads the certificates named in the config; with none from files, makes a self-signed fallback for
    /// the ACME names until theirs arrive.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let from_files = load_files(config)?;
        let acme_names = config
            .acme
            .as_ref()
            .map(|acme| acme.domains.clone())
            .unwrap_or_default();
        let fallback = if from_files.is_empty() {
            let names = if acme_names.is_empty() {
                vec!["localhost".to_owned()]
            } else {
                acme_names.clone()
            };
            Some(Arc::new(self_signed(names)?))
        } else {
            None
        };
        let acme_status = acme_names
            .iter()
            .map(|name| {
                let status = AcmeName {
                    name: name.clone(),
                    state: "waiting",
                    ..AcmeName::default()
                };
                (name.clone(), status)
            })
            .collect();
        let store = Self {
            from_files: ArcSwap::from_pointee(from_files),
            from_acme: Mutex::new(BTreeMap::new()),
            fallback,
            table: ArcSwap::from_pointee(Table::default()),
            challenges: Challenges::default(),
            acme_names,
            waiting_logged: Mutex::new(HashSet::new()),
            acme_status: Mutex::new(acme_status),
            tls_alpn: config
                .acme
                .as_ref()
                .is_some_and(|acme| acme.challenges.contains(&ChallengeType::TlsAlpn01)),
        };
        store.rebuild(&lock(&store.from_acme));
        Ok(Arc::new(store))
    }

    /// Reads the certificate files `config` names (which may be other paths than before); on success new
    /// handshakes use them and open connections keep theirs. On failure nothing changes. True when any
    /// served chain differs from before. ACME certificates are untouched.
    pub fn reload(&self, config: &TlsConfig) -> Result<bool, TlsError> {
        let fresh = Arc::new(load_files(config)?);
        let old = self.from_files.swap(Arc::clone(&fresh));
        let replaced = old.len() != fresh.len()
            || old
                .iter()
                .zip(fresh.iter())
                .any(|(old, new)| old.key.cert != new.key.cert);
        self.rebuild(&lock(&self.from_acme));
        Ok(replaced)
    }

    /// Serves `served` (just issued, or found in storage) for `name` from the next handshake on.
    pub fn install_acme(&self, name: &str, served: Served) {
        let mut acme = lock(&self.from_acme);
        acme.insert(name.to_owned(), Arc::new(served));
        self.rebuild(&acme);
        drop(acme);
        lock(&self.waiting_logged).remove(name);
    }

    /// The ACME certificate served for `name`, if any.
    pub fn acme_certificate(&self, name: &str) -> Option<Arc<Served>> {
        lock(&self.from_acme).get(name).cloned()
    }

    /// Rebuilds the SNI table from the files as they are now and `acme`, the held ACME certificates.
    fn rebuild(&self, acme: &BTreeMap<String, Arc<Served>>) {
        let files = self.from_files.load();
        let mut all: Vec<Arc<Served>> = files.iter().cloned().collect();
        all.extend(acme.values().cloned());
        let default = files.first().cloned().or_else(|| self.fallback.clone());
        self.table.store(Arc::new(Table::new(&all, default)));
    }

    /// Every certificate that can be served: files in config order, then ACME by name, then the fallback.
    pub fn served(&self) -> Vec<Arc<Served>> {
        let mut all: Vec<Arc<Served>> = self.from_files.load().iter().cloned().collect();
        all.extend(lock(&self.from_acme).values().cloned());
        all.extend(self.fallback.clone());
        all
    }

    pub fn challenges(&self) -> &Challenges {
        &self.challenges
    }

    /// Updates what the API shows for an ACME name.
    pub fn set_acme_status(&self, status: AcmeName) {
        lock(&self.acme_status).insert(status.name.clone(), status);
    }

    pub fn acme_status(&self) -> Vec<AcmeName> {
        lock(&self.acme_status).values().cloned().collect()
    }

    /// rustls config for HTTPS over TCP: TLS 1.2 and 1.3, ALPN h2 then http/1.1 (and acme-tls/1 when
    /// tls-alpn-01 challenges are answered).
    pub fn tcp_server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.tls_alpn {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(config)
    }

    /// rustls config for QUIC: TLS 1.3 only, ALPN h3; 0-RTT when `early_data`. Resumption (and so 0-RTT)
    /// works across every config built with the same `sessions`, whichever worker or reload built it.
    pub fn quic_server_config(
        self: &Arc<Self>,
        early_data: bool,
        sessions: Arc<dyn StoresServerSessions>,
    ) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.session_storage = sessions;
        config.alpn_protocols = vec![b"h3".to_vec()];
        // quinn requires u32::MAX when early data is on; 0 turns it off.
        config.max_early_data_size = if early_data { u32::MAX } else { 0 };
        Ok(config)
    }

    /// Logs, once per name until its certificate arrives, that an ACME name was served the default.
    fn note_waiting(&self, name: &str) {
        if self.acme_names.iter().any(|n| n == name) && lock(&self.waiting_logged).insert(name.to_owned()) {
            tracing::info!(
                name,
                "TLS handshake for a name whose ACME certificate has not arrived yet: served the default certificate"
            );
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name().map(str::to_ascii_lowercase);
        let validating = client_hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|protocol| protocol == ACME_TLS_ALPN));
        if validating {
            // A CA validating tls-alpn-01 gets the challenge certificate or nothing (RFC 8737 section 3).
            return sni.and_then(|name| self.challenges.tls_alpn(&name));
        }
        let table = self.table.load();
        if let Some(name) = sni.as_deref() {
            if !table.has(name) {
                self.note_waiting(name);
            }
        }
        table.lookup(sni.as_deref()).map(|served| Arc::clone(&served.key))
    }
}

fn load_files(config: &TlsConfig) -> Result<Vec<Arc<Served>>, TlsError> {
    config
        .files()
        .into_iter()
        .map(|(key, pair)| {
            let certified = files::load(&key, &pair)?;
            Served::new(certified, Source::File, Some(pair.cert_file.clone()))
                .map(Arc::new)
                .map_err(|cause| TlsError::Cert {
                    key,
                    path: pair.cert_file,
                    cause,
                })
        })
        .collect()
}

/// A self-signed certificate for `names`, made in memory, valid for a year from now.
fn self_signed(names: Vec<String>) -> Result<Served, TlsError> {
    let mut params = rcgen::CertificateParams::new(names)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let signing_key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&signing_key)?;
    let key = from_pem(cert.pem().as_bytes(), signing_key.serialize_pem().as_bytes()).map_err(|problem| {
        TlsError::Unreadable {
            key: "self-signed fallback".into(),
            cause: problem.to_string(),
        }
    })?;
    Served::new(key, Source::SelfSigned, None).map_err(|cause| TlsError::Unreadable {
        key: "self-signed fallback".into(),
        cause,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
