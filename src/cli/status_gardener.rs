//! `overlay-switch-webhook status --gardener`: every shoot of the seed with
//! its guard (from its Shoot), registration, routes, gate and held objects,
//! each read through the shoot's access Secret; `--shoot NS` gives the
//! single-cluster detail of one shoot.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt as _};
use serde::Serialize;

use super::serve::ShootAccessArgs;
use super::serve_gardener::cluster_resource;
use super::status::{Output, Status, StatusArgs, collect, render_text};
use crate::cluster::Settings;
use crate::gardener::shoot::{Guard, guard_of};
use crate::gardener::{access, registration};

/// How long one shoot may take to answer.
const SHOOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many shoots are read at once.
const PARALLEL: usize = 16;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShootRow {
    pub shoot: String,
    /// on, off, hibernated, deleting, unreadable (from the Shoot's annotation).
    pub guard: String,
    /// Whether its registration (ManagedResource) exists in the seed.
    pub registered: bool,
    /// The shoot as `status` shows a cluster; `None` when it could not be read.
    pub status: Option<Status>,
    /// Why it could not be read.
    pub error: Option<String>,
}

impl ShootRow {
    fn holds(&self) -> bool {
        self.status.as_ref().is_some_and(|s| !s.held.is_empty())
    }
}

async fn shoot_client(seed: &Client, ns: &str, args: &ShootAccessArgs) -> anyhow::Result<Client> {
    let (secret, kubeconfig) = access::read(seed, ns, &args.access()).await?;
    Ok(access::client(ns, &secret, &kubeconfig).await?)
}

/// The shoot's status as the guard sees it: the guard from its Shoot.
async fn shoot_status(
    seed: &Client,
    ns: &str,
    guard: &Guard,
    args: &ShootAccessArgs,
    settings: &Settings,
) -> anyhow::Result<Status> {
    let read = async {
        let client = shoot_client(seed, ns, args).await?;
        collect(&client, settings).await
    };
    let mut status = tokio::time::timeout(SHOOT_TIMEOUT, read)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the shoot's API server did not answer within {SHOOT_TIMEOUT:?}")
        })??;
    status.guard = guard.guarded() == Some(true);
    Ok(status)
}

