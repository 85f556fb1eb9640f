//! Property tests of the whole decision (decode -> overlay reading -> gate ->
//! hold patch -> record), through `Webhook::review` on a cluster whose
//! caches are fed as the watches feed them: random sequences of updates of
//! calico-node (switches split over several updates, several switches on a
//! held object, unrelated changes, partial re-applies of a desired object,
//! values Calico refuses) while a node lacks its route, then once routes
//! are there.
//!
//! After every step: nothing the webhook admitted lowers encapsulation below
//! where the cluster started; the live object plus its held record (the
//! release applies the record onto the live object) is exactly what the
//! operator last asked for, variable by variable (later changes win,
//! nothing is lost); and once the gate opens, the next switch carries it all.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use overlay_switch_webhook::calico::overlay::{self, CalicoKind, Context};
use overlay_switch_webhook::cluster::hold::{self, Record};
use overlay_switch_webhook::cluster::watch::Store as _;
use overlay_switch_webhook::cluster::{Cluster, Settings};
use overlay_switch_webhook::metrics::Metrics;
use overlay_switch_webhook::server::webhook::Webhook;
use proptest::prelude::*;
use serde_json::{Value, json};

const VARS: [&str; 5] = [
    "CALICO_IPV4POOL_IPIP",
    "CALICO_IPV4POOL_VXLAN",
    "FELIX_IPINIPENABLED",
    "FELIX_VXLANENABLED",
    "CALICO_NETWORKING_BACKEND",
];

type Env = BTreeMap<String, String>;

fn ds(env: &Env, image: &str, annotations: &Value) -> Value {
    let env: Vec<Value> = env
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "calico-node", "namespace": "kube-system", "annotations": annotations},
        "spec": {"template": {"spec": {"containers": [{"name": "calico-node", "image": image, "env": env}]}}}
    })
}

