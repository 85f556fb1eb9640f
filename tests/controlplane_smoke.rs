//! The harness itself: a real control plane starts, answers kubectl and
//! kube::Client, extra API servers share its etcd but not its objects, and
//! no process is left behind: on drop, when the test body panics, and when
//! the test process is killed outright.

mod controlplane;

use std::time::{Duration, Instant};

use controlplane::ControlPlane;

/// Whether `pid` is a live process (a zombie, dead but not yet reaped by its
/// new parent, counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to be gone.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[tokio::test]
async fn starts_answers_and_stops_without_leftovers() {
    let cp = ControlPlane::start().unwrap();
    let t = cp.timings();
    eprintln!(
        "startup: etcd {:?}, kube-apiserver {:?}, total {:?}",
        t.etcd, t.apiserver, t.total
    );
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
    assert!(cp.dir().join("etcd.log").exists());
    assert!(cp.dir().join("kube-apiserver.log").exists());

    // kubectl verifies the serving cert against certificate-authority.
    let out = cp
        .kubectl_ok(&["get", "namespace", "kube-system", "-o", "name"], None)
        .unwrap();
    assert_eq!(out.trim(), "namespace/kube-system");
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\n  namespace: default\n";
    cp.kubectl_ok(&["apply", "-f", "-"], Some(yaml)).unwrap();
    let err = cp
        .kubectl_ok(&["get", "configmap", "no-such-thing"], None)
        .unwrap_err();
    assert!(format!("{err:#}").contains("NotFound"), "{err:#}");

    // So does kube::Client (rustls).
    let client = cp.client().await.unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let names: Vec<String> = namespaces
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");

    let (etcd, apiserver) = cp.pids();
    assert!(alive(etcd) && alive(apiserver));
    let pids = std::fs::read_to_string(cp.dir().join("pids")).unwrap();
    assert_eq!(pids, format!("etcd {etcd}\nkube-apiserver {apiserver}\n"));
    let dir = cp.dir().to_path_buf();

    let t = Instant::now();
    drop(cp);
    eprintln!("stopped in {:?}", t.elapsed());
    // Reaped by the drop: not even a zombie is left.
    assert!(
        !std::path::Path::new(&format!("/proc/{etcd}")).exists(),
        "etcd {etcd} left"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{apiserver}")).exists(),
        "kube-apiserver {apiserver} left"
    );
    if std::env::var_os(controlplane::KEEP_DIR_ENV).is_none() {
        assert!(!dir.exists(), "{} left", dir.display());
    }
}

#[test]
fn a_panicking_test_still_stops_every_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let cp = ControlPlane::start().unwrap();
        let extra = cp.start_apiserver("/panicking").unwrap();
        tx.send((cp.pids(), extra.pid())).unwrap();
        panic!("test body fails");
    });
    assert!(result.is_err());
    let ((etcd, apiserver), extra) = rx.recv().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{extra}")).exists(),
        "extra kube-apiserver {extra} left"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{etcd}")).exists(),
        "etcd {etcd} left"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{apiserver}")).exists(),
        "kube-apiserver {apiserver} left"
    );
}

/// PR_SET_PDEATHSIG fires when the forking *thread* ends: a control plane
/// started on a short-lived thread (say tokio's blocking pool) must survive it.
#[test]
fn outlives_the_thread_that_started_it() {
    let cp = std::thread::spawn(ControlPlane::start)
        .join()
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (etcd, apiserver) = cp.pids();
    assert!(alive(etcd), "etcd died with its starting thread");
    assert!(
        alive(apiserver),
        "kube-apiserver died with its starting thread"
    );
    cp.kubectl_ok(&["get", "namespace", "default"], None)
        .unwrap();
}

