//! Shared e2e plumbing: our real server binary against a real control plane,
//! registered as a URL webhook, plus kubectl helpers for nodes, fixtures and
//! the toggle. Every process is stopped and reaped on drop.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::controlplane::{ApiServer, ControlPlane};

pub const BIN: &str = env!("CARGO_BIN_EXE_overlay-switch-webhook");
pub const GUARD: &str = "calico.networking.extensions.gardener.cloud/seamless-overlay-switch";
pub const INTENT: &str = "calico.networking.extensions.gardener.cloud/overlay-switch-held-intent";
pub const FORCE_DELETE: &str =
    "calico.networking.extensions.gardener.cloud/overlay-switch-force-delete";
pub const SINCE: &str = "calico.networking.extensions.gardener.cloud/overlay-switch-held-since";

/// Gardener's overlay (IPIP) Calico objects, and their native variants in
/// release order.
pub const OVERLAY: [&str; 3] = [
    "gardener-calico/overlay-ipip/configmap-calico-config.yaml",
    "gardener-calico/overlay-ipip/daemonset-calico-node.yaml",
    "gardener-calico/overlay-ipip/ippool-default-ipv4.yaml",
];
pub const NATIVE_CM: &str = "gardener-calico/native/configmap-calico-config.yaml";
pub const NATIVE_DS: &str = "gardener-calico/native/daemonset-calico-node.yaml";
pub const NATIVE_POOL: &str = "gardener-calico/native/ippool-default-ipv4.yaml";
pub const NATIVE: [&str; 3] = [NATIVE_CM, NATIVE_POOL, NATIVE_DS];

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET on loopback; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Our server, as a child process.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
    pub certs: PathBuf,
    /// `serve --gardener`'s `--ca-file` (the CA bundle it writes into every
    /// registration), a copy of `certs/ca.crt` to begin with.
    pub ca_file: Option<PathBuf>,
    /// `serve --gardener`'s `--path-token-key-file`, as a key.
    pub path_key: Option<overlay_switch_webhook::gardener::path_token::PathKey>,
}

impl Server {
    /// Starts `serve` with the given kubeconfig and extra flags; waits for /healthz.
    pub fn start(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(dir, kubeconfig, None, |_| extra)
    }

    /// Starts `serve --gardener` against the seed's kubeconfig: per-shoot
    /// paths under `--webhook-base-url https://127.0.0.1:PORT`, the CA
    /// bundle for registrations from [`Self::ca_file`] (re-read every
    /// second), and the extra flags; waits for /healthz.
    pub fn start_gardener(dir: &Path, seed_kubeconfig: &Path, extra: &[&str]) -> Server {
        let ca_file = dir.join("ca-bundle.pem");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let ca = ca_file.clone();
        std::fs::create_dir_all(dir).unwrap();
        let key_file = dir.join("path-token.key");
        let key: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(37) ^ (std::process::id() as u8))
            .collect();
        std::fs::write(&key_file, &key).unwrap();
        let mut server = Self::launch(dir, seed_kubeconfig, Some(ca_file), move |port| {
            let mut args: Vec<String> = vec![
                "--gardener".into(),
                "--webhook-base-url".into(),
                format!("https://127.0.0.1:{port}"),
                "--ca-file".into(),
                ca.display().to_string(),
                "--path-token-key-file".into(),
                key_file.display().to_string(),
                "--tls-reload-interval".into(),
                "1s".into(),
            ];
            args.append(&mut extra);
            args
        });
        server.path_key =
            Some(overlay_switch_webhook::gardener::path_token::PathKey::new(&key).unwrap());
        server
    }

    /// The path of shoot `namespace`'s reviews on this server (with its
    /// token when the server has a path key).
    pub fn shoot_path(&self, namespace: &str) -> String {
        let token = self.path_key.as_ref().map(|k| k.token(namespace));
        overlay_switch_webhook::gardener::registration::shoot_path(namespace, token.as_deref())
    }

    /// `extra(port)`: the flags after the common ones, given the webhook port.
    fn launch(
        dir: &Path,
        kubeconfig: &Path,
        ca_file: Option<PathBuf>,
        extra: impl FnOnce(u16) -> Vec<String>,
    ) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let certs = dir.join("certs");
        let out = Command::new(BIN)
            .args(["certs", "--out-dir"])
            .arg(&certs)
            .output()
            .expect("run certs");
        assert!(
            out.status.success(),
            "certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(ca_file) = &ca_file {
            std::fs::copy(certs.join("ca.crt"), ca_file).unwrap();
        }
        let (port, metrics_port) = (free_port(), free_port());
        let log = dir.join(format!("server-{port}.log"));
        let child = Command::new(BIN)
            .args(["--log-format", "json", "serve"])
            .arg("--tls-cert-file")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(certs.join("tls.key"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--listen-addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args([
                "--settle-time",
                "0s",
                "--shutdown-delay",
                "0s",
                "--shutdown-drain",
                "2s",
            ])
            .args(extra(port))
            .env("RUST_LOG", "info,overlay_switch_webhook=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("start server");
        let mut server = Server {
            child: Some(child),
            port,
            metrics_port,
            log,
            certs,
            ca_file,
            path_key: None,
        };
        eventually("server /healthz", Duration::from_secs(20), || {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited with {status}: {}", server.log_text());
            }
            http_get(metrics_port, "/healthz").filter(|(s, _)| *s == 200)
        });
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The value of one metric line, matched by its full name+labels prefix.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn ready(&self) -> bool {
        matches!(http_get(self.metrics_port, "/readyz"), Some((200, _)))
    }

    pub fn wait_ready(&self) {
        eventually("server /readyz", Duration::from_secs(60), || {
            self.ready().then_some(())
        });
    }

    /// Stops the server with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- server log (last lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        self.stop();
    }
}

