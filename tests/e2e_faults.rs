//! Control-plane faults while a switch is held (against a real
//! kube-apiserver and etcd): the API server killed and kept down, then
//! started again; our server restarted; our server down. Nothing is
//! released while the state is unknown, the records survive every fault,
//! and the switch completes by itself once every node has its route; with
//! the webhook down, `failurePolicy: Fail` refuses Calico changes with a
//! clear API server error and changes nothing.

mod controlplane;
mod e2e_support;

use std::time::Duration;

use e2e_support::*;

fn held_as_applied(env: &Env) -> bool {
    records(env) == 3 && env.get(&["ippool", "default-ipv4-ippool"], "{.spec.ipipMode}") == "Always"
}

#[test]
fn a_held_switch_survives_the_api_server_and_the_server_going_down_and_completes_after() {
    let mut env = Env::start(&[]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);
    apply_native(&env);
    assert!(held_as_applied(&env));

    // --- kube-apiserver killed and kept down: the server's state is
    // unknown (not ready), nothing can be released. ---
    env.cp.kill_apiserver();
    eventually(
        "server unready while the API server is down",
        Duration::from_secs(60),
        || {
            http_get(env.server.metrics_port, "/readyz")
                .filter(|(s, _)| *s == 503)
                .map(|(_, why)| why)
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    env.cp.start_apiserver_again().expect("kube-apiserver back");
    env.server.wait_ready();
    assert!(
        held_as_applied(&env),
        "records survive; nothing released (node-b has no route)"
    );
    let log = env.server.log_text();
    assert!(
        log.contains("watch failed; state unknown until it is listed again"),
        "the broken watches are logged"
    );

    // --- Our server restarted while held: the new one keeps holding. ---
    assert!(env.server.stop().is_some_and(|s| s.success()));
    env.server = Server::start(&env.dir.path().join("second"), env.cp.kubeconfig(), &[]);
    env.register_webhook();
    env.server.wait_ready();
    env.wait_webhook_active();
    assert!(held_as_applied(&env));

    // --- The route appears: released by itself, completely. ---
    env.set_node("node-b", Cond::Routed);
    eventually("released to native", Duration::from_secs(60), || {
        native_everywhere(&env).then_some(())
    });

    // --- The webhook down: Calico changes are refused, nothing changes. ---
    kill_hard(&env.server);
    let (ok, _, err) = env.apply("gardener-calico/overlay-ipip/ippool-default-ipv4.yaml", &[]);
    eprintln!("with the webhook down: {}", err.trim());
    assert!(!ok, "refused: {err}");
    assert!(err.contains("failed calling webhook"), "{err}");
    assert!(native_everywhere(&env), "unchanged");
}
