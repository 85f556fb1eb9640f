//! Keeps the route controller's `NetworkUnavailable` condition trustworthy.
//!
//! The gate trusts each Node's `NetworkUnavailable` condition as a cloud
//! route controller wrote it (`RouteCreated` / `NoRouteCreated`). Calico
//! writes the same condition type:
//!
//! - calico-node at start-up, late in its start (`False`, reason
//!   `CalicoIsUp`, "Calico is running on this node"), and from its shutdown
//!   hook (`True`, `CalicoIsDown`, "Calico is shutting down on this node"):
//!   `SetNodeNetworkUnavailableCondition` in projectcalico/calico
//!   `node/pkg/lifecycle/utils/utils.go`, called from
//!   `node/pkg/lifecycle/startup/startup.go` and
//!   `node/pkg/lifecycle/shutdown/shutdown.go`. Both send a strategic merge
//!   patch `{"status":{"conditions":[<one condition>]}}` to `nodes/status`,
//!   which replaces the condition of that type, route controller's or not.
//! - newer calico-kube-controllers when a calico-node pod is not Ready
//!   (`True`, `CalicoIsDown`, "Calico node pod is not Ready"):
//!   `kube-controllers/pkg/controllers/node/node_condition.go`, as its own
//!   ServiceAccount.
//!
//! So every restart of calico-node (which the release itself causes on
//! every node) overwrites `RouteCreated`: the gate then blocks until the
//! route controller writes it again, and a `True` write makes the node
//! controller taint the node `node.kubernetes.io/network-unavailable`.
//!
//! The webhook also receives UPDATEs of `nodes/status` made by calico-node's
//! user (selected by the registration's `matchConditions`, checked here
//! again) and, while the guard is on (or its state is unknown), answers with
//! a patch that keeps the route controller's condition ([`merge`]). Nothing
//! else of the update changes, and writes by anyone else are never changed.
//!
//! Everything here reads the objects as `serde_json::Value`: like the node
//! watch (`routes::RouteNode`), it must never fail on odd node JSON. A
//! condition list it cannot read is passed unchanged (and logged).

use std::time::Instant;

use kube::core::admission::{AdmissionResponse, Operation};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::cluster::routes::CONDITION;
use crate::metrics::{Decision, Metrics};
use crate::server::admission::{self, Review};

/// The user calico-node writes as (its ServiceAccount in Calico's manifests
/// and Gardener's).
pub const DEFAULT_CALICO_NODE_USER: &str = "system:serviceaccount:kube-system:calico-node";

/// Reasons only a route controller writes: Kubernetes' route controller
/// (and Gardener's aws-custom-route-controller) write `RouteCreated` with
/// `False` and `NoRouteCreated` with `True`. The configured
/// `--required-route-reason` counts too.
pub const ROUTE_CONTROLLER_REASONS: [&str; 2] = ["RouteCreated", "NoRouteCreated"];

/// How much of a value read from a request a message shows.
const MAX_TEXT: usize = 100;

/// What a write set the condition to (the first `NetworkUnavailable`
/// condition of the update that the old object did not have; both `None`
/// when the update removed the condition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub status: Option<String>,
    pub reason: Option<String>,
}

/// What was kept instead of the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The route controller's condition(s), restored as they were.
    RouteCondition {
        status: Option<String>,
        reason: Option<String>,
    },
    /// The node had no `NetworkUnavailable` condition; the write's `True`
    /// was dropped, so it still has none.
    NoCondition,
}

/// The decision for one update of a node's status.
#[derive(Debug, Clone, PartialEq)]
pub enum Merge {
    /// Admit the update as sent; why, in a few words.
    Pass(&'static str),
    /// Admit the update with `patch`: the `NetworkUnavailable` condition of
    /// the write is not applied, every other condition is as sent.
    Keep {
        patch: json_patch::Patch,
        kept: Kept,
        written: Written,
    },
    /// The conditions cannot be read: admit as sent (and log why).
    Unreadable(String),
}

/// The conditions of a Node (`old` or `new` names which, for messages): an
/// absent or null `status` or `status.conditions` is an empty list; any
/// other shape, or an entry that is not an object, is unreadable.
fn conditions<'a>(node: &'a Value, which: &str) -> Result<&'a [Value], String> {
    let status = match node.get("status") {
        None | Some(Value::Null) => return Ok(&[]),
        Some(Value::Object(s)) => s,
        Some(_) => return Err(format!("{which} status is not an object")),
    };
    match status.get("conditions") {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(list)) => match list.iter().position(|c| !c.is_object()) {
            Some(i) => Err(format!("{which} status.conditions[{i}] is not an object")),
            None => Ok(list),
        },
        Some(_) => Err(format!("{which} status.conditions is not a list")),
    }
}

