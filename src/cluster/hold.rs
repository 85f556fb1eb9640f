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

use crate::calico::overlay::CalicoKind;

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

/// `"true"` on an IPPool: its DELETE goes through even while it still
/// encapsulates and a node lacks its route (the operator's choice).
pub const FORCE_DELETE_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-force-delete";

pub const RECORD_ANNOTATIONS: [&str; 3] = [INTENT_ANNOTATION, SINCE_ANNOTATION, REASON_ANNOTATION];

/// Annotations are limited to 256 KiB in total per object; keep well below.
pub const MAX_INTENT_BYTES: usize = 128 * 1024;

/// The part of each kind that carries the overlay and is held as a whole:
/// restoring it means nothing rolls (DaemonSet) and encapsulation stays on.
pub fn held_pointer(kind: CalicoKind) -> &'static str {
    match kind {
        CalicoKind::DaemonSet => "/spec/template",
        CalicoKind::ConfigMap => "/data",
        // Only the pools: the rest of the Installation goes through.
        CalicoKind::Installation => crate::calico::installation::POOLS_POINTER,
        CalicoKind::IpPool
        | CalicoKind::IpPoolV3
        | CalicoKind::FelixConfiguration
        | CalicoKind::FelixConfigurationV3 => "/spec",
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

    /// A recorded change may only touch the held part of its kind: a record
    /// that reaches elsewhere (hand-made, or planted) is refused.
    pub fn check_scope(&self, kind: CalicoKind) -> Result<(), Conflict> {
        let root = held_pointer(kind);
        for op in &self.intent.0 {
            let mut paths = vec![op.path().to_string()];
            if let PatchOperation::Move(m) = op {
                paths.push(m.from.to_string());
            }
            for p in paths {
                if p != root && !p.starts_with(&format!("{root}/")) {
                    return Err(Conflict {
                        path: p,
                        reason: format!("the recorded change reaches outside {root}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The record's three annotations (key, value); an intent too large
    /// for an annotation is an error.
    pub fn annotation_values(&self) -> Result<[(&'static str, String); 3], RecordError> {
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
    intent_to(kind, old, new.pointer(held_pointer(kind)))
}

/// The change from `old`'s held part to `to` (a held part; `None` = absent).
pub fn intent_to(kind: CalicoKind, old: &Value, to: Option<&Value>) -> Patch {
    let root = held_pointer(kind);
    let from = old.pointer(root);
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
            let mut ops = Vec::new();
            guarded_diff(from, to, &pointer(root), &mut ops);
            ops
        }
    };
    Patch(ops)
}

/// The ops (applied in order) that turn `from` into `to`, at `path`, with a
/// `test` of the expected value before every `replace`, `remove` and `move`.
///
/// Lists of named items (containers, env, volumes: every element an object
/// with a unique `name`, or `mountPath` for volume mounts) are matched by
/// name, the way Kubernetes merges them, not by position: inserting one env
/// var is one `add`, not a cascade of replaces, so the patch still applies
/// after an unrelated change elsewhere in the list's items (an image bump).
pub fn guarded_diff(from: &Value, to: &Value, path: &PointerBuf, ops: &mut Vec<PatchOperation>) {
    let mut at = Path(path.as_str().to_string());
    diff_at(from, to, &mut at, ops);
}

/// An encoded JSON pointer that grows and shrinks as the diff walks down
/// and back up (one buffer for the whole walk; a `PointerBuf` is made only
/// for the ops emitted).
struct Path(String);

impl Path {
    /// Appends `token`; returns the length to [`Path::truncate`] back to.
    fn push<'t>(&mut self, token: impl Into<json_patch::jsonptr::Token<'t>>) -> usize {
        let len = self.0.len();
        self.0.push('/');
        self.0.push_str(token.into().encoded());
        len
    }

    fn push_index(&mut self, i: usize) -> usize {
        use std::fmt::Write as _;
        let len = self.0.len();
        write!(self.0, "/{i}").expect("writing to a String");
        len
    }

    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    fn pointer(&self) -> PointerBuf {
        PointerBuf::parse(self.0.clone()).expect("built from encoded tokens")
    }

    /// The pointer to `self` plus `token`, without changing `self`.
    fn with(&mut self, token: &str) -> PointerBuf {
        let len = self.push(token);
        let p = self.pointer();
        self.truncate(len);
        p
    }

    fn with_index(&mut self, i: usize) -> PointerBuf {
        let len = self.push_index(i);
        let p = self.pointer();
        self.truncate(len);
        p
    }
}

fn diff_at(from: &Value, to: &Value, path: &mut Path, ops: &mut Vec<PatchOperation>) {
    // Most of a pod template is unchanged: comparing is cheaper than walking.
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            for (k, v) in f {
                if !t.contains_key(k) {
                    let p = path.with(k);
                    guarded_remove(ops, p, v);
                }
            }
            for (k, v) in t {
                match f.get(k) {
                    Some(old) => {
                        let len = path.push(k.as_str());
                        diff_at(old, v, path, ops);
                        path.truncate(len);
                    }
                    None => ops.push(PatchOperation::Add(AddOperation {
                        path: path.with(k),
                        value: v.clone(),
                    })),
                }
            }
        }
        (Value::Array(f), Value::Array(t)) => match list_key(f, t) {
            Some(key) => keyed_list_diff(f, t, key, path, ops),
            None => {
                let common = f.len().min(t.len());
                for i in 0..common {
                    let len = path.push_index(i);
                    diff_at(&f[i], &t[i], path, ops);
                    path.truncate(len);
                }
                for i in (common..f.len()).rev() {
                    let p = path.with_index(i);
                    guarded_remove(ops, p, &f[i]);
                }
                for (i, v) in t.iter().enumerate().skip(common) {
                    ops.push(PatchOperation::Add(AddOperation {
                        path: path.with_index(i),
                        value: v.clone(),
                    }));
                }
            }
        },
        _ => {
            let p = path.pointer();
            test_then(
                ops,
                &p,
                from,
                PatchOperation::Replace(ReplaceOperation {
                    path: p.clone(),
                    value: to.clone(),
                }),
            )
        }
    }
}

/// `test` then `remove` of `expected` at `path`.
fn guarded_remove(ops: &mut Vec<PatchOperation>, path: PointerBuf, expected: &Value) {
    let op = PatchOperation::Remove(RemoveOperation { path: path.clone() });
    test_then(ops, &path, expected, op);
}

fn test_then(
    ops: &mut Vec<PatchOperation>,
    path: &PointerBuf,
    expected: &Value,
    op: PatchOperation,
) {
    ops.push(PatchOperation::Test(TestOperation {
        path: path.clone(),
        value: expected.clone(),
    }));
    ops.push(op);
}

/// The merge key of a list of named items, if both sides are such lists.
fn list_key(f: &[Value], t: &[Value]) -> Option<&'static str> {
    crate::cluster::merge::list_key(&[f, t])
}

fn keyed_list_diff<'a>(
    f: &'a [Value],
    t: &'a [Value],
    key: &str,
    path: &mut Path,
    ops: &mut Vec<PatchOperation>,
) {
    fn item_name<'v>(v: &'v Value, key: &str) -> &'v str {
        v.get(key).and_then(Value::as_str).unwrap_or_default()
    }
    let name = |v: &'a Value| item_name(v, key);
    let wanted: std::collections::HashSet<&str> = t.iter().map(name).collect();
    // Removals, from the end so that earlier indices stay valid.
    for i in (0..f.len()).rev() {
        if !wanted.contains(name(&f[i])) {
            let p = path.with_index(i);
            guarded_remove(ops, p, &f[i]);
        }
    }
    // What is left, in its order; then bring each wanted item to its place.
    let mut left: Vec<&Value> = f.iter().filter(|v| wanted.contains(name(v))).collect();
    for (j, want) in t.iter().enumerate() {
        let k = name(want);
        match left.iter().position(|v| name(v) == k) {
            Some(p) => {
                if p != j {
                    let from = path.with_index(p);
                    let key_path = from.with_trailing_token(key);
                    test_then(
                        ops,
                        &key_path,
                        &Value::String(k.to_string()),
                        PatchOperation::Move(json_patch::MoveOperation {
                            from,
                            path: path.with_index(j),
                        }),
                    );
                    let item = left.remove(p);
                    left.insert(j, item);
                }
                // Changes inside a named item first check that the item at
                // that position is still the one of that name: a list that
                // shifted meanwhile is a conflict, never a change to the
                // wrong container or env var.
                let mark = ops.len();
                let len = path.push_index(j);
                diff_at(left[j], want, path, ops);
                if ops.len() > mark {
                    let name_test = PatchOperation::Test(TestOperation {
                        path: path.with(key),
                        value: Value::String(k.to_string()),
                    });
                    ops.insert(mark, name_test);
                }
                path.truncate(len);
            }
            None => {
                ops.push(PatchOperation::Add(AddOperation {
                    path: path.with_index(j),
                    value: want.clone(),
                }));
                left.insert(j, want);
            }
        }
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
    let old_part = old.pointer(held_pointer(kind)).cloned();
    Ok(hold_patch_from(
        kind,
        old_part,
        new,
        record.annotation_values()?,
    ))
}

/// [`hold_patch`] from its parts: `old_part`, the old object's held part
/// (`None` = absent; moved into the patch, not copied), and the record's
/// [`Record::annotation_values`].
pub fn hold_patch_from(
    kind: CalicoKind,
    old_part: Option<Value>,
    new: &Value,
    annotations: [(&'static str, String); 3],
) -> Patch {
    let mut ops = held_part_ops_owned(kind, new, old_part);
    let wanted: Vec<(&str, Option<String>)> = annotations
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .chain([(ACTION_ANNOTATION, None)])
        .collect();
    ops.extend(set_annotations(new, &wanted));
    Patch(ops)
}

/// A switch that goes through: `new`'s held part becomes `target` (the
/// update merged with what was held before, so nothing held is lost), and
/// any record or action marker is removed.
pub fn pass_patch(kind: CalicoKind, new: &Value, target: Option<&Value>) -> Patch {
    let mut ops = held_part_ops(kind, new, target);
    ops.extend(clear_record_patch(new).0);
    Patch(ops)
}

/// The ops that make `obj`'s held part equal `part` (`None` = absent).
fn held_part_ops(kind: CalicoKind, obj: &Value, part: Option<&Value>) -> Vec<PatchOperation> {
    if obj.pointer(held_pointer(kind)) == part {
        return vec![];
    }
    held_part_ops_owned(kind, obj, part.cloned())
}

/// The same, moving `part` into the op.
fn held_part_ops_owned(kind: CalicoKind, obj: &Value, part: Option<Value>) -> Vec<PatchOperation> {
    let path = pointer(held_pointer(kind));
    match (obj.pointer(held_pointer(kind)), part) {
        (now, want) if now == want.as_ref() => vec![],
        (Some(_), Some(value)) => vec![PatchOperation::Replace(ReplaceOperation { path, value })],
        (None, Some(value)) => vec![PatchOperation::Add(AddOperation { path, value })],
        (Some(_), None) => vec![PatchOperation::Remove(RemoveOperation { path })],
        (None, None) => vec![],
    }
}

/// An update of an object on which a switch is held, judged together with
/// that switch.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The update with its held part merged with the held change
    /// ([`crate::cluster::merge`]: what only one side changed, from that side; what
    /// both changed, from the update): set when the update touches the
    /// held switch (it moves the held part toward or away from the
    /// recorded change, or lowers encapsulation itself). `None`: the update
    /// is independent of it (an image bump) and goes through as it is.
    pub merged: Option<Value>,
    /// The held change no longer applies to the object (the release reports
    /// this conflict): a new switch replaces it, anything else keeps it.
    pub stale: Option<Conflict>,
    /// When the switch was first held.
    pub since: Timestamp,
}

impl Joined {
    /// Words for the response, when the update was judged with the switch.
    pub fn describe(&self, record: &Record) -> String {
        let since = format_time(self.since);
        match (&self.merged, &self.stale) {
            (_, Some(c)) => format!(
                "the switch held since {since} no longer applied ({c}) and is replaced by this update"
            ),
            (Some(_), None) => format!(
                "this update changes what is held since {since}: it is merged with the held switch (where both change a field, this update wins) and will be applied with it; {} change(s) recorded",
                record
                    .intent
                    .0
                    .iter()
                    .filter(|o| !matches!(o, PatchOperation::Test(_)))
                    .count()
            ),
            (None, None) => format!("a switch is held since {since}"),
        }
    }
}

/// Judges an update (`old` -> `new`, by anyone but the release controller)
/// of an object that carries `record`.
pub fn join(
    kind: CalicoKind,
    old: &Value,
    new: &Value,
    record: &Record,
    ctx: crate::calico::overlay::Context<'_>,
) -> Joined {
    let root = held_pointer(kind);
    let desired = match apply_intent(old, record) {
        Ok(d) => d,
        Err(c) => {
            return Joined {
                merged: None,
                stale: Some(c),
                since: record.since,
            };
        }
    };
    let target = crate::cluster::merge::merge_opt(
        old.pointer(root),
        desired.pointer(root),
        new.pointer(root),
    );
    // Independent: the held change still applies onto the update and gives
    // the same as the merge, i.e. the update does not touch what it changes.
    let independent = apply_intent(new, record)
        .ok()
        .is_some_and(|v| v.pointer(root) == target.as_ref());
    // An unreadable new object counts as a switch (the caller refuses it).
    let switches =
        crate::calico::overlay::detect_switch(kind, old, new, ctx).map_or(true, |s| s.is_some());
    let merged = if independent && !switches {
        None
    } else {
        let mut merged = new.clone();
        match json_patch::patch(&mut merged, &held_part_ops(kind, new, target.as_ref())) {
            Ok(()) => Some(merged),
            // The held part's parent is missing in the update (not a
            // Kubernetes object of this kind): judged as it is.
            Err(_) => None,
        }
    };
    Joined {
        merged,
        stale: None,
        since: record.since,
    }
}

/// The recorded change applied onto `obj` as it is (nothing else changed).
pub fn apply_intent(obj: &Value, record: &Record) -> Result<Value, Conflict> {
    let mut out = obj.clone();
    json_patch::patch(&mut out, &record.intent.0).map_err(|e| Conflict {
        path: e.path.to_string(),
        reason: e.kind.to_string(),
    })?;
    Ok(out)
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
#[derive(Debug, Clone, thiserror::Error)]
#[error("the held change no longer applies at {path}: {reason}")]
pub struct Conflict {
    pub path: String,
    pub reason: String,
}

/// The object the release writes: the recorded change applied onto the
/// object as it is now (keeping what changed meanwhile), the record removed,
/// and the action marker set.
pub fn released(current: &Value, record: &Record, action: &str) -> Result<Value, Conflict> {
    let mut obj = apply_intent(current, record)?;
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

/// Whether a release or cancel marker on `new` is what the release
/// controller writes: a release applies exactly the recorded change onto the
/// object as it is, a cancel changes nothing in the held part. A marker on
/// any other update (forged, or copied from somewhere) counts for nothing.
pub fn action_fits(kind: CalicoKind, old: &Value, new: &Value, action: &str) -> bool {
    let root = held_pointer(kind);
    match action {
        "cancel" => old.pointer(root) == new.pointer(root),
        "release" => match Record::read(old) {
            Ok(Some(r)) => {
                apply_intent(old, &r).is_ok_and(|d| d.pointer(root) == new.pointer(root))
            }
            _ => false,
        },
        _ => false,
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

    #[test]
    fn named_lists_are_matched_by_name() {
        let from = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]});
        let to = json!({"env": [{"name": "A", "value": "1"}, {"name": "X", "value": "0"}, {"name": "B", "value": "3"}]});
        let mut ops = vec![];
        guarded_diff(&from, &to, &PointerBuf::new(), &mut ops);
        let text = serde_json::to_string(&ops).unwrap();
        assert_eq!(
            text,
            r#"[{"op":"add","path":"/env/1","value":{"name":"X","value":"0"}},{"op":"test","path":"/env/2/name","value":"B"},{"op":"test","path":"/env/2/value","value":"2"},{"op":"replace","path":"/env/2/value","value":"3"}]"#
        );
        // Reordering is a guarded move.
        let swapped = json!({"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]});
        let mut ops = vec![];
        guarded_diff(&from, &swapped, &PointerBuf::new(), &mut ops);
        assert!(
            serde_json::to_string(&ops)
                .unwrap()
                .contains(r#""op":"move""#)
        );
        let mut doc = from.clone();
        json_patch::patch(&mut doc, &ops).unwrap();
        assert_eq!(doc, swapped);
    }

    fn tree() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0i64..4).prop_map(|i| json!(i)),
            prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                // Named items, as in containers and env.
                prop::collection::btree_map(
                    prop_oneof![Just("x"), Just("y"), Just("z"), Just("w")],
                    inner.clone(),
                    0..4
                )
                .prop_map(|m| Value::Array(
                    m.into_iter()
                        .map(|(k, v)| json!({"name": k, "value": v}))
                        .collect()
                )),
                prop::collection::btree_map(
                    prop_oneof![Just("name"), Just("k"), Just("value"), Just("env")]
                        .prop_map(String::from),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_guarded_diff_turns_from_into_to(from in tree(), to in tree(), shuffle in proptest::prelude::any::<bool>()) {
            let to = if shuffle {
                // Same named items in another order.
                match &from { Value::Array(a) => Value::Array(a.iter().rev().cloned().collect()), _ => to }
            } else { to };
            let mut ops = vec![];
            guarded_diff(&from, &to, &PointerBuf::new(), &mut ops);
            let mut doc = from.clone();
            json_patch::patch(&mut doc, &ops).unwrap();
            proptest::prop_assert_eq!(doc, to);
        }

        #[test]
        fn an_intent_never_applies_onto_a_changed_value(v in tree()) {
            // Whatever a replace/remove expects is tested first: changing
            // that value makes the whole patch fail, never half apply.
            let from = json!({"spec": {"a": v.clone(), "b": 1}});
            let to = json!({"spec": {"a": "new", "b": 1}});
            let rec = Record { intent: intent(CalicoKind::IpPool, &from, &to), since: Timestamp::UNIX_EPOCH, reason: String::new() };
            if v != json!("new") {
                let changed = json!({"spec": {"a": [v, 1], "b": 1}});
                proptest::prop_assert!(released(&changed, &rec, "release").is_err());
            }
        }
    }

    #[test]
    fn a_shifted_named_list_is_a_conflict_not_a_change_to_the_wrong_item() {
        // The held change lowers A (index 1); meanwhile the item before it is
        // removed, so index 1 is now B, which happens to have the same value.
        let from = json!({"spec": {"env": [{"name": "X", "value": "1"}, {"name": "A", "value": "true"}, {"name": "B", "value": "true"}]}});
        let to = json!({"spec": {"env": [{"name": "X", "value": "1"}, {"name": "A", "value": "false"}, {"name": "B", "value": "true"}]}});
        let rec = Record {
            intent: intent(CalicoKind::IpPool, &from, &to),
            since: Timestamp::UNIX_EPOCH,
            reason: String::new(),
        };
        let shifted = json!({"spec": {"env": [{"name": "A", "value": "true"}, {"name": "B", "value": "true"}]}});
        let err = released(&shifted, &rec, "release").unwrap_err();
        assert!(err.path.ends_with("/env/1/name"), "{err}");
        // Unshifted, it applies.
        assert_eq!(
            released(&from, &rec, "release").unwrap()["spec"],
            to["spec"]
        );
    }

    #[test]
    fn a_record_reaching_outside_the_held_part_is_refused() {
        let rec = |ops: &str| Record {
            intent: serde_json::from_str(ops).unwrap(),
            since: Timestamp::UNIX_EPOCH,
            reason: String::new(),
        };
        assert!(
            rec(r#"[{"op":"replace","path":"/spec/template/x","value":1}]"#)
                .check_scope(CalicoKind::DaemonSet)
                .is_ok()
        );
        assert!(
            rec(r#"[{"op":"replace","path":"/metadata","value":"x"}]"#)
                .check_scope(CalicoKind::DaemonSet)
                .is_err()
        );
        assert!(
            rec(r#"[{"op":"replace","path":"/spec/templateX","value":1}]"#)
                .check_scope(CalicoKind::DaemonSet)
                .is_err()
        );
        assert!(
            rec(r#"[{"op":"move","from":"/metadata/name","path":"/data/x"}]"#)
                .check_scope(CalicoKind::ConfigMap)
                .is_err()
        );
        assert!(
            rec(r#"[{"op":"add","path":"/data","value":{}}]"#)
                .check_scope(CalicoKind::ConfigMap)
                .is_ok()
        );
    }

    /// A DaemonSet whose calico-node container has `env` and an extra
    /// init container list.
    fn ds_env(env: &[(&str, &str)], init: &[&str], image: &str) -> Value {
        let env: Vec<Value> = env
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
        let init: Vec<Value> = init
            .iter()
            .map(|n| json!({"name": n, "image": "x"}))
            .collect();
        json!({
            "metadata": {"name": "calico-node", "namespace": "kube-system"},
            "spec": {"template": {"spec": {
                "initContainers": init,
                "containers": [{"name": "calico-node", "image": image, "env": env}]
            }}}
        })
    }

    /// The object after the API server applied our response's patch.
    fn held_after(kind: CalicoKind, old: &Value, new: &Value, rec: &Record) -> Value {
        let mut out = new.clone();
        json_patch::patch(&mut out, &hold_patch(kind, old, new, rec).unwrap().0).unwrap();
        out
    }

    const CTX: crate::calico::overlay::Context<'static> = crate::calico::overlay::Context::NONE;

    #[test]
    fn a_partial_reapply_while_held_joins_and_reproduces_the_intent() {
        let k = CalicoKind::DaemonSet;
        let overlay = ds_env(
            &[
                ("CALICO_IPV4POOL_VXLAN", "Always"),
                ("FELIX_VXLANENABLED", "true"),
                ("A", "1"),
            ],
            &[],
            "v1",
        );
        let native = ds_env(
            &[
                ("CALICO_IPV4POOL_IPIP", "Never"),
                ("FELIX_IPINIPENABLED", "false"),
                ("A", "1"),
            ],
            &["cleanup-routes"],
            "v1",
        );
        let rec = record(k, &overlay, &native);
        let held = held_after(k, &overlay, &native, &rec);
        let rec = Record::read(&held).unwrap().unwrap();
        // A second client-side apply: sets what the native manifest states,
        // cannot remove what only the overlay had.
        let hybrid = ds_env(
            &[
                ("CALICO_IPV4POOL_VXLAN", "Always"),
                ("FELIX_VXLANENABLED", "true"),
                ("A", "1"),
                ("CALICO_IPV4POOL_IPIP", "Never"),
                ("FELIX_IPINIPENABLED", "false"),
            ],
            &["cleanup-routes"],
            "v1",
        );
        let j = join(k, &held, &hybrid, &rec, CTX);
        let merged = j.merged.expect("the update touches the held switch");
        assert_eq!(
            merged["spec"], native["spec"],
            "merged back to the desired object"
        );
        // The intent recorded for it equals the first one.
        assert_eq!(
            intent_to(k, &held, merged.pointer("/spec/template")),
            rec.intent
        );
    }

    #[test]
    fn a_second_switch_adds_to_the_first() {
        let k = CalicoKind::DaemonSet;
        let base = ds_env(
            &[
                ("CALICO_IPV4POOL_IPIP", "Always"),
                ("FELIX_IPINIPENABLED", "true"),
            ],
            &[],
            "v1",
        );
        let first = ds_env(
            &[
                ("CALICO_IPV4POOL_IPIP", "Never"),
                ("FELIX_IPINIPENABLED", "true"),
            ],
            &[],
            "v1",
        );
        let rec = record(k, &base, &first);
        let held = held_after(k, &base, &first, &rec);
        let second = ds_env(
            &[
                ("CALICO_IPV4POOL_IPIP", "Always"),
                ("FELIX_IPINIPENABLED", "false"),
            ],
            &[],
            "v1",
        );
        let merged = join(k, &held, &second, &rec, CTX).merged.unwrap();
        let want = ds_env(
            &[
                ("CALICO_IPV4POOL_IPIP", "Never"),
                ("FELIX_IPINIPENABLED", "false"),
            ],
            &[],
            "v1",
        );
        assert_eq!(merged["spec"], want["spec"]);
        // The same field changed again: the later value wins.
        let again = ds_env(
            &[
                ("CALICO_IPV4POOL_IPIP", "CrossSubnet"),
                ("FELIX_IPINIPENABLED", "true"),
            ],
            &[],
            "v1",
        );
        let merged = join(k, &held, &again, &rec, CTX).merged.unwrap();
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
            json!("CrossSubnet")
        );
    }

    #[test]
    fn an_independent_update_goes_through_and_a_stale_record_is_reported() {
        let k = CalicoKind::DaemonSet;
        let base = ds_env(&[("CALICO_IPV4POOL_IPIP", "Always")], &[], "v1");
        let desired = ds_env(&[("CALICO_IPV4POOL_IPIP", "Never")], &[], "v1");
        let rec = record(k, &base, &desired);
        let held = held_after(k, &base, &desired, &rec);
        let bumped = ds_env(&[("CALICO_IPV4POOL_IPIP", "Always")], &[], "v2");
        let j = join(k, &held, &bumped, &rec, CTX);
        assert!(j.merged.is_none() && j.stale.is_none(), "{j:?}");
        // A record that no longer applies to the object as it is.
        let changed = ds_env(&[("CALICO_IPV4POOL_IPIP", "CrossSubnet")], &[], "v1");
        let j = join(k, &changed, &bumped, &rec, CTX);
        assert!(j.stale.is_some() && j.merged.is_none());
        assert!(j.describe(&rec).contains("no longer applied"));
    }

    #[test]
    fn the_pass_patch_writes_the_merged_part_and_clears_the_record() {
        let k = CalicoKind::IpPool;
        let new = json!({"metadata": {"annotations": {INTENT_ANNOTATION: "[]", "x": "y"}}, "spec": {"ipipMode": "Always"}});
        let target = json!({"ipipMode": "Never", "vxlanMode": "Never"});
        let mut out = new.clone();
        json_patch::patch(&mut out, &pass_patch(k, &new, Some(&target)).0).unwrap();
        assert_eq!(out["spec"], target);
        assert_eq!(out["metadata"]["annotations"], json!({"x": "y"}));
    }
}
