//! `make bench`: the real `serve --gardener` process guarding many shoots
//! (default 200 shoots of 100 nodes each; `OSW_BENCH_SHOOTS`,
//! `OSW_BENCH_NODES` to change), with real connections.
//!
//! How the shoots are simulated: one real kube-apiserver plays every shoot
//! (and the seed). Each shoot has its own `Cluster` (annotated), its own
//! namespace and access Secret; the server makes one client per shoot from
//! it, and runs each shoot's five watches and release controller over its
//! own connections, exactly as against separate API servers: 200 x 100
//! node objects are listed and watched, 200 x 5 watches are open. What a
//! separate API server per shoot would add (per-server TLS sessions) is
//! the same per connection.
//!
//! Reported: the server's RSS (and peak), its CPU to sync every shoot, at
//! rest, and per node event (a heartbeat of every node, seen by every
//! shoot); and the decision time over TLS for shoot 0's path against a
//! single-cluster server judging the same cluster, interleaved in the same
//! run (ratio; target <= 1.5), and the same for the last shoot's path.

mod common;
#[path = "../tests/controlplane/mod.rs"]
mod controlplane;
#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use std::time::{Duration, Instant};

use common::{cpu_secs, rss_mib};
use e2e_support::{GUARD, Server, eventually, fixture};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open sockets of a process (its connections).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn nu(status: &str, reason: &str) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": status, "reason": reason,
        "message": "bench", "lastTransitionTime": now, "lastHeartbeatTime": now}]}})
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// A dry-run review of calico-node's DaemonSet going from IPIP to native.
fn switch_review(uid: usize) -> Vec<u8> {
    let mut old = yaml("gardener-calico/overlay-ipip/daemonset-calico-node.yaml");
    let mut new = yaml("gardener-calico/native/daemonset-calico-node.yaml");
    for o in [&mut old, &mut new] {
        o["metadata"]["uid"] = json!("bench-ds");
        o["metadata"]["resourceVersion"] = json!("1");
    }
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{uid}"),
            "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
            "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
            "name": "calico-node", "namespace": "kube-system", "operation": "UPDATE",
            "userInfo": {"username": "bench"}, "dryRun": true,
            "object": new, "oldObject": old
        }
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` lists; nothing to list
    }
    let shoots = env_usize("OSW_BENCH_SHOOTS", if common::quick() { 20 } else { 200 });
    let nodes = env_usize("OSW_BENCH_NODES", 100);
    println!(
        "gardener_server: {shoots} shoots x {nodes} nodes, one real kube-apiserver plays them all"
    );
    let cp = tokio::task::spawn_blocking(controlplane::ControlPlane::start).await??;
    let client = cp.client().await?;
    for crd in [
        "gardener/10-crd-extensions.gardener.cloud_clusters.yaml",
        "gardener/10-crd-resources.gardener.cloud_managedresources.yaml",
        "gardener-calico/crd-ippools.yaml",
    ] {
        cp.kubectl_ok(&["apply", "-f", fixture(crd).to_str().unwrap()], None)?;
    }
    cp.kubectl_ok(
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout=60s",
            "crd/clusters.extensions.gardener.cloud",
            "crd/managedresources.resources.gardener.cloud",
            "crd/ippools.crd.projectcalico.org",
        ],
        None,
    )?;
    for f in e2e_support::OVERLAY {
        cp.kubectl_ok(&["create", "-f", fixture(f).to_str().unwrap()], None)?;
    }
    cp.kubectl_ok(
        &[
            "annotate",
            "namespace",
            "kube-system",
            &format!("{GUARD}=true"),
        ],
        None,
    )?;

    // Nodes: all routed but node-0000, so that a switch is held.
    let node_api = Api::<Node>::all(client.clone());
    for i in 0..nodes {
        let name = format!("node-{i:04}");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        node_api.create(&PostParams::default(), &node).await?;
        let cond = if i == 0 {
            nu("True", "NoRouteCreated")
        } else {
            nu("False", "RouteCreated")
        };
        node_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&cond))
            .await?;
    }
    // Shoots: a namespace, an access Secret and an annotated Cluster each.
    let kubeconfig = std::fs::read(cp.kubeconfig())?;
    let clusters = Api::<DynamicObject>::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("extensions.gardener.cloud", "v1alpha1", "Cluster"),
            "clusters",
        ),
    );
    for i in 0..shoots {
        let ns = format!("shoot--bench--s{i:03}");
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
            )
            .await?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "gardener-internal", "namespace": ns},
            "data": {"kubeconfig": base64_encode(&kubeconfig)}
        }))?;
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await?;
        let cluster: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "extensions.gardener.cloud/v1alpha1", "kind": "Cluster",
            "metadata": {"name": ns},
            "spec": {"shoot": {"metadata": {"name": format!("s{i:03}"), "annotations": {GUARD: "true"}}},
                     "seed": {"metadata": {"name": "bench"}}, "cloudProfile": {"metadata": {"name": "bench"}}}
        }))?;
        clusters.create(&PostParams::default(), &cluster).await?;
    }

    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("gardener").join("certs");
    let ca = certs.join("ca.crt");
    let started = Instant::now();
    let gardener = Server::start(
        &dir.path().join("gardener"),
        cp.kubeconfig(),
        &[
            "--gardener",
            "--webhook-base-url",
            "https://overlay-switch-webhook.bench:443",
            "--ca-file",
            ca.to_str().unwrap(),
            "--release=false",
        ],
    );
    let pid = gardener.pid();
    let cpu0 = cpu_secs(pid);
    let report = |port| -> Option<Value> {
        e2e_support::http_get(port, "/shoots")
            .filter(|(s, _)| *s == 200)
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
    };
    eventually(
        "every shoot served and synced",
        Duration::from_secs(600),
        || {
            let r = report(gardener.metrics_port)?;
            let rows = r["shoots"].as_array()?;
            let synced = rows
                .iter()
                .filter(|s| s["synced"] == true && s["nodes"] == nodes)
                .count();
            (synced == shoots).then_some(())
        },
    );
    let sync_wall = started.elapsed();
    let sync_cpu = cpu_secs(pid) - cpu0;
    let (rss_synced, _) = rss_mib(pid);
    let open_sockets = sockets(pid);

    // At rest.
    let rest = Duration::from_secs(10);
    let c0 = cpu_secs(pid);
    tokio::time::sleep(rest).await;
    let rest_cpu = cpu_secs(pid) - c0;

    // One heartbeat of every node: every shoot sees every one.
    let c0 = cpu_secs(pid);
    for i in 1..nodes {
        let name = format!("node-{i:04}");
        let mut cond = nu("False", "RouteCreated");
        cond["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:00:00Z");
        node_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&cond))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = (nodes - 1) * shoots;
    let burst_cpu = cpu_secs(pid) - c0;
    let (rss, peak) = rss_mib(pid);

    // Decision time over TLS: shoot 0's path and the last shoot's path
    // against a single-cluster server judging the same cluster.
    let single = Server::start(
        &dir.path().join("single"),
        cp.kubeconfig(),
        &["--release=false"],
    );
    single.wait_ready();
    let (single_rss, _) = rss_mib(single.pid());
    let ca_pem = std::fs::read(&ca)?;
    let single_ca = std::fs::read(dir.path().join("single/certs/ca.crt"))?;
    let https = |pem: &[u8]| -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem)?)
            .build()?)
    };
    let (gc, sc) = (https(&ca_pem)?, https(&single_ca)?);
    let targets = [
        (
            "single",
            sc,
            format!("https://localhost:{}/mutate", single.port),
        ),
        (
            "shoot 0",
            gc.clone(),
            format!(
                "https://localhost:{}/shoots/shoot--bench--s000/mutate",
                gardener.port
            ),
        ),
        (
            "last shoot",
            gc,
            format!(
                "https://localhost:{}/shoots/shoot--bench--s{:03}/mutate",
                gardener.port,
                shoots - 1
            ),
        ),
    ];
    let body = switch_review(0);
    for (what, c, url) in &targets {
        // Warm the connection and check the answer: held.
        let r: Value = c
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?
            .json()
            .await?;
        let warning = r["response"]["warnings"][0].as_str().unwrap_or("");
        anyhow::ensure!(
            warning.starts_with("overlay switch held"),
            "{what}: expected a held switch, got {r}"
        );
    }
    let rounds = 400;
    let mut times: Vec<Vec<Duration>> = vec![vec![]; targets.len()];
    for round in 0..rounds {
        for (i, (_, c, url)) in targets.iter().enumerate() {
            let t = Instant::now();
            let resp = c
                .post(url)
                .header("content-type", "application/json")
                .body(switch_review(round))
                .send()
                .await?;
            let _ = resp.bytes().await?;
            times[i].push(t.elapsed());
        }
    }
    for t in &mut times {
        t.sort();
    }
    let median = |i: usize| percentile(&times[i], 0.5);

    let mut out: Vec<String> = vec![];
    out.push(format!(
        "  sync of every shoot: {:.1} s wall, {sync_cpu:.2} s CPU",
        sync_wall.as_secs_f64()
    ));
    out.push(format!(
        "  RSS: {rss_synced:.1} MiB once synced, {rss:.1} MiB after the node burst (peak {peak:.1} MiB); target < 100 MB: {}",
        if peak * 1.048_576 < 100.0 {
            "PASS"
        } else {
            "MISS"
        }
    ));
    out.push(format!(
        "  baseline: a single-cluster server on the same cluster: {single_rss:.1} MiB; per shoot beyond it: {:.0} KiB ({:.2} KiB per node); ratio {:.1}x for {shoots}x the clusters",
        (rss - single_rss) * 1024.0 / shoots as f64,
        (rss - single_rss) * 1024.0 / (shoots * nodes) as f64,
        rss / single_rss
    ));
    out.push(format!(
        "  open sockets of the server: {open_sockets} ({:.1} per shoot)",
        open_sockets as f64 / shoots as f64
    ));
    out.push(format!(
        "  CPU at rest: {:.2}% of one core over {rest:?}",
        rest_cpu / rest.as_secs_f64() * 100.0
    ));
    out.push(format!(
        "  CPU per node event: {:.1} us ({events} events, {burst_cpu:.2} s)",
        burst_cpu / events as f64 * 1e6
    ));
    for (i, (what, _, _)) in targets.iter().enumerate() {
        out.push(format!(
            "  decision over TLS, {what:>10}: median {:>7.0} us, p99 {:>7.0} us",
            median(i).as_secs_f64() * 1e6,
            percentile(&times[i], 0.99).as_secs_f64() * 1e6
        ));
    }
    let ratio = median(1).as_secs_f64() / median(0).as_secs_f64();
    let last = median(2).as_secs_f64() / median(1).as_secs_f64();
    out.push(format!(
        "  decision ratio shoot 0 / single cluster: {ratio:.2} (target <= 1.5: {}); last shoot / shoot 0: {last:.2}",
        if ratio <= 1.5 { "PASS" } else { "MISS" }
    ));
    let md = format!(
        "## Gardener mode: one server, many shoots\n\n`cargo bench --bench gardener_server`. \
         {shoots} shoots of {nodes} nodes each, served by one `serve --gardener` process.\n\n{}\n",
        out.iter()
            .map(|l| format!("- {}", l.trim()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    common::report("60-gardener", &md);
    drop(single);
    drop(gardener);
    drop(cp);
    Ok(())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
