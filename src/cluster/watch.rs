//! One reliable watch loop for every cache of this crate.
//!
//! A kube-rs [`watcher`] lists, then watches. Each cache learns of a fresh
//! list as `relist_begin` / `relist_apply`* / `relist_done`, and of changes
//! as `apply` / `delete`. On any watch error the cache is told it has `lost`
//! its sync (so its answers turn to "unknown"), and the watch is started again
//! from a fresh list after a back-off: state is never resumed on a guess.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// What a cache fed by [`keep_watching`] implements.
pub trait Store<K>: Send + Sync {
    fn relist_begin(&self);
    fn relist_apply(&self, obj: K);
    fn relist_done(&self);
    fn apply(&self, obj: K);
    fn delete(&self, obj: K);
    /// The watch broke; answers must be "unknown" until the next `relist_done`.
    fn lost(&self);
    /// The resource type does not exist on the server (a CRD not installed):
    /// by default as unknown as a broken watch.
    fn absent(&self) {
        self.lost()
    }
}

/// Two stores fed by one watch (e.g. the held records and the content of
/// the same ConfigMap).
pub struct Tee<A, B>(pub Arc<A>, pub Arc<B>);

impl<K: Clone, A: Store<K>, B: Store<K>> Store<K> for Tee<A, B> {
    fn relist_begin(&self) {
        self.0.relist_begin();
        self.1.relist_begin();
    }
    fn relist_apply(&self, obj: K) {
        self.0.relist_apply(obj.clone());
        self.1.relist_apply(obj);
    }
    fn relist_done(&self) {
        self.0.relist_done();
        self.1.relist_done();
    }
    fn apply(&self, obj: K) {
        self.0.apply(obj.clone());
        self.1.apply(obj);
    }
    fn delete(&self, obj: K) {
        self.0.delete(obj.clone());
        self.1.delete(obj);
    }
    fn lost(&self) {
        self.0.lost();
        self.1.lost();
    }
    fn absent(&self) {
        self.0.absent();
        self.1.absent();
    }
}

/// The watch failed because the API does not serve the resource at all.
fn is_not_found(error: &watcher::Error) -> bool {
    let api = match error {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => e,
        _ => return false,
    };
    matches!(api, kube::Error::Api(status) if status.code == 404)
}

/// Back-off between restarts of a broken watch.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// Why a cluster's state is unknown, in words for warnings and status: the
/// last error of each broken watch (cleared when it lists again), and a
/// problem its owner sets (e.g. no credentials to reach the cluster).
#[derive(Debug, Default)]
pub struct Health {
    errors: Mutex<BTreeMap<&'static str, String>>,
    access: Mutex<Option<String>>,
}

impl Health {
    pub fn watch_failed(&self, what: &'static str, error: String) {
        lock(&self.errors).insert(what, error);
    }

    pub fn watch_synced(&self, what: &'static str) {
        lock(&self.errors).remove(what);
    }

    /// Sets (or, with `None`, clears) why the cluster cannot be reached at all.
    pub fn set_access_problem(&self, problem: Option<String>) {
        *lock(&self.access) = problem;
    }

    /// The access problem, else the broken watches with their last errors.
    pub fn problem(&self) -> Option<String> {
        if let Some(p) = lock(&self.access).clone() {
            return Some(p);
        }
        let errors = lock(&self.errors);
        let (first, error) = errors.iter().next()?;
        let more = match errors.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        Some(format!("watch of {first} failed{more}: {error}"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs until the task is dropped. `what` names the watch in logs and in
/// `health`.
pub async fn keep_watching<K, S>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    store: Arc<S>,
    backoff: Backoff,
    health: Arc<Health>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Store<K> + ?Sized,
{
    let mut delay = backoff.initial;
    let mut absent_logged = false;
    loop {
        let mut stream = watcher::watcher(api.clone(), config.clone()).boxed();
        let mut healthy = false;
        // kube-rs says `Init` before it sends the list request; the store
        // begins its re-list only once the list answers. Otherwise a kind
        // this API server does not serve (404 on every retry) would flap
        // from known to unknown and back at every retry, and a review in
        // that instant would be held for nothing.
        let mut init_pending = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => init_pending = true,
                Ok(Event::InitApply(obj)) => {
                    if std::mem::take(&mut init_pending) {
                        store.relist_begin();
                    }
                    store.relist_apply(obj);
                }
                Ok(Event::InitDone) => {
                    if std::mem::take(&mut init_pending) {
                        store.relist_begin();
                    }
                    store.relist_done();
                    health.watch_synced(what);
                    absent_logged = false;
                    if !healthy {
                        tracing::info!(watch = what, "watch synced");
                    }
                    healthy = true;
                    delay = backoff.initial;
                }
                Ok(Event::Apply(obj)) => store.apply(obj),
                Ok(Event::Delete(obj)) => store.delete(obj),
                Err(error) if is_not_found(&error) => {
                    // Not served here (no CRD: another install style):
                    // known to hold nothing; looked for again after the
                    // back-off, and listed as soon as it appears.
                    store.absent();
                    health.watch_synced(what);
                    if !absent_logged {
                        tracing::info!(
                            watch = what,
                            "not served by this API server; nothing of it is held"
                        );
                        absent_logged = true;
                    }
                    break;
                }
                Err(error) => {
                    store.lost();
                    absent_logged = false;
                    tracing::warn!(watch = what, %error, retry_in = ?delay, "watch failed; state unknown until it is listed again");
                    health.watch_failed(what, error.to_string());
                    break;
                }
            }
        }
        drop(stream);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn health_names_the_access_problem_first_then_broken_watches() {
        let h = Health::default();
        assert_eq!(h.problem(), None);
        h.watch_failed("nodes", "connection refused".into());
        h.watch_failed("calico-ippools", "connection refused".into());
        assert_eq!(
            h.problem().as_deref(),
            Some("watch of calico-ippools failed (and 1 more): connection refused")
        );
        h.set_access_problem(Some("no access secret".into()));
        assert_eq!(h.problem().as_deref(), Some("no access secret"));
        h.set_access_problem(None);
        h.watch_synced("calico-ippools");
        h.watch_synced("nodes");
        assert_eq!(h.problem(), None);
    }
}
