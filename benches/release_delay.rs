//! `make bench`: how long after the last node's RouteCreated the calico-node
//! DaemonSet holds the native template, on a real control plane (median of
//! several runs). Baseline, same run: how long a plain update of the same
//! DaemonSet takes to be seen by the same poller (API server + webhook +
//! measuring overhead). Figures: delay, delay minus settle time, and that
//! excess as a ratio of the baseline.

mod common;
#[path = "../tests/controlplane/mod.rs"]
mod controlplane;
#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::*;
use k8s_openapi::api::apps::v1::DaemonSet;

const SETTLE: &str = "1s";
const SETTLE_SECS: f64 = 1.0;

fn ipip(ds: &DaemonSet) -> Option<String> {
    ds.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == "calico-node")?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "CALICO_IPV4POOL_IPIP")?
        .value
        .clone()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let runs = if common::quick() { 5 } else { 20 };
    let env = Env::start(&["--settle-time", SETTLE]);
    env.calico_cluster(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::Routed),
            ("node-c", Cond::None),
        ],
        true,
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(env.cp.client()).unwrap();
    let api: kube::Api<DaemonSet> = kube::Api::namespaced(client, "kube-system");
    let poll_until = |pred: &dyn Fn(&DaemonSet) -> bool| -> Instant {
        rt.block_on(async {
            let limit = Instant::now() + Duration::from_secs(30);
            loop {
                let ds = api.get("calico-node").await.unwrap();
                if pred(&ds) {
                    return Instant::now();
                }
                assert!(Instant::now() < limit, "timed out");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let (mut delays, mut baselines) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Baseline: a plain, unrelated update, seen by the same poller.
        let mark = format!("run-{i}");
        let t = Instant::now();
        env.kubectl(&[
            "-n",
            "kube-system",
            "annotate",
            "daemonset",
            "calico-node",
            &format!("bench={mark}"),
            "--overwrite",
        ]);
        let seen = poll_until(&|ds| {
            ds.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("bench"))
                == Some(&mark)
        });
        baselines.push((seen - t).as_secs_f64());

        // Held switch, then the last route.
        for f in [
            "configmap-calico-config",
            "ippool-default-ipv4",
            "daemonset-calico-node",
        ] {
            let (ok, _, err) = env.apply(
                &format!("gardener-calico/native/{f}.yaml"),
                &["--server-side", "--force-conflicts"],
            );
            assert!(ok && err.contains("overlay switch held"), "{err}");
        }
        let t = Instant::now();
        env.set_node("node-c", Cond::Routed);
        let done = poll_until(&|ds| ipip(ds).as_deref() == Some("Never"));
        delays.push((done - t).as_secs_f64());

        // Back to overlay (a rollback passes), node-c without route again.
        env.set_node("node-c", Cond::None);
        env.wait_nodes(3, 2);
        for f in [
            "configmap-calico-config",
            "ippool-default-ipv4",
            "daemonset-calico-node",
        ] {
            let (ok, _, err) = env.apply(
                &format!("gardener-calico/overlay-ipip/{f}.yaml"),
                &["--server-side", "--force-conflicts"],
            );
            assert!(ok, "{err}");
        }
    }
    let (d, b) = (median(&mut delays), median(&mut baselines));
    let max = delays[runs - 1];
    let md = format!(
        "## Release delay\n\n`cargo bench --bench release_delay`. A held switch of Gardener's ConfigMap, \
         IPPool and calico-node DaemonSet; the last node gets `RouteCreated`; the time until a poller \
         (GET every 5 ms) sees the native DaemonSet. Settle time {SETTLE}; {runs} runs.\n\n\
         | Figure | min / **median** / max | Baseline (same poller) | Target | |\n|---|---|---|---|---|\n\
         | last `RouteCreated` -> native DaemonSet | {:.0} / **{:.0}** / {:.0} ms | a plain update seen: median {:.0} ms | max <= settle + 500 ms = {:.0} ms | {} |\n\
         | the same, beyond the settle time | {:.0} / **{:.0}** / {:.0} ms | | | |\n",
        delays[0] * 1e3,
        d * 1e3,
        max * 1e3,
        b * 1e3,
        (SETTLE_SECS + 0.5) * 1e3,
        common::verdict(max <= SETTLE_SECS + 0.5),
        (delays[0] - SETTLE_SECS) * 1e3,
        (d - SETTLE_SECS) * 1e3,
        (max - SETTLE_SECS) * 1e3,
    );
    common::report("50-release-delay", &md);
}
