//! The guard end to end, against a real kube-apiserver: switches are held
//! while a node lacks its route, and go through once every node has it.

mod controlplane;
mod e2e_support;

use std::time::Duration;

use e2e_support::*;

/// Control plane, server (release off: this file is about the gate),
/// IPPool CRD, the overlay objects, and the given nodes.
fn setup(nodes: &[(&str, Cond<'_>)], guard: bool) -> Env {
    let env = Env::start(&["--release=false"]);
    env.calico_cluster(nodes, guard);
    env
}

fn dry_run(env: &Env, fixture: &str) -> (serde_json::Value, String) {
    dry_run_with(env, fixture, &[])
}

/// The same, as a server-side apply (taking over the fields from any manager).
fn dry_run_server_side(env: &Env, fixture: &str) -> (serde_json::Value, String) {
    dry_run_with(env, fixture, &["--server-side", "--force-conflicts"])
}

fn dry_run_with(env: &Env, fixture: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["--dry-run=server", "-o", "json"];
    args.extend_from_slice(extra);
    let (ok, out, err) = env.apply(fixture, &args);
    assert!(ok, "dry-run apply of {fixture} failed: {err}");
    (parse_json(&out), err)
}

fn annotations(obj: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.as_object())
        .cloned()
        .unwrap_or_default()
}

/// Asserts each kind is held by a dry run: the output shows the old overlay
/// configuration, the record, and the warning; nothing is persisted.
fn assert_all_held(env: &Env, warning: &str) {
    let (ds, err) = dry_run(env, NATIVE_DS);
    assert_eq!(
        env_value(&ds, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always"),
        "DaemonSet not held"
    );
    assert_eq!(
        env_value(&ds, "FELIX_IPINIPENABLED").as_deref(),
        Some("true")
    );
    assert!(
        annotations(&ds).contains_key(INTENT),
        "no record: {:?}",
        annotations(&ds)
    );
    assert!(
        err.contains(warning),
        "DaemonSet warning {warning:?} missing in: {err}"
    );

    let (cm, err) = dry_run(env, NATIVE_CM);
    assert_eq!(cm["data"]["calico_backend"], "bird", "ConfigMap not held");
    assert!(annotations(&cm).contains_key(INTENT));
    assert!(err.contains(warning), "ConfigMap warning missing in: {err}");

    let (pool, err) = dry_run(env, NATIVE_POOL);
    assert_eq!(pool["spec"]["ipipMode"], "Always", "IPPool not held");
    assert!(annotations(&pool).contains_key(INTENT));
    assert!(err.contains(warning), "IPPool warning missing in: {err}");

    // A dry run persists nothing.
    let live = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
    assert!(!annotations(&live).contains_key(INTENT));
    assert_eq!(
        env_value(&live, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );
}

fn assert_all_pass(env: &Env) {
    let (ds, err) = dry_run(env, NATIVE_DS);
    assert_eq!(
        env_value(&ds, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Never"),
        "{err}"
    );
    assert_eq!(
        env_value(&ds, "FELIX_IPINIPENABLED").as_deref(),
        Some("false")
    );
    assert!(!annotations(&ds).contains_key(INTENT));
    assert!(!err.contains("overlay switch held"), "{err}");
    let (cm, _) = dry_run(env, NATIVE_CM);
    assert_eq!(cm["data"]["calico_backend"], "none");
    let (pool, _) = dry_run(env, NATIVE_POOL);
    assert_eq!(pool["spec"]["ipipMode"], "Never");
    assert!(!annotations(&pool).contains_key(INTENT));
}

#[test]
fn switch_is_held_per_blocking_reason_and_passes_once_every_node_has_its_route() {
    let env = setup(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::None),
            ("node-c", Cond::NoRoute),
        ],
        true,
    );
    assert_all_held(
        &env,
        "overlay switch held: 2 of 3 nodes have no route yet (node-b: no NetworkUnavailable condition, node-c: NoRouteCreated)",
    );
    let held = env.reviews("DaemonSet", "Held", true);
    assert!(held >= 1.0, "held dry-run reviews are counted");

    // Another reason than RouteCreated does not count as a route.
    env.set_node("node-b", Cond::Routed);
    env.set_node("node-c", Cond::Other("False", "CalicoIsUp"));
    env.wait_nodes(3, 2);
    assert_all_held(
        &env,
        "1 of 3 nodes has no route yet (node-c: NetworkUnavailable=False (CalicoIsUp))",
    );

    env.set_node("node-c", Cond::Routed);
    env.wait_nodes(3, 3);
    assert_all_pass(&env);
}

#[test]
fn guard_off_rollbacks_and_zero_nodes_pass() {
    // Guard off: a blocked node does not matter.
    let env = setup(&[("node-a", Cond::NoRoute)], false);
    assert_all_pass(&env);

    // With the guard off the native config goes through for real ...
    for f in [NATIVE_CM, NATIVE_DS, NATIVE_POOL] {
        let (ok, _, err) = env.apply(f, &["--server-side", "--force-conflicts"]);
        assert!(ok, "{err}");
    }
    assert_eq!(
        env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}"),
        "Never"
    );
    // ... and a rollback (native -> overlay) with the guard on is never held.
    env.set_guard(true);
    for f in OVERLAY {
        let (obj, err) = dry_run_server_side(&env, f);
        assert!(!err.contains("held"), "rollback held: {err}");
        if obj["kind"] == "IPPool" {
            assert_eq!(obj["spec"]["ipipMode"], "Always");
        }
        if obj["kind"] == "ConfigMap" {
            assert_eq!(obj["data"]["calico_backend"], "bird");
        }
    }

    // Zero nodes: nothing to wait for.
    env.kubectl(&["delete", "node", "node-a"]);
    env.wait_nodes(0, 0);
    for f in OVERLAY {
        let (ok, _, err) = env.apply(f, &["--server-side", "--force-conflicts"]);
        assert!(ok, "{err}");
    }
    assert_all_pass(&env);
}

#[test]
fn upstream_calico_and_gardener_vxlan_objects_are_guarded_including_cross_subnet() {
    let env = Env::start(&["--release=false"]);
    env.install_ippool_crd();
    env.create(&[
        "upstream-calico/ippool-ipip.yaml",
        "upstream-calico/configmap-calico-config.yaml",
        "upstream-calico/daemonset-calico-node.yaml",
    ]);
    env.add_node("node-a", Cond::NoRoute);
    env.server.wait_ready();
    env.wait_webhook_active();
    env.wait_nodes(1, 0);
    env.set_guard(true);
    for target in [
        "upstream-calico/ippool-native.yaml",
        "upstream-calico/ippool-ipip-crosssubnet.yaml",
        "upstream-calico/ippool-vxlan.yaml",
    ] {
        let (ok, out, err) = env.apply(target, &["--dry-run=server", "-o", "json"]);
        assert!(ok, "{err}");
        let pool = parse_json(&out);
        assert_eq!(pool["spec"]["ipipMode"], "Always", "{target} not held");
        assert!(
            err.contains("overlay switch held: 1 of 1 node has no route yet"),
            "{err}"
        );
    }
    // Unrelated pool change: not a switch.
    let (ok, _, err) = env.kubectl_raw(&[
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "--type=merge",
        "-p",
        r#"{"spec":{"natOutgoing":false}}"#,
        "--dry-run=server",
    ]);
    assert!(ok && !err.contains("held"), "{err}");

    // Upstream calico-node: lowering CALICO_IPV4POOL_IPIP alone is held.
    let (ok, out, err) = env.kubectl_raw(&[
        "-n",
        "kube-system",
        "set",
        "env",
        "daemonset/calico-node",
        "-c",
        "calico-node",
        "CALICO_IPV4POOL_IPIP=CrossSubnet",
        "--dry-run=server",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        env_value(&parse_json(&out), "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );
    assert!(err.contains("overlay switch held"), "{err}");
    // ... and so is its ConfigMap's calico_backend bird -> none.
    let (ok, out, err) = env.kubectl_raw(&[
        "-n",
        "kube-system",
        "patch",
        "configmap",
        "calico-config",
        "--type=merge",
        "-p",
        r#"{"data":{"calico_backend":"none"}}"#,
        "--dry-run=server",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(parse_json(&out)["data"]["calico_backend"], "bird");
    assert!(err.contains("overlay switch held"), "{err}");

    // Gardener's VXLAN variant: each object's switch to native is held.
    // (IPIP -> VXLAN lowers IPIP, a switch of its own: done with the guard off.)
    env.set_guard(false);
    for f in [
        "gardener-calico/overlay-vxlan/ippool-default-ipv4.yaml",
        "gardener-calico/overlay-vxlan/configmap-calico-config.yaml",
        "gardener-calico/overlay-vxlan/daemonset-calico-node.yaml",
    ] {
        let (ok, _, err) = env.apply(f, &["--server-side", "--force-conflicts"]);
        assert!(ok && !err.contains("held"), "{err}");
    }
    env.set_guard(true);
    for native in [NATIVE_POOL, NATIVE_CM, NATIVE_DS] {
        let (obj, err) = dry_run_server_side(&env, native);
        assert!(err.contains("overlay switch held"), "{native}: {err}");
        match obj["kind"].as_str().unwrap() {
            "IPPool" => assert_eq!(obj["spec"]["vxlanMode"], "Always"),
            "ConfigMap" => assert_eq!(obj["data"]["calico_backend"], "vxlan"),
            _ => assert_eq!(
                env_value(&obj, "CALICO_IPV4POOL_VXLAN").as_deref(),
                Some("Always")
            ),
        }
    }
}

#[test]
fn real_applies_record_the_intent_and_let_other_updates_through() {
    let env = setup(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);
    let (ok, _, err) = env.apply(NATIVE_DS, &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("overlay switch held: 1 of 2 nodes has no route yet"),
        "{err}"
    );
    let ds = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
    assert_eq!(
        env_value(&ds, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );
    let since = annotations(&ds)[SINCE].as_str().unwrap().to_string();
    let intent: serde_json::Value =
        serde_json::from_str(annotations(&ds)[INTENT].as_str().unwrap()).unwrap();
    assert!(
        intent.to_string().contains("cleanup-routes"),
        "intent keeps the whole native template: {intent}"
    );
    assert_eq!(env.reviews("DaemonSet", "Held", false), 1.0);

    // An image bump goes through, keeps the record, and says a switch is pending.
    let (ok, err) = env.set_calico_node_image("quay.io/calico/node:v3.31.7");
    assert!(ok, "{err}");
    assert!(err.contains("overlay switch pending since"), "{err}");
    let ds = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
    let image = ds
        .pointer("/spec/template/spec/containers/1/image")
        .unwrap()
        .as_str()
        .unwrap();
    assert!(image.ends_with("v3.31.7"), "{image}");
    assert!(annotations(&ds).contains_key(INTENT));

    // A reconciler re-applying the native config keeps the first held time.
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, _, err) = env.apply(NATIVE_DS, &[]);
    assert!(ok && err.contains("overlay switch held"), "{err}");
    let ds = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
    assert_eq!(annotations(&ds)[SINCE].as_str().unwrap(), since);

    // Once the route is there, the held object's own next update passes
    // and clears the record.
    env.set_node("node-b", Cond::Routed);
    env.wait_nodes(2, 2);
    let (ok, _, err) = env.apply(NATIVE_DS, &[]);
    assert!(ok, "{err}");
    let ds = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
    assert_eq!(
        env_value(&ds, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Never")
    );
    assert!(!annotations(&ds).contains_key(INTENT), "record cleared");
}

#[test]
fn a_cluster_never_ends_up_half_switched_when_the_gate_opens_between_updates() {
    let env = setup(&[("node-a", Cond::None)], true);
    // The ConfigMap's switch arrives first and is held.
    let (ok, _, err) = env.apply(NATIVE_CM, &[]);
    assert!(ok && err.contains("overlay switch held"), "{err}");
    // The gate opens before the DaemonSet's switch arrives ...
    env.set_node("node-a", Cond::Routed);
    env.wait_nodes(1, 1);
    // ... which joins the held ConfigMap instead of switching alone.
    let (ok, _, err) = env.apply(NATIVE_DS, &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("joins the held switch of ConfigMap kube-system/calico-config"),
        "{err}"
    );
    let ds = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
    assert_eq!(
        env_value(&ds, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );
    assert_eq!(
        env.get(
            &["-n", "kube-system", "configmap", "calico-config"],
            "{.data.calico_backend}"
        ),
        "bird"
    );
}

/// The server running as a ServiceAccount that may read namespaces and the
/// Calico objects; nodes too only with `nodes` (granted as "osw-e2e-nodes",
/// so a test can revoke it), and registered as the webhook.
fn start_as_reader(nodes: bool, extra: &[&str]) -> Env {
    let cp = controlplane::ControlPlane::start().expect("control plane");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = sa_kubeconfig(
        &cp,
        dir.path(),
        &[
            ("namespaces", ""),
            ("daemonsets", "apps"),
            ("configmaps", ""),
            ("ippools", "crd.projectcalico.org"),
            // The other install styles' kinds (absent here: listed as none).
            ("ippools", "projectcalico.org"),
            ("felixconfigurations", "crd.projectcalico.org"),
            ("felixconfigurations", "projectcalico.org"),
            ("installations", "operator.tigera.io"),
        ],
    );
    if nodes {
        grant(&cp, &[("nodes", "")], "nodes");
    }
    let server = Server::start(dir.path(), &kubeconfig, extra);
    let env = Env { server, cp, dir };
    env.register_webhook();
    env
}

#[test]
fn unknown_route_state_holds_until_the_node_watch_syncs() {
    // The webhook's identity may read namespaces and Calico objects, not nodes (yet).
    let env = start_as_reader(false, &["--release=false"]);
    env.install_ippool_crd();
    env.create(&OVERLAY);
    env.add_node("node-a", Cond::Routed);
    env.wait_webhook_active();
    env.set_guard(true);
    assert!(
        !env.server.ready(),
        "not ready while the node watch cannot sync"
    );
    let (pool, err) = dry_run(&env, NATIVE_POOL);
    assert_eq!(pool["spec"]["ipipMode"], "Always");
    assert!(
        err.contains("overlay switch held: node route state unknown"),
        "{err}"
    );

    // Allow nodes: the watch lists, the state is known, and the switch passes.
    grant(&env.cp, &[("nodes", "")], "nodes");
    env.server.wait_ready();
    let (pool, err) = dry_run(&env, NATIVE_POOL);
    assert_eq!(pool["spec"]["ipipMode"], "Never", "{err}");
}

#[test]
fn a_broken_node_watch_holds_until_it_is_listed_again() {
    // Watches renewed every 2 s: a revoked permission shows at the next renewal.
    let env = start_as_reader(true, &["--release=false", "--watch-timeout", "2"]);
    env.calico_cluster(&[("node-a", Cond::Routed)], true);
    let (pool, err) = dry_run(&env, NATIVE_POOL);
    assert_eq!(
        pool["spec"]["ipipMode"], "Never",
        "passes while known: {err}"
    );

    // The node watch breaks (its permission is revoked): the route state is
    // unknown, so the same switch is held, and the server is not ready.
    env.kubectl(&["delete", "clusterrolebinding", "osw-e2e-nodes"]);
    eventually("node watch lost", Duration::from_secs(30), || {
        (!env.server.ready()).then_some(())
    });
    let (pool, err) = dry_run(&env, NATIVE_POOL);
    assert_eq!(pool["spec"]["ipipMode"], "Always");
    assert!(
        err.contains("overlay switch held: node route state unknown"),
        "{err}"
    );
    assert!(
        env.server
            .log_text()
            .contains("state unknown until it is listed again")
    );

    // Permission back: listed again, known again, passes again.
    grant(&env.cp, &[("nodes", "")], "nodes");
    env.server.wait_ready();
    let (pool, err) = dry_run(&env, NATIVE_POOL);
    assert_eq!(pool["spec"]["ipipMode"], "Never", "{err}");
}

/// A pool that still encapsulates cannot be deleted while a node lacks its
/// route: its pods would keep their addresses and lose the tunnel, and a
/// DELETE cannot be held by a patch. Refused (dry run too) with the
/// blocking node and what to do; deleted once every node has its route. A
/// pool without encapsulation, and one the operator forced by annotation,
/// are deleted at once.
#[test]
fn deleting_an_encapsulating_pool_is_refused_until_every_node_has_its_route() {
    let env = setup(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);
    let pool = |name: &str, cidr: &str, ipip: &str, vxlan: &str| {
        serde_json::json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "ipipMode": ipip, "vxlanMode": vxlan,
                     "natOutgoing": true, "disabled": true}})
        .to_string()
    };
    env.kubectl_in(
        &["create", "-f", "-"],
        &pool("native", "10.8.0.0/16", "Never", "Never"),
    );
    env.kubectl_in(
        &["create", "-f", "-"],
        &pool("vxlan", "10.9.0.0/16", "Never", "CrossSubnet"),
    );
    let exists = |name: &str| env.kubectl_raw(&["get", "ippool", name]).0;

    for dry_run in [true, false] {
        let mut args = vec!["delete", "ippool", "default-ipv4-ippool"];
        if dry_run {
            args.push("--dry-run=server");
        }
        let (ok, _, err) = env.kubectl_raw(&args);
        assert!(!ok, "refused (dry run {dry_run})");
        eprintln!("delete (dry run {dry_run}): {}", err.trim());
        for part in [
            "IPPool default-ipv4-ippool still encapsulates (IPIP Always",
            "node-b: no NetworkUnavailable condition",
            "Wait until every node has its route",
            FORCE_DELETE,
        ] {
            assert!(err.contains(part), "{part:?} in: {err}");
        }
    }
    assert!(exists("default-ipv4-ippool"), "not deleted");
    assert!(env.reviews("IPPool", "Refused", false) >= 1.0);
    // A disabled pool still encapsulates for the pods it gave addresses to.
    let (ok, _, err) = env.kubectl_raw(&["delete", "ippool", "vxlan"]);
    assert!(!ok && err.contains("VXLAN CrossSubnet"), "{err}");

    // Nothing encapsulated: deleted at once.
    env.kubectl(&["delete", "ippool", "native"]);
    assert!(!exists("native"));
    // Forced by the operator: deleted at once.
    env.kubectl(&[
        "annotate",
        "ippool",
        "vxlan",
        &format!("{FORCE_DELETE}=true"),
    ]);
    env.kubectl(&["delete", "ippool", "vxlan"]);
    assert!(!exists("vxlan"));

    // Every node has its route: the encapsulating pool is deleted.
    env.set_node("node-b", Cond::Routed);
    env.wait_nodes(2, 2);
    env.kubectl(&["delete", "ippool", "default-ipv4-ippool"]);
    assert!(!exists("default-ipv4-ippool"));
}
