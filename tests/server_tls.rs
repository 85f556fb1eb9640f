//! The server over a real TLS socket, without a cluster: reviews, bad input,
//! probes and metrics.

use std::sync::Arc;
use std::time::Duration;

use overlay_switch_webhook::cluster::{Cluster, Settings};
use overlay_switch_webhook::server::{self, AppState};
use serde_json::{Value, json};

struct Running {
    port: u16,
    ca_pem: String,
    url: String,
    admin: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task.take().unwrap())
            .await
            .expect("server stops")
            .unwrap();
    }
}

async fn start() -> Running {
    start_with(server::limits::Limits::default()).await
}

async fn start_with(limits: server::limits::Limits) -> Running {
    let bundle = overlay_switch_webhook::server::certs::generate(
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        1,
    )
    .unwrap();
    let tls = overlay_switch_webhook::server::tls::server_config_from_pem(
        bundle.tls_cert_pem.as_bytes(),
        bundle.tls_key_pem.as_bytes(),
    )
    .unwrap();
    let state = AppState::new(Cluster::new(Settings::default()), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_port = admin.local_addr().unwrap().port();
    let router = server::admin_router(state.clone());
    tokio::spawn(async move {
        axum::serve(admin, router).await.unwrap();
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_tls(
        listener,
        Arc::new(tls),
        server::webhook_router(state),
        async {
            let _ = rx.await;
        },
        Duration::from_secs(2),
        limits,
    ));
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(bundle.ca_cert_pem.as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    Running {
        port,
        ca_pem: bundle.ca_cert_pem.clone(),
        url: format!("https://127.0.0.1:{port}/mutate"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        client,
        stop: Some(tx),
        task: Some(task),
    }
}

fn review(
    kind: (&str, &str, &str),
    name: &str,
    ns: Option<&str>,
    op: &str,
    old: Value,
    new: Value,
) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "resource": {"group": kind.0, "version": kind.1, "resource": "x"},
            "name": name,
            "namespace": ns,
            "operation": op,
            "userInfo": {"username": "admin"},
            "object": new,
            "oldObject": old,
            "dryRun": true
        }
    })
}

fn pool(mode: &str) -> Value {
    json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
           "metadata": {"name": "default-ipv4-ippool", "uid": "u1"},
           "spec": {"cidr": "100.64.0.0/12", "ipipMode": mode, "vxlanMode": "Never"}})
}

