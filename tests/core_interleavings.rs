//! The safety property of the whole pure core, over interleavings: the
//! route cache, the toggle, the held records, the gate (through
//! `Webhook::judge`) and the release decision, driven by a simulated clock
//! with random sequences of
//!
//! - node events: join, leave, route created and lost, flaps, calico-node's
//!   `CalicoIsUp`/`CalicoIsDown` overwriting the condition, heartbeats, a
//!   broken node watch (events missed) and its re-list, and route
//!   controllers whose clock is behind or ahead of ours (the
//!   `lastTransitionTime` they write is skewed);
//! - Calico updates by an operator: switches of calico-node and of two
//!   IPPools (the pools switched together before either watch event
//!   arrives), unrelated changes, rollbacks; Calico object watches that lag,
//!   break and list again; the toggle's watch breaking;
//! - release passes at any moment (the release controller's decision, then
//!   its writes through the webhook, as it makes them).
//!
//! The model keeps the truth (which node has had its route since when, on
//! our clock) next to what the webhook is told, and checks after every step:
//!
//! 1. no write that lowers encapsulation (an operator's, or a release) goes
//!    through unless every node has had its route for the settle time, on
//!    the true clock, and every watch is synced;
//! 2. while any object carries a held record, no operator write lowers
//!    another object (a sibling's switch joins the held one), and a release leaves
//!    no record behind (all are released together): never half switched;
//! 3. every object, with its held record applied, is exactly what the
//!    operator last asked for (no held intent is lost);
//! 4. once every route is there and stays for the settle time, one release
//!    pass completes every held switch.
//!
//! What the model assumes, as the cache does: at the first list, the age of
//! a route is the node's word (its `lastTransitionTime`, never later than
//! our clock); after that, a route counts from when we saw it appear.
//!
//! `CORE_PROPTEST_CASES` sets the number of cases (default 2,000).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use overlay_switch_webhook::calico::overlay::{self, CalicoKind, Context};
use overlay_switch_webhook::cluster::gate;
use overlay_switch_webhook::cluster::hold::{self, Record};
use overlay_switch_webhook::cluster::release::decision::{self, Action, Decision};
use overlay_switch_webhook::cluster::routes::RouteNode;
use overlay_switch_webhook::cluster::watch::Store as _;
use overlay_switch_webhook::cluster::{Cluster, Settings};
use overlay_switch_webhook::metrics::Metrics;
use overlay_switch_webhook::server::admission;
use overlay_switch_webhook::server::webhook::Webhook;
use proptest::prelude::*;
use serde_json::{Value, json};

const SETTLE: u64 = 30;
const GUARD: &str = "calico.networking.extensions.gardener.cloud/seamless-overlay-switch";

/// The Calico objects of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Obj {
    Node,
    PoolA,
    PoolB,
}

const OBJS: [Obj; 3] = [Obj::Node, Obj::PoolA, Obj::PoolB];

impl Obj {
    fn kind(self) -> CalicoKind {
        match self {
            Obj::Node => CalicoKind::DaemonSet,
            Obj::PoolA | Obj::PoolB => CalicoKind::IpPool,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Obj::Node => "calico-node",
            Obj::PoolA => "pool-a",
            Obj::PoolB => "pool-b",
        }
    }

