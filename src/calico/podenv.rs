//! A container's environment as the kubelet builds it (pure): `envFrom`
//! first, then `env` in order (a later entry of the same name wins),
//! `$(VAR)` references expanded, `valueFrom` resolved where the webhook can
//! know the value (the guarded ConfigMap, from its watch) and marked unknown
//! where it cannot (Secrets, other ConfigMaps, the downward API).
//!
//! Follows kubelet `makeEnvironmentVariables`
//! (kubernetes `pkg/kubelet/kubelet_pods.go`) and the expansion of
//! `third_party/forked/golang/expansion/expand.go`:
//! - `envFrom` sources in order, each key (with its `prefix`) set, later
//!   sources overriding earlier ones; then each `env` entry overrides;
//! - a non-empty `value` is expanded: `$(NAME)` becomes the value of a
//!   variable defined *before* it (by `envFrom` or an earlier `env` entry),
//!   or stays `$(NAME)` verbatim when there is none; `$$` is a literal `$`;
//!   any other `$` is kept;
//! - an empty `value` with `valueFrom` resolves the source; a
//!   `configMapKeyRef` to a missing key with `optional: true` leaves the
//!   variable as it was (unset, or set by `envFrom`).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

/// What the webhook knows of the guarded ConfigMap (e.g. `calico-config`).
#[derive(Debug, Clone, Copy)]
pub struct KnownConfigMap<'a> {
    pub name: &'a str,
    /// `Some(data)` when the watch has synced (`None` inside when the
    /// ConfigMap does not exist); `None` while unknown.
    pub data: Option<Option<&'a Map<String, Value>>>,
}

impl KnownConfigMap<'_> {
    /// A ConfigMap known not to exist (no guarded ConfigMap at all).
    pub const NONE: KnownConfigMap<'static> = KnownConfigMap {
        name: "",
        data: Some(None),
    };
}

/// The value of one variable in the container's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// Not set at all.
    Absent,
    /// Known text (after expansion).
    Text(String),
    /// Set from a source the webhook cannot read; the words say which.
    Unknown(String),
}

/// Text or unknown, as stored while the environment is built (text is
/// borrowed from the container or the ConfigMap unless it was expanded).
#[derive(Debug, Clone)]
enum Slot<'a> {
    Text(Cow<'a, str>),
    Unknown(String),
}

/// The environment of `container` (a container object as JSON), as far as
/// it can be known. `guarded` is the one ConfigMap whose content is known.
pub struct Environment<'a> {
    vars: HashMap<Cow<'a, str>, Slot<'a>>,
    /// `envFrom` sources that could set any name (unknown content).
    opaque: Vec<String>,
}

