//! The release lease: release and cancel decisions of one cluster are made
//! by one replica at a time.
//!
//! Without it, replica A could release the ConfigMap while replica B honours
//! a cancel and strips the other records: the cluster would be half switched
//! with nothing held. A `coordination.k8s.io/v1` Lease per guarded cluster
//! ([`LEASE_NAME`] in the Calico namespace) is held by the replica that
//! releases or cancels:
//!
//! - it is taken only when there is something to decide (the gate is open or
//!   forced while a switch is held, or a cancel or force is requested), kept
//!   (renewed every third of its duration) while that work is unfinished,
//!   and given up (holder cleared) once it is done or the process stops;
//! - the holder renews it before every write of a pass and stops the pass if
//!   that fails or another replica took it;
//! - every write carries the Lease's resourceVersion, so two replicas can
//!   never both succeed in taking it;
//! - a replica that finds it held by another waits until the lease would
//!   expire: a full lease duration, on its own monotonic clock, after it
//!   first saw that version of the Lease. The holder's `renewTime` is not
//!   trusted, so clock skew between nodes does not matter: the holder counts
//!   its lease from before it sent the renewal, the others from after they
//!   saw it.
//!
//! The decision is pure ([`decide`], [`progress`]); [`ReleaseLease`] is the
//! thin I/O around it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::cluster::held::ObjectKey;

/// Name of the Lease, in the Calico namespace of the cluster.
pub const LEASE_NAME: &str = "overlay-switch-webhook-release";
/// How long a lease lasts without renewal.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15);
/// Bounds on a duration read from a Lease (a broken or hostile value must
/// neither make it expire at once nor block every other replica for ever).
const MIN_DURATION: Duration = Duration::from_secs(1);
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Marks a release that has started writing: which objects it releases.
/// While some of them are released and some still held, a cancel is refused
/// (it would leave the cluster half switched); the release is completed instead.
pub const IN_PROGRESS_ANNOTATION: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-release-in-progress";

/// The holder identity of this process: the pod name (`POD_NAME`), else the
/// host name, plus a random suffix, so that a restarted process (or a second
/// one with the same name) is never taken for the previous holder.
pub fn identity(pod_name: Option<&str>) -> String {
    let base = pod_name
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "overlay-switch-webhook".into());
    format!("{base}-{}", random_suffix())
}

/// Eight hex digits, different per process (std's hasher keys are random).
fn random_suffix() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:08x}", h.finish() as u32)
}

/// What the decision needs of a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// `None` (or empty): nobody holds it.
    pub holder: Option<String>,
    pub duration: Duration,
}

impl View {
    pub fn of(lease: &Lease) -> View {
        let spec = lease.spec.as_ref();
        View {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map(|s| Duration::from_secs(s).clamp(MIN_DURATION, MAX_DURATION))
                .unwrap_or(DEFAULT_DURATION),
        }
    }
}

/// What to do about the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// Free, or expired: take it (with its resourceVersion).
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Another replica holds it: look again then (or on a wake-up).
    WaitUntil(Instant),
}

/// Pure: given the Lease as read (`None`: it does not exist), when this
/// process first saw that version of it, the time now, and who we are.
pub fn decide(lease: Option<&View>, first_seen: Instant, now: Instant, me: &str) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    match lease.holder.as_deref() {
        None => Decision::Acquire,
        Some(h) if h == me => Decision::Renew,
        Some(_) => {
            // The duration is clamped, so this only fails on a broken clock:
            // then wait one more duration from now.
            let until = first_seen
                .checked_add(lease.duration)
                .or_else(|| now.checked_add(lease.duration))
                .unwrap_or(now);
            if now >= until {
                Decision::Acquire
            } else {
                Decision::WaitUntil(until)
            }
        }
    }
}

/// The in-progress marker: the objects a started release writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    pub since: String,
    pub objects: Vec<ObjectKey>,
}

/// How an object of a started release looks now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectState {
    /// It still carries a record.
    Held,
    /// It exists without a record: released.
    Released,
    /// Deleted.
    Gone,
}

/// How far a started release got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Nothing of it is released (or there is nothing left of it).
    NotStarted,
    /// Some objects are released, some still held: half switched until it
    /// is completed.
    Partial {
        released: Vec<ObjectKey>,
        remaining: Vec<ObjectKey>,
    },
    /// Every object that still exists is released.
    Complete,
}

