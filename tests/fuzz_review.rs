//! Fuzzing on stable Rust: the decode -> decide -> patch path of
//! `Webhook::review`, fed with reviews made from the fixtures (Gardener's
//! calico-node, calico-config and IPPool, overlay -> native and back) and
//! mutated structure-aware (a value's type swapped, a field dropped, huge
//! and unicode strings, deep nesting, numbers as strings) and as raw bytes
//! (truncated, flipped). The cluster: guard on, one node without its route,
//! so every switch is held.
//!
//! Checked on every case:
//! - no panic, and an AdmissionReview with a response for every request
//!   (with the request's uid whenever the uid can be read);
//! - a patch in a response applies to the object it was made for;
//! - noise that is no switch (annotations and labels, unknown fields, any
//!   strings in them) never changes the decision of the same review without
//!   it: a held switch is never passed because of noise.
//!
//! `make test` runs a short fixed-seed run (`FUZZ_CASES`, default 3000);
//! `make fuzz` runs for `FUZZ_SECONDS` with a seed from the clock and prints
//! executions and findings. A failing case prints its seed and case number
//! (rerun with `FUZZ_SEED`); every finding becomes a regression test below.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use overlay_switch_webhook::calico::overlay::CalicoKind;
use overlay_switch_webhook::cluster::watch::Store as _;
use overlay_switch_webhook::cluster::{Cluster, Settings};
use overlay_switch_webhook::metrics::Metrics;
use overlay_switch_webhook::server::webhook::Webhook;
use serde_json::{Value, json};

/// SplitMix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn fixture(rel: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn review(old: &Value, new: &Value, uid: &str) -> Value {
    let api_version = new["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = new["kind"].as_str().unwrap();
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
            "name": new["metadata"]["name"],
            "namespace": new["metadata"]["namespace"],
            "operation": "UPDATE",
            "userInfo": {"username": "operator"},
            "object": new, "oldObject": old, "dryRun": false
        }
    })
}

/// The seeds: every guarded kind, switched, rolled back and unchanged.
fn seeds() -> Vec<Value> {
    let mut out = vec![];
    for f in [
        "daemonset-calico-node.yaml",
        "configmap-calico-config.yaml",
        "ippool-default-ipv4.yaml",
    ] {
        let overlay = fixture(&format!("gardener-calico/overlay-ipip/{f}"));
        let native = fixture(&format!("gardener-calico/native/{f}"));
        out.push(review(&overlay, &native, "seed-switch"));
        out.push(review(&native, &overlay, "seed-rollback"));
        out.push(review(&overlay, &overlay, "seed-same"));
    }
    out
}

