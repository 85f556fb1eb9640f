//! `make bench`: what the guard adds to a server-side dry-run UPDATE
//! (`?dryRun=All`) of Gardener's calico-node DaemonSet, overlay -> native,
//! through a real kube-apiserver, one keep-alive client (kube-rs), the same
//! request each time. Cases, in the same run, interleaved in rounds (these
//! machines are noisy: each round measures every case):
//!
//! - no webhook registered (the baseline);
//! - a fixed-answer webhook: allowed, no patch, on the same TLS stack
//!   (`server::serve_tls`), reading only the request's uid;
//! - where the time goes: the same fixed-answer webhook answering with a
//!   patch computed once: only our three record annotations, and our whole
//!   hold patch (what the API server spends on applying a patch, without
//!   any work of ours);
//! - ours with the guard off (admitted, no patch);
//! - ours holding the switch (a node lacks its route: the hold patch).
//!
//! Reported: per case min / median / max of the round medians, the added
//! median of each webhook over no webhook, and ratios.
//! `DRYRUN_RUNS` sets the PUTs per case and round (default 40), `BENCH_QUICK=1`
//! fewer rounds.

mod common;
#[path = "../tests/controlplane/mod.rs"]
mod controlplane;
#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use std::time::{Duration, Instant};

use common::{Stats, quick, report, verdict};
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

/// What the fixed-answer webhook answers: computed once from the first
/// review it gets, then returned for every review (the PUTs are identical).
#[derive(Clone, Copy, PartialEq, Debug, Default)]
enum Answer {
    /// Allowed, no patch.
    #[default]
    Allow,
    /// Our hold patch, as our webhook computed it for the first review.
    OursPrecomputed,
    /// Only the record annotations of our hold patch (template untouched).
    RecordOnly,
}

type Shared = std::sync::Arc<std::sync::Mutex<(Answer, Option<String>)>>;

/// The patch (base64) the fixed answer returns for `body`, if any.
fn patch_for(answer: Answer, body: &[u8]) -> Option<String> {
    use base64::Engine as _;
    if answer == Answer::Allow {
        return None;
    }
    let cluster = overlay_switch_webhook::cluster::Cluster::new(Default::default());
    common::feed_blocked_cluster(&cluster);
    let st = overlay_switch_webhook::server::AppState::new(cluster, None);
    let (out, _) = st.webhook.review(body);
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let ours: Vec<serde_json::Value> =
        serde_json::from_slice(&b64.decode(out["response"]["patch"].as_str()?).unwrap()).unwrap();
    // The patch our webhook answered, or only its record annotations.
    let ops: Vec<serde_json::Value> = match answer {
        Answer::Allow => unreachable!(),
        Answer::OursPrecomputed => ours,
        Answer::RecordOnly => ours
            .into_iter()
            .filter(|o| o["path"].as_str().unwrap().starts_with("/metadata"))
            .collect(),
    };
    Some(b64.encode(serde_json::to_vec(&ops).unwrap()))
}

/// A webhook with a fixed answer (see [`Answer`]), on our TLS stack.
async fn fixed_answer_server(shared: Shared) -> (u16, String) {
    let router = axum::Router::new().route(
        "/allow",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            let uid = serde_json::from_slice::<UidOnly>(&body)
                .map(|r| r.request.uid)
                .unwrap_or_default();
            let patch = {
                let mut g = shared.lock().unwrap();
                if g.1.is_none() && g.0 != Answer::Allow {
                    g.1 = patch_for(g.0, &body);
                }
                g.1.clone()
            };
            let mut answer = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": true}
            });
            if let Some(p) = patch {
                answer["response"]["patchType"] = "JSONPatch".into();
                answer["response"]["patch"] = p.into();
            }
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

