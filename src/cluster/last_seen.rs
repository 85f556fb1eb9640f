//! The part of one watched object that the guard reads beyond the object
//! under review, as its watch last saw it: the guarded ConfigMap's `data`
//! (calico-node's environment may take values from it) and calico-node's
//! container (a ConfigMap update changes what that environment resolves
//! to). Unknown until the watch has listed, and again while it re-lists.

use std::sync::RwLock;

use kube::core::DynamicObject;
use serde_json::{Map, Value};

use crate::calico::podenv::KnownConfigMap;

#[derive(Debug, Default)]
struct Inner {
    synced: bool,
    /// `None`: the object does not exist (or lacks the part).
    part: Option<Value>,
    relist: Option<Option<Value>>,
}

/// One part of one object, fed by a watch on exactly that object.
#[derive(Debug)]
pub struct LastSeen {
    name: String,
    extract: fn(&DynamicObject) -> Option<Value>,
    inner: RwLock<Inner>,
}

/// A ConfigMap's `data`.
pub fn config_map_data(obj: &DynamicObject) -> Option<Value> {
    Some(
        obj.data
            .get("data")
            .filter(|d| d.is_object())
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
    )
}

/// A DaemonSet's calico-node container.
pub fn calico_node_container(obj: &DynamicObject) -> Option<Value> {
    // `DynamicObject.data` holds everything but apiVersion, kind, metadata.
    crate::calico::overlay::calico_node_container(&obj.data).cloned()
}

impl LastSeen {
    pub fn new(name: impl Into<String>, extract: fn(&DynamicObject) -> Option<Value>) -> Self {
        Self {
            name: name.into(),
            extract,
            inner: RwLock::default(),
        }
    }

    fn inner(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.write().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn synced(&self) -> bool {
        self.inner().synced
    }

    /// Calls `f` with what is known now: `None` while unknown, `Some(None)`
    /// when the object does not exist.
    pub fn with<R>(&self, f: impl FnOnce(Option<Option<&Value>>) -> R) -> R {
        let inner = self.inner();
        f(inner.synced.then_some(inner.part.as_ref()))
    }

    /// The same, as the guarded ConfigMap for env resolution.
    pub fn with_config_map<R>(&self, f: impl FnOnce(KnownConfigMap<'_>) -> R) -> R {
        let inner = self.inner();
        f(KnownConfigMap {
            name: &self.name,
            data: inner
                .synced
                .then_some(inner.part.as_ref().and_then(Value::as_object)),
        })
    }
}

impl crate::cluster::watch::Store<DynamicObject> for LastSeen {
    fn relist_begin(&self) {
        self.write(|i| {
            i.synced = false;
            i.relist = Some(None);
        });
    }

    fn relist_apply(&self, obj: DynamicObject) {
        let part = (self.extract)(&obj);
        self.write(|i| i.relist = Some(part));
    }

    fn relist_done(&self) {
        self.write(|i| {
            i.part = i.relist.take().flatten();
            i.synced = true;
        });
    }

    fn apply(&self, obj: DynamicObject) {
        let part = (self.extract)(&obj);
        self.write(|i| i.part = part);
    }

    fn delete(&self, _obj: DynamicObject) {
        self.write(|i| i.part = None);
    }

    fn lost(&self) {
        self.write(|i| {
            i.synced = false;
            i.relist = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::watch::Store as _;
    use serde_json::json;

    fn cm(backend: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "calico-config", "namespace": "kube-system"},
            "data": {"calico_backend": backend}
        }))
        .unwrap()
    }

    fn backend(d: &LastSeen) -> Option<Option<String>> {
        d.with_config_map(|k| {
            k.data.map(|data| {
                data.and_then(|m| m.get("calico_backend"))
                    .and_then(Value::as_str)
                    .map(String::from)
            })
        })
    }

    #[test]
    fn unknown_until_listed_and_while_relisting() {
        let d = LastSeen::new("calico-config", config_map_data);
        assert_eq!(backend(&d), None);
        d.relist_begin();
        d.relist_apply(cm("bird"));
        assert_eq!(backend(&d), None, "not before the list is done");
        d.relist_done();
        assert_eq!(backend(&d), Some(Some("bird".into())));
        d.apply(cm("none"));
        assert_eq!(backend(&d), Some(Some("none".into())));
        d.lost();
        assert_eq!(backend(&d), None);
        d.relist_begin();
        d.relist_done();
        assert_eq!(backend(&d), Some(None), "listed: does not exist");
        d.apply(cm("vxlan"));
        d.delete(cm("vxlan"));
        assert_eq!(backend(&d), Some(None));
    }

    #[test]
    fn the_calico_node_container_is_kept() {
        let d = LastSeen::new("calico-node", calico_node_container);
        let ds: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "calico-node", "namespace": "kube-system"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "sidecar"}, {"name": "calico-node", "env": [{"name": "A", "value": "1"}]}
            ]}}}
        }))
        .unwrap();
        d.relist_begin();
        d.relist_apply(ds);
        d.relist_done();
        let env = d.with(|c| c.flatten().map(|c| c["env"][0]["value"].clone()));
        assert_eq!(env, Some(json!("1")));
    }
}
