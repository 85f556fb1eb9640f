//! `overlay-switch-webhook status --fix-conditions [--apply]`: a one-off
//! cleanup of the `NetworkUnavailable` conditions Calico wrote before the
//! webhook kept them (`CalicoIsUp`, `CalicoIsDown`), so that the route
//! controller writes its own and the gate can count the node.
//!
//! Dry by default: it lists them. With `--apply` it removes each with a
//! JSON patch on `nodes/status` that first tests the condition is still
//! exactly the one listed (so a condition the route controller wrote
//! meanwhile is never removed). Needs `list` on nodes and `patch` on
//! `nodes/status` (the operator's, not the server's ServiceAccount).
//!
//! Nodes are read as JSON (like the node watch, one node's odd status must
//! not fail the command): a node whose conditions cannot be read is skipped.

use kube::api::{ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cluster::routes::CONDITION;

/// The reasons Calico writes (`nodestatus` in projectcalico/calico:
/// `CalicoIsUp` from calico-node's start, `CalicoIsDown` from its shutdown
/// and from calico-kube-controllers).
pub const CALICO_REASONS: [&str; 2] = ["CalicoIsUp", "CalicoIsDown"];

/// One condition Calico wrote, and what was done with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    pub node: String,
    pub status: Option<String>,
    pub reason: String,
    /// `would remove`, `removed`, `changed since listed; left as it is`,
    /// or `failed: ...`.
    pub action: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub applied: bool,
    pub conditions: Vec<Found>,
}

/// The `NetworkUnavailable` conditions Calico wrote on a node, with their
/// index in `status.conditions` (none when the list cannot be read).
pub fn calico_conditions(node: &Value) -> Vec<(usize, &Value)> {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| {
            c.get("type").and_then(Value::as_str) == Some(CONDITION)
                && c.get("reason")
                    .and_then(Value::as_str)
                    .is_some_and(|r| CALICO_REASONS.contains(&r))
        })
        .collect()
}

/// The JSON patch that removes `found` (from the last index to the first,
/// so the indices stay right), each after a `test` that the condition at
/// that index is still exactly the one listed.
pub fn removal_patch(found: &[(usize, &Value)]) -> json_patch::Patch {
    let mut ops = Vec::new();
    let mut sorted: Vec<&(usize, &Value)> = found.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (i, c) in sorted {
        let path = format!("/status/conditions/{i}");
        ops.push(json!({"op": "test", "path": path, "value": c}));
        ops.push(json!({"op": "remove", "path": path}));
    }
    serde_json::from_value(Value::Array(ops)).expect("a JSON patch")
}

async fn list_nodes(client: &kube::Client) -> anyhow::Result<Vec<Value>> {
    let mut nodes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let req = kube::core::Request::new("/api/v1/nodes").list(&lp)?;
        let mut page: Value = client.request(req).await?;
        if let Some(items) = page.get_mut("items").and_then(Value::as_array_mut) {
            nodes.append(items);
        }
        token = page
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(String::from);
        if token.is_none() {
            return Ok(nodes);
        }
    }
}

/// A JSON-patch `test` that failed: the API server answers 422 (or 409 on
/// a write conflict); either way the node changed since it was listed.
fn changed_meanwhile(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 || s.code == 409)
}

/// Lists (and with `apply` removes) the conditions.
pub async fn run(client: &kube::Client, apply: bool) -> anyhow::Result<Report> {
    let nodes = list_nodes(client).await?;
    let mut conditions = Vec::new();
    for node in &nodes {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let found = calico_conditions(node);
        if found.is_empty() {
            continue;
        }
        let action = if !apply {
            "would remove".to_string()
        } else {
            let req = kube::core::Request::new("/api/v1/nodes").patch_subresource(
                "status",
                &name,
                &PatchParams::default(),
                &Patch::<()>::Json(removal_patch(&found)),
            )?;
            match client.request::<Value>(req).await {
                Ok(_) => "removed".to_string(),
                Err(e) if changed_meanwhile(&e) => "changed since listed; left as it is".into(),
                Err(e) => format!("failed: {e}"),
            }
        };
        for (_, c) in found {
            conditions.push(Found {
                node: name.clone(),
                status: c.get("status").and_then(Value::as_str).map(String::from),
                reason: c
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                action: action.clone(),
            });
        }
    }
    Ok(Report {
        applied: apply,
        conditions,
    })
}

