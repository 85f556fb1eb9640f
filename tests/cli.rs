//! The command line, without a cluster: certs, webhook-config, and the
//! error exit of status.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_overlay-switch-webhook");

#[test]
fn certs_writes_the_files_and_prints_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "--out-dir"])
        .arg(dir.path())
        .args(["--dns", "webhook.example", "--ip", "10.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = String::from_utf8(out.stdout).unwrap();
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(bundle.trim())
        .unwrap();
    assert_eq!(ca, std::fs::read(dir.path().join("ca.crt")).unwrap());
    for f in ["ca.key", "tls.crt", "tls.key"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
}

#[test]
fn webhook_config_refuses_a_missing_ca_with_a_clear_error() {
    let out = Command::new(BIN)
        .args(["webhook-config", "--ca-file", "/nonexistent/ca.crt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");
}

#[test]
fn status_exits_2_on_error() {
    let out = Command::new(BIN)
        .args([
            "--log-format",
            "text",
            "status",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kubeconfig"));
}

#[test]
fn serve_refuses_a_key_that_does_not_fit_the_certificate() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        assert!(
            Command::new(BIN)
                .args(["certs", "--out-dir"])
                .arg(d.path())
                .output()
                .unwrap()
                .status
                .success()
        );
    }
    let out = Command::new(BIN)
        .args(["serve", "--tls-cert-file"])
        .arg(a.path().join("tls.crt"))
        .arg("--tls-key-file")
        .arg(b.path().join("tls.key"))
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not fit together"), "{err}");
}

#[test]
fn certs_refuses_a_validity_under_a_day() {
    for days in ["--days=0", "--days=-5"] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["certs", days, "--out-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{days}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at least one day"), "{err}");
        assert!(!dir.path().join("tls.crt").exists(), "nothing written");
    }
}
