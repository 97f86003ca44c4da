//! TLS for clients (rustls): a listener beside or instead of the plain one,
//! with the server certificate and key from PEM files and, optionally,
//! client certificates verified against a CA. Files are read at start.
//! Also the cell that keeps a `rediss://` pool's client configuration.

use std::io::BufReader;
use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(file)).collect();
    let certs = certs.map_err(|e| format!("'{path}' is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("'{path}' holds no certificate"));
    }
    Ok(certs)
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| format!("'{path}' is not a PEM private key: {e}"))?
        .ok_or_else(|| format!("'{path}' holds no private key"))
}

/// Builds the acceptor; errors name the file at fault.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    let certs = read_certs(&config.cert_file)?;
    let key = read_key(&config.key_file)?;
    let builder = ServerConfig::builder();
    let builder = match &config.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| format!("'{ca}': {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| format!("client CA '{ca}': {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certificate '{}' and key '{}': {e}",
            config.cert_file, config.key_file
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// A pool's rustls client configuration, built on first use and shared by
/// every connection of the pool (clones share it). Only a success is kept,
/// so a CA file that appears later is picked up.
#[derive(Clone, Default)]
pub struct ClientConfigCell(Arc<OnceLock<Arc<ClientConfig>>>);

impl ClientConfigCell {
    pub fn get_or_build(
        &self,
        build: impl FnOnce() -> Result<Arc<ClientConfig>, String>,
    ) -> Result<Arc<ClientConfig>, String> {
        if let Some(config) = self.0.get() {
            return Ok(config.clone());
        }
        let config = build()?;
        Ok(self.0.get_or_init(|| config).clone())
    }
}

/// A cache, not a setting: two endpoints with the same TLS settings are
/// equal whatever either has built.
impl PartialEq for ClientConfigCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ClientConfigCell {}

impl std::fmt::Debug for ClientConfigCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "built"
        } else {
            "not built"
        })
    }
}
