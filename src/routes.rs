//! The node-route cache: which nodes have their cloud route, at every moment.
//!
//! Fed by a kube-rs watch on Nodes (see [`crate::watch`]), never by polling.
//! It keeps a compact entry per node (not the Node object) and aggregate
//! counts, so that every question the gate asks is answered in O(1) (the
//! names of blocking nodes in O(k) for the k names asked for).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use serde::Serialize;

/// The condition type cloud route controllers set.
pub const CONDITION: &str = "NetworkUnavailable";
/// The reason of a created route (Kubernetes' route controller and
/// Gardener's aws-custom-route-controller).
pub const DEFAULT_REASON: &str = "RouteCreated";

/// Why a node blocks the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "camelCase")]
pub enum Blocker {
    /// The node has no `NetworkUnavailable` condition at all.
    NoCondition,
    /// `NetworkUnavailable=True` with reason `NoRouteCreated`: the route
    /// controller tried and failed.
    NoRouteCreated,
    /// Any other status/reason pair.
    Other { status: String, reason: String },
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::NoCondition => write!(f, "no {CONDITION} condition"),
            Blocker::NoRouteCreated => write!(f, "NoRouteCreated"),
            Blocker::Other { status, reason } => {
                let reason = if reason.is_empty() {
                    "no reason"
                } else {
                    reason
                };
                write!(f, "{CONDITION}={status} ({reason})")
            }
        }
    }
}

/// What the cache keeps of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoute {
    /// `Ok(since)` when the route exists; `Err(why)` when it does not.
    pub route: Result<Timestamp, Blocker>,
    /// The node has a deletion timestamp (it still counts until it is gone).
    pub deleting: bool,
}

impl NodeRoute {
    /// Reads the compact state from a Node. `observed` is when this process
    /// saw it: a route that appears while we watch counts from the later of
    /// the condition's transition time and our observation, so a controller
    /// clock behind ours can never shorten the settle time.
    pub fn from_node(node: &Node, required_reason: &str, observed: Option<Timestamp>) -> Self {
        let condition = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION));
        let route = match condition {
            None => Err(Blocker::NoCondition),
            Some(c) if c.status == "False" && c.reason.as_deref() == Some(required_reason) => {
                let since = c
                    .last_transition_time
                    .as_ref()
                    .map(|t| t.0)
                    .or(observed)
                    .unwrap_or_else(Timestamp::now);
                Ok(match observed {
                    Some(o) if o > since => o,
                    _ => since,
                })
            }
            Some(c) if c.status == "True" && c.reason.as_deref() == Some("NoRouteCreated") => {
                Err(Blocker::NoRouteCreated)
            }
            Some(c) => Err(Blocker::Other {
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
            }),
        };
        Self {
            route,
            deleting: node.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// An answer of the cache at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// False until the first list completed, and again while a broken watch
    /// is listed anew: then nothing else here may be trusted.
    pub synced: bool,
    pub total: usize,
    pub with_route: usize,
    /// Since when every node has had its route (`None` while any lacks it).
    /// With zero nodes, the Unix epoch: there is nothing to wait for.
    pub all_routed_since: Option<Timestamp>,
    /// Up to the number asked for, sorted by name.
    pub blockers: Vec<(String, Blocker)>,
}

impl Snapshot {
    pub fn without_route(&self) -> usize {
        self.total - self.with_route
    }
}

#[derive(Debug, Default)]
struct Inner {
    synced: bool,
    nodes: HashMap<String, NodeRoute>,
    blockers: BTreeMap<String, Blocker>,
    all_routed_since: Option<Timestamp>,
    relist: Option<HashMap<String, NodeRoute>>,
    /// A list has completed before (this is a re-list after a broken watch).
    listed_before: bool,
    /// Bumped on every change, for waiters.
    generation: u64,
}

impl Inner {
    fn rebuild(&mut self) {
        self.blockers = self
            .nodes
            .iter()
            .filter_map(|(n, r)| r.route.clone().err().map(|b| (n.clone(), b)))
            .collect();
        self.recompute_since();
    }

