//! The release controller: once the gate opens (or an operator forces it),
//! applies every held intent of the cluster, in an order safe for Calico:
//! ConfigMap, Installation, IPPools, FelixConfigurations, then the DaemonSet
//! (the order of [`crate::cluster::held::CalicoKindName`]). An operator's cancel removes
//! every record instead.
//!
//! Each write is an update carrying the object's resourceVersion, so it never
//! overwrites a newer change: on conflict it re-reads and decides again.
//! Release and cancel decisions of a cluster are made by one replica at a
//! time, the holder of the cluster's release lease ([`lease`]): otherwise one
//! replica could release the ConfigMap while another cancels the rest.
//!
//! A failed pass (a conflict, a refusal, a transient error) is retried with
//! a capped exponential back-off, and at once when a held object's record or
//! held part changes.

pub mod decision;
pub mod events;
pub mod failure;
pub mod lease;

pub use events::{EventLimiter, Events, HELD_EVENT_INTERVAL, reference};
pub use failure::{
    Backoff, Failure, RETRY_INITIAL, RETRY_MAX, classify, classify_code, describe, failure_note,
};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Client, Resource as _};

use crate::cluster::Cluster;
use crate::cluster::gate;
use crate::cluster::held::{CalicoKindName, HeldObject, ObjectKey};
use crate::cluster::hold::{self, Record};
use crate::cluster::toggle::{CANCEL_ANNOTATION, FORCE_ANNOTATION};
use crate::metrics::{FailureClass, FailureLabels, KindLabels, Metrics};
use decision::{Action, Decision};
use lease::{InProgress, Marker, ObjectState, Outcome, Progress, ReleaseLease};

/// How many times one object is re-read after a write conflict, per pass.
const CONFLICT_RETRIES: usize = 5;

pub fn resource(kind: CalicoKindName) -> ApiResource {
    crate::cluster::resource(kind.into())
}

pub fn api(client: &Client, key: &ObjectKey) -> Api<DynamicObject> {
    let ar = resource(key.kind);
    match &key.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
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

/// Whole seconds from `since` to `now`: never negative, never overflowing
/// (a record or a node may carry any time up to the year 9999).
pub fn secs_between(since: Timestamp, now: Timestamp) -> i64 {
    now.as_second().saturating_sub(since.as_second()).max(0)
}

/// When the gate opened by settle time; `None` when that lies beyond the
/// times that can be represented (a node reporting a transition in 9999).
pub fn opened_at(all_routed_since: Option<Timestamp>, settle: Duration) -> Option<Timestamp> {
    all_routed_since?.checked_add(settle).ok()
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

/// Where this replica stands with the release lease after a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeaseState {
    /// Nothing to decide: not needed.
    #[default]
    NotNeeded,
    Held,
    /// Held by another replica; look again then.
    WaitUntil(Instant),
    /// Taken by another replica meanwhile.
    Lost,
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub released: Vec<String>,
    pub cancelled: Vec<String>,
    /// Steps that did not go through; the pass stopped before any write, or
    /// at the first object that did not go through.
    pub failures: Vec<Failure>,
    /// A cancel was refused: a release was partially applied.
    pub cancel_refused: bool,
    pub lease: LeaseState,
    /// Work is left that this replica (holding the lease) retries.
    pub pending: bool,
}

/// Why a pass stopped early.
enum Stop {
    Failed(Failure),
    /// The release lease could not be renewed (taken by another replica, or
    /// renewing took too long to rely on).
    LeaseLost,
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Failed(f)
    }
}

pub struct Releaser {
    pub cluster: Arc<Cluster>,
    pub client: Client,
    pub metrics: Metrics,
    pub events: Events,
    /// Held by the one replica that releases or cancels.
    pub lease: Arc<ReleaseLease>,
}

