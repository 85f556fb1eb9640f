//! Serving TLS: PEM certificate chain and key, loaded with rustls-pki-types,
//! re-read when the files change on disk (a mounted Secret being rotated),
//! in the manner of controller-runtime's certwatcher.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificate chain {path}: {source}")]
    Cert {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCert { path: String },
    #[error("reading private key {path}: {source}")]
    Key {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate and key do not fit together: {0}")]
    Mismatch(rustls::Error),
    #[error("building TLS config: {0}")]
    Config(rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: (&str, &str),
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Cert {
            path: origin.0.to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: origin.0.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Key {
        path: origin.1.to_string(),
        source,
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Mismatch)
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    // Safe defaults of rustls: TLS 1.2 and 1.3 only.
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A server config for fixed PEM text (tests, and the `certs` self-check).
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let key = certified_key_from_pem(cert_pem, key_pem, ("<memory>", "<memory>"))?;
    server_config(Arc::new(FixedCert(Arc::new(key))))
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Certificate and key files, re-read when they change.
#[derive(Debug)]
pub struct CertFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

fn stamp(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

impl CertFiles {
    /// Loads both files now; an error here stops the server from starting.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(cert_path, key_path);
        let key = Self::read(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Loaded {
                key: Arc::new(key),
                stamp,
            }),
        }))
    }

    fn read(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
        let cert = std::fs::read(cert_path).map_err(|e| TlsError::Cert {
            path: cert_path.display().to_string(),
            source: rustls_pki_types::pem::Error::Io(e),
        })?;
        let key = std::fs::read(key_path).map_err(|e| TlsError::Key {
            path: key_path.display().to_string(),
            source: rustls_pki_types::pem::Error::Io(e),
        })?;
        certified_key_from_pem(
            &cert,
            &key,
            (
                &cert_path.display().to_string(),
                &key_path.display().to_string(),
            ),
        )
    }

    /// Re-reads the files if their modification times changed. A broken
    /// new pair is logged and the previous one kept.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.cert_path, &self.key_path);
        if self.current.read().expect("tls lock").stamp == now {
            return false;
        }
        match Self::read(&self.cert_path, &self.key_path) {
            Ok(key) => {
                *self.current.write().expect("tls lock") = Loaded {
                    key: Arc::new(key),
                    stamp: now,
                };
                tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                true
            }
            Err(error) => {
                tracing::error!(%error, "serving certificate changed but cannot be loaded; keeping the previous one");
                false
            }
        }
    }

    /// Watches the files for rotation until the task is dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }

    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        server_config(self.clone())
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("tls lock").key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_key_is_refused_with_a_clear_error() {
        let a = crate::server::certs::generate(&["a".into()], &[], 1).unwrap();
        let b = crate::server::certs::generate(&["b".into()], &[], 1).unwrap();
        let err = server_config_from_pem(a.tls_cert_pem.as_bytes(), b.tls_key_pem.as_bytes())
            .unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }

    #[test]
    fn empty_cert_file_is_refused() {
        let a = crate::server::certs::generate(&["a".into()], &[], 1).unwrap();
        let err = server_config_from_pem(b"", a.tls_key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::NoCert { .. }), "{err}");
    }

    #[test]
    fn a_chain_is_accepted_leaf_first() {
        let a = crate::server::certs::generate(&["a".into()], &[], 1).unwrap();
        let chain = format!("{}{}", a.tls_cert_pem, a.ca_cert_pem);
        let key =
            certified_key_from_pem(chain.as_bytes(), a.tls_key_pem.as_bytes(), ("c", "k")).unwrap();
        assert_eq!(key.cert.len(), 2);
    }

    #[test]
    fn files_are_reloaded_when_they_change_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let first = crate::server::certs::generate(&["a".into()], &[], 1).unwrap();
        let paths = crate::server::certs::write(&first, dir.path()).unwrap();
        let files = CertFiles::load(&paths.tls_cert, &paths.tls_key).unwrap();
        let before = files.current.read().unwrap().key.cert[0].clone();
        assert!(!files.reload_if_changed());

        let second = crate::server::certs::generate(&["a".into()], &[], 1).unwrap();
        // Make sure the modification time moves even on coarse file systems.
        std::thread::sleep(Duration::from_millis(20));
        crate::server::certs::write(&second, dir.path()).unwrap();
        let t = SystemTime::now() + Duration::from_secs(2);
        let f = std::fs::File::options()
            .write(true)
            .open(&paths.tls_cert)
            .unwrap();
        f.set_modified(t).unwrap();
        assert!(files.reload_if_changed());
        let after = files.current.read().unwrap().key.cert[0].clone();
        assert_ne!(before, after);

        // A broken key on disk keeps the previous pair.
        std::fs::write(&paths.tls_key, "garbage").unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(&paths.tls_key)
            .unwrap();
        f.set_modified(t + Duration::from_secs(2)).unwrap();
        assert!(!files.reload_if_changed());
        assert_eq!(files.current.read().unwrap().key.cert[0], after);
    }
}
