//! The node-route cache: which nodes have their cloud route, at every moment
//! (each Node read as a [`RouteNode`], see [`super::route_node`]).
//!
//! Fed by a kube-rs watch on Nodes (see [`crate::cluster::watch`]), never by polling.
//! The watch decodes a [`RouteNode`], our own lenient view of a Node, so that
//! no value on one node can fail the list or the watch of all of them. The
//! cache keeps a compact entry per node (not the Node object) and aggregate
//! counts, so that every question the gate asks is answered in O(1) (the
//! names of blocking nodes in O(k) for the k names asked for).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use serde::Serialize;

pub use super::route_node::{Blocker, CONDITION, DEFAULT_REASON, RouteCondition, RouteNode};

// ---------------------------------------------------------------------------
// The cache.

/// A route as the cache counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Since when the route counts. Never later than when this process
    /// first saw it (a transition time ahead of our clock is cut to our
    /// observation), and a route seen appearing counts from that moment
    /// (a transition time behind it cannot shorten the settle time).
    pub since: Timestamp,
    /// The latest `lastTransitionTime` the node gave for it: the same time
    /// in a later event means the same route (its `since` stands); another
    /// means a transition that was not seen as its own event.
    pub reported: Option<Timestamp>,
}

/// What the cache keeps of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoute {
    /// `Ok(route)` when the route exists; `Err(why)` when it does not.
    pub route: Result<Route, Blocker>,
    /// The node has a deletion timestamp (it still counts until it is gone).
    pub deleting: bool,
}

/// One node's word on its route, before our clock is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reading {
    route: Result<Option<Timestamp>, Blocker>,
    deleting: bool,
}

