//! `overlay-switch-webhook serve`: wires the cluster's watches, the webhook
//! and the admin servers together, and shuts them down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::cluster::release::lease::{self, ReleaseLease};
use crate::cluster::release::{Events, HELD_EVENT_INTERVAL, Releaser};
use crate::cluster::{Cluster, Settings};
use crate::server::node_status::NodeStatusGuard;
use crate::server::tls::CertFiles;
use crate::server::webhook::Outcome;
use crate::server::{self, AppState};
use kube::runtime::events::EventType;

/// Flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the webhook (HTTPS).
    #[arg(long, default_value = "0.0.0.0:9443", env = "OSW_LISTEN_ADDR")]
    pub listen_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8080", env = "OSW_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Serving certificate (PEM; a chain is accepted, leaf first).
    #[arg(
        long,
        env = "OSW_TLS_CERT_FILE",
        required_unless_present = "certificates_secret"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of the serving certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "OSW_TLS_KEY_FILE",
        required_unless_present = "certificates_secret"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Require a client certificate signed by a CA of this PEM file in every
    /// TLS handshake (mutual TLS): what kube-apiserver presents when its
    /// `AdmissionConfiguration` names a kubeconfig with a client certificate
    /// for this webhook. Requests without one are refused in the handshake.
    #[arg(long, value_name = "FILE", env = "OSW_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for rotation.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// Kubeconfig of the guarded cluster (default: $KUBECONFIG, else the in-cluster config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub gardener: GardenerArgs,
    /// How long one watch request lasts before it is renewed (seconds; at
    /// most 290, kube-rs' default). Shorter means a revoked permission or a
    /// silently dead connection is noticed sooner.
    #[arg(long, default_value_t = 290, value_parser = clap::value_parser!(u32).range(1..=290))]
    pub watch_timeout: u32,
    /// Release held switches by itself once the gate opens (and honour the
    /// cancel/force annotations). `--release=false` leaves holds to the
    /// operator's next apply.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub release: bool,
    /// Duration of the release lease (`overlay-switch-webhook-release` in the
    /// Calico namespace) that makes one replica at a time release or cancel.
    /// Another replica takes over this long after the holder stopped renewing it.
    #[arg(long, default_value = "15s", value_parser = parse_lease_duration)]
    pub release_lease_duration: Duration,
    /// A user whose updates of a node's status may not overwrite the route
    /// controller's NetworkUnavailable condition (repeatable; the same list
    /// as `webhook-config --calico-node-user`, whose registration sends only
    /// these users' updates here). Add
    /// `system:serviceaccount:kube-system:calico-kube-controllers` for
    /// Calico versions whose kube-controllers set `CalicoIsDown` too.
    #[arg(
        long = "calico-node-user",
        value_name = "USER",
        default_value = crate::server::node_status::DEFAULT_CALICO_NODE_USER,
        value_parser = crate::server::webhook_config::parse_user,
    )]
    pub calico_node_users: Vec<String>,
    /// Name of this replica, for events (the Deployment sets it from the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// After SIGTERM: how long to keep serving while not ready (so endpoints
    /// drop this pod first), then how long open connections may drain.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,
    /// Open webhook connections in all; more are closed at once.
    #[arg(long, default_value = "512")]
    pub max_connections: usize,
    /// Open webhook connections from one address (a kube-apiserver needs a
    /// few: HTTP/2 carries up to 32 reviews at once on each).
    #[arg(long, default_value = "128")]
    pub max_connections_per_peer: usize,
    /// A webhook connection older than this is closed gracefully (requests
    /// in flight finish; the client reconnects).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_connection_age: Duration,
}

impl ServeArgs {
    /// The client CA of `--client-ca`, loaded.
    pub fn client_ca(&self) -> anyhow::Result<Option<crate::server::tls::ClientCa>> {
        let Some(path) = &self.client_ca else {
            return Ok(None);
        };
        let ca = crate::server::tls::ClientCa::load(path).context("loading --client-ca")?;
        tracing::info!(client_ca = %path.display(), "client certificates required (mutual TLS)");
        Ok(Some(ca))
    }

