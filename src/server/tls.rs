//! Serving TLS: PEM certificate chain and key, loaded with rustls-pki-types,
//! re-read when the files change on disk (a mounted Secret being rotated),
//! in the manner of controller-runtime's certwatcher: the *content* of both
//! files is compared at every check, so the kubelet's swap of the `..data`
//! symlink and a rewrite in place within the same second are both seen. A
//! new pair that cannot be used (unreadable, not fitting together, half
//! written, expired) keeps the previous one serving, is logged once, and is
//! counted (`overlay_switch_certificate_reload_failures_total`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
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
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error("the certificate {path} ended at {not_after} (it is expired)")]
    Expired { path: String, not_after: String },
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

fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    client_ca: Option<&ClientCa>,
) -> Result<ServerConfig, TlsError> {
    // Safe defaults of rustls: TLS 1.2 and 1.3 only.
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                ca.roots.clone(),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The CAs a client certificate must chain to (`serve --client-ca`): with
/// it, the server requires and verifies a client certificate in every TLS
/// handshake, as kube-apiserver presents one when its
/// `AdmissionConfiguration` gives it a kubeconfig for this webhook.
#[derive(Debug, Clone)]
pub struct ClientCa {
    roots: Arc<rustls::RootCertStore>,
}

impl ClientCa {
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<ClientCa, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|source| TlsError::Cert {
                path: origin.to_string(),
                source,
            })?;
            roots
                .add(cert)
                .map_err(|e| TlsError::ClientCa(format!("{origin}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCert {
                path: origin.to_string(),
            });
        }
        Ok(ClientCa {
            roots: Arc::new(roots),
        })
    }

    pub fn load(path: &Path) -> Result<ClientCa, TlsError> {
        let pem = std::fs::read(path).map_err(|e| TlsError::Cert {
            path: path.display().to_string(),
            source: rustls_pki_types::pem::Error::Io(e),
        })?;
        Self::from_pem(&pem, &path.display().to_string())
    }
}

/// A server config for fixed PEM text (tests, and the `certs` self-check).
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    server_config_with(cert_pem, key_pem, None)
}

/// As [`server_config_from_pem`], requiring client certificates of `client_ca`.
pub fn server_config_with(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&ClientCa>,
) -> Result<ServerConfig, TlsError> {
    let key = certified_key_from_pem(cert_pem, key_pem, ("<memory>", "<memory>"))?;
    server_config(Arc::new(FixedCert(Arc::new(key))), client_ca)
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
    /// The content of a pair that failed to load (logged and counted once).
    failed: RwLock<Option<u64>>,
    reload_failures: Counter,
    not_after: Gauge,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// A digest of both files' content.
    stamp: Option<u64>,
}

/// A digest of both files' content (`None` when one cannot be read).
fn stamp(cert: &Path, key: &Path) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(cert).ok()?.hash(&mut h);
    std::fs::read(key).ok()?.hash(&mut h);
    Some(h.finish())
}

/// The end of the leaf certificate's validity (seconds since the epoch).
fn leaf_not_after(cert_pem: &[u8]) -> Option<i64> {
    crate::server::certs::info(std::str::from_utf8(cert_pem).ok()?).map(|i| i.not_after)
}

