//! `overlay-switch-webhook status`: what the guard sees for a cluster, read
//! once with a kubeconfig. Exit code 0: nothing held; 1: a switch is held;
//! 2: error.

use crate::calico::overlay::CalicoKind;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams};
use serde::Serialize;

use crate::cli::scrape::KeptCount;
use crate::cluster::Settings;
use crate::cluster::gate::{self, Gate};
use crate::cluster::held::{CalicoKindName, ObjectKey};
use crate::cluster::hold::{self, Record};
use crate::cluster::release::api;
use crate::cluster::routes::{Blocker, NodeRoute, RouteCache, RouteNode};
use crate::cluster::toggle::Toggle;
use crate::cluster::watch::Store as _;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: crate::cli::serve::ClusterArgs,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
    /// The server's /metrics (plain HTTP), to show how many calico-node
    /// writes of NetworkUnavailable it kept since its start; repeatable, one
    /// per replica (summed). Without it that count shows as unknown.
    #[arg(long = "metrics-url", value_name = "URL")]
    pub metrics_urls: Vec<String>,
    /// Instead of the status: list the nodes whose NetworkUnavailable
    /// condition Calico wrote (CalicoIsUp, CalicoIsDown), so that they can
    /// be removed and the route controller writes its own. Dry unless
    /// --apply. Exit code 0: none (or all removed); 1: some listed; 2: error.
    #[arg(long)]
    pub fix_conditions: bool,
    /// Gardener mode (--kubeconfig is the seed's): one row per shoot, read
    /// through its access Secret; with --shoot, the detail of that shoot.
    #[arg(long, conflicts_with = "fix_conditions")]
    pub gardener: bool,
    /// With --gardener: the shoot namespace to show in detail.
    #[arg(long, requires = "gardener", value_name = "NAMESPACE")]
    pub shoot: Option<String>,
    #[command(flatten)]
    pub access: crate::cli::serve::ShootAccessArgs,
    /// With --fix-conditions: remove them (a JSON patch of nodes/status
    /// that tests each condition first). Needs `patch` on `nodes/status`.
    #[arg(long, requires = "fix_conditions")]
    pub apply: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub guard: bool,
    pub cancel_requested: bool,
    pub force_requested: bool,
    pub nodes_total: usize,
    pub nodes_with_route: usize,
    pub nodes: Vec<NodeStatus>,
    pub gate_open: bool,
    pub gate_reason: Option<String>,
    pub held: Vec<HeldStatus>,
    /// calico-node writes of NetworkUnavailable the server did not apply,
    /// read from its /metrics (`--metrics-url`).
    pub calico_writes_kept: KeptCount,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub route: bool,
    /// Status of the NetworkUnavailable condition (`None`: no condition).
    pub condition_status: Option<String>,
    pub reason: Option<String>,
    /// Why the node blocks, in words (`None` when it has its route).
    pub why: Option<String>,
    pub since: Option<String>,
    pub deleting: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldStatus {
    pub object: String,
    pub since: Option<String>,
    pub reason: String,
    /// Why the recorded change no longer applies, if it does not.
    pub conflict: Option<String>,
}