fn cluster() -> Arc<Cluster> {
    let c = Cluster::new(Settings {
        settle: Duration::ZERO,
        ..Settings::default()
    });
    c.routes.relist_begin();
    for (name, status, reason) in [
        ("node-a", "False", "RouteCreated"),
        ("node-b", "True", "NoRouteCreated"),
    ] {
        c.routes.relist_apply(
            serde_json::from_value::<overlay_switch_webhook::cluster::routes::RouteNode>(
                json!({"metadata": {"name": name}, "status": {"conditions": [
                {"type": "NetworkUnavailable", "status": status, "reason": reason,
                 "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}),
            )
            .unwrap(),
        );
    }
    c.routes.relist_done();
    c.toggle.relist_begin();
    c.toggle.relist_apply(
        serde_json::from_value(json!({"metadata": {"name": "kube-system", "annotations": {
            "calico.networking.extensions.gardener.cloud/seamless-overlay-switch": "true"}}}))
        .unwrap(),
    );
    c.toggle.relist_done();
    for k in CalicoKind::ALL {
        let s = c.held.store(k);
        s.relist_begin();
        s.relist_done();
    }
    c
}

/// Every JSON pointer in `v` (objects and arrays), the root included.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(c, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn strange_string(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => "x".repeat(1 + rng.below(256 * 1024)),
        1 => "Ελληνικά ✓ 🚀 \u{202e}rtl \u{0}nul \u{1b}[31m".into(),
        2 => "\n\r\t\"\\".repeat(1 + rng.below(100)),
        3 => String::new(),
        4 => "Never".into(),
        _ => format!("{}", rng.next()),
    }
}

fn nested(depth: usize) -> Value {
    let mut v = json!("bottom");
    for i in 0..depth {
        v = if i % 2 == 0 {
            json!([v])
        } else {
            json!({"n": v})
        };
    }
    v
}

/// Any mutation, structure-aware: the result may be anything.
fn mutate(v: &mut Value, rng: &mut Rng) {
    let mut ps = vec![];
    pointers(v, String::new(), &mut ps);
    let p = ps[rng.below(ps.len())].clone();
    let Some(target) = v.pointer_mut(&p) else {
        return;
    };
    *target = match rng.below(9) {
        // Swap the type.
        0 => match target.take() {
            Value::String(s) => s.parse::<f64>().map_or(json!(s.len()), |n| json!(n)),
            Value::Number(n) => json!(n.to_string()),
            Value::Bool(b) => json!(b.to_string()),
            Value::Null => json!({}),
            Value::Array(a) => json!({"0": a}),
            Value::Object(m) => Value::Array(m.into_values().collect()),
        },
        1 => Value::Null,
        2 => json!(strange_string(rng)),
        3 => nested(1 + rng.below(200)),
        4 => json!(-1),
        5 => json!(1e308),
        6 => json!(true),
        // Drop a field: the target's parent loses it.
        7 => {
            let (parent, key) = p.rsplit_once('/').unwrap_or(("", ""));
            let key = key.replace("~1", "/").replace("~0", "~");
            if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                m.remove(&key);
            }
            return;
        }
        _ => {
            let mut t = target.take();
            if let Value::Object(m) = &mut t {
                m.insert(strange_string(rng), json!(strange_string(rng)));
            }
            t
        }
    };
}

/// Noise that is no switch: annotations and labels on the new object, an
/// unknown field in the request, in userInfo, in metadata.
fn add_noise(v: &mut Value, rng: &mut Rng) {
    let key = format!("noise.example.com/k{}", rng.below(1000));
    match rng.below(4) {
        0 => {
            v["request"]["object"]["metadata"]["annotations"][&key] = json!(strange_string(rng));
        }
        1 => {
            v["request"]["object"]["metadata"]["labels"][&key] = json!("v");
        }
        2 => {
            v["request"]["options"] = json!({"kind": "UpdateOptions", "x": strange_string(rng)});
        }
        _ => {
            v["request"]["userInfo"]["extra"] = json!({key: [strange_string(rng)]});
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Decision {
    allowed: bool,
    patched: bool,
}

/// One review through the webhook, with every invariant checked; the
/// decision, when the input was a review.
fn check(webhook: &Webhook, input: &[u8]) -> Result<Option<Decision>, String> {
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| webhook.review(input)))
        .map_err(|_| "panicked".to_string())?
        .0;
    let resp: Value =
        serde_json::from_slice(&out).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if resp["kind"] != "AdmissionReview" || !resp["response"].is_object() {
        return Err(format!("no AdmissionReview response: {resp}"));
    }
    let response = &resp["response"];
    let parsed: Option<Value> = serde_json::from_slice(input).ok();
    let request = parsed.as_ref().map(|p| &p["request"]);
    if let Some(uid) = request.and_then(|r| r["uid"].as_str())
        && response["uid"] != uid
    {
        return Err(format!("uid {uid:?} not echoed: {}", response["uid"]));
    }
    let patched = match response["patch"].as_str() {
        None => false,
        Some(p) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| format!("patch not base64: {e}"))?;
            let patch: json_patch::Patch = serde_json::from_slice(&bytes)
                .map_err(|e| format!("patch not a JSON patch: {e}"))?;
            let mut object = request.map(|r| r["object"].clone()).unwrap_or(Value::Null);
            json_patch::patch(&mut object, &patch)
                .map_err(|e| format!("patch does not apply to the object: {e}"))?;
            true
        }
    };
    Ok(request.map(|_| Decision {
        allowed: response["allowed"] == true,
        patched,
    }))
}

struct Run {
    cases: u64,
    findings: Vec<String>,
}

fn run(seed: u64, cases: Option<u64>, time: Option<Duration>) -> Run {
    let webhook = Webhook {
        cluster: cluster(),
        metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
    };
    let seeds = seeds();
    let baseline: Vec<Decision> = seeds
        .iter()
        .map(|s| check(&webhook, s.to_string().as_bytes()).unwrap().unwrap())
        .collect();
    assert!(
        baseline.iter().any(|d| d.allowed && d.patched),
        "the seeds include held switches: {baseline:?}"
    );
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut r = Run {
        cases: 0,
        findings: vec![],
    };
    loop {
        if cases.is_some_and(|c| r.cases >= c) || time.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        let case = r.cases;
        r.cases += 1;
        let i = rng.below(seeds.len());
        let mut v = seeds[i].clone();
        let noise_only = rng.chance(30);
        let bytes = if noise_only {
            for _ in 0..1 + rng.below(3) {
                add_noise(&mut v, &mut rng);
            }
            v.to_string().into_bytes()
        } else {
            for _ in 0..1 + rng.below(4) {
                mutate(&mut v, &mut rng);
            }
            let mut b = v.to_string().into_bytes();
            match rng.below(10) {
                0 => b.truncate(rng.below(b.len())),
                1 => {
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(8);
                }
                _ => {}
            }
            b
        };
        match check(&webhook, &bytes) {
            Err(why) => r
                .findings
                .push(format!("seed {seed} case {case} (from seed review {i}): {why}")),
            Ok(Some(d)) if noise_only && d != baseline[i] => r.findings.push(format!(
                "seed {seed} case {case}: noise changed the decision of seed review {i}: {d:?} instead of {:?}",
                baseline[i]
            )),
            Ok(_) => {}
        }
    }
    r
}

#[test]
fn fuzz_the_review_path() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            if std::env::var("FUZZ_SECONDS").is_ok() {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            } else {
                20261129
            }
        });
    let time = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let cases = match time {
        Some(_) => None,
        None => Some(
            std::env::var("FUZZ_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3000),
        ),
    };
    let started = Instant::now();
    let r = run(seed, cases, time);
    eprintln!(
        "fuzz: seed {seed}, {} executions in {:.1?}, {} findings",
        r.cases,
        started.elapsed(),
        r.findings.len()
    );
    for f in r.findings.iter().take(20) {
        eprintln!("  {f}");
    }
    assert!(r.findings.is_empty(), "{} findings", r.findings.len());
}

