//! The overlay reading and the hold against the Calico manifests of
//! Gardener's chart and of upstream Calico (tests/fixtures, with provenance).

use overlay_switch_webhook::hold::{self, Record};
use overlay_switch_webhook::overlay::{
    Backend, CalicoKind, Encapsulation, OverlayConfig, Setting, detect_switch, read,
};
use serde_json::{Value, json};

fn load(rel: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const G: &str = "gardener-calico";

fn kind_of(rel: &str) -> CalicoKind {
    if rel.contains("daemonset") {
        CalicoKind::DaemonSet
    } else if rel.contains("configmap") {
        CalicoKind::ConfigMap
    } else {
        CalicoKind::IpPool
    }
}

fn cfg(
    ipip: Option<Encapsulation>,
    vxlan: Option<Encapsulation>,
    felix_ipip: Option<bool>,
    felix_vxlan: Option<bool>,
    backend: Option<Backend>,
) -> OverlayConfig {
    OverlayConfig {
        ipip,
        vxlan,
        felix_ipip,
        felix_vxlan,
        backend,
    }
}

use Encapsulation::{Always, CrossSubnet, Never};

#[test]
fn each_fixture_reads_as_its_provenance_notes_say() {
    let cases: Vec<(String, OverlayConfig)> = vec![
        (
            format!("{G}/overlay-ipip/daemonset-calico-node.yaml"),
            cfg(Some(Always), Some(Never), Some(true), None, None),
        ),
        (
            format!("{G}/overlay-vxlan/daemonset-calico-node.yaml"),
            cfg(Some(Never), Some(Always), None, Some(true), None),
        ),
        (
            format!("{G}/native/daemonset-calico-node.yaml"),
            cfg(Some(Never), Some(Never), Some(false), None, None),
        ),
        (
            format!("{G}/overlay-ipip/configmap-calico-config.yaml"),
            cfg(None, None, None, None, Some(Backend::Bird)),
        ),
        (
            format!("{G}/overlay-vxlan/configmap-calico-config.yaml"),
            cfg(None, None, None, None, Some(Backend::Vxlan)),
        ),
        (
            format!("{G}/native/configmap-calico-config.yaml"),
            cfg(None, None, None, None, Some(Backend::None)),
        ),
        (
            format!("{G}/overlay-ipip/ippool-default-ipv4.yaml"),
            cfg(Some(Always), Some(Never), None, None, None),
        ),
        (
            format!("{G}/overlay-vxlan/ippool-default-ipv4.yaml"),
            cfg(Some(Never), Some(Always), None, None, None),
        ),
        (
            format!("{G}/native/ippool-default-ipv4.yaml"),
            cfg(Some(Never), Some(Never), None, None, None),
        ),
        (
            format!("{G}/native/ippool-no-snat-for-node-cidr.yaml"),
            cfg(Some(Never), Some(Never), None, None, None),
        ),
        (
            "upstream-calico/daemonset-calico-node.yaml".into(),
            cfg(Some(Always), Some(Never), None, None, None),
        ),
        (
            "upstream-calico/configmap-calico-config.yaml".into(),
            cfg(None, None, None, None, Some(Backend::Bird)),
        ),
        (
            "upstream-calico/ippool-ipip.yaml".into(),
            cfg(Some(Always), Some(Never), None, None, None),
        ),
        (
            "upstream-calico/ippool-ipip-crosssubnet.yaml".into(),
            cfg(Some(CrossSubnet), Some(Never), None, None, None),
        ),
        (
            "upstream-calico/ippool-vxlan.yaml".into(),
            cfg(Some(Never), Some(Always), None, None, None),
        ),
        (
            "upstream-calico/ippool-native.yaml".into(),
            cfg(Some(Never), Some(Never), None, None, None),
        ),
    ];
    for (rel, want) in cases {
        assert_eq!(read(kind_of(&rel), &load(&rel)).unwrap(), want, "{rel}");
    }
}

#[test]
fn overlay_to_native_is_a_switch_for_every_object_and_never_the_other_way() {
    let pairs = [
        (format!("{G}/overlay-ipip"), format!("{G}/native")),
        (format!("{G}/overlay-vxlan"), format!("{G}/native")),
    ];
    for (overlay, native) in &pairs {
        for f in [
            "daemonset-calico-node.yaml",
            "configmap-calico-config.yaml",
            "ippool-default-ipv4.yaml",
        ] {
            let (o, n) = (
                load(&format!("{overlay}/{f}")),
                load(&format!("{native}/{f}")),
            );
            let k = kind_of(f);
            assert!(
                detect_switch(k, &o, &n).unwrap().is_some(),
                "{overlay}/{f} -> native"
            );
            assert!(
                detect_switch(k, &n, &o).unwrap().is_none(),
                "rollback {overlay}/{f}"
            );
        }
    }
    let u = |f: &str| load(&format!("upstream-calico/{f}.yaml"));
    for (from, to) in [
        ("ippool-ipip", "ippool-native"),
        ("ippool-ipip", "ippool-ipip-crosssubnet"),
        ("ippool-vxlan", "ippool-native"),
        ("ippool-ipip-crosssubnet", "ippool-native"),
        ("ippool-ipip", "ippool-vxlan"),
    ] {
        assert!(
            detect_switch(CalicoKind::IpPool, &u(from), &u(to))
                .unwrap()
                .is_some(),
            "{from} -> {to}"
        );
        if to != "ippool-vxlan" {
            assert!(
                detect_switch(CalicoKind::IpPool, &u(to), &u(from))
                    .unwrap()
                    .is_none(),
                "{to} -> {from}"
            );
        }
    }
}

/// Sets the literal env var `name` of container `container` to `value`.
fn set_env(ds: &mut Value, container: &str, name: &str, value: &str) -> bool {
    let cs = ds
        .pointer_mut("/spec/template/spec/containers")
        .unwrap()
        .as_array_mut()
        .unwrap();
    let c = cs.iter_mut().find(|c| c["name"] == container).unwrap();
    for e in c["env"].as_array_mut().unwrap() {
        if e["name"] == name && e.get("value").is_some() {
            e["value"] = json!(value);
            return true;
        }
    }
    false
}

fn only(switch: Option<overlay_switch_webhook::overlay::Switch>, setting: Setting, what: &str) {
    let s = switch.unwrap_or_else(|| panic!("{what}: not detected"));
    assert_eq!(s.reductions.len(), 1, "{what}: {s}");
    assert_eq!(s.reductions[0].setting, setting, "{what}: {s}");
}

#[test]
fn every_single_field_switch_in_both_fixture_sets_is_detected() {
    let mut checked = 0;
    // DaemonSets: each overlay env var of calico-node lowered alone, in each spelling.
    for rel in [
        format!("{G}/overlay-ipip/daemonset-calico-node.yaml"),
        format!("{G}/overlay-vxlan/daemonset-calico-node.yaml"),
        "upstream-calico/daemonset-calico-node.yaml".to_string(),
    ] {
        let base = load(&rel);
        let current = read(CalicoKind::DaemonSet, &base).unwrap();
        for (var, setting, level) in [
            ("CALICO_IPV4POOL_IPIP", Setting::PoolIpip, current.ipip),
            ("CALICO_IPV4POOL_VXLAN", Setting::PoolVxlan, current.vxlan),
        ] {
            let Some(level) = level else { continue };
            let lower: &[&str] = match level {
                Always => &[
                    "CrossSubnet",
                    "Never",
                    "never",
                    "off",
                    "false",
                    "cross-subnet",
                ],
                CrossSubnet => &["Never", "off"],
                Never => &[],
            };
            for v in lower {
                let mut new = base.clone();
                if !set_env(&mut new, "calico-node", var, v) {
                    continue; // not set literally in this fixture
                }
                only(
                    detect_switch(CalicoKind::DaemonSet, &base, &new).unwrap(),
                    setting,
                    &format!("{rel} {var}={v}"),
                );
                checked += 1;
            }
        }
        for (var, setting, on) in [
            (
                "FELIX_IPINIPENABLED",
                Setting::FelixIpip,
                current.felix_ipip,
            ),
            (
                "FELIX_VXLANENABLED",
                Setting::FelixVxlan,
                current.felix_vxlan,
            ),
        ] {
            if on != Some(true) {
                continue;
            }
            for v in ["false", "False", "0", "no", "off"] {
                let mut new = base.clone();
                assert!(set_env(&mut new, "calico-node", var, v));
                only(
                    detect_switch(CalicoKind::DaemonSet, &base, &new).unwrap(),
                    setting,
                    &format!("{rel} {var}={v}"),
                );
                checked += 1;
            }
        }
    }
    // ConfigMaps: calico_backend -> none.
    for rel in [
        format!("{G}/overlay-ipip/configmap-calico-config.yaml"),
        format!("{G}/overlay-vxlan/configmap-calico-config.yaml"),
        "upstream-calico/configmap-calico-config.yaml".to_string(),
    ] {
        let base = load(&rel);
        for v in ["none", "None", " none "] {
            let mut new = base.clone();
            new["data"]["calico_backend"] = json!(v);
            only(
                detect_switch(CalicoKind::ConfigMap, &base, &new).unwrap(),
                Setting::Backend,
                &rel,
            );
            checked += 1;
        }
    }
    // IPPools: each mode lowered alone, including Always -> CrossSubnet and "" (= Never).
    for rel in [
        format!("{G}/overlay-ipip/ippool-default-ipv4.yaml"),
        format!("{G}/overlay-vxlan/ippool-default-ipv4.yaml"),
        "upstream-calico/ippool-ipip.yaml".to_string(),
        "upstream-calico/ippool-ipip-crosssubnet.yaml".to_string(),
        "upstream-calico/ippool-vxlan.yaml".to_string(),
    ] {
        let base = load(&rel);
        for (field, setting) in [
            ("ipipMode", Setting::PoolIpip),
            ("vxlanMode", Setting::PoolVxlan),
        ] {
            let level =
                Encapsulation::parse_pool_mode(base["spec"][field].as_str().unwrap()).unwrap();
            for v in ["Never", "CrossSubnet", "", "never"] {
                let lower = Encapsulation::parse_pool_mode(v).unwrap();
                if lower >= level {
                    continue;
                }
                let mut new = base.clone();
                new["spec"][field] = json!(v);
                only(
                    detect_switch(CalicoKind::IpPool, &base, &new).unwrap(),
                    setting,
                    &format!("{rel} {field}={v:?}"),
                );
                checked += 1;
            }
            // Removing the field means Never too.
            if level > Never {
                let mut new = base.clone();
                new["spec"].as_object_mut().unwrap().remove(field);
                only(
                    detect_switch(CalicoKind::IpPool, &base, &new).unwrap(),
                    setting,
                    &format!("{rel} -{field}"),
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 40,
        "only {checked} single-field switches checked"
    );
}

#[test]
fn unrelated_changes_and_rollbacks_are_not_switches() {
    let ds = load(&format!("{G}/overlay-ipip/daemonset-calico-node.yaml"));
    let mut changes: Vec<(&str, Value)> = vec![];
    let mut d = ds.clone();
    d["spec"]["template"]["spec"]["containers"][1]["image"] = json!("quay.io/calico/node:v3.31.7");
    changes.push(("image bump", d));
    let mut d = ds.clone();
    d["spec"]["template"]["spec"]["containers"][1]["resources"]["requests"]["cpu"] = json!("500m");
    changes.push(("resources", d));
    let mut d = ds.clone();
    d["metadata"]["labels"]["x"] = json!("y");
    d["metadata"]["annotations"]["z"] = json!("w");
    changes.push(("labels and annotations", d));
    let mut d = ds.clone();
    d["spec"]["template"]["spec"]["containers"][1]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "FELIX_LOGSEVERITYSCREEN", "value": "debug"}));
    changes.push(("unrelated env var", d));
    let mut d = ds.clone();
    set_env(&mut d, "calico-node", "CALICO_IPV4POOL_IPIP", "always");
    changes.push(("same level, other spelling", d));
    for (what, new) in changes {
        assert!(
            detect_switch(CalicoKind::DaemonSet, &ds, &new)
                .unwrap()
                .is_none(),
            "{what}"
        );
    }

    let cm = load(&format!("{G}/overlay-ipip/configmap-calico-config.yaml"));
    let mut c = cm.clone();
    c["data"]["veth_mtu"] = json!("1440");
    assert!(
        detect_switch(CalicoKind::ConfigMap, &cm, &c)
            .unwrap()
            .is_none(),
        "veth_mtu"
    );
    let mut c = cm.clone();
    c["data"]["calico_backend"] = json!("vxlan");
    assert!(
        detect_switch(CalicoKind::ConfigMap, &cm, &c)
            .unwrap()
            .is_none(),
        "bird -> vxlan"
    );

    let pool = load("upstream-calico/ippool-ipip.yaml");
    for (field, value) in [
        ("natOutgoing", json!(false)),
        ("blockSize", json!(24)),
        ("disabled", json!(true)),
    ] {
        let mut p = pool.clone();
        p["spec"][field] = value;
        assert!(
            detect_switch(CalicoKind::IpPool, &pool, &p)
                .unwrap()
                .is_none(),
            "{field}"
        );
    }
    // Rollbacks: native -> overlay for all three kinds, both Gardener variants.
    for v in ["overlay-ipip", "overlay-vxlan"] {
        for f in [
            "daemonset-calico-node.yaml",
            "configmap-calico-config.yaml",
            "ippool-default-ipv4.yaml",
        ] {
            let (native, overlay) = (
                load(&format!("{G}/native/{f}")),
                load(&format!("{G}/{v}/{f}")),
            );
            assert!(
                detect_switch(kind_of(f), &native, &overlay)
                    .unwrap()
                    .is_none(),
                "{v}/{f}"
            );
        }
    }
}

#[test]
fn the_hold_patch_on_the_new_object_gives_the_old_overlay_plus_the_record_and_loses_nothing() {
    for v in ["overlay-ipip", "overlay-vxlan"] {
        for f in [
            "daemonset-calico-node.yaml",
            "configmap-calico-config.yaml",
            "ippool-default-ipv4.yaml",
        ] {
            let kind = kind_of(f);
            let old = load(&format!("{G}/{v}/{f}"));
            let new = load(&format!("{G}/native/{f}"));
            let record = Record {
                intent: hold::intent(kind, &old, &new),
                since: "2026-11-26T10:00:00Z".parse().unwrap(),
                reason: "1 of 3 nodes has no route yet (n: NoRouteCreated)".into(),
            };
            let patch = hold::hold_patch(kind, &old, &new, &record).unwrap();
            let mut held = new.clone();
            json_patch::patch(&mut held, &patch.0).unwrap();
            let part = hold::held_pointer(kind);
            assert_eq!(
                held.pointer(part),
                old.pointer(part),
                "{v}/{f}: overlay kept"
            );
            assert_eq!(
                read(kind, &held).unwrap(),
                read(kind, &old).unwrap(),
                "{v}/{f}"
            );
            assert_eq!(
                Record::read(&held).unwrap().as_ref(),
                Some(&record),
                "{v}/{f}: record"
            );
            // Metadata of the new object goes through.
            assert_eq!(
                held["metadata"]["labels"], new["metadata"]["labels"],
                "{v}/{f}"
            );
            // Nothing is lost: releasing gives exactly the desired part.
            let released = hold::released(&held, &record, "release").unwrap();
            assert_eq!(
                released.pointer(part),
                new.pointer(part),
                "{v}/{f}: intent complete"
            );
            assert!(Record::read(&released).unwrap().is_none());
        }
    }
}
