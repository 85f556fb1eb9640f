//! Which Calico objects of a cluster carry a held switch record, kept by
//! watches on exactly those objects (the calico-node DaemonSet, the
//! calico-config ConfigMap, every IPPool).
//!
//! The gate uses it so that the objects of one cluster are switched together
//! or not at all; the release controller uses it to know what to release.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use kube::core::DynamicObject;
use serde::{Deserialize, Serialize};

use crate::calico::overlay::CalicoKind;
use crate::cluster::hold::{INTENT_ANNOTATION, SINCE_ANNOTATION, held_pointer};

/// One Calico object, named.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKey {
    pub kind: CalicoKindName,
    pub namespace: Option<String>,
    pub name: String,
}

/// `CalicoKind` with an order that is also the release order: ConfigMap,
/// then IPPools, then FelixConfigurations, then the DaemonSet (so that
/// calico-node rolls last, onto pools and Felix settings already native).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CalicoKindName {
    ConfigMap,
    /// Before the pools: the operator then writes them as released.
    Installation,
    IPPool,
    #[serde(rename = "IPPool.projectcalico.org")]
    IPPoolV3,
    FelixConfiguration,
    #[serde(rename = "FelixConfiguration.projectcalico.org")]
    FelixConfigurationV3,
    DaemonSet,
}

/// How many kinds there are (one part of the registry each).
const KINDS: usize = 7;

impl CalicoKindName {
    /// As messages name it: the kind, with the API group when two groups
    /// have one (`IPPool` is `crd.projectcalico.org`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Installation => "Installation",
            Self::IPPool => "IPPool",
            Self::IPPoolV3 => "IPPool.projectcalico.org",
            Self::FelixConfiguration => "FelixConfiguration",
            Self::FelixConfigurationV3 => "FelixConfiguration.projectcalico.org",
            Self::DaemonSet => "DaemonSet",
        }
    }
}

impl From<CalicoKind> for CalicoKindName {
    fn from(k: CalicoKind) -> Self {
        match k {
            CalicoKind::ConfigMap => Self::ConfigMap,
            CalicoKind::Installation => Self::Installation,
            CalicoKind::IpPool => Self::IPPool,
            CalicoKind::IpPoolV3 => Self::IPPoolV3,
            CalicoKind::FelixConfiguration => Self::FelixConfiguration,
            CalicoKind::FelixConfigurationV3 => Self::FelixConfigurationV3,
            CalicoKind::DaemonSet => Self::DaemonSet,
        }
    }
}

impl From<CalicoKindName> for CalicoKind {
    fn from(k: CalicoKindName) -> Self {
        match k {
            CalicoKindName::ConfigMap => Self::ConfigMap,
            CalicoKindName::Installation => Self::Installation,
            CalicoKindName::IPPool => Self::IpPool,
            CalicoKindName::IPPoolV3 => Self::IpPoolV3,
            CalicoKindName::FelixConfiguration => Self::FelixConfiguration,
            CalicoKindName::FelixConfigurationV3 => Self::FelixConfigurationV3,
            CalicoKindName::DaemonSet => Self::DaemonSet,
        }
    }
}

#[cfg(test)]
impl ObjectKey {
    /// A DaemonSet in kube-system, for tests.
    pub fn sample_daemonset(name: &str) -> Self {
        ObjectKey {
            kind: CalicoKindName::DaemonSet,
            namespace: Some("kube-system".into()),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.label(), self.name),
            None => write!(f, "{} {}", self.kind.label(), self.name),
        }
    }
}

/// What the registry keeps of a held object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldObject {
    pub key: ObjectKey,
    /// The `held-since` annotation as written.
    pub since: Option<String>,
    /// A digest of the recorded intent: a replaced intent (the latest switch
    /// wins) is a change the release controller must look at again.
    #[serde(skip)]
    pub intent_digest: u64,
    /// A digest of the held part (`/spec/template`, `/data`, `/spec`): an
    /// edit of it may make a conflicting intent apply again (or stop it
    /// applying), so the release controller must look again. Status-only
    /// updates (a DaemonSet during a rollout) leave it unchanged.
    #[serde(skip)]
    pub held_digest: u64,
}

