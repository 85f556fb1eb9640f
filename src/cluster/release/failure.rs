//! Failed release or cancel steps: their class (conflict, denied,
//! transient), their words, and the back-off before the next pass. Pure.

use std::time::Duration;

use crate::cluster::held::ObjectKey;
use crate::cluster::toggle::CANCEL_ANNOTATION;
use crate::metrics::FailureClass;

/// The first delay after a failed pass, and the longest.
pub const RETRY_INITIAL: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Capped exponential back-off. Pure.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// The delay before the next try; each call doubles the following one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

/// The class of a failed request, by its HTTP status.
pub fn classify_code(code: u16) -> FailureClass {
    match code {
        // Gone meanwhile, timed out, changed meanwhile, throttled: look again.
        404 | 408 | 409 | 429 => FailureClass::Transient,
        // The API server, an admission webhook or an admission policy refused.
        400..=499 => FailureClass::Denied,
        _ => FailureClass::Transient,
    }
}

/// The class of a failed request: an answer of the API server by its
/// status, anything else (connection, timeout, TLS) transient.
pub fn classify(error: &kube::Error) -> FailureClass {
    match error {
        kube::Error::Api(s) => classify_code(s.code),
        _ => FailureClass::Transient,
    }
}

pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} (HTTP {})", s.message, s.code),
        e => e.to_string(),
    }
}

/// One release or cancel step that did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The Calico object it was about, if any.
    pub key: Option<ObjectKey>,
    pub uid: Option<String>,
    /// Kind for the metric: the Calico kind, `Lease` or `Namespace`.
    pub kind: String,
    /// The object in words, for logs.
    pub object: String,
    pub class: FailureClass,
    pub message: String,
}

impl Failure {
    pub(crate) fn object(
        key: &ObjectKey,
        uid: Option<String>,
        class: FailureClass,
        message: impl Into<String>,
    ) -> Self {
        Self {
            key: Some(key.clone()),
            uid,
            kind: format!("{:?}", key.kind),
            object: key.to_string(),
            class,
            message: message.into(),
        }
    }

    /// A failed request about `key`: `what` is "read", "write", ...
    pub(crate) fn request(
        key: &ObjectKey,
        uid: Option<String>,
        what: &str,
        error: &kube::Error,
    ) -> Self {
        let class = classify(error);
        Self::object(key, uid, class, request_message(class, what, error))
    }

    pub(crate) fn other(kind: &str, object: String, what: &str, error: &kube::Error) -> Self {
        let class = classify(error);
        Self {
            key: None,
            uid: None,
            kind: kind.into(),
            object,
            class,
            message: request_message(class, what, error),
        }
    }
}

fn request_message(class: FailureClass, what: &str, error: &kube::Error) -> String {
    match class {
        FailureClass::Denied => format!("the API server refuses the {what}: {}", describe(error)),
        _ => format!("the {what} failed: {}", describe(error)),
    }
}

/// The text of an `OverlaySwitchConflict` event (also what `kubectl
/// describe` shows): the class first.
pub fn failure_note(f: &Failure) -> String {
    let then = match f.class {
        FailureClass::Conflict => {
            "the switch stays held: re-apply the desired configuration (or edit the object back)"
        }
        FailureClass::Denied => {
            "the switch stays held and its release is retried with back-off: lift the refusal"
        }
        FailureClass::Transient => "the switch stays held and its release is retried with back-off",
    };
    format!(
        "{}: {}; {then}, or cancel with the {CANCEL_ANNOTATION} annotation",
        f.class, f.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::sample_daemonset(name)
    }

    #[test]
    fn back_off_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
        // A cap below the start, and huge values, do not overflow.
        let mut odd = Backoff::new(Duration::MAX, Duration::from_secs(1));
        assert_eq!(odd.next_delay(), Duration::from_secs(1));
        let mut big = Backoff::new(Duration::from_secs(u64::MAX / 2 + 1), Duration::MAX);
        big.next_delay();
        assert_eq!(big.next_delay(), Duration::MAX);
    }

    #[test]
    fn failures_are_classified_by_status() {
        use FailureClass::*;
        for (code, class) in [
            (400, Denied), // an admission webhook's refusal
            (401, Denied),
            (403, Denied), // RBAC, or a ValidatingAdmissionPolicy
            (422, Denied), // invalid, or a policy with reason Invalid
            (404, Transient),
            (408, Transient),
            (409, Transient),
            (429, Transient),
            (500, Transient),
            (503, Transient),
            (504, Transient),
        ] {
            assert_eq!(classify_code(code), class, "{code}");
            let e = kube::Error::Api(
                kube::core::Status {
                    code,
                    message: "m".into(),
                    ..Default::default()
                }
                .boxed(),
            );
            assert_eq!(classify(&e), class, "{code}");
        }
        let timeout = kube::Error::Service(Box::new(std::io::Error::other("timed out")));
        assert_eq!(classify(&timeout), Transient);
    }

    #[test]
    fn the_conflict_text_names_the_class_first() {
        let k = key("calico-node");
        let denied = Failure::request(
            &k,
            None,
            "write (dry run)",
            &kube::Error::Api(
                kube::core::Status {
                    code: 403,
                    message: "ValidatingAdmissionPolicy 'no-native' denied request".into(),
                    ..Default::default()
                }
                .boxed(),
            ),
        );
        assert_eq!(denied.class, FailureClass::Denied);
        assert_eq!(denied.kind, "DaemonSet");
        let note = failure_note(&denied);
        assert!(
            note.starts_with("denied: the API server refuses the write (dry run): ValidatingAdmissionPolicy 'no-native' denied request (HTTP 403)"),
            "{note}"
        );
        assert!(note.contains("retried with back-off"), "{note}");
        let unavailable = Failure::request(
            &k,
            None,
            "write",
            &kube::Error::Api(
                kube::core::Status {
                    code: 503,
                    message: "etcdserver: leader changed".into(),
                    ..Default::default()
                }
                .boxed(),
            ),
        );
        assert!(failure_note(&unavailable).starts_with("transient: the write failed: etcdserver"));
        let conflict = Failure::object(&k, None, FailureClass::Conflict, "test failed");
        assert!(
            failure_note(&conflict)
                .starts_with("conflict: test failed; the switch stays held: re-apply")
        );
    }
}
