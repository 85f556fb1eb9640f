//! What a Calico object says about encapsulation, and when an update lowers it
//! (a "switch"). Pure: no I/O, no async; objects arrive as full Kubernetes
//! objects in JSON.
//!
//! Values are read the way Calico reads them:
//! - DaemonSet `calico-node`: the literal env values of every container and
//!   init container. calico-node reads `CALICO_IPV4POOL_IPIP`/`_VXLAN`
//!   case-insensitively (absent = `Never`); Felix reads `FELIX_IPINIPENABLED`/
//!   `FELIX_VXLANENABLED` as booleans (absent or empty = not set, Felix then
//!   follows the IPPools). `valueFrom` is never followed: the ConfigMap it
//!   points at is guarded itself.
//! - ConfigMap `calico-config`: `data.calico_backend`.
//! - IPPool: `spec.ipipMode` / `spec.vxlanMode` (absent or empty = `Never`).
//!
//! The hot path (one ~14 KB DaemonSet per admission review) allocates only
//! for errors and for the reductions it reports.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Encapsulation level; ordered `Never < CrossSubnet < Always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Encapsulation {
    Never,
    CrossSubnet,
    Always,
}

/// The value whose spellings include `s` (trimmed, case-insensitive).
fn lookup<T: Copy>(s: &str, table: &[(&[&str], T)]) -> Option<T> {
    let s = s.trim();
    table
        .iter()
        .find(|(names, _)| one_of(s, names))
        .map(|(_, v)| *v)
}

/// Whether `s` is one of `options`, ignoring ASCII case.
fn one_of(s: &str, options: &[&str]) -> bool {
    options.iter().any(|o| s.eq_ignore_ascii_case(o))
}

impl Encapsulation {
    /// calico-node's reading of `CALICO_IPV4POOL_IPIP` / `CALICO_IPV4POOL_VXLAN`.
    pub fn parse_env(s: &str) -> Option<Self> {
        lookup(
            s,
            &[
                (&["", "off", "never", "false"], Self::Never),
                (&["crosssubnet", "cross-subnet"], Self::CrossSubnet),
                (&["always", "true", "on"], Self::Always),
            ],
        )
    }

    /// An IPPool's `ipipMode` / `vxlanMode` (empty = `Never`).
    pub fn parse_pool_mode(s: &str) -> Option<Self> {
        lookup(
            s,
            &[
                (&["", "never"], Self::Never),
                (&["crosssubnet"], Self::CrossSubnet),
                (&["always"], Self::Always),
            ],
        )
    }

    /// As Calico spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Never => "Never",
            Self::CrossSubnet => "CrossSubnet",
            Self::Always => "Always",
        }
    }
}

impl fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// `bird`, `vxlan` or `none`, case-insensitive, trimmed.
    pub fn parse(s: &str) -> Option<Self> {
        lookup(
            s,
            &[
                (&["bird"], Self::Bird),
                (&["vxlan"], Self::Vxlan),
                (&["none"], Self::None),
            ],
        )
    }

    /// As Calico spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bird => "bird",
            Self::Vxlan => "vxlan",
            Self::None => "none",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Felix's boolean spellings, case-insensitive, trimmed.
pub fn parse_felix_bool(s: &str) -> Option<bool> {
    lookup(
        s,
        &[
            (&["true", "1", "yes", "y", "t", "on"], true),
            (&["false", "0", "no", "n", "f", "off"], false),
        ],
    )
}

/// The value of one setting, ranked by how much encapsulation it means.
pub trait Level: Copy + fmt::Display {
    /// Higher = more encapsulation; equal ranks are no change in encapsulation.
    fn rank(self) -> u8;
}

impl Level for Encapsulation {
    fn rank(self) -> u8 {
        self as u8
    }
}

impl Level for bool {
    fn rank(self) -> u8 {
        u8::from(self)
    }
}

impl Level for Backend {
    /// `bird` and `vxlan` both carry an overlay; moving between them is not a
    /// reduction.
    fn rank(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Bird | Self::Vxlan => 1,
        }
    }
}

/// The "more encapsulation" order used for the levels of each setting:
/// true if `to` means less encapsulation than `from`.
pub fn is_lower<L: Level>(from: L, to: L) -> bool {
    to.rank() < from.rank()
}

/// The guarded Calico object kinds.
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

pub const ENV_IPIP: &str = "CALICO_IPV4POOL_IPIP";
pub const ENV_VXLAN: &str = "CALICO_IPV4POOL_VXLAN";
pub const ENV_FELIX_IPIP: &str = "FELIX_IPINIPENABLED";
pub const ENV_FELIX_VXLAN: &str = "FELIX_VXLANENABLED";
pub const ENV_BACKEND: &str = "CALICO_NETWORKING_BACKEND";

impl Setting {
    pub const ALL: [Setting; 5] = [
        Self::PoolIpip,
        Self::PoolVxlan,
        Self::FelixIpip,
        Self::FelixVxlan,
        Self::Backend,
    ];

    /// The DaemonSet env var that carries this setting.
    pub const fn env_var(self) -> &'static str {
        match self {
            Self::PoolIpip => ENV_IPIP,
            Self::PoolVxlan => ENV_VXLAN,
            Self::FelixIpip => ENV_FELIX_IPIP,
            Self::FelixVxlan => ENV_FELIX_VXLAN,
            Self::Backend => ENV_BACKEND,
        }
    }

    fn from_env_var(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.env_var() == name)
    }

    /// Where this setting is read in an object of `kind`, for messages.
    pub const fn source(self, kind: CalicoKind) -> &'static str {
        match (kind, self) {
            (CalicoKind::IpPool, Self::PoolIpip) => "spec.ipipMode",
            (CalicoKind::IpPool, Self::PoolVxlan) => "spec.vxlanMode",
            (CalicoKind::ConfigMap, Self::Backend) => "data.calico_backend",
            // Only the DaemonSet states the rest.
            (_, Self::PoolIpip) => "env CALICO_IPV4POOL_IPIP",
            (_, Self::PoolVxlan) => "env CALICO_IPV4POOL_VXLAN",
            (_, Self::FelixIpip) => "env FELIX_IPINIPENABLED",
            (_, Self::FelixVxlan) => "env FELIX_VXLANENABLED",
            (_, Self::Backend) => "env CALICO_NETWORKING_BACKEND",
        }
    }

    /// What Calico accepts here, for error messages.
    const fn expected(self, kind: CalicoKind) -> &'static str {
        match (kind, self) {
            (CalicoKind::IpPool, _) => "Always, CrossSubnet, Never or empty",
            (_, Self::PoolIpip | Self::PoolVxlan) => {
                "Always, CrossSubnet, Never (any case; also cross-subnet, true/on, false/off, empty)"
            }
            (_, Self::FelixIpip | Self::FelixVxlan) => {
                "true or false (any case; also 1/0, yes/no, y/n, t/f, on/off)"
            }
            (_, Self::Backend) => "bird, vxlan or none",
        }
    }
}