pub async fn collect(client: &kube::Client, settings: &Settings) -> anyhow::Result<Status> {
    let ns = Api::<Namespace>::all(client.clone())
        .get_opt(&settings.calico_namespace)
        .await?;
    let toggle = ns
        .map(|n| Toggle::from_annotations(n.metadata.annotations.as_ref()))
        .unwrap_or(Toggle {
            synced: true,
            ..Default::default()
        });

    let cache = RouteCache::new(settings.required_reason.clone());
    // Read leniently, like the watch: one node's odd status is that node's
    // problem (it shows as blocking), not a failed command.
    let nodes = Api::<RouteNode>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    cache.relist_begin();
    for n in nodes.items {
        cache.relist_apply(n);
    }
    cache.relist_done();
    let snapshot = cache.snapshot(settings.max_named_nodes);
    let gate = gate::routes_gate(&snapshot, settings.settle, Timestamp::now());

    let mut objects: Vec<(ObjectKey, DynamicObject)> = Vec::new();
    for (kind, name) in [
        (CalicoKindName::ConfigMap, &settings.configmap_name),
        (CalicoKindName::DaemonSet, &settings.daemonset_name),
    ] {
        let key = ObjectKey {
            kind,
            namespace: Some(settings.calico_namespace.clone()),
            name: name.clone(),
        };
        if let Some(o) = api(client, &key).get_opt(name).await? {
            objects.push((key, o));
        }
    }
    for kind in [
        CalicoKind::IpPool,
        CalicoKind::IpPoolV3,
        CalicoKind::FelixConfiguration,
        CalicoKind::FelixConfigurationV3,
        CalicoKind::Installation,
    ] {
        match Api::<DynamicObject>::all_with(client.clone(), &crate::cluster::resource(kind))
            .list(&ListParams::default())
            .await
        {
            Ok(list) => {
                for o in list.items {
                    let key = ObjectKey {
                        kind: kind.into(),
                        namespace: None,
                        name: o.metadata.name.clone().unwrap_or_default(),
                    };
                    objects.push((key, o));
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {} // not served here
            Err(e) => return Err(e.into()),
        }
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));

    let mut held = Vec::new();
    for (key, obj) in objects {
        let value = serde_json::to_value(&obj)?;
        match Record::read(&value) {
            Ok(None) => {}
            Ok(Some(r)) => held.push(HeldStatus {
                object: key.to_string(),
                since: Some(hold::format_time(r.since)),
                reason: r.reason.clone(),
                conflict: r
                    .check_scope(key.kind.into())
                    .and_then(|()| hold::released(&value, &r, "release"))
                    .err()
                    .map(|c| c.to_string()),
            }),
            Err(e) => held.push(HeldStatus {
                object: key.to_string(),
                since: None,
                reason: String::new(),
                conflict: Some(e.to_string()),
            }),
        }
    }

    Ok(Status {
        guard: toggle.guard,
        cancel_requested: toggle.cancel,
        force_requested: toggle.force,
        nodes_total: snapshot.total,
        nodes_with_route: snapshot.with_route,
        nodes: cache
            .nodes()
            .into_iter()
            .map(|(name, r)| node_status(name, r, &settings.required_reason))
            .collect(),
        gate_open: gate.is_open(),
        gate_reason: match gate {
            Gate::Open => None,
            Gate::Closed(w) => Some(w),
        },
        held,
        calico_writes_kept: KeptCount::default(),
    })
}

fn node_status(name: String, r: NodeRoute, required_reason: &str) -> NodeStatus {
    let (condition_status, reason) = match &r.route {
        Ok(_) => (Some("False".to_string()), Some(required_reason.to_string())),
        Err(Blocker::NoCondition) => (None, None),
        Err(Blocker::NoRouteCreated) => (Some("True".into()), Some("NoRouteCreated".into())),
        Err(Blocker::Other { status, reason } | Blocker::OneOfSeveral { status, reason, .. }) => {
            (Some(status.clone()), Some(reason.clone()))
        }
        Err(Blocker::UnreadableTime { .. }) => {
            (Some("False".to_string()), Some(required_reason.to_string()))
        }
        Err(Blocker::Unreadable { .. }) => (None, None),
    };
    NodeStatus {
        name,
        route: r.route.is_ok(),
        condition_status,
        reason,
        why: r.route.as_ref().err().map(ToString::to_string),
        since: r.route.ok().map(|r| hold::format_time(r.since)),
        deleting: r.deleting,
    }
}

pub fn render_text(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!("guard:  {}\n", if s.guard { "on" } else { "off" }));
    if s.cancel_requested {
        out.push_str("cancel: requested (not yet honoured)\n");
    }
    if s.force_requested {
        out.push_str("force:  requested (not yet honoured)\n");
    }
    out.push_str(&format!(
        "gate:   {}\n",
        match &s.gate_reason {
            None => "open".to_string(),
            Some(w) => format!("closed: {w}"),
        }
    ));
    out.push_str(&format!(
        "nodes:  {} of {} with route\n",
        s.nodes_with_route, s.nodes_total
    ));
    out.push_str(&format!(
        "calico writes kept: {}\n\n",
        s.calico_writes_kept.describe()
    ));
    let w = s
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let r = s
        .nodes
        .iter()
        .filter_map(|n| n.reason.as_ref().map(String::len))
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "{:<w$}  {:<5}  {:<6}  {:<r$}  {:<20}  {}\n",
        "NODE", "ROUTE", "STATUS", "REASON", "SINCE", "NOTE"
    ));
    for n in &s.nodes {
        let note = match (&n.why, n.deleting) {
            (Some(why), true) => format!("{why}; deleting"),
            (Some(why), false) => why.clone(),
            (None, true) => "deleting".into(),
            (None, false) => String::new(),
        };
        out.push_str(
            format!(
                "{:<w$}  {:<5}  {:<6}  {:<r$}  {:<20}  {}",
                n.name,
                if n.route { "yes" } else { "no" },
                n.condition_status.as_deref().unwrap_or("-"),
                n.reason.as_deref().unwrap_or("-"),
                n.since.as_deref().unwrap_or("-"),
                note
            )
            .trim_end(),
        );
        out.push('\n');
    }
    out.push('\n');
    if s.held.is_empty() {
        out.push_str("held:   nothing\n");
    } else {
        out.push_str("held:\n");
        for h in &s.held {
            out.push_str(&format!(
                "  {}  since {}  ({})\n",
                h.object,
                h.since.as_deref().unwrap_or("?"),
                h.reason
            ));
            if let Some(c) = &h.conflict {
                out.push_str(&format!("    CONFLICT: {c}\n"));
            }
        }
    }
    out
}

