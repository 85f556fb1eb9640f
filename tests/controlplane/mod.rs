//! Test harness: a real etcd and kube-apiserver on free loopback ports in a
//! temp dir, with an admin kubeconfig. Both processes are stopped and reaped
//! when the value is dropped, also when the test panics; and they die with the
//! test process even if that is killed outright (see [`spawn_tied`]).
//! [`ControlPlane::start_apiserver`] adds more kube-apiservers on the same
//! etcd, each under its own `--etcd-prefix` (so a cluster of its own), with
//! the same guarantees.
//!
//! Include it with `mod controlplane;` from a file in `tests/`. See
//! `tests/controlplane/README.md`.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long etcd may take to accept connections.
const ETCD_START: Duration = Duration::from_secs(30);
/// How long kube-apiserver may take to be ready (and create kube-system).
const APISERVER_START: Duration = Duration::from_secs(60);
/// How long each process may take to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of each log printed when a test panics or a start fails.
const LOG_TAIL_LINES: usize = 40;
/// Set (to anything) to keep the temp dir (logs, etcd data) after the test.
pub const KEEP_DIR_ENV: &str = "CONTROLPLANE_KEEP_DIR";

/// The directory with kube-apiserver, etcd and kubectl: what
/// `tests/controlplane/build.sh` prints (it builds them once, or uses
/// `$KUBEBUILDER_ASSETS`). Run once per test process.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/build.sh");
        // Progress (a first build takes minutes) goes straight to stderr.
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}), see its output above; it needs `go` to build \
                 kube-apiserver, etcd and kubectl, or set KUBEBUILDER_ASSETS to a \
                 directory that has them",
                script.display(),
                out.status
            ));
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        for b in ["etcd", "kube-apiserver"] {
            if !dir.join(b).is_file() {
                return Err(format!(
                    "{} printed {:?}, which has no {b}",
                    script.display(),
                    dir
                ));
            }
        }
        Ok(dir)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Spawns `cmd` so that the child gets SIGKILL when this test process dies,
/// however it dies (even by SIGKILL, where no Drop runs).
///
/// That is `PR_SET_PDEATHSIG`, which fires when the *thread* that forked the
/// child exits, not the process. Test threads, tokio's blocking pool
/// (`spawn_blocking` threads exit after 10 s idle) and runtime workers all come
/// and go, so every child is forked by one thread that lives as long as the
/// process. Each child also gets its own process group, so a Ctrl-C to
/// `cargo test` reaches only the test process (whose death then kills the
/// children), not etcd and kube-apiserver in some arbitrary order.
fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid) in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("controlplane-spawner".into())
            // Never returns: the static sender is never dropped.
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the control-plane spawner thread");
        tx
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("control-plane spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("control-plane spawner thread is gone"))?
}

/// `n` distinct free loopback ports. The listeners are held until all are
/// picked and then closed, so another process may take one before we bind it
/// again: [`ControlPlane::start`] retries once if that happens.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0")?;
    let mut ports = [0; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// One POST to etcd's JSON gateway on `port` (plain HTTP/1.1 on loopback).
fn etcd_post(port: u16, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let body = body.to_string();
    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).context("connecting to etcd")?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .context("reading etcd's reply")?;
    let (head, payload) = reply
        .split_once("\r\n\r\n")
        .context("etcd's reply has no body")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "etcd {path}: {head}: {payload}"
    );
    // The gateway may answer chunked: the JSON object is the part in braces.
    let json = &payload[payload.find('{').unwrap_or(0)..=payload.rfind('}').unwrap_or(0)];
    serde_json::from_str(json).with_context(|| format!("etcd {path}: {payload}"))
}

fn log_file(path: &Path) -> anyhow::Result<Stdio> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Stdio::from(f))
}

/// How long the last start took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// From spawning etcd until its client port accepts connections.
    pub etcd: Duration,
    /// From spawning kube-apiserver until `/readyz` is ok and namespace
    /// kube-system exists.
    pub apiserver: Duration,
    /// All of [`ControlPlane::start`] (binaries, temp dir, keys, both).
    pub total: Duration,
}

