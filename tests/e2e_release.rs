//! Release end to end, with real applies on a real kube-apiserver: held
//! switches complete by themselves once every node has its route; operators
//! can cancel, force and see what is held.

mod controlplane;
mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::*;

const CANCEL: &str = "calico.networking.extensions.gardener.cloud/overlay-switch-cancel";
const FORCE: &str = "calico.networking.extensions.gardener.cloud/overlay-switch-force";

/// The control plane with manifests/ applied for real (namespace, SA, RBAC),
/// and our server running as that ServiceAccount, so the RBAC is proven
/// sufficient by use.
fn start_as_service_account(extra: &[&str]) -> Env {
    let cp = controlplane::ControlPlane::start().expect("control plane");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = manifest_service_account_kubeconfig(&cp, dir.path());
    let server = Server::start(dir.path(), &kubeconfig, extra);
    let env = Env { server, cp, dir };
    env.register_webhook();
    env
}

fn setup(extra: &[&str]) -> Env {
    let env = start_as_service_account(extra);
    env.calico_cluster(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::Routed),
            ("node-c", Cond::None),
        ],
        true,
    );
    env
}

fn events(env: &Env, ns: &str, name: &str) -> String {
    env.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
        "--no-headers",
    ])
}

fn status(env: &Env, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["--settle-time", "0s"];
    args.extend_from_slice(extra);
    let (code, out, _) = run_status(&[], env.cp.kubeconfig(), &args);
    (code, out)
}