impl Releaser {
    /// Runs until the task is dropped: wakes on every change of routes,
    /// toggle, held records or held parts, when the settle time runs out,
    /// when the lease of another replica would expire, and, after any
    /// failure, after a capped exponential back-off. While work is left, the
    /// lease is renewed every third of its duration; when none is, it is given up.
    pub async fn run(self) {
        let mut routes = self.cluster.routes.subscribe();
        let mut toggle = self.cluster.toggle.subscribe();
        let mut held = self.cluster.held.subscribe();
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        let keepalive = self.lease.duration() / 3;
        tracing::info!(
            identity = %self.lease.identity(),
            lease = %format!("{}/{}", self.cluster.settings.calico_namespace, lease::LEASE_NAME),
            duration = ?self.lease.duration(),
            "release controller started"
        );
        let mut woken_by = "start";
        loop {
            tracing::debug!(woken_by, "release pass");
            let report = self.pass().await;
            let wait = self.after_pass(&report, &mut backoff).await;
            let deadline = wait.and_then(|d| tokio::time::Instant::now().checked_add(d));
            woken_by = loop {
                let keep = report.pending && self.lease.holds(Instant::now());
                let timer = async {
                    match deadline {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let renew_due = async {
                    if keep {
                        tokio::time::sleep(keepalive).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    _ = routes.changed() => break "routes",
                    _ = toggle.changed() => break "toggle",
                    _ = held.changed() => break "held",
                    () = timer => break "timer",
                    () = renew_due => {
                        // Keep the lease while the work is unfinished.
                        let renewed = self.lease.renew(lease::Marker::Keep).await;
                        self.lease.update_gauge();
                        match renewed {
                            Ok(true) => continue,
                            Ok(false) => break "lease",
                            Err(error) => {
                                tracing::warn!(error = %describe(&error), "cannot renew the release lease");
                                break "lease";
                            }
                        }
                    }
                }
            };
        }
    }

    /// Logs the outcome, gives the lease up when nothing is left to do, and
    /// says how long to wait for the next pass without a wake-up.
    async fn after_pass(&self, report: &PassReport, backoff: &mut Backoff) -> Option<Duration> {
        let now = Instant::now();
        let wait = if !report.failures.is_empty() {
            let d = backoff.next_delay();
            let classes: Vec<&str> = report.failures.iter().map(|f| f.class.as_str()).collect();
            tracing::warn!(classes = ?classes, retry_in = ?d, "held overlay switch neither released nor cancelled in this pass; retrying");
            Some(d)
        } else if report.lease == LeaseState::Lost {
            Some(backoff.next_delay())
        } else {
            backoff.reset();
            match report.lease {
                LeaseState::WaitUntil(t) => Some(
                    t.saturating_duration_since(now)
                        .saturating_add(Duration::from_millis(50)),
                ),
                _ => self.next_wake(),
            }
        };
        if !report.pending
            && self.lease.holds(now)
            && let Err(error) = self.lease.give_up().await
        {
            tracing::warn!(error = %describe(&error), "cannot give up the release lease; it expires by itself");
        }
        self.lease.update_gauge();
        wait
    }

    /// When the gate will open by settle time alone, if that is what it waits for.
    fn next_wake(&self) -> Option<Duration> {
        let s = self.cluster.routes.snapshot(0);
        gate::opens_in(&s, self.cluster.settings.settle, Timestamp::now())
            .filter(|d| !d.is_zero())
            .map(|d| d.saturating_add(Duration::from_millis(5)))
    }

    fn lease_name(&self) -> String {
        format!(
            "Lease {}/{}",
            self.cluster.settings.calico_namespace,
            lease::LEASE_NAME
        )
    }

    /// One look at the cluster: cancel, release, or nothing.
    pub async fn pass(&self) -> PassReport {
        let mut report = PassReport::default();
        match self.decide_and_act(&mut report).await {
            Ok(()) => {}
            Err(Stop::Failed(f)) => self.fail(f, &mut report).await,
            Err(Stop::LeaseLost) => {
                tracing::info!(
                    "the release lease was taken by another replica or could not be renewed in time; this pass stops here"
                );
                report.lease = LeaseState::Lost;
                report.pending = false;
            }
        }
        report
    }

    async fn decide_and_act(&self, report: &mut PassReport) -> Result<(), Stop> {
        let toggle = self.cluster.toggle.get();
        let held = self.cluster.held.held();
        let settle = self.cluster.settings.settle;
        let routes = self
            .cluster
            .routes
            .snapshot(self.cluster.settings.max_named_nodes);
        let gate = gate::routes_gate(&routes, settle, Timestamp::now());
        // Records or toggle unknown, or nothing to decide: do nothing.
        let Some(Decision {
            cancel,
            release,
            force,
        }) = decision::decide(&toggle, held.as_deref(), &gate)
        else {
            return Ok(());
        };
        let held = held.unwrap_or_default();

        // From here on this replica decides for the cluster: only while it
        // holds the release lease.
        match self.lease.acquire().await.map_err(|e| {
            Failure::other(
                "Lease",
                self.lease_name(),
                "read or write of the release lease",
                &e,
            )
        })? {
            Outcome::Held => report.lease = LeaseState::Held,
            Outcome::Wait(t) => {
                report.lease = LeaseState::WaitUntil(t);
                return Ok(());
            }
            Outcome::Lost => {
                report.lease = LeaseState::Lost;
                return Ok(());
            }
        }
        report.pending = true;

        if cancel && !self.cancel(&held, report).await? {
            report.pending = false;
            return Ok(());
        }
        let Some(action) = release else {
            // Nothing held: a force has nothing to do; honour it once anyway
            // so that it does not linger. (Or a refused cancel while the
            // gate is closed: the release goes on when it opens.)
            if force && held.is_empty() {
                self.clear_namespace_annotation(FORCE_ANNOTATION).await?;
            }
            report.pending = false;
            return Ok(());
        };
        if let Action::Release { forced: Some(why) } = &action {
            tracing::warn!(blocking = %why, "overlay switch release forced by the operator");
        }
        let opened_at = opened_at(routes.all_routed_since, settle).filter(|_| gate.is_open());
        // All or nothing: if any recorded change no longer applies, or any
        // write would be refused, release none, so that a failure never
        // leaves the cluster half switched.
        if !self.preflight(&held, &action, report).await? {
            return Ok(());
        }
        // Mark the release as started before its first write: until it is
        // complete, a cancel (seen by any replica) is refused.
        let marker = self.in_progress_marker(&held).await?;
        self.renew(Marker::Set(marker)).await?;
        for h in &held {
            self.handle(h, &action, opened_at, false, report).await?;
        }
        self.renew(Marker::Clear).await?;
        // The force is honoured once: removed when nothing it was for is left.
        if force {
            self.clear_namespace_annotation(FORCE_ANNOTATION).await?;
        }
        report.pending = false;
        if !report.released.is_empty() {
            tracing::info!(released = ?report.released, forced = force && !gate.is_open(), "held overlay switches released");
        }
        Ok(())
    }

    /// The marker of the release about to start: the objects it releases,
    /// plus those of an earlier release that is still partially applied.
    async fn in_progress_marker(&self, held: &[HeldObject]) -> Result<InProgress, Stop> {
        let mut objects: Vec<ObjectKey> = held.iter().map(|h| h.key.clone()).collect();
        let mut since = hold::format_time(Timestamp::now());
        if let Some(earlier) = self.lease.in_progress() {
            let states = self.read_states(&earlier.objects).await?;
            let p = lease::progress(&earlier.objects, |k| {
                states.get(k).map(|s| s.0).unwrap_or(ObjectState::Gone)
            });
            if matches!(p, Progress::Partial { .. }) {
                objects.extend(earlier.objects);
                objects.sort();
                objects.dedup();
                since = earlier.since;
            }
        }
        Ok(InProgress { since, objects })
    }

    /// Reads objects afresh: held, released or gone, with their uid.
    async fn read_states(
        &self,
        keys: &[ObjectKey],
    ) -> Result<HashMap<ObjectKey, (ObjectState, Option<String>)>, Stop> {
        let mut states = HashMap::new();
        for key in keys {
            let state = match api(&self.client, key).get_opt(&key.name).await {
                Ok(None) => (ObjectState::Gone, None),
                Ok(Some(o)) if has_record(&o) => (ObjectState::Held, o.metadata.uid),
                Ok(Some(o)) => (ObjectState::Released, o.metadata.uid),
                Err(e) => return Err(Failure::request(key, None, "read", &e).into()),
            };
            states.insert(key.clone(), state);
        }
        Ok(states)
    }

    /// Honours the cancel, unless a release has started and is partially
    /// applied: cancelling the rest would leave the cluster half switched
    /// with nothing held, so the cancel is refused (and removed, with a
    /// Warning event) and the release is completed instead. True when refused.
    async fn cancel(&self, held: &[HeldObject], report: &mut PassReport) -> Result<bool, Stop> {
        let mut keys: Vec<ObjectKey> = held.iter().map(|h| h.key.clone()).collect();
        let marker = self.lease.in_progress();
        if let Some(m) = &marker {
            keys.extend(m.objects.iter().cloned());
            keys.sort();
            keys.dedup();
        }
        let states = self.read_states(&keys).await?;
        let state = |k: &ObjectKey| states.get(k).map(|s| s.0).unwrap_or(ObjectState::Gone);
        if let Some(m) = &marker {
            match lease::progress(&m.objects, state) {
                Progress::Partial {
                    released,
                    remaining,
                } => {
                    let released: Vec<String> = released.iter().map(ToString::to_string).collect();
                    tracing::warn!(released = ?released, remaining = ?remaining.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "overlay switch cancel refused: a release is partially applied; it is completed instead");
                    for k in &remaining {
                        self.events
                            .publish(
                                k,
                                states.get(k).and_then(|s| s.1.clone()),
                                EventType::Warning,
                                "OverlaySwitchCancelRefused",
                                format!(
                                    "cancel refused: the release of the held switch has started ({} already released); cancelling the rest would leave the cluster half switched, so the release is completed instead",
                                    released.join(", ")
                                ),
                                Duration::ZERO,
                            )
                            .await;
                    }
                    self.clear_namespace_annotation(CANCEL_ANNOTATION).await?;
                    report.cancel_refused = true;
                    return Ok(true);
                }
                Progress::NotStarted | Progress::Complete => self.renew(Marker::Clear).await?,
            }
        }
        for h in held {
            let seen_held = state(&h.key) == ObjectState::Held;
            self.handle(h, &Action::Cancel, None, seen_held, report)
                .await?;
        }
        tracing::info!(cancelled = ?report.cancelled, "overlay switch cancel honoured");
        self.clear_namespace_annotation(CANCEL_ANNOTATION).await?;
        Ok(false)
    }

    /// Renews the release lease before a write; stops the pass if that fails.
    async fn renew(&self, marker: Marker) -> Result<(), Stop> {
        match self.lease.renew(marker).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Stop::LeaseLost),
            Err(e) => Err(Failure::other(
                "Lease",
                self.lease_name(),
                "renewal of the release lease",
                &e,
            )
            .into()),
        }
    }

    /// Logs, counts and (for conflicts and denials) publishes a failure.
    async fn fail(&self, f: Failure, report: &mut PassReport) {
        tracing::warn!(object = %f.object, class = %f.class, failure = %f.message, "held overlay switch cannot be released or cancelled now; still holding");
        self.metrics
            .release_failures
            .get_or_create(&FailureLabels {
                kind: f.kind.clone(),
                class: f.class,
            })
            .inc();
        if f.class == FailureClass::Conflict {
            self.metrics
                .release_conflicts
                .get_or_create(&KindLabels {
                    kind: f.kind.clone(),
                })
                .inc();
        }
        if let Some(key) = &f.key
            && f.class != FailureClass::Transient
        {
            self.events
                .publish(
                    key,
                    f.uid.clone(),
                    EventType::Warning,
                    "OverlaySwitchConflict",
                    failure_note(&f),
                    HELD_EVENT_INTERVAL,
                )
                .await;
        }
        report.failures.push(f);
    }

    /// What `action` would write for the object as it is now.
    fn next_object(&self, h: &HeldObject, current: &DynamicObject, action: &Action) -> Next {
        let value = serde_json::to_value(current).expect("object encodes");
        let kind: crate::calico::overlay::CalicoKind = h.key.kind.into();
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
    /// now, and the API server (with this webhook and every admission
    /// webhook and policy) must accept the write, as a server-side dry run
    /// shows, before anything is written. Reports each one that would fail.
    /// True when all would succeed.
    async fn preflight(
        &self,
        held: &[HeldObject],
        action: &Action,
        report: &mut PassReport,
    ) -> Result<bool, Stop> {
        let mut ok = true;
        for h in held {
            let api = api(&self.client, &h.key);
            let current = match api.get_opt(&h.key.name).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    self.fail(Failure::request(&h.key, None, "read", &e), report)
                        .await;
                    ok = false;
                    continue;
                }
            };
            let uid = current.metadata.uid.clone();
            let failure = match self.next_object(h, &current, action) {
                Next::Skip => continue,
                Next::Conflict(why) => Failure::object(&h.key, uid, FailureClass::Conflict, why),
                Next::Write(next, _) => {
                    let dry = PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    };
                    let answer = lease::with_deadline(
                        self.lease.write_deadline(),
                        api.replace(&h.key.name, &dry, &next),
                    )
                    .await;
                    match answer {
                        Ok(out) if !has_record(&out) => continue,
                        // This webhook (another replica's view of the routes)
                        // would hold it again: look again soon.
                        Ok(out) => Failure::object(
                            &h.key,
                            uid,
                            FailureClass::Transient,
                            format!("the webhook would hold it again: {}", held_reason(&out)),
                        ),
                        Err(e) => Failure::request(&h.key, uid, "write (dry run)", &e),
                    }
                }
            };
            self.fail(failure, report).await;
            ok = false;
        }
        Ok(ok)
    }

    /// Releases or cancels one object, with its resourceVersion, renewing
    /// the lease right before the write. `must_have_record`: the object was
    /// seen held at the start of this cancel, so a record that has gone
    /// meanwhile means someone released it: the cancel stops there.
    async fn handle(
        &self,
        h: &HeldObject,
        action: &Action,
        opened_at: Option<Timestamp>,
        must_have_record: bool,
        report: &mut PassReport,
    ) -> Result<(), Stop> {
        let api = api(&self.client, &h.key);
        let kind = format!("{:?}", h.key.kind);
        let mut seen_record = must_have_record;
        for _ in 0..CONFLICT_RETRIES {
            let current = match api.get_opt(&h.key.name).await {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(()), // gone
                Err(e) => return Err(Failure::request(&h.key, None, "read", &e).into()),
            };
            let uid = current.metadata.uid.clone();
            let (next, since) = match self.next_object(h, &current, action) {
                Next::Skip if seen_record && matches!(action, Action::Cancel) => {
                    return Err(Failure::object(
                        &h.key,
                        uid,
                        FailureClass::Transient,
                        "its record was removed while the cancel ran (released meanwhile?); looking again before cancelling anything else",
                    )
                    .into());
                }
                Next::Skip => return Ok(()),
                Next::Conflict(why) => {
                    return Err(Failure::object(&h.key, uid, FailureClass::Conflict, why).into());
                }
                Next::Write(next, since) => (next, since),
            };
            seen_record = true;
            self.renew(Marker::Keep).await?;
            let written = lease::with_deadline(
                self.lease.write_deadline(),
                api.replace(&h.key.name, &PostParams::default(), &next),
            )
            .await;
            let written = match written {
                Ok(w) => w,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(object = %h.key, "write conflict; reading again");
                    continue;
                }
                Err(e) => return Err(Failure::request(&h.key, uid, "write", &e).into()),
            };
            if has_record(&written) {
                // The webhook held it again (its gate closed meanwhile).
                return Err(Failure::object(
                    &h.key,
                    uid,
                    FailureClass::Transient,
                    format!("the webhook held it again: {}", held_reason(&written)),
                )
                .into());
            }
            let now = Timestamp::now();
            let held_secs = since.map(|s| secs_between(s, now)).unwrap_or(0);
            match action {
                Action::Release { forced } => {
                    self.metrics
                        .releases
                        .get_or_create(&KindLabels { kind: kind.clone() })
                        .inc();
                    if let Some(opened) = opened_at {
                        let delay = now.duration_since(opened).as_secs_f64().max(0.0);
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
        // Still conflicting after several reads: try again later, with back-off.
        Err(Failure::object(
            &h.key,
            None,
            FailureClass::Transient,
            "it kept changing while being written (write conflicts)",
        )
        .into())
    }

    /// Removes a once-only annotation from the toggle namespace (renewing the
    /// lease first); a `test` op makes a second removal fail harmlessly.
    async fn clear_namespace_annotation(&self, key: &str) -> Result<(), Stop> {
        self.renew(Marker::Keep).await?;
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
        let ns = self.cluster.toggle.namespace();
        match lease::with_deadline(
            self.lease.write_deadline(),
            api.patch(ns, &PatchParams::default(), &Patch::Json::<()>(patch)),
        )
        .await
        {
            Ok(ns) => {
                tracing::info!(annotation = key, namespace = %ns.meta().name.clone().unwrap_or_default(), "once-only annotation honoured and removed");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 || s.code == 404 => Ok(()),
            Err(e) => Err(Failure::other(
                "Namespace",
                format!("Namespace {ns}"),
                &format!("removal of the {key} annotation"),
                &e,
            )
            .into()),
        }
    }
}

fn held_reason(obj: &DynamicObject) -> String {
    obj.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(hold::REASON_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| "no reason given".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn time_arithmetic_saturates_at_the_ends_of_time() {
        let max = Timestamp::MAX;
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        // A node reporting its route since the year 9999: no panic, no time.
        assert_eq!(opened_at(Some(max), Duration::from_secs(10)), None);
        assert_eq!(opened_at(None, Duration::from_secs(10)), None);
        assert_eq!(
            opened_at(Some(now), Duration::from_secs(10)),
            Some("2026-01-01T00:00:10Z".parse().unwrap())
        );
        assert_eq!(opened_at(Some(now), Duration::MAX), None);
        assert_eq!(secs_between(max, now), 0);
        assert_eq!(
            secs_between(Timestamp::MIN, max),
            max.as_second() - Timestamp::MIN.as_second()
        );
        assert_eq!(
            secs_between("2025-12-31T23:59:00Z".parse().unwrap(), now),
            60
        );
    }
}