/// What one object says about the overlay. `None` = not stated / unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayConfig {
    /// DaemonSet env `CALICO_IPV4POOL_IPIP`; IPPool `spec.ipipMode`.
    pub ipip: Option<Encapsulation>,
    /// DaemonSet env `CALICO_IPV4POOL_VXLAN`; IPPool `spec.vxlanMode`.
    pub vxlan: Option<Encapsulation>,
    /// DaemonSet env `FELIX_IPINIPENABLED`.
    pub felix_ipip: Option<bool>,
    /// DaemonSet env `FELIX_VXLANENABLED`.
    pub felix_vxlan: Option<bool>,
    /// ConfigMap `data.calico_backend`; DaemonSet env
    /// `CALICO_NETWORKING_BACKEND` (literal value only).
    pub backend: Option<Backend>,
}

impl OverlayConfig {
    /// A short summary, e.g. "IPIP Always, VXLAN Never, backend bird".
    pub fn describe(&self) -> String {
        use fmt::Write;
        let mut out = String::new();
        let mut part = |label: &str, value: &dyn fmt::Display| {
            let sep = if out.is_empty() { "" } else { ", " };
            let _ = write!(out, "{sep}{label} {value}");
        };
        if let Some(e) = self.ipip {
            part("IPIP", &e);
        }
        if let Some(e) = self.vxlan {
            part("VXLAN", &e);
        }
        if let Some(b) = self.felix_ipip {
            part("Felix IPIP", &b);
        }
        if let Some(b) = self.felix_vxlan {
            part("Felix VXLAN", &b);
        }
        if let Some(b) = self.backend {
            part("backend", &b);
        }
        if out.is_empty() {
            out.push_str("no overlay settings");
        }
        out
    }

    fn clear(&mut self, setting: Setting) {
        match setting {
            Setting::PoolIpip => self.ipip = None,
            Setting::PoolVxlan => self.vxlan = None,
            Setting::FelixIpip => self.felix_ipip = None,
            Setting::FelixVxlan => self.felix_vxlan = None,
            Setting::Backend => self.backend = None,
        }
    }
}

/// One setting whose encapsulation goes down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reduction {
    pub setting: Setting,
    /// Where it was read, e.g. `spec.ipipMode`, `env CALICO_IPV4POOL_IPIP`.
    pub source: String,
    /// Old and new level, as Calico spells them.
    pub from: String,
    pub to: String,
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.source, self.from, self.to)
    }
}

/// A switch: an update with at least one reduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switch {
    pub kind: CalicoKind,
    pub reductions: Vec<Reduction>,
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.reductions.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A value Calico would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_field}: unrecognized value {value:?} (Calico accepts {expected})")]
pub struct ReadError {
    /// Where, e.g. `spec.ipipMode` or `container "calico-node" env FELIX_IPINIPENABLED`.
    pub source_field: String,
    /// The value as written; a non-string is its JSON text plus " (not a string)".
    pub value: String,
    pub expected: &'static str,
}

/// Reads what one object says about its overlay. Any value Calico would not
/// accept is an error.
pub fn read(kind: CalicoKind, obj: &Value) -> Result<OverlayConfig, ReadError> {
    Reader::new(kind, false).read(obj)
}

/// Like [`read`], but a setting with a value Calico would not accept is
/// unknown (`None`) instead of failing the whole object.
pub fn read_lenient(kind: CalicoKind, obj: &Value) -> OverlayConfig {
    // Lenient reading never returns Err: every error goes through `Reader::accept`.
    Reader::new(kind, true).read(obj).unwrap_or_default()
}

/// Settings stated on both sides whose level goes down. Increases (rollbacks)
/// and anything unknown on either side never count.
pub fn reductions(kind: CalicoKind, old: &OverlayConfig, new: &OverlayConfig) -> Vec<Reduction> {
    fn check<L: Level>(
        out: &mut Vec<Reduction>,
        kind: CalicoKind,
        setting: Setting,
        old: Option<L>,
        new: Option<L>,
    ) {
        if let (Some(from), Some(to)) = (old, new)
            && is_lower(from, to)
        {
            out.push(Reduction {
                setting,
                source: setting.source(kind).to_owned(),
                from: from.to_string(),
                to: to.to_string(),
            });
        }
    }
    let mut out = Vec::new();
    check(&mut out, kind, Setting::PoolIpip, old.ipip, new.ipip);
    check(&mut out, kind, Setting::PoolVxlan, old.vxlan, new.vxlan);
    check(
        &mut out,
        kind,
        Setting::FelixIpip,
        old.felix_ipip,
        new.felix_ipip,
    );
    check(
        &mut out,
        kind,
        Setting::FelixVxlan,
        old.felix_vxlan,
        new.felix_vxlan,
    );
    check(&mut out, kind, Setting::Backend, old.backend, new.backend);
    out
}

/// Reads both objects and compares. A value Calico would not accept in the
/// new object is an error (the caller reports it); in the old object it makes
/// that setting unknown, so it never makes a switch.
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

