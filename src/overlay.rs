//! What a Calico object says about encapsulation, read the way Calico's own
//! code reads it, and when an update lowers it (a "switch"). Pure: no I/O,
//! no async; objects arrive as full Kubernetes objects in JSON.
//!
//! Every setting has an *effective* value, never just "not stated": a value
//! that is set, Calico's default when it is not, or "unknown" (taken from a
//! source the webhook cannot read). Levels are totally ordered per setting,
//! unset included, so a switch cannot become invisible by being split over
//! several updates (value -> unset -> lower value is lowered in one of the
//! steps). The parsers, each citing the Calico code it follows, are in
//! [`crate::calico_values`].
//!
//! - DaemonSet `calico-node`: the environment of its `calico-node` container
//!   (the one that runs calico-node's startup and Felix; the first container
//!   when none has that name), resolved as the kubelet resolves it
//!   ([`crate::podenv`]): `envFrom`, `$(VAR)` references, and `valueFrom` the
//!   guarded ConfigMap, whose content the webhook knows from its watch.
//! - ConfigMap `calico-config`: `data.calico_backend`.
//! - IPPool: `spec.ipipMode` / `spec.vxlanMode`, and the legacy `spec.ipip`
//!   block that overrides `ipipMode` when present.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::calico_values::{self as values, Parsed};
pub use crate::calico_values::{Backend, Encapsulation, FelixFlag};
use crate::podenv::{EnvValue, Environment, KnownConfigMap};

/// The value of one setting, ranked by how much encapsulation it means.
pub trait Level: Copy + Eq + fmt::Display {
    /// Higher = more encapsulation; equal ranks are no change in encapsulation.
    fn rank(self) -> u8;
    /// The lowest and highest rank of this setting.
    const MIN: u8;
    const MAX: u8;
}

impl Level for Encapsulation {
    fn rank(self) -> u8 {
        self as u8
    }
    const MIN: u8 = 0;
    const MAX: u8 = 2;
}

impl Level for FelixFlag {
    fn rank(self) -> u8 {
        self as u8
    }
    const MIN: u8 = 0;
    const MAX: u8 = 2;
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
    const MIN: u8 = 0;
    const MAX: u8 = 1;
}

/// The effective value of one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eff<L> {
    /// Stated (after `$(VAR)` expansion and `valueFrom` resolution).
    Set(L),
    /// Not stated: Calico's default, which is `L`.
    Unset(L),
    /// From a source the webhook cannot read; the words say which.
    Unknown(String),
    /// A value Calico would not accept.
    Unreadable(ReadError),
}

impl<L: Level> Eff<L> {
    fn known(&self) -> Option<L> {
        match self {
            Eff::Set(l) | Eff::Unset(l) => Some(*l),
            Eff::Unknown(_) | Eff::Unreadable(_) => None,
        }
    }
}

impl<L: Level> fmt::Display for Eff<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Eff::Set(l) => write!(f, "{l}"),
            Eff::Unset(l) => write!(f, "unset ({l})"),
            Eff::Unknown(w) => write!(f, "unknown ({w})"),
            Eff::Unreadable(e) => write!(f, "unreadable {:?}", e.value),
        }
    }
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
/// The container whose environment calico-node and Felix read.
pub const CALICO_NODE_CONTAINER: &str = "calico-node";

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
}

/// What one object says about the overlay; `None` = this kind does not
/// carry the setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayConfig {
    /// DaemonSet env `CALICO_IPV4POOL_IPIP`; IPPool `spec.ipipMode`.
    pub ipip: Option<Eff<Encapsulation>>,
    /// DaemonSet env `CALICO_IPV4POOL_VXLAN`; IPPool `spec.vxlanMode`.
    pub vxlan: Option<Eff<Encapsulation>>,
    /// DaemonSet env `FELIX_IPINIPENABLED`.
    pub felix_ipip: Option<Eff<FelixFlag>>,
    /// DaemonSet env `FELIX_VXLANENABLED`.
    pub felix_vxlan: Option<Eff<FelixFlag>>,
    /// ConfigMap `data.calico_backend`; DaemonSet env `CALICO_NETWORKING_BACKEND`.
    pub backend: Option<Eff<Backend>>,
}