fn env_of(obj: &Value) -> Env {
    obj.pointer("/spec/template/spec/containers/0/env")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_string(),
                        e["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn image_of(obj: &Value) -> String {
    obj.pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn cluster(blocked: bool) -> Arc<Cluster> {
    let c = Cluster::new(Settings {
        settle: std::time::Duration::ZERO,
        ..Settings::default()
    });
    set_routes(&c, blocked);
    c.toggle.relist_begin();
    c.toggle.relist_apply(
        serde_json::from_value(json!({"metadata": {"name": "kube-system", "annotations": {
            "calico.networking.extensions.gardener.cloud/seamless-overlay-switch": "true"}}}))
        .unwrap(),
    );
    c.toggle.relist_done();
    for k in CalicoKind::ALL {
        let s = c.held.store(k);
        s.relist_begin();
        s.relist_done();
    }
    c
}

fn set_routes(c: &Cluster, blocked: bool) {
    c.routes.relist_begin();
    for (name, routed) in [("node-a", true), ("node-b", !blocked)] {
        let (status, reason) = if routed {
            ("False", "RouteCreated")
        } else {
            ("True", "NoRouteCreated")
        };
        c.routes.relist_apply(
            serde_json::from_value::<overlay_switch_webhook::cluster::routes::RouteNode>(
                json!({"metadata": {"name": name}, "status": {"conditions": [
                {"type": "NetworkUnavailable", "status": status, "reason": reason,
                 "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}),
            )
            .unwrap(),
        );
    }
    c.routes.relist_done();
}

/// One review through the webhook: the stored object after it, or `None`
/// when the update was refused.
fn update(webhook: &Webhook, old: &Value, new: &Value) -> Option<Value> {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
            "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
            "name": "calico-node", "namespace": "kube-system", "operation": "UPDATE",
            "userInfo": {"username": "operator"}, "object": new, "oldObject": old, "dryRun": false
        }
    });
    let (bytes, _) = webhook.review(body.to_string().as_bytes());
    let resp: Value = serde_json::from_slice(&bytes).unwrap();
    let resp = &resp["response"];
    if resp["allowed"] != json!(true) {
        return None;
    }
    let mut stored = new.clone();
    if let Some(p) = resp["patch"].as_str() {
        let patch: json_patch::Patch =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).unwrap())
                .unwrap();
        json_patch::patch(&mut stored, &patch).expect("the response's patch applies");
    }
    Some(stored)
}

/// What an update does to the live object.
#[derive(Debug, Clone)]
enum Op {
    Set(&'static str, &'static str),
    Remove(&'static str),
    Image(u8),
    /// `kubectl apply` of a desired object over the live one: sets what it
    /// states, removes nothing.
    PartialApply(Vec<(&'static str, &'static str)>),
}

fn op() -> impl Strategy<Value = Op> {
    let var = prop::sample::select(VARS.to_vec());
    let value = prop::sample::select(vec![
        "Always",
        "Never",
        "CrossSubnet",
        "always",
        "true",
        "false",
        "",
        "none",
        "bird",
        "vxlan",
        "sometimes",
    ]);
    prop_oneof![
        4 => (var.clone(), value.clone()).prop_map(|(n, v)| Op::Set(n, v)),
        2 => var.clone().prop_map(Op::Remove),
        1 => (0u8..4).prop_map(Op::Image),
        2 => prop::collection::vec((var, value), 1..4).prop_map(Op::PartialApply),
    ]
}

fn apply_op(live: &Value, op: &Op) -> Value {
    let mut env = env_of(live);
    let mut image = image_of(live);
    match op {
        Op::Set(n, v) => {
            env.insert(n.to_string(), v.to_string());
        }
        Op::Remove(n) => {
            env.remove(*n);
        }
        Op::Image(i) => image = format!("calico/node:v{i}"),
        Op::PartialApply(vars) => {
            for (n, v) in vars {
                env.insert(n.to_string(), v.to_string());
            }
        }
    }
    let annotations = live["metadata"]["annotations"].clone();
    ds(&env, &image, &annotations)
}

/// What an update from `live` to `new` asks for, variable by variable,
/// laid over what was asked for before.
fn asked_for(wanted: &mut Env, live: &Value, new: &Value) {
    let (before, after) = (env_of(live), env_of(new));
    for n in VARS {
        if before.get(n) != after.get(n) {
            match after.get(n) {
                Some(v) => wanted.insert(n.to_string(), v.clone()),
                None => wanted.remove(n),
            };
        }
    }
}

/// The live object as the release would leave it.
fn effective(live: &Value) -> Value {
    match Record::read(live).unwrap() {
        Some(r) => hold::apply_intent(live, &r).expect("the held change applies"),
        None => live.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("GUARD_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn nothing_lowers_while_a_route_is_missing_and_nothing_asked_for_is_lost(
        ops in prop::collection::vec(op(), 1..12),
        last in op(),
    ) {
        let c = cluster(true);
        let webhook = Webhook { cluster: c.clone(), metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()) };
        let initial_env: Env = [
            ("CALICO_IPV4POOL_IPIP", "Always"), ("CALICO_IPV4POOL_VXLAN", "Never"),
            ("FELIX_IPINIPENABLED", "true"), ("CALICO_NETWORKING_BACKEND", "bird"),
        ].into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let initial = ds(&initial_env, "calico/node:v0", &json!({}));
        let mut live = initial.clone();
        // What the operator asked for, variable by variable.
        let mut wanted_env = initial_env.clone();
        let mut wanted_image = image_of(&initial);

        for op in &ops {
            let new = apply_op(&live, op);
            let Some(stored) = update(&webhook, &live, &new) else {
                continue; // refused: nothing changes
            };
            // The operator's changes, as this update expressed them.
            asked_for(&mut wanted_env, &live, &new);
            if image_of(&live) != image_of(&new) {
                wanted_image = image_of(&new);
            }
            live = stored;
            prop_assert_eq!(
                overlay::detect_switch(CalicoKind::DaemonSet, &initial, &live, Context::NONE).ok().flatten(),
                None,
                "lowered while a node lacks its route: {:?}", env_of(&live)
            );
            let released = effective(&live);
            prop_assert_eq!(env_of(&released), wanted_env.clone(), "after {:?}", op);
            prop_assert_eq!(image_of(&released), wanted_image.clone());
        }

        // The routes are there: the next update (of any kind) goes through,
        // and a switch then carries everything held before it.
        set_routes(&c, false);
        let new = apply_op(&live, &last);
        if let Some(stored) = update(&webhook, &live, &new) {
            let is_switch = overlay::detect_switch(CalicoKind::DaemonSet, &live, &new, Context::NONE)
                .ok().flatten().is_some();
            if is_switch {
                prop_assert!(Record::read(&stored).unwrap().is_none(), "passed, record cleared");
                asked_for(&mut wanted_env, &live, &new);
                prop_assert_eq!(env_of(&stored), wanted_env);
            }
        }
    }
}

/// One node's `NetworkUnavailable` conditions, hostile ones included.
#[derive(Debug, Clone)]
enum NodeStatus {
    Routed,
    NoRoute,
    NoCondition,
    /// RouteCreated, with a transition time the API server accepts but a
    /// timestamp library may not (`9999-12-31T23:59:59Z`), or far ahead.
    RoutedAt(&'static str),
    /// RouteCreated first, then a second condition that says otherwise.
    Duplicate(&'static str, &'static str),
    /// A condition with odd fields.
    Odd(Value),
}

impl NodeStatus {
    fn conditions(&self) -> Value {
        let c = |status: &str, reason: &str, time: &str| json!({"type": "NetworkUnavailable", "status": status, "reason": reason, "lastTransitionTime": time});
        match self {
            Self::Routed => json!([c("False", "RouteCreated", "2020-01-01T00:00:00Z")]),
            Self::NoRoute => json!([c("True", "NoRouteCreated", "2020-01-01T00:00:00Z")]),
            Self::NoCondition => json!([]),
            Self::RoutedAt(t) => json!([c("False", "RouteCreated", t)]),
            Self::Duplicate(status, reason) => json!([
                c("False", "RouteCreated", "2020-01-01T00:00:00Z"),
                c(status, reason, "2020-01-01T00:00:00Z")
            ]),
            Self::Odd(v) => json!([v]),
        }
    }

    /// Whether this node has its route beyond doubt (with a zero settle
    /// time: a transition time ahead of our clock counts from when it was
    /// seen; one that cannot be read blocks).
    fn routed(&self) -> bool {
        match self {
            Self::Routed | Self::Duplicate("False", "RouteCreated") => true,
            Self::RoutedAt(t) => matches!(*t, "9999-12-30T21:59:59Z" | "2999-01-01T00:00:00Z"),
            _ => false,
        }
    }
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        4 => Just(NodeStatus::Routed),
        1 => Just(NodeStatus::NoRoute),
        1 => Just(NodeStatus::NoCondition),
        1 => prop::sample::select(vec!["9999-12-31T23:59:59Z", "9999-12-30T21:59:59Z", "2999-01-01T00:00:00Z", "not a time", ""])
            .prop_map(NodeStatus::RoutedAt),
        1 => prop::sample::select(vec![("True", "NoRouteCreated"), ("False", "CalicoIsUp"), ("True", "CalicoIsDown"), ("False", "RouteCreated"), ("Unknown", "")])
            .prop_map(|(s, r)| NodeStatus::Duplicate(s, r)),
        1 => prop::sample::select(vec![
            json!({"type": "NetworkUnavailable", "status": false, "reason": "RouteCreated"}),
            json!({"type": "NetworkUnavailable", "status": "False", "reason": ["RouteCreated"]}),
            json!({"type": "NetworkUnavailable", "status": "False"}),
            json!({"type": "NetworkUnavailable", "status": "false", "reason": "RouteCreated"}),
            json!({"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated", "lastTransitionTime": 7}),
        ]).prop_map(NodeStatus::Odd),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("GUARD_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    /// Hostile node status never lets a switch through and never fails the
    /// cache: a switch passes only when every node has its route beyond
    /// doubt, and the cache stays synced whatever one node says.
    #[test]
    fn hostile_node_status_never_lets_a_switch_through(nodes in prop::collection::vec(node_status(), 1..6), live in any::<bool>()) {
        let c = cluster(false);
        let feed = |n: &NodeStatus, i: usize| serde_json::from_value::<overlay_switch_webhook::cluster::routes::RouteNode>(
            json!({"metadata": {"name": format!("node-{i}"), "managedFields": [{"time": "9999-12-31T23:59:59Z"}]},
                   "status": {"conditions": n.conditions()}})).unwrap();
        c.routes.relist_begin();
        if live {
            c.routes.relist_done();
            for (i, n) in nodes.iter().enumerate() {
                c.routes.apply(feed(n, i));
            }
        } else {
            for (i, n) in nodes.iter().enumerate() {
                c.routes.relist_apply(feed(n, i));
            }
            c.routes.relist_done();
        }
        prop_assert!(c.routes.snapshot(3).synced, "one node's status never makes the state unknown");
        let webhook = Webhook { cluster: c.clone(), metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()) };
        let env: Env = [("CALICO_IPV4POOL_IPIP", "Always")].into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let old = ds(&env, "v", &json!({}));
        let lowered: Env = [("CALICO_IPV4POOL_IPIP", "Never")].into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let new = ds(&lowered, "v", &json!({}));
        let stored = update(&webhook, &old, &new).expect("admitted (held or passed)");
        let passed = env_of(&stored).get("CALICO_IPV4POOL_IPIP").map(String::as_str) == Some("Never");
        let all_routed = nodes.iter().all(NodeStatus::routed);
        if passed {
            prop_assert!(all_routed, "passed with {:?}", nodes);
        }
        // With a settle time of zero and past transition times, a cluster
        // whose nodes all have their routes lets it through at once (a live
        // route counts from when it was seen, which is now).
        if all_routed {
            prop_assert!(passed, "held although every node has its route: {:?}", nodes);
        }
    }
}

/// The release controller's markers (`overlay-switch-action: release` or
/// `cancel`) count only from its own user and only on the write it makes:
/// forged by anyone else, they neither drop nor pass a held switch.
#[test]
fn forged_release_and_cancel_markers_count_for_nothing() {
    const ACTION: &str = "calico.networking.extensions.gardener.cloud/overlay-switch-action";
    let c = cluster(true);
    c.own_user
        .set("system:serviceaccount:overlay-switch:webhook".into());
    let webhook = Webhook {
        cluster: c.clone(),
        metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
    };
    let env = |v: &str| -> Env { [("CALICO_IPV4POOL_IPIP".to_string(), v.to_string())].into() };
    let initial = ds(&env("Always"), "v", &json!({}));
    let held = update(&webhook, &initial, &ds(&env("Never"), "v", &json!({}))).unwrap();
    assert!(Record::read(&held).unwrap().is_some(), "held");
    let mut annotations = held["metadata"]["annotations"].clone();

    // A forged cancel (metadata only): the record stays, the marker goes.
    annotations[ACTION] = json!("cancel");
    let after = update(&webhook, &held, &ds(&env("Always"), "v", &annotations)).unwrap();
    assert!(Record::read(&after).unwrap().is_some(), "record kept");
    assert!(after["metadata"]["annotations"].get(ACTION).is_none());

    // A forged release carrying the switch: held like any switch.
    annotations[ACTION] = json!("release");
    let after = update(&webhook, &held, &ds(&env("Never"), "v", &annotations)).unwrap();
    assert_eq!(env_of(&after)["CALICO_IPV4POOL_IPIP"], "Always");
    assert!(Record::read(&after).unwrap().is_some());
}

/// Reviews about objects the watches have not shown (anyone who reaches the
/// webhook can post one, for any name) make no state: no local hold note,
/// no Event, and a real switch later is not said to join them.
#[test]
fn reviews_about_objects_no_watch_has_shown_make_no_state() {
    let c = cluster(true);
    let pool = |name: &str, mode: &str| {
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
               "metadata": {"name": name, "uid": format!("uid-{name}")},
               "spec": {"cidr": "100.64.0.0/12", "ipipMode": mode, "natOutgoing": true}})
    };
    let pools = c.held.store(CalicoKind::IpPool);
    pools.relist_begin();
    pools.relist_apply(serde_json::from_value(pool("default-ipv4-ippool", "Always")).unwrap());
    pools.relist_done();
    let webhook = Webhook {
        cluster: c.clone(),
        metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
    };
    let review = |name: &str| {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "crd.projectcalico.org", "version": "v1", "kind": "IPPool"},
                "resource": {"group": "crd.projectcalico.org", "version": "v1", "resource": "ippools"},
                "name": name, "operation": "UPDATE", "userInfo": {"username": "intruder"},
                "object": pool(name, "Never"), "oldObject": pool(name, "Always"), "dryRun": false
            }
        })
        .to_string()
    };
    for name in ["ghost-0".to_string(), "ghost-1".into(), "g".repeat(300_000)] {
        let (_, outcome) = webhook.review(review(&name).as_bytes());
        assert_eq!(outcome.verdict, "held", "node-b has no route");
        assert!(
            outcome.key.is_none(),
            "no Event about an object never shown"
        );
    }
    assert_eq!(c.held.held().unwrap(), vec![], "nothing noted as held");
    // The real pool, once every node has its route: passes on its own.
    set_routes(&c, false);
    let (bytes, outcome) = webhook.review(review("default-ipv4-ippool").as_bytes());
    let resp: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(outcome.verdict, "passed", "{resp}");
    assert!(resp["response"]["patch"].is_null(), "{resp}");
    assert!(outcome.key.is_some(), "a real object's outcome names it");
}
