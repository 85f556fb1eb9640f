//! The Tigera operator's `Installation` (`operator.tigera.io/v1`, pure):
//! the encapsulation of each pool in `spec.calicoNetwork.ipPools`, and the
//! reductions an update makes, pool by pool.
//!
//! The operator (v1.34+, Calico v3.28+) reconciles these pools onto the
//! cluster's IPPools continuously: a lowered `encapsulation` here becomes a
//! lowered `ipipMode`/`vxlanMode` on the pool, and a pool removed from the
//! list is deleted (tigera/operator `pkg/controller/ippool/pool_controller.go`).
//! So a pool removed from the list counts as lowered to no encapsulation.
//! Old and new pools are matched by `name`, else by `cidr` (a pool renamed
//! in place keeps its CIDR); their order does not matter.

use serde_json::Value;

use crate::calico::model::{
    CalicoKind, Eff, Encapsulation, OverlayConfig, ReadError, Reduction, Setting, reductions,
};

/// Where the pools are, as a JSON pointer.
pub const POOLS_POINTER: &str = "/spec/calicoNetwork/ipPools";

/// The values the operator's CRD allows (`operator.tigera.io_installations`,
/// `EncapsulationType`).
pub const ENCAPSULATIONS: &str = "IPIP, IPIPCrossSubnet, VXLAN, VXLANCrossSubnet or None";

/// One pool of the Installation, as the guard reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: Option<String>,
    pub cidr: Option<String>,
    /// `encapsulation` as written (`absent` when it is not).
    pub written: String,
    pub ipip: Eff<Encapsulation>,
    pub vxlan: Eff<Encapsulation>,
}

impl Pool {
    fn label(&self) -> String {
        match (&self.name, &self.cidr) {
            (Some(n), _) => n.clone(),
            (None, Some(c)) => c.clone(),
            (None, None) => "unnamed".into(),
        }
    }

    fn config(&self) -> OverlayConfig {
        OverlayConfig {
            ipip: Some(self.ipip.clone()),
            vxlan: Some(self.vxlan.clone()),
            ..OverlayConfig::default()
        }
    }
}

/// `encapsulation` as the operator turns it into the pool's modes
/// (`pkg/controller/ippool`: IPIP -> ipipMode Always, IPIPCrossSubnet ->
/// CrossSubnet, likewise for VXLAN, None -> both Never). Absent: the
/// operator's default, IPIP for an IPv4 pool when BGP is on and VXLAN when
/// it is off, None for IPv6 (docs, "Configure default IP pools"); the guard
/// does not know the BGP setting, so an absent IPv4 value is unknown.
fn encapsulation(pool: &Value) -> (Eff<Encapsulation>, Eff<Encapsulation>) {
    use Encapsulation::{Always, CrossSubnet, Never};
    let set = |ipip, vxlan| (Eff::Set(ipip), Eff::Set(vxlan));
    let bad = |e: ReadError| (Eff::Unreadable(e.clone()), Eff::Unreadable(e));
    match pool.get("encapsulation").filter(|v| !v.is_null()) {
        Some(Value::String(s)) => match s.as_str() {
            "IPIP" => set(Always, Never),
            "IPIPCrossSubnet" => set(CrossSubnet, Never),
            "VXLAN" => set(Never, Always),
            "VXLANCrossSubnet" => set(Never, CrossSubnet),
            "None" => set(Never, Never),
            _ => bad(unreadable(pool, s)),
        },
        Some(other) => bad(unreadable(pool, &format!("{other} (not a string)"))),
        None => {
            let v6 = pool
                .get("cidr")
                .and_then(Value::as_str)
                .is_some_and(|c| c.contains(':'));
            if v6 {
                (Eff::Unset(Never), Eff::Unset(Never))
            } else {
                let why = "the operator's default: IPIP with BGP, VXLAN without".to_string();
                (Eff::Unknown(why.clone()), Eff::Unknown(why))
            }
        }
    }
}

fn unreadable(pool: &Value, value: &str) -> ReadError {
    let name = pool.get("name").and_then(Value::as_str).unwrap_or("?");
    ReadError {
        source_field: format!("spec.calicoNetwork.ipPools[{name}].encapsulation"),
        value: value.chars().take(128).collect(),
        expected: ENCAPSULATIONS,
    }
}

