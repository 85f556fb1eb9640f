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

/// SIGTERM while reviews stream in over keep-alive connections: `/readyz`
/// turns unready while the webhook still answers (so endpoints drop the pod
/// first), every request that gets an answer gets a whole, valid one, every
/// request sent before the listener closes succeeds, and the server exits 0.
#[test]
fn sigterm_under_load_turns_unready_first_and_fails_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    const DELAY: Duration = Duration::from_secs(2);
    let mut env = Env::start(&["--shutdown-delay", "2s", "--shutdown-drain", "5s"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);
    let mut review = update_review(
        &fixture_json("gardener-calico/overlay-ipip/ippool-default-ipv4.yaml"),
        &fixture_json(NATIVE_POOL),
    );
    review["request"]["dryRun"] = serde_json::json!(true);
    let body = review.to_string();
    let ca = std::fs::read(env.server.certs.join("ca.crt")).unwrap();
    let url = format!("https://127.0.0.1:{}/mutate", env.server.port);
    let stop = Arc::new(AtomicBool::new(false));
    // (sent at, answered at, outcome): Ok(()) a whole held answer, Err(why).
    type Log = Vec<(Instant, Instant, Result<(), String>)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (ca, url, body, stop, log) = (
                ca.clone(),
                url.clone(),
                body.clone(),
                stop.clone(),
                log.clone(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = reqwest::Client::builder()
                        .use_rustls_tls()
                        .tls_built_in_root_certs(false)
                        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let outcome = match client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await
                        {
                            Err(e) => Err(format!("no answer: {e}")),
                            Ok(r) if r.status() != 200 => Err(format!("status {}", r.status())),
                            Ok(r) => match r.json::<serde_json::Value>().await {
                                Ok(v)
                                    if v["response"]["allowed"] == true
                                        && v["response"]["patch"].is_string() =>
                                {
                                    Ok(())
                                }
                                Ok(v) => Err(format!("answer not a hold: {v}")),
                                Err(e) => Err(format!("answer cut: {e}")),
                            },
                        };
                        let failed = outcome.is_err();
                        log.lock().unwrap().push((sent, Instant::now(), outcome));
                        if failed {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                });
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let pid = env.server.pid();
    let term = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Unready while still serving.
    let unready_at = eventually("/readyz unready", Duration::from_secs(2), || {
        http_get(env.server.metrics_port, "/readyz")
            .filter(|(s, _)| *s == 503)
            .map(|_| Instant::now())
    });
    let status = env.server.stop().expect("the server was running");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "exit: {status}");
    let log = log.lock().unwrap();
    let ok_after_unready = log
        .iter()
        .filter(|(sent, _, o)| *sent > unready_at && o.is_ok())
        .count();
    assert!(
        ok_after_unready > 0,
        "reviews answered while unready: the endpoints drop the pod first"
    );
    let close = term + DELAY;
    let mut before_close = 0;
    for (sent, answered, outcome) in log.iter() {
        match outcome {
            Ok(()) => {}
            // Before the listener closed: every request succeeds.
            Err(why) if *answered < close => {
                panic!(
                    "a review failed {:?} after SIGTERM, before the drain: {why}",
                    answered.duration_since(term)
                )
            }
            // After: only a refused connection, never a cut or wrong answer.
            Err(why) => assert!(why.starts_with("no answer"), "{why}"),
        }
        if *sent < close {
            before_close += 1;
        }
    }
    eprintln!(
        "{} reviews, {before_close} sent before the listener closed, {ok_after_unready} answered while unready, exit {status}",
        log.len()
    );
}