impl CertFiles {
    /// Loads both files now; an error here stops the server from starting.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(cert_path, key_path);
        let (key, not_after) = Self::read(cert_path, key_path)?;
        let files = Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Loaded {
                key: Arc::new(key),
                stamp,
            }),
            failed: RwLock::new(None),
            reload_failures: Counter::default(),
            not_after: Gauge::default(),
        };
        files.not_after.set(not_after.unwrap_or(0));
        Ok(Arc::new(files))
    }

    /// Registers this server's certificate metrics.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("overlay_switch");
        r.register(
            "certificate_reload_failures",
            "Changed serving certificate files that could not be used (the previous pair kept serving)",
            self.reload_failures.clone(),
        );
        r.register(
            "certificate_not_after_seconds",
            "End of the served certificate's validity, seconds since the epoch",
            self.not_after.clone(),
        );
    }

    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.get()
    }

    /// The pair in the files, with the end of the leaf's validity; an
    /// expired leaf is refused.
    fn read(cert_path: &Path, key_path: &Path) -> Result<(CertifiedKey, Option<i64>), TlsError> {
        let cert = std::fs::read(cert_path).map_err(|e| TlsError::Cert {
            path: cert_path.display().to_string(),
            source: rustls_pki_types::pem::Error::Io(e),
        })?;
        let key = std::fs::read(key_path).map_err(|e| TlsError::Key {
            path: key_path.display().to_string(),
            source: rustls_pki_types::pem::Error::Io(e),
        })?;
        let pair = certified_key_from_pem(
            &cert,
            &key,
            (
                &cert_path.display().to_string(),
                &key_path.display().to_string(),
            ),
        )?;
        let not_after = leaf_not_after(&cert);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Some(end) = not_after.filter(|end| *end <= now) {
            return Err(TlsError::Expired {
                path: cert_path.display().to_string(),
                not_after: k8s_openapi::jiff::Timestamp::from_second(end)
                    .map_or_else(|_| end.to_string(), |t| t.to_string()),
            });
        }
        Ok((pair, not_after))
    }

    /// Re-reads the files if their content changed. A new pair that cannot
    /// be used is logged and counted once, and the previous one kept.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.cert_path, &self.key_path);
        if self.current.read().expect("tls lock").stamp == now
            || (now.is_some() && *self.failed.read().expect("tls lock") == now)
        {
            return false;
        }
        match Self::read(&self.cert_path, &self.key_path) {
            Ok((key, not_after)) => {
                *self.current.write().expect("tls lock") = Loaded {
                    key: Arc::new(key),
                    stamp: now,
                };
                *self.failed.write().expect("tls lock") = None;
                self.not_after.set(not_after.unwrap_or(0));
                tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                true
            }
            Err(error) => {
                // A file being written may be read half way: the next check
                // sees the whole pair (a different content) and loads it.
                *self.failed.write().expect("tls lock") = now;
                self.reload_failures.inc();
                tracing::error!(%error, "serving certificate changed but cannot be used; keeping the previous one");
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
        server_config(self.clone(), None)
    }

    /// As [`CertFiles::server_config`], requiring client certificates of
    /// `client_ca` when given.
    pub fn server_config_with(
        self: &Arc<Self>,
        client_ca: Option<&ClientCa>,
    ) -> Result<ServerConfig, TlsError> {
        server_config(self.clone(), client_ca)
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

    /// The kubelet's way of updating a mounted Secret: the files are
    /// symlinks through `..data` to a timestamped directory, and `..data` is
    /// swapped atomically.
    struct KubeletVolume {
        dir: std::path::PathBuf,
        n: u32,
    }

    impl KubeletVolume {
        fn new(dir: &Path, b: &crate::server::certs::Bundle) -> KubeletVolume {
            let mut v = KubeletVolume {
                dir: dir.to_path_buf(),
                n: 0,
            };
            v.publish(&b.tls_cert_pem, &b.tls_key_pem);
            for f in ["tls.crt", "tls.key"] {
                std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
            }
            v
        }
        fn publish(&mut self, cert: &str, key: &str) {
            self.n += 1;
            let ts = self
                .dir
                .join(format!("..2026_11_29_00_00_0{}.{}", self.n, self.n));
            std::fs::create_dir(&ts).unwrap();
            std::fs::write(ts.join("tls.crt"), cert).unwrap();
            std::fs::write(ts.join("tls.key"), key).unwrap();
            let tmp = self.dir.join("..data_tmp");
            std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
            std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        }
        fn cert(&self) -> std::path::PathBuf {
            self.dir.join("tls.crt")
        }
        fn key(&self) -> std::path::PathBuf {
            self.dir.join("tls.key")
        }
    }

    /// A minute ago.
    fn ended() -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc() - time::Duration::minutes(1)
    }

    fn served(files: &CertFiles) -> CertificateDer<'static> {
        files.current.read().unwrap().key.cert[0].clone()
    }

    fn leaf(b: &crate::server::certs::Bundle) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(b.tls_cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn rotations_the_kubelet_way_and_in_place_are_served_and_broken_pairs_are_not() {
        let gen_ = || crate::server::certs::generate(&["a".into()], &[], 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first = gen_();
        let mut vol = KubeletVolume::new(dir.path(), &first);
        let files = CertFiles::load(&vol.cert(), &vol.key()).unwrap();
        assert_eq!(served(&files), leaf(&first));
        assert!(!files.reload_if_changed(), "unchanged");

        // Three rotations in a row by swapping ..data.
        for _ in 0..3 {
            let next = gen_();
            vol.publish(&next.tls_cert_pem, &next.tls_key_pem);
            assert!(files.reload_if_changed());
            assert_eq!(served(&files), leaf(&next));
        }

        // Rewritten in place with the same modification time: the content
        // tells.
        let target = std::fs::canonicalize(vol.cert()).unwrap();
        let key_target = std::fs::canonicalize(vol.key()).unwrap();
        let mtime = std::fs::metadata(&target).unwrap().modified().unwrap();
        let key_mtime = std::fs::metadata(&key_target).unwrap().modified().unwrap();
        let in_place = gen_();
        std::fs::write(&target, &in_place.tls_cert_pem).unwrap();
        std::fs::write(&key_target, &in_place.tls_key_pem).unwrap();
        for (p, t) in [(&target, mtime), (&key_target, key_mtime)] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        assert!(files.reload_if_changed());
        assert_eq!(served(&files), leaf(&in_place));

        // Broken pairs keep the last good one; each is counted once.
        let good = served(&files);
        let other = gen_();
        let half = &other.tls_cert_pem[..other.tls_cert_pem.len() / 2];
        let expired = {
            let ca = crate::server::certs::make_ca(Duration::from_secs(3600)).unwrap();
            crate::server::certs::issue_until(&ca, &["a".into()], &[], ended()).unwrap()
        };
        let broken: [(&str, &str); 4] = [
            ("garbage", "garbage"),
            (&other.tls_cert_pem, &in_place.tls_key_pem),
            (half, &other.tls_key_pem),
            (&expired.0, &expired.1),
        ];
        for (i, (cert, key)) in broken.into_iter().enumerate() {
            vol.publish(cert, key);
            assert!(!files.reload_if_changed(), "broken pair {i}");
            assert!(!files.reload_if_changed(), "not retried while unchanged");
            assert_eq!(served(&files), good, "broken pair {i}");
            assert_eq!(files.reload_failures(), i as u64 + 1);
        }
        // A good pair after them is served.
        let last = gen_();
        vol.publish(&last.tls_cert_pem, &last.tls_key_pem);
        assert!(files.reload_if_changed());
        assert_eq!(served(&files), leaf(&last));
    }

    #[test]
    fn an_expired_certificate_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::server::certs::make_ca(Duration::from_secs(3600)).unwrap();
        let (cert, key) =
            crate::server::certs::issue_until(&ca, &["a".into()], &[], ended()).unwrap();
        std::fs::write(dir.path().join("c"), cert).unwrap();
        std::fs::write(dir.path().join("k"), key).unwrap();
        let err = CertFiles::load(&dir.path().join("c"), &dir.path().join("k")).unwrap_err();
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("expired"), "{err}");
    }
}
