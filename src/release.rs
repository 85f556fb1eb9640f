//! The release controller: once the gate opens (or an operator forces it),
//! applies every held intent of the cluster, in an order safe for Calico:
//! ConfigMap, then IPPools, then the DaemonSet. An operator's cancel removes
//! every record instead.
//!
//! Each write is an update carrying the object's resourceVersion, so it never
//! overwrites a newer change: on conflict it re-reads and decides again. Two
//! replicas may run it at once: one write wins, the other sees a conflict,
//! re-reads, finds no record, and does nothing. No leader election is needed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource as _};

use crate::cluster::{Cluster, configmap_resource, daemonset_resource, ippool_resource};
use crate::gate::{self, Gate};
use crate::held::{CalicoKindName, HeldObject, ObjectKey};
use crate::hold::{self, Record};
use crate::metrics::{KindLabels, Metrics};
use crate::toggle::{CANCEL_ANNOTATION, FORCE_ANNOTATION};

/// How many times one object is re-read after a write conflict, per pass.
const CONFLICT_RETRIES: usize = 5;
/// The same Held event for the same object is not repeated within this time.
pub const HELD_EVENT_INTERVAL: Duration = Duration::from_secs(10 * 60);

pub fn resource(kind: CalicoKindName) -> ApiResource {
    match kind {
        CalicoKindName::ConfigMap => configmap_resource(),
        CalicoKindName::IPPool => ippool_resource(),
        CalicoKindName::DaemonSet => daemonset_resource(),
    }
}

pub fn api(client: &Client, key: &ObjectKey) -> Api<DynamicObject> {
    let ar = resource(key.kind);
    match &key.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The reference an Event needs to show in `kubectl describe` (which
/// matches on the object's uid too).
pub fn reference(key: &ObjectKey, uid: Option<String>) -> ObjectReference {
    let ar = resource(key.kind);
    ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        name: Some(key.name.clone()),
        namespace: key.namespace.clone(),
        uid,
        ..Default::default()
    }
}

/// When, and with which note, each (object, reason) was last published.
type LastPublished = HashMap<(ObjectKey, String), (Instant, String)>;

/// Keeps a reconciler that re-applies every minute from flooding events:
/// the same reason with the same note for the same object is published at
/// most once per interval. Pure, apart from the times it is given.
#[derive(Debug, Default)]
pub struct EventLimiter {
    last: LastPublished,
}

impl EventLimiter {
    /// Entries kept before old ones are dropped.
    const MAX_ENTRIES: usize = 4096;

    pub fn allow(
        &mut self,
        key: &ObjectKey,
        reason: &str,
        note: &str,
        interval: Duration,
        now: Instant,
    ) -> bool {
        let k = (key.clone(), reason.to_string());
        if let Some((at, prev)) = self.last.get(&k)
            && now.duration_since(*at) < interval
            && prev == note
        {
            return false;
        }
        if self.last.len() >= Self::MAX_ENTRIES {
            self.last
                .retain(|_, (at, _)| now.duration_since(*at) < HELD_EVENT_INTERVAL);
        }
        self.last.insert(k, (now, note.to_string()));
        true
    }
}

/// Events on Calico objects, rate-limited per object and reason.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    limiter: Arc<Mutex<EventLimiter>>,
}

impl Events {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "overlay-switch-webhook".into(),
                    instance,
                },
            ),
            limiter: Default::default(),
        }
    }

    /// Publishes unless the same reason for the same object was published
    /// within `interval` with the same note (a re-applying reconciler).
    pub async fn publish(
        &self,
        key: &ObjectKey,
        uid: Option<String>,
        type_: EventType,
        reason: &str,
        note: String,
        interval: Duration,
    ) {
        {
            let mut limiter = self.limiter.lock().expect("events lock");
            if !limiter.allow(key, reason, &note, interval, Instant::now()) {
                return;
            }
        }
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "OverlaySwitch".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&ev, &reference(key, uid)).await {
            tracing::warn!(%error, object = %key, reason, "cannot publish event");
        }
    }
}

fn released_note(held_secs: i64, forced: Option<&str>) -> String {
    match forced {
        None => format!("held overlay switch applied after {held_secs}s"),
        Some(why) => format!(
            "held overlay switch applied after {held_secs}s, forced by the operator although {why}"
        ),
    }
}

/// What a release or cancel would write for one object.
enum Next {
    /// Nothing to do (no record any more).
    Skip,
    Conflict(String),
    Write(Box<DynamicObject>, Option<Timestamp>),
}