impl<'a> Environment<'a> {
    pub fn of(container: &'a Value, guarded: KnownConfigMap<'a>) -> Self {
        let entries = container.get("env").and_then(Value::as_array);
        let mut env = Environment {
            vars: HashMap::with_capacity(entries.map_or(0, Vec::len)),
            opaque: Vec::new(),
        };
        if let Some(sources) = container.get("envFrom").and_then(Value::as_array) {
            for source in sources {
                env.env_from(source, guarded);
            }
        }
        if let Some(entries) = entries {
            for entry in entries {
                env.entry(entry, guarded);
            }
        }
        env
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> EnvValue {
        match self.vars.get(name) {
            Some(Slot::Text(t)) => EnvValue::Text(t.to_string()),
            Some(Slot::Unknown(w)) => EnvValue::Unknown(w.clone()),
            // Not set by anything we can read: an opaque envFrom may set it.
            None if self.opaque.is_empty() => EnvValue::Absent,
            None => EnvValue::Unknown(self.opaque_words()),
        }
    }

    /// The value of `name` as set by `env` or a readable `envFrom`; absent
    /// when only an opaque `envFrom` could set it.
    pub fn get_stated(&self, name: &str) -> EnvValue {
        match self.vars.get(name) {
            None => EnvValue::Absent,
            Some(_) => self.get(name),
        }
    }

    /// The other names that equal `name` but for ASCII case, with their
    /// values, sorted (Felix reads its variables case-insensitively).
    pub fn case_variants(&self, name: &str) -> Vec<(String, EnvValue)> {
        let mut out: Vec<(String, EnvValue)> = self
            .vars
            .keys()
            .filter(|k| k.as_ref() != name && k.eq_ignore_ascii_case(name))
            .map(|k| (k.to_string(), self.get(k)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The opaque `envFrom` sources, in words that differ whenever the
    /// sources differ (all of them, in order, with their prefixes).
    fn opaque_words(&self) -> String {
        format!("may be set by envFrom {}", self.opaque.join(", "))
    }

    fn env_from(&mut self, source: &'a Value, guarded: KnownConfigMap<'a>) {
        let prefix = source.get("prefix").and_then(Value::as_str).unwrap_or("");
        let cm_name = source.pointer("/configMapRef/name").and_then(Value::as_str);
        let with_prefix = |what: String| {
            if prefix.is_empty() {
                what
            } else {
                format!("{what} (prefix {prefix:?})")
            }
        };
        let opaque = match cm_name {
            Some(name) if name == guarded.name && !name.is_empty() => match guarded.data {
                Some(Some(data)) => {
                    for (k, v) in data {
                        let text = Cow::Borrowed(v.as_str().unwrap_or_default());
                        let name = if prefix.is_empty() {
                            Cow::Borrowed(k.as_str())
                        } else {
                            Cow::Owned(format!("{prefix}{k}"))
                        };
                        self.vars.insert(name, Slot::Text(text));
                    }
                    return;
                }
                // Known not to exist: adds nothing (optional) or the pod
                // does not start; either way no value.
                Some(None) => return,
                None => with_prefix(format!("ConfigMap {name} (not yet known)")),
            },
            Some(name) => with_prefix(format!("ConfigMap {name}")),
            None => with_prefix(
                source
                    .pointer("/secretRef/name")
                    .and_then(Value::as_str)
                    .map_or_else(|| compact(source), |n| format!("Secret {n}")),
            ),
        };
        self.opaque.push(opaque);
        // A source we cannot read may override what earlier sources set.
        let words = self.opaque_words();
        for slot in self.vars.values_mut() {
            *slot = Slot::Unknown(words.clone());
        }
    }

    fn entry(&mut self, entry: &'a Value, guarded: KnownConfigMap<'a>) {
        let Some(name) = entry.get("name").and_then(Value::as_str) else {
            return;
        };
        let value = entry.get("value").and_then(Value::as_str).unwrap_or("");
        let slot = if !value.is_empty() {
            self.expand(value)
        } else {
            match entry.get("valueFrom").filter(|v| !v.is_null()) {
                None => Slot::Text(Cow::Borrowed("")),
                Some(from) => match self.value_from(from, guarded) {
                    Some(slot) => slot,
                    None => return, // optional and missing: leaves it as it was
                },
            }
        };
        self.vars.insert(Cow::Borrowed(name), slot);
    }

    /// `None`: an optional reference to a missing key (nothing is set).
    fn value_from(&self, from: &Value, guarded: KnownConfigMap<'a>) -> Option<Slot<'a>> {
        let Some(cm) = from.get("configMapKeyRef") else {
            return Some(Slot::Unknown(describe_source(from)));
        };
        let name = cm.get("name").and_then(Value::as_str).unwrap_or("");
        let key = cm.get("key").and_then(Value::as_str).unwrap_or("");
        let optional = cm.get("optional").and_then(Value::as_bool) == Some(true);
        if name != guarded.name || name.is_empty() {
            return Some(Slot::Unknown(describe_source(from)));
        }
        match guarded.data {
            None => Some(Slot::Unknown(format!(
                "from ConfigMap {name} key {key} (not yet known)"
            ))),
            Some(data) => match data.and_then(|d| d.get(key)) {
                Some(v) => Some(Slot::Text(Cow::Borrowed(v.as_str().unwrap_or_default()))),
                // A missing key: with `optional` the variable is not set;
                // without, the kubelet does not start the container, so no
                // value is ever read from it.
                None if optional => None,
                None => Some(Slot::Unknown(format!(
                    "from ConfigMap {name} key {key}, which does not exist (the container cannot start)"
                ))),
            },
        }
    }

    /// Kubernetes' `$(VAR)` expansion against the variables defined so far.
    fn expand(&self, input: &'a str) -> Slot<'a> {
        // Only `$` starts anything to expand.
        if !input.contains('$') {
            return Slot::Text(Cow::Borrowed(input));
        }
        let mut unknown = None;
        let out = expand(input, |name| match self.vars.get(name) {
            Some(Slot::Text(t)) => Some(t.to_string()),
            Some(Slot::Unknown(w)) => {
                unknown.get_or_insert_with(|| format!("$({name}), {w}"));
                Some(String::new())
            }
            None => {
                if let Some(source) = self.opaque.first() {
                    unknown
                        .get_or_insert_with(|| format!("$({name}) may be set by envFrom {source}"));
                }
                None
            }
        });
        match unknown {
            Some(w) => Slot::Unknown(w),
            None => Slot::Text(Cow::Owned(out)),
        }
    }
}

/// A `valueFrom` the webhook cannot read, in words that name all of it, so
/// that two different sources never read as the same unknown.
fn describe_source(from: &Value) -> String {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("?").to_string();
    let named = |kind: &str, r: &Value| {
        let optional = if r.get("optional").and_then(Value::as_bool) == Some(true) {
            " (optional)"
        } else {
            ""
        };
        format!(
            "from {kind} {} key {}{optional}",
            text(r.get("name")),
            text(r.get("key"))
        )
    };
    match from
        .as_object()
        .map(|o| o.iter().collect::<Vec<_>>())
        .as_deref()
    {
        Some([(k, r)]) if k.as_str() == "secretKeyRef" => named("Secret", r),
        Some([(k, r)]) if k.as_str() == "configMapKeyRef" => named("ConfigMap", r),
        Some([(k, r)])
            if k.as_str() == "fieldRef" && r.as_object().is_some_and(|o| o.len() <= 2) =>
        {
            format!("from fieldRef {}", text(r.get("fieldPath")))
        }
        _ => format!("from {}", compact(from)),
    }
}

/// A JSON value in one line, at most 200 bytes (for words that name a source).
fn compact(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// Kubernetes' variable expansion (`expansion.Expand`): `$(NAME)` is replaced
/// by `lookup(NAME)`, or kept verbatim when that is `None`; `$$` is `$`; a
/// `$` followed by anything else, or an unclosed `$(`, is kept as written.
pub fn expand(input: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // `$` and the next character, kept (the character may be
                    // multi-byte: copy it whole).
                    let ch = rest.chars().next().expect("non-empty");
                    out.push('$');
                    out.push(ch);
                    ch.len_utf8()
                }
            };
            cursor += advance + 1;
            checkpoint = cursor;
        } else {
            cursor += 1;
        }
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn known<'a>(data: &'a Map<String, Value>) -> KnownConfigMap<'a> {
        KnownConfigMap {
            name: "calico-config",
            data: Some(Some(data)),
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: HashMap<&str, &str> = [("A", "x"), ("B", "$(A)")].into_iter().collect();
        let look = |n: &str| vars.get(n).map(|s| s.to_string());
        for (input, want) in [
            ("$(A)", "x"),
            ("pre-$(A)-post", "pre-x-post"),
            ("$(B)", "$(A)"), // values are not expanded twice
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$x", "$x"),
            ("$é", "$é"),
            ("$(A)$(A)", "xx"),
            ("", ""),
            ("$()", "$()"),
        ] {
            assert_eq!(expand(input, look), want, "{input:?}");
        }
    }

    #[test]
    fn later_entries_win_and_see_earlier_ones() {
        let c = json!({"env": [
            {"name": "MODE", "value": "Always"},
            {"name": "CALICO_IPV4POOL_IPIP", "value": "$(MODE)"},
            {"name": "MODE", "value": "Never"},
            {"name": "LATE", "value": "$(LATER)"},
            {"name": "LATER", "value": "x"},
        ]});
        let env = Environment::of(&c, KnownConfigMap::NONE);
        assert_eq!(
            env.get("CALICO_IPV4POOL_IPIP"),
            EnvValue::Text("Always".into())
        );
        assert_eq!(env.get("MODE"), EnvValue::Text("Never".into()));
        assert_eq!(env.get("LATE"), EnvValue::Text("$(LATER)".into()));
        assert_eq!(env.get("NOPE"), EnvValue::Absent);
    }

    #[test]
    fn value_from_the_guarded_config_map_is_resolved() {
        let data = map(json!({"calico_backend": "bird", "CALICO_IPV4POOL_IPIP": "Always"}));
        let c = json!({"env": [
            {"name": "CALICO_NETWORKING_BACKEND", "valueFrom": {"configMapKeyRef": {"name": "calico-config", "key": "calico_backend"}}},
            {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "calico-config", "key": "missing", "optional": true}}},
            {"name": "BROKEN", "valueFrom": {"configMapKeyRef": {"name": "calico-config", "key": "missing"}}},
            {"name": "OTHER", "valueFrom": {"configMapKeyRef": {"name": "other", "key": "k"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "USES", "value": "$(SECRET)"},
        ]});
        let env = Environment::of(&c, known(&data));
        assert_eq!(
            env.get("CALICO_NETWORKING_BACKEND"),
            EnvValue::Text("bird".into())
        );
        assert_eq!(env.get("GONE"), EnvValue::Absent);
        assert!(matches!(env.get("BROKEN"), EnvValue::Unknown(w) if w.contains("cannot start")));
        assert!(matches!(env.get("OTHER"), EnvValue::Unknown(w) if w.contains("ConfigMap other")));
        assert!(matches!(env.get("SECRET"), EnvValue::Unknown(w) if w == "from Secret s key k"));
        assert!(matches!(env.get("NODE"), EnvValue::Unknown(w) if w.contains("fieldRef")));
        assert!(matches!(env.get("USES"), EnvValue::Unknown(w) if w.contains("$(SECRET)")));

        // The same reference while the ConfigMap is not known yet.
        let unknown = KnownConfigMap {
            name: "calico-config",
            data: None,
        };
        let env = Environment::of(&c, unknown);
        assert!(
            matches!(env.get("CALICO_NETWORKING_BACKEND"), EnvValue::Unknown(w) if w.contains("not yet known"))
        );
    }

    #[test]
    fn env_from_sets_and_env_overrides() {
        let data = map(json!({"IPIP": "Always", "calico_backend": "vxlan"}));
        let c = json!({
            "envFrom": [{"configMapRef": {"name": "calico-config"}, "prefix": "CALICO_IPV4POOL_"}],
            "env": [{"name": "X", "value": "$(CALICO_IPV4POOL_IPIP)"}]
        });
        let env = Environment::of(&c, known(&data));
        assert_eq!(
            env.get("CALICO_IPV4POOL_IPIP"),
            EnvValue::Text("Always".into())
        );
        assert_eq!(env.get("X"), EnvValue::Text("Always".into()));

        // An envFrom we cannot read may set any name that env does not.
        let c = json!({
            "envFrom": [{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": true}}],
            "env": [{"name": "FELIX_IPINIPENABLED", "value": "true"}]
        });
        let env = Environment::of(&c, known(&data));
        assert_eq!(
            env.get("FELIX_IPINIPENABLED"),
            EnvValue::Text("true".into())
        );
        assert!(
            matches!(env.get("FELIX_VXLANENABLED"), EnvValue::Unknown(w) if w.contains("kubernetes-services-endpoint"))
        );
    }

    #[test]
    fn empty_value_without_source_is_the_empty_string() {
        let c = json!({"env": [{"name": "A", "value": "x"}, {"name": "A"}]});
        let env = Environment::of(&c, KnownConfigMap::NONE);
        assert_eq!(env.get("A"), EnvValue::Text(String::new()));
    }
}
