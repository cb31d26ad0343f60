//! Why a certificate could not be used or made.

use std::io;
use std::path::PathBuf;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}.cert_file {path}: {cause}")]
    Cert { key: String, path: PathBuf, cause: String },
    #[error("{key}.key_file {path}: {cause}")]
    Key { key: String, path: PathBuf, cause: String },
    #[error("{key}: the key in {key_file} does not belong to the certificate in {cert}")]
    Mismatch {
        key: String,
        cert: PathBuf,
        key_file: PathBuf,
    },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{key}: {cause}")]
    Unreadable { key: String, cause: String },
}
