//! The hold (pure): the JSON patch that keeps a Calico object's overlay
//! configuration as it was, and the record of the held intent that it writes
//! onto the object, so that nothing the operator asked for is lost.
//!
//! The record lives in annotations under `calico.networking.extensions.gardener.cloud/`:
//! - `overlay-switch-held-intent`: a JSON patch (RFC 6902) from the held part
//!   to the desired part, with paths from the object's root. Every `replace`
//!   and `remove` is preceded by a `test` of the value it expects, so applying
//!   it later onto a changed object either fits exactly or fails, never
//!   overwriting a change made in between.
//! - `overlay-switch-held-since`: when the switch was first held (RFC 3339).
//! - `overlay-switch-held-reason`: why, in words.

use json_patch::jsonptr::PointerBuf;
use json_patch::{
    AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation, TestOperation,
};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::overlay::CalicoKind;

pub const INTENT_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-held-intent";
pub const SINCE_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-held-since";
pub const REASON_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-held-reason";
/// Set by the release controller on its own updates (`release` or `cancel`);
/// the webhook always strips it.
pub const ACTION_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-action";

pub const RECORD_ANNOTATIONS: [&str; 3] = [INTENT_ANNOTATION, SINCE_ANNOTATION, REASON_ANNOTATION];

/// Annotations are limited to 256 KiB in total per object; keep well below.
pub const MAX_INTENT_BYTES: usize = 128 * 1024;

/// The part of each kind that carries the overlay and is held as a whole:
/// restoring it means nothing rolls (DaemonSet) and encapsulation stays on.
pub fn held_pointer(kind: CalicoKind) -> &'static str {
    match kind {
        CalicoKind::DaemonSet => "/spec/template",
        CalicoKind::ConfigMap => "/data",
        CalicoKind::IpPool => "/spec",
    }
}

/// A held switch as recorded on an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub intent: Patch,
    pub since: Timestamp,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("annotation {INTENT_ANNOTATION} is not a JSON patch: {0}")]
    Intent(String),
    #[error("annotation {SINCE_ANNOTATION} is not an RFC 3339 time: {0}")]
    Since(String),
    #[error(
        "the held change is {0} bytes, more than the {MAX_INTENT_BYTES} bytes an annotation can safely carry"
    )]
    TooLarge(usize),
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn pointer(s: &str) -> PointerBuf {
    PointerBuf::parse(s).expect("static JSON pointer")
}

fn annotation_pointer(key: &str) -> PointerBuf {
    PointerBuf::from_tokens(["metadata", "annotations", key])
}

impl Record {
    /// The record an object carries, if any. The intent annotation alone
    /// makes a record; a damaged one is an error, never silently dropped.
    pub fn read(obj: &Value) -> Result<Option<Record>, RecordError> {
        let Some(intent) = annotation(obj, INTENT_ANNOTATION) else {
            return Ok(None);
        };
        let intent: Patch =
            serde_json::from_str(intent).map_err(|e| RecordError::Intent(e.to_string()))?;
        let since = match annotation(obj, SINCE_ANNOTATION) {
            Some(s) => s
                .parse::<Timestamp>()
                .map_err(|e| RecordError::Since(format!("{s:?}: {e}")))?,
            None => Timestamp::UNIX_EPOCH,
        };
        Ok(Some(Record {
            intent,
            since,
            reason: annotation(obj, REASON_ANNOTATION)
                .unwrap_or_default()
                .to_string(),
        }))
    }

