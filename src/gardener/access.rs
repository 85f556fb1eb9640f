//! Reaching a shoot's API server from the seed: the kubeconfig in the shoot
//! namespace's access Secret (`gardener-internal`, key `kubeconfig`, else
//! `gardener`), as Gardener's extensions do.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

/// Which Secret holds a shoot's kubeconfig.
#[derive(Debug, Clone)]
pub struct AccessSecret {
    pub name: String,
    /// Read when `name` does not exist.
    pub fallback: Option<String>,
    pub key: String,
}

impl Default for AccessSecret {
    fn default() -> Self {
        Self {
            name: "gardener-internal".into(),
            fallback: Some("gardener".into()),
            key: "kubeconfig".into(),
        }
    }
}

/// Why a shoot cannot be reached; its text goes into the warnings of what
/// the shoot holds.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the shoot's access Secret {namespace}/{names} does not exist")]
    NoSecret { namespace: String, names: String },
    #[error("the shoot's access Secret {namespace}/{name} has no key {key:?}")]
    NoKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("the seed refused to read the shoot's access Secret {namespace}/{name}: {source}")]
    Seed {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the kubeconfig in the shoot's access Secret {namespace}/{name} cannot be used: {why}")]
    Kubeconfig {
        namespace: String,
        name: String,
        why: String,
    },
}

/// The shoot's kubeconfig: (Secret name, bytes).
pub async fn read(
    seed: &Client,
    namespace: &str,
    access: &AccessSecret,
) -> Result<(String, Vec<u8>), AccessError> {
    let api = Api::<Secret>::namespaced(seed.clone(), namespace);
    let mut tried = vec![];
    for name in std::iter::once(&access.name).chain(access.fallback.as_ref()) {
        tried.push(name.clone());
        let secret = api
            .get_opt(name)
            .await
            .map_err(|source| AccessError::Seed {
                namespace: namespace.into(),
                name: name.clone(),
                source,
            })?;
        let Some(secret) = secret else { continue };
        let data = secret.data.and_then(|mut d| d.remove(&access.key));
        return match data {
            Some(bytes) => Ok((name.clone(), bytes.0)),
            None => Err(AccessError::NoKey {
                namespace: namespace.into(),
                name: name.clone(),
                key: access.key.clone(),
            }),
        };
    }
    Err(AccessError::NoSecret {
        namespace: namespace.into(),
        names: either(&tried),
    })
}

/// `a`, or `a (or b)`.
fn either(names: &[String]) -> String {
    match names {
        [first, rest @ ..] if !rest.is_empty() => format!("{first} (or {})", rest.join(", ")),
        _ => names.join(""),
    }
}

/// A client for the shoot from the kubeconfig bytes.
pub async fn client(
    namespace: &str,
    secret_name: &str,
    kubeconfig: &[u8],
) -> Result<Client, AccessError> {
    let fail = |why: String| AccessError::Kubeconfig {
        namespace: namespace.into(),
        name: secret_name.into(),
        why,
    };
    let text = std::str::from_utf8(kubeconfig).map_err(|e| fail(format!("not UTF-8: {e}")))?;
    let kc = kube::config::Kubeconfig::from_yaml(text).map_err(|e| fail(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_secret_names_both_candidates() {
        let e = AccessError::NoSecret {
            namespace: "shoot--p--a".into(),
            names: either(&["gardener-internal".into(), "gardener".into()]),
        };
        assert_eq!(either(&["only".into()]), "only");
        assert_eq!(
            e.to_string(),
            "the shoot's access Secret shoot--p--a/gardener-internal (or gardener) does not exist"
        );
    }

    #[tokio::test]
    async fn an_unusable_kubeconfig_is_a_clear_error() {
        for bad in [
            &b"\xff\xfe"[..],
            b"not: [yaml",
            b"apiVersion: v1\nkind: Config\n",
        ] {
            let Err(e) = client("shoot--p--a", "gardener-internal", bad).await else {
                panic!("{bad:?} made a client");
            };
            assert!(
                e.to_string().starts_with(
                    "the kubeconfig in the shoot's access Secret shoot--p--a/gardener-internal cannot be used"
                ),
                "{e}"
            );
        }
    }
}
