//! The per-cluster toggle, read from annotations of the namespace that holds
//! calico-node (default `kube-system`), kept current by a watch on that one
//! namespace: toggling takes effect at once.

use std::collections::BTreeMap;
use std::sync::RwLock;

use k8s_openapi::api::core::v1::Namespace;
use serde::Serialize;

/// Annotation prefix of everything this webhook reads or writes.
pub const PREFIX: &str = "calico.networking.extensions.gardener.cloud/";
/// `"true"` turns the guard on for the cluster; anything else means off.
pub const GUARD_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/seamless-overlay-switch";
/// `"true"`: cancel every held switch of the cluster (honoured once).
pub const CANCEL_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-cancel";
/// `"true"`: release the held switch despite blocking nodes (honoured once).
pub const FORCE_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-force";

/// What the toggle namespace says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Toggle {
    /// False until the namespace watch has listed once (and again while a
    /// broken watch is listed anew): the guard's state is then unknown.
    pub synced: bool,
    pub guard: bool,
    pub cancel: bool,
    pub force: bool,
}

impl Toggle {
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Self {
        let is_true = |k: &str| {
            annotations
                .and_then(|a| a.get(k))
                .is_some_and(|v| v == "true")
        };
        Self {
            synced: true,
            guard: is_true(GUARD_ANNOTATION),
            cancel: is_true(CANCEL_ANNOTATION),
            force: is_true(FORCE_ANNOTATION),
        }
    }
}

/// Why the toggle is unknown with [`GuardSource::Namespace`].
pub const NAMESPACE_UNKNOWN: &str = "guard state unknown (namespace watch not synced)";

/// Where the guard's on/off comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardSource {
    /// The toggle namespace's own annotation (single-cluster mode).
    Namespace,
    /// Decided outside the cluster (Gardener mode: the Shoot's annotation,
    /// its hibernation and deletion), set by [`ToggleState::set_guard`];
    /// the namespace annotation's guard is then ignored, and cancel and
    /// force still come from the namespace.
    External,
}

/// The toggle of one cluster, fed by [`crate::cluster::watch::keep_watching`].
#[derive(Debug)]
pub struct ToggleState {
    namespace: String,
    source: GuardSource,
    /// What the namespace says (its guard ignored with an external source).
    current: RwLock<Toggle>,
    /// The external guard (`None` while unknown).
    external: RwLock<Option<bool>>,
    listed: RwLock<Option<Toggle>>,
    changed: tokio::sync::watch::Sender<Toggle>,
}

impl ToggleState {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self::with_source(namespace, GuardSource::Namespace)
    }

    pub fn with_source(namespace: impl Into<String>, source: GuardSource) -> Self {
        Self {
            namespace: namespace.into(),
            source,
            current: RwLock::default(),
            external: RwLock::default(),
            listed: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(Toggle::default()),
        }
    }

    /// Sets the external guard (ignored with [`GuardSource::Namespace`]);
    /// `None`: unknown, so the toggle is not synced.
    pub fn set_guard(&self, guard: Option<bool>) {
        if self.source != GuardSource::External {
            return;
        }
        let before = self.get();
        *self.external.write().unwrap_or_else(|e| e.into_inner()) = guard;
        self.publish(before);
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The toggle as the gate reads it: with an external source, synced
    /// only when both the namespace and the external guard are known.
    pub fn get(&self) -> Toggle {
        let ns = *self.current.read().unwrap_or_else(|e| e.into_inner());
        match self.source {
            GuardSource::Namespace => ns,
            GuardSource::External => {
                let external = *self.external.read().unwrap_or_else(|e| e.into_inner());
                Toggle {
                    synced: ns.synced && external.is_some(),
                    guard: external.unwrap_or(false),
                    ..ns
                }
            }
        }
    }

    /// Why [`ToggleState::get`] is not synced, in words for a warning.
    pub fn unknown_reason(&self) -> &'static str {
        let external = *self.external.read().unwrap_or_else(|e| e.into_inner());
        match (self.source, external) {
            (GuardSource::Namespace, _) => NAMESPACE_UNKNOWN,
            (GuardSource::External, None) => {
                "guard state unknown (whether this shoot is guarded is not known: the seed's Gardener Cluster watch has not synced)"
            }
            (GuardSource::External, Some(_)) => {
                "cancel and force requests unknown (the watch of this cluster's toggle namespace has not synced)"
            }
        }
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Toggle> {
        self.changed.subscribe()
    }

    fn set(&self, t: Toggle) {
        let before = self.get();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = t;
        self.publish(before);
    }

    fn publish(&self, before: Toggle) {
        let t = self.get();
        if before != t {
            if before.guard != t.guard || !before.synced {
                tracing::info!(namespace = %self.namespace, guard = t.guard, synced = t.synced, "overlay switch guard toggle");
            }
            self.changed.send_replace(t);
        }
    }

    fn toggle_of(&self, ns: &Namespace) -> Option<Toggle> {
        (ns.metadata.name.as_deref() == Some(&self.namespace))
            .then(|| Toggle::from_annotations(ns.metadata.annotations.as_ref()))
    }
}

