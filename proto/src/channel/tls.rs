//! TLS client settings from PEM files, named like client-go's security config
//! (`ClusterSSLCA`, `ClusterSSLCert`, `ClusterSSLKey`; client-go `config/security.go`
//! `Security.ToTLSConfig`): the CA bundle that signs the servers' certificates and, for mutual
//! TLS, the client's certificate chain and private key.
//!
//! The result is a rustls [`rustls::ClientConfig`]; each runtime adapter wraps it in its own
//! TLS connector (tokio-rustls, futures-rustls), so loading and checking the files is the same
//! code everywhere.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why [`TlsFiles::load`] failed: an unreadable or empty file, a key that does not match, a
/// certificate without its key. The message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// Where the PEM files are. They are read by [`TlsFiles::load`].
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

    /// Reads the files and builds the rustls client configuration (ring provider, rustls'
    /// safe protocol versions, ALPN `h2`).
    pub fn load(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let cas = read_certs(&self.ca_path)?;
        if cas.is_empty() {
            return Err(file_error(&self.ca_path, "no certificate found"));
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| file_error(&self.ca_path, &e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&self.cert_path, &self.key_path) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                if chain.is_empty() {
                    return Err(file_error(cert, "no certificate found"));
                }
                builder
                    .with_client_auth_cert(chain, read_key(key)?)
                    .map_err(|e| TlsError(e.to_string()))?
            }
            _ => {
                return Err(TlsError(
                    "a client certificate needs both cert_path and key_path".into(),
                ));
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn file_error(path: &Path, what: &str) -> TlsError {
    TlsError(format!("{}: {what}", path.display()))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(path, &e.to_string()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, &e.to_string()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| file_error(path, &e.to_string()))?
        .ok_or_else(|| file_error(path, "no private key found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = TlsFiles::new("/nonexistent/ca.pem").load().unwrap_err();
        assert!(err.0.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn file_without_certificates_and_half_client_cert_are_errors() {
        let dir = std::env::temp_dir().join(format!("tikv-proto-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, b"not a pem file").unwrap();
        let err = TlsFiles::new(&junk).load().unwrap_err();
        assert!(err.0.contains("no certificate"), "{err}");

        let half = TlsFiles {
            ca_path: junk.clone(),
            cert_path: Some(junk.clone()),
            key_path: None,
        };
        assert!(half.load().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
