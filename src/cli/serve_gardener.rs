//! `overlay-switch-webhook serve --gardener`: in the seed, watches the
//! Gardener `Cluster`s, serves every guarded shoot under its own path, and
//! keeps each shoot's registration.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;

use super::serve::{ServeArgs, config, serve_until_stopped};
use crate::cluster::watch::{Backoff, Health, keep_watching};
use crate::gardener::certificates::rotation::Policy;
use crate::gardener::certificates::{self, CertSecret};
use crate::gardener::http::{self, GardenerState, ShootGauges};
use crate::gardener::path_token::PathKey;
use crate::gardener::reconcile::{self, RegistrationConfig};
use crate::gardener::registration;
use crate::gardener::shoots::{ReleaseConfig, ShootConfig, Shoots};
use crate::server::node_status::NodeStatusGuard;
use crate::server::tls::CertFiles;

pub fn cluster_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("extensions.gardener.cloud", "v1alpha1", "Cluster"),
        "clusters",
    )
}

/// The serving certificate's names for `https://host[:port]`: the host,
/// and for a Service name (`service.namespace`) its `.svc` forms.
pub fn default_dns(base_url: &str) -> anyhow::Result<Vec<String>> {
    let host = base_url
        .strip_prefix("https://")
        .map(|r| r.split(['/', ':']).next().unwrap_or(""))
        .filter(|h| !h.is_empty())
        .with_context(|| format!("--webhook-base-url {base_url:?} has no host"))?;
    let mut dns = vec![host.to_string()];
    if host.split('.').count() == 2 {
        dns.push(format!("{host}.svc"));
        dns.push(format!("{host}.svc.cluster.local"));
    }
    Ok(dns)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let g = &args.gardener;
    let base_url = g.webhook_base_url.clone().context(
        "--gardener needs --webhook-base-url (where the shoots' API servers reach this server)",
    )?;
    // HTTP/2 to the seed too: one connection for the Cluster watch and
    // every shoot's access Secret reads.
    let seed = crate::gardener::access::http2_client(config(args.kubeconfig.as_deref()).await?)?;
    let mut keep_certificates = None;
    let (cert_file, key_file, ca_file, path_key) = match &g.certificates_secret {
        Some(name) => {
            let namespace = g
                .namespace
                .clone()
                .context("--certificates-secret needs --namespace (or $POD_NAMESPACE)")?;
            let dns = if g.certificate_dns.is_empty() {
                default_dns(&base_url)?
            } else {
                g.certificate_dns.clone()
            };
            let secret = CertSecret {
                namespace,
                name: name.clone(),
                dns,
                policy: Policy {
                    validity: g.certificate_validity,
                },
            };
            let current = certificates::sync(&seed, &secret, &g.certificates_dir).await?;
            keep_certificates = Some(secret);
            let key = PathKey::new(&current.path_key)?;
            let paths = current.paths;
            (paths.tls_cert, paths.tls_key, paths.ca_cert, Some(key))
        }
        None => (
            args.tls_cert_file.clone().context("--gardener needs --tls-cert-file, or --certificates-secret")?,
            args.tls_key_file.clone().context("--gardener needs --tls-key-file, or --certificates-secret")?,
            g.ca_file.clone().context(
                "--gardener needs --ca-file (the CA bundle for the shoots' registrations), or --certificates-secret",
            )?,
            match &g.path_token_key_file {
                Some(f) => {
                    let bytes = std::fs::read(f)
                        .with_context(|| format!("reading the path token key {}", f.display()))?;
                    Some(PathKey::new(&bytes)?)
                }
                None => {
                    tracing::warn!("no --path-token-key-file: the shoots' paths carry no token, so anyone who reaches the webhook port can post reviews on them");
                    None
                }
            },
        ),
    };
    let ca = std::fs::read_to_string(&ca_file)
        .with_context(|| format!("reading the CA bundle {}", ca_file.display()))?;
    // Fail at start, not per shoot, when the registration cannot be made.
    registration::render(
        &base_url,
        "shoot--check--start",
        &ca,
        &args.calico_node_users,
        path_key
            .as_ref()
            .map(|k| k.token("shoot--check--start"))
            .as_deref(),
    )
    .context("the shoots' registration cannot be made")?;

    let certs =
        CertFiles::load(&cert_file, &key_file).context("loading the serving certificate")?;
    let tls = Arc::new(certs.server_config_with(args.client_ca()?.as_ref())?);

    let (mut registry, metrics) = crate::metrics::registry();
    let gauges = ShootGauges::register(&mut registry);
    certs.register(&mut registry);
    let config = ShootConfig {
        settings: args.cluster.settings(),
        access: g.access.access(),
        access_refresh: g.shoot_access_refresh,
        watch_timeout: Some(args.watch_timeout),
        release: args.release.then(|| ReleaseConfig {
            lease_duration: args.release_lease_duration,
            pod_name: args.pod_name.clone(),
        }),
    };
    let shoots = Shoots::new(Some(seed.clone()), config, metrics.clone());
    let state = GardenerState::with_parts(
        shoots.clone(),
        metrics,
        gauges,
        registry,
        NodeStatusGuard::new(args.calico_node_users.clone()),
        path_key.clone(),
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(certs.clone().watch(args.tls_reload_interval));
    if let Some(secret) = keep_certificates {
        tasks.spawn(certificates::keep_current(
            seed.clone(),
            secret,
            g.certificates_dir.clone(),
            g.certificates_check_interval,
        ));
    }
    let watch_config = watcher::Config::default().timeout(args.watch_timeout);
    tasks.spawn(keep_watching(
        "gardener-clusters",
        Api::<DynamicObject>::all_with(seed.clone(), &cluster_resource()),
        watch_config,
        shoots.clone(),
        Backoff::default(),
        Arc::new(Health::default()),
    ));
    tasks.spawn(reconcile::run(
        shoots.clone(),
        seed.clone(),
        RegistrationConfig {
            names: g.access.names(),
            base_url: base_url.clone(),
            ca_file,
            calico_node_users: args.calico_node_users.clone(),
            path_key,
        },
    ));
    let heartbeat = g.namespace.clone().map(|ns| {
        let identity = crate::cluster::release::lease::identity(args.pod_name.as_deref());
        (ns, identity)
    });
    tasks.spawn(crate::gardener::extension_controller::run(
        seed.clone(),
        shoots.clone(),
        heartbeat,
        args.watch_timeout,
        g.extension_health_interval,
    ));
    tracing::info!(base_url = %base_url, "Gardener mode: guarding every shoot whose Shoot has the annotation");

    let routers = (
        http::webhook_router(state.clone()),
        http::admin_router(state.clone()),
    );
    let not_ready = {
        let state = state.clone();
        move || state.shutting_down.store(true, Ordering::Relaxed)
    };
    let failed = serve_until_stopped(&args, tls, routers, &mut tasks, not_ready).await?;
    // The shoots' watches and release controllers stop with them; their
    // release leases expire by themselves.
    tasks.shutdown().await;
    shoots.stop_all();
    tracing::info!("stopped");
    match failed {
        None => Ok(()),
        Some(_) => anyhow::bail!("a background task stopped (see the log)"),
    }
}

#[cfg(test)]
mod tests {
    use super::default_dns;

    #[test]
    fn the_certificate_names_the_base_urls_host_and_its_service_forms() {
        assert_eq!(
            default_dns("https://overlay-switch-webhook.extension-osw:443").unwrap(),
            [
                "overlay-switch-webhook.extension-osw",
                "overlay-switch-webhook.extension-osw.svc",
                "overlay-switch-webhook.extension-osw.svc.cluster.local"
            ]
        );
        assert_eq!(
            default_dns("https://osw.example.com").unwrap(),
            ["osw.example.com"]
        );
        assert!(default_dns("http://osw:443").is_err());
        assert!(default_dns("https://:443").is_err());
    }
}
