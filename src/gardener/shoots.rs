//! The shoots this server guards: one [`Cluster`] value per shoot, started
//! and stopped as the seed's `Cluster` resources say ([`super::shoot::plan`]),
//! each fed by watches on its own API server and released by its own
//! release controller. Fed by the watch of the seed's `Cluster`s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::api::DynamicObject;
use kube::{Client, ResourceExt as _};
use prometheus_client::metrics::gauge::Gauge;

use super::access::{self, AccessSecret};
use super::shoot::{Guard, Plan, guard_of, plan};
use crate::cluster::release::lease::{self, ReleaseLease};
use crate::cluster::release::{Events, HELD_EVENT_INTERVAL, Releaser};
use crate::cluster::toggle::GuardSource;
use crate::cluster::watch::Store;
use crate::cluster::{Cluster, Settings};
use crate::metrics::Metrics;
use crate::server::webhook::{Outcome, Webhook};

/// What every shoot is guarded with.
#[derive(Debug, Clone)]
pub struct ShootConfig {
    pub settings: Settings,
    pub access: AccessSecret,
    /// How often the access Secret is read again (a changed kubeconfig,
    /// e.g. a rotated token, restarts the shoot's watches).
    pub access_refresh: Duration,
    /// See `serve --watch-timeout`.
    pub watch_timeout: Option<u32>,
    /// `None`: holds are left to the operator's next apply (`--release=false`).
    pub release: Option<ReleaseConfig>,
}

#[derive(Debug, Clone)]
pub struct ReleaseConfig {
    pub lease_duration: Duration,
    /// This replica's name, for the lease and events.
    pub pod_name: Option<String>,
}

/// One served shoot.
pub struct Shoot {
    pub namespace: String,
    pub cluster: Arc<Cluster>,
    pub webhook: Webhook,
    /// Whether this replica holds the shoot's release lease (1 or 0).
    pub lease_holder: Gauge,
    events: Arc<RwLock<Option<Events>>>,
    task: Option<tokio::task::AbortHandle>,
}

impl Shoot {
    /// A shoot value with no connection (its caches are fed by the caller):
    /// for tests and benchmarks.
    pub fn detached(namespace: &str, settings: Settings, metrics: Metrics) -> Arc<Shoot> {
        let cluster = Cluster::with_guard_source(settings, GuardSource::External);
        Arc::new(Shoot {
            namespace: namespace.into(),
            webhook: Webhook {
                cluster: cluster.clone(),
                metrics,
            },
            cluster,
            lease_holder: Gauge::default(),
            events: Arc::default(),
            task: None,
        })
    }

    /// Publishes the Event of a held switch in the shoot (when it can be reached).
    pub fn publish_held(&self, o: &Outcome) {
        if o.verdict != "held" || o.dry_run {
            return;
        }
        let events = self
            .events
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (Some(events), Some(key), Some(note)) = (events, o.key.clone(), o.message.clone())
        else {
            return;
        };
        let uid = o.object_uid.clone();
        tokio::spawn(async move {
            events
                .publish(
                    &key,
                    uid,
                    kube::runtime::events::EventType::Normal,
                    "OverlaySwitchHeld",
                    note,
                    HELD_EVENT_INTERVAL,
                )
                .await;
        });
    }

    /// Nothing held, as far as is known (`None` while the records are unknown).
    pub fn holds(&self) -> Option<bool> {
        self.cluster.held.held().map(|h| !h.is_empty())
    }
}

