//! TLS client settings loaded from PEM files, the way client-go's security config names them
//! (`ClusterSSLCA`, `ClusterSSLCert`, `ClusterSSLKey`; see client-go `config/security.go`
//! `Security.ToTLSConfig`): a CA bundle that signs the servers' certificates and, for mutual
//! TLS, a client certificate chain with its private key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tikv_core::Error;

/// Where the PEM files are. Paths are read when the client connects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// CA certificate(s) that sign the PD and TiKV server certificates.
    pub ca_path: PathBuf,
    /// Client certificate chain, for mutual TLS (needs `key_path`).
    pub cert_path: Option<PathBuf>,
    /// Client private key (PKCS#8, PKCS#1 or SEC1), for mutual TLS (needs `cert_path`).
    pub key_path: Option<PathBuf>,
}

impl TlsFiles {
    /// Server authentication only: trust the CA in `ca_path`.
    pub fn new(ca_path: impl Into<PathBuf>) -> Self {
        TlsFiles {
            ca_path: ca_path.into(),
            cert_path: None,
            key_path: None,
        }
    }

    /// Adds a client certificate and key (mutual TLS).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_path = Some(cert.into());
        self.key_path = Some(key.into());
        self
    }

    /// Reads the files and builds the rustls client configuration (ring provider, safe
    /// protocol versions, ALPN `h2`). Errors are [`Error::Tls`].
    pub fn load(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let mut roots = rustls::RootCertStore::empty();
        let cas = read_certs(&self.ca_path)?;
        if cas.is_empty() {
            return Err(tls_err(&self.ca_path, "no certificate found"));
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| tls_err(&self.ca_path, &e.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
        let mut config = match (&self.cert_path, &self.key_path) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                if chain.is_empty() {
                    return Err(tls_err(cert, "no certificate found"));
                }
                let key_der = read_key(key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| Error::Tls(e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::Tls(
                    "a client certificate needs both cert_path and key_path".into(),
                ));
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn tls_err(path: &Path, what: &str) -> Error {
    Error::Tls(format!("{}: {what}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| tls_err(path, &e.to_string()))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, &e.to_string()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = std::fs::read(path).map_err(|e| tls_err(path, &e.to_string()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| tls_err(path, &e.to_string()))?
        .ok_or_else(|| tls_err(path, "no private key found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_typed_errors() {
        let err = TlsFiles::new("/nonexistent/ca.pem").load().unwrap_err();
        assert!(matches!(err, Error::Tls(m) if m.contains("/nonexistent/ca.pem")));

        let dir = std::env::temp_dir().join(format!("tikv-tokio-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"not a pem").unwrap();
        let err = TlsFiles::new(&empty).load().unwrap_err();
        assert!(matches!(err, Error::Tls(m) if m.contains("no certificate")));

        let half = TlsFiles {
            ca_path: empty.clone(),
            cert_path: Some(empty.clone()),
            key_path: None,
        };
        assert!(matches!(half.load(), Err(Error::Tls(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
