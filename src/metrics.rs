//! Prometheus metrics, served as text on the plain-HTTP admin port.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What the webhook answered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Decision {
    /// Admitted unchanged (or with only the record kept).
    Allowed,
    /// Admitted with the hold patch.
    Held,
    /// The request could not be judged (malformed, bad value): refused.
    Error,
    /// A deletion refused: it would switch pods to native routing while a
    /// node lacks its route.
    Refused,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Held => "held",
            Decision::Error => "error",
            Decision::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// Kind of the reviewed object (DaemonSet, ConfigMap, IPPool,
    /// FelixConfiguration, Installation, Node, or "other").
    pub kind: String,
    pub decision: Decision,
    /// "true" for server-side dry-run requests.
    pub dry_run: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Why a release or cancel did not go through (a fixed set).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum FailureClass {
    /// The recorded change no longer applies onto the object as it is now
    /// (or the record is damaged): it stays until the object changes.
    Conflict,
    /// The API server, an admission webhook or an admission policy refused
    /// the write (a 4xx other than 408, 409 and 429).
    Denied,
    /// 5xx, 429, 408, a write conflict that kept recurring, a timeout, a
    /// connection error, or the webhook holding the release again.
    Transient,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Conflict => "conflict",
            FailureClass::Denied => "denied",
            FailureClass::Transient => "transient",
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Kind of the object the failed step was about (`Lease` and `Namespace`
    /// for the release lease and the once-only annotations).
    pub kind: String,
    pub class: FailureClass,
}

/// The reason of a calico-node write of `NetworkUnavailable` that was not
/// applied (a fixed set: never a value taken from a request).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum KeptReason {
    /// calico-node's start-up write (`False`).
    CalicoIsUp,
    /// calico-node's shutdown write, or calico-kube-controllers' (`True`).
    CalicoIsDown,
    /// Any other reason, none, or the condition removed.
    Other,
}

