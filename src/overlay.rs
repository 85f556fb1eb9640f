//! What Calico's objects say about encapsulation, and what a switch is.
//! Pure: no I/O, objects arrive as JSON.
//!
//! Values are read the way Calico parses them: calico-node's startup reads
//! `CALICO_IPV4POOL_IPIP`/`_VXLAN` case-insensitively (absent = `Never`),
//! Felix reads its booleans with the usual spellings, and IPPool modes are
//! `Always`/`CrossSubnet`/`Never` (empty = `Never`).

use serde::Serialize;
use serde_json::Value;

/// Encapsulation level; ordered `Never < CrossSubnet < Always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Encapsulation {
    Never,
    CrossSubnet,
    Always,
}

impl Encapsulation {
    /// calico-node's reading of `CALICO_IPV4POOL_IPIP` / `CALICO_IPV4POOL_VXLAN`.
    pub fn parse_env(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "off" | "never" | "false" => Some(Self::Never),
            "crosssubnet" | "cross-subnet" => Some(Self::CrossSubnet),
            "always" | "true" | "on" => Some(Self::Always),
            _ => None,
        }
    }

    /// An IPPool's `ipipMode` / `vxlanMode`.
    pub fn parse_pool_mode(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "never" => Some(Self::Never),
            "crosssubnet" => Some(Self::CrossSubnet),
            "always" => Some(Self::Always),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "Never",
            Self::CrossSubnet => "CrossSubnet",
            Self::Always => "Always",
        }
    }
}

/// `calico_backend` / `CALICO_NETWORKING_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Backend {
    Bird,
    Vxlan,
    None,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bird" => Some(Self::Bird),
            "vxlan" => Some(Self::Vxlan),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bird => "bird",
            Self::Vxlan => "vxlan",
            Self::None => "none",
        }
    }
}

/// Felix's boolean spellings.
pub fn parse_felix_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "t" | "on" => Some(true),
        "false" | "0" | "no" | "n" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum CalicoKind {
    DaemonSet,
    ConfigMap,
    IpPool,
}

/// One overlay-bearing setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Setting {
    PoolIpip,
    PoolVxlan,
    FelixIpip,
    FelixVxlan,
    Backend,
}

/// What one object says about the overlay. `None` = not stated / unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayConfig {
    pub ipip: Option<Encapsulation>,
    pub vxlan: Option<Encapsulation>,
    pub felix_ipip: Option<bool>,
    pub felix_vxlan: Option<bool>,
    pub backend: Option<Backend>,
}

impl OverlayConfig {
    /// A short summary, e.g. "IPIP Always, VXLAN Never, backend bird".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = self.ipip {
            parts.push(format!("IPIP {}", e.as_str()));
        }
        if let Some(e) = self.vxlan {
            parts.push(format!("VXLAN {}", e.as_str()));
        }
        if let Some(b) = self.felix_ipip {
            parts.push(format!("Felix IPIP {b}"));
        }
        if let Some(b) = self.felix_vxlan {
            parts.push(format!("Felix VXLAN {b}"));
        }
        if let Some(b) = self.backend {
            parts.push(format!("backend {}", b.as_str()));
        }
        if parts.is_empty() {
            "no overlay settings".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One setting whose encapsulation goes down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reduction {
    pub setting: Setting,
    /// Where it was read, e.g. `spec.ipipMode`, `env CALICO_IPV4POOL_IPIP`.
    pub source: String,
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Reduction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.source, self.from, self.to)
    }
}

/// An update with at least one reduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switch {
    pub kind: CalicoKind,
    pub reductions: Vec<Reduction>,
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.reductions.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_field}: unrecognized value {value:?} (Calico accepts {expected})")]
pub struct ReadError {
    pub source_field: String,
    pub value: String,
    pub expected: &'static str,
}

const ENV_ENCAP: &str = "Always, CrossSubnet, Never";
const POOL_MODE: &str = "Always, CrossSubnet, Never or empty";
const FELIX_BOOL: &str = "true or false";
const BACKEND: &str = "bird, vxlan, none";

pub const ENV_IPIP: &str = "CALICO_IPV4POOL_IPIP";
pub const ENV_VXLAN: &str = "CALICO_IPV4POOL_VXLAN";
pub const ENV_FELIX_IPIP: &str = "FELIX_IPINIPENABLED";
pub const ENV_FELIX_VXLAN: &str = "FELIX_VXLANENABLED";
pub const ENV_BACKEND: &str = "CALICO_NETWORKING_BACKEND";

