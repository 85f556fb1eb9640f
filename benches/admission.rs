//! `make bench`: admission latency for the Gardener calico-node DaemonSet
//! fixture (overlay-ipip -> native), in-process and over TLS, reported as
//! ratios against baselines measured in the same run (these machines are
//! noisy: absolute numbers mean little, ratios travel).
//!
//! Baselines:
//! - in-process: parsing the same review body into `serde_json::Value`
//!   (the least any webhook must do);
//! - over TLS: a POST of the same body to a route that returns a fixed
//!   response (what TLS + HTTP cost without our logic).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use overlay_switch_webhook::cluster::{Cluster, Settings};
use overlay_switch_webhook::server::AppState;
use serde_json::{Value, json};

/// Counts live heap bytes, for the memory figures.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A Node as a cloud cluster has it (conditions, addresses, images, labels).
fn realistic_node(i: usize, routed: bool) -> k8s_openapi::api::core::v1::Node {
    let cond = |t: &str, s: &str, r: &str| {
        json!({"type": t, "status": s, "reason": r, "message": "kubelet is posting ready status",
        "lastHeartbeatTime": "2026-11-26T10:00:00Z", "lastTransitionTime": "2026-11-26T09:00:00Z"})
    };
    let images: Vec<Value> = (0..20)
        .map(|k| json!({"names": [format!("registry.example/team/image-{k}@sha256:{:064x}", k), format!("registry.example/team/image-{k}:v1.{k}")], "sizeBytes": 12345678 + k}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("shoot--proj--name-worker-z1-{i:05}"), "uid": format!("{i:08}-0000-0000-0000-000000000000"),
            "resourceVersion": "123456", "labels": {"kubernetes.io/hostname": format!("ip-10-250-{}-{}", i / 250, i % 250),
            "node.kubernetes.io/instance-type": "m5.large", "topology.kubernetes.io/zone": "eu-west-1a", "worker.gardener.cloud/pool": "worker-z1"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": format!("100.64.{}.0/24", i % 256), "providerID": format!("aws:///eu-west-1a/i-{i:017x}")},
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
    }))
    .unwrap()
}

/// The route cache's memory and answer time, against keeping whole Node
/// objects (what a reflector store of Nodes would hold).
fn route_cache_figures() {
    use overlay_switch_webhook::cluster::routes::RouteCache;
    use overlay_switch_webhook::cluster::watch::Store as _;
    const N: usize = 5000;
    let nodes: Vec<_> = (0..N).map(|i| realistic_node(i, i % 100 != 0)).collect();

    let before = live();
    let whole: Vec<_> = nodes.clone();
    let whole_bytes = live() - before;

    let before = live();
    let cache = RouteCache::new("RouteCreated");
    cache.relist_begin();
    for n in nodes.iter().cloned() {
        cache.relist_apply(n);
    }
    cache.relist_done();
    let cache_bytes = live() - before;
    drop(whole);
    println!("route cache, {N} realistic nodes (1 in 100 without route):");
    println!(
        "  baseline whole Node objects   {:>8} KiB ({} B/node)",
        whole_bytes / 1024,
        whole_bytes / N as isize
    );
    println!(
        "  compact route cache           {:>8} KiB ({} B/node)",
        cache_bytes / 1024,
        cache_bytes / N as isize
    );
    println!(
        "  ratio cache/whole             {:.3}x",
        cache_bytes as f64 / whole_bytes as f64
    );

    // Answers are O(1): the same question against 10 and 5000 nodes.
    let small = RouteCache::new("RouteCreated");
    small.relist_begin();
    for n in nodes.iter().take(10).cloned() {
        small.relist_apply(n);
    }
    small.relist_done();
    let (s_med, _) = measure(20000, 1000, || {
        std::hint::black_box(small.snapshot(3));
    });
    let (l_med, _) = measure(20000, 1000, || {
        std::hint::black_box(cache.snapshot(3));
    });
    println!(
        "  snapshot(3 names): 10 nodes {s_med:.1?}, {N} nodes {l_med:.1?}, ratio {:.2}x",
        l_med.as_secs_f64() / s_med.as_secs_f64()
    );
}

/// Median and p99 of `n` timed runs of `f`, after `warm` untimed ones.
fn measure(n: usize, warm: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..warm {
        f();
    }
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    (v[n / 2], v[n * 99 / 100])
}

mod common;
use common::{feed_blocked_cluster, review_body};

fn state(cluster: Arc<Cluster>) -> Arc<AppState> {
    AppState::new(cluster, None)
}

fn main() {
    let body = review_body();
    println!(
        "review body: {} bytes (Gardener calico-node DaemonSet, overlay-ipip -> native)",
        body.len()
    );

    // The cluster as the webhook sees it with the guard on and one node blocked:
    // every review is a held switch (the most work the webhook does).
    let cluster = Cluster::new(Settings::default());
    feed_blocked_cluster(&cluster);
    let st = state(cluster);

    let (base_med, base_p99) = measure(2000, 200, || {
        let v: Value = serde_json::from_slice(&body).unwrap();
        std::hint::black_box(v);
    });
    let (ours_med, ours_p99) = measure(2000, 200, || {
        let (out, outcome) = st.webhook.review(&body);
        assert_eq!(outcome.verdict, "held");
        std::hint::black_box(out);
    });
    println!("in-process:");
    println!("  baseline serde_json::Value parse  median {base_med:>10.1?}  p99 {base_p99:>10.1?}");
    println!("  webhook review (held, patch)      median {ours_med:>10.1?}  p99 {ours_p99:>10.1?}");
    println!(
        "  ratio webhook/baseline            median {:.2}x  p99 {:.2}x",
        ours_med.as_secs_f64() / base_med.as_secs_f64(),
        ours_p99.as_secs_f64() / base_p99.as_secs_f64()
    );

    over_tls(&body, st);
    route_cache_figures();
}

fn over_tls(body: &[u8], st: Arc<AppState>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (port, ca_pem) = common::tls_server(st).await;
        let client = common::client(&ca_pem, 0);
        let body = body.to_vec();
        let run = |path: &'static str| {
            let client = client.clone();
            let body = body.clone();
            async move {
                let mut v = Vec::with_capacity(500);
                for i in 0..600 {
                    let t = Instant::now();
                    let r = client
                        .post(format!("https://127.0.0.1:{port}{path}"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    let bytes = r.bytes().await.unwrap();
                    std::hint::black_box(bytes);
                    if i >= 100 {
                        v.push(t.elapsed());
                    }
                }
                v.sort();
                (v[v.len() / 2], v[v.len() * 99 / 100])
            }
        };
        let (bm, bp) = run("/fixed").await;
        let (om, op) = run("/mutate").await;
        println!("over TLS (keep-alive, same body):");
        println!("  baseline fixed response          median {bm:>10.1?}  p99 {bp:>10.1?}");
        println!("  webhook /mutate (held, patch)    median {om:>10.1?}  p99 {op:>10.1?}");
        println!(
            "  ratio webhook/baseline           median {:.2}x  p99 {:.2}x",
            om.as_secs_f64() / bm.as_secs_f64(),
            op.as_secs_f64() / bp.as_secs_f64()
        );
    });
}
