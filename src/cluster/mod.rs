//! One guarded cluster: its settings, route cache, toggle and held records,
//! held by the server as a value (not process-wide globals), so that one
//! process serves one cluster or, in Gardener mode, many shoots.
//!
//! The watches ([`watch`]) feed the state ([`routes`], [`toggle`], [`held`],
//! [`last_seen`]); the pure decisions ([`gate`], [`hold`], [`merge`]) read
//! it; the [`release`] controller acts on it.

pub mod gate;
pub mod held;
pub mod hold;
pub mod last_seen;
pub mod merge;
pub mod release;
pub mod route_node;
pub mod routes;
pub mod toggle;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;

use crate::calico::overlay::CalicoKind;
use crate::cluster::held::{HeldRegistry, ObjectKey};
use crate::cluster::routes::{RouteCache, RouteNode};
use crate::cluster::toggle::{GuardSource, ToggleState};
use crate::cluster::watch::{Backoff, Health, Tee, keep_watching};
use last_seen::LastSeen;

/// Which objects are Calico's, and how the gate behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of calico-node and calico-config; its annotations toggle the guard.
    pub calico_namespace: String,
    pub daemonset_name: String,
    pub configmap_name: String,
    /// The `NetworkUnavailable=False` reason that means "route created".
    pub required_reason: String,
    /// How long every node must have had its route before a switch passes.
    pub settle: Duration,
    /// How many blocking nodes a warning names.
    pub max_named_nodes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            calico_namespace: "kube-system".into(),
            daemonset_name: "calico-node".into(),
            configmap_name: "calico-config".into(),
            required_reason: crate::cluster::routes::DEFAULT_REASON.into(),
            settle: Duration::from_secs(10),
            max_named_nodes: 3,
        }
    }
}

pub const IPPOOL_GROUP: &str = "crd.projectcalico.org";
pub const IPPOOL_VERSION: &str = "v1";

pub fn ippool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(IPPOOL_GROUP, IPPOOL_VERSION, "IPPool"),
        "ippools",
    )
}

/// The group of Calico's v3 API: served as CRDs in v3 CRD mode (Calico
/// v3.32+); otherwise by the aggregated calico-apiserver, whose writes
/// reach the API server as writes of the `crd.projectcalico.org/v1` object.
pub const V3_GROUP: &str = "projectcalico.org";
pub const V3_VERSION: &str = "v3";
/// The Tigera operator's API group.
pub const OPERATOR_GROUP: &str = "operator.tigera.io";
pub const OPERATOR_VERSION: &str = "v1";

/// The API resource of a guarded Calico kind.
pub fn resource(kind: CalicoKind) -> ApiResource {
    let gvk = |group: &str, version: &str, kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    match kind {
        CalicoKind::DaemonSet => daemonset_resource(),
        CalicoKind::ConfigMap => configmap_resource(),
        CalicoKind::IpPool => ippool_resource(),
        CalicoKind::IpPoolV3 => gvk(V3_GROUP, V3_VERSION, "IPPool", "ippools"),
        CalicoKind::FelixConfiguration => gvk(
            IPPOOL_GROUP,
            IPPOOL_VERSION,
            "FelixConfiguration",
            "felixconfigurations",
        ),
        CalicoKind::FelixConfigurationV3 => gvk(
            V3_GROUP,
            V3_VERSION,
            "FelixConfiguration",
            "felixconfigurations",
        ),
        CalicoKind::Installation => gvk(
            OPERATOR_GROUP,
            OPERATOR_VERSION,
            "Installation",
            "installations",
        ),
    }
}

pub fn daemonset_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", "DaemonSet"),
        "daemonsets",
    )
}

pub fn configmap_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "ConfigMap"), "configmaps")
}

