//! One node's odd status, written to a real kube-apiserver, never blinds or
//! crashes the guard: a transition time the API server accepts but jiff
//! cannot hold, one far in the future, one an hour ahead of our clock,
//! duplicate NetworkUnavailable conditions, and a client-written
//! `managedFields[].time` out of range. The server stays alive and ready,
//! the node is named as blocking, the other nodes still count, and the
//! gate opens once the node is fixed.

mod controlplane;
mod e2e_support;

use std::time::Duration;

use e2e_support::*;
use k8s_openapi::jiff::Timestamp;

/// Accepted by kube-apiserver (Go's time reaches year 9999), past the end of
/// jiff's `Timestamp` (9999-12-30T22:00:00.999999999Z).
const PAST_JIFF: &str = "9999-12-31T23:59:59Z";
/// In jiff's range, but adding a settle time of 2 s or more overflows it.
const NEAR_JIFF_END: &str = "9999-12-30T21:59:59Z";

/// A NetworkUnavailable condition as JSON.
fn nu(status: &str, reason: &str, transition: &str) -> String {
    format!(
        r#"{{"type":"NetworkUnavailable","status":"{status}","reason":"{reason}","message":"e2e","lastTransitionTime":"{transition}","lastHeartbeatTime":"2026-01-01T00:00:00Z"}}"#
    )
}

fn routed_at(transition: &str) -> String {
    nu("False", "RouteCreated", transition)
}

/// Replaces the node's conditions with exactly these (a merge patch
/// replaces the list as a whole, duplicates included).
fn set_conditions(env: &Env, node: &str, conditions: &[String]) {
    let patch = format!(
        r#"{{"status":{{"conditions":[{}]}}}}"#,
        conditions.join(",")
    );
    env.kubectl(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// The transition times the API server stored for the node.
fn stored_times(env: &Env, node: &str) -> String {
    env.get(
        &["node", node],
        "{.status.conditions[*].lastTransitionTime}",
    )
}

/// `now + secs`, as the API server writes times.
fn in_secs(secs: u64) -> String {
    (Timestamp::now() + Duration::from_secs(secs))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A server-side dry run of the native IPPool: (ipipMode after admission,
/// kubectl's stderr with the warnings).
fn try_switch(env: &Env) -> (String, String) {
    let (ok, out, err) = env.apply(NATIVE_POOL, &["--dry-run=server", "-o", "json"]);
    assert!(ok, "dry-run apply failed: {err}");
    let pool = parse_json(&out);
    (
        pool["spec"]["ipipMode"].as_str().unwrap_or("").to_string(),
        err,
    )
}

fn assert_held(env: &Env, warning: &str) {
    let (mode, err) = try_switch(env);
    assert_eq!(mode, "Always", "switch not held: {err}");
    assert!(
        err.contains(warning),
        "warning {warning:?} missing in: {err}"
    );
}

/// The switch goes through, at the latest after `limit`.
fn eventually_passes(env: &Env, limit: Duration) {
    eventually("the switch to pass", limit, || {
        let (mode, err) = try_switch(env);
        (mode == "Never" && !err.contains("overlay switch held")).then_some(())
    });
}

/// Alive (the process answers /healthz), ready, and it never panicked.
fn assert_alive_and_ready(env: &Env) {
    assert!(
        matches!(
            http_get(env.server.metrics_port, "/healthz"),
            Some((200, _))
        ),
        "server not alive: {}",
        env.server.log_text()
    );
    assert!(env.server.ready(), "server not ready");
    assert!(
        !env.server.log_text().contains("panicked"),
        "server panicked: {}",
        env.server.log_text()
    );
}

/// Starts a fresh server on the same control plane (so its first list
/// meets the hostile nodes) and registers it as the webhook.
fn restart_server(env: &mut Env, extra: &[&str]) {
    env.server = Server::start(env.dir.path(), env.cp.kubeconfig(), extra);
    env.register_webhook();
    env.server.wait_ready();
    env.wait_webhook_active();
}

#[test]
fn a_time_past_jiffs_range_blocks_that_node_only_and_never_blinds_the_server() {
    let extra = ["--release=false"];
    let mut env = Env::start(&extra);
    env.calico_cluster(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::Routed),
            ("node-c", Cond::Routed),
        ],
        true,
    );

    // The API server accepts the time; the watch event that carries it
    // used to fail to decode and the state stayed unknown for good.
    set_conditions(&env, "node-c", &[routed_at(PAST_JIFF)]);
    assert_eq!(stored_times(&env, "node-c"), PAST_JIFF);
    env.wait_nodes(3, 2);
    assert_alive_and_ready(&env);
    let warning = format!(
        r#"overlay switch held: 1 of 3 nodes has no route yet (node-c: NetworkUnavailable lastTransitionTime "{PAST_JIFF}" is unreadable)"#
    );
    assert_held(&env, &warning);

    // A time past jiff's range where the cache never looks: a client can
    // write managedFields[].time on any object it may patch.
    env.add_node("node-d", Cond::Routed);
    env.kubectl(&["annotate", "node", "node-d", "e2e=1"]);
    let managed = format!(
        r#"{{"metadata":{{"managedFields":[{{"manager":"hostile","operation":"Update","apiVersion":"v1","time":"{PAST_JIFF}","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:annotations":{{"f:e2e":{{}}}}}}}}}}]}}}}"#
    );
    env.kubectl(&["patch", "node", "node-d", "--type=merge", "-p", &managed]);
    assert_eq!(
        env.get(
            &["node", "node-d", "--show-managed-fields"],
            "{.metadata.managedFields[0].time}"
        ),
        PAST_JIFF,
        "the API server keeps the client's managedFields time"
    );
    // The watch goes on past it: node-d's later changes are seen.
    env.set_node("node-d", Cond::NoRoute);
    env.wait_nodes(4, 2);
    env.set_node("node-d", Cond::Routed);
    env.wait_nodes(4, 3);
    assert_alive_and_ready(&env);

    // A fresh server lists both hostile nodes: ready, the same verdict.
    restart_server(&mut env, &extra);
    env.wait_nodes(4, 3);
    assert_alive_and_ready(&env);
    assert_held(
        &env,
        &format!(
            r#"1 of 4 nodes has no route yet (node-c: NetworkUnavailable lastTransitionTime "{PAST_JIFF}" is unreadable)"#
        ),
    );

    // The status command reads the same nodes.
    let out = std::process::Command::new(BIN)
        .args(["status", "--kubeconfig"])
        .arg(env.cp.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("node-c "))
        .unwrap_or_default();
    assert!(
        row.contains("no")
            && row.ends_with(&format!(
                r#"lastTransitionTime "{PAST_JIFF}" is unreadable"#
            )),
        "{text}"
    );
    assert!(text.contains("nodes:  3 of 4 with route"), "{text}");

    // Fixed: the gate opens.
    env.set_node("node-c", Cond::Routed);
    env.wait_nodes(4, 4);
    eventually_passes(&env, Duration::from_secs(30));
    assert_alive_and_ready(&env);
}

#[test]
fn a_transition_time_near_the_end_of_time_does_not_crash_the_release() {
    // Release on, with held records: a `since` near jiff's end plus the
    // settle time overflowed in the release controller and the server exited.
    let env = Env::start(&["--settle-time", "2s"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::NoRoute)], true);
    for f in NATIVE {
        let (ok, _, err) = env.apply(f, &[]);
        assert!(ok && err.contains("overlay switch held"), "{f}: {err}");
    }
    set_conditions(&env, "node-b", &[routed_at(NEAR_JIFF_END)]);
    assert_eq!(stored_times(&env, "node-b"), NEAR_JIFF_END);
    env.wait_nodes(2, 2);
    // The route counts from when we saw it: the release follows the settle time.
    eventually("the held switch released", Duration::from_secs(60), || {
        (env.get(
            &["-n", "kube-system", "configmap", "calico-config"],
            "{.data.calico_backend}",
        ) == "none"
            && env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}") == "Never"
            && env_value(
                &env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]),
                "CALICO_IPV4POOL_IPIP",
            )
            .as_deref()
                == Some("Never"))
        .then_some(())
    });
    assert_alive_and_ready(&env);
}

