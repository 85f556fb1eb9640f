//! When the Gardener mode's own certificates are renewed, and how the CA is
//! rotated without a moment in which a shoot's API server trusts neither
//! the served certificate's CA (pure: times are seconds since the epoch).
//!
//! The CA bundle written into every registration carries the signing CA,
//! the next CA once it is made, and the previous CA until it ends. A CA is
//! rotated in two steps, at least [`Policy::overlap`] apart:
//! 1. *introduce*: the next CA joins the bundle; the served certificate is
//!    unchanged. The registrations (and through gardener-resource-manager
//!    the shoots) learn to trust it.
//! 2. *promote*: when the serving certificate is due, it is issued by the
//!    next CA, which becomes the signing CA; the old one stays in the bundle
//!    (replicas that have not reloaded yet still serve its certificate).
//!
//! This is the scheme of Gardener's secrets manager for CA rotation
//! (gardener/gardener `pkg/utils/secrets/manager`: the bundle holds old
//! and new CA while both are in use).

use std::time::Duration;

use crate::server::certs::CertInfo;

/// Certificates are made valid from this long before "now" (clock skew).
pub const CLOCK_SLACK: i64 = 300;

/// Validities and margins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Validity of a serving certificate (a CA gets twice that).
    pub validity: Duration,
}

impl Policy {
    pub fn validity_secs(&self) -> i64 {
        i64::try_from(self.validity.as_secs()).unwrap_or(i64::MAX / 4)
    }
    /// A serving certificate this close to its end is renewed: 30 days, or
    /// a third of its validity when that is shorter.
    pub fn renew_before(&self) -> i64 {
        (30 * 24 * 3600).min(self.validity_secs() / 3)
    }
    /// The least time between introducing the next CA and serving a
    /// certificate it signed: a day, or a tenth of the validity.
    pub fn overlap(&self) -> i64 {
        (24 * 3600).min(self.validity_secs() / 10)
    }
    pub fn ca_validity(&self) -> Duration {
        self.validity.saturating_mul(2)
    }
}

/// What is stored now, as read from the certificates themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The signing CA (`None`: absent or unreadable).
    pub signing: Option<CertInfo>,
    /// The next CA, once introduced.
    pub next: Option<CertInfo>,
    /// The serving certificate.
    pub serving: Option<CertInfo>,
    /// The serving certificate is signed by the signing CA.
    pub serving_by_signing: bool,
    /// The serving certificate names exactly the wanted DNS names.
    pub names_match: bool,
    /// Some CA kept from before has ended (it leaves the bundle).
    pub previous_ended: bool,
    /// The key of the per-shoot path tokens is present.
    pub path_key: bool,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Keep,
    /// A new CA and serving certificate (nothing usable is stored).
    Fresh,
    /// A new serving certificate from the signing CA, valid for
    /// `validity` seconds (at most the policy's, and ending a renewal
    /// margin before the CA).
    Reissue {
        validity: i64,
    },
    /// Make the next CA and add it to the bundle.
    Introduce,
    /// The next CA signs a new serving certificate and becomes the signing CA.
    Promote,
    /// Drop ended CAs from the bundle, add a missing path key.
    Tidy,
}