    fn annotation_values(&self) -> Result<[(&'static str, String); 3], RecordError> {
        let intent = serde_json::to_string(&self.intent).expect("patch serializes");
        if intent.len() > MAX_INTENT_BYTES {
            return Err(RecordError::TooLarge(intent.len()));
        }
        Ok([
            (INTENT_ANNOTATION, intent),
            (SINCE_ANNOTATION, format_time(self.since)),
            (REASON_ANNOTATION, self.reason.clone()),
        ])
    }
}

/// RFC 3339 with second precision, as Kubernetes writes times.
pub fn format_time(t: Timestamp) -> String {
    t.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(t)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The change from `old`'s held part to `new`'s, rooted at the object, with
/// a `test` before every `replace` and `remove`.
pub fn intent(kind: CalicoKind, old: &Value, new: &Value) -> Patch {
    let root = held_pointer(kind);
    let (from, to) = (old.pointer(root), new.pointer(root));
    let ops = match (from, to) {
        (None, None) => vec![],
        (None, Some(to)) => vec![PatchOperation::Add(AddOperation {
            path: pointer(root),
            value: to.clone(),
        })],
        (Some(from), None) => vec![
            PatchOperation::Test(TestOperation {
                path: pointer(root),
                value: from.clone(),
            }),
            PatchOperation::Remove(RemoveOperation {
                path: pointer(root),
            }),
        ],
        (Some(from), Some(to)) => {
            let base = pointer(root);
            let relative = json_patch::diff(from, to);
            // Replay the diff on a copy of the held part, to know what each
            // replace/remove finds at its path at that step.
            let mut doc = from.clone();
            let mut ops = Vec::with_capacity(relative.0.len() * 2);
            for op in relative.0 {
                let expected = match &op {
                    PatchOperation::Replace(r) => r.path.resolve(&doc).ok().cloned(),
                    PatchOperation::Remove(r) => r.path.resolve(&doc).ok().cloned(),
                    _ => None,
                };
                json_patch::patch(&mut doc, std::slice::from_ref(&op))
                    .expect("a diff applies to its own left side");
                if let Some(value) = expected {
                    ops.push(PatchOperation::Test(TestOperation {
                        path: base.concat(op.path()),
                        value,
                    }));
                }
                ops.push(rebase(op, &base));
            }
            ops
        }
    };
    Patch(ops)
}

fn rebase(op: PatchOperation, base: &PointerBuf) -> PatchOperation {
    match op {
        PatchOperation::Add(o) => PatchOperation::Add(AddOperation {
            path: base.concat(&o.path),
            value: o.value,
        }),
        PatchOperation::Remove(o) => PatchOperation::Remove(RemoveOperation {
            path: base.concat(&o.path),
        }),
        PatchOperation::Replace(o) => PatchOperation::Replace(ReplaceOperation {
            path: base.concat(&o.path),
            value: o.value,
        }),
        other => other, // diff makes only add/remove/replace
    }
}

/// Ops that make `obj`'s annotations equal `wanted` for the given keys
/// (`None` = absent), creating the annotations map if needed.
fn set_annotations(obj: &Value, wanted: &[(&str, Option<String>)]) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    let existing = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let needs_map = existing.is_none() && wanted.iter().any(|(_, v)| v.is_some());
    if needs_map {
        if obj.pointer("/metadata").is_none() {
            ops.push(PatchOperation::Add(AddOperation {
                path: pointer("/metadata"),
                value: Value::Object(Default::default()),
            }));
        }
        ops.push(PatchOperation::Add(AddOperation {
            path: pointer("/metadata/annotations"),
            value: Value::Object(Default::default()),
        }));
    }
    for (key, value) in wanted {
        let present = existing.and_then(|a| a.get(*key));
        match (present, value) {
            (Some(p), Some(v)) if p.as_str() == Some(v) => {}
            (_, Some(v)) => ops.push(PatchOperation::Add(AddOperation {
                // `add` on an existing member replaces it (RFC 6902 4.1).
                path: annotation_pointer(key),
                value: Value::String(v.clone()),
            })),
            (Some(_), None) => ops.push(PatchOperation::Remove(RemoveOperation {
                path: annotation_pointer(key),
            })),
            (None, None) => {}
        }
    }
    ops
}

/// The hold: restores `old`'s held part onto `new` and records `record`.
/// The patch is applied by the API server to `new` (the incoming object).
pub fn hold_patch(
    kind: CalicoKind,
    old: &Value,
    new: &Value,
    record: &Record,
) -> Result<Patch, RecordError> {
    let root = held_pointer(kind);
    let mut ops = Vec::new();
    match (old.pointer(root), new.pointer(root)) {
        (Some(from), Some(_)) => ops.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(root),
            value: from.clone(),
        })),
        (Some(from), None) => ops.push(PatchOperation::Add(AddOperation {
            path: pointer(root),
            value: from.clone(),
        })),
        (None, Some(_)) => ops.push(PatchOperation::Remove(RemoveOperation {
            path: pointer(root),
        })),
        (None, None) => {}
    }
    let values = record.annotation_values()?;
    let wanted: Vec<(&str, Option<String>)> = values
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .chain([(ACTION_ANNOTATION, None)])
        .collect();
    ops.extend(set_annotations(new, &wanted));
    Ok(Patch(ops))
}

