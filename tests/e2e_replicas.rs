//! Two real server processes (replicas) against one control plane, as the
//! manifests' ServiceAccount: one at a time holds the release lease; a cancel
//! racing the release never leaves the cluster half switched; a cancel that
//! comes while a release is partially applied is refused (by the holder, and
//! by the other replica after the holder died) and the release completed;
//! killing the holder lets the other take over once the lease expires, and
//! finish.

mod controlplane;
mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::*;

const CANCEL: &str = "calico.networking.extensions.gardener.cloud/overlay-switch-cancel";
const LEASE_SECS: u64 = 3;
const HOLDER_GAUGE: &str = "overlay_switch_release_lease_holder ";

/// Replica A (`env.server`, registered as the webhook) and replica B, both
/// releasing, with the Calico objects in overlay and node-c without a route.
fn replicas() -> (Env, Server) {
    let cp = controlplane::ControlPlane::start().expect("control plane");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = manifest_service_account_kubeconfig(&cp, dir.path());
    let lease = format!("{LEASE_SECS}s");
    let a = Server::start(
        &dir.path().join("a"),
        &kubeconfig,
        &[
            "--pod-name",
            "replica-a",
            "--release-lease-duration",
            &lease,
        ],
    );
    let b = Server::start(
        &dir.path().join("b"),
        &kubeconfig,
        &[
            "--pod-name",
            "replica-b",
            "--release-lease-duration",
            &lease,
        ],
    );
    let env = Env { server: a, cp, dir };
    env.register_webhook();
    env.calico_cluster(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::Routed),
            ("node-c", Cond::NoRoute),
        ],
        true,
    );
    b.wait_ready();
    wait_nodes_on(&b, 3, 2);
    (env, b)
}

fn records(env: &Env) -> usize {
    [
        env.get_json(&["-n", "kube-system", "configmap", "calico-config"]),
        env.get_json(&["ippool", "default-ipv4-ippool"]),
        env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]),
    ]
    .iter()
    .filter(|o| {
        o.pointer("/metadata/annotations")
            .and_then(|a| a.as_object())
            .is_some_and(|a| a.contains_key(INTENT))
    })
    .count()
}

/// "native", "overlay", or what is mixed.
fn switch_state(env: &Env) -> String {
    let cm = env.get(
        &["-n", "kube-system", "configmap", "calico-config"],
        "{.data.calico_backend}",
    );
    let pool = env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}");
    let ds = env_value(
        &env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]),
        "CALICO_IPV4POOL_IPIP",
    )
    .unwrap_or_default();
    match (cm.as_str(), pool.as_str(), ds.as_str()) {
        ("none", "Never", "Never") => "native".into(),
        ("bird", "Always", "Always") => "overlay".into(),
        _ => format!("MIXED: configmap {cm}, pool {pool}, daemonset {ds}"),
    }
}

fn cancel_pending(env: &Env) -> bool {
    env.get(&["namespace", "kube-system"], "{.metadata.annotations}")
        .contains("overlay-switch-cancel")
}

/// Both replicas' own view of who holds the lease: never both. A sample
/// that shows both is taken again (a hand-over between the two reads).
fn assert_at_most_one_believes_it_holds(a: &Server, b: &Server) {
    for _ in 0..3 {
        if !(a.metric(HOLDER_GAUGE) == 1.0 && b.metric(HOLDER_GAUGE) == 1.0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("both replicas believe they hold the release lease");
}

#[test]
fn a_cancel_racing_the_last_route_ends_all_released_or_all_cancelled_with_one_lease_holder() {
    let (env, b) = replicas();
    let ids = [lease_identity(&env.server), lease_identity(&b)];
    assert!(ids[0].starts_with("replica-a-") && ids[1].starts_with("replica-b-"));
    let mut outcomes = Vec::new();
    for round in 0..4 {
        for f in NATIVE {
            let (ok, _, err) = env.apply(f, &[]);
            assert!(ok && err.contains("overlay switch held"), "{f}: {err}");
        }
        assert_eq!(records(&env), 3);

        // The last route and the cancel at the same moment.
        std::thread::scope(|s| {
            s.spawn(|| env.set_node("node-c", Cond::Routed));
            s.spawn(|| {
                env.kubectl(&[
                    "annotate",
                    "namespace",
                    "kube-system",
                    &format!("{CANCEL}=true"),
                ])
            });
        });
        eventually("release or cancel decided", Duration::from_secs(40), || {
            let holder = lease_holder(&env.cp);
            assert!(
                holder.is_empty() || ids.contains(&holder),
                "unknown holder {holder}"
            );
            assert_at_most_one_believes_it_holds(&env.server, &b);
            (records(&env) == 0 && !cancel_pending(&env)).then_some(())
        });
        let state = switch_state(&env);
        assert!(!state.starts_with("MIXED"), "round {round}: {state}");
        outcomes.push(state.clone());

        // Back to overlay, with node-c blocking, for the next round.
        env.set_node("node-c", Cond::NoRoute);
        env.wait_nodes(3, 2);
        wait_nodes_on(&b, 3, 2);
        if state == "native" {
            for f in OVERLAY {
                let (ok, _, err) = env.apply(f, &[]);
                assert!(ok, "{f}: {err}");
            }
            assert_eq!(switch_state(&env), "overlay");
        }
    }
    eprintln!("outcomes: {outcomes:?}");

    // Idle: the holder gave the lease up; nobody believes it holds it.
    eventually("lease given up when idle", Duration::from_secs(10), || {
        (lease_holder(&env.cp).is_empty()
            && env.server.metric(HOLDER_GAUGE) == 0.0
            && b.metric(HOLDER_GAUGE) == 0.0)
            .then_some(())
    });
    let lease = release_lease(&env.cp).expect("the lease exists");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], LEASE_SECS);
    assert!(
        lease
            .pointer("/metadata/annotations")
            .and_then(|a| a.as_object())
            .is_none_or(|a| !a.keys().any(|k| k.ends_with("release-in-progress"))),
        "no release left in progress: {lease}"
    );
}