fn source(kind: CalicoKind, setting: Setting) -> String {
    match (kind, setting) {
        (CalicoKind::IpPool, Setting::PoolIpip) => "spec.ipipMode".into(),
        (CalicoKind::IpPool, Setting::PoolVxlan) => "spec.vxlanMode".into(),
        (CalicoKind::ConfigMap, Setting::Backend) => "data.calico_backend".into(),
        (_, Setting::PoolIpip) => format!("env {ENV_IPIP}"),
        (_, Setting::PoolVxlan) => format!("env {ENV_VXLAN}"),
        (_, Setting::FelixIpip) => format!("env {ENV_FELIX_IPIP}"),
        (_, Setting::FelixVxlan) => format!("env {ENV_FELIX_VXLAN}"),
        (_, Setting::Backend) => format!("env {ENV_BACKEND}"),
    }
}

fn err(source_field: String, value: &str, expected: &'static str) -> ReadError {
    ReadError {
        source_field,
        value: value.to_string(),
        expected,
    }
}

/// The literal string value of a JSON field; a present non-string is an error.
fn string_field<'a>(
    v: Option<&'a Value>,
    field: &str,
    expected: &'static str,
) -> Result<Option<&'a str>, ReadError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(err(field.to_string(), &other.to_string(), expected)),
    }
}

/// Reads what one Calico object says about its overlay.
pub fn read(kind: CalicoKind, obj: &Value) -> Result<OverlayConfig, ReadError> {
    match kind {
        CalicoKind::IpPool => read_pool(obj),
        CalicoKind::ConfigMap => read_configmap(obj),
        CalicoKind::DaemonSet => read_daemonset(obj),
    }
}

fn read_pool(obj: &Value) -> Result<OverlayConfig, ReadError> {
    let spec = obj.get("spec");
    let mode = |key: &str, field: &str| -> Result<Encapsulation, ReadError> {
        match string_field(spec.and_then(|s| s.get(key)), field, POOL_MODE)? {
            None => Ok(Encapsulation::Never),
            Some(s) => {
                Encapsulation::parse_pool_mode(s).ok_or_else(|| err(field.into(), s, POOL_MODE))
            }
        }
    };
    Ok(OverlayConfig {
        ipip: Some(mode("ipipMode", "spec.ipipMode")?),
        vxlan: Some(mode("vxlanMode", "spec.vxlanMode")?),
        ..Default::default()
    })
}

fn read_configmap(obj: &Value) -> Result<OverlayConfig, ReadError> {
    let field = "data.calico_backend";
    let backend = match string_field(
        obj.get("data").and_then(|d| d.get("calico_backend")),
        field,
        BACKEND,
    )? {
        None => None,
        Some(s) => Some(Backend::parse(s).ok_or_else(|| err(field.into(), s, BACKEND))?),
    };
    Ok(OverlayConfig {
        backend,
        ..Default::default()
    })
}

/// The literal env values one container sets (last occurrence wins);
/// `valueFrom` entries are skipped.
#[derive(Default)]
struct ContainerEnv<'a> {
    ipip: Option<&'a str>,
    vxlan: Option<&'a str>,
    felix_ipip: Option<&'a str>,
    felix_vxlan: Option<&'a str>,
    backend: Option<&'a str>,
}

fn container_env<'a>(container: &'a Value, name: &str) -> Result<ContainerEnv<'a>, ReadError> {
    let mut out = ContainerEnv::default();
    let Some(env) = container.get("env").and_then(Value::as_array) else {
        return Ok(out);
    };
    for var in env {
        let Some(var_name) = var.get("name").and_then(Value::as_str) else {
            continue;
        };
        let slot = match var_name {
            ENV_IPIP => &mut out.ipip,
            ENV_VXLAN => &mut out.vxlan,
            ENV_FELIX_IPIP => &mut out.felix_ipip,
            ENV_FELIX_VXLAN => &mut out.felix_vxlan,
            ENV_BACKEND => &mut out.backend,
            _ => continue,
        };
        if var.get("valueFrom").is_some_and(|v| !v.is_null()) {
            *slot = None; // the referenced ConfigMap is guarded itself
            continue;
        }
        let field = format!("container {name:?} env {var_name}");
        // An env var without a value is the empty string.
        *slot = Some(string_field(var.get("value"), &field, "a string")?.unwrap_or(""));
    }
    Ok(out)
}

