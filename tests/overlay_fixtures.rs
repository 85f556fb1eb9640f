//! The overlay reading against the Calico manifests of Gardener's chart and of
//! upstream Calico (`tests/fixtures`, provenance in its README): what each
//! object reads as, which updates are switches (every single lowered value),
//! and which are not (rollbacks, unrelated changes). Last, the hold patch
//! round trip on the same fixtures.
//!
//! The calico-node container of every DaemonSet fixture has an `envFrom` of
//! ConfigMap `kubernetes-services-endpoint`, which the guard cannot read: a
//! variable that `env` does not state may be set there, so it reads as
//! unknown.

use overlay_switch_webhook::calico::overlay::{
    Backend, CalicoKind, Context, Eff, Encapsulation, FelixFlag, OverlayConfig, Setting, Switch,
    calico_node_container, detect_switch, read,
};
use overlay_switch_webhook::calico::podenv::KnownConfigMap;
use overlay_switch_webhook::calico::values::{self as values, Parsed};
use overlay_switch_webhook::cluster::hold::{self, Record};
use serde_json::{Map, Value, json};

use Encapsulation::{Always, CrossSubnet, Never};

const G: &str = "gardener-calico";
const U: &str = "upstream-calico";
const DS: &str = "daemonset-calico-node.yaml";
const CM: &str = "configmap-calico-config.yaml";
const POOL: &str = "ippool-default-ipv4.yaml";

/// What a variable that calico-node's `env` does not state reads as.
const OPAQUE: &str = "may be set by envFrom ConfigMap kubernetes-services-endpoint";
/// `CALICO_NETWORKING_BACKEND` without the guarded ConfigMap known.
const BACKEND_REF: &str = "from ConfigMap calico-config key calico_backend";

/// A named edit of a fixture.
type Change = (&'static str, fn(&mut Value));

/// A fixture as JSON; `rel` is relative to `tests/fixtures`.
fn load(rel: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// The `data` of a ConfigMap fixture.
fn data_of(rel: &str) -> Map<String, Value> {
    load(rel)["data"].as_object().expect("data").clone()
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

fn set<L>(l: L) -> Option<Eff<L>> {
    Some(Eff::Set(l))
}

fn unknown<L>(words: &str) -> Option<Eff<L>> {
    Some(Eff::Unknown(words.into()))
}

fn ds_cfg(
    ipip: Option<Eff<Encapsulation>>,
    vxlan: Option<Eff<Encapsulation>>,
    felix_ipip: Option<Eff<FelixFlag>>,
    felix_vxlan: Option<Eff<FelixFlag>>,
    backend: Option<Eff<Backend>>,
) -> OverlayConfig {
    OverlayConfig {
        ipip,
        vxlan,
        felix_ipip,
        felix_vxlan,
        backend,
    }
}

fn pool_cfg(ipip: Option<Eff<Encapsulation>>, vxlan: Option<Eff<Encapsulation>>) -> OverlayConfig {
    OverlayConfig {
        ipip,
        vxlan,
        ..OverlayConfig::default()
    }
}

fn cm_cfg(backend: Backend) -> OverlayConfig {
    OverlayConfig {
        backend: set(backend),
        ..OverlayConfig::default()
    }
}

/// A reduction as (setting, from, to).
type Red = (Setting, String, String);

fn red(setting: Setting, from: &str, to: &str) -> Red {
    (setting, from.into(), to.into())
}

fn lowered(s: Option<Switch>) -> Vec<Red> {
    s.map(|s| {
        s.reductions
            .into_iter()
            .map(|r| (r.setting, r.from, r.to))
            .collect()
    })
    .unwrap_or_default()
}

/// The switch from `old` to `new`; the new object must be readable.
fn switch_in(kind: CalicoKind, old: &Value, new: &Value, ctx: Context<'_>) -> Option<Switch> {
    detect_switch(kind, old, new, ctx).unwrap_or_else(|e| panic!("new object unreadable: {e}"))
}

fn switch(kind: CalicoKind, old: &Value, new: &Value) -> Option<Switch> {
    switch_in(kind, old, new, Context::NONE)
}

/// Container `name` of a DaemonSet (init containers included).
fn container<'a>(ds: &'a mut Value, name: &str) -> &'a mut Value {
    let spec = ds.pointer_mut("/spec/template/spec").expect("pod spec");
    let in_list = |list: &str, spec: &Value| {
        spec[list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == name))
    };
    let list = if in_list("containers", spec) {
        "containers"
    } else if in_list("initContainers", spec) {
        "initContainers"
    } else {
        panic!("no container {name}")
    };
    spec[list]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == name))
        .expect("found above")
}

/// The `env` list of container `name` (created if absent).
fn env_of<'a>(ds: &'a mut Value, name: &str) -> &'a mut Vec<Value> {
    let c = container(ds, name);
    if c.get("env").is_none() {
        c["env"] = json!([]);
    }
    c["env"].as_array_mut().expect("env is a list")
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

/// Replaces the entry of `var` in calico-node's env; it must be there once.
fn replace_env(ds: &mut Value, var: &str, entry: Value) {
    let env = env_of(ds, "calico-node");
    let mut hits = env.iter_mut().filter(|e| e["name"] == var);
    *hits.next().unwrap_or_else(|| panic!("no {var}")) = entry;
    assert!(hits.next().is_none(), "{var} twice");
}

