//! The Gardener extension's chart (charts/overlay-switch-webhook), checked
//! fast: no helm, no cluster. A small renderer below understands exactly the
//! template constructs the chart uses (and refuses any other, so the chart
//! stays simple); the rendered objects are then checked against each other,
//! against `overlay-switch-webhook serve --help`, and against what Gardener
//! needs in a seed:
//!
//! - every flag the Deployment passes to `serve` exists in the binary;
//! - `--webhook-base-url` is `https://<webhook Service>.<release namespace>:<its port>`,
//!   and that Service port reaches the container's `--listen-addr` port;
//! - the Service annotations of gardener-resource-manager's NetworkPolicy
//!   controller name the *pod* port (gardener/gardener
//!   docs/operations/network_policies.md, "Webhook Servers"), select the shoot
//!   namespaces, use the `extensions` alias, and the webhook Service exposes
//!   no other port (its namespace selectors apply to all of them);
//! - the pod labels that open egress to the seed's API server, DNS and every
//!   shoot's kube-apiserver;
//! - probes on the admin port, POD_NAME/POD_NAMESPACE, non-root, read-only root
//!   filesystem with the certificates folder on a writable volume;
//! - RBAC: the ServiceAccount the Deployment runs as is the one bound, and it
//!   is granted every verb the server uses in the seed (table below, with the
//!   code that uses it), with no wildcard and no list/watch of Secrets;
//! - selectors (Services, PDB) match the pod labels; the VPA targets the Deployment;
//! - `make chart` packages the chart with its folder at the top, reproducibly;
//! - the registration examples in manifests/gardener agree with each other
//!   and with the server's Extension type.
//!
//! tests/chart.rs renders the same chart with the real helm and applies it
//! to a real API server; this one is the quick check, and can fail: the
//! `mutated_*` tests break the chart on purpose and expect the check to say so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_overlay-switch-webhook");
const NS: &str = "extension-overlay-switch-webhook-x7k2p";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------
// The renderer: Go template syntax, as far as the chart uses it.

mod tpl {
    use std::collections::BTreeMap;

    use serde_json::Value;

    #[derive(Debug, Clone)]
    pub enum Node {
        Text(String),
        Expr(String),
        If(String, Vec<Node>, Vec<Node>),
        Range(String, Vec<Node>),
        Define(String, Vec<Node>),
    }

    /// Splits a template into text and actions, applying `{{-` / `-}}`
    /// (which trim all whitespace before / after) and dropping comments.
    fn lex(src: &str) -> Result<Vec<(bool, String)>, String> {
        let mut out: Vec<(bool, String)> = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(start) = rest.find("{{") {
            let mut text = rest[..start].to_string();
            if trim_next {
                text = text.trim_start().to_string();
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed action at {:?}", &rest[start..]))?;
            let mut inner = &after[..end];
            if let Some(s) = inner.strip_prefix("- ").or(inner.strip_prefix("-\n")) {
                text = text.trim_end().to_string();
                inner = s;
            }
            trim_next = false;
            if let Some(s) = inner.strip_suffix(" -").or(inner.strip_suffix("\n-")) {
                trim_next = true;
                inner = s;
            }
            out.push((false, text));
            let inner = inner.trim();
            if !(inner.starts_with("/*") && inner.ends_with("*/")) {
                out.push((true, inner.to_string()));
            }
            rest = &after[end + 2..];
        }
        let mut text = rest.to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        out.push((false, text));
        Ok(out)
    }

    pub fn parse(src: &str) -> Result<Vec<Node>, String> {
        let toks = lex(src)?;
        let mut it = toks.into_iter().peekable();
        let (nodes, end) = parse_until(&mut it)?;
        match end {
            None => Ok(nodes),
            Some(e) => Err(format!("unexpected {{{{ {e} }}}}")),
        }
    }

    type Toks = std::iter::Peekable<std::vec::IntoIter<(bool, String)>>;

    /// Nodes up to an `else` or `end` (returned) or the end of input (None).
    fn parse_until(it: &mut Toks) -> Result<(Vec<Node>, Option<String>), String> {
        let mut nodes = Vec::new();
        while let Some((action, s)) = it.next() {
            if !action {
                if !s.is_empty() {
                    nodes.push(Node::Text(s));
                }
                continue;
            }
            let (word, arg) = s.split_once(' ').unwrap_or((s.as_str(), ""));
            let arg = arg.trim().to_string();
            match word {
                "end" | "else" if arg.is_empty() => return Ok((nodes, Some(word.into()))),
                "end" | "else" => {
                    return Err(format!(
                        "{{{{ {s} }}}} is not supported here (keep the chart simple)"
                    ));
                }
                "if" => {
                    let (then, end) = parse_until(it)?;
                    let otherwise = match end.as_deref() {
                        Some("else") => match parse_until(it)? {
                            (n, Some(e)) if e == "end" => n,
                            _ => return Err(format!("if {arg}: else without end")),
                        },
                        Some("end") => Vec::new(),
                        _ => return Err(format!("if {arg} without end")),
                    };
                    nodes.push(Node::If(arg, then, otherwise));
                }
                "range" | "define" => {
                    let (body, end) = parse_until(it)?;
                    if end.as_deref() != Some("end") {
                        return Err(format!("{word} {arg} without end"));
                    }
                    nodes.push(if word == "range" {
                        Node::Range(arg, body)
                    } else {
                        Node::Define(arg.trim_matches('"').to_string(), body)
                    });
                }
                "with" | "template" | "block" => {
                    return Err(format!(
                        "{word} is not supported here (keep the chart simple)"
                    ));
                }
                _ => nodes.push(Node::Expr(s)),
            }
        }
        Ok((nodes, None))
    }

    pub struct Env<'a> {
        pub root: &'a Value,
        pub defines: &'a BTreeMap<String, Vec<Node>>,
    }