impl KeptReason {
    /// The label for the reason a write carried.
    pub fn of(reason: Option<&str>) -> Self {
        match reason {
            Some("CalicoIsUp") => KeptReason::CalicoIsUp,
            Some("CalicoIsDown") => KeptReason::CalicoIsDown,
            _ => KeptReason::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeptLabels {
    pub reason: KeptReason,
}

/// Name of the kept-conditions counter as `/metrics` shows it (`status`
/// reads it from there).
pub const NODE_CONDITIONS_KEPT: &str = "overlay_switch_node_conditions_kept_total";

fn latency_histogram() -> Histogram {
    // 50µs .. ~1.6s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn release_histogram() -> Histogram {
    // 10ms .. ~5.5min
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// All metrics of the process. Cheap to clone (handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub admission_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub nodes: Gauge,
    pub nodes_with_route: Gauge,
    pub guard_enabled: Gauge,
    pub cache_synced: Gauge,
    pub held_objects: Gauge,
    pub releases: Family<KindLabels, Counter>,
    pub release_conflicts: Family<KindLabels, Counter>,
    pub release_failures: Family<FailureLabels, Counter>,
    pub release_lease_holder: Gauge,
    pub release_delay_seconds: Histogram,
    pub node_conditions_kept: Family<KeptLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reviews: Family::default(),
            admission_seconds: Family::new_with_constructor(latency_histogram),
            nodes: Gauge::default(),
            nodes_with_route: Gauge::default(),
            guard_enabled: Gauge::default(),
            cache_synced: Gauge::default(),
            held_objects: Gauge::default(),
            releases: Family::default(),
            release_conflicts: Family::default(),
            release_failures: Family::default(),
            release_lease_holder: Gauge::default(),
            release_delay_seconds: release_histogram(),
            node_conditions_kept: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("overlay_switch");
        r.register(
            "admission_reviews",
            "Admission reviews answered, by object kind, decision and dry run",
            m.reviews.clone(),
        );
        r.register(
            "admission_duration_seconds",
            "Time to answer one admission review, from decoded body to encoded response",
            m.admission_seconds.clone(),
        );
        r.register("nodes", "Nodes known to the route cache", m.nodes.clone());
        r.register(
            "nodes_with_route",
            "Nodes whose NetworkUnavailable condition is False with the required reason",
            m.nodes_with_route.clone(),
        );
        r.register(
            "guard_enabled",
            "1 when the per-cluster toggle annotation turns the guard on",
            m.guard_enabled.clone(),
        );
        r.register(
            "cache_synced",
            "1 when the node and namespace watches have synced (route state known)",
            m.cache_synced.clone(),
        );
        r.register(
            "held_objects",
            "Calico objects that carry a held switch record",
            m.held_objects.clone(),
        );
        r.register(
            "releases",
            "Held switches applied by the release controller",
            m.releases.clone(),
        );
        r.register(
            "release_conflicts",
            "Held switches whose recorded change no longer applies",
            m.release_conflicts.clone(),
        );
        r.register(
            "release_failures",
            "Release or cancel steps that did not go through, by object kind and class (Conflict, Denied, Transient); retried with back-off",
            m.release_failures.clone(),
        );
        r.register(
            "release_lease_holder",
            "1 while this replica holds the release lease of the cluster (by its own clock)",
            m.release_lease_holder.clone(),
        );
        r.register(
            "release_delay_seconds",
            "Time from the gate opening to a held switch being applied",
            m.release_delay_seconds.clone(),
        );
        r.register(
            "node_conditions_kept",
            "Writes of a node's NetworkUnavailable condition by calico-node's user that were not applied (the route controller's condition kept, or a True write onto a node without the condition dropped), by the reason the write carried",
            m.node_conditions_kept.clone(),
        );
        // Every label of the fixed set from the start, at 0: /metrics then
        // shows the counter (and `status` can tell "none kept" from "not
        // this server").
        for reason in [
            KeptReason::CalicoIsUp,
            KeptReason::CalicoIsDown,
            KeptReason::Other,
        ] {
            let _ = m.node_conditions_kept.get_or_create(&KeptLabels { reason });
        }
        m
    }

    /// One calico-node write of `NetworkUnavailable` not applied.
    pub fn node_condition_kept(&self, written_reason: Option<&str>) {
        self.node_conditions_kept
            .get_or_create(&KeptLabels {
                reason: KeptReason::of(written_reason),
            })
            .inc();
    }

    pub fn review(&self, kind: &str, decision: Decision, dry_run: bool, seconds: f64) {
        // The label comes from the request: only the kinds this webhook is
        // registered for are named, anything else is "other" (a caller
        // cannot grow the series without bound).
        let kind = if REVIEWED_KINDS.contains(&kind) {
            kind
        } else {
            "other"
        };
        self.reviews
            .get_or_create(&ReviewLabels {
                kind: kind.to_string(),
                decision,
                dry_run: dry_run.to_string(),
            })
            .inc();
        self.admission_seconds
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .observe(seconds);
    }
}

/// The kinds the webhook is registered for (the `kind` label's values
/// besides `other`).
pub const REVIEWED_KINDS: &[&str] = &[
    "DaemonSet",
    "ConfigMap",
    "IPPool",
    "FelixConfiguration",
    "Installation",
    "Node",
];

/// A registry and its metrics, for the server.
pub fn registry() -> (Registry, Metrics) {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    (registry, metrics)
}

pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_are_counted_by_kind_decision_and_dry_run() {
        let (registry, m) = registry();
        m.review("DaemonSet", Decision::Held, true, 0.001);
        m.review("DaemonSet", Decision::Held, true, 0.001);
        m.review("IPPool", Decision::Allowed, false, 0.001);
        let text = encode(&registry);
        assert!(
            text.contains(
                r#"overlay_switch_admission_reviews_total{kind="DaemonSet",decision="Held",dry_run="true"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"decision="Allowed",dry_run="false"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("overlay_switch_admission_duration_seconds_count{kind=\"IPPool\"} 1")
        );
    }

    #[test]
    fn a_kind_from_the_request_that_is_not_reviewed_is_counted_as_other() {
        let (registry, m) = registry();
        for i in 0..100 {
            m.review(&format!("Kind{i}"), Decision::Error, false, 0.001);
        }
        let text = encode(&registry);
        assert!(
            text.contains(r#"overlay_switch_admission_reviews_total{kind="other",decision="Error",dry_run="false"} 100"#),
            "{text}"
        );
        assert!(!text.contains("Kind1"), "{text}");
    }

    #[test]
    fn kept_conditions_are_counted_by_a_fixed_reason() {
        let (registry, m) = registry();
        for reason in [
            Some("CalicoIsUp"),
            Some("CalicoIsDown"),
            Some("CalicoIsDown"),
            Some("calicoisup"),
            Some("anything a client sends"),
            None,
        ] {
            m.node_condition_kept(reason);
        }
        let text = encode(&registry);
        for line in [
            r#"overlay_switch_node_conditions_kept_total{reason="CalicoIsUp"} 1"#,
            r#"overlay_switch_node_conditions_kept_total{reason="CalicoIsDown"} 2"#,
            r#"overlay_switch_node_conditions_kept_total{reason="Other"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("anything"), "{text}");
        assert!(text.contains(&format!("{NODE_CONDITIONS_KEPT}{{")));
    }
}
