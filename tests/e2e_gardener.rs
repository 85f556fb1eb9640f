//! Gardener mode end to end (issue #8): one server in the seed guards many
//! shoots. A real seed kube-apiserver with Gardener's Cluster and
//! ManagedResource CRDs, two shoots (kube-apiservers of their own on the
//! seed's etcd) with Calico's overlay objects and nodes, and our server
//! started with `serve --gardener` against the seed. Shoot A's Shoot carries
//! the guard annotation, shoot B's none.

mod controlplane;
mod e2e_support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e_support::*;
use overlay_switch_webhook::gardener::http::ShootsReport;
use serde_json::Value;

const A: &str = "shoot--p--a";
const B: &str = "shoot--p--b";
/// Annotated, but without an access Secret or an API server.
const C: &str = "shoot--p--c";
const POOL: [&str; 2] = ["ippool", "default-ipv4-ippool"];
/// The server's own namespace in the seed (its heartbeat Lease).
const SERVER_NS: &str = "garden-osw";
const EXTENSION: &str = "calico-overlay-switch";

/// Our Extension in `namespace` as gardenlet makes it, asking for a reconcile.
fn extension_yaml(namespace: &str, timestamp: &str) -> String {
    format!(
        "apiVersion: extensions.gardener.cloud/v1alpha1\nkind: Extension\nmetadata:\n  name: {EXTENSION}\n  namespace: {namespace}\n  annotations:\n    gardener.cloud/operation: reconcile\n    gardener.cloud/timestamp: \"{timestamp}\"\nspec:\n  type: {EXTENSION}\n"
    )
}

