//! The gate (pure): from the route state, the toggle and the held records of
//! one cluster, decide what an update of a Calico object gets.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::cluster::routes::{Snapshot, describe_blockers};
use crate::cluster::toggle::Toggle;

/// Whether a switch may go through now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Closed, with the reason in words (used in warnings and the record).
    Closed(String),
}

impl Gate {
    pub fn is_open(&self) -> bool {
        matches!(self, Gate::Open)
    }
}

/// Routes alone: open only when the cache is synced and every node has had
/// its route for at least `settle`. Unknown is closed. Saturating: any
/// timestamps (jiff's MIN and MAX included, `since` after `now`) and any
/// settle time give an answer, never a panic; `since` after `now` waits for
/// `since` plus `settle`.
pub fn routes_gate(routes: &Snapshot, settle: Duration, now: Timestamp) -> Gate {
    if !routes.synced {
        return Gate::Closed("node route state unknown (node watch not synced)".into());
    }
    let Some(since) = routes.all_routed_since else {
        return Gate::Closed(describe_blockers(routes));
    };
    let settle = SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX);
    // No overflow: any two timestamps are less than 2^40 seconds apart.
    let elapsed = now.duration_since(since);
    let left = settle.saturating_sub(elapsed);
    if left <= SignedDuration::ZERO {
        Gate::Open
    } else {
        Gate::Closed(format!(
            "all {} node{} have routes, settling for {}s more",
            routes.total,
            if routes.total == 1 { "" } else { "s" },
            left.as_secs()
                .saturating_add(i64::from(left.subsec_nanos() > 0))
        ))
    }
}

/// When `routes_gate` closed by settle time only, how long until it opens
/// (zero when it is open). Saturating like `routes_gate`, and in step with
/// it: zero exactly when it is open.
pub fn opens_in(routes: &Snapshot, settle: Duration, now: Timestamp) -> Option<Duration> {
    let since = routes.all_routed_since.filter(|_| routes.synced)?;
    let settle = SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX);
    let left = settle.saturating_sub(now.duration_since(since));
    Some(Duration::try_from(left.max(SignedDuration::ZERO)).unwrap_or(Duration::MAX))
}

/// What the webhook knows about one update of a Calico object.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub toggle: Toggle,
    /// Why the toggle is unknown, when it is (from its source).
    pub toggle_unknown: &'a str,
    pub routes: &'a Snapshot,
    pub settle: Duration,
    pub now: Timestamp,
    /// The update reduces encapsulation.
    pub is_switch: bool,
    /// The old object carries a held record.
    pub old_has_record: bool,
    /// The update touches the switch held on this object and is judged
    /// merged with it (`is_switch` then says whether the merge lowers
    /// encapsulation).
    pub joins_held: bool,
    /// Other Calico objects of the same cluster that carry a held record
    /// (`None` while that is unknown: the object watches are not synced).
    pub others_held: Option<&'a [String]>,
    /// The update is the release controller's own (`release` / `cancel`).
    pub action: Option<&'a str>,
}

/// The decision for one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admit unchanged (guard off, not a switch, nothing held).
    Admit,
    /// A switch that goes through; any record on it is removed.
    Pass { released: bool },
    /// Not a switch, but a switch is pending on this object: the update goes
    /// through and keeps the record.
    KeepRecord,
    /// A cancel by the release controller: the record is removed.
    Cancel,
    /// Hold the switch, with the reason.
    Hold(String),
}

pub fn decide(s: &Situation<'_>) -> Verdict {
    if s.action == Some("cancel") && !s.is_switch {
        return Verdict::Cancel;
    }
    if s.action == Some("release") && !s.is_switch {
        // A held change that lowers no encapsulation (any more): nothing to
        // guard, and keeping the record would only make it apply again.
        return Verdict::Pass { released: true };
    }
    if s.joins_held && !s.is_switch {
        // The update, merged with the held change, lowers nothing any more
        // (it overrides every lowered field): it goes through whole and the
        // record has nothing left to guard.
        return Verdict::Pass { released: false };
    }
    if s.toggle.synced && !s.toggle.guard {
        // Guard off: admit as asked. A record on the object (the guard was
        // turned off while holding) is left to the release controller.
        return if s.is_switch {
            Verdict::Pass { released: false }
        } else if s.old_has_record {
            Verdict::KeepRecord
        } else {
            Verdict::Admit
        };
    }
    if !s.is_switch {
        return if s.old_has_record {
            Verdict::KeepRecord
        } else {
            Verdict::Admit
        };
    }
    if !s.toggle.synced {
        return Verdict::Hold(s.toggle_unknown.into());
    }
    let gate = routes_gate(s.routes, s.settle, s.now);
    let released = s.action == Some("release");
    if released && (gate.is_open() || s.toggle.force) {
        // The release controller applies a held switch: the gate (or an
        // operator's force) is the one authority, other records don't matter
        // because it releases all of them.
        return Verdict::Pass { released: true };
    }
    match (gate, s.others_held) {
        (Gate::Closed(why), _) => Verdict::Hold(why),
        (Gate::Open, None) => Verdict::Hold(
            "held-switch records of this cluster unknown (Calico object watches not synced)".into(),
        ),
        (Gate::Open, Some(others)) if !others.is_empty() => Verdict::Hold(format!(
            "joins the held switch of {} so that the cluster never ends up half switched; all are released together",
            bounded_list(others, 3)
        )),
        (Gate::Open, Some(_)) => Verdict::Pass { released: false },
    }
}