/// Findings of the first runs (seed 20261129, cases 67 and 95): a switch of
/// an object whose metadata, or held part, is not an object got a hold
/// patch that could not apply to it. Now refused with a clear message.
#[test]
fn a_hold_that_cannot_apply_to_the_object_is_refused_clearly() {
    let webhook = Webhook {
        cluster: cluster(),
        metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
    };
    let seeds = seeds();
    let ds_switch = &seeds[0];
    let pool_switch = &seeds[6];
    let mut metadata_array = ds_switch.clone();
    metadata_array["request"]["object"]["metadata"] = json!([]);
    let mut metadata_string = pool_switch.clone();
    metadata_string["request"]["object"]["metadata"] = json!("x");
    for (name, v) in [
        ("metadata an array", metadata_array),
        ("metadata a string", metadata_string),
    ] {
        let (out, outcome) = webhook.review(v.to_string().as_bytes());
        let resp: Value = serde_json::from_slice(&out).unwrap();
        let r = &resp["response"];
        assert_eq!(r["allowed"], false, "{name}: {r}");
        assert!(r["patch"].is_null(), "{name}");
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot change this object"),
            "{name}: {r}"
        );
        assert_eq!(outcome.verdict, "refused");
        assert_eq!(
            check(&webhook, v.to_string().as_bytes()),
            Ok(Some(Decision {
                allowed: false,
                patched: false
            }))
        );
    }
}
