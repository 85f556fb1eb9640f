//! One reliable watch loop for every cache of this crate.
//!
//! A kube-rs [`watcher`] lists, then watches. Each cache learns of a fresh
//! list as `relist_begin` / `relist_apply`* / `relist_done`, and of changes
//! as `apply` / `delete`. On any watch error the cache is told it has `lost`
//! its sync (so its answers turn to "unknown"), and the watch is started again
//! from a fresh list after a back-off: state is never resumed on a guess.

use std::fmt::Debug;
use std::sync::Arc;
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

/// Runs until the task is dropped. `what` names the watch in logs.
pub async fn keep_watching<K, S>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    store: Arc<S>,
    backoff: Backoff,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Store<K> + ?Sized,
{
    let mut delay = backoff.initial;
    loop {
        let mut stream = watcher::watcher(api.clone(), config.clone()).boxed();
        let mut healthy = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => store.relist_begin(),
                Ok(Event::InitApply(obj)) => store.relist_apply(obj),
                Ok(Event::InitDone) => {
                    store.relist_done();
                    if !healthy {
                        tracing::info!(watch = what, "watch synced");
                    }
                    healthy = true;
                    delay = backoff.initial;
                }
                Ok(Event::Apply(obj)) => store.apply(obj),
                Ok(Event::Delete(obj)) => store.delete(obj),
                Err(error) => {
                    if is_not_found(&error) {
                        store.absent();
                    } else {
                        store.lost();
                    }
                    tracing::warn!(watch = what, %error, retry_in = ?delay, "watch failed; state unknown until it is listed again");
                    break;
                }
            }
        }
        drop(stream);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}