    pub fn collect_defines(nodes: &[Node], into: &mut BTreeMap<String, Vec<Node>>) {
        for n in nodes {
            if let Node::Define(name, body) = n {
                into.insert(name.clone(), body.clone());
            }
        }
    }

    pub fn render(env: &Env, nodes: &[Node], dot: &Value) -> Result<String, String> {
        let mut out = String::new();
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Define(..) => {}
                Node::Expr(e) => out.push_str(&text(&pipeline(env, e, dot)?, e)?),
                Node::If(c, then, otherwise) => {
                    let branch = if truthy(&pipeline(env, c, dot)?) {
                        then
                    } else {
                        otherwise
                    };
                    out.push_str(&render(env, branch, dot)?);
                }
                Node::Range(e, body) => match pipeline(env, e, dot)? {
                    Value::Array(items) => {
                        for item in &items {
                            out.push_str(&render(env, body, item)?);
                        }
                    }
                    Value::Null => {}
                    other => return Err(format!("range over {other}")),
                },
            }
        }
        Ok(out)
    }

    fn truthy(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    fn text(v: &Value, expr: &str) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("{{{{ {expr} }}}} prints {other}, not a scalar")),
        }
    }

    /// Words of a command, a quoted string being one word.
    fn words(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in s.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                c if c.is_whitespace() && !quoted => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn arg(env: &Env, w: &str, dot: &Value) -> Result<Value, String> {
        if let Some(s) = w.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            return Ok(Value::String(s.to_string()));
        }
        if let Ok(n) = w.parse::<i64>() {
            return Ok(n.into());
        }
        let (base, path) = if let Some(p) = w.strip_prefix('$') {
            (env.root, p)
        } else if w.starts_with('.') {
            (dot, w)
        } else {
            return Err(format!("{w:?} is not a value this renderer knows"));
        };
        let mut v = base;
        for key in path.split('.').filter(|k| !k.is_empty()) {
            v = v.get(key).ok_or_else(|| {
                format!("{w}: no value (every value needs a default in values.yaml)")
            })?;
        }
        Ok(v.clone())
    }

    fn pipeline(env: &Env, e: &str, dot: &Value) -> Result<Value, String> {
        let mut piped: Option<Value> = None;
        for cmd in e.split('|') {
            let w = words(cmd);
            let (f, rest) = w
                .split_first()
                .ok_or_else(|| format!("empty command in {e:?}"))?;
            let mut args = rest
                .iter()
                .map(|a| arg(env, a, dot))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(p) = piped.take() {
                args.push(p);
            }
            let s = |v: &Value| text(v, e);
            let n = |v: &Value| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or(format!("{e}: {v} is no count"))
            };
            let v = match (f.as_str(), args.as_slice()) {
                (f, []) if f.starts_with(['.', '$', '"']) => arg(env, f, dot)?,
                ("include", [name, d]) => {
                    let name = s(name)?;
                    let body = env
                        .defines
                        .get(&name)
                        .ok_or_else(|| format!("include of undefined {name:?}"))?;
                    Value::String(render(env, body, d)?)
                }
                ("toYaml", [v]) => {
                    let y = serde_saphyr::to_string(v).map_err(|err| err.to_string())?;
                    Value::String(y.trim_end_matches('\n').to_string())
                }
                ("indent", [k, v]) => Value::String(indent(n(k)?, &s(v)?)),
                ("nindent", [k, v]) => Value::String(format!("\n{}", indent(n(k)?, &s(v)?))),
                ("quote", [v]) => Value::String(format!("{:?}", s(v)?)),
                // Helm's `default D V`: V unless it is empty.
                ("default", [d, v]) => {
                    let empty = match v {
                        Value::Null => true,
                        Value::Bool(b) => !b,
                        Value::String(x) => x.is_empty(),
                        Value::Array(a) => a.is_empty(),
                        Value::Object(o) => o.is_empty(),
                        Value::Number(n) => n.as_f64() == Some(0.0),
                    };
                    if empty { d.clone() } else { v.clone() }
                }
                _ => {
                    return Err(format!(
                        "{cmd:?} is not supported here (keep the chart simple)"
                    ));
                }
            };
            piped = Some(v);
        }
        piped.ok_or_else(|| format!("empty action {e:?}"))
    }

    fn indent(k: usize, s: &str) -> String {
        let pad = " ".repeat(k);
        format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))
    }
}

// ---------------------------------------------------------------------------
// The chart, read from disk (and mutated in memory by the mutated_* tests).

#[derive(Clone)]
struct Chart {
    /// Path inside the chart folder -> text.
    files: BTreeMap<String, String>,
}

