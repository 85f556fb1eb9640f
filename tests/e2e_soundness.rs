//! Guard soundness end to end (real kube-apiserver and kubectl): values read
//! as Calico reads them, switches split over several updates, re-applies
//! and multi-part switches while held, and the warning's current state.

mod controlplane;
mod e2e_support;

use std::time::Duration;

use e2e_support::*;
use serde_json::Value;

const OVERLAY_VXLAN_DS: &str = "gardener-calico/overlay-vxlan/daemonset-calico-node.yaml";

fn annotations(obj: &Value) -> serde_json::Map<String, Value> {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn ds(env: &Env) -> Value {
    env.get_json(&["-n", "kube-system", "daemonset", "calico-node"])
}

fn pool(env: &Env) -> Value {
    env.get_json(&["ippool", "default-ipv4-ippool"])
}

fn intent(obj: &Value) -> Option<Value> {
    annotations(obj)
        .get(INTENT)
        .and_then(Value::as_str)
        .map(|s| serde_json::from_str(s).unwrap())
}

/// `kubectl -n kube-system set env daemonset/calico-node -c calico-node`
/// with `assign` (e.g. `X=1` or `X-`) and `extra` flags; (ok, stdout, stderr).
fn set_env_with(env: &Env, assign: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "-n",
        "kube-system",
        "set",
        "env",
        "daemonset/calico-node",
        "-c",
        "calico-node",
        assign,
    ];
    args.extend_from_slice(extra);
    env.kubectl_raw(&args)
}

/// The same, which must succeed; returns stderr (warnings).
fn set_env(env: &Env, assign: &str) -> String {
    let (ok, _, err) = set_env_with(env, assign, &[]);
    assert!(ok, "set env {assign}: {err}");
    err
}

/// `kubectl -n kube-system patch configmap calico-config` of `kind`
/// (`merge`, `json`) with `patch` and `extra` flags; (ok, stdout, stderr).
fn patch_config_map(env: &Env, kind: &str, patch: &str, extra: &[&str]) -> (bool, String, String) {
    let kind = format!("--type={kind}");
    let mut args = vec![
        "-n",
        "kube-system",
        "patch",
        "configmap",
        "calico-config",
        &kind,
        "-p",
        patch,
    ];
    args.extend_from_slice(extra);
    env.kubectl_raw(&args)
}

