//! calico-node must not overwrite the route controller's NetworkUnavailable
//! condition (issue #9), on a real kube-apiserver: calico-node's writes are
//! made as its ServiceAccount (`kubectl --as`), exactly as calico-node sends
//! them (a strategic merge patch of nodes/status with one condition).

mod controlplane;
mod e2e_support;

use std::io::Read as _;
use std::process::Stdio;
use std::time::Duration;

use e2e_support::*;
use serde_json::Value;

const KUBE_CONTROLLERS: &str = "system:serviceaccount:kube-system:calico-kube-controllers";
const SOMEONE_ELSE: &str = "system:serviceaccount:kube-system:someone-else";

/// A node's NetworkUnavailable conditions as (status, reason).
fn nu(env: &Env, node: &str) -> Vec<(String, String)> {
    env.network_unavailable(node)
        .iter()
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn pair(status: &str, reason: &str) -> Vec<(String, String)> {
    vec![(status.to_string(), reason.to_string())]
}

fn status_cmd(env: &Env, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--settle-time", "0s"];
    args.extend_from_slice(extra);
    run_status(&["--log-format", "text"], env.cp.kubeconfig(), &args)
}

fn metrics_url(env: &Env) -> String {
    format!("http://127.0.0.1:{}/metrics", env.server.metrics_port)
}

#[test]
fn calico_node_writes_keep_the_route_controllers_condition_and_nothing_else_is_changed() {
    let env = Env::start(&[
        "--calico-node-user",
        CALICO_NODE_USER,
        "--calico-node-user",
        KUBE_CONTROLLERS,
    ]);
    env.register_webhook_for_users(&[CALICO_NODE_USER, KUBE_CONTROLLERS]);
    env.calico_cluster(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::Routed),
            ("node-c", Cond::NoRoute),
            ("node-d", Cond::None),
        ],
        true,
    );
    env.grant_node_status(
        "e2e-node-status",
        &[CALICO_NODE_USER, KUBE_CONTROLLERS, SOMEONE_ELSE],
    );
    env.wait_node_status_webhook_active("node-a", CALICO_NODE_USER);
    let routed = env.network_unavailable("node-a");
    assert_eq!(nu(&env, "node-a"), pair("False", "RouteCreated"));

    // calico-node's shutdown write and its start-up write: the route
    // controller's condition stays, exactly as it was (times included).
    for (status, reason) in [("True", "CalicoIsDown"), ("False", "CalicoIsUp")] {
        let (ok, _, err) =
            env.network_unavailable_write("node-a", status, reason, Some(CALICO_NODE_USER), &[]);
        assert!(ok, "{err}");
        assert!(
            err.contains(
                "NetworkUnavailable of node node-a kept as the route controller wrote it (False, RouteCreated)"
            ),
            "{err}"
        );
        assert_eq!(env.network_unavailable("node-a"), routed, "{reason}");
    }
    // calico-kube-controllers' write (a second configured user) too.
    let (ok, _, err) = env.network_unavailable_write(
        "node-b",
        "True",
        "CalicoIsDown",
        Some(KUBE_CONTROLLERS),
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(nu(&env, "node-b"), pair("False", "RouteCreated"));
    // NoRouteCreated is the route controller's too: Calico's False cannot
    // clear it.
    let (ok, _, err) =
        env.network_unavailable_write("node-c", "False", "CalicoIsUp", Some(CALICO_NODE_USER), &[]);
    assert!(ok, "{err}");
    assert_eq!(nu(&env, "node-c"), pair("True", "NoRouteCreated"));
    // No condition yet: a True write is dropped (the node would be
    // tainted), a False one goes through (it never satisfies the gate).
    let (ok, _, err) = env.network_unavailable_write(
        "node-d",
        "True",
        "CalicoIsDown",
        Some(CALICO_NODE_USER),
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("node node-d has no NetworkUnavailable condition"),
        "{err}"
    );
    assert_eq!(nu(&env, "node-d"), vec![]);
    let (ok, _, err) =
        env.network_unavailable_write("node-d", "False", "CalicoIsUp", Some(CALICO_NODE_USER), &[]);
    assert!(ok && !err.contains("Warning"), "{err}");
    assert_eq!(nu(&env, "node-d"), pair("False", "CalicoIsUp"));
    // The route cache still counts the two routes.
    env.wait_nodes(4, 2);

    // A server-side dry run gets the same answer and counts nothing.
    let before = env.kept("CalicoIsDown");
    let (ok, out, err) = env.network_unavailable_write(
        "node-a",
        "True",
        "CalicoIsDown",
        Some(CALICO_NODE_USER),
        &["--dry-run=server", "-o", "json"],
    );
    assert!(ok, "{err}");
    assert_eq!(network_unavailable_of(&parse_json(&out)), routed);
    assert_eq!(env.kept("CalicoIsDown"), before);

    // A kubelet-style status update by calico-node's user (the whole list,
    // other conditions changed too): everything but NetworkUnavailable is
    // as sent.
    let mut node = env.get_json(&["node", "node-b"]);
    node["status"]["conditions"] = serde_json::json!([
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
         "lastTransitionTime": "2026-06-01T00:00:00Z", "lastHeartbeatTime": "2026-06-01T00:00:00Z"},
        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "ok",
         "lastTransitionTime": "2026-06-01T00:00:00Z", "lastHeartbeatTime": "2026-06-01T00:00:00Z"},
        serde_json::from_str::<Value>(&calico_condition("False", "CalicoIsUp")).unwrap(),
    ]);
    env.kubectl_in(
        &[
            "replace",
            "--subresource=status",
            &format!("--as={CALICO_NODE_USER}"),
            "-f",
            "-",
        ],
        &node.to_string(),
    );
    let stored = env.get_json(&["node", "node-b"]);
    let types: Vec<(&str, &str)> = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("Ready", "KubeletReady"),
            ("MemoryPressure", "KubeletHasSufficientMemory"),
            ("NetworkUnavailable", "RouteCreated"),
        ]
    );

    // Writes by anyone else are never changed: the admin, and a user that
    // is not configured (the registration does not even send them).
    let reviews = env.reviews("Node", "Allowed", false);
    let (ok, _, err) = env.network_unavailable_write("node-a", "True", "CalicoIsDown", None, &[]);
    assert!(ok, "{err}");
    assert_eq!(nu(&env, "node-a"), pair("True", "CalicoIsDown"));
    env.set_node("node-a", Cond::Routed);
    let (ok, _, err) =
        env.network_unavailable_write("node-a", "False", "CalicoIsUp", Some(SOMEONE_ELSE), &[]);
    assert!(ok, "{err}");
    assert_eq!(nu(&env, "node-a"), pair("False", "CalicoIsUp"));
    assert_eq!(
        env.reviews("Node", "Allowed", false),
        reviews,
        "never sent to the webhook"
    );
    env.set_node("node-a", Cond::Routed);

    // What was kept is counted by a fixed reason, and `status` shows it.
    assert_eq!(env.kept("CalicoIsDown"), 3.0);
    assert_eq!(env.kept("CalicoIsUp"), 3.0);
    assert_eq!(env.kept("Other"), 0.0);
    let (code, text, err) = status_cmd(&env, &["--metrics-url", &metrics_url(&env)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("calico writes kept: 6 since start (CalicoIsDown 3, CalicoIsUp 3)\n"),
        "{text}"
    );
    let (code, text, _) = status_cmd(&env, &[]);
    assert_eq!(code, 0);
    assert!(
        text.contains("calico writes kept: unknown (the server counts them; pass --metrics-url"),
        "{text}"
    );
    // One debug line per kept condition, never an Event.
    let log = env.server.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("NetworkUnavailable write not applied")
                && !l.contains("\"dry_run\":true"))
            .count(),
        6,
        "{log}"
    );
    assert_eq!(
        env.kubectl(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "involvedObject.kind=Node",
            "-o",
            "name"
        ]),
        ""
    );

    // With the guard off nothing is changed.
    env.set_guard(false);
    let (ok, _, err) = env.network_unavailable_write(
        "node-b",
        "True",
        "CalicoIsDown",
        Some(CALICO_NODE_USER),
        &[],
    );
    assert!(ok && !err.contains("Warning"), "{err}");
    assert_eq!(nu(&env, "node-b"), pair("True", "CalicoIsDown"));
    assert_eq!(env.kept("CalicoIsDown"), 3.0);
}

