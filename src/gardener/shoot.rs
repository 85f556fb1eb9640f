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
    /// Keep its webhook registration (ManagedResource) in the seed.
    pub register: bool,
}

/// The plan for a shoot whose `Cluster` says `guard` (`None`: the Cluster
/// is gone), given whether it is served now and whether it holds anything
/// (`None` while unknown).
///
/// - Served while guarded, and after that until what it holds is released
///   or cancelled (the release needs the shoot's client, not its registration).
/// - Registered while annotated and not being deleted: a hibernated shoot
///   keeps its registration, so that no change slips through while it wakes up.
/// - A Cluster that is gone stops everything at once (the shoot is gone).
/// - An unreadable Cluster changes nothing (never on a guess).
pub fn plan(guard: Option<&Guard>, served: bool, holds: Option<bool>) -> Plan {
    let Some(guard) = guard else {
        return Plan {
            serve: false,
            register: false,
        };
    };
    let holding = served && holds != Some(false);
    match guard {
        Guard::On => Plan {
            serve: true,
            register: true,
        },
        Guard::Hibernated => Plan {
            serve: holding,
            register: true,
        },
        Guard::Off | Guard::Deleting => Plan {
            serve: holding,
            register: false,
        },
        Guard::Unreadable(_) => Plan {
            serve: served,
            register: served,
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
        for (guard, served, holds, want) in [
            (Some(&Guard::On), false, None, p(true, true)),
            (Some(&Guard::On), true, Some(false), p(true, true)),
            // Turned off: served until nothing is held, never registered.
            (Some(&Guard::Off), false, None, p(false, false)),
            (Some(&Guard::Off), true, Some(true), p(true, false)),
            (Some(&Guard::Off), true, None, p(true, false)),
            (Some(&Guard::Off), true, Some(false), p(false, false)),
            (Some(&Guard::Deleting), true, Some(true), p(true, false)),
            (Some(&Guard::Deleting), true, Some(false), p(false, false)),
            // Hibernated: registration kept; served while something is held.
            (Some(&Guard::Hibernated), true, None, p(true, true)),
            (Some(&Guard::Hibernated), true, Some(false), p(false, true)),
            (Some(&Guard::Hibernated), false, None, p(false, true)),
            // Unknown: as it was.
            (Some(&unreadable), true, Some(false), p(true, true)),
            (Some(&unreadable), false, None, p(false, false)),
            // Cluster gone: everything stops.
            (None, true, Some(true), p(false, false)),
        ] {
            assert_eq!(
                plan(guard, served, holds),
                want,
                "{guard:?} served={served} holds={holds:?}"
            );
        }
    }
}
