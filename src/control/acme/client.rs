//! Talking to the CA: an HTTP client with our roots and time limits that remembers the CA's Retry-After,
//! the account (stored, or created once), and one order from new-order to certificate.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType as AcmeChallenge,
    Error, ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::RootCertStore;

use crate::config::{AcmeConfig, ChallengeType};
use crate::tls::{self, CertStore};

use super::storage::Storage;

/// How long the CA may take to validate the challenges, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed order: what went wrong, and when the CA asked to be contacted again, if it did.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub retry_after: Option<SystemTime>,
}

/// The CA for one ACME configuration.
pub struct Client {
    config: AcmeConfig,
    http: Http,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Client {
    pub fn new(config: &AcmeConfig) -> Result<Self, String> {
        Ok(Self {
            config: config.clone(),
            http: Http::new(config)?,
            account: tokio::sync::Mutex::new(None),
        })
    }

    /// Orders a certificate for `name`, answering its challenge through `certs`; the chain and key, PEM.
    pub async fn order(&self, name: &str, storage: &Storage, certs: &CertStore) -> Result<(String, String), Failure> {
        self.http.forget_retry_after();
        let result = self.try_order(name, storage, certs).await;
        result.map_err(|message| Failure {
            message,
            retry_after: self.http.retry_after(),
        })
    }

    async fn try_order(&self, name: &str, storage: &Storage, certs: &CertStore) -> Result<(String, String), String> {
        let account = self.account(storage).await?;
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order: {}", describe(&e)))?;
        // Whatever happens next, the challenge answers go when this does.
        let _answers = Answers { certs, name };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| format!("authorization: {}", describe(&e)))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("the authorization for {name} is {other:?}")),
            }
            let offered: Vec<AcmeChallenge> = authorization.challenges.iter().map(|c| c.r#type.clone()).collect();
            let chosen = self
                .config
                .challenges
                .iter()
                .copied()
                .find(|kind| offered.contains(&acme_type(*kind)))
                .ok_or_else(|| format!("the CA offers none of the configured challenges for {name}"))?;
            let mut challenge = authorization
                .challenge(acme_type(chosen))
                .ok_or_else(|| format!("no {} challenge", chosen.as_str()))?;
            let key_authorization = challenge.key_authorization();
            match chosen {
                ChallengeType::Http01 => {
                    certs
                        .challenges()
                        .set_http(name, &challenge.token, key_authorization.as_str());
                }
                ChallengeType::TlsAlpn01 => {
                    let key = alpn_certificate(name, key_authorization.digest().as_ref())?;
                    certs.challenges().set_tls_alpn(name, key);
                }
            }
            tracing::debug!(name, challenge = chosen.as_str(), "ACME challenge ready");
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("{}: {e}", chosen.as_str()))?;
        }
        let retries = RetryPolicy::new().timeout(VALIDATION_TIMEOUT);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("validation: {}", describe(&e)))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "validation: the order is {status:?}: {}",
                why_invalid(&mut order).await
            ));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| format!("CSR: {e}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| format!("CSR: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {}", describe(&e)))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate: {}", describe(&e)))?;
        Ok((chain, key.serialize_pem()))
    }

    /// The account: in memory, else from storage, else created at the CA (once, under a lock, so that
    /// instances sharing the storage share one account).
    async fn account(&self, storage: &Storage) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let directory = &self.config.directory;
        let _lock = loop {
            match storage.try_lock("account") {
                Ok(Some(lock)) => break lock,
                Ok(None) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => return Err(format!("{}: {e}", storage.root().display())),
            }
        };
        let stored = storage
            .account(directory)
            .map_err(|e| format!("{}: {e}", storage.root().display()))?;
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials =
                    serde_json::from_str(&json).map_err(|e| format!("the stored account: {e}"))?;
                Account::builder_with_http(Box::new(self.http.clone()))
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| format!("account: {}", describe(&e)))?
            }
            None => {
                let contact: Vec<String> = self.config.email.iter().map(|e| format!("mailto:{e}")).collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = match &self.config.eab {
                    Some(eab) => {
                        use base64::Engine as _;
                        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(eab.hmac_key.trim_end_matches('='))
                            .map_err(|e| format!("eab.hmac_key: {e}"))?;
                        Some(ExternalAccountKey::new(eab.kid.clone(), &key))
                    }
                    None => None,
                };
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = Account::builder_with_http(Box::new(self.http.clone()))
                    .create(&new, directory.clone(), eab.as_ref())
                    .await
                    .map_err(|e| format!("new account: {}", describe(&e)))?;
                let json = serde_json::to_string(&credentials).map_err(|e| format!("account: {e}"))?;
                storage
                    .save_account(directory, &json)
                    .map_err(|e| format!("{}: {e}", storage.root().display()))?;
                tracing::info!(directory, id = account.id(), "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }
}

/// An error with every cause under it: hyper's "client error (Connect)" says little without "Connection
/// refused".
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The CA's own words on why validation failed.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    if let Some(problem) = &order.state().error {
        return problem.to_string();
    }
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        reasons.extend(
            authorization
                .challenges
                .iter()
                .filter_map(|c| c.error.as_ref().map(ToString::to_string)),
        );
    }
    if reasons.is_empty() {
        "no reason given".to_owned()
    } else {
        reasons.join("; ")
    }
}

fn acme_type(kind: ChallengeType) -> AcmeChallenge {
    match kind {
        ChallengeType::Http01 => AcmeChallenge::Http01,
        ChallengeType::TlsAlpn01 => AcmeChallenge::TlsAlpn01,
    }
}

/// The self-signed certificate a tls-alpn-01 validation expects: `name` and the critical acmeIdentifier
/// extension holding the SHA-256 of the key authorization (RFC 8737 section 3).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Not through from_pem: its check that key and certificate match parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension; both were just made together here.
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Removes the challenge answers for a name when its order ends, however it ends.
struct Answers<'a> {
    certs: &'a CertStore,
    name: &'a str,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        self.certs.challenges().remove_tls_alpn(self.name);
        self.certs.challenges().remove_http_for(self.name);
    }
}

/// hyper over rustls with the system's roots and `directory_ca_file`, each request bounded in time, and
/// the last Retry-After the CA sent with a 429 or 503 kept.
#[derive(Clone)]
struct Http {
    client: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
    /// `acme.request_timeout`: the longest one request to the CA may take, connection included.
    request_timeout: Duration,
}

impl Http {
    fn new(config: &AcmeConfig) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &config.directory_ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("directory_ca_file {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("directory_ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("directory_ca_file {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.request_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            client: HyperClient::builder(TokioExecutor::new()).build(connector),
            retry_after: Arc::new(Mutex::new(None)),
            request_timeout: config.request_timeout,
        })
    }

    fn retry_after(&self) -> Option<SystemTime> {
        *self.retry_after.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget_retry_after(&self) {
        *self.retry_after.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl HttpClient for Http {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let response = self.client.request(request);
        let retry_after = Arc::clone(&self.retry_after);
        let limit = self.request_timeout;
        Box::pin(async move {
            let response = tokio::time::timeout(limit, response)
                .await
                .map_err(|_| Error::Other("the CA did not answer in time".into()))?
                .map_err(|e| Error::Other(Box::new(e)))?;
            if matches!(
                response.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                let asked = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(parse_retry_after);
                *retry_after.lock().unwrap_or_else(PoisonError::into_inner) = asked;
            }
            Ok(BytesResponse::from(response))
        })
    }
}

/// `Retry-After: 120` or an HTTP date.
fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(seconds) => SystemTime::now().checked_add(Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}
