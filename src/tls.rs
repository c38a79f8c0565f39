//! HTTPS with rustls: the certificate chain and key from PEM files, HTTP/1.1
//! over TLS 1.2 and 1.3 with rustls' safe defaults (the `ring` provider).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The acceptor for `config`, or `None` for plain HTTP.
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, String> {
    if !config.enabled() {
        return Ok(None);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert {}: {e}", config.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert {}: no certificate in the file",
            config.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| format!("tls.key {}: {e}", config.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert and tls.key do not make a certificate: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_generated_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        let config = TlsConfig {
            cert: c.clone(),
            key: k.clone(),
        };
        assert!(acceptor(&config).unwrap().is_some());
        assert!(acceptor(&TlsConfig::default()).unwrap().is_none());
        let swapped = TlsConfig { cert: k, key: c };
        assert!(acceptor(&swapped).is_err());
    }
}
