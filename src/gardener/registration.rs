//! The webhook registration of one shoot, as Gardener registers shoot
//! webhooks: a `ManagedResource` (no class) in the shoot namespace of the
//! seed, referencing a Secret that holds the MutatingWebhookConfiguration;
//! the shoot's gardener-resource-manager applies it into the shoot (and
//! labels it `resources.gardener.cloud/managed-by: gardener`, which keeps
//! Gardener's shoot care from reporting it as a problematic webhook).
//!
//! Its URLs name the shoot (`{base}/shoots/{namespace}/{token}/mutate`), so
//! that a review is judged with that shoot's state only, without Gardener's
//! lookup of the shoot by the caller's IP; the token ([`super::path_token`])
//! keeps anyone else off that path.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use serde_json::json;

use crate::server::webhook_config::{self, Mode};

/// Label Gardener's webhook remediator honours: it leaves this configuration alone.
pub const REMEDIATION_EXCLUDE_LABEL: &str = "remediation.webhook.shoot.gardener.cloud/exclude";
/// Label on every object this server writes into the seed.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "overlay-switch-webhook";
/// Key of the MutatingWebhookConfiguration in the registration Secret.
pub const SECRET_KEY: &str = "mutatingwebhookconfiguration.yaml";
/// Field manager of the server-side applies.
const FIELD_MANAGER: &str = "overlay-switch-webhook";

/// Where the shoot's kube-apiserver sends the reviews of shoot `namespace`
/// (with its path token, when the server has a path key).
pub fn shoot_path(namespace: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("/shoots/{namespace}/{t}{}", crate::server::MUTATE_PATH),
        None => format!("/shoots/{namespace}{}", crate::server::MUTATE_PATH),
    }
}

/// Names of the registration objects.
#[derive(Debug, Clone)]
pub struct Names {
    /// Of the ManagedResource (and, in the shoot, of the configuration).
    pub managed_resource: String,
}

impl Names {
    pub fn secret(&self) -> String {
        format!("managedresource-{}", self.managed_resource)
    }
}

/// The MutatingWebhookConfiguration for shoot `namespace`: the URL
/// template with `base` + the shoot's paths, the CA bundle, calico-node's
/// users, and the remediator's exclude label.
pub fn render(
    base_url: &str,
    namespace: &str,
    ca_pem: &str,
    users: &[String],
    token: Option<&str>,
) -> anyhow::Result<String> {
    let base = base_url.trim_end_matches('/');
    anyhow::ensure!(
        base.starts_with("https://") && !base[8..].contains('/'),
        "--webhook-base-url {base_url:?} must be https://host[:port] (the shoot paths are appended)"
    );
    let url = format!("{base}{}", shoot_path(namespace, token));
    let yaml = webhook_config::render(Mode::Url, ca_pem, Some(&url), users)?;
    let anchor = "    app.kubernetes.io/name: overlay-switch-webhook\n";
    anyhow::ensure!(
        yaml.matches(anchor).count() == 1,
        "the URL template has no single name label to add the remediation label after"
    );
    Ok(yaml.replacen(
        anchor,
        &format!("{anchor}    {REMEDIATION_EXCLUDE_LABEL}: \"true\"\n"),
        1,
    ))
}

pub fn managed_resource_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("resources.gardener.cloud", "v1alpha1", "ManagedResource"),
        "managedresources",
    );
    Api::namespaced_with(client.clone(), namespace, &ar)
}

