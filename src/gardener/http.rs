//! The HTTP side of Gardener mode: the per-shoot webhook paths
//! (`/shoots/{namespace}/{token}/mutate` and `.../mutate-node-status`; without
//! `{token}` when the server has no path key), each judged with that shoot's
//! state only and open only with that shoot's token ([`super::path_token`]),
//! and the admin port
//! (`/healthz`, `/readyz`, `/metrics` with per-shoot gauges, `/shoots`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::jiff::Timestamp;
use kube::core::admission::AdmissionResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::path_token::PathKey;
use super::shoots::{Shoots, Target};
use crate::cluster::gate;
use crate::metrics::Metrics;
use crate::server::node_status::NodeStatusGuard;
use crate::server::webhook::Outcome;
use crate::server::{self, admission};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShootLabels {
    pub shoot: String,
}

/// Gauges with a `shoot` label: as many series as served shoots.
#[derive(Clone, Default)]
pub struct ShootGauges {
    pub synced: Family<ShootLabels, Gauge>,
    pub guard_enabled: Family<ShootLabels, Gauge>,
    pub held_objects: Family<ShootLabels, Gauge>,
    pub nodes: Family<ShootLabels, Gauge>,
    pub nodes_with_route: Family<ShootLabels, Gauge>,
    pub release_lease_holder: Family<ShootLabels, Gauge>,
    pub served: Gauge,
    pub clusters_synced: Gauge,
}

impl ShootGauges {
    pub fn register(registry: &mut Registry) -> Self {
        let g = Self::default();
        let r = registry;
        r.register(
            "overlay_switch_shoot_synced",
            "Whether every watch of the shoot has synced (1) or its state is unknown (0)",
            g.synced.clone(),
        );
        r.register(
            "overlay_switch_shoot_guard_enabled",
            "Whether the shoot's guard is on",
            g.guard_enabled.clone(),
        );
        r.register(
            "overlay_switch_shoot_held_objects",
            "Calico objects of the shoot with a held switch",
            g.held_objects.clone(),
        );
        r.register(
            "overlay_switch_shoot_nodes",
            "Nodes of the shoot",
            g.nodes.clone(),
        );
        r.register(
            "overlay_switch_shoot_nodes_with_route",
            "Nodes of the shoot whose route exists",
            g.nodes_with_route.clone(),
        );
        r.register(
            "overlay_switch_shoot_release_lease_holder",
            "Whether this replica holds the shoot's release lease",
            g.release_lease_holder.clone(),
        );
        r.register(
            "overlay_switch_shoots",
            "Shoots served by this server",
            g.served.clone(),
        );
        r.register(
            "overlay_switch_clusters_synced",
            "Whether the seed's Gardener Clusters are listed and watched",
            g.clusters_synced.clone(),
        );
        g
    }

    /// Sets every gauge from the served shoots (series of shoots no longer
    /// served are dropped).
    pub fn update(&self, shoots: &Shoots) {
        for f in [
            &self.synced,
            &self.guard_enabled,
            &self.held_objects,
            &self.nodes,
            &self.nodes_with_route,
            &self.release_lease_holder,
        ] {
            f.clear();
        }
        let served = shoots.served();
        self.served.set(served.len() as i64);
        self.clusters_synced.set(i64::from(shoots.synced()));
        for s in served {
            let l = ShootLabels {
                shoot: s.namespace.clone(),
            };
            let c = &s.cluster;
            let routes = c.routes.snapshot(0);
            self.synced.get_or_create(&l).set(i64::from(c.synced()));
            self.guard_enabled
                .get_or_create(&l)
                .set(i64::from(c.toggle.get().guard));
            // No series while unknown (`shoot_synced` is 0 then): an
            // unknown count is not 0.
            if let Some(h) = c.held.held() {
                self.held_objects.get_or_create(&l).set(h.len() as i64);
            }
            self.nodes.get_or_create(&l).set(routes.total as i64);
            self.nodes_with_route
                .get_or_create(&l)
                .set(routes.with_route as i64);
            self.release_lease_holder
                .get_or_create(&l)
                .set(s.lease_holder.get());
        }
    }
}