#[test]
fn killing_the_holder_lets_the_other_replica_take_over_and_finish_the_release() {
    let (env, b) = replicas();
    let ids = [lease_identity(&env.server), lease_identity(&b)];
    for f in NATIVE {
        let (ok, _, err) = env.apply(f, &[]);
        assert!(ok && err.contains("overlay switch held"), "{f}: {err}");
    }
    // The release is refused (so it stays unfinished), and the last route appears.
    deny_native_configmap(&env.cp, "no-native-routing");
    env.set_node("node-c", Cond::Routed);
    let denied = "overlay_switch_release_failures_total{kind=\"ConfigMap\",class=\"Denied\"}";
    let holder = eventually("a holder that is refused", Duration::from_secs(30), || {
        let h = lease_holder(&env.cp);
        let server = if h == ids[0] {
            &env.server
        } else if h == ids[1] {
            &b
        } else {
            return None;
        };
        (server.metric(denied) >= 1.0).then_some(h)
    });
    let a_holds = holder == ids[0];
    let (h, other) = if a_holds {
        (&env.server, &b)
    } else {
        (&b, &env.server)
    };

    // While it retries, the holder keeps the lease (renewing it), for more
    // than two lease durations; the other replica waits and does nothing.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2 * LEASE_SECS + 1) {
        assert_eq!(lease_holder(&env.cp), holder);
        assert_eq!(other.metric(HOLDER_GAUGE), 0.0);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(h.metric(HOLDER_GAUGE), 1.0);
    assert_eq!(other.metric(denied), 0.0, "the other replica never tried");
    assert!(
        other
            .log_text()
            .contains("release lease held by another replica; waiting"),
        "the other replica waited"
    );
    assert_eq!(records(&env), 3, "nothing released while refused");

    // The webhook must outlive the holder: serve it from the other replica.
    if a_holds {
        register_webhook_at(&env.cp, other);
    }
    kill_hard(h);
    let killed = Instant::now();
    allow_native_configmap(&env.cp, "no-native-routing");

    eventually(
        "the other replica finishes the release",
        Duration::from_secs(60),
        || (switch_state(&env) == "native" && records(&env) == 0).then_some(()),
    );
    let took = killed.elapsed();
    eprintln!("released {took:?} after the holder was killed");
    // Not before the lease would have expired: at least two thirds of it
    // after the holder's last renewal (it renews every third).
    assert!(
        took >= Duration::from_millis(LEASE_SECS * 1000 / 2),
        "taken over too early: {took:?}"
    );
    let log = other.log_text();
    let acquired = log
        .lines()
        .find(|l| l.contains("release lease acquired") && l.contains(&holder))
        .unwrap_or_else(|| panic!("no take-over from {holder} in the log:\n{log}"));
    assert!(acquired.contains("previous"), "{acquired}");
    let lease = release_lease(&env.cp).unwrap();
    assert!(
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0) >= 1,
        "{lease}"
    );
    // Done: the new holder gave it up again.
    eventually("lease given up when done", Duration::from_secs(10), || {
        lease_holder(&env.cp).is_empty().then_some(())
    });
}

