//! Three-way merge of JSON values (pure): what an object becomes when an
//! update arrives while an earlier change to it is still held.
//!
//! `base` is the object as it is (the held state), `ours` the held intent
//! applied to it, `theirs` the incoming update. A part changed on one side
//! only takes that side's value; a part changed on both sides takes the
//! later one, `theirs` ("the latest intent wins, field by field"). Lists of
//! named items (containers, env vars, volumes) are merged item by item by
//! their name, the way Kubernetes merges them; other lists are values.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

/// The merge key of lists whose every item is an object with a unique
/// string under that key, on every side given (at least one non-empty).
pub fn list_key(lists: &[&[Value]]) -> Option<&'static str> {
    if lists.iter().all(|l| l.is_empty()) {
        return None;
    }
    ["name", "mountPath"].into_iter().find(|key| {
        lists.iter().all(|l| {
            let names: Option<Vec<&str>> = l
                .iter()
                .map(|v| v.get(*key).and_then(Value::as_str))
                .collect();
            names.is_some_and(|names| unique(&names))
        })
    })
}

/// No name twice (pod lists are short: comparing beats hashing).
fn unique(names: &[&str]) -> bool {
    if names.len() > 64 {
        let mut seen = HashSet::with_capacity(names.len());
        return names.iter().all(|n| seen.insert(*n));
    }
    names
        .iter()
        .enumerate()
        .all(|(i, n)| !names[i + 1..].contains(n))
}

/// The merge of `theirs` and `ours` over `base` (see the module comment).
pub fn merge3(base: &Value, ours: &Value, theirs: &Value) -> Value {
    merge_opt(Some(base), Some(ours), Some(theirs)).unwrap_or(Value::Null)
}

/// The same with absence (`None`) as a value of its own.
pub fn merge_opt(
    base: Option<&Value>,
    ours: Option<&Value>,
    theirs: Option<&Value>,
) -> Option<Value> {
    if theirs == base {
        return ours.cloned();
    }
    if ours == base || ours == theirs {
        return theirs.cloned();
    }
    // Changed on both sides, differently.
    match (ours, theirs) {
        (Some(Value::Object(o)), Some(Value::Object(t))) => {
            let b = base.and_then(Value::as_object);
            Some(Value::Object(merge_maps(b, o, t)))
        }
        (Some(Value::Array(o)), Some(Value::Array(t))) => {
            let b = base
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            match list_key(&[b, o, t]) {
                Some(key) => Some(Value::Array(merge_named(b, o, t, key))),
                None => Some(Value::Array(t.clone())),
            }
        }
        // A value, or a part removed on one side and changed on the other:
        // the later side wins.
        _ => theirs.cloned(),
    }
}

fn merge_maps(
    base: Option<&Map<String, Value>>,
    ours: &Map<String, Value>,
    theirs: &Map<String, Value>,
) -> Map<String, Value> {
    let mut keys: Vec<&String> = theirs.keys().collect();
    keys.extend(ours.keys().filter(|k| !theirs.contains_key(*k)));
    let mut out = Map::new();
    for k in keys {
        let b = base.and_then(|m| m.get(k));
        if let Some(v) = merge_opt(b, ours.get(k), theirs.get(k)) {
            out.insert(k.clone(), v);
        }
    }
    out
}