/// The last [`LOG_TAIL_LINES`] lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Fails if `child` has exited, with the tail of its log.
fn check_exited(name: &str, child: &mut Option<Child>, log: &Path) -> anyhow::Result<()> {
    if let Some(c) = child
        && let Some(status) = c.try_wait()?
    {
        bail!(
            "{name} exited early ({status}); last lines of {}:\n{}",
            log.display(),
            log_tail(log)
        );
    }
    Ok(())
}

/// Polls `ready` every 50 ms until it is Ok. Fails at once when `alive`
/// fails (a process exited), and after `limit` with the last error and the
/// tails of `logs`.
fn poll(
    what: &str,
    limit: Duration,
    logs: &[&Path],
    mut alive: impl FnMut() -> anyhow::Result<()>,
    mut ready: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        alive()?;
        let err = match ready() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() > limit {
            let tails: String = logs
                .iter()
                .map(|l| format!("\n--- {} ---\n{}", l.display(), log_tail(l)))
                .collect();
            bail!("timed out after {limit:?} waiting for {what} (last: {err:#}){tails}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; always reaped.
fn stop_child(child: &mut Option<Child>) {
    let Some(mut c) = child.take() else { return };
    if let Ok(None) = c.try_wait() {
        // SAFETY: plain kill(2). The pid is still ours: an unreaped child's
        // pid cannot be reused.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
    }
    let _ = c.wait();
}

/// kube-apiserver's default `--etcd-prefix`, the one of a control plane's
/// first API server.
pub const DEFAULT_ETCD_PREFIX: &str = "/registry";

/// One kube-apiserver on a [`ControlPlane`]'s etcd, under its own
/// `--etcd-prefix`: a cluster of its own (its objects are invisible to the
/// API servers under other prefixes), with its own port, admin token,
/// serving certificate, kubeconfig and kubectl. Dropping it stops it.
///
/// The control plane's first API server is one ([`ControlPlane::api`]);
/// [`ControlPlane::start_apiserver`] starts more.
pub struct ApiServer {
    /// The temp dir of an extra API server; `None` for the control plane's
    /// first (it lives in the control plane's dir), or once dropped with
    /// [`KEEP_DIR_ENV`] set.
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    kubectl: PathBuf,
    url: String,
    port: u16,
    token: String,
    etcd_prefix: String,
    kubeconfig: PathBuf,
    process: Option<Child>,
    /// From spawning it until it was ready.
    startup: Duration,
    /// Flags added to the defaults (e.g. `--admission-control-config-file`).
    extra_args: Vec<String>,
}

impl ApiServer {
    /// Not started yet: [`Self::spawn`], then [`Self::wait_ready`].
    fn new(
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        kubectl: PathBuf,
        port: u16,
        etcd_prefix: &str,
    ) -> ApiServer {
        ApiServer {
            tmp,
            kubeconfig: dir.join("kubeconfig"),
            dir,
            kubectl,
            url: format!("https://127.0.0.1:{port}"),
            port,
            token: format!("osw-admin-{}-{port}", std::process::id()),
            etcd_prefix: etcd_prefix.to_owned(),
            process: None,
            startup: Duration::ZERO,
            extra_args: Vec::new(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    /// Writes its token file and service-account key and starts it on the
    /// etcd at `etcd_port`.
    fn spawn(&mut self, bin: &Path, etcd_port: u16) -> anyhow::Result<()> {
        let d = &self.dir;
        // Admin by static token in group system:masters, which bypasses RBAC.
        std::fs::write(
            d.join("tokens.csv"),
            format!("{},admin,admin-uid,system:masters\n", self.token),
        )?;
        // Service-account token signing key (`kubectl create token`). ECDSA
        // P-256 by rcgen: instant, and no openssl CLI needed.
        let pki = d.join("pki");
        std::fs::create_dir_all(&pki)?;
        let sa_key = rcgen::KeyPair::generate().context("generating the SA key")?;
        std::fs::write(pki.join("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(pki.join("sa.pub"), sa_key.public_key_pem())?;

        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--etcd-prefix={}", self.etcd_prefix))
            .arg("--storage-backend=etcd3")
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            // A self-signed serving cert for 127.0.0.1 is made here.
            .arg(format!("--cert-dir={}", pki.display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            // RBAC, so tests can ask what other identities may do.
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            // No controller manager makes the `default` ServiceAccounts this
            // plugin would require of every Pod.
            .arg("--disable-admission-plugins=ServiceAccount")
            // Saves bootstrapping the flow-control objects.
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log_file(&self.log_path())?)
            .stderr(log_file(&self.log_path())?);
        self.process = Some(spawn_tied(apiserver).context("starting kube-apiserver")?);
        Ok(())
    }

    /// Waits until `/readyz` is ok, then writes the kubeconfig and waits
    /// for namespace kube-system. `etcd_alive` fails when etcd is gone;
    /// `etcd_log` is shown on a timeout.
    fn wait_ready(
        &mut self,
        started: Instant,
        mut etcd_alive: impl FnMut() -> anyhow::Result<()>,
        etcd_log: &Path,
    ) -> anyhow::Result<()> {
        // The serving cert (then its CA) appears in --cert-dir before the port
        // opens; it is all a client needs to trust.
        let ca = self.dir.join("pki").join("apiserver.crt");
        let log = self.log_path();
        let logs = [etcd_log, log.as_path()];
        let (port, token) = (self.port, self.token.clone());
        let process = &mut self.process;
        let mut alive = || {
            etcd_alive()?;
            check_exited("kube-apiserver", process, &log)
        };
        let mut probe = None;
        poll(
            "kube-apiserver /readyz",
            APISERVER_START,
            &logs,
            &mut alive,
            || {
                if probe.is_none() {
                    probe = Some(Probe::new(&ca, port, &token)?);
                }
                let (status, body) = probe.as_ref().expect("set above").get("/readyz?verbose")?;
                match status {
                    200 => Ok(()),
                    _ => bail!("HTTP {status}: {body}"),
                }
            },
        )?;
        let probe = probe.expect("set when ready");
        // Made by the apiserver itself, shortly after it starts.
        poll(
            "namespace kube-system",
            APISERVER_START,
            &logs,
            &mut alive,
            || {
                let (status, body) = probe.get("/api/v1/namespaces/kube-system")?;
                match status {
                    200 => Ok(()),
                    _ => bail!("HTTP {status}: {body}"),
                }
            },
        )?;
        self.write_kubeconfig(&ca)?;
        self.startup = started.elapsed();
        Ok(())
    }

    /// Self-contained: the CA is embedded, so the file works for any
    /// process, from anywhere, as long as this API server runs.
    fn write_kubeconfig(&self, ca: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let ca_data = base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
        let kubeconfig = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {url}
    certificate-authority-data: {ca_data}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
",
            url = self.url,
            token = self.token,
        );
        std::fs::write(&self.kubeconfig, kubeconfig).context("writing the kubeconfig")
    }

    /// The admin kubeconfig (token in group system:masters), self-contained
    /// (the CA embedded).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubeconfig's text, e.g. for a Secret.
    pub fn kubeconfig_text(&self) -> String {
        std::fs::read_to_string(&self.kubeconfig).expect("the kubeconfig is readable")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Its `--etcd-prefix`.
    pub fn etcd_prefix(&self) -> &str {
        &self.etcd_prefix
    }

    /// Its dir: kube-apiserver.log, kubeconfig, tokens.csv, pki/ (and, for
    /// the first API server, everything of the control plane).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its process id; 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Child::id)
    }

    /// From spawning it until it was ready.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path())
    }

    /// Stops it (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and reaps it;
    /// nothing if already stopped. Its etcd data stays. kube-apiserver
    /// waits for open watches before it exits, so with a client watching
    /// this takes the whole grace period: see [`Self::kill`].
    pub fn stop(&mut self) {
        stop_child(&mut self.process);
    }

    /// Kills it at once (SIGKILL, as a crash: its connections are reset)
    /// and reaps it; nothing if already stopped. Its etcd data stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.process.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kubectl (bin_dir's, else PATH's) with `--kubeconfig` set, and its
    /// discovery cache in this API server's dir (ports are reused between
    /// tests).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig);
        c
    }

    /// Runs kubectl with `args`, feeding it `stdin`, and returns its output
    /// whatever the exit status.
    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        // Written by another thread, so a kubectl that talks before it has
        // read everything cannot deadlock us.
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_owned();
                Some(std::thread::spawn(move || pipe.write_all(input.as_bytes())))
            }
            _ => None,
        };
        let out = child.wait_with_output()?;
        if let Some(w) = writer {
            // A broken pipe means kubectl exited early: its output says why.
            let _ = w.join();
        }
        Ok(out)
    }

    /// Like [`Self::kubectl_run`], returning stdout, or an error with stderr
    /// and stdout if kubectl failed.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let out = self.kubectl_run(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A client for the admin user, from the kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The first API server's log is shown (and the process stopped
        // first) by its control plane.
        if self.tmp.is_some() && std::thread::panicking() {
            eprintln!(
                "--- kube-apiserver {} (etcd prefix {}, {}) ---\n--- kube-apiserver.log (tail) ---\n{}\n---",
                self.url,
                self.etcd_prefix,
                self.dir.display(),
                self.log_tail()
            );
        }
        self.stop();
        if std::env::var_os(KEEP_DIR_ENV).is_some()
            && let Some(tmp) = self.tmp.take()
        {
            eprintln!("kube-apiserver dir kept: {}", tmp.keep().display());
        }
    }
}

/// A running etcd + kube-apiserver. Dropping it stops both.
pub struct ControlPlane {
    /// `None` once dropped with [`KEEP_DIR_ENV`] set.
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    bin: PathBuf,
    etcd_port: u16,
    etcd: Option<Child>,
    api: ApiServer,
    timings: Timings,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until `/readyz` is ok and
    /// namespace kube-system exists. Blocking; needs no async runtime (from an
    /// async test, calling it directly just blocks that test's thread).
    pub fn start() -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let bin = bin_dir()?;
        retry_taken_port(|| Self::try_start(&bin, started))
    }

    fn try_start(bin: &Path, started: Instant) -> anyhow::Result<ControlPlane> {
        let tmp = tempfile::Builder::new()
            .prefix("osw-controlplane-")
            .tempdir()
            .context("creating the control plane's temp dir")?;
        let d = tmp.path().to_path_buf();
        let [etcd_port, peer_port, api_port] = free_ports()?;

        // Built before anything is spawned: from here on, an early return
        // drops it, which stops whatever was started.
        let mut cp = ControlPlane {
            tmp: Some(tmp),
            dir: d.clone(),
            bin: bin.to_path_buf(),
            etcd_port,
            etcd: None,
            api: ApiServer::new(
                d.clone(),
                None,
                kubectl_in(bin),
                api_port,
                DEFAULT_ETCD_PREFIX,
            ),
            timings: Timings::default(),
        };

        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--name=default")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            // Tests need no durability; fsync is what makes etcd slow.
            .arg("--unsafe-no-fsync")
            // 512 MiB: far more than a test writes, far less than the default
            // 2 GiB mmap per test.
            .arg("--quota-backend-bytes=536870912")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_file(&cp.etcd_log())?)
            .stderr(log_file(&cp.etcd_log())?);
        let t = Instant::now();
        cp.etcd = Some(spawn_tied(etcd).context("starting etcd")?);
        cp.write_pids()?;
        let etcd_log = cp.etcd_log();
        poll(
            "etcd to accept connections",
            ETCD_START,
            &[&etcd_log],
            || check_exited("etcd", &mut cp.etcd, &etcd_log),
            || {
                if !port_open(etcd_port) {
                    bail!("port {etcd_port} closed");
                }
                Ok(())
            },
        )?;
        cp.timings.etcd = t.elapsed();

        let t = Instant::now();
        cp.api.spawn(bin, etcd_port)?;
        cp.write_pids()?;
        let ControlPlane { etcd, api, .. } = &mut cp;
        api.wait_ready(t, || check_exited("etcd", etcd, &etcd_log), &etcd_log)?;
        cp.timings.apiserver = t.elapsed();
        cp.timings.total = started.elapsed();
        eprintln!(
            "control plane up at {} in {:.2?} (etcd {:.2?}, kube-apiserver {:.2?}), dir {}",
            cp.api.url,
            cp.timings.total,
            cp.timings.etcd,
            cp.timings.apiserver,
            cp.dir.display()
        );
        Ok(cp)
    }

    /// Starts another kube-apiserver on this control plane's etcd, with
    /// `--etcd-prefix=etcd_prefix` (e.g. `/shoot-a`; not another API
    /// server's), its own free port, admin token, serving certificate,
    /// self-contained kubeconfig and temp dir, and waits until it is ready
    /// as [`Self::start`] does. It is a cluster of its own: it and the other
    /// API servers do not see each other's objects. Stop it with
    /// [`ApiServer::stop`] or by dropping it (drop it before the control
    /// plane, whose etcd it needs). About 300 MB each.
    pub fn start_apiserver(&self, etcd_prefix: &str) -> anyhow::Result<ApiServer> {
        self.start_apiserver_with(etcd_prefix, &[])
    }

    /// As [`Self::start_apiserver`], with `extra_args` added to its flags.
    pub fn start_apiserver_with(
        &self,
        etcd_prefix: &str,
        extra_args: &[String],
    ) -> anyhow::Result<ApiServer> {
        anyhow::ensure!(
            etcd_prefix.starts_with('/')
                && etcd_prefix.len() > 1
                && !etcd_prefix.contains(char::is_whitespace),
            "etcd prefix {etcd_prefix:?}: must be an absolute key path like /shoot-a"
        );
        anyhow::ensure!(
            etcd_prefix.trim_end_matches('/') != DEFAULT_ETCD_PREFIX,
            "etcd prefix {etcd_prefix:?} is the first API server's"
        );
        retry_taken_port(|| {
            let tmp = tempfile::Builder::new()
                .prefix("osw-apiserver-")
                .tempdir()
                .context("creating the API server's temp dir")?;
            let [port] = free_ports()?;
            let t = Instant::now();
            let mut api = ApiServer::new(
                tmp.path().to_path_buf(),
                Some(tmp),
                kubectl_in(&self.bin),
                port,
                etcd_prefix,
            );
            api.extra_args = extra_args.to_vec();
            api.spawn(&self.bin, self.etcd_port)?;
            std::fs::write(
                api.dir.join("pids"),
                format!("kube-apiserver {}\n", api.pid()),
            )
            .context("writing pids")?;
            let etcd_port = self.etcd_port;
            api.wait_ready(
                t,
                || {
                    if !port_open(etcd_port) {
                        bail!("etcd (port {etcd_port}) is gone");
                    }
                    Ok(())
                },
                &self.etcd_log(),
            )?;
            eprintln!(
                "kube-apiserver (etcd prefix {}) up at {} in {:.2?}, dir {}",
                api.etcd_prefix,
                api.url,
                api.startup,
                api.dir.display()
            );
            Ok(api)
        })
    }

    fn etcd_log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn write_pids(&self) -> anyhow::Result<()> {
        let (etcd, apiserver) = self.pids();
        std::fs::write(
            self.dir.join("pids"),
            format!("etcd {etcd}\nkube-apiserver {apiserver}\n"),
        )
        .context("writing pids")
    }

    /// The first API server (etcd prefix [`DEFAULT_ETCD_PREFIX`]), which
    /// the methods below are about.
    /// Kills the first kube-apiserver (SIGKILL, as a crash; etcd keeps
    /// everything): clients see their connections reset and refused.
    pub fn kill_apiserver(&mut self) {
        self.api.kill();
    }

    /// Starts the first kube-apiserver again after [`Self::kill_apiserver`],
    /// on the same port, certificates, token and etcd (so every kubeconfig
    /// stays valid), and waits until it is ready.
    pub fn start_apiserver_again(&mut self) -> anyhow::Result<()> {
        self.start_apiserver_again_with(&[])
    }

    /// As [`Self::start_apiserver_again`], with `extra_args` added to its
    /// flags (e.g. `--watch-cache=false`, so that watches go to etcd).
    pub fn start_apiserver_again_with(&mut self, extra_args: &[String]) -> anyhow::Result<()> {
        self.api.extra_args = extra_args.to_vec();
        let t = Instant::now();
        self.api.spawn(&self.bin, self.etcd_port)?;
        self.write_pids()?;
        let etcd_log = self.etcd_log();
        let ControlPlane { etcd, api, .. } = self;
        api.wait_ready(t, || check_exited("etcd", etcd, &etcd_log), &etcd_log)
    }

    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    /// Moves etcd's revision on by `writes` puts of a key no API server
    /// reads, then compacts etcd's history up to the new revision, through
    /// etcd's JSON gateway. Any watch resumed from an older resourceVersion
    /// then fails with 410 Gone. Returns the compacted revision.
    pub fn compact_etcd(&self, writes: usize) -> anyhow::Result<i64> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut revision = 0;
        for i in 0..writes {
            let reply = etcd_post(
                self.etcd_port,
                "/v3/kv/put",
                &serde_json::json!({"key": b64("/osw-test/bump"), "value": b64(&i.to_string())}),
            )?;
            revision = reply["header"]["revision"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .context("etcd put: no revision in its reply")?;
        }
        etcd_post(
            self.etcd_port,
            "/v3/kv/compaction",
            &serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )?;
        Ok(revision)
    }

    /// The admin kubeconfig (token in group system:masters).
    pub fn kubeconfig(&self) -> &Path {
        self.api.kubeconfig()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        self.api.server_url()
    }

    /// Where kube-apiserver, etcd and (usually) kubectl are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The temp dir: etcd.log, kube-apiserver.log, kubeconfig, pids, pki/.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        self.api.token()
    }

    /// (etcd, kube-apiserver) process ids; 0 for one not running.
    pub fn pids(&self) -> (u32, u32) {
        (self.etcd.as_ref().map_or(0, Child::id), self.api.pid())
    }

    /// How long the start took.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// kubectl (bin_dir's, else PATH's) with `--kubeconfig` set, and its
    /// discovery cache in the temp dir (ports are reused between tests).
    pub fn kubectl(&self) -> Command {
        self.api.command()
    }

    /// Runs kubectl with `args`, feeding it `stdin`, and returns its output
    /// whatever the exit status.
    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        self.api.kubectl_run(args, stdin)
    }

    /// Like [`Self::kubectl_run`], returning stdout, or an error with stderr
    /// and stdout if kubectl failed.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        self.api.kubectl_ok(args, stdin)
    }

    /// A client for the admin user, from the kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        self.api.client().await
    }
}

