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
//! [`crate::calico::values`].
//!
//! - DaemonSet `calico-node`: the environment of its `calico-node` container
//!   (the one that runs calico-node's startup and Felix; the first container
//!   when none has that name), resolved as the kubelet resolves it
//!   ([`crate::calico::podenv`]): `envFrom`, `$(VAR)` references, and `valueFrom` the
//!   guarded ConfigMap, whose content the webhook knows from its watch.
//! - ConfigMap `calico-config`: `data.calico_backend`.
//! - IPPool: `spec.ipipMode` / `spec.vxlanMode`, and the legacy `spec.ipip`
//!   block that overrides `ipipMode` when present.

//!
//! The model (levels, kinds, settings, [`reductions`]) is in
//! [`crate::calico::model`], the readers of each kind in
//! [`crate::calico::readers`], the Tigera operator's Installation in
//! [`crate::calico::installation`]; their names are re-exported here.

use serde_json::Value;

pub use crate::calico::model::*;
use crate::calico::podenv::KnownConfigMap;
pub use crate::calico::readers::{
    PoolReader, calico_node_container, pool_encapsulation, read_container, read_pool,
};
use crate::calico::readers::{read_configmap, read_daemonset, read_felix_configuration};

/// Reads what one object says about its overlay. Never fails: a value
/// Calico would not accept is [`Eff::Unreadable`].
pub fn read(kind: CalicoKind, obj: &Value, ctx: Context<'_>) -> OverlayConfig {
    match kind {
        CalicoKind::IpPool => read_pool(obj, PoolReader::UpToV331),
        // Only Calico v3.32+ serves v3 pools as a CRD: the legacy block is ignored.
        CalicoKind::IpPoolV3 => read_pool(obj, PoolReader::FromV332),
        CalicoKind::ConfigMap => read_configmap(obj),
        CalicoKind::DaemonSet => read_daemonset(obj, ctx),
        CalicoKind::FelixConfiguration | CalicoKind::FelixConfigurationV3 => {
            read_felix_configuration(kind, obj)
        }
        // Pool by pool: see `detect_switch`.
        CalicoKind::Installation => OverlayConfig::default(),
    }
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
    if kind == CalicoKind::Installation {
        let reductions = crate::calico::installation::installation_reductions(old, new)?;
        return Ok((!reductions.is_empty()).then_some(Switch { kind, reductions }));
    }
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
fn through_calico_node(
    old: &Value,
    new: &Value,
    ctx: Context<'_>,
) -> Result<Vec<Reduction>, ReadError> {
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
            source: "env".into(),
            from: "unknown (the calico-node DaemonSet is not known yet)".into(),
            to: "this ConfigMap's changed data".into(),
        }],
        None => return Ok(vec![]),
    };
    for r in &mut out {
        r.source = format!("calico-node {} (through this ConfigMap)", r.source);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calico::values::{self as values, Parsed};
    use Encapsulation::{Always, CrossSubnet, Never};
    use std::fmt;

    #[test]
    fn felix_configuration_flags_lower_as_felix_reads_them_in_both_groups() {
        // absent/null: Felix follows the pools; true forces the tunnel on;
        // false turns it off on every node.
        let values = [
            None,
            Some(json!(null)),
            Some(json!(true)),
            Some(json!(false)),
        ];
        let rank = |v: &Option<Value>| match v {
            Some(Value::Bool(true)) => 2,
            Some(Value::Bool(false)) => 0,
            _ => 1,
        };
        for kind in [
            CalicoKind::FelixConfiguration,
            CalicoKind::FelixConfigurationV3,
        ] {
            for key in ["ipipEnabled", "vxlanEnabled"] {
                for old in &values {
                    for new in &values {
                        let obj = |v: &Option<Value>| {
                            let mut spec = json!({"logSeverityScreen": "Info"});
                            if let Some(v) = v {
                                spec[key] = v.clone();
                            }
                            json!({"apiVersion": "crd.projectcalico.org/v1",
                                "kind": "FelixConfiguration",
                                "metadata": {"name": "default"}, "spec": spec})
                        };
                        let s = detect_switch(kind, &obj(old), &obj(new), Context::NONE).unwrap();
                        assert_eq!(
                            s.is_some(),
                            rank(new) < rank(old),
                            "{key} {old:?} -> {new:?}"
                        );
                        if let Some(s) = s {
                            assert_eq!(s.reductions[0].source, format!("spec.{key}"));
                        }
                    }
                }
                // A value no CRD would store: refused when it is new,
                // passed when the update leaves it as it was.
                let bad = json!({"spec": {key: "true"}});
                let good = json!({"spec": {key: true}});
                assert!(detect_switch(kind, &good, &bad, Context::NONE).is_err());
                assert_eq!(detect_switch(kind, &bad, &bad, Context::NONE), Ok(None));
            }
        }
    }

    #[test]
    fn a_v3_pool_is_read_as_calico_from_v3_32_reads_it() {
        // The legacy block is ignored from v3.32 on, the only Calico that
        // serves v3 pools as a CRD.
        let old = json!({"spec": {"cidr": "10.0.0.0/16", "ipipMode": "Never",
            "ipip": {"enabled": true, "mode": "always"}}});
        let new = json!({"spec": {"cidr": "10.0.0.0/16", "ipipMode": "Never"}});
        assert!(
            detect_switch(CalicoKind::IpPool, &old, &new, Context::NONE)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            detect_switch(CalicoKind::IpPoolV3, &old, &new, Context::NONE),
            Ok(None)
        );
        // Every pair of modes, absent included, as for v1 pools.
        let modes = [None, Some("Never"), Some("CrossSubnet"), Some("Always")];
        let rank = |m: &Option<&str>| match m {
            Some("Always") => 2,
            Some("CrossSubnet") => 1,
            _ => 0,
        };
        for key in ["ipipMode", "vxlanMode"] {
            for a in &modes {
                for b in &modes {
                    let pool = |m: &Option<&str>| match m {
                        Some(m) => json!({"spec": {"cidr": "10.0.0.0/16", key: m}}),
                        None => json!({"spec": {"cidr": "10.0.0.0/16"}}),
                    };
                    let s = detect_switch(CalicoKind::IpPoolV3, &pool(a), &pool(b), Context::NONE)
                        .unwrap();
                    assert_eq!(s.is_some(), rank(b) < rank(a), "{key} {a:?} -> {b:?}");
                }
            }
        }
    }

    #[test]
    fn a_pool_encapsulates_unless_both_modes_are_never_by_either_reader() {
        let pool = |spec: Value| {
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": spec})
        };
        let modes = [None, Some("Never"), Some("Always"), Some("CrossSubnet")];
        for ipip in modes {
            for vxlan in modes {
                for disabled in [false, true] {
                    let mut spec = json!({"cidr": "10.0.0.0/16", "disabled": disabled});
                    if let Some(m) = ipip {
                        spec["ipipMode"] = json!(m);
                    }
                    if let Some(m) = vxlan {
                        spec["vxlanMode"] = json!(m);
                    }
                    let on = |m: Option<&str>| matches!(m, Some("Always" | "CrossSubnet"));
                    assert_eq!(
                        pool_encapsulation(&pool(spec.clone())).is_some(),
                        on(ipip) || on(vxlan),
                        "{spec}"
                    );
                }
            }
        }
        // The legacy block, honoured up to v3.31, counts.
        let legacy =
            pool(json!({"ipipMode": "Never", "ipip": {"enabled": true, "mode": "always"}}));
        assert!(pool_encapsulation(&legacy).unwrap().contains("IPIP Always"));
        // Any other string is no encapsulation to Felix (`pool_mode`); a
        // value that cannot be read at all counts as on; no spec means
        // Calico's defaults (Never).
        assert_eq!(
            pool_encapsulation(&pool(json!({"ipipMode": "always"}))),
            None
        );
        assert!(pool_encapsulation(&pool(json!({"vxlanMode": 3}))).is_some());
        assert_eq!(pool_encapsulation(&pool(json!({}))), None);
    }
    use FelixFlag::{FollowPools, Off, On};
    use proptest::prelude::*;
    use serde_json::{Map, json};
    use std::collections::BTreeSet;

    const KINDS: [CalicoKind; 3] = [
        CalicoKind::DaemonSet,
        CalicoKind::ConfigMap,
        CalicoKind::IpPool,
    ];

    /// A DaemonSet whose only container is calico-node, with `env`.
    fn ds(env: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": [{"name": "calico-node", "env": env}]}}}})
    }

    fn ds_with(containers: Value, init: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": containers, "initContainers": init}}}})
    }

    fn var(name: &str, value: &str) -> Value {
        json!({"name": name, "value": value})
    }

    fn from_cm(name: &str, cm: &str, key: &str) -> Value {
        json!({"name": name, "valueFrom": {"configMapKeyRef": {"name": cm, "key": key}}})
    }

    fn from_secret(name: &str, key: &str) -> Value {
        json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": key}}})
    }

    fn pool(spec: Value) -> Value {
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "spec": spec})
    }

    fn cm(data: Value) -> Value {
        json!({"kind": "ConfigMap", "data": data})
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    /// The guarded ConfigMap `calico-config`, known with `data`.
    fn known(data: &Map<String, Value>) -> Context<'_> {
        Context {
            config_map: KnownConfigMap {
                name: "calico-config",
                data: Some(Some(data)),
            },
            ..Context::NONE
        }
    }

    fn switch_in(kind: CalicoKind, old: &Value, new: &Value, ctx: Context<'_>) -> Option<Switch> {
        detect_switch(kind, old, new, ctx)
            .unwrap_or_else(|e| panic!("{kind:?}: new object unreadable: {e}"))
    }

    fn switch(kind: CalicoKind, old: &Value, new: &Value) -> Option<Switch> {
        switch_in(kind, old, new, Context::NONE)
    }

    /// The settings a switch lowers, with their old and new values.
    fn lowered(s: Option<Switch>) -> Vec<(Setting, String, String)> {
        s.map(|s| {
            s.reductions
                .into_iter()
                .map(|r| (r.setting, r.from, r.to))
                .collect()
        })
        .unwrap_or_default()
    }

    fn red(setting: Setting, from: &str, to: &str) -> (Setting, String, String) {
        (setting, from.into(), to.into())
    }

    /// Rank of each setting (in `Setting::ALL` order) when known.
    fn ranks(c: &OverlayConfig) -> [Option<u8>; 5] {
        fn r<L: Level>(e: &Option<Eff<L>>) -> Option<u8> {
            e.as_ref().and_then(Eff::known).map(Level::rank)
        }
        [
            r(&c.ipip),
            r(&c.vxlan),
            r(&c.felix_ipip),
            r(&c.felix_vxlan),
            r(&c.backend),
        ]
    }

    #[test]
    fn ranks_span_min_to_max() {
        fn check<L: Level + fmt::Debug>(all: &[L]) {
            let ranks: BTreeSet<u8> = all.iter().map(|l| l.rank()).collect();
            assert_eq!(ranks.first(), Some(&L::MIN), "{all:?}");
            assert_eq!(ranks.last(), Some(&L::MAX), "{all:?}");
        }
        check(&[Never, CrossSubnet, Always]);
        check(&[Off, FollowPools, On]);
        check(&[Backend::None, Backend::Bird, Backend::Vxlan]);
        assert!(Never.rank() < CrossSubnet.rank() && CrossSubnet.rank() < Always.rank());
        assert!(Off.rank() < FollowPools.rank() && FollowPools.rank() < On.rank());
        assert!(Backend::None.rank() < Backend::Bird.rank());
        assert_eq!(Backend::Bird.rank(), Backend::Vxlan.rank());
    }

    #[test]
    fn pool_modes_as_libcalico_go() {
        use Setting::PoolIpip as I;
        use Setting::PoolVxlan as V;
        // (field, old, new, reductions); None = field absent.
        let cases: Vec<(&str, Option<Value>, Option<Value>, Vec<_>)> = vec![
            (
                "ipipMode",
                Some(json!("Always")),
                Some(json!("always")),
                vec![red(I, "Always", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                Some(json!(" Always")),
                vec![red(I, "Always", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                Some(json!("ALWAYS")),
                vec![red(I, "Always", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                Some(json!("CrossSubnet")),
                vec![red(I, "Always", "CrossSubnet")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                Some(json!("crosssubnet")),
                vec![red(I, "Always", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("CrossSubnet")),
                Some(json!("crosssubnet")),
                vec![red(I, "CrossSubnet", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("CrossSubnet")),
                Some(json!("cross-subnet")),
                vec![red(I, "CrossSubnet", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                Some(json!("")),
                vec![red(I, "Always", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                Some(json!("garbage")),
                vec![red(I, "Always", "Never")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                None,
                vec![red(I, "Always", "unset (Never)")],
            ),
            (
                "ipipMode",
                Some(json!("Always")),
                Some(Value::Null),
                vec![red(I, "Always", "unset (Never)")],
            ),
            (
                "vxlanMode",
                Some(json!("Always")),
                Some(json!("always")),
                vec![red(V, "Always", "Never")],
            ),
            (
                "vxlanMode",
                Some(json!("CrossSubnet")),
                Some(json!("Never")),
                vec![red(V, "CrossSubnet", "Never")],
            ),
            (
                "vxlanMode",
                Some(json!("Always")),
                None,
                vec![red(V, "Always", "unset (Never)")],
            ),
            // Not lower.
            (
                "ipipMode",
                Some(json!("always")),
                Some(json!("Never")),
                vec![],
            ),
            ("ipipMode", Some(json!("garbage")), Some(json!("")), vec![]),
            ("ipipMode", None, Some(json!("never")), vec![]),
            ("ipipMode", Some(json!("Never")), None, vec![]),
            (
                "ipipMode",
                Some(json!("always")),
                Some(json!("Always")),
                vec![],
            ),
            (
                "ipipMode",
                Some(json!("crosssubnet")),
                Some(json!("CrossSubnet")),
                vec![],
            ),
            (
                "ipipMode",
                Some(json!("CrossSubnet")),
                Some(json!("Always")),
                vec![],
            ),
            (
                "vxlanMode",
                Some(json!("Never")),
                Some(json!("Always")),
                vec![],
            ),
            ("vxlanMode", None, Some(json!("CrossSubnet")), vec![]),
        ];
        for (field, old, new, want) in cases {
            let spec = |v: &Option<Value>| {
                let mut s = json!({"cidr": "100.64.0.0/12"});
                if let Some(v) = v {
                    s[field] = v.clone();
                }
                pool(s)
            };
            assert_eq!(
                lowered(switch(CalicoKind::IpPool, &spec(&old), &spec(&new))),
                want,
                "{field}: {old:?} -> {new:?}"
            );
        }
    }

    #[test]
    fn the_issues_kubectl_patch_is_held() {
        // kubectl patch ippool default-ipv4-ippool --type merge -p '{"spec":{"ipipMode":"always"}}'
        let old =
            pool(json!({"cidr": "100.64.0.0/12", "ipipMode": "Always", "vxlanMode": "Never"}));
        let mut new = old.clone();
        json_patch::merge(&mut new, &json!({"spec": {"ipipMode": "always"}}));
        let s = switch(CalicoKind::IpPool, &old, &new).expect("a switch");
        assert_eq!(s.kind, CalicoKind::IpPool);
        assert_eq!(s.to_string(), "spec.ipipMode Always -> Never");
    }

    #[test]
    fn the_legacy_ipip_block_counts_as_either_calico_version_reads_it() {
        use Setting::PoolIpip as I;
        let p = |mode: &str, block: Option<Value>| {
            let mut s = json!({"ipipMode": mode, "vxlanMode": "Never"});
            if let Some(b) = block {
                s["ipip"] = b;
            }
            pool(s)
        };
        let on = || Some(json!({"enabled": true}));
        for (old, new, want, why) in [
            (
                p("Always", None),
                p("Always", Some(json!({}))),
                vec![red(I, "Always", "Never")],
                "v3.31: an empty block forces Never",
            ),
            (
                p("Always", None),
                p("Always", Some(json!({"enabled": false}))),
                vec![red(I, "Always", "Never")],
                "v3.31: a disabled block forces Never",
            ),
            (
                p("Always", None),
                p(
                    "Always",
                    Some(json!({"enabled": true, "mode": "cross-subnet"})),
                ),
                vec![red(I, "Always", "CrossSubnet")],
                "v3.31: the block's cross-subnet",
            ),
            (
                p("Never", on()),
                p("Never", None),
                vec![red(I, "Always", "Never")],
                "v3.31: removing an enabled block",
            ),
            (
                p("Always", on()),
                p("Never", on()),
                vec![red(I, "Always", "Never")],
                "v3.32 ignores the block: ipipMode is lowered",
            ),
            (
                p("Always", Some(json!({}))),
                p("Never", Some(json!({}))),
                vec![red(I, "Always", "Never")],
                "v3.32 ignores the block: ipipMode is lowered",
            ),
            (
                p("Always", on()),
                p("Never", None),
                vec![red(I, "Always", "Never")],
                "lowered in both readings: reported once",
            ),
            (
                p("Never", on()),
                p("Always", on()),
                vec![],
                "v3.31 Always -> Always, v3.32 Never -> Always",
            ),
            (p("Always", None), p("Always", on()), vec![], "same in both"),
            (
                p("Never", Some(json!({}))),
                p("Always", None),
                vec![],
                "up in both",
            ),
            (
                p("Always", None),
                p("Always", Some(Value::Null)),
                vec![],
                "a null block is no block",
            ),
            (
                p("Never", on()),
                p("Never", Some(json!({"enabled": true, "mode": "always"}))),
                vec![],
                "any mode but cross-subnet is Always",
            ),
        ] {
            assert_eq!(
                lowered(switch(CalicoKind::IpPool, &old, &new)),
                want,
                "{why}: {old} -> {new}"
            );
        }
        // `read` is the v3.31 reading; `read_pool` gives both.
        let obj = p("Always", Some(json!({})));
        assert_eq!(
            read(CalicoKind::IpPool, &obj, Context::NONE).ipip,
            Some(Eff::Set(Never))
        );
        assert_eq!(
            read_pool(&obj, PoolReader::UpToV331).ipip,
            Some(Eff::Set(Never))
        );
        assert_eq!(
            read_pool(&obj, PoolReader::FromV332).ipip,
            Some(Eff::Set(Always))
        );
        // A block that is no object: unreadable when new, not when unchanged.
        let bad = p("Always", Some(json!("yes")));
        let e =
            detect_switch(CalicoKind::IpPool, &p("Always", None), &bad, Context::NONE).unwrap_err();
        assert_eq!(e.source_field, "spec.ipip");
        assert_eq!(e.value, "yes");
        assert_eq!(
            detect_switch(CalicoKind::IpPool, &bad, &bad, Context::NONE),
            Ok(None)
        );
    }

    #[test]
    fn env_pool_modes_are_lowercased_not_trimmed() {
        use Setting::PoolIpip as I;
        // None = unset.
        for (old, new, want) in [
            (Some("Always"), Some("always"), vec![]),
            (Some("always"), Some("ALWAYS"), vec![]),
            (Some("CrossSubnet"), Some("cross-subnet"), vec![]),
            (Some("Never"), Some("off"), vec![]),
            (Some("off"), None, vec![]),
            (None, Some(""), vec![]),
            (
                Some("Always"),
                Some("crosssubnet"),
                vec![red(I, "Always", "CrossSubnet")],
            ),
            (
                Some("ALWAYS"),
                Some("never"),
                vec![red(I, "Always", "Never")],
            ),
            (Some("always"), Some("OFF"), vec![red(I, "Always", "Never")]),
            (Some("Always"), Some(""), vec![red(I, "Always", "Never")]),
            (
                Some("Always"),
                None,
                vec![red(I, "Always", "unset (Never)")],
            ),
            (
                Some("cross-subnet"),
                None,
                vec![red(I, "CrossSubnet", "unset (Never)")],
            ),
        ] {
            let d =
                |v: Option<&str>| ds(json!(v.map(|v| vec![var(ENV_IPIP, v)]).unwrap_or_default()));
            assert_eq!(
                lowered(switch(CalicoKind::DaemonSet, &d(old), &d(new))),
                want,
                "{old:?} -> {new:?}"
            );
        }

        // Unreadable: an error when newly set, whatever the old value.
        let bad = ds(json!([
            var(ENV_IPIP, " Always"),
            var(ENV_FELIX_IPIP, "true")
        ]));
        for old in [
            json!([]),
            json!([var(ENV_IPIP, "Always")]),
            json!([var(ENV_IPIP, "sometimes")]),
        ] {
            let e = detect_switch(CalicoKind::DaemonSet, &ds(old.clone()), &bad, Context::NONE)
                .expect_err("unreadable new value");
            assert_eq!(
                e.source_field, "container \"calico-node\" env CALICO_IPV4POOL_IPIP",
                "{old}"
            );
            assert_eq!(e.value, " Always");
            assert_eq!(e.expected, crate::calico::values::POOL_ENV_MODES);
        }
        // The same unreadable value on both sides is no error, and the
        // other settings still count.
        assert_eq!(
            detect_switch(CalicoKind::DaemonSet, &bad, &bad, Context::NONE),
            Ok(None)
        );
        let also_off = ds(json!([
            var(ENV_IPIP, " Always"),
            var(ENV_FELIX_IPIP, "false")
        ]));
        assert_eq!(
            lowered(switch(CalicoKind::DaemonSet, &bad, &also_off)),
            vec![red(Setting::FelixIpip, "true", "false")]
        );
        // An unreadable old value is unknown: anything below Always is lower.
        let u = "unreadable \" Always\"";
        for (new, want) in [
            ("Always", vec![]),
            ("CrossSubnet", vec![red(I, u, "CrossSubnet")]),
            ("Never", vec![red(I, u, "Never")]),
        ] {
            let new = ds(json!([var(ENV_IPIP, new), var(ENV_FELIX_IPIP, "true")]));
            assert_eq!(
                lowered(switch(CalicoKind::DaemonSet, &bad, &new)),
                want,
                "{new}"
            );
        }
    }

    #[test]
    fn felix_flags_rank_off_below_follow_pools_below_on() {
        use Setting::FelixIpip as F;
        const UNSET: &str = "unset (Felix follows the IPPools)";
        const NIL: &str = "Felix follows the IPPools";
        for (old, new, want) in [
            (Some("true"), None, vec![red(F, "true", UNSET)]),
            (None, Some("false"), vec![red(F, UNSET, "false")]),
            (Some("true"), Some(""), vec![red(F, "true", UNSET)]),
            (Some("true"), Some("none"), vec![red(F, "true", NIL)]),
            (Some("yes"), Some(" true"), vec![red(F, "true", NIL)]),
            (Some("1"), Some("on"), vec![red(F, "true", NIL)]),
            (Some("off"), Some("false"), vec![red(F, NIL, "false")]),
            (Some("none"), Some("0"), vec![red(F, NIL, "false")]),
            (Some("T"), Some("n"), vec![red(F, "true", "false")]),
            // Not lower.
            (Some("none"), None, vec![]),
            (None, Some("none"), vec![]),
            (Some(""), Some("garbage"), vec![]),
            (Some("false"), Some("off"), vec![]),
            (Some("false"), None, vec![]),
            (Some("f"), Some("NO"), vec![]),
            (Some("true"), Some("Y"), vec![]),
            (None, Some("TRUE"), vec![]),
        ] {
            let d = |v: Option<&str>| {
                ds(json!(
                    v.map(|v| vec![var(ENV_FELIX_IPIP, v)]).unwrap_or_default()
                ))
            };
            assert_eq!(
                lowered(switch(CalicoKind::DaemonSet, &d(old), &d(new))),
                want,
                "{old:?} -> {new:?}"
            );
        }
        // The two-step true -> removed -> false is held at each step.
        let steps = [
            ds(json!([var(ENV_FELIX_VXLAN, "true")])),
            ds(json!([])),
            ds(json!([var(ENV_FELIX_VXLAN, "false")])),
        ];
        for w in steps.windows(2) {
            let s = switch(CalicoKind::DaemonSet, &w[0], &w[1]).expect("each step is a switch");
            assert_eq!(s.reductions.len(), 1);
            assert_eq!(s.reductions[0].setting, Setting::FelixVxlan);
            assert_eq!(s.reductions[0].source, "env FELIX_VXLANENABLED");
        }
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([var(ENV_FELIX_IPIP, "")])),
            Context::NONE,
        );
        assert_eq!(c.felix_ipip, Some(Eff::Unset(FollowPools)));
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([var(ENV_FELIX_IPIP, "none")])),
            Context::NONE,
        );
        assert_eq!(c.felix_ipip, Some(Eff::Set(FollowPools)));
    }

    #[test]
    fn backends_lower_only_to_exact_none() {
        use Setting::Backend as B;
        for (old, new, want) in [
            (Some("bird"), Some("none"), vec![red(B, "bird", "none")]),
            (Some("vxlan"), Some("none"), vec![red(B, "vxlan", "none")]),
            (None, Some("none"), vec![red(B, "unset (bird)", "none")]),
            (Some("None"), Some("none"), vec![red(B, "bird", "none")]),
            (Some(""), Some("none"), vec![red(B, "bird", "none")]),
            (Some("bird"), Some("vxlan"), vec![]),
            (Some("vxlan"), Some("bird"), vec![]),
            (Some("vxlan"), None, vec![]),
            (Some("none"), Some("None"), vec![]),
            (Some("bird"), Some("NONE"), vec![]),
            (Some("bird"), Some(" none"), vec![]),
            (Some("none"), None, vec![]),
        ] {
            let d = |v: Option<&str>| {
                ds(json!(
                    v.map(|v| vec![var(ENV_BACKEND, v)]).unwrap_or_default()
                ))
            };
            assert_eq!(
                lowered(switch(CalicoKind::DaemonSet, &d(old), &d(new))),
                want,
                "env {old:?} -> {new:?}"
            );
            let c = |v: Option<&str>| {
                cm(v.map(|v| json!({"calico_backend": v}))
                    .unwrap_or(json!({"veth_mtu": "0"})))
            };
            assert_eq!(
                lowered(switch(CalicoKind::ConfigMap, &c(old), &c(new))),
                want,
                "data {old:?} -> {new:?}"
            );
        }
        // vxlan -> removed -> none: held at the second step.
        let steps = [
            cm(json!({"calico_backend": "vxlan"})),
            cm(json!({})),
            cm(json!({"calico_backend": "none"})),
        ];
        assert_eq!(switch(CalicoKind::ConfigMap, &steps[0], &steps[1]), None);
        assert_eq!(
            lowered(switch(CalicoKind::ConfigMap, &steps[1], &steps[2])),
            vec![red(B, "unset (bird)", "none")]
        );
        // No data at all is the default too.
        assert_eq!(
            read(
                CalicoKind::ConfigMap,
                &json!({"kind": "ConfigMap"}),
                Context::NONE
            )
            .backend,
            Some(Eff::Unset(Backend::Bird))
        );
        // A ConfigMap value that is no string cannot be read.
        let bad = cm(json!({"calico_backend": 5}));
        let e =
            detect_switch(CalicoKind::ConfigMap, &cm(json!({})), &bad, Context::NONE).unwrap_err();
        assert_eq!(
            (e.source_field.as_str(), e.value.as_str()),
            ("data.calico_backend", "5 (not a string)")
        );
    }

    #[test]
    fn only_the_calico_node_container_counts() {
        let c = |name: &str, ipip: &str| json!({"name": name, "env": [var(ENV_IPIP, ipip)]});
        let d = |cs: Vec<Value>, init: Vec<Value>| ds_with(Value::Array(cs), Value::Array(init));
        for (old, new, switch_, why) in [
            (
                d(
                    vec![c("helper", "Never"), c("calico-node", "Always")],
                    vec![],
                ),
                d(
                    vec![c("helper", "Always"), c("calico-node", "Never")],
                    vec![],
                ),
                true,
                "raised elsewhere, lowered in calico-node",
            ),
            (
                d(
                    vec![c("helper", "Always"), c("calico-node", "Always")],
                    vec![],
                ),
                d(
                    vec![c("helper", "Never"), c("calico-node", "Always")],
                    vec![],
                ),
                false,
                "another container's env",
            ),
            (
                d(vec![c("calico-node", "Always")], vec![c("init", "Never")]),
                d(vec![c("calico-node", "Never")], vec![c("init", "Always")]),
                true,
                "init containers never count",
            ),
            (
                d(vec![c("calico-node", "Always")], vec![c("init", "Always")]),
                d(vec![c("calico-node", "Always")], vec![c("init", "Never")]),
                false,
                "init containers never count",
            ),
            (
                d(vec![c("a", "Always"), c("b", "Always")], vec![]),
                d(vec![c("a", "Never"), c("b", "Always")], vec![]),
                true,
                "no calico-node: the first container",
            ),
            (
                d(vec![c("a", "Always"), c("b", "Always")], vec![]),
                d(vec![c("a", "Always"), c("b", "Never")], vec![]),
                false,
                "no calico-node: only the first container",
            ),
            (
                d(vec![c("a", "Always")], vec![]),
                d(vec![c("a", "Always"), c("calico-node", "Never")], vec![]),
                true,
                "a calico-node container appears",
            ),
            (
                d(vec![c("calico-node", "Always")], vec![]),
                d(
                    vec![c("sidecar", "Always"), c("calico-node", "Always")],
                    vec![],
                ),
                false,
                "a sidecar in front of calico-node",
            ),
        ] {
            assert_eq!(
                switch(CalicoKind::DaemonSet, &old, &new).is_some(),
                switch_,
                "{why}"
            );
        }
        // No containers at all: Calico's defaults.
        let none = read(CalicoKind::DaemonSet, &json!({"spec": {}}), Context::NONE);
        assert_eq!(
            none,
            read(CalicoKind::DaemonSet, &ds(json!([])), Context::NONE)
        );
        assert_eq!(ranks(&none), [Some(0), Some(0), Some(1), Some(1), Some(1)]);
    }

    #[test]
    fn value_from_the_guarded_config_map_is_resolved() {
        let data = map(json!({"calico_backend": "bird", "ipip": "Always", "felix": "true"}));
        let ctx = known(&data);
        let by_ref = ds(json!([
            from_cm(ENV_BACKEND, "calico-config", "calico_backend"),
            from_cm(ENV_IPIP, "calico-config", "ipip"),
            from_cm(ENV_FELIX_IPIP, "calico-config", "felix"),
        ]));
        let c = read(CalicoKind::DaemonSet, &by_ref, ctx);
        assert_eq!(c.backend, Some(Eff::Set(Backend::Bird)));
        assert_eq!(c.ipip, Some(Eff::Set(Always)));
        assert_eq!(c.felix_ipip, Some(Eff::Set(On)));
        let literal = |b: &str, i: &str, f: &str| {
            ds(json!([
                var(ENV_BACKEND, b),
                var(ENV_IPIP, i),
                var(ENV_FELIX_IPIP, f)
            ]))
        };
        assert_eq!(
            lowered(switch_in(
                CalicoKind::DaemonSet,
                &by_ref,
                &literal("none", "Always", "true"),
                ctx
            )),
            vec![red(Setting::Backend, "bird", "none")]
        );
        assert_eq!(
            lowered(switch_in(
                CalicoKind::DaemonSet,
                &by_ref,
                &literal("bird", "Never", "false"),
                ctx
            )),
            vec![
                red(Setting::PoolIpip, "Always", "Never"),
                red(Setting::FelixIpip, "true", "false")
            ]
        );
        assert_eq!(
            switch_in(
                CalicoKind::DaemonSet,
                &by_ref,
                &literal("vxlan", "always", "yes"),
                ctx
            ),
            None
        );
        assert_eq!(
            switch_in(
                CalicoKind::DaemonSet,
                &literal("none", "Never", "0"),
                &by_ref,
                ctx
            ),
            None
        );

        // envFrom the guarded ConfigMap, with a prefix.
        let env_from = json!({"spec": {"template": {"spec": {"containers": [{"name": "calico-node",
            "envFrom": [{"configMapRef": {"name": "calico-config"}, "prefix": "CALICO_IPV4POOL_"}]}]}}}});
        let data = map(json!({"IPIP": "Always"}));
        assert_eq!(
            read(CalicoKind::DaemonSet, &env_from, known(&data)).ipip,
            Some(Eff::Set(Always))
        );
    }

    #[test]
    fn dollar_references_expand_as_kubernetes_does() {
        let d = |env: Value| ds(env);
        let ipip = |env: Value| {
            read(CalicoKind::DaemonSet, &d(env), Context::NONE)
                .ipip
                .unwrap()
        };
        assert_eq!(
            ipip(json!([var("MODE", "Always"), var(ENV_IPIP, "$(MODE)")])),
            Eff::Set(Always)
        );
        assert_eq!(
            ipip(json!([var("M", "cross"), var(ENV_IPIP, "$(M)-subnet")])),
            Eff::Set(CrossSubnet)
        );
        // Defined later or escaped: the text stays, which calico-node refuses.
        for env in [
            json!([var(ENV_IPIP, "$(MODE)"), var("MODE", "Always")]),
            json!([var("MODE", "Always"), var(ENV_IPIP, "$$(MODE)")]),
        ] {
            assert!(
                matches!(ipip(env.clone()), Eff::Unreadable(e) if e.value == "$(MODE)"),
                "{env}"
            );
        }
        // From a secret: unknown.
        assert!(matches!(
            ipip(json!([from_secret("MODE", "k"), var(ENV_IPIP, "$(MODE)")])),
            Eff::Unknown(w) if w.contains("$(MODE)")
        ));
        // Lowering the referenced variable lowers the setting.
        let old = d(json!([var("MODE", "Always"), var(ENV_IPIP, "$(MODE)")]));
        let new = d(json!([var("MODE", "Never"), var(ENV_IPIP, "$(MODE)")]));
        assert_eq!(
            lowered(switch(CalicoKind::DaemonSet, &old, &new)),
            vec![red(Setting::PoolIpip, "Always", "Never")]
        );
    }

    /// The ways a calico-node variable can come from a source the guard
    /// cannot read, each as (entries before env, env entry for `name`).
    fn unknown_sources(name: &str) -> Vec<(&'static str, Value, Value)> {
        vec![
            ("secretKeyRef", json!([]), from_secret(name, "k")),
            ("another ConfigMap", json!([]), from_cm(name, "other", "k")),
            (
                "fieldRef",
                json!([]),
                json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
            ),
            (
                "opaque envFrom",
                json!([{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": true}}]),
                Value::Null,
            ),
            (
                "opaque envFrom Secret",
                json!([{"secretRef": {"name": "s"}}]),
                Value::Null,
            ),
            ("reference to a secret", json!([]), var(name, "$(SECRET)")),
        ]
    }

    fn container_ds(env_from: &Value, env: Vec<Value>) -> Value {
        let env: Vec<Value> = env.into_iter().filter(|e| !e.is_null()).collect();
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "calico-node", "envFrom": env_from, "env": env}]}}}})
    }

    #[test]
    fn unknown_sources_are_reductions_unless_at_the_extreme() {
        /// (variable, setting, spellings with their rank, MIN, MAX)
        type Var = (&'static str, Setting, Vec<(&'static str, u8)>, u8, u8);
        let vars: [Var; 3] = [
            (
                ENV_IPIP,
                Setting::PoolIpip,
                vec![("Never", 0), ("CrossSubnet", 1), ("Always", 2)],
                0,
                2,
            ),
            (
                ENV_FELIX_VXLAN,
                Setting::FelixVxlan,
                vec![("false", 0), ("none", 1), ("true", 2)],
                0,
                2,
            ),
            (
                ENV_BACKEND,
                Setting::Backend,
                vec![("none", 0), ("bird", 1), ("vxlan", 1)],
                0,
                1,
            ),
        ];
        let mut checked = 0;
        for (name, setting, levels, min, max) in vars {
            let sources = unknown_sources(name);
            let secret = from_secret("SECRET", "s");
            for (what, env_from, entry) in &sources {
                let unknown = container_ds(env_from, vec![secret.clone(), entry.clone()]);
                let c = read(CalicoKind::DaemonSet, &unknown, Context::NONE);
                let i = Setting::ALL.iter().position(|s| *s == setting).unwrap();
                assert_eq!(ranks(&c)[i], None, "{name} from {what} is unknown");
                for (spelling, rank) in &levels {
                    let lit = container_ds(&json!([]), vec![var(name, spelling)]);
                    let to = switch(CalicoKind::DaemonSet, &lit, &unknown).map(|s| s.reductions);
                    let from = switch(CalicoKind::DaemonSet, &unknown, &lit).map(|s| s.reductions);
                    let on = |r: Option<Vec<Reduction>>| {
                        r.is_some_and(|r| r.iter().any(|r| r.setting == setting))
                    };
                    assert_eq!(on(to), *rank > min, "{name}={spelling} -> {what}");
                    assert_eq!(on(from), *rank < max, "{what} -> {name}={spelling}");
                    checked += 1;
                }
                // The same unknown source on both sides: no change.
                assert_eq!(
                    switch(CalicoKind::DaemonSet, &unknown, &unknown.clone()),
                    None,
                    "{what}"
                );
                // Another unknown source: may be lower.
                for (other, env_from2, entry2) in &sources {
                    if other == what {
                        continue;
                    }
                    let unknown2 = container_ds(env_from2, vec![secret.clone(), entry2.clone()]);
                    let s = switch(CalicoKind::DaemonSet, &unknown, &unknown2);
                    assert!(
                        s.is_some_and(|s| s.reductions.iter().any(|r| r.setting == setting)),
                        "{name}: {what} -> {other}"
                    );
                }
            }
        }
        assert_eq!(checked, 3 * 6 * 3);

        // The guarded ConfigMap while it is not known yet, and a key that
        // it does not have.
        let unsynced = Context {
            config_map: KnownConfigMap {
                name: "calico-config",
                data: None,
            },
            ..Context::NONE
        };
        let by_ref = ds(json!([from_cm(
            ENV_BACKEND,
            "calico-config",
            "calico_backend"
        )]));
        let c = read(CalicoKind::DaemonSet, &by_ref, unsynced);
        assert!(matches!(c.backend, Some(Eff::Unknown(w)) if w.contains("not yet known")));
        let lit = ds(json!([var(ENV_BACKEND, "none")]));
        assert!(switch_in(CalicoKind::DaemonSet, &by_ref, &lit, unsynced).is_some());
        let data = map(json!({"veth_mtu": "0"}));
        let c = read(CalicoKind::DaemonSet, &by_ref, known(&data));
        assert!(matches!(c.backend, Some(Eff::Unknown(w)) if w.contains("cannot start")));
        // Optional and missing: not set at all.
        let optional = ds(
            json!([{"name": ENV_BACKEND, "valueFrom": {"configMapKeyRef":
            {"name": "calico-config", "key": "calico_backend", "optional": true}}}]),
        );
        let c = read(CalicoKind::DaemonSet, &optional, known(&data));
        assert_eq!(c.backend, Some(Eff::Unset(Backend::Bird)));
    }

    #[test]
    fn unknown_next_to_a_middle_level_is_lowered_both_ways() {
        // Unavoidable for soundness: an unknown value may be anything, so
        // leaving a middle level for it and coming back are both lowerings.
        let unknown = ds(json!([from_secret(ENV_IPIP, "k")]));
        let middle = ds(json!([var(ENV_IPIP, "CrossSubnet")]));
        assert!(switch(CalicoKind::DaemonSet, &unknown, &middle).is_some());
        assert!(switch(CalicoKind::DaemonSet, &middle, &unknown).is_some());
        let a = ds(json!([from_cm(ENV_IPIP, "other", "a")]));
        let b = ds(json!([from_cm(ENV_IPIP, "other", "b")]));
        assert!(switch(CalicoKind::DaemonSet, &a, &b).is_some());
        assert!(switch(CalicoKind::DaemonSet, &b, &a).is_some());
    }

    #[test]
    fn a_config_map_update_is_judged_through_calico_node() {
        let container = json!({"name": "calico-node", "env": [
            from_cm(ENV_FELIX_IPIP, "calico-config", "felix_ipip"),
            from_cm(ENV_BACKEND, "calico-config", "calico_backend"),
            from_cm("FELIX_IPINIPMTU", "calico-config", "veth_mtu"),
        ]});
        let data = map(json!({}));
        fn with<'a>(data: &'a Map<String, Value>, node: Option<Option<&'a Value>>) -> Context<'a> {
            Context {
                calico_node: node,
                ..known(data)
            }
        }
        let ctx = |node| with(&data, node);
        let old = cm(json!({"calico_backend": "bird", "felix_ipip": "true", "veth_mtu": "0"}));
        let felix_off =
            cm(json!({"calico_backend": "bird", "felix_ipip": "false", "veth_mtu": "0"}));
        let mtu = cm(json!({"calico_backend": "bird", "felix_ipip": "true", "veth_mtu": "1400"}));
        let native = cm(json!({"calico_backend": "none", "felix_ipip": "true", "veth_mtu": "0"}));

        let s = switch_in(
            CalicoKind::ConfigMap,
            &old,
            &felix_off,
            ctx(Some(Some(&container))),
        )
        .expect("calico-node's Felix IPIP goes from true to false");
        assert_eq!(
            lowered(Some(s.clone())),
            vec![red(Setting::FelixIpip, "true", "false")]
        );
        assert!(
            s.reductions[0].source.contains("FELIX_IPINIPENABLED"),
            "{s}"
        );
        assert_eq!(
            switch_in(
                CalicoKind::ConfigMap,
                &old,
                &mtu,
                ctx(Some(Some(&container)))
            ),
            None
        );
        let s = switch_in(
            CalicoKind::ConfigMap,
            &old,
            &native,
            ctx(Some(Some(&container))),
        )
        .unwrap();
        assert_eq!(s.reductions.len(), 2, "{s}");
        assert!(
            s.reductions.iter().all(|r| r.setting == Setting::Backend),
            "{s}"
        );
        // No calico-node: only calico_backend itself.
        assert_eq!(
            switch_in(CalicoKind::ConfigMap, &old, &felix_off, ctx(Some(None))),
            None
        );
        // calico-node not known yet: any change of the data may lower it.
        assert!(switch_in(CalicoKind::ConfigMap, &old, &mtu, ctx(None)).is_some());
        assert_eq!(
            switch_in(CalicoKind::ConfigMap, &old, &old.clone(), ctx(None)),
            None
        );
    }

    #[test]
    fn describe_and_display() {
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([
                var(ENV_IPIP, "Always"),
                from_secret(ENV_VXLAN, "k"),
                var(ENV_FELIX_IPIP, "x y")
            ])),
            Context::NONE,
        );
        assert_eq!(
            c.describe(),
            "IPIP Always, VXLAN unknown (from Secret s key k), Felix IPIP Felix follows the IPPools, \
             Felix VXLAN unset (Felix follows the IPPools), backend unset (bird)"
        );
        assert_eq!(OverlayConfig::default().describe(), "no overlay settings");
        let p = read(
            CalicoKind::IpPool,
            &pool(json!({"ipipMode": "CrossSubnet", "vxlanMode": 7})),
            Context::NONE,
        );
        assert_eq!(
            p.describe(),
            "IPIP CrossSubnet, VXLAN unreadable \"7 (not a string)\""
        );
        let e = match p.vxlan {
            Some(Eff::Unreadable(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "spec.vxlanMode: unrecognized value \"7 (not a string)\" (Calico accepts {})",
                values::POOL_MODES
            )
        );
        let s = switch(
            CalicoKind::IpPool,
            &pool(json!({"ipipMode": "Always", "vxlanMode": "CrossSubnet"})),
            &pool(json!({})),
        )
        .unwrap();
        assert_eq!(
            s.to_string(),
            "spec.ipipMode Always -> unset (Never), spec.vxlanMode CrossSubnet -> unset (Never)"
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
            if kind == CalicoKind::DaemonSet {
                assert_eq!(format!("env {}", setting.env_var()), source);
            }
        }
    }

    #[test]
    fn huge_unreadable_values_are_shortened_on_a_char_boundary() {
        let long = format!("{}é{}", "a".repeat(127), "b".repeat(500));
        let e = detect_switch(
            CalicoKind::DaemonSet,
            &ds(json!([])),
            &ds(json!([var(ENV_IPIP, &long)])),
            Context::NONE,
        )
        .unwrap_err();
        assert_eq!(e.value, format!("{}...", "a".repeat(127)));
        assert_eq!(shorten("short"), "short");
        assert_eq!(shorten(&"x".repeat(128)), "x".repeat(128));
    }

    #[test]
    fn odd_shapes_do_not_panic_and_read_as_defaults() {
        let defaults = read(CalicoKind::DaemonSet, &ds(json!([])), Context::NONE);
        for v in [
            json!(null),
            json!(7),
            json!("spec"),
            json!([]),
            json!({"spec": []}),
            json!({"spec": "x"}),
            json!({"spec": {"template": []}}),
            json!({"spec": {"template": {"spec": {"containers": {}}}}}),
            json!({"spec": {"template": {"spec": {"containers": [1, {"name": "calico-node"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": 5, "env": "x", "envFrom": {}}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"env": [1, null, [], {"name": 2},
                {"value": "Always"}, {"name": null, "value": "x"}]}]}}}}),
            json!({"data": []}),
            json!({"data": "calico_backend"}),
        ] {
            assert_eq!(
                read(CalicoKind::DaemonSet, &v, Context::NONE),
                defaults,
                "{v}"
            );
            let p = read(CalicoKind::IpPool, &v, Context::NONE);
            assert_eq!(
                (p.ipip, p.vxlan),
                (Some(Eff::Unset(Never)), Some(Eff::Unset(Never))),
                "{v}"
            );
            let c = read(CalicoKind::ConfigMap, &v, Context::NONE);
            assert_eq!(c.backend, Some(Eff::Unset(Backend::Bird)), "{v}");
            for k in KINDS {
                assert_eq!(
                    detect_switch(k, &v, &v, Context::NONE),
                    Ok(None),
                    "{k:?} {v}"
                );
            }
        }
    }

    /// Unknown sources that differ must not read as the same unknown: the
    /// new one may hold a lower value. Defect in `podenv` (the words of an
    /// unknown are its identity, and these leave out what differs).
    #[test]
    fn differing_unknown_sources_are_not_the_same_source() {
        let entry = |from: Value| ds(json!([{"name": ENV_FELIX_IPIP, "valueFrom": from}]));
        let with_env_from = |env_from: Value| container_ds(&env_from, vec![]);
        for (what, old, new) in [
            (
                "secretKeyRef key",
                entry(json!({"secretKeyRef": {"name": "s", "key": "on"}})),
                entry(json!({"secretKeyRef": {"name": "s", "key": "off"}})),
            ),
            (
                "secretKeyRef name",
                entry(json!({"secretKeyRef": {"name": "a", "key": "k"}})),
                entry(json!({"secretKeyRef": {"name": "b", "key": "k"}})),
            ),
            (
                "fieldRef path",
                entry(json!({"fieldRef": {"fieldPath": "metadata.labels['a']"}})),
                entry(json!({"fieldRef": {"fieldPath": "metadata.labels['b']"}})),
            ),
            (
                "a second opaque envFrom",
                with_env_from(json!([{"configMapRef": {"name": "a"}}])),
                with_env_from(
                    json!([{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "b"}}]),
                ),
            ),
            (
                "the prefix of an opaque envFrom",
                with_env_from(json!([{"configMapRef": {"name": "a"}, "prefix": "X_"}])),
                with_env_from(json!([{"configMapRef": {"name": "a"}}])),
            ),
        ] {
            let s = switch(CalicoKind::DaemonSet, &old, &new);
            assert!(
                s.is_some_and(|s| s.reductions.iter().any(|r| r.setting == Setting::FelixIpip)),
                "{what}: FELIX_IPINIPENABLED may now be false"
            );
        }
    }

    /// An opaque `envFrom` listed after the guarded ConfigMap may override
    /// what that ConfigMap sets. Defect in `podenv::Environment::env_from`
    /// (an opaque source leaves earlier known values known).
    #[test]
    fn an_opaque_env_from_after_the_guarded_one_makes_its_values_unknown() {
        let data = map(json!({"IPIP": "Always"}));
        let guarded =
            json!({"configMapRef": {"name": "calico-config"}, "prefix": "CALICO_IPV4POOL_"});
        let opaque = json!({"configMapRef": {"name": "a"}});
        let old = container_ds(&json!([opaque.clone(), guarded.clone()]), vec![]);
        let new = container_ds(&json!([guarded, opaque]), vec![]);
        // In `new`, ConfigMap a comes last and may set CALICO_IPV4POOL_IPIP=Never.
        assert!(matches!(
            read(CalicoKind::DaemonSet, &new, known(&data)).ipip,
            Some(Eff::Unknown(_))
        ));
        assert!(switch_in(CalicoKind::DaemonSet, &old, &new, known(&data)).is_some());
    }

    // ---- Property tests ----

    /// Where one calico-node variable comes from in one step.
    #[derive(Debug, Clone)]
    enum Src {
        Unset,
        Literal(&'static str),
        /// `$(AUX)`, AUX set literally just before.
        Reference(&'static str),
        Secret(&'static str),
        /// `valueFrom` the guarded ConfigMap, key as given.
        Guarded(&'static str),
    }

    /// Spellings of every kind, readable or not, for any variable.
    const SPELLINGS: [&str; 24] = [
        "Always",
        "always",
        "ALWAYS",
        " Always",
        "CrossSubnet",
        "cross-subnet",
        "crosssubnet",
        "Never",
        "never",
        "off",
        "",
        "true",
        "TRUE",
        "1",
        "yes",
        "false",
        "0",
        "n",
        "none",
        "None",
        "bird",
        "vxlan",
        " true",
        "garbage",
    ];

    fn guarded_data() -> Map<String, Value> {
        map(
            json!({"always": "Always", "never": "Never", "true": "true", "false": "false",
            "bird": "bird", "none": "none", "vxlan": "vxlan", "bad": " Always"}),
        )
    }

    /// `secret`: the weight of secret sources (against 11 for the rest).
    fn src(secret: u32) -> impl Strategy<Value = Src> {
        prop_oneof![
            2 => Just(Src::Unset),
            6 => prop::sample::select(SPELLINGS.to_vec()).prop_map(Src::Literal),
            1 => prop::sample::select(SPELLINGS.to_vec()).prop_map(Src::Reference),
            secret => prop::sample::select(vec!["a", "b"]).prop_map(Src::Secret),
            2 => prop::sample::select(vec!["always", "never", "true", "false", "bird", "none", "vxlan", "bad", "missing"])
                .prop_map(Src::Guarded),
        ]
    }

    /// One step: a source for each of the five variables, and whether an
    /// opaque `envFrom` is there.
    fn step(secret: u32) -> impl Strategy<Value = (Vec<Src>, bool)> {
        (
            prop::collection::vec(src(secret), 5),
            prop::bool::weighted(0.15),
        )
    }

    fn step_ds((srcs, opaque): &(Vec<Src>, bool)) -> Value {
        let mut env = Vec::new();
        for (setting, s) in Setting::ALL.iter().zip(srcs) {
            let name = setting.env_var();
            match s {
                Src::Unset => {}
                Src::Literal(v) => env.push(var(name, v)),
                Src::Reference(v) => {
                    env.push(var("AUX", v));
                    env.push(var(name, "$(AUX)"));
                }
                Src::Secret(k) => env.push(from_secret(name, k)),
                Src::Guarded(k) => env.push(from_cm(name, "calico-config", k)),
            }
        }
        let env_from = if *opaque {
            json!([{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": true}}])
        } else {
            json!([])
        };
        container_ds(&env_from, env)
    }

    fn level<L>(all: Vec<L>) -> impl Strategy<Value = Eff<L>> + Clone
    where
        L: Level + fmt::Debug + 'static,
    {
        let l = prop::sample::select(all);
        prop_oneof![
            l.clone().prop_map(Eff::Set),
            l.prop_map(Eff::Unset),
            prop::sample::select(vec!["from secretKeyRef", "from ConfigMap x key y"])
                .prop_map(|w| Eff::Unknown(w.to_string())),
        ]
    }

    fn config() -> impl Strategy<Value = OverlayConfig> {
        let enc = || prop::option::of(level(vec![Never, CrossSubnet, Always]));
        let felix = || prop::option::of(level(vec![Off, FollowPools, On]));
        let backend = prop::option::of(level(vec![Backend::Bird, Backend::Vxlan, Backend::None]));
        (enc(), enc(), felix(), felix(), backend).prop_map(
            |(ipip, vxlan, felix_ipip, felix_vxlan, backend)| OverlayConfig {
                ipip,
                vxlan,
                felix_ipip,
                felix_vxlan,
                backend,
            },
        )
    }

    /// Arbitrary JSON whose keys and strings are mostly those the readers
    /// look at, so that deep paths are reached.
    fn json_tree() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            prop::sample::select(vec![
                "Always",
                "Never",
                "CrossSubnet",
                "always",
                " Always",
                "bird",
                "none",
                "true",
                "",
                "calico-node",
                "calico-config",
                "calico_backend",
                "$(CALICO_IPV4POOL_IPIP)",
                "$(",
                "$$",
                "CALICO_IPV4POOL_IPIP",
                "FELIX_IPINIPENABLED",
                "CALICO_NETWORKING_BACKEND",
                "CALICO_IPV4POOL_",
                "cross-subnet",
            ])
            .prop_map(String::from),
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        let key = prop::sample::select(vec![
            "spec",
            "template",
            "containers",
            "initContainers",
            "env",
            "envFrom",
            "name",
            "value",
            "valueFrom",
            "configMapKeyRef",
            "secretKeyRef",
            "configMapRef",
            "secretRef",
            "key",
            "optional",
            "prefix",
            "ipipMode",
            "vxlanMode",
            "ipip",
            "enabled",
            "mode",
            "data",
            "calico_backend",
            "x",
        ])
        .prop_map(String::from);
        leaf.prop_recursive(8, 128, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Hidden values: secret keys `a` and `b`, and what the opaque
    /// `envFrom` sets for each of the five variables.
    #[derive(Debug, Clone)]
    struct World {
        secret_a: &'static str,
        secret_b: &'static str,
        opaque: Vec<Option<&'static str>>,
    }

    fn world() -> impl Strategy<Value = World> {
        let sp = || prop::sample::select(SPELLINGS.to_vec());
        (sp(), sp(), prop::collection::vec(prop::option::of(sp()), 5)).prop_map(|(a, b, opaque)| {
            World {
                secret_a: a,
                secret_b: b,
                opaque,
            }
        })
    }

    /// The level calico-node truly runs with, per setting (`None`: a value
    /// it refuses, or a container that cannot start).
    fn true_ranks(
        (srcs, opaque): &(Vec<Src>, bool),
        world: &World,
        data: &Map<String, Value>,
    ) -> [Option<u8>; 5] {
        let mut out = [None; 5];
        for (i, s) in srcs.iter().enumerate() {
            let text: Option<Option<&str>> = match s {
                Src::Unset => Some(world.opaque[i].filter(|_| *opaque)),
                Src::Literal(v) | Src::Reference(v) => Some(Some(v)),
                Src::Secret(k) => Some(Some(if *k == "a" {
                    world.secret_a
                } else {
                    world.secret_b
                })),
                Src::Guarded(k) => data.get(*k).and_then(Value::as_str).map(Some),
            };
            let Some(text) = text else { continue };
            out[i] = match (Setting::ALL[i], text) {
                (Setting::PoolIpip | Setting::PoolVxlan, t) => {
                    match values::pool_env(t.unwrap_or("")) {
                        Parsed::Set(l) | Parsed::Unset(l) => Some(l.rank()),
                        Parsed::Invalid(_) => None,
                    }
                }
                (Setting::FelixIpip | Setting::FelixVxlan, t) => {
                    match values::felix_flag(t.unwrap_or("")) {
                        Parsed::Set(l) | Parsed::Unset(l) => Some(l.rank()),
                        Parsed::Invalid(_) => None,
                    }
                }
                (Setting::Backend, t) => {
                    Some(t.map_or(values::BACKEND_DEFAULT, values::backend).rank())
                }
            };
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// No lowering is invisible when split over several updates: if a
        /// setting ends lower than it started (both known), some accepted
        /// step was a switch for it. Refused updates (unreadable new value)
        /// do not happen.
        #[test]
        fn no_switch_is_invisible_when_split(first in step(1), rest in prop::collection::vec(step(1), 1..6)) {
            let data = guarded_data();
            let ctx = known(&data);
            let mut current = step_ds(&first);
            let start = ranks(&read(CalicoKind::DaemonSet, &current, ctx));
            let mut reduced = BTreeSet::new();
            for s in &rest {
                let next = step_ds(s);
                match detect_switch(CalicoKind::DaemonSet, &current, &next, ctx) {
                    Err(_) => continue,
                    Ok(sw) => {
                        for r in sw.into_iter().flat_map(|s| s.reductions) {
                            reduced.insert(Setting::ALL.iter().position(|x| *x == r.setting).unwrap());
                        }
                        current = next;
                    }
                }
            }
            let end = ranks(&read(CalicoKind::DaemonSet, &current, ctx));
            for i in 0..5 {
                if let (Some(a), Some(b)) = (start[i], end[i])
                    && b < a
                {
                    prop_assert!(reduced.contains(&i), "{:?} {} -> {} unseen", Setting::ALL[i], a, b);
                }
            }
        }

        /// A setting is reduced both ways only where an unknown value meets
        /// another unknown or a middle level: never between known values.
        #[test]
        fn no_setting_is_reduced_both_ways_between_known_values(a in config(), b in config()) {
            let there = reductions(CalicoKind::DaemonSet, &a, &b).unwrap();
            let back = reductions(CalicoKind::DaemonSet, &b, &a).unwrap();
            let (ra, rb) = (ranks(&a), ranks(&b));
            let max = [2, 2, 2, 2, 1];
            for (i, s) in Setting::ALL.iter().enumerate() {
                let both = there.iter().any(|r| r.setting == *s) && back.iter().any(|r| r.setting == *s);
                let stated = |c: &OverlayConfig| [c.ipip.is_some(), c.vxlan.is_some(), c.felix_ipip.is_some(),
                    c.felix_vxlan.is_some(), c.backend.is_some()][i];
                let expected = stated(&a) && stated(&b) && match (ra[i], rb[i]) {
                    (Some(_), Some(_)) => false,
                    (Some(k), None) | (None, Some(k)) => k > 0 && k < max[i],
                    (None, None) => {
                        let desc = |c: &OverlayConfig| c.describe();
                        desc(&a) != desc(&b) && there.iter().any(|r| r.setting == *s)
                    }
                };
                prop_assert_eq!(both, expected, "{:?}: {} / {}", s, a.describe(), b.describe());
            }
        }

        /// The same as the rule says, on known values: lower rank.
        #[test]
        fn known_values_are_reduced_exactly_when_lower(a in config(), b in config()) {
            let got: Vec<Setting> = reductions(CalicoKind::DaemonSet, &a, &b).unwrap()
                .into_iter().map(|r| r.setting).collect();
            let (ra, rb) = (ranks(&a), ranks(&b));
            for (i, s) in Setting::ALL.iter().enumerate() {
                if let (Some(x), Some(y)) = (ra[i], rb[i]) {
                    prop_assert_eq!(got.contains(s), y < x, "{:?}", s);
                }
            }
            prop_assert!(reductions(CalicoKind::DaemonSet, &a, &a).unwrap().is_empty());
        }

        #[test]
        fn arbitrary_json_never_panics_and_the_same_object_is_no_switch(v in json_tree(), w in json_tree()) {
            let data = guarded_data();
            let container = calico_node_container(&w);
            let ctxs = [
                Context::NONE,
                known(&data),
                Context { config_map: KnownConfigMap { name: "calico-config", data: None }, ..Context::NONE },
                Context { calico_node: None, ..known(&data) },
                Context { calico_node: Some(container), ..known(&data) },
            ];
            for ctx in ctxs {
                for k in KINDS {
                    let _ = read(k, &v, ctx).describe();
                    prop_assert_eq!(detect_switch(k, &v, &v, ctx), Ok(None), "{:?} {}", k, v);
                    let _ = detect_switch(k, &v, &w, ctx);
                }
            }
            // A bad old object never makes an error: only the new one can.
            for (k, valid) in [
                (CalicoKind::IpPool, pool(json!({"ipipMode": "Never"}))),
                (CalicoKind::ConfigMap, cm(json!({"calico_backend": "none"}))),
                (CalicoKind::DaemonSet, ds(json!([]))),
            ] {
                prop_assert!(detect_switch(k, &v, &valid, Context::NONE).is_ok(), "{:?} {}", k, v);
            }
        }

        #[test]
        fn generated_daemonsets_never_panic_and_are_no_switch_onto_themselves(s in step(1)) {
            let data = guarded_data();
            let d = step_ds(&s);
            prop_assert_eq!(detect_switch(CalicoKind::DaemonSet, &d, &d, known(&data)), Ok(None));
            prop_assert_eq!(detect_switch(CalicoKind::DaemonSet, &d, &d, Context::NONE), Ok(None));
        }
    }

    proptest! {
        // Expected to fail until the defect is fixed: keep no regression file.
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// As above, judged on the true values: secrets and the opaque
        /// `envFrom` hold hidden values (fixed over the sequence). If a
        /// setting truly ends lower than it started, some accepted step was
        /// a switch for it. Fails while differing unknown sources read the
        /// same (see `differing_unknown_sources_are_not_the_same_source`).
        #[test]
        fn no_switch_is_invisible_when_split_judged_on_true_values(
            first in step(8),
            rest in prop::collection::vec(step(8), 1..4),
            world in world(),
        ) {
            let data = guarded_data();
            let ctx = known(&data);
            let mut current = first.clone();
            let start = true_ranks(&current, &world, &data);
            let mut reduced = BTreeSet::new();
            for s in &rest {
                match detect_switch(CalicoKind::DaemonSet, &step_ds(&current), &step_ds(s), ctx) {
                    Err(_) => continue,
                    Ok(sw) => {
                        for r in sw.into_iter().flat_map(|s| s.reductions) {
                            reduced.insert(Setting::ALL.iter().position(|x| *x == r.setting).unwrap());
                        }
                        current = s.clone();
                    }
                }
            }
            let end = true_ranks(&current, &world, &data);
            for i in 0..5 {
                if let (Some(a), Some(b)) = (start[i], end[i]) {
                    prop_assert!(b >= a || reduced.contains(&i),
                        "{:?} truly {} -> {} unseen: {:?} .. {:?}", Setting::ALL[i], a, b, first, current);
                }
            }
        }
    }
}

#[cfg(test)]
mod felix_spelling_tests {
    use super::*;
    use serde_json::json;

    fn ds(env: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": [{"name": "calico-node", "env": env}]}}}})
    }

    fn felix_ipip(env: Value) -> Eff<FelixFlag> {
        read(CalicoKind::DaemonSet, &ds(env), Context::NONE)
            .felix_ipip
            .unwrap()
    }

    #[test]
    fn felix_reads_its_variables_in_any_case_and_the_legacy_backend_variable_counts() {
        // A lowercase spelling alone is what Felix reads.
        assert_eq!(
            felix_ipip(json!([{"name": "felix_ipinipenabled", "value": "false"}])),
            Eff::Set(FelixFlag::Off)
        );
        // Spellings that agree, or an empty one (Felix skips it): read.
        assert_eq!(
            felix_ipip(json!([
                {"name": "FELIX_IPINIPENABLED", "value": "true"},
                {"name": "Felix_IpInIpEnabled", "value": "yes"},
                {"name": "felix_ipinipenabled", "value": ""}
            ])),
            Eff::Set(FelixFlag::On)
        );
        // Spellings that disagree: Felix takes whichever comes last in an
        // environment the kubelet does not order, so it is unknown ...
        assert!(matches!(
            felix_ipip(json!([
                {"name": "FELIX_IPINIPENABLED", "value": "true"},
                {"name": "felix_ipinipenabled", "value": "false"}
            ])),
            Eff::Unknown(w) if w.contains("felix_ipinipenabled")
        ));
        // ... and adding such a spelling lowers a true Felix flag.
        let old = ds(json!([{"name": "FELIX_IPINIPENABLED", "value": "true"}]));
        let new = ds(json!([
            {"name": "FELIX_IPINIPENABLED", "value": "true"},
            {"name": "felix_IpInIpEnabled", "value": "false"}
        ]));
        let s = detect_switch(CalicoKind::DaemonSet, &old, &new, Context::NONE)
            .unwrap()
            .expect("a switch");
        assert_eq!(s.reductions[0].setting, Setting::FelixIpip);
        // The legacy CALICO_NETWORKING=false turns the backend off, whatever
        // CALICO_NETWORKING_BACKEND says (calico-node's rc.local).
        let backend = |env: Value| {
            read(CalicoKind::DaemonSet, &ds(env), Context::NONE)
                .backend
                .unwrap()
        };
        let bird = json!({"name": "CALICO_NETWORKING_BACKEND", "value": "bird"});
        assert_eq!(backend(json!([bird.clone()])), Eff::Set(Backend::Bird));
        assert_eq!(
            backend(json!([bird.clone(), {"name": "CALICO_NETWORKING", "value": "false"}])),
            Eff::Set(Backend::None)
        );
        assert_eq!(
            backend(
                json!([{"name": "CALICO_NETWORKING_BACKEND", "value": "none"}, {"name": "CALICO_NETWORKING", "value": "true"}])
            ),
            Eff::Set(Backend::Bird)
        );
        assert_eq!(
            backend(json!([bird.clone(), {"name": "CALICO_NETWORKING", "value": ""}])),
            Eff::Set(Backend::Bird)
        );
        assert!(
            detect_switch(
                CalicoKind::DaemonSet,
                &ds(json!([bird.clone()])),
                &ds(json!([bird, {"name": "CALICO_NETWORKING", "value": "false"}])),
                Context::NONE
            )
            .unwrap()
            .is_some()
        );
        // Pool and backend variables are read by their exact names.
        let c = read(
            CalicoKind::DaemonSet,
            &ds(json!([{"name": "calico_ipv4pool_ipip", "value": "Always"}])),
            Context::NONE,
        );
        assert_eq!(c.ipip, Some(Eff::Unset(Encapsulation::Never)));
    }
}