pub async fn rows(
    seed: &Client,
    args: &ShootAccessArgs,
    settings: &Settings,
    only: Option<&str>,
) -> anyhow::Result<Vec<ShootRow>> {
    let clusters = Api::<DynamicObject>::all_with(seed.clone(), &cluster_resource())
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("listing the seed's Gardener Clusters: {e}"))?;
    let registered: BTreeSet<String> = registration::registered(seed, &args.names())
        .await
        .map_err(|e| anyhow::anyhow!("listing the shoots' registrations: {e}"))?
        .into_iter()
        .collect();
    let shoots: Vec<(String, Guard)> = clusters
        .items
        .iter()
        .map(|c| {
            let value = serde_json::to_value(c).unwrap_or_default();
            (c.name_any(), guard_of(&value))
        })
        .filter(|(ns, _)| only.is_none_or(|o| o == ns))
        .collect();
    if let Some(o) = only {
        anyhow::ensure!(!shoots.is_empty(), "the seed has no Gardener Cluster {o:?}");
    }
    let mut rows: Vec<ShootRow> = futures::stream::iter(shoots)
        .map(|(ns, guard)| {
            let registered = registered.contains(&ns);
            async move {
                let read = shoot_status(seed, &ns, &guard, args, settings).await;
                ShootRow {
                    guard: guard.as_str().into(),
                    registered,
                    error: read.as_ref().err().map(|e| format!("{e:#}")),
                    status: read.ok(),
                    shoot: ns,
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    rows.sort_by(|a, b| a.shoot.cmp(&b.shoot));
    Ok(rows)
}

pub fn render_table(rows: &[ShootRow]) -> String {
    let mut table = vec![[
        "SHOOT".to_string(),
        "GUARD".into(),
        "REGISTERED".into(),
        "ROUTED".into(),
        "HELD".into(),
        "GATE".into(),
    ]];
    for r in rows {
        let (routed, gate, held) = match &r.status {
            Some(s) => (
                format!("{}/{}", s.nodes_with_route, s.nodes_total),
                if s.gate_open {
                    "open".to_string()
                } else {
                    format!("closed: {}", s.gate_reason.as_deref().unwrap_or("unknown"))
                },
                if s.held.is_empty() {
                    "-".to_string()
                } else {
                    s.held
                        .iter()
                        .map(|h| h.object.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            None => (
                "?".into(),
                format!("unknown: {}", r.error.as_deref().unwrap_or("?")),
                "?".into(),
            ),
        };
        let registered = if r.registered { "yes" } else { "no" };
        table.push([
            r.shoot.clone(),
            r.guard.clone(),
            registered.into(),
            routed,
            held,
            gate,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 5 {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Exit code: 1 when any shoot holds a switch; else 2 when a shoot could not
/// be read (what it holds is unknown), except a hibernated one (its API
/// server is down by design, and nothing can change in it); else 0.
pub fn exit_code(rows: &[ShootRow]) -> u8 {
    if rows.iter().any(ShootRow::holds) {
        1
    } else if rows
        .iter()
        .any(|r| r.status.is_none() && r.guard != "hibernated")
    {
        2
    } else {
        0
    }
}

/// `status --gardener`: runs the command; returns the exit code.
pub async fn run(args: StatusArgs) -> anyhow::Result<u8> {
    let client = crate::cli::serve::client(args.kubeconfig.as_deref()).await?;
    let settings = args.cluster.settings();
    let rows = rows(&client, &args.access, &settings, args.shoot.as_deref()).await?;
    if let (Some(_), [row]) = (&args.shoot, rows.as_slice()) {
        let Some(status) = &row.status else {
            anyhow::bail!(
                "shoot {}: {}",
                row.shoot,
                row.error.as_deref().unwrap_or("cannot be read")
            );
        };
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&row)?),
            Output::Text => print!(
                "shoot:  {} (guard from its Shoot: {}; registered: {})\n{}",
                row.shoot,
                row.guard,
                if row.registered { "yes" } else { "no" },
                render_text(status)
            ),
        }
    } else {
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Output::Text => print!("{}", render_table(&rows)),
        }
    }
    Ok(exit_code(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::scrape::KeptCount;
    use crate::cli::status::HeldStatus;

    fn status(held: &[&str], routed: usize, total: usize) -> Status {
        Status {
            guard: true,
            cancel_requested: false,
            force_requested: false,
            nodes_total: total,
            nodes_with_route: routed,
            nodes: vec![],
            gate_open: routed == total,
            gate_reason: (routed != total)
                .then(|| format!("{} of {total} nodes have no route yet", total - routed)),
            held: held
                .iter()
                .map(|h| HeldStatus {
                    object: h.to_string(),
                    since: None,
                    reason: "x".into(),
                    conflict: None,
                })
                .collect(),
            calico_writes_kept: KeptCount::default(),
        }
    }

    #[test]
    fn one_row_per_shoot_and_the_exit_code_says_whether_any_holds() {
        let rows = vec![
            ShootRow {
                shoot: "shoot--p--a".into(),
                guard: "on".into(),
                registered: true,
                status: Some(status(&["IPPool default-ipv4-ippool"], 1, 2)),
                error: None,
            },
            ShootRow {
                shoot: "shoot--p--b".into(),
                guard: "off".into(),
                registered: false,
                status: Some(status(&[], 2, 2)),
                error: None,
            },
            ShootRow {
                shoot: "shoot--p--c".into(),
                guard: "on".into(),
                registered: true,
                status: None,
                error: Some("connection refused".into()),
            },
        ];
        let text = render_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "SHOOT        GUARD  REGISTERED  ROUTED  HELD                        GATE",
                "shoot--p--a  on     yes         1/2     IPPool default-ipv4-ippool  closed: 1 of 2 nodes have no route yet",
                "shoot--p--b  off    no          2/2     -                           open",
                "shoot--p--c  on     yes         ?       ?                           unknown: connection refused",
            ]
        );
        assert_eq!(exit_code(&rows), 1);
        assert_eq!(exit_code(&rows[1..2]), 0);
        assert_eq!(exit_code(&rows[1..]), 2, "shoot c's holds are unknown");
        let mut hibernated = rows;
        hibernated[2].guard = "hibernated".into();
        assert_eq!(exit_code(&hibernated[1..]), 0);
    }
}
