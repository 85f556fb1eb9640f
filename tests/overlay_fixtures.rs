//! The overlay reading against the Calico manifests of Gardener's chart and of
//! upstream Calico (`tests/fixtures`, provenance in its README): what each
//! object says, which updates are switches (every single lowered field), and
//! which are not (rollbacks, unrelated changes). Last, the hold patch round
//! trip on the same fixtures.

use overlay_switch_webhook::hold::{self, Record};
use overlay_switch_webhook::overlay::{
    Backend, CalicoKind, Encapsulation, OverlayConfig, ReadError, Reduction, Setting, Switch,
    detect_switch, read,
};
use serde_json::{Value, json};

use Encapsulation::{Always, CrossSubnet, Never};

const G: &str = "gardener-calico";
const U: &str = "upstream-calico";
const DS: &str = "daemonset-calico-node.yaml";
const CM: &str = "configmap-calico-config.yaml";
const POOL: &str = "ippool-default-ipv4.yaml";

/// A fixture as JSON; `rel` is relative to `tests/fixtures`.
/// A named edit of a fixture.
type Change = (&'static str, fn(&mut Value));

fn load(rel: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The kind of a fixture, from its file name, checked against the object's `kind`.
fn kind_of(rel: &str, obj: &Value) -> CalicoKind {
    let (kind, name) = if rel.contains("daemonset") {
        (CalicoKind::DaemonSet, "DaemonSet")
    } else if rel.contains("configmap") {
        (CalicoKind::ConfigMap, "ConfigMap")
    } else {
        (CalicoKind::IpPool, "IPPool")
    };
    assert_eq!(obj["kind"], name, "{rel}");
    kind
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

fn red(setting: Setting, source: &str, from: &str, to: &str) -> Reduction {
    Reduction {
        setting,
        source: source.into(),
        from: from.into(),
        to: to.into(),
    }
}

/// The switch from fixture `old` to fixture `new`, both of kind `kind`.
fn switch(kind: CalicoKind, old: &Value, new: &Value) -> Option<Switch> {
    detect_switch(kind, old, new).expect("new object readable")
}

/// Container `name` of a DaemonSet.
fn container<'a>(ds: &'a mut Value, name: &str) -> &'a mut Value {
    ds.pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The `env` list of container `name` of a DaemonSet.
fn env_of<'a>(ds: &'a mut Value, name: &str) -> &'a mut Vec<Value> {
    container(ds, name)
        .get_mut("env")
        .and_then(Value::as_array_mut)
        .unwrap_or_else(|| panic!("container {name} has no env"))
}

/// Sets the literal env var `var` of the calico-node container to `value`;
/// it must be set literally exactly once.
fn set_env(ds: &mut Value, var: &str, value: &str) {
    let env = env_of(ds, "calico-node");
    let mut hits = env
        .iter_mut()
        .filter(|e| e["name"] == var && e.get("value").is_some());
    let e = hits
        .next()
        .unwrap_or_else(|| panic!("{var} not set literally"));
    e["value"] = json!(value);
    assert!(hits.next().is_none(), "{var} set twice");
}

/// Removes env var `var` from the calico-node container; it must be there.
fn remove_env(ds: &mut Value, var: &str) {
    let env = env_of(ds, "calico-node");
    let before = env.len();
    env.retain(|e| e["name"] != var);
    assert_eq!(env.len(), before - 1, "{var}");
}