pub fn render_text(r: &Report) -> String {
    if r.conditions.is_empty() {
        return format!(
            "no {CONDITION} condition written by Calico ({}) on any node\n",
            CALICO_REASONS.join(", ")
        );
    }
    let w = r
        .conditions
        .iter()
        .map(|f| f.node.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<w$}  {:<6}  {:<12}  ACTION\n",
        "NODE", "STATUS", "REASON"
    );
    for f in &r.conditions {
        out.push_str(&format!(
            "{:<w$}  {:<6}  {:<12}  {}\n",
            f.node,
            f.status.as_deref().unwrap_or("-"),
            f.reason,
            f.action
        ));
    }
    let nodes = {
        let mut n: Vec<&str> = r.conditions.iter().map(|f| f.node.as_str()).collect();
        n.dedup();
        n.len()
    };
    if r.applied {
        out.push_str(&format!(
            "\n{nodes} node(s) done; the route controller writes its own {CONDITION} condition on its next pass\n"
        ));
    } else {
        out.push_str(&format!(
            "\n{} condition(s) on {nodes} node(s); run again with --apply to remove them (the route controller then writes its own)\n",
            r.conditions.len()
        ));
    }
    out
}

/// The exit code: dry, 1 when something would be removed, else 0; with
/// `--apply`, 2 when a removal failed, else 0.
pub fn exit_code(r: &Report) -> u8 {
    if r.applied {
        if r.conditions.iter().any(|f| f.action.starts_with("failed")) {
            2
        } else {
            0
        }
    } else {
        u8::from(!r.conditions.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nu(status: &str, reason: &str) -> Value {
        json!({"type": "NetworkUnavailable", "status": status, "reason": reason,
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn only_calicos_network_unavailable_conditions_are_found() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "CalicoIsUp"},
            nu("False", "CalicoIsUp"),
            nu("False", "RouteCreated"),
            nu("True", "CalicoIsDown"),
            nu("True", "NoRouteCreated"),
            {"type": "NetworkUnavailable", "reason": 7},
        ]}});
        let found: Vec<usize> = calico_conditions(&node).iter().map(|(i, _)| *i).collect();
        assert_eq!(found, vec![1, 3]);
        for odd in [
            json!({}),
            json!({"status": "x"}),
            json!({"status": {"conditions": {"a": 1}}}),
        ] {
            assert!(calico_conditions(&odd).is_empty(), "{odd}");
        }
    }

    #[test]
    fn the_patch_tests_each_condition_then_removes_it_last_index_first() {
        let mut node = json!({"status": {"conditions": [
            nu("False", "CalicoIsUp"),
            {"type": "Ready", "status": "True"},
            nu("True", "CalicoIsDown"),
        ]}});
        let found = calico_conditions(&node);
        let patch = removal_patch(&found);
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["path"], "/status/conditions/2");
        assert_eq!(
            ops[1],
            json!({"op": "remove", "path": "/status/conditions/2"})
        );
        assert_eq!(ops[2]["path"], "/status/conditions/0");
        json_patch::patch(&mut node, &patch).unwrap();
        assert_eq!(
            node["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
        // The condition changed since it was listed: nothing is removed.
        let listed = json!({"status": {"conditions": [nu("False", "CalicoIsUp")]}});
        let patch = removal_patch(&calico_conditions(&listed));
        let mut now = json!({"status": {"conditions": [nu("False", "RouteCreated")]}});
        let before = now.clone();
        assert!(json_patch::patch(&mut now, &patch).is_err());
        assert_eq!(now, before);
    }

    #[test]
    fn the_report_and_its_exit_code() {
        let f = |node: &str, reason: &str, action: &str| Found {
            node: node.into(),
            status: Some("False".into()),
            reason: reason.into(),
            action: action.into(),
        };
        let dry = Report {
            applied: false,
            conditions: vec![f("node-a", "CalicoIsUp", "would remove")],
        };
        let text = render_text(&dry);
        assert!(
            text.contains("node-a  False   CalicoIsUp    would remove"),
            "{text}"
        );
        assert!(text.contains("run again with --apply"), "{text}");
        assert_eq!(exit_code(&dry), 1);
        let none = Report {
            applied: false,
            conditions: vec![],
        };
        assert!(
            render_text(&none).starts_with("no NetworkUnavailable condition written by Calico")
        );
        assert_eq!(exit_code(&none), 0);
        let done = Report {
            applied: true,
            conditions: vec![
                f("node-a", "CalicoIsUp", "removed"),
                f(
                    "node-b",
                    "CalicoIsUp",
                    "changed since listed; left as it is",
                ),
            ],
        };
        assert_eq!(exit_code(&done), 0);
        let failed = Report {
            applied: true,
            conditions: vec![f("node-a", "CalicoIsUp", "failed: forbidden")],
        };
        assert_eq!(exit_code(&failed), 2);
    }
}