pub struct GardenerState {
    pub shoots: Arc<Shoots>,
    pub metrics: Metrics,
    pub gauges: ShootGauges,
    pub registry: Registry,
    pub node_status: NodeStatusGuard,
    pub shutting_down: AtomicBool,
    /// When set, a shoot's paths need its token.
    pub path_key: Option<PathKey>,
}

impl GardenerState {
    pub fn new(shoots: Arc<Shoots>, node_status: NodeStatusGuard) -> Arc<Self> {
        let (mut registry, metrics) = crate::metrics::registry();
        let gauges = ShootGauges::register(&mut registry);
        Self::with_parts(shoots, metrics, gauges, registry, node_status, None)
    }

    /// With a metrics registry made by the caller (the shoots' release
    /// controllers count into the same `metrics`).
    pub fn with_parts(
        shoots: Arc<Shoots>,
        metrics: Metrics,
        gauges: ShootGauges,
        registry: Registry,
        node_status: NodeStatusGuard,
        path_key: Option<PathKey>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shoots,
            metrics,
            gauges,
            registry,
            node_status,
            shutting_down: AtomicBool::new(false),
            path_key,
        })
    }

    /// Whether a request on `path` may act on its shoot: `Some` answer
    /// (403, nothing about the shoot) when not.
    fn refuse_path(&self, path: &ShootPath) -> Option<Response> {
        let ok = match (&self.path_key, &path.token) {
            (Some(key), Some(token)) => key.verify(&path.namespace, token),
            (None, None) => true,
            _ => false,
        };
        if ok {
            return None;
        }
        tracing::warn!(
            shoot = path.namespace.as_str(),
            with_token = path.token.is_some(),
            "request on a shoot path without its token: refused"
        );
        Some(
            (
                StatusCode::FORBIDDEN,
                "this path needs the shoot's token, as its registration names it\n",
            )
                .into_response(),
        )
    }

    /// Ready once the seed's `Cluster`s are listed. A shoot that cannot be
    /// reached does not make the server unready: it holds that shoot's
    /// switches, and `/shoots`, the metrics and this answer's text say so.
    pub fn ready(&self) -> Result<String, String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if !self.shoots.synced() {
            return Err("not synced: the seed's Gardener Cluster watch".into());
        }
        let served = self.shoots.served();
        let unsynced: Vec<String> = served
            .iter()
            .filter(|s| !s.cluster.synced())
            .map(|s| match s.cluster.health.problem() {
                Some(p) => format!("{} ({p})", s.namespace),
                None => s.namespace.clone(),
            })
            .collect();
        let mut text = format!(
            "ok: {} of {} served shoots synced",
            served.len() - unsynced.len(),
            served.len()
        );
        if !unsynced.is_empty() {
            text.push_str(&format!(
                "; not synced, their switches held: {}",
                unsynced.join("; ")
            ));
        }
        Ok(text)
    }
}

/// The answer for a review that is not judged by a shoot: admitted
/// unchanged, or refused with `why`.
fn unjudged(bytes: &[u8], refuse: Option<&str>) -> Vec<u8> {
    let resp = match admission::decode(bytes) {
        Ok(review) => {
            let allow = AdmissionResponse::from(&review.request);
            match refuse {
                Some(why) => allow.deny(why),
                None => allow,
            }
        }
        Err((uid, e)) => admission::error_response(uid, &e.to_string()),
    };
    admission::encode(resp)
}

/// The answer for a review of shoot `namespace`'s Calico objects: judged
/// with that shoot's state only (the outcome, when judged, for the log).
pub fn review(
    shoots: &Shoots,
    namespace: &str,
    bytes: &[u8],
) -> (
    Vec<u8>,
    Option<(std::sync::Arc<super::shoots::Shoot>, Outcome)>,
) {
    match shoots.target(namespace) {
        Target::Shoot(shoot) => {
            let (body, outcome) = shoot.webhook.review(bytes);
            (body, Some((shoot, outcome)))
        }
        Target::Unguarded => {
            tracing::debug!(
                shoot = namespace,
                "review of a shoot whose guard is off: admitted"
            );
            (unjudged(bytes, None), None)
        }
        Target::Refuse(why) => {
            tracing::warn!(shoot = namespace, why = why.as_str(), "review refused");
            (unjudged(bytes, Some(&why)), None)
        }
    }
}