#[test]
fn held_switches_are_released_by_themselves_in_a_safe_order_once_every_node_has_its_route() {
    let env = setup(&["--settle-time", "1s"]);
    apply_native(&env);
    assert_eq!(records(&env), 3, "all three objects held");
    assert_eq!(
        env_value(&ds(&env), "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );

    // status: exit 1 while held, with the node table and the held objects.
    let (code, text) = status(&env, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("node-c") && text.contains("no NetworkUnavailable condition"),
        "{text}"
    );
    assert!(text.contains("DaemonSet kube-system/calico-node"), "{text}");
    let (_, json) = status(&env, &["--output", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["held"].as_array().unwrap().len(), 3);
    assert_eq!(json["gateOpen"], false);
    assert_eq!(json["nodesWithRoute"], 2);

    // The last route appears: everything switches, no record remains.
    let t = Instant::now();
    env.set_node("node-c", Cond::Routed);
    eventually("release to native", Duration::from_secs(30), || {
        native_everywhere(&env).then_some(())
    });
    eprintln!(
        "released {:?} after the last RouteCreated (settle 1s)",
        t.elapsed()
    );

    // In the order ConfigMap, IPPools, DaemonSet.
    let log = env.server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("held overlay switches released"))
        .unwrap_or_else(|| panic!("no release log line:\n{log}"));
    let (cm, pool, d) = (
        line.find("ConfigMap kube-system/calico-config").unwrap(),
        line.find("IPPool default-ipv4-ippool").unwrap(),
        line.find("DaemonSet kube-system/calico-node").unwrap(),
    );
    assert!(cm < pool && pool < d, "order: {line}");
    // The native template is complete (the cleanup init container came with it).
    assert!(ds(&env).to_string().contains("cleanup-routes"));

    // Events, visible to kubectl describe.
    let ev = events(&env, "kube-system", "calico-node");
    assert!(ev.contains("OverlaySwitchHeld"), "{ev}");
    assert!(ev.contains("OverlaySwitchReleased"), "{ev}");
    let describe = env.kubectl(&["-n", "kube-system", "describe", "daemonset", "calico-node"]);
    assert!(describe.contains("OverlaySwitchReleased"), "{describe}");
    assert_eq!(
        env.server
            .metric("overlay_switch_releases_total{kind=\"DaemonSet\"}"),
        1.0
    );

    let (code, text) = status(&env, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("held:   nothing"), "{text}");
}

#[test]
fn a_change_made_while_held_is_kept_by_the_release() {
    let env = setup(&[]);
    apply_native(&env);
    let (ok, err) = env.set_calico_node_image("quay.io/calico/node:v3.31.7");
    assert!(ok && err.contains("overlay switch pending"), "{err}");
    let (ok, _, err) = env.kubectl_raw(&[
        "-n", "kube-system", "patch", "daemonset", "calico-node", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/1/resources/requests/cpu","value":"333m"}]"#,
    ]);
    assert!(ok, "{err}");
    env.set_node("node-c", Cond::Routed);
    eventually("release to native", Duration::from_secs(30), || {
        native_everywhere(&env).then_some(())
    });
    let d = ds(&env);
    let c = d
        .pointer("/spec/template/spec/containers")
        .unwrap()
        .as_array()
        .unwrap();
    let node = c.iter().find(|c| c["name"] == "calico-node").unwrap();
    assert_eq!(
        node["image"], "quay.io/calico/node:v3.31.7",
        "image bump kept"
    );
    assert_eq!(
        node["resources"]["requests"]["cpu"], "333m",
        "resources kept"
    );
    assert_eq!(
        env_value(&d, "FELIX_IPINIPENABLED").as_deref(),
        Some("false")
    );
}

#[test]
fn cancel_removes_every_record_and_force_releases_despite_a_blocking_node() {
    let env = setup(&[]);
    apply_native(&env);
    env.kubectl(&[
        "annotate",
        "namespace",
        "kube-system",
        &format!("{CANCEL}=true"),
    ]);
    eventually("records cancelled", Duration::from_secs(20), || {
        (records(&env) == 0).then_some(())
    });
    eventually("cancel annotation removed", Duration::from_secs(10), || {
        (!env
            .get(&["namespace", "kube-system"], "{.metadata.annotations}")
            .contains("overlay-switch-cancel"))
        .then_some(())
    });
    assert_eq!(
        env_value(&ds(&env), "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always"),
        "overlay stays"
    );
    assert!(events(&env, "kube-system", "calico-node").contains("OverlaySwitchCancelled"));
    assert!(
        env.server
            .log_text()
            .contains("overlay switch cancel honoured")
    );

    // Held again, then forced through although node-c still has no route.
    apply_native(&env);
    assert_eq!(records(&env), 3);
    env.kubectl(&[
        "annotate",
        "namespace",
        "kube-system",
        &format!("{FORCE}=true"),
    ]);
    eventually("forced release", Duration::from_secs(30), || {
        native_everywhere(&env).then_some(())
    });
    eventually("force annotation removed", Duration::from_secs(10), || {
        (!env
            .get(&["namespace", "kube-system"], "{.metadata.annotations}")
            .contains("overlay-switch-force"))
        .then_some(())
    });
    assert!(
        env.server
            .log_text()
            .contains("release forced by the operator")
    );
}

#[test]
fn a_recorded_change_that_no_longer_applies_is_reported_not_forced() {
    let env = setup(&[]);
    for f in NATIVE {
        let (ok, _, err) = env.apply(f, &[]);
        assert!(ok, "{err}");
    }
    // While held, someone inserts an env var at the top of calico-node's env
    // while the webhook is not registered (an outage with a fail-open
    // registration, or a registration removed for a while): the recorded
    // change's positions no longer fit. (With the webhook in the path, such
    // an update is merged with the held switch instead.)
    insert_env_var_without_webhook(&env);
    env.set_node("node-c", Cond::Routed);
    eventually("conflict reported", Duration::from_secs(30), || {
        (env.server
            .metric("overlay_switch_release_conflicts_total{kind=\"DaemonSet\"}")
            >= 1.0)
            .then_some(())
    });
    // All or nothing: nothing was released, so the cluster is not half
    // switched; the DaemonSet was not forced.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}"),
        "Always"
    );
    assert_eq!(
        env.get(
            &["-n", "kube-system", "configmap", "calico-config"],
            "{.data.calico_backend}"
        ),
        "bird"
    );
    assert_eq!(records(&env), 3);
    let d = ds(&env);
    assert!(has_record(&d), "record kept");
    assert_eq!(
        env_value(&d, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );
    assert_eq!(env_value(&d, "EXTRA").as_deref(), Some("1"));
    eventually("conflict event", Duration::from_secs(10), || {
        events(&env, "kube-system", "calico-node")
            .contains("OverlaySwitchConflict")
            .then_some(())
    });
    let (code, text) = status(&env, &[]);
    assert_eq!(code, 1);
    assert!(text.contains("CONFLICT"), "{text}");

    // The operator re-applies the desired DaemonSet: the new intent fits
    // (it joins the held ones, the gate being open), and everything is
    // released together.
    let (ok, _, err) = env.apply(NATIVE_DS, &[]);
    assert!(ok && err.contains("joins the held switch"), "{err}");
    eventually("release after the fix", Duration::from_secs(30), || {
        (records(&env) == 0).then_some(())
    });
    assert_eq!(
        env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}"),
        "Never"
    );
    let d = ds(&env);
    assert_eq!(
        env_value(&d, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Never")
    );
}

#[test]
fn two_replicas_release_once_with_one_consistent_result() {
    let env = setup(&["--settle-time", "1s"]);
    let second = Server::start(
        &env.dir.path().join("second"),
        &env.dir.path().join("webhook.kubeconfig"),
        &["--settle-time", "1s"],
    );
    second.wait_ready();
    apply_native(&env);
    env.set_node("node-c", Cond::Routed);
    eventually("release to native", Duration::from_secs(30), || {
        native_everywhere(&env).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2)); // let both settle
    assert!(native_everywhere(&env));
    for kind in ["ConfigMap", "IPPool", "DaemonSet"] {
        let total = env
            .server
            .metric(&format!("overlay_switch_releases_total{{kind=\"{kind}\"}}"))
            + second.metric(&format!("overlay_switch_releases_total{{kind=\"{kind}\"}}"));
        assert_eq!(
            total, 1.0,
            "{kind} released exactly once across both replicas"
        );
    }
    let released = events(&env, "kube-system", "calico-node")
        .lines()
        .filter(|l| l.starts_with("OverlaySwitchReleased"))
        .count();
    assert_eq!(released, 1);
}

/// The `release pass` debug line that preceded the release, if any: what woke it.
fn woken_by_before_release(log: &str) -> Option<String> {
    let mut woken = None;
    for l in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["message"] == "release pass" {
            woken = v["woken_by"].as_str().map(String::from);
        }
        if v["message"] == "held overlay switches released" {
            return woken;
        }
    }
    None
}

#[test]
fn a_release_denied_by_an_admission_policy_is_retried_until_the_policy_is_gone() {
    let env = setup(&[]);
    apply_native(&env);
    deny_native_configmap(&env.cp, "no-native-routing");
    env.set_node("node-c", Cond::Routed);
    let denied = "overlay_switch_release_failures_total{kind=\"ConfigMap\",class=\"Denied\"}";
    eventually("denial seen twice", Duration::from_secs(30), || {
        (env.server.metric(denied) >= 2.0).then_some(())
    });
    // All or nothing: the dry run was refused, nothing was written.
    assert_eq!(records(&env), 3);
    assert_eq!(
        env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}"),
        "Always"
    );
    // Not counted as a conflict of the recorded change.
    assert_eq!(
        env.server
            .metric("overlay_switch_release_conflicts_total{kind=\"ConfigMap\"}"),
        0.0
    );
    let ev = events(&env, "kube-system", "calico-config");
    assert!(
        ev.contains("OverlaySwitchConflict")
            && ev.contains("denied: the API server refuses the write (dry run)")
            && ev.contains("native routing is not allowed today"),
        "{ev}"
    );
    assert!(env.server.log_text().contains("\"class\":\"denied\""));

    // The policy goes: with no node event and no change to the held
    // objects, the back-off timer alone brings the release.
    allow_native_configmap(&env.cp, "no-native-routing");
    eventually(
        "release after the policy is gone",
        Duration::from_secs(45),
        || native_everywhere(&env).then_some(()),
    );
    assert_eq!(
        woken_by_before_release(&env.server.log_text()).as_deref(),
        Some("timer")
    );
}