/// Our Extension's SystemComponentsHealthy condition in `namespace`: (status, reason, message).
fn extension_condition(g: &Garden, namespace: &str) -> Option<(String, String, String)> {
    let ext = g
        .seed()
        .get_json(&["-n", namespace, "extension", EXTENSION]);
    let c = ext["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "SystemComponentsHealthy")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    Some((s("status"), s("reason"), s("message")))
}
const OVERLAY_POOL: &str = "gardener-calico/overlay-ipip/ippool-default-ipv4.yaml";

fn ipip_mode(shoot: &impl Kubectl) -> String {
    shoot.get(&POOL, "{.spec.ipipMode}")
}

fn has_record(shoot: &impl Kubectl) -> bool {
    shoot
        .get_json(&POOL)
        .pointer("/metadata/annotations")
        .and_then(|a| a.as_object())
        .is_some_and(|a| a.contains_key(INTENT))
}

/// `kubectl apply` of the native IPPool in `shoot`; returns its stderr
/// (warnings), panicking if kubectl failed.
fn switch_to_native(shoot: &impl Kubectl) -> String {
    let (ok, _, err) = shoot.apply(NATIVE_POOL, &[]);
    assert!(ok, "apply native pool: {err}");
    err
}

/// Back to the overlay pool (a rollback, never held).
fn back_to_overlay(shoot: &impl Kubectl) {
    let (ok, _, err) = shoot.apply(OVERLAY_POOL, &[]);
    assert!(ok, "apply overlay pool: {err}");
    assert!(!err.contains("overlay switch held"), "rollback held: {err}");
    assert_eq!(ipip_mode(shoot), "Always");
}

/// The IPPool switch (overlay -> native) as a review POSTed straight to
/// `namespace`'s path; returns the review's `response`.
fn post_pool_switch(g: &Garden, namespace: &str) -> (Value, Value) {
    let old = fixture_json(OVERLAY_POOL);
    let new = fixture_json(NATIVE_POOL);
    let path = g.server.shoot_path(namespace);
    let (status, body) = g.server.post_review(&path, &update_review(&old, &new));
    assert_eq!(status, 200, "POST {path}: {body}");
    assert_eq!(body["kind"], "AdmissionReview", "{body}");
    (body["response"].clone(), new)
}

/// Checks the registration of `namespace` in the seed (ManagedResource and
/// Secret) against the contract and returns the MutatingWebhookConfiguration.
fn check_registration(g: &Garden, namespace: &str, ca_pem: &[u8]) -> Value {
    let mr = g
        .managed_resource(namespace)
        .expect("ManagedResource exists");
    assert_eq!(
        mr["apiVersion"], "resources.gardener.cloud/v1alpha1",
        "{mr}"
    );
    assert_eq!(
        mr["spec"]["secretRefs"],
        serde_json::json!([{ "name": REGISTRATION_SECRET }]),
        "{mr}"
    );
    assert!(
        mr["spec"]["class"].is_null(),
        "no class (the shoot's resource manager applies it): {mr}"
    );
    assert_eq!(mr["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1, "{mr}");
    let secret = g.registration_secret(namespace).expect("Secret exists");
    assert_eq!(
        secret["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1,
        "{secret}"
    );

    let mwc = registered_config_of(&secret);
    assert_eq!(mwc["kind"], "MutatingWebhookConfiguration", "{mwc}");
    assert_eq!(mwc["metadata"]["name"], REGISTRATION, "{mwc}");
    assert_eq!(
        mwc["metadata"]["labels"][REMEDIATION_EXCLUDE], "true",
        "{mwc}"
    );
    let token = g.server.path_key.as_ref().unwrap().token(namespace);
    let base = format!(
        "https://127.0.0.1:{}/shoots/{namespace}/{token}",
        g.server.port
    );
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let webhooks = mwc["webhooks"].as_array().expect("webhooks");
    let urls: Vec<&str> = webhooks
        .iter()
        .map(|w| w["clientConfig"]["url"].as_str().unwrap_or_default())
        .collect();
    assert!(
        urls.contains(&format!("{base}/mutate").as_str())
            && urls.contains(&format!("{base}/mutate-node-status").as_str()),
        "{urls:?}"
    );
    for w in webhooks {
        assert_eq!(w["clientConfig"]["caBundle"], bundle.as_str(), "{w}");
        assert!(w["clientConfig"]["service"].is_null(), "{w}");
    }
    mwc
}

/// Whether every webhook of the registration of `namespace` has `ca_pem`.
fn registered_ca_is(g: &Garden, namespace: &str, ca_pem: &[u8]) -> bool {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    g.registered_config(namespace).is_some_and(|mwc| {
        mwc["webhooks"].as_array().is_some_and(|ws| {
            !ws.is_empty()
                && ws
                    .iter()
                    .all(|w| w["clientConfig"]["caBundle"] == bundle.as_str())
        })
    })
}

fn registration_gone(g: &Garden, namespace: &str) -> bool {
    g.managed_resource(namespace).is_none() && g.registration_secret(namespace).is_none()
}

fn phase(start: Instant, what: &str) {
    eprintln!("[{:>6.1?}] {what}", start.elapsed());
}

#[test]
fn one_server_in_the_seed_guards_the_shoots_whose_cluster_says_so() {
    let t = Instant::now();
    let mut g = Garden::start(
        &[
            ShootSpec {
                namespace: A,
                guard: Some("true"),
                nodes: &[("a-1", Cond::Routed), ("a-2", Cond::None)],
            },
            ShootSpec {
                namespace: B,
                guard: None,
                nodes: &[("b-1", Cond::Routed), ("b-2", Cond::None)],
            },
        ],
        &[
            "--namespace",
            SERVER_NS,
            "--extension-health-interval",
            "1s",
        ],
    );
    g.seed().kubectl(&["create", "namespace", SERVER_NS]);
    phase(t, "seed, shoots A and B, server ready");
    let ca = std::fs::read(g.server.ca_file.as_ref().unwrap()).unwrap();

    // --- Registration: A's ManagedResource and Secret, none for B. ---
    eventually(
        "A's ManagedResource and Secret",
        Duration::from_secs(30),
        || (g.managed_resource(A).is_some() && g.registration_secret(A).is_some()).then_some(()),
    );
    check_registration(&g, A, &ca);
    assert!(
        registration_gone(&g, B),
        "B is not annotated: nothing registered"
    );
    let mwc = g.apply_registration_into_shoot(A);
    assert_eq!(mwc["metadata"]["labels"][GRM_LABEL.0], GRM_LABEL.1);
    g.register_by_hand(B);
    phase(t, "registered: A by its ManagedResource, B by hand");

    g.wait_shoot_synced(A, 2, 1);
    let report = g.server.shoots_report();
    assert_eq!(report["clustersSynced"], true, "{report}");
    let b = g.shoot_report(B).expect("B listed");
    assert_eq!(b["guard"], "off", "{b}");
    assert!(b["problem"].is_null(), "{b}");
    let a = g.shoot_report(A).unwrap();
    assert_eq!(a["guard"], "on", "{a}");
    assert!(a["problem"].is_null(), "{a}");
    eprintln!("/shoots: {report}");
    // The contract's type of /shoots reads it.
    let typed: ShootsReport = serde_json::from_value(report.clone())
        .unwrap_or_else(|e| panic!("/shoots is not a ShootsReport ({e}): {report}"));
    assert_eq!(typed.shoots.len(), 2, "{report}");
    assert!(a["gateClosed"].as_str().unwrap().contains("a-2"), "{a}");
    // B is off: served only until its held records are known (none), to
    // find any switch an earlier run held; then not served, known clear.
    let b = eventually("B no longer served", Duration::from_secs(30), || {
        g.shoot_report(B).filter(|b| b["served"] == false)
    });
    assert!(
        b["synced"] == false && b["held"] == serde_json::json!([]),
        "{b}"
    );
    assert_eq!(g.server.metric("overlay_switch_shoots "), 1.0, "A served");
    assert_eq!(
        g.server
            .metric(&format!("overlay_switch_shoot_synced{{shoot=\"{A}\"}}")),
        1.0
    );
    assert_eq!(
        g.server.metric(&format!(
            "overlay_switch_shoot_guard_enabled{{shoot=\"{A}\"}}"
        )),
        1.0
    );
    assert_eq!(
        g.server
            .metric(&format!("overlay_switch_shoot_nodes{{shoot=\"{A}\"}}")),
        2.0
    );
    assert_eq!(
        g.server.metric(&format!(
            "overlay_switch_shoot_nodes_with_route{{shoot=\"{A}\"}}"
        )),
        1.0
    );

    // --- Our Extension in A: gardenlet's reconcile is answered as
    // CheckExtensionObject wants it. ---
    let asked = k8s_openapi::jiff::Timestamp::now();
    g.seed().kubectl_in(
        &["apply", "-f", "-"],
        &extension_yaml(A, &asked.to_string()),
    );
    let ext = eventually("A's Extension answered", Duration::from_secs(30), || {
        let e = g.seed().get_json(&["-n", A, "extension", EXTENSION]);
        (e["status"]["lastOperation"]["state"] == "Succeeded").then_some(e)
    });
    assert!(
        ext["metadata"]["annotations"]["gardener.cloud/operation"].is_null(),
        "the operation annotation is removed: {ext}"
    );
    assert_eq!(
        ext["status"]["observedGeneration"],
        ext["metadata"]["generation"]
    );
    assert!(ext["status"]["lastError"].is_null(), "{ext}");
    let updated: k8s_openapi::jiff::Timestamp = ext["status"]["lastOperation"]["lastUpdateTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        updated.as_second() >= asked.as_second(),
        "answered after gardenlet asked: {ext}"
    );
    eventually(
        "A's condition: nothing held",
        Duration::from_secs(10),
        || {
            let (status, reason, _) = extension_condition(&g, A)?;
            (status == "True" && reason == "OverlaySwitchNotHeld").then_some(())
        },
    );
    // A migration and a restore are answered too (no state to carry),
    // several times in a row: each request is asked right after the last
    // one is answered, before the server's watch may have shown its own
    // answer (a stale answer once removed the next request's annotation).
    let rounds = [("migrate", "Migrate"), ("restore", "Restore")].repeat(3);
    for (op, answered) in rounds {
        g.seed().kubectl(&[
            "-n",
            A,
            "annotate",
            "extension",
            EXTENSION,
            &format!("gardener.cloud/operation={op}"),
            "--overwrite",
        ]);
        eventually(&format!("{op} answered"), Duration::from_secs(20), || {
            let e = g.seed().get_json(&["-n", A, "extension", EXTENSION]);
            (e["status"]["lastOperation"]["type"] == answered
                && e["status"]["lastOperation"]["state"] == "Succeeded"
                && e["metadata"]["annotations"]["gardener.cloud/operation"].is_null())
            .then_some(())
        });
    }
    phase(t, "A's Extension answered and healthy");

    // --- calico-node's write on a routed node of A keeps the route
    // controller's condition (A's node-status path, judged with A's state). ---
    let shoot_a = g.shoot(A);
    shoot_a.grant_node_status("e2e-calico-node", &[CALICO_NODE_USER]);
    let (ok, _, err) = shoot_a.network_unavailable_write(
        "a-1",
        "True",
        "CalicoIsDown",
        Some(CALICO_NODE_USER),
        &[],
    );
    assert!(ok, "calico-node's write: {err}");
    assert!(
        err.contains("kept as the route controller wrote it"),
        "{err}"
    );
    let kept = shoot_a.network_unavailable("a-1");
    assert_eq!(
        (kept[0]["status"].as_str(), kept[0]["reason"].as_str()),
        (Some("False"), Some("RouteCreated")),
        "{kept:?}"
    );
    phase(t, "A: calico-node's write kept the route condition");

    // --- A's switch is held while a-2 has no route. ---
    eventually(
        "A's API server calls the webhook (a dry-run switch is held)",
        Duration::from_secs(20),
        || {
            let (_, _, err) = shoot_a.apply(NATIVE_POOL, &["--dry-run=server"]);
            err.contains("overlay switch held").then_some(())
        },
    );
    let warning = switch_to_native(shoot_a);
    eprintln!("A's switch: {}", warning.trim());
    assert!(warning.contains("overlay switch held"), "{warning}");
    assert!(warning.contains("a-2"), "names the node: {warning}");
    assert_eq!(ipip_mode(shoot_a), "Always", "held: the pool is unchanged");
    assert!(has_record(shoot_a), "the intent is recorded");
    let a = g.shoot_report(A).unwrap();
    assert_eq!(
        a["held"],
        serde_json::json!(["IPPool default-ipv4-ippool"]),
        "{a}"
    );
    assert_eq!(
        g.server.metric(&format!(
            "overlay_switch_shoot_held_objects{{shoot=\"{A}\"}}"
        )),
        1.0
    );
    let (status, reason, message) =
        eventually("A's condition: held", Duration::from_secs(10), || {
            extension_condition(&g, A).filter(|(s, _, _)| s == "Progressing")
        });
    eprintln!("A's SystemComponentsHealthy while held: {status} {reason}: {message}");
    assert_eq!(reason, "OverlaySwitchHeld");
    assert!(
        message.contains("a-2")
            && message.contains("IPPool default-ipv4-ippool")
            && message.contains("since "),
        "{message}"
    );
    phase(t, "A's switch held");

    // --- B's same switch, with b-2 just as routeless, is never held. ---
    let shoot_b = g.shoot(B);
    g.wait_shoot_webhook_called(B);
    let warning = switch_to_native(shoot_b);
    assert!(!warning.contains("overlay switch"), "{warning}");
    assert_eq!(ipip_mode(shoot_b), "Never");
    assert!(!has_record(shoot_b));
    let (response, new) = post_pool_switch(&g, B);
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(patched(&new, &response), new, "B's review is unchanged");
    phase(t, "B's switch passed");

    // --- A shoot's path opens only with its own token: without one, or
    // with another shoot's, the request is refused before it is read. ---
    let review = update_review(&fixture_json(OVERLAY_POOL), &fixture_json(NATIVE_POOL));
    let a_token = g.server.path_key.as_ref().unwrap().token(A);
    for path in [
        format!("/shoots/{A}/mutate"),
        format!("/shoots/{B}/{a_token}/mutate"),
        format!("/shoots/{A}/{a_token}x/mutate"),
        format!("/shoots/{A}/mutate-node-status"),
    ] {
        let (status, body) = g.server.post_review(&path, &review);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.to_string().contains("token"), "{path}: {body}");
    }
    phase(t, "paths without their token refused");

    // --- status --gardener: every Cluster; --shoot: one shoot's detail. ---
    let (code, out, err) = run_status(&[], g.seed.kubeconfig(), &["--gardener"]);
    eprintln!("status --gardener (exit {code}):\n{out}");
    assert_eq!(code, 1, "A holds a switch: {out}{err}");
    assert!(
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .eq(["SHOOT", "GUARD", "REGISTERED", "ROUTED", "HELD", "GATE"]),
        "{out}"
    );
    let line = |ns: &str| {
        out.lines()
            .find(|l| l.starts_with(ns))
            .unwrap_or_else(|| panic!("no row for {ns}: {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line(A)[..6],
        [A, "on", "yes", "1/2", "IPPool", "default-ipv4-ippool"],
        "{out}"
    );
    assert_eq!(line(B)[..5], [B, "off", "no", "1/2", "-"], "{out}");
    let (code, out, err) = run_status(&[], g.seed.kubeconfig(), &["--gardener", "-o", "json"]);
    assert_eq!(code, 1, "{out}{err}");
    let json = parse_json(&out);
    let rows = json.as_array().unwrap_or_else(|| panic!("rows: {json}"));
    let row = |ns: &str| {
        rows.iter()
            .find(|r| r["shoot"] == ns)
            .unwrap_or_else(|| panic!("no row for {ns}: {json}"))
    };
    assert!(
        row(A)["guard"] == "on" && row(A)["registered"] == true,
        "{json}"
    );
    assert!(
        row(B)["guard"] == "off" && row(B)["registered"] == false,
        "{json}"
    );
    assert!(
        row(A)["error"].is_null() && row(B)["error"].is_null(),
        "{json}"
    );
    let (code, out, err) = run_status(
        &[],
        g.seed.kubeconfig(),
        &["--gardener", "--shoot", B, "--settle-time", "0s"],
    );
    eprintln!("status --gardener --shoot {B} (exit {code}):\n{out}");
    assert_eq!(code, 0, "B holds nothing: {out}{err}");
    assert!(out.contains("b-1") && out.contains("b-2"), "{out}");
    let (code, out, err) = run_status(
        &[],
        g.seed.kubeconfig(),
        &["--gardener", "--shoot", A, "--settle-time", "0s"],
    );
    assert_eq!(code, 1, "A holds its pool: {out}{err}");
    assert!(out.contains("IPPool default-ipv4-ippool"), "{out}");
    phase(t, "status --gardener");

    // --- A hibernates while it holds: not guarded, but what is held is
    // kept (served, registered) until it wakes up. ---
    let hibernate = |on: bool| {
        g.seed().kubectl(&[
            "patch",
            "cluster",
            A,
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"shoot":{{"spec":{{"hibernation":{{"enabled":{on}}}}}}}}}}}"#),
        ]);
    };
    hibernate(true);
    eventually("A hibernated in /shoots", Duration::from_secs(10), || {
        (g.shoot_report(A)?["guard"] == "hibernated").then_some(())
    });
    let a = g.shoot_report(A).unwrap();
    assert_eq!(a["served"], true, "still served while it holds: {a}");
    assert_eq!(
        a["held"],
        serde_json::json!(["IPPool default-ipv4-ippool"]),
        "{a}"
    );
    assert!(
        g.managed_resource(A).is_some(),
        "registration kept while hibernated"
    );
    assert_eq!(
        ipip_mode(shoot_a),
        "Always",
        "the held switch is kept, not released"
    );
    assert!(has_record(shoot_a));
    hibernate(false);
    eventually("A awake in /shoots", Duration::from_secs(10), || {
        (g.shoot_report(A)?["guard"] == "on").then_some(())
    });
    phase(t, "A hibernated and woke up with its switch still held");

    // --- The last route of A appears: the held switch is released. ---
    shoot_a.set_node("a-2", Cond::Routed);
    eventually(
        "A's pool released to native",
        Duration::from_secs(30),
        || (ipip_mode(shoot_a) == "Never" && !has_record(shoot_a)).then_some(()),
    );
    eventually("A holds nothing", Duration::from_secs(10), || {
        (g.shoot_report(A)?["held"] == serde_json::json!([])).then_some(())
    });
    let (status, reason, message) =
        eventually("A's condition: released", Duration::from_secs(10), || {
            extension_condition(&g, A).filter(|(s, _, _)| s == "True")
        });
    eprintln!("A's SystemComponentsHealthy after the release: {status} {reason}: {message}");
    assert_eq!(reason, "OverlaySwitchNotHeld");
    // The heartbeat gardenlet's shoot care needs to trust the condition.
    let lease = g
        .seed()
        .get_json(&["-n", SERVER_NS, "lease", "gardener-extension-heartbeat"]);
    let renewed: k8s_openapi::jiff::Timestamp = lease["spec"]["renewTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        k8s_openapi::jiff::Timestamp::now().as_second() - renewed.as_second() < 10,
        "a fresh heartbeat: {lease}"
    );
    phase(t, "A's switch released by itself");

    // --- A's guard off: its next switch passes, its registration goes. ---
    back_to_overlay(shoot_a);
    shoot_a.set_node("a-2", Cond::NoRoute);
    g.wait_shoot_synced(A, 2, 1);
    g.set_cluster_guard(A, Some("false"));
    eventually(
        "A's ManagedResource and Secret removed",
        Duration::from_secs(30),
        || registration_gone(&g, A).then_some(()),
    );
    eventually("A's guard off in /shoots", Duration::from_secs(10), || {
        (g.shoot_report(A)?["guard"] == "off").then_some(())
    });
    // The webhook configuration is still registered in A (as if the
    // resource manager had not removed it yet): the server admits.
    let warning = switch_to_native(shoot_a);
    assert!(!warning.contains("overlay switch"), "{warning}");
    assert_eq!(ipip_mode(shoot_a), "Never");
    assert!(!has_record(shoot_a));
    phase(t, "A's guard off: switch passed, registration removed");

    // --- A on again; the CA bundle changes; then A's API server stops. ---
    back_to_overlay(shoot_a);
    g.set_cluster_guard(A, Some("true"));
    eventually("A registered again", Duration::from_secs(30), || {
        (!registration_gone(&g, A)).then_some(())
    });
    g.wait_shoot_synced(A, 2, 1);
    check_registration(&g, A, &ca);

    let other = g.dir.path().join("other-ca");
    let out = std::process::Command::new(BIN)
        .args(["certs", "--out-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_ca = std::fs::read(other.join("ca.crt")).unwrap();
    assert_ne!(new_ca, ca);
    let ca_file = g.server.ca_file.clone().unwrap();
    let tmp = ca_file.with_extension("new");
    std::fs::write(&tmp, &new_ca).unwrap();
    std::fs::rename(&tmp, &ca_file).unwrap();
    eventually(
        "the registration carries the new CA",
        Duration::from_secs(30),
        || registered_ca_is(&g, A, &new_ca).then_some(()),
    );
    check_registration(&g, A, &new_ca);
    phase(t, "CA bundle change re-applied to the registration");

    // Killed, as a crash: a SIGTERM would wait for the server's watches.
    g.shoot_mut(A).kill();
    let a = eventually(
        "A not synced, with a problem",
        Duration::from_secs(60),
        || {
            let a = g.shoot_report(A)?;
            (a["synced"] == false && a["problem"].is_string()).then_some(a)
        },
    );
    eprintln!("A unreachable: {a}");
    assert_eq!(a["guard"], "on", "{a}");
    assert!(
        g.server.ready(),
        "an unreachable shoot does not make the server unready"
    );
    let (response, new) = post_pool_switch(&g, A);
    assert_eq!(response["allowed"], true, "held, not refused: {response}");
    let stored = patched(&new, &response);
    assert_eq!(stored["spec"]["ipipMode"], "Always", "held: {response}");
    let warnings = warnings_of(&response);
    eprintln!("A's switch while unreachable: {warnings}");
    assert!(
        warnings.contains("overlay switch held") && warnings.contains("unknown"),
        "{warnings}"
    );
    assert_eq!(
        g.server
            .metric(&format!("overlay_switch_shoot_synced{{shoot=\"{A}\"}}")),
        0.0
    );
    // B is unaffected. Its guard is off, so the server does not serve (nor
    // watch) it: it has no synced state to keep; unaffected means no
    // problem reported and its switches still pass.
    let shoot_b = g.shoot(B);
    let b = g.shoot_report(B).unwrap();
    assert!(b["problem"].is_null(), "{b}");
    back_to_overlay(shoot_b);
    let warning = switch_to_native(shoot_b);
    assert!(!warning.contains("overlay switch"), "{warning}");
    assert_eq!(ipip_mode(shoot_b), "Never");
    let (_, reason, message) =
        eventually("A's condition: unknown", Duration::from_secs(10), || {
            extension_condition(&g, A).filter(|(s, _, _)| s == "Unknown")
        });
    assert_eq!(reason, "OverlaySwitchStateUnknown");
    assert!(
        message.contains("watch of"),
        "names the broken watches: {message}"
    );
    phase(t, "A unknown (held), B unaffected");

    // --- A's Cluster deleted: A stops, its path is refused. ---
    g.seed().kubectl(&["delete", "cluster", A, "--wait=true"]);
    eventually("A gone from /shoots", Duration::from_secs(30), || {
        g.shoot_report(A).is_none().then_some(())
    });
    eventually("A's registration removed", Duration::from_secs(30), || {
        registration_gone(&g, A).then_some(())
    });
    let (response, _) = post_pool_switch(&g, A);
    eprintln!("A's switch after its Cluster was deleted: {response}");
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Cluster") && message.contains(A),
        "names the missing Cluster: {response}"
    );
    let (response, _) = post_pool_switch(&g, "shoot--p--nope");
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Cluster") && message.contains("shoot--p--nope"),
        "{response}"
    );
    assert!(g.shoot_report(B).is_some());
    // Through a real API server: B's Cluster deleted, B's next change of a
    // Calico object (its webhook still registered) is refused, and kubectl
    // shows why.
    g.seed().kubectl(&["delete", "cluster", B, "--wait=true"]);
    eventually("B gone from /shoots", Duration::from_secs(30), || {
        g.shoot_report(B).is_none().then_some(())
    });
    let (ok, _, err) = g.shoot(B).apply(OVERLAY_POOL, &[]);
    eprintln!("B's change after its Cluster was deleted: {}", err.trim());
    assert!(!ok, "refused");
    assert!(
        err.contains(&format!("no Gardener Cluster \"{B}\"")),
        "names the missing Cluster: {err}"
    );
    assert_eq!(ipip_mode(g.shoot(B)), "Never", "unchanged");
    phase(t, "A's and B's Clusters deleted: refused");

    // --- Guard on, but no access Secret (and no API server): held as unknown. ---
    g.seed().kubectl(&["create", "namespace", C]);
    g.seed()
        .kubectl_in(&["apply", "-f", "-"], &cluster_yaml(C, Some("true")));
    let c = eventually(
        "C served, not synced, with a problem",
        Duration::from_secs(30),
        || {
            let c = g.shoot_report(C)?;
            (c["served"] == true && c["synced"] == false && c["problem"].is_string()).then_some(c)
        },
    );
    eprintln!("C without access: {c}");
    assert!(
        c["problem"].as_str().unwrap().contains(ACCESS_SECRET),
        "names the missing Secret: {c}"
    );
    let (response, new) = post_pool_switch(&g, C);
    assert_eq!(response["allowed"], true, "held, not refused: {response}");
    assert_eq!(
        patched(&new, &response)["spec"]["ipipMode"],
        "Always",
        "{response}"
    );
    let warnings = warnings_of(&response);
    eprintln!("C's switch: {warnings}");
    assert!(warnings.contains("unknown"), "{warnings}");
    phase(t, "C without an access Secret: held as unknown");

    let problems: Vec<String> = g
        .server
        .log_text()
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("\"level\":\"WARN\""))
        .map(String::from)
        .collect();
    eprintln!("server warnings and errors ({}):", problems.len());
    for l in &problems {
        eprintln!("  {l}");
    }
    eprintln!("e2e_gardener: {:.1?} in all", t.elapsed());
}