/// At most 128 bytes of `s` (cut on a char boundary), so that a huge
/// invalid value does not flood the admission response.
fn shorten(s: &str) -> String {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// One reading of one object; lenient readings turn invalid settings into
/// unknown ones.
struct Reader {
    kind: CalicoKind,
    lenient: bool,
    /// Settings that had an invalid value (lenient only), indexed by `Setting as usize`.
    invalid: [bool; 5],
}

impl Reader {
    fn new(kind: CalicoKind, lenient: bool) -> Self {
        Self {
            kind,
            lenient,
            invalid: [false; 5],
        }
    }

    fn read(mut self, obj: &Value) -> Result<OverlayConfig, ReadError> {
        let mut config = match self.kind {
            CalicoKind::IpPool => self.read_pool(obj)?,
            CalicoKind::ConfigMap => self.read_configmap(obj)?,
            CalicoKind::DaemonSet => self.read_daemonset(obj)?,
        };
        for s in Setting::ALL {
            if self.invalid[s as usize] {
                config.clear(s);
            }
        }
        Ok(config)
    }

    /// Strict: an invalid value fails the reading. Lenient: it marks the
    /// setting unknown and the reading goes on.
    fn accept<T>(
        &mut self,
        setting: Setting,
        r: Result<T, ReadError>,
    ) -> Result<Option<T>, ReadError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(_) if self.lenient => {
                self.invalid[setting as usize] = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn error(&self, setting: Setting, field: String, value: &Value) -> ReadError {
        let value = match value {
            Value::String(s) => shorten(s),
            other => format!("{} (not a string)", shorten(&other.to_string())),
        };
        ReadError {
            source_field: field,
            value,
            expected: setting.expected(self.kind),
        }
    }

    /// Parses a present JSON value with `parse`; `null` is read as `""`.
    fn parse<T>(
        &self,
        setting: Setting,
        value: &Value,
        field: impl FnOnce() -> String,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ReadError> {
        let text = match value {
            Value::Null => "",
            Value::String(s) => s.as_str(),
            _ => return Err(self.error(setting, field(), value)),
        };
        parse(text).ok_or_else(|| self.error(setting, field(), value))
    }

    fn read_pool(&mut self, obj: &Value) -> Result<OverlayConfig, ReadError> {
        let spec = obj.get("spec");
        let mut mode = |setting: Setting| {
            let key = match setting {
                Setting::PoolVxlan => "vxlanMode",
                _ => "ipipMode",
            };
            let parsed = match spec.and_then(|s| s.get(key)) {
                None => Ok(Encapsulation::Never),
                Some(v) => self.parse(
                    setting,
                    v,
                    || setting.source(CalicoKind::IpPool).to_owned(),
                    Encapsulation::parse_pool_mode,
                ),
            };
            self.accept(setting, parsed)
        };
        Ok(OverlayConfig {
            ipip: mode(Setting::PoolIpip)?,
            vxlan: mode(Setting::PoolVxlan)?,
            ..OverlayConfig::default()
        })
    }

    fn read_configmap(&mut self, obj: &Value) -> Result<OverlayConfig, ReadError> {
        let backend = match obj.get("data").and_then(|d| d.get("calico_backend")) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let parsed = self.parse(
                    Setting::Backend,
                    v,
                    || Setting::Backend.source(CalicoKind::ConfigMap).to_owned(),
                    Backend::parse,
                );
                self.accept(Setting::Backend, parsed)?
            }
        };
        Ok(OverlayConfig {
            backend,
            ..OverlayConfig::default()
        })
    }

    fn read_daemonset(&mut self, obj: &Value) -> Result<OverlayConfig, ReadError> {
        let mut acc = DaemonSetAcc::default();
        let pod = obj.pointer("/spec/template/spec");
        // Containers first: for bird vs vxlan outside calico-node the first one wins.
        for (list_key, label) in [
            ("containers", "container"),
            ("initContainers", "initContainer"),
        ] {
            let Some(list) = pod.and_then(|p| p.get(list_key)).and_then(Value::as_array) else {
                continue;
            };
            for container in list.iter().filter(|c| c.is_object()) {
                self.read_container(container, label, &mut acc)?;
            }
        }
        Ok(OverlayConfig {
            ipip: Some(acc.ipip),
            vxlan: Some(acc.vxlan),
            felix_ipip: acc.felix_ipip,
            felix_vxlan: acc.felix_vxlan,
            backend: acc.backend,
        })
    }

    fn read_container(
        &mut self,
        container: &Value,
        label: &str,
        acc: &mut DaemonSetAcc,
    ) -> Result<(), ReadError> {
        let name = container.get("name").and_then(Value::as_str).unwrap_or("");
        let Some(env) = container.get("env").and_then(Value::as_array) else {
            return Ok(());
        };
        // The effective entry of each overlay var: Kubernetes lets the last
        // occurrence of a name win. `None` inside = set through `valueFrom`.
        let mut effective: [Option<Option<&Value>>; 5] = [None; 5];
        for var in env {
            let Some(setting) = var
                .get("name")
                .and_then(Value::as_str)
                .and_then(Setting::from_env_var)
            else {
                continue;
            };
            let from_ref = var.get("valueFrom").is_some_and(|v| !v.is_null());
            // No `value` at all is the empty string, as in Kubernetes.
            effective[setting as usize] = Some(if from_ref {
                None
            } else {
                Some(var.get("value").unwrap_or(&Value::Null))
            });
        }
        for setting in Setting::ALL {
            let Some(Some(value)) = effective[setting as usize] else {
                continue; // absent, or not a literal
            };
            let field = || format!("{label} {name:?} env {}", setting.env_var());
            match setting {
                Setting::PoolIpip | Setting::PoolVxlan => {
                    let parsed = self.parse(setting, value, field, Encapsulation::parse_env);
                    if let Some(level) = self.accept(setting, parsed)? {
                        let slot = if setting == Setting::PoolIpip {
                            &mut acc.ipip
                        } else {
                            &mut acc.vxlan
                        };
                        *slot = (*slot).max(level);
                    }
                }
                Setting::FelixIpip | Setting::FelixVxlan => {
                    // Felix ignores an empty value: not set.
                    let parsed = self.parse(setting, value, field, |s| {
                        if s.trim().is_empty() {
                            Some(None)
                        } else {
                            parse_felix_bool(s).map(Some)
                        }
                    });
                    if let Some(Some(on)) = self.accept(setting, parsed)? {
                        let slot = if setting == Setting::FelixIpip {
                            &mut acc.felix_ipip
                        } else {
                            &mut acc.felix_vxlan
                        };
                        *slot = Some(slot.unwrap_or(false) || on);
                    }
                }
                Setting::Backend => {
                    let parsed = self.parse(setting, value, field, Backend::parse);
                    if let Some(b) = self.accept(setting, parsed)? {
                        acc.merge_backend(b, name == "calico-node");
                    }
                }
            }
        }
        Ok(())
    }
}

/// The most encapsulation any container of a DaemonSet states.
struct DaemonSetAcc {
    ipip: Encapsulation,
    vxlan: Encapsulation,
    felix_ipip: Option<bool>,
    felix_vxlan: Option<bool>,
    backend: Option<Backend>,
    backend_from_calico_node: bool,
}

impl Default for DaemonSetAcc {
    fn default() -> Self {
        Self {
            // calico-node's default when the variable is absent.
            ipip: Encapsulation::Never,
            vxlan: Encapsulation::Never,
            felix_ipip: None,
            felix_vxlan: None,
            backend: None,
            backend_from_calico_node: false,
        }
    }
}

impl DaemonSetAcc {
    /// Any overlay backend beats `none`; between `bird` and `vxlan` the first
    /// one stated by the calico-node container wins, else the first one seen.
    fn merge_backend(&mut self, b: Backend, from_calico_node: bool) {
        let replace = match (self.backend, b) {
            (None, _) => true,
            (Some(Backend::None), Backend::Bird | Backend::Vxlan) => true,
            (Some(Backend::Bird | Backend::Vxlan), Backend::Bird | Backend::Vxlan) => {
                from_calico_node && !self.backend_from_calico_node
            }
            _ => false,
        };
        if replace {
            self.backend = Some(b);
            self.backend_from_calico_node = from_calico_node;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encapsulation::{Always, CrossSubnet, Never};
    use proptest::prelude::*;
    use serde_json::json;

    const LEVELS: [Encapsulation; 3] = [Never, CrossSubnet, Always];

    /// A DaemonSet whose calico-node container has `env`.
    fn ds(env: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": [{"name": "calico-node", "env": env}]}}}})
    }

    /// A DaemonSet with the given containers and init containers.
    fn ds_with(containers: Value, init: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": containers, "initContainers": init}}}})
    }

    fn var(name: &str, value: &str) -> Value {
        json!({"name": name, "value": value})
    }

    fn pool(ipip: &str, vxlan: &str) -> Value {
        json!({"spec": {"ipipMode": ipip, "vxlanMode": vxlan}})
    }

    fn cm(backend: &str) -> Value {
        json!({"data": {"calico_backend": backend}})
    }

    fn switch(kind: CalicoKind, old: &Value, new: &Value) -> Option<Switch> {
        detect_switch(kind, old, new).expect("new object readable")
    }

    fn red(setting: Setting, source: &str, from: &str, to: &str) -> Reduction {
        Reduction {
            setting,
            source: source.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Never < CrossSubnet && CrossSubnet < Always);
        assert!(is_lower(Always, CrossSubnet));
        assert!(is_lower(Always, Never));
        assert!(is_lower(CrossSubnet, Never));
        assert!(!is_lower(Never, Always));
        assert!(!is_lower(Always, Always));
        assert!(is_lower(true, false));
        assert!(!is_lower(false, true));
        assert!(is_lower(Backend::Bird, Backend::None));
        assert!(is_lower(Backend::Vxlan, Backend::None));
        assert!(!is_lower(Backend::Bird, Backend::Vxlan));
        assert!(!is_lower(Backend::Vxlan, Backend::Bird));
        assert!(!is_lower(Backend::None, Backend::Bird));
    }

    #[test]
    fn env_modes_are_read_like_calico_node() {
        for (s, want) in [
            ("Always", Some(Always)),
            ("always", Some(Always)),
            (" ALWAYS\t", Some(Always)),
            ("true", Some(Always)),
            ("On", Some(Always)),
            ("CrossSubnet", Some(CrossSubnet)),
            ("crosssubnet", Some(CrossSubnet)),
            ("Cross-Subnet", Some(CrossSubnet)),
            ("Never", Some(Never)),
            ("never", Some(Never)),
            ("off", Some(Never)),
            ("FALSE", Some(Never)),
            ("", Some(Never)),
            ("  ", Some(Never)),
            ("sometimes", None),
            ("cross subnet", None),
            ("1", None),
            ("alwaysx", None),
        ] {
            assert_eq!(Encapsulation::parse_env(s), want, "{s:?}");
        }
    }

    #[test]
    fn pool_modes_are_stricter_than_env() {
        for (s, want) in [
            ("Always", Some(Always)),
            ("always", Some(Always)),
            ("CrossSubnet", Some(CrossSubnet)),
            ("CROSSSUBNET", Some(CrossSubnet)),
            ("Never", Some(Never)),
            ("", Some(Never)),
            ("cross-subnet", None),
            ("off", None),
            ("true", None),
            ("false", None),
        ] {
            assert_eq!(Encapsulation::parse_pool_mode(s), want, "{s:?}");
        }
    }

    #[test]
    fn felix_bools_and_backends() {
        for s in ["true", "TRUE", "1", "yes", "Y", "t", "on", " true "] {
            assert_eq!(parse_felix_bool(s), Some(true), "{s:?}");
        }
        for s in ["false", "False", "0", "no", "N", "f", "OFF"] {
            assert_eq!(parse_felix_bool(s), Some(false), "{s:?}");
        }
        for s in ["", "maybe", "2", "enabled"] {
            assert_eq!(parse_felix_bool(s), None, "{s:?}");
        }
        assert_eq!(Backend::parse("bird"), Some(Backend::Bird));
        assert_eq!(Backend::parse(" BIRD "), Some(Backend::Bird));
        assert_eq!(Backend::parse("VXLAN"), Some(Backend::Vxlan));
        assert_eq!(Backend::parse("None"), Some(Backend::None));
        assert_eq!(Backend::parse(""), None);
        assert_eq!(Backend::parse("gobgp"), None);
    }

    #[test]
    fn describe_and_display() {
        let c = OverlayConfig {
            ipip: Some(Always),
            vxlan: Some(Never),
            backend: Some(Backend::Bird),
            ..Default::default()
        };
        assert_eq!(c.describe(), "IPIP Always, VXLAN Never, backend bird");
        let c = OverlayConfig {
            felix_ipip: Some(true),
            felix_vxlan: Some(false),
            ..Default::default()
        };
        assert_eq!(c.describe(), "Felix IPIP true, Felix VXLAN false");
        assert_eq!(OverlayConfig::default().describe(), "no overlay settings");

        let s = Switch {
            kind: CalicoKind::IpPool,
            reductions: vec![
                red(Setting::PoolIpip, "spec.ipipMode", "Always", "Never"),
                red(Setting::PoolVxlan, "spec.vxlanMode", "CrossSubnet", "Never"),
            ],
        };
        assert_eq!(
            s.to_string(),
            "spec.ipipMode Always -> Never, spec.vxlanMode CrossSubnet -> Never"
        );
        let e = ReadError {
            source_field: "spec.ipipMode".into(),
            value: "Sometimes".into(),
            expected: "Always",
        };
        assert_eq!(
            e.to_string(),
            "spec.ipipMode: unrecognized value \"Sometimes\" (Calico accepts Always)"
        );
    }

    #[test]
    fn sources_name_where_each_setting_is_read() {
        for (setting, kind, source) in [
            (Setting::PoolIpip, CalicoKind::IpPool, "spec.ipipMode"),
            (Setting::PoolVxlan, CalicoKind::IpPool, "spec.vxlanMode"),
            (
                Setting::Backend,
                CalicoKind::ConfigMap,
                "data.calico_backend",
            ),
            (
                Setting::PoolIpip,
                CalicoKind::DaemonSet,
                "env CALICO_IPV4POOL_IPIP",
            ),
            (
                Setting::PoolVxlan,
                CalicoKind::DaemonSet,
                "env CALICO_IPV4POOL_VXLAN",
            ),
            (
                Setting::FelixIpip,
                CalicoKind::DaemonSet,
                "env FELIX_IPINIPENABLED",
            ),
            (
                Setting::FelixVxlan,
                CalicoKind::DaemonSet,
                "env FELIX_VXLANENABLED",
            ),
            (
                Setting::Backend,
                CalicoKind::DaemonSet,
                "env CALICO_NETWORKING_BACKEND",
            ),
        ] {
            assert_eq!(setting.source(kind), source, "{setting:?} in {kind:?}");
        }
    }

    #[test]
    fn daemonset_reading() {
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([
                var("CALICO_IPV4POOL_IPIP", "Always"),
                var("FELIX_IPINIPENABLED", "true"),
                var("FELIX_VXLANENABLED", "no"),
                var("CALICO_NETWORKING_BACKEND", "Bird"),
                var("CALICO_IPV6POOL_VXLAN", "Always"),
                var("IP", "autodetect"),
            ])),
        )
        .unwrap();
        assert_eq!(
            c,
            OverlayConfig {
                ipip: Some(Always),
                vxlan: Some(Never),
                felix_ipip: Some(true),
                felix_vxlan: Some(false),
                backend: Some(Backend::Bird),
            }
        );
    }

    #[test]
    fn absent_vars_are_calicos_defaults() {
        let empty = OverlayConfig {
            ipip: Some(Never),
            vxlan: Some(Never),
            ..Default::default()
        };
        assert_eq!(read(CalicoKind::DaemonSet, &ds(json!([]))).unwrap(), empty);
        assert_eq!(read(CalicoKind::DaemonSet, &json!({})).unwrap(), empty);
        // An env entry without value is the empty string: Never for the pool
        // modes, not set for Felix.
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([{"name": "CALICO_IPV4POOL_VXLAN"}, {"name": "FELIX_VXLANENABLED", "value": ""}])),
        )
        .unwrap();
        assert_eq!(c, empty);
        assert_eq!(
            read(CalicoKind::IpPool, &json!({"spec": {}})).unwrap(),
            empty,
            "absent pool modes are Never"
        );
        assert_eq!(read(CalicoKind::IpPool, &pool("", "")).unwrap(), empty);
        assert_eq!(
            read(CalicoKind::ConfigMap, &json!({"data": {"veth_mtu": "0"}})).unwrap(),
            OverlayConfig::default()
        );
    }

    #[test]
    fn value_from_is_ignored() {
        let from_ref = json!({"name": "CALICO_NETWORKING_BACKEND",
            "valueFrom": {"configMapKeyRef": {"name": "calico-config", "key": "calico_backend"}}});
        let c = read(CalicoKind::DaemonSet, &ds(json!([from_ref]))).unwrap();
        assert_eq!(c.backend, None);
        // A later valueFrom entry overrides an earlier literal (last wins).
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([var("CALICO_NETWORKING_BACKEND", "bird"), from_ref])),
        )
        .unwrap();
        assert_eq!(c.backend, None);
        let ipip_ref = json!({"name": "CALICO_IPV4POOL_IPIP", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}});
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([var("CALICO_IPV4POOL_IPIP", "Always"), ipip_ref])),
        )
        .unwrap();
        assert_eq!(
            c.ipip,
            Some(Never),
            "a referenced IPIP mode is as if absent"
        );
        // The literal -> valueFrom change of the backend is not a switch.
        assert_eq!(
            switch(
                CalicoKind::DaemonSet,
                &ds(json!([var("CALICO_NETWORKING_BACKEND", "bird")])),
                &ds(json!([from_ref])),
            ),
            None
        );
    }

    #[test]
    fn last_duplicate_wins_within_a_container() {
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([
                var("CALICO_IPV4POOL_IPIP", "Always"),
                var("FELIX_IPINIPENABLED", "true"),
                var("CALICO_IPV4POOL_IPIP", "CrossSubnet"),
                var("FELIX_IPINIPENABLED", "false"),
            ])),
        )
        .unwrap();
        assert_eq!(c.ipip, Some(CrossSubnet));
        assert_eq!(c.felix_ipip, Some(false));
        // An invalid earlier duplicate is overridden, never read.
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([
                var("CALICO_IPV4POOL_IPIP", "bogus"),
                var("CALICO_IPV4POOL_IPIP", "Never")
            ])),
        )
        .unwrap();
        assert_eq!(c.ipip, Some(Never));
    }

    #[test]
    fn containers_take_the_maximum() {
        let d = ds_with(
            json!([
                {"name": "helper", "env": [var("CALICO_IPV4POOL_VXLAN", "CrossSubnet"), var("FELIX_IPINIPENABLED", "true")]},
                {"name": "calico-node", "env": [var("CALICO_IPV4POOL_VXLAN", "Never"), var("FELIX_IPINIPENABLED", "false"),
                    var("CALICO_IPV4POOL_IPIP", "CrossSubnet")]},
            ]),
            json!([{"name": "init", "env": [var("CALICO_IPV4POOL_IPIP", "Always"), var("FELIX_VXLANENABLED", "false")]}]),
        );
        assert_eq!(
            read(CalicoKind::DaemonSet, &d).unwrap(),
            OverlayConfig {
                ipip: Some(Always),
                vxlan: Some(CrossSubnet),
                felix_ipip: Some(true),
                felix_vxlan: Some(false),
                backend: None,
            }
        );
    }

    #[test]
    fn backend_across_containers() {
        let backend = |containers: Value, init: Value| {
            read(CalicoKind::DaemonSet, &ds_with(containers, init))
                .unwrap()
                .backend
        };
        let c = |name: &str, b: &str| json!({"name": name, "env": [var("CALICO_NETWORKING_BACKEND", b)]});
        // Any overlay backend beats none, wherever it is.
        assert_eq!(
            backend(
                json!([c("calico-node", "none")]),
                json!([c("init", "bird")])
            ),
            Some(Backend::Bird)
        );
        assert_eq!(
            backend(
                json!([c("a", "vxlan"), c("calico-node", "none")]),
                json!([])
            ),
            Some(Backend::Vxlan)
        );
        assert_eq!(
            backend(json!([c("a", "none"), c("calico-node", "none")]), json!([])),
            Some(Backend::None)
        );
        // bird vs vxlan: calico-node's wins ...
        assert_eq!(
            backend(
                json!([c("a", "bird"), c("calico-node", "vxlan")]),
                json!([])
            ),
            Some(Backend::Vxlan)
        );
        assert_eq!(
            backend(
                json!([c("calico-node", "vxlan")]),
                json!([c("init", "bird")])
            ),
            Some(Backend::Vxlan)
        );
        // ... else the first seen (containers before init containers).
        assert_eq!(
            backend(json!([c("a", "bird"), c("b", "vxlan")]), json!([])),
            Some(Backend::Bird)
        );
        assert_eq!(
            backend(json!([c("a", "vxlan")]), json!([c("init", "bird")])),
            Some(Backend::Vxlan)
        );
    }

    #[test]
    fn reductions_matrix_for_pool_levels() {
        for from in LEVELS {
            for to in LEVELS {
                let old = OverlayConfig {
                    ipip: Some(from),
                    ..Default::default()
                };
                let new = OverlayConfig {
                    ipip: Some(to),
                    ..Default::default()
                };
                let got = reductions(CalicoKind::IpPool, &old, &new);
                if to < from {
                    assert_eq!(
                        got,
                        vec![red(
                            Setting::PoolIpip,
                            "spec.ipipMode",
                            from.as_str(),
                            to.as_str()
                        )],
                        "{from} -> {to}"
                    );
                } else {
                    assert!(got.is_empty(), "{from} -> {to}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn reductions_need_both_sides_stated() {
        let all = OverlayConfig {
            ipip: Some(Always),
            vxlan: Some(Always),
            felix_ipip: Some(true),
            felix_vxlan: Some(true),
            backend: Some(Backend::Bird),
        };
        let none = OverlayConfig {
            ipip: Some(Never),
            vxlan: Some(Never),
            felix_ipip: Some(false),
            felix_vxlan: Some(false),
            backend: Some(Backend::None),
        };
        let got = reductions(CalicoKind::DaemonSet, &all, &none);
        assert_eq!(
            got,
            vec![
                red(
                    Setting::PoolIpip,
                    "env CALICO_IPV4POOL_IPIP",
                    "Always",
                    "Never"
                ),
                red(
                    Setting::PoolVxlan,
                    "env CALICO_IPV4POOL_VXLAN",
                    "Always",
                    "Never"
                ),
                red(
                    Setting::FelixIpip,
                    "env FELIX_IPINIPENABLED",
                    "true",
                    "false"
                ),
                red(
                    Setting::FelixVxlan,
                    "env FELIX_VXLANENABLED",
                    "true",
                    "false"
                ),
                red(
                    Setting::Backend,
                    "env CALICO_NETWORKING_BACKEND",
                    "bird",
                    "none"
                ),
            ]
        );
        // Unknown on either side: nothing.
        assert!(reductions(CalicoKind::DaemonSet, &all, &OverlayConfig::default()).is_empty());
        assert!(reductions(CalicoKind::DaemonSet, &OverlayConfig::default(), &none).is_empty());
        // Rollback: nothing.
        assert!(reductions(CalicoKind::DaemonSet, &none, &all).is_empty());
    }

    #[test]
    fn switches_and_rollbacks() {
        let k = CalicoKind::IpPool;
        let s = switch(k, &pool("Always", "Never"), &pool("CrossSubnet", "Never")).unwrap();
        assert_eq!(s.kind, CalicoKind::IpPool);
        assert_eq!(s.to_string(), "spec.ipipMode Always -> CrossSubnet");
        assert_eq!(
            switch(k, &pool("Never", "Never"), &pool("Always", "Never")),
            None
        );
        // IPIP -> VXLAN lowers IPIP: a switch, and its reverse is one too (VXLAN).
        let s = switch(k, &pool("Always", "Never"), &pool("Never", "Always")).unwrap();
        assert_eq!(
            s.reductions,
            vec![red(Setting::PoolIpip, "spec.ipipMode", "Always", "Never")]
        );
        // Spelling changes at the same level are not switches.
        assert_eq!(
            switch(k, &pool("Always", "Never"), &pool("always", "")),
            None
        );

        // Felix: true -> absent is not a switch, true -> false is.
        let d = CalicoKind::DaemonSet;
        let on = ds(json!([var("FELIX_IPINIPENABLED", "true")]));
        assert_eq!(switch(d, &on, &ds(json!([]))), None);
        assert_eq!(
            switch(d, &on, &ds(json!([var("FELIX_IPINIPENABLED", "")]))),
            None
        );
        let s = switch(d, &on, &ds(json!([var("FELIX_IPINIPENABLED", "0")]))).unwrap();
        assert_eq!(
            s.reductions,
            vec![red(
                Setting::FelixIpip,
                "env FELIX_IPINIPENABLED",
                "true",
                "false"
            )]
        );
        assert_eq!(
            switch(d, &ds(json!([var("FELIX_IPINIPENABLED", "false")])), &on),
            None
        );
        // Env pool mode: absent = Never, so removing Always is a switch.
        let s = switch(
            d,
            &ds(json!([var("CALICO_IPV4POOL_VXLAN", "Always")])),
            &ds(json!([])),
        )
        .unwrap();
        assert_eq!(
            s.reductions,
            vec![red(
                Setting::PoolVxlan,
                "env CALICO_IPV4POOL_VXLAN",
                "Always",
                "Never"
            )]
        );

        // Backend: bird <-> vxlan is not a switch; -> none is.
        let c = CalicoKind::ConfigMap;
        assert_eq!(switch(c, &cm("bird"), &cm("vxlan")), None);
        assert_eq!(switch(c, &cm("vxlan"), &cm("bird")), None);
        assert_eq!(switch(c, &cm("none"), &cm("bird")), None);
        let s = switch(c, &cm("vxlan"), &cm("none")).unwrap();
        assert_eq!(s.to_string(), "data.calico_backend vxlan -> none");
        // Removing calico_backend is unknown, not a switch.
        assert_eq!(switch(c, &cm("bird"), &json!({"data": {}})), None);
    }

    #[test]
    fn invalid_new_is_an_error() {
        let e = detect_switch(
            CalicoKind::IpPool,
            &pool("Always", "Never"),
            &pool("Sometimes", "Never"),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ReadError {
                source_field: "spec.ipipMode".into(),
                value: "Sometimes".into(),
                expected: "Always, CrossSubnet, Never or empty",
            }
        );
        // Even when the old object is the same (not a change of that field).
        assert!(
            detect_switch(CalicoKind::IpPool, &pool("x", "Never"), &pool("x", "Never")).is_err()
        );

        let e = detect_switch(
            CalicoKind::DaemonSet,
            &ds(json!([])),
            &ds(json!([var("FELIX_VXLANENABLED", "perhaps")])),
        )
        .unwrap_err();
        assert_eq!(
            e.source_field,
            "container \"calico-node\" env FELIX_VXLANENABLED"
        );
        assert_eq!(e.value, "perhaps");

        let e = read(
            CalicoKind::DaemonSet,
            &ds_with(
                json!([]),
                json!([{"name": "init", "env": [{"name": "CALICO_IPV4POOL_IPIP", "value": 3}]}]),
            ),
        )
        .unwrap_err();
        assert_eq!(
            e.source_field,
            "initContainer \"init\" env CALICO_IPV4POOL_IPIP"
        );
        assert_eq!(e.value, "3 (not a string)");

        let e = read(CalicoKind::ConfigMap, &cm("gobgp")).unwrap_err();
        assert_eq!(
            (e.source_field.as_str(), e.value.as_str()),
            ("data.calico_backend", "gobgp")
        );
        let e = read(
            CalicoKind::ConfigMap,
            &json!({"data": {"calico_backend": true}}),
        )
        .unwrap_err();
        assert_eq!(e.value, "true (not a string)");
        let e = read(
            CalicoKind::IpPool,
            &json!({"spec": {"vxlanMode": ["Always"]}}),
        )
        .unwrap_err();
        assert_eq!(e.source_field, "spec.vxlanMode");
        let e = read(
            CalicoKind::DaemonSet,
            &ds(json!([var("CALICO_NETWORKING_BACKEND", "")])),
        )
        .unwrap_err();
        assert_eq!(
            e.source_field,
            "container \"calico-node\" env CALICO_NETWORKING_BACKEND"
        );
    }

    #[test]
    fn huge_invalid_values_are_shortened() {
        let long = "é".repeat(100); // 200 bytes
        let e = read(CalicoKind::ConfigMap, &cm(&long)).unwrap_err();
        assert_eq!(e.value, format!("{}...", "é".repeat(64)));
        let e = read(
            CalicoKind::IpPool,
            &json!({"spec": {"ipipMode": vec![1; 100]}}),
        )
        .unwrap_err();
        assert!(e.value.starts_with("[1,1,1,"), "{}", e.value);
        assert!(e.value.ends_with("... (not a string)"), "{}", e.value);
        assert_eq!(e.value.len(), 128 + "... (not a string)".len());
    }

    #[test]
    fn invalid_old_is_unknown_and_never_a_switch() {
        let k = CalicoKind::IpPool;
        assert_eq!(
            switch(k, &pool("Sometimes", "Always"), &pool("Never", "Always")),
            None
        );
        // Other settings of the broken old object still count.
        let s = switch(k, &pool("Sometimes", "Always"), &pool("Never", "Never")).unwrap();
        assert_eq!(
            s.reductions,
            vec![red(Setting::PoolVxlan, "spec.vxlanMode", "Always", "Never")]
        );
        assert_eq!(
            read_lenient(k, &pool("Sometimes", "Always")),
            OverlayConfig {
                ipip: None,
                vxlan: Some(Always),
                ..Default::default()
            }
        );

        let d = CalicoKind::DaemonSet;
        // An invalid value in any container makes the whole setting unknown.
        let old = ds_with(
            json!([{"name": "calico-node", "env": [var("CALICO_IPV4POOL_IPIP", "Always"), var("FELIX_IPINIPENABLED", "true")]}]),
            json!([{"name": "init", "env": [{"name": "CALICO_IPV4POOL_IPIP", "value": {"x": 1}}]}]),
        );
        assert_eq!(
            read_lenient(d, &old),
            OverlayConfig {
                ipip: None,
                vxlan: Some(Never),
                felix_ipip: Some(true),
                ..Default::default()
            }
        );
        let new = ds(json!([
            var("CALICO_IPV4POOL_IPIP", "Never"),
            var("FELIX_IPINIPENABLED", "true")
        ]));
        assert_eq!(switch(d, &old, &new), None);
        let new = ds(json!([
            var("CALICO_IPV4POOL_IPIP", "Never"),
            var("FELIX_IPINIPENABLED", "false")
        ]));
        assert_eq!(
            switch(d, &old, &new).unwrap().reductions,
            vec![red(
                Setting::FelixIpip,
                "env FELIX_IPINIPENABLED",
                "true",
                "false"
            )]
        );

        assert_eq!(
            switch(CalicoKind::ConfigMap, &cm("gobgp"), &cm("none")),
            None
        );
    }

    #[test]
    fn odd_shapes_do_not_panic_and_read_as_nothing() {
        let defaults = OverlayConfig {
            ipip: Some(Never),
            vxlan: Some(Never),
            ..Default::default()
        };
        for v in [
            json!(null),
            json!(7),
            json!("spec"),
            json!([]),
            json!([{"spec": {}}]),
            json!({"spec": []}),
            json!({"spec": "x"}),
            json!({"spec": {"template": []}}),
            json!({"spec": {"template": {"spec": {"containers": {}}}}}),
            json!({"spec": {"template": {"spec": {"containers": null, "initContainers": 5}}}}),
            json!({"spec": {"template": {"spec": {"containers": [1, "x", null, [], {"env": "x"}, {"env": {}},
                {"name": 5, "env": [1, null, [], {"name": 2}, {"value": "Always"}, {"name": null, "value": "x"}]}]}}}}),
            json!({"data": []}),
            json!({"data": "calico_backend"}),
        ] {
            assert_eq!(read(CalicoKind::DaemonSet, &v).unwrap(), defaults, "{v}");
            assert_eq!(read(CalicoKind::IpPool, &v).unwrap(), defaults, "{v}");
            assert_eq!(
                read(CalicoKind::ConfigMap, &v).unwrap(),
                OverlayConfig::default(),
                "{v}"
            );
            for k in [
                CalicoKind::DaemonSet,
                CalicoKind::ConfigMap,
                CalicoKind::IpPool,
            ] {
                assert_eq!(detect_switch(k, &v, &v), Ok(None), "{k:?} {v}");
            }
        }
    }

    // ---- Property tests ----

    fn level() -> impl Strategy<Value = Encapsulation> {
        prop::sample::select(LEVELS.to_vec())
    }

    fn backend() -> impl Strategy<Value = Backend> {
        prop::sample::select(vec![Backend::Bird, Backend::Vxlan, Backend::None])
    }

    fn config() -> impl Strategy<Value = OverlayConfig> {
        (
            prop::option::of(level()),
            prop::option::of(level()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(backend()),
        )
            .prop_map(
                |(ipip, vxlan, felix_ipip, felix_vxlan, backend)| OverlayConfig {
                    ipip,
                    vxlan,
                    felix_ipip,
                    felix_vxlan,
                    backend,
                },
            )
    }

    /// An env spelling calico-node reads as `level`, in random case.
    fn env_spelling(level: Encapsulation) -> impl Strategy<Value = String> {
        let spellings: &[&str] = match level {
            Never => &["Never", "off", "false", ""],
            CrossSubnet => &["CrossSubnet", "cross-subnet"],
            Always => &["Always", "true", "on"],
        };
        (
            prop::sample::select(spellings.to_vec()),
            prop::collection::vec(any::<bool>(), 12),
        )
            .prop_map(|(s, upper)| {
                s.chars()
                    .zip(upper.into_iter().cycle())
                    .map(|(c, u)| {
                        if u {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect()
            })
    }

    /// Arbitrary JSON trees whose keys and strings are mostly ones the reader
    /// looks at, so that deep paths are reached.
    fn json_tree() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            prop::sample::select(vec![
                "Always",
                "Never",
                "CrossSubnet",
                "bird",
                "none",
                "true",
                "",
                "calico-node",
                "CALICO_IPV4POOL_IPIP",
                "FELIX_IPINIPENABLED",
                "CALICO_NETWORKING_BACKEND",
            ])
            .prop_map(String::from),
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            text.prop_map(Value::String),
        ];
        let key = prop::sample::select(vec![
            "spec",
            "template",
            "containers",
            "initContainers",
            "env",
            "name",
            "value",
            "valueFrom",
            "ipipMode",
            "vxlanMode",
            "data",
            "calico_backend",
            "x",
        ])
        .prop_map(String::from);
        leaf.prop_recursive(7, 96, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A DaemonSet skeleton with arbitrary env entries and values.
    fn ds_tree() -> impl Strategy<Value = Value> {
        let name = prop::sample::select(vec![
            ENV_IPIP,
            ENV_VXLAN,
            ENV_FELIX_IPIP,
            ENV_FELIX_VXLAN,
            ENV_BACKEND,
            "IP",
        ]);
        let entry = (name, json_tree(), any::<bool>()).prop_map(|(n, v, from_ref)| {
            if from_ref {
                json!({"name": n, "valueFrom": v})
            } else {
                json!({"name": n, "value": v})
            }
        });
        let container = (
            prop::sample::select(vec!["calico-node", "other"]),
            prop::collection::vec(entry, 0..5),
        )
            .prop_map(|(n, env)| json!({"name": n, "env": env}))
            .boxed();
        (
            prop::collection::vec(container.clone(), 0..3),
            prop::collection::vec(container, 0..2),
        )
            .prop_map(|(c, i)| ds_with(Value::Array(c), Value::Array(i)))
    }

    const KINDS: [CalicoKind; 3] = [
        CalicoKind::DaemonSet,
        CalicoKind::ConfigMap,
        CalicoKind::IpPool,
    ];

    proptest! {
        #[test]
        fn a_pool_switch_is_exactly_a_lower_level(a in level(), b in level(), other in level()) {
            for (old, new, setting, source) in [
                (pool(a.as_str(), other.as_str()), pool(b.as_str(), other.as_str()), Setting::PoolIpip, "spec.ipipMode"),
                (pool(other.as_str(), a.as_str()), pool(other.as_str(), b.as_str()), Setting::PoolVxlan, "spec.vxlanMode"),
            ] {
                let s = switch(CalicoKind::IpPool, &old, &new);
                prop_assert_eq!(s.is_some(), b < a);
                if let Some(s) = s {
                    prop_assert_eq!(s.reductions, vec![red(setting, source, a.as_str(), b.as_str())]);
                }
            }
        }

        #[test]
        fn env_levels_in_any_spelling(
            (a, b, sa, sb) in (level(), level())
                .prop_flat_map(|(a, b)| (Just(a), Just(b), env_spelling(a), env_spelling(b))),
        ) {
            prop_assert_eq!(Encapsulation::parse_env(&sa), Some(a), "{:?}", sa);
            prop_assert_eq!(Encapsulation::parse_env(&sb), Some(b), "{:?}", sb);
            let old = ds(json!([var(ENV_VXLAN, &sa)]));
            let new = ds(json!([var(ENV_VXLAN, &sb)]));
            prop_assert_eq!(switch(CalicoKind::DaemonSet, &old, &new).is_some(), b < a);
        }

        #[test]
        fn no_change_is_no_reduction(x in config()) {
            for k in KINDS {
                prop_assert!(reductions(k, &x, &x).is_empty());
            }
        }

        #[test]
        fn reductions_are_exactly_the_lowered_stated_settings(a in config(), b in config()) {
            let got: Vec<Setting> = reductions(CalicoKind::DaemonSet, &a, &b).into_iter().map(|r| r.setting).collect();
            let mut want = Vec::new();
            let lowered = |o: Option<u8>, n: Option<u8>| matches!((o, n), (Some(o), Some(n)) if n < o);
            let rank = |c: &OverlayConfig| [
                c.ipip.map(Level::rank), c.vxlan.map(Level::rank), c.felix_ipip.map(Level::rank),
                c.felix_vxlan.map(Level::rank), c.backend.map(Level::rank),
            ];
            for (i, s) in Setting::ALL.into_iter().enumerate() {
                if lowered(rank(&a)[i], rank(&b)[i]) {
                    want.push(s);
                }
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn no_setting_is_reduced_both_ways(a in config(), b in config()) {
            let there = reductions(CalicoKind::DaemonSet, &a, &b);
            let back = reductions(CalicoKind::DaemonSet, &b, &a);
            for r in &there {
                prop_assert!(!back.iter().any(|x| x.setting == r.setting), "{} both ways", r);
            }
        }

        #[test]
        fn a_single_setting_switch_and_its_reverse_are_never_both_switches(
            a in level(), b in level(), fa in any::<bool>(), fb in any::<bool>(), ba in backend(), bb in backend(),
        ) {
            let pairs = [
                (pool(a.as_str(), "Never"), pool(b.as_str(), "Never"), CalicoKind::IpPool),
                (ds(json!([var(ENV_IPIP, a.as_str())])), ds(json!([var(ENV_IPIP, b.as_str())])), CalicoKind::DaemonSet),
                (ds(json!([var(ENV_FELIX_VXLAN, &fa.to_string())])), ds(json!([var(ENV_FELIX_VXLAN, &fb.to_string())])), CalicoKind::DaemonSet),
                (cm(ba.as_str()), cm(bb.as_str()), CalicoKind::ConfigMap),
            ];
            for (x, y, k) in pairs {
                prop_assert!(!(switch(k, &x, &y).is_some() && switch(k, &y, &x).is_some()));
            }
        }

        #[test]
        fn containers_take_the_maximum_and_duplicates_the_last(
            levels in prop::collection::vec(prop::collection::vec(level(), 0..4), 0..4),
            felix in prop::collection::vec(prop::option::of(any::<bool>()), 0..4),
        ) {
            let containers: Vec<Value> = levels.iter().enumerate().map(|(i, ls)| {
                let mut env: Vec<Value> = ls.iter().map(|l| var(ENV_IPIP, l.as_str())).collect();
                if let Some(Some(f)) = felix.get(i) {
                    env.push(var(ENV_FELIX_IPIP, if *f { "yes" } else { "no" }));
                }
                json!({"name": format!("c{i}"), "env": env})
            }).collect();
            let c = read(CalicoKind::DaemonSet, &ds_with(Value::Array(containers), json!([]))).unwrap();
            let want = levels.iter().filter_map(|ls| ls.last().copied()).max().unwrap_or(Never);
            prop_assert_eq!(c.ipip, Some(want));
            let stated: Vec<bool> = felix.iter().take(levels.len()).filter_map(|f| *f).collect();
            let want_felix = (!stated.is_empty()).then(|| stated.contains(&true));
            prop_assert_eq!(c.felix_ipip, want_felix);
        }

        #[test]
        fn arbitrary_json_never_panics(v in json_tree()) {
            for k in KINDS {
                let strict = read(k, &v);
                let lenient = read_lenient(k, &v);
                // Lenient reading agrees with strict reading whenever that succeeds.
                if let Ok(c) = &strict {
                    prop_assert_eq!(c, &lenient);
                }
                let same = detect_switch(k, &v, &v);
                match strict {
                    Ok(_) => prop_assert_eq!(same, Ok(None)),
                    Err(e) => prop_assert_eq!(same, Err(e)),
                }
            }
        }

        #[test]
        fn daemonset_shapes_never_panic_and_a_bad_old_object_never_errs(v in ds_tree(), l in level()) {
            let strict = read(CalicoKind::DaemonSet, &v);
            if let Ok(c) = &strict {
                prop_assert_eq!(c, &read_lenient(CalicoKind::DaemonSet, &v));
                prop_assert_eq!(detect_switch(CalicoKind::DaemonSet, &v, &v), Ok(None));
            }
            // Only the new object can make an error.
            let valid = ds(json!([var(ENV_IPIP, l.as_str())]));
            prop_assert!(detect_switch(CalicoKind::DaemonSet, &v, &valid).is_ok());
            prop_assert_eq!(detect_switch(CalicoKind::DaemonSet, &valid, &v).is_err(), strict.is_err());
        }

        #[test]
        fn a_bad_old_object_of_any_kind_never_errs(v in json_tree()) {
            for (k, valid) in [
                (CalicoKind::IpPool, pool("Never", "Never")),
                (CalicoKind::ConfigMap, cm("none")),
                (CalicoKind::DaemonSet, ds(json!([]))),
            ] {
                prop_assert!(detect_switch(k, &v, &valid).is_ok());
            }
        }
    }
}