#[test]
fn each_fixture_reads_as_its_provenance_notes_say() {
    let cases = [
        (
            format!("{G}/overlay-ipip/{DS}"),
            cfg(Some(Always), Some(Never), Some(true), None, None),
        ),
        (
            format!("{G}/overlay-vxlan/{DS}"),
            cfg(Some(Never), Some(Always), None, Some(true), None),
        ),
        (
            format!("{G}/native/{DS}"),
            cfg(Some(Never), Some(Never), Some(false), None, None),
        ),
        (
            format!("{G}/overlay-ipip/{CM}"),
            cfg(None, None, None, None, Some(Backend::Bird)),
        ),
        (
            format!("{G}/overlay-vxlan/{CM}"),
            cfg(None, None, None, None, Some(Backend::Vxlan)),
        ),
        (
            format!("{G}/native/{CM}"),
            cfg(None, None, None, None, Some(Backend::None)),
        ),
        (
            format!("{G}/overlay-ipip/{POOL}"),
            cfg(Some(Always), Some(Never), None, None, None),
        ),
        (
            format!("{G}/overlay-vxlan/{POOL}"),
            cfg(Some(Never), Some(Always), None, None, None),
        ),
        (
            format!("{G}/native/{POOL}"),
            cfg(Some(Never), Some(Never), None, None, None),
        ),
        (
            format!("{G}/native/ippool-no-snat-for-node-cidr.yaml"),
            cfg(Some(Never), Some(Never), None, None, None),
        ),
        // CALICO_NETWORKING_BACKEND is a configMapKeyRef everywhere: not read.
        (
            format!("{U}/{DS}"),
            cfg(Some(Always), Some(Never), None, None, None),
        ),
        (
            format!("{U}/{CM}"),
            cfg(None, None, None, None, Some(Backend::Bird)),
        ),
        (
            format!("{U}/ippool-ipip.yaml"),
            cfg(Some(Always), Some(Never), None, None, None),
        ),
        (
            format!("{U}/ippool-ipip-crosssubnet.yaml"),
            cfg(Some(CrossSubnet), Some(Never), None, None, None),
        ),
        (
            format!("{U}/ippool-vxlan.yaml"),
            cfg(Some(Never), Some(Always), None, None, None),
        ),
        (
            format!("{U}/ippool-native.yaml"),
            cfg(Some(Never), Some(Never), None, None, None),
        ),
    ];
    for (rel, want) in cases {
        let obj = load(&rel);
        assert_eq!(read(kind_of(&rel, &obj), &obj), Ok(want), "{rel}");
    }
    let ds = load(&format!("{G}/overlay-ipip/{DS}"));
    assert_eq!(
        read(CalicoKind::DaemonSet, &ds).unwrap().describe(),
        "IPIP Always, VXLAN Never, Felix IPIP true"
    );
}

#[test]
fn gardener_overlay_to_native_is_a_switch_for_every_kind() {
    let cases = [
        (
            "overlay-ipip",
            DS,
            vec![
                red(
                    Setting::PoolIpip,
                    "env CALICO_IPV4POOL_IPIP",
                    "Always",
                    "Never",
                ),
                red(
                    Setting::FelixIpip,
                    "env FELIX_IPINIPENABLED",
                    "true",
                    "false",
                ),
            ],
        ),
        (
            "overlay-ipip",
            CM,
            vec![red(Setting::Backend, "data.calico_backend", "bird", "none")],
        ),
        (
            "overlay-ipip",
            POOL,
            vec![red(Setting::PoolIpip, "spec.ipipMode", "Always", "Never")],
        ),
        // FELIX_VXLANENABLED true -> absent is no reduction: Felix then
        // follows the IPPools, which are guarded themselves.
        (
            "overlay-vxlan",
            DS,
            vec![red(
                Setting::PoolVxlan,
                "env CALICO_IPV4POOL_VXLAN",
                "Always",
                "Never",
            )],
        ),
        (
            "overlay-vxlan",
            CM,
            vec![red(
                Setting::Backend,
                "data.calico_backend",
                "vxlan",
                "none",
            )],
        ),
        (
            "overlay-vxlan",
            POOL,
            vec![red(Setting::PoolVxlan, "spec.vxlanMode", "Always", "Never")],
        ),
    ];
    for (variant, file, want) in cases {
        let old = load(&format!("{G}/{variant}/{file}"));
        let new = load(&format!("{G}/native/{file}"));
        let kind = kind_of(file, &old);
        let s = switch(kind, &old, &new).unwrap_or_else(|| panic!("{variant}/{file}: no switch"));
        assert_eq!(s.kind, kind);
        assert_eq!(s.reductions, want, "{variant}/{file}");
    }
    // How the webhook words one.
    let s = switch(
        CalicoKind::DaemonSet,
        &load(&format!("{G}/overlay-ipip/{DS}")),
        &load(&format!("{G}/native/{DS}")),
    )
    .unwrap();
    assert_eq!(
        s.to_string(),
        "env CALICO_IPV4POOL_IPIP Always -> Never, env FELIX_IPINIPENABLED true -> false"
    );
}

