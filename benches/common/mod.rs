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
