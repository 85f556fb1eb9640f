//! What a Gardener `Cluster` says about its shoot (pure): whether the guard
//! is on, and what the server does with the shoot because of it.
//!
//! The `Cluster` (`extensions.gardener.cloud/v1alpha1`, cluster-scoped, named
//! like the shoot namespace) embeds the whole Shoot in `spec.shoot`
//! (gardener/gardener `pkg/apis/extensions/v1alpha1/types_cluster.go`,
//! `ClusterSpec.Shoot runtime.RawExtension`).

use serde::Serialize;
use serde_json::Value;

use crate::cluster::toggle::GUARD_ANNOTATION;

/// The guard of one shoot, as its `Cluster` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "why")]
pub enum Guard {
    /// The Shoot's annotation is exactly `"true"`.
    On,
    /// No annotation, or any other value.
    Off,
    /// Annotated, but hibernated (`spec.hibernation.enabled: true`): not
    /// guarded; what is held is kept (the shoot's API server is down).
    Hibernated,
    /// Annotated, but being deleted (`metadata.deletionTimestamp`).
    Deleting,
    /// `spec.shoot` cannot be read: the guard is unknown.
    Unreadable(String),
}

impl Guard {
    /// Whether switches of this shoot are guarded; `None` while unknown.
    pub fn guarded(&self) -> Option<bool> {
        match self {
            Guard::On => Some(true),
            Guard::Off | Guard::Hibernated | Guard::Deleting => Some(false),
            Guard::Unreadable(_) => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Guard::On => "on",
            Guard::Off => "off",
            Guard::Hibernated => "hibernated",
            Guard::Deleting => "deleting",
            Guard::Unreadable(_) => "unreadable",
        }
    }
}

/// Reads the guard from a `Cluster` object (as JSON).
pub fn guard_of(cluster: &Value) -> Guard {
    let shoot = match cluster.pointer("/spec/shoot") {
        Some(Value::Object(_)) => &cluster["spec"]["shoot"],
        Some(Value::Null) | None => {
            return Guard::Unreadable("the Cluster has no spec.shoot".into());
        }
        Some(_) => return Guard::Unreadable("spec.shoot is not an object".into()),
    };
    let annotation = shoot
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(GUARD_ANNOTATION));
    let on = match annotation {
        None | Some(Value::Null) => false,
        Some(Value::String(v)) => v == "true",
        Some(other) => {
            return Guard::Unreadable(format!(
                "the Shoot's annotation {GUARD_ANNOTATION} is not a string: {other}"
            ));
        }
    };
    if !on {
        return Guard::Off;
    }
    let deleting = !matches!(
        shoot.pointer("/metadata/deletionTimestamp"),
        None | Some(Value::Null)
    );
    if deleting {
        return Guard::Deleting;
    }
    match shoot.pointer("/spec/hibernation/enabled") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Guard::On,
        Some(Value::Bool(true)) => Guard::Hibernated,
        Some(other) => Guard::Unreadable(format!(
            "the Shoot's spec.hibernation.enabled is not a boolean: {other}"
        )),
    }
}

/// What the server should do with one shoot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Run its watches and release controller.
    pub serve: bool,
    /// Keep its webhook registration (ManagedResource) in the seed:
    /// `Some(true)` write it, `Some(false)` remove it, `None` leave it as
    /// it is (the guard is unknown).
    pub register: Option<bool>,
}