    /// The fields the model tracks: the guarded ones and one unrelated.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Obj::Node => &[
                "/spec/template/spec/containers/0/env/0/value",
                "/spec/template/spec/containers/0/env/1/value",
                "/spec/template/spec/containers/0/image",
            ],
            Obj::PoolA | Obj::PoolB => &["/spec/ipipMode", "/spec/vxlanMode", "/spec/nodeSelector"],
        }
    }

    fn initial(self) -> Value {
        match self {
            Obj::Node => json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "calico-node", "namespace": "kube-system", "uid": "u-ds", "resourceVersion": "1"},
                "spec": {"template": {"spec": {"containers": [{"name": "calico-node", "image": "calico/node:v0", "env": [
                    {"name": "CALICO_IPV4POOL_IPIP", "value": "Always"},
                    {"name": "FELIX_IPINIPENABLED", "value": "true"},
                    {"name": "CALICO_NETWORKING_BACKEND", "value": "bird"}]}]}}}
            }),
            pool => json!({
                "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                "metadata": {"name": pool.name(), "uid": format!("u-{}", pool.name()), "resourceVersion": "1"},
                "spec": {"cidr": if pool == Obj::PoolA {"10.0.0.0/16"} else {"10.1.0.0/16"},
                         "ipipMode": "Always", "vxlanMode": "Never", "nodeSelector": "all()"}
            }),
        }
    }

    /// What a switch to native routing sets (one of several ways).
    fn switch(self, variant: u8, obj: &mut Value) {
        match self {
            Obj::Node => match variant % 3 {
                0 => set(obj, self.fields()[0], "Never"),
                1 => set(obj, self.fields()[1], "false"),
                _ => {
                    set(obj, self.fields()[0], "Never");
                    set(obj, self.fields()[1], "false");
                }
            },
            _ => {
                set(obj, "/spec/ipipMode", "Never");
                if variant % 2 == 1 {
                    set(obj, "/spec/vxlanMode", "Never");
                }
            }
        }
    }

    fn rollback(self, obj: &mut Value) {
        match self {
            Obj::Node => {
                set(obj, self.fields()[0], "Always");
                set(obj, self.fields()[1], "true");
            }
            _ => set(obj, "/spec/ipipMode", "Always"),
        }
    }

    fn unrelated(self, n: u8, obj: &mut Value) {
        match self {
            Obj::Node => set(obj, self.fields()[2], &format!("calico/node:v{n}")),
            _ => set(obj, "/spec/nodeSelector", &format!("zone == 'z{n}'")),
        }
    }
}

fn set(obj: &mut Value, pointer: &str, v: &str) {
    *obj.pointer_mut(pointer).expect("a modelled field") = json!(v);
}

fn fields(o: Obj, obj: &Value) -> Vec<Value> {
    o.fields()
        .iter()
        .map(|p| obj.pointer(p).cloned().unwrap_or(Value::Null))
        .collect()
}

/// One node's `NetworkUnavailable` condition, as written.
#[derive(Debug, Clone)]
enum Cond {
    None,
    Route(Timestamp),
    NoRoute(Timestamp),
    CalicoUp(Timestamp),
    CalicoDown(Timestamp),
}

#[derive(Debug, Clone)]
struct NodeTruth {
    cond: Cond,
    /// Since when the node has had its route, on the true clock.
    routed_since: Option<Timestamp>,
    /// How far this node's route controller's clock is from ours.
    skew: i64,
}

#[derive(Debug, Clone)]
enum Step {
    Advance(u64),
    Join {
        routed: bool,
        skew: i64,
    },
    Leave(usize),
    RouteCreated(usize),
    RouteLost(usize),
    /// Lost and created again between two looks.
    Flap(usize),
    CalicoUp(usize),
    CalicoDown(usize),
    Heartbeat(usize),
    NodeWatchBreak,
    NodeRelist,
    /// The node watch breaks, a node's route flaps (or is lost), the
    /// watch lists again: the change is seen only in the re-list.
    Blind(usize, bool),
    Switch(Obj, u8),
    /// Both pools switched before either watch event arrives.
    SwitchPools(u8),
    Unrelated(Obj, u8),
    Rollback(Obj),
    Deliver,
    ObjectWatchBreak(Obj),
    ObjectRelist(Obj),
    ToggleBreak,
    ToggleRelist,
    ReleasePass,
}

fn skew() -> impl Strategy<Value = i64> {
    prop::sample::select(vec![-7200i64, -600, -60, -1, 0, 0, 0, 1, 60, 600, 7200])
}

fn obj() -> impl Strategy<Value = Obj> {
    prop::sample::select(OBJS.to_vec())
}

fn step() -> impl Strategy<Value = Step> {
    let i = 0usize..8;
    prop_oneof![
        4 => prop::sample::select(vec![1u64, 5, 10, 29, 30, 31, 61]).prop_map(Step::Advance),
        1 => (any::<bool>(), skew()).prop_map(|(routed, skew)| Step::Join { routed, skew }),
        1 => i.clone().prop_map(Step::Leave),
        3 => i.clone().prop_map(Step::RouteCreated),
        2 => i.clone().prop_map(Step::RouteLost),
        1 => i.clone().prop_map(Step::Flap),
        1 => i.clone().prop_map(Step::CalicoUp),
        1 => i.clone().prop_map(Step::CalicoDown),
        1 => i.prop_map(Step::Heartbeat),
        1 => Just(Step::NodeWatchBreak),
        2 => Just(Step::NodeRelist),
        2 => (0usize..8, any::<bool>()).prop_map(|(i, flap)| Step::Blind(i, flap)),
        4 => (obj(), any::<u8>()).prop_map(|(o, v)| Step::Switch(o, v)),
        1 => any::<u8>().prop_map(Step::SwitchPools),
        2 => (obj(), any::<u8>()).prop_map(|(o, v)| Step::Unrelated(o, v)),
        1 => obj().prop_map(Step::Rollback),
        3 => Just(Step::Deliver),
        1 => obj().prop_map(Step::ObjectWatchBreak),
        1 => obj().prop_map(Step::ObjectRelist),
        1 => Just(Step::ToggleBreak),
        1 => Just(Step::ToggleRelist),
        3 => Just(Step::ReleasePass),
    ]
}