/// A shoot's path: its namespace and, when the server has a path key, its token.
#[derive(Debug, serde::Deserialize)]
pub struct ShootPath {
    namespace: String,
    #[serde(default)]
    token: Option<String>,
}

async fn mutate(
    State(state): State<Arc<GardenerState>>,
    Path(path): Path<ShootPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = state.refuse_path(&path) {
        return refused;
    }
    let namespace = path.namespace;
    let started = Instant::now();
    let bytes = match server::review_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let (body, judged) = review(&state.shoots, &namespace, &bytes);
    if let Some((shoot, outcome)) = judged {
        server::log_review(&outcome, started.elapsed(), Some(&namespace));
        shoot.publish_held(&outcome);
    }
    server::json_response(body)
}

/// calico-node's node status writes of a shoot: judged while it is served,
/// else admitted unchanged (this webhook never blocks them).
async fn mutate_node_status(
    State(state): State<Arc<GardenerState>>,
    Path(path): Path<ShootPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = state.refuse_path(&path) {
        return refused;
    }
    let namespace = path.namespace;
    let started = Instant::now();
    let bytes = match server::review_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    match state.shoots.get(&namespace) {
        Some(shoot) => {
            let (body, o) = state
                .node_status
                .review(&shoot.cluster, &state.metrics, &bytes);
            server::log_node_status(&o, started.elapsed(), Some(&namespace));
            server::json_response(body)
        }
        None => server::json_response(unjudged(&bytes, None)),
    }
}

pub fn webhook_router(state: Arc<GardenerState>) -> Router {
    let mut router = Router::new();
    for prefix in ["/shoots/{namespace}", "/shoots/{namespace}/{token}"] {
        router = router
            .route(&format!("{prefix}{}", server::MUTATE_PATH), post(mutate))
            .route(
                &format!("{prefix}{}", server::NODE_STATUS_PATH),
                post(mutate_node_status),
            );
    }
    router.with_state(state)
}

/// One served shoot, as `/shoots` reports it.
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShootReport {
    pub namespace: String,
    /// What its Cluster says: on, off, hibernated, deleting, unreadable;
    /// `gone` when the Cluster no longer exists.
    pub guard: String,
    pub served: bool,
    /// Every watch of the shoot has synced.
    pub synced: bool,
    /// Why its state is unknown, when it is.
    pub problem: Option<String>,
    pub nodes: usize,
    pub nodes_with_route: usize,
    /// `None` when open.
    pub gate_closed: Option<String>,
    pub held: Vec<String>,
}

#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShootsReport {
    pub clusters_synced: bool,
    pub shoots: Vec<ShootReport>,
}

/// Every shoot with a Cluster, and every served one.
pub fn report(shoots: &Shoots) -> ShootsReport {
    let guards = shoots.guards();
    let mut rows: Vec<ShootReport> = guards
        .iter()
        .map(|(ns, g)| ShootReport {
            namespace: ns.clone(),
            guard: g.as_str().into(),
            served: false,
            synced: false,
            problem: match g {
                super::shoot::Guard::Unreadable(why) => Some(why.clone()),
                _ => None,
            },
            nodes: 0,
            nodes_with_route: 0,
            gate_closed: None,
            held: match shoots.known_clear(ns) {
                Some(true) => vec![],
                _ => vec!["(unknown)".into()],
            },
        })
        .collect();
    for s in shoots.served() {
        let c = &s.cluster;
        let routes = c.routes.snapshot(c.settings.max_named_nodes);
        let row = ShootReport {
            namespace: s.namespace.clone(),
            guard: guards
                .get(&s.namespace)
                .map_or("gone", |g| g.as_str())
                .into(),
            served: true,
            synced: c.synced(),
            problem: c.health.problem().filter(|_| !c.synced()),
            nodes: routes.total,
            nodes_with_route: routes.with_route,
            gate_closed: match gate::routes_gate(&routes, c.settings.settle, Timestamp::now()) {
                gate::Gate::Open => None,
                gate::Gate::Closed(why) => Some(why),
            },
            held: c
                .held
                .held()
                .map(|h| h.iter().map(|o| o.key.to_string()).collect())
                .unwrap_or_else(|| vec!["(unknown)".into()]),
        };
        match rows.iter_mut().find(|r| r.namespace == s.namespace) {
            Some(r) => *r = row,
            None => rows.push(row),
        }
    }
    ShootsReport {
        clusters_synced: shoots.synced(),
        shoots: rows,
    }
}