impl Settings {
    /// Which Calico kind an admission request is about, if any.
    pub fn identify(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<CalicoKind> {
        let in_ns = namespace == Some(self.calico_namespace.as_str());
        match (group, version, kind) {
            ("apps", "v1", "DaemonSet") if in_ns && name == self.daemonset_name => {
                Some(CalicoKind::DaemonSet)
            }
            ("", "v1", "ConfigMap") if in_ns && name == self.configmap_name => {
                Some(CalicoKind::ConfigMap)
            }
            (IPPOOL_GROUP, IPPOOL_VERSION, "IPPool") => Some(CalicoKind::IpPool),
            (V3_GROUP, V3_VERSION, "IPPool") => Some(CalicoKind::IpPoolV3),
            (IPPOOL_GROUP, IPPOOL_VERSION, "FelixConfiguration") => {
                Some(CalicoKind::FelixConfiguration)
            }
            (V3_GROUP, V3_VERSION, "FelixConfiguration") => Some(CalicoKind::FelixConfigurationV3),
            (OPERATOR_GROUP, OPERATOR_VERSION, "Installation") => Some(CalicoKind::Installation),
            _ => None,
        }
    }

    pub fn key(&self, kind: CalicoKind, name: &str) -> ObjectKey {
        ObjectKey {
            kind: kind.into(),
            // Only calico-node and calico-config are namespaced.
            namespace: matches!(kind, CalicoKind::DaemonSet | CalicoKind::ConfigMap)
                .then(|| self.calico_namespace.clone()),
            name: name.to_string(),
        }
    }
}

/// Everything the webhook knows about one cluster.
#[derive(Debug)]
pub struct Cluster {
    pub settings: Settings,
    pub routes: Arc<RouteCache>,
    pub toggle: Arc<ToggleState>,
    pub held: Arc<HeldRegistry>,
    /// The guarded ConfigMap's content (calico-node's env may reference it).
    pub config_map: Arc<LastSeen>,
    /// calico-node's container (a ConfigMap update changes what its env
    /// resolves to).
    pub calico_node: Arc<LastSeen>,
    /// Why this cluster's state is unknown, when it is (broken watches, no
    /// way to reach it): named in the warnings of what it holds.
    pub health: Arc<Health>,
    /// The user this server's release controller writes as (learned at
    /// start, and again on every new connection): the release and cancel
    /// markers count only from that user.
    pub own_user: OwnUser,
}

/// The user this server writes as, once learned (replaced when learned
/// again: a new kubeconfig may name another user).
#[derive(Debug, Default)]
pub struct OwnUser(std::sync::RwLock<Option<String>>);

impl OwnUser {
    pub fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set(&self, user: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(user);
    }
}

impl Cluster {
    pub fn new(settings: Settings) -> Arc<Self> {
        Self::with_guard_source(settings, GuardSource::Namespace)
    }

    /// A cluster whose guard is switched from `source` (Gardener mode: from
    /// outside, by its Shoot).
    pub fn with_guard_source(settings: Settings, source: GuardSource) -> Arc<Self> {
        Arc::new(Self {
            routes: Arc::new(RouteCache::new(settings.required_reason.clone())),
            toggle: Arc::new(ToggleState::with_source(
                settings.calico_namespace.clone(),
                source,
            )),
            held: Arc::new(HeldRegistry::default()),
            config_map: Arc::new(LastSeen::new(
                settings.configmap_name.clone(),
                last_seen::config_map_data,
            )),
            calico_node: Arc::new(LastSeen::new(
                settings.daemonset_name.clone(),
                last_seen::calico_node_container,
            )),
            health: Arc::new(Health::default()),
            own_user: OwnUser::default(),
            settings,
        })
    }

    /// Learns who this server is to the API server (a `SelfSubjectReview`,
    /// allowed to every authenticated user), so that the release
    /// controller's markers can be told from forged ones.
    pub async fn learn_own_user(&self, client: &Client) -> Result<String, kube::Error> {
        use k8s_openapi::api::authentication::v1::SelfSubjectReview;
        let review = Api::<SelfSubjectReview>::all(client.clone())
            .create(&Default::default(), &SelfSubjectReview::default())
            .await?;
        let user = review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default();
        self.own_user.set(user.clone());
        Ok(user)
    }

    /// True when every watch has synced: the route state, the toggle and the
    /// held records are known.
    pub fn synced(&self) -> bool {
        self.routes.snapshot(0).synced
            && self.toggle.get().synced
            && self.held.synced()
            && self.config_map.synced()
            && self.calico_node.synced()
    }

    /// Forgets that anything was ever listed: every answer is "unknown"
    /// until the watches list again (used when they are restarted, e.g.
    /// with new credentials, so that stale state is never read as current).
    pub fn mark_unknown(&self) {
        use crate::cluster::watch::Store as _;
        self.routes.lost();
        <ToggleState as crate::cluster::watch::Store<Namespace>>::lost(&self.toggle);
        self.config_map.lost();
        self.calico_node.lost();
        for kind in CalicoKind::ALL {
            self.held.store(kind).lost();
        }
    }