fn read_daemonset(obj: &Value) -> Result<OverlayConfig, ReadError> {
    let pod = obj.pointer("/spec/template/spec");
    let containers = ["initContainers", "containers"]
        .into_iter()
        .filter_map(|k| pod.and_then(|p| p.get(k)).and_then(Value::as_array))
        .flatten();
    let mut ipip = Encapsulation::Never;
    let mut vxlan = Encapsulation::Never;
    let (mut felix_ipip, mut felix_vxlan) = (None::<bool>, None::<bool>);
    let (mut backend, mut calico_node_backend) = (None::<Backend>, None::<Backend>);
    for c in containers {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        let env = container_env(c, name)?;
        let field = |var: &str| format!("container {name:?} env {var}");
        if let Some(v) = env.ipip {
            let e =
                Encapsulation::parse_env(v).ok_or_else(|| err(field(ENV_IPIP), v, ENV_ENCAP))?;
            ipip = ipip.max(e);
        }
        if let Some(v) = env.vxlan {
            let e =
                Encapsulation::parse_env(v).ok_or_else(|| err(field(ENV_VXLAN), v, ENV_ENCAP))?;
            vxlan = vxlan.max(e);
        }
        for (raw, slot, var) in [
            (env.felix_ipip, &mut felix_ipip, ENV_FELIX_IPIP),
            (env.felix_vxlan, &mut felix_vxlan, ENV_FELIX_VXLAN),
        ] {
            if let Some(v) = raw {
                let b = parse_felix_bool(v).ok_or_else(|| err(field(var), v, FELIX_BOOL))?;
                *slot = Some(slot.unwrap_or(false) || b);
            }
        }
        if let Some(v) = env.backend {
            let b = Backend::parse(v).ok_or_else(|| err(field(ENV_BACKEND), v, BACKEND))?;
            if name == "calico-node" {
                calico_node_backend = Some(b);
            }
            backend = match backend {
                None | Some(Backend::None) => Some(b),
                some => some,
            };
        }
    }
    // The calico-node container's backend wins, unless it says none while
    // another container still runs an overlay backend (most encapsulation).
    let backend = match (calico_node_backend, backend) {
        (Some(Backend::None), other) => other,
        (Some(b), _) => Some(b),
        (None, other) => other,
    };
    Ok(OverlayConfig {
        ipip: Some(ipip),
        vxlan: Some(vxlan),
        felix_ipip,
        felix_vxlan,
        backend,
    })
}

/// Settings present on both sides whose encapsulation goes down. Increases
/// (rollbacks) never count.
pub fn reductions(kind: CalicoKind, old: &OverlayConfig, new: &OverlayConfig) -> Vec<Reduction> {
    let mut out = Vec::new();
    let mut push = |setting, from: &str, to: &str| {
        out.push(Reduction {
            setting,
            source: source(kind, setting),
            from: from.into(),
            to: to.into(),
        })
    };
    for (setting, o, n) in [
        (Setting::PoolIpip, old.ipip, new.ipip),
        (Setting::PoolVxlan, old.vxlan, new.vxlan),
    ] {
        if let (Some(o), Some(n)) = (o, n)
            && n < o
        {
            push(setting, o.as_str(), n.as_str());
        }
    }
    for (setting, o, n) in [
        (Setting::FelixIpip, old.felix_ipip, new.felix_ipip),
        (Setting::FelixVxlan, old.felix_vxlan, new.felix_vxlan),
    ] {
        if o == Some(true) && n == Some(false) {
            push(setting, "true", "false");
        }
    }
    if let (Some(o @ (Backend::Bird | Backend::Vxlan)), Some(Backend::None)) =
        (old.backend, new.backend)
    {
        push(Setting::Backend, o.as_str(), "none");
    }
    out
}

