//! The controller of our `Extension` resources in the seed (type
//! [`EXTENSION_TYPE`]): answers gardenlet's operations at once (the guard
//! keeps no state in the seed, so each is a status write), reports each
//! shoot's `SystemComponentsHealthy` condition (a held switch shows as
//! `Progressing` with its reason), and renews the heartbeat Lease that
//! gardenlet's shoot care needs to trust those conditions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

use super::extension::{
    EXTENSION_TYPE, OPERATION_ANNOTATION, Operation, ShootState, answer, condition,
    current_condition, operation, wants_answer,
};
use super::shoots::Shoots;
use crate::cluster::gate;
use crate::cluster::watch::{Backoff, Health, Store, keep_watching};

/// The heartbeat Lease's duration (gardenlet reads only its renewTime).
const HEARTBEAT_SECONDS: u64 = 30;
/// The Lease gardenlet reads (`pkg/extensions/constants.go`).
pub const HEARTBEAT_LEASE: &str = "gardener-extension-heartbeat";

pub fn extension_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("extensions.gardener.cloud", "v1alpha1", "Extension"),
        "extensions",
    )
}

/// Our Extension objects, by namespace, as JSON; wakes the controller on a change.
#[derive(Default)]
pub struct ExtensionStore {
    objects: Mutex<BTreeMap<String, Value>>,
    listing: Mutex<Option<BTreeMap<String, Value>>>,
    changed: tokio::sync::Notify,
}

fn ours(obj: &DynamicObject) -> Option<(String, Value)> {
    let value = serde_json::to_value(obj).ok()?;
    (value.pointer("/spec/type").and_then(Value::as_str) == Some(EXTENSION_TYPE))
        .then(|| (obj.namespace().unwrap_or_default(), value))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store<DynamicObject> for ExtensionStore {
    fn relist_begin(&self) {
        *lock(&self.listing) = Some(BTreeMap::new());
    }
    fn relist_apply(&self, obj: DynamicObject) {
        if let Some((ns, v)) = ours(&obj) {
            lock(&self.listing)
                .get_or_insert_with(BTreeMap::new)
                .insert(ns, v);
        }
    }
    fn relist_done(&self) {
        *lock(&self.objects) = lock(&self.listing).take().unwrap_or_default();
        self.changed.notify_one();
    }
    fn apply(&self, obj: DynamicObject) {
        if let Some((ns, v)) = ours(&obj) {
            lock(&self.objects).insert(ns, v);
            self.changed.notify_one();
        }
    }
    fn delete(&self, obj: DynamicObject) {
        if let Some((ns, _)) = ours(&obj) {
            lock(&self.objects).remove(&ns);
        }
    }
    fn lost(&self) {}
}

/// For this long after start, a shoot whose state is merely not learned
/// yet (no problem seen) keeps the condition it has, so that a restart of
/// the server does not flip every Shoot's condition to Unknown for a moment.
const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// Whether shoot `namespace`'s state is only not learned yet: no Cluster
/// view yet, not checked since start, or its watches starting without a
/// problem.
pub fn settling(shoots: &Shoots, namespace: &str) -> bool {
    match shoots.get(namespace) {
        None => shoots.known_clear(namespace).is_none(),
        Some(shoot) => {
            let c = &shoot.cluster;
            !c.synced() && c.health.problem().is_none()
        }
    }
}

/// What the server knows of shoot `namespace`, in the condition's terms.
pub fn shoot_state(shoots: &Shoots, namespace: &str) -> ShootState {
    let Some(shoot) = shoots.get(namespace) else {
        // Not served: clear only when its records were known empty when it
        // was last served (a shoot never served since this server started
        // may hold a switch made before).
        return match shoots.known_clear(namespace) {
            Some(true) => ShootState::Clear { guarded: false },
            _ => ShootState::Unknown {
                why: "the shoot's held switches are not known yet".into(),
            },
        };
    };
    let c = &shoot.cluster;
    if !c.synced() {
        return ShootState::Unknown {
            why: c
                .health
                .problem()
                .unwrap_or_else(|| "the shoot's watches have not synced yet".into()),
        };
    }
    match c.held.held() {
        Some(held) if !held.is_empty() => {
            let routes = c.routes.snapshot(c.settings.max_named_nodes);
            let why = match gate::routes_gate(&routes, c.settings.settle, Timestamp::now()) {
                gate::Gate::Closed(why) => why,
                gate::Gate::Open => "every node has its route; the release is under way".into(),
            };
            ShootState::Held {
                objects: held.iter().map(|h| h.key.to_string()).collect(),
                since: held.iter().filter_map(|h| h.since.clone()).min(),
                why,
            }
        }
        Some(_) => ShootState::Clear {
            guarded: c.toggle.get().guard,
        },
        None => ShootState::Unknown {
            why: "the held-switch records are not known yet".into(),
        },
    }
}

/// Runs until the task is dropped. `heartbeat`: (namespace, identity) of
/// the heartbeat Lease; `None` writes none.
pub async fn run(
    seed: Client,
    shoots: Arc<Shoots>,
    heartbeat: Option<(String, String)>,
    watch_timeout: u32,
    interval: Duration,
) {
    let store = Arc::new(ExtensionStore::default());
    let all = Api::<DynamicObject>::all_with(seed.clone(), &extension_resource());
    let watch = tokio::spawn(keep_watching(
        "gardener-extensions",
        all,
        watcher::Config::default().timeout(watch_timeout),
        store.clone(),
        Backoff::default(),
        Arc::new(Health::default()),
    ));
    let _abort = AbortOnDrop(watch);
    let started = tokio::time::Instant::now();
    let mut answered: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut last_health = started - interval;
    loop {
        let objects: Vec<(String, Value)> = lock(&store.objects)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (ns, obj) in &objects {
            // The watch may not have shown our own answer yet: the same
            // version of the object is not answered twice.
            let version = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from);
            if !wants_answer(obj) || version.is_some() && answered.get(ns) == Some(&version) {
                continue;
            }
            match answer_operation(&seed, ns, obj).await {
                Ok(()) => {
                    answered.insert(ns.clone(), version);
                }
                Err(error) => {
                    tracing::warn!(shoot = %ns, %error, "cannot answer the Extension's operation; retrying")
                }
            }
        }
        if last_health.elapsed() >= interval {
            last_health = tokio::time::Instant::now();
            for (ns, obj) in &objects {
                if started.elapsed() < STARTUP_GRACE && settling(&shoots, ns) {
                    continue;
                }
                if let Err(error) = report_health(&seed, &shoots, ns, obj).await {
                    tracing::warn!(shoot = %ns, %error, "cannot write the Extension's health condition");
                }
            }
            if let Some((namespace, identity)) = &heartbeat
                && let Err(error) = renew_heartbeat(&seed, namespace, identity).await
            {
                tracing::warn!(%error, "cannot renew the extension heartbeat Lease");
            }
        }
        tokio::select! {
            () = store.changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn api(seed: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(seed.clone(), ns, &extension_resource())
}

fn now() -> String {
    Timestamp::now().to_string()
}

async fn answer_operation(seed: &Client, ns: &str, obj: &Value) -> Result<(), kube::Error> {
    let op = operation(obj);
    let api = api(seed, ns);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(EXTENSION_TYPE)
        .to_string();
    let asked = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(OPERATION_ANNOTATION))
        .and_then(Value::as_str)
        .map(String::from);
    // Removes the operation annotation only while it still asks what was
    // answered: gardenlet may already ask for the next operation (a restore
    // right after a migration), and that request must not be lost.
    let remove_annotation = |value: String| {
        let path = format!(
            "/metadata/annotations/{}",
            OPERATION_ANNOTATION.replace('~', "~0").replace('/', "~1")
        );
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": path, "value": value},
            {"op": "remove", "path": path},
        ]))
        .expect("a static JSON patch");
        let api = api.clone();
        let name = name.clone();
        async move {
            match api
                .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
            {
                Ok(_) => Ok(true),
                // The test failed: the annotation asks something else now.
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    };
    match op {
        Operation::Wait => return Ok(()),
        // No finalizer of ours holds a deletion: nothing to clean up.
        Operation::Delete => return Ok(()),
        // A reconcile's annotation goes first, a migration's or restore's last.
        Operation::Create | Operation::Reconcile => {
            if let Some(v) = asked.clone()
                && !remove_annotation(v).await?
            {
                return Ok(()); // answered when the new request is seen
            }
        }
        _ => {}
    }
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&answer(obj, op, &now())),
    )
    .await?;
    if matches!(op, Operation::Migrate | Operation::Restore)
        && let Some(v) = asked
    {
        remove_annotation(v).await?;
    }
    tracing::info!(shoot = %ns, operation = op.as_str(), "Extension operation answered");
    Ok(())
}

