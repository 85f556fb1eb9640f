//! Gardener mode's own certificates: a CA and a serving certificate for the
//! server's Service, kept in one Secret of its namespace in the seed (made
//! by the first replica, read by every other), as Gardener's extensions keep
//! theirs. No certificate needs to be made before the chart is installed
//! (Gardener picks the extension's namespace), and the CA bundle written
//! into every shoot's registration is the one the server serves with.
//!
//! Every replica reads the Secret again every `--certificates-check-interval`
//! and renews what is due ([`rotation`]: the serving certificate before its
//! end, the CA in two steps so that no shoot ever lacks trust in what is
//! served); what the Secret holds is written to the files the server loads
//! (its TLS reload serves it; the registrations follow the CA bundle file).
//! So replicas agree within one interval, and no restart is needed.
//!
//! The Secret also holds the key of the per-shoot path tokens
//! ([`super::path_token`]), made once and kept.

pub mod rotation;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

use self::rotation::{Facts, Policy, Step, decide};
use super::registration::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::server::certs::{self, Bundle, Ca, Paths};

/// Annotation with the end of the serving certificate's validity (for
/// people; the server reads the certificates themselves).
pub const NOT_AFTER_ANNOTATION: &str = "overlay-switch-webhook.gardener.cloud/not-after";

/// Where the certificates are kept and what they are for.
#[derive(Debug, Clone)]
pub struct CertSecret {
    pub namespace: String,
    pub name: String,
    /// DNS names of the serving certificate.
    pub dns: Vec<String>,
    pub policy: Policy,
}

/// What the Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub signing: Ca,
    pub next: Option<Ca>,
    /// CAs still trusted from before a promotion, until they end (PEM each).
    pub previous: Vec<String>,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
    /// The key of the per-shoot path tokens (empty: none yet).
    pub path_key: Vec<u8>,
}

impl Stored {
    /// The CA bundle for the registrations: signing, next, previous.
    pub fn bundle(&self) -> String {
        let mut b = self.signing.cert_pem.clone();
        if let Some(n) = &self.next {
            b.push_str(&n.cert_pem);
        }
        for p in &self.previous {
            b.push_str(p);
        }
        b
    }

    fn facts(&self, dns: &[String], now: i64) -> Facts {
        let serving = certs::info(&self.tls_cert_pem);
        let mut want: Vec<&String> = dns.iter().collect();
        want.sort();
        Facts {
            signing: certs::info(&self.signing.cert_pem),
            next: self.next.as_ref().and_then(|n| certs::info(&n.cert_pem)),
            serving_by_signing: certs::signed_by(&self.tls_cert_pem, &self.signing.cert_pem),
            names_match: serving.as_ref().is_some_and(|s| {
                let mut have: Vec<&String> = s.dns.iter().collect();
                have.sort();
                have == want
            }),
            serving,
            previous_ended: self
                .previous
                .iter()
                .any(|p| certs::info(p).is_none_or(|i| i.not_after <= now)),
            path_key: !self.path_key.is_empty(),
        }
    }
}

/// Reads a Secret written by this server (any earlier form: a CA bundle
/// without `ca-signing.crt` is a single signing CA). `None` when a part is
/// missing.
pub fn read_secret(secret: &Secret) -> Option<Stored> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    let signing_cert =
        text("ca-signing.crt").or_else(|| certs::split_pem(&text("ca.crt")?).into_iter().next())?;
    let next = match (text("ca-next.crt"), text("ca-next.key")) {
        (Some(cert_pem), Some(key_pem)) => Some(Ca { cert_pem, key_pem }),
        _ => None,
    };
    Some(Stored {
        signing: Ca {
            cert_pem: signing_cert,
            key_pem: text("ca.key")?,
        },
        next,
        previous: text("ca-previous.crt")
            .map(|t| certs::split_pem(&t))
            .unwrap_or_default(),
        tls_cert_pem: text("tls.crt")?,
        tls_key_pem: text("tls.key")?,
        path_key: data
            .get("path-token.key")
            .map(|b| b.0.clone())
            .unwrap_or_default(),
    })
}