/// Pure: the progress of the release that wrote `plan`.
pub fn progress(plan: &[ObjectKey], state: impl Fn(&ObjectKey) -> ObjectState) -> Progress {
    let (mut released, mut remaining) = (Vec::new(), Vec::new());
    for k in plan {
        match state(k) {
            ObjectState::Held => remaining.push(k.clone()),
            ObjectState::Released => released.push(k.clone()),
            ObjectState::Gone => {}
        }
    }
    match (released.is_empty(), remaining.is_empty()) {
        (true, _) => Progress::NotStarted,
        (false, true) => Progress::Complete,
        (false, false) => Progress::Partial {
            released,
            remaining,
        },
    }
}

/// What a renewal does with the in-progress marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Keep,
    Set(InProgress),
    Clear,
}

/// The result of trying to hold the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Held,
    /// Another replica holds it until then (at the latest).
    Wait(Instant),
    /// Another replica took it between our read and our write.
    Lost,
}

#[derive(Debug, Default)]
struct State {
    /// The Lease as last read or written by us.
    last: Option<Lease>,
    /// The resourceVersion last seen, and when we first saw it.
    seen: Option<(String, Instant)>,
    /// Until when we hold it, by our clock: counted from before our last
    /// successful write was sent.
    held_until: Option<Instant>,
}

/// The release lease of one cluster, as this process sees it.
pub struct ReleaseLease {
    api: Api<Lease>,
    identity: String,
    duration: Duration,
    holder_gauge: Gauge,
    state: Mutex<State>,
}