/// `kubectl get nodes --watch -o json` into a file, until dropped.
struct NodeWatch {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl NodeWatch {
    fn start(env: &Env, nodes: usize) -> NodeWatch {
        let out = env.dir.path().join("node-watch.json");
        let child = env
            .cp
            .kubectl()
            .args(["get", "nodes", "--watch", "-o", "json"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let w = NodeWatch { child, out };
        eventually(
            "the watch lists every node",
            Duration::from_secs(20),
            || (w.objects().len() >= nodes).then_some(()),
        );
        w
    }

    /// Every Node the watch has printed so far, in order.
    fn objects(&self) -> Vec<Value> {
        let mut text = String::new();
        std::fs::File::open(&self.out)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect()
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_release_then_calico_restarting_on_every_node_flips_no_route_condition() {
    let env = Env::start(&["--settle-time", "1s"]);
    let nodes = ["node-a", "node-b", "node-c"];
    env.calico_cluster(
        &[
            ("node-a", Cond::Routed),
            ("node-b", Cond::NoRoute),
            ("node-c", Cond::None),
        ],
        true,
    );
    env.grant_node_status("e2e-calico-node", &[CALICO_NODE_USER]);
    env.wait_node_status_webhook_active("node-a", CALICO_NODE_USER);

    // The switch is held until every node has its route, then released.
    for f in NATIVE {
        let (ok, _, err) = env.apply(f, &[]);
        assert!(ok && err.contains("overlay switch held"), "{f}: {err}");
    }
    env.set_node("node-b", Cond::Routed);
    env.set_node("node-c", Cond::Routed);
    eventually("the release", Duration::from_secs(30), || {
        let ds = env.get_json(&["-n", "kube-system", "daemonset", "calico-node"]);
        (env_value(&ds, "CALICO_IPV4POOL_IPIP").as_deref() == Some("Never")).then_some(())
    });
    let routed: Vec<Vec<Value>> = nodes.iter().map(|n| env.network_unavailable(n)).collect();

    // The new template rolls calico-node on every node: each stops
    // (CalicoIsDown, True) and starts (CalicoIsUp, False).
    let watch = NodeWatch::start(&env, nodes.len());
    for n in nodes {
        for (status, reason) in [("True", "CalicoIsDown"), ("False", "CalicoIsUp")] {
            let (ok, _, err) =
                env.network_unavailable_write(n, status, reason, Some(CALICO_NODE_USER), &[]);
            assert!(ok, "{n} {reason}: {err}");
        }
    }
    // A sentinel the watch must show, so that it has shown everything before it.
    env.kubectl(&["annotate", "node", "node-c", "e2e-sentinel=1"]);
    eventually(
        "the watch reaches the sentinel",
        Duration::from_secs(20),
        || {
            watch
                .objects()
                .iter()
                .any(|o| o.pointer("/metadata/annotations/e2e-sentinel").is_some())
                .then_some(())
        },
    );
    let seen = watch.objects();
    drop(watch);
    for o in &seen {
        let name = o["metadata"]["name"].as_str().unwrap();
        let i = nodes.iter().position(|n| *n == name).unwrap();
        assert_eq!(
            network_unavailable_of(o),
            routed[i],
            "{name} changed its route condition at resourceVersion {}",
            o["metadata"]["resourceVersion"]
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(env.network_unavailable(n), routed[i], "{n}");
        assert_eq!(nu(&env, n), pair("False", "RouteCreated"));
    }
    env.wait_nodes(3, 3);
    assert_eq!(env.kept("CalicoIsDown"), 3.0);
    assert_eq!(env.kept("CalicoIsUp"), 3.0);
    let (code, text, err) = status_cmd(&env, &["--metrics-url", &metrics_url(&env)]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("gate:   open"), "{text}");
    assert!(text.contains("nodes:  3 of 3 with route"), "{text}");
    assert!(
        text.contains("calico writes kept: 6 since start (CalicoIsDown 3, CalicoIsUp 3)"),
        "{text}"
    );
}

#[test]
fn fix_conditions_removes_calicos_conditions_and_a_down_webhook_blocks_no_calico_write() {
    let mut env = Env::start(&[]);
    env.calico_cluster(
        &[
            ("node-a", Cond::Other("False", "CalicoIsUp")),
            ("node-b", Cond::Other("True", "CalicoIsDown")),
            ("node-c", Cond::Routed),
        ],
        true,
    );
    // A Ready condition beside Calico's, which the cleanup must leave alone.
    env.kubectl(&[
        "patch",
        "node",
        "node-a",
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z","lastHeartbeatTime":"2026-01-01T00:00:00Z"}]}}"#,
    ]);

    // Run as a ServiceAccount with only what the README documents: list
    // nodes (the helper grants get/list/watch), patch nodes/status.
    let kubeconfig = sa_kubeconfig(&env.cp, env.dir.path(), &[("nodes", "")]);
    env.kubectl_in(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: e2e-fix-conditions\nrules:\n\
         - apiGroups: [\"\"]\n  resources: [\"nodes/status\"]\n  verbs: [patch]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: e2e-fix-conditions\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: e2e-fix-conditions\n\
         subjects:\n- kind: ServiceAccount\n  name: osw-e2e\n  namespace: default\n",
    );
    let run = |extra: &[&str]| {
        let mut args = vec!["--fix-conditions"];
        args.extend_from_slice(extra);
        run_status(&[], &kubeconfig, &args)
    };

    // Dry by default: listed, nothing changed.
    let (code, text, err) = run(&[]);
    assert_eq!(code, 1, "{text}{err}");
    assert!(
        text.contains("node-a  False   CalicoIsUp    would remove"),
        "{text}"
    );
    assert!(
        text.contains("node-b  True    CalicoIsDown  would remove"),
        "{text}"
    );
    assert!(!text.contains("node-c"), "{text}");
    assert!(text.contains("run again with --apply"), "{text}");
    assert_eq!(nu(&env, "node-a"), pair("False", "CalicoIsUp"));

    let (code, text, err) = run(&["--apply"]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.contains("node-a  False   CalicoIsUp    removed"),
        "{text}"
    );
    assert!(
        text.contains("node-b  True    CalicoIsDown  removed"),
        "{text}"
    );
    assert_eq!(nu(&env, "node-a"), vec![]);
    assert_eq!(nu(&env, "node-b"), vec![]);
    assert_eq!(nu(&env, "node-c"), pair("False", "RouteCreated"));
    assert_eq!(
        env.get(
            &["node", "node-a"],
            r#"{.status.conditions[?(@.type=="Ready")].reason}"#
        ),
        "KubeletReady"
    );
    let (code, text, _) = run(&["-o", "json"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(parse_json(&text)["conditions"], serde_json::json!([]));

    // The route controller writes its own; calico-node's restart keeps it.
    env.set_node("node-a", Cond::Routed);
    env.grant_node_status("e2e-calico-node", &[CALICO_NODE_USER]);
    env.wait_node_status_webhook_active("node-a", CALICO_NODE_USER);
    let (ok, _, err) = env.network_unavailable_write(
        "node-a",
        "True",
        "CalicoIsDown",
        Some(CALICO_NODE_USER),
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(nu(&env, "node-a"), pair("False", "RouteCreated"));

    // The webhook down (failurePolicy Ignore): calico-node's write is not
    // blocked, it goes through as sent.
    env.server.stop();
    let (ok, _, err) = env.network_unavailable_write(
        "node-c",
        "True",
        "CalicoIsDown",
        Some(CALICO_NODE_USER),
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(nu(&env, "node-c"), pair("True", "CalicoIsDown"));
}