    /// The webhook connections' limits.
    pub fn limits(&self) -> crate::server::limits::Limits {
        crate::server::limits::Limits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            max_connection_age: self.max_connection_age,
            ..Default::default()
        }
    }
}

/// Gardener mode: one server in the seed guards every shoot whose Shoot
/// has the annotation (see README, "Running as a Gardener extension").
#[derive(Debug, Clone, clap::Args)]
pub struct GardenerArgs {
    /// Run in the seed as a Gardener extension (--kubeconfig is the seed's):
    /// guard every shoot whose Shoot has the annotation
    /// calico.networking.extensions.gardener.cloud/seamless-overlay-switch=true.
    #[arg(long)]
    pub gardener: bool,
    /// With --gardener: `https://host:port`, where the shoots' API servers
    /// (in the seed) reach this server; `/shoots/<namespace>/<token>/mutate`
    /// is appended for each shoot.
    #[arg(long, requires = "gardener", value_name = "URL")]
    pub webhook_base_url: Option<String>,
    /// With --gardener: the CA bundle (PEM) written into every shoot's
    /// registration; re-read every few seconds, a change updates every
    /// registration.
    #[arg(long, requires = "gardener", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub access: ShootAccessArgs,
    /// With --gardener: keep the server's own CA, serving certificate and
    /// path token key in this Secret of --namespace (made by the first
    /// replica; read again and renewed when due every
    /// --certificates-check-interval by every replica), instead of
    /// --tls-cert-file, --tls-key-file, --ca-file and --path-token-key-file.
    #[arg(
        long,
        requires = "gardener",
        value_name = "NAME",
        conflicts_with_all = ["tls_cert_file", "tls_key_file", "ca_file", "path_token_key_file"]
    )]
    pub certificates_secret: Option<String>,
    /// With --certificates-secret: validity of the serving certificate (a
    /// CA gets twice that); renewed 30 days (at most a third of it) before
    /// its end.
    #[arg(long, default_value = "365d", value_parser = parse_duration, requires = "certificates_secret")]
    pub certificate_validity: Duration,
    /// With --certificates-secret: how often every replica reads the Secret
    /// again (another replica's renewal is served within this) and renews
    /// what is due.
    #[arg(long, default_value = "10m", value_parser = parse_duration, requires = "certificates_secret")]
    pub certificates_check_interval: Duration,
    /// With --gardener (without --certificates-secret): a file of at least 32
    /// random bytes; each shoot's path then carries a token made with it,
    /// and a request without its shoot's token is refused. Without it (and
    /// without --certificates-secret) the paths carry no token: anyone who
    /// reaches the webhook port can post reviews on any shoot's path.
    #[arg(long, requires = "gardener", value_name = "FILE")]
    pub path_token_key_file: Option<PathBuf>,
    /// The server's namespace in the seed: its certificates Secret and its
    /// extension heartbeat Lease (`gardener-extension-heartbeat`) live there.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// With --gardener: how often the health condition of each of our
    /// Extension resources and the heartbeat Lease are written (Gardener's
    /// own health checks and heartbeat use 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "gardener")]
    pub extension_health_interval: Duration,
    /// With --certificates-secret: a DNS name of the serving certificate
    /// (repeatable; default: the host of --webhook-base-url, with `.svc`
    /// and `.svc.cluster.local`).
    #[arg(
        long = "certificate-dns",
        requires = "certificates_secret",
        value_name = "NAME"
    )]
    pub certificate_dns: Vec<String>,
    /// With --certificates-secret: where the certificates are written for
    /// the server to load.
    #[arg(
        long,
        default_value = "/tmp/overlay-switch-webhook/certs",
        value_name = "DIR"
    )]
    pub certificates_dir: PathBuf,
    /// How often the access Secret is read again (a changed kubeconfig,
    /// e.g. a rotated token, reconnects the shoot).
    #[arg(long, default_value = "60s", value_parser = parse_duration, requires = "gardener")]
    pub shoot_access_refresh: Duration,
}

