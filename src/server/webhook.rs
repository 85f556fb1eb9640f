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

impl Webhook {
    /// Answers one review body; always returns a response body.
    pub fn review(&self, body: &[u8]) -> (Vec<u8>, Outcome) {
        let started = Instant::now();
        let (resp, outcome) = match admission::decode(body) {
            Ok(review) => self.judge(&review, Timestamp::now()),
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
    /// caches it reads and the local-hold note).
    pub fn judge(&self, review: &Review, now: Timestamp) -> (AdmissionResponse, Outcome) {
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
            return self.judge_pool_deletion(review, now, outcome, allow);
        }
        // CREATE and CONNECT are never held; other objects get no patch.
        let (Some(kind), Operation::Update) = (calico, &req.operation) else {
            return (allow, outcome);
        };
        let (Some(old), Some(new)) = (&review.old_object, &review.object) else {
            outcome.decision = Decision::Error;
            outcome.verdict = "malformed";
            let msg = "an UPDATE review must carry object and oldObject";
            outcome.message = Some(msg.into());
            return (
                admission::error_response(Some(req.uid.clone()), msg),
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
                let resp = allow.deny(msg);
                return (resp, outcome);
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
        let with_patch = |resp: AdmissionResponse, patch: json_patch::Patch| {
            if patch.0.is_empty() {
                resp
            } else {
                resp.with_patch(patch).expect("a JSON patch serializes")
            }
        };
        let (mut resp, outcome) = match verdict {
            // (strips a stray action marker, if any)
            // Nothing held here: a record or action marker the update brings
            // along (a copied manifest, a planted annotation) is removed.
            Verdict::Admit => (with_patch(allow, hold::clear_record_patch(new)), outcome),
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
                (with_patch(allow, patch), outcome)
            }
            Verdict::Cancel => {
                outcome.verdict = "cancelled";
                if !req.dry_run {
                    self.cluster.held.forget_local_hold(&key);
                }
                (with_patch(allow, hold::clear_record_patch(new)), outcome)
            }
            Verdict::KeepRecord => {
                outcome.verdict = "pending";
                let mut resp = with_patch(allow, hold::keep_record_patch(old, new));
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
                (resp, outcome)
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
                let patch = match hold::hold_patch(kind, old, new, &record) {
                    Ok(p) => p,
                    Err(e) => {
                        // Cannot record the intent: refuse rather than lose it.
                        outcome.decision = Decision::Error;
                        outcome.verdict = "refused";
                        let msg = format!(
                            "overlay switch must be held ({why}) but cannot be recorded: {e}"
                        );
                        outcome.message = Some(msg.clone());
                        return (allow.deny(msg), outcome);
                    }
                };
                outcome.decision = Decision::Held;
                outcome.verdict = "held";
                outcome.message = Some(format!("{switch}: {why}"));
                if !req.dry_run {
                    self.cluster.held.note_local_hold(key);
                }
                let mut resp = with_patch(allow, patch);
                let mut warnings = vec![format!("overlay switch held: {why}")];
                if let Some(j) = &joined {
                    warnings.push(j.describe(&record));
                }
                resp.warnings = Some(warnings);
                (resp, outcome)
            }
        };
        if let Some(w) = damaged {
            resp.warnings.get_or_insert_with(Vec::new).push(w);
        }
        // A patch that does not apply to the object would fail the request
        // with an unclear API server error: refuse it with a clear one
        // instead (nothing is changed, nothing lost). Found by fuzzing: an
        // object whose metadata or held part is not an object.
        if let Some(why) = resp.patch.as_deref().and_then(|p| patch_misfit(p, new)) {
            let mut outcome = outcome;
            outcome.decision = Decision::Error;
            outcome.verdict = "refused";
            let msg = format!(
                "overlay-switch-webhook cannot change this object as it must ({why}); the object is not what a {} should look like",
                req.kind.kind
            );
            outcome.message = Some(msg.clone());
            return (AdmissionResponse::from(req).deny(msg), outcome);
        }
        (resp, outcome)
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

/// Why the serialized JSON patch `patch` does not apply to `object` (`None`
/// when it does).
fn patch_misfit(patch: &[u8], object: &serde_json::Value) -> Option<String> {
    let patch: json_patch::Patch = match serde_json::from_slice(patch) {
        Ok(p) => p,
        Err(e) => return Some(format!("the patch cannot be read: {e}")),
    };
    let mut copy = object.clone();
    json_patch::patch(&mut copy, &patch)
        .err()
        .map(|e| e.to_string())
}