/// Removes env var `var` from the calico-node container; it must be there.
fn remove_env(ds: &mut Value, var: &str) {
    let env = env_of(ds, "calico-node");
    let before = env.len();
    env.retain(|e| e["name"] != var);
    assert_eq!(env.len(), before - 1, "{var}");
}

fn all_fixtures() -> Vec<String> {
    let mut out = Vec::new();
    for v in ["overlay-ipip", "overlay-vxlan", "native"] {
        for f in [DS, CM, POOL] {
            out.push(format!("{G}/{v}/{f}"));
        }
    }
    out.push(format!("{G}/native/ippool-no-snat-for-node-cidr.yaml"));
    for f in [
        DS,
        CM,
        "ippool-ipip.yaml",
        "ippool-ipip-crosssubnet.yaml",
        "ippool-vxlan.yaml",
        "ippool-native.yaml",
    ] {
        out.push(format!("{U}/{f}"));
    }
    out
}

#[test]
fn each_fixture_reads_as_its_provenance_notes_say() {
    use FelixFlag::{Off, On};
    let cases = [
        (
            format!("{G}/overlay-ipip/{DS}"),
            ds_cfg(
                set(Always),
                unknown(OPAQUE),
                set(On),
                unknown(OPAQUE),
                unknown(BACKEND_REF),
            ),
        ),
        (
            format!("{G}/overlay-vxlan/{DS}"),
            ds_cfg(
                set(Never),
                set(Always),
                unknown(OPAQUE),
                set(On),
                unknown(BACKEND_REF),
            ),
        ),
        (
            format!("{G}/native/{DS}"),
            ds_cfg(
                set(Never),
                unknown(OPAQUE),
                set(Off),
                unknown(OPAQUE),
                unknown(BACKEND_REF),
            ),
        ),
        (
            format!("{U}/{DS}"),
            ds_cfg(
                set(Always),
                set(Never),
                unknown(OPAQUE),
                unknown(OPAQUE),
                unknown(BACKEND_REF),
            ),
        ),
        (format!("{G}/overlay-ipip/{CM}"), cm_cfg(Backend::Bird)),
        (format!("{G}/overlay-vxlan/{CM}"), cm_cfg(Backend::Vxlan)),
        (format!("{G}/native/{CM}"), cm_cfg(Backend::None)),
        (format!("{U}/{CM}"), cm_cfg(Backend::Bird)),
        (
            format!("{G}/overlay-ipip/{POOL}"),
            pool_cfg(set(Always), set(Never)),
        ),
        (
            format!("{G}/overlay-vxlan/{POOL}"),
            pool_cfg(set(Never), set(Always)),
        ),
        (
            format!("{G}/native/{POOL}"),
            pool_cfg(set(Never), set(Never)),
        ),
        (
            format!("{G}/native/ippool-no-snat-for-node-cidr.yaml"),
            pool_cfg(Some(Eff::Unset(Never)), Some(Eff::Unset(Never))),
        ),
        (
            format!("{U}/ippool-ipip.yaml"),
            pool_cfg(set(Always), set(Never)),
        ),
        (
            format!("{U}/ippool-ipip-crosssubnet.yaml"),
            pool_cfg(set(CrossSubnet), set(Never)),
        ),
        (
            format!("{U}/ippool-vxlan.yaml"),
            pool_cfg(set(Never), set(Always)),
        ),
        (
            format!("{U}/ippool-native.yaml"),
            pool_cfg(set(Never), set(Never)),
        ),
    ];
    assert_eq!(cases.len(), all_fixtures().len());
    for (rel, want) in cases {
        let obj = load(&rel);
        assert_eq!(
            read(kind_of(&rel, &obj), &obj, Context::NONE),
            want,
            "{rel}"
        );
    }

    // With the sibling ConfigMap known, the backend reference resolves.
    for (ds, cm, backend) in [
        (
            format!("{G}/overlay-ipip/{DS}"),
            format!("{G}/overlay-ipip/{CM}"),
            Backend::Bird,
        ),
        (
            format!("{G}/overlay-vxlan/{DS}"),
            format!("{G}/overlay-vxlan/{CM}"),
            Backend::Vxlan,
        ),
        (
            format!("{G}/native/{DS}"),
            format!("{G}/native/{CM}"),
            Backend::None,
        ),
        (format!("{U}/{DS}"), format!("{U}/{CM}"), Backend::Bird),
    ] {
        let data = data_of(&cm);
        let c = read(CalicoKind::DaemonSet, &load(&ds), known(&data));
        assert_eq!(c.backend, set(backend), "{ds}");
        // The opaque envFrom is still opaque.
        assert!(
            [&c.ipip, &c.vxlan].iter().any(|e| **e == unknown(OPAQUE))
                || [&c.felix_ipip, &c.felix_vxlan]
                    .iter()
                    .any(|e| **e == unknown(OPAQUE)),
            "{ds}: {}",
            c.describe()
        );
    }

    let ds = load(&format!("{G}/overlay-ipip/{DS}"));
    assert_eq!(
        read(CalicoKind::DaemonSet, &ds, Context::NONE).describe(),
        format!(
            "IPIP Always, VXLAN unknown ({OPAQUE}), Felix IPIP true, Felix VXLAN unknown ({OPAQUE}), \
             backend unknown ({BACKEND_REF})"
        )
    );
}

