//! The single-cluster RBAC of `manifests/rbac.yaml`, checked both ways with
//! `kubectl auth can-i` as the server's ServiceAccount against a real
//! kube-apiserver: everything the server does is allowed, and the neighbours
//! of each permission (another DaemonSet, ConfigMap, namespace, Lease, an
//! unnamed list, Secrets, nodes' status) are denied. The server's releases,
//! cancels, events and leases run under this RBAC in e2e_release and
//! e2e_replicas.

mod controlplane;
mod e2e_support;

use e2e_support::*;

const SA: &str = "system:serviceaccount:overlay-switch-webhook:overlay-switch-webhook";

#[test]
fn the_service_account_can_do_what_the_server_does_and_nothing_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = controlplane::ControlPlane::start().expect("control plane");
    cp.api().install_ippool_crd();
    // The other install styles' kinds, so that `can-i` resolves them.
    install_crds(
        &cp,
        &[
            "calico-v3/crd-ippools.projectcalico.org.yaml",
            "calico-v3/crd-felixconfigurations.crd.projectcalico.org.yaml",
            "calico-v3/crd-felixconfigurations.projectcalico.org.yaml",
            "tigera-operator/crd-installations.yaml",
        ],
    );
    let _ = manifest_service_account_kubeconfig(&cp, dir.path());
    let can = |args: &[&str]| -> bool {
        let mut full = vec!["auth", "can-i", "--as", SA];
        full.extend_from_slice(args);
        let out = cp.kubectl_run(&full, None).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(text == "yes" || text == "no", "{args:?}: {text} {out:?}");
        text == "yes"
    };
    let allowed: &[&[&str]] = &[
        &["watch", "nodes"],
        &["list", "nodes"],
        &["get", "namespaces/kube-system"],
        &["watch", "namespaces/kube-system"],
        &["patch", "namespaces/kube-system"],
        &["watch", "daemonsets.apps/calico-node", "-n", "kube-system"],
        &["update", "daemonsets.apps/calico-node", "-n", "kube-system"],
        &["list", "configmaps/calico-config", "-n", "kube-system"],
        &["update", "configmaps/calico-config", "-n", "kube-system"],
        &["watch", "ippools.crd.projectcalico.org"],
        &["update", "ippools.crd.projectcalico.org/any-pool"],
        &["watch", "ippools.projectcalico.org"],
        &["update", "ippools.projectcalico.org/any-pool"],
        &["watch", "felixconfigurations.crd.projectcalico.org"],
        &[
            "update",
            "felixconfigurations.crd.projectcalico.org/default",
        ],
        &["watch", "felixconfigurations.projectcalico.org"],
        &["update", "felixconfigurations.projectcalico.org/default"],
        &["watch", "installations.operator.tigera.io"],
        &["update", "installations.operator.tigera.io/default"],
        &["create", "events.events.k8s.io", "-n", "kube-system"],
        &["patch", "events.events.k8s.io", "-n", "default"],
        &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
        &[
            "update",
            "leases.coordination.k8s.io/overlay-switch-webhook-release",
            "-n",
            "kube-system",
        ],
        &["create", "selfsubjectreviews.authentication.k8s.io"],
    ];
    let denied: &[&[&str]] = &[
        &["patch", "nodes/node-a"],
        &["update", "nodes/status"],
        &["patch", "namespaces/default"],
        &["list", "namespaces"],
        &["update", "daemonsets.apps/kube-proxy", "-n", "kube-system"],
        &["list", "daemonsets.apps", "-n", "kube-system"],
        &["update", "daemonsets.apps/calico-node", "-n", "default"],
        &["update", "configmaps/kube-proxy", "-n", "kube-system"],
        &["list", "configmaps", "-n", "kube-system"],
        &["get", "secrets", "-n", "kube-system"],
        &["delete", "ippools.crd.projectcalico.org/any-pool"],
        &["create", "ippools.crd.projectcalico.org"],
        &["delete", "ippools.projectcalico.org/any-pool"],
        &["delete", "felixconfigurations.projectcalico.org/default"],
        &["create", "felixconfigurations.crd.projectcalico.org"],
        &["update", "bgpconfigurations.crd.projectcalico.org/default"],
        &["delete", "installations.operator.tigera.io/default"],
        &[
            "create",
            "events.events.k8s.io",
            "-n",
            "overlay-switch-webhook",
        ],
        &[
            "update",
            "leases.coordination.k8s.io/kube-controller-manager",
            "-n",
            "kube-system",
        ],
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &["create", "pods", "-n", "kube-system"],
        &["delete", "daemonsets.apps/calico-node", "-n", "kube-system"],
        &["update", "deployments.apps", "-n", "kube-system"],
        &["create", "configmaps", "-n", "kube-system"],
        &["list", "leases.coordination.k8s.io", "-n", "kube-system"],
        &[
            "delete",
            "leases.coordination.k8s.io/overlay-switch-webhook-release",
            "-n",
            "kube-system",
        ],
    ];
    let mut wrong = vec![];
    for a in allowed {
        if !can(a) {
            wrong.push(format!("denied but needed: {a:?}"));
        }
    }
    for d in denied {
        if can(d) {
            wrong.push(format!("allowed but not needed: {d:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
