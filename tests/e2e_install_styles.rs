//! Calico's other install styles, end to end against a real kube-apiserver:
//! pools of v3 CRD mode (`projectcalico.org/v3` IPPools served as a plain
//! CRD, Calico v3.32+) and FelixConfiguration in both API groups. Their
//! switches are held while a node lacks its route and released by the
//! server once it has it; updates that are not switches (a finalizer, a
//! status, a whole-object replace that drops our annotations) go through
//! and keep what is held; an encapsulating v3 pool cannot be deleted. And
//! the Tigera operator's Installation: a pool's `encapsulation` lowered in
//! it is held on the Installation and released there.

mod controlplane;
mod e2e_support;

use std::time::Duration;

use e2e_support::*;
use serde_json::Value;

const CRDS: [&str; 3] = [
    "calico-v3/crd-ippools.projectcalico.org.yaml",
    "calico-v3/crd-felixconfigurations.crd.projectcalico.org.yaml",
    "calico-v3/crd-felixconfigurations.projectcalico.org.yaml",
];

const POOL_V3: &str = "ippools.projectcalico.org/default-ipv4-ippool";
const POOL_V1: &str = "ippools.crd.projectcalico.org/default-ipv4-ippool";
const FELIX_V1: &str = "felixconfigurations.crd.projectcalico.org/default";
const FELIX_V3: &str = "felixconfigurations.projectcalico.org/default";

/// The overlay cluster of `calico_cluster` plus the v3 and Felix CRDs; the
/// server is started again so that its watches list the new kinds at once.
fn setup() -> Env {
    setup_with(&CRDS)
}

fn setup_with(crds: &[&str]) -> Env {
    let mut env = Env::start(&[]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);
    install_crds(&env.cp, crds);
    assert!(env.server.stop().is_some_and(|s| s.success()));
    env.server = Server::start(&env.dir.path().join("second"), env.cp.kubeconfig(), &[]);
    env.register_webhook();
    env.server.wait_ready();
    env.wait_webhook_active();
    env
}

fn get(env: &Env, what: &str) -> Value {
    env.get_json(&[what])
}

fn held(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(INTENT))
        .is_some()
}