impl OverlayConfig {
    /// A short summary, e.g. "IPIP Always, VXLAN unset (Never), backend bird".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut part = |label: &str, value: Option<String>| {
            if let Some(v) = value {
                parts.push(format!("{label} {v}"));
            }
        };
        part("IPIP", self.ipip.as_ref().map(ToString::to_string));
        part("VXLAN", self.vxlan.as_ref().map(ToString::to_string));
        part(
            "Felix IPIP",
            self.felix_ipip.as_ref().map(ToString::to_string),
        );
        part(
            "Felix VXLAN",
            self.felix_vxlan.as_ref().map(ToString::to_string),
        );
        part("backend", self.backend.as_ref().map(ToString::to_string));
        if parts.is_empty() {
            "no overlay settings".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One setting whose encapsulation goes down (or may go down: a value that
/// becomes unknown, or an unknown one that becomes a value below the top).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reduction {
    pub setting: Setting,
    /// Where it was read, e.g. `spec.ipipMode`, `env CALICO_IPV4POOL_IPIP`.
    pub source: String,
    /// Old and new effective value, as Calico spells them.
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

/// What the webhook knows beyond the object itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The guarded ConfigMap, which `valueFrom` and `envFrom` may reference.
    pub config_map: KnownConfigMap<'a>,
    /// calico-node's container as the DaemonSet watch last saw it: a
    /// ConfigMap update changes what its environment resolves to. `None`
    /// while unknown, `Some(None)` when there is no calico-node.
    pub calico_node: Option<Option<&'a Value>>,
}

impl Context<'_> {
    /// No guarded ConfigMap and no calico-node (tests, tools).
    pub const NONE: Context<'static> = Context {
        config_map: KnownConfigMap::NONE,
        calico_node: Some(None),
    };
}

/// Reads what one object says about its overlay. Never fails: a value
/// Calico would not accept is [`Eff::Unreadable`].
pub fn read(kind: CalicoKind, obj: &Value, ctx: Context<'_>) -> OverlayConfig {
    match kind {
        CalicoKind::IpPool => read_pool(obj, PoolReader::UpToV331),
        CalicoKind::ConfigMap => read_configmap(obj),
        CalicoKind::DaemonSet => read_daemonset(obj, ctx),
    }
}

/// The settings whose effective level goes down from `old` to `new`.
///
/// - known -> known: lower rank;
/// - known -> unknown: unless the old value was already the lowest;
/// - unknown -> known: unless the new value is the highest;
/// - unknown -> unknown: when the source changed;
/// - an unreadable old value counts as unknown. An unreadable new value is
///   an error, unless it is the same unreadable value as before (a setting
///   the update does not touch).
pub fn reductions(
    kind: CalicoKind,
    old: &OverlayConfig,
    new: &OverlayConfig,
) -> Result<Vec<Reduction>, ReadError> {
    fn check<L: Level>(
        out: &mut Vec<Reduction>,
        kind: CalicoKind,
        setting: Setting,
        old: &Option<Eff<L>>,
        new: &Option<Eff<L>>,
    ) -> Result<(), ReadError> {
        let (Some(old), Some(new)) = (old, new) else {
            return Ok(());
        };
        if let Eff::Unreadable(e) = new {
            return match old {
                Eff::Unreadable(o) if o == e => Ok(()),
                _ => Err(e.clone()),
            };
        }
        let lowered = match (old.known(), new.known()) {
            (Some(a), Some(b)) => b.rank() < a.rank(),
            (Some(a), None) => a.rank() > L::MIN,
            (None, Some(b)) => b.rank() < L::MAX,
            (None, None) => old != new,
        };
        if lowered {
            out.push(Reduction {
                setting,
                source: setting.source(kind).to_owned(),
                from: old.to_string(),
                to: new.to_string(),
            });
        }
        Ok(())
    }
    let mut out = Vec::new();
    check(&mut out, kind, Setting::PoolIpip, &old.ipip, &new.ipip)?;
    check(&mut out, kind, Setting::PoolVxlan, &old.vxlan, &new.vxlan)?;
    check(
        &mut out,
        kind,
        Setting::FelixIpip,
        &old.felix_ipip,
        &new.felix_ipip,
    )?;
    check(
        &mut out,
        kind,
        Setting::FelixVxlan,
        &old.felix_vxlan,
        &new.felix_vxlan,
    )?;
    check(&mut out, kind, Setting::Backend, &old.backend, &new.backend)?;
    Ok(out)
}