fn merge_named(base: &[Value], ours: &[Value], theirs: &[Value], key: &str) -> Vec<Value> {
    let name = |v: &Value| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let index = |l: &[Value]| -> HashMap<String, Value> {
        l.iter().map(|v| (name(v), v.clone())).collect()
    };
    let (b, o, t) = (index(base), index(ours), index(theirs));
    // The order of the side that reordered the list; the held intent's
    // order when the update kept the order it found (an apply that only
    // adds and sets items), so that a re-apply gives the same list.
    let in_other = |l: &[Value], other: &HashMap<String, Value>| -> Vec<String> {
        l.iter()
            .map(&name)
            .filter(|n| other.contains_key(n))
            .collect()
    };
    let reordered = in_other(theirs, &b) != in_other(base, &t);
    let (first, second) = if reordered {
        (theirs, ours)
    } else {
        (ours, theirs)
    };
    let merged = |n: &String| {
        let (bv, ov, tv) = (b.get(n), o.get(n), t.get(n));
        // An env var is one value: `value` and `valueFrom` are exclusive, so
        // one changed on both sides is taken whole from the later side (a
        // field-by-field merge could build an item the API server refuses).
        let env_var = |v: Option<&Value>| {
            v.is_some_and(|v| v.get("value").is_some() || v.get("valueFrom").is_some())
        };
        if env_var(ov) && env_var(tv) && ov != bv && tv != bv && ov != tv {
            return tv.cloned();
        }
        merge_opt(bv, ov, tv)
    };
    let mut out: Vec<Value> = Vec::new();
    for item in first {
        if let Some(v) = merged(&name(item)) {
            out.push(v);
        }
    }
    // What only the other side has, placed after the item it follows there.
    let in_first = index(first);
    for (i, item) in second.iter().enumerate() {
        let n = name(item);
        if in_first.contains_key(&n) {
            continue;
        }
        let Some(v) = merged(&n) else {
            continue;
        };
        let after = second[..i]
            .iter()
            .rev()
            .map(&name)
            .find_map(|p| out.iter().position(|x| name(x) == p));
        out.insert(after.map_or(0, |p| p + 1), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_list_with_a_name_twice_or_missing_is_merged_by_position() {
        let named =
            |names: &[&str]| -> Vec<Value> { names.iter().map(|n| json!({"name": n})).collect() };
        assert_eq!(
            list_key(&[&named(&["a", "b"]), &named(&["b"])]),
            Some("name")
        );
        assert_eq!(list_key(&[&named(&["a", "b", "a"]), &named(&["b"])]), None);
        assert_eq!(list_key(&[&named(&["a"]), &[json!({"value": 1})]]), None);
        let mounts = [json!({"mountPath": "/a"}), json!({"mountPath": "/b"})];
        assert_eq!(list_key(&[&mounts, &mounts[..1]]), Some("mountPath"));
        // Long lists too (hashed).
        let many: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let mut names: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(list_key(&[&named(&names)]), Some("name"));
        names.push("n7");
        assert_eq!(list_key(&[&named(&names)]), None);
        assert_eq!(list_key(&[&[], &[]]), None);
    }

    fn env(pairs: &[(&str, &str)]) -> Value {
        Value::Array(
            pairs
                .iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect(),
        )
    }

    #[test]
    fn one_sided_changes_take_that_side() {
        let base = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let ours = json!({"a": 1, "b": {"c": 20, "d": 3}});
        let theirs = json!({"a": 10, "b": {"c": 2, "d": 3, "e": 4}});
        assert_eq!(
            merge3(&base, &ours, &theirs),
            json!({"a": 10, "b": {"c": 20, "d": 3, "e": 4}})
        );
    }

    #[test]
    fn the_later_side_wins_conflicts() {
        let base = json!({"a": 1, "gone": 1});
        let ours = json!({"a": 2, "gone": 2});
        let theirs = json!({"a": 3});
        assert_eq!(merge3(&base, &ours, &theirs), json!({"a": 3}));
        // Removed by the intent, changed by the update: the update's value.
        assert_eq!(
            merge3(&json!({"x": 1}), &json!({}), &json!({"x": 5})),
            json!({"x": 5})
        );
    }

    #[test]
    fn named_lists_merge_by_name() {
        // The held intent (ours) lowers IPIP and removes X; the update
        // (theirs) lowers Felix and adds Y.
        let base = env(&[
            ("CALICO_IPV4POOL_IPIP", "Always"),
            ("X", "1"),
            ("FELIX_IPINIPENABLED", "true"),
        ]);
        let ours = env(&[
            ("CALICO_IPV4POOL_IPIP", "Never"),
            ("FELIX_IPINIPENABLED", "true"),
            ("NEW", "n"),
        ]);
        let theirs = env(&[
            ("CALICO_IPV4POOL_IPIP", "Always"),
            ("X", "1"),
            ("FELIX_IPINIPENABLED", "false"),
            ("Y", "y"),
        ]);
        assert_eq!(
            merge3(&base, &ours, &theirs),
            env(&[
                ("CALICO_IPV4POOL_IPIP", "Never"),
                ("FELIX_IPINIPENABLED", "false"),
                ("Y", "y"),
                ("NEW", "n")
            ])
        );
    }

    #[test]
    fn a_partial_reapply_merges_back_to_the_intent() {
        // kubectl apply of the desired object over the held one keeps what
        // only the held object has and sets the rest: the merge with the
        // intent is the desired object again.
        let held = env(&[("A", "overlay"), ("ONLY_OVERLAY", "x"), ("B", "b")]);
        let desired = env(&[("INIT", "i"), ("A", "native"), ("B", "b")]);
        let hybrid = env(&[
            ("INIT", "i"),
            ("A", "native"),
            ("ONLY_OVERLAY", "x"),
            ("B", "b"),
        ]);
        assert_eq!(merge3(&held, &desired, &hybrid), desired);
    }

    #[test]
    fn an_env_var_changed_on_both_sides_is_taken_whole_from_the_update() {
        let base = json!([{"name": "IPIP", "value": "Always"}]);
        let ours =
            json!([{"name": "IPIP", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]);
        let theirs = json!([{"name": "IPIP", "value": "CrossSubnet"}]);
        assert_eq!(merge3(&base, &ours, &theirs), theirs);
    }

    #[test]
    fn other_lists_are_values() {
        let base = json!({"args": ["a", "b"]});
        let ours = json!({"args": ["a", "c"]});
        let theirs = json!({"args": ["a", "b", "d"]});
        assert_eq!(merge3(&base, &ours, &theirs), theirs);
        assert_eq!(merge3(&base, &ours, &base), ours);
    }

    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            (0..3i64).prop_map(Value::from),
            prop::sample::select(vec!["a", "b"]).prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec!["x", "y", "name"]).prop_map(String::from),
                    inner,
                    0..3
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
                prop::collection::btree_map(
                    prop::sample::select(vec!["p", "q", "r"]),
                    0..3i64,
                    0..3
                )
                .prop_map(|m| {
                    Value::Array(
                        m.into_iter()
                            .map(|(n, v)| json!({"name": n, "value": v}))
                            .collect(),
                    )
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn identities(b in tree(), o in tree(), t in tree()) {
            prop_assert_eq!(merge3(&b, &o, &b), o.clone());
            prop_assert_eq!(merge3(&b, &b, &t), t.clone());
            prop_assert_eq!(merge3(&b, &t, &t), t.clone());
            // The later side's own changes always survive at the top level.
            let m = merge3(&b, &o, &t);
            if let (Value::Object(bm), Value::Object(tm), Value::Object(mm)) = (&b, &t, &m) {
                for (k, v) in tm {
                    if bm.get(k) != Some(v) && !v.is_object() && !v.is_array() {
                        prop_assert_eq!(mm.get(k), Some(v));
                    }
                }
            }
        }
    }
}