/// How the seed reaches a shoot and names its registration: shared by
/// `serve --gardener` and `status --gardener`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShootAccessArgs {
    /// Secret in each shoot namespace whose kubeconfig reaches the shoot.
    #[arg(long, default_value = "gardener-internal", requires = "gardener")]
    pub shoot_access_secret: String,
    /// Read when --shoot-access-secret does not exist (empty: none).
    #[arg(long, default_value = "gardener", requires = "gardener")]
    pub shoot_access_fallback_secret: String,
    /// Key of the kubeconfig in the access Secret.
    #[arg(long, default_value = "kubeconfig", requires = "gardener")]
    pub shoot_access_key: String,
    /// Name of the ManagedResource in each shoot namespace (its Secret is
    /// `managedresource-<name>`).
    #[arg(long, default_value = "overlay-switch-webhook", requires = "gardener")]
    pub registration_name: String,
}

impl ShootAccessArgs {
    pub fn access(&self) -> crate::gardener::access::AccessSecret {
        crate::gardener::access::AccessSecret {
            name: self.shoot_access_secret.clone(),
            fallback: Some(self.shoot_access_fallback_secret.clone()).filter(|f| !f.is_empty()),
            key: self.shoot_access_key.clone(),
        }
    }

    pub fn names(&self) -> crate::gardener::registration::Names {
        crate::gardener::registration::Names {
            managed_resource: self.registration_name.clone(),
        }
    }
}

/// Which objects are Calico's and how the gate behaves: shared by `serve`
/// and `status`, so both see a cluster the same way.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Namespace of calico-node and calico-config; its annotation toggles the guard.
    #[arg(long, default_value = "kube-system")]
    pub calico_namespace: String,
    /// Name of Calico's node DaemonSet.
    #[arg(long, default_value = "calico-node")]
    pub daemonset_name: String,
    /// Name of Calico's ConfigMap.
    #[arg(long, default_value = "calico-config")]
    pub configmap_name: String,
    /// Reason of `NetworkUnavailable=False` that means the node's route exists.
    #[arg(long, default_value = crate::cluster::routes::DEFAULT_REASON)]
    pub required_route_reason: String,
    /// How long every node must have had its route before a switch passes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle_time: Duration,
}

impl ClusterArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            calico_namespace: self.calico_namespace.clone(),
            daemonset_name: self.daemonset_name.clone(),
            configmap_name: self.configmap_name.clone(),
            required_reason: self.required_route_reason.clone(),
            settle: self.settle_time,
            ..Settings::default()
        }
    }
}

fn parse_lease_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?}: must be between 1s and 1h"));
    }
    Ok(d)
}

/// Parses durations like `10s`, `500ms`, `2m` (humantime's syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 10s, 500ms, 2m)"))
}

/// The client configuration from `kubeconfig`, else $KUBECONFIG or in-cluster.
pub async fn config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    })
}

pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(config(kubeconfig).await?)?)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) else {
        anyhow::bail!("serve needs --tls-cert-file and --tls-key-file");
    };
    let certs = CertFiles::load(cert, key).context("loading the serving certificate")?;
    let tls = Arc::new(certs.server_config_with(args.client_ca()?.as_ref())?);
    let client = client(args.kubeconfig.as_deref()).await?;

    let cluster = Cluster::new(args.cluster.settings());
    match cluster.learn_own_user(&client).await {
        Ok(user) => tracing::info!(%user, "release and cancel markers count only from this user"),
        Err(error) => {
            tracing::warn!(%error, "cannot learn this server's own user; release and cancel markers count only when they match the recorded change")
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    cluster.spawn_watches(&client, Some(args.watch_timeout), &mut tasks);
    tasks.spawn(certs.clone().watch(args.tls_reload_interval));

    let events = Events::new(client.clone(), args.pod_name.clone());
    let hook_events = events.clone();
    let on_outcome: server::OutcomeHook = Arc::new(move |o: &Outcome| {
        if o.verdict != "held" {
            return;
        }
        let (Some(key), Some(note)) = (o.key.clone(), o.message.clone()) else {
            return;
        };
        let (events, uid) = (hook_events.clone(), o.object_uid.clone());
        tokio::spawn(async move {
            events
                .publish(
                    &key,
                    uid,
                    EventType::Normal,
                    "OverlaySwitchHeld",
                    note,
                    HELD_EVENT_INTERVAL,
                )
                .await;
        });
    });

    let state = AppState::build(
        cluster.clone(),
        Some(on_outcome),
        NodeStatusGuard::new(args.calico_node_users.clone()),
        |r| certs.register(r),
    );
    let mut release_lease = None;
    if args.release {
        let lease = Arc::new(ReleaseLease::new(
            client.clone(),
            &args.cluster.calico_namespace,
            lease::identity(args.pod_name.as_deref()),
            args.release_lease_duration,
            state.metrics().release_lease_holder.clone(),
        ));
        release_lease = Some(lease.clone());
        tasks.spawn(
            Releaser {
                cluster: cluster.clone(),
                client: client.clone(),
                metrics: state.metrics().clone(),
                events,
                lease,
            }
            .run(),
        );
    }

    let routers = (
        server::webhook_router(state.clone()),
        server::admin_router(state.clone()),
    );
    let not_ready = {
        let state = state.clone();
        move || state.shutting_down.store(true, Ordering::Relaxed)
    };
    let failed = serve_until_stopped(&args, tls, routers, &mut tasks, not_ready).await?;
    // Stop the release controller (and the rest) first, then hand the
    // release lease on, so that another replica need not wait for it to expire.
    tasks.shutdown().await;
    if let Some(lease) = release_lease {
        match tokio::time::timeout(Duration::from_secs(2), lease.give_up()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot give up the release lease; it expires by itself")
            }
            Err(_) => tracing::warn!("giving up the release lease timed out; it expires by itself"),
        }
    }
    tracing::info!("stopped");
    match failed {
        None => Ok(()),
        Some(_) => anyhow::bail!("a background task stopped (see the log)"),
    }
}

/// Serves `routers` (webhook over TLS, admin over HTTP) until SIGTERM or
/// until one of `tasks` ends; then turns not ready (`not_ready`), waits
/// `--shutdown-delay`, and drains. Returns why a task ended, if one did.
pub async fn serve_until_stopped(
    args: &ServeArgs,
    tls: Arc<rustls::ServerConfig>,
    (webhook_router, admin_router): (axum::Router, axum::Router),
    tasks: &mut tokio::task::JoinSet<()>,
    not_ready: impl FnOnce(),
) -> anyhow::Result<Option<String>> {
    match crate::server::limits::raise_open_files_limit() {
        Some((before, after)) if after > before => {
            tracing::info!(before, after, "raised the soft limit of open files")
        }
        Some(_) => {}
        None => tracing::warn!("cannot read or raise the limit of open files"),
    }
    let listener = TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("binding {}", args.listen_addr))?;
    let admin = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(
        webhook = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        gardener = args.gardener.gardener,
        namespace = %args.cluster.calico_namespace,
        settle = ?args.cluster.settle_time,
        calico_node_users = ?args.calico_node_users,
        "serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(admin, admin_router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        })
    };
    let webhook_task = {
        let mut rx = stop_rx.clone();
        let drain = args.shutdown_drain;
        let limits = args.limits();
        tokio::spawn(async move {
            server::serve_tls(
                listener,
                tls,
                webhook_router,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
                drain,
                limits,
            )
            .await;
        })
    };

    // The watches, the certificate watch and the release controller run
    // for ever: one that ends (a panic) would leave a cache frozen or holds
    // unreleased while the server looked healthy. Exit instead, so the pod
    // restarts and lists everything anew.
    let failed = tokio::select! {
        () = server::shutdown_signal() => None,
        Some(ended) = tasks.join_next() => Some(match ended {
            Err(e) if e.is_panic() => "panicked".to_string(),
            Err(e) => e.to_string(),
            Ok(()) => "ended".to_string(),
        }),
    };
    if let Some(why) = &failed {
        tracing::error!(task = %why, "a background task stopped; shutting down");
    }
    // Not ready first, so that the Service stops sending reviews here, while
    // reviews already on their way are still answered.
    not_ready();
    tokio::time::sleep(args.shutdown_delay).await;
    let _ = stop_tx.send(true);
    let _ = webhook_task.await;
    let _ = admin_task.await;
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").unwrap_err().contains("use e.g. 10s"));
    }
}