/// What the webhook knows about a DELETE of an IPPool.
#[derive(Debug, Clone)]
pub struct PoolDeletion<'a> {
    pub toggle: Toggle,
    /// Why the toggle is unknown, when it is (from its source).
    pub toggle_unknown: &'a str,
    pub routes: &'a Snapshot,
    pub settle: Duration,
    pub now: Timestamp,
    /// The pool still encapsulates ([`crate::calico::overlay::pool_encapsulation`]).
    pub encapsulates: bool,
    /// The pool carries the operator's force-delete annotation.
    pub forced: bool,
}

/// A deletion cannot be held by a patch: `Err(why)` when it must be refused
/// because the pool still encapsulates and not every node has had its route
/// for the settle time (or that is unknown). Allowed when the pool
/// encapsulates nothing, the guard is off, or the operator forced it.
pub fn decide_pool_deletion(d: &PoolDeletion<'_>) -> Result<(), String> {
    if !d.encapsulates || d.forced || (d.toggle.synced && !d.toggle.guard) {
        return Ok(());
    }
    if !d.toggle.synced {
        return Err(d.toggle_unknown.into());
    }
    match routes_gate(d.routes, d.settle, d.now) {
        Gate::Open => Ok(()),
        Gate::Closed(why) => Err(why),
    }
}

