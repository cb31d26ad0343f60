//! TLS material: certificate loading with clear errors, a hot-swappable certificate store shared by the
//! HTTPS and QUIC listeners, their rustls configs (ALPN), and self-signed generation with rcgen.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, PoisonError};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert_file {path}: {cause}")]
    Cert { path: PathBuf, cause: String },
    #[error("server.tls.key_file {path}: {cause}")]
    Key { path: PathBuf, cause: String },
    #[error("server.tls: the key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Installs the process's rustls crypto provider (ring); safe to call more than once.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed by the embedding program; it is used instead.
        drop(rustls::crypto::ring::default_provider().install_default());
    });
}

fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The serving certificate, swappable at runtime (SIGHUP) without touching any other TLS or QUIC setting.
#[derive(Debug)]
pub struct CertStore {
    files: Mutex<TlsConfig>,
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Loads the certificate chain and key named in the config.
    pub fn load(files: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let key = load_certified_key(files)?;
        Ok(Arc::new(Self {
            files: Mutex::new(files.clone()),
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// Reads `files` (which may name other paths than before); on success new handshakes use the new
    /// certificate and open connections keep theirs. On failure nothing changes. True when the
    /// certificate chain differs from the one served until now.
    pub fn reload(&self, files: &TlsConfig) -> Result<bool, TlsError> {
        let key = load_certified_key(files)?;
        let mut current_files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let replaced = self.current.load().cert != key.cert;
        self.current.store(Arc::new(key));
        *current_files = files.clone();
        Ok(replaced)
    }

    /// The files the serving certificate was read from.
    pub fn files(&self) -> TlsConfig {
        self.files.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// rustls config for HTTPS over TCP: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
    pub fn tcp_server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load_certified_key(files: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let cert_error = |cause: String| TlsError::Cert {
        path: files.cert_file.clone(),
        cause,
    };
    let key_error = |cause: String| TlsError::Key {
        path: files.key_file.clone(),
        cause,
    };

    let cert_pem = fs::read(&files.cert_file).map_err(|e| cert_error(read_cause(&e)))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error(
            "no CERTIFICATE block found; expected a PEM certificate chain".into(),
        ));
    }

    warn_if_key_readable_by_others(&files.key_file);
    let key_pem = fs::read(&files.key_file).map_err(|e| key_error(read_cause(&e)))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| key_error(format!("not valid PEM: {e}")))?
        .ok_or_else(|| key_error("no PRIVATE KEY block found".into()))?;

    CertifiedKey::from_der(chain, key, &provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
        },
        other => key_error(format!("unusable key: {other}")),
    })
}

fn read_cause(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => {
            "file not found (generate a development pair with `quic-proxy cert generate`)".into()
        }
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}

fn warn_if_key_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = fs::metadata(path) {
        let mode = metadata.permissions().mode();
        // Group access is how Kubernetes mounts secrets (fsGroup, mode 0440); other users never need it.
        if mode & 0o007 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "TLS key file is accessible to other users; chmod o-rwx it");
        }
    }
}

/// Writes a self-signed certificate and key for `hosts` (names or IP addresses) into `dir`.
pub fn generate_self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let certified = rcgen::generate_simple_self_signed(hosts.to_vec())?;
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |cause| TlsError::Write { path, cause }
    };
    fs::create_dir_all(dir).map_err(write_error(dir))?;
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    fs::write(&cert_path, certified.cert.pem()).map_err(write_error(&cert_path))?;
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes()).map_err(write_error(&key_path))?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its old mode through open(); tighten it explicitly.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)
}