impl crate::cluster::watch::Store<Namespace> for ToggleState {
    fn relist_begin(&self) {
        *self.listed.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.set(Toggle::default());
    }

    fn relist_apply(&self, ns: Namespace) {
        if let Some(t) = self.toggle_of(&ns) {
            *self.listed.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
        }
    }

    fn relist_done(&self) {
        // A missing namespace means the guard is off.
        let t = self
            .listed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Toggle {
                synced: true,
                ..Toggle::default()
            });
        self.set(t);
    }

    fn apply(&self, ns: Namespace) {
        if let Some(t) = self.toggle_of(&ns) {
            self.set(t);
        }
    }

    fn delete(&self, ns: Namespace) {
        if self.toggle_of(&ns).is_some() {
            self.set(Toggle {
                synced: true,
                ..Toggle::default()
            });
        }
    }

    fn lost(&self) {
        self.set(Toggle::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::watch::Store as _;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(name: &str, annotations: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn only_the_exact_value_true_turns_the_guard_on() {
        for (value, on) in [
            ("true", true),
            ("True", false),
            ("1", false),
            ("", false),
            ("false", false),
        ] {
            let t = Toggle::from_annotations(Some(
                &[(GUARD_ANNOTATION.to_string(), value.to_string())].into(),
            ));
            assert_eq!(t.guard, on, "{value:?}");
        }
        assert!(!Toggle::from_annotations(None).guard);
    }

    #[test]
    fn unknown_until_listed_then_follows_changes() {
        let s = ToggleState::new("kube-system");
        assert!(!s.get().synced);
        s.relist_begin();
        s.relist_apply(ns("kube-system", &[(GUARD_ANNOTATION, "true")]));
        assert!(!s.get().synced);
        s.relist_done();
        assert_eq!(
            s.get(),
            Toggle {
                synced: true,
                guard: true,
                cancel: false,
                force: false
            }
        );
        s.apply(ns("other", &[]));
        assert!(s.get().guard, "other namespaces are ignored");
        s.apply(ns("kube-system", &[(FORCE_ANNOTATION, "true")]));
        assert_eq!(
            s.get(),
            Toggle {
                synced: true,
                guard: false,
                cancel: false,
                force: true
            }
        );
        s.lost();
        assert!(!s.get().synced);
    }

    #[test]
    fn an_external_guard_overrides_the_namespace_annotation_only() {
        let s = ToggleState::with_source("kube-system", GuardSource::External);
        assert!(s.unknown_reason().contains("Gardener Cluster watch"));
        let mut changes = s.subscribe();
        s.relist_begin();
        s.relist_apply(ns(
            "kube-system",
            &[(GUARD_ANNOTATION, "true"), (CANCEL_ANNOTATION, "true")],
        ));
        s.relist_done();
        assert!(!s.get().synced, "the external guard is still unknown");
        s.set_guard(Some(false));
        assert_eq!(
            s.get(),
            Toggle {
                synced: true,
                guard: false,
                cancel: true,
                force: false
            },
            "the namespace's guard annotation is ignored, its cancel is not"
        );
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        s.set_guard(Some(true));
        assert!(s.get().guard && changes.has_changed().unwrap());
        s.set_guard(None);
        assert!(!s.get().synced && !s.get().guard);
        s.lost();
        s.set_guard(Some(true));
        assert!(!s.get().synced, "a broken namespace watch is unknown too");
        assert!(
            s.unknown_reason()
                .starts_with("cancel and force requests unknown")
        );
        assert_eq!(ToggleState::new("x").unknown_reason(), NAMESPACE_UNKNOWN);
        let plain = ToggleState::new("kube-system");
        plain.set_guard(Some(true));
        assert!(!plain.get().guard, "ignored without an external source");
    }

    #[test]
    fn a_missing_namespace_is_off_not_unknown() {
        let s = ToggleState::new("kube-system");
        s.relist_begin();
        s.relist_done();
        assert_eq!(
            s.get(),
            Toggle {
                synced: true,
                ..Default::default()
            }
        );
    }
}