/// Runs a request with a deadline; running out of it is an error like a
/// broken connection (transient).
pub async fn with_deadline<T>(
    deadline: Duration,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(deadline, request).await {
        Ok(r) => r,
        Err(elapsed) => Err(kube::Error::Service(Box::new(elapsed))),
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn marker_of(lease: &Lease) -> Option<InProgress> {
    let raw = lease
        .metadata
        .annotations
        .as_ref()?
        .get(IN_PROGRESS_ANNOTATION)?;
    match serde_json::from_str(raw) {
        Ok(m) => Some(m),
        Err(error) => {
            tracing::warn!(%error, "unreadable release in-progress marker on the lease; ignored");
            None
        }
    }
}

impl ReleaseLease {
    pub fn new(
        client: Client,
        namespace: &str,
        identity: String,
        duration: Duration,
        holder_gauge: Gauge,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
            duration: duration.clamp(MIN_DURATION, MAX_DURATION),
            holder_gauge,
            state: Mutex::default(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// How long one write (of the Lease or of a Calico object) may take:
    /// a write must land well within the lease it was made under.
    pub fn write_deadline(&self) -> Duration {
        self.duration / 3
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lease lock")
    }

    /// True while we hold the lease by our own clock.
    pub fn holds(&self, now: Instant) -> bool {
        self.state().held_until.is_some_and(|t| now < t)
    }

    /// How long we still hold it by our own clock.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.state()
            .held_until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// Sets the holder gauge to what we believe now.
    pub fn update_gauge(&self) {
        let holds = self.holds(Instant::now());
        self.holder_gauge.set(i64::from(holds));
    }

    /// The in-progress marker of the Lease as last read or written.
    pub fn in_progress(&self) -> Option<InProgress> {
        self.state().last.as_ref().and_then(marker_of)
    }

    fn forget_hold(&self) {
        self.state().held_until = None;
        self.holder_gauge.set(0);
    }

    /// Reads the Lease and takes, renews or waits for it.
    pub async fn acquire(&self) -> Result<Outcome, kube::Error> {
        let lease = self.api.get_opt(LEASE_NAME).await?;
        let now = Instant::now();
        let view = lease.as_ref().map(View::of);
        let first_seen = {
            let mut st = self.state();
            let rv = lease
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone())
                .unwrap_or_default();
            let first = match &st.seen {
                Some((seen_rv, at)) if *seen_rv == rv => *at,
                _ => now,
            };
            st.seen = Some((rv, first));
            st.last = lease.clone();
            first
        };
        match decide(view.as_ref(), first_seen, now, &self.identity) {
            Decision::WaitUntil(t) => {
                self.forget_hold();
                tracing::debug!(holder = ?view.and_then(|v| v.holder), wait = ?t.saturating_duration_since(now), "release lease held by another replica; waiting");
                Ok(Outcome::Wait(t))
            }
            Decision::Create => self.write(None, Marker::Keep).await,
            Decision::Acquire => {
                let previous = view.and_then(|v| v.holder);
                let out = self.write(lease, Marker::Keep).await?;
                if out == Outcome::Held {
                    tracing::info!(identity = %self.identity, previous = ?previous, "release lease acquired");
                }
                Ok(out)
            }
            Decision::Renew => self.write(lease, Marker::Keep).await,
        }
    }

    /// Renews the lease we hold (from our last write, with its
    /// resourceVersion). `Ok(false)`: we do not hold it any more (another
    /// replica took it, or the renewal was too slow to rely on).
    pub async fn renew(&self, marker: Marker) -> Result<bool, kube::Error> {
        let last = {
            let st = self.state();
            match &st.last {
                Some(l)
                    if View::of(l).holder.as_deref() == Some(self.identity.as_str())
                        && st.held_until.is_some() =>
                {
                    l.clone()
                }
                _ => return Ok(false),
            }
        };
        let sent = Instant::now();
        if self.write(Some(last), marker).await? != Outcome::Held {
            return Ok(false);
        }
        // A renewal that took half the lease leaves too little to write in.
        if self.remaining(Instant::now()) < self.duration / 2 {
            tracing::warn!(took = ?sent.elapsed(), "renewing the release lease was too slow; stopping this pass");
            return Ok(false);
        }
        Ok(true)
    }

    /// Gives the lease up (holder cleared) if we hold it, so another replica
    /// can take it at once. Keeps the in-progress marker.
    pub async fn give_up(&self) -> Result<(), kube::Error> {
        let last = {
            let st = self.state();
            match &st.last {
                Some(l)
                    if View::of(l).holder.as_deref() == Some(self.identity.as_str())
                        && st.held_until.is_some() =>
                {
                    l.clone()
                }
                _ => return Ok(()),
            }
        };
        // Not ours any more from before the write is sent.
        self.forget_hold();
        let mut next = last;
        if let Some(spec) = next.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = Some(now_micro());
        }
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                tracing::info!(identity = %self.identity, "release lease given up");
                self.state().last = Some(written);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates (`base` None) or replaces the Lease held by us.
    async fn write(&self, base: Option<Lease>, marker: Marker) -> Result<Outcome, kube::Error> {
        let now = now_micro();
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let creating = base.is_none();
        let mut lease = base.unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_string(),
                        "overlay-switch-webhook".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: None,
        });
        let previous = View::of(&lease).holder;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if previous.as_deref() != Some(self.identity.as_str()) {
            spec.acquire_time = Some(now.clone());
            if previous.is_some() {
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now);
        match marker {
            Marker::Keep => {}
            Marker::Set(m) => {
                lease
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(
                        IN_PROGRESS_ANNOTATION.into(),
                        serde_json::to_string(&m).expect("marker encodes"),
                    );
            }
            Marker::Clear => {
                if let Some(a) = lease.metadata.annotations.as_mut() {
                    a.remove(IN_PROGRESS_ANNOTATION);
                }
            }
        }
        let sent = Instant::now();
        let pp = PostParams::default();
        let result = with_deadline(self.write_deadline(), async {
            if creating {
                self.api.create(&pp, &lease).await
            } else {
                self.api.replace(LEASE_NAME, &pp, &lease).await
            }
        })
        .await;
        match result {
            Ok(written) => {
                let mut st = self.state();
                st.held_until = sent.checked_add(self.duration);
                if let Some(rv) = written.metadata.resource_version.clone() {
                    st.seen = Some((rv, Instant::now()));
                }
                st.last = Some(written);
                drop(st);
                self.holder_gauge.set(1);
                Ok(Outcome::Held)
            }
            // Someone else wrote it since we read it (or created it first).
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.forget_hold();
                self.state().last = None;
                tracing::info!(identity = %self.identity, "release lease changed by another replica");
                Ok(Outcome::Lost)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::held::CalicoKindName;

    fn held_by(h: &str) -> View {
        View {
            holder: Some(h.into()),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn none_is_created_a_free_one_taken_our_own_renewed() {
        let t = Instant::now();
        assert_eq!(decide(None, t, t, "me"), Decision::Create);
        let free = View {
            holder: None,
            duration: Duration::from_secs(15),
        };
        assert_eq!(decide(Some(&free), t, t, "me"), Decision::Acquire);
        assert_eq!(decide(Some(&held_by("me")), t, t, "me"), Decision::Renew);
    }

    #[test]
    fn another_holder_is_waited_for_a_full_duration_from_when_we_first_saw_it() {
        let seen = Instant::now();
        let other = held_by("replica-b-1234");
        let until = seen + Duration::from_secs(15);
        assert_eq!(
            decide(Some(&other), seen, seen, "me"),
            Decision::WaitUntil(until)
        );
        assert_eq!(
            decide(Some(&other), seen, seen + Duration::from_secs(14), "me"),
            Decision::WaitUntil(until)
        );
        assert_eq!(decide(Some(&other), seen, until, "me"), Decision::Acquire);
        // Same pod name, another process: not us.
        assert_eq!(
            decide(Some(&held_by("replica-a-1")), seen, seen, "replica-a-2"),
            Decision::WaitUntil(until)
        );
    }

    #[test]
    fn lease_values_are_read_within_bounds() {
        let lease = |secs: Option<i32>, holder: Option<&str>| Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: secs,
                ..Default::default()
            }),
        };
        assert_eq!(
            View::of(&lease(Some(7), Some("x"))).duration,
            Duration::from_secs(7)
        );
        assert_eq!(View::of(&lease(None, Some("x"))).duration, DEFAULT_DURATION);
        assert_eq!(
            View::of(&lease(Some(-5), Some("x"))).duration,
            DEFAULT_DURATION
        );
        assert_eq!(View::of(&lease(Some(0), Some("x"))).duration, MIN_DURATION);
        assert_eq!(
            View::of(&lease(Some(i32::MAX), Some("x"))).duration,
            MAX_DURATION
        );
        assert_eq!(View::of(&lease(Some(7), Some(""))).holder, None);
        assert_eq!(View::of(&Lease::default()).holder, None);
    }

    #[test]
    fn identities_carry_the_pod_name_and_differ_per_process_instance() {
        let a = identity(Some("overlay-switch-webhook-7d9f-abcde"));
        assert!(a.starts_with("overlay-switch-webhook-7d9f-abcde-"), "{a}");
        assert_eq!(a.len(), "overlay-switch-webhook-7d9f-abcde-".len() + 8);
        assert_ne!(a, identity(Some("overlay-switch-webhook-7d9f-abcde")));
        assert!(!identity(None).is_empty());
    }

    fn key(kind: CalicoKindName, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: (kind != CalicoKindName::IPPool).then(|| "kube-system".into()),
            name: name.into(),
        }
    }

    #[test]
    fn a_release_is_partial_while_some_of_it_is_released_and_some_held() {
        let cm = key(CalicoKindName::ConfigMap, "calico-config");
        let pool = key(CalicoKindName::IPPool, "default-ipv4-ippool");
        let ds = key(CalicoKindName::DaemonSet, "calico-node");
        let plan = [cm.clone(), pool.clone(), ds.clone()];
        use ObjectState::*;
        let st = |c, p, d| {
            move |k: &ObjectKey| match k.kind {
                CalicoKindName::ConfigMap => c,
                CalicoKindName::DaemonSet => d,
                _ => p,
            }
        };
        assert_eq!(progress(&plan, st(Held, Held, Held)), Progress::NotStarted);
        assert_eq!(
            progress(&plan, st(Released, Held, Held)),
            Progress::Partial {
                released: vec![cm.clone()],
                remaining: vec![pool.clone(), ds.clone()]
            }
        );
        assert_eq!(
            progress(&plan, st(Released, Released, Held)),
            Progress::Partial {
                released: vec![cm.clone(), pool.clone()],
                remaining: vec![ds.clone()]
            }
        );
        assert_eq!(
            progress(&plan, st(Released, Released, Released)),
            Progress::Complete
        );
        // A deleted pool neither counts as released nor as held.
        assert_eq!(progress(&plan, st(Held, Gone, Held)), Progress::NotStarted);
        assert_eq!(
            progress(&plan, st(Released, Gone, Released)),
            Progress::Complete
        );
        assert_eq!(progress(&[], st(Held, Held, Held)), Progress::NotStarted);
    }

    #[test]
    fn the_marker_round_trips() {
        let m = InProgress {
            since: "2026-01-01T00:00:00Z".into(),
            objects: vec![key(CalicoKindName::IPPool, "p")],
        };
        let lease = Lease {
            metadata: ObjectMeta {
                annotations: Some(
                    [(
                        IN_PROGRESS_ANNOTATION.to_string(),
                        serde_json::to_string(&m).unwrap(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: None,
        };
        assert_eq!(marker_of(&lease), Some(m));
        let mut broken = lease.clone();
        broken
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(IN_PROGRESS_ANNOTATION.into(), "{".into());
        assert_eq!(marker_of(&broken), None);
    }
}