/// Reads both objects and compares. An unreadable value in the new object
/// is an error (the caller says so clearly); in the old object the setting
/// is unknown and never makes a switch.
pub fn detect_switch(
    kind: CalicoKind,
    old: &Value,
    new: &Value,
) -> Result<Option<Switch>, ReadError> {
    let new = read(kind, new)?;
    let old = read_lenient(kind, old);
    let reductions = reductions(kind, &old, &new);
    Ok((!reductions.is_empty()).then_some(Switch { kind, reductions }))
}

/// Like [`read`], but an unreadable setting becomes unknown (`None`) instead
/// of failing the whole object.
fn read_lenient(kind: CalicoKind, obj: &Value) -> OverlayConfig {
    if let Ok(c) = read(kind, obj) {
        return c;
    }
    let mut cleaned = obj.clone();
    let mut broken = Vec::new();
    for_each_field(kind, &mut cleaned, &mut |s, v| {
        if !valid(s, v, kind) {
            broken.push(s);
            *v = Value::Null;
        }
    });
    let mut c = read(kind, &cleaned).unwrap_or_default();
    // What was unreadable is unknown, not "Never": it never makes a switch.
    for s in broken {
        match s {
            Setting::PoolIpip => c.ipip = None,
            Setting::PoolVxlan => c.vxlan = None,
            Setting::FelixIpip => c.felix_ipip = None,
            Setting::FelixVxlan => c.felix_vxlan = None,
            Setting::Backend => c.backend = None,
        }
    }
    c
}

fn valid(setting: Setting, v: &Value, kind: CalicoKind) -> bool {
    let Some(s) = v.as_str() else {
        return v.is_null();
    };
    match (kind, setting) {
        (CalicoKind::IpPool, _) => Encapsulation::parse_pool_mode(s).is_some(),
        (_, Setting::PoolIpip | Setting::PoolVxlan) => Encapsulation::parse_env(s).is_some(),
        (_, Setting::FelixIpip | Setting::FelixVxlan) => parse_felix_bool(s).is_some(),
        (_, Setting::Backend) => Backend::parse(s).is_some(),
    }
}

fn env_setting(name: &str) -> Option<Setting> {
    Some(match name {
        ENV_IPIP => Setting::PoolIpip,
        ENV_VXLAN => Setting::PoolVxlan,
        ENV_FELIX_IPIP => Setting::FelixIpip,
        ENV_FELIX_VXLAN => Setting::FelixVxlan,
        ENV_BACKEND => Setting::Backend,
        _ => return None,
    })
}