/// How long a hold this process answered counts before its watch confirms it.
const LOCAL_HOLD_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Part {
    synced: bool,
    held: BTreeMap<ObjectKey, HeldObject>,
    relist: Option<BTreeMap<ObjectKey, HeldObject>>,
    /// Every object of the kind the watch has shown (held or not): a
    /// review about any other object makes no state (no local hold note, no
    /// Event), since anyone who reaches the webhook can post one.
    seen: BTreeSet<ObjectKey>,
    relist_seen: BTreeSet<ObjectKey>,
}

/// The held records of one cluster.
#[derive(Debug)]
pub struct HeldRegistry {
    parts: [RwLock<Part>; KINDS],
    /// Holds answered by this process but not yet seen by the watch: the
    /// window between our answer and the watch event must not let a sibling
    /// object switch alone.
    local: Mutex<HashMap<ObjectKey, Instant>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for HeldRegistry {
    fn default() -> Self {
        Self {
            parts: Default::default(),
            local: Default::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl HeldRegistry {
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    fn part(&self, kind: CalicoKindName) -> &RwLock<Part> {
        &self.parts[kind as usize]
    }

    pub fn synced(&self) -> bool {
        self.parts
            .iter()
            .all(|p| p.read().expect("held lock").synced)
    }

    /// Every held object, in release order; `None` while unknown.
    pub fn held(&self) -> Option<Vec<HeldObject>> {
        if !self.synced() {
            return None;
        }
        let mut all: BTreeMap<ObjectKey, HeldObject> = BTreeMap::new();
        for p in &self.parts {
            all.extend(p.read().expect("held lock").held.clone());
        }
        let now = Instant::now();
        for (k, at) in self.local.lock().expect("held lock").iter() {
            if now.duration_since(*at) < LOCAL_HOLD_TTL {
                all.entry(k.clone()).or_insert_with(|| HeldObject {
                    key: k.clone(),
                    since: None,
                    intent_digest: 0,
                    held_digest: 0,
                });
            }
        }
        Some(all.into_values().collect())
    }

    /// Held objects other than `key`, as names for messages; `None` while unknown.
    pub fn others(&self, key: &ObjectKey) -> Option<Vec<String>> {
        self.held().map(|v| {
            v.into_iter()
                .filter(|h| &h.key != key)
                .map(|h| h.key.to_string())
                .collect()
        })
    }

    /// Whether the watch of `key`'s kind has shown that object.
    pub fn has_seen(&self, key: &ObjectKey) -> bool {
        self.part(key.kind)
            .read()
            .expect("held lock")
            .seen
            .contains(key)
    }

    /// This process answered a (non-dry-run) hold for `key`, an object its
    /// watch has shown (others are not noted: see `Part::seen`).
    pub fn note_local_hold(&self, key: ObjectKey) {
        if !self.has_seen(&key) {
            return;
        }
        let mut local = self.local.lock().expect("held lock");
        let now = Instant::now();
        local.retain(|_, at| now.duration_since(*at) < LOCAL_HOLD_TTL);
        local.insert(key, now);
    }

    /// This process answered a pass/cancel for `key`: forget a local hold.
    pub fn forget_local_hold(&self, key: &ObjectKey) {
        self.local.lock().expect("held lock").remove(key);
    }

    /// The store for one kind's watch.
    pub fn store(self: &std::sync::Arc<Self>, kind: CalicoKind) -> KindStore {
        KindStore {
            registry: self.clone(),
            kind: kind.into(),
        }
    }
}

fn held_entry(kind: CalicoKindName, obj: &DynamicObject) -> Option<(ObjectKey, HeldObject)> {
    let annotations = obj.metadata.annotations.as_ref()?;
    // A record that cannot be read is not a hold (the webhook ignores it and
    // says so in its response).
    serde_json::from_str::<json_patch::Patch>(annotations.get(INTENT_ANNOTATION)?).ok()?;
    let key = ObjectKey {
        kind,
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    };
    let since = annotations.get(SINCE_ANNOTATION).cloned();
    let intent_digest = digest(annotations.get(INTENT_ANNOTATION));
    // `data` of a DynamicObject is the object without apiVersion, kind and
    // metadata, so the held part's pointer applies to it as it is.
    let held_digest = digest(
        obj.data
            .pointer(held_pointer(kind.into()))
            .map(|v| v.to_string()),
    );
    Some((
        key.clone(),
        HeldObject {
            key,
            since,
            intent_digest,
            held_digest,
        },
    ))
}

fn digest(v: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher as _;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fn key_of(kind: CalicoKindName, obj: &DynamicObject) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

/// Feeds one kind of Calico object into the registry.
pub struct KindStore {
    registry: std::sync::Arc<HeldRegistry>,
    kind: CalicoKindName,
}

impl KindStore {
    /// Applies `f`; wakes waiters only when what is held (or whether it is
    /// known) changed: a record, or the held part of a held object. Not on
    /// every update of a watched object (a DaemonSet's status changes all the
    /// time during a rollout), nor on any update of an object without a record.
    fn with(&self, f: impl FnOnce(&mut Part)) {
        let changed = {
            let mut part = self.registry.part(self.kind).write().expect("held lock");
            let before = (part.synced, part.held.clone());
            f(&mut part);
            before != (part.synced, part.held.clone())
        };
        if changed {
            self.registry.bump();
        }
    }
}

impl crate::cluster::watch::Store<DynamicObject> for KindStore {
    fn relist_begin(&self) {
        self.with(|p| {
            p.synced = false;
            p.relist = Some(BTreeMap::new());
            p.relist_seen.clear();
        });
    }

    fn relist_apply(&self, obj: DynamicObject) {
        let mut p = self.registry.part(self.kind).write().expect("held lock");
        p.relist_seen.insert(key_of(self.kind, &obj));
        if let Some((k, h)) = held_entry(self.kind, &obj) {
            p.relist.get_or_insert_with(BTreeMap::new).insert(k, h);
        }
    }

    fn relist_done(&self) {
        self.with(|p| {
            p.held = p.relist.take().unwrap_or_default();
            p.seen = std::mem::take(&mut p.relist_seen);
            p.synced = true;
        });
    }

    fn apply(&self, obj: DynamicObject) {
        let key = key_of(self.kind, &obj);
        let entry = held_entry(self.kind, &obj);
        // Only an event that shows the record replaces our own note of the
        // hold: an older event (a status update written before the hold was
        // stored) must not make the object look free.
        if entry.is_some() {
            self.registry.forget_local_hold(&key);
        }
        self.with(|p| {
            p.seen.insert(key.clone());
            match entry {
                Some((k, h)) => {
                    p.held.insert(k, h);
                }
                None => {
                    p.held.remove(&key);
                }
            }
        });
    }

    fn delete(&self, obj: DynamicObject) {
        let key = key_of(self.kind, &obj);
        self.registry.forget_local_hold(&key);
        self.with(|p| {
            p.held.remove(&key);
            p.seen.remove(&key);
        });
    }

    fn lost(&self) {
        self.with(|p| {
            p.synced = false;
            p.relist = None;
        });
    }

    /// No IPPool CRD: there are no IPPools, so none is held.
    fn absent(&self) {
        self.with(|p| {
            p.synced = true;
            p.held.clear();
            p.seen.clear();
            p.relist = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::watch::Store as _;
    use std::sync::Arc;

    fn obj(ns: Option<&str>, name: &str, held: bool) -> DynamicObject {
        let mut o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "X", "metadata": {"name": name}
        }))
        .unwrap();
        o.metadata.namespace = ns.map(String::from);
        if held {
            o.metadata.annotations =
                Some([(INTENT_ANNOTATION.to_string(), "[]".to_string())].into());
        }
        o
    }

    fn sync_all(r: &Arc<HeldRegistry>) {
        for k in CalicoKind::ALL {
            let s = r.store(k);
            s.relist_begin();
            s.relist_done();
        }
    }

    #[test]
    fn unknown_until_every_kind_synced_and_absent_crd_counts_as_synced() {
        let r = Arc::new(HeldRegistry::default());
        assert!(r.held().is_none());
        r.store(CalicoKind::ConfigMap).relist_begin();
        r.store(CalicoKind::ConfigMap).relist_done();
        r.store(CalicoKind::DaemonSet).relist_begin();
        r.store(CalicoKind::DaemonSet).relist_done();
        assert!(r.held().is_none());
        // The cluster serves one install style's kinds; the others are absent.
        r.store(CalicoKind::IpPool).absent();
        r.store(CalicoKind::IpPoolV3).absent();
        r.store(CalicoKind::FelixConfiguration).absent();
        r.store(CalicoKind::Installation).absent();
        assert!(r.held().is_none(), "one kind still unknown");
        r.store(CalicoKind::FelixConfigurationV3).absent();
        assert_eq!(r.held(), Some(vec![]));
    }

    #[test]
    fn tracks_records_in_release_order() {
        let r = Arc::new(HeldRegistry::default());
        sync_all(&r);
        r.store(CalicoKind::DaemonSet)
            .apply(obj(Some("kube-system"), "calico-node", true));
        r.store(CalicoKind::IpPool)
            .apply(obj(None, "default-ipv4-ippool", true));
        r.store(CalicoKind::ConfigMap)
            .apply(obj(Some("kube-system"), "calico-config", true));
        for kind in [
            CalicoKind::FelixConfigurationV3,
            CalicoKind::FelixConfiguration,
            CalicoKind::IpPoolV3,
            CalicoKind::Installation,
        ] {
            r.store(kind).apply(obj(None, "default", true));
        }
        let names: Vec<String> = r
            .held()
            .unwrap()
            .iter()
            .map(|h| h.key.to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "ConfigMap kube-system/calico-config",
                "Installation default",
                "IPPool default-ipv4-ippool",
                "IPPool.projectcalico.org default",
                "FelixConfiguration default",
                "FelixConfiguration.projectcalico.org default",
                "DaemonSet kube-system/calico-node"
            ]
        );
        for kind in [
            CalicoKind::FelixConfigurationV3,
            CalicoKind::FelixConfiguration,
            CalicoKind::IpPoolV3,
            CalicoKind::Installation,
        ] {
            r.store(kind).apply(obj(None, "default", false));
        }
        r.store(CalicoKind::IpPool)
            .apply(obj(None, "default-ipv4-ippool", false));
        let ds = key_of(
            CalicoKindName::DaemonSet,
            &obj(Some("kube-system"), "calico-node", true),
        );
        assert_eq!(
            r.others(&ds).unwrap(),
            vec!["ConfigMap kube-system/calico-config"]
        );
    }

    #[test]
    fn a_local_hold_counts_until_the_watch_sees_the_object() {
        let r = Arc::new(HeldRegistry::default());
        sync_all(&r);
        let cm = key_of(
            CalicoKindName::ConfigMap,
            &obj(Some("kube-system"), "calico-config", true),
        );
        // Not shown by its watch yet: a review about it makes no state
        // (anyone may post one, for any name).
        r.note_local_hold(cm.clone());
        assert_eq!(r.held().unwrap().len(), 0, "unseen: not noted");
        let ghost = key_of(CalicoKindName::IPPool, &obj(None, "ghost-0", false));
        r.note_local_hold(ghost.clone());
        assert!(r.held().unwrap().is_empty() && !r.has_seen(&ghost));
        let store = r.store(CalicoKind::ConfigMap);
        store.apply(obj(Some("kube-system"), "calico-config", false));
        assert!(r.has_seen(&cm));
        r.note_local_hold(cm.clone());
        assert_eq!(r.held().unwrap().len(), 1);
        // An event without the record (older than the hold, or the update
        // failed later) does not drop the note: it lasts its TTL.
        store.apply(obj(Some("kube-system"), "calico-config", false));
        assert_eq!(r.held().unwrap().len(), 1);
        // The event with the record takes over from the note.
        store.apply(obj(Some("kube-system"), "calico-config", true));
        assert_eq!(r.held().unwrap().len(), 1);
        store.apply(obj(Some("kube-system"), "calico-config", false));
        assert_eq!(r.held().unwrap().len(), 0, "released: the note is gone too");
    }

    #[test]
    fn waiters_wake_only_when_what_is_held_changes() {
        let r = Arc::new(HeldRegistry::default());
        sync_all(&r);
        let mut rx = r.subscribe();
        rx.mark_unchanged();
        let ds = r.store(CalicoKind::DaemonSet);
        ds.apply(obj(Some("kube-system"), "calico-node", false)); // e.g. a status update
        assert!(!rx.has_changed().unwrap());
        ds.apply(obj(Some("kube-system"), "calico-node", true));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        ds.apply(obj(Some("kube-system"), "calico-node", true)); // still held, same record
        assert!(!rx.has_changed().unwrap());
        // The latest switch replaced the intent: look again.
        let mut replaced = obj(Some("kube-system"), "calico-node", true);
        replaced
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(INTENT_ANNOTATION.to_string(), "[{}]".to_string());
        ds.apply(replaced);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        ds.lost();
        assert!(rx.has_changed().unwrap());
    }

    fn held_ds(template_env: &str, replicas_ready: i64) -> DynamicObject {
        let mut o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "calico-node", "namespace": "kube-system"},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "calico-node"}},
                "template": {"spec": {"containers": [{"name": "calico-node",
                    "env": [{"name": "CALICO_IPV4POOL_IPIP", "value": template_env}]}]}}
            },
            "status": {"numberReady": replicas_ready}
        }))
        .unwrap();
        o.metadata.annotations = Some([(INTENT_ANNOTATION.to_string(), "[]".to_string())].into());
        o
    }

    #[test]
    fn waiters_wake_when_the_held_part_of_a_held_object_changes_not_its_status() {
        let r = Arc::new(HeldRegistry::default());
        sync_all(&r);
        let ds = r.store(CalicoKind::DaemonSet);
        ds.apply(held_ds("Always", 1));
        let mut rx = r.subscribe();
        rx.mark_unchanged();
        // A rollout: only the status changes.
        ds.apply(held_ds("Always", 2));
        assert!(!rx.has_changed().unwrap());
        // The held part is edited (say, a conflicting edit is undone).
        ds.apply(held_ds("CrossSubnet", 2));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        ds.apply(held_ds("CrossSubnet", 3));
        assert!(!rx.has_changed().unwrap());

        // The ConfigMap's held part is /data, an IPPool's /spec.
        let cm = r.store(CalicoKind::ConfigMap);
        let cm_obj = |backend: &str, label: &str| {
            let mut o: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "calico-config", "namespace": "kube-system", "labels": {"x": label}},
                "data": {"calico_backend": backend}
            }))
            .unwrap();
            o.metadata.annotations =
                Some([(INTENT_ANNOTATION.to_string(), "[]".to_string())].into());
            o
        };
        cm.apply(cm_obj("bird", "1"));
        rx.mark_unchanged();
        cm.apply(cm_obj("bird", "2")); // metadata only
        assert!(!rx.has_changed().unwrap());
        cm.apply(cm_obj("vxlan", "2"));
        assert!(rx.has_changed().unwrap());
    }
}
