//! Calico's own parsing of every setting the guard reads (pure), one
//! function per setting, each citing the Calico code it follows
//! (projectcalico/calico, read at v3.31.7 and compared with v3.28 to v3.32).
//! A value Calico reads as "off" is off here, whatever it looks like; only a
//! value on which calico-node stops is [`Parsed::Invalid`].

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

impl Encapsulation {
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

/// Felix's `IpInIpEnabled` / `VXLANEnabled` (`*bool`): off, not set (Felix
/// then enables the tunnel when a pool uses it), or on. Ordered by how much
/// encapsulation it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FelixFlag {
    Off,
    FollowPools,
    On,
}

impl fmt::Display for FelixFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "false",
            Self::FollowPools => "Felix follows the IPPools",
            Self::On => "true",
        })
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

/// One text read as Calico reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<L> {
    Set(L),
    /// Calico treats the text as not set; `L` is its default.
    Unset(L),
    /// Calico refuses the text; what it accepts, in words.
    Invalid(&'static str),
}

pub const POOL_MODES: &str = "a string (Always, CrossSubnet; anything else means Never)";

/// An IPPool's `spec.ipipMode` / `spec.vxlanMode`, as Felix uses it.
///
/// libcalico-go `lib/backend/syncersv1/updateprocessors/ippoolprocessor.go`
/// (`convertIPPoolV2ToV1`) calls `IPPoolV3ToV1`
/// (`lib/backend/k8s/resources/ippool.go`), a Go `switch` on the exact
/// constants `apiv3.IPIPModeAlways` ("Always") / `IPIPModeCrossSubnet`
/// ("CrossSubnet") and the VXLAN ones: case-sensitive, untrimmed; every
/// other string (`always`, ` Always`, `Never`, empty) is `encap.Undefined`,
/// no encapsulation, without an error. The `crd.projectcalico.org/v1` CRD
/// has no enum on these fields up to v3.31 (one arrives in v3.32), and the
/// v3 validator runs only in clientv3 writers, never when Felix reads.
pub fn pool_mode(s: &str) -> Parsed<Encapsulation> {
    match s {
        "Always" => Parsed::Set(Encapsulation::Always),
        "CrossSubnet" => Parsed::Set(Encapsulation::CrossSubnet),
        _ => Parsed::Set(Encapsulation::Never),
    }
}

/// The legacy `spec.ipip` block of an IPPool (`{enabled, mode}`): up to
/// v3.31, libcalico-go `lib/backend/k8s/resources/ippool.go`
/// (`IPPoolv1v3Converter.ConvertFromK8s`, run on every KDD read) replaces
/// `ipipMode` with it whenever the block is present: not `enabled` (also
/// `{}`) gives `Never`; `enabled` with mode exactly `cross-subnet`
/// (`encap.CrossSubnet`) gives `CrossSubnet`; `enabled` with any other mode
/// gives `Always`. v3.32 removed the conversion (the block is then
/// ignored), so the guard reads a pool both ways (see `overlay`).
pub fn legacy_ipip(block: &Value) -> Result<Encapsulation, &'static str> {
    let Some(obj) = block.as_object() else {
        return Err("an object {enabled, mode}");
    };
    if obj.get("enabled") != Some(&Value::Bool(true)) {
        return Ok(Encapsulation::Never);
    }
    Ok(match obj.get("mode").and_then(Value::as_str) {
        Some("cross-subnet") => Encapsulation::CrossSubnet,
        _ => Encapsulation::Always,
    })
}

/// What calico-node does when `CALICO_IPV4POOL_IPIP` / `_VXLAN` is unset.
pub const POOL_ENV_DEFAULT: Encapsulation = Encapsulation::Never;
pub const POOL_ENV_MODES: &str =
    "Always, CrossSubnet, Never (any case, no spaces; also cross-subnet, off, empty)";

/// `CALICO_IPV4POOL_IPIP` / `CALICO_IPV4POOL_VXLAN`, read by calico-node's
/// startup when it creates the default IPv4 pool (only when no IPv4 pool
/// exists): `node/pkg/lifecycle/startup/startup.go` (`configureIPPools`,
/// `createIPPool`) lowercases the value (no trimming) and accepts `""`,
/// `off`, `never` (Never), `crosssubnet`, `cross-subnet` (CrossSubnet),
/// `always` (Always); anything else stops calico-node ("Unrecognized IPIP
/// mode", `utils.Terminate`). Unset is `""`: Never (the `Always` of
/// upstream `calico.yaml` comes from the manifest, not the code).
pub fn pool_env(s: &str) -> Parsed<Encapsulation> {
    match s.to_lowercase().as_str() {
        "" | "off" | "never" => Parsed::Set(Encapsulation::Never),
        "crosssubnet" | "cross-subnet" => Parsed::Set(Encapsulation::CrossSubnet),
        "always" => Parsed::Set(Encapsulation::Always),
        _ => Parsed::Invalid(POOL_ENV_MODES),
    }
}

/// `FELIX_IPINIPENABLED` / `FELIX_VXLANENABLED`: Felix's `*bool` parameters
/// `IpInIpEnabled` / `VXLANEnabled` (`felix/config/config_params.go`, no
/// default: nil). The env loader (`felix/config/env_var_loader.go`) keeps
/// the value as written; `Config.UpdateFrom` skips an empty one (not set);
/// `resolve` turns `none` (any case) into nil; `BoolPtrParam.Parse`
/// (`felix/config/param_types.go`) lowercases, no trimming, and accepts
/// `true 1 yes y t` / `false 0 no n f`; any other value is replaced by the
/// default, nil, with a warning (not fatal). Nil means Felix enables the
/// tunnel when a pool uses it (`EncapsulationCalculator.IPIPEnabled`).
pub fn felix_flag(s: &str) -> Parsed<FelixFlag> {
    match s.to_lowercase().as_str() {
        "" => Parsed::Unset(FelixFlag::FollowPools),
        "true" | "1" | "yes" | "y" | "t" => Parsed::Set(FelixFlag::On),
        "false" | "0" | "no" | "n" | "f" => Parsed::Set(FelixFlag::Off),
        // `none`, and every value Felix cannot parse: nil.
        _ => Parsed::Set(FelixFlag::FollowPools),
    }
}

/// What calico-node runs when `CALICO_NETWORKING_BACKEND` is unset.
pub const BACKEND_DEFAULT: Backend = Backend::Bird;
pub const BACKENDS: &str = "a string (none, vxlan; anything else means bird)";

/// `CALICO_NETWORKING_BACKEND` (and `calico_backend`, which reaches
/// calico-node as that variable): calico-node's `rc.local`
/// (`node/filesystem/etc/rc.local`, a shell `case`) matches the exact
/// strings `none` and `vxlan` and starts BIRD for anything else, unset,
/// `None` and `BIRD` included; the Go startup compares `== "none"` exactly.
pub fn backend(s: &str) -> Backend {
    match s {
        "none" => Backend::None,
        "vxlan" => Backend::Vxlan,
        _ => Backend::Bird,
    }
}