impl Drop for Shoot {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Where a review for a shoot namespace goes.
pub enum Target {
    /// Judged with this shoot's state.
    Shoot(Arc<Shoot>),
    /// The shoot exists and is not guarded (nothing held): admitted unchanged.
    Unguarded,
    /// Refused, with the reason.
    Refuse(String),
}

#[derive(Debug, Default)]
struct Views {
    synced: bool,
    /// Counts re-lists and lost watches: a pass whose epoch changed under
    /// it saw a view that may be incomplete.
    epoch: u64,
    listing: Option<BTreeMap<String, Guard>>,
    guards: BTreeMap<String, Guard>,
}

#[derive(Default)]
struct Running {
    served: BTreeMap<String, Arc<Shoot>>,
    /// Shoots stopped because their held records were known empty (so not
    /// probed again); forgotten when the `Cluster` watch is lost.
    drained: BTreeSet<String>,
}

/// One pass of [`Shoots::sync_all`]: the plan of every shoot the seed has a
/// `Cluster` for, all from one whole view of the `Cluster`s.
#[derive(Debug)]
pub struct Pass {
    pub epoch: u64,
    pub plans: BTreeMap<String, Plan>,
}

/// Every shoot of the seed, as its `Cluster` says, and those served.
pub struct Shoots {
    seed: Option<Client>,
    config: ShootConfig,
    metrics: Metrics,
    views: RwLock<Views>,
    /// Locked before `views` when both are needed.
    running: RwLock<Running>,
    changed: tokio::sync::Notify,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Shoots {
    /// `seed: None` starts no connections (tests and benchmarks insert
    /// [`Shoot::detached`] values with [`Shoots::insert`]).
    pub fn new(seed: Option<Client>, config: ShootConfig, metrics: Metrics) -> Arc<Shoots> {
        Arc::new(Shoots {
            seed,
            config,
            metrics,
            views: RwLock::default(),
            running: RwLock::default(),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn config(&self) -> &ShootConfig {
        &self.config
    }

    /// Whether the seed's `Cluster`s have been listed (and the watch is whole).
    pub fn synced(&self) -> bool {
        read(&self.views).synced
    }

    /// The served shoot `namespace`, if any.
    pub fn get(&self, namespace: &str) -> Option<Arc<Shoot>> {
        read(&self.running).served.get(namespace).cloned()
    }

    /// Every served shoot.
    pub fn served(&self) -> Vec<Arc<Shoot>> {
        read(&self.running).served.values().cloned().collect()
    }

    /// Every shoot the seed has a `Cluster` for, with its guard.
    pub fn guards(&self) -> BTreeMap<String, Guard> {
        read(&self.views).guards.clone()
    }

    /// Stops serving every shoot (at shutdown).
    pub fn stop_all(&self) {
        std::mem::take(&mut write(&self.running).served);
    }

    /// Serves a shoot value made by the caller (tests and benchmarks).
    pub fn insert(&self, shoot: Arc<Shoot>) {
        write(&self.running)
            .served
            .insert(shoot.namespace.clone(), shoot);
    }

    /// Wakes when a `Cluster` changes.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Where a review for shoot `namespace` goes.
    pub fn target(&self, namespace: &str) -> Target {
        if let Some(shoot) = self.get(namespace) {
            return Target::Shoot(shoot);
        }
        let views = read(&self.views);
        if !views.synced {
            return Target::Refuse(format!(
                "overlay-switch-webhook has not yet read the seed's Gardener Clusters; shoot {namespace:?} is unknown, try again"
            ));
        }
        match views.guards.get(namespace) {
            None => Target::Refuse(format!(
                "overlay-switch-webhook has no Gardener Cluster {namespace:?} in its seed: this registration is not for a shoot it serves"
            )),
            Some(g @ (Guard::Off | Guard::Hibernated | Guard::Deleting)) => {
                let _ = g;
                Target::Unguarded
            }
            Some(Guard::On) => Target::Refuse(format!(
                "the guard of shoot {namespace:?} is starting; try again"
            )),
            Some(Guard::Unreadable(why)) => Target::Refuse(format!(
                "the Gardener Cluster {namespace:?} cannot be read ({why}), so whether its guard is on is unknown"
            )),
        }
    }

    /// Whether shoot `namespace` is known to hold nothing while it is not
    /// served (`None`: its state is unknown or it is served).
    pub fn known_clear(&self, namespace: &str) -> Option<bool> {
        let running = read(&self.running);
        if running.served.contains_key(namespace) {
            return None;
        }
        let synced = read(&self.views).synced;
        (synced && running.drained.contains(namespace)).then_some(true)
    }

    /// Whether shoot `namespace`'s registration is wanted now, as the
    /// current view says; `None` while unknown (not listed, unreadable).
    pub fn registration_wanted(&self, namespace: &str) -> Option<bool> {
        let views = read(&self.views);
        if !views.synced {
            return None;
        }
        plan(views.guards.get(namespace), Some(false)).register
    }

    /// The current epoch of the `Cluster` view (see [`Pass`]).
    pub fn epoch(&self) -> u64 {
        read(&self.views).epoch
    }

    /// Brings shoot `namespace` in line with its `Cluster`: starts it,
    /// stops it, or sets its guard. Does nothing while the `Cluster`s are
    /// not listed (never on a guess). One shoot's syncs are serialized (the
    /// `running` lock is taken before its guard is read), so a sync with an
    /// older view never undoes a newer one.
    pub fn sync(&self, namespace: &str) -> Option<Plan> {
        let mut running = write(&self.running);
        let guard = {
            let views = read(&self.views);
            if !views.synced {
                return None;
            }
            views.guards.get(namespace).cloned()
        };
        let current = running.served.get(namespace).cloned();
        let holds = match &current {
            Some(s) => s.holds(),
            None => running.drained.contains(namespace).then_some(false),
        };
        let p = plan(guard.as_ref(), holds);
        match (p.serve, current) {
            (true, None) => {
                let shoot = self.start(namespace);
                shoot
                    .cluster
                    .toggle
                    .set_guard(guard.as_ref().and_then(Guard::guarded));
                tracing::info!(
                    shoot = namespace,
                    guard = guard.as_ref().map(Guard::as_str),
                    "shoot served"
                );
                running.drained.remove(namespace);
                running.served.insert(namespace.into(), shoot);
            }
            (false, Some(_)) => {
                running.served.remove(namespace);
                if guard.is_some() {
                    running.drained.insert(namespace.into());
                }
                tracing::info!(
                    shoot = namespace,
                    guard = guard.as_ref().map(Guard::as_str),
                    "shoot no longer served"
                );
            }
            (true, Some(s)) => s
                .cluster
                .toggle
                .set_guard(guard.as_ref().and_then(Guard::guarded)),
            (false, None) => {}
        }
        if guard.is_none() {
            running.drained.remove(namespace);
        }
        Some(p)
    }

    /// [`Shoots::sync`] of every shoot known or served, and the plans of
    /// those with a `Cluster`; `None` when the view was not whole for the
    /// whole pass (not listed, or re-listed or lost meanwhile).
    pub fn sync_all(&self) -> Option<Pass> {
        let (epoch, mut names) = {
            let views = read(&self.views);
            if !views.synced {
                return None;
            }
            (
                views.epoch,
                views.guards.keys().cloned().collect::<Vec<_>>(),
            )
        };
        names.extend(read(&self.running).served.keys().cloned());
        names.sort();
        names.dedup();
        let mut plans = BTreeMap::new();
        for n in names {
            let p = self.sync(&n)?;
            if read(&self.views).guards.contains_key(&n) {
                plans.insert(n, p);
            }
        }
        let views = read(&self.views);
        (views.synced && views.epoch == epoch).then_some(Pass { epoch, plans })
    }

    fn start(&self, namespace: &str) -> Arc<Shoot> {
        let mut shoot = Shoot::detached(
            namespace,
            self.config.settings.clone(),
            self.metrics.clone(),
        );
        if let Some(seed) = &self.seed {
            let s = Arc::get_mut(&mut shoot).expect("a new shoot is not shared");
            let task = tokio::spawn(supervise(
                seed.clone(),
                namespace.to_string(),
                s.cluster.clone(),
                s.events.clone(),
                s.lease_holder.clone(),
                self.config.clone(),
                self.metrics.clone(),
            ));
            s.task = Some(task.abort_handle());
        }
        shoot
    }

    fn set_views(&self, f: impl FnOnce(&mut Views)) {
        f(&mut write(&self.views));
        self.changed.notify_one();
    }
}

fn name_and_guard(obj: &DynamicObject) -> (String, Guard) {
    let value = serde_json::to_value(obj).unwrap_or_default();
    (obj.name_any(), guard_of(&value))
}

impl Store<DynamicObject> for Shoots {
    fn relist_begin(&self) {
        self.set_views(|v| {
            v.listing = Some(BTreeMap::new());
            v.epoch += 1;
        });
    }

    fn relist_apply(&self, obj: DynamicObject) {
        let (name, guard) = name_and_guard(&obj);
        self.set_views(|v| {
            v.listing
                .get_or_insert_with(BTreeMap::new)
                .insert(name, guard);
        });
    }

    fn relist_done(&self) {
        self.set_views(|v| {
            v.guards = v.listing.take().unwrap_or_default();
            v.synced = true;
        });
        let _ = self.sync_all();
    }

    fn apply(&self, obj: DynamicObject) {
        let (name, guard) = name_and_guard(&obj);
        self.set_views(|v| {
            v.guards.insert(name.clone(), guard);
        });
        let _ = self.sync(&name);
    }

    fn delete(&self, obj: DynamicObject) {
        let name = obj.name_any();
        self.set_views(|v| {
            v.guards.remove(&name);
        });
        let _ = self.sync(&name);
    }

    fn lost(&self) {
        // Which shoots are guarded is unknown: every served shoot holds.
        self.set_views(|v| {
            v.synced = false;
            v.epoch += 1;
        });
        // Held records may have been made meanwhile: probe again.
        write(&self.running).drained.clear();
        for s in self.served() {
            s.cluster.toggle.set_guard(None);
        }
    }
}

/// Keeps one shoot connected: reads its access Secret, and (again whenever
/// the kubeconfig in it changes, or a task stops) starts the shoot's
/// watches and release controller with a client made from it. While the
/// shoot cannot be reached, its state is unknown (it holds) and
/// `cluster.health` says why.
async fn supervise(
    seed: Client,
    namespace: String,
    cluster: Arc<Cluster>,
    events: Arc<RwLock<Option<Events>>>,
    lease_holder: Gauge,
    config: ShootConfig,
    metrics: Metrics,
) {
    let mut current: Option<(Vec<u8>, tokio::task::JoinSet<()>)> = None;
    let mut retry = Duration::from_secs(1);
    loop {
        match access::read(&seed, &namespace, &config.access).await {
            Ok((secret, kubeconfig)) => {
                let same = current.as_ref().is_some_and(|(k, _)| *k == kubeconfig);
                if !same {
                    match access::client(&namespace, &secret, &kubeconfig).await {
                        Ok(client) => {
                            if current.take().is_some() {
                                tracing::info!(shoot = %namespace, secret = %secret, "the shoot's kubeconfig changed; reconnecting");
                            }
                            cluster.mark_unknown();
                            cluster.health.set_access_problem(None);
                            let tasks = connect(
                                &namespace,
                                &cluster,
                                client,
                                &events,
                                &lease_holder,
                                &config,
                                &metrics,
                            );
                            current = Some((kubeconfig, tasks));
                        }
                        Err(e) if current.is_none() => {
                            cluster.health.set_access_problem(Some(e.to_string()))
                        }
                        Err(e) => {
                            tracing::warn!(shoot = %namespace, error = %e, "the shoot's new kubeconfig cannot be used; keeping the current connection")
                        }
                    }
                }
            }
            Err(e) if current.is_none() => cluster.health.set_access_problem(Some(e.to_string())),
            Err(e) => {
                tracing::warn!(shoot = %namespace, error = %e, "cannot read the shoot's access Secret again; keeping the current connection")
            }
        }
        let wait = if current.is_some() {
            retry = Duration::from_secs(1);
            config.access_refresh
        } else {
            tracing::warn!(shoot = %namespace, problem = ?cluster.health.problem(), retry_in = ?retry, "shoot cannot be reached; its switches are held");
            let r = retry;
            retry = (retry * 2).min(config.access_refresh);
            r
        };
        // A task that stops (none should) is noticed at once: the shoot's
        // state is unknown until its watches run again.
        let ended = match &mut current {
            Some((_, tasks)) => tokio::select! {
                ended = tasks.join_next() => ended,
                () = tokio::time::sleep(wait) => None,
            },
            None => {
                tokio::time::sleep(wait).await;
                None
            }
        };
        if let Some(ended) = ended {
            tracing::error!(shoot = %namespace, ended = ?ended.err().map(|e| e.to_string()), "a task of the shoot stopped; starting its watches again");
            current = None;
            cluster.mark_unknown();
            cluster.health.set_access_problem(Some(
                "a task watching the shoot stopped; starting it again".into(),
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The watches and release controller of a shoot, on `client`.
fn connect(
    namespace: &str,
    cluster: &Arc<Cluster>,
    client: Client,
    events: &RwLock<Option<Events>>,
    lease_holder: &Gauge,
    config: &ShootConfig,
    metrics: &Metrics,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    cluster.spawn_watches(&client, config.watch_timeout, &mut tasks);
    let shoot_events = Events::new(
        client.clone(),
        config.release.as_ref().and_then(|r| r.pod_name.clone()),
    );
    *write(events) = Some(shoot_events.clone());
    let releaser = config.release.as_ref().map(|r| Releaser {
        cluster: cluster.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        events: shoot_events,
        lease: Arc::new(ReleaseLease::new(
            client.clone(),
            &config.settings.calico_namespace,
            lease::identity(r.pod_name.as_deref()),
            r.lease_duration,
            lease_holder.clone(),
        )),
    });
    let (cluster, ns) = (cluster.clone(), namespace.to_string());
    tasks.spawn(async move {
        // Once per connection (this kubeconfig may name another user than
        // the last), before the release controller writes anything: its
        // markers must count as its own.
        loop {
            match cluster.learn_own_user(&client).await {
                Ok(user) => {
                    tracing::debug!(shoot = %ns, %user, "this server's user in the shoot");
                    break;
                }
                Err(error) => {
                    tracing::debug!(shoot = %ns, %error, "cannot learn this server's user in the shoot yet");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
        match releaser {
            Some(r) => r.run().await,
            None => std::future::pending::<()>().await,
        }
    });
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shoots() -> Arc<Shoots> {
        let (_, metrics) = crate::metrics::registry();
        Shoots::new(
            None,
            ShootConfig {
                settings: Settings::default(),
                access: AccessSecret::default(),
                access_refresh: Duration::from_secs(60),
                watch_timeout: None,
                release: None,
            },
            metrics,
        )
    }

    fn cluster_obj(name: &str, annotation: Option<&str>) -> DynamicObject {
        let annotations = match annotation {
            Some(v) => json!({crate::cluster::toggle::GUARD_ANNOTATION: v}),
            None => json!({}),
        };
        serde_json::from_value(json!({
            "apiVersion": "extensions.gardener.cloud/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": name},
            "spec": {"shoot": {"metadata": {"annotations": annotations}}, "seed": {}, "cloudProfile": {}},
        }))
        .unwrap()
    }

    #[test]
    fn reviews_go_to_their_own_shoot_and_unknown_namespaces_are_refused() {
        let s = shoots();
        assert!(matches!(s.target("shoot--p--a"), Target::Refuse(w) if w.contains("not yet read")));
        s.relist_begin();
        s.relist_apply(cluster_obj("shoot--p--a", Some("true")));
        s.relist_apply(cluster_obj("shoot--p--b", None));
        assert!(
            matches!(s.target("shoot--p--a"), Target::Refuse(_)),
            "not listed yet"
        );
        s.relist_done();
        let Target::Shoot(a) = s.target("shoot--p--a") else {
            panic!("a is served")
        };
        assert_eq!(a.namespace, "shoot--p--a");
        // b is off, and served once to learn whether it holds a switch made
        // before this server started; then it is not served.
        let Target::Shoot(b) = s.target("shoot--p--b") else {
            panic!("b is probed")
        };
        assert!(!b.cluster.toggle.get().guard);
        drain(&b);
        let _ = s.sync_all();
        assert!(matches!(s.target("shoot--p--b"), Target::Unguarded));
        assert_eq!(s.known_clear("shoot--p--b"), Some(true));
        assert!(
            matches!(s.target("shoot--p--c"), Target::Refuse(w) if w.contains("no Gardener Cluster \"shoot--p--c\""))
        );
    }

    /// The shoot's held records: known, none.
    fn drain(shoot: &Shoot) {
        for kind in crate::calico::overlay::CalicoKind::ALL {
            let st = shoot.cluster.held.store(kind);
            st.relist_begin();
            st.relist_done();
        }
        assert_eq!(shoot.holds(), Some(false));
    }

    #[test]
    fn after_a_restart_an_off_shoot_is_served_until_its_holds_are_known_and_not_again() {
        let s = shoots();
        s.relist_begin();
        s.relist_apply(cluster_obj("shoot--p--off", Some("false")));
        s.relist_apply(cluster_obj("shoot--p--idle", None));
        s.relist_done();
        // Both may hold a switch made by an earlier run: served, unknown.
        let off = s.get("shoot--p--off").expect("probed");
        let idle = s.get("shoot--p--idle").expect("probed");
        assert_eq!(s.known_clear("shoot--p--off"), None);
        let pass = s.sync_all().expect("whole view");
        assert_eq!(
            pass.plans["shoot--p--off"],
            Plan {
                serve: true,
                register: Some(false)
            }
        );
        // One holds something (records known, not empty): still served;
        // the other holds nothing: stopped, and not probed again.
        let st = off
            .cluster
            .held
            .store(crate::calico::overlay::CalicoKind::DaemonSet);
        st.relist_begin();
        st.relist_done();
        drain(&idle);
        let _ = s.sync_all();
        assert!(s.get("shoot--p--idle").is_none());
        let _ = s.sync_all();
        assert!(s.get("shoot--p--idle").is_none(), "not probed again");
        assert!(s.get("shoot--p--off").is_some(), "holds unknown: served");
        // A lost Cluster watch forgets what was known: probed again after
        // the re-list.
        s.lost();
        s.relist_begin();
        s.relist_apply(cluster_obj("shoot--p--off", Some("false")));
        s.relist_apply(cluster_obj("shoot--p--idle", None));
        s.relist_done();
        assert!(s.get("shoot--p--idle").is_some());
        assert_eq!(s.known_clear("shoot--p--idle"), None);
    }

    #[test]
    fn a_pass_from_a_view_that_changed_under_it_is_not_used() {
        let s = shoots();
        assert!(s.sync_all().is_none(), "not listed");
        s.relist_begin();
        s.relist_apply(cluster_obj("shoot--p--a", Some("true")));
        s.relist_done();
        let pass = s.sync_all().expect("whole");
        assert_eq!(pass.plans["shoot--p--a"].register, Some(true));
        assert_eq!(s.registration_wanted("shoot--p--a"), Some(true));
        assert_eq!(s.registration_wanted("shoot--p--gone"), Some(false));
        // A re-list begins: the view is not whole until it is done, and the
        // epoch of the earlier pass is gone.
        s.lost();
        assert!(s.sync_all().is_none());
        assert_eq!(s.registration_wanted("shoot--p--a"), None);
        assert_ne!(s.epoch(), pass.epoch);
        s.relist_begin();
        s.relist_done();
        let empty = s.sync_all().expect("whole again");
        assert!(empty.plans.is_empty());
        assert_eq!(s.registration_wanted("shoot--p--a"), Some(false));
    }

    #[test]
    fn the_guard_follows_the_cluster_and_an_off_shoot_stays_while_its_holds_are_unknown() {
        let s = shoots();
        s.relist_begin();
        s.relist_done();
        s.apply(cluster_obj("shoot--p--a", Some("true")));
        let a = s.get("shoot--p--a").expect("served once annotated");
        a.cluster.toggle.relist_begin();
        a.cluster.toggle.relist_done();
        assert!(a.cluster.toggle.get().guard && a.cluster.toggle.get().synced);
        // Off while its held records are unknown: still served, guard off.
        s.apply(cluster_obj("shoot--p--a", Some("false")));
        let a = s.get("shoot--p--a").expect("still served: holds unknown");
        assert!(!a.cluster.toggle.get().guard);
        // Records known and empty: stopped at the next sync.
        drain(&a);
        let _ = s.sync_all();
        assert!(s.get("shoot--p--a").is_none());
        assert!(matches!(s.target("shoot--p--a"), Target::Unguarded));
    }

    #[test]
    fn a_lost_cluster_watch_makes_every_served_shoot_hold_and_a_deleted_cluster_stops_it() {
        let s = shoots();
        s.relist_begin();
        s.relist_apply(cluster_obj("shoot--p--a", Some("true")));
        s.relist_done();
        let a = s.get("shoot--p--a").unwrap();
        a.cluster.toggle.relist_begin();
        a.cluster.toggle.relist_done();
        assert!(a.cluster.toggle.get().synced);
        s.lost();
        assert!(!a.cluster.toggle.get().synced, "guard unknown");
        assert!(!s.synced());
        // Nothing is stopped on a guess.
        assert!(s.sync("shoot--p--a").is_none());
        assert!(s.get("shoot--p--a").is_some());
        s.relist_begin();
        s.relist_apply(cluster_obj("shoot--p--a", Some("true")));
        s.relist_done();
        assert!(a.cluster.toggle.get().synced && a.cluster.toggle.get().guard);
        s.delete(cluster_obj("shoot--p--a", Some("true")));
        assert!(
            s.get("shoot--p--a").is_none(),
            "Cluster gone: stopped at once"
        );
        assert!(
            matches!(s.target("shoot--p--a"), Target::Refuse(w) if w.contains("no Gardener Cluster"))
        );
    }
}
