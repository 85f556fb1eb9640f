//! The foundation end to end: a real kube-apiserver calls our server over
//! TLS during `kubectl apply --dry-run=server`.

mod controlplane;
mod e2e_support;

use e2e_support::*;

#[test]
fn server_side_dry_run_apply_calls_the_webhook_and_persists_nothing() {
    let mut env = Env::start(&[]);
    env.create(&[
        "gardener-calico/overlay-ipip/configmap-calico-config.yaml",
        "gardener-calico/overlay-ipip/daemonset-calico-node.yaml",
    ]);
    env.server.wait_ready();
    env.wait_webhook_active();

    let cm_before = env.reviews("ConfigMap", "Allowed", true);
    let ds_before = env.reviews("DaemonSet", "Allowed", true);
    for f in [
        "gardener-calico/native/configmap-calico-config.yaml",
        "gardener-calico/native/daemonset-calico-node.yaml",
    ] {
        let (ok, out, err) = env.apply(
            f,
            &["--dry-run=server", "--server-side", "--force-conflicts"],
        );
        assert!(ok, "dry-run apply of {f} failed: {err}");
        assert!(out.contains("serverside-applied (server dry run)"), "{out}");
    }
    // Server side: both reviews arrived, marked dry run.
    assert_eq!(env.reviews("ConfigMap", "Allowed", true), cm_before + 1.0);
    assert_eq!(env.reviews("DaemonSet", "Allowed", true), ds_before + 1.0);
    let log = env.server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("\"kind\":\"DaemonSet\"") && l.contains("\"dry_run\":true")),
        "no structured log line for the DaemonSet review:\n{log}"
    );
    // kubectl side: nothing persisted.
    assert_eq!(
        env.get(
            &["-n", "kube-system", "configmap", "calico-config"],
            "{.data.calico_backend}"
        ),
        "bird"
    );
    let ds = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
    assert_eq!(
        env_value(&ds, "CALICO_IPV4POOL_IPIP").as_deref(),
        Some("Always")
    );
    assert_eq!(
        env_value(&ds, "FELIX_IPINIPENABLED").as_deref(),
        Some("true")
    );

    // SIGTERM: the server stops by itself, cleanly (exit 0), within the
    // harness's 10 s grace.
    let status = env.server.stop().expect("server was running");
    assert!(status.success(), "server exit: {status}");
    assert!(env.server.log_text().contains("\"stopped\""));
}

#[test]
fn manifests_and_webhook_configurations_are_valid_for_the_api_server() {
    let cp = controlplane::ControlPlane::start().expect("control plane");
    // A server-side dry run of namespaced objects needs their namespace.
    cp.kubectl_ok(&["create", "namespace", "overlay-switch-webhook"], None)
        .unwrap();
    let out = cp
        .kubectl_ok(
            &[
                "apply",
                "--dry-run=server",
                "-k",
                repo("manifests").to_str().unwrap(),
            ],
            None,
        )
        .unwrap();
    for kind in [
        "serviceaccount/overlay-switch-webhook",
        "clusterrole.rbac.authorization.k8s.io/overlay-switch-webhook",
        "clusterrolebinding.rbac.authorization.k8s.io/overlay-switch-webhook",
        "service/overlay-switch-webhook",
        "deployment.apps/overlay-switch-webhook",
        "poddisruptionbudget.policy/overlay-switch-webhook",
    ] {
        assert!(out.contains(kind), "{kind} not applied:\n{out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = std::process::Command::new(BIN)
        .args(["certs", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(certs.status.success());
    for (mode, url) in [
        ("service", None),
        ("url", Some("https://127.0.0.1:9443/mutate")),
    ] {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["webhook-config", "--mode", mode, "--ca-file"])
            .arg(dir.path().join("ca.crt"));
        if let Some(u) = url {
            cmd.args(["--url", u]);
        }
        let rendered = cmd.output().unwrap();
        assert!(rendered.status.success());
        let out = cp
            .kubectl_ok(
                &["apply", "--dry-run=server", "-f", "-"],
                Some(&String::from_utf8(rendered.stdout).unwrap()),
            )
            .unwrap();
        assert!(
            out.contains(
                "mutatingwebhookconfiguration.admissionregistration.k8s.io/overlay-switch-webhook"
            ),
            "{out}"
        );
    }
}
