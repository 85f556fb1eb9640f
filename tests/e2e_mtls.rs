//! Mutual TLS end to end (`serve --client-ca`): a kube-apiserver whose
//! `AdmissionConfiguration` gives it a client certificate for the webhook
//! is served (its switch is held while a node lacks its route); one without
//! it cannot even complete the TLS handshake, so with `failurePolicy: Fail`
//! its change of a Calico object is refused with the API server's error,
//! and nothing changes.

mod controlplane;
mod e2e_support;

use std::time::Duration;

use base64::Engine as _;
use e2e_support::*;
use overlay_switch_webhook::server::certs;

fn ipip_mode(api: &impl Kubectl) -> String {
    api.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}")
}

#[test]
fn only_an_api_server_with_the_client_certificate_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let client_ca = certs::make_ca(hour).unwrap();
    let (cert, key) = certs::issue_client(&client_ca, "kube-apiserver", hour).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, &client_ca.cert_pem).unwrap();
    // The webhook kubeconfig kube-apiserver uses for every webhook ("*").
    let webhook_kubeconfig = dir.path().join("webhook-kubeconfig.yaml");
    std::fs::write(
        &webhook_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&cert),
            b64(&key)
        ),
    )
    .unwrap();
    let admission = dir.path().join("admission.yaml");
    std::fs::write(
        &admission,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: MutatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            webhook_kubeconfig.display()
        ),
    )
    .unwrap();

    let cp = controlplane::ControlPlane::start().expect("control plane");
    let with_cert = cp
        .start_apiserver_with(
            "/mtls",
            &[format!(
                "--admission-control-config-file={}",
                admission.display()
            )],
        )
        .expect("kube-apiserver with the webhook client certificate");
    let without_cert = cp.api();
    for api in [&with_cert, without_cert] {
        api.calico_objects(&[("node-a", Cond::Routed), ("node-b", Cond::None)]);
        api.kubectl(&[
            "annotate",
            "namespace",
            "kube-system",
            &format!("{GUARD}=true"),
            "--overwrite",
        ]);
    }
    let server = Server::start(
        &dir.path().join("server"),
        with_cert.kubeconfig(),
        &["--client-ca", ca_file.to_str().unwrap()],
    );
    server.wait_ready();
    let registration = webhook_config_for(&server);
    for api in [&with_cert, without_cert] {
        api.kubectl_in(&["apply", "-f", "-"], &registration);
    }

    // Served: the switch is held (node-b has no route), and says so.
    let err = eventually(
        "the webhook serves the API server with the certificate",
        Duration::from_secs(20),
        || {
            let (ok, _, err) = with_cert.apply(NATIVE_POOL, &[]);
            (ok && err.contains("overlay switch held")).then_some(err)
        },
    );
    assert!(err.contains("node-b"), "{err}");
    assert_eq!(ipip_mode(&with_cert), "Always", "held");

    // Not served: the handshake fails, the change is refused, nothing changes.
    let (ok, _, err) = without_cert.apply(NATIVE_POOL, &[]);
    eprintln!("without the client certificate: {}", err.trim());
    assert!(!ok, "refused: {err}");
    assert!(err.contains("failed calling webhook"), "{err}");
    assert_eq!(ipip_mode(without_cert), "Always");
    assert!(
        server.metric(
            "overlay_switch_admission_reviews_total{kind=\"IPPool\",decision=\"Held\",dry_run=\"false\"}"
        ) >= 1.0
    );
    drop(server);
    drop(with_cert);
}