/// The pools of an Installation; a list that is not a list (or an item that
/// is not an object) is unreadable.
pub fn pools(obj: &Value) -> Result<Vec<Pool>, ReadError> {
    let list = match obj.pointer(POOLS_POINTER) {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(l)) => l,
        Some(other) => {
            return Err(ReadError {
                source_field: "spec.calicoNetwork.ipPools".into(),
                value: other.to_string().chars().take(128).collect(),
                expected: "a list of pools",
            });
        }
    };
    list.iter()
        .map(|p| {
            if !p.is_object() {
                return Err(ReadError {
                    source_field: "spec.calicoNetwork.ipPools[]".into(),
                    value: p.to_string().chars().take(128).collect(),
                    expected: "a pool (an object)",
                });
            }
            let text = |k: &str| p.get(k).and_then(Value::as_str).map(String::from);
            let (ipip, vxlan) = encapsulation(p);
            Ok(Pool {
                name: text("name"),
                cidr: text("cidr"),
                written: match p.get("encapsulation") {
                    Some(Value::String(e)) => e.chars().take(128).collect(),
                    None | Some(Value::Null) => "absent".into(),
                    Some(other) => other.to_string().chars().take(128).collect(),
                },
                ipip,
                vxlan,
            })
        })
        .collect()
}

