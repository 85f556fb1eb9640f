//! The servers: the webhook over TLS (rustls) and the plain-HTTP admin port
//! (`/healthz`, `/readyz`, `/metrics`), with clean shutdown; the admission
//! pipeline of the Calico objects ([`webhook`]) and of node status
//! ([`node_status`]).

pub mod admission;
pub mod certs;
pub mod limits;
pub mod node_status;
pub mod tls;
pub mod webhook;
pub mod webhook_config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::server::node_status::NodeStatusGuard;
use crate::server::webhook::{Outcome, Webhook};
use admission::MAX_BODY_BYTES;

/// Where the API server sends reviews of the Calico objects.
pub const MUTATE_PATH: &str = "/mutate";
/// Where it sends updates of `nodes/status` by calico-node's user (a path
/// of its own, so that neither pipeline ever sees the other's reviews).
pub const NODE_STATUS_PATH: &str = "/mutate-node-status";

/// Called with every outcome that is not a dry run (events, release hints).
pub type OutcomeHook = Arc<dyn Fn(&Outcome) + Send + Sync>;

pub struct AppState {
    pub webhook: Webhook,
    /// Keeps the route controller's NetworkUnavailable condition.
    pub node_status: NodeStatusGuard,
    pub registry: Registry,
    pub shutting_down: AtomicBool,
    pub on_outcome: Option<OutcomeHook>,
}

impl AppState {
    /// A server state for one cluster, with a fresh metrics registry (and
    /// calico-node's default user).
    pub fn new(
        cluster: Arc<crate::cluster::Cluster>,
        on_outcome: Option<OutcomeHook>,
    ) -> Arc<Self> {
        Self::with_node_status(cluster, on_outcome, NodeStatusGuard::default())
    }

    /// As [`AppState::new`], with the users whose node status writes are judged.
    pub fn with_node_status(
        cluster: Arc<crate::cluster::Cluster>,
        on_outcome: Option<OutcomeHook>,
        node_status: NodeStatusGuard,
    ) -> Arc<Self> {
        Self::build(cluster, on_outcome, node_status, |_| {})
    }

    /// As [`AppState::with_node_status`]; `more` registers further metrics
    /// (the serving certificate's).
    pub fn build(
        cluster: Arc<crate::cluster::Cluster>,
        on_outcome: Option<OutcomeHook>,
        node_status: NodeStatusGuard,
        more: impl FnOnce(&mut Registry),
    ) -> Arc<Self> {
        let (mut registry, metrics) = crate::metrics::registry();
        more(&mut registry);
        Arc::new(Self {
            webhook: Webhook { cluster, metrics },
            node_status,
            registry,
            shutting_down: AtomicBool::new(false),
            on_outcome,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.webhook.metrics
    }

    /// Ready when every watch has synced. (TLS needs no check here: the
    /// server does not listen until its certificate is loaded, and a broken
    /// rotation keeps the previous pair.)
    pub fn ready(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        let c = &self.webhook.cluster;
        let mut missing = vec![];
        if !c.routes.snapshot(0).synced {
            missing.push("node watch");
        }
        if !c.toggle.get().synced {
            missing.push("namespace watch");
        }
        if !c.held.synced() {
            missing.push("Calico object watches");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not synced: {}", missing.join(", ")))
        }
    }

    fn update_gauges(&self, m: &Metrics) {
        let c = &self.webhook.cluster;
        let s = c.routes.snapshot(0);
        m.nodes.set(s.total as i64);
        m.nodes_with_route.set(s.with_route as i64);
        m.cache_synced
            .set(i64::from(s.synced && c.toggle.get().synced));
        m.guard_enabled.set(i64::from(c.toggle.get().guard));
        m.held_objects
            .set(c.held.held().map(|h| h.len() as i64).unwrap_or(0));
    }
}

/// A review's response body as the HTTP response.
pub fn json_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    let body = admission::encode(admission::error_response(None, message));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The body of a review (held within the process's body budget until it is
/// dropped), or the response refusing it.
pub async fn review_body(headers: &HeaderMap, body: Body) -> Result<limits::HeldBody, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        tracing::warn!(content_type, "review refused: wrong content type");
        return Err(bad_request(&format!(
            "content type must be application/json, got {content_type:?}"
        )));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let timeout = limits::Limits::default().body_read_timeout;
    limits::read_body(body, declared, MAX_BODY_BYTES, timeout)
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "review refused: body unreadable, too slow or over the limit");
        bad_request(&e.to_string())
    })
}

async fn mutate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let bytes = match review_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let (body, outcome) = state.webhook.review(&bytes);
    log_review(&outcome, started.elapsed(), None);
    if !outcome.dry_run
        && let Some(hook) = &state.on_outcome
    {
        hook(&outcome);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Updates of `nodes/status` by calico-node's user: always admitted, with a
/// patch that keeps the route controller's NetworkUnavailable condition
/// while the guard is on (`crate::server::node_status`).
async fn mutate_node_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let bytes = match review_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let (body, o) =
        state
            .node_status
            .review(&state.webhook.cluster, &state.webhook.metrics, &bytes);
    log_node_status(&o, started.elapsed(), None);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.ready() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.update_gauges(&state.webhook.metrics);
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

pub fn webhook_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .route(NODE_STATUS_PATH, post(mutate_node_status))
        .with_state(state)
}

pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then
/// stops accepting and lets open connections finish for up to `drain`;
/// every connection within `limits`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
    limits: limits::Limits,
) {
    let acceptor = TlsAcceptor::from(tls);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let max = limits.max_connections.max(1);
    let connections = Arc::new(tokio::sync::Semaphore::new(max));
    let peers = Arc::new(limits::Peers::default());
    // The protocol is the one TLS negotiated (ALPN), so a connection is
    // under its protocol's timers from its first byte (hyper-util's auto
    // builder would wait, without a timer, for a first byte to sniff it).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(100);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(100)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let mut last_refusal_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over a limit: closed at once (the client sees a reset), logged at
        // most every 10 s.
        let admitted = connections
            .clone()
            .try_acquire_owned()
            .ok()
            .zip(peers.enter(peer.ip(), limits.max_connections_per_peer));
        let Some((permit, peer_conn)) = admitted else {
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(%peer, max_connections = max, max_per_peer = limits.max_connections_per_peer, "connection refused: too many open connections");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let (http1, http2) = (http1.clone(), http2.clone());
        let mut stop = stop_rx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _held = (permit, peer_conn);
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let age = limits.max_connection_age;
            let ended = if h2 {
                drive(http2.serve_connection(io, service), &mut stop, age).await
            } else {
                drive(http1.serve_connection(io, service), &mut stop, age).await
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::select! {
        _ = connections.acquire_many(all) => tracing::info!("webhook connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain time over; closing open connections"),
    }
}

/// Runs one connection until it ends; shuts it down gracefully (requests in
/// flight are answered) when the server stops or the connection is `max_age` old.
async fn drive<C>(
    conn: C,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    max_age: Duration,
) -> Result<(), C::Error>
where
    C: hyper_util::server::graceful::GracefulConnection,
{
    tokio::pin!(conn);
    let age = tokio::time::sleep(max_age);
    tokio::pin!(age);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => return ended,
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut age, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// The log line of one review of a Calico object (`shoot` in Gardener mode).
pub fn log_review(outcome: &Outcome, elapsed: Duration, shoot: Option<&str>) {
    tracing::info!(
        shoot = shoot.unwrap_or(""),
        // Values from the request as strings, not Display: escaped in both
        // log formats (a newline or an escape sequence in a name cannot
        // forge a log line or drive a terminal).
        uid = outcome.uid.as_str(),
        kind = outcome.kind.as_str(),
        object = outcome.object.as_str(),
        operation = outcome.operation,
        dry_run = outcome.dry_run,
        decision = outcome.decision.as_str(),
        verdict = outcome.verdict,
        why = outcome.message.as_deref().unwrap_or(""),
        duration_us = elapsed.as_micros() as u64,
        "admission review"
    );
}

/// The log line of one review of calico-node's node status write.
pub fn log_node_status(o: &node_status::NodeOutcome, elapsed: Duration, shoot: Option<&str>) {
    let duration_us = elapsed.as_micros() as u64;
    let shoot = shoot.unwrap_or("");
    if o.is_kept() {
        // One line per kept condition; never an Event (calico-node writes on
        // every start and stop of every node).
        let (written, kept) = (o.written.clone().unwrap_or_default(), o.kept.clone());
        tracing::debug!(
            shoot,
            uid = o.uid.as_str(),
            node = o.node.as_str(),
            user = o.user.as_str(),
            dry_run = o.dry_run,
            verdict = o.verdict,
            written_status = written.status.as_deref().unwrap_or(""),
            written_reason = written.reason.as_deref().unwrap_or(""),
            kept = ?kept,
            duration_us,
            "NetworkUnavailable write not applied"
        );
    } else if matches!(o.verdict, "unreadable" | "malformed") {
        tracing::warn!(
            shoot,
            uid = o.uid.as_str(),
            node = o.node.as_str(),
            user = o.user.as_str(),
            verdict = o.verdict,
            why = o.why.as_str(),
            "node status review passed unchanged"
        );
    } else {
        tracing::debug!(
            shoot,
            uid = o.uid.as_str(),
            node = o.node.as_str(),
            user = o.user.as_str(),
            verdict = o.verdict,
            why = o.why.as_str(),
            duration_us,
            "node status review"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A name from the request with a newline and a terminal escape: one
    /// log line, escaped, in both formats.
    #[test]
    fn strings_from_the_request_cannot_forge_log_lines() {
        let outcome = Outcome {
            uid: "u\nfake=1".into(),
            kind: "IPPool".into(),
            object: "ghost\n2026-11-29T00:00:00Z  INFO forged line\u{1b}[31m".into(),
            operation: "UPDATE",
            dry_run: false,
            decision: crate::metrics::Decision::Held,
            verdict: "held",
            message: Some("why\r\nnot".into()),
            key: None,
            object_uid: None,
        };
        for json in [false, true] {
            let buf = Buffer::default();
            let out = buf.clone();
            let builder = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(false);
            let dispatch: tracing::Dispatch = if json {
                builder.json().flatten_event(true).finish().into()
            } else {
                builder.finish().into()
            };
            tracing::dispatcher::with_default(&dispatch, || {
                log_review(&outcome, Duration::from_micros(5), Some("shoot--x\ny"));
            });
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            assert_eq!(text.lines().count(), 1, "json={json}: {text}");
            assert!(
                !text.contains('\u{1b}') && !text.contains('\r'),
                "json={json}: {text:?}"
            );
            assert!(
                text.contains("forged line"),
                "the value is kept, escaped: {text}"
            );
        }
    }
}
