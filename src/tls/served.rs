//! What the TLS listeners serve: each certificate with the names, validity and origin read from it, and
//! the table a handshake's SNI is looked up in (exact name, then wildcard, then the default).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Acme,
    /// Made in memory at start-up, for names whose ACME certificate has not arrived yet.
    SelfSigned,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Acme => "acme",
            Self::SelfSigned => "self_signed",
        }
    }
}

/// One certificate the listeners can present.
#[derive(Debug)]
pub struct Served {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the subject alternative names (lowercase; wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// Validity, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The serial number, hex.
    pub serial: String,
    pub source: Source,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
}

impl Served {
    /// Reads names and validity from the leaf of `key`'s chain.
    pub fn new(key: CertifiedKey, source: Source, file: Option<PathBuf>) -> Result<Self, String> {
        let leaf = key.cert.first().ok_or("an empty certificate chain")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("not X.509: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            // A certificate without DNS names: its common name, as old clients would match it.
            if let Some(cn) = parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
            {
                names.push(cn.to_ascii_lowercase());
            }
        }
        let validity = parsed.validity();
        let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
        let serial = parsed.raw_serial_as_string().replace(':', "");
        Ok(Self {
            key: Arc::new(key),
            names,
            not_before,
            not_after,
            serial,
            source,
            file,
        })
    }

    /// Whether the certificate covers `name` (lowercase), exactly or through a wildcard.
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|own| {
            own == name
                || own
                    .strip_prefix("*.")
                    .is_some_and(|suffix| wildcard_suffix(name) == Some(suffix))
        })
    }
}

/// `www.example.com` -> `example.com`: what a wildcard certificate for it names after `*.`.
fn wildcard_suffix(name: &str) -> Option<&str> {
    let (_, rest) = name.split_once('.')?;
    rest.contains('.').then_some(rest)
}

/// The certificates by name: the first certificate to claim a name keeps it.
#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<String, Arc<Served>>,
    wildcard: HashMap<String, Arc<Served>>,
    default: Option<Arc<Served>>,
}

impl Table {
    /// `certificates` in order of precedence; `default` serves clients without SNI or with a name none has.
    pub fn new(certificates: &[Arc<Served>], default: Option<Arc<Served>>) -> Self {
        let mut table = Self {
            default,
            ..Self::default()
        };
        for served in certificates {
            for name in &served.names {
                let slot = match name.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.to_owned()),
                    None => table.exact.entry(name.clone()),
                };
                slot.or_insert_with(|| Arc::clone(served));
            }
        }
        table
    }

    /// The certificate for `sni` (already lowercase), or the default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<Served>> {
        sni.and_then(|name| {
            self.exact
                .get(name)
                .or_else(|| wildcard_suffix(name).and_then(|suffix| self.wildcard.get(suffix)))
        })
        .or(self.default.as_ref())
    }

    /// Whether `name` has a certificate of its own (not the default).
    pub fn has(&self, name: &str) -> bool {
        self.exact.contains_key(name) || wildcard_suffix(name).is_some_and(|suffix| self.wildcard.contains_key(suffix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(names: &[&str]) -> Arc<Served> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names).ok();
        let certified = certified.and_then(|c| {
            super::super::files::from_pem(c.cert.pem().as_bytes(), c.signing_key.serialize_pem().as_bytes()).ok()
        });
        let Some(key) = certified else {
            panic!("rcgen makes a certificate");
        };
        match Served::new(key, Source::File, None) {
            Ok(served) => Arc::new(served),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_and_the_first_certificate_is_the_default() {
        let a = served(&["a.test", "www.a.test"]);
        let wild = served(&["*.a.test"]);
        let b = served(&["B.test"]);
        let table = Table::new(
            &[Arc::clone(&a), Arc::clone(&wild), Arc::clone(&b)],
            Some(Arc::clone(&a)),
        );
        let pick = |sni: Option<&str>| table.lookup(sni).map(|s| s.names[0].clone());
        assert_eq!(pick(Some("a.test")), Some("a.test".into()));
        assert_eq!(pick(Some("www.a.test")), Some("a.test".into()));
        assert_eq!(pick(Some("api.a.test")), Some("*.a.test".into()));
        assert_eq!(pick(Some("b.test")), Some("b.test".into()));
        // A wildcard covers one label only.
        assert_eq!(pick(Some("x.api.a.test")), Some("a.test".into()));
        assert_eq!(pick(Some("unknown.test")), Some("a.test".into()));
        assert_eq!(pick(None), Some("a.test".into()));
        assert!(table.has("api.a.test") && !table.has("unknown.test"));
        assert!(wild.covers("api.a.test") && !wild.covers("a.test"));
        assert!(b.serial.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(b.not_after > b.not_before);
    }
}
