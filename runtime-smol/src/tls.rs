//! TLS client settings: `tikv-proto`'s [`TlsFiles`] (PEM files named like client-go's security
//! config), loaded into the rustls configuration the futures-rustls connector uses.

use std::sync::Arc;

use tikv_core::Error;
use tikv_core::config::SecurityConfig;
pub use tikv_proto::channel::TlsFiles;

/// The files named by the core's [`SecurityConfig`], or `None` when it leaves TLS off (no
/// CA), as client-go `Security.ToTLSConfig` returns no TLS config without a CA.
pub(crate) fn files_of(security: &SecurityConfig) -> Option<TlsFiles> {
    let ca_path = security.ca_path.clone()?;
    Some(TlsFiles {
        ca_path,
        cert_path: security.cert_path.clone(),
        key_path: security.key_path.clone(),
    })
}

/// Loads `files`; every failure is [`Error::Tls`] naming the file.
pub(crate) fn load(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, Error> {
    files.load().map_err(|e| Error::Tls(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_config_maps_to_files_and_bad_files_are_tls_errors() {
        assert_eq!(files_of(&SecurityConfig::default()), None);
        let sec = SecurityConfig::tls("ca.pem", Some("c.pem".into()), Some("k.pem".into()));
        let files = files_of(&sec).unwrap();
        assert_eq!(
            files,
            TlsFiles::new("ca.pem").with_client_cert("c.pem", "k.pem")
        );
        let err = load(&TlsFiles::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(matches!(err, Error::Tls(m) if m.contains("/nonexistent/ca.pem")));
    }
}