fn to_secret(s: &CertSecret, st: &Stored) -> Secret {
    let mut data: BTreeMap<String, ByteString> = [
        ("ca.crt", st.bundle()),
        ("ca-signing.crt", st.signing.cert_pem.clone()),
        ("ca.key", st.signing.key_pem.clone()),
        ("ca-previous.crt", st.previous.concat()),
        ("tls.crt", st.tls_cert_pem.clone()),
        ("tls.key", st.tls_key_pem.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    if let Some(n) = &st.next {
        data.insert(
            "ca-next.crt".into(),
            ByteString(n.cert_pem.clone().into_bytes()),
        );
        data.insert(
            "ca-next.key".into(),
            ByteString(n.key_pem.clone().into_bytes()),
        );
    }
    data.insert("path-token.key".into(), ByteString(st.path_key.clone()));
    let not_after = certs::info(&st.tls_cert_pem)
        .and_then(|i| Timestamp::from_second(i.not_after).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: Some(s.namespace.clone()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            annotations: Some([(NOT_AFTER_ANNOTATION.to_string(), not_after)].into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn new_path_key() -> anyhow::Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("no random bytes for the path token key"))?;
    Ok(key)
}

/// The next stored state after `step` (makes keys and certificates).
pub fn advance(
    st: Option<&Stored>,
    step: Step,
    s: &CertSecret,
    now: i64,
) -> anyhow::Result<Stored> {
    let p = &s.policy;
    let path_key = match st.map(|st| st.path_key.clone()) {
        Some(k) if !k.is_empty() => k,
        _ => new_path_key()?,
    };
    let fresh = || -> anyhow::Result<Stored> {
        let ca = certs::make_ca(p.ca_validity())?;
        let (tls_cert_pem, tls_key_pem) = certs::issue(&ca, &s.dns, &[], p.validity)?;
        Ok(Stored {
            signing: ca,
            next: None,
            previous: vec![],
            tls_cert_pem,
            tls_key_pem,
            path_key: path_key.clone(),
        })
    };
    let Some(old) = st else { return fresh() };
    let mut st = old.clone();
    st.path_key = path_key.clone();
    st.previous
        .retain(|c| certs::info(c).is_some_and(|i| i.not_after > now));
    match step {
        Step::Keep | Step::Tidy => {}
        Step::Fresh => return fresh(),
        Step::Reissue { validity } => {
            let v = Duration::from_secs(u64::try_from(validity).unwrap_or(0));
            (st.tls_cert_pem, st.tls_key_pem) = certs::issue(&st.signing, &s.dns, &[], v)?;
        }
        Step::Introduce => st.next = Some(certs::make_ca(p.ca_validity())?),
        Step::Promote => {
            let next = st.next.take().context("no next CA to promote")?;
            st.previous.insert(0, st.signing.cert_pem.clone());
            st.signing = next;
            (st.tls_cert_pem, st.tls_key_pem) = certs::issue(&st.signing, &s.dns, &[], p.validity)?;
        }
    }
    Ok(st)
}

/// What the server uses from the Secret.
#[derive(Debug, Clone)]
pub struct Current {
    pub paths: Paths,
    pub path_key: Vec<u8>,
}

/// One pass: reads the Secret, renews what is due (another replica's write
/// wins a race: its result is used), and writes what it holds into `dir`
/// (only files whose content changed).
pub async fn sync(seed: &Client, s: &CertSecret, dir: &Path) -> anyhow::Result<Current> {
    let api = Api::<Secret>::namespaced(seed.clone(), &s.namespace);
    let what = format!("the certificates Secret {}/{}", s.namespace, s.name);
    let now = Timestamp::now().as_second();
    let existing = api
        .get_opt(&s.name)
        .await
        .with_context(|| format!("reading {what}"))?;
    let stored = existing.as_ref().and_then(read_secret);
    let step = match &stored {
        Some(st) => decide(&st.facts(&s.dns, now), now, &s.policy),
        None => Step::Fresh,
    };
    let stored = match (step, stored) {
        (Step::Keep, Some(st)) => st,
        (step, st) => {
            let next = advance(st.as_ref(), step, s, now)?;
            let mut secret = to_secret(s, &next);
            let written = match existing {
                None => api.create(&PostParams::default(), &secret).await,
                Some(old) => {
                    // Replace only what was read: another replica's write wins.
                    secret.metadata.resource_version = old.metadata.resource_version;
                    api.replace(&s.name, &PostParams::default(), &secret).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %what, ?step, dns = ?s.dns, "certificates renewed");
                    next
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let theirs = api
                        .get(&s.name)
                        .await
                        .with_context(|| format!("reading {what}"))?;
                    read_secret(&theirs).with_context(|| {
                        format!("{what} was written by another replica but cannot be read")
                    })?
                }
                Err(e) => return Err(e).with_context(|| format!("writing {what}")),
            }
        }
    };
    let bundle = Bundle {
        ca_cert_pem: stored.bundle(),
        ca_key_pem: stored.signing.key_pem.clone(),
        tls_cert_pem: stored.tls_cert_pem.clone(),
        tls_key_pem: stored.tls_key_pem.clone(),
    };
    let paths = Paths::in_dir(dir);
    let on_disk = |p: &Path| std::fs::read_to_string(p).ok();
    let same = on_disk(&paths.ca_cert).as_deref() == Some(bundle.ca_cert_pem.as_str())
        && on_disk(&paths.ca_key).as_deref() == Some(bundle.ca_key_pem.as_str())
        && on_disk(&paths.tls_cert).as_deref() == Some(bundle.tls_cert_pem.as_str())
        && on_disk(&paths.tls_key).as_deref() == Some(bundle.tls_key_pem.as_str());
    if !same {
        certs::write(&bundle, dir)?;
    }
    Ok(Current {
        paths,
        path_key: stored.path_key,
    })
}

/// Runs [`sync`] every `interval` until the task is dropped; a failed pass
/// keeps what is served and is tried again at the next.
pub async fn keep_current(
    seed: Client,
    s: CertSecret,
    dir: std::path::PathBuf,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = sync(&seed, &s, &dir).await {
            tracing::warn!(error = %format!("{error:#}"), "cannot renew or read the certificates; serving what was loaded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_secret(validity: Duration) -> CertSecret {
        CertSecret {
            namespace: "extension-osw".into(),
            name: "overlay-switch-webhook-certs".into(),
            dns: vec!["overlay-switch-webhook.extension-osw".into()],
            policy: Policy { validity },
        }
    }

    #[test]
    fn a_secret_round_trips_and_an_earlier_form_is_read() {
        let s = cert_secret(Duration::from_secs(365 * 24 * 3600));
        let now = Timestamp::now().as_second();
        let st = advance(None, Step::Fresh, &s, now).unwrap();
        assert_eq!(st.path_key.len(), 32);
        let secret = to_secret(&s, &st);
        assert_eq!(read_secret(&secret).as_ref(), Some(&st));
        let facts = st.facts(&s.dns, now);
        assert_eq!(decide(&facts, now, &s.policy), Step::Keep, "{facts:?}");
        // The form before the rotation: ca.crt, ca.key, tls.*, no path key.
        let mut old = secret.clone();
        let data = old.data.as_mut().unwrap();
        for k in ["ca-signing.crt", "ca-previous.crt", "path-token.key"] {
            data.remove(k);
        }
        let read = read_secret(&old).unwrap();
        assert_eq!(read.signing, st.signing);
        assert!(read.path_key.is_empty());
        assert_eq!(
            decide(&read.facts(&s.dns, now), now, &s.policy),
            Step::Tidy,
            "a path key is added, nothing else"
        );
        let tidy = advance(Some(&read), Step::Tidy, &s, now).unwrap();
        assert_eq!(tidy.signing, st.signing);
        assert_eq!(tidy.tls_cert_pem, st.tls_cert_pem);
        assert_eq!(tidy.path_key.len(), 32);
        let mut partial = secret;
        partial.data.as_mut().unwrap().remove("tls.key");
        assert!(read_secret(&partial).is_none(), "a part missing: made anew");
    }

    #[test]
    fn a_rotation_keeps_every_served_certificate_trusted_by_the_bundle_before_it() {
        let s = cert_secret(Duration::from_secs(3600));
        let now = Timestamp::now().as_second();
        let first = advance(None, Step::Fresh, &s, now).unwrap();
        let introduced = advance(Some(&first), Step::Introduce, &s, now).unwrap();
        assert_eq!(
            introduced.tls_cert_pem, first.tls_cert_pem,
            "serving unchanged"
        );
        assert_eq!(certs::split_pem(&introduced.bundle()).len(), 2);
        let promoted = advance(Some(&introduced), Step::Promote, &s, now).unwrap();
        let next = introduced.next.as_ref().unwrap();
        assert_eq!(&promoted.signing, next);
        assert!(certs::signed_by(&promoted.tls_cert_pem, &next.cert_pem));
        // The bundle registered before the promotion trusts the new
        // certificate, and the one after still trusts the old one.
        let trusted = |bundle: &str, cert: &str| {
            certs::split_pem(bundle)
                .iter()
                .any(|ca| certs::signed_by(cert, ca))
        };
        assert!(trusted(&introduced.bundle(), &promoted.tls_cert_pem));
        assert!(trusted(&promoted.bundle(), &first.tls_cert_pem));
        assert_eq!(promoted.path_key, first.path_key, "the path key is kept");
        // An ended previous CA leaves the bundle.
        let later = advance(Some(&promoted), Step::Tidy, &s, now + 3 * 3600).unwrap();
        assert!(later.previous.is_empty());
        let reissued = advance(Some(&promoted), Step::Reissue { validity: 600 }, &s, now).unwrap();
        assert_ne!(reissued.tls_cert_pem, promoted.tls_cert_pem);
        let i = certs::info(&reissued.tls_cert_pem).unwrap();
        assert!((i.not_after - now - 600).abs() <= 2, "{i:?}");
    }
}
