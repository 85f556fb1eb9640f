//! What each kind of Calico object says about encapsulation (pure), read
//! the way Calico's own code reads it; the parsers of single values, each
//! citing that code, are in [`crate::calico::values`].

use serde_json::Value;

use crate::calico::model::{
    CALICO_NODE_CONTAINER, ENV_BACKEND, ENV_FELIX_IPIP, ENV_FELIX_VXLAN, ENV_IPIP, ENV_VXLAN,
};
use crate::calico::model::{
    CalicoKind, Context, Eff, Encapsulation, FelixFlag, OverlayConfig, Setting, eff, unreadable,
};
use crate::calico::podenv::{EnvValue, Environment, KnownConfigMap};
use crate::calico::values::{self as values, Parsed};

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

/// What a pool still encapsulates, in words (`None` when neither IPIP nor
/// VXLAN is on): what its deletion would turn off for the pods that keep
/// addresses from it. Read by both pool readers (the legacy `spec.ipip`
/// block counts if either Calico generation would honour it); a value that
/// cannot be read counts as on. `spec.disabled` does not matter: a disabled
/// pool only takes no new allocations, and the pods that have addresses
/// from it keep its encapsulation until it is deleted (Calico's docs,
/// "Migrate from one IP pool to another").
pub fn pool_encapsulation(obj: &Value) -> Option<String> {
    let on = |e: &Option<Eff<Encapsulation>>| {
        e.as_ref()
            .is_none_or(|e| e.known() != Some(Encapsulation::Never))
    };
    [PoolReader::UpToV331, PoolReader::FromV332]
        .into_iter()
        .map(|reader| read_pool(obj, reader))
        .find(|c| on(&c.ipip) || on(&c.vxlan))
        .map(|c| c.describe())
}

/// A FelixConfiguration's `spec.ipipEnabled` / `spec.vxlanEnabled`
/// ([`values::felix_config_flag`]); `false` turns the tunnel off on every
/// node it applies to, whatever the pools say.
pub(crate) fn read_felix_configuration(kind: CalicoKind, obj: &Value) -> OverlayConfig {
    let spec = obj.get("spec").filter(|s| s.is_object());
    let flag = |setting: Setting, key: &str| {
        let raw = spec.and_then(|s| s.get(key));
        match values::felix_config_flag(raw) {
            Parsed::Set(l) => Eff::Set(l),
            Parsed::Unset(l) => Eff::Unset(l),
            Parsed::Invalid(expected) => Eff::Unreadable(unreadable(
                setting.source(kind).into(),
                raw.unwrap_or(&Value::Null),
                expected,
            )),
        }
    };
    OverlayConfig {
        felix_ipip: Some(flag(Setting::FelixIpip, "ipipEnabled")),
        felix_vxlan: Some(flag(Setting::FelixVxlan, "vxlanEnabled")),
        ..OverlayConfig::default()
    }
}

pub(crate) fn read_configmap(obj: &Value) -> OverlayConfig {
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

pub(crate) fn read_daemonset(obj: &Value, ctx: Context<'_>) -> OverlayConfig {
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
    // Felix matches its variables' names case-insensitively
    // (`felix/config/env_var_loader.go` lowercases them) and keeps whichever
    // spelling its environment lists last, an order the kubelet does not
    // fix: spellings that disagree leave the setting unknown.
    let felix = |var: &'static str| {
        let read = |name: &str, value: EnvValue| {
            let name = name.to_string();
            from_env(
                value,
                FelixFlag::FollowPools,
                values::felix_flag,
                move || format!("container {name:?} env {name}"),
            )
        };
        let canonical = read(var, env.get(var));
        // Felix skips an empty value, so only set spellings compete.
        let set: Vec<(String, Eff<FelixFlag>)> =
            std::iter::once((var.to_string(), canonical.clone()))
                .chain(
                    env.case_variants(var)
                        .into_iter()
                        .map(|(n, v)| (n.clone(), read(&n, v))),
                )
                .filter(|(_, e)| !matches!(e, Eff::Unset(_)))
                .collect();
        match set.as_slice() {
            [] => canonical,
            [(_, only)] => only.clone(),
            [(first, a), rest @ ..] => match rest
                .iter()
                .find(|(_, b)| b.known().is_none() || b.known() != a.known())
            {
                None if a.known().is_some() => a.clone(),
                found => Eff::Unknown(format!(
                    "{first} is also set as {}; Felix reads either, whichever its environment lists last",
                    found.map_or(first.as_str(), |(n, _)| n.as_str())
                )),
            },
        }
    };
    OverlayConfig {
        ipip: Some(pool(ENV_IPIP)),
        vxlan: Some(pool(ENV_VXLAN)),
        felix_ipip: Some(felix(ENV_FELIX_IPIP)),
        felix_vxlan: Some(felix(ENV_FELIX_VXLAN)),
        backend: Some(match env.get_stated(values::ENV_LEGACY_NETWORKING) {
            // The legacy variable, when stated, decides (rc.local).
            EnvValue::Text(t) if !t.is_empty() => Eff::Set(values::legacy_networking(&t)),
            EnvValue::Unknown(w) => Eff::Unknown(format!("CALICO_NETWORKING {w}")),
            _ => from_env(
                env.get(ENV_BACKEND),
                values::BACKEND_DEFAULT,
                |s| Parsed::Set(values::backend(s)),
                field(ENV_BACKEND),
            ),
        }),
    }
}