    /// Starts the watches of this cluster; they run until the set is dropped.
    /// `watch_timeout`: how long one watch request lasts before it is
    /// renewed (each renewal is authorized and checked anew); `None` for
    /// kube-rs' default (290 s).
    pub fn spawn_watches(
        &self,
        client: &Client,
        watch_timeout: Option<u32>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let b = Backoff::default();
        let config = || match watch_timeout {
            Some(t) => watcher::Config::default().timeout(t),
            None => watcher::Config::default(),
        };
        // Nodes are decoded leniently (RouteNode): one node's odd status
        // must never fail the list or the watch of all of them.
        tasks.spawn(keep_watching(
            "nodes",
            Api::<RouteNode>::all(client.clone()),
            config(),
            self.routes.clone(),
            b,
            self.health.clone(),
        ));
        tasks.spawn(keep_watching(
            "toggle-namespace",
            Api::<Namespace>::all(client.clone()),
            config().fields(&format!("metadata.name={}", self.settings.calico_namespace)),
            self.toggle.clone(),
            b,
            self.health.clone(),
        ));
        let ns = &self.settings.calico_namespace;
        tasks.spawn(keep_watching(
            "calico-daemonset",
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &daemonset_resource()),
            config().fields(&format!("metadata.name={}", self.settings.daemonset_name)),
            Arc::new(Tee(
                Arc::new(self.held.store(CalicoKind::DaemonSet)),
                self.calico_node.clone(),
            )),
            b,
            self.health.clone(),
        ));
        tasks.spawn(keep_watching(
            "calico-configmap",
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &configmap_resource()),
            config().fields(&format!("metadata.name={}", self.settings.configmap_name)),
            Arc::new(Tee(
                Arc::new(self.held.store(CalicoKind::ConfigMap)),
                self.config_map.clone(),
            )),
            b,
            self.health.clone(),
        ));
        // Cluster-scoped kinds, watched whole; a kind the cluster does not
        // serve (no CRD: another install style) is known to hold nothing
        // until it appears.
        for (what, kind) in [
            ("calico-ippools", CalicoKind::IpPool),
            ("calico-ippools-v3", CalicoKind::IpPoolV3),
            ("calico-felixconfigurations", CalicoKind::FelixConfiguration),
            (
                "calico-felixconfigurations-v3",
                CalicoKind::FelixConfigurationV3,
            ),
            ("tigera-installations", CalicoKind::Installation),
        ] {
            tasks.spawn(keep_watching(
                what,
                Api::<DynamicObject>::all_with(client.clone(), &resource(kind)),
                config(),
                Arc::new(self.held.store(kind)),
                b,
                self.health.clone(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guarded_kind_is_identified_by_group_version_and_kind() {
        let s = Settings::default();
        let id = |g: &str, v: &str, k: &str, ns: Option<&str>, n: &str| s.identify(g, v, k, ns, n);
        let ks = Some("kube-system");
        assert_eq!(
            id("apps", "v1", "DaemonSet", ks, "calico-node"),
            Some(CalicoKind::DaemonSet)
        );
        assert_eq!(id("apps", "v1", "DaemonSet", ks, "kube-proxy"), None);
        assert_eq!(
            id("", "v1", "ConfigMap", ks, "calico-config"),
            Some(CalicoKind::ConfigMap)
        );
        assert_eq!(
            id("", "v1", "ConfigMap", Some("default"), "calico-config"),
            None
        );
        assert_eq!(
            id(IPPOOL_GROUP, "v1", "IPPool", None, "p"),
            Some(CalicoKind::IpPool)
        );
        assert_eq!(
            id(V3_GROUP, "v3", "IPPool", None, "p"),
            Some(CalicoKind::IpPoolV3)
        );
        assert_eq!(
            id(IPPOOL_GROUP, "v1", "FelixConfiguration", None, "node.a"),
            Some(CalicoKind::FelixConfiguration)
        );
        assert_eq!(
            id(V3_GROUP, "v3", "FelixConfiguration", None, "default"),
            Some(CalicoKind::FelixConfigurationV3)
        );
        assert_eq!(
            id(V3_GROUP, "v3", "BGPConfiguration", None, "default"),
            None
        );
        assert_eq!(id(IPPOOL_GROUP, "v3", "IPPool", None, "p"), None);
        // Each kind's resource is the one its requests name.
        for kind in CalicoKind::ALL {
            let r = resource(kind);
            assert_eq!(
                id(
                    &r.group,
                    &r.version,
                    &r.kind,
                    ks,
                    match kind {
                        CalicoKind::DaemonSet => "calico-node",
                        CalicoKind::ConfigMap => "calico-config",
                        _ => "default",
                    }
                ),
                Some(kind)
            );
            assert_eq!(r.kind, kind.as_str());
        }
    }
}