#[test]
fn a_conflict_undone_by_an_edit_that_is_no_switch_is_released_at_once() {
    let env = setup(&[]);
    apply_native(&env);
    // A non-switch edit made while the webhook was not registered shifts
    // calico-node's env: the recorded change no longer applies. (With the
    // webhook in the path, the edit would be merged with the held switch.)
    insert_env_var_without_webhook(&env);
    env.set_node("node-c", Cond::Routed);
    eventually("conflict reported", Duration::from_secs(30), || {
        (env.server
            .metric("overlay_switch_release_failures_total{kind=\"DaemonSet\",class=\"Conflict\"}")
            >= 1.0)
            .then_some(())
    });
    // Wait until the back-off is long (8 s), so that only a wake-up can
    // explain a prompt release.
    eventually("a long back-off", Duration::from_secs(30), || {
        env.server
            .log_text()
            .contains("\"retry_in\":\"8s\"")
            .then_some(())
    });
    assert_eq!(records(&env), 3);

    // The edit is undone by another update that is no switch (no node event).
    let t = Instant::now();
    let (ok, _, err) = env.kubectl_raw(&[
        "-n",
        "kube-system",
        "patch",
        "daemonset",
        "calico-node",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/template/spec/containers/1/env/0/name","value":"EXTRA"},
            {"op":"remove","path":"/spec/template/spec/containers/1/env/0"}]"#,
    ]);
    assert!(ok && err.contains("overlay switch pending"), "{err}");
    // What woke the pass (logged by the controller) is the proof; the bound
    // is only there to end the test.
    eventually("release after the fix", Duration::from_secs(30), || {
        native_everywhere(&env).then_some(())
    });
    eprintln!("released {:?} after the edit", t.elapsed());
    assert_eq!(
        woken_by_before_release(&env.server.log_text()).as_deref(),
        Some("held")
    );
    assert_eq!(env_value(&ds(&env), "EXTRA"), None);
}

/// Inserts an env var at the top of calico-node's env while the webhook is
/// not registered: the recorded change's positions no longer fit (with the
/// webhook in the path, the edit would be merged with the held switch).
fn insert_env_var_without_webhook(env: &Env) {
    let (ok, _, err) = env.without_webhook(|| {
        env.kubectl_raw(&[
            "-n", "kube-system", "patch", "daemonset", "calico-node", "--type=json", "-p",
            r#"[{"op":"add","path":"/spec/template/spec/containers/1/env/0","value":{"name":"EXTRA","value":"1"}}]"#,
        ])
    });
    assert!(ok && !err.contains("overlay switch"), "{err}");
}