async fn shoots_report(State(state): State<Arc<GardenerState>>) -> Response {
    axum::Json(report(&state.shoots)).into_response()
}

async fn readyz(State(state): State<Arc<GardenerState>>) -> Response {
    match state.ready() {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(state): State<Arc<GardenerState>>) -> Response {
    state.gauges.update(&state.shoots);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&state.registry),
    )
        .into_response()
}

pub fn admin_router(state: Arc<GardenerState>) -> Router {
    Router::new()
        .route("/healthz", get(server::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/shoots", get(shoots_report))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calico::overlay::CalicoKind;
    use crate::cluster::Settings;
    use crate::cluster::watch::Store as _;
    use crate::gardener::shoots::{Shoot, ShootConfig};
    use serde_json::{Value, json};
    use std::time::Duration;

    /// An IPPool update from IPIP to native routing.
    fn switch_review() -> Vec<u8> {
        let pool = |mode: &str| {
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                "metadata": {"name": "default-ipv4-ippool", "uid": "u1", "resourceVersion": "1"},
                "spec": {"cidr": "100.64.0.0/12", "ipipMode": mode, "natOutgoing": true}})
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "r1",
                "kind": {"group": "crd.projectcalico.org", "version": "v1", "kind": "IPPool"},
                "resource": {"group": "crd.projectcalico.org", "version": "v1", "resource": "ippools"},
                "name": "default-ipv4-ippool", "operation": "UPDATE",
                "userInfo": {"username": "admin"},
                "object": pool("Never"), "oldObject": pool("Always"), "dryRun": false
            }
        }))
        .unwrap()
    }

    fn answer(body: &[u8]) -> Value {
        serde_json::from_slice::<Value>(body).unwrap()["response"].clone()
    }

    /// A served shoot whose every cache has listed nothing (no nodes).
    fn synced_shoot(ns: &str, guard: bool, metrics: &Metrics) -> Arc<Shoot> {
        let s = Shoot::detached(ns, Settings::default(), metrics.clone());
        let c = &s.cluster;
        c.routes.relist_begin();
        c.routes.relist_done();
        <crate::cluster::toggle::ToggleState as crate::cluster::watch::Store<
            k8s_openapi::api::core::v1::Namespace,
        >>::relist_begin(&c.toggle);
        <crate::cluster::toggle::ToggleState as crate::cluster::watch::Store<
            k8s_openapi::api::core::v1::Namespace,
        >>::relist_done(&c.toggle);
        for store in [&c.config_map, &c.calico_node] {
            store.relist_begin();
            store.relist_done();
        }
        for kind in CalicoKind::ALL {
            let st = c.held.store(kind);
            st.relist_begin();
            st.relist_done();
        }
        c.toggle.set_guard(Some(guard));
        s
    }

    /// Shoots without a seed: their values are inserted by the test.
    fn unconnected_shoots(metrics: &Metrics) -> Arc<Shoots> {
        Shoots::new(
            None,
            ShootConfig {
                settings: Settings::default(),
                access: Default::default(),
                access_refresh: Duration::from_secs(60),
                watch_timeout: None,
                release: None,
            },
            metrics.clone(),
        )
    }

    #[test]
    fn each_path_is_judged_with_its_own_shoot_only() {
        let (_, metrics) = crate::metrics::registry();
        let shoots = unconnected_shoots(&metrics);
        // A: guarded, but its API server cannot be reached.
        let a = Shoot::detached("shoot--p--a", Settings::default(), metrics.clone());
        a.cluster.toggle.set_guard(Some(true));
        a.cluster
            .health
            .set_access_problem(Some("the shoot's API server of A is down".into()));
        shoots.insert(a);
        // B: every cache synced, guard off.
        shoots.insert(synced_shoot("shoot--p--b", false, &metrics));
        // C: every cache synced, guard on, no nodes: nothing to wait for.
        shoots.insert(synced_shoot("shoot--p--c", true, &metrics));
        let review = switch_review();

        let (body, judged) = super::review(&shoots, "shoot--p--a", &review);
        let r = answer(&body);
        assert_eq!(judged.unwrap().1.verdict, "held");
        assert_eq!(
            r["allowed"], true,
            "held: admitted with the intent recorded"
        );
        assert!(r["patch"].is_string(), "{r}");
        let warning = r["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains("unknown") && warning.contains("the shoot's API server of A is down"),
            "{warning}"
        );

        for ns in ["shoot--p--b", "shoot--p--c"] {
            let (body, judged) = super::review(&shoots, ns, &review);
            let (_, o) = judged.unwrap();
            assert_eq!(o.verdict, "passed", "{ns}: the switch goes through");
            let r = answer(&body);
            assert_eq!(r["allowed"], true);
            assert!(r.get("warnings").is_none_or(Value::is_null), "{ns}: {r}");
        }

        // No Cluster listed at all yet: refused, not guessed.
        let (body, judged) = super::review(&shoots, "shoot--p--d", &review);
        assert!(judged.is_none());
        let r = answer(&body);
        assert_eq!(r["allowed"], false);
        assert_eq!(r["uid"], "r1");
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .contains("not yet read the seed's Gardener Clusters"),
            "{r}"
        );
    }

    /// The router with a path key: a shoot's paths open only with its
    /// token; without a key, only without one.
    #[tokio::test]
    async fn a_shoots_paths_open_only_with_its_token() {
        use tower::ServiceExt as _;
        let (_, metrics) = crate::metrics::registry();
        let shoots = unconnected_shoots(&metrics);
        shoots.insert(synced_shoot("shoot--p--c", true, &metrics));
        let key = PathKey::new(&[3u8; 32]).unwrap();
        let (registry, metrics) = crate::metrics::registry();
        let with_key = GardenerState::with_parts(
            shoots.clone(),
            metrics,
            ShootGauges::default(),
            registry,
            NodeStatusGuard::new(vec![]),
            Some(key.clone()),
        );
        let without_key = GardenerState::new(shoots, NodeStatusGuard::new(vec![]));
        let status = |state: &Arc<GardenerState>, path: String| {
            let router = webhook_router(state.clone());
            async move {
                let req = axum::http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(switch_review()))
                    .unwrap();
                router.oneshot(req).await.unwrap().status().as_u16()
            }
        };
        let c = "shoot--p--c";
        let token = key.token(c);
        let other = key.token("shoot--p--d");
        for (state, path, want) in [
            (&with_key, format!("/shoots/{c}/{token}/mutate"), 200),
            (
                &with_key,
                format!("/shoots/{c}/{token}/mutate-node-status"),
                200,
            ),
            (&with_key, format!("/shoots/{c}/mutate"), 403),
            (&with_key, format!("/shoots/{c}/mutate-node-status"), 403),
            (&with_key, format!("/shoots/{c}/{other}/mutate"), 403),
            (&with_key, format!("/shoots/{c}/x{token}/mutate"), 403),
            (&without_key, format!("/shoots/{c}/mutate"), 200),
            (&without_key, format!("/shoots/{c}/{token}/mutate"), 403),
        ] {
            assert_eq!(status(state, path.clone()).await, want, "{path}");
        }
    }
}