/// `serve --gardener --certificates-secret`: the first server makes its CA,
/// serving certificate and path token key and keeps them in a Secret of its
/// namespace; it serves with them and writes that CA and each shoot's token
/// into the registrations; a second server (another replica) takes the same.
/// With a short validity, the two replicas renew and rotate the CA while
/// running: every TLS handshake made with the CA bundle the registration
/// carries at that moment succeeds, on both, throughout.
#[test]
fn the_server_keeps_its_own_certificates_in_the_seed() {
    use std::process::{Command, Stdio};
    let t = Instant::now();
    let seed = controlplane::ControlPlane::start().expect("seed");
    install_seed_crds(&seed);
    for ns in ["garden-osw", A] {
        seed.kubectl_ok(&["create", "namespace", ns], None).unwrap();
    }
    seed.kubectl_ok(&["apply", "-f", "-"], Some(&cluster_yaml(A, Some("true"))))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = |n: u32| {
        let (port, metrics) = (free_port(), free_port());
        let log = dir.path().join(format!("server-{n}.log"));
        let child = Command::new(BIN)
            .args(["--log-format", "json", "serve", "--gardener"])
            .arg("--kubeconfig")
            .arg(seed.kubeconfig())
            .args(["--webhook-base-url", &format!("https://localhost:{port}")])
            .args([
                "--certificates-secret",
                "osw-certs",
                "--namespace",
                "garden-osw",
                // Renewed 20 s before the end; the CA rotated in two steps
                // at least 6 s apart.
                "--certificate-validity",
                "60s",
                "--certificates-check-interval",
                "1s",
                "--tls-reload-interval",
                "1s",
            ])
            .arg("--certificates-dir")
            .arg(dir.path().join(format!("certs-{n}")))
            .args(["--listen-addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--shutdown-delay", "0s", "--shutdown-drain", "1s"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("start server");
        eventually("server ready", Duration::from_secs(30), || {
            http_get(metrics, "/readyz").filter(|(s, _)| *s == 200)
        });
        (child, port)
    };
    let secret = || -> Value {
        let s = seed
            .kubectl_ok(
                &[
                    "-n",
                    "garden-osw",
                    "get",
                    "secret",
                    "osw-certs",
                    "-o",
                    "json",
                ],
                None,
            )
            .unwrap();
        serde_json::from_str(&s).unwrap()
    };
    let data = |v: &Value, k: &str| -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(v["data"][k].as_str().unwrap_or_default())
            .unwrap()
    };
    // The registration of A: (path of its review URL, CA bundle).
    let registration = || -> Option<(String, Vec<u8>)> {
        let s = seed
            .kubectl_ok(
                &["-n", A, "get", "secret", REGISTRATION_SECRET, "-o", "json"],
                None,
            )
            .ok()?;
        let mwc = registered_config_of(&serde_json::from_str(&s).ok()?);
        let hook = mwc["webhooks"]
            .as_array()?
            .iter()
            .find(|w| {
                w["clientConfig"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/mutate"))
            })?
            .clone();
        let url = hook["clientConfig"]["url"].as_str()?;
        let path = url.split_once("://")?.1.split_once('/')?.1;
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(hook["clientConfig"]["caBundle"].as_str()?)
            .ok()?;
        Some((format!("/{path}"), bundle))
    };
    // A TLS handshake (and POST) trusting exactly `roots` (a PEM bundle).
    let served = |port: u16, roots: &[u8], path: &str| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .timeout(Duration::from_secs(5));
            for c in reqwest::Certificate::from_pem_bundle(roots).unwrap() {
                client = client.add_root_certificate(c);
            }
            client
                .build()
                .unwrap()
                .post(format!("https://localhost:{port}{path}"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };

    let (mut first, port) = start(1);
    let s0 = secret();
    assert!(
        s0["metadata"]["annotations"]["overlay-switch-webhook.gardener.cloud/not-after"]
            .is_string(),
        "{s0}"
    );
    let key = data(&s0, "path-token.key");
    assert_eq!(key.len(), 32, "a path token key is made");
    let token = overlay_switch_webhook::gardener::path_token::PathKey::new(&key)
        .unwrap()
        .token(A);
    let signing0 = data(&s0, "ca-signing.crt");
    // The registration carries the Secret's CA and A's token; the server
    // serves with that CA's certificate for its host name.
    let (path, bundle) = eventually(
        "A's registration with the Secret's CA",
        Duration::from_secs(30),
        || registration().filter(|(_, b)| b == &data(&secret(), "ca.crt")),
    );
    assert_eq!(path, format!("/shoots/{A}/{token}/mutate"));
    assert_eq!(
        served(port, &bundle, &path).expect("TLS with the Secret's CA"),
        200
    );
    assert_eq!(
        served(port, &bundle, &format!("/shoots/{A}/mutate")).unwrap(),
        403,
        "no token: refused"
    );
    // Another replica takes the same pair and key.
    let (mut second, port2) = start(2);
    assert_eq!(data(&secret(), "ca-signing.crt"), signing0, "not made anew");
    assert_eq!(data(&secret(), "path-token.key"), key);
    assert_eq!(
        served(port2, &bundle, &path).expect("the second replica serves the same CA"),
        200
    );
    phase(t, "two replicas on one Secret");

    // Rotation while running.
    let mut checks = 0;
    let mut most_cas = 0;
    let mut promoted_at = None;
    while promoted_at.is_none_or(|p: Instant| p.elapsed() < Duration::from_secs(6)) {
        assert!(
            t.elapsed() < Duration::from_secs(150),
            "no CA promotion seen"
        );
        let (path, bundle) = registration().expect("A's registration");
        most_cas = most_cas.max(
            reqwest::Certificate::from_pem_bundle(&bundle)
                .unwrap()
                .len(),
        );
        for p in [port, port2] {
            let status = served(p, &bundle, &path).unwrap_or_else(|e| {
                panic!("port {p}: TLS with the registered bundle failed: {e:?}")
            });
            assert_eq!(status, 200);
        }
        checks += 1;
        if promoted_at.is_none() && data(&secret(), "ca-signing.crt") != signing0 {
            promoted_at = Some(Instant::now());
            phase(t, "the CA was promoted");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        most_cas >= 2,
        "the registration carried the next CA beside the signing one"
    );
    // Both replicas now serve a certificate of the new signing CA.
    eventually(
        "both serve the new CA's certificate",
        Duration::from_secs(15),
        || {
            let s = secret();
            let new_ca = data(&s, "ca-signing.crt");
            let path = format!("/shoots/{A}/{token}/mutate");
            (served(port, &new_ca, &path).is_ok() && served(port2, &new_ca, &path).is_ok())
                .then_some(())
        },
    );
    eprintln!("rotation: {checks} handshake rounds on two replicas, none failed");
    phase(t, "rotated with no failed handshake");
    for c in [&mut first, &mut second] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A server stopped while it holds a switch, the shoot's annotation removed
/// meanwhile: the next run does not forget the switch (it serves the shoot
/// until what it holds is released), and it never removes a registration it
/// still wants while it starts (shoot D's ManagedResource keeps its uid).
#[test]
fn a_restarted_server_releases_what_an_earlier_run_held() {
    const D: &str = "shoot--p--d";
    let t = Instant::now();
    let flags = [
        "--namespace",
        SERVER_NS,
        "--extension-health-interval",
        "1s",
    ];
    let mut g = Garden::start(
        &[
            ShootSpec {
                namespace: A,
                guard: Some("true"),
                nodes: &[("a-1", Cond::Routed), ("a-2", Cond::None)],
            },
            ShootSpec {
                namespace: D,
                guard: Some("true"),
                nodes: &[("d-1", Cond::Routed)],
            },
        ],
        &flags,
    );
    g.seed().kubectl(&["create", "namespace", SERVER_NS]);
    let uid_of = |g: &Garden, ns: &str| -> Option<String> {
        g.managed_resource(ns)?["metadata"]["uid"]
            .as_str()
            .map(String::from)
    };
    let d_uid = eventually("D registered", Duration::from_secs(30), || uid_of(&g, D));
    eventually("A registered", Duration::from_secs(30), || uid_of(&g, A));
    let mwc = g.apply_registration_into_shoot(A);
    g.wait_shoot_synced(A, 2, 1);
    g.seed().kubectl_in(
        &["apply", "-f", "-"],
        &extension_yaml(A, &k8s_openapi::jiff::Timestamp::now().to_string()),
    );
    let shoot_a = g.shoot(A);
    eventually("A's webhook is called", Duration::from_secs(20), || {
        let (_, _, err) = shoot_a.apply(NATIVE_POOL, &["--dry-run=server"]);
        err.contains("overlay switch held").then_some(())
    });
    let warning = switch_to_native(shoot_a);
    assert!(warning.contains("overlay switch held"), "{warning}");
    assert!(has_record(shoot_a));
    phase(t, "A's switch held");

    // Stopped; meanwhile A's annotation is removed, and (as
    // gardener-resource-manager would once the registration is gone) its
    // webhook configuration leaves the shoot.
    assert!(g.server.stop().is_some_and(|s| s.success()));
    g.set_cluster_guard(A, None);
    g.shoot(A).kubectl(&[
        "delete",
        "mutatingwebhookconfiguration",
        mwc["metadata"]["name"].as_str().unwrap(),
    ]);
    g.server = Server::start_gardener(&g.dir.path().join("second"), g.seed.kubeconfig(), &flags);
    g.server.wait_ready();
    phase(t, "restarted with A's guard off");

    // A is served again to find what it holds: its switch, still held.
    let a = eventually("A served, its hold known", Duration::from_secs(30), || {
        g.shoot_report(A)
            .filter(|a| a["served"] == true && a["synced"] == true)
    });
    assert_eq!(a["guard"], "off", "{a}");
    assert_eq!(
        a["held"],
        serde_json::json!(["IPPool default-ipv4-ippool"]),
        "{a}"
    );
    let (_, reason, message) = eventually("A's condition: held", Duration::from_secs(10), || {
        extension_condition(&g, A).filter(|(s, _, _)| s == "Progressing")
    });
    assert!(
        reason == "OverlaySwitchHeld" && message.contains("a-2"),
        "{reason}: {message}"
    );
    assert_eq!(ipip_mode(g.shoot(A)), "Always", "still held");

    // The route appears: the new run releases it, then stops serving A.
    g.shoot(A).set_node("a-2", Cond::Routed);
    eventually("A's pool released", Duration::from_secs(30), || {
        (ipip_mode(g.shoot(A)) == "Never" && !has_record(g.shoot(A))).then_some(())
    });
    let a = eventually("A no longer served", Duration::from_secs(30), || {
        g.shoot_report(A).filter(|a| a["served"] == false)
    });
    assert_eq!(a["held"], serde_json::json!([]), "{a}");
    eventually("A's condition: clear", Duration::from_secs(10), || {
        extension_condition(&g, A).filter(|(s, r, _)| s == "True" && r == "OverlaySwitchGuardOff")
    });
    assert!(registration_gone(&g, A), "A is off: not registered");
    phase(t, "A released by the new run");

    // D was wanted all along: its registration was rewritten (new URL),
    // never deleted.
    eventually(
        "D's registration names the new server",
        Duration::from_secs(30),
        || {
            let port = g.server.port.to_string();
            g.registered_config(D)?
                .to_string()
                .contains(&format!("127.0.0.1:{port}"))
                .then_some(())
        },
    );
    assert_eq!(
        uid_of(&g, D),
        Some(d_uid),
        "D's ManagedResource was never deleted"
    );
    let deletes = g
        .server
        .log_text()
        .lines()
        .filter(|l| l.contains("shoot registration removed") && l.contains(D))
        .count();
    assert_eq!(deletes, 0, "D's registration removed at start");
    phase(t, "D's registration kept");
}