#[test]
fn upstream_pool_switches() {
    let u = |f: &str| load(&format!("{U}/{f}.yaml"));
    let ipip = |from, to| vec![red(Setting::PoolIpip, "spec.ipipMode", from, to)];
    let vxlan = |from, to| vec![red(Setting::PoolVxlan, "spec.vxlanMode", from, to)];
    for (from, to, want) in [
        ("ippool-ipip", "ippool-native", ipip("Always", "Never")),
        (
            "ippool-ipip",
            "ippool-ipip-crosssubnet",
            ipip("Always", "CrossSubnet"),
        ),
        ("ippool-vxlan", "ippool-native", vxlan("Always", "Never")),
        (
            "ippool-ipip-crosssubnet",
            "ippool-native",
            ipip("CrossSubnet", "Never"),
        ),
        // Changing the overlay type lowers the old one's mode.
        ("ippool-ipip", "ippool-vxlan", ipip("Always", "Never")),
        ("ippool-vxlan", "ippool-ipip", vxlan("Always", "Never")),
    ] {
        let s = switch(CalicoKind::IpPool, &u(from), &u(to))
            .unwrap_or_else(|| panic!("{from} -> {to}: no switch"));
        assert_eq!(s.reductions, want, "{from} -> {to}");
    }
}

/// Spellings calico-node reads as lower than `Always`, with the level each means.
const ENV_BELOW_ALWAYS: [(&str, &str); 9] = [
    ("CrossSubnet", "CrossSubnet"),
    ("crosssubnet", "CrossSubnet"),
    ("cross-subnet", "CrossSubnet"),
    ("Never", "Never"),
    ("never", "Never"),
    ("NEVER", "Never"),
    ("off", "Never"),
    ("false", "Never"),
    ("", "Never"),
];

/// Felix's spellings of false.
const FELIX_FALSE: [&str; 8] = ["false", "False", "FALSE", "0", "no", "n", "f", "off"];