impl Reading {
    /// The entry, given what the cache had for the node (`prev`), whether
    /// this is the first list (only then does a route count from the node's
    /// own transition time) and our clock `now`. Plain comparisons: no time
    /// arithmetic, so no timestamp can overflow.
    fn resolve(self, prev: Option<&NodeRoute>, first_list: bool, now: Timestamp) -> NodeRoute {
        let prev = prev.and_then(|p| p.route.as_ref().ok());
        let route = self.route.map(|reported| {
            // The node's word, never later than now (nor than a missing time).
            let given = reported.unwrap_or(now).min(now);
            let since = match prev {
                // The route counted before, with the same transition: unchanged.
                Some(p) if p.reported == reported => p.since,
                // Another transition time: the route was lost and
                // re-created between two events (or while the watch was
                // broken). We did not see when: it counts from now, so that
                // a controller clock behind ours cannot shorten the settle.
                Some(_) => now,
                // The first list: the node's own transition time.
                None if first_list => given,
                // Seen appearing, live or in a re-list after a broken
                // watch: from now (a controller clock behind ours cannot
                // shorten the settle, one ahead cannot lengthen it).
                None => now,
            };
            Route {
                since: since.min(now),
                reported,
            }
        });
        NodeRoute {
            route,
            deleting: self.deleting,
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
    relist: Option<HashMap<String, Reading>>,
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
                .filter_map(|r| r.route.as_ref().ok().map(|r| r.since))
                .max()
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

    fn read(&self, node: &RouteNode) -> Reading {
        Reading {
            route: node.route(&self.required_reason),
            deleting: node.deleting,
        }
    }

    /// One node of a list in progress. Takes a [`RouteNode`] or a typed
    /// `Node` (tests and benches hold those); the watch calls it through
    /// [`crate::cluster::watch::Store`].
    pub fn relist_apply(&self, node: impl Into<RouteNode>) {
        let node = node.into();
        let reading = self.read(&node);
        let mut inner = self.inner.write().expect("route cache lock");
        inner
            .relist
            .get_or_insert_with(HashMap::new)
            .insert(node.name_any(), reading);
    }

    /// A node added or changed (like [`Self::relist_apply`], any node type).
    pub fn apply(&self, node: impl Into<RouteNode>) {
        self.apply_at(node, Timestamp::now());
    }

    /// [`Self::apply`] seen at `now` (simulations drive the clock).
    pub fn apply_at(&self, node: impl Into<RouteNode>, now: Timestamp) {
        let node = node.into();
        let reading = self.read(&node);
        let name = node.name_any();
        self.update(|i| {
            let entry = reading.resolve(i.nodes.get(&name), false, now);
            i.upsert(name, entry);
        });
    }

    /// The list in progress completed at `now` (the watch calls
    /// [`crate::cluster::watch::Store::relist_done`]; simulations drive the
    /// clock).
    pub fn relist_done_at(&self, now: Timestamp) {
        self.update(|i| {
            let listed = i.relist.take().unwrap_or_default();
            let first_list = !i.listed_before;
            i.nodes = listed
                .into_iter()
                .map(|(name, reading)| {
                    let entry = reading.resolve(i.nodes.get(&name), first_list, now);
                    (name, entry)
                })
                .collect();
            i.listed_before = true;
            i.rebuild();
            i.synced = true;
        });
    }

    /// A node deleted (like [`Self::relist_apply`], any node type).
    pub fn delete(&self, node: impl Into<RouteNode>) {
        let name = node.into().name_any();
        self.update(|i| i.remove(&name));
    }
}

impl crate::cluster::watch::Store<RouteNode> for RouteCache {
    fn relist_begin(&self) {
        self.update(|i| {
            i.synced = false;
            i.relist = Some(HashMap::new());
        });
    }

    fn relist_apply(&self, node: RouteNode) {
        RouteCache::relist_apply(self, node);
    }

    fn relist_done(&self) {
        self.relist_done_at(Timestamp::now());
    }

    fn apply(&self, node: RouteNode) {
        RouteCache::apply(self, node);
    }

    fn delete(&self, node: RouteNode) {
        RouteCache::delete(self, node);
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
    use crate::cluster::watch::Store as _;
    use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
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
        assert_eq!(
            c.nodes()[0].1.route.as_ref().map(|r| r.since),
            Ok(Timestamp::from_second(1).unwrap())
        );
    }

    // --- Hostile node status (review item 7) -------------------------------

    use crate::cluster::route_node::MAX_TEXT;
    use serde_json::{Value, json};

    /// A NetworkUnavailable condition as JSON; `time: None` leaves it out.
    fn nu(status: &str, reason: Option<&str>, time: Option<&str>) -> Value {
        let mut c = json!({"type": CONDITION, "status": status, "message": "m",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z"});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(t) = time {
            c["lastTransitionTime"] = json!(t);
        }
        c
    }

    fn routed_at(time: &str) -> Value {
        nu("False", Some("RouteCreated"), Some(time))
    }

    fn rnode(name: &str, conditions: Vec<Value>) -> RouteNode {
        serde_json::from_value(json!({"metadata": {"name": name, "resourceVersion": "1"},
            "status": {"conditions": conditions}}))
        .unwrap()
    }

    fn route_of(conditions: Vec<Value>) -> Result<Option<Timestamp>, Blocker> {
        rnode("a", conditions).route(DEFAULT_REASON)
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn since(c: &RouteCache, name: &str) -> Timestamp {
        let nodes = c.nodes();
        let (_, r) = nodes.iter().find(|(n, _)| n == name).unwrap();
        r.route.as_ref().unwrap().since
    }

    /// A Node as kube-apiserver returns it, with `bad` as the transition
    /// time of its NetworkUnavailable condition and in places the cache
    /// never reads (managedFields, another condition).
    fn whole_node(bad: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-x", "uid": "u-1", "resourceVersion": "42",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"kubernetes.io/hostname": "node-x"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                    "time": bad, "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}, "subresource": "status"}]},
            "spec": {"podCIDR": "100.96.1.0/24", "providerID": "aws:///eu-west-1a/i-1"},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "lastHeartbeatTime": bad, "lastTransitionTime": bad},
                    {"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated",
                     "message": "route created", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                     "lastTransitionTime": bad}
                ],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "images": [{"names": ["registry/calico/node:v3.29"], "sizeBytes": 123}],
                "nodeInfo": {"kubeletVersion": "v1.34.4"}
            }
        })
    }

    #[test]
    fn a_whole_node_with_a_time_out_of_jiffs_range_decodes_and_blocks_by_name() {
        let bad = "9999-12-31T23:59:59Z";
        // The root cause: the typed Node cannot hold it, so a typed list of
        // all nodes failed on this one.
        assert!(serde_json::from_value::<Node>(whole_node(bad)).is_err());
        let n: RouteNode = serde_json::from_value(whole_node(bad)).unwrap();
        assert_eq!(n.name_any(), "node-x");
        assert_eq!(n.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(n.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(n.conditions.len(), 1, "only NetworkUnavailable is kept");
        let why = n.route(DEFAULT_REASON).unwrap_err();
        assert_eq!(
            why,
            Blocker::UnreadableTime {
                time: bad.to_string()
            }
        );
        assert_eq!(
            why.to_string(),
            r#"NetworkUnavailable lastTransitionTime "9999-12-31T23:59:59Z" is unreadable"#
        );
        // The same node with a good time has its route.
        let good: RouteNode = serde_json::from_value(whole_node("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(
            good.route(DEFAULT_REASON),
            Ok(Some(ts("2026-01-01T00:00:00Z")))
        );
    }

    #[test]
    fn a_list_and_a_watch_event_with_one_hostile_node_decode_whole() {
        let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "7"},
            "items": [whole_node("9999-12-31T23:59:59Z"), whole_node("2026-01-01T00:00:00Z")]});
        assert!(serde_json::from_value::<kube::core::ObjectList<Node>>(list.clone()).is_err());
        let l: kube::core::ObjectList<RouteNode> = serde_json::from_value(list).unwrap();
        assert_eq!(l.items.len(), 2);
        let ev = json!({"type": "MODIFIED", "object": whole_node("9999-12-31T23:59:59Z")});
        let ev: kube::core::WatchEvent<RouteNode> = serde_json::from_value(ev).unwrap();
        assert!(matches!(ev, kube::core::WatchEvent::Modified(n) if n.name_any() == "node-x"));
    }

    #[test]
    fn the_cache_names_the_node_with_an_unreadable_time_and_counts_the_others() {
        let c = RouteCache::new(DEFAULT_REASON);
        c.relist_begin();
        c.relist_apply(rnode("a", vec![routed_at("2026-01-01T00:00:00Z")]));
        c.relist_apply(rnode("b", vec![routed_at("9999-12-31T23:59:59Z")]));
        c.relist_done();
        let s = c.snapshot(3);
        assert!(
            s.synced,
            "one node's odd time never makes the state unknown"
        );
        assert_eq!((s.total, s.with_route), (2, 1));
        assert_eq!(
            describe_blockers(&s),
            r#"1 of 2 nodes has no route yet (b: NetworkUnavailable lastTransitionTime "9999-12-31T23:59:59Z" is unreadable)"#
        );
        // Fixed: it counts, from when we saw it.
        let before = Timestamp::now();
        c.apply(rnode("b", vec![routed_at("2026-01-01T00:00:00Z")]));
        let s = c.snapshot(3);
        assert_eq!(s.with_route, 2);
        assert!(s.all_routed_since.unwrap() >= before);
    }

    #[test]
    fn unreadable_transition_times_block() {
        for bad in [
            "9999-12-31T23:59:59Z",
            "-009999-01-01T00:00:00Z",
            "yesterday",
            "",
            "2026-13-01T00:00:00Z",
            "2026-01-01 00:00:00",
        ] {
            assert_eq!(
                route_of(vec![routed_at(bad)]),
                Err(Blocker::UnreadableTime { time: bad.into() }),
                "{bad:?}"
            );
        }
        // Not even a string.
        let mut c = routed_at("x");
        c["lastTransitionTime"] = json!(12345);
        assert_eq!(
            route_of(vec![c]),
            Err(Blocker::UnreadableTime {
                time: "12345".into()
            })
        );
        // A long hostile value is kept short.
        let long = "9".repeat(10_000);
        match route_of(vec![routed_at(&long)]) {
            Err(Blocker::UnreadableTime { time }) => assert!(time.chars().count() <= MAX_TEXT + 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_transition_time_far_in_the_future_counts_from_our_observation() {
        // In jiff's range, but nearly at its end: since must not be that
        // (adding the settle time to it overflowed and crashed the server).
        for time in ["9999-12-30T21:59:59Z", "9999-12-30T22:00:00Z"] {
            assert_eq!(route_of(vec![routed_at(time)]), Ok(Some(ts(time))));
            let c = RouteCache::new(DEFAULT_REASON);
            let before = Timestamp::now();
            listed(&c, vec![]);
            c.relist_begin();
            c.relist_apply(rnode("a", vec![routed_at(time)]));
            c.relist_done();
            let after = Timestamp::now();
            let s = c.snapshot(1).all_routed_since.unwrap();
            assert!(before <= s && s <= after, "{time}: since {s}");
            // And so the gate opens at settle after that.
            assert!(
                crate::cluster::gate::routes_gate(
                    &c.snapshot(1),
                    std::time::Duration::from_secs(10),
                    after + std::time::Duration::from_secs(10)
                )
                .is_open()
            );
        }
    }

    #[test]
    fn a_first_list_counts_from_the_transition_time_but_never_from_the_future() {
        let c = RouteCache::new(DEFAULT_REASON);
        let in_an_hour = Timestamp::now() + std::time::Duration::from_secs(3600);
        c.relist_begin();
        c.relist_apply(rnode("past", vec![routed_at("2026-01-01T00:00:00Z")]));
        c.relist_apply(rnode("future", vec![routed_at(&in_an_hour.to_string())]));
        c.relist_done();
        let now = Timestamp::now();
        assert_eq!(since(&c, "past"), ts("2026-01-01T00:00:00Z"));
        assert!(since(&c, "future") <= now);
        assert!(c.snapshot(1).all_routed_since.unwrap() <= now);
    }

    #[test]
    fn a_missing_transition_time_counts_from_now() {
        assert_eq!(
            route_of(vec![nu("False", Some("RouteCreated"), None)]),
            Ok(None)
        );
        let c = RouteCache::new(DEFAULT_REASON);
        let before = Timestamp::now();
        c.relist_begin();
        c.relist_apply(rnode("a", vec![nu("False", Some("RouteCreated"), None)]));
        c.relist_done();
        let s = since(&c, "a");
        assert!(before <= s && s <= Timestamp::now());
    }

    #[test]
    fn a_missing_reason_or_status_blocks() {
        let b = route_of(vec![nu("False", None, Some("2026-01-01T00:00:00Z"))]).unwrap_err();
        assert_eq!(
            b,
            Blocker::Other {
                status: "False".into(),
                reason: String::new()
            }
        );
        assert_eq!(b.to_string(), "NetworkUnavailable=False (no reason)");
        let mut c = routed_at("2026-01-01T00:00:00Z");
        c.as_object_mut().unwrap().remove("status");
        let b = route_of(vec![c]).unwrap_err();
        assert_eq!(
            b.to_string(),
            "NetworkUnavailable with no status (RouteCreated)"
        );
    }

    #[test]
    fn a_reason_other_than_the_route_controllers_blocks() {
        assert_eq!(
            route_of(vec![nu(
                "False",
                Some("CalicoIsUp"),
                Some("2026-01-01T00:00:00Z")
            )]),
            Err(Blocker::Other {
                status: "False".into(),
                reason: "CalicoIsUp".into()
            })
        );
        assert_eq!(
            route_of(vec![nu(
                "Unknown",
                Some("RouteCreated"),
                Some("2026-01-01T00:00:00Z")
            )]),
            Err(Blocker::Other {
                status: "Unknown".into(),
                reason: "RouteCreated".into()
            })
        );
    }

    #[test]
    fn duplicate_conditions_block_whichever_comes_first() {
        let ok = routed_at("2026-01-01T00:00:00Z");
        let no = nu("True", Some("NoRouteCreated"), Some("2026-01-02T00:00:00Z"));
        let blocker = Blocker::OneOfSeveral {
            count: 2,
            status: "True".into(),
            reason: "NoRouteCreated".into(),
        };
        let want = Err(blocker.clone());
        assert_eq!(route_of(vec![ok.clone(), no.clone()]), want, "True second");
        assert_eq!(route_of(vec![no, ok.clone()]), want, "True first");
        assert_eq!(
            blocker.to_string(),
            "NoRouteCreated in one of its 2 NetworkUnavailable conditions"
        );
        // Another reason in a second condition blocks too, by name.
        let other = nu("False", Some("CalicoIsUp"), Some("2026-01-01T00:00:00Z"));
        assert_eq!(
            route_of(vec![ok.clone(), other]).unwrap_err().to_string(),
            "NetworkUnavailable=False (CalicoIsUp) in one of its 2 NetworkUnavailable conditions"
        );
        // So does a second route condition whose time is unreadable.
        assert_eq!(
            route_of(vec![ok.clone(), routed_at("9999-12-31T23:59:59Z")]),
            Err(Blocker::UnreadableTime {
                time: "9999-12-31T23:59:59Z".into()
            })
        );
        // Every one says the route exists: it does, since the latest.
        assert_eq!(
            route_of(vec![ok.clone(), routed_at("2026-02-01T00:00:00Z"), ok]),
            Ok(Some(ts("2026-02-01T00:00:00Z")))
        );
        // Other condition types do not matter.
        let ready = json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady"});
        assert_eq!(
            route_of(vec![ready, routed_at("2026-01-01T00:00:00Z")]),
            Ok(Some(ts("2026-01-01T00:00:00Z")))
        );
    }

    #[test]
    fn a_node_without_status_or_conditions_blocks() {
        for v in [
            json!({"metadata": {"name": "a"}}),
            json!({"metadata": {"name": "a"}, "status": null}),
            json!({"metadata": {"name": "a"}, "status": {}}),
            json!({"metadata": {"name": "a"}, "status": {"conditions": null}}),
            json!({"metadata": {"name": "a"}, "status": {"conditions": []}}),
        ] {
            let n: RouteNode = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(n.route(DEFAULT_REASON), Err(Blocker::NoCondition), "{v}");
        }
    }

    #[test]
    fn odd_json_never_fails_the_decode_and_blocks() {
        for (v, why) in [
            (json!({"status": "x"}), "status (a string) is unreadable"),
            (
                json!({"status": {"conditions": {"type": CONDITION}}}),
                "status.conditions (an object) is unreadable",
            ),
            (
                json!({"status": {"conditions": [routed_at("2026-01-01T00:00:00Z"), 5]}}),
                "status.conditions[1] (a number) is unreadable",
            ),
            (json!({"metadata": [1]}), "metadata (a list) is unreadable"),
            (json!("a node"), "the object (a string) is unreadable"),
            (
                json!({"status": {"conditions": [{"type": CONDITION, "status": false, "reason": "RouteCreated"}]}}),
                "NetworkUnavailable=false (RouteCreated)",
            ),
        ] {
            let n: RouteNode = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(n.route(DEFAULT_REASON).unwrap_err().to_string(), why, "{v}");
        }
        // A deletion timestamp jiff cannot hold still means "deleting".
        let n: RouteNode = serde_json::from_value(json!({"metadata": {"name": "a",
            "deletionTimestamp": "9999-12-31T23:59:59Z"}}))
        .unwrap();
        assert!(n.deleting);
    }

    #[test]
    fn a_relist_with_a_future_time_does_not_delay_the_gate() {
        let c = RouteCache::new(DEFAULT_REASON);
        let future = (Timestamp::now() + std::time::Duration::from_secs(3600)).to_string();
        c.relist_begin();
        c.relist_apply(rnode("a", vec![routed_at(&future)]));
        c.relist_done();
        let first = since(&c, "a");
        assert!(first <= Timestamp::now());
        // The watch breaks and lists again: the same route keeps its since.
        c.lost();
        listed_raw(&c, vec![rnode("a", vec![routed_at(&future)])]);
        assert_eq!(since(&c, "a"), first);
        // A node that got its route while we were blind, with a time an
        // hour ahead: counts from the re-list, not from that hour.
        c.lost();
        let before = Timestamp::now();
        listed_raw(
            &c,
            vec![
                rnode("a", vec![routed_at(&future)]),
                rnode("b", vec![routed_at(&future)]),
            ],
        );
        let after = Timestamp::now();
        let s = c.snapshot(1).all_routed_since.unwrap();
        assert!(before <= s && s <= after);
        // A new transition time (a flap while blind), also ahead: from the re-list.
        c.lost();
        let later = (Timestamp::now() + std::time::Duration::from_secs(7200)).to_string();
        let before = Timestamp::now();
        listed_raw(
            &c,
            vec![
                rnode("a", vec![routed_at(&later)]),
                rnode("b", vec![routed_at(&future)]),
            ],
        );
        let s = since(&c, "a");
        assert!(before <= s && s <= Timestamp::now());
    }

    #[test]
    fn live_updates_with_a_future_time_do_not_delay_the_gate() {
        let c = RouteCache::new(DEFAULT_REASON);
        listed(
            &c,
            vec![
                node("a", Some(("False", "RouteCreated", 1))),
                node("b", None),
            ],
        );
        let future = (Timestamp::now() + std::time::Duration::from_secs(3600)).to_string();
        let before = Timestamp::now();
        c.apply(rnode("b", vec![routed_at(&future)]));
        let after = Timestamp::now();
        let seen = c.snapshot(1).all_routed_since.unwrap();
        assert!(before <= seen && seen <= after, "since {seen}");
        // Heartbeats with the same condition keep it.
        std::thread::sleep(std::time::Duration::from_millis(5));
        c.apply(rnode("b", vec![routed_at(&future)]));
        assert_eq!(c.snapshot(1).all_routed_since, Some(seen));
        // The settle time runs from our observation.
        let settle = std::time::Duration::from_secs(10);
        assert!(
            crate::cluster::gate::routes_gate(&c.snapshot(1), settle, after + settle).is_open()
        );
        // A changed transition time, ahead of us too: never later than now.
        let later = (Timestamp::now() + std::time::Duration::from_secs(7200)).to_string();
        c.apply(rnode("b", vec![routed_at(&later)]));
        assert!(c.snapshot(1).all_routed_since.unwrap() <= Timestamp::now());
        // A changed transition time in the past: a flap we did not see as
        // events. When it happened is the node's word only, so it counts
        // from our observation (a controller clock behind ours cannot
        // shorten the settle).
        let c = RouteCache::new(DEFAULT_REASON);
        listed(&c, vec![node("a", Some(("False", "RouteCreated", 1)))]);
        let before = Timestamp::now();
        c.apply(node("a", Some(("False", "RouteCreated", 1000))));
        assert!(since(&c, "a") >= before);
    }

    fn listed_raw(cache: &RouteCache, nodes: Vec<RouteNode>) {
        cache.relist_begin();
        for n in nodes {
            cache.relist_apply(n);
        }
        cache.relist_done();
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
    use crate::cluster::gate::{Gate, opens_in, routes_gate};

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

/// Random condition lists: decoding and reading never fail or panic, and a
/// node counts as routed only if every NetworkUnavailable condition says so.
#[cfg(test)]
mod props {
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Mostly readable times, sometimes none, out of range or no time at all.
    fn time() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(json!("9999-12-31T23:59:59Z"))),
            1 => Just(Some(json!("9999-12-30T21:59:59Z"))),
            1 => Just(Some(json!("0001-01-01T00:00:00Z"))),
            1 => Just(Some(json!("not a time"))),
            1 => Just(Some(json!(""))),
            1 => Just(Some(json!(12))),
            1 => Just(Some(Value::Null)),
            12 => (0i64..4_000_000_000).prop_map(|s| Some(json!(
                Timestamp::from_second(s).unwrap().to_string()
            ))),
        ]
    }

    /// Mostly the first word (what makes a route), sometimes another,
    /// sometimes missing or not a string.
    fn text(words: &'static [&'static str]) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            1 => Just(Some(json!(false))),
            10 => Just(Some(json!(words[0]))),
            4 => proptest::sample::select(words).prop_map(|w| Some(json!(w))),
        ]
    }

    fn condition() -> impl Strategy<Value = Value> {
        (
            text(&["NetworkUnavailable", "Ready", "networkunavailable"]),
            text(&["False", "True", "Unknown", "false", ""]),
            text(&["RouteCreated", "NoRouteCreated", "CalicoIsUp", ""]),
            time(),
        )
            .prop_map(|(t, s, r, lt)| {
                let mut c = serde_json::Map::new();
                for (k, v) in [
                    ("type", t),
                    ("status", s),
                    ("reason", r),
                    ("lastTransitionTime", lt),
                ] {
                    if let Some(v) = v {
                        c.insert(k.into(), v);
                    }
                }
                Value::Object(c)
            })
    }

    /// What the rule says, straight from the JSON.
    fn oracle(conditions: &[Value]) -> bool {
        let nu: Vec<&Value> = conditions
            .iter()
            .filter(|c| c["type"] == CONDITION)
            .collect();
        !nu.is_empty()
            && nu.iter().all(|c| {
                c["status"] == "False"
                    && c["reason"] == DEFAULT_REASON
                    && match &c["lastTransitionTime"] {
                        Value::Null => true,
                        Value::String(s) => s.parse::<Timestamp>().is_ok(),
                        _ => false,
                    }
            })
    }

    fn prev() -> impl Strategy<Value = Option<NodeRoute>> {
        prop_oneof![
            Just(None),
            Just(Some(NodeRoute {
                route: Err(Blocker::NoCondition),
                deleting: false
            })),
            (
                0i64..4_000_000_000,
                proptest::option::of(0i64..4_000_000_000)
            )
                .prop_map(|(s, r)| Some(NodeRoute {
                    route: Ok(Route {
                        since: Timestamp::from_second(s).unwrap(),
                        reported: r.map(|r| Timestamp::from_second(r).unwrap()),
                    }),
                    deleting: false,
                })),
        ]
    }

    proptest! {
        #[test]
        fn routed_only_if_every_route_condition_says_so(
            conditions in proptest::collection::vec(condition(), 0..4),
            prev in prev(),
            first_list in any::<bool>(),
            now in 0i64..4_000_000_000,
        ) {
            let v = json!({"metadata": {"name": "n", "resourceVersion": "1"},
                "status": {"conditions": conditions}});
            let node: RouteNode = serde_json::from_value(v).unwrap();
            let route = node.route(DEFAULT_REASON);
            prop_assert_eq!(route.is_ok(), oracle(&conditions), "{:?}", route);
            // Our clock bounds since, whatever the node says.
            let now = Timestamp::from_second(now).unwrap();
            let reading = Reading { route, deleting: false };
            let entry = reading.resolve(prev.as_ref(), first_list, now);
            if let Ok(r) = &entry.route {
                prop_assert!(r.since <= now);
                // The same transition keeps its since; another one (a flap
                // not seen as events) counts from now, whatever time it gives.
                if let Some(Ok(p)) = prev.as_ref().map(|p| &p.route) {
                    if p.reported == r.reported {
                        prop_assert_eq!(r.since, p.since.min(now));
                    } else {
                        prop_assert_eq!(r.since, now);
                    }
                } else if !first_list {
                    prop_assert_eq!(r.since, now);
                }
            }
        }
    }
}
