//! `make bench`: our server against a real kube-apiserver holding 5,000
//! realistic Nodes (1 in 100 without a route; `BENCH_QUICK=1`: 1,000), and
//! under node status churn. Figures, each with its baseline in the same run:
//!
//! - the time from the server's start until its route cache holds every
//!   node (`overlay_switch_nodes` and `..._with_route` exact);
//! - the server's RSS once synced, against a process that keeps whole Node
//!   objects (a kube-rs reflector of Nodes, this bench re-run as a child);
//! - the server's own review time (its histogram, decode to encode) for
//!   dry-run PUTs of calico-node, held, at 10 and at 5,000 nodes;
//! - 500 node status updates/s (kubelet heartbeats of every node; 20 nodes
//!   whose route comes and goes) for 60 s (`BENCH_QUICK=1`: 10 s): our
//!   server's CPU against kube-apiserver's, and afterwards the route count
//!   and the warning of a held switch exact.

mod common;
#[path = "../tests/controlplane/mod.rs"]
mod controlplane;
#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Stats, cpu_secs, quick, realistic_node_json, report, rss_mib, verdict};
use e2e_support::*;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const CHILD: &str = "OSW_SCALE_REFLECTOR_CHILD";
const FLAPPERS: usize = 20;

/// The child: a reflector of whole Nodes; prints its RSS once synced.
fn reflector_child(expect: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use kube::runtime::{WatchStreamExt as _, reflector, watcher};
        let client = kube::Client::try_default().await.unwrap();
        let (reader, writer) = reflector::store::<Node>();
        let stream = reflector(
            writer,
            watcher(Api::<Node>::all(client), Default::default()),
        )
        .applied_objects();
        tokio::spawn(stream.for_each(|_| async {}));
        let started = Instant::now();
        reader.wait_until_ready().await.unwrap();
        while reader.len() < expect && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss, _) = rss_mib(std::process::id());
        println!("{} {rss}", reader.len());
    });
}

