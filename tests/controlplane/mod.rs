//! Test harness: a real etcd and kube-apiserver on free loopback ports in a
//! temp dir, with an admin kubeconfig. Both processes are stopped and reaped
//! when the value is dropped, also when the test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The directory with kube-apiserver, etcd and kubectl (built once per test
/// process by tests/controlplane/build.sh, or $KUBEBUILDER_ASSETS).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed ({})", script.display(), out.status));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Kills the child when the test process dies, even by SIGKILL, so that no
/// etcd or kube-apiserver outlives a test run. (PR_SET_PDEATHSIG fires when
/// the spawning *thread* exits: each test owns its control plane on its own
/// thread, so that is the test's end.)
trait DieWithParent {
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A running etcd + kube-apiserver.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin: PathBuf,
    kubectl: PathBuf,
    url: String,
    kubeconfig: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

impl ControlPlane {
    pub fn start() -> anyhow::Result<ControlPlane> {
        match Self::try_start() {
            Ok(cp) => Ok(cp),
            // A free port may be taken between our probe and the bind: once more.
            Err(e) => {
                eprintln!("control plane start failed, retrying once: {e:#}");
                Self::try_start()
            }
        }
    }

    fn try_start() -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let bin = bin_dir()?;
        let kubectl = if bin.join("kubectl").exists() {
            bin.join("kubectl")
        } else {
            PathBuf::from("kubectl")
        };
        let dir = tempfile::Builder::new()
            .prefix("osw-controlplane-")
            .tempdir()?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let logdir = dir.path().to_path_buf();
        let log = |name: &str| -> anyhow::Result<Stdio> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(logdir.join(name))?;
            Ok(Stdio::from(file))
        };

        let mut cp = ControlPlane {
            bin: bin.clone(),
            kubectl,
            url: format!("https://127.0.0.1:{api_port}"),
            kubeconfig: dir.path().join("kubeconfig"),
            etcd: None,
            apiserver: None,
            dir,
        };
        let d = cp.dir.path().to_path_buf();

        cp.etcd = Some(
            Command::new(bin.join("etcd"))
                .args(["--name", "test", "--data-dir"])
                .arg(d.join("etcd"))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!(
                    "--initial-cluster=test=http://127.0.0.1:{peer_port}"
                ))
                // Tests need no durability: no fsync makes etcd fast on slow disks.
                .args([
                    "--unsafe-no-fsync",
                    "--quota-backend-bytes=1073741824",
                    "--log-level=warn",
                ])
                .stdin(Stdio::null())
                .stdout(log("etcd.log")?)
                .stderr(log("etcd.log")?)
                .die_with_parent()
                .spawn()
                .context("starting etcd")?,
        );
        cp.wait("etcd", Duration::from_secs(30), |cp| {
            cp.check_alive()?;
            Ok(port_open(etcd_port))
        })?;

        // Admin by static token (system:masters bypasses RBAC); RBAC on, so
        // tests can check what other identities may do.
        let token = format!("osw-admin-{}-{}", std::process::id(), api_port);
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )?;
        // Service-account signing key (for `kubectl create token`), made by rcgen.
        let sa_key = rcgen::KeyPair::generate()?;
        std::fs::create_dir_all(d.join("pki"))?;
        std::fs::write(d.join("pki/sa.key"), sa_key.serialize_pem())?;
        std::fs::write(d.join("pki/sa.pub"), sa_key.public_key_pem())?;

        cp.apiserver = Some(
            Command::new(bin.join("kube-apiserver"))
                .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
                .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
                .arg(format!("--secure-port={api_port}"))
                .arg(format!("--cert-dir={}", d.join("pki").display()))
                .arg(format!(
                    "--token-auth-file={}",
                    d.join("tokens.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg(format!(
                    "--service-account-key-file={}",
                    d.join("pki/sa.pub").display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    d.join("pki/sa.key").display()
                ))
                .args([
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--allow-privileged=true",
                ])
                // No controller manager runs: the ServiceAccount admission
                // plugin would wait for tokens no one makes.
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--enable-priority-and-fairness=false")
                .stdin(Stdio::null())
                .stdout(log("kube-apiserver.log")?)
                .stderr(log("kube-apiserver.log")?)
                .die_with_parent()
                .spawn()
                .context("starting kube-apiserver")?,
        );
        // The serving cert kube-apiserver makes in --cert-dir is for
        // localhost/127.0.0.1 and self-signed: trust exactly it.
        let ca = d.join("pki/apiserver.crt");
        cp.wait(
            "kube-apiserver serving cert",
            Duration::from_secs(60),
            |cp| {
                cp.check_alive()?;
                Ok(ca.exists())
            },
        )?;
        std::fs::write(
            &cp.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                 users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n\
                 current-context: test\n",
                cp.url,
                ca.display()
            ),
        )?;
        cp.wait("kube-apiserver /readyz", Duration::from_secs(90), |cp| {
            cp.check_alive()?;
            Ok(cp
                .kubectl_run(&["get", "--raw", "/readyz"], None)?
                .status
                .success())
        })?;
        cp.wait("namespace kube-system", Duration::from_secs(30), |cp| {
            Ok(cp
                .kubectl_run(&["get", "namespace", "kube-system"], None)?
                .status
                .success())
        })?;
        eprintln!("control plane up at {} in {:?}", cp.url, started.elapsed());
        Ok(cp)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut exited = None;
        for (name, child) in [
            ("etcd", &mut self.etcd),
            ("kube-apiserver", &mut self.apiserver),
        ] {
            if let Some(c) = child
                && let Some(status) = c.try_wait()?
            {
                exited = Some((name, status));
            }
        }
        match exited {
            Some((name, status)) => {
                bail!("{name} exited early with {status}: {}", self.log_tail(name))
            }
            None => Ok(()),
        }
    }

    fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut(&mut Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if ready(self)? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("timed out after {limit:?} waiting for {what}")
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn server_url(&self) -> &str {
        &self.url
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// (etcd, kube-apiserver) process ids.
    pub fn pids(&self) -> (u32, u32) {
        (
            self.etcd.as_ref().map_or(0, Child::id),
            self.apiserver.as_ref().map_or(0, Child::id),
        )
    }

    /// kubectl (the matching version) with --kubeconfig set.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        use std::io::Write as _;
        let mut cmd = self.kubectl();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

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

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    fn stop(child: &mut Option<Child>) {
        let Some(mut c) = child.take() else { return };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kube-apiserver log (tail) ---\n{}",
                self.log_tail("kube-apiserver")
            );
        }
        Self::stop(&mut self.apiserver);
        Self::stop(&mut self.etcd);
    }
}
