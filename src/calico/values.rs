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

pub const FELIX_CONFIG_FLAG: &str = "true, false or absent (a JSON boolean)";

/// `FelixConfiguration` `spec.ipipEnabled` / `spec.vxlanEnabled`
/// (`api/pkg/apis/projectcalico/v3/felixconfig.go`: `*bool`,
/// `confignamev1:"IpInIpEnabled"`; "Optional as Felix determines this based
/// on the existing IP pools. [Default: nil (unset)]"). The same type in the
/// `crd.projectcalico.org/v1` object (KDD stores the v3 spec) and in
/// `projectcalico.org/v3`. libcalico-go's felix config update processor
/// hands it to Felix under its v1 name, where it is the `*bool` of
/// [`felix_flag`]: `true` on, `false` off, absent (or `null`) nil, Felix
/// following the pools. Both CRDs declare it a boolean; anything else here
/// is not a value Calico wrote.
pub fn felix_config_flag(v: Option<&Value>) -> Parsed<FelixFlag> {
    match v {
        None | Some(Value::Null) => Parsed::Unset(FelixFlag::FollowPools),
        Some(Value::Bool(true)) => Parsed::Set(FelixFlag::On),
        Some(Value::Bool(false)) => Parsed::Set(FelixFlag::Off),
        Some(_) => Parsed::Invalid(FELIX_CONFIG_FLAG),
    }
}

/// calico-node's legacy `CALICO_NETWORKING`: when set (non-empty), its
/// `rc.local` overrides `CALICO_NETWORKING_BACKEND` with `none` for exactly
/// `false` and `bird` for anything else.
pub const ENV_LEGACY_NETWORKING: &str = "CALICO_NETWORKING";