fn metric(server: &Server, name: &str) -> Option<f64> {
    let m = server.metrics();
    m.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The server's summed review time and count for held DaemonSet reviews.
fn review_sum_count(server: &Server) -> (f64, f64) {
    let m = server.metrics();
    let get = |suffix: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "overlay_switch_admission_duration_seconds_{suffix}"
                ))
            })
            .filter(|l| l.contains("kind=\"DaemonSet\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (get("sum"), get("count"))
}

fn main() {
    let nodes: usize = if quick() { 1000 } else { 5000 };
    if std::env::var(CHILD).is_ok() {
        return reflector_child(nodes + 10);
    }
    let churn_secs: u64 = if quick() { 10 } else { 60 };
    let rate: u64 = 500;

    let mut env = Env::start(&[]);
    let small: Vec<(String, Cond)> = (0..10)
        .map(|i| {
            (
                format!("node-{i}"),
                if i == 0 { Cond::NoRoute } else { Cond::Routed },
            )
        })
        .collect();
    let small_ref: Vec<(&str, Cond)> = small.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    env.calico_cluster(&small_ref, true);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(env.cp.client()).unwrap();
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let node_api: Api<Node> = Api::all(client.clone());
    let native: DaemonSet = serde_json::from_value(fixture_json(NATIVE_DS)).unwrap();

    // The server's own review time over `n` held dry-run PUTs, µs each.
    let review_times = |server: &Server, n: usize| -> Vec<f64> {
        rt.block_on(async {
            let live = ds_api.get("calico-node").await.unwrap();
            let mut ds = native.clone();
            ds.metadata.resource_version = live.metadata.resource_version.clone();
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            let mut out = vec![];
            for _ in 0..n {
                let (s0, c0) = review_sum_count(server);
                ds_api.replace("calico-node", &dry, &ds).await.unwrap();
                let (s1, c1) = review_sum_count(server);
                if c1 > c0 {
                    out.push((s1 - s0) / (c1 - c0) * 1e6);
                }
            }
            out
        })
    };
    let rounds = if quick() { 30 } else { 100 };
    let at_10 = Stats::of(review_times(&env.server, rounds));

    // The nodes, created with their status as kubelet and the route
    // controller write it (1 in 100 without a route).
    let t = Instant::now();
    let without_route = (0..nodes).filter(|i| i % 100 == 0).count();
    rt.block_on(async {
        futures::stream::iter(0..nodes)
            .map(|i| {
                let api = node_api.clone();
                async move {
                    let n = realistic_node_json(i, i % 100 != 0);
                    let name = n["metadata"]["name"].as_str().unwrap().to_string();
                    let node: Node = serde_json::from_value(n.clone()).unwrap();
                    api.create(&PostParams::default(), &node).await.unwrap();
                    let status = json!({"status": n["status"]});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    });
    let create_secs = t.elapsed().as_secs_f64();
    let total = nodes + 10;
    let routed = total - without_route - 1;
    eventually("every node seen", Duration::from_secs(120), || {
        (metric(&env.server, "overlay_switch_nodes") == Some(total as f64)
            && metric(&env.server, "overlay_switch_nodes_with_route") == Some(routed as f64))
        .then_some(())
    });

    // Fresh starts: the time until the cache holds every node, and the
    // RSS once it does.
    let (mut syncs, mut rsses) = (vec![], vec![]);
    for _ in 0..if quick() { 2 } else { 3 } {
        env.server.stop();
        let t = Instant::now();
        env.server = Server::start(env.dir.path(), env.cp.kubeconfig(), &[]);
        let synced = eventually("synced after start", Duration::from_secs(120), || {
            (env.server.ready()
                && metric(&env.server, "overlay_switch_nodes") == Some(total as f64)
                && metric(&env.server, "overlay_switch_nodes_with_route") == Some(routed as f64))
            .then(|| t.elapsed())
        });
        syncs.push(synced.as_secs_f64());
        std::thread::sleep(Duration::from_millis(500));
        rsses.push(rss_mib(env.server.pid()).0);
    }
    let (synced, rss) = (Stats::of(syncs), Stats::of(rsses));
    env.register_webhook();
    env.wait_webhook_active();
    let at_n = Stats::of(review_times(&env.server, rounds));

    // Baseline: whole Nodes in a reflector, its own process.
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("KUBECONFIG", env.cp.kubeconfig())
        .env(
            "BENCH_QUICK",
            std::env::var("BENCH_QUICK").unwrap_or_default(),
        )
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&child.stdout).to_string();
    let mut it = line.split_whitespace();
    let seen: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let reflector_rss: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert_eq!(seen, total, "the reflector saw every node: {line}");

    // Churn: heartbeats of every node, round robin; FLAPPERS routed nodes
    // lose and regain their route. Ends with every flapper routed.
    let (etcd_pid, api_pid) = env.cp.pids();
    let _ = etcd_pid;
    let server_pid = env.server.pid();
    let (ours0, api0) = (cpu_secs(server_pid), cpu_secs(api_pid));
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let flapper = |k: usize| 1 + k * (nodes / FLAPPERS); // never a multiple of 100
    let t = Instant::now();
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut handles = vec![];
        for k in 0..(rate * churn_secs) as usize {
            tick.tick().await;
            let api = node_api.clone();
            let (sent, errors) = (sent.clone(), errors.clone());
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let i = k % nodes;
            let name = format!("shoot--proj--name-worker-z1-{i:05}");
            let conditions = vec![json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": now})];
            if k % 25 == 0 {
                // A flapper's route comes or goes.
                let f = flapper((k / 25) % FLAPPERS);
                let up = (k / 25 / FLAPPERS) % 2 == 1;
                let (s, r) = if up { ("False", "RouteCreated") } else { ("True", "NoRouteCreated") };
                let fname = format!("shoot--proj--name-worker-z1-{f:05}");
                let body = json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": s,
                    "reason": r, "message": "route", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
                let api2 = api.clone();
                handles.push(tokio::spawn(async move {
                    let _ = api2
                        .patch_status(&fname, &PatchParams::default(), &Patch::Strategic(&body))
                        .await;
                }));
            }
            let body = json!({"status": {"conditions": conditions}});
            handles.push(tokio::spawn(async move {
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&body))
                    .await
                {
                    Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }));
            if handles.len() > 2000 {
                for h in handles.drain(..1000) {
                    h.await.unwrap();
                }
            }
        }
        for h in handles {
            h.await.unwrap();
        }
        // Every flapper routed again.
        for k in 0..FLAPPERS {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let body = json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False",
                "reason": "RouteCreated", "message": "route", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
            let name = format!("shoot--proj--name-worker-z1-{:05}", flapper(k));
            node_api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&body))
                .await
                .unwrap();
        }
    });
    let churn_wall = t.elapsed().as_secs_f64();
    let ours_cpu = (cpu_secs(server_pid) - ours0) / churn_wall;
    let api_cpu = (cpu_secs(api_pid) - api0) / churn_wall;
    let updates = sent.load(Ordering::Relaxed);
    let exact_routes = eventually("routes exact after churn", Duration::from_secs(30), || {
        (metric(&env.server, "overlay_switch_nodes") == Some(total as f64)
            && metric(&env.server, "overlay_switch_nodes_with_route") == Some(routed as f64))
        .then_some(true)
    });
    let (ok, _, err) = env.apply(NATIVE_DS, &["--dry-run=server"]);
    let want = format!("{} of {total} nodes have no route", without_route + 1);
    let exact_warning = ok && err.contains("overlay switch held") && err.contains(&want);
    assert!(exact_warning, "held with the exact count ({want}): {err}");

    let gate_ratio = at_n.median / at_10.median;
    let mut md = format!(
        "## Scale: {total} Nodes in a real kube-apiserver, and node status churn\n\n\
         `cargo bench --bench scale`. {total} realistic Nodes (conditions, addresses, 20 images each; \
         {} without a route), created in {create_secs:.0} s.\n\n\
         | Figure | Ours | Baseline (same run) | Ratio | Target | |\n|---|---|---|---|---|---|\n",
        without_route + 1
    );
    md += &format!(
        "| cache synced after the server's start (min / median / max of its starts) | {} s | | | < 5 s | {} |\n",
        synced.show(2),
        verdict(synced.max < 5.0)
    );
    md += &format!(
        "| server RSS once synced (min / median / max of its starts) | {} MiB | whole-Node reflector process {reflector_rss:.1} MiB | {:.2}x | < 50 MB | {} |\n",
        rss.show(1),
        rss.median / reflector_rss,
        verdict(rss.max * 1.048576 < 50.0)
    );
    md += &format!(
        "| review time in the server (held, µs, min / median / max of {rounds}) | {total} nodes: {} | 10 nodes: {} | {gate_ratio:.2}x | the same | {} |\n",
        at_n.show(0),
        at_10.show(0),
        verdict(gate_ratio < 1.25)
    );
    md += &format!(
        "| node status churn: our server's CPU | {:.1}% of a core | kube-apiserver {:.1}% | {:.3}x | < 10% of a core | {} |\n",
        ours_cpu * 100.0,
        api_cpu * 100.0,
        ours_cpu / api_cpu,
        verdict(ours_cpu < 0.10)
    );
    md += &format!(
        "| after churn: route count and warning exact | {} ({want}) | | | exact | {} |\n\n",
        if exact_routes && exact_warning {
            "exact"
        } else {
            "wrong"
        },
        verdict(exact_routes && exact_warning)
    );
    md += &format!(
        "Churn: {updates} heartbeat updates accepted in {churn_wall:.1} s ({:.0}/s, asked {rate}/s; {} errors), \
         plus a route change of one of {FLAPPERS} nodes every 25 updates.\n",
        updates as f64 / churn_wall,
        errors.load(Ordering::Relaxed)
    );
    report("40-scale", &md);
}