/// At most `n` names, then how many more (a message that goes into a
/// warning, an Event or a condition stays short however many there are).
pub fn bounded_list(names: &[String], n: usize) -> String {
    const MAX_NAME: usize = 253;
    let mut shown: Vec<String> = names
        .iter()
        .take(n)
        .map(|s| {
            if s.len() > MAX_NAME {
                let mut end = MAX_NAME;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}...", &s[..end])
            } else {
                s.clone()
            }
        })
        .collect();
    if names.len() > n {
        shown.push(format!("{} more", names.len() - n));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::routes::Blocker;

    #[test]
    fn a_list_in_a_message_is_bounded() {
        let names: Vec<String> = (0..10).map(|i| format!("IPPool p{i}")).collect();
        assert_eq!(bounded_list(&names[..2], 3), "IPPool p0, IPPool p1");
        assert_eq!(
            bounded_list(&names, 3),
            "IPPool p0, IPPool p1, IPPool p2, 7 more"
        );
        let long = vec!["é".repeat(1000)];
        let text = bounded_list(&long, 3);
        assert!(text.len() <= 256 && text.ends_with("..."), "{}", text.len());
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn routed(since: i64) -> Snapshot {
        Snapshot {
            synced: true,
            total: 3,
            with_route: 3,
            all_routed_since: Some(ts(since)),
            blockers: vec![],
        }
    }

    fn blocked() -> Snapshot {
        Snapshot {
            synced: true,
            total: 3,
            with_route: 2,
            all_routed_since: None,
            blockers: vec![("n3".into(), Blocker::NoRouteCreated)],
        }
    }

    fn on() -> Toggle {
        Toggle {
            synced: true,
            guard: true,
            cancel: false,
            force: false,
        }
    }

    fn sit<'a>(routes: &'a Snapshot, others: &'a [String]) -> Situation<'a> {
        Situation {
            toggle: on(),
            toggle_unknown: crate::cluster::toggle::NAMESPACE_UNKNOWN,
            routes,
            settle: Duration::from_secs(10),
            now: ts(1000),
            is_switch: true,
            old_has_record: false,
            joins_held: false,
            others_held: Some(others),
            action: None,
        }
    }

    #[test]
    fn an_encapsulating_pool_is_deleted_only_once_every_route_settled() {
        let unsynced = Snapshot {
            synced: false,
            ..routed(0)
        };
        let settling = routed(995);
        let settled = routed(990);
        let blocked = blocked();
        let deletion = |routes: &Snapshot, encapsulates, forced, toggle| {
            decide_pool_deletion(&PoolDeletion {
                toggle,
                toggle_unknown: crate::cluster::toggle::NAMESPACE_UNKNOWN,
                routes,
                settle: Duration::from_secs(10),
                now: ts(1000),
                encapsulates,
                forced,
            })
        };
        let off = Toggle {
            guard: false,
            ..on()
        };
        let unknown = Toggle::default();
        for routes in [&unsynced, &settling, &settled, &blocked] {
            // Nothing encapsulated, guard off or forced: always allowed.
            assert_eq!(deletion(routes, false, false, on()), Ok(()));
            assert_eq!(deletion(routes, true, false, off), Ok(()));
            assert_eq!(deletion(routes, true, true, on()), Ok(()));
            assert_eq!(deletion(routes, true, true, unknown), Ok(()));
            // The guard's state unknown: refused, with why.
            assert_eq!(
                deletion(routes, true, false, unknown),
                Err(crate::cluster::toggle::NAMESPACE_UNKNOWN.into())
            );
        }
        assert_eq!(deletion(&settled, true, false, on()), Ok(()));
        let why = deletion(&blocked, true, false, on()).unwrap_err();
        assert!(why.contains("n3: NoRouteCreated"), "{why}");
        let why = deletion(&settling, true, false, on()).unwrap_err();
        assert!(why.contains("settling for 5s more"), "{why}");
        let why = deletion(&unsynced, true, false, on()).unwrap_err();
        assert!(why.contains("unknown"), "{why}");
    }

    #[test]
    fn switch_passes_only_after_settle() {
        let r = routed(995);
        assert_eq!(
            decide(&sit(&r, &[])),
            Verdict::Hold("all 3 nodes have routes, settling for 5s more".into())
        );
        let r = routed(990);
        assert_eq!(decide(&sit(&r, &[])), Verdict::Pass { released: false });
        assert_eq!(
            opens_in(&routed(995), Duration::from_secs(10), ts(1000)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn blocked_and_unknown_hold() {
        let b = blocked();
        assert_eq!(
            decide(&sit(&b, &[])),
            Verdict::Hold(
                "1 of 3 nodes have no route yet (n3: NoRouteCreated)".replace("have", "has")
            )
        );
        let unknown = Snapshot {
            synced: false,
            ..routed(0)
        };
        assert!(matches!(decide(&sit(&unknown, &[])), Verdict::Hold(w) if w.contains("unknown")));
        let r = routed(0);
        let mut s = sit(&r, &[]);
        s.toggle = Toggle::default();
        assert!(matches!(decide(&s), Verdict::Hold(w) if w.contains("guard state unknown")));
        s.toggle = on();
        s.others_held = None;
        assert!(matches!(decide(&s), Verdict::Hold(_)));
    }

    #[test]
    fn guard_off_and_non_switches_are_admitted() {
        let b = blocked();
        let mut s = sit(&b, &[]);
        s.toggle.guard = false;
        assert_eq!(decide(&s), Verdict::Pass { released: false });
        s.toggle.guard = true;
        s.is_switch = false;
        assert_eq!(decide(&s), Verdict::Admit);
        s.old_has_record = true;
        assert_eq!(decide(&s), Verdict::KeepRecord);
    }

    #[test]
    fn a_switch_joins_other_held_objects_until_released_together() {
        let r = routed(0);
        let others = vec!["ConfigMap kube-system/calico-config".to_string()];
        assert!(
            matches!(decide(&sit(&r, &others)), Verdict::Hold(w) if w.contains("half switched"))
        );
        let mut s = sit(&r, &others);
        s.action = Some("release");
        assert_eq!(decide(&s), Verdict::Pass { released: true });
        // A release marker does not open a closed gate ...
        let b = blocked();
        let mut s = sit(&b, &others);
        s.action = Some("release");
        assert!(matches!(decide(&s), Verdict::Hold(_)));
        // ... unless the operator forces it.
        s.toggle.force = true;
        assert_eq!(decide(&s), Verdict::Pass { released: true });
    }

    #[test]
    fn a_release_that_switches_nothing_passes_and_clears_the_record() {
        let b = blocked();
        let mut s = sit(&b, &[]);
        s.is_switch = false;
        s.old_has_record = true;
        s.action = Some("release");
        assert_eq!(decide(&s), Verdict::Pass { released: true });
    }

    #[test]
    fn cancel_marker_is_honoured() {
        let b = blocked();
        let mut s = sit(&b, &[]);
        s.is_switch = false;
        s.old_has_record = true;
        s.action = Some("cancel");
        assert_eq!(decide(&s), Verdict::Cancel);
    }
}
