//! The harness itself: a real control plane starts, answers, and leaves no
//! process behind, also when the test body panics.

mod controlplane;

use controlplane::ControlPlane;

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn starts_answers_and_stops_without_leftovers() {
    // Started on the test's own thread (see DieWithParent in the harness).
    let cp = ControlPlane::start().unwrap();
    let out = cp
        .kubectl_ok(&["get", "namespace", "kube-system", "-o", "name"], None)
        .unwrap();
    assert_eq!(out.trim(), "namespace/kube-system");
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
    let (etcd, apiserver) = cp.pids();
    assert!(alive(etcd) && alive(apiserver));
    drop(cp);
    assert!(!alive(etcd), "etcd {etcd} left running");
    assert!(!alive(apiserver), "kube-apiserver {apiserver} left running");
}

#[test]
fn a_panicking_test_still_stops_both_processes() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let cp = ControlPlane::start().unwrap();
        tx.send(cp.pids()).unwrap();
        panic!("test body fails");
    });
    assert!(result.is_err());
    let (etcd, apiserver) = rx.recv().unwrap();
    assert!(!alive(etcd), "etcd {etcd} left running");
    assert!(!alive(apiserver), "kube-apiserver {apiserver} left running");
}