/// Runs the command; returns the exit code.
pub async fn run(args: StatusArgs) -> anyhow::Result<u8> {
    let client = crate::cli::serve::client(args.kubeconfig.as_deref()).await?;
    if args.fix_conditions {
        let report = crate::cli::fix_conditions::run(&client, args.apply).await?;
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            Output::Text => print!("{}", crate::cli::fix_conditions::render_text(&report)),
        }
        return Ok(crate::cli::fix_conditions::exit_code(&report));
    }
    let settings = args.cluster.settings();
    let mut status = collect(&client, &settings).await?;
    status.calico_writes_kept = crate::cli::scrape::kept(&args.metrics_urls).await;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Text => print!("{}", render_text(&status)),
    }
    Ok(if status.held.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::routes::Route;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn the_node_table_has_status_reason_and_since() {
        let t = Timestamp::from_second(1_780_000_000).unwrap();
        let nodes = vec![
            node_status(
                "a".into(),
                NodeRoute {
                    route: Ok(Route {
                        since: t,
                        reported: Some(t),
                    }),
                    deleting: false,
                },
                "RouteCreated",
            ),
            node_status(
                "b".into(),
                NodeRoute {
                    route: Err(Blocker::NoCondition),
                    deleting: false,
                },
                "RouteCreated",
            ),
            node_status(
                "c".into(),
                NodeRoute {
                    route: Err(Blocker::NoRouteCreated),
                    deleting: true,
                },
                "RouteCreated",
            ),
            node_status(
                "d".into(),
                NodeRoute {
                    route: Err(Blocker::UnreadableTime {
                        time: "9999-12-31T23:59:59Z".into(),
                    }),
                    deleting: false,
                },
                "RouteCreated",
            ),
            node_status(
                "e".into(),
                NodeRoute {
                    route: Err(Blocker::OneOfSeveral {
                        count: 2,
                        status: "True".into(),
                        reason: "NoRouteCreated".into(),
                    }),
                    deleting: false,
                },
                "RouteCreated",
            ),
        ];
        let s = Status {
            guard: true,
            cancel_requested: false,
            force_requested: false,
            nodes_total: 5,
            nodes_with_route: 1,
            nodes,
            gate_open: false,
            gate_reason: Some("2 of 3 nodes have no route yet".into()),
            held: vec![HeldStatus {
                object: "IPPool default-ipv4-ippool".into(),
                since: Some("2026-11-26T10:00:00Z".into()),
                reason: "2 of 3 nodes have no route yet".into(),
                conflict: None,
            }],
            calico_writes_kept: KeptCount {
                total: Some(2),
                by_reason: [("CalicoIsUp".into(), 2)].into(),
                sources: vec!["http://127.0.0.1:8080/metrics".into()],
                error: None,
            },
        };
        let text = render_text(&s);
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}  ")))
                .unwrap()
                .to_string()
        };
        assert!(text.contains("NODE  ROUTE  STATUS  REASON"), "{text}");
        assert!(row("a").contains("yes    False   RouteCreated"), "{text}");
        assert!(row("a").contains(&hold::format_time(t)), "{text}");
        assert!(
            row("b").contains("no     -       -")
                && row("b").ends_with("no NetworkUnavailable condition"),
            "{text}"
        );
        assert!(
            row("c").contains("True    NoRouteCreated")
                && row("c").ends_with("NoRouteCreated; deleting"),
            "{text}"
        );
        assert!(
            row("d").contains("no     False   RouteCreated")
                && row("d").ends_with(
                    r#"NetworkUnavailable lastTransitionTime "9999-12-31T23:59:59Z" is unreadable"#
                ),
            "{text}"
        );
        assert!(
            row("e").contains("no     True    NoRouteCreated")
                && row("e")
                    .ends_with("NoRouteCreated in one of its 2 NetworkUnavailable conditions"),
            "{text}"
        );
        assert!(text.contains("gate:   closed: 2 of 3 nodes have no route yet"));
        assert!(
            text.contains("calico writes kept: 2 since start (CalicoIsUp 2)\n"),
            "{text}"
        );
        assert!(text.contains("IPPool default-ipv4-ippool  since 2026-11-26T10:00:00Z"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["nodes"][2]["conditionStatus"], "True");
        assert_eq!(json["nodes"][1]["conditionStatus"], serde_json::Value::Null);
        assert_eq!(json["calicoWritesKept"]["total"], 2);
    }
}