async fn post(r: &Running, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    let resp = r
        .client
        .post(&r.url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_valid_review_gets_a_well_formed_response_with_its_uid() {
    let r = start().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}});
    let body = review(
        ("", "v1", "Pod"),
        "p",
        Some("default"),
        "UPDATE",
        pod.clone(),
        pod,
    );
    let (status, resp) = post(&r, serde_json::to_vec(&body).unwrap(), "application/json").await;
    assert_eq!(status, 200);
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(
        resp["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(resp["response"]["allowed"], true);
    assert!(
        resp["response"].get("patch").is_none(),
        "objects that are not Calico's get no patch"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_switch_while_the_state_is_unknown_is_held_with_a_patch_and_a_warning() {
    let r = start().await;
    let body = review(
        ("crd.projectcalico.org", "v1", "IPPool"),
        "default-ipv4-ippool",
        None,
        "UPDATE",
        pool("Always"),
        pool("Never"),
    );
    let (_, resp) = post(&r, serde_json::to_vec(&body).unwrap(), "application/json").await;
    let resp = &resp["response"];
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let warning = resp["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("overlay switch held: guard state unknown"),
        "{warning}"
    );
    // The patch, applied to the new object, restores the overlay and records the intent.
    // []byte on the Go side: kube-rs sends the bytes as a JSON array, which
    // the API server decodes as well as base64.
    let bytes: Vec<u8> = match &resp["patch"] {
        Value::String(b64) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        }
        Value::Array(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        other => panic!("no patch: {other}"),
    };
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut obj = pool("Never");
    json_patch::patch(&mut obj, &patch.0).unwrap();
    assert_eq!(obj["spec"]["ipipMode"], "Always");
    assert!(
        obj["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .contains_key("calico.networking.extensions.gardener.cloud/overlay-switch-held-intent")
    );

    // A rollback is never held; CREATE is never held.
    let body = review(
        ("crd.projectcalico.org", "v1", "IPPool"),
        "default-ipv4-ippool",
        None,
        "UPDATE",
        pool("Never"),
        pool("Always"),
    );
    let (_, resp) = post(&r, serde_json::to_vec(&body).unwrap(), "application/json").await;
    assert!(resp["response"].get("patch").is_none());
    let body = review(
        ("crd.projectcalico.org", "v1", "IPPool"),
        "default-ipv4-ippool",
        None,
        "CREATE",
        Value::Null,
        pool("Never"),
    );
    let (_, resp) = post(&r, serde_json::to_vec(&body).unwrap(), "application/json").await;
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"].get("patch").is_none());
    r.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_response() {
    let r = start().await;
    // Not JSON at all.
    let (status, resp) = post(&r, b"{not json".to_vec(), "application/json").await;
    assert_eq!(status, 200);
    assert_eq!(resp["response"]["allowed"], false);
    assert_eq!(resp["response"]["status"]["code"], 400);
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not a JSON AdmissionReview")
    );

    // A review with a uid but a broken request: the uid is echoed.
    let bad = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                     "request": {"uid": "abc", "operation": 42}});
    let (_, resp) = post(&r, serde_json::to_vec(&bad).unwrap(), "application/json").await;
    assert_eq!(resp["response"]["uid"], "abc");
    assert_eq!(resp["response"]["allowed"], false);

    // v1beta1 is not served.
    let mut old = review(
        ("", "v1", "Pod"),
        "p",
        None,
        "UPDATE",
        Value::Null,
        Value::Null,
    );
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (_, resp) = post(&r, serde_json::to_vec(&old).unwrap(), "application/json").await;
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("only admission.k8s.io/v1")
    );

    // Wrong content type.
    let (_, resp) = post(&r, b"{}".to_vec(), "text/plain").await;
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );

    // Over the body limit.
    let big = vec![b' '; overlay_switch_webhook::server::admission::MAX_BODY_BYTES + 10];
    let (_, resp) = post(&r, big, "application/json").await;
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );

    // An overlay value Calico cannot read in a Calico update (a legacy
    // `spec.ipip` block that is no object): refused with the reason. (A
    // mode like `Sometimes` is no such value: Calico reads it as Never.)
    let mut unreadable = pool("Always");
    unreadable["spec"]["ipip"] = json!("Sometimes");
    let body = review(
        ("crd.projectcalico.org", "v1", "IPPool"),
        "p",
        None,
        "UPDATE",
        pool("Always"),
        unreadable,
    );
    let (_, resp) = post(&r, serde_json::to_vec(&body).unwrap(), "application/json").await;
    assert_eq!(resp["response"]["allowed"], false);
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.ipip") && msg.contains("Sometimes"),
        "{msg}"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn probes_and_metrics_answer() {
    let r = start().await;
    let c = reqwest::Client::new();
    let h = c.get(format!("{}/healthz", r.admin)).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let ready = c.get(format!("{}/readyz", r.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "no watch has synced");
    assert!(ready.text().await.unwrap().contains("node watch"));
    let body = review(
        ("crd.projectcalico.org", "v1", "IPPool"),
        "p",
        None,
        "UPDATE",
        pool("Always"),
        pool("Always"),
    );
    post(&r, serde_json::to_vec(&body).unwrap(), "application/json").await;
    let m = c
        .get(format!("{}/metrics", r.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(r#"overlay_switch_admission_reviews_total{kind="IPPool",decision="Allowed",dry_run="true"} 1"#),
        "{m}"
    );
    assert!(m.contains("overlay_switch_cache_synced 0"), "{m}");
    r.shutdown().await;
}

/// A raw TLS connection to the server (HTTP/1.1 by ALPN).
async fn raw_tls(r: &Running) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = client_config(&r.ca_pem, None);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the peer closes; `None` if it has not within `within`.
async fn closed_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(got)
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_a_freed_place_is_used_again() {
    let r = start_with(server::limits::Limits {
        max_connections: 3,
        ..Default::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(raw_tls(&r).await);
    }
    // The fourth is closed at once, before any TLS.
    let mut fourth = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
        .await
        .unwrap();
    let got = closed_within(&mut fourth, Duration::from_secs(5))
        .await
        .expect("the fourth connection is closed");
    assert!(got.is_empty(), "nothing was served on it");
    // The three still work; once one closes, a new client gets in.
    use tokio::io::AsyncWriteExt as _;
    open[0]
        .write_all(b"GET /nothing HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut open[0], Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404"),
        "{answer:?}"
    );
    drop(open.remove(0));
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // The freed place is given back when the server sees the close.
            if let Ok(resp) = r
                .client
                .post(&r.url)
                .header("content-type", "application/json")
                .body(
                    review(
                        ("crd.projectcalico.org", "v1", "IPPool"),
                        "p",
                        None,
                        "UPDATE",
                        pool("Always"),
                        pool("Always"),
                    )
                    .to_string(),
                )
                .send()
                .await
            {
                return (resp.status().as_u16(), ());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a new client is served once a place is free");
    assert_eq!(status, 200);
    drop(open);
    r.shutdown().await;
}

#[tokio::test]
async fn a_client_that_sends_no_whole_request_head_is_closed_and_so_is_an_idle_one() {
    let r = start_with(server::limits::Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    use tokio::io::AsyncWriteExt as _;
    // Slow: half a request head, then nothing.
    let mut slow = raw_tls(&r).await;
    slow.write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "a request head that never ends is cut off"
    );
    // Idle: connected, never a byte.
    let mut idle = raw_tls(&r).await;
    assert!(
        closed_within(&mut idle, Duration::from_secs(10))
            .await
            .is_some(),
        "an idle connection is closed"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn an_old_connection_is_closed_after_its_request_is_answered() {
    let r = start_with(server::limits::Limits {
        max_connection_age: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    use tokio::io::AsyncWriteExt as _;
    let mut c = raw_tls(&r).await;
    c.write_all(b"GET /nothing HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut c, Duration::from_secs(10))
        .await
        .expect("closed once older than its age");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404"),
        "the request in flight was answered first: {answer:?}"
    );
    r.shutdown().await;
}

/// Three reviews of 6 MiB at once: more than the body budget holds
/// together, so they are read one after another (the process never holds
/// them all), and every one is answered.
#[tokio::test]
async fn large_reviews_at_once_wait_for_the_body_budget_and_are_all_answered() {
    let r = start().await;
    let mut pool_with = pool("Always");
    pool_with["metadata"]["annotations"] = json!({"note": "x".repeat(3 * 1024 * 1024)});
    let body = review(
        ("crd.projectcalico.org", "v1", "IPPool"),
        "default-ipv4-ippool",
        None,
        "UPDATE",
        pool_with.clone(),
        pool_with,
    )
    .to_string();
    assert!(body.len() > 6 * 1024 * 1024);
    assert!(body.len() * 2 > server::limits::BODY_BUDGET_BYTES);
    let answers = futures::future::join_all(
        (0..3).map(|_| post(&r, body.clone().into_bytes(), "application/json")),
    )
    .await;
    for (status, answer) in answers {
        assert_eq!(status, 200);
        assert_eq!(
            answer["response"]["allowed"], true,
            "{}",
            answer["response"]["status"]
        );
    }
    r.shutdown().await;
}

/// The kubelet's update of a mounted Secret: files are symlinks through
/// `..data` to a timestamped directory; `..data` is swapped atomically.
fn kubelet_publish(
    dir: &std::path::Path,
    n: u32,
    b: &overlay_switch_webhook::server::certs::Bundle,
) {
    let ts = dir.join(format!("..2026_11_29_01_00_0{n}.{n}"));
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join("tls.crt"), &b.tls_cert_pem).unwrap();
    std::fs::write(ts.join("tls.key"), &b.tls_key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if n == 0 {
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

/// Whether a new TLS connection that trusts only `ca_pem` succeeds.
async fn handshake_trusting(port: u16, ca_pem: &str) -> bool {
    let cfg = client_config(ca_pem, None);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .is_ok()
}

/// Three rotations the kubelet way, served to new connections within the
/// reload interval each; a connection opened before them keeps working.
#[tokio::test]
async fn rotations_of_a_mounted_secret_are_served_and_open_connections_stay() {
    use tokio::io::AsyncWriteExt as _;
    let gen_ = || {
        overlay_switch_webhook::server::certs::generate(
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            1,
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let first = gen_();
    kubelet_publish(dir.path(), 0, &first);
    let files = overlay_switch_webhook::server::tls::CertFiles::load(
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    )
    .unwrap();
    let tls = files.server_config().unwrap();
    tokio::spawn(files.clone().watch(Duration::from_millis(200)));
    let port = serve_until_dropped(tls).await;
    let r = Running {
        port,
        ca_pem: first.ca_cert_pem.clone(),
        url: String::new(),
        admin: String::new(),
        client: reqwest::Client::new(),
        stop: None,
        task: None,
    };
    let mut open = raw_tls(&r).await;
    for n in 1..=3 {
        let next = gen_();
        kubelet_publish(dir.path(), n, &next);
        let served_within = tokio::time::timeout(Duration::from_secs(10), async {
            while !handshake_trusting(port, &next.ca_cert_pem).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            served_within.is_ok(),
            "rotation {n} served to new connections"
        );
        assert!(
            !handshake_trusting(port, &first.ca_cert_pem).await,
            "the old certificate is no longer served"
        );
        // The connection opened before every rotation still answers.
        open.write_all(b"GET /nothing HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        // One whole response (a 404 without a body): up to its blank line.
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            let n_read = tokio::io::AsyncReadExt::read(&mut open, &mut byte)
                .await
                .unwrap();
            assert_eq!(n_read, 1, "rotation {n}: the open connection was closed");
            got.push(byte[0]);
        }
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 404"),
            "rotation {n}: the open connection still answers: {got:?}"
        );
    }
    assert_eq!(files.reload_failures(), 0);
}

/// A TLS handshake (and one request) with an optional client certificate;
/// whether the server answered.
async fn answered_with_client_cert(port: u16, ca_pem: &str, client: Option<(&str, &str)>) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let cfg = client_config(ca_pem, client);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
    else {
        return false;
    };
    // TLS 1.3: the server checks the client certificate after the client
    // thinks the handshake is done; the refusal shows on the first read.
    if tls
        .write_all(b"GET /nothing HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).starts_with("HTTP/1.1 404")
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    use overlay_switch_webhook::server::certs;
    let hour = Duration::from_secs(3600);
    let serving =
        certs::generate(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1).unwrap();
    let client_ca = certs::make_ca(hour).unwrap();
    let other_ca = certs::make_ca(hour).unwrap();
    let (client_cert, client_key) =
        certs::issue_client(&client_ca, "kube-apiserver", hour).unwrap();
    let (stranger_cert, stranger_key) =
        certs::issue_client(&other_ca, "kube-apiserver", hour).unwrap();
    let ca = overlay_switch_webhook::server::tls::ClientCa::from_pem(
        client_ca.cert_pem.as_bytes(),
        "client-ca.pem",
    )
    .unwrap();
    let tls = overlay_switch_webhook::server::tls::server_config_with(
        serving.tls_cert_pem.as_bytes(),
        serving.tls_key_pem.as_bytes(),
        Some(&ca),
    )
    .unwrap();
    let port = serve_until_dropped(tls).await;
    let ca_pem = serving.ca_cert_pem.as_str();
    assert!(
        !answered_with_client_cert(port, ca_pem, None).await,
        "no client certificate"
    );
    assert!(
        !answered_with_client_cert(port, ca_pem, Some((&stranger_cert, &stranger_key))).await,
        "a certificate of another CA"
    );
    assert!(
        answered_with_client_cert(port, ca_pem, Some((&client_cert, &client_key))).await,
        "the client CA's certificate"
    );
    // A serving certificate (not for client authentication) is refused too.
    let (server_cert, server_key) = certs::issue(&client_ca, &["x".into()], &[], hour).unwrap();
    assert!(!answered_with_client_cert(port, ca_pem, Some((&server_cert, &server_key))).await);
}

/// A rustls client config trusting `ca_pem`, presenting `client` (a PEM
/// certificate and key) when given, speaking HTTP/1.1 (ALPN).
fn client_config(ca_pem: &str, client: Option<(&str, &str)>) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

/// The webhook of an unsynced cluster served with `tls` on a free port, for
/// the rest of the test; its port.
async fn serve_until_dropped(tls: rustls::ServerConfig) -> u16 {
    let state = AppState::new(Cluster::new(Settings::default()), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve_tls(
        listener,
        Arc::new(tls),
        server::webhook_router(state),
        std::future::pending(),
        Duration::from_secs(1),
        server::limits::Limits::default(),
    ));
    port
}