#[test]
fn every_single_env_var_lowered_in_calico_node_is_a_switch() {
    // The overlay-bearing env vars each overlay DaemonSet sets literally in
    // calico-node above their lowest level: each is lowered alone below.
    let fixtures = [
        (
            format!("{G}/overlay-ipip/{DS}"),
            vec!["CALICO_IPV4POOL_IPIP", "FELIX_IPINIPENABLED"],
        ),
        (
            format!("{G}/overlay-vxlan/{DS}"),
            vec!["CALICO_IPV4POOL_VXLAN", "FELIX_VXLANENABLED"],
        ),
        (format!("{U}/{DS}"), vec!["CALICO_IPV4POOL_IPIP"]),
    ];
    let mut checked = 0;
    for (rel, vars) in &fixtures {
        let mut base = load(rel);
        // That list is complete: no other overlay var of calico-node can go lower.
        let lowerable: Vec<&str> = env_of(&mut base, "calico-node")
            .iter()
            .filter(|e| e.get("value").is_some())
            .filter_map(|e| {
                let (name, value) = (e["name"].as_str()?, e["value"].as_str()?);
                let above_lowest = match name {
                    "CALICO_IPV4POOL_IPIP" | "CALICO_IPV4POOL_VXLAN" => {
                        Encapsulation::parse_env(value)? > Never
                    }
                    "FELIX_IPINIPENABLED" | "FELIX_VXLANENABLED" => value == "true",
                    "CALICO_NETWORKING_BACKEND" => true,
                    _ => false,
                };
                above_lowest.then_some(name)
            })
            .collect();
        assert_eq!(&lowerable, vars, "{rel}");

        for var in vars {
            let (setting, from, lower): (Setting, &str, Vec<(&str, &str)>) = match *var {
                "CALICO_IPV4POOL_IPIP" => (Setting::PoolIpip, "Always", ENV_BELOW_ALWAYS.to_vec()),
                "CALICO_IPV4POOL_VXLAN" => {
                    (Setting::PoolVxlan, "Always", ENV_BELOW_ALWAYS.to_vec())
                }
                "FELIX_IPINIPENABLED" => (
                    Setting::FelixIpip,
                    "true",
                    FELIX_FALSE.iter().map(|f| (*f, "false")).collect(),
                ),
                "FELIX_VXLANENABLED" => (
                    Setting::FelixVxlan,
                    "true",
                    FELIX_FALSE.iter().map(|f| (*f, "false")).collect(),
                ),
                other => unreachable!("{other}"),
            };
            for (spelling, to) in lower {
                let mut new = base.clone();
                set_env(&mut new, var, spelling);
                let s = switch(CalicoKind::DaemonSet, &base, &new)
                    .unwrap_or_else(|| panic!("{rel} {var}={spelling:?}: no switch"));
                assert_eq!(
                    s.reductions,
                    vec![red(setting, &format!("env {var}"), from, to)],
                    "{rel} {var}={spelling:?}"
                );
                checked += 1;
            }
            // Removing a pool mode means Never (calico-node's default);
            // removing a Felix flag leaves it to the IPPools: no switch.
            let mut new = base.clone();
            remove_env(&mut new, var);
            let s = switch(CalicoKind::DaemonSet, &base, &new);
            if var.starts_with("CALICO_") {
                let s = s.unwrap_or_else(|| panic!("{rel} -{var}: no switch"));
                assert_eq!(
                    s.reductions,
                    vec![red(setting, &format!("env {var}"), from, "Never")]
                );
                checked += 1;
            } else {
                assert_eq!(s, None, "{rel} -{var}");
            }
        }
    }
    // overlay-ipip: 9 + 1 + 8, overlay-vxlan: 9 + 1 + 8, upstream: 9 + 1.
    assert_eq!(checked, 46);
}

#[test]
fn a_literal_backend_lowered_in_calico_node_is_a_switch() {
    // The fixtures take the backend from the ConfigMap; with a literal value
    // in calico-node, lowering it is a switch of the DaemonSet itself.
    for rel in [format!("{G}/overlay-ipip/{DS}"), format!("{U}/{DS}")] {
        let mut base = load(&rel);
        for e in env_of(&mut base, "calico-node").iter_mut() {
            if e["name"] == "CALICO_NETWORKING_BACKEND" {
                *e = json!({"name": "CALICO_NETWORKING_BACKEND", "value": "bird"});
            }
        }
        assert_eq!(
            read(CalicoKind::DaemonSet, &base).unwrap().backend,
            Some(Backend::Bird),
            "{rel}"
        );
        for spelling in ["none", "None", " NONE "] {
            let mut new = base.clone();
            set_env(&mut new, "CALICO_NETWORKING_BACKEND", spelling);
            assert_eq!(
                switch(CalicoKind::DaemonSet, &base, &new).map(|s| s.reductions),
                Some(vec![red(
                    Setting::Backend,
                    "env CALICO_NETWORKING_BACKEND",
                    "bird",
                    "none"
                )]),
                "{rel} {spelling:?}"
            );
        }
        // Back to the ConfigMap reference: unknown, not a switch.
        let reference = load(&rel);
        assert_eq!(
            switch(CalicoKind::DaemonSet, &base, &reference),
            None,
            "{rel}"
        );
    }
}

