//! The process's rustls crypto provider (ring).

use std::sync::{Arc, Once};

use rustls::crypto::CryptoProvider;

/// Installs the process's rustls crypto provider (ring); safe to call more than once.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed by the embedding program; it is used instead.
        drop(rustls::crypto::ring::default_provider().install_default());
    });
}

/// The installed provider (ring unless the embedding program installed another).
pub fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}
