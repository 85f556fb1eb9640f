//! Gardener mode's own certificates: a CA and a serving certificate for the
//! server's Service, kept in one Secret of its namespace in the seed (made
//! by the first replica, read by every other), as Gardener's extensions keep
//! theirs. No certificate needs to be made before the chart is installed
//! (Gardener picks the extension's namespace), and the CA written into
//! every shoot's registration is the one the server serves with.
//!
//! Renewal: a serving certificate within [`RENEW_BEFORE`] of its end is made
//! anew, with a new CA, when a replica starts (the registrations follow the
//! CA file; a restart of every replica serves the new pair).

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

use super::registration::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::server::certs::{self, Bundle, Paths};

/// Annotation with the end of the serving certificate's validity.
pub const NOT_AFTER_ANNOTATION: &str = "overlay-switch-webhook.gardener.cloud/not-after";
/// A serving certificate this close to its end is made anew at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where the certificates are kept and what they are for.
#[derive(Debug, Clone)]
pub struct CertSecret {
    pub namespace: String,
    pub name: String,
    /// DNS names of the serving certificate.
    pub dns: Vec<String>,
    /// Validity of the serving certificate (the CA gets twice that).
    pub days: i64,
}

fn to_secret(s: &CertSecret, b: &Bundle, not_after: Timestamp) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        ("ca.crt", &b.ca_cert_pem),
        ("ca.key", &b.ca_key_pem),
        ("tls.crt", &b.tls_cert_pem),
        ("tls.key", &b.tls_key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: Some(s.namespace.clone()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            annotations: Some([(NOT_AFTER_ANNOTATION.to_string(), not_after.to_string())].into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The bundle in a Secret, if it is whole and not due for renewal at `now`.
pub fn usable(secret: &Secret, now: Timestamp) -> Option<Bundle> {
    let not_after: Timestamp = secret
        .metadata
        .annotations
        .as_ref()?
        .get(NOT_AFTER_ANNOTATION)?
        .parse()
        .ok()?;
    let renew_at = not_after.checked_sub(jiff_span(RENEW_BEFORE)).ok()?;
    if now >= renew_at {
        return None;
    }
    let data = secret.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    Some(Bundle {
        ca_cert_pem: text("ca.crt")?,
        ca_key_pem: text("ca.key")?,
        tls_cert_pem: text("tls.crt")?,
        tls_key_pem: text("tls.key")?,
    })
}

fn jiff_span(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(d.as_secs() as i64)
}

/// Reads the certificates from the Secret, making (or renewing) them when
/// needed, and writes them into `dir`.
pub async fn ensure(seed: &Client, s: &CertSecret, dir: &Path) -> anyhow::Result<Paths> {
    let api = Api::<Secret>::namespaced(seed.clone(), &s.namespace);
    let now = Timestamp::now();
    let what = format!("the certificates Secret {}/{}", s.namespace, s.name);
    let existing = api
        .get_opt(&s.name)
        .await
        .with_context(|| format!("reading {what}"))?;
    let bundle = match existing.as_ref().and_then(|e| usable(e, now)) {
        Some(b) => b,
        None => {
            let b = certs::generate(&s.dns, &[], s.days)?;
            let not_after = now
                .checked_add(jiff_span(Duration::from_secs(
                    s.days.max(1) as u64 * 24 * 3600,
                )))
                .context("certificate validity out of range")?;
            let mut secret = to_secret(s, &b, not_after);
            let written = match existing {
                None => api.create(&PostParams::default(), &secret).await,
                Some(old) => {
                    // Replace only what was read: another replica's renewal wins.
                    secret.metadata.resource_version = old.metadata.resource_version;
                    api.replace(&s.name, &PostParams::default(), &secret).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %format!("{}/{}", s.namespace, s.name), dns = ?s.dns, %not_after, "made the serving certificate and its CA");
                    b
                }
                // Another replica made them first: use theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let theirs = api
                        .get(&s.name)
                        .await
                        .with_context(|| format!("reading {what}"))?;
                    usable(&theirs, now).with_context(|| {
                        format!("{what} was written by another replica but cannot be used")
                    })?
                }
                Err(e) => return Err(e).with_context(|| format!("writing {what}")),
            }
        }
    };
    certs::write(&bundle, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_secret() -> CertSecret {
        CertSecret {
            namespace: "extension-osw".into(),
            name: "overlay-switch-webhook-certs".into(),
            dns: vec!["overlay-switch-webhook.extension-osw".into()],
            days: 365,
        }
    }

    #[test]
    fn a_secret_is_used_until_a_month_before_its_end() {
        let b = certs::generate(&cert_secret().dns, &[], 365).unwrap();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let end = t0
            .checked_add(jiff_span(Duration::from_secs(365 * 24 * 3600)))
            .unwrap();
        let secret = to_secret(&cert_secret(), &b, end);
        assert_eq!(usable(&secret, t0).unwrap().ca_cert_pem, b.ca_cert_pem);
        let late = end.checked_sub(jiff_span(RENEW_BEFORE)).unwrap();
        assert!(
            usable(&secret, late).is_none(),
            "renewed a month before its end"
        );
        let mut no_date = secret.clone();
        no_date.metadata.annotations = None;
        assert!(usable(&no_date, t0).is_none(), "no date: made anew");
        let mut partial = secret;
        partial.data.as_mut().unwrap().remove("tls.key");
        assert!(usable(&partial, t0).is_none(), "a part missing: made anew");
    }
}