#[test]
fn v3_pools_and_felix_configurations_are_held_and_released_and_other_updates_pass() {
    let env = setup();
    for f in [
        "calico-v3/ippool-ipip.yaml",
        "calico-v3/felixconfiguration-default-ipip-v1.yaml",
        "calico-v3/felixconfiguration-default-ipip-v3.yaml",
    ] {
        env.kubectl(&["apply", "-f", fixture(f).to_str().unwrap()]);
    }

    // calico-kube-controllers in v3 CRD mode: a finalizer and a status
    // condition, then the finalizer removed: not switches, untouched.
    for patch in [
        r#"{"metadata":{"finalizers":["projectcalico.org/ippool"]}}"#,
        r#"{"status":{"conditions":[{"type":"Allocatable","status":"True","reason":"PoolReady"}]}}"#,
        r#"{"metadata":{"finalizers":null}}"#,
    ] {
        env.kubectl(&["patch", POOL_V3, "--type", "merge", "-p", patch]);
        let pool = get(&env, POOL_V3);
        assert!(!held(&pool), "{patch}: nothing held");
        assert_eq!(pool["spec"]["ipipMode"], "Always");
    }
    assert_eq!(
        get(&env, POOL_V3)["status"]["conditions"][0]["reason"],
        "PoolReady"
    );

    // The switches: each held, the object keeping its overlay.
    // Client-side apply, and server-side apply (another client path).
    for (f, how) in [
        ("calico-v3/ippool-native.yaml", &[][..]),
        (
            "calico-v3/felixconfiguration-default-native-v1.yaml",
            &[][..],
        ),
        (
            "calico-v3/felixconfiguration-default-native-v3.yaml",
            &["--server-side", "--force-conflicts"][..],
        ),
    ] {
        let (ok, _, err) = env.apply(f, how);
        assert!(ok, "{f}: {err}");
        assert!(err.contains("overlay switch held"), "{f}: {err}");
    }
    let pool = get(&env, POOL_V3);
    assert!(held(&pool));
    assert_eq!(pool["spec"]["ipipMode"], "Always", "held");
    for felix in [FELIX_V1, FELIX_V3] {
        let f = get(&env, felix);
        assert!(held(&f), "{felix}");
        assert_eq!(f["spec"]["ipipEnabled"], true, "{felix} held");
        assert_eq!(f["spec"]["logSeverityScreen"], "Info");
    }

    // A writer that replaces the whole object and drops annotations it does
    // not know (calico-apiserver, calicoctl apply): the record stays. For
    // the v3 pool, and for the v1 pool as calico-apiserver writes it.
    let (ok, _, err) = env.apply(NATIVE_POOL, &[]);
    assert!(ok && err.contains("overlay switch held"), "{err}");
    for what in [POOL_V3, POOL_V1] {
        let mut replaced = get(&env, what);
        replaced["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        replaced["spec"]["natOutgoing"] = Value::Bool(false);
        env.kubectl_in(&["replace", "-f", "-"], &replaced.to_string());
        let pool = get(&env, what);
        assert!(
            held(&pool),
            "{what}: the record survives a replace without it"
        );
        assert_eq!(pool["spec"]["ipipMode"], "Always", "{what}: still held");
        assert_eq!(
            pool["spec"]["natOutgoing"], false,
            "{what}: the replace went through"
        );
    }

    // A pool that still encapsulates cannot be deleted meanwhile.
    let (ok, _, err) = env.kubectl_raw(&["delete", POOL_V3, "--dry-run=server"]);
    assert!(!ok && err.contains("still encapsulates"), "{err}");

    // The route appears: all four are released by the server.
    env.set_node("node-b", Cond::Routed);
    eventually("released", Duration::from_secs(60), || {
        [POOL_V3, POOL_V1, FELIX_V1, FELIX_V3]
            .iter()
            .all(|o| !held(&get(&env, o)))
            .then_some(())
    });
    let v1 = get(&env, POOL_V1);
    assert_eq!(v1["spec"]["ipipMode"], "Never", "native: {v1}");
    assert_eq!(v1["spec"]["natOutgoing"], false, "the later change kept");
    let pool = get(&env, POOL_V3);
    assert_eq!(pool["spec"].get("ipipMode"), None, "native: {pool}");
    assert_eq!(pool["spec"]["natOutgoing"], false, "the later change kept");
    for felix in [FELIX_V1, FELIX_V3] {
        assert_eq!(get(&env, felix)["spec"]["ipipEnabled"], false, "{felix}");
    }
    // Native now: the pool is deleted at once.
    env.kubectl(&["delete", POOL_V3]);
}

/// The Tigera operator's Installation, `IPIP` -> `None`: held while a node
/// lacks its route (the Installation keeps `IPIP`, the record holds `None`),
/// released by the server once the route is there; the operator then writes
/// the pool (no operator runs here: the Installation is what it reads). An
/// unrelated change of the Installation goes through meanwhile.
#[test]
fn an_installation_switch_is_held_on_the_installation_and_released() {
    const INSTALLATION: &str = "installations.operator.tigera.io/default";
    let env = setup_with(&["tigera-operator/crd-installations.yaml"]);
    let encapsulation =
        |i: &Value| i["spec"]["calicoNetwork"]["ipPools"][0]["encapsulation"].clone();
    let (ok, _, err) = env.apply("tigera-operator/installation-ipip.yaml", &[]);
    assert!(ok, "{err}");

    let (ok, _, err) = env.apply("tigera-operator/installation-native.yaml", &[]);
    assert!(ok, "{err}");
    assert!(err.contains("overlay switch held"), "{err}");
    let log = env.server.log_text();
    assert!(
        log.contains("spec.calicoNetwork.ipPools[default-ipv4-ippool].encapsulation IPIP -> None"),
        "the switch, pool by pool, in the server's log"
    );
    let inst = get(&env, INSTALLATION);
    assert!(held(&inst));
    assert_eq!(encapsulation(&inst), "IPIP", "the Installation keeps IPIP");
    let intent = inst["metadata"]["annotations"][INTENT].as_str().unwrap();
    assert!(intent.contains("None"), "the record holds None: {intent}");

    // Not a switch: goes through and keeps the record.
    env.kubectl(&[
        "patch",
        INSTALLATION,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"variant":"Calico"}}"#,
    ]);
    let inst = get(&env, INSTALLATION);
    assert_eq!(inst["spec"]["variant"], "Calico");
    assert!(held(&inst));

    env.set_node("node-b", Cond::Routed);
    let inst = eventually("released", Duration::from_secs(60), || {
        let i = get(&env, INSTALLATION);
        (!held(&i)).then_some(i)
    });
    assert_eq!(encapsulation(&inst), "None");
    assert_eq!(inst["spec"]["variant"], "Calico", "the later change kept");
}
