//! Control-plane faults while a switch is held (against a real
//! kube-apiserver and etcd): the API server killed and kept down, then
//! started again; a watch expired by etcd compaction (410 Gone); our
//! server restarted; our server down. Nothing is
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

/// A watch resumed from a resourceVersion etcd has compacted away fails
/// with 410 Gone: the cache turns unknown and lists anew, the held switch
/// stays held meanwhile, and it completes once the route exists.
///
/// Our watches list from scratch after any failure, so a 410 comes only
/// when a watch ends normally (every `--watch-timeout`) and is resumed from
/// the last resourceVersion. Here the API server serves watches from etcd
/// (`--watch-cache=false`) and etcd's history is compacted past that
/// version between two resumptions.
#[test]
fn a_watch_expired_by_compaction_410_gone_lists_again_and_holds_meanwhile() {
    let mut env = Env::start(&["--watch-timeout", "2"]);
    env.calico_cluster(&[("node-a", Cond::Routed), ("node-b", Cond::None)], true);
    apply_native(&env);
    assert!(held_as_applied(&env));

    env.cp.kill_apiserver();
    env.cp
        .start_apiserver_again_with(&["--watch-cache=false".to_string()])
        .expect("kube-apiserver back, watches from etcd");
    env.server.wait_ready();
    let before = env.server.log_text().len();

    let revision = env.cp.compact_etcd(20).expect("etcd compacted");
    eprintln!("etcd compacted at revision {revision}");
    let gone = eventually(
        "the node watch resumed after compaction fails with 410 Gone",
        Duration::from_secs(30),
        || {
            let log = env.server.log_text();
            log[before..]
                .lines()
                .find(|l| {
                    l.contains("watch failed")
                        && l.contains(r#""watch":"nodes""#)
                        && (l.contains("410") || l.contains("too old"))
                })
                .map(String::from)
        },
    );
    eprintln!("{gone}");
    assert!(
        held_as_applied(&env),
        "records survive; nothing released (node-b has no route)"
    );
    env.server.wait_ready();
    assert!(held_as_applied(&env), "still held after the re-list");

    // Still guarding after the re-list: the route appears, the switch completes.
    env.set_node("node-b", Cond::Routed);
    eventually("released to native", Duration::from_secs(60), || {
        native_everywhere(&env).then_some(())
    });
}