fn main() {
    let runs: usize = std::env::var("DRYRUN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut env = Env::start(&["--release=false"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shared: Shared = Default::default();
    let (port, ca) = rt.block_on(fixed_answer_server(shared.clone()));
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
    let rounds = if quick() { 2 } else { 5 };
    let cases = [
        "no webhook",
        "fixed answer, no patch",
        "fixed answer + our 3 record annotations",
        "fixed answer + our whole hold patch",
        "ours, guard off",
        "ours, held (hold patch)",
    ];
    let mut medians: Vec<Vec<f64>> = vec![vec![]; cases.len()];
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    for _ in 0..rounds {
        env.kubectl(&["delete", "mutatingwebhookconfiguration", ours]);
        medians[0].push(median(measure(false)));

        *shared.lock().unwrap() = (Answer::Allow, None);
        env.kubectl_in(&["apply", "-f", "-"], &fixed_registration(port, &ca));
        std::thread::sleep(Duration::from_secs(2)); // the registration is seen
        medians[1].push(median(measure(false)));
        for (i, a) in [(2, Answer::RecordOnly), (3, Answer::OursPrecomputed)] {
            *shared.lock().unwrap() = (a, None);
            medians[i].push(median(measure(true)));
        }
        env.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            "bench-fixed-answer",
        ]);

        env.register_webhook();
        env.set_guard(false);
        env.wait_webhook_active();
        medians[4].push(median(measure(false)));
        env.set_guard(true);
        medians[5].push(median(measure(true)));
    }
    // Added over no webhook, per round, then its min / median / max.
    let added =
        |c: usize| -> Vec<f64> { (0..rounds).map(|r| medians[c][r] - medians[0][r]).collect() };
    let ratio = |a: usize, b: usize| -> Stats {
        Stats::of(
            (0..rounds)
                .map(|r| (medians[a][r] - medians[0][r]) / (medians[b][r] - medians[0][r]))
                .collect(),
        )
    };
    let mut md = format!(
        "## Server-side dry-run UPDATE through kube-apiserver\n\n\
         `cargo bench --bench dryrun`. Gardener's calico-node DaemonSet, overlay -> native, `PUT ?dryRun=All` \
         from one keep-alive client; {rounds} rounds, each measuring every case with {runs} PUTs \
         (after 20 not counted). Figures are min / **median** / max of the round medians, in ms.\n\n\
         | Case | PUT time | Added over no webhook |\n|---|---|---|\n"
    );
    for (c, name) in cases.iter().enumerate() {
        let add = if c == 0 {
            "(baseline)".to_string()
        } else {
            Stats::of(added(c)).show(2)
        };
        md += &format!(
            "| {name} | {} | {add} |\n",
            Stats::of(medians[c].clone()).show(2)
        );
    }
    let held = ratio(5, 1);
    let patch_cost = ratio(3, 1);
    let ours_over_same_patch = ratio(5, 3);
    md += &format!(
        "\n| Ratio of added medians | min / median / max | Target | |\n|---|---|---|---|\n\
         | held / fixed answer (no patch) | {} | <= 1.2x | {} |\n\
         | fixed answer + our hold patch / fixed answer (the API server's cost of the patch) | {} | | |\n\
         | held / fixed answer + the same hold patch (our server's own share) | {} | | |\n\
         | guard off / fixed answer | {} | | |\n",
        held.show(2),
        verdict(held.median <= 1.2),
        patch_cost.show(2),
        ours_over_same_patch.show(2),
        ratio(4, 1).show(2),
    );
    if held.median > 1.2 {
        md += "\n**Why the 1.2x target is missed.** The API server's own handling of *any* patch costs \
            more than the whole fixed answer: the fixed answer returning only our three record \
            annotations already costs about as much as our hold (row 3), and returning our precomputed \
            hold patch (row 4) costs nearly all of it, with no work of ours in the path. What is left for \
            our server is the third ratio (held against the fixed answer returning the same \
            patch). A held switch must change the object (restore the template, \
            record the intent), so a patch cannot be avoided. See *Profiles* below for where \
            kube-apiserver spends that time, and what was tried.\n";
    }
    report("20-dryrun", &md);

    // `DRYRUN_PROFILE=1`: kube-apiserver's CPU profile (its /debug/pprof)
    // over 8 s of PUTs, with the fixed answer without and with our record
    // patch, into target/bench-report/apiserver-*.pprof (read them with
    // `go tool pprof -top`); how benches/PROFILES.md was made.
    if std::env::var("DRYRUN_PROFILE").is_ok() {
        // The harness starts it with --profiling=false; the last flag wins.
        env.cp.kill_apiserver();
        env.cp
            .start_apiserver_again_with(&["--profiling=true".into()])
            .unwrap();
        env.kubectl(&["delete", "mutatingwebhookconfiguration", ours]);
        env.kubectl_in(&["apply", "-f", "-"], &fixed_registration(port, &ca));
        std::thread::sleep(Duration::from_secs(2));
        for (name, a) in [("allow", Answer::Allow), ("record", Answer::RecordOnly)] {
            *shared.lock().unwrap() = (a, None);
            let mut kubectl = env.cp.kubectl();
            kubectl.args(["get", "--raw", "/debug/pprof/profile?seconds=8"]);
            let profile = std::thread::spawn(move || kubectl.output().unwrap().stdout);
            let deadline = Instant::now() + Duration::from_secs(9);
            let mut puts = 0;
            while Instant::now() < deadline {
                puts += measure(a != Answer::Allow).len() + 20;
            }
            let bytes = profile.join().unwrap();
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("target/bench-report/apiserver-{name}.pprof"));
            std::fs::write(&path, bytes).unwrap();
            eprintln!(
                "kube-apiserver profile: {} ({puts} PUTs in 9 s, the profile covers 8 s)",
                path.display()
            );
        }
    }
}