/// The reductions from `old` to `new`, pool by pool. A value the operator's
/// CRD would not take is an error when `new` brings it (not when it was
/// there before, unchanged: see [`reductions`]); so is an unreadable list.
pub fn installation_reductions(old: &Value, new: &Value) -> Result<Vec<Reduction>, ReadError> {
    let new_pools = match pools(new) {
        Ok(p) => p,
        // Unchanged: not this update's doing.
        Err(_) if old.pointer(POOLS_POINTER) == new.pointer(POOLS_POINTER) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let Ok(old_pools) = pools(old) else {
        // From a list that cannot be read to one that can: it may lower.
        return Ok(vec![Reduction {
            setting: Setting::PoolIpip,
            source: "spec.calicoNetwork.ipPools".into(),
            from: "unreadable".into(),
            to: "a list of pools".into(),
        }]);
    };
    let mut out = Vec::new();
    for o in &old_pools {
        let matched = new_pools
            .iter()
            .find(|n| o.name.is_some() && n.name == o.name)
            .or_else(|| {
                new_pools
                    .iter()
                    .find(|n| o.cidr.is_some() && n.cidr == o.cidr)
            });
        let to = match matched {
            Some(n) => n.config(),
            // Removed from the list: the operator deletes the pool.
            None => OverlayConfig {
                ipip: Some(Eff::Set(Encapsulation::Never)),
                vxlan: Some(Eff::Set(Encapsulation::Never)),
                ..OverlayConfig::default()
            },
        };
        // One reduction per pool (one field carries both families), in
        // the Installation's own words.
        if let Some(mut r) = reductions(CalicoKind::Installation, &o.config(), &to)?
            .into_iter()
            .next()
        {
            r.source = format!("spec.calicoNetwork.ipPools[{}].encapsulation", o.label());
            r.from = o.written.clone();
            r.to = match matched {
                Some(n) => n.written.clone(),
                None => "removed (the operator deletes the pool)".into(),
            };
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inst(pools: Value) -> Value {
        json!({"apiVersion": "operator.tigera.io/v1", "kind": "Installation",
            "metadata": {"name": "default"},
            "spec": {"variant": "Calico", "calicoNetwork": {"ipPools": pools}}})
    }

    fn pool(name: &str, cidr: &str, enc: Option<&str>) -> Value {
        let mut p = json!({"name": name, "cidr": cidr, "blockSize": 26, "natOutgoing": "Enabled"});
        if let Some(e) = enc {
            p["encapsulation"] = json!(e);
        }
        p
    }

    /// (IPIP rank, VXLAN rank) of a value; `None` for absent (unknown).
    fn ranks(enc: &str) -> (u8, u8) {
        match enc {
            "IPIP" => (2, 0),
            "IPIPCrossSubnet" => (1, 0),
            "VXLAN" => (0, 2),
            "VXLANCrossSubnet" => (0, 1),
            _ => (0, 0),
        }
    }

    const VALUES: [&str; 5] = [
        "IPIP",
        "IPIPCrossSubnet",
        "VXLAN",
        "VXLANCrossSubnet",
        "None",
    ];

    #[test]
    fn every_pair_of_encapsulation_values() {
        for a in VALUES {
            for b in VALUES {
                let old = inst(json!([pool("p", "10.0.0.0/16", Some(a))]));
                let new = inst(json!([pool("p", "10.0.0.0/16", Some(b))]));
                let r = installation_reductions(&old, &new).unwrap();
                let ((ai, av), (bi, bv)) = (ranks(a), ranks(b));
                let want = usize::from(bi < ai || bv < av);
                assert_eq!(r.len(), want, "{a} -> {b}: {r:?}");
                for x in &r {
                    assert_eq!(x.source, "spec.calicoNetwork.ipPools[p].encapsulation");
                    assert_eq!((x.from.as_str(), x.to.as_str()), (a, b));
                }
            }
        }
    }

    #[test]
    fn an_absent_value_is_the_operators_default_unknown_for_ipv4() {
        let v4 = |e| inst(json!([pool("p", "10.0.0.0/16", e)]));
        // Unknown -> None or IPIPCrossSubnet may lower: held; -> IPIP may
        // lower VXLAN (the default without BGP): held too.
        for b in VALUES {
            assert!(
                !installation_reductions(&v4(None), &v4(Some(b)))
                    .unwrap()
                    .is_empty(),
                "absent -> {b}"
            );
        }
        // Known -> unknown: lowered unless nothing was on.
        assert!(
            !installation_reductions(&v4(Some("IPIP")), &v4(None))
                .unwrap()
                .is_empty()
        );
        assert!(
            installation_reductions(&v4(Some("None")), &v4(None))
                .unwrap()
                .is_empty()
        );
        // IPv6: absent is None.
        let v6 = |e| inst(json!([pool("p6", "fd00::/48", e)]));
        assert!(
            installation_reductions(&v6(None), &v6(Some("None")))
                .unwrap()
                .is_empty()
        );
        assert!(
            installation_reductions(&v6(Some("VXLAN")), &v6(None))
                .unwrap()
                .len()
                == 1
        );
    }

    #[test]
    fn pools_added_removed_renamed_and_reordered() {
        let a = pool("a", "10.0.0.0/16", Some("IPIP"));
        let b = pool("b", "10.1.0.0/16", Some("VXLAN"));
        let c = pool("c", "10.2.0.0/16", Some("None"));
        let red = |old: Value, new: Value| installation_reductions(&inst(old), &inst(new)).unwrap();
        // Reordered: nothing.
        assert!(red(json!([a, b]), json!([b, a])).is_empty());
        // Added (encapsulating or not): nothing.
        assert!(red(json!([a]), json!([a, b])).is_empty());
        assert!(red(json!([a]), json!([c, a])).is_empty());
        // Removed: lowered to none, named, whatever else changes.
        let r = red(json!([a, b]), json!([b]));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].source, "spec.calicoNetwork.ipPools[a].encapsulation");
        assert_eq!(r[0].to, "removed (the operator deletes the pool)");
        // A removed pool that encapsulated nothing: nothing.
        assert!(red(json!([a, c]), json!([a])).is_empty());
        // Every pool removed (an empty list, or no list at all).
        assert_eq!(red(json!([a, b]), json!([])).len(), 2);
        assert_eq!(red(json!([a, b]), json!([]))[0].from, "IPIP");
        let none = json!({"spec": {"calicoNetwork": {}}});
        assert_eq!(
            installation_reductions(&inst(json!([a, b])), &none)
                .unwrap()
                .len(),
            2
        );
        // Renamed in place (same CIDR): matched by CIDR; a rename that
        // also lowers is a reduction.
        let a2 = pool("a2", "10.0.0.0/16", Some("IPIP"));
        assert!(red(json!([a]), json!([a2])).is_empty());
        let a2_native = pool("a2", "10.0.0.0/16", Some("None"));
        assert_eq!(red(json!([a]), json!([a2_native])).len(), 1);
        // The name wins over the CIDR: `a` moved to another CIDR and
        // lowered is a reduction of `a`.
        let a_moved = pool("a", "10.9.0.0/16", Some("None"));
        let r = red(json!([a, b]), json!([b, a_moved]));
        assert_eq!(r.len(), 1);
        assert!(r[0].source.contains("[a]"));
    }

    #[test]
    fn values_the_crd_would_not_take_are_refused_when_new() {
        let p = |e: Value| inst(json!([{"name": "p", "cidr": "10.0.0.0/16", "encapsulation": e}]));
        let good = p(json!("IPIP"));
        for bad in [json!("ipip"), json!("Ipip "), json!(3), json!(["IPIP"])] {
            let e = installation_reductions(&good, &p(bad.clone())).unwrap_err();
            assert!(e.source_field.contains("ipPools[p]"), "{e}");
            // Unchanged: not this update's doing.
            assert!(installation_reductions(&p(bad.clone()), &p(bad)).is_ok());
        }
        let not_a_list = json!({"spec": {"calicoNetwork": {"ipPools": "IPIP"}}});
        assert!(installation_reductions(&good, &not_a_list).is_err());
    }
}
