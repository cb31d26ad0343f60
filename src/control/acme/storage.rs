//! The ACME state on disk, which instances pointed at one directory share:
//!
//! ```text
//! <storage>/accounts/<directory host>.json    the account's key and URL (mode 600)
//! <storage>/certificates/<name>.crt, .key     the chain and its key (mode 600)
//! <storage>/locks/<name>.lock                 held (flock) while an instance orders <name>
//! ```
//!
//! A lock is released by the kernel when its holder exits, so a crash never leaves a name locked.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::tls::{self, Served, Source};

/// The storage directory.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

/// An exclusive claim on a name (or the account), held until dropped.
#[derive(Debug)]
pub struct Lock {
    _held: File,
}

impl Storage {
    /// Creates the directory tree (owner-only) if it is missing.
    pub fn open(root: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        for dir in ["", "accounts", "certificates", "locks"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(dir))?;
        }
        Ok(Self { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes `<what>.lock` if no other process holds it; `None` when one does.
    pub fn try_lock(&self, what: &str) -> io::Result<Option<Lock>> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("locks").join(format!("{what}.lock")))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _held: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(error)) => Err(error),
        }
    }

    fn certificate_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.root.join("certificates");
        (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
    }

    /// The stored certificate for `name`: `Ok(None)` when there is none, an error when it cannot be
    /// used (a half-written pair is retried later, as the writer finishes).
    pub fn certificate(&self, name: &str) -> Result<Option<Served>, String> {
        let (cert_path, key_path) = self.certificate_paths(name);
        let chain = match fs::read(&cert_path) {
            Ok(chain) => chain,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("{}: {error}", cert_path.display())),
        };
        let key = fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let certified = tls::from_pem(&chain, &key).map_err(|problem| format!("{}: {problem}", cert_path.display()))?;
        let served = Served::new(certified, Source::Acme, Some(cert_path.clone()))
            .map_err(|cause| format!("{}: {cause}", cert_path.display()))?;
        if !served.covers(name) {
            return Err(format!(
                "{}: the certificate does not cover {name}",
                cert_path.display()
            ));
        }
        Ok(Some(served))
    }

    /// Stores a new chain and key for `name`. Each file is written aside and renamed into place, the key
    /// first; a reader between the two renames sees a pair that does not match and tries again later.
    pub fn save_certificate(&self, name: &str, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        let (cert_path, key_path) = self.certificate_paths(name);
        replace(&key_path, key_pem.as_bytes())?;
        replace(&cert_path, chain_pem.as_bytes())
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        let host: String = directory
            .trim_start_matches("https://")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("accounts").join(format!("{host}.json"))
    }

    /// The stored account for `directory`, as JSON.
    pub fn account(&self, directory: &str) -> io::Result<Option<String>> {
        match fs::read_to_string(self.account_path(directory)) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub fn save_account(&self, directory: &str, json: &str) -> io::Result<()> {
        replace(&self.account_path(directory), json.as_bytes())
    }
}

/// Writes `contents` to a private temporary file beside `path`, then renames it over `path`.
fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{}.tmp", std::process::id()));
    let aside = PathBuf::from(aside);
    tls::write_private(&aside, contents)?;
    fs::rename(&aside, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_locked_by_one_holder_at_a_time_and_pairs_round_trip() {
        let dir = std::env::temp_dir().join(format!("quic-proxy-acme-storage-{}", std::process::id()));
        let Ok(storage) = Storage::open(&dir) else {
            panic!("cannot create {}", dir.display());
        };
        let first = storage.try_lock("a.test").ok().flatten();
        assert!(first.is_some());
        assert!(matches!(storage.try_lock("a.test"), Ok(None)));
        assert!(matches!(storage.try_lock("b.test"), Ok(Some(_))));
        drop(first);
        assert!(matches!(storage.try_lock("a.test"), Ok(Some(_))));

        assert!(matches!(storage.certificate("a.test"), Ok(None)));
        let Ok(made) = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]) else {
            panic!("rcgen");
        };
        let saved = storage.save_certificate("a.test", &made.cert.pem(), &made.signing_key.serialize_pem());
        assert!(saved.is_ok());
        let loaded = storage.certificate("a.test");
        assert!(
            matches!(&loaded, Ok(Some(served)) if served.names == ["a.test"]),
            "{loaded:?}"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.join("certificates/a.test.key")).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        // A certificate stored under another name is refused.
        let _ = storage.save_certificate("b.test", &made.cert.pem(), &made.signing_key.serialize_pem());
        assert!(storage.certificate("b.test").is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