/// Node route condition to set.
#[derive(Debug, Clone, Copy)]
pub enum Cond<'a> {
    None,
    Routed,
    NoRoute,
    Other(&'a str, &'a str),
}

/// kubectl helpers for anything with an API server: an [`Env`]'s control
/// plane, or an extra API server (e.g. a Gardener shoot). Each panics with
/// kubectl's output when kubectl fails, unless it returns the outcome.
pub trait Kubectl {
    /// The API server kubectl talks to.
    fn api(&self) -> &ApiServer;

    fn kubectl(&self, args: &[&str]) -> String {
        self.api()
            .kubectl_ok(args, None)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
    }

    fn kubectl_in(&self, args: &[&str], stdin: &str) -> String {
        self.api()
            .kubectl_ok(args, Some(stdin))
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    fn kubectl_raw(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.api().kubectl_run(args, None).expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl set image` on calico-node's container; (success, stderr).
    fn set_calico_node_image(&self, image: &str) -> (bool, String) {
        let (ok, _, err) = self.kubectl_raw(&[
            "-n",
            "kube-system",
            "set",
            "image",
            "daemonset/calico-node",
            &format!("calico-node={image}"),
        ]);
        (ok, err)
    }

    /// The IPPool CRD, Gardener's overlay (IPIP) Calico objects and the
    /// given nodes.
    fn calico_objects(&self, nodes: &[(&str, Cond<'_>)]) {
        self.install_ippool_crd();
        self.create(&OVERLAY);
        for (name, cond) in nodes {
            self.add_node(name, *cond);
        }
    }

    fn install_ippool_crd(&self) {
        let crd = fixture("gardener-calico/crd-ippools.yaml");
        self.kubectl(&["apply", "-f", crd.to_str().unwrap()]);
        self.kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            "crd/ippools.crd.projectcalico.org",
        ]);
    }

    /// `kubectl create -f` of fixtures (relative to tests/fixtures).
    fn create(&self, fixtures: &[&str]) {
        for f in fixtures {
            self.kubectl(&["create", "-f", fixture(f).to_str().unwrap()]);
        }
    }

    /// `kubectl apply` of one fixture with extra flags; returns (ok, stdout, stderr).
    fn apply(&self, rel: &str, extra: &[&str]) -> (bool, String, String) {
        let path = fixture(rel);
        let mut args = vec!["apply", "-f", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.kubectl_raw(&args)
    }

    fn add_node(&self, name: &str, cond: Cond<'_>) {
        self.kubectl_in(
            &["create", "-f", "-"],
            &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n"),
        );
        self.set_node(name, cond);
    }

    fn set_node(&self, name: &str, cond: Cond<'_>) {
        let now = "2026-01-01T00:00:00Z";
        let conditions = match cond {
            Cond::None => "[]".to_string(),
            Cond::Routed => format!(
                r#"[{{"type":"NetworkUnavailable","status":"False","reason":"RouteCreated","message":"route created","lastTransitionTime":"{now}","lastHeartbeatTime":"{now}"}}]"#
            ),
            Cond::NoRoute => format!(
                r#"[{{"type":"NetworkUnavailable","status":"True","reason":"NoRouteCreated","message":"could not create route","lastTransitionTime":"{now}","lastHeartbeatTime":"{now}"}}]"#
            ),
            Cond::Other(status, reason) => format!(
                r#"[{{"type":"NetworkUnavailable","status":"{status}","reason":"{reason}","message":"other","lastTransitionTime":"{now}","lastHeartbeatTime":"{now}"}}]"#
            ),
        };
        let patch = format!(r#"{{"status":{{"conditions":{conditions}}}}}"#);
        self.kubectl(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// A JSONPath of a live object.
    fn get(&self, args: &[&str], jsonpath: &str) -> String {
        let jp = format!("jsonpath={jsonpath}");
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", &jp]);
        self.kubectl(&a)
    }

    fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap()
    }
}

impl Kubectl for ApiServer {
    fn api(&self) -> &ApiServer {
        self
    }
}

impl Kubectl for Env {
    fn api(&self) -> &ApiServer {
        self.cp.api()
    }
}

/// A control plane with our webhook registered (URL-based) and the overlay
/// Calico objects created.
pub struct Env {
    pub server: Server,
    pub cp: ControlPlane,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Control plane + server (admin kubeconfig) + webhook registration.
    pub fn start(extra: &[&str]) -> Env {
        let cp = ControlPlane::start().expect("control plane");
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), cp.kubeconfig(), extra);
        let env = Env { server, cp, dir };
        env.register_webhook();
        env
    }

    pub fn register_webhook(&self) {
        self.kubectl_in(&["apply", "-f", "-"], &webhook_config_for(&self.server));
    }

    /// The IPPool CRD, the overlay Calico objects and the given nodes;
    /// waits until the server is ready, called by the API server, sees the
    /// nodes, and has the guard as asked.
    pub fn calico_cluster(&self, nodes: &[(&str, Cond<'_>)], guard: bool) {
        self.calico_objects(nodes);
        self.server.wait_ready();
        self.wait_webhook_active();
        let routed = nodes
            .iter()
            .filter(|(_, c)| matches!(c, Cond::Routed))
            .count();
        self.wait_nodes(nodes.len(), routed);
        self.set_guard(guard);
    }

    pub fn set_guard(&self, on: bool) {
        let value = format!("{GUARD}={}", if on { "true" } else { "false" });
        self.kubectl(&[
            "annotate",
            "namespace",
            "kube-system",
            &value,
            "--overwrite",
        ]);
        let want = if on { 1.0 } else { 0.0 };
        eventually(
            "guard toggle seen by the server",
            Duration::from_secs(10),
            || (self.server.metric("overlay_switch_guard_enabled") == want).then_some(()),
        );
    }

    /// Waits until the server's route cache shows `with_route` of `total` nodes.
    pub fn wait_nodes(&self, total: usize, with_route: usize) {
        eventually(
            &format!("route cache at {with_route}/{total}"),
            Duration::from_secs(10),
            || {
                let m = self.server.metrics();
                let get = |name: &str| {
                    m.lines()
                        .find(|l| l.starts_with(&format!("{name} ")))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                };
                (get("overlay_switch_nodes") == Some(total as f64)
                    && get("overlay_switch_nodes_with_route") == Some(with_route as f64))
                .then_some(())
            },
        );
    }

    /// Reviews counted by the server for kind/decision/dry_run.
    pub fn reviews(&self, kind: &str, decision: &str, dry_run: bool) -> f64 {
        self.server.metric(&format!(
            "overlay_switch_admission_reviews_total{{kind=\"{kind}\",decision=\"{decision}\",dry_run=\"{dry_run}\"}}"
        ))
    }

    /// Waits until the API server really calls the webhook: dry-run
    /// annotations of calico-config (which must exist) until a review arrives.
    pub fn wait_webhook_active(&self) {
        eventually(
            "webhook called by the API server",
            Duration::from_secs(20),
            || {
                let before = self.reviews("ConfigMap", "Allowed", true);
                let _ = self.kubectl_raw(&[
                    "-n",
                    "kube-system",
                    "annotate",
                    "configmap",
                    "calico-config",
                    "e2e-probe=1",
                    "--overwrite",
                    "--dry-run=server",
                ]);
                (self.reviews("ConfigMap", "Allowed", true) > before).then_some(())
            },
        );
    }
}

/// The env var value of the calico-node container in a DaemonSet JSON.
pub fn env_value(ds: &serde_json::Value, name: &str) -> Option<String> {
    ds.pointer("/spec/template/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == "calico-node")?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
        .map(String::from)
}

/// Parses kubectl's `-o json` output of a dry-run apply.
pub fn parse_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A ClusterRole (get/list/watch on `resources`, as (resource, apiGroup))
/// bound to the ServiceAccount `default/osw-e2e`.
pub fn grant(cp: &ControlPlane, resources: &[(&str, &str)], suffix: &str) {
    let rules: String = resources
        .iter()
        .map(|(r, g)| {
            format!("- apiGroups: [\"{g}\"]\n  resources: [\"{r}\"]\n  verbs: [get, list, watch]\n")
        })
        .collect();
    let name = format!("osw-e2e-{suffix}");
    let yaml = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\nrules:\n{rules}---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\n\
         subjects:\n- kind: ServiceAccount\n  name: osw-e2e\n  namespace: default\n"
    );
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&yaml)).unwrap();
}

/// A kubeconfig for the ServiceAccount `default/osw-e2e` (created here),
/// allowed to read only `resources`.
pub fn sa_kubeconfig(cp: &ControlPlane, dir: &Path, resources: &[(&str, &str)]) -> PathBuf {
    cp.kubectl_ok(
        &["-n", "default", "create", "serviceaccount", "osw-e2e"],
        None,
    )
    .unwrap();
    grant(cp, resources, "base");
    let token = cp
        .kubectl_ok(
            &[
                "-n",
                "default",
                "create",
                "token",
                "osw-e2e",
                "--duration=2h",
            ],
            None,
        )
        .unwrap();
    kubeconfig_with_token(cp, dir, "osw-e2e", token.trim())
}

/// The admin kubeconfig with its user replaced by a bearer token.
pub fn kubeconfig_with_token(cp: &ControlPlane, dir: &Path, name: &str, token: &str) -> PathBuf {
    let admin = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let mut kc: serde_json::Value = serde_saphyr::from_str(&admin).unwrap();
    for user in kc["users"].as_array_mut().unwrap() {
        user["user"] = serde_json::json!({ "token": token });
    }
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_saphyr::to_string(&kc).unwrap()).unwrap();
    path
}

// --- Replicas, the release lease, admission policies ---

/// Name of the release lease in the Calico namespace.
pub const RELEASE_LEASE: &str = "overlay-switch-webhook-release";

/// manifests/ namespace, ServiceAccount and RBAC applied for real, and a
/// kubeconfig with a token of that ServiceAccount.
pub fn manifest_service_account_kubeconfig(cp: &ControlPlane, dir: &Path) -> PathBuf {
    for f in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        cp.kubectl_ok(
            &["apply", "-f", repo("manifests").join(f).to_str().unwrap()],
            None,
        )
        .unwrap();
    }
    let token = cp
        .kubectl_ok(
            &[
                "-n",
                "overlay-switch-webhook",
                "create",
                "token",
                "overlay-switch-webhook",
                "--duration=2h",
            ],
            None,
        )
        .unwrap();
    kubeconfig_with_token(cp, dir, "webhook", token.trim())
}

/// The URL-based MutatingWebhookConfiguration for `server`, rendered by
/// `webhook-config` with its CA.
pub fn webhook_config_for(server: &Server) -> String {
    let out = Command::new(BIN)
        .args(["webhook-config", "--mode", "url", "--ca-file"])
        .arg(server.certs.join("ca.crt"))
        .args([
            "--url",
            &format!("https://127.0.0.1:{}/mutate", server.port),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Registers `server` as the webhook (replacing any earlier registration)
/// and waits until the API server calls it.
pub fn register_webhook_at(cp: &ControlPlane, server: &Server) {
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&webhook_config_for(server)))
        .unwrap();
    let reviews = || {
        server.metric(
            "overlay_switch_admission_reviews_total{kind=\"ConfigMap\",decision=\"Allowed\",dry_run=\"true\"}",
        )
    };
    eventually(
        "webhook called at its new address",
        Duration::from_secs(20),
        || {
            let before = reviews();
            let _ = cp.kubectl_run(
                &[
                    "-n",
                    "kube-system",
                    "annotate",
                    "configmap",
                    "calico-config",
                    "e2e-probe=2",
                    "--overwrite",
                    "--dry-run=server",
                ],
                None,
            );
            (reviews() > before).then_some(())
        },
    );
}

/// SIGKILL: the process gets no chance to give anything up.
pub fn kill_hard(server: &Server) {
    let status = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until `server`'s route cache shows `with_route` of `total` nodes.
pub fn wait_nodes_on(server: &Server, total: usize, with_route: usize) {
    eventually(
        &format!("route cache at {with_route}/{total}"),
        Duration::from_secs(10),
        || {
            (server.metric("overlay_switch_nodes ") == total as f64
                && server.metric("overlay_switch_nodes_with_route ") == with_route as f64)
                .then_some(())
        },
    );
}

/// The release lease holder identity of `server`, from its log.
pub fn lease_identity(server: &Server) -> String {
    eventually(
        "release controller identity in the log",
        Duration::from_secs(10),
        || {
            server.log_text().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "release controller started")
                    .then(|| v["identity"].as_str().map(String::from))
                    .flatten()
            })
        },
    )
}

/// The release lease as kubectl shows it (`None` when it does not exist).
pub fn release_lease(cp: &ControlPlane) -> Option<serde_json::Value> {
    let out = cp
        .kubectl_run(
            &[
                "-n",
                "kube-system",
                "get",
                "lease",
                RELEASE_LEASE,
                "-o",
                "json",
            ],
            None,
        )
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// The holder of the release lease ("" when free or absent).
pub fn lease_holder(cp: &ControlPlane) -> String {
    release_lease(cp)
        .and_then(|l| {
            l.pointer("/spec/holderIdentity")?
                .as_str()
                .map(String::from)
        })
        .unwrap_or_default()
}

/// A ValidatingAdmissionPolicy (and its binding) refusing any ConfigMap
/// with `calico_backend: none`; waits until the API server enforces it.
pub fn deny_native_configmap(cp: &ControlPlane, name: &str) {
    let yaml = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {name}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["configmaps"]
  validations:
  - expression: "!has(object.data) || !('calico_backend' in object.data) || object.data.calico_backend != 'none'"
    message: "native routing is not allowed today"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {name}
spec:
  policyName: {name}
  validationActions: [Deny]
"#
    );
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&yaml)).unwrap();
    eventually("the policy enforced", Duration::from_secs(30), || {
        let out = cp
            .kubectl_run(
                &[
                    "-n",
                    "default",
                    "create",
                    "configmap",
                    "policy-probe",
                    "--from-literal=calico_backend=none",
                    "--dry-run=server",
                ],
                None,
            )
            .unwrap();
        String::from_utf8_lossy(&out.stderr)
            .contains("native routing is not allowed today")
            .then_some(())
    });
}

/// Deletes that policy and its binding.
pub fn allow_native_configmap(cp: &ControlPlane, name: &str) {
    cp.kubectl_ok(&["delete", "validatingadmissionpolicybinding", name], None)
        .unwrap();
    cp.kubectl_ok(&["delete", "validatingadmissionpolicy", name], None)
        .unwrap();
}

impl Env {
    /// Runs `f` while the webhook is not registered (an outage with a
    /// fail-open registration, or a registration removed for a while), then
    /// registers it again and waits until the API server calls it.
    pub fn without_webhook<T>(&self, f: impl FnOnce() -> T) -> T {
        self.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            "overlay-switch-webhook",
        ]);
        let out = f();
        self.register_webhook();
        self.wait_webhook_active();
        out
    }
}

// --- Node status: calico-node's writes of NetworkUnavailable ---

/// calico-node's user (its ServiceAccount in kube-system).
pub const CALICO_NODE_USER: &str = "system:serviceaccount:kube-system:calico-node";

/// The NetworkUnavailable condition calico-node writes: at start
/// (`False`, `CalicoIsUp`) and from its shutdown hook (`True`,
/// `CalicoIsDown`), as in projectcalico/calico
/// node/pkg/lifecycle/utils/utils.go (SetNodeNetworkUnavailableCondition).
pub fn calico_condition(status: &str, reason: &str) -> String {
    let message = if status == "True" {
        "Calico is shutting down on this node"
    } else {
        "Calico is running on this node"
    };
    format!(
        r#"{{"type":"NetworkUnavailable","status":"{status}","reason":"{reason}","message":"{message}","lastTransitionTime":"2026-06-01T00:00:00Z","lastHeartbeatTime":"2026-06-01T00:00:00Z"}}"#
    )
}

/// calico-node's writes of node status, on any cluster (a single-cluster
/// Env or a Gardener shoot).
pub trait NodeStatusWrites: Kubectl {
    /// A ClusterRole `name` that may get, patch and update nodes/status (as
    /// calico-node's own ClusterRole may), bound to each of `users`
    /// (`system:serviceaccount:<ns>:<name>`).
    fn grant_node_status(&self, name: &str, users: &[&str]) {
        let subjects: String = users
            .iter()
            .map(|u| {
                let mut parts = u.split(':').skip(2);
                let (ns, sa) = (parts.next().unwrap(), parts.next().unwrap());
                format!("- kind: ServiceAccount\n  name: {sa}\n  namespace: {ns}\n")
            })
            .collect();
        let yaml = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\nrules:\n\
             - apiGroups: [\"\"]\n  resources: [\"nodes\"]\n  verbs: [get, list, watch]\n\
             - apiGroups: [\"\"]\n  resources: [\"nodes/status\"]\n  verbs: [get, patch, update]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\n\
             subjects:\n{subjects}"
        );
        self.kubectl_in(&["apply", "-f", "-"], &yaml);
    }

    /// calico-node's write, as calico-node sends it: a strategic merge
    /// patch of nodes/status with one NetworkUnavailable condition, made as
    /// `user` (`None`: the admin). Returns (success, stdout, stderr).
    fn network_unavailable_write(
        &self,
        node: &str,
        status: &str,
        reason: &str,
        user: Option<&str>,
        extra: &[&str],
    ) -> (bool, String, String) {
        let patch = format!(
            r#"{{"status":{{"conditions":[{}]}}}}"#,
            calico_condition(status, reason)
        );
        let as_user = user.map(|u| format!("--as={u}"));
        let mut args = vec![
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=strategic",
            "-p",
            &patch,
        ];
        args.extend(as_user.as_deref());
        args.extend_from_slice(extra);
        self.kubectl_raw(&args)
    }

    /// The node's NetworkUnavailable conditions as stored.
    fn network_unavailable(&self, node: &str) -> Vec<serde_json::Value> {
        network_unavailable_of(&self.get_json(&["node", node]))
    }
}

impl<T: Kubectl + ?Sized> NodeStatusWrites for T {}

impl Env {
    /// Registers the webhook with `webhook-config --calico-node-user` for
    /// each of `users` (replacing the registration).
    pub fn register_webhook_for_users(&self, users: &[&str]) {
        let mut cmd = Command::new(BIN);
        cmd.args(["webhook-config", "--mode", "url", "--ca-file"])
            .arg(self.server.certs.join("ca.crt"))
            .args([
                "--url",
                &format!("https://127.0.0.1:{}/mutate", self.server.port),
            ]);
        for u in users {
            cmd.args(["--calico-node-user", u]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.kubectl_in(
            &["apply", "-f", "-"],
            &String::from_utf8(out.stdout).unwrap(),
        );
    }

    /// Waits until the API server sends `user`'s node status updates to
    /// the webhook: server-side dry runs of a calico-style write on `node`
    /// until a Node review arrives (`user` needs nodes/status patch).
    pub fn wait_node_status_webhook_active(&self, node: &str, user: &str) {
        eventually(
            "node status webhook called by the API server",
            Duration::from_secs(20),
            || {
                let before = self.reviews("Node", "Allowed", true);
                let _ = self.network_unavailable_write(
                    node,
                    "False",
                    "CalicoIsUp",
                    Some(user),
                    &["--dry-run=server"],
                );
                (self.reviews("Node", "Allowed", true) > before).then_some(())
            },
        );
    }

    /// Kept calico-node writes counted by the server for `reason`
    /// (`CalicoIsUp`, `CalicoIsDown`, `Other`).
    pub fn kept(&self, reason: &str) -> f64 {
        self.server.metric(&format!(
            "overlay_switch_node_conditions_kept_total{{reason=\"{reason}\"}}"
        ))
    }
}

/// The NetworkUnavailable conditions of a Node's JSON.
pub fn network_unavailable_of(node: &serde_json::Value) -> Vec<serde_json::Value> {
    node.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "NetworkUnavailable")
        .cloned()
        .collect()
}

/// Runs `overlay-switch-webhook [global..] status --kubeconfig K [extra..]`;
/// returns (exit code, stdout, stderr).
pub fn run_status(global: &[&str], kubeconfig: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(global)
        .args(["status", "--kubeconfig"])
        .arg(kubeconfig)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// --- Gardener mode: a seed, shoots on extra API servers, `serve --gardener` ---

/// The seed's CRDs (fixtures).
pub const CLUSTER_CRD: &str = "gardener/10-crd-extensions.gardener.cloud_clusters.yaml";
pub const MANAGED_RESOURCE_CRD: &str =
    "gardener/10-crd-resources.gardener.cloud_managedresources.yaml";
pub const EXTENSION_CRD: &str = "gardener/10-crd-extensions.gardener.cloud_extensions.yaml";
/// Installs the CRDs of `files` (fixtures) and waits until every CRD serves.
pub fn install_crds(cp: &ControlPlane, files: &[&str]) {
    for crd in files {
        cp.kubectl_ok(&["apply", "-f", fixture(crd).to_str().unwrap()], None)
            .unwrap();
    }
    cp.kubectl_ok(
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            "crd",
            "--all",
        ],
        None,
    )
    .unwrap();
}

/// Installs the seed's CRDs (Cluster, ManagedResource, Extension) and waits until they serve.
pub fn install_seed_crds(cp: &ControlPlane) {
    install_crds(cp, &[CLUSTER_CRD, MANAGED_RESOURCE_CRD, EXTENSION_CRD]);
}

/// The registration in a shoot namespace of the seed: the ManagedResource
/// (and the MutatingWebhookConfiguration it carries) and its Secret.
pub const REGISTRATION: &str = "overlay-switch-webhook";
pub const REGISTRATION_SECRET: &str = "managedresource-overlay-switch-webhook";
pub const REGISTRATION_KEY: &str = "mutatingwebhookconfiguration.yaml";
/// The label gardener-resource-manager puts on what it applies into a shoot.
pub const GRM_LABEL: (&str, &str) = ("resources.gardener.cloud/managed-by", "gardener");
/// The label on our objects in the seed.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "overlay-switch-webhook");
/// The label that keeps Gardener's webhook remediation off our registration.
pub const REMEDIATION_EXCLUDE: &str = "remediation.webhook.shoot.gardener.cloud/exclude";
/// The shoot access Secret (and its key) the server reads by default.
pub const ACCESS_SECRET: &str = "gardener-internal";
pub const ACCESS_KEY: &str = "kubeconfig";

/// One shoot of a [`Garden`]: its namespace in the seed (`shoot--p--a`),
/// the Shoot's guard annotation (`None`: not annotated) and its nodes.
pub struct ShootSpec<'a> {
    pub namespace: &'a str,
    pub guard: Option<&'a str>,
    pub nodes: &'a [(&'a str, Cond<'a>)],
}

/// A seed (a control plane with Gardener's Cluster and ManagedResource
/// CRDs), shoots (extra API servers on the seed's etcd, each with Calico's
/// overlay objects and its nodes; in the seed its namespace, its access
/// Secret and its `Cluster`), and our server in Gardener mode against the
/// seed. Dropped in field order: server, shoots, seed.
pub struct Garden {
    pub server: Server,
    pub shoots: Vec<(String, ApiServer)>,
    pub seed: ControlPlane,
    pub dir: tempfile::TempDir,
}

impl Garden {
    /// Starts everything (the shoots' API servers at once) and waits until
    /// the server is ready (the seed's Clusters synced).
    pub fn start(shoots: &[ShootSpec<'_>], extra: &[&str]) -> Garden {
        let seed = ControlPlane::start().expect("seed control plane");
        let apis: Vec<ApiServer> = std::thread::scope(|s| {
            let starts: Vec<_> = shoots
                .iter()
                .map(|spec| {
                    let prefix = format!("/{}", spec.namespace);
                    let seed = &seed;
                    s.spawn(move || seed.start_apiserver(&prefix))
                })
                .collect();
            starts
                .into_iter()
                .map(|h| h.join().unwrap().expect("shoot API server"))
                .collect()
        });
        let api = seed.api();
        install_seed_crds(&seed);
        for (spec, shoot) in shoots.iter().zip(&apis) {
            shoot.calico_objects(spec.nodes);
            api.kubectl(&["create", "namespace", spec.namespace]);
            api.kubectl_in(
                &["apply", "-f", "-"],
                &access_secret_yaml(spec.namespace, ACCESS_SECRET, &shoot.kubeconfig_text()),
            );
            api.kubectl_in(
                &["apply", "-f", "-"],
                &cluster_yaml(spec.namespace, spec.guard),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_gardener(dir.path(), seed.kubeconfig(), extra);
        server.wait_ready();
        Garden {
            server,
            shoots: shoots
                .iter()
                .map(|s| s.namespace.to_string())
                .zip(apis)
                .collect(),
            seed,
            dir,
        }
    }

    /// The seed's first API server.
    pub fn seed(&self) -> &ApiServer {
        self.seed.api()
    }

    /// The API server of the shoot in `namespace`.
    pub fn shoot(&self, namespace: &str) -> &ApiServer {
        &self
            .shoots
            .iter()
            .find(|(ns, _)| ns == namespace)
            .unwrap()
            .1
    }

    pub fn shoot_mut(&mut self, namespace: &str) -> &mut ApiServer {
        &mut self
            .shoots
            .iter_mut()
            .find(|(ns, _)| ns == namespace)
            .unwrap()
            .1
    }

    /// Sets the Shoot's guard annotation in its Cluster (`None` removes it).
    pub fn set_cluster_guard(&self, namespace: &str, guard: Option<&str>) {
        let value = guard.map_or("null".to_string(), |g| format!("{g:?}"));
        let patch = format!(
            r#"{{"spec":{{"shoot":{{"metadata":{{"annotations":{{"{GUARD}":{value}}}}}}}}}}}"#
        );
        self.seed()
            .kubectl(&["patch", "cluster", namespace, "--type=merge", "-p", &patch]);
    }

    /// The registration Secret of `namespace` in the seed (`None`: absent).
    pub fn registration_secret(&self, namespace: &str) -> Option<serde_json::Value> {
        get_if_exists(
            self.seed(),
            &["-n", namespace, "secret", REGISTRATION_SECRET],
        )
    }

    /// The ManagedResource of `namespace` in the seed (`None`: absent).
    pub fn managed_resource(&self, namespace: &str) -> Option<serde_json::Value> {
        get_if_exists(
            self.seed(),
            &[
                "-n",
                namespace,
                "managedresources.resources.gardener.cloud",
                REGISTRATION,
            ],
        )
    }

    /// The MutatingWebhookConfiguration carried by the registration Secret
    /// of `namespace`, decoded (`None`: no Secret).
    pub fn registered_config(&self, namespace: &str) -> Option<serde_json::Value> {
        let secret = self.registration_secret(namespace)?;
        Some(registered_config_of(&secret))
    }

    /// What gardener-resource-manager does with the registration: the
    /// MutatingWebhookConfiguration from the Secret, with its label added,
    /// applied into the shoot.
    pub fn apply_registration_into_shoot(&self, namespace: &str) -> serde_json::Value {
        let mut mwc = self
            .registered_config(namespace)
            .unwrap_or_else(|| panic!("no registration Secret in {namespace}"));
        mwc["metadata"]["labels"][GRM_LABEL.0] = GRM_LABEL.1.into();
        self.shoot(namespace)
            .kubectl_in(&["apply", "-f", "-"], &mwc.to_string());
        mwc
    }

    /// Registers the webhook in the shoot by hand, as `webhook-config`
    /// renders it, at the shoot's path.
    pub fn register_by_hand(&self, namespace: &str) {
        let out = Command::new(BIN)
            .args(["webhook-config", "--mode", "url", "--ca-file"])
            .arg(self.server.certs.join("ca.crt"))
            .args([
                "--url",
                &format!(
                    "https://127.0.0.1:{}{}",
                    self.server.port,
                    self.server.shoot_path(namespace)
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.shoot(namespace).kubectl_in(
            &["apply", "-f", "-"],
            &String::from_utf8(out.stdout).unwrap(),
        );
    }

    /// The row of `namespace` in the server's `/shoots` (`None`: not listed).
    pub fn shoot_report(&self, namespace: &str) -> Option<serde_json::Value> {
        self.server
            .shoots_report()
            .get("shoots")?
            .as_array()?
            .iter()
            .find(|s| s["namespace"] == namespace)
            .cloned()
    }

    /// Waits until the server serves `namespace` synced, with `total` nodes
    /// of which `with_route` have their route.
    pub fn wait_shoot_synced(&self, namespace: &str, total: usize, with_route: usize) {
        eventually(
            &format!("{namespace} served, synced, routes {with_route}/{total}"),
            Duration::from_secs(30),
            || {
                let r = self.shoot_report(namespace)?;
                (r["served"] == true
                    && r["synced"] == true
                    && r["nodes"] == total
                    && r["nodesWithRoute"] == with_route)
                    .then_some(())
            },
        );
    }

    /// Waits until the shoot's API server calls the webhook: server-side
    /// dry runs of an annotation of calico-config in the shoot until the
    /// server logs a line about a review of `namespace`.
    pub fn wait_shoot_webhook_called(&self, namespace: &str) {
        let shoot = self.shoot(namespace);
        let lines = || {
            self.server
                .log_text()
                .lines()
                .filter(|l| l.contains(namespace) && l.contains("review"))
                .count()
        };
        eventually(
            &format!("{namespace}'s API server calls the webhook"),
            Duration::from_secs(20),
            || {
                let before = lines();
                let _ = shoot.kubectl_raw(&[
                    "-n",
                    "kube-system",
                    "annotate",
                    "configmap",
                    "calico-config",
                    "e2e-probe=1",
                    "--overwrite",
                    "--dry-run=server",
                ]);
                (lines() > before).then_some(())
            },
        );
    }
}

/// `kubectl get ... -o json`, `None` when NotFound.
pub fn get_if_exists(api: &ApiServer, args: &[&str]) -> Option<serde_json::Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let (ok, out, err) = api.kubectl_raw(&a);
    if ok {
        return Some(parse_json(&out));
    }
    assert!(err.contains("NotFound"), "kubectl {a:?}: {err}");
    None
}

/// The MutatingWebhookConfiguration in a registration Secret (JSON).
pub fn registered_config_of(secret: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let data = secret["data"][REGISTRATION_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("no data key {REGISTRATION_KEY}: {secret}"));
    let yaml = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    serde_saphyr::from_slice(&yaml).unwrap_or_else(|e| {
        panic!(
            "{REGISTRATION_KEY} is not one YAML object ({e}):\n{}",
            String::from_utf8_lossy(&yaml)
        )
    })
}

/// A shoot access Secret as Gardener makes it: the kubeconfig under `kubeconfig`.
pub fn access_secret_yaml(namespace: &str, name: &str, kubeconfig: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "stringData": {ACCESS_KEY: kubeconfig},
    })
    .to_string()
}

/// A Gardener `Cluster` named after the shoot namespace, with the minimal
/// `spec.cloudProfile`, `spec.seed` and the Shoot in `spec.shoot`, annotated
/// with the guard `guard` when given.
pub fn cluster_yaml(namespace: &str, guard: Option<&str>) -> String {
    let name = namespace.rsplit("--").next().unwrap();
    let project = namespace.split("--").nth(1).unwrap_or("p");
    let mut shoot = serde_json::json!({
        "apiVersion": "core.gardener.cloud/v1beta1",
        "kind": "Shoot",
        "metadata": {"name": name, "namespace": format!("garden-{project}")},
        "spec": {
            "cloudProfileName": "local",
            "networking": {"type": "calico", "nodes": "10.250.0.0/16", "pods": "100.64.0.0/12"},
            "region": "local",
        },
        "status": {"technicalID": namespace},
    });
    if let Some(g) = guard {
        shoot["metadata"]["annotations"] = serde_json::json!({ GUARD: g });
    }
    serde_json::json!({
        "apiVersion": "extensions.gardener.cloud/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": namespace},
        "spec": {
            "cloudProfile": {
                "apiVersion": "core.gardener.cloud/v1beta1",
                "kind": "CloudProfile",
                "metadata": {"name": "local"},
            },
            "seed": {
                "apiVersion": "core.gardener.cloud/v1beta1",
                "kind": "Seed",
                "metadata": {"name": "local"},
            },
            "shoot": shoot,
        },
    })
    .to_string()
}

impl Server {
    /// `GET /shoots` on the admin port (JSON).
    pub fn shoots_report(&self) -> serde_json::Value {
        let (status, body) = http_get(self.metrics_port, "/shoots")
            .unwrap_or_else(|| panic!("GET /shoots: no answer"));
        assert_eq!(status, 200, "GET /shoots: {body}");
        parse_json(&body)
    }

    /// POSTs an AdmissionReview to `path` on the webhook port over TLS
    /// (trusting the server's own CA, as an API server would with the
    /// registration's caBundle); returns the HTTP status and the body.
    pub fn post_review(&self, path: &str, review: &serde_json::Value) -> (u16, serde_json::Value) {
        let ca = std::fs::read(self.certs.join("ca.crt")).unwrap();
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let body = review.to_string();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("POST {url}: {e}"));
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                (status, json)
            })
    }
}

/// A fixture as JSON.
pub fn fixture_json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// An AdmissionReview of an UPDATE from `old` to `new` (one of Calico's
/// objects), by an operator, as an API server sends it.
pub fn update_review(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    let api_version = new["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = new["kind"].as_str().unwrap();
    let resource = format!("{}s", kind.to_lowercase());
    let mut request = serde_json::json!({
        "uid": format!("e2e-{}", std::process::id()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "name": new["metadata"]["name"],
        "operation": "UPDATE",
        "userInfo": {"username": "e2e-operator"},
        "object": new,
        "oldObject": old,
        "dryRun": false,
    });
    if let Some(ns) = new["metadata"]["namespace"].as_str() {
        request["namespace"] = ns.into();
    }
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    })
}

/// The object as the API server would store it after `response` (the
/// AdmissionReview's `response`): `object` with its JSON patch applied.
pub fn patched(object: &serde_json::Value, response: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let mut stored = object.clone();
    if let Some(p) = response["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut stored, &patch).expect("the response's patch applies");
    }
    stored
}

/// The warnings of an AdmissionReview response, joined by newlines.
pub fn warnings_of(response: &serde_json::Value) -> String {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|w| w.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

// --- Held switches, as stored ---

/// calico-node as stored.
pub fn ds(env: &Env) -> serde_json::Value {
    env.get_json(&["-n", "kube-system", "daemonset", "calico-node"])
}

/// Whether `obj` carries a held-switch record.
pub fn has_record(obj: &serde_json::Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.as_object())
        .is_some_and(|a| a.contains_key(INTENT))
}

/// How many of the three Calico objects carry a record.
pub fn records(env: &Env) -> usize {
    [
        env.get_json(&["-n", "kube-system", "configmap", "calico-config"]),
        env.get_json(&["ippool", "default-ipv4-ippool"]),
        ds(env),
    ]
    .iter()
    .filter(|o| has_record(o))
    .count()
}

/// calico-config, the IPPool and calico-node all native, no record left.
pub fn native_everywhere(env: &Env) -> bool {
    env.get(
        &["-n", "kube-system", "configmap", "calico-config"],
        "{.data.calico_backend}",
    ) == "none"
        && env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}") == "Never"
        && env_value(&ds(env), "CALICO_IPV4POOL_IPIP").as_deref() == Some("Never")
        && records(env) == 0
}

/// Applies the native calico-config, IPPool and calico-node; each is held.
pub fn apply_native(env: &Env) {
    for f in NATIVE {
        let (ok, _, err) = env.apply(f, &[]);
        assert!(ok, "{f}: {err}");
        assert!(err.contains("overlay switch held"), "{f} not held: {err}");
    }
}