/// For an update that is not a switch while a record exists: makes sure
/// `new` still carries the record `old` had (an apply that does not know the
/// annotations must not lose the held intent). Empty if nothing is missing.
pub fn keep_record_patch(old: &Value, new: &Value) -> Patch {
    let wanted: Vec<(&str, Option<String>)> = RECORD_ANNOTATIONS
        .iter()
        .filter_map(|k| annotation(old, k).map(|v| (*k, Some(v.to_string()))))
        .chain(annotation(new, ACTION_ANNOTATION).map(|_| (ACTION_ANNOTATION, None)))
        .collect();
    Patch(set_annotations(new, &wanted))
}

/// Removes the record and the action marker from `new`, if present.
pub fn clear_record_patch(new: &Value) -> Patch {
    let wanted: Vec<(&str, Option<String>)> = RECORD_ANNOTATIONS
        .iter()
        .chain([ACTION_ANNOTATION].iter())
        .map(|k| (*k, None))
        .collect();
    Patch(set_annotations(new, &wanted))
}

/// Why a recorded change cannot be applied to the object as it is now.
#[derive(Debug, thiserror::Error)]
#[error("the held change no longer applies at {path}: {reason}")]
pub struct Conflict {
    pub path: String,
    pub reason: String,
}

/// The object the release writes: the recorded change applied onto the
/// object as it is now (keeping what changed meanwhile), the record removed,
/// and the action marker set.
pub fn released(current: &Value, record: &Record, action: &str) -> Result<Value, Conflict> {
    let mut obj = current.clone();
    json_patch::patch(&mut obj, &record.intent.0).map_err(|e| Conflict {
        path: e.path.to_string(),
        reason: e.kind.to_string(),
    })?;
    strip_record(&mut obj);
    set_action(&mut obj, action);
    Ok(obj)
}

/// The object with the record removed and the action marker set (cancel).
pub fn cancelled(current: &Value, action: &str) -> Value {
    let mut obj = current.clone();
    strip_record(&mut obj);
    set_action(&mut obj, action);
    obj
}

fn strip_record(obj: &mut Value) {
    if let Some(a) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for k in RECORD_ANNOTATIONS {
            a.remove(k);
        }
    }
}

fn set_action(obj: &mut Value, action: &str) {
    if let Some(meta) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        let a = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = a.as_object_mut() {
            a.insert(
                ACTION_ANNOTATION.to_string(),
                Value::String(action.to_string()),
            );
        }
    }
}

