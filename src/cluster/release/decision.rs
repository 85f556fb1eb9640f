//! The release decision (pure): from the toggle, the held records and the
//! gate of one cluster, what one release pass does. The release controller
//! ([`super::Releaser`]) acts on it; the property tests drive it directly.

use crate::cluster::gate::Gate;
use crate::cluster::held::HeldObject;
use crate::cluster::toggle::Toggle;

/// What a pass does to held objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Apply every held intent; with the blocking reason when an operator
    /// forced it.
    Release { forced: Option<String> },
    /// Remove every record (the operator's cancel).
    Cancel,
}

/// What one pass decides, when there is anything to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The operator asked to cancel (honoured first, unless a release is
    /// partially applied).
    pub cancel: bool,
    /// The release to make (after a cancel that was refused).
    pub release: Option<Action>,
    /// The operator's force is set (it is removed once honoured).
    pub force: bool,
}

/// `None` when there is nothing to decide: the held records or the toggle
/// are unknown (nothing is done on a guess), or nothing is held and the
/// operator asked for nothing. A release only when something is held and
/// the gate is open, or an operator forced it.
pub fn decide(toggle: &Toggle, held: Option<&[HeldObject]>, gate: &Gate) -> Option<Decision> {
    let held = held?;
    if !toggle.synced {
        return None;
    }
    let release = match (gate, toggle.force) {
        _ if held.is_empty() => None,
        (Gate::Open, _) => Some(Action::Release { forced: None }),
        (Gate::Closed(why), true) => Some(Action::Release {
            forced: Some(why.clone()),
        }),
        (Gate::Closed(_), false) => None,
    };
    if !toggle.cancel && !toggle.force && release.is_none() {
        return None;
    }
    Some(Decision {
        cancel: toggle.cancel,
        release,
        force: toggle.force,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::held::ObjectKey;

    fn toggle(synced: bool, force: bool, cancel: bool) -> Toggle {
        Toggle {
            synced,
            guard: true,
            force,
            cancel,
        }
    }

    #[test]
    fn releases_only_what_is_held_when_the_gate_opens_or_on_force() {
        let one = [HeldObject {
            key: ObjectKey::sample_daemonset("calico-node"),
            since: None,
            intent_digest: 0,
            held_digest: 0,
        }];
        let closed = Gate::Closed("node-b: NoRouteCreated".into());
        let plain = toggle(true, false, false);
        assert_eq!(decide(&plain, None, &Gate::Open), None, "records unknown");
        assert_eq!(
            decide(&toggle(false, false, false), Some(&one), &Gate::Open),
            None,
            "toggle unknown"
        );
        assert_eq!(decide(&plain, Some(&[]), &Gate::Open), None);
        assert_eq!(decide(&plain, Some(&one), &closed), None);
        assert_eq!(
            decide(&plain, Some(&one), &Gate::Open),
            Some(Decision {
                cancel: false,
                release: Some(Action::Release { forced: None }),
                force: false
            })
        );
        assert_eq!(
            decide(&toggle(true, true, false), Some(&one), &closed),
            Some(Decision {
                cancel: false,
                release: Some(Action::Release {
                    forced: Some("node-b: NoRouteCreated".into())
                }),
                force: true
            })
        );
        // A cancel with nothing to release still gets a pass (it is removed).
        assert_eq!(
            decide(&toggle(true, false, true), Some(&one), &closed),
            Some(Decision {
                cancel: true,
                release: None,
                force: false
            })
        );
        // A force with nothing held gets a pass too (it is removed once).
        assert_eq!(
            decide(&toggle(true, true, false), Some(&[]), &closed),
            Some(Decision {
                cancel: false,
                release: None,
                force: true
            })
        );
    }
}
