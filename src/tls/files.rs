//! Certificates from PEM files: reading a chain and its key with errors that name the file and the key
//! in the config, and writing generated pairs with private permissions.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::CertificateFiles;

use super::error::TlsError;
use super::provider::provider;

/// Reads the chain and key of `files`; errors name `key`, the pair's place in the config.
pub fn load(key: &str, files: &CertificateFiles) -> Result<CertifiedKey, TlsError> {
    let cert_error = |cause: String| TlsError::Cert {
        key: key.to_owned(),
        path: files.cert_file.clone(),
        cause,
    };
    let key_error = |cause: String| TlsError::Key {
        key: key.to_owned(),
        path: files.key_file.clone(),
        cause,
    };
    let cert_pem = fs::read(&files.cert_file).map_err(|e| cert_error(read_cause(&e)))?;
    warn_if_key_readable_by_others(&files.key_file);
    let key_pem = fs::read(&files.key_file).map_err(|e| key_error(read_cause(&e)))?;
    from_pem(&cert_pem, &key_pem).map_err(|problem| match problem {
        Problem::Chain(cause) => cert_error(cause),
        Problem::Key(cause) => key_error(cause),
        Problem::Mismatch => TlsError::Mismatch {
            key: key.to_owned(),
            cert: files.cert_file.clone(),
            key_file: files.key_file.clone(),
        },
    })
}

/// What is wrong with a PEM chain and key.
#[derive(Debug)]
pub enum Problem {
    Chain(String),
    Key(String),
    Mismatch,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Chain(cause) => write!(f, "certificate chain: {cause}"),
            Self::Key(cause) => write!(f, "key: {cause}"),
            Self::Mismatch => f.write_str("the key does not belong to the certificate"),
        }
    }
}

/// A chain and key from PEM text (files, or an ACME CA's answer and the key made for it).
pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, Problem> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| Problem::Chain(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Problem::Chain(
            "no CERTIFICATE block found; expected a PEM certificate chain".into(),
        ));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| Problem::Key(format!("not valid PEM: {e}")))?
        .ok_or_else(|| Problem::Key("no PRIVATE KEY block found".into()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => Problem::Mismatch,
        other => Problem::Key(format!("unusable key: {other}")),
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

/// Writes `contents` to `path` readable and writable by its owner only, whatever mode the file had.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
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
