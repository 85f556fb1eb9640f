//! The admission pipeline of one cluster:
//! decode -> Calico object? -> overlay reading -> gate -> response.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::core::admission::{AdmissionResponse, Operation};

use crate::calico::overlay;
use crate::cluster::Cluster;
use crate::cluster::gate::{self, Situation, Verdict};
use crate::cluster::held::ObjectKey;
use crate::cluster::hold::{self, Record};
use crate::cluster::toggle::CANCEL_ANNOTATION;
use crate::metrics::{Decision, Metrics};
use crate::server::admission::{self, Review};

/// What happened to one review, for the log line, metrics and events.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub uid: String,
    pub kind: String,
    pub object: String,
    pub operation: &'static str,
    pub dry_run: bool,
    pub decision: Decision,
    pub verdict: &'static str,
    /// Why, when held or refused.
    pub message: Option<String>,
    /// The Calico object, and its uid, for events: only an object its
    /// watch has shown (a review about another makes no Event).
    pub key: Option<ObjectKey>,
    pub object_uid: Option<String>,
}

pub struct Webhook {
    pub cluster: Arc<Cluster>,
    pub metrics: Metrics,
}

/// What an answer changes in the object.
enum Change {
    Patch(json_patch::Patch),
    /// The hold: the old object's held part of this kind (moved out of the
    /// review by `judge`, not copied) and the record's annotations.
    Hold(overlay::CalicoKind, [(&'static str, String); 3]),
}

impl Webhook {
    /// Answers one review body; always returns a response body.
    pub fn review(&self, body: &[u8]) -> (Vec<u8>, Outcome) {
        let started = Instant::now();
        let (resp, outcome) = match admission::decode(body) {
            Ok(review) => self.judge(review, Timestamp::now()),
            Err((uid, error)) => {
                let message = error.to_string();
                let outcome = Outcome {
                    uid: uid.clone().unwrap_or_default(),
                    kind: "unknown".into(),
                    object: String::new(),
                    operation: "",
                    dry_run: false,
                    decision: Decision::Error,
                    verdict: "malformed",
                    message: Some(message.clone()),
                    key: None,
                    object_uid: None,
                };
                (admission::error_response(uid, &message), outcome)
            }
        };
        let bytes = admission::encode(resp);
        self.metrics.review(
            &outcome.kind,
            outcome.decision,
            outcome.dry_run,
            started.elapsed().as_secs_f64(),
        );
        (bytes, outcome)
    }

    /// The decision for a decoded review at time `now` (pure but for the
    /// caches it reads and the local-hold note). The review is consumed: a
    /// patch is checked by applying it to the object itself, not a copy.
    pub fn judge(&self, mut review: Review, now: Timestamp) -> (AdmissionResponse, Outcome) {
        let (resp, change, outcome) = self.decide(&review, now);
        let patch = match change {
            Change::Patch(p) => p,
            Change::Hold(kind, annotations) => {
                // The old object's held part goes into the patch as it is:
                // the review is ours, nothing else reads it.
                let old_part = review
                    .old_object
                    .as_mut()
                    .and_then(|o| o.pointer_mut(hold::held_pointer(kind)))
                    .map(serde_json::Value::take);
                let new = review.object.as_ref().expect("a held review has an object");
                hold::hold_patch_from(kind, old_part, new, annotations)
            }
        };
        if patch.0.is_empty() {
            return (resp, outcome);
        }
        // A patch that does not apply to the object would fail the request
        // with an unclear API server error: refuse it with a clear one
        // instead (nothing is changed, nothing lost). Found by fuzzing: an
        // object whose metadata or held part is not an object.
        let applies = match review.object.as_mut() {
            Some(object) => json_patch::patch(object, &shape_of(&patch)).map_err(|e| e.to_string()),
            None => Err("the review carries no object".into()),
        };
        if let Err(why) = applies {
            let mut outcome = outcome;
            outcome.decision = Decision::Error;
            outcome.verdict = "refused";
            let msg = format!(
                "overlay-switch-webhook cannot change this object as it must ({why}); the object is not what a {} should look like",
                review.request.kind.kind
            );
            outcome.message = Some(msg.clone());
            return (AdmissionResponse::from(&review.request).deny(msg), outcome);
        }
        let resp = resp.with_patch(patch).expect("a JSON patch serializes");
        (resp, outcome)
    }

    /// The decision, and the change to the object it answers with.
    fn decide(&self, review: &Review, now: Timestamp) -> (AdmissionResponse, Change, Outcome) {
        let no_patch = || Change::Patch(json_patch::Patch(Vec::new()));
        let req = &review.request;
        let settings = &self.cluster.settings;
        let mut outcome = Outcome {
            uid: req.uid.clone(),
            kind: req.kind.kind.clone(),
            object: review.namespaced_name(),
            operation: review.operation(),
            dry_run: req.dry_run,
            decision: Decision::Allowed,
            verdict: "admit",
            message: None,
            key: None,
            object_uid: None,
        };
        let allow = AdmissionResponse::from(req);
        let calico = settings.identify(
            &req.kind.group,
            &req.kind.version,
            &req.kind.kind,
            req.namespace.as_deref(),
            &req.name,
        );
        // A DELETE of an IPPool that still encapsulates switches its pods
        // to native routing without any UPDATE: refused while the gate is
        // closed (it cannot be held by a patch).
        if let (Some(k), Operation::Delete) = (calico, &req.operation)
            && k.is_pool()
        {
            let (resp, outcome) = self.judge_pool_deletion(review, now, outcome, allow);
            return (resp, no_patch(), outcome);
        }
        // CREATE and CONNECT are never held; other objects get no patch.
        let (Some(kind), Operation::Update) = (calico, &req.operation) else {
            return (allow, no_patch(), outcome);
        };
        let (Some(old), Some(new)) = (&review.old_object, &review.object) else {
            outcome.decision = Decision::Error;
            outcome.verdict = "malformed";
            let msg = "an UPDATE review must carry object and oldObject";
            outcome.message = Some(msg.into());
            return (
                admission::error_response(Some(req.uid.clone()), msg),
                no_patch(),
                outcome,
            );
        };

        let toggle = self.cluster.toggle.get();
        // A record that cannot be read cannot be released either: it is
        // ignored, and the response says so (never silently).
        let (old_record, damaged) = match Record::read(old) {
            Ok(r) => (r, None),
            Err(e) => (
                None,
                Some(format!(
                    "overlay switch record on this object is damaged and is ignored: {e}"
                )),
            ),
        };
        // The release controller's markers count only from its own user
        // (when known) and only on the write it makes; anything else is an
        // ordinary update (and the marker is stripped).
        let from_us = match self.cluster.own_user.get() {
            Some(me) => req.user_info.username.as_deref() == Some(me.as_str()),
            None => true,
        };
        let action = hold::action(new).filter(|a| from_us && hold::action_fits(kind, old, new, a));
        // While a switch is held on this object, an update by anyone but the
        // release controller is judged together with it.
        let pending = old_record.as_ref().filter(|_| action.is_none());
        let detected = self.cluster.config_map.with_config_map(|config_map| {
            self.cluster.calico_node.with(|calico_node| {
                let ctx = overlay::Context {
                    config_map,
                    calico_node,
                };
                let joined = pending.map(|r| hold::join(kind, old, new, r, ctx));
                let judged = joined
                    .as_ref()
                    .and_then(|j| j.merged.as_ref())
                    .unwrap_or(new);
                overlay::detect_switch(kind, old, judged, ctx).map(|s| (s, joined))
            })
        });
        let (switch, joined) = match detected {
            Ok(s) => s,
            Err(e) if toggle.synced && !toggle.guard => {
                // Guard off: not ours to judge.
                tracing::debug!(error = %e, "unreadable overlay setting, guard off");
                (None, None)
            }
            Err(e) => {
                outcome.decision = Decision::Error;
                outcome.verdict = "refused";
                let msg = format!(
                    "cannot tell whether this update of {} {} switches the overlay off: {e}",
                    req.kind.kind,
                    review.namespaced_name()
                );
                outcome.message = Some(msg.clone());
                return (allow.deny(msg), no_patch(), outcome);
            }
        };
        let joins = joined.as_ref().is_some_and(|j| j.merged.is_some());
        // The held part the update asks for, merged with what was held.
        let target = joined
            .as_ref()
            .and_then(|j| j.merged.as_ref())
            .and_then(|m| m.pointer(hold::held_pointer(kind)));

        let key = settings.key(kind, &req.name);
        outcome.key = self.cluster.held.has_seen(&key).then(|| key.clone());
        outcome.object_uid = old
            .pointer("/metadata/uid")
            .and_then(serde_json::Value::as_str)
            .map(String::from);
        let routes = self.cluster.routes.snapshot(settings.max_named_nodes);
        let others = self.cluster.held.others(&key);
        let old_has_record = old_record.is_some();
        let situation = Situation {
            toggle,
            toggle_unknown: self.cluster.toggle.unknown_reason(),
            routes: &routes,
            settle: settings.settle,
            now,
            is_switch: switch.is_some(),
            old_has_record,
            joins_held: joins,
            others_held: others.as_deref(),
            action,
        };
        let verdict = gate::decide(&situation);
        let (mut resp, change, outcome) = match verdict {
            // (strips a stray action marker, if any)
            // Nothing held here: a record or action marker the update brings
            // along (a copied manifest, a planted annotation) is removed.
            Verdict::Admit => (allow, Change::Patch(hold::clear_record_patch(new)), outcome),
            Verdict::Pass { released } => {
                outcome.verdict = if released { "released" } else { "passed" };
                if !req.dry_run {
                    self.cluster.held.forget_local_hold(&key);
                }
                if let Some(s) = &switch {
                    outcome.message = Some(s.to_string());
                }
                let patch = if joins {
                    hold::pass_patch(kind, new, target)
                } else {
                    hold::clear_record_patch(new)
                };
                (allow, Change::Patch(patch), outcome)
            }
            Verdict::Cancel => {
                outcome.verdict = "cancelled";
                if !req.dry_run {
                    self.cluster.held.forget_local_hold(&key);
                }
                (allow, Change::Patch(hold::clear_record_patch(new)), outcome)
            }
            Verdict::KeepRecord => {
                outcome.verdict = "pending";
                let mut resp = allow;
                let r = old_record.as_ref().expect("KeepRecord needs a record");
                let state = if toggle.synced && !toggle.guard {
                    "the guard is off; it is applied once every node has its route".to_string()
                } else {
                    match gate::routes_gate(&routes, settings.settle, now) {
                        gate::Gate::Closed(why) => why,
                        gate::Gate::Open => {
                            "every node has its route; the release controller applies it now".into()
                        }
                    }
                };
                let warning = format!(
                    "overlay switch pending since {} ({state}); this update went through and keeps it; cancel with: kubectl annotate namespace {} {CANCEL_ANNOTATION}=true",
                    hold::format_time(r.since),
                    settings.calico_namespace
                );
                resp.warnings = Some(vec![warning]);
                (
                    resp,
                    Change::Patch(hold::keep_record_patch(old, new)),
                    outcome,
                )
            }
            Verdict::Hold(why) => {
                let switch = switch.expect("only switches are held");
                // Unknown state: say why it is unknown (a broken watch, a
                // cluster that cannot be reached).
                let why = match self.cluster.health.problem() {
                    Some(problem) if !self.cluster.synced() => format!("{why}; {problem}"),
                    _ => why,
                };
                let since = old_record.as_ref().map_or(now, |r| r.since);
                let record = Record {
                    intent: match &joined {
                        Some(j) if j.merged.is_some() => hold::intent_to(kind, old, target),
                        _ => hold::intent(kind, old, new),
                    },
                    since,
                    reason: why.clone(),
                };
                let annotations = match record.annotation_values() {
                    Ok(a) => a,
                    Err(e) => {
                        // Cannot record the intent: refuse rather than lose it.
                        outcome.decision = Decision::Error;
                        outcome.verdict = "refused";
                        let msg = format!(
                            "overlay switch must be held ({why}) but cannot be recorded: {e}"
                        );
                        outcome.message = Some(msg.clone());
                        return (allow.deny(msg), no_patch(), outcome);
                    }
                };
                outcome.decision = Decision::Held;
                outcome.verdict = "held";
                outcome.message = Some(format!("{switch}: {why}"));
                if !req.dry_run {
                    self.cluster.held.note_local_hold(key);
                }
                let mut resp = allow;
                let mut warnings = vec![format!("overlay switch held: {why}")];
                if let Some(j) = &joined {
                    warnings.push(j.describe(&record));
                }
                resp.warnings = Some(warnings);
                (resp, Change::Hold(kind, annotations), outcome)
            }
        };
        if let Some(w) = damaged {
            resp.warnings.get_or_insert_with(Vec::new).push(w);
        }
        (resp, change, outcome)
    }
}

impl Webhook {
    /// A DELETE of an IPPool: allowed, or refused with what to do.
    fn judge_pool_deletion(
        &self,
        review: &Review,
        now: Timestamp,
        mut outcome: Outcome,
        allow: AdmissionResponse,
    ) -> (AdmissionResponse, Outcome) {
        let req = &review.request;
        let settings = &self.cluster.settings;
        let name = gate::bounded_list(std::slice::from_ref(&req.name), 1);
        let Some(old) = &review.old_object else {
            outcome.decision = Decision::Error;
            outcome.verdict = "malformed";
            let msg = "a DELETE review of an IPPool must carry oldObject (the pool being deleted)";
            outcome.message = Some(msg.into());
            return (allow.deny(msg), outcome);
        };
        let encapsulation = overlay::pool_encapsulation(old);
        let forced = old
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(hold::FORCE_DELETE_ANNOTATION))
            .and_then(serde_json::Value::as_str)
            == Some("true");
        let routes = self.cluster.routes.snapshot(settings.max_named_nodes);
        let deletion = gate::PoolDeletion {
            toggle: self.cluster.toggle.get(),
            toggle_unknown: self.cluster.toggle.unknown_reason(),
            routes: &routes,
            settle: settings.settle,
            now,
            encapsulates: encapsulation.is_some(),
            forced,
        };
        match gate::decide_pool_deletion(&deletion) {
            Ok(()) => {
                if forced && encapsulation.is_some() {
                    outcome.verdict = "forced";
                    outcome.message = Some(format!(
                        "deletion of IPPool {name} ({}) forced by its annotation",
                        encapsulation.unwrap_or_default()
                    ));
                }
                (allow, outcome)
            }
            Err(why) => {
                let why = match self.cluster.health.problem() {
                    Some(problem) if !self.cluster.synced() => format!("{why}; {problem}"),
                    _ => why,
                };
                let msg = format!(
                    "IPPool {name} still encapsulates ({}): deleting it now would move the pods that have addresses from it to native routing while {why}. Wait until every node has its route and delete it again; to delete it anyway, first run: kubectl annotate ippool {name} {}=true",
                    encapsulation.unwrap_or_default(),
                    hold::FORCE_DELETE_ANNOTATION
                );
                outcome.decision = Decision::Refused;
                outcome.verdict = "refused";
                outcome.message = Some(msg.clone());
                (allow.deny(msg), outcome)
            }
        }
    }
}

/// `patch` with the value of every `add` and `replace` that no later op
/// reaches into set to `null`: it applies to an object exactly when
/// `patch` does (whether an op applies depends on the containers along its
/// path, and on the values a `test` compares, never on a value no later op
/// reads), without copying the large values (a whole pod template).
fn shape_of(patch: &json_patch::Patch) -> json_patch::Patch {
    use json_patch::PatchOperation as Op;
    let ops = &patch.0;
    // Paths later ops read: their own path and, for move/copy, `from`.
    let read_under = |i: usize, path: &str| {
        // An append (`-`) gives no index a later op could name: kept.
        path.ends_with("/-")
            || ops[i + 1..].iter().any(|later| {
                let mut paths = vec![later.path().as_str()];
                match later {
                    Op::Move(m) => paths.push(m.from.as_str()),
                    Op::Copy(c) => paths.push(c.from.as_str()),
                    _ => {}
                }
                paths
                    .iter()
                    .any(|p| *p == path || p.strip_prefix(path).is_some_and(|r| r.starts_with('/')))
            })
    };
    let ops = ops
        .iter()
        .enumerate()
        .map(|(i, op)| match op {
            Op::Add(a) if !read_under(i, a.path.as_str()) => Op::Add(json_patch::AddOperation {
                path: a.path.clone(),
                value: serde_json::Value::Null,
            }),
            Op::Replace(r) if !read_under(i, r.path.as_str()) => {
                Op::Replace(json_patch::ReplaceOperation {
                    path: r.path.clone(),
                    value: serde_json::Value::Null,
                })
            }
            other => other.clone(),
        })
        .collect();
    json_patch::Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::shape_of;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// Small documents whose containers are sometimes not containers.
    fn doc() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![Just(Value::Null), Just(json!("s")), Just(json!(1))];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(prop_oneof![Just("a"), Just("b")], inner, 0..3)
                    .prop_map(|m| json!(m)),
            ]
        })
    }

    fn op() -> impl Strategy<Value = Value> {
        let path = prop::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just("0"), Just("-")],
            0..4,
        )
        .prop_map(|t| t.iter().map(|t| format!("/{t}")).collect::<String>());
        (
            prop_oneof![Just("add"), Just("replace"), Just("remove"), Just("test")],
            path,
            doc(),
        )
            .prop_map(|(op, path, value)| json!({"op": op, "path": path, "value": value}))
    }

    proptest! {
        /// The shape applies exactly where the patch does.
        #[test]
        fn the_shape_of_a_patch_applies_where_the_patch_does(
            d in doc(), ops in prop::collection::vec(op(), 1..5)
        ) {
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
            let (mut a, mut b) = (d.clone(), d);
            prop_assert_eq!(
                json_patch::patch(&mut a, &patch).is_ok(),
                json_patch::patch(&mut b, &shape_of(&patch)).is_ok()
            );
        }
    }

    #[test]
    fn the_shape_drops_values_no_later_op_reads() {
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "replace", "path": "/spec/template", "value": {"big": [1, 2, 3]}},
            {"op": "add", "path": "/metadata/annotations", "value": {}},
            {"op": "add", "path": "/metadata/annotations/k", "value": "v"}
        ]))
        .unwrap();
        let shape = serde_json::to_value(shape_of(&patch)).unwrap();
        assert_eq!(shape[0]["value"], Value::Null);
        assert_eq!(shape[1]["value"], json!({}), "a later op adds into it");
        assert_eq!(shape[2]["value"], Value::Null);
    }
}