/// Extra API servers on the control plane's etcd are clusters of their own
/// (under their own etcd prefix), each with a self-contained kubeconfig,
/// and each stops on its own.
#[test]
fn extra_apiservers_share_etcd_but_not_objects() {
    let cp = ControlPlane::start().unwrap();
    let mut a = cp.start_apiserver("/smoke-a").unwrap();
    let b = cp.start_apiserver("/smoke-b").unwrap();
    eprintln!(
        "extra API servers up in {:?} and {:?}",
        a.startup(),
        b.startup()
    );
    assert!(
        cp.start_apiserver("/registry").is_err(),
        "the first's prefix"
    );
    assert!(cp.start_apiserver("relative").is_err());
    let urls = [cp.server_url(), a.server_url(), b.server_url()];
    assert!(
        urls[0] != urls[1] && urls[1] != urls[2] && urls[0] != urls[2],
        "{urls:?}"
    );
    assert_ne!(a.token(), b.token());
    assert_eq!(a.etcd_prefix(), "/smoke-a");
    assert_eq!(cp.api().etcd_prefix(), controlplane::DEFAULT_ETCD_PREFIX);

    // Objects made through one are invisible to the others.
    let yaml =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: only-in-a\n  namespace: default\n";
    a.kubectl_ok(&["apply", "-f", "-"], Some(yaml)).unwrap();
    a.kubectl_ok(&["create", "namespace", "ns-a"], None)
        .unwrap();
    b.kubectl_ok(&["create", "namespace", "ns-b"], None)
        .unwrap();
    for (other, name) in [(cp.api(), "first"), (&b, "b")] {
        let err = other
            .kubectl_ok(&["-n", "default", "get", "configmap", "only-in-a"], None)
            .unwrap_err();
        assert!(format!("{err:#}").contains("NotFound"), "{name}: {err:#}");
        assert!(
            other
                .kubectl_ok(&["get", "namespace", "ns-a"], None)
                .is_err(),
            "{name}"
        );
    }
    assert!(a.kubectl_ok(&["get", "namespace", "ns-b"], None).is_err());
    assert!(cp.kubectl_ok(&["get", "namespace", "ns-b"], None).is_err());

    // The kubeconfig is self-contained: it works copied anywhere, read by
    // another process.
    let text = a.kubeconfig_text();
    assert!(text.contains("certificate-authority-data:"), "{text}");
    assert!(!text.contains(a.dir().to_str().unwrap()), "{text}");
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("kubeconfig");
    std::fs::write(&copy, &text).unwrap();
    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .env("KUBECACHEDIR", elsewhere.path().join("cache"))
        .arg("--kubeconfig")
        .arg(&copy)
        .args([
            "-n",
            "default",
            "get",
            "configmap",
            "only-in-a",
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configmap/only-in-a"
    );

    // Stopping one leaves the others running; a dropped one is reaped too.
    let (pid_a, pid_b) = (a.pid(), b.pid());
    assert!(alive(pid_a) && alive(pid_b));
    a.stop();
    assert_eq!(a.pid(), 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid_a}")).exists(),
        "a left"
    );
    assert!(a.kubectl_ok(&["get", "namespace", "ns-a"], None).is_err());
    b.kubectl_ok(&["get", "namespace", "ns-b"], None).unwrap();
    cp.kubectl_ok(&["get", "namespace", "default"], None)
        .unwrap();
    let dir_b = b.dir().to_path_buf();
    drop(b);
    // Killed outright, as a crash.
    let mut c = cp.start_apiserver("/smoke-c").unwrap();
    let pid_c = c.pid();
    c.kill();
    assert_eq!(c.pid(), 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid_c}")).exists(),
        "c left"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid_b}")).exists(),
        "b left"
    );
    if std::env::var_os(controlplane::KEEP_DIR_ENV).is_none() {
        assert!(!dir_b.exists(), "{} left", dir_b.display());
    }
    cp.kubectl_ok(&["get", "namespace", "default"], None)
        .unwrap();
}

const CHILD_PIDFILE: &str = "CONTROLPLANE_SMOKE_PIDFILE";

/// Run by [`children_die_with_a_killed_test_process`] in a child test process:
/// starts a control plane, reports its pids, and waits to be killed.
#[test]
fn killed_test_process_helper() {
    let Some(pidfile) = std::env::var_os(CHILD_PIDFILE) else {
        return; // only as a helper
    };
    let cp = ControlPlane::start().unwrap();
    let extra = cp.start_apiserver("/killed").unwrap();
    let (etcd, apiserver) = cp.pids();
    let tmp = std::path::PathBuf::from(&pidfile).with_extension("tmp");
    let (dir, extra_dir) = (cp.dir().display(), extra.dir().display());
    let extra_pid = extra.pid();
    std::fs::write(
        &tmp,
        format!("{etcd} {apiserver} {extra_pid} {extra_dir} {dir}"),
    )
    .unwrap();
    std::fs::rename(&tmp, &pidfile).unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// SIGKILL of the test process runs no Drop: the children must still die.
#[test]
fn children_die_with_a_killed_test_process() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_test_process_helper", "--test-threads=1"])
        .env(CHILD_PIDFILE, &pidfile)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let pids = loop {
        if let Ok(s) = std::fs::read_to_string(&pidfile) {
            break s;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("helper test process exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "helper never started its control plane"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut words = pids.splitn(5, ' ');
    let etcd: u32 = words.next().unwrap().parse().unwrap();
    let apiserver: u32 = words.next().unwrap().parse().unwrap();
    let extra: u32 = words.next().unwrap().parse().unwrap();
    // Nothing in the killed process removes its temp dirs: this test does.
    let extra_dir = std::path::PathBuf::from(words.next().unwrap());
    let cp_dir = std::path::PathBuf::from(words.next().unwrap());
    assert!(alive(etcd) && alive(apiserver) && alive(extra));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        gone_within(etcd, Duration::from_secs(5)),
        "etcd {etcd} outlived its test process"
    );
    assert!(
        gone_within(apiserver, Duration::from_secs(5)),
        "kube-apiserver {apiserver} outlived its test process"
    );
    assert!(
        gone_within(extra, Duration::from_secs(5)),
        "the extra kube-apiserver {extra} outlived its test process"
    );
    std::fs::remove_dir_all(&cp_dir).unwrap();
    std::fs::remove_dir_all(&extra_dir).unwrap();
}