impl Chart {
    fn load() -> Chart {
        let dir = repo("charts/overlay-switch-webhook");
        let mut files = BTreeMap::new();
        for rel in ["Chart.yaml", "values.yaml"] {
            files.insert(rel.to_string(), read(&dir.join(rel)));
        }
        for e in std::fs::read_dir(dir.join("templates")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            files.insert(format!("templates/{name}"), read(&p));
        }
        Chart { files }
    }

    fn edit(&mut self, file: &str, from: &str, to: &str) {
        let t = self.files.get_mut(file).unwrap();
        assert!(t.contains(from), "{file} has no {from:?} to mutate");
        *t = t.replacen(from, to, 1);
    }

    /// The chart's objects with its values and `overrides` merged in, as
    /// Gardener installs it: into the release namespace NS.
    fn render(&self, overrides: Value) -> Result<Vec<Value>, String> {
        let mut values: Value = serde_saphyr::from_str(&self.files["values.yaml"]).unwrap();
        merge(&mut values, overrides);
        let chart: Value = serde_saphyr::from_str(&self.files["Chart.yaml"]).unwrap();
        let root = json!({
            "Values": values,
            "Release": {"Name": "overlay-switch-webhook-x7k2p", "Namespace": NS, "Service": "Helm"},
            "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        });
        let mut parsed = BTreeMap::new();
        let mut defines = BTreeMap::new();
        for (name, text) in self
            .files
            .iter()
            .filter(|(n, _)| n.starts_with("templates/"))
        {
            let nodes = tpl::parse(text).map_err(|e| format!("{name}: {e}"))?;
            tpl::collect_defines(&nodes, &mut defines);
            parsed.insert(name.clone(), nodes);
        }
        let env = tpl::Env {
            root: &root,
            defines: &defines,
        };
        let mut docs = Vec::new();
        for (name, nodes) in parsed.iter().filter(|(n, _)| !n.starts_with("templates/_")) {
            let out = tpl::render(&env, nodes, &root).map_err(|e| format!("{name}: {e}"))?;
            let rendered: Vec<Value> = serde_saphyr::from_multiple(&out)
                .map_err(|e| format!("{name} renders invalid YAML: {e}\n{out}"))?;
            for v in rendered {
                if !v.is_null() {
                    docs.push(v);
                }
            }
        }
        Ok(docs)
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

// ---------------------------------------------------------------------------
// What `serve` accepts.

struct Help {
    flags: BTreeSet<String>,
    text: String,
}

fn serve_help() -> Help {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "serve --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let flags = text
        .lines()
        .filter_map(|l| {
            // Option lines only: "      --flag ..." or "  -h, --help".
            let name = l
                .strip_prefix("      --")
                .or_else(|| l.strip_prefix("  -h, --"))?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some(format!("--{}", &name[..end]))
        })
        .collect();
    Help { flags, text }
}

impl Help {
    /// The `[default: ...]` of a flag in the help text.
    fn default_of(&self, flag: &str) -> Option<String> {
        let at = self.text.find(&format!("{flag} "))?;
        let rest = &self.text[at..];
        let next = rest[flag.len()..]
            .find("\n      --")
            .map_or(rest.len(), |i| i + flag.len());
        let block = &rest[..next];
        let d = block.find("[default: ")?;
        Some(block[d + 10..].split(']').next()?.to_string())
    }
}

// ---------------------------------------------------------------------------
// The checks: each returns what is wrong, in words.

fn one<'a>(docs: &'a [Value], kind: &str, p: &mut Vec<String>) -> Option<&'a Value> {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    if found.len() != 1 {
        p.push(format!("expected one {kind}, found {}", found.len()));
    }
    found.first().copied()
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj["metadata"]["annotations"][key].as_str()
}

fn json_annotation(obj: &Value, key: &str, p: &mut Vec<String>) -> Value {
    let name = &obj["metadata"]["name"];
    match annotation(obj, key) {
        None => {
            p.push(format!("Service {name} lacks the annotation {key}"));
            Value::Null
        }
        Some(s) => serde_json::from_str(s).unwrap_or_else(|e| {
            p.push(format!(
                "Service {name}: annotation {key} is not JSON ({e}): {s}"
            ));
            Value::Null
        }),
    }
}

fn port_of_addr(arg: &str) -> Option<u64> {
    arg.rsplit(':').next()?.parse().ok()
}

/// `targetPort` (a number or a container port's name) as a number.
fn target_port(port: &Value, container: &Value) -> Option<u64> {
    let t = if port["targetPort"].is_null() {
        &port["port"]
    } else {
        &port["targetPort"]
    };
    t.as_u64().or_else(|| {
        container["ports"]
            .as_array()?
            .iter()
            .find(|cp| cp["name"] == *t)?["containerPort"]
            .as_u64()
    })
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
}

/// One grant the server needs in the seed, and the code that needs it.
struct Need {
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    /// None: in every namespace (a ClusterRole); Some: in the release namespace.
    in_release_ns: bool,
    name: Option<&'static str>,
    why: &'static str,
}

const NEEDS: &[Need] = &[
    Need {
        group: "extensions.gardener.cloud",
        resource: "clusters",
        verbs: &["get", "list", "watch"],
        in_release_ns: false,
        name: None,
        why: "the Cluster watch (cli/serve_gardener.rs)",
    },
    Need {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        in_release_ns: false,
        name: None,
        why: "the shoots' access Secrets, read by name (gardener/access.rs)",
    },
    Need {
        group: "",
        resource: "secrets",
        verbs: &["create", "patch", "delete"],
        in_release_ns: false,
        name: None,
        why: "the registration Secret per shoot namespace, applied and removed (gardener/registration.rs)",
    },
    Need {
        group: "resources.gardener.cloud",
        resource: "managedresources",
        verbs: &["list", "create", "patch", "delete"],
        in_release_ns: false,
        name: None,
        why: "the registration ManagedResource per shoot namespace, applied, removed, and listed by label to find stale ones (gardener/registration.rs)",
    },
    Need {
        group: "extensions.gardener.cloud",
        resource: "extensions",
        verbs: &["list", "watch", "patch"],
        in_release_ns: false,
        name: None,
        why: "our Extension resources and their operation annotation (gardener/extension_controller.rs)",
    },
    Need {
        group: "extensions.gardener.cloud",
        resource: "extensions/status",
        verbs: &["patch"],
        in_release_ns: false,
        name: None,
        why: "lastOperation and the SystemComponentsHealthy condition (gardener/extension_controller.rs)",
    },
    Need {
        group: "",
        resource: "secrets",
        verbs: &["get", "create", "update"],
        in_release_ns: true,
        name: None,
        why: "--certificates-secret, made once and renewed (gardener/certificates.rs)",
    },
    Need {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["patch"],
        in_release_ns: true,
        name: Some("gardener-extension-heartbeat"),
        why: "the extension heartbeat, a server-side apply (gardener/extension_controller.rs)",
    },
    Need {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create"],
        in_release_ns: true,
        name: None,
        why: "the first server-side apply of the heartbeat creates it",
    },
];

struct Rule<'a> {
    rule: &'a Value,
    cluster_wide: bool,
    namespace: Option<String>,
}