/// The action marker of an incoming object, if any.
pub fn action(obj: &Value) -> Option<&str> {
    annotation(obj, ACTION_ANNOTATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(ipip: &str, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "calico-node", "namespace": "kube-system", "labels": {"a": "b"}},
            "spec": {"template": {"spec": {"containers": [{
                "name": "calico-node", "image": image,
                "env": [{"name": "CALICO_IPV4POOL_IPIP", "value": ipip}, {"name": "X", "value": "1"}]
            }]}}}
        })
    }

    fn record(kind: CalicoKind, old: &Value, new: &Value) -> Record {
        Record {
            intent: intent(kind, old, new),
            since: "2026-01-02T03:04:05Z".parse().unwrap(),
            reason: "2 of 5 nodes have no route yet".into(),
        }
    }

    #[test]
    fn hold_restores_the_overlay_and_records_the_intent() {
        let old = ds("Always", "calico/node:v1");
        let mut new = ds("Never", "calico/node:v1");
        new["metadata"]["labels"]["c"] = json!("d"); // metadata goes through
        let rec = record(CalicoKind::DaemonSet, &old, &new);
        let patch = hold_patch(CalicoKind::DaemonSet, &old, &new, &rec).unwrap();
        let mut result = new.clone();
        json_patch::patch(&mut result, &patch.0).unwrap();
        assert_eq!(result["spec"], old["spec"]);
        assert_eq!(result["metadata"]["labels"]["c"], json!("d"));
        let read = Record::read(&result).unwrap().unwrap();
        assert_eq!(read, rec);
        // The recorded change, applied onto the held object, gives the desired one.
        let released = released(&result, &read, "release").unwrap();
        assert_eq!(released["spec"], new["spec"]);
        assert_eq!(action(&released), Some("release"));
        assert!(Record::read(&released).unwrap().is_none());
    }

    #[test]
    fn release_keeps_a_change_made_while_held() {
        let old = ds("Always", "calico/node:v1");
        let new = ds("Never", "calico/node:v1");
        let rec = record(CalicoKind::DaemonSet, &old, &new);
        let held_then_bumped = ds("Always", "calico/node:v2");
        let out = released(&held_then_bumped, &rec, "release").unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], json!("calico/node:v2"));
        assert_eq!(c["env"][0]["value"], json!("Never"));
    }

    #[test]
    fn release_refuses_when_the_held_value_changed() {
        let old = ds("Always", "v1");
        let new = ds("Never", "v1");
        let rec = record(CalicoKind::DaemonSet, &old, &new);
        let changed = ds("CrossSubnet", "v1");
        let err = released(&changed, &rec, "release").unwrap_err();
        assert!(err.path.contains("/env/0/value"), "{err}");
    }

    #[test]
    fn hold_creates_the_annotations_map_when_missing() {
        let old = json!({"metadata": {"name": "p"}, "spec": {"ipipMode": "Always"}});
        let new = json!({"metadata": {"name": "p"}, "spec": {"ipipMode": "Never"}});
        let rec = record(CalicoKind::IpPool, &old, &new);
        let patch = hold_patch(CalicoKind::IpPool, &old, &new, &rec).unwrap();
        let mut result = new.clone();
        json_patch::patch(&mut result, &patch.0).unwrap();
        assert_eq!(result["spec"]["ipipMode"], json!("Always"));
        assert!(Record::read(&result).unwrap().is_some());
    }

    #[test]
    fn configmap_data_added_or_removed_is_held_too() {
        let old = json!({"metadata": {"name": "c", "annotations": {}}, "data": {"calico_backend": "bird"}});
        let new = json!({"metadata": {"name": "c", "annotations": {}}});
        let rec = record(CalicoKind::ConfigMap, &old, &new);
        let patch = hold_patch(CalicoKind::ConfigMap, &old, &new, &rec).unwrap();
        let mut result = new.clone();
        json_patch::patch(&mut result, &patch.0).unwrap();
        assert_eq!(result["data"], old["data"]);
        let out = released(&result, &rec, "release").unwrap();
        assert!(out.get("data").is_none());
    }

    #[test]
    fn keep_record_readds_a_record_the_update_dropped() {
        let old = ds("Always", "v1");
        let new0 = ds("Never", "v1");
        let rec = record(CalicoKind::DaemonSet, &old, &new0);
        let mut held = old.clone();
        json_patch::patch(
            &mut held,
            &hold_patch(CalicoKind::DaemonSet, &old, &new0, &rec)
                .unwrap()
                .0,
        )
        .unwrap();
        let bumped = ds("Always", "v2"); // knows nothing of the record
        let patch = keep_record_patch(&held, &bumped);
        let mut result = bumped.clone();
        json_patch::patch(&mut result, &patch.0).unwrap();
        assert_eq!(Record::read(&result).unwrap().unwrap(), rec);
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"][0]["image"],
            json!("v2")
        );
        // Nothing to do when the update kept it.
        assert!(keep_record_patch(&held, &held).0.is_empty());
    }

    #[test]
    fn damaged_records_are_errors_not_silence() {
        let obj = json!({"metadata": {"annotations": {INTENT_ANNOTATION: "not json"}}});
        assert!(matches!(Record::read(&obj), Err(RecordError::Intent(_))));
        let obj = json!({"metadata": {"annotations": {INTENT_ANNOTATION: "[]", SINCE_ANNOTATION: "yesterday"}}});
        assert!(matches!(Record::read(&obj), Err(RecordError::Since(_))));
    }

    #[test]
    fn annotation_keys_with_slashes_are_escaped() {
        let p = annotation_pointer(INTENT_ANNOTATION);
        assert!(
            p.to_string()
                .contains("calico.networking.extensions.gardener.cloud~1overlay")
        );
    }
}
