//! Our Gardener `Extension` resource (pure): which operation gardenlet asks
//! for, the status that answers it, and the health condition that shows a
//! held switch in the Shoot's status.
//!
//! The contract, as gardenlet checks it (gardener/gardener):
//! - the operation: `ComputeOperationType`
//!   (`pkg/api/core/v1beta1/helper/common.go`): `migrate` annotation, else
//!   deletion, else `restore`, else Create without a last operation, else a
//!   Create/Migrate/Restore that has not succeeded again, else Reconcile;
//!   `wait-for-state` means wait;
//! - ready: `CheckExtensionObject` (`pkg/utils/kubernetes/health/extensions.go`):
//!   no `gardener.cloud/operation` annotation, no `lastError`,
//!   `observedGeneration == generation`, `lastOperation.state == Succeeded`
//!   with a `lastUpdateTime` not before the `gardener.cloud/timestamp` annotation;
//! - health: the shoot care controller copies the Extension's
//!   `SystemComponentsHealthy` condition into the Shoot's condition of that
//!   name (`pkg/gardenlet/controller/shoot/care/health.go`,
//!   `getAllExtensionConditions`; `Progressing` as it is, with reason
//!   `Extension<reason>`), while the extension's heartbeat Lease is fresh.

use serde_json::{Value, json};

/// The `Extension` type this server answers for.
pub const EXTENSION_TYPE: &str = "calico-overlay-switch";
pub const OPERATION_ANNOTATION: &str = "gardener.cloud/operation";
/// The Shoot condition a held switch shows in.
pub const CONDITION_TYPE: &str = "SystemComponentsHealthy";

/// What gardenlet asks of an Extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Reconcile,
    Delete,
    Migrate,
    Restore,
    /// `wait-for-state`, or a migrated object: nothing to do.
    Wait,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "Create",
            Operation::Reconcile => "Reconcile",
            Operation::Delete => "Delete",
            Operation::Migrate => "Migrate",
            Operation::Restore => "Restore",
            Operation::Wait => "Wait",
        }
    }
}

fn annotation(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(OPERATION_ANNOTATION))
        .and_then(Value::as_str)
}

fn last_operation(obj: &Value) -> Option<(&str, &str)> {
    let op = obj.pointer("/status/lastOperation")?;
    Some((
        op.get("type").and_then(Value::as_str).unwrap_or(""),
        op.get("state").and_then(Value::as_str).unwrap_or(""),
    ))
}

/// The operation gardenlet asks for, as `ComputeOperationType` computes it.
pub fn operation(obj: &Value) -> Operation {
    let ann = annotation(obj);
    if ann == Some("wait-for-state") {
        return Operation::Wait;
    }
    if ann == Some("migrate") {
        return Operation::Migrate;
    }
    if !matches!(
        obj.pointer("/metadata/deletionTimestamp"),
        None | Some(Value::Null)
    ) {
        return Operation::Delete;
    }
    if ann == Some("restore") {
        return Operation::Restore;
    }
    match last_operation(obj) {
        None => Operation::Create,
        // A migrated object waits for its restore elsewhere.
        Some(("Migrate", "Succeeded")) => Operation::Wait,
        Some((t @ ("Create" | "Migrate" | "Restore"), state)) if state != "Succeeded" => match t {
            "Create" => Operation::Create,
            "Migrate" => Operation::Migrate,
            _ => Operation::Restore,
        },
        Some(_) => Operation::Reconcile,
    }
}

/// Whether the object waits for an answer: an operation annotation, or a
/// status that does not answer its generation.
pub fn wants_answer(obj: &Value) -> bool {
    if operation(obj) == Operation::Wait {
        return false;
    }
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    annotation(obj).is_some()
        || observed != generation
        || last_operation(obj).is_none_or(|(_, state)| state != "Succeeded")
        || !matches!(obj.pointer("/status/lastError"), None | Some(Value::Null))
}

/// The status (merge patch) that answers `op` at `now` (RFC 3339).
pub fn answer(obj: &Value, op: Operation, now: &str) -> Value {
    let generation = obj
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    json!({"status": {
        "observedGeneration": generation,
        "lastError": null,
        "lastOperation": {
            "type": op.as_str(),
            "state": "Succeeded",
            "progress": 100,
            "lastUpdateTime": now,
            "description": format!("{} of the overlay switch guard succeeded: it keeps no state of its own in the seed", op.as_str()),
        },
    }})
}

/// What the server knows of the shoot, for the condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShootState {
    /// Not guarded, or nothing held.
    Clear { guarded: bool },
    /// A switch is held.
    Held {
        objects: Vec<String>,
        since: Option<String>,
        why: String,
    },
    /// The shoot's state is unknown (it cannot be reached, a watch broke).
    Unknown { why: String },
}