#[test]
fn every_daemonset_fixture_has_the_opaque_env_from_and_dropping_it_is_a_switch() {
    for rel in [
        format!("{G}/overlay-ipip/{DS}"),
        format!("{G}/overlay-vxlan/{DS}"),
        format!("{G}/native/{DS}"),
        format!("{U}/{DS}"),
    ] {
        let base = load(&rel);
        let node = calico_node_container(&base).expect("calico-node");
        assert_eq!(node["name"], "calico-node", "{rel}");
        assert_eq!(
            node["envFrom"],
            json!([{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": true}}]),
            "{rel}"
        );
        // Without it, the variables it might have set take Calico's
        // defaults: each one below the top is a possible lowering.
        let mut new = base.clone();
        container(&mut new, "calico-node")
            .as_object_mut()
            .unwrap()
            .remove("envFrom");
        let s = lowered(switch(CalicoKind::DaemonSet, &base, &new));
        assert!(!s.is_empty(), "{rel}");
        assert!(
            s.iter()
                .all(|(_, from, to)| from == &format!("unknown ({OPAQUE})")
                    && to.starts_with("unset (")),
            "{rel}: {s:?}"
        );
    }
}

#[test]
fn gardener_overlay_to_native_is_a_switch_for_every_kind() {
    use Setting::*;
    let o = format!("unknown ({OPAQUE})");
    let cases = [
        (
            "overlay-ipip",
            DS,
            vec![
                red(PoolIpip, "Always", "Never"),
                red(FelixIpip, "true", "false"),
            ],
        ),
        (
            "overlay-vxlan",
            DS,
            vec![
                red(PoolVxlan, "Always", &o),
                red(FelixIpip, &o, "false"),
                red(FelixVxlan, "true", &o),
            ],
        ),
        ("overlay-ipip", CM, vec![red(Backend, "bird", "none")]),
        ("overlay-vxlan", CM, vec![red(Backend, "vxlan", "none")]),
        ("overlay-ipip", POOL, vec![red(PoolIpip, "Always", "Never")]),
        (
            "overlay-vxlan",
            POOL,
            vec![red(PoolVxlan, "Always", "Never")],
        ),
    ];
    for (variant, file, want) in cases {
        let old = load(&format!("{G}/{variant}/{file}"));
        let new = load(&format!("{G}/native/{file}"));
        let kind = kind_of(file, &old);
        // Whatever the guarded ConfigMap says (it is the same for both
        // sides of one update).
        let (overlay_cm, native_cm) = (
            data_of(&format!("{G}/{variant}/{CM}")),
            data_of(&format!("{G}/native/{CM}")),
        );
        for ctx in [Context::NONE, known(&overlay_cm), known(&native_cm)] {
            let s = switch_in(kind, &old, &new, ctx)
                .unwrap_or_else(|| panic!("{variant}/{file}: no switch"));
            assert_eq!(s.kind, kind);
            assert_eq!(lowered(Some(s)), want, "{variant}/{file}");
        }
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

    // The ConfigMap also lowers what calico-node's environment resolves to.
    for variant in ["overlay-ipip", "overlay-vxlan"] {
        let ds = load(&format!("{G}/{variant}/{DS}"));
        let node = calico_node_container(&ds).unwrap();
        let data = data_of(&format!("{G}/{variant}/{CM}"));
        let ctx = Context {
            calico_node: Some(Some(node)),
            ..known(&data)
        };
        let s = switch_in(
            CalicoKind::ConfigMap,
            &load(&format!("{G}/{variant}/{CM}")),
            &load(&format!("{G}/native/{CM}")),
            ctx,
        )
        .expect("a switch");
        let settings: Vec<Setting> = s.reductions.iter().map(|r| r.setting).collect();
        assert_eq!(settings, vec![Backend, Backend], "{variant}: {s}");
        assert_eq!(s.reductions[0].source, "data.calico_backend");
        assert!(
            s.reductions[1].source.contains("CALICO_NETWORKING_BACKEND"),
            "{variant}: {s}"
        );
    }
}

#[test]
fn upstream_pool_switches() {
    let u = |f: &str| load(&format!("{U}/{f}.yaml"));
    let ipip = |from: &str, to: &str| vec![red(Setting::PoolIpip, from, to)];
    let vxlan = |from: &str, to: &str| vec![red(Setting::PoolVxlan, from, to)];
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
        (
            "ippool-ipip-crosssubnet",
            "ippool-vxlan",
            ipip("CrossSubnet", "Never"),
        ),
    ] {
        assert_eq!(
            lowered(switch(CalicoKind::IpPool, &u(from), &u(to))),
            want,
            "{from} -> {to}"
        );
    }
}

#[test]
fn the_issues_kubectl_patch_is_a_switch_on_both_pool_fixtures() {
    // kubectl patch ippool default-ipv4-ippool --type merge -p '{"spec":{"ipipMode":"always"}}'
    for rel in [
        format!("{G}/overlay-ipip/{POOL}"),
        format!("{U}/ippool-ipip.yaml"),
    ] {
        let old = load(&rel);
        let mut new = old.clone();
        json_patch::merge(&mut new, &json!({"spec": {"ipipMode": "always"}}));
        assert_eq!(
            lowered(switch(CalicoKind::IpPool, &old, &new)),
            vec![red(Setting::PoolIpip, "Always", "Never")],
            "{rel}"
        );
    }
}

/// Pool-mode env spellings below `Always`, with what each reads as.
const ENV_BELOW_ALWAYS: [(&str, &str); 10] = [
    ("CrossSubnet", "CrossSubnet"),
    ("crosssubnet", "CrossSubnet"),
    ("cross-subnet", "CrossSubnet"),
    ("CROSS-SUBNET", "CrossSubnet"),
    ("Never", "Never"),
    ("never", "Never"),
    ("NEVER", "Never"),
    ("off", "Never"),
    ("Off", "Never"),
    ("", "Never"),
];

/// Felix spellings below `true`, with what each reads as.
const FELIX_BELOW_TRUE: [(&str, &str); 14] = [
    ("false", "false"),
    ("False", "false"),
    ("FALSE", "false"),
    ("0", "false"),
    ("no", "false"),
    ("N", "false"),
    ("f", "false"),
    ("none", "Felix follows the IPPools"),
    ("None", "Felix follows the IPPools"),
    (" true", "Felix follows the IPPools"),
    ("on", "Felix follows the IPPools"),
    ("off", "Felix follows the IPPools"),
    ("maybe", "Felix follows the IPPools"),
    ("", "unset (Felix follows the IPPools)"),
];

#[test]
fn every_single_env_var_lowered_in_calico_node_is_a_switch() {
    let fixtures = [
        (
            format!("{G}/overlay-ipip/{DS}"),
            vec!["CALICO_IPV4POOL_IPIP", "FELIX_IPINIPENABLED"],
        ),
        (
            format!("{G}/overlay-vxlan/{DS}"),
            vec!["CALICO_IPV4POOL_VXLAN", "FELIX_VXLANENABLED"],
        ),
        (format!("{G}/native/{DS}"), vec![]),
        (format!("{U}/{DS}"), vec!["CALICO_IPV4POOL_IPIP"]),
    ];
    let mut checked = 0;
    for (rel, vars) in &fixtures {
        let mut base = load(rel);
        // That list is complete: no other overlay variable calico-node
        // states literally is above its lowest level.
        let lowerable: Vec<&str> = env_of(&mut base, "calico-node")
            .iter()
            .filter_map(|e| {
                let (name, value) = (e["name"].as_str()?, e.get("value")?.as_str()?);
                let above_lowest = match name {
                    "CALICO_IPV4POOL_IPIP" | "CALICO_IPV4POOL_VXLAN" => {
                        values::pool_env(value) != Parsed::Set(Never)
                    }
                    "FELIX_IPINIPENABLED" | "FELIX_VXLANENABLED" => {
                        values::felix_flag(value) != Parsed::Set(FelixFlag::Off)
                    }
                    "CALICO_NETWORKING_BACKEND" => values::backend(value) != Backend::None,
                    _ => false,
                };
                above_lowest.then_some(name)
            })
            .collect();
        assert_eq!(&lowerable, vars, "{rel}");

        for var in vars {
            let source = format!("env {var}");
            let (setting, from, lower): (Setting, &str, &[(&str, &str)]) = match *var {
                "CALICO_IPV4POOL_IPIP" => (Setting::PoolIpip, "Always", &ENV_BELOW_ALWAYS),
                "CALICO_IPV4POOL_VXLAN" => (Setting::PoolVxlan, "Always", &ENV_BELOW_ALWAYS),
                "FELIX_IPINIPENABLED" => (Setting::FelixIpip, "true", &FELIX_BELOW_TRUE),
                "FELIX_VXLANENABLED" => (Setting::FelixVxlan, "true", &FELIX_BELOW_TRUE),
                other => unreachable!("{other}"),
            };
            let only = |new: &Value, to: &str, what: &str| {
                let s = switch(CalicoKind::DaemonSet, &base, new)
                    .unwrap_or_else(|| panic!("{rel} {what}: no switch"));
                assert_eq!(s.reductions.len(), 1, "{rel} {what}: {s}");
                assert_eq!(s.reductions[0].source, source);
                assert_eq!(
                    lowered(Some(s)),
                    vec![red(setting, from, to)],
                    "{rel} {what}"
                );
            };
            for (spelling, to) in lower {
                let mut new = base.clone();
                set_env(&mut new, var, spelling);
                only(&new, to, &format!("{var}={spelling:?}"));
                checked += 1;
            }
            // Removed: the opaque envFrom may set it, to anything.
            let mut new = base.clone();
            remove_env(&mut new, var);
            only(&new, &format!("unknown ({OPAQUE})"), &format!("-{var}"));
            checked += 1;
            // From a Secret.
            let mut new = base.clone();
            replace_env(
                &mut new,
                var,
                json!({"name": var, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
            );
            only(
                &new,
                "unknown (from Secret s key k)",
                &format!("{var} from a Secret"),
            );
            checked += 1;
            // A value calico-node refuses is an error, not a pass.
            if var.starts_with("CALICO_") {
                let mut new = base.clone();
                set_env(&mut new, var, " Always");
                let e = detect_switch(CalicoKind::DaemonSet, &base, &new, Context::NONE)
                    .expect_err("unreadable");
                assert_eq!(
                    e.source_field,
                    format!("container \"calico-node\" env {var}")
                );
                checked += 1;
            }
        }
    }
    // overlay-ipip: 10 + 2 + 1 and 14 + 2; overlay-vxlan: the same;
    // upstream: 10 + 2 + 1.
    assert_eq!(checked, 29 + 29 + 13);
}

#[test]
fn a_felix_flag_removed_then_set_false_is_held_at_each_step() {
    let base = load(&format!("{G}/overlay-ipip/{DS}"));
    let mut removed = base.clone();
    remove_env(&mut removed, "FELIX_IPINIPENABLED");
    let mut off = removed.clone();
    env_of(&mut off, "calico-node").push(json!({"name": "FELIX_IPINIPENABLED", "value": "false"}));
    let o = format!("unknown ({OPAQUE})");
    assert_eq!(
        lowered(switch(CalicoKind::DaemonSet, &base, &removed)),
        vec![red(Setting::FelixIpip, "true", &o)]
    );
    assert_eq!(
        lowered(switch(CalicoKind::DaemonSet, &removed, &off)),
        vec![red(Setting::FelixIpip, &o, "false")]
    );
    // The same without the opaque envFrom: true -> unset -> false.
    let drop_env_from = |d: &mut Value| {
        container(d, "calico-node")
            .as_object_mut()
            .unwrap()
            .remove("envFrom");
    };
    let (mut base, mut removed, mut off) = (base, removed, off);
    for d in [&mut base, &mut removed, &mut off] {
        drop_env_from(d);
    }
    let unset = "unset (Felix follows the IPPools)";
    assert_eq!(
        lowered(switch(CalicoKind::DaemonSet, &base, &removed)),
        vec![red(Setting::FelixIpip, "true", unset)]
    );
    assert_eq!(
        lowered(switch(CalicoKind::DaemonSet, &removed, &off)),
        vec![red(Setting::FelixIpip, unset, "false")]
    );
}

#[test]
fn the_backend_reference_resolved_then_made_literal_none_is_a_switch() {
    for (rel, cm) in [
        (
            format!("{G}/overlay-ipip/{DS}"),
            format!("{G}/overlay-ipip/{CM}"),
        ),
        (format!("{U}/{DS}"), format!("{U}/{CM}")),
    ] {
        let by_ref = load(&rel);
        let data = data_of(&cm);
        let literal = |v: &str| {
            let mut d = by_ref.clone();
            replace_env(
                &mut d,
                "CALICO_NETWORKING_BACKEND",
                json!({"name": "CALICO_NETWORKING_BACKEND", "value": v}),
            );
            d
        };
        let (none, bird) = (literal("none"), literal("bird"));
        // valueFrom calico-config (calico_backend: bird) -> literal none.
        assert_eq!(
            lowered(switch_in(
                CalicoKind::DaemonSet,
                &by_ref,
                &none,
                known(&data)
            )),
            vec![red(Setting::Backend, "bird", "none")],
            "{rel}"
        );
        // Unresolved, it is unknown -> none: a switch too.
        assert_eq!(
            lowered(switch(CalicoKind::DaemonSet, &by_ref, &none)),
            vec![red(
                Setting::Backend,
                &format!("unknown ({BACKEND_REF})"),
                "none"
            )],
            "{rel}"
        );
        assert_eq!(
            switch_in(CalicoKind::DaemonSet, &by_ref, &bird, known(&data)),
            None
        );
        // A literal bird lowered: only the exact `none` is lower.
        for (spelling, is_switch) in [
            ("none", true),
            ("None", false),
            ("NONE", false),
            (" none", false),
            ("vxlan", false),
            ("", false),
        ] {
            let new = literal(spelling);
            assert_eq!(
                switch(CalicoKind::DaemonSet, &bird, &new).is_some(),
                is_switch,
                "{rel} bird -> {spelling:?}"
            );
        }
        // Back from the literal to the reference: bird -> what the
        // ConfigMap says (unknown while it is not known).
        let native = data_of(&format!("{G}/native/{CM}"));
        assert_eq!(
            switch_in(CalicoKind::DaemonSet, &bird, &by_ref, known(&data)),
            None
        );
        assert_eq!(
            lowered(switch_in(
                CalicoKind::DaemonSet,
                &bird,
                &by_ref,
                known(&native)
            )),
            vec![red(Setting::Backend, "bird", "none")]
        );
        assert_eq!(
            lowered(switch(CalicoKind::DaemonSet, &bird, &by_ref)),
            vec![red(
                Setting::Backend,
                "bird",
                &format!("unknown ({BACKEND_REF})")
            )]
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
        for (spelling, is_switch) in [
            ("none", true),
            ("None", false),
            ("NONE", false),
            (" none", false),
            ("none ", false),
        ] {
            let mut new = base.clone();
            new["data"]["calico_backend"] = json!(spelling);
            let want = if is_switch {
                vec![red(Setting::Backend, from, "none")]
            } else {
                vec![]
            };
            assert_eq!(
                lowered(switch(CalicoKind::ConfigMap, &base, &new)),
                want,
                "{rel} {spelling:?}"
            );
            checked += 1;
        }
        // Removed, then none: held at the second step.
        let mut removed = base.clone();
        removed["data"]
            .as_object_mut()
            .unwrap()
            .remove("calico_backend");
        assert_eq!(
            switch(CalicoKind::ConfigMap, &base, &removed),
            None,
            "{rel}"
        );
        let mut none = removed.clone();
        none["data"]["calico_backend"] = json!("none");
        assert_eq!(
            lowered(switch(CalicoKind::ConfigMap, &removed, &none)),
            vec![red(Setting::Backend, "unset (bird)", "none")],
            "{rel}"
        );
        checked += 2;
    }
    assert_eq!(checked, 21);
}

#[test]
fn every_single_pool_mode_lowered_is_a_switch() {
    let spellings = [
        ("Always", Always),
        ("CrossSubnet", CrossSubnet),
        ("always", Never),
        ("ALWAYS", Never),
        (" Always", Never),
        ("Always ", Never),
        ("crosssubnet", Never),
        ("cross-subnet", Never),
        ("Never", Never),
        ("never", Never),
        ("", Never),
        ("garbage", Never),
    ];
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
        for (spelling, to) in spellings {
            let mut new = base.clone();
            new["spec"][field] = json!(spelling);
            let want = if to < level {
                vec![red(setting, level.as_str(), to.as_str())]
            } else {
                vec![]
            };
            assert_eq!(
                lowered(switch(CalicoKind::IpPool, &base, &new)),
                want,
                "{rel} {field}={spelling:?}"
            );
            checked += usize::from(to < level);
        }
        // Removed or null: Never.
        for edit in [
            |s: &mut Value, f: &str| {
                s.as_object_mut().unwrap().remove(f);
            },
            |s: &mut Value, f: &str| s[f] = Value::Null,
        ] {
            let mut new = base.clone();
            edit(&mut new["spec"], field);
            assert_eq!(
                lowered(switch(CalicoKind::IpPool, &base, &new)),
                vec![red(setting, level.as_str(), "unset (Never)")],
                "{rel} -{field}"
            );
            checked += 1;
        }
        // The legacy block, as Calico up to v3.31 reads it.
        if field == "ipipMode" {
            for (block, to) in [
                (json!({}), Never),
                (json!({"enabled": false}), Never),
                (
                    json!({"enabled": true, "mode": "cross-subnet"}),
                    CrossSubnet,
                ),
                (json!({"enabled": true}), Always),
            ] {
                let mut new = base.clone();
                new["spec"]["ipip"] = block.clone();
                let want = if to < level {
                    vec![red(setting, level.as_str(), to.as_str())]
                } else {
                    vec![]
                };
                assert_eq!(
                    lowered(switch(CalicoKind::IpPool, &base, &new)),
                    want,
                    "{rel} ipip {block}"
                );
                checked += usize::from(to < level);
            }
        }
    }
    // Always (four pools): 11 spellings below + 2 removals each; legacy
    // blocks below Always on the two ipipMode pools: 3 + 3; CrossSubnet:
    // 10 spellings + 2 removals + 2 legacy blocks.
    assert_eq!(checked, 4 * 13 + 6 + 14);
}

#[test]
fn unrelated_daemonset_changes_are_not_switches() {
    for (variant, rel) in [
        (Some("overlay-ipip"), format!("{G}/overlay-ipip/{DS}")),
        (Some("overlay-vxlan"), format!("{G}/overlay-vxlan/{DS}")),
        (Some("native"), format!("{G}/native/{DS}")),
        (None, format!("{U}/{DS}")),
    ] {
        let base = load(&rel);
        let cm_rel = variant.map_or(format!("{U}/{CM}"), |v| format!("{G}/{v}/{CM}"));
        let data = data_of(&cm_rel);
        let changes: [Change; 10] = [
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
            ("probes", |d| {
                container(d, "calico-node")["livenessProbe"]["periodSeconds"] = json!(30)
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
            ("an init container's env", |d| {
                env_of(d, "install-cni").extend([
                    json!({"name": "CALICO_IPV4POOL_IPIP", "value": "Never"}),
                    json!({"name": "FELIX_IPINIPENABLED", "value": "false"}),
                    json!({"name": "CALICO_NETWORKING_BACKEND", "value": "none"}),
                ])
            }),
            ("a sidecar's env", |d| {
                d["spec"]["template"]["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "sidecar", "image": "x", "env": [
                        {"name": "CALICO_IPV4POOL_VXLAN", "value": "Never"},
                        {"name": "FELIX_VXLANENABLED", "value": "false"},
                    ]}))
            }),
            ("the sidecar first", |d| {
                d["spec"]["template"]["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .insert(
                        0,
                        json!({"name": "sidecar", "image": "x", "env": [
                            {"name": "CALICO_IPV4POOL_IPIP", "value": "Never"},
                        ]}),
                    )
            }),
        ];
        for (what, change) in changes {
            let mut new = base.clone();
            change(&mut new);
            assert_ne!(new, base, "{rel}: {what} changed nothing");
            for ctx in [Context::NONE, known(&data)] {
                assert_eq!(
                    switch_in(CalicoKind::DaemonSet, &base, &new, ctx),
                    None,
                    "{rel}: {what}"
                );
            }
        }
        // The other containers of the Gardener fixtures.
        if variant.is_some_and(|v| v != "native") {
            let mut new = base.clone();
            replace_env_in(
                &mut new,
                "network-unavailable-condition-ensurer",
                "CALICO_NETWORKING_BACKEND",
                "none",
            );
            assert_eq!(
                switch(CalicoKind::DaemonSet, &base, &new),
                None,
                "{rel}: ensurer"
            );
        }
    }
    // Same level, other spelling.
    let base = load(&format!("{G}/overlay-ipip/{DS}"));
    for (var, spelling) in [
        ("CALICO_IPV4POOL_IPIP", "always"),
        ("CALICO_IPV4POOL_IPIP", "ALWAYS"),
        ("FELIX_IPINIPENABLED", "yes"),
        ("FELIX_IPINIPENABLED", "1"),
        ("FELIX_IPINIPENABLED", "TRUE"),
        ("FELIX_IPINIPENABLED", "t"),
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

/// Sets `var` of container `name` to the literal `value`, replacing its entry.
fn replace_env_in(ds: &mut Value, name: &str, var: &str, value: &str) {
    let env = env_of(ds, name);
    let e = env
        .iter_mut()
        .find(|e| e["name"] == var)
        .unwrap_or_else(|| panic!("{name} has no {var}"));
    *e = json!({"name": var, "value": value});
}

#[test]
fn unrelated_config_map_and_pool_changes_are_not_switches() {
    for (rel, ds) in [
        (
            format!("{G}/overlay-ipip/{CM}"),
            format!("{G}/overlay-ipip/{DS}"),
        ),
        (
            format!("{G}/overlay-vxlan/{CM}"),
            format!("{G}/overlay-vxlan/{DS}"),
        ),
        (format!("{G}/native/{CM}"), format!("{G}/native/{DS}")),
        (format!("{U}/{CM}"), format!("{U}/{DS}")),
    ] {
        let base = load(&rel);
        let backend = base["data"]["calico_backend"].as_str().unwrap().to_string();
        let other = if backend == "bird" { "vxlan" } else { "bird" };
        let ds = load(&ds);
        let node = calico_node_container(&ds).unwrap();
        let data = base["data"].as_object().unwrap().clone();
        for (what, key, value) in [
            ("veth_mtu", "/data/veth_mtu", json!("1440")),
            ("typha", "/data/typha_service_name", json!("calico-typha")),
            ("cni config", "/data/cni_network_config", json!("{}")),
            ("a new key", "/data/felix_ipip", json!("false")),
            ("labels", "/metadata/labels", json!({"x": "y"})),
            ("annotations", "/metadata/annotations", json!({"z": "w"})),
            (
                "another overlay backend",
                "/data/calico_backend",
                json!(other),
            ),
            (
                "same backend, other case",
                "/data/calico_backend",
                json!(backend.to_uppercase()),
            ),
        ] {
            let mut new = base.clone();
            let (parent, leaf) = key.rsplit_once('/').unwrap();
            new.pointer_mut(parent).unwrap()[leaf] = value;
            assert_ne!(new, base, "{rel}: {what}");
            // Alone, and through calico-node's environment (which reads
            // veth_mtu and typha_service_name too, for no overlay setting).
            let through = Context {
                calico_node: Some(Some(node)),
                ..known(&data)
            };
            for ctx in [Context::NONE, through] {
                assert_eq!(
                    switch_in(CalicoKind::ConfigMap, &base, &new, ctx),
                    None,
                    "{rel}: {what}"
                );
            }
            // While calico-node is not known yet, any data change may lower it.
            let blind = Context {
                calico_node: None,
                ..known(&data)
            };
            assert_eq!(
                switch_in(CalicoKind::ConfigMap, &base, &new, blind).is_some(),
                parent == "/data",
                "{rel}: {what} with calico-node unknown"
            );
        }
    }
    for rel in [
        format!("{G}/overlay-ipip/{POOL}"),
        format!("{G}/overlay-vxlan/{POOL}"),
        format!("{U}/ippool-ipip.yaml"),
        format!("{U}/ippool-ipip-crosssubnet.yaml"),
        format!("{U}/ippool-vxlan.yaml"),
    ] {
        let base = load(&rel);
        let ipip_block = if base["spec"]["ipipMode"] == "Always" {
            json!({"enabled": true})
        } else if base["spec"]["ipipMode"] == "CrossSubnet" {
            json!({"enabled": true, "mode": "cross-subnet"})
        } else {
            json!({})
        };
        for (what, key, value) in [
            ("natOutgoing", "/spec/natOutgoing", json!(false)),
            ("blockSize", "/spec/blockSize", json!(24)),
            ("disabled", "/spec/disabled", json!(true)),
            ("nodeSelector", "/spec/nodeSelector", json!("zone == 'a'")),
            ("labels", "/metadata/labels", json!({"x": "y"})),
            ("annotations", "/metadata/annotations", json!({"z": "w"})),
            (
                "a legacy block of the same level",
                "/spec/ipip",
                ipip_block.clone(),
            ),
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
    // Native -> overlay, for all three kinds and both Gardener overlays,
    // whatever the guarded ConfigMap and calico-node look like.
    let native_cm = data_of(&format!("{G}/native/{CM}"));
    for variant in ["overlay-ipip", "overlay-vxlan"] {
        let overlay_cm = data_of(&format!("{G}/{variant}/{CM}"));
        let native_ds = load(&format!("{G}/native/{DS}"));
        let overlay_ds = load(&format!("{G}/{variant}/{DS}"));
        let contexts = [
            Context::NONE,
            known(&native_cm),
            known(&overlay_cm),
            Context {
                calico_node: Some(calico_node_container(&native_ds)),
                ..known(&native_cm)
            },
            Context {
                calico_node: Some(calico_node_container(&overlay_ds)),
                ..known(&native_cm)
            },
        ];
        for file in [DS, CM, POOL] {
            let native = load(&format!("{G}/native/{file}"));
            let overlay = load(&format!("{G}/{variant}/{file}"));
            let kind = kind_of(file, &native);
            for ctx in contexts {
                assert_eq!(
                    switch_in(kind, &native, &overlay, ctx),
                    None,
                    "native -> {variant}/{file}"
                );
            }
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
    let ds = load(&format!("{G}/overlay-ipip/{DS}"));
    let data = data_of(&format!("{G}/overlay-ipip/{CM}"));
    for rel in all_fixtures() {
        let obj = load(&rel);
        for ctx in [
            Context::NONE,
            known(&data),
            Context {
                calico_node: Some(calico_node_container(&ds)),
                ..known(&data)
            },
            Context {
                calico_node: None,
                ..known(&data)
            },
        ] {
            assert_eq!(
                detect_switch(kind_of(&rel, &obj), &obj, &obj, ctx),
                Ok(None),
                "{rel}"
            );
        }
    }
}

#[test]
fn unreadable_values_in_the_fixtures() {
    let base = load(&format!("{G}/overlay-ipip/{DS}"));
    let mut bad = base.clone();
    set_env(&mut bad, "CALICO_IPV4POOL_IPIP", "sometimes");
    // In the new object: an error naming where.
    let e = detect_switch(CalicoKind::DaemonSet, &base, &bad, Context::NONE).unwrap_err();
    assert_eq!(
        e.source_field,
        "container \"calico-node\" env CALICO_IPV4POOL_IPIP"
    );
    assert_eq!(e.value, "sometimes");
    // Unchanged in an otherwise unrelated update: no error.
    let mut bad_bumped = bad.clone();
    container(&mut bad_bumped, "calico-node")["image"] = json!("quay.io/calico/node:v3.31.7");
    assert_eq!(
        detect_switch(CalicoKind::DaemonSet, &bad, &bad_bumped, Context::NONE),
        Ok(None)
    );
    // In the old object: unknown, so Never is lower; the others still count.
    let native = load(&format!("{G}/native/{DS}"));
    assert_eq!(
        lowered(switch(CalicoKind::DaemonSet, &bad, &native)),
        vec![
            red(Setting::PoolIpip, "unreadable \"sometimes\"", "Never"),
            red(Setting::FelixIpip, "true", "false"),
        ]
    );

    // Pools: any string is a mode (anything unknown is Never); only a
    // non-string cannot be read.
    let pool = load(&format!("{U}/ippool-ipip.yaml"));
    let mut sometimes = pool.clone();
    sometimes["spec"]["ipipMode"] = json!("Sometimes");
    assert_eq!(
        lowered(switch(CalicoKind::IpPool, &pool, &sometimes)),
        vec![red(Setting::PoolIpip, "Always", "Never")]
    );
    let mut bad = pool.clone();
    bad["spec"]["ipipMode"] = json!(true);
    let e = detect_switch(CalicoKind::IpPool, &pool, &bad, Context::NONE).unwrap_err();
    assert_eq!(
        (e.source_field.as_str(), e.value.as_str()),
        ("spec.ipipMode", "true (not a string)")
    );
    assert_eq!(
        lowered(switch(
            CalicoKind::IpPool,
            &bad,
            &load(&format!("{U}/ippool-native.yaml"))
        )),
        vec![red(
            Setting::PoolIpip,
            "unreadable \"true (not a string)\"",
            "Never"
        )]
    );
}

#[test]
fn the_hold_patch_on_the_new_object_gives_the_old_overlay_plus_the_record_and_loses_nothing() {
    for variant in ["overlay-ipip", "overlay-vxlan"] {
        for file in [DS, CM, POOL] {
            let old = load(&format!("{G}/{variant}/{file}"));
            let mut new = load(&format!("{G}/native/{file}"));
            new["metadata"]["labels"]["changed"] = json!("with the switch");
            let kind = kind_of(file, &old);
            assert!(switch(kind, &old, &new).is_some(), "{variant}/{file}");
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
            assert_eq!(
                read(kind, &held, Context::NONE),
                read(kind, &old, Context::NONE),
                "{variant}/{file}"
            );
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
            // Nothing is lost: releasing gives exactly the desired part,
            // which is the switch again.
            let released = hold::released(&held, &record, "release").unwrap();
            assert_eq!(
                released.pointer(part),
                new.pointer(part),
                "{variant}/{file}: intent complete"
            );
            assert!(Record::read(&released).unwrap().is_none());
            assert_eq!(
                lowered(switch(kind, &held, &released)),
                lowered(switch(kind, &old, &new)),
                "{variant}/{file}: the release is the switch"
            );
        }
    }
}