/// kubectl of `bin`, else PATH's (KUBEBUILDER_ASSETS may have none).
fn kubectl_in(bin: &Path) -> PathBuf {
    match bin.join("kubectl") {
        k if k.is_file() => k,
        _ => PathBuf::from("kubectl"),
    }
}

/// Runs `start`, and once more if it failed because another process took
/// one of our free ports before we bound it.
fn retry_taken_port<T>(mut start: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match start() {
        Err(e) if format!("{e:#}").contains("address already in use") => {
            eprintln!("control plane: a port was taken, retrying once: {e:#}");
            start()
        }
        r => r,
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- control plane {} ({}) ---\n--- etcd.log (tail) ---\n{}\n--- kube-apiserver.log (tail) ---\n{}\n---",
                self.api.url,
                self.dir.display(),
                log_tail(&self.etcd_log()),
                self.api.log_tail()
            );
        }
        self.api.stop();
        stop_child(&mut self.etcd);
        if std::env::var_os(KEEP_DIR_ENV).is_some()
            && let Some(tmp) = self.tmp.take()
        {
            eprintln!("control plane dir kept: {}", tmp.keep().display());
        }
    }
}

/// A minimal HTTPS GET against kube-apiserver (readiness polls without
/// spawning kubectl), trusting exactly the serving cert bundle in `ca`.
struct Probe {
    config: Arc<rustls::ClientConfig>,
    port: u16,
    token: String,
}

impl Probe {
    fn new(ca: &Path, port: u16, token: &str) -> anyhow::Result<Probe> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", ca.display()))?;
        // Not yet written completely: the serving cert comes before its CA.
        if certs.len() < 2 {
            bail!("{} is incomplete", ca.display());
        }
        for cert in certs {
            roots.add(cert)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Probe {
            config: Arc::new(config),
            port,
            token: token.to_owned(),
        })
    }

    /// (status, body) of `GET path`.
    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let conn = rustls::ClientConnection::new(self.config.clone(), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            self.port, self.token
        )?;
        tls.flush()?;
        let mut buf = Vec::new();
        match tls.read_to_end(&mut buf) {
            Ok(_) => {}
            // Closed without close_notify: what was read is still the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP response: {head:?}"))?;
        Ok((status, body.trim().to_owned()))
    }
}