/// The `SystemComponentsHealthy` condition for `state` at `now`, keeping
/// the transition time of `previous` when the status did not change.
pub fn condition(state: &ShootState, previous: Option<&Value>, now: &str) -> Value {
    let (status, reason, message) = match state {
        ShootState::Clear { guarded: true } => (
            "True",
            "OverlaySwitchNotHeld",
            "No Calico overlay switch is held.".to_string(),
        ),
        ShootState::Clear { guarded: false } => (
            "True",
            "OverlaySwitchGuardOff",
            "The overlay switch guard is off for this shoot; nothing is held.".to_string(),
        ),
        ShootState::Held {
            objects,
            since,
            why,
        } => (
            "Progressing",
            "OverlaySwitchHeld",
            format!(
                "Calico's switch to native routing is held{} until every node has its route: {why}. Held: {}.",
                since
                    .as_deref()
                    .map(|s| format!(" since {s}"))
                    .unwrap_or_default(),
                objects.join(", ")
            ),
        ),
        ShootState::Unknown { why } => (
            "Unknown",
            "OverlaySwitchStateUnknown",
            format!(
                "The shoot's state is unknown, so any switch to native routing is held: {why}."
            ),
        ),
    };
    let transitioned = previous
        .filter(|p| p.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|p| p.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({
        "type": CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transitioned,
        "lastUpdateTime": now,
    })
}

/// Our condition among the Extension's conditions, if any.
pub fn current_condition(obj: &Value) -> Option<&Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION_TYPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(annotation: Option<&str>, last: Option<(&str, &str)>) -> Value {
        let mut o = json!({"metadata": {"name": EXTENSION_TYPE, "generation": 3}, "spec": {"type": EXTENSION_TYPE}});
        if let Some(a) = annotation {
            o["metadata"]["annotations"] = json!({OPERATION_ANNOTATION: a});
        }
        if let Some((t, s)) = last {
            o["status"] =
                json!({"lastOperation": {"type": t, "state": s}, "observedGeneration": 3});
        }
        o
    }

    #[test]
    fn operations_as_gardenlet_computes_them() {
        use Operation::*;
        for (annotation, last, want) in [
            (None, None, Create),
            (Some("reconcile"), None, Create),
            (Some("reconcile"), Some(("Create", "Succeeded")), Reconcile),
            (None, Some(("Create", "Error")), Create),
            (None, Some(("Reconcile", "Error")), Reconcile),
            (Some("migrate"), Some(("Reconcile", "Succeeded")), Migrate),
            (None, Some(("Migrate", "Processing")), Migrate),
            (None, Some(("Migrate", "Succeeded")), Wait),
            (Some("restore"), Some(("Migrate", "Succeeded")), Restore),
            (None, Some(("Restore", "Error")), Restore),
            (Some("wait-for-state"), None, Wait),
        ] {
            assert_eq!(
                operation(&ext(annotation, last)),
                want,
                "{annotation:?} {last:?}"
            );
        }
        let mut deleting = ext(Some("reconcile"), Some(("Reconcile", "Succeeded")));
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-28T10:00:00Z");
        assert_eq!(operation(&deleting), Delete);
        deleting["metadata"]["annotations"][OPERATION_ANNOTATION] = json!("migrate");
        assert_eq!(
            operation(&deleting),
            Migrate,
            "migrate comes before deletion"
        );
    }

    #[test]
    fn an_answered_object_waits_for_nothing_until_gardenlet_asks_again() {
        let answered = ext(None, Some(("Reconcile", "Succeeded")));
        assert!(!wants_answer(&answered));
        assert!(wants_answer(&ext(
            Some("reconcile"),
            Some(("Reconcile", "Succeeded"))
        )));
        let mut newer = answered.clone();
        newer["metadata"]["generation"] = json!(4);
        assert!(wants_answer(&newer), "a new generation");
        assert!(wants_answer(&ext(None, None)));
        assert!(!wants_answer(&ext(Some("wait-for-state"), None)));
        assert!(!wants_answer(&ext(None, Some(("Migrate", "Succeeded")))));
        let a = answer(&newer, Operation::Reconcile, "2026-11-28T10:00:00Z");
        assert_eq!(a["status"]["observedGeneration"], 4);
        assert_eq!(a["status"]["lastOperation"]["state"], "Succeeded");
        assert_eq!(a["status"]["lastOperation"]["type"], "Reconcile");
        assert_eq!(a["status"]["lastError"], Value::Null);
    }

    #[test]
    fn the_condition_says_held_with_its_reason_and_keeps_its_transition_time() {
        let t0 = "2026-11-28T10:00:00Z";
        let t1 = "2026-11-28T10:00:30Z";
        let held = ShootState::Held {
            objects: vec!["IPPool default-ipv4-ippool".into()],
            since: Some(t0.into()),
            why: "1 of 2 nodes has no route yet (a-2: no NetworkUnavailable condition)".into(),
        };
        let c0 = condition(&held, None, t0);
        assert_eq!(c0["status"], "Progressing");
        assert_eq!(c0["reason"], "OverlaySwitchHeld");
        let m = c0["message"].as_str().unwrap();
        assert!(
            m.contains("a-2")
                && m.contains("since 2026-11-28T10:00:00Z")
                && m.contains("IPPool default-ipv4-ippool"),
            "{m}"
        );
        let c1 = condition(&held, Some(&c0), t1);
        assert_eq!(c1["lastTransitionTime"], t0, "same status: transition kept");
        assert_eq!(c1["lastUpdateTime"], t1);
        let clear = condition(&ShootState::Clear { guarded: true }, Some(&c1), t1);
        assert_eq!(
            (
                clear["status"].as_str(),
                clear["lastTransitionTime"].as_str()
            ),
            (Some("True"), Some(t1))
        );
        let unknown = condition(
            &ShootState::Unknown {
                why: "no access Secret".into(),
            },
            None,
            t1,
        );
        assert_eq!(unknown["status"], "Unknown");
        assert!(
            unknown["message"]
                .as_str()
                .unwrap()
                .contains("no access Secret")
        );
    }
}