/// Reads both objects and compares. A value Calico would not accept in the
/// new object is an error (the caller reports it), unless the old object
/// had the very same value there.
pub fn detect_switch(
    kind: CalicoKind,
    old: &Value,
    new: &Value,
    ctx: Context<'_>,
) -> Result<Option<Switch>, ReadError> {
    let mut reductions = reductions(kind, &read(kind, old, ctx), &read(kind, new, ctx))?;
    if kind == CalicoKind::ConfigMap {
        reductions.extend(through_calico_node(old, new, ctx)?);
    }
    if kind == CalicoKind::IpPool {
        // Calico v3.32 ignores the legacy `spec.ipip` block that v3.31
        // honours: a reduction as either version reads it is a switch.
        let (old, new) = (
            read_pool(old, PoolReader::FromV332),
            read_pool(new, PoolReader::FromV332),
        );
        for r in self::reductions(kind, &old, &new)? {
            if !reductions.iter().any(|x| x.setting == r.setting) {
                reductions.push(r);
            }
        }
    }
    Ok((!reductions.is_empty()).then_some(Switch { kind, reductions }))
}

/// What a ConfigMap update does to calico-node's environment (`valueFrom`
/// and `envFrom` of this ConfigMap): calico-node read with the old data and
/// with the new. While calico-node's container is not known, any change of
/// the data counts (the guard cannot tell which keys it reads).
fn through_calico_node(old: &Value, new: &Value, ctx: Context<'_>) -> Result<Vec<Reduction>, ReadError> {
    fn data(obj: &Value) -> Option<&serde_json::Map<String, Value>> {
        obj.get("data").and_then(Value::as_object)
    }
    let (old_data, new_data) = (data(old), data(new));
    let with = |d| KnownConfigMap {
        name: ctx.config_map.name,
        data: Some(d),
    };
    let mut out = match ctx.calico_node {
        Some(None) => return Ok(vec![]),
        Some(Some(container)) => reductions(
            CalicoKind::DaemonSet,
            &read_container(Some(container), with(old_data)),
            &read_container(Some(container), with(new_data)),
        )?,
        None if old_data != new_data => vec![Reduction {
            setting: Setting::Backend,
            source: "calico-node env".into(),
            from: "unknown (the calico-node DaemonSet is not known yet)".into(),
            to: "this ConfigMap's changed data".into(),
        }],
        None => return Ok(vec![]),
    };
    for r in &mut out {
        r.source = format!("calico-node {} (from this ConfigMap)", r.source);
    }
    Ok(out)
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

fn unreadable(field: String, value: &Value, expected: &'static str) -> ReadError {
    let value = match value {
        Value::String(s) => shorten(s),
        other => format!("{} (not a string)", shorten(&other.to_string())),
    };
    ReadError {
        source_field: field,
        value,
        expected,
    }
}

/// A parsed text as an effective value.
fn eff<L>(parsed: Parsed<L>, field: impl FnOnce() -> String, raw: &str) -> Eff<L> {
    match parsed {
        Parsed::Set(l) => Eff::Set(l),
        Parsed::Unset(l) => Eff::Unset(l),
        Parsed::Invalid(expected) => Eff::Unreadable(unreadable(
            field(),
            &Value::String(raw.to_owned()),
            expected,
        )),
    }
}

/// Which Calico reads the pool: the legacy `spec.ipip` block overrides
/// `ipipMode` up to v3.31 and is ignored from v3.32 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolReader {
    UpToV331,
    FromV332,
}