fn is_network_unavailable(c: &Value) -> bool {
    c.get("type").and_then(Value::as_str) == Some(CONDITION)
}

fn text(c: &Value, field: &str) -> Option<String> {
    c.get(field).and_then(Value::as_str).map(clip)
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// The JSON patch that makes the new object's condition list `list`.
fn set_conditions(new: &Value, list: Vec<Value>) -> json_patch::Patch {
    let op = match new.get("status") {
        Some(Value::Object(s)) if s.get("conditions").is_some_and(Value::is_array) => {
            json!({"op": "replace", "path": "/status/conditions", "value": list})
        }
        // `add` on an existing member replaces it (RFC 6902 4.1), so a
        // null `conditions` is covered as well.
        Some(Value::Object(_)) => json!({"op": "add", "path": "/status/conditions", "value": list}),
        _ => json!({"op": "add", "path": "/status", "value": {"conditions": list}}),
    };
    serde_json::from_value(json!([op])).expect("a JSON patch of one operation")
}

/// What the update of a node's status by calico-node's user may do to the
/// `NetworkUnavailable` condition (`route_reasons`: the reasons that mean a
/// route controller wrote the old condition):
///
/// - the condition is not changed: pass;
/// - the old object has one written by a route controller (any of its
///   `NetworkUnavailable` conditions has a route reason): the old
///   condition(s) are restored, in place of the new ones (or at the end of
///   the list when the update removed them), every other condition as sent;
/// - the old object has none: a `True` write is dropped (the node must not
///   be tainted for Calico's restart), anything else (`False`) passes: it
///   never satisfies the gate, whose reason a route controller writes;
/// - the old condition is someone else's (Calico's own, say): pass.
pub fn merge(old: &Value, new: &Value, route_reasons: &[&str]) -> Merge {
    let old_list = match conditions(old, "oldObject") {
        Ok(l) => l,
        Err(e) => return Merge::Unreadable(e),
    };
    let new_list = match conditions(new, "object") {
        Ok(l) => l,
        Err(e) => return Merge::Unreadable(e),
    };
    let old_nu: Vec<&Value> = old_list
        .iter()
        .filter(|c| is_network_unavailable(c))
        .collect();
    let new_nu: Vec<&Value> = new_list
        .iter()
        .filter(|c| is_network_unavailable(c))
        .collect();
    if old_nu == new_nu {
        return Merge::Pass("NetworkUnavailable unchanged");
    }
    let written = new_nu
        .iter()
        .find(|c| !old_nu.contains(c))
        .map(|c| Written {
            status: text(c, "status"),
            reason: text(c, "reason"),
        })
        .unwrap_or_default();

    if old_nu.is_empty() {
        let is_true = |c: &Value| c.get("status").and_then(Value::as_str) == Some("True");
        if !new_nu.iter().any(|c| is_true(c)) {
            return Merge::Pass(
                "no NetworkUnavailable condition before, and this write is not True",
            );
        }
        let list = new_list
            .iter()
            .filter(|c| !(is_network_unavailable(c) && is_true(c)))
            .cloned()
            .collect();
        return Merge::Keep {
            patch: set_conditions(new, list),
            kept: Kept::NoCondition,
            written,
        };
    }

    let route = old_nu.iter().find(|c| {
        c.get("reason")
            .and_then(Value::as_str)
            .is_some_and(|r| route_reasons.contains(&r))
    });
    let Some(route) = route else {
        return Merge::Pass("the old NetworkUnavailable condition is not a route controller's");
    };
    let mut list = Vec::with_capacity(new_list.len() + old_nu.len());
    let mut restored = false;
    for c in new_list {
        if !is_network_unavailable(c) {
            list.push(c.clone());
        } else if !restored {
            list.extend(old_nu.iter().map(|&c| c.clone()));
            restored = true;
        }
    }
    if !restored {
        list.extend(old_nu.iter().map(|&c| c.clone()));
    }
    Merge::Keep {
        patch: set_conditions(new, list),
        kept: Kept::RouteCondition {
            status: text(route, "status"),
            reason: text(route, "reason"),
        },
        written,
    }
}

/// What happened to one review of a node's status, for the log and metrics.
#[derive(Debug, Clone)]
pub struct NodeOutcome {
    pub uid: String,
    pub node: String,
    pub user: String,
    pub dry_run: bool,
    pub decision: Decision,
    /// `kept` (the route condition restored), `dropped` (a True write onto
    /// a node without the condition), `passed`, `unreadable`, `ignored`
    /// (not a calico-node user, not a node status update, or the guard off)
    /// or `malformed`.
    pub verdict: &'static str,
    pub why: String,
    pub kept: Option<Kept>,
    pub written: Option<Written>,
}

impl NodeOutcome {
    pub fn is_kept(&self) -> bool {
        self.kept.is_some()
    }
}

/// The node-status part of the webhook: which users are calico-node.
#[derive(Debug, Clone)]
pub struct NodeStatusGuard {
    users: Vec<String>,
}

impl Default for NodeStatusGuard {
    fn default() -> Self {
        Self::new(vec![DEFAULT_CALICO_NODE_USER.to_string()])
    }
}

fn show(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("none")
}

impl NodeStatusGuard {
    pub fn new(users: Vec<String>) -> Self {
        Self { users }
    }

    pub fn users(&self) -> &[String] {
        &self.users
    }

    /// Answers one review body; always returns a response body, and always
    /// admits (this webhook never refuses a node's status).
    pub fn review(
        &self,
        cluster: &Cluster,
        metrics: &Metrics,
        body: &[u8],
    ) -> (Vec<u8>, NodeOutcome) {
        let started = Instant::now();
        let (resp, outcome) = match admission::decode(body) {
            Ok(review) => {
                let t = cluster.toggle.get();
                // Guard state unknown (toggle not synced) counts as on.
                let guard_on = !t.synced || t.guard;
                let mut reasons: Vec<&str> = ROUTE_CONTROLLER_REASONS.to_vec();
                reasons.push(&cluster.settings.required_reason);
                self.judge(&review, guard_on, &reasons)
            }
            Err((uid, error)) => {
                let why = error.to_string();
                let outcome = NodeOutcome {
                    uid: uid.clone().unwrap_or_default(),
                    node: String::new(),
                    user: String::new(),
                    dry_run: false,
                    decision: Decision::Error,
                    verdict: "malformed",
                    why: why.clone(),
                    kept: None,
                    written: None,
                };
                let resp = match uid {
                    // Admitted as sent: a node's status is never refused.
                    Some(uid) => {
                        let mut r = AdmissionResponse::invalid("");
                        r.uid = uid;
                        r.allowed = true;
                        r.result = Default::default();
                        r
                    }
                    // No uid to answer: the API server takes this as a
                    // failed call, which the registration ignores.
                    None => admission::error_response(None, &why),
                };
                (resp, outcome)
            }
        };
        metrics.review(
            "Node",
            outcome.decision,
            outcome.dry_run,
            started.elapsed().as_secs_f64(),
        );
        if outcome.is_kept() && !outcome.dry_run {
            metrics.node_condition_kept(outcome.written.as_ref().and_then(|w| w.reason.as_deref()));
        }
        (admission::encode(resp), outcome)
    }

    /// The answer to a decoded review (pure: `guard_on` and `route_reasons`
    /// come from the cluster).
    pub fn judge(
        &self,
        review: &Review,
        guard_on: bool,
        route_reasons: &[&str],
    ) -> (AdmissionResponse, NodeOutcome) {
        let req = &review.request;
        let user = req.user_info.username.clone().unwrap_or_default();
        let mut outcome = NodeOutcome {
            uid: req.uid.clone(),
            node: req.name.clone(),
            user: user.clone(),
            dry_run: req.dry_run,
            decision: Decision::Allowed,
            verdict: "ignored",
            why: String::new(),
            kept: None,
            written: None,
        };
        let allow = AdmissionResponse::from(req);
        let is_node_status = req.kind.group.is_empty()
            && req.kind.kind == "Node"
            && req.sub_resource.as_deref() == Some("status")
            && matches!(req.operation, Operation::Update);
        if !is_node_status {
            outcome.why = "not an update of a node's status".into();
            return (allow, outcome);
        }
        // Defense in depth: the registration sends only these users.
        if !self.users.contains(&user) {
            outcome.why = "not calico-node's user".into();
            return (allow, outcome);
        }
        if !guard_on {
            outcome.why = "guard off".into();
            return (allow, outcome);
        }
        let (Some(old), Some(new)) = (&review.old_object, &review.object) else {
            outcome.verdict = "unreadable";
            outcome.why = "an UPDATE review without object or oldObject".into();
            return (allow, outcome);
        };
        match merge(old, new, route_reasons) {
            Merge::Pass(why) => {
                outcome.verdict = "passed";
                outcome.why = why.into();
                (allow, outcome)
            }
            Merge::Unreadable(why) => {
                outcome.verdict = "unreadable";
                outcome.why = why;
                (allow, outcome)
            }
            Merge::Keep {
                patch,
                kept,
                written,
            } => {
                let warning = match &kept {
                    Kept::RouteCondition { status, reason } => {
                        outcome.verdict = "kept";
                        format!(
                            "overlay-switch-webhook: {CONDITION} of node {} kept as the route controller wrote it ({}, {}); this write's {}, {} was not applied",
                            clip(&req.name),
                            show(status),
                            show(reason),
                            show(&written.status),
                            show(&written.reason),
                        )
                    }
                    Kept::NoCondition => {
                        outcome.verdict = "dropped";
                        format!(
                            "overlay-switch-webhook: node {} has no {CONDITION} condition; this write's {}, {} was not applied (it would taint the node network-unavailable)",
                            clip(&req.name),
                            show(&written.status),
                            show(&written.reason),
                        )
                    }
                };
                outcome.why = warning.clone();
                outcome.kept = Some(kept);
                outcome.written = Some(written);
                let mut resp = allow.with_patch(patch).expect("a JSON patch serializes");
                resp.warnings = Some(vec![warning]);
                (resp, outcome)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REASONS: [&str; 3] = ["RouteCreated", "NoRouteCreated", "RouteCreated"];

    fn nu(status: &str, reason: &str) -> Value {
        json!({"type": "NetworkUnavailable", "status": status, "reason": reason,
               "message": format!("{reason} message"),
               "lastTransitionTime": "2026-01-01T00:00:00Z",
               "lastHeartbeatTime": "2026-01-01T00:00:00Z"})
    }

    fn ready(status: &str) -> Value {
        json!({"type": "Ready", "status": status, "reason": "KubeletReady"})
    }

    fn node(conditions: Vec<Value>) -> Value {
        json!({"metadata": {"name": "n"}, "status": {"conditions": conditions}})
    }

    /// The object as the API server would store it after the patch.
    fn apply(new: &Value, m: &Merge) -> Value {
        let mut v = new.clone();
        if let Merge::Keep { patch, .. } = m {
            json_patch::patch(&mut v, patch).unwrap();
        }
        v
    }

    fn nu_of(v: &Value) -> Vec<Value> {
        v.pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter(|c| is_network_unavailable(c))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        Pass,
        /// The old NetworkUnavailable conditions are what is stored.
        Restored,
        /// No NetworkUnavailable condition is stored.
        Dropped,
    }

    /// Every combination of old present/absent x new present/absent, True /
    /// False, and the reasons that matter.
    #[test]
    fn merge_table() {
        use Expect::*;
        let none: Option<(&str, &str)> = None;
        type Cond<'a> = Option<(&'a str, &'a str)>;
        let cases: Vec<(&str, Cond, Cond, Expect)> = vec![
            // old absent
            ("absent -> absent", none, none, Pass),
            (
                "absent -> True CalicoIsDown",
                none,
                Some(("True", "CalicoIsDown")),
                Dropped,
            ),
            (
                "absent -> False CalicoIsUp",
                none,
                Some(("False", "CalicoIsUp")),
                Pass,
            ),
            (
                "absent -> Unknown",
                none,
                Some(("Unknown", "CalicoIsUp")),
                Pass,
            ),
            (
                "absent -> True RouteCreated",
                none,
                Some(("True", "RouteCreated")),
                Dropped,
            ),
            // old: the route controller's, route created
            (
                "RouteCreated -> absent",
                Some(("False", "RouteCreated")),
                none,
                Restored,
            ),
            (
                "RouteCreated -> True CalicoIsDown",
                Some(("False", "RouteCreated")),
                Some(("True", "CalicoIsDown")),
                Restored,
            ),
            (
                "RouteCreated -> False CalicoIsUp",
                Some(("False", "RouteCreated")),
                Some(("False", "CalicoIsUp")),
                Restored,
            ),
            (
                "RouteCreated -> same",
                Some(("False", "RouteCreated")),
                Some(("False", "RouteCreated")),
                Pass,
            ),
            (
                "RouteCreated -> True RouteCreated",
                Some(("False", "RouteCreated")),
                Some(("True", "RouteCreated")),
                Restored,
            ),
            // old: the route controller's, no route
            (
                "NoRouteCreated -> absent",
                Some(("True", "NoRouteCreated")),
                none,
                Restored,
            ),
            (
                "NoRouteCreated -> False CalicoIsUp",
                Some(("True", "NoRouteCreated")),
                Some(("False", "CalicoIsUp")),
                Restored,
            ),
            (
                "NoRouteCreated -> True CalicoIsDown",
                Some(("True", "NoRouteCreated")),
                Some(("True", "CalicoIsDown")),
                Restored,
            ),
            (
                "NoRouteCreated -> same",
                Some(("True", "NoRouteCreated")),
                Some(("True", "NoRouteCreated")),
                Pass,
            ),
            // old: Calico's own (or anyone else's): not ours to keep
            (
                "CalicoIsUp -> True CalicoIsDown",
                Some(("False", "CalicoIsUp")),
                Some(("True", "CalicoIsDown")),
                Pass,
            ),
            (
                "CalicoIsDown -> False CalicoIsUp",
                Some(("True", "CalicoIsDown")),
                Some(("False", "CalicoIsUp")),
                Pass,
            ),
            (
                "CalicoIsUp -> absent",
                Some(("False", "CalicoIsUp")),
                none,
                Pass,
            ),
            (
                "other -> True CalicoIsDown",
                Some(("False", "SomethingElse")),
                Some(("True", "CalicoIsDown")),
                Pass,
            ),
            (
                "no reason -> True CalicoIsDown",
                Some(("False", "")),
                Some(("True", "CalicoIsDown")),
                Pass,
            ),
        ];
        for (name, old_c, new_c, expect) in cases {
            for others in [vec![], vec![ready("True")]] {
                let build = |c: Option<(&str, &str)>, r: &str| {
                    let mut l = others.clone();
                    if !l.is_empty() {
                        l[0] = ready(r);
                    }
                    l.extend(c.map(|(s, r)| nu(s, r)));
                    node(l)
                };
                let old = build(old_c, "True");
                // The update changes the Ready condition too (when there is one).
                let new = build(new_c, "False");
                let m = merge(&old, &new, &REASONS);
                let stored = apply(&new, &m);
                match expect {
                    Pass => assert!(matches!(m, Merge::Pass(_)), "{name}: {m:?}"),
                    Restored => {
                        assert!(
                            matches!(
                                m,
                                Merge::Keep {
                                    kept: Kept::RouteCondition { .. },
                                    ..
                                }
                            ),
                            "{name}: {m:?}"
                        );
                        assert_eq!(nu_of(&stored), nu_of(&old), "{name}");
                    }
                    Dropped => {
                        assert!(
                            matches!(
                                m,
                                Merge::Keep {
                                    kept: Kept::NoCondition,
                                    ..
                                }
                            ),
                            "{name}: {m:?}"
                        );
                        assert!(nu_of(&stored).is_empty(), "{name}");
                    }
                }
                // Every other condition is as sent.
                let others_of = |v: &Value| -> Vec<Value> {
                    v.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .map(|l| {
                            l.iter()
                                .filter(|c| !is_network_unavailable(c))
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default()
                };
                assert_eq!(others_of(&stored), others_of(&new), "{name}");
                if expect == Pass {
                    assert_eq!(stored, new, "{name}");
                }
            }
        }
    }

    #[test]
    fn the_configured_reason_counts_as_a_route_controllers() {
        let old = node(vec![nu("False", "CustomRoute")]);
        let new = node(vec![nu("False", "CalicoIsUp")]);
        assert!(matches!(merge(&old, &new, &REASONS), Merge::Pass(_)));
        let m = merge(
            &old,
            &new,
            &["RouteCreated", "NoRouteCreated", "CustomRoute"],
        );
        assert_eq!(nu_of(&apply(&new, &m)), vec![nu("False", "CustomRoute")]);
    }

    #[test]
    fn what_was_written_and_kept_is_reported() {
        let old = node(vec![nu("False", "RouteCreated")]);
        let new = node(vec![nu("True", "CalicoIsDown")]);
        let Merge::Keep { kept, written, .. } = merge(&old, &new, &REASONS) else {
            panic!()
        };
        assert_eq!(
            kept,
            Kept::RouteCondition {
                status: Some("False".into()),
                reason: Some("RouteCreated".into())
            }
        );
        assert_eq!(
            written,
            Written {
                status: Some("True".into()),
                reason: Some("CalicoIsDown".into())
            }
        );
        // A removal writes nothing.
        let Merge::Keep { written, .. } = merge(&old, &node(vec![]), &REASONS) else {
            panic!()
        };
        assert_eq!(written, Written::default());
    }

    #[test]
    fn the_old_condition_takes_the_place_of_the_new_one() {
        let old = node(vec![ready("True"), nu("False", "RouteCreated")]);
        let new = node(vec![
            nu("True", "CalicoIsDown"),
            ready("False"),
            json!({"type": "X", "status": "True"}),
        ]);
        let stored = apply(&new, &merge(&old, &new, &REASONS));
        assert_eq!(
            stored["status"]["conditions"],
            json!([nu("False", "RouteCreated"), ready("False"), {"type": "X", "status": "True"}])
        );
    }

    #[test]
    fn several_old_conditions_are_restored_as_a_set() {
        let old = node(vec![nu("False", "RouteCreated"), nu("False", "CalicoIsUp")]);
        let new = node(vec![nu("True", "CalicoIsDown")]);
        let stored = apply(&new, &merge(&old, &new, &REASONS));
        assert_eq!(nu_of(&stored), nu_of(&old));
        // A True among several new ones is dropped, the rest passes.
        let old = node(vec![]);
        let new = node(vec![nu("False", "CalicoIsUp"), nu("True", "CalicoIsDown")]);
        let stored = apply(&new, &merge(&old, &new, &REASONS));
        assert_eq!(nu_of(&stored), vec![nu("False", "CalicoIsUp")]);
    }

    #[test]
    fn a_status_without_conditions_gets_them_back() {
        let old = node(vec![nu("False", "RouteCreated")]);
        for new in [
            json!({"metadata": {"name": "n"}}),
            json!({"metadata": {"name": "n"}, "status": null}),
            json!({"metadata": {"name": "n"}, "status": {}}),
            json!({"metadata": {"name": "n"}, "status": {"conditions": null}}),
            json!({"metadata": {"name": "n"}, "status": {"conditions": []}}),
        ] {
            let stored = apply(&new, &merge(&old, &new, &REASONS));
            assert_eq!(nu_of(&stored), vec![nu("False", "RouteCreated")], "{new}");
        }
    }

    #[test]
    fn odd_json_passes_unchanged() {
        let good = node(vec![nu("False", "RouteCreated")]);
        let calico = node(vec![nu("True", "CalicoIsDown")]);
        for bad in [
            json!({"status": "x"}),
            json!({"status": {"conditions": {"type": "NetworkUnavailable"}}}),
            json!({"status": {"conditions": [1, 2]}}),
            json!({"status": {"conditions": [nu("False", "RouteCreated"), null]}}),
        ] {
            assert!(
                matches!(merge(&bad, &calico, &REASONS), Merge::Unreadable(_)),
                "{bad}"
            );
            assert!(
                matches!(merge(&good, &bad, &REASONS), Merge::Unreadable(_)),
                "{bad}"
            );
        }
        // Odd values inside a condition are read as what they are.
        let weird = node(vec![
            json!({"type": "NetworkUnavailable", "status": 1, "reason": ["RouteCreated"],
            "lastTransitionTime": "9999-12-31T23:59:59Z"}),
        ]);
        assert!(matches!(merge(&weird, &calico, &REASONS), Merge::Pass(_)));
        let typeless = node(vec![json!({"type": 5, "status": "True"})]);
        assert!(matches!(
            merge(&good, &typeless, &REASONS),
            Merge::Keep { .. }
        ));
        let m = merge(
            &node(vec![]),
            &node(vec![json!({"type": "NetworkUnavailable", "status": true})]),
            &REASONS,
        );
        assert!(matches!(m, Merge::Pass(_)), "{m:?}");
    }

    fn review(user: &str, sub_resource: Option<&str>, old: Value, new: Value) -> Review {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Node"},
                "resource": {"group": "", "version": "v1", "resource": "nodes"},
                "subResource": sub_resource, "name": "node-a", "operation": "UPDATE",
                "userInfo": {"username": user}, "object": new, "oldObject": old, "dryRun": false
            }
        });
        admission::decode(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn only_calico_nodes_status_updates_are_changed_and_only_with_the_guard_on() {
        let g = NodeStatusGuard::new(vec![
            DEFAULT_CALICO_NODE_USER.into(),
            "system:serviceaccount:kube-system:calico-kube-controllers".into(),
        ]);
        let old = node(vec![nu("False", "RouteCreated")]);
        let new = node(vec![nu("True", "CalicoIsDown")]);
        let cases = [
            (DEFAULT_CALICO_NODE_USER, Some("status"), true, "kept"),
            (
                "system:serviceaccount:kube-system:calico-kube-controllers",
                Some("status"),
                true,
                "kept",
            ),
            (DEFAULT_CALICO_NODE_USER, Some("status"), false, "ignored"),
            (DEFAULT_CALICO_NODE_USER, None, true, "ignored"),
            ("system:node:node-a", Some("status"), true, "ignored"),
            (
                "system:serviceaccount:kube-system:calico-node-x",
                Some("status"),
                true,
                "ignored",
            ),
            ("", Some("status"), true, "ignored"),
        ];
        for (user, sub, guard, verdict) in cases {
            let (resp, o) = g.judge(
                &review(user, sub, old.clone(), new.clone()),
                guard,
                &REASONS,
            );
            assert!(resp.allowed);
            assert_eq!(o.verdict, verdict, "{user} {sub:?} {guard}");
            assert_eq!(resp.patch.is_some(), verdict == "kept", "{user}");
            assert_eq!(resp.warnings.is_some(), verdict == "kept", "{user}");
        }
    }

    #[test]
    fn a_kept_write_says_so_in_a_warning() {
        let g = NodeStatusGuard::default();
        let (resp, o) = g.judge(
            &review(
                DEFAULT_CALICO_NODE_USER,
                Some("status"),
                node(vec![]),
                node(vec![nu("True", "CalicoIsDown")]),
            ),
            true,
            &REASONS,
        );
        assert_eq!(o.verdict, "dropped");
        let w = &resp.warnings.unwrap()[0];
        assert!(
            w.contains("node node-a has no NetworkUnavailable condition"),
            "{w}"
        );
        assert!(w.contains("True, CalicoIsDown was not applied"), "{w}");
    }

    #[test]
    fn every_review_is_admitted_even_a_malformed_one() {
        let cluster = Cluster::new(Default::default());
        let (_, metrics) = crate::metrics::registry();
        let g = NodeStatusGuard::default();
        let (body, o) = g.review(&cluster, &metrics, br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-9","kind":{"group":"","version":"v1","kind":"Node"},"resource":{"group":"","version":"v1","resource":"nodes"},"name":"n","operation":"UPDATE","userInfo":{},"object":[1]}}"#);
        assert_eq!(o.verdict, "malformed");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["uid"], "u-9");
        assert_eq!(v["response"]["allowed"], true);
        // The toggle has not synced: the guard counts as on.
        let r = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-2", "kind": {"group": "", "version": "v1", "kind": "Node"},
                "resource": {"group": "", "version": "v1", "resource": "nodes"},
                "subResource": "status", "name": "node-a", "operation": "UPDATE",
                "userInfo": {"username": DEFAULT_CALICO_NODE_USER},
                "object": node(vec![nu("False", "CalicoIsUp")]),
                "oldObject": node(vec![nu("False", "RouteCreated")]),
            }
        });
        let (body, o) = g.review(&cluster, &metrics, &serde_json::to_vec(&r).unwrap());
        assert_eq!(o.verdict, "kept");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
    }
}