#[test]
fn every_single_config_map_backend_lowered_is_a_switch() {
    let mut checked = 0;
    for (rel, from) in [
        (format!("{G}/overlay-ipip/{CM}"), "bird"),
        (format!("{G}/overlay-vxlan/{CM}"), "vxlan"),
        (format!("{U}/{CM}"), "bird"),
    ] {
        let base = load(&rel);
        for spelling in ["none", "None", "NONE", " none "] {
            let mut new = base.clone();
            new["data"]["calico_backend"] = json!(spelling);
            assert_eq!(
                switch(CalicoKind::ConfigMap, &base, &new).map(|s| s.reductions),
                Some(vec![red(
                    Setting::Backend,
                    "data.calico_backend",
                    from,
                    "none"
                )]),
                "{rel} {spelling:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn every_single_pool_mode_lowered_is_a_switch() {
    // Pool spellings with the level each means.
    let below = |level: Encapsulation| -> Vec<(&'static str, &'static str)> {
        let all = [
            ("CrossSubnet", CrossSubnet),
            ("crosssubnet", CrossSubnet),
            ("Never", Never),
            ("never", Never),
            ("", Never),
        ];
        all.into_iter()
            .filter(|(_, l)| *l < level)
            .map(|(s, l)| (s, l.as_str()))
            .collect()
    };
    let mut checked = 0;
    for (rel, field, setting, level) in [
        (
            format!("{G}/overlay-ipip/{POOL}"),
            "ipipMode",
            Setting::PoolIpip,
            Always,
        ),
        (
            format!("{G}/overlay-vxlan/{POOL}"),
            "vxlanMode",
            Setting::PoolVxlan,
            Always,
        ),
        (
            format!("{U}/ippool-ipip.yaml"),
            "ipipMode",
            Setting::PoolIpip,
            Always,
        ),
        (
            format!("{U}/ippool-ipip-crosssubnet.yaml"),
            "ipipMode",
            Setting::PoolIpip,
            CrossSubnet,
        ),
        (
            format!("{U}/ippool-vxlan.yaml"),
            "vxlanMode",
            Setting::PoolVxlan,
            Always,
        ),
    ] {
        let base = load(&rel);
        assert_eq!(base["spec"][field], level.as_str(), "{rel}");
        let source = format!("spec.{field}");
        for (spelling, to) in below(level) {
            let mut new = base.clone();
            new["spec"][field] = json!(spelling);
            assert_eq!(
                switch(CalicoKind::IpPool, &base, &new).map(|s| s.reductions),
                Some(vec![red(setting, &source, level.as_str(), to)]),
                "{rel} {field}={spelling:?}"
            );
            checked += 1;
        }
        // Removing the field means Never too.
        let mut new = base.clone();
        new["spec"].as_object_mut().unwrap().remove(field);
        assert_eq!(
            switch(CalicoKind::IpPool, &base, &new).map(|s| s.reductions),
            Some(vec![red(setting, &source, level.as_str(), "Never")]),
            "{rel} -{field}"
        );
        checked += 1;
    }
    // Always: 5 spellings + removal, four times; CrossSubnet: 3 + removal.
    assert_eq!(checked, 28);
}

#[test]
fn unrelated_daemonset_changes_are_not_switches() {
    for rel in [
        format!("{G}/overlay-ipip/{DS}"),
        format!("{G}/overlay-vxlan/{DS}"),
        format!("{G}/native/{DS}"),
        format!("{U}/{DS}"),
    ] {
        let base = load(&rel);
        let changes: [Change; 6] = [
            ("image bump", |d| {
                container(d, "calico-node")["image"] = json!("quay.io/calico/node:v3.31.7")
            }),
            ("resources", |d| {
                container(d, "calico-node")["resources"] =
                    json!({"requests": {"cpu": "500m", "memory": "200Mi"}})
            }),
            ("labels and annotations", |d| {
                d["metadata"]["labels"]["x"] = json!("y");
                d["metadata"]["annotations"]["z"] = json!("w");
                d["spec"]["template"]["metadata"]["annotations"]["checksum/configmap-calico"] =
                    json!("0000");
            }),
            ("unrelated env var added", |d| {
                env_of(d, "calico-node")
                    .push(json!({"name": "FELIX_LOGSEVERITYSCREEN", "value": "debug"}))
            }),
            ("unrelated env var changed", |d| {
                set_env(d, "FELIX_HEALTHENABLED", "false")
            }),
            ("IPv6 VXLAN env var", |d| {
                env_of(d, "calico-node")
                    .push(json!({"name": "CALICO_IPV6POOL_VXLAN", "value": "Never"}))
            }),
        ];
        for (what, change) in changes {
            let mut new = base.clone();
            change(&mut new);
            assert_ne!(new, base, "{rel}: {what} changed nothing");
            assert_eq!(
                switch(CalicoKind::DaemonSet, &base, &new),
                None,
                "{rel}: {what}"
            );
        }
    }
    // Same level, other spelling.
    let base = load(&format!("{G}/overlay-ipip/{DS}"));
    for (var, spelling) in [
        ("CALICO_IPV4POOL_IPIP", "always"),
        ("CALICO_IPV4POOL_IPIP", " ALWAYS "),
        ("FELIX_IPINIPENABLED", "yes"),
        ("FELIX_IPINIPENABLED", "1"),
    ] {
        let mut new = base.clone();
        set_env(&mut new, var, spelling);
        assert_eq!(
            switch(CalicoKind::DaemonSet, &base, &new),
            None,
            "{var}={spelling}"
        );
    }
}

#[test]
fn unrelated_config_map_and_pool_changes_are_not_switches() {
    for rel in [
        format!("{G}/overlay-ipip/{CM}"),
        format!("{G}/overlay-vxlan/{CM}"),
        format!("{U}/{CM}"),
    ] {
        let base = load(&rel);
        let other = if base["data"]["calico_backend"] == "bird" {
            "vxlan"
        } else {
            "bird"
        };
        for (what, key, value) in [
            ("veth_mtu", "/data/veth_mtu", json!("1440")),
            ("typha", "/data/typha_service_name", json!("calico-typha")),
            ("cni config", "/data/cni_network_config", json!("{}")),
            ("labels", "/metadata/labels", json!({"x": "y"})),
            ("annotations", "/metadata/annotations", json!({"z": "w"})),
            ("bird <-> vxlan", "/data/calico_backend", json!(other)),
            (
                "same backend, other case",
                "/data/calico_backend",
                json!(
                    base["data"]["calico_backend"]
                        .as_str()
                        .unwrap()
                        .to_uppercase()
                ),
            ),
        ] {
            let mut new = base.clone();
            let (parent, leaf) = key.rsplit_once('/').unwrap();
            new.pointer_mut(parent).unwrap()[leaf] = value;
            assert_ne!(new, base, "{rel}: {what}");
            assert_eq!(
                switch(CalicoKind::ConfigMap, &base, &new),
                None,
                "{rel}: {what}"
            );
        }
    }
    for rel in [
        format!("{G}/overlay-ipip/{POOL}"),
        format!("{G}/overlay-vxlan/{POOL}"),
        format!("{U}/ippool-ipip.yaml"),
        format!("{U}/ippool-ipip-crosssubnet.yaml"),
    ] {
        let base = load(&rel);
        for (what, key, value) in [
            ("natOutgoing", "/spec/natOutgoing", json!(false)),
            ("blockSize", "/spec/blockSize", json!(24)),
            ("disabled", "/spec/disabled", json!(true)),
            ("nodeSelector", "/spec/nodeSelector", json!("zone == 'a'")),
            ("labels", "/metadata/labels", json!({"x": "y"})),
            ("annotations", "/metadata/annotations", json!({"z": "w"})),
        ] {
            let mut new = base.clone();
            let (parent, leaf) = key.rsplit_once('/').unwrap();
            new.pointer_mut(parent).unwrap()[leaf] = value;
            assert_ne!(new, base, "{rel}: {what}");
            assert_eq!(
                switch(CalicoKind::IpPool, &base, &new),
                None,
                "{rel}: {what}"
            );
        }
    }
}

#[test]
fn rollbacks_and_no_ops_are_not_switches() {
    // Native -> overlay, for all three kinds and both Gardener overlays.
    for variant in ["overlay-ipip", "overlay-vxlan"] {
        for file in [DS, CM, POOL] {
            let native = load(&format!("{G}/native/{file}"));
            let overlay = load(&format!("{G}/{variant}/{file}"));
            let kind = kind_of(file, &native);
            assert_eq!(
                switch(kind, &native, &overlay),
                None,
                "native -> {variant}/{file}"
            );
        }
    }
    let u = |f: &str| load(&format!("{U}/{f}.yaml"));
    for (from, to) in [
        ("ippool-native", "ippool-ipip"),
        ("ippool-native", "ippool-ipip-crosssubnet"),
        ("ippool-native", "ippool-vxlan"),
        ("ippool-ipip-crosssubnet", "ippool-ipip"),
    ] {
        assert_eq!(
            switch(CalicoKind::IpPool, &u(from), &u(to)),
            None,
            "{from} -> {to}"
        );
    }
    // Every fixture onto itself.
    for rel in [
        format!("{G}/overlay-ipip/{DS}"),
        format!("{G}/overlay-vxlan/{DS}"),
        format!("{G}/native/{DS}"),
        format!("{G}/overlay-ipip/{CM}"),
        format!("{G}/native/{CM}"),
        format!("{G}/overlay-vxlan/{POOL}"),
        format!("{G}/native/ippool-no-snat-for-node-cidr.yaml"),
        format!("{U}/{DS}"),
        format!("{U}/{CM}"),
        format!("{U}/ippool-ipip.yaml"),
    ] {
        let obj = load(&rel);
        assert_eq!(switch(kind_of(&rel, &obj), &obj, &obj), None, "{rel}");
    }
}

#[test]
fn unreadable_values_in_the_fixtures() {
    let base = load(&format!("{G}/overlay-ipip/{DS}"));
    let mut bad = base.clone();
    set_env(&mut bad, "CALICO_IPV4POOL_IPIP", "sometimes");
    // In the new object: an error naming where.
    let e: ReadError = detect_switch(CalicoKind::DaemonSet, &base, &bad).unwrap_err();
    assert_eq!(
        e.source_field,
        "container \"calico-node\" env CALICO_IPV4POOL_IPIP"
    );
    assert_eq!(e.value, "sometimes");
    // In the old object: that setting is unknown, the others still count.
    let native = load(&format!("{G}/native/{DS}"));
    assert_eq!(
        switch(CalicoKind::DaemonSet, &bad, &native).map(|s| s.reductions),
        Some(vec![red(
            Setting::FelixIpip,
            "env FELIX_IPINIPENABLED",
            "true",
            "false"
        )])
    );

    let pool = load(&format!("{U}/ippool-ipip.yaml"));
    let mut bad = pool.clone();
    bad["spec"]["ipipMode"] = json!("Sometimes");
    assert!(detect_switch(CalicoKind::IpPool, &pool, &bad).is_err());
    assert_eq!(
        switch(
            CalicoKind::IpPool,
            &bad,
            &load(&format!("{U}/ippool-native.yaml"))
        ),
        None
    );
}

#[test]
fn the_hold_patch_on_the_new_object_gives_the_old_overlay_plus_the_record_and_loses_nothing() {
    for variant in ["overlay-ipip", "overlay-vxlan"] {
        for file in [DS, CM, POOL] {
            let old = load(&format!("{G}/{variant}/{file}"));
            let new = load(&format!("{G}/native/{file}"));
            let kind = kind_of(file, &old);
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
                "{variant}/{file}: overlay kept"
            );
            assert_eq!(read(kind, &held), read(kind, &old), "{variant}/{file}");
            assert_eq!(
                switch(kind, &old, &held),
                None,
                "{variant}/{file}: held is no switch"
            );
            assert_eq!(
                Record::read(&held).unwrap().as_ref(),
                Some(&record),
                "{variant}/{file}: record"
            );
            // Metadata of the new object goes through.
            assert_eq!(
                held["metadata"]["labels"], new["metadata"]["labels"],
                "{variant}/{file}"
            );
            // Nothing is lost: releasing gives exactly the desired part.
            let released = hold::released(&held, &record, "release").unwrap();
            assert_eq!(
                released.pointer(part),
                new.pointer(part),
                "{variant}/{file}: intent complete"
            );
            assert!(Record::read(&released).unwrap().is_none());
        }
    }
}