pub fn read_pool(obj: &Value, reader: PoolReader) -> OverlayConfig {
    let spec = obj.get("spec").filter(|s| s.is_object());
    let field = |key: &str| spec.and_then(|s| s.get(key)).filter(|v| !v.is_null());
    let mode = |key: &'static str, source: &'static str| match field(key) {
        None => Eff::Unset(Encapsulation::Never),
        Some(Value::String(s)) => eff(values::pool_mode(s), || source.into(), s),
        Some(other) => Eff::Unreadable(unreadable(source.into(), other, values::POOL_MODES)),
    };
    let legacy = field("ipip").filter(|_| reader == PoolReader::UpToV331);
    let ipip = match legacy {
        Some(block) => match values::legacy_ipip(block) {
            Ok(level) => Eff::Set(level),
            Err(expected) => Eff::Unreadable(unreadable("spec.ipip".into(), block, expected)),
        },
        None => mode("ipipMode", "spec.ipipMode"),
    };
    OverlayConfig {
        ipip: Some(ipip),
        vxlan: Some(mode("vxlanMode", "spec.vxlanMode")),
        ..OverlayConfig::default()
    }
}

fn read_configmap(obj: &Value) -> OverlayConfig {
    let source = Setting::Backend.source(CalicoKind::ConfigMap);
    let backend = match obj
        .get("data")
        .and_then(|d| d.get("calico_backend"))
        .filter(|v| !v.is_null())
    {
        None => Eff::Unset(values::BACKEND_DEFAULT),
        Some(Value::String(s)) => Eff::Set(values::backend(s)),
        Some(other) => Eff::Unreadable(unreadable(source.into(), other, values::BACKENDS)),
    };
    OverlayConfig {
        backend: Some(backend),
        ..OverlayConfig::default()
    }
}

/// The container that runs calico-node: the one named `calico-node`, else
/// the first container.
pub fn calico_node_container(obj: &Value) -> Option<&Value> {
    let containers = obj
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)?;
    let named = |c: &&Value| c.get("name").and_then(Value::as_str) == Some(CALICO_NODE_CONTAINER);
    containers
        .iter()
        .find(named)
        .or_else(|| containers.first())
        .filter(|c| c.is_object())
}

fn read_daemonset(obj: &Value, ctx: Context<'_>) -> OverlayConfig {
    read_container(calico_node_container(obj), ctx.config_map)
}

/// calico-node's settings from its container (`None`: there is none).
pub fn read_container(container: Option<&Value>, config_map: KnownConfigMap<'_>) -> OverlayConfig {
    let Some(container) = container else {
        // No container at all: nothing runs, Calico's defaults describe it.
        return OverlayConfig {
            ipip: Some(Eff::Unset(values::POOL_ENV_DEFAULT)),
            vxlan: Some(Eff::Unset(values::POOL_ENV_DEFAULT)),
            felix_ipip: Some(Eff::Unset(FelixFlag::FollowPools)),
            felix_vxlan: Some(Eff::Unset(FelixFlag::FollowPools)),
            backend: Some(Eff::Unset(values::BACKEND_DEFAULT)),
        };
    };
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let env = Environment::of(container, config_map);
    let field = |var: &'static str| move || format!("container {name:?} env {var}");
    fn from_env<L>(
        value: EnvValue,
        unset: L,
        parse: impl FnOnce(&str) -> Parsed<L>,
        field: impl FnOnce() -> String,
    ) -> Eff<L> {
        match value {
            EnvValue::Absent => Eff::Unset(unset),
            EnvValue::Unknown(w) => Eff::Unknown(w),
            EnvValue::Text(t) => eff(parse(&t), field, &t),
        }
    }
    let pool = |var: &'static str| {
        from_env(
            env.get(var),
            values::POOL_ENV_DEFAULT,
            values::pool_env,
            field(var),
        )
    };
    let felix = |var: &'static str| {
        from_env(
            env.get(var),
            FelixFlag::FollowPools,
            values::felix_flag,
            field(var),
        )
    };
    OverlayConfig {
        ipip: Some(pool(ENV_IPIP)),
        vxlan: Some(pool(ENV_VXLAN)),
        felix_ipip: Some(felix(ENV_FELIX_IPIP)),
        felix_vxlan: Some(felix(ENV_FELIX_VXLAN)),
        backend: Some(from_env(
            env.get(ENV_BACKEND),
            values::BACKEND_DEFAULT,
            |s| Parsed::Set(values::backend(s)),
            field(ENV_BACKEND),
        )),
    }
}
