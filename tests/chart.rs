//! The Gardener extension's Helm chart (charts/overlay-switch-webhook),
//! rendered by the real helm (tests/helm/build.sh): what Gardener's seed
//! network policies need (Service annotations, pod labels), the server's
//! flags as the binary parses them, every object accepted by a real
//! kube-apiserver, and the chart's RBAC enough for the server: it runs as
//! the chart's ServiceAccount, makes its certificates Secret, registers a
//! guarded shoot and renews its extension heartbeat.

mod controlplane;
mod e2e_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_support::*;
use serde_json::Value;

const NS: &str = "extension-osw";

fn helm() -> String {
    let out = Command::new(repo("tests/helm/build.sh"))
        .output()
        .expect("tests/helm/build.sh runs");
    assert!(
        out.status.success(),
        "building helm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `helm template` of the chart with `extra` flags, as JSON documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let out = Command::new(helm())
        .args(["template", "osw"])
        .arg(repo("charts/overlay-switch-webhook"))
        .args(["--namespace", NS])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn args_of(docs: &[Value]) -> Vec<String> {
    find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_chart_lints_and_carries_what_gardeners_network_policies_need() {
    let out = Command::new(helm())
        .arg("lint")
        .arg(repo("charts/overlay-switch-webhook"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = render(&[]);
    // The webhook's Service (the admin port has its own, overlay-switch-webhook-metrics).
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "overlay-switch-webhook")
        .expect("the webhook Service");
    let a = &service["metadata"]["annotations"];
    let ports: Value = serde_json::from_str(
        a["networking.resources.gardener.cloud/from-all-webhook-targets-allowed-ports"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        ports,
        serde_json::json!([{"protocol": "TCP", "port": 9443}])
    );
    let selectors: Value = serde_json::from_str(
        a["networking.resources.gardener.cloud/namespace-selectors"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        selectors,
        serde_json::json!([{"matchLabels": {"gardener.cloud/role": "shoot"}}])
    );
    assert_eq!(
        a["networking.resources.gardener.cloud/pod-label-selector-namespace-alias"],
        "extensions"
    );
    let labels = &find(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    for l in [
        "networking.gardener.cloud/to-runtime-apiserver",
        "networking.gardener.cloud/to-dns",
        "networking.resources.gardener.cloud/to-all-shoots-kube-apiserver-tcp-443",
    ] {
        assert_eq!(labels[l], "allowed", "{l}: {labels}");
    }
    let args = args_of(&docs);
    assert!(args.contains(&format!(
        "--webhook-base-url=https://overlay-switch-webhook.{NS}:443"
    )));
    // Values reach the flags.
    let docs = render(&[
        "--set",
        "settleTime=30s",
        "--set",
        "calicoNodeUsers={a:b:c,d:e:f}",
    ]);
    let args = args_of(&docs);
    assert!(args.contains(&"--settle-time=30s".to_string()), "{args:?}");
    assert!(
        args.contains(&"--calico-node-user=a:b:c".to_string())
            && args.contains(&"--calico-node-user=d:e:f".to_string())
    );
}

#[test]
fn the_rendered_server_runs_as_the_charts_service_account_with_the_charts_rights() {
    let docs = render(&[]);
    let cp = controlplane::ControlPlane::start().expect("control plane");
    install_seed_crds(&cp);
    cp.kubectl_ok(&["create", "namespace", NS], None).unwrap();
    let yaml: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap()))
        .collect();
    // Every object is valid for a real API server...
    cp.kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(&yaml))
        .unwrap();
    // ...and its ServiceAccount and RBAC are created (no kubelet runs the
    // Deployment here: the server is run below with its flags).
    let rbac: String = docs
        .iter()
        .filter(|d| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&d["kind"].as_str().unwrap_or(""))
        })
        .map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap()))
        .collect();
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&rbac)).unwrap();
    let token = cp
        .kubectl_ok(
            &["-n", NS, "create", "token", "overlay-switch-webhook"],
            None,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let mut sa = admin.clone();
    sa["users"][0]["user"] = serde_json::json!({ "token": token.trim() });
    let kubeconfig = dir.path().join("sa-kubeconfig");
    std::fs::write(&kubeconfig, serde_saphyr::to_string(&sa).unwrap()).unwrap();

    // A shoot namespace with an annotated Cluster (no shoot API server: the
    // registration needs none).
    let shoot = "shoot--p--a";
    cp.kubectl_ok(&["create", "namespace", shoot], None)
        .unwrap();
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&cluster_yaml(shoot, Some("true"))),
    )
    .unwrap();

    // The server with the chart's flags, as the chart's ServiceAccount;
    // only the addresses and the certificates folder are made local.
    let (port, metrics) = (free_port(), free_port());
    let mut args: Vec<String> = args_of(&docs)
        .into_iter()
        .filter(|a| {
            !a.starts_with("--listen-addr")
                && !a.starts_with("--metrics-addr")
                && !a.starts_with("--certificates-dir")
        })
        .collect();
    args.extend([
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--metrics-addr=127.0.0.1:{metrics}"),
        format!("--certificates-dir={}", dir.path().join("certs").display()),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--shutdown-delay=0s".into(),
    ]);
    let log = dir.path().join("server.log");
    let mut child = Command::new(BIN)
        .args(&args)
        .env("POD_NAMESPACE", NS)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("the server ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            http_get(metrics, "/readyz").filter(|(s, _)| *s == 200)
        });
        eventually(
            "its certificates Secret and the shoot's registration",
            Duration::from_secs(30),
            || {
                let certs = cp
                    .kubectl_ok(
                        &[
                            "-n",
                            NS,
                            "get",
                            "secret",
                            "overlay-switch-webhook-certs",
                            "-o",
                            "name",
                        ],
                        None,
                    )
                    .ok()?;
                let mr = cp
                    .kubectl_ok(
                        &[
                            "-n",
                            shoot,
                            "get",
                            "managedresource",
                            "overlay-switch-webhook",
                            "-o",
                            "json",
                        ],
                        None,
                    )
                    .ok()?;
                (!certs.trim().is_empty()).then_some(mr)
            },
        );
        eventually(
            "its extension heartbeat Lease",
            Duration::from_secs(40),
            || {
                cp.kubectl_ok(
                    &[
                        "-n",
                        NS,
                        "get",
                        "lease",
                        "gardener-extension-heartbeat",
                        "-o",
                        "name",
                    ],
                    None,
                )
                .ok()
            },
        );
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !log_text.contains("forbidden"),
            "a request was forbidden: {log_text}"
        );
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::panic::resume_unwind(e);
    }
}