/// Visits each overlay-bearing field of `obj`, with its setting.
fn for_each_field(kind: CalicoKind, obj: &mut Value, f: &mut dyn FnMut(Setting, &mut Value)) {
    match kind {
        CalicoKind::IpPool => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                for (k, s) in [
                    ("ipipMode", Setting::PoolIpip),
                    ("vxlanMode", Setting::PoolVxlan),
                ] {
                    if let Some(v) = spec.get_mut(k) {
                        f(s, v);
                    }
                }
            }
        }
        CalicoKind::ConfigMap => {
            if let Some(v) = obj.pointer_mut("/data/calico_backend") {
                f(Setting::Backend, v);
            }
        }
        CalicoKind::DaemonSet => {
            for key in ["initContainers", "containers"] {
                let Some(cs) = obj
                    .pointer_mut(&format!("/spec/template/spec/{key}"))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for c in cs {
                    let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) else {
                        continue;
                    };
                    for var in env {
                        let Some(s) = var
                            .get("name")
                            .and_then(Value::as_str)
                            .and_then(env_setting)
                        else {
                            continue;
                        };
                        if let Some(v) = var.get_mut("value") {
                            f(s, v);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ds(env: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": [{"name": "calico-node", "env": env}]}}}})
    }

    fn pool(ipip: &str, vxlan: &str) -> Value {
        json!({"spec": {"ipipMode": ipip, "vxlanMode": vxlan}})
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Encapsulation::Never < Encapsulation::CrossSubnet);
        assert!(Encapsulation::CrossSubnet < Encapsulation::Always);
    }

    #[test]
    fn env_spellings_are_read_like_calico_node() {
        for (s, e) in [
            ("Always", Encapsulation::Always),
            ("always", Encapsulation::Always),
            (" ALWAYS ", Encapsulation::Always),
            ("CrossSubnet", Encapsulation::CrossSubnet),
            ("cross-subnet", Encapsulation::CrossSubnet),
            ("Never", Encapsulation::Never),
            ("off", Encapsulation::Never),
            ("false", Encapsulation::Never),
            ("", Encapsulation::Never),
        ] {
            assert_eq!(Encapsulation::parse_env(s), Some(e), "{s:?}");
        }
        assert_eq!(Encapsulation::parse_env("sometimes"), None);
        assert_eq!(
            Encapsulation::parse_pool_mode("off"),
            None,
            "pool modes are stricter"
        );
        for s in ["true", "1", "Yes", "y", "T", "on"] {
            assert_eq!(parse_felix_bool(s), Some(true), "{s}");
        }
        for s in ["false", "0", "No", "n", "F", "off"] {
            assert_eq!(parse_felix_bool(s), Some(false), "{s}");
        }
        assert_eq!(parse_felix_bool("maybe"), None);
    }

    #[test]
    fn daemonset_reading() {
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([
                {"name": "CALICO_IPV4POOL_IPIP", "value": "Always"},
                {"name": "FELIX_IPINIPENABLED", "value": "true"},
                {"name": "CALICO_NETWORKING_BACKEND", "valueFrom": {"configMapKeyRef": {"name": "calico-config", "key": "calico_backend"}}},
            ])),
        )
        .unwrap();
        assert_eq!(
            c,
            OverlayConfig {
                ipip: Some(Encapsulation::Always),
                vxlan: Some(Encapsulation::Never),
                felix_ipip: Some(true),
                felix_vxlan: None,
                backend: None,
            }
        );
        assert_eq!(c.describe(), "IPIP Always, VXLAN Never, Felix IPIP true");
    }

    #[test]
    fn last_duplicate_wins_and_containers_take_the_maximum() {
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([
                {"name": "CALICO_IPV4POOL_IPIP", "value": "Always"},
                {"name": "CALICO_IPV4POOL_IPIP", "value": "Never"},
            ])),
        )
        .unwrap();
        assert_eq!(c.ipip, Some(Encapsulation::Never));
        let two = json!({"spec": {"template": {"spec": {
            "initContainers": [{"name": "init", "env": [{"name": "CALICO_IPV4POOL_VXLAN", "value": "CrossSubnet"}]}],
            "containers": [{"name": "calico-node", "env": [{"name": "CALICO_IPV4POOL_VXLAN", "value": "Never"}]}]
        }}}});
        assert_eq!(
            read(CalicoKind::DaemonSet, &two).unwrap().vxlan,
            Some(Encapsulation::CrossSubnet)
        );
    }

    #[test]
    fn reductions_and_rollbacks() {
        let s = detect_switch(
            CalicoKind::IpPool,
            &pool("Always", "Never"),
            &pool("CrossSubnet", "Never"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.to_string(), "spec.ipipMode Always -> CrossSubnet");
        assert!(
            detect_switch(
                CalicoKind::IpPool,
                &pool("Never", "Never"),
                &pool("Always", "Never")
            )
            .unwrap()
            .is_none()
        );
        assert!(
            detect_switch(
                CalicoKind::IpPool,
                &pool("Always", "Never"),
                &pool("Never", "Always")
            )
            .unwrap()
            .is_some(),
            "IPIP -> VXLAN reduces IPIP"
        );
        // Felix: true -> absent is not a switch, true -> false is.
        let t = ds(json!([{"name": "FELIX_IPINIPENABLED", "value": "true"}]));
        assert!(
            detect_switch(CalicoKind::DaemonSet, &t, &ds(json!([])))
                .unwrap()
                .is_none()
        );
        let s = detect_switch(
            CalicoKind::DaemonSet,
            &t,
            &ds(json!([{"name": "FELIX_IPINIPENABLED", "value": "false"}])),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.reductions[0].setting, Setting::FelixIpip);
        // Backend: bird <-> vxlan is not a switch; -> none is.
        let cm = |b: &str| json!({"data": {"calico_backend": b}});
        assert!(
            detect_switch(CalicoKind::ConfigMap, &cm("bird"), &cm("vxlan"))
                .unwrap()
                .is_none()
        );
        assert!(
            detect_switch(CalicoKind::ConfigMap, &cm("vxlan"), &cm("none"))
                .unwrap()
                .is_some()
        );
        assert!(
            detect_switch(CalicoKind::ConfigMap, &cm("none"), &cm("bird"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn invalid_new_is_an_error_invalid_old_is_unknown() {
        let e = detect_switch(
            CalicoKind::IpPool,
            &pool("Always", "Never"),
            &pool("Sometimes", "Never"),
        )
        .unwrap_err();
        assert_eq!(e.source_field, "spec.ipipMode");
        assert!(e.to_string().contains("\"Sometimes\""));
        assert!(
            detect_switch(
                CalicoKind::IpPool,
                &pool("Sometimes", "Always"),
                &pool("Never", "Always")
            )
            .unwrap()
            .is_none()
        );
        // ... but other settings of the broken old object still count.
        assert!(
            detect_switch(
                CalicoKind::IpPool,
                &pool("Sometimes", "Always"),
                &pool("Never", "Never")
            )
            .unwrap()
            .is_some()
        );
        let bad = ds(json!([{"name": "CALICO_IPV4POOL_IPIP", "value": 3}]));
        assert!(read(CalicoKind::DaemonSet, &bad).is_err());
    }

    #[test]
    fn odd_shapes_do_not_panic_and_read_as_nothing() {
        for v in [
            json!(null),
            json!([]),
            json!({"spec": []}),
            json!({"spec": {"template": {"spec": {"containers": {}}}}}),
            json!({"spec": {"template": {"spec": {"containers": [1, {"env": "x"}, {"env": [1, {"name": 2}]}]}}}}),
            json!({"data": []}),
        ] {
            for k in [
                CalicoKind::DaemonSet,
                CalicoKind::ConfigMap,
                CalicoKind::IpPool,
            ] {
                let c = read(k, &v).unwrap();
                assert!(c.felix_ipip.is_none() && c.backend.is_none());
                assert!(detect_switch(k, &v, &v).unwrap().is_none());
            }
        }
    }

    fn level() -> impl Strategy<Value = Encapsulation> {
        prop_oneof![
            Just(Encapsulation::Never),
            Just(Encapsulation::CrossSubnet),
            Just(Encapsulation::Always)
        ]
    }

    fn json_tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            prop_oneof![
                Just("Always"),
                Just("Never"),
                Just("bird"),
                Just("x"),
                Just("calico-node"),
                Just("CALICO_IPV4POOL_IPIP")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("spec"),
                        Just("template"),
                        Just("containers"),
                        Just("env"),
                        Just("name"),
                        Just("value"),
                        Just("ipipMode"),
                        Just("data"),
                        Just("calico_backend"),
                        Just("initContainers")
                    ]
                    .prop_map(String::from),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_pool_switch_is_exactly_a_lower_level(a in level(), b in level(), c in level(), d in level()) {
            let s = detect_switch(CalicoKind::IpPool, &pool(a.as_str(), c.as_str()), &pool(b.as_str(), d.as_str())).unwrap();
            prop_assert_eq!(s.is_some(), b < a || d < c);
            // A switch and its reverse are never both switches on one setting.
            let r = detect_switch(CalicoKind::IpPool, &pool(b.as_str(), d.as_str()), &pool(a.as_str(), c.as_str())).unwrap();
            if let (Some(s), Some(r)) = (&s, &r) {
                for x in &s.reductions {
                    prop_assert!(!r.reductions.iter().any(|y| y.setting == x.setting));
                }
            }
        }

        #[test]
        fn an_unchanged_object_is_never_a_switch(v in json_tree()) {
            for k in [CalicoKind::DaemonSet, CalicoKind::ConfigMap, CalicoKind::IpPool] {
                let _ = read(k, &v);
                if let Ok(s) = detect_switch(k, &v, &v) {
                    prop_assert!(s.is_none());
                }
            }
        }

        #[test]
        fn env_case_does_not_matter(a in level(), b in level(), upper in any::<bool>()) {
            let spell = |e: Encapsulation| if upper { e.as_str().to_uppercase() } else { e.as_str().to_lowercase() };
            let old = ds(json!([{"name": "CALICO_IPV4POOL_IPIP", "value": spell(a)}]));
            let new = ds(json!([{"name": "CALICO_IPV4POOL_IPIP", "value": spell(b)}]));
            prop_assert_eq!(detect_switch(CalicoKind::DaemonSet, &old, &new).unwrap().is_some(), b < a);
        }
    }
}
