//! Keeps the shoots in line with their `Cluster`s: stops shoots whose
//! holds are gone, and keeps each registration (ManagedResource + Secret)
//! present exactly while [`super::shoot::plan`] wants it, current with the
//! CA bundle (re-read from its file) and the server's address.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;

use super::path_token::PathKey;
use super::registration::{self, Names};
use super::shoots::Shoots;

/// What every registration is made of.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    pub names: Names,
    /// `https://host:port`, where the shoots' API servers reach this server.
    pub base_url: String,
    /// The CA bundle (PEM) written into every registration.
    pub ca_file: PathBuf,
    /// calico-node's users, for the node-status webhook.
    pub calico_node_users: Vec<String>,
    /// Makes each shoot's path token (`None`: paths without tokens).
    pub path_key: Option<PathKey>,
}

/// How often, besides every `Cluster` change, the shoots are looked at.
const TICK: Duration = Duration::from_secs(2);
/// How often the registrations in the seed are listed (to remove any this
/// server no longer wants) and all wanted ones written again.
const RESYNC: Duration = Duration::from_secs(300);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Retry {
    at: BTreeMap<String, (Instant, Duration)>,
}

impl Retry {
    fn due(&self, ns: &str, now: Instant) -> bool {
        self.at.get(ns).is_none_or(|(at, _)| now >= *at)
    }
    fn failed(&mut self, ns: &str, now: Instant) -> Duration {
        let d = self
            .at
            .get(ns)
            .map_or(Duration::from_secs(2), |(_, d)| (*d * 2).min(RETRY_MAX));
        self.at.insert(ns.to_string(), (now + d, d));
        d
    }
    fn ok(&mut self, ns: &str) {
        self.at.remove(ns);
    }
}

/// Runs until the task is dropped.
pub async fn run(shoots: Arc<Shoots>, seed: Client, config: RegistrationConfig) {
    let mut applied: BTreeMap<String, String> = BTreeMap::new();
    let mut retry = Retry::default();
    let mut ca: Option<String> = None;
    let mut last_resync: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shoots.changed() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        // Which shoots want a registration: only from a whole view.
        let Some(pass) = shoots.sync_all() else {
            continue;
        };
        let plans = pass.plans;
        match tokio::fs::read_to_string(&config.ca_file).await {
            Ok(pem) if ca.as_deref() != Some(pem.as_str()) => {
                if ca.is_some() {
                    tracing::info!(file = %config.ca_file.display(), "CA bundle changed; updating every registration");
                }
                ca = Some(pem);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(file = %config.ca_file.display(), %error, "cannot read the CA bundle; registrations keep the last one read")
            }
        }
        let Some(ca_pem) = &ca else { continue };
        let now = Instant::now();
        if last_resync.is_none_or(|t| now.duration_since(t) >= RESYNC) {
            match registration::registered(&seed, &config.names).await {
                Ok(present) => {
                    last_resync = Some(now);
                    // Written again at this pass; anything present and
                    // unwanted (an earlier run's) is removed below.
                    applied.clear();
                    for ns in present {
                        applied.entry(ns).or_default();
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot list the registrations in the seed; retrying")
                }
            }
        }
        for (ns, plan) in &plans {
            if plan.register != Some(true) || !retry.due(ns, now) {
                continue;
            }
            let rendered = match registration::render(
                &config.base_url,
                ns,
                ca_pem,
                &config.calico_node_users,
                config.path_key.as_ref().map(|k| k.token(ns)).as_deref(),
            ) {
                Ok(r) => r,
                Err(error) => {
                    tracing::error!(shoot = %ns, error = %format!("{error:#}"), "cannot render the shoot's registration");
                    continue;
                }
            };
            if applied.get(ns) == Some(&rendered) {
                continue;
            }
            match registration::apply(&seed, &config.names, ns, &rendered).await {
                Ok(()) => {
                    tracing::info!(shoot = %ns, managed_resource = %config.names.managed_resource, "shoot registration written");
                    applied.insert(ns.clone(), rendered);
                    retry.ok(ns);
                }
                Err(error) => {
                    applied.remove(ns);
                    let d = retry.failed(ns, now);
                    tracing::warn!(shoot = %ns, error = %format!("{error:#}"), retry_in = ?d, "cannot write the shoot's registration");
                }
            }
        }
        // Removed only when known unwanted: a shoot without a Cluster in
        // this pass's whole view, or whose Cluster says so; checked again
        // against the view as it is now, right before the removal.
        let unwanted: Vec<String> = applied
            .keys()
            .filter(|ns| plans.get(*ns).map_or(Some(false), |p| p.register) == Some(false))
            .cloned()
            .collect();
        for ns in unwanted {
            if !retry.due(&ns, now)
                || shoots.epoch() != pass.epoch
                || shoots.registration_wanted(&ns) != Some(false)
            {
                continue;
            }
            match registration::remove(&seed, &config.names, &ns).await {
                Ok(()) => {
                    tracing::info!(shoot = %ns, "shoot registration removed");
                    applied.remove(&ns);
                    retry.ok(&ns);
                }
                Err(error) => {
                    let d = retry.failed(&ns, now);
                    tracing::warn!(shoot = %ns, %error, retry_in = ?d, "cannot remove the shoot's registration");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_per_shoot() {
        let mut r = Retry::default();
        let t = Instant::now();
        assert!(r.due("a", t));
        assert_eq!(r.failed("a", t), Duration::from_secs(2));
        assert!(!r.due("a", t) && r.due("b", t));
        assert_eq!(r.failed("a", t), Duration::from_secs(4));
        for _ in 0..20 {
            r.failed("a", t);
        }
        assert_eq!(r.failed("a", t), RETRY_MAX);
        r.ok("a");
        assert!(r.due("a", t));
    }
}