fn has(list: &Value, x: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == x || v == "*"))
}

fn check(docs: &[Value], help: &Help, values: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(deploy) = one(docs, "Deployment", &mut p) else {
        return p;
    };
    let pod = &deploy["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];

    // serve and its flags.
    let args: Vec<&str> = container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if args.first() != Some(&"serve") || !args.contains(&"--gardener") {
        p.push(format!(
            "the container does not run `serve --gardener`: {args:?}"
        ));
    }
    let mut flags: BTreeMap<&str, &str> = BTreeMap::new();
    for a in args.iter().skip(1) {
        let (flag, value) = a.split_once('=').unwrap_or((a, ""));
        if !flag.starts_with("--") {
            p.push(format!("argument {a:?} is not a --flag"));
        } else if !help.flags.contains(flag) {
            p.push(format!("serve has no flag {flag} (the chart passes {a:?})"));
        }
        flags.insert(flag, value);
    }
    let listen = flags.get("--listen-addr").and_then(|a| port_of_addr(a));
    let admin = flags.get("--metrics-addr").and_then(|a| port_of_addr(a));
    let (Some(listen), Some(admin)) = (listen, admin) else {
        p.push("the chart must set --listen-addr and --metrics-addr with a port".into());
        return p;
    };
    let container_ports: BTreeSet<u64> = container["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["containerPort"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    for port in [listen, admin] {
        if !container_ports.contains(&port) {
            p.push(format!("the container declares no port {port}"));
        }
    }

    // The webhook Service and the base URL the shoots call.
    let services: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Service").collect();
    let hook_key = "networking.resources.gardener.cloud/from-all-webhook-targets-allowed-ports";
    let hooks: Vec<&&Value> = services
        .iter()
        .filter(|s| annotation(s, hook_key).is_some())
        .collect();
    match hooks.as_slice() {
        [svc] => {
            let name = svc["metadata"]["name"].as_str().unwrap_or("");
            let allowed = json_annotation(svc, hook_key, &mut p);
            if allowed != json!([{"protocol": "TCP", "port": listen}]) {
                p.push(format!(
                    "{hook_key} must allow the pod's webhook port {listen} (not the Service port): {allowed}"
                ));
            }
            let selectors = json_annotation(
                svc,
                "networking.resources.gardener.cloud/namespace-selectors",
                &mut p,
            );
            if !selectors.as_array().is_some_and(|a| {
                a.contains(&json!({"matchLabels": {"gardener.cloud/role": "shoot"}}))
            }) {
                p.push(format!("the webhook Service's namespace-selectors do not select the shoot namespaces: {selectors}"));
            }
            let alias = annotation(
                svc,
                "networking.resources.gardener.cloud/pod-label-selector-namespace-alias",
            );
            if alias != Some("extensions") {
                p.push(format!("the webhook Service's pod-label-selector-namespace-alias is {alias:?}, not \"extensions\""));
            }
            let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
            let to_hook: Vec<&Value> = ports
                .iter()
                .filter(|sp| target_port(sp, container) == Some(listen))
                .collect();
            if ports.len() != 1 || to_hook.len() != 1 {
                p.push(format!(
                    "the webhook Service must expose the webhook port {listen} only (its namespace selectors open every port to the shoots): {ports:?}"
                ));
            }
            if let Some(sp) = to_hook.first() {
                let want = format!("https://{name}.{NS}:{}", sp["port"]);
                if flags.get("--webhook-base-url") != Some(&want.as_str()) {
                    p.push(format!(
                        "--webhook-base-url is {:?}, the Service is reached at {want}",
                        flags.get("--webhook-base-url")
                    ));
                }
            }
        }
        _ => p.push(format!(
            "expected one Service with {hook_key}, found {}",
            hooks.len()
        )),
    }
    for svc in &services {
        if !selects(&svc["spec"]["selector"], pod_labels) {
            p.push(format!(
                "Service {} does not select the pods",
                svc["metadata"]["name"]
            ));
        }
    }

    // The admin port: probes, and the seed's Prometheus.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        let port = get["port"].as_u64().or_else(|| {
            container["ports"]
                .as_array()?
                .iter()
                .find(|cp| cp["name"] == get["port"])?["containerPort"]
                .as_u64()
        });
        if get["path"] != path || port != Some(admin) {
            p.push(format!(
                "{probe} must GET {path} on the admin port {admin}: {get}"
            ));
        }
    }
    let scrape = values["metrics"]["enableScraping"] == true;
    let pod_annotations = &pod["metadata"]["annotations"];
    let want_annotations =
        json!({"prometheus.io/scrape": "true", "prometheus.io/port": admin.to_string()});
    let has_scrape = want_annotations
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| pod_annotations[k] == *v)
        && pod_annotations["prometheus.io/name"].is_string();
    if scrape != has_scrape {
        p.push(format!(
            "metrics.enableScraping={scrape}, but the pod's prometheus.io annotations are {pod_annotations}"
        ));
    }
    let scrape_key =
        "networking.resources.gardener.cloud/from-all-seed-scrape-targets-allowed-ports";
    let metrics_services: Vec<&&Value> = services
        .iter()
        .filter(|s| annotation(s, scrape_key).is_some())
        .collect();
    match metrics_services.as_slice() {
        [svc] => {
            let allowed = json_annotation(svc, scrape_key, &mut p);
            if allowed != json!([{"protocol": "TCP", "port": admin}]) {
                p.push(format!(
                    "{scrape_key} must allow the admin port {admin}: {allowed}"
                ));
            }
            let selectors = json_annotation(
                svc,
                "networking.resources.gardener.cloud/namespace-selectors",
                &mut p,
            );
            if selectors != json!([{"matchLabels": {"kubernetes.io/metadata.name": "garden"}}]) {
                p.push(format!(
                    "the metrics Service must open to the garden namespace only: {selectors}"
                ));
            }
            if annotation(
                svc,
                "networking.resources.gardener.cloud/pod-label-selector-namespace-alias",
            ) != Some("extensions")
            {
                p.push("the metrics Service lacks the alias \"extensions\"".into());
            }
        }
        _ => p.push(format!(
            "expected one Service with {scrape_key}, found {}",
            metrics_services.len()
        )),
    }

    // Seed network policies: egress of the pods.
    for l in [
        "networking.gardener.cloud/to-runtime-apiserver",
        "networking.gardener.cloud/to-dns",
        "networking.resources.gardener.cloud/to-all-shoots-kube-apiserver-tcp-443",
    ] {
        if pod_labels[l] != "allowed" {
            p.push(format!("the pods lack the label {l}=allowed"));
        }
    }
    if deploy["metadata"]["labels"]["high-availability-config.resources.gardener.cloud/type"]
        != "server"
    {
        p.push("the Deployment is not typed a server for the high-availability webhook".into());
    }
    let replicas = &deploy["spec"]["replicas"];
    if deploy["metadata"]["annotations"]["high-availability-config.resources.gardener.cloud/replicas"]
        != json!(replicas.to_string())
    {
        p.push(format!(
            "the high-availability replicas annotation must equal spec.replicas {replicas}, else gardener-resource-manager overrides it"
        ));
    }

    // Environment, security, writable folders.
    let env = container["env"].as_array().cloned().unwrap_or_default();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        if !env
            .iter()
            .any(|e| e["name"] == name && e["valueFrom"]["fieldRef"]["fieldPath"] == field)
        {
            p.push(format!("env {name} is not taken from {field}"));
        }
    }
    if spec["securityContext"]["runAsNonRoot"] != true {
        p.push("the pod does not run as non-root".into());
    }
    let sc = &container["securityContext"];
    if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false {
        p.push(format!(
            "the container's root filesystem must be read-only, without privilege escalation: {sc}"
        ));
    }
    if flags.contains_key("--certificates-secret") {
        let dir = flags
            .get("--certificates-dir")
            .map(|s| s.to_string())
            .or_else(|| help.default_of("--certificates-dir"))
            .unwrap_or_default();
        let writable = container["volumeMounts"].as_array().is_some_and(|ms| {
            ms.iter().any(|m| {
                let mount = m["mountPath"].as_str().unwrap_or("-");
                let volume = spec["volumes"]
                    .as_array()
                    .and_then(|vs| vs.iter().find(|v| v["name"] == m["name"]));
                dir.starts_with(mount)
                    && m["readOnly"] != true
                    && volume.is_some_and(|v| v.get("emptyDir").is_some())
            })
        });
        if !writable {
            p.push(format!(
                "--certificates-dir {dir:?} is on the read-only root filesystem: mount an emptyDir there"
            ));
        }
    } else if !(flags.contains_key("--tls-cert-file") && flags.contains_key("--ca-file")) {
        p.push("neither --certificates-secret nor --tls-cert-file/--ca-file".into());
    }

    // Who the pods run as, and what that ServiceAccount may do.
    let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
    if !docs
        .iter()
        .any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == sa)
    {
        p.push(format!("the chart makes no ServiceAccount {sa}"));
    }
    let subject = json!({"kind": "ServiceAccount", "name": sa, "namespace": NS});
    let mut rules: Vec<Rule> = Vec::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let bound = b["subjects"]
            .as_array()
            .is_some_and(|s| s.contains(&subject));
        let role_kind = &b["roleRef"]["kind"];
        let Some(role) = docs
            .iter()
            .find(|d| d["kind"] == *role_kind && d["metadata"]["name"] == b["roleRef"]["name"])
        else {
            p.push(format!(
                "{} {} refers to a role the chart does not make",
                b["kind"], b["metadata"]["name"]
            ));
            continue;
        };
        if !bound {
            continue;
        }
        let cluster_wide = b["kind"] == "ClusterRoleBinding";
        let namespace = b["metadata"]["namespace"].as_str().map(str::to_string);
        for rule in role["rules"].as_array().into_iter().flatten() {
            rules.push(Rule {
                rule,
                cluster_wide,
                namespace: namespace.clone(),
            });
        }
    }
    for need in NEEDS {
        for verb in need.verbs {
            let granted = rules.iter().any(|r| {
                let scope =
                    r.cluster_wide || (need.in_release_ns && r.namespace.as_deref() == Some(NS));
                let names = &r.rule["resourceNames"];
                let by_name = names.is_null()
                    || need
                        .name
                        .is_some_and(|n| names.as_array().is_some_and(|a| a.contains(&json!(n))));
                scope
                    && has(&r.rule["apiGroups"], need.group)
                    && has(&r.rule["resources"], need.resource)
                    && has(&r.rule["verbs"], verb)
                    && by_name
            });
            if !granted {
                let group = if need.group.is_empty() {
                    "core"
                } else {
                    need.group
                };
                let place = if need.in_release_ns {
                    "its namespace"
                } else {
                    "every namespace"
                };
                p.push(format!(
                    "{sa} may not {verb} {group} {} in {place}: needed for {}",
                    need.resource, need.why
                ));
            }
        }
    }
    for r in &rules {
        for field in ["apiGroups", "resources", "verbs"] {
            if r.rule[field]
                .as_array()
                .is_some_and(|a| a.contains(&json!("*")))
            {
                p.push(format!("a rule grants {field} \"*\": {}", r.rule));
            }
        }
        if r.cluster_wide
            && has(&r.rule["apiGroups"], "")
            && has(&r.rule["resources"], "secrets")
            && (has(&r.rule["verbs"], "list") || has(&r.rule["verbs"], "watch"))
        {
            p.push(format!(
                "a cluster-wide rule lets the server list or watch every Secret of the seed (it reads them by name): {}",
                r.rule
            ));
        }
    }

    // Disruption budget and autoscaler.
    if let Some(pdb) = one(docs, "PodDisruptionBudget", &mut p)
        && !selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels)
    {
        p.push("the PodDisruptionBudget does not select the pods".into());
    }
    if !selects(&deploy["spec"]["selector"]["matchLabels"], pod_labels) {
        p.push("the Deployment's selector does not select its own pods".into());
    }
    if let Some(vpa) = docs.iter().find(|d| d["kind"] == "VerticalPodAutoscaler") {
        let t = &vpa["spec"]["targetRef"];
        if t["kind"] != "Deployment" || t["name"] != deploy["metadata"]["name"] {
            p.push(format!("the VPA targets {t}, not the Deployment"));
        }
        for cp in vpa["spec"]["resourcePolicy"]["containerPolicies"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if cp["containerName"] != container["name"] && cp["containerName"] != "*" {
                p.push(format!(
                    "the VPA names container {}, which does not exist",
                    cp["containerName"]
                ));
            }
        }
    }
    if spec["priorityClassName"].as_str().is_none_or(str::is_empty) {
        p.push("no priorityClassName".into());
    }
    for d in docs {
        let namespaced = !matches!(
            d["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        );
        if namespaced && d["metadata"]["namespace"] != NS {
            p.push(format!(
                "{} {} is not in the release namespace",
                d["kind"], d["metadata"]["name"]
            ));
        }
    }
    p
}

/// The chart rendered with `overrides` and checked; the problems.
fn problems(chart: &Chart, overrides: Value) -> Vec<String> {
    let mut values: Value = serde_saphyr::from_str(&chart.files["values.yaml"]).unwrap();
    merge(&mut values, overrides.clone());
    match chart.render(overrides) {
        Ok(docs) => check(&docs, &serve_help(), &values),
        Err(e) => vec![format!("rendering: {e}")],
    }
}

fn assert_clean(p: Vec<String>) {
    assert!(
        p.is_empty(),
        "the chart has problems:\n- {}",
        p.join("\n- ")
    );
}

fn assert_reports(p: Vec<String>, needle: &str) {
    assert!(
        p.iter().any(|x| x.contains(needle)),
        "expected a problem mentioning {needle:?}, got: {p:#?}"
    );
}

// ---------------------------------------------------------------------------

#[test]
fn the_chart_with_its_defaults_has_what_the_server_and_gardener_need() {
    assert_clean(problems(&Chart::load(), json!({})));
}

#[test]
fn the_chart_with_other_values_too() {
    let chart = Chart::load();
    for overrides in [
        json!({"vpa": {"enabled": true}}),
        json!({"metrics": {"enableScraping": false}}),
        json!({"replicaCount": 3, "service": {"name": "osw", "port": 8443}, "webhookPort": 10250, "metricsPort": 9090}),
        json!({"release": false, "calicoNodeUsers": ["a:b", "c:d"]}),
    ] {
        let p = problems(&chart, overrides.clone());
        assert!(p.is_empty(), "with {overrides}:\n- {}", p.join("\n- "));
    }
    let docs = chart.render(json!({"vpa": {"enabled": true}})).unwrap();
    assert!(docs.iter().any(|d| d["kind"] == "VerticalPodAutoscaler"));
    let docs = chart.render(json!({})).unwrap();
    assert!(!docs.iter().any(|d| d["kind"] == "VerticalPodAutoscaler"));
}

#[test]
fn the_gardener_flags_are_in_serve() {
    let help = serve_help();
    for f in [
        "--gardener",
        "--webhook-base-url",
        "--ca-file",
        "--certificates-secret",
        "--shoot-access-secret",
        "--shoot-access-fallback-secret",
        "--shoot-access-key",
        "--registration-name",
    ] {
        assert!(help.flags.contains(f), "serve has no {f}: {:?}", help.flags);
    }
    assert_eq!(
        help.default_of("--shoot-access-secret").as_deref(),
        Some("gardener-internal")
    );
}

#[test]
fn mutated_an_unknown_flag_is_reported() {
    let mut c = Chart::load();
    c.edit(
        "templates/deployment.yaml",
        "        - --gardener\n",
        "        - --gardener\n        - --no-such-flag=1\n",
    );
    assert_reports(problems(&c, json!({})), "serve has no flag --no-such-flag");
}

#[test]
fn mutated_network_policy_mistakes_are_reported() {
    let mut c = Chart::load();
    c.edit(
        "templates/service.yaml",
        r#""port":{{ .Values.webhookPort }}"#,
        r#""port":{{ .Values.service.port }}"#,
    );
    assert_reports(problems(&c, json!({})), "not the Service port");

    let mut c = Chart::load();
    c.edit(
        "templates/deployment.yaml",
        "        networking.gardener.cloud/to-dns: allowed\n",
        "",
    );
    assert_reports(
        problems(&c, json!({})),
        "networking.gardener.cloud/to-dns=allowed",
    );

    let mut c = Chart::load();
    c.edit(
        "templates/service.yaml",
        "  - name: https\n",
        "  - name: metrics\n    port: 8080\n    protocol: TCP\n  - name: https\n",
    );
    assert_reports(problems(&c, json!({})), "must expose the webhook port");
}

#[test]
fn mutated_rbac_gaps_and_excesses_are_reported() {
    let mut c = Chart::load();
    c.edit(
        "templates/rbac.yaml",
        "  resources: [\"clusters\"]\n  verbs: [\"get\", \"list\", \"watch\"]",
        "  resources: [\"clusters\"]\n  verbs: [\"get\", \"list\"]",
    );
    assert_reports(
        problems(&c, json!({})),
        "may not watch extensions.gardener.cloud clusters",
    );

    let mut c = Chart::load();
    c.edit(
        "templates/rbac.yaml",
        "  resources: [\"secrets\"]\n  verbs: [\"get\",",
        "  resources: [\"secrets\"]\n  verbs: [\"list\", \"get\",",
    );
    assert_reports(problems(&c, json!({})), "list or watch every Secret");

    let mut c = Chart::load();
    c.edit(
        "templates/rbac.yaml",
        "  name: overlay-switch-webhook\n  namespace:",
        "  name: someone-else\n  namespace:",
    );
    assert_reports(
        problems(&c, json!({})),
        "may not get extensions.gardener.cloud clusters",
    );
}

#[test]
fn mutated_a_read_only_certificates_folder_is_reported() {
    let mut c = Chart::load();
    c.edit(
        "templates/deployment.yaml",
        "        - --certificates-dir=/certs\n",
        "",
    );
    assert_reports(problems(&c, json!({})), "read-only root filesystem");
}

#[test]
fn the_renderer_refuses_what_it_does_not_know() {
    let mut c = Chart::load();
    c.edit(
        "templates/pdb.yaml",
        "{{ .Release.Namespace }}",
        "{{ .Release.Namespace | upper }}",
    );
    assert_reports(problems(&c, json!({})), "not supported here");
    let mut c = Chart::load();
    c.edit(
        "templates/pdb.yaml",
        "{{ .Release.Namespace }}",
        "{{ .Values.noSuchValue }}",
    );
    assert_reports(problems(&c, json!({})), "every value needs a default");
}

#[test]
fn the_renderer_trims_as_go_templates_do() {
    let nodes =
        tpl::parse("a:\n{{- if .x }}\n  b: {{ .y }}\n{{- end }}\nc: {{- \" d\" -}} \n e").unwrap();
    let root = json!({"x": true, "y": 1});
    let defines = BTreeMap::new();
    let env = tpl::Env {
        root: &root,
        defines: &defines,
    };
    assert_eq!(
        tpl::render(&env, &nodes, &root).unwrap(),
        "a:\n  b: 1\nc: de"
    );
}

// ---------------------------------------------------------------------------
// make chart, and the registration examples.

#[test]
fn make_chart_packages_the_chart_folder_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = dir.path().join(name);
        let o = Command::new(repo("scripts/package-chart.sh"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (out, String::from_utf8(o.stdout).unwrap())
    };
    let (a, b64) = run("a.tgz");
    let (b, _) = run("b.tgz");
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap(), "two packagings differ");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("stdout is the base64 of the package");
    assert_eq!(decoded, bytes);
    let list = Command::new("tar").arg("tzf").arg(&a).output().unwrap();
    let entries: BTreeSet<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for e in &entries {
        assert!(
            e == "overlay-switch-webhook" || e.starts_with("overlay-switch-webhook/"),
            "{e} is outside the chart folder"
        );
    }
    for rel in Chart::load().files.keys() {
        assert!(
            entries.contains(&format!("overlay-switch-webhook/{rel}")),
            "{rel} is not packaged: {entries:?}"
        );
    }
    let makefile = read(&repo("Makefile"));
    assert!(makefile.contains("\nchart:\n\t@scripts/package-chart.sh"));
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(&repo(rel))).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_registration_examples_agree() {
    let ext_type = overlay_switch_webhook::gardener::extension::EXTENSION_TYPE;
    let reg = yaml("manifests/gardener/controllerregistration.yaml");
    let dep = yaml("manifests/gardener/controllerdeployment.yaml");
    let op = yaml("manifests/gardener/extension.yaml");
    assert_eq!(reg["apiVersion"], "core.gardener.cloud/v1beta1");
    assert_eq!(dep["apiVersion"], "core.gardener.cloud/v1");
    assert_eq!(op["apiVersion"], "operator.gardener.cloud/v1alpha1");
    let want = json!([{"kind": "Extension", "type": ext_type, "primary": true}]);
    assert_eq!(reg["spec"]["resources"], want);
    assert_eq!(op["spec"]["resources"], want);
    // Deployed wherever there are shoots: the annotation, not spec.extensions,
    // turns the guard on (manifests/gardener/README.md).
    assert_eq!(reg["spec"]["deployment"]["policy"], "AlwaysExceptNoShoots");
    assert_eq!(
        op["spec"]["deployment"]["extension"]["policy"],
        "AlwaysExceptNoShoots"
    );
    // Gardener refuses a seedSelector for a primary controller.
    assert!(reg["spec"]["deployment"]["seedSelector"].is_null());
    assert!(op["spec"]["deployment"]["extension"]["seedSelector"].is_null());
    assert_eq!(
        reg["spec"]["deployment"]["deploymentRefs"],
        json!([{"name": dep["metadata"]["name"]}])
    );
    assert!(dep["helm"]["rawChart"].is_string());
    // The example values are values the chart has.
    let values: Value = serde_saphyr::from_str(&Chart::load().files["values.yaml"]).unwrap();
    for example in [
        &dep["helm"]["values"],
        &op["spec"]["deployment"]["extension"]["values"],
    ] {
        for (k, v) in example.as_object().unwrap() {
            assert!(
                !values[k].is_null(),
                "example value {k} is not in values.yaml"
            );
            if let Some(o) = v.as_object() {
                for k2 in o.keys() {
                    assert!(
                        !values[k][k2].is_null(),
                        "example value {k}.{k2} is not in values.yaml"
                    );
                }
            }
        }
    }
}