#[test]
fn duplicate_network_unavailable_conditions_block_unless_all_say_routed() {
    let env = Env::start(&["--release=false"]);
    env.calico_cluster(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::Routed),
            ("node-c", Cond::Routed),
        ],
        true,
    );
    let ok = routed_at("2026-01-01T00:00:00Z");
    let no = nu("True", "NoRouteCreated", "2026-01-01T00:00:00Z");
    let warning = "overlay switch held: 1 of 3 nodes has no route yet (node-b: NoRouteCreated in one of its 2 NetworkUnavailable conditions)";

    // The route first, the failure second (only the first used to be read).
    set_conditions(&env, "node-b", &[ok.clone(), no.clone()]);
    assert_eq!(
        env.get(&["node", "node-b"], "{.status.conditions[*].status}"),
        "False True",
        "the API server keeps both conditions"
    );
    env.wait_nodes(3, 2);
    assert_held(&env, warning);

    // The other order, as a JSON patch replacing the list.
    let patch = format!(r#"[{{"op":"replace","path":"/status/conditions","value":[{no},{ok}]}}]"#);
    env.kubectl(&[
        "patch",
        "node",
        "node-b",
        "--subresource=status",
        "--type=json",
        "-p",
        &patch,
    ]);
    assert_eq!(
        env.get(&["node", "node-b"], "{.status.conditions[*].status}"),
        "True False"
    );
    env.wait_nodes(3, 2);
    assert_held(&env, warning);
    assert_alive_and_ready(&env);

    // Both say the route exists: it does.
    set_conditions(&env, "node-b", &[ok.clone(), ok]);
    env.wait_nodes(3, 3);
    eventually_passes(&env, Duration::from_secs(30));
}

#[test]
fn a_transition_time_an_hour_ahead_does_not_keep_the_gate_closed() {
    let extra = ["--release=false", "--settle-time", "1s"];
    let mut env = Env::start(&extra);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::NoRoute)], true);
    assert_held(&env, "node-b: NoRouteCreated");

    // Seen appearing live, with a controller clock an hour ahead.
    set_conditions(&env, "node-b", &[routed_at(&in_secs(3600))]);
    env.wait_nodes(2, 2);
    eventually_passes(&env, Duration::from_secs(30));

    // Listed by a fresh server, both nodes an hour ahead.
    set_conditions(&env, "node-a", &[routed_at(&in_secs(3600))]);
    restart_server(&mut env, &extra);
    env.wait_nodes(2, 2);
    eventually_passes(&env, Duration::from_secs(30));
    assert_alive_and_ready(&env);
}