fn has_record(obj: &DynamicObject) -> bool {
    obj.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(hold::INTENT_ANNOTATION))
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub released: Vec<String>,
    pub cancelled: Vec<String>,
    pub conflicts: Vec<String>,
    /// Written, but held again by the webhook (its gate closed meanwhile).
    pub held_again: Vec<String>,
}

pub struct Releaser {
    pub cluster: Arc<Cluster>,
    pub client: Client,
    pub metrics: Metrics,
    pub events: Events,
}

enum Action {
    /// With the blocking reason when an operator forced it.
    Release {
        forced: Option<String>,
    },
    Cancel,
}

impl Releaser {
    /// Runs until the task is dropped: wakes on every change of routes,
    /// toggle or held records, and when the settle time runs out.
    pub async fn run(self) {
        let mut routes = self.cluster.routes.subscribe();
        let mut toggle = self.cluster.toggle.subscribe();
        let mut held = self.cluster.held.subscribe();
        let mut retry = Duration::from_millis(500);
        loop {
            let wait = match self.pass().await {
                Ok(report) if !report.held_again.is_empty() => {
                    // Raced with a newer change or the webhook's own view:
                    // look again soon, with back-off.
                    let r = retry;
                    retry = (retry * 2).min(Duration::from_secs(30));
                    Some(r)
                }
                Ok(report) => {
                    retry = Duration::from_millis(500);
                    if !report.conflicts.is_empty() {
                        // A conflict stays until someone changes the object.
                        None
                    } else {
                        self.next_wake()
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "release pass failed");
                    let r = retry;
                    retry = (retry * 2).min(Duration::from_secs(30));
                    Some(r)
                }
            };
            let sleep = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = routes.changed() => {}
                _ = toggle.changed() => {}
                _ = held.changed() => {}
                () = sleep => {}
            }
        }
    }

    /// When the gate will open by settle time alone, if that is what it waits for.
    fn next_wake(&self) -> Option<Duration> {
        let s = self.cluster.routes.snapshot(0);
        gate::opens_in(&s, self.cluster.settings.settle, Timestamp::now())
            .filter(|d| !d.is_zero())
            .map(|d| d + Duration::from_millis(5))
    }

    /// One look at the cluster: cancel, release, or nothing.
    pub async fn pass(&self) -> Result<PassReport, kube::Error> {
        let mut report = PassReport::default();
        let toggle = self.cluster.toggle.get();
        let Some(held) = self.cluster.held.held() else {
            return Ok(report); // records unknown: do nothing on a guess
        };
        if !toggle.synced {
            return Ok(report);
        }
        if toggle.cancel {
            for h in &held {
                self.handle(h, &Action::Cancel, None, &mut report).await?;
            }
            tracing::info!(cancelled = ?report.cancelled, "overlay switch cancel honoured");
            self.clear_namespace_annotation(CANCEL_ANNOTATION).await?;
            return Ok(report);
        }
        if held.is_empty() {
            if toggle.force {
                // Nothing to force: honour it once anyway, so it does not linger.
                self.clear_namespace_annotation(FORCE_ANNOTATION).await?;
            }
            return Ok(report);
        }
        let routes = self
            .cluster
            .routes
            .snapshot(self.cluster.settings.max_named_nodes);
        let now = Timestamp::now();
        let gate = gate::routes_gate(&routes, self.cluster.settings.settle, now);
        let opened_at = routes
            .all_routed_since
            .map(|s| s + self.cluster.settings.settle);
        let action = match (&gate, toggle.force) {
            (Gate::Open, _) => Action::Release { forced: None },
            (Gate::Closed(why), true) => {
                tracing::warn!(blocking = %why, "overlay switch release forced by the operator");
                Action::Release {
                    forced: Some(why.clone()),
                }
            }
            (Gate::Closed(_), false) => return Ok(report),
        };
        // All or nothing: if any recorded change no longer applies, release
        // none, so that a conflict never leaves the cluster half switched.
        if !self.preflight(&held, &action, &mut report).await? {
            return Ok(report);
        }
        for h in &held {
            self.handle(
                h,
                &action,
                opened_at.filter(|_| gate.is_open()),
                &mut report,
            )
            .await?;
            // Stop at the first object that did not go through: the rest
            // waits for the next pass rather than leave a half switch.
            if !report.conflicts.is_empty() || !report.held_again.is_empty() {
                break;
            }
        }
        // The force is honoured once: removed when nothing it was for is left.
        if toggle.force && report.conflicts.is_empty() && report.held_again.is_empty() {
            self.clear_namespace_annotation(FORCE_ANNOTATION).await?;
        }
        if !report.released.is_empty() {
            tracing::info!(released = ?report.released, forced = toggle.force && !gate.is_open(), "held overlay switches released");
        }
        Ok(report)
    }

    /// What `action` would write for the object as it is now.
    fn next_object(&self, h: &HeldObject, current: &DynamicObject, action: &Action) -> Next {
        let value = serde_json::to_value(current).expect("object encodes");
        let kind: crate::overlay::CalicoKind = h.key.kind.into();
        let (next, since) = match action {
            // A cancel needs no readable record: it only removes it.
            Action::Cancel => {
                if value
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(hold::INTENT_ANNOTATION))
                    .is_none()
                {
                    return Next::Skip;
                }
                let since = Record::read(&value).ok().flatten().map(|r| r.since);
                (hold::cancelled(&value, "cancel"), since)
            }
            Action::Release { .. } => {
                let record = match Record::read(&value) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Next::Skip, // released or cancelled meanwhile
                    Err(e) => return Next::Conflict(format!("the held record is damaged: {e}")),
                };
                let released = record
                    .check_scope(kind)
                    .and_then(|()| hold::released(&value, &record, "release"));
                match released {
                    Ok(v) => (v, Some(record.since)),
                    Err(c) => return Next::Conflict(c.to_string()),
                }
            }
        };
        match serde_json::from_value(next) {
            Ok(obj) => Next::Write(Box::new(obj), since),
            Err(e) => Next::Conflict(format!("the released object is not valid: {e}")),
        }
    }

    /// All or nothing: every held change must apply onto its object as it is
    /// now, and the API server (with this webhook) must accept the write, as
    /// a server-side dry run shows, before anything is written. Reports each
    /// one that would fail. True when all would succeed.
    async fn preflight(
        &self,
        held: &[HeldObject],
        action: &Action,
        report: &mut PassReport,
    ) -> Result<bool, kube::Error> {
        for h in held {
            let api = api(&self.client, &h.key);
            let Some(current) = api.get_opt(&h.key.name).await? else {
                continue;
            };
            let why = match self.next_object(h, &current, action) {
                Next::Skip => continue,
                Next::Conflict(why) => why,
                Next::Write(next, _) => {
                    let dry = PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    };
                    match api.replace(&h.key.name, &dry, &next).await {
                        Ok(out) if !has_record(&out) => continue,
                        Ok(out) => format!(
                            "the webhook would hold it again: {}",
                            out.metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get(hold::REASON_ANNOTATION))
                                .map(String::as_str)
                                .unwrap_or("no reason given")
                        ),
                        // A newer change arrived meanwhile: look again next pass.
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            report.held_again.push(h.key.to_string());
                            return Ok(false);
                        }
                        Err(kube::Error::Api(s)) => {
                            format!("the API server refuses the write: {}", s.message)
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            self.conflict(h, &current, &format!("{:?}", h.key.kind), why)
                .await;
            report.conflicts.push(h.key.to_string());
        }
        Ok(report.conflicts.is_empty())
    }

    async fn handle(
        &self,
        h: &HeldObject,
        action: &Action,
        opened_at: Option<Timestamp>,
        report: &mut PassReport,
    ) -> Result<(), kube::Error> {
        let api = api(&self.client, &h.key);
        let kind = format!("{:?}", h.key.kind);
        for _ in 0..CONFLICT_RETRIES {
            let Some(current) = api.get_opt(&h.key.name).await? else {
                return Ok(()); // gone
            };
            let (next, since) = match self.next_object(h, &current, action) {
                Next::Skip => return Ok(()),
                Next::Conflict(why) => {
                    self.conflict(h, &current, &kind, why).await;
                    report.conflicts.push(h.key.to_string());
                    return Ok(());
                }
                Next::Write(next, since) => (next, since),
            };
            match api
                .replace(&h.key.name, &PostParams::default(), &next)
                .await
            {
                Ok(written) => {
                    if has_record(&written) {
                        // The webhook held it again (its gate closed meanwhile).
                        tracing::info!(object = %h.key, "release was held again by the webhook; retrying");
                        report.held_again.push(h.key.to_string());
                        return Ok(());
                    }
                    let held_secs = since
                        .map(|s| Timestamp::now().duration_since(s).as_secs().max(0))
                        .unwrap_or(0);
                    match action {
                        Action::Release { forced } => {
                            self.metrics
                                .releases
                                .get_or_create(&KindLabels { kind: kind.clone() })
                                .inc();
                            if let Some(opened) = opened_at {
                                let delay = Timestamp::now()
                                    .duration_since(opened)
                                    .as_secs_f64()
                                    .max(0.0);
                                self.metrics.release_delay_seconds.observe(delay);
                            }
                            self.events
                                .publish(
                                    &h.key,
                                    written.metadata.uid.clone(),
                                    EventType::Normal,
                                    "OverlaySwitchReleased",
                                    released_note(held_secs, forced.as_deref()),
                                    Duration::ZERO,
                                )
                                .await;
                            report.released.push(h.key.to_string());
                        }
                        Action::Cancel => {
                            self.events
                                .publish(&h.key, written.metadata.uid.clone(), EventType::Normal, "OverlaySwitchCancelled",
                                    format!("held overlay switch cancelled by the operator after {held_secs}s; the overlay configuration stays"),
                                    Duration::ZERO)
                                .await;
                            report.cancelled.push(h.key.to_string());
                        }
                    }
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(object = %h.key, "write conflict; reading again");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        // Still conflicting after several reads: try again later, with back-off.
        report.held_again.push(h.key.to_string());
        Ok(())
    }

    async fn conflict(&self, h: &HeldObject, obj: &DynamicObject, kind: &str, why: String) {
        tracing::warn!(object = %h.key, conflict = %why, "held overlay switch cannot be released; still holding");
        self.metrics
            .release_conflicts
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
        self.events
            .publish(&h.key, obj.metadata.uid.clone(), EventType::Warning, "OverlaySwitchConflict",
                format!("{why}; the switch stays held: re-apply the desired configuration, or cancel with the {CANCEL_ANNOTATION} annotation"),
                HELD_EVENT_INTERVAL)
            .await;
    }

    /// Removes a once-only annotation from the toggle namespace; a `test` op
    /// makes a second replica's removal fail harmlessly.
    async fn clear_namespace_annotation(&self, key: &str) -> Result<(), kube::Error> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let path = format!(
            "/metadata/annotations/{}",
            key.replace('~', "~0").replace('/', "~1")
        );
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "test", "path": path, "value": "true"},
            {"op": "remove", "path": path},
        ]))
        .expect("static patch");
        match api
            .patch(
                self.cluster.toggle.namespace(),
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
        {
            Ok(ns) => {
                tracing::info!(annotation = key, namespace = %ns.meta().name.clone().unwrap_or_default(), "once-only annotation honoured and removed");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 || s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: CalicoKindName::DaemonSet,
            namespace: Some("kube-system".into()),
            name: name.into(),
        }
    }

    #[test]
    fn a_reapplying_reconciler_does_not_flood_events() {
        let mut l = EventLimiter::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(600);
        assert!(l.allow(&key("a"), "OverlaySwitchHeld", "2 of 5", every, t0));
        // Re-applied every minute with the same situation: suppressed.
        for m in 1..10 {
            assert!(!l.allow(
                &key("a"),
                "OverlaySwitchHeld",
                "2 of 5",
                every,
                t0 + Duration::from_secs(60 * m)
            ));
        }
        // The situation changed: published.
        assert!(l.allow(
            &key("a"),
            "OverlaySwitchHeld",
            "1 of 5",
            every,
            t0 + Duration::from_secs(601)
        ));
        // Another object or reason is independent; the interval ends.
        assert!(l.allow(&key("b"), "OverlaySwitchHeld", "2 of 5", every, t0));
        assert!(l.allow(&key("a"), "OverlaySwitchConflict", "2 of 5", every, t0));
        assert!(l.allow(
            &key("a"),
            "OverlaySwitchHeld",
            "1 of 5",
            every,
            t0 + Duration::from_secs(1300)
        ));
        // Zero interval: always.
        assert!(l.allow(&key("a"), "OverlaySwitchReleased", "x", Duration::ZERO, t0));
        assert!(l.allow(&key("a"), "OverlaySwitchReleased", "x", Duration::ZERO, t0));
    }

    #[test]
    fn forced_releases_say_so() {
        assert_eq!(
            released_note(4, None),
            "held overlay switch applied after 4s"
        );
        assert!(
            released_note(4, Some("1 of 3 nodes has no route yet"))
                .contains("forced by the operator although 1 of 3")
        );
    }
}
