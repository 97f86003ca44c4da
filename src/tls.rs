//! TLS for clients (rustls): a listener beside or instead of the plain one,
//! with the server certificate and key from PEM files and, optionally,
//! client certificates verified against a CA. Files are read at start.

use std::io::BufReader;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
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
