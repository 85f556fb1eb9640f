//! The model of encapsulation (pure): each setting's levels and effective
//! values, the guarded kinds, what one object says ([`OverlayConfig`]) and
//! when a change of it lowers encapsulation ([`reductions`]). The readers
//! of each kind are in [`crate::calico::readers`]; [`crate::calico::overlay`]
//! puts them together.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::calico::podenv::KnownConfigMap;
use crate::calico::values::Parsed;
pub use crate::calico::values::{Backend, Encapsulation, FelixFlag};

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
    /// The level, when it is known.
    pub fn known(&self) -> Option<L> {
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
    /// `crd.projectcalico.org/v1` (KDD, the CRD Calico up to v3.31 stores).
    IpPool,
    /// `projectcalico.org/v3` served as a plain CRD (Calico v3.32+ "v3 CRD
    /// mode"; no v1 object exists then).
    IpPoolV3,
    /// `crd.projectcalico.org/v1` FelixConfiguration (any name: `default`
    /// and the per-node `node.<name>`).
    FelixConfiguration,
    /// `projectcalico.org/v3` FelixConfiguration in v3 CRD mode.
    FelixConfigurationV3,
    /// The Tigera operator's `operator.tigera.io/v1` Installation: its
    /// pools' `encapsulation` ([`crate::calico::installation`]).
    Installation,
}

impl CalicoKind {
    pub const ALL: [CalicoKind; 7] = [
        Self::DaemonSet,
        Self::ConfigMap,
        Self::IpPool,
        Self::IpPoolV3,
        Self::FelixConfiguration,
        Self::FelixConfigurationV3,
        Self::Installation,
    ];

    /// The kind's name in Kubernetes (both API groups share it).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DaemonSet => "DaemonSet",
            Self::ConfigMap => "ConfigMap",
            Self::IpPool | Self::IpPoolV3 => "IPPool",
            Self::FelixConfiguration | Self::FelixConfigurationV3 => "FelixConfiguration",
            Self::Installation => "Installation",
        }
    }

    pub const fn is_pool(self) -> bool {
        matches!(self, Self::IpPool | Self::IpPoolV3)
    }

    pub const fn is_felix_configuration(self) -> bool {
        matches!(self, Self::FelixConfiguration | Self::FelixConfigurationV3)
    }
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
            (CalicoKind::IpPool | CalicoKind::IpPoolV3, Self::PoolIpip) => "spec.ipipMode",
            (CalicoKind::IpPool | CalicoKind::IpPoolV3, Self::PoolVxlan) => "spec.vxlanMode",
            (CalicoKind::ConfigMap, Self::Backend) => "data.calico_backend",
            (CalicoKind::Installation, _) => "spec.calicoNetwork.ipPools[].encapsulation",
            (
                CalicoKind::FelixConfiguration | CalicoKind::FelixConfigurationV3,
                Self::FelixIpip,
            ) => "spec.ipipEnabled",
            (
                CalicoKind::FelixConfiguration | CalicoKind::FelixConfigurationV3,
                Self::FelixVxlan,
            ) => "spec.vxlanEnabled",
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

/// At most 128 bytes of `s` (cut on a char boundary), so that a huge
/// invalid value does not flood the admission response.
pub(crate) fn shorten(s: &str) -> String {
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

pub(crate) fn unreadable(field: String, value: &Value, expected: &'static str) -> ReadError {
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
pub(crate) fn eff<L>(parsed: Parsed<L>, field: impl FnOnce() -> String, raw: &str) -> Eff<L> {
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
