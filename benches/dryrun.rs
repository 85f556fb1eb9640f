//! `make bench`: what the guard adds to a server-side dry-run UPDATE
//! (`?dryRun=All`) of Gardener's calico-node DaemonSet, overlay -> native,
//! through a real kube-apiserver, one keep-alive client (kube-rs), the same
//! request each time. Cases, in the same run:
//!
//! - no webhook registered (the baseline);
//! - a fixed-answer webhook: allowed, no patch, on the same TLS stack
//!   (`server::serve_tls`), reading only the request's uid;
//! - ours with the guard off (admitted, no patch);
//! - ours holding the switch (a node lacks its route: the hold patch).
//!
//! Reported: min/median/p90 per case, the added median of each webhook over
//! no webhook, and the held case's added median as a ratio of the fixed
//! answer's. `DRYRUN_RUNS` sets the PUTs per case (default 200).

mod common;
#[path = "../tests/controlplane/mod.rs"]
mod controlplane;
#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, PostParams};
use serde::Deserialize;

/// Only the uid of a review: the fixed answer reads nothing else.
#[derive(Deserialize)]
struct UidOnly {
    request: Uid,
}

#[derive(Deserialize)]
struct Uid {
    uid: String,
}

/// A webhook that allows everything, with no patch, on our TLS stack.
async fn fixed_answer_server() -> (u16, String) {
    let router = axum::Router::new().route(
        "/allow",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let uid = serde_json::from_slice::<UidOnly>(&body)
                .map(|r| r.request.uid)
                .unwrap_or_default();
            let answer = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": true}
            });
            ([("content-type", "application/json")], answer.to_string())
        }),
    );
    common::serve_router_tls(router).await
}

/// The fixed answer registered for calico-node UPDATEs, as ours is.
fn fixed_registration(port: u16, ca_pem: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "bench-fixed-answer"},
        "webhooks": [{
            "name": "fixed.bench.overlay-switch.gardener.cloud",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/allow"), "caBundle": ca},
            "rules": [{"operations": ["UPDATE"], "apiGroups": ["apps"], "apiVersions": ["v1"],
                       "resources": ["daemonsets"], "scope": "Namespaced"}],
            "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 5,
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                "operator": "In", "values": ["kube-system"]}]},
            "matchConditions": [{"name": "calico-node-only",
                "expression": "object.metadata.name == 'calico-node'"}]
        }]
    })
    .to_string()
}

struct Figures {
    min: f64,
    median: f64,
    p90: f64,
}

fn figures(mut v: Vec<f64>) -> Figures {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Figures {
        min: v[0],
        median: v[v.len() / 2],
        p90: v[v.len() * 9 / 10],
    }
}

fn main() {
    let runs: usize = std::env::var("DRYRUN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let env = Env::start(&["--release=false"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (port, ca) = rt.block_on(fixed_answer_server());
    let client = rt.block_on(env.cp.client()).unwrap();
    let api: Api<DaemonSet> = Api::namespaced(client, "kube-system");
    let native: DaemonSet = serde_json::from_value(fixture_json(NATIVE_DS)).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    // `runs` dry-run PUTs (after 20 not counted), in ms; each checked.
    let measure = |expect_held: bool| -> Vec<f64> {
        rt.block_on(async {
            let live = api.get("calico-node").await.unwrap();
            let mut ds = native.clone();
            ds.metadata.resource_version = live.metadata.resource_version.clone();
            let mut out = Vec::with_capacity(runs);
            for i in 0..runs + 20 {
                let t = Instant::now();
                let got = api.replace("calico-node", &dry_run, &ds).await.unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let held = got
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(INTENT));
                assert_eq!(held, expect_held, "held as expected");
                if i >= 20 {
                    out.push(ms);
                }
            }
            out
        })
    };
    let ours = "overlay-switch-webhook";

    env.kubectl(&["delete", "mutatingwebhookconfiguration", ours]);
    let none = figures(measure(false));

    env.kubectl_in(&["apply", "-f", "-"], &fixed_registration(port, &ca));
    std::thread::sleep(Duration::from_secs(2)); // the registration is seen
    let fixed = figures(measure(false));
    env.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration",
        "bench-fixed-answer",
    ]);

    env.register_webhook();
    env.set_guard(false);
    env.wait_webhook_active();
    let off = figures(measure(false));

    env.set_guard(true);
    let held = figures(measure(true));

    println!(
        "server-side dry-run UPDATE of calico-node (overlay -> native) through kube-apiserver, {runs} PUTs per case, one keep-alive client:"
    );
    println!("  case                         min     median  p90     added median");
    for (name, f) in [
        ("no webhook", &none),
        ("fixed-answer webhook", &fixed),
        ("ours, guard off", &off),
        ("ours, held (hold patch)", &held),
    ] {
        println!(
            "  {name:<27}  {:>5.1}   {:>5.1}   {:>5.1}   {:>+5.1} ms",
            f.min,
            f.median,
            f.p90,
            f.median - none.median
        );
    }
    println!(
        "ratio of added medians, held / fixed answer: {:.2}x (target <= 1.2x); guard off / fixed answer: {:.2}x",
        (held.median - none.median) / (fixed.median - none.median),
        (off.median - none.median) / (fixed.median - none.median)
    );
}