pub fn decide(f: &Facts, now: i64, p: &Policy) -> Step {
    let Some(ca) = &f.signing else {
        return Step::Fresh;
    };
    let (v, rb) = (p.validity_secs(), p.renew_before());
    let ca_left = ca.not_after - now;
    if ca_left <= 0 {
        return Step::Fresh;
    }
    let next_ready = f
        .next
        .as_ref()
        .is_some_and(|n| now - (n.not_before + CLOCK_SLACK) >= p.overlap());
    let serving_ok = f.serving_by_signing
        && f.names_match
        && f.serving.as_ref().is_some_and(|s| s.not_after > now);
    let due = !serving_ok || f.serving.as_ref().is_some_and(|s| s.not_after - now < rb);
    if due {
        // A certificate from the signing CA would end this long before it.
        let reissue = (ca_left - rb).min(v);
        return if f.next.is_some() && (next_ready || !serving_ok) {
            Step::Promote
        } else if reissue >= 2 * rb {
            Step::Reissue { validity: reissue }
        } else if f.next.is_none() {
            if serving_ok {
                Step::Introduce
            } else {
                Step::Fresh
            }
        } else {
            Step::Keep // the next CA is not trusted long enough yet
        };
    }
    if f.next.is_none() && ca_left < v + 2 * rb {
        return Step::Introduce;
    }
    if f.previous_ended || !f.path_key {
        return Step::Tidy;
    }
    Step::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;

    fn info(not_before: i64, not_after: i64) -> CertInfo {
        CertInfo {
            not_before: not_before - CLOCK_SLACK,
            not_after,
            dns: vec![],
        }
    }

    fn year() -> Policy {
        Policy {
            validity: Duration::from_secs(365 * DAY as u64),
        }
    }

    /// A stored state driven through time with the steps `decide` asks
    /// for; records (time, step).
    struct World {
        f: Facts,
        p: Policy,
        log: Vec<(i64, Step)>,
    }

    impl World {
        fn new(p: Policy) -> World {
            World {
                f: Facts {
                    path_key: true,
                    ..Facts::default()
                },
                p,
                log: vec![],
            }
        }
        /// Runs `decide` at `now` and applies its step, as the I/O side does.
        fn tick(&mut self, now: i64) -> Step {
            let (v, ca) = (self.p.validity_secs(), self.p.validity_secs() * 2);
            let step = decide(&self.f, now, &self.p);
            let f = &mut self.f;
            match step {
                Step::Keep | Step::Tidy => {}
                Step::Fresh => {
                    f.signing = Some(info(now, now + ca));
                    f.next = None;
                    f.serving = Some(info(now, now + v));
                    f.serving_by_signing = true;
                    f.names_match = true;
                }
                Step::Reissue { validity } => {
                    f.serving = Some(info(now, now + validity));
                    f.serving_by_signing = true;
                    f.names_match = true;
                }
                Step::Introduce => f.next = Some(info(now, now + ca)),
                Step::Promote => {
                    f.signing = f.next.take();
                    f.serving = Some(info(now, now + v));
                    f.serving_by_signing = true;
                }
            }
            if step != Step::Keep {
                self.log.push((now, step));
            }
            step
        }
    }

    #[test]
    fn over_years_the_served_certificate_never_lapses_and_a_new_ca_is_trusted_long_before_it_serves()
     {
        for p in [
            year(),
            Policy {
                validity: Duration::from_secs(30),
            },
            Policy {
                validity: Duration::from_secs(90 * DAY as u64),
            },
        ] {
            let mut w = World::new(p);
            let step = (p.validity_secs() / 200).max(1);
            let t0 = 1_800_000_000;
            let mut introduced_at = None;
            let mut t = t0;
            while t < t0 + 5 * p.validity_secs() {
                let s = w.tick(t);
                if s == Step::Introduce {
                    introduced_at = Some(t);
                }
                if s == Step::Promote {
                    let at = introduced_at.expect("promoted without an introduced CA");
                    assert!(
                        t - at >= p.overlap(),
                        "{p:?}: promoted {}s after the introduction",
                        t - at
                    );
                }
                let f = &w.f;
                let serving = f.serving.as_ref().unwrap();
                let ca = f.signing.as_ref().unwrap();
                assert!(serving.not_after > t, "{p:?} at {t}: serving ended");
                assert!(ca.not_after > t, "{p:?} at {t}: CA ended");
                assert!(
                    serving.not_after <= ca.not_after,
                    "{p:?}: serving outlives its CA"
                );
                t += step;
            }
            let fresh = w.log.iter().filter(|(_, s)| *s == Step::Fresh).count();
            assert_eq!(fresh, 1, "{p:?}: only the first is fresh: {:?}", w.log);
            assert!(
                w.log.iter().any(|(_, s)| *s == Step::Promote),
                "{p:?}: the CA is rotated: {:?}",
                w.log
            );
        }
    }

    #[test]
    fn what_is_stored_decides() {
        let p = year();
        let now = 1_800_000_000;
        let good = Facts {
            signing: Some(info(now - DAY, now + 700 * DAY)),
            next: None,
            serving: Some(info(now - DAY, now + 300 * DAY)),
            serving_by_signing: true,
            names_match: true,
            previous_ended: false,
            path_key: true,
        };
        assert_eq!(decide(&good, now, &p), Step::Keep);
        assert_eq!(
            decide(&Facts::default(), now, &p),
            Step::Fresh,
            "nothing stored"
        );
        let mut f = good.clone();
        f.names_match = false;
        assert!(
            matches!(decide(&f, now, &p), Step::Reissue { validity } if validity == p.validity_secs()),
            "the names changed: issued again from the same CA"
        );
        let mut f = good.clone();
        f.serving_by_signing = false;
        assert!(matches!(decide(&f, now, &p), Step::Reissue { .. }));
        let mut f = good.clone();
        f.serving = Some(info(now - 340 * DAY, now + 20 * DAY));
        assert!(
            matches!(decide(&f, now, &p), Step::Reissue { .. }),
            "due, the CA has long enough"
        );
        let mut f = good.clone();
        f.signing = Some(info(now - 700 * DAY, now - 1));
        assert_eq!(decide(&f, now, &p), Step::Fresh, "the CA has ended");
        let mut f = good.clone();
        f.signing = Some(info(now - 400 * DAY, now + 400 * DAY));
        assert_eq!(
            decide(&f, now, &p),
            Step::Introduce,
            "the CA cannot sign a full term much longer"
        );
        f.next = Some(info(now, now + 730 * DAY));
        assert_eq!(
            decide(&f, now, &p),
            Step::Keep,
            "introduced; serving not due"
        );
        f.serving = Some(info(now - 340 * DAY, now + 20 * DAY));
        assert!(
            matches!(decide(&f, now + 3600, &p), Step::Reissue { .. }),
            "due; the next CA is not trusted long enough, the signing CA can still sign"
        );
        f.signing = Some(info(now - 650 * DAY, now + 80 * DAY));
        assert_eq!(
            decide(&f, now + 3600, &p),
            Step::Keep,
            "due, the signing CA too near its end, the next not trusted long enough: wait"
        );
        assert_eq!(decide(&f, now + DAY, &p), Step::Promote);
        f.serving_by_signing = false;
        assert_eq!(
            decide(&f, now + 3600, &p),
            Step::Promote,
            "nothing usable is served: no waiting"
        );
        let mut f = good.clone();
        f.previous_ended = true;
        assert_eq!(decide(&f, now, &p), Step::Tidy);
        let mut f = good;
        f.path_key = false;
        assert_eq!(decide(&f, now, &p), Step::Tidy);
    }
}
