//! `overlay-switch-webhook certs`: a CA and a serving certificate for the
//! webhook, made with rcgen. For development, tests and small clusters;
//! production may use cert-manager instead (see `certs/README.md`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
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

/// A CA: its certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a certificate says of itself (read with x509-parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// Its DNS subject alternative names.
    pub dns: Vec<String>,
}

/// Makes a CA valid for `validity` (from five minutes ago).
pub fn make_ca(validity: std::time::Duration) -> anyhow::Result<Ca> {
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
    ca_params.not_after = now + to_time(validity)?;
    let ca_key = KeyPair::generate()?;
    let key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    Ok(Ca {
        cert_pem: ca.pem(),
        key_pem,
    })
}

fn to_time(d: std::time::Duration) -> anyhow::Result<Duration> {
    Duration::try_from(d).map_err(|e| anyhow::anyhow!("validity {d:?} out of range: {e}"))
}

/// A serving certificate and key (PEM) signed by `ca`, valid for
/// `validity` (from five minutes ago), for the given names.
pub fn issue(
    ca: &Ca,
    dns: &[String],
    ips: &[IpAddr],
    validity: std::time::Duration,
) -> anyhow::Result<(String, String)> {
    let end = OffsetDateTime::now_utc() + to_time(validity)?;
    issue_until(ca, dns, ips, end)
}

/// A serving certificate valid from five minutes ago until `end` (which
/// may be in the past: an ended certificate, for tests of refusal).
pub fn issue_until(
    ca: &Ca,
    dns: &[String],
    ips: &[IpAddr],
    end: OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(
        !dns.is_empty() || !ips.is_empty(),
        "a serving certificate needs at least one DNS name or IP address"
    );
    let now = OffsetDateTime::now_utc();
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
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
    params.not_after = end;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A client certificate and key (PEM) signed by `ca` for user `common_name`
/// (extended key usage: client authentication), valid for `validity`: what
/// kube-apiserver presents to a webhook that requires mutual TLS.
pub fn issue_client(
    ca: &Ca,
    common_name: &str,
    validity: std::time::Duration,
) -> anyhow::Result<(String, String)> {
    let now = OffsetDateTime::now_utc();
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + to_time(validity)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes a CA (valid twice `days`) and a serving certificate signed by it
/// (valid `days`) for the given DNS names and IP addresses.
pub fn generate(dns: &[String], ips: &[IpAddr], days: i64) -> anyhow::Result<Bundle> {
    anyhow::ensure!(
        !dns.is_empty() || !ips.is_empty(),
        "a serving certificate needs at least one DNS name or IP address"
    );
    let day = std::time::Duration::from_secs(24 * 3600);
    let days = u32::try_from(days.max(1)).unwrap_or(u32::MAX);
    let ca = make_ca(day * days.saturating_mul(2))?;
    let (tls_cert_pem, tls_key_pem) = issue(&ca, dns, ips, day * days)?;
    Ok(Bundle {
        ca_cert_pem: ca.cert_pem,
        ca_key_pem: ca.key_pem,
        tls_cert_pem,
        tls_key_pem,
    })
}

/// The certificates in a PEM text, each as its own PEM block (other blocks
/// and text are left out).
pub fn split_pem(text: &str) -> Vec<String> {
    pem::parse_many(text)
        .map(|blocks| {
            blocks
                .into_iter()
                .filter(|b| b.tag() == "CERTIFICATE")
                .map(|b| {
                    pem::encode_config(
                        &b,
                        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the (first) certificate in `pem_text` says of itself; `None` when
/// it cannot be read.
pub fn info(pem_text: &str) -> Option<CertInfo> {
    let block = pem::parse(pem_text).ok()?;
    let (_, x509) = x509_parser::parse_x509_certificate(block.contents()).ok()?;
    let validity = x509.validity();
    let dns = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(CertInfo {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        dns,
    })
}

/// Whether the certificate `cert_pem` is signed by the CA `ca_pem` (its
/// signature verifies with the CA's key, and it names the CA as issuer).
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Ok(c), Ok(a)) = (pem::parse(cert_pem), pem::parse(ca_pem)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(c.contents()),
        x509_parser::parse_x509_certificate(a.contents()),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
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
    fn a_serving_certificate_is_issued_again_from_a_kept_ca() {
        let hour = std::time::Duration::from_secs(3600);
        let ca = make_ca(hour * 48).unwrap();
        let other = make_ca(hour).unwrap();
        let names = vec!["a.b".to_string(), "a.b.svc".to_string()];
        let (cert, key) = issue(&ca, &names, &[], hour * 2).unwrap();
        assert!(signed_by(&cert, &ca.cert_pem));
        assert!(!signed_by(&cert, &other.cert_pem));
        assert!(!signed_by("garbage", &ca.cert_pem));
        let i = info(&cert).unwrap();
        assert_eq!(i.dns, names);
        assert!(
            (i.not_after - i.not_before - 2 * 3600 - 300).abs() <= 2,
            "{i:?}"
        );
        let c = info(&ca.cert_pem).unwrap();
        assert!((c.not_after - c.not_before - 48 * 3600 - 300).abs() <= 2);
        assert!(
            crate::server::tls::server_config_from_pem(cert.as_bytes(), key.as_bytes()).is_ok()
        );
        let both = format!("{}{}", ca.cert_pem, other.cert_pem);
        let split = split_pem(&both);
        assert_eq!(split.len(), 2);
        assert_eq!(info(&split[1]), info(&other.cert_pem));
        assert!(split_pem("no pem").is_empty());
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
