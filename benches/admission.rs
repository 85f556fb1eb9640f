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
use serde_json::Value;

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

fn realistic_node(i: usize, routed: bool) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(common::realistic_node_json(i, routed)).unwrap()
}

/// The route cache's memory and answer time, against keeping whole Node
/// objects (what a reflector store of Nodes would hold).
fn route_cache_figures() -> String {
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
    format!(
        "\n### Route cache memory and gate answer, {N} realistic nodes in process\n\n\
         | Figure | Ours | Baseline | Ratio |\n|---|---|---|---|\n\
         | heap for {N} nodes (1 in 100 without route) | route cache {} KiB ({} B/node) | whole Node objects {} KiB ({} B/node) | {:.3}x |\n\
         | gate snapshot (3 names) | {N} nodes {l_med:.1?} | 10 nodes {s_med:.1?} | {:.2}x |\n",
        cache_bytes / 1024,
        cache_bytes / N as isize,
        whole_bytes / 1024,
        whole_bytes / N as isize,
        cache_bytes as f64 / whole_bytes as f64,
        l_med.as_secs_f64() / s_med.as_secs_f64()
    )
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
use common::{Stats, feed_blocked_cluster, report, review_body, verdict};

fn state(cluster: Arc<Cluster>) -> Arc<AppState> {
    AppState::new(cluster, None)
}

fn main() {
    let body = review_body();
    // The cluster as the webhook sees it with the guard on and one node blocked:
    // every review is a held switch (the most work the webhook does).
    let cluster = Cluster::new(Settings::default());
    feed_blocked_cluster(&cluster);
    let st = state(cluster);

    // Rounds of both, interleaved: each round's medians and their ratio.
    let rounds = if common::quick() { 3 } else { 7 };
    let n = if common::quick() { 300 } else { 1000 };
    let (mut base, mut ours, mut ratio) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (b, _) = measure(n, n / 10, || {
            let v: Value = serde_json::from_slice(&body).unwrap();
            std::hint::black_box(v);
        });
        let (o, _) = measure(n, n / 10, || {
            let (out, outcome) = st.webhook.review(&body);
            assert_eq!(outcome.verdict, "held");
            std::hint::black_box(out);
        });
        base.push(b.as_secs_f64() * 1e6);
        ours.push(o.as_secs_f64() * 1e6);
        ratio.push(o.as_secs_f64() / b.as_secs_f64());
    }
    let r = Stats::of(ratio);
    let mut md = format!(
        "## In-process review\n\n`cargo bench --bench admission`. The review of Gardener's calico-node \
         DaemonSet, overlay -> native ({} bytes), held with the hold patch; {rounds} rounds of {n}, \
         interleaved; min / **median** / max of the round medians.\n\n\
         | Figure | µs | Target | |\n|---|---|---|---|\n\
         | baseline: `serde_json::Value` parse of the body | {} | | |\n\
         | webhook review (decode, judge, hold patch, encode) | {} | | |\n\
         | ratio review / parse | {} | <= 2.0x | {} |\n",
        body.len(),
        Stats::of(base).show(0),
        Stats::of(ours).show(0),
        r.show(2),
        verdict(r.median <= 2.0)
    );
    if r.median > 2.0 {
        md += "\n**Why the 2.0x target is missed.** See *Profiles* below: after the parse (which the \
            baseline also does), the rest is building and serializing the patch (the old pod template, \
            about 7 KB, and the recorded intent, about 5 KB, escaped into an annotation), the intent's \
            diff, and reading the overlay of both objects.\n";
    }
    md += &over_tls(&body, st);
    md += &route_cache_figures();
    report("10-admission", &md);
}

fn over_tls(body: &[u8], st: Arc<AppState>) -> String {
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
        format!(
            "\n### One request at a time over TLS\n\nKeep-alive, the same body, 500 POSTs each (after 100).\n\n\
             | Case | median | p99 |\n|---|---|---|\n\
             | baseline: fixed response, same server | {bm:.1?} | {bp:.1?} |\n\
             | webhook `/mutate` (held, patch) | {om:.1?} | {op:.1?} |\n\
             | ratio | {:.2}x | {:.2}x |\n",
            om.as_secs_f64() / bm.as_secs_f64(),
            op.as_secs_f64() / bp.as_secs_f64()
        )
    })
}