struct Sim {
    cluster: Arc<Cluster>,
    webhook: Webhook,
    now: Timestamp,
    nodes: BTreeMap<String, NodeTruth>,
    joined: usize,
    node_watch_broken: bool,
    toggle_broken: bool,
    live: BTreeMap<Obj, Value>,
    /// Watch events of each object not delivered yet.
    pending: Vec<(Obj, Value)>,
    object_watch_broken: BTreeMap<Obj, bool>,
    /// What the operator last asked for, field by field.
    wanted: BTreeMap<Obj, Vec<Value>>,
    resource_version: u64,
}

fn namespace() -> Namespace {
    serde_json::from_value(
        json!({"metadata": {"name": "kube-system", "annotations": {GUARD: "true"}}}),
    )
    .unwrap()
}

fn dynamic(v: &Value) -> DynamicObject {
    serde_json::from_value(v.clone()).unwrap()
}

impl Sim {
    /// Nodes as first listed: routed an hour ago or not, each with the skew
    /// of the clock that writes its later transitions.
    fn new(initial: &[(bool, i64)]) -> Self {
        let cluster = Cluster::new(Settings {
            settle: Duration::from_secs(SETTLE),
            ..Settings::default()
        });
        let webhook = Webhook {
            cluster: cluster.clone(),
            metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut sim = Sim {
            cluster,
            webhook,
            now,
            nodes: BTreeMap::new(),
            joined: 0,
            node_watch_broken: false,
            toggle_broken: false,
            live: OBJS.iter().map(|o| (*o, o.initial())).collect(),
            pending: Vec::new(),
            object_watch_broken: OBJS.iter().map(|o| (*o, false)).collect(),
            wanted: OBJS
                .iter()
                .map(|o| (*o, fields(*o, &o.initial())))
                .collect(),
            resource_version: 1,
        };
        // The first list: routes an hour old (the node's word is taken).
        let hour_ago = now - Duration::from_secs(3600);
        for (i, (routed, skew)) in initial.iter().enumerate() {
            let (cond, routed_since) = if *routed {
                (Cond::Route(hour_ago), Some(hour_ago))
            } else {
                (Cond::NoRoute(hour_ago), None)
            };
            sim.nodes.insert(
                format!("node-{i}"),
                NodeTruth {
                    cond,
                    routed_since,
                    skew: *skew,
                },
            );
        }
        sim.joined = initial.len();
        sim.relist_nodes();
        sim.relist_toggle();
        for o in OBJS {
            sim.relist_objects(o);
        }
        // The other kinds are not modelled: their watches list nothing.
        for kind in [
            CalicoKind::ConfigMap,
            CalicoKind::IpPoolV3,
            CalicoKind::FelixConfiguration,
            CalicoKind::FelixConfigurationV3,
            CalicoKind::Installation,
        ] {
            let store = sim.cluster.held.store(kind);
            store.relist_begin();
            store.relist_done();
        }
        sim
    }

    fn route_node(name: &str, t: &NodeTruth) -> RouteNode {
        let c = |status: &str, reason: &str, at: &Timestamp| {
            json!([{"type": "NetworkUnavailable", "status": status, "reason": reason,
                    "lastTransitionTime": at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}])
        };
        let conditions = match &t.cond {
            Cond::None => json!([]),
            Cond::Route(at) => c("False", "RouteCreated", at),
            Cond::NoRoute(at) => c("True", "NoRouteCreated", at),
            Cond::CalicoUp(at) => c("False", "CalicoIsUp", at),
            Cond::CalicoDown(at) => c("True", "CalicoIsDown", at),
        };
        serde_json::from_value(json!({"metadata": {"name": name, "resourceVersion": "1"},
            "status": {"conditions": conditions}}))
        .unwrap()
    }

    fn relist_nodes(&mut self) {
        let routes = &self.cluster.routes;
        routes.relist_begin();
        for (name, t) in &self.nodes {
            routes.relist_apply(Self::route_node(name, t));
        }
        routes.relist_done_at(self.now);
        self.node_watch_broken = false;
    }

    fn relist_toggle(&mut self) {
        let t = &self.cluster.toggle;
        t.relist_begin();
        t.relist_apply(namespace());
        t.relist_done();
        self.toggle_broken = false;
    }

    fn relist_objects(&mut self, o: Obj) {
        let store = self.cluster.held.store(o.kind());
        store.relist_begin();
        for (other, v) in &self.live {
            if other.kind() == o.kind() {
                store.relist_apply(dynamic(v));
            }
        }
        store.relist_done();
        // The list shows the latest state: older events of its kind are moot.
        self.pending.retain(|(p, _)| p.kind() != o.kind());
        for other in OBJS {
            if other.kind() == o.kind() {
                self.object_watch_broken.insert(other, false);
            }
        }
    }

    /// A node changed in the cluster: the cache sees it unless its watch is broken.
    fn node_changed(&mut self, name: &str) {
        if self.node_watch_broken {
            return;
        }
        match self.nodes.get(name) {
            Some(t) => self
                .cluster
                .routes
                .apply_at(Self::route_node(name, t), self.now),
            None => self.cluster.routes.delete(Self::route_node(
                name,
                &NodeTruth {
                    cond: Cond::None,
                    routed_since: None,
                    skew: 0,
                },
            )),
        }
    }

    fn node_name(&self, i: usize) -> Option<String> {
        (!self.nodes.is_empty())
            .then(|| self.nodes.keys().nth(i % self.nodes.len()).unwrap().clone())
    }

    fn written(&self, t: &NodeTruth) -> Timestamp {
        let skewed = self.now.as_second() + t.skew;
        Timestamp::from_second(skewed).unwrap()
    }

    fn set_cond(&mut self, i: usize, f: impl Fn(Timestamp) -> Cond, routed: bool) {
        let Some(name) = self.node_name(i) else {
            return;
        };
        let t = self.nodes.get(&name).unwrap().clone();
        let at = self.written(&t);
        let was_routed = matches!(t.cond, Cond::Route(_));
        let t = self.nodes.get_mut(&name).unwrap();
        if routed && was_routed {
            return; // no transition: the route controller writes nothing
        }
        t.cond = f(at);
        t.routed_since = routed.then_some(self.now);
        self.node_changed(&name);
    }

    /// The truth: may a switch go through now?
    fn truly_open(&self) -> bool {
        let settle = Duration::from_secs(SETTLE);
        !self.node_watch_broken
            && !self.toggle_broken
            && !self.object_watch_broken.values().any(|b| *b)
            && self
                .nodes
                .values()
                .all(|t| t.routed_since.is_some_and(|s| s + settle <= self.now))
    }

    fn any_record(&self) -> bool {
        self.records_besides(None)
    }

    fn records_besides(&self, o: Option<Obj>) -> bool {
        self.live
            .iter()
            .any(|(k, v)| Some(*k) != o && Record::read(v).unwrap().is_some())
    }

    /// One update through the webhook, stored as the API server would store
    /// it: the object after the response's patch, or `None` when refused.
    fn update(&mut self, o: Obj, new: Value, user: &str) -> Option<Value> {
        let old = self.live[&o].clone();
        let (group, version, resource) = match o.kind() {
            CalicoKind::DaemonSet => ("apps", "v1", "daemonsets"),
            _ => ("crd.projectcalico.org", "v1", "ippools"),
        };
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": group, "version": version, "kind": new["kind"]},
                "resource": {"group": group, "version": version, "resource": resource},
                "name": o.name(), "namespace": new["metadata"]["namespace"],
                "operation": "UPDATE", "userInfo": {"username": user},
                "object": new, "oldObject": old, "dryRun": false
            }
        });
        let review = admission::decode(body.to_string().as_bytes()).expect("a valid review");
        let (resp, _) = self.webhook.judge(review, self.now);
        if !resp.allowed {
            return None;
        }
        let mut stored = new;
        if let Some(p) = &resp.patch {
            let patch: json_patch::Patch = serde_json::from_slice(p).unwrap();
            json_patch::patch(&mut stored, &patch).expect("the response's patch applies");
        }
        self.resource_version += 1;
        stored["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.live.insert(o, stored.clone());
        if !self.object_watch_broken[&o] {
            self.pending.push((o, stored.clone()));
        }
        Some(stored)
    }

    /// An operator's read-modify-write of `o`; checks properties 1 and 2 and
    /// records what was asked for.
    fn operator(&mut self, o: Obj, change: impl Fn(&mut Value)) -> Result<(), TestCaseError> {
        let before = self.live[&o].clone();
        let mut new = before.clone();
        change(&mut new);
        let others_held = self.records_besides(Some(o));
        let open = self.truly_open();
        let Some(stored) = self.update(o, new.clone(), "operator") else {
            return Ok(());
        };
        let lowered = overlay::detect_switch(o.kind(), &before, &stored, Context::NONE)
            .ok()
            .flatten();
        if let Some(s) = lowered {
            prop_assert!(
                open,
                "{s} went through while a route or the state was missing"
            );
            prop_assert!(
                !others_held,
                "{s} went through while another object's switch was held"
            );
        }
        // What this update asked for, field by field (later changes win).
        let (was, asked) = (fields(o, &before), fields(o, &new));
        let wanted = self.wanted.get_mut(&o).unwrap();
        for (i, (w, a)) in was.iter().zip(asked).enumerate() {
            if *w != a {
                wanted[i] = a;
            }
        }
        Ok(())
    }

    /// The release controller's pass: its decision, then its writes.
    fn release_pass(&mut self) -> Result<bool, TestCaseError> {
        let c = self.cluster.clone();
        let held = c.held.held();
        let routes = c.routes.snapshot(3);
        let gate = gate::routes_gate(&routes, Duration::from_secs(SETTLE), self.now);
        let Some(Decision {
            release: Some(Action::Release { forced: None }),
            ..
        }) = decision::decide(&c.toggle.get(), held.as_deref(), &gate)
        else {
            return Ok(false);
        };
        let open = self.truly_open();
        for h in held.unwrap() {
            let o = *OBJS
                .iter()
                .find(|o| o.name() == h.key.name)
                .expect("only modelled objects are held");
            let current = self.live[&o].clone();
            let Some(record) = Record::read(&current).unwrap() else {
                continue; // released already, or rolled back
            };
            let new =
                hold::released(&current, &record, "release").expect("the held change applies");
            let stored = self.update(
                o,
                new,
                "system:serviceaccount:kube-system:overlay-switch-webhook",
            );
            prop_assert!(stored.is_some(), "the release of {:?} was refused", o);
            let stored = stored.unwrap();
            if let Some(s) = overlay::detect_switch(o.kind(), &current, &stored, Context::NONE)
                .ok()
                .flatten()
            {
                prop_assert!(open, "released {s} while a route or the state was missing");
            }
        }
        prop_assert!(
            !self.any_record(),
            "a release left a record behind: half switched"
        );
        Ok(true)
    }

    fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step.clone() {
            Step::Advance(s) => self.now += Duration::from_secs(s),
            Step::Join { routed, skew } => {
                let name = format!("node-{}", self.joined);
                self.joined += 1;
                let mut t = NodeTruth {
                    cond: Cond::None,
                    routed_since: None,
                    skew,
                };
                if routed {
                    t.cond = Cond::Route(self.written(&t));
                    t.routed_since = Some(self.now);
                }
                self.nodes.insert(name.clone(), t);
                self.node_changed(&name);
            }
            Step::Leave(i) => {
                if let Some(name) = self.node_name(i) {
                    self.nodes.remove(&name);
                    self.node_changed(&name);
                }
            }
            Step::RouteCreated(i) => self.set_cond(i, Cond::Route, true),
            Step::RouteLost(i) => self.set_cond(i, Cond::NoRoute, false),
            Step::Flap(i) => {
                self.set_cond(i, Cond::NoRoute, false);
                self.set_cond(i, Cond::Route, true);
            }
            Step::CalicoUp(i) => self.set_cond(i, Cond::CalicoUp, false),
            Step::CalicoDown(i) => self.set_cond(i, Cond::CalicoDown, false),
            Step::Heartbeat(i) => {
                if let Some(name) = self.node_name(i) {
                    self.node_changed(&name);
                }
            }
            Step::NodeWatchBreak => {
                self.cluster.routes.lost();
                self.node_watch_broken = true;
            }
            Step::NodeRelist => self.relist_nodes(),
            Step::Blind(i, flap) => {
                self.run(&Step::NodeWatchBreak)?;
                self.run(&if flap {
                    Step::Flap(i)
                } else {
                    Step::RouteLost(i)
                })?;
                self.relist_nodes();
            }
            Step::Switch(o, v) => self.operator(o, |obj| o.switch(v, obj))?,
            Step::SwitchPools(v) => {
                self.operator(Obj::PoolA, |obj| Obj::PoolA.switch(v, obj))?;
                self.operator(Obj::PoolB, |obj| Obj::PoolB.switch(v, obj))?;
            }
            Step::Unrelated(o, n) => self.operator(o, |obj| o.unrelated(n, obj))?,
            Step::Rollback(o) => self.operator(o, |obj| o.rollback(obj))?,
            Step::Deliver => {
                for (o, v) in std::mem::take(&mut self.pending) {
                    self.cluster.held.store(o.kind()).apply(dynamic(&v));
                }
            }
            Step::ObjectWatchBreak(o) => {
                self.cluster.held.store(o.kind()).lost();
                self.pending.retain(|(p, _)| p.kind() != o.kind());
                for other in OBJS {
                    if other.kind() == o.kind() {
                        self.object_watch_broken.insert(other, true);
                    }
                }
            }
            Step::ObjectRelist(o) => self.relist_objects(o),
            Step::ToggleBreak => {
                self.cluster.toggle.lost();
                self.toggle_broken = true;
            }
            Step::ToggleRelist => self.relist_toggle(),
            Step::ReleasePass => {
                self.release_pass()?;
            }
        }
        self.check_nothing_lost()
    }

    /// Property 3: every object with its record applied is what was asked.
    fn check_nothing_lost(&self) -> Result<(), TestCaseError> {
        for o in OBJS {
            let live = &self.live[&o];
            let effective = match Record::read(live).unwrap() {
                Some(r) => hold::apply_intent(live, &r).expect("the held change applies"),
                None => live.clone(),
            };
            prop_assert_eq!(
                &fields(o, &effective),
                &self.wanted[&o],
                "{:?} lost what was asked",
                o
            );
        }
        Ok(())
    }

    /// Property 4: heal every watch, give every node its route, let it
    /// settle: one pass completes every held switch.
    fn heal_and_release(&mut self) -> Result<(), TestCaseError> {
        if self.node_watch_broken {
            self.relist_nodes();
        }
        if self.toggle_broken {
            self.relist_toggle();
        }
        for o in OBJS {
            if self.object_watch_broken[&o] {
                self.relist_objects(o);
            }
        }
        self.run(&Step::Deliver)?;
        for i in 0..self.nodes.len() {
            let name = self.node_name(i).unwrap();
            if self.nodes[&name].routed_since.is_none() {
                self.set_cond(i, Cond::Route, true);
            }
        }
        self.now += Duration::from_secs(SETTLE);
        let had_records = self.any_record();
        let released = self.release_pass()?;
        prop_assert_eq!(
            released,
            had_records,
            "a held switch was not released once all routes stayed"
        );
        for o in OBJS {
            prop_assert_eq!(
                &fields(o, &self.live[&o]),
                &self.wanted[&o],
                "{:?} not completed",
                o
            );
        }
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("CORE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn no_switch_without_every_route_nothing_lost_never_half_switched_and_released_once_routed(
        initial in prop::collection::vec((any::<bool>(), skew()), 0..4),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut sim = Sim::new(&initial);
        for s in &steps {
            sim.run(s)?;
        }
        sim.heal_and_release()?;
    }
}

/// The case the property found worth naming: a route controller whose clock
/// is two hours behind re-creates a route while our node watch is broken.
/// The re-list shows a new transition time, two hours "old": the route
/// still counts from the re-list, so a switch right after it is held.
#[test]
fn a_route_recreated_while_the_watch_was_broken_counts_from_the_relist() {
    let mut sim = Sim::new(&[(true, -7200), (true, 0)]);
    for step in [
        Step::NodeWatchBreak,
        Step::Flap(0),
        Step::NodeRelist,
        Step::Switch(Obj::PoolA, 0),
    ] {
        sim.run(&step).unwrap();
    }
    assert!(
        Record::read(&sim.live[&Obj::PoolA]).unwrap().is_some(),
        "held"
    );
    sim.run(&Step::Advance(SETTLE)).unwrap();
    assert!(
        sim.release_pass().unwrap(),
        "released after the settle time"
    );
}