fn template(obj: &Value) -> Value {
    obj.pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn pool_modes_and_switches_split_over_updates_are_held() {
    let env = Env::start(&["--release=false"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::NoRoute)], true);

    // Item 1: Calico reads a lowercase mode as no encapsulation.
    for (patch, what) in [
        (r#"{"spec":{"ipipMode":"always"}}"#, "lowercase mode"),
        (r#"{"spec":{"ipipMode":" Always"}}"#, "mode with a space"),
        (
            r#"{"spec":{"ipip":{}}}"#,
            "legacy ipip block without enabled",
        ),
        (
            r#"{"spec":{"ipip":{"enabled":false,"mode":"always"}}}"#,
            "legacy ipip block disabled",
        ),
    ] {
        let (ok, out, err) = env.kubectl_raw(&[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "--type=merge",
            "-p",
            patch,
            "--dry-run=server",
            "-o",
            "json",
        ]);
        assert!(ok, "{what}: {err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["spec"]["ipipMode"], "Always", "{what}: not held");
        assert!(got["spec"].get("ipip").is_none(), "{what}: not held");
        assert!(
            err.contains("overlay switch held: 1 of 2 nodes"),
            "{what}: {err}"
        );
    }
    // A legacy block that keeps IPIP on is not a switch.
    let (ok, _, err) = env.kubectl_raw(&[
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "--type=merge",
        "-p",
        r#"{"spec":{"ipip":{"enabled":true,"mode":"always"}}}"#,
        "--dry-run=server",
    ]);
    assert!(ok && !err.contains("held"), "{err}");

    // Item 2: Felix true -> removed -> false: the first step is held ...
    let err = set_env(&env, "FELIX_IPINIPENABLED-");
    assert!(err.contains("overlay switch held"), "{err}");
    let live = ds(&env);
    assert_eq!(
        env_value(&live, "FELIX_IPINIPENABLED").as_deref(),
        Some("true")
    );
    // ... and so is the lower value after it (here onto the held object).
    let err = set_env(&env, "FELIX_IPINIPENABLED=false");
    assert!(err.contains("overlay switch held"), "{err}");
    assert_eq!(
        env_value(&ds(&env), "FELIX_IPINIPENABLED").as_deref(),
        Some("true")
    );

    // calico_backend from the ConfigMap (bird) replaced by a literal none.
    let (ok, out, err) = set_env_with(
        &env,
        "CALICO_NETWORKING_BACKEND=none",
        &["--dry-run=server", "-o", "json"],
    );
    assert!(ok, "{err}");
    assert!(err.contains("overlay switch held"), "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    let backend = got
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == "calico-node"))
        .and_then(|c| c["env"].as_array())
        .and_then(|e| e.iter().find(|v| v["name"] == "CALICO_NETWORKING_BACKEND"))
        .cloned()
        .unwrap();
    assert!(backend.get("valueFrom").is_some(), "{backend}");

    // ConfigMap: calico-node takes CALICO_NETWORKING_BACKEND from the key
    // calico_backend (not optional), so removing the key is held (new
    // calico-node pods could not start; what they would run is unknown) ...
    let (ok, _, err) = patch_config_map(
        &env,
        "json",
        r#"[{"op":"remove","path":"/data/calico_backend"}]"#,
        &[],
    );
    assert!(ok && err.contains("overlay switch held"), "{err}");
    // ... and so is lowering it.
    let (ok, _, err) =
        patch_config_map(&env, "merge", r#"{"data":{"calico_backend":"none"}}"#, &[]);
    assert!(ok && err.contains("overlay switch held"), "{err}");
    assert_eq!(
        env.get(
            &["-n", "kube-system", "configmap", "calico-config"],
            "{.data.calico_backend}"
        ),
        "bird"
    );
}

/// A JSON patch that puts `IPIP_MODE=<mode>` first in calico-node's env and
/// makes `CALICO_IPV4POOL_IPIP` refer to it.
fn via_reference(env: &Env, mode: &str) -> String {
    let live = ds(env);
    let containers = live["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let c = containers
        .iter()
        .position(|c| c["name"] == "calico-node")
        .unwrap();
    let i = containers[c]["env"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v["name"] == "CALICO_IPV4POOL_IPIP")
        .unwrap();
    let base = format!("/spec/template/spec/containers/{c}/env");
    serde_json::json!([
        {"op": "add", "path": format!("{base}/0"), "value": {"name": "IPIP_MODE", "value": mode}},
        {"op": "replace", "path": format!("{base}/{}/value", i + 1), "value": "$(IPIP_MODE)"},
    ])
    .to_string()
}

#[test]
fn env_references_are_expanded_as_the_kubelet_does() {
    let env = Env::start(&["--release=false"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::NoRoute)], true);
    let patch = |mode: &str| {
        let p = via_reference(&env, mode);
        env.kubectl_raw(&[
            "-n",
            "kube-system",
            "patch",
            "daemonset",
            "calico-node",
            "--type=json",
            "-p",
            &p,
            "--dry-run=server",
        ])
    };
    // The same level through a reference: admitted, not refused.
    let (ok, _, err) = patch("Always");
    assert!(ok, "{err}");
    assert!(
        !err.contains("held") && !err.contains("cannot tell"),
        "{err}"
    );
    // A lower level through a reference: held.
    let (ok, _, err) = patch("Never");
    assert!(ok && err.contains("overlay switch held"), "{err}");
    // A value Calico refuses (calico-node stops on it) is refused.
    let (ok, _, err) = patch("sometimes");
    assert!(!ok, "refused");
    assert!(err.contains("CALICO_IPV4POOL_IPIP"), "{err}");
}

#[test]
fn reapplying_the_desired_object_while_held_keeps_the_intent_and_releases_it_whole() {
    let env = Env::start(&["--settle-time", "1s"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::None)], false);
    // The cluster runs the VXLAN overlay, applied with kubectl.
    let (ok, _, err) = env.apply(OVERLAY_VXLAN_DS, &[]);
    assert!(ok, "{err}");
    let overlay = template(&ds(&env));
    env.set_guard(true);

    // Item 3, client-side: the native DaemonSet applied twice while held.
    let (ok, _, err) = env.apply(NATIVE_DS, &[]);
    assert!(ok && err.contains("overlay switch held"), "{err}");
    let first = ds(&env);
    assert_eq!(template(&first), overlay, "the first apply is held");
    let first_intent = intent(&first).expect("record");
    let (ok, _, err) = env.apply(NATIVE_DS, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("overlay switch held"), "second apply: {err}");
    let second = ds(&env);
    assert_eq!(
        template(&second),
        overlay,
        "the second apply must not roll native pieces"
    );
    assert_eq!(
        intent(&second),
        Some(first_intent.clone()),
        "the same intent"
    );

    // Server-side apply of the same object: still the same intent.
    let (ok, _, err) = env.apply(NATIVE_DS, &["--server-side", "--force-conflicts"]);
    assert!(ok, "{err}");
    let third = ds(&env);
    assert_eq!(template(&third), overlay);
    assert_eq!(intent(&third), Some(first_intent));

    // The release gives exactly the native template.
    env.set_node("node-b", Cond::Routed);
    let released = eventually("release", Duration::from_secs(30), || {
        let d = ds(&env);
        intent(&d).is_none().then_some(d)
    });
    let native: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(fixture(NATIVE_DS)).unwrap()).unwrap();
    let want = template(&native);
    let got = template(&released);
    for (path, name) in [
        ("/spec/initContainers", "cleanup-routes"),
        ("/spec/containers", "add-snat-rule-to-upstream-dns"),
    ] {
        let has = |t: &Value| {
            t.pointer(path)
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|c| c["name"] == name))
        };
        assert!(has(&want) && has(&got), "{name} released");
    }
    assert_eq!(env_value(&released, "CALICO_IPV4POOL_VXLAN"), None);
    assert_eq!(env_value(&released, "FELIX_VXLANENABLED"), None);
    assert_eq!(
        env_value(&released, "FELIX_IPINIPENABLED").as_deref(),
        Some("false")
    );
    assert_eq!(
        env_value(&released, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Never")
    );
}