/// The image is never a moving tag: the chart's appVersion by default, or
/// pinned by digest.
#[test]
fn the_image_is_the_app_version_or_pinned_by_digest() {
    let chart = Chart::load();
    let image = |overrides: Value| {
        let docs = chart.render(overrides).unwrap();
        let mut p = Vec::new();
        let d = one(&docs, "Deployment", &mut p).unwrap();
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let app: Value = serde_saphyr::from_str(&chart.files["Chart.yaml"]).unwrap();
    let app = app["appVersion"].as_str().unwrap();
    assert_eq!(image(json!({})), format!("overlay-switch-webhook:{app}"));
    assert_eq!(
        image(json!({"image": {"repository": "r.example/osw", "tag": "0.2.0"}})),
        "r.example/osw:0.2.0"
    );
    let digest = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        image(json!({"image": {"repository": "r.example/osw", "tag": "0.2.0", "digest": digest}})),
        format!("r.example/osw@{digest}")
    );
    // The plain manifests name the crate's version, never `latest`.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(app, version, "Chart.yaml appVersion is the crate's version");
    let deployment = yaml("manifests/deployment.yaml");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        json!(format!("overlay-switch-webhook:{version}"))
    );
    let kustomization = yaml("manifests/kustomization.yaml");
    assert_eq!(kustomization["images"][0]["newTag"], json!(version));
}
