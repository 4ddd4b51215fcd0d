//! TLS client settings from PEM files, named like client-go's security config
//! (`ClusterSSLCA`, `ClusterSSLCert`, `ClusterSSLKey`; client-go `config/security.go`
//! `Security.ToTLSConfig`): the CA bundle that signs the servers' certificates and, for mutual
//! TLS, the client's certificate chain and private key. The surface is the same as
//! `tikv-tokio`'s `TlsFiles`, so a program switches runtimes without touching its TLS setup.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tikv_core::Error;
use tikv_core::config::SecurityConfig;

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

    /// The files named by the core's [`SecurityConfig`], or `None` when it leaves TLS off (no
    /// CA), as client-go `Security.ToTLSConfig` returns no TLS config without a CA.
    pub fn from_security(security: &SecurityConfig) -> Option<Self> {
        let ca_path = security.ca_path.clone()?;
        Some(TlsFiles {
            ca_path,
            cert_path: security.cert_path.clone(),
            key_path: security.key_path.clone(),
        })
    }

    /// Reads the files and builds the rustls client configuration (ring provider, rustls'
    /// safe protocol versions, ALPN `h2`). Every failure is [`Error::Tls`] naming the file.
    pub fn load(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
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
            .map_err(|e| Error::Tls(e.to_string()))?
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
                    .map_err(|e| Error::Tls(e.to_string()))?
            }
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

fn file_error(path: &Path, what: &str) -> Error {
    Error::Tls(format!("{}: {what}", path.display()))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(path, &e.to_string()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_pem(path)?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, &e.to_string()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| file_error(path, &e.to_string()))?
        .ok_or_else(|| file_error(path, "no private key found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tikv-smol-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_file_is_a_tls_error_naming_it() {
        let err = TlsFiles::new("/nonexistent/ca.pem").load().unwrap_err();
        assert!(
            matches!(&err, Error::Tls(m) if m.contains("/nonexistent/ca.pem")),
            "{err:?}"
        );
    }

    #[test]
    fn file_without_certificates_and_half_client_cert_are_tls_errors() {
        let dir = scratch_dir("tls-unit");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, b"not a pem file").unwrap();
        let err = TlsFiles::new(&junk).load().unwrap_err();
        assert!(
            matches!(&err, Error::Tls(m) if m.contains("no certificate")),
            "{err:?}"
        );

        let half = TlsFiles {
            ca_path: junk.clone(),
            cert_path: Some(junk.clone()),
            key_path: None,
        };
        assert!(matches!(half.load(), Err(Error::Tls(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn security_config_without_ca_means_plain_tcp() {
        assert_eq!(TlsFiles::from_security(&SecurityConfig::default()), None);
        let sec = SecurityConfig::tls("ca.pem", Some("c.pem".into()), Some("k.pem".into()));
        assert_eq!(
            TlsFiles::from_security(&sec),
            Some(TlsFiles::new("ca.pem").with_client_cert("c.pem", "k.pem"))
        );
    }
}