/// The plan for a shoot whose `Cluster` says `guard` (`None`: the Cluster
/// is gone), given whether the shoot holds anything: `Some(true|false)`
/// when its held records are known (it is served, or it was served until
/// they were known empty), `None` when unknown (for example just after this
/// server started: another run may have held a switch before the annotation
/// was removed).
///
/// - Served while guarded, and otherwise until what it holds is known
///   released or cancelled (the release needs the shoot's client, not its
///   registration): a shoot whose holds are unknown is served to find out.
/// - Registered while annotated and not being deleted: a hibernated shoot
///   keeps its registration, so that no change slips through while it wakes up.
/// - A Cluster that is gone stops everything at once (the shoot is gone).
/// - An unreadable Cluster leaves the registration as it is (never on a
///   guess).
pub fn plan(guard: Option<&Guard>, holds: Option<bool>) -> Plan {
    let Some(guard) = guard else {
        return Plan {
            serve: false,
            register: Some(false),
        };
    };
    let draining = holds != Some(false);
    match guard {
        Guard::On => Plan {
            serve: true,
            register: Some(true),
        },
        Guard::Hibernated => Plan {
            serve: draining,
            register: Some(true),
        },
        Guard::Off | Guard::Deleting => Plan {
            serve: draining,
            register: Some(false),
        },
        Guard::Unreadable(_) => Plan {
            serve: draining,
            register: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(shoot: Value) -> Value {
        json!({"metadata": {"name": "shoot--p--a"}, "spec": {"shoot": shoot}})
    }

    fn annotated(value: &str) -> Value {
        json!({"metadata": {"annotations": {GUARD_ANNOTATION: value}}})
    }

    #[test]
    fn only_the_exact_annotation_true_turns_the_guard_on() {
        for (value, guard) in [
            ("true", Guard::On),
            ("True", Guard::Off),
            (" true", Guard::Off),
            ("1", Guard::Off),
            ("", Guard::Off),
            ("false", Guard::Off),
        ] {
            assert_eq!(guard_of(&cluster(annotated(value))), guard, "{value:?}");
        }
        assert_eq!(guard_of(&cluster(json!({"metadata": {}}))), Guard::Off);
        assert_eq!(
            guard_of(&cluster(
                json!({"metadata": {"annotations": {"other": "true"}}})
            )),
            Guard::Off
        );
    }

    #[test]
    fn hibernation_and_deletion_unguard_an_annotated_shoot() {
        let mut s = annotated("true");
        s["spec"] = json!({"hibernation": {"enabled": true}});
        assert_eq!(guard_of(&cluster(s.clone())), Guard::Hibernated);
        s["spec"]["hibernation"]["enabled"] = json!(false);
        assert_eq!(guard_of(&cluster(s.clone())), Guard::On);
        s["spec"]["hibernation"] = json!({"schedules": []});
        assert_eq!(guard_of(&cluster(s.clone())), Guard::On);
        s["metadata"]["deletionTimestamp"] = json!("2026-11-28T10:00:00Z");
        assert_eq!(guard_of(&cluster(s.clone())), Guard::Deleting);
        // Not annotated: off, whatever else.
        s["metadata"]["annotations"] = json!({});
        assert_eq!(guard_of(&cluster(s)), Guard::Off);
    }

    #[test]
    fn an_unreadable_shoot_is_unknown_not_off() {
        for (shoot, why) in [
            (json!(null), "no spec.shoot"),
            (json!("x"), "not an object"),
            (
                json!({"metadata": {"annotations": {GUARD_ANNOTATION: true}}}),
                "not a string",
            ),
        ] {
            match guard_of(&cluster(shoot.clone())) {
                Guard::Unreadable(w) => assert!(w.contains(why), "{shoot}: {w}"),
                g => panic!("{shoot}: {g:?}"),
            }
        }
        let mut s = annotated("true");
        s["spec"] = json!({"hibernation": {"enabled": "yes"}});
        assert!(matches!(guard_of(&cluster(s)), Guard::Unreadable(_)));
        assert!(matches!(
            guard_of(&json!({"metadata": {"name": "x"}})),
            Guard::Unreadable(_)
        ));
        assert_eq!(Guard::Unreadable("x".into()).guarded(), None);
    }

    #[test]
    fn plans() {
        let p = |serve, register| Plan { serve, register };
        let unreadable = Guard::Unreadable("x".into());
        let (yes, no, keep) = (Some(true), Some(false), None);
        for (guard, holds, want) in [
            (Some(&Guard::On), None, p(true, yes)),
            (Some(&Guard::On), Some(false), p(true, yes)),
            // Turned off: served until nothing is known held, never registered;
            // unknown holds (a restart) are served to find out.
            (Some(&Guard::Off), None, p(true, no)),
            (Some(&Guard::Off), Some(true), p(true, no)),
            (Some(&Guard::Off), Some(false), p(false, no)),
            (Some(&Guard::Deleting), Some(true), p(true, no)),
            (Some(&Guard::Deleting), None, p(true, no)),
            (Some(&Guard::Deleting), Some(false), p(false, no)),
            // Hibernated: registration kept; served while something may be held.
            (Some(&Guard::Hibernated), None, p(true, yes)),
            (Some(&Guard::Hibernated), Some(false), p(false, yes)),
            // Unknown guard: the registration is left alone.
            (Some(&unreadable), Some(false), p(false, keep)),
            (Some(&unreadable), None, p(true, keep)),
            // Cluster gone: everything stops.
            (None, Some(true), p(false, no)),
            (None, None, p(false, no)),
        ] {
            assert_eq!(plan(guard, holds), want, "{guard:?} holds={holds:?}");
        }
    }
}