/// A ValidatingAdmissionPolicy that lets a native IPPool through in dry runs
/// only: the release's dry runs pass, its real write of the pool is refused,
/// after the ConfigMap's went through. A release partially applied, for real.
fn deny_real_native_ippool_writes(env: &Env) {
    let yaml = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: native-pools-only-in-dry-runs
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["crd.projectcalico.org"]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["ippools"]
  validations:
  - expression: "(has(request.dryRun) && request.dryRun) || !has(object.spec.ipipMode) || object.spec.ipipMode != 'Never'"
    message: "native IPPools only in dry runs today"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: native-pools-only-in-dry-runs
spec:
  policyName: native-pools-only-in-dry-runs
  validationActions: [Deny]
"#;
    env.kubectl_in(&["apply", "-f", "-"], yaml);
    let probe = "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: policy-probe\nspec:\n  cidr: 10.99.0.0/16\n  ipipMode: Never\n";
    eventually("the policy enforced", Duration::from_secs(30), || {
        let out = env
            .cp
            .kubectl_run(&["create", "-f", "-"], Some(probe))
            .unwrap();
        if out.status.success() {
            env.kubectl(&["delete", "ippool", "policy-probe"]);
            return None;
        }
        String::from_utf8_lossy(&out.stderr)
            .contains("native IPPools only in dry runs today")
            .then_some(())
    });
}

fn request_cancel(env: &Env) {
    env.kubectl(&[
        "annotate",
        "namespace",
        "kube-system",
        &format!("{CANCEL}=true"),
    ]);
}

/// Half switched: the ConfigMap released, the IPPool and DaemonSet held.
fn partially_released(env: &Env) -> bool {
    env.get(
        &["-n", "kube-system", "configmap", "calico-config"],
        "{.data.calico_backend}",
    ) == "none"
        && env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}") == "Always"
        && records(env) == 2
}

#[test]
fn a_cancel_while_a_release_is_partially_applied_is_refused_by_either_replica_and_the_release_completes()
 {
    let (env, b) = replicas();
    let ids = [lease_identity(&env.server), lease_identity(&b)];
    for f in NATIVE {
        let (ok, _, err) = env.apply(f, &[]);
        assert!(ok && err.contains("overlay switch held"), "{f}: {err}");
    }
    deny_real_native_ippool_writes(&env);
    env.set_node("node-c", Cond::Routed);
    eventually(
        "the ConfigMap released, the IPPool refused",
        Duration::from_secs(30),
        || partially_released(&env).then_some(()),
    );
    let holder = lease_holder(&env.cp);
    assert!(ids.contains(&holder), "{holder}");
    let a_holds = holder == ids[0];
    let (h, other) = if a_holds {
        (&env.server, &b)
    } else {
        (&b, &env.server)
    };
    let marker = release_lease(&env.cp).unwrap();
    assert!(
        marker.to_string().contains("release-in-progress"),
        "the lease marks the release as started: {marker}"
    );

    // The holder refuses a cancel: it would leave the cluster half switched.
    request_cancel(&env);
    eventually(
        "cancel refused and removed",
        Duration::from_secs(20),
        || (!cancel_pending(&env)).then_some(()),
    );
    assert!(partially_released(&env), "{}", switch_state(&env));
    assert!(h.log_text().contains("overlay switch cancel refused"));
    let ev = env.kubectl(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        "reason=OverlaySwitchCancelRefused",
        "-o",
        "custom-columns=OBJECT:.involvedObject.name,MESSAGE:.message",
        "--no-headers",
    ]);
    assert!(
        ev.contains("calico-node")
            && ev.contains("ConfigMap kube-system/calico-config already released"),
        "{ev}"
    );

    // The holder dies; the other replica takes over, and refuses too: what
    // was started is on the lease, not in the dead process.
    if a_holds {
        register_webhook_at(&env.cp, other);
    }
    kill_hard(h);
    request_cancel(&env);
    eventually(
        "cancel refused by the other replica",
        Duration::from_secs(30),
        || (!cancel_pending(&env)).then_some(()),
    );
    assert!(other.log_text().contains("overlay switch cancel refused"));
    assert!(partially_released(&env), "{}", switch_state(&env));

    // The refusal is lifted: the release completes.
    env.kubectl(&[
        "delete",
        "validatingadmissionpolicybinding",
        "native-pools-only-in-dry-runs",
    ]);
    eventually("release completed", Duration::from_secs(60), || {
        (switch_state(&env) == "native" && records(&env) == 0).then_some(())
    });
    eventually("marker cleared", Duration::from_secs(10), || {
        (!release_lease(&env.cp)
            .unwrap()
            .to_string()
            .contains("release-in-progress"))
        .then_some(())
    });
}