fn labels() -> BTreeMap<String, String> {
    [(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()
}

/// Writes (server-side apply) the Secret and the ManagedResource of shoot
/// `namespace` holding `config` (the rendered configuration).
pub async fn apply(
    seed: &Client,
    names: &Names,
    namespace: &str,
    config: &str,
) -> anyhow::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(names.secret()),
            namespace: Some(namespace.into()),
            labels: Some(labels()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [(
                SECRET_KEY.to_string(),
                ByteString(config.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let mut secret = serde_json::to_value(&secret).expect("a Secret serializes");
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    Api::<Secret>::namespaced(seed.clone(), namespace)
        .patch(&names.secret(), &params, &Patch::Apply(&secret))
        .await?;
    let mr = json!({
        "apiVersion": "resources.gardener.cloud/v1alpha1",
        "kind": "ManagedResource",
        "metadata": {
            "name": names.managed_resource,
            "namespace": namespace,
            "labels": labels(),
        },
        "spec": {
            "secretRefs": [{"name": names.secret()}],
            "keepObjects": false,
        },
    });
    let written = managed_resource_api(seed, namespace)
        .patch(&names.managed_resource, &params, &Patch::Apply(&mr))
        .await?;
    if written.metadata.deletion_timestamp.is_some() {
        // It would be gone soon with the configuration in the shoot: not
        // written until it is gone (then made anew).
        anyhow::bail!(
            "the ManagedResource {namespace}/{} is being deleted; it is written again once it is gone",
            names.managed_resource
        );
    }
    Ok(())
}

/// Removes the registration of shoot `namespace` (the ManagedResource
/// first: gardener-resource-manager then removes the configuration from
/// the shoot). Absent objects are fine.
pub async fn remove(seed: &Client, names: &Names, namespace: &str) -> Result<(), kube::Error> {
    let gone = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        r => r,
    };
    gone(
        managed_resource_api(seed, namespace)
            .delete(&names.managed_resource, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<Secret>::namespaced(seed.clone(), namespace)
            .delete(&names.secret(), &DeleteParams::default())
            .await
            .map(|_| ()),
    )
}

/// The shoot namespaces that have a registration of this server now (one
/// being deleted does not count: it is on its way out).
pub async fn registered(seed: &Client, names: &Names) -> Result<Vec<String>, kube::Error> {
    let list = managed_resource_api(seed, "")
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|mr| mr.name_any() == names.managed_resource)
        .filter(|mr| mr.metadata.deletion_timestamp.is_none())
        .filter_map(|mr| mr.namespace())
        .collect())
}

/// The configuration in a registration Secret's data (for `status` and tests).
pub fn config_of(secret: &Secret) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(SECRET_KEY)?.0;
    String::from_utf8(bytes.clone()).ok()
}

/// base64 of a CA bundle, as in `caBundle`.
pub fn ca_bundle(ca_pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_configuration_names_the_shoot_in_every_url() {
        let users = vec![crate::server::node_status::DEFAULT_CALICO_NODE_USER.to_string()];
        let yaml = render("https://osw.garden:443/", "shoot--p--a", CA, &users, None).unwrap();
        let urls: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("url: "))
            .collect();
        assert!(urls.len() >= 2, "{yaml}");
        for u in &urls {
            assert!(
                *u == "https://osw.garden:443/shoots/shoot--p--a/mutate"
                    || *u == "https://osw.garden:443/shoots/shoot--p--a/mutate-node-status",
                "{u}"
            );
        }
        assert!(urls.iter().any(|u| u.ends_with("/mutate-node-status")));
        assert!(yaml.contains(&format!("caBundle: {}", ca_bundle(CA))));
        assert!(yaml.contains(&format!("    {REMEDIATION_EXCLUDE_LABEL}: \"true\"\n")));
        // The template's failure policies, unchanged (Fail for the Calico objects).
        let fails = webhook_config::URL_TEMPLATE
            .matches("failurePolicy: Fail")
            .count();
        assert!(fails >= 3);
        assert_eq!(yaml.matches("failurePolicy: Fail").count(), fails);
        // With a path token, every URL carries it after the namespace.
        let yaml = render("https://osw:443", "shoot--p--a", CA, &users, Some("tok")).unwrap();
        let urls: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("url: "))
            .collect();
        assert!(urls.len() >= 2, "{yaml}");
        assert!(
            urls.iter()
                .all(|u| u.starts_with("https://osw:443/shoots/shoot--p--a/tok/mutate")),
            "{urls:?}"
        );
    }

    #[test]
    fn a_base_url_with_a_path_or_without_https_is_refused() {
        let users = vec!["u".to_string()];
        for bad in ["http://osw:443", "https://osw:443/x", "osw:443"] {
            let e = render(bad, "shoot--p--a", CA, &users, None).unwrap_err();
            assert!(e.to_string().contains("--webhook-base-url"), "{bad}: {e}");
        }
        assert!(render("https://osw", "shoot--p--a", "not pem", &users, None).is_err());
    }
}