pub fn legacy_networking(s: &str) -> Backend {
    if s == "false" {
        Backend::None
    } else {
        Backend::Bird
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

#[cfg(test)]
mod tests {
    use super::*;
    use Encapsulation::{Always, CrossSubnet, Never};
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn pool_modes_are_exact_strings() {
        for (s, want) in [
            ("Always", Always),
            ("CrossSubnet", CrossSubnet),
            // Everything else is encap.Undefined: no encapsulation.
            ("Never", Never),
            ("", Never),
            ("always", Never),
            ("ALWAYS", Never),
            (" Always", Never),
            ("Always ", Never),
            ("Always\n", Never),
            ("crosssubnet", Never),
            ("cross-subnet", Never),
            ("Cross-Subnet", Never),
            ("CROSSSUBNET", Never),
            ("true", Never),
            ("garbage", Never),
        ] {
            assert_eq!(pool_mode(s), Parsed::Set(want), "{s:?}");
        }
    }

    #[test]
    fn the_legacy_ipip_block_as_v3_31_converts_it() {
        for (block, want) in [
            (json!({}), Ok(Never)),
            (json!({"enabled": false}), Ok(Never)),
            (json!({"enabled": false, "mode": "always"}), Ok(Never)),
            (json!({"mode": "cross-subnet"}), Ok(Never)),
            (json!({"enabled": "true"}), Ok(Never)),
            (json!({"enabled": null}), Ok(Never)),
            (json!({"enabled": true}), Ok(Always)),
            (json!({"enabled": true, "mode": "always"}), Ok(Always)),
            (json!({"enabled": true, "mode": ""}), Ok(Always)),
            (
                json!({"enabled": true, "mode": "cross-subnet"}),
                Ok(CrossSubnet),
            ),
            // Only the exact encap constant is cross-subnet.
            (json!({"enabled": true, "mode": "CrossSubnet"}), Ok(Always)),
            (json!({"enabled": true, "mode": "Cross-Subnet"}), Ok(Always)),
            (
                json!({"enabled": true, "mode": " cross-subnet"}),
                Ok(Always),
            ),
            (json!({"enabled": true, "mode": 5}), Ok(Always)),
            (json!("enabled"), Err(())),
            (json!(true), Err(())),
            (json!([]), Err(())),
            (json!(null), Err(())),
        ] {
            assert_eq!(legacy_ipip(&block).map_err(|_| ()), want, "{block}");
        }
    }

    #[test]
    fn pool_env_is_lowercased_not_trimmed_and_anything_else_stops_calico_node() {
        for (s, want) in [
            ("Always", Always),
            ("always", Always),
            ("ALWAYS", Always),
            ("aLwAyS", Always),
            ("CrossSubnet", CrossSubnet),
            ("crosssubnet", CrossSubnet),
            ("cross-subnet", CrossSubnet),
            ("CROSS-SUBNET", CrossSubnet),
            ("Never", Never),
            ("never", Never),
            ("off", Never),
            ("OFF", Never),
            ("", Never),
        ] {
            assert_eq!(pool_env(s), Parsed::Set(want), "{s:?}");
        }
        for s in [
            " Always",
            "Always ",
            "always\n",
            "true",
            "false",
            "on",
            "1",
            "enabled",
            "cross subnet",
            "cross_subnet",
            " ",
        ] {
            assert_eq!(pool_env(s), Parsed::Invalid(POOL_ENV_MODES), "{s:?}");
        }
        assert_eq!(POOL_ENV_DEFAULT, Never);
    }

    #[test]
    fn felix_flags_as_felix_parses_them() {
        assert_eq!(felix_flag(""), Parsed::Unset(FelixFlag::FollowPools));
        for s in [
            "true", "TRUE", "True", "1", "yes", "YES", "y", "Y", "t", "T",
        ] {
            assert_eq!(felix_flag(s), Parsed::Set(FelixFlag::On), "{s:?}");
        }
        for s in [
            "false", "FALSE", "False", "0", "no", "No", "n", "N", "f", "F",
        ] {
            assert_eq!(felix_flag(s), Parsed::Set(FelixFlag::Off), "{s:?}");
        }
        // `none` resets to nil; anything Felix cannot parse is replaced by
        // the default, nil, too (not fatal). `on`/`off` are not Felix bools.
        for s in [
            "none", "None", "NONE", " true", "true ", "false\n", "on", "off", "2", "enabled", " ",
        ] {
            assert_eq!(felix_flag(s), Parsed::Set(FelixFlag::FollowPools), "{s:?}");
        }
    }

    #[test]
    fn backends_are_exact_and_default_to_bird() {
        assert_eq!(backend("none"), Backend::None);
        assert_eq!(backend("vxlan"), Backend::Vxlan);
        for s in [
            "bird", "BIRD", "Bird", "None", "NONE", " none", "none ", "VXLAN", " vxlan", "",
            "gobgp",
        ] {
            assert_eq!(backend(s), Backend::Bird, "{s:?}");
        }
        assert_eq!(BACKEND_DEFAULT, Backend::Bird);
    }

    #[test]
    fn orders_and_spellings() {
        assert!(Never < CrossSubnet && CrossSubnet < Always);
        assert!(FelixFlag::Off < FelixFlag::FollowPools && FelixFlag::FollowPools < FelixFlag::On);
        for (l, s) in [
            (Never, "Never"),
            (CrossSubnet, "CrossSubnet"),
            (Always, "Always"),
        ] {
            assert_eq!(l.as_str(), s);
            assert_eq!(l.to_string(), s);
            // The canonical spelling reads back as itself, in pools and env.
            assert_eq!(pool_mode(s), Parsed::Set(l));
            assert_eq!(pool_env(s), Parsed::Set(l));
        }
        for (b, s) in [
            (Backend::Bird, "bird"),
            (Backend::Vxlan, "vxlan"),
            (Backend::None, "none"),
        ] {
            assert_eq!(b.as_str(), s);
            assert_eq!(b.to_string(), s);
            assert_eq!(backend(s), b);
        }
        assert_eq!(FelixFlag::Off.to_string(), "false");
        assert_eq!(FelixFlag::On.to_string(), "true");
        assert_eq!(
            FelixFlag::FollowPools.to_string(),
            "Felix follows the IPPools"
        );
        assert_eq!(
            felix_flag(&FelixFlag::On.to_string()),
            Parsed::Set(FelixFlag::On)
        );
        assert_eq!(
            felix_flag(&FelixFlag::Off.to_string()),
            Parsed::Set(FelixFlag::Off)
        );
    }

    /// Flips the case of the ASCII letters where `flip` says so.
    fn ascii_case(s: &str, flip: &[bool]) -> String {
        s.chars()
            .zip(flip.iter().cycle())
            .map(|(c, f)| {
                if *f && c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else if *f && c.is_ascii_uppercase() {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    }

    /// Strings near the accepted spellings, and arbitrary ones.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "Always",
                "CrossSubnet",
                "cross-subnet",
                "Never",
                "off",
                "none",
                "vxlan",
                "bird",
                "true",
                "false",
                "yes",
                "no",
                "1",
                "0",
                "t",
                "f",
                "y",
                "n",
                "",
            ])
            .prop_map(String::from),
            ".{0,12}",
            "[ a-zA-Z-]{0,12}",
        ]
    }

    proptest! {
        #[test]
        fn pool_modes_encapsulate_only_on_the_exact_constants(s in text()) {
            let want = match s.as_str() {
                "Always" => Always,
                "CrossSubnet" => CrossSubnet,
                _ => Never,
            };
            prop_assert_eq!(pool_mode(&s), Parsed::Set(want));
        }

        #[test]
        fn env_and_felix_readings_ignore_ascii_case_but_not_spaces(
            s in text(),
            flip in prop::collection::vec(any::<bool>(), 1..8),
            pad in prop::sample::select(vec![" ", "\t", "\n"]),
        ) {
            let other = ascii_case(&s, &flip);
            prop_assert_eq!(pool_env(&s), pool_env(&other), "{:?} {:?}", s, other);
            prop_assert_eq!(felix_flag(&s), felix_flag(&other), "{:?} {:?}", s, other);
            // Padding is never trimmed: a padded pool mode stops calico-node,
            // a padded Felix flag is nil.
            let padded = format!("{pad}{s}");
            prop_assert_eq!(pool_env(&padded), Parsed::Invalid(POOL_ENV_MODES));
            prop_assert_eq!(felix_flag(&padded), Parsed::Set(FelixFlag::FollowPools));
        }

        #[test]
        fn felix_flag_is_total_and_unset_only_when_empty(s in text()) {
            match felix_flag(&s) {
                Parsed::Unset(l) => prop_assert!(s.is_empty() && l == FelixFlag::FollowPools),
                Parsed::Set(_) => prop_assert!(!s.is_empty()),
                Parsed::Invalid(_) => prop_assert!(false, "Felix never refuses {:?}", s),
            }
        }

        #[test]
        fn only_exact_none_and_vxlan_leave_bird(s in text()) {
            let want = match s.as_str() {
                "none" => Backend::None,
                "vxlan" => Backend::Vxlan,
                _ => Backend::Bird,
            };
            prop_assert_eq!(backend(&s), want);
        }
    }
}
