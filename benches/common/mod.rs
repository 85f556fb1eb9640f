//! What the benches share: the fixture review, a cluster whose every
//! switch is held, and the webhook server over TLS with a fixed-answer
//! route beside it (the baseline).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use overlay_switch_webhook::cluster::Cluster;
use overlay_switch_webhook::server::{self, AppState};
use serde_json::{Value, json};

pub fn load(rel: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> = text
        .split("\n---")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    docs.into_iter().next().unwrap()
}

/// The review of Gardener's calico-node DaemonSet, overlay-ipip -> native.
pub fn review_body() -> Vec<u8> {
    let old = load("gardener-calico/overlay-ipip/daemonset-calico-node.yaml");
    let new = load("gardener-calico/native/daemonset-calico-node.yaml");
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "b1", "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
            "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
            "name": "calico-node", "namespace": "kube-system", "operation": "UPDATE",
            "userInfo": {"username": "bench"}, "object": new, "oldObject": old, "dryRun": false
        }
    }))
    .unwrap()
}

/// Guard on, 100 nodes of which one has no route: every switch is held.
pub fn feed_blocked_cluster(cluster: &Arc<Cluster>) {
    use k8s_openapi::api::core::v1::{Namespace, Node};
    use overlay_switch_webhook::cluster::watch::Store as _;
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "kube-system", "annotations": {
        "calico.networking.extensions.gardener.cloud/seamless-overlay-switch": "true"}}}))
        .unwrap();
    cluster.toggle.relist_begin();
    cluster.toggle.relist_apply(ns);
    cluster.toggle.relist_done();
    cluster.routes.relist_begin();
    for i in 0..100 {
        let reason = if i == 7 {
            "NoRouteCreated"
        } else {
            "RouteCreated"
        };
        let status = if i == 7 { "True" } else { "False" };
        let n: Node = serde_json::from_value(json!({"metadata": {"name": format!("node-{i}")},
            "status": {"conditions": [{"type": "NetworkUnavailable", "status": status, "reason": reason,
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
        .unwrap();
        cluster.routes.relist_apply(n);
    }
    cluster.routes.relist_done();
    for k in overlay_switch_webhook::calico::overlay::CalicoKind::ALL {
        let s = cluster.held.store(k);
        s.relist_begin();
        s.relist_done();
    }
}

/// The webhook router of `st` plus `/fixed` (a fixed answer, the
/// baseline), served over TLS on a free port: (port, CA PEM).
pub async fn tls_server(st: Arc<AppState>) -> (u16, String) {
    let fixed = axum::Router::new().route(
        "/fixed",
        axum::routing::post(|_b: axum::body::Bytes| async {
            ([("content-type", "application/json")], "{}")
        }),
    );
    serve_router_tls(server::webhook_router(st).merge(fixed)).await
}

/// `router` on our TLS stack (`server::serve_tls`), with a fresh serving
/// certificate for 127.0.0.1, on a free port: (port, CA PEM).
pub async fn serve_router_tls(router: axum::Router) -> (u16, String) {
    let bundle = overlay_switch_webhook::server::certs::generate(
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        1,
    )
    .unwrap();
    let tls = Arc::new(
        overlay_switch_webhook::server::tls::server_config_from_pem(
            bundle.tls_cert_pem.as_bytes(),
            bundle.tls_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve_tls(
        listener,
        tls,
        router,
        std::future::pending(),
        Duration::from_secs(1),
        server::limits::Limits::default(),
    ));
    (port, bundle.ca_cert_pem)
}

/// A client trusting `ca_pem`; with `connections > 0`, HTTP/1.1 with at
/// most that many kept-alive connections.
pub fn client(ca_pem: &str, connections: usize) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if connections > 0 {
        b = b.http1_only().pool_max_idle_per_host(connections);
    }
    b.build().unwrap()
}

/// min / median / max of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut v: Vec<f64>) -> Stats {
        assert!(!v.is_empty(), "no samples");
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Stats {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }

    /// `min / median / max` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} / **{:.d$}** / {:.d$}",
            self.min,
            self.median,
            self.max,
            d = digits
        )
    }
}

/// `BENCH_QUICK=1`: a fast look (fewer rounds, shorter runs).
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Writes one bench's section of `BENCHMARKS.md` (markdown) to
/// `target/bench-report/<name>.md`, which `make bench` puts together, and
/// prints it.
pub fn report(name: &str, markdown: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-report");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.md")), markdown).unwrap();
    println!("{markdown}");
}

/// A target's verdict for the report.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// A Node as a cloud cluster has it (conditions, addresses, images, labels),
/// as JSON; `routed`: the route controller's `RouteCreated`, else
/// `NoRouteCreated`.
pub fn realistic_node_json(i: usize, routed: bool) -> Value {
    let cond = |t: &str, s: &str, r: &str| {
        json!({"type": t, "status": s, "reason": r, "message": "kubelet is posting ready status",
        "lastHeartbeatTime": "2026-11-26T10:00:00Z", "lastTransitionTime": "2026-11-26T09:00:00Z"})
    };
    let images: Vec<Value> = (0..20)
        .map(|k| json!({"names": [format!("registry.example/team/image-{k}@sha256:{:064x}", k), format!("registry.example/team/image-{k}:v1.{k}")], "sizeBytes": 12345678 + k}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("shoot--proj--name-worker-z1-{i:05}"),
            "labels": {"kubernetes.io/hostname": format!("ip-10-250-{}-{}", i / 250, i % 250),
            "node.kubernetes.io/instance-type": "m5.large", "topology.kubernetes.io/zone": "eu-west-1a", "worker.gardener.cloud/pool": "worker-z1"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": format!("100.{}.{}.0/24", 64 + i / 256, i % 256), "providerID": format!("aws:///eu-west-1a/i-{i:017x}")},
        "status": {
            "conditions": [
                if routed { cond("NetworkUnavailable", "False", "RouteCreated") } else { cond("NetworkUnavailable", "True", "NoRouteCreated") },
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
                cond("Ready", "True", "KubeletReady")],
            "addresses": [{"type": "InternalIP", "address": format!("10.250.{}.{}", i / 250, i % 250)}, {"type": "Hostname", "address": "ip"}],
            "nodeInfo": {"kubeletVersion": "v1.34.4", "osImage": "Garden Linux", "kernelVersion": "6.12", "containerRuntimeVersion": "containerd://2.1",
                "architecture": "amd64", "operatingSystem": "linux", "machineID": "m", "systemUUID": "u", "bootID": "b", "kubeProxyVersion": ""},
            "images": images,
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"}, "allocatable": {"cpu": "1920m", "memory": "7Gi", "pods": "110"}
        }
    })
}

/// A process's resident memory and its peak (VmRSS, VmHWM), MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// A process's CPU time so far (user + system), seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}