    fn recompute_since(&mut self) {
        self.all_routed_since = if !self.blockers.is_empty() {
            None
        } else if self.nodes.is_empty() {
            Some(Timestamp::UNIX_EPOCH)
        } else {
            self.nodes
                .values()
                .filter_map(|r| r.route.as_ref().ok())
                .max()
                .copied()
        };
    }

    fn upsert(&mut self, name: String, entry: NodeRoute) {
        let was_blocking = self.blockers.contains_key(&name);
        match &entry.route {
            Ok(_) => {
                self.blockers.remove(&name);
            }
            Err(b) => {
                self.blockers.insert(name.clone(), b.clone());
            }
        }
        let is_blocking = entry.route.is_err();
        let since_changed = entry.route.is_ok();
        self.nodes.insert(name, entry);
        if was_blocking != is_blocking || since_changed || self.blockers.is_empty() {
            self.recompute_since();
        }
    }

    fn remove(&mut self, name: &str) {
        self.nodes.remove(name);
        self.blockers.remove(name);
        self.recompute_since();
    }
}

/// The node-route cache of one cluster.
#[derive(Debug)]
pub struct RouteCache {
    required_reason: String,
    inner: RwLock<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl RouteCache {
    pub fn new(required_reason: impl Into<String>) -> Self {
        Self {
            required_reason: required_reason.into(),
            inner: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that wakes on every change of the cache.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current answer, naming at most `max_blockers` blocking nodes.
    pub fn snapshot(&self, max_blockers: usize) -> Snapshot {
        let inner = self.inner.read().expect("route cache lock");
        Snapshot {
            synced: inner.synced,
            total: inner.nodes.len(),
            with_route: inner.nodes.len() - inner.blockers.len(),
            all_routed_since: inner.all_routed_since.filter(|_| inner.synced),
            blockers: inner
                .blockers
                .iter()
                .take(max_blockers)
                .map(|(n, b)| (n.clone(), b.clone()))
                .collect(),
        }
    }

    /// Every node with its state, sorted by name (for `status`).
    pub fn nodes(&self) -> Vec<(String, NodeRoute)> {
        let inner = self.inner.read().expect("route cache lock");
        let mut v: Vec<_> = inner
            .nodes
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Applies `f`; wakes waiters only when the answer changed (synced,
    /// counts, since when routed), not on every node heartbeat.
    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let generation = {
            let mut inner = self.inner.write().expect("route cache lock");
            let summary = |i: &Inner| {
                (
                    i.synced,
                    i.nodes.len(),
                    i.blockers.len(),
                    i.all_routed_since,
                )
            };
            let before = summary(&inner);
            f(&mut inner);
            (summary(&inner) != before).then(|| {
                inner.generation += 1;
                inner.generation
            })
        };
        if let Some(generation) = generation {
            self.changed.send_replace(generation);
        }
    }

    fn entry(&self, node: &Node, observed: Option<Timestamp>) -> NodeRoute {
        NodeRoute::from_node(node, &self.required_reason, observed)
    }
}

impl crate::watch::Store<Node> for RouteCache {
    fn relist_begin(&self) {
        self.update(|i| {
            i.synced = false;
            i.relist = Some(HashMap::new());
        });
    }

    fn relist_apply(&self, node: Node) {
        let entry = self.entry(&node, None);
        let mut inner = self.inner.write().expect("route cache lock");
        inner
            .relist
            .get_or_insert_with(HashMap::new)
            .insert(node.name_any(), entry);
    }

    fn relist_done(&self) {
        self.update(|i| {
            let listed = i.relist.take().unwrap_or_default();
            let now = Timestamp::now();
            let mut merged = HashMap::with_capacity(listed.len());
            for (name, mut entry) in listed {
                if let Ok(new_since) = &mut entry.route {
                    match i.nodes.get(&name).map(|e| &e.route) {
                        // Kept its route across the re-list: keeps its "since".
                        Some(Ok(old_since)) => *new_since = (*old_since).max(*new_since),
                        // Got its route while the watch was broken: counts from
                        // now at the earliest, as if seen appearing now (a
                        // controller clock behind ours cannot shorten the settle).
                        _ if i.listed_before => *new_since = (*new_since).max(now),
                        // The first list: the condition's own transition time.
                        _ => {}
                    }
                }
                merged.insert(name, entry);
            }
            i.nodes = merged;
            i.listed_before = true;
            i.rebuild();
            i.synced = true;
        });
    }

    fn apply(&self, node: Node) {
        let name = node.name_any();
        let previous_ok = self
            .inner
            .read()
            .expect("route cache lock")
            .nodes
            .get(&name)
            .and_then(|e| e.route.as_ref().ok().copied());
        // A route seen appearing now counts from now at the earliest; a
        // route that was already there keeps its time (or a later transition
        // time, if it flapped between two events).
        let observed = previous_ok.unwrap_or_else(Timestamp::now);
        let entry = self.entry(&node, Some(observed));
        self.update(|i| i.upsert(name, entry));
    }

    fn delete(&self, node: Node) {
        let name = node.name_any();
        self.update(|i| i.remove(&name));
    }

    fn lost(&self) {
        self.update(|i| {
            i.synced = false;
            i.relist = None;
        });
    }
}

/// The gate's view of routes, rendered for people: "2 of 5 nodes have no
/// route yet (node-a: NoRouteCreated, node-b: no NetworkUnavailable condition)".
pub fn describe_blockers(s: &Snapshot) -> String {
    let missing = s.without_route();
    let mut text = format!(
        "{missing} of {} node{} {} no route yet",
        s.total,
        if s.total == 1 { "" } else { "s" },
        if missing == 1 { "has" } else { "have" }
    );
    if !s.blockers.is_empty() {
        let names: Vec<String> = s
            .blockers
            .iter()
            .map(|(n, b)| format!("{n}: {b}"))
            .collect();
        text.push_str(" (");
        text.push_str(&names.join(", "));
        if missing > s.blockers.len() {
            text.push_str(&format!(", and {} more", missing - s.blockers.len()));
        }
        text.push(')');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Store as _;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn node(name: &str, cond: Option<(&str, &str, i64)>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                conditions: Some(
                    cond.into_iter()
                        .map(|(status, reason, secs)| NodeCondition {
                            type_: CONDITION.into(),
                            status: status.into(),
                            reason: Some(reason.into()),
                            last_transition_time: Some(Time(Timestamp::from_second(secs).unwrap())),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn listed(cache: &RouteCache, nodes: Vec<Node>) {
        cache.relist_begin();
        for n in nodes {
            cache.relist_apply(n);
        }
        cache.relist_done();
    }

    #[test]
    fn unsynced_until_the_first_list_completes() {
        let c = RouteCache::new(DEFAULT_REASON);
        assert!(!c.snapshot(3).synced);
        c.relist_begin();
        c.relist_apply(node("a", Some(("False", "RouteCreated", 100))));
        assert!(!c.snapshot(3).synced);
        assert_eq!(c.snapshot(3).total, 0, "half a list is not shown");
        c.relist_done();
        let s = c.snapshot(3);
        assert!(s.synced);
        assert_eq!((s.total, s.with_route), (1, 1));
        assert_eq!(
            s.all_routed_since,
            Some(Timestamp::from_second(100).unwrap())
        );
    }

    #[test]
    fn classifies_each_kind_of_blocker() {
        let c = RouteCache::new(DEFAULT_REASON);
        listed(
            &c,
            vec![
                node("a", Some(("False", "RouteCreated", 1))),
                node("b", None),
                node("c", Some(("True", "NoRouteCreated", 1))),
                node("d", Some(("False", "CalicoIsUp", 1))),
            ],
        );
        let s = c.snapshot(10);
        assert_eq!((s.total, s.with_route), (4, 1));
        assert_eq!(s.all_routed_since, None);
        assert_eq!(
            s.blockers,
            vec![
                ("b".into(), Blocker::NoCondition),
                ("c".into(), Blocker::NoRouteCreated),
                (
                    "d".into(),
                    Blocker::Other {
                        status: "False".into(),
                        reason: "CalicoIsUp".into()
                    }
                ),
            ]
        );
        assert_eq!(
            describe_blockers(&c.snapshot(2)),
            "3 of 4 nodes have no route yet (b: no NetworkUnavailable condition, c: NoRouteCreated, and 1 more)"
        );
    }

    #[test]
    fn required_reason_is_configurable() {
        let c = RouteCache::new("CustomRoute");
        listed(&c, vec![node("a", Some(("False", "RouteCreated", 1)))]);
        assert_eq!(c.snapshot(1).with_route, 0);
        listed(&c, vec![node("a", Some(("False", "CustomRoute", 1)))]);
        assert_eq!(c.snapshot(1).with_route, 1);
    }

    #[test]
    fn zero_nodes_means_nothing_to_wait_for() {
        let c = RouteCache::new(DEFAULT_REASON);
        listed(&c, vec![]);
        assert_eq!(c.snapshot(1).all_routed_since, Some(Timestamp::UNIX_EPOCH));
    }

    #[test]
    fn last_route_appearing_opens_with_a_fresh_since() {
        let c = RouteCache::new(DEFAULT_REASON);
        listed(
            &c,
            vec![
                node("a", Some(("False", "RouteCreated", 1))),
                node("b", None),
            ],
        );
        let before = Timestamp::now();
        // The controller's clock says second 5, long ago: our observation wins.
        c.apply(node("b", Some(("False", "RouteCreated", 5))));
        let s = c.snapshot(1);
        assert_eq!(s.with_route, 2);
        assert!(s.all_routed_since.unwrap() >= before);
        // A node losing its route closes it again.
        c.apply(node("a", Some(("True", "NoRouteCreated", 6))));
        assert_eq!(c.snapshot(1).all_routed_since, None);
    }

    #[test]
    fn deleting_nodes_count_until_gone() {
        let c = RouteCache::new(DEFAULT_REASON);
        let mut b = node("b", None);
        b.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        listed(
            &c,
            vec![node("a", Some(("False", "RouteCreated", 1))), b.clone()],
        );
        assert_eq!(c.snapshot(1).without_route(), 1);
        c.delete(b);
        let s = c.snapshot(1);
        assert_eq!((s.total, s.with_route), (1, 1));
        assert!(s.all_routed_since.is_some());
    }

    #[test]
    fn a_lost_watch_is_unknown_until_listed_again() {
        let c = RouteCache::new(DEFAULT_REASON);
        listed(&c, vec![node("a", Some(("False", "RouteCreated", 1)))]);
        let rx = c.subscribe();
        c.lost();
        assert!(rx.has_changed().unwrap());
        let s = c.snapshot(1);
        assert!(!s.synced);
        assert_eq!(s.all_routed_since, None, "unknown never reads as open");
        listed(&c, vec![node("a", Some(("False", "RouteCreated", 1)))]);
        assert!(c.snapshot(1).synced);
    }

    #[test]
    fn waiters_wake_on_a_changed_answer_not_on_heartbeats() {
        let c = RouteCache::new(DEFAULT_REASON);
        listed(
            &c,
            vec![
                node("a", Some(("False", "RouteCreated", 1))),
                node("b", None),
            ],
        );
        let mut rx = c.subscribe();
        rx.mark_unchanged();
        c.apply(node("b", None)); // a heartbeat: nothing the gate asks changed
        assert!(!rx.has_changed().unwrap());
        c.apply(node("b", Some(("False", "RouteCreated", 2))));
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn a_route_that_appeared_during_a_broken_watch_counts_from_the_relist() {
        let c = RouteCache::new(DEFAULT_REASON);
        listed(
            &c,
            vec![
                node("a", Some(("False", "RouteCreated", 1))),
                node("b", None),
            ],
        );
        c.lost();
        let before = Timestamp::now();
        // b got its route while we were not watching; its controller says second 5.
        listed(
            &c,
            vec![
                node("a", Some(("False", "RouteCreated", 1))),
                node("b", Some(("False", "RouteCreated", 5))),
            ],
        );
        let s = c.snapshot(1);
        assert!(
            s.all_routed_since.unwrap() >= before,
            "settle counts from the re-list"
        );
        // a kept its route: its time is unchanged.
        assert_eq!(c.nodes()[0].1.route, Ok(Timestamp::from_second(1).unwrap()));
    }
}

/// `routes_gate` and `opens_in` (src/gate.rs) at the ends of time; kept
/// here, next to the cache whose times they judge.
#[cfg(test)]
mod gate_times {
    use std::time::Duration;

    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;

    use super::Snapshot;
    use crate::gate::{Gate, opens_in, routes_gate};

    fn routed(since: Timestamp) -> Snapshot {
        Snapshot {
            synced: true,
            total: 2,
            with_route: 2,
            all_routed_since: Some(since),
            blockers: vec![],
        }
    }

    fn closed(g: &Gate) -> &str {
        match g {
            Gate::Closed(w) => w,
            Gate::Open => panic!("open"),
        }
    }

    #[test]
    fn extreme_timestamps_give_an_answer_not_a_panic() {
        let (min, max) = (Timestamp::MIN, Timestamp::MAX);
        let ten = Duration::from_secs(10);
        // Routed since the beginning of time, asked at its end: open.
        for settle in [Duration::ZERO, ten] {
            assert_eq!(routes_gate(&routed(min), settle, max), Gate::Open);
            assert_eq!(opens_in(&routed(min), settle, max), Some(Duration::ZERO));
        }
        // A settle time longer than time itself never opens.
        let g = routes_gate(&routed(min), Duration::MAX, max);
        assert!(closed(&g).contains("settling for"), "{g:?}");
        assert!(opens_in(&routed(min), Duration::MAX, max).unwrap() > Duration::ZERO);
        // Since at the end of time, asked at its beginning: closed until
        // since + settle, which is further than any duration jiff holds.
        for settle in [Duration::ZERO, ten, Duration::MAX] {
            let g = routes_gate(&routed(max), settle, min);
            assert!(closed(&g).contains("settling for"), "{g:?}");
            let left = opens_in(&routed(max), settle, min).unwrap();
            assert!(left >= Duration::from_secs(max.as_second().unsigned_abs()));
        }
        // Both at an end.
        assert_eq!(
            routes_gate(&routed(max), ten, max),
            Gate::Closed("all 2 nodes have routes, settling for 10s more".into())
        );
        assert_eq!(routes_gate(&routed(min), Duration::ZERO, min), Gate::Open);
        assert_eq!(opens_in(&routed(max), ten, max), Some(ten));
    }

    #[test]
    fn since_in_the_future_waits_for_it_plus_settle() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let since = now + Duration::from_secs(3600);
        let ten = Duration::from_secs(10);
        assert_eq!(
            routes_gate(&routed(since), ten, now),
            Gate::Closed("all 2 nodes have routes, settling for 3610s more".into())
        );
        assert_eq!(
            opens_in(&routed(since), ten, now),
            Some(Duration::from_secs(3610))
        );
        assert_eq!(routes_gate(&routed(since), ten, since + ten), Gate::Open);
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        let (lo, hi) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
        prop_oneof![
            Just(Timestamp::MIN),
            Just(Timestamp::MAX),
            Just(Timestamp::UNIX_EPOCH),
            (lo..=hi, 0..1_000_000_000i32)
                .prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::MAX)),
            (1_700_000_000i64..1_900_000_000).prop_map(|s| Timestamp::from_second(s).unwrap()),
        ]
    }

    fn settle() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..100).prop_map(Duration::from_secs),
            any::<u64>().prop_map(Duration::from_secs),
        ]
    }

    proptest! {
        #[test]
        fn the_gate_and_its_wake_up_agree_for_any_times(
            since in timestamp(), now in timestamp(), settle in settle()
        ) {
            let r = routed(since);
            let gate = routes_gate(&r, settle, now);
            let left = opens_in(&r, settle, now).unwrap();
            prop_assert_eq!(gate.is_open(), left.is_zero());
            // Open exactly when settle has passed since `since`.
            let elapsed = now.duration_since(since);
            let settle_s = SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX);
            prop_assert_eq!(gate.is_open(), elapsed >= settle_s);
        }
    }
}