#[test]
fn a_switch_made_in_several_updates_is_released_whole_and_warnings_say_the_current_state() {
    let env = Env::start(&["--settle-time", "0s", "--release=false"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::NoRoute)], true);

    // Item 4: two parts, each held; the record holds both.
    let err = set_env(&env, "CALICO_IPV4POOL_IPIP=Never");
    assert!(err.contains("overlay switch held"), "{err}");
    let err = set_env(&env, "FELIX_IPINIPENABLED=false");
    assert!(err.contains("overlay switch held"), "{err}");
    assert!(err.contains("merged with the held switch"), "{err}");
    let held = ds(&env);
    assert_eq!(
        env_value(&held, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );
    assert_eq!(
        env_value(&held, "FELIX_IPINIPENABLED").as_deref(),
        Some("true")
    );

    // An unrelated update goes through, keeps the record, and says why it
    // is still held now.
    let (ok, err) = env.set_calico_node_image("quay.io/calico/node:v3.31.7");
    assert!(ok, "{err}");
    assert!(err.contains("overlay switch pending since"), "{err}");
    assert!(err.contains("1 of 2 nodes has no route yet"), "{err}");
    env.set_node("node-b", Cond::Routed);
    env.wait_nodes(2, 2);
    let (ok, err) = env.set_calico_node_image("quay.io/calico/node:v3.31.8");
    assert!(ok, "{err}");
    assert!(
        err.contains("every node has its route"),
        "the warning says the current state: {err}"
    );
    assert!(!err.contains("no route yet"), "{err}");

    // The gate is open: the next switch passes, and it carries both parts.
    let err = set_env(&env, "CALICO_IPV4POOL_VXLAN=Never");
    assert!(!err.contains("overlay switch held"), "{err}");
    let passed = ds(&env);
    assert!(intent(&passed).is_none(), "record cleared");
    assert_eq!(
        env_value(&passed, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Never")
    );
    assert_eq!(
        env_value(&passed, "FELIX_IPINIPENABLED").as_deref(),
        Some("false")
    );
    assert_eq!(
        env_value(&passed, "CALICO_IPV4POOL_VXLAN").as_deref(),
        Some("Never")
    );
    let image = passed
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == "calico-node"))
        .map(|c| c["image"].clone());
    assert_eq!(image, Some(Value::from("quay.io/calico/node:v3.31.8")));
    let _ = pool(&env);
}

#[test]
fn a_config_map_key_that_calico_node_reads_is_guarded_like_the_setting_itself() {
    let env = Env::start(&["--release=false"]);
    env.calico_cluster(
        &[("node-a", Cond::Routed), ("node-b", Cond::NoRoute)],
        false,
    );
    // calico-node takes its IPIP mode from a key of calico-config.
    let (ok, _, err) = patch_config_map(&env, "merge", r#"{"data":{"ipip_mode":"Always"}}"#, &[]);
    assert!(ok, "{err}");
    env.kubectl(&[
        "-n",
        "kube-system",
        "patch",
        "daemonset",
        "calico-node",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"calico-node","env":[{"name":"CALICO_IPV4POOL_IPIP","value":null,"valueFrom":{"configMapKeyRef":{"name":"calico-config","key":"ipip_mode"}}}]}]}}}}"#,
    ]);
    env.set_guard(true);
    let patch =
        |data: &str| patch_config_map(&env, "merge", data, &["--dry-run=server", "-o", "json"]);
    // Lowering that key is held (once the server has seen the DaemonSet).
    let (out, err) = eventually("ConfigMap key switch held", Duration::from_secs(10), || {
        let (ok, out, err) = patch(r#"{"data":{"ipip_mode":"Never"}}"#);
        (ok && err.contains("overlay switch held")).then_some((out, err))
    });
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["data"]["ipip_mode"], "Always", "held: {err}");
    // A key calico-node does not read changes nothing.
    let (ok, _, err) = patch(r#"{"data":{"some_other_key":"x"}}"#);
    assert!(ok && !err.contains("held"), "{err}");
}
