//! Events on the Calico objects (what `kubectl describe` shows), limited
//! so that a reconciler re-applying every minute does not flood them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::resource;
use crate::cluster::held::ObjectKey;

/// The same Held event for the same object is not repeated within this time.
pub const HELD_EVENT_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// The reference an Event needs to show in `kubectl describe` (which
/// matches on the object's uid too).
pub fn reference(key: &ObjectKey, uid: Option<String>) -> ObjectReference {
    let ar = resource(key.kind);
    ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        name: Some(key.name.clone()),
        namespace: key.namespace.clone(),
        uid,
        ..Default::default()
    }
}

/// When, and with which note, each (object, reason) was last published.
type LastPublished = HashMap<(ObjectKey, String), (Instant, String)>;

/// Keeps a reconciler that re-applies every minute from flooding events:
/// the same reason with the same note for the same object is published at
/// most once per interval. Pure, apart from the times it is given.
#[derive(Debug, Default)]
pub struct EventLimiter {
    last: LastPublished,
}

impl EventLimiter {
    /// Entries kept before old ones are dropped.
    const MAX_ENTRIES: usize = 4096;

    pub fn allow(
        &mut self,
        key: &ObjectKey,
        reason: &str,
        note: &str,
        interval: Duration,
        now: Instant,
    ) -> bool {
        let k = (key.clone(), reason.to_string());
        if let Some((at, prev)) = self.last.get(&k)
            && now.duration_since(*at) < interval
            && prev == note
        {
            return false;
        }
        if self.last.len() >= Self::MAX_ENTRIES {
            self.last
                .retain(|_, (at, _)| now.duration_since(*at) < HELD_EVENT_INTERVAL);
        }
        if self.last.len() >= Self::MAX_ENTRIES {
            // All recent: the oldest half goes (at worst an Event repeats
            // sooner), never more than the bound is kept.
            let mut times: Vec<Instant> = self.last.values().map(|(at, _)| *at).collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.last.retain(|_, (at, _)| *at > cut);
        }
        self.last.insert(k, (now, note.to_string()));
        true
    }
}

/// Events on Calico objects, rate-limited per object and reason.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    limiter: Arc<Mutex<EventLimiter>>,
}

impl Events {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "overlay-switch-webhook".into(),
                    instance,
                },
            ),
            limiter: Default::default(),
        }
    }

    /// Publishes unless the same reason for the same object was published
    /// within `interval` with the same note (a re-applying reconciler).
    pub async fn publish(
        &self,
        key: &ObjectKey,
        uid: Option<String>,
        type_: EventType,
        reason: &str,
        note: String,
        interval: Duration,
    ) {
        {
            let mut limiter = self.limiter.lock().expect("events lock");
            if !limiter.allow(key, reason, &note, interval, Instant::now()) {
                return;
            }
        }
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "OverlaySwitch".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&ev, &reference(key, uid)).await {
            tracing::warn!(%error, object = %key, reason, "cannot publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::sample_daemonset(name)
    }

    #[test]
    fn the_limiter_never_keeps_more_than_its_bound() {
        let mut l = EventLimiter::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(600);
        // Ten thousand distinct objects within one interval: all recent.
        for i in 0..10_000u64 {
            let t = t0 + Duration::from_millis(i);
            assert!(l.allow(&key(&format!("o{i}")), "OverlaySwitchHeld", "n", every, t));
            assert!(
                l.last.len() <= EventLimiter::MAX_ENTRIES,
                "{i}: {}",
                l.last.len()
            );
        }
        // The newest are still remembered.
        assert!(!l.allow(
            &key("o9999"),
            "OverlaySwitchHeld",
            "n",
            every,
            t0 + Duration::from_secs(11)
        ));
    }

    #[test]
    fn a_reapplying_reconciler_does_not_flood_events() {
        let mut l = EventLimiter::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(600);
        assert!(l.allow(&key("a"), "OverlaySwitchHeld", "2 of 5", every, t0));
        // Re-applied every minute with the same situation: suppressed.
        for m in 1..10 {
            assert!(!l.allow(
                &key("a"),
                "OverlaySwitchHeld",
                "2 of 5",
                every,
                t0 + Duration::from_secs(60 * m)
            ));
        }
        // The situation changed: published.
        assert!(l.allow(
            &key("a"),
            "OverlaySwitchHeld",
            "1 of 5",
            every,
            t0 + Duration::from_secs(601)
        ));
        // Another object or reason is independent; the interval ends.
        assert!(l.allow(&key("b"), "OverlaySwitchHeld", "2 of 5", every, t0));
        assert!(l.allow(&key("a"), "OverlaySwitchConflict", "2 of 5", every, t0));
        assert!(l.allow(
            &key("a"),
            "OverlaySwitchHeld",
            "1 of 5",
            every,
            t0 + Duration::from_secs(1300)
        ));
        // Zero interval: always.
        assert!(l.allow(&key("a"), "OverlaySwitchReleased", "x", Duration::ZERO, t0));
        assert!(l.allow(&key("a"), "OverlaySwitchReleased", "x", Duration::ZERO, t0));
    }
}