async fn report_health(
    seed: &Client,
    shoots: &Shoots,
    ns: &str,
    obj: &Value,
) -> Result<(), kube::Error> {
    if operation(obj) == Operation::Wait {
        return Ok(()); // migrated away: another seed reports
    }
    let state = shoot_state(shoots, ns);
    let cond = condition(&state, current_condition(obj), &now());
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(EXTENSION_TYPE);
    api(seed, ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": [cond]}})),
        )
        .await?;
    Ok(())
}

async fn renew_heartbeat(
    seed: &Client,
    namespace: &str,
    identity: &str,
) -> Result<(), kube::Error> {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": HEARTBEAT_LEASE, "namespace": namespace},
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": HEARTBEAT_SECONDS,
            "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        },
    });
    Api::<Lease>::namespaced(seed.clone(), namespace)
        .patch(
            HEARTBEAT_LEASE,
            &PatchParams::apply("overlay-switch-webhook").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_type_is_kept() {
        let s = ExtensionStore::default();
        let ext = |ns: &str, t: &str| -> DynamicObject {
            serde_json::from_value(
                json!({"apiVersion": "extensions.gardener.cloud/v1alpha1", "kind": "Extension",
                "metadata": {"name": t, "namespace": ns}, "spec": {"type": t}}),
            )
            .unwrap()
        };
        s.relist_begin();
        s.relist_apply(ext("shoot--p--a", EXTENSION_TYPE));
        s.relist_apply(ext("shoot--p--a", "shoot-cert-service"));
        s.relist_done();
        assert_eq!(lock(&s.objects).len(), 1);
        s.delete(ext("shoot--p--a", EXTENSION_TYPE));
        assert!(lock(&s.objects).is_empty());
    }
}
