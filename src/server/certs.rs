//! `overlay-switch-webhook certs`: a CA and a serving certificate for the
//! webhook, made with rcgen. For development, tests and small clusters;
//! production may use cert-manager instead (see `certs/README.md`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The Service DNS names of `manifests/`, plus loopback names for local use.
pub const DEFAULT_DNS_NAMES: &[&str] = &[
    "overlay-switch-webhook",
    "overlay-switch-webhook.overlay-switch-webhook",
    "overlay-switch-webhook.overlay-switch-webhook.svc",
    "overlay-switch-webhook.overlay-switch-webhook.svc.cluster.local",
    "localhost",
];
pub const DEFAULT_IPS: &[&str] = &["127.0.0.1"];

/// PEM text of a freshly made CA and serving certificate.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
}

impl Bundle {
    /// The `caBundle` value of a webhook clientConfig: base64 of the CA PEM.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_cert_pem.as_bytes())
    }
}

/// Makes a CA (valid `ca_days`) and a serving certificate signed by it (valid
/// `days`) for the given DNS names and IP addresses.
pub fn generate(dns: &[String], ips: &[IpAddr], days: i64) -> anyhow::Result<Bundle> {
    anyhow::ensure!(
        !dns.is_empty() || !ips.is_empty(),
        "a serving certificate needs at least one DNS name or IP address"
    );
    let now = OffsetDateTime::now_utc();

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "overlay-switch-webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - Duration::minutes(5);
    ca_params.not_after = now + Duration::days(days.saturating_mul(2).max(days));
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut params = CertificateParams::new(dns.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(
        DnType::CommonName,
        dns.first().cloned().unwrap_or_else(|| ips[0].to_string()),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    Ok(Bundle {
        ca_cert_pem: ca.pem(),
        ca_key_pem,
        tls_cert_pem: cert.pem(),
        tls_key_pem: key.serialize_pem(),
    })
}

/// Paths of the files [`write()`] produces.
#[derive(Debug, Clone)]
pub struct Paths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

impl Paths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            tls_cert: dir.join("tls.crt"),
            tls_key: dir.join("tls.key"),
        }
    }
}

/// Writes the bundle into `dir` (created if missing); keys are mode 0600.
pub fn write(bundle: &Bundle, dir: &Path) -> anyhow::Result<Paths> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let paths = Paths::in_dir(dir);
    write_file(&paths.ca_cert, &bundle.ca_cert_pem, false)?;
    write_file(&paths.ca_key, &bundle.ca_key_pem, true)?;
    write_file(&paths.tls_cert, &bundle.tls_cert_pem, false)?;
    write_file(&paths.tls_key, &bundle.tls_key_pem, true)?;
    Ok(paths)
}

fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Write beside and rename, so a server watching the file never reads half of it.
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_cert_is_signed_by_the_ca_and_names_the_sans() {
        let bundle = generate(
            &["svc.example".to_string()],
            &["127.0.0.1".parse().unwrap()],
            30,
        )
        .unwrap();
        assert!(
            bundle
                .ca_cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(bundle.tls_key_pem.contains("PRIVATE KEY"));
        // The server config builder checks that key and cert match.
        let cfg = crate::server::tls::server_config_from_pem(
            bundle.tls_cert_pem.as_bytes(),
            bundle.tls_key_pem.as_bytes(),
        );
        assert!(cfg.is_ok(), "{cfg:?}");
        // caBundle is base64 of the CA PEM.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bundle.ca_bundle())
            .unwrap();
        assert_eq!(decoded, bundle.ca_cert_pem.as_bytes());
    }

    #[test]
    fn refuses_a_certificate_without_names() {
        assert!(generate(&[], &[], 30).is_err());
    }

    #[test]
    fn write_puts_keys_with_private_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let bundle = generate(&["a".into()], &[], 1).unwrap();
        let paths = write(&bundle, dir.path()).unwrap();
        let mode = std::fs::metadata(&paths.tls_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&paths.ca_cert).unwrap(),
            bundle.ca_cert_pem
        );
    }
}
