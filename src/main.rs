use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use overlay_switch_webhook::cli::{serve, serve_gardener, status, status_gardener};
use overlay_switch_webhook::server::certs;
use overlay_switch_webhook::server::webhook_config;

/// Holds Calico's switch from an overlay to native routing until every node
/// has its cloud route.
#[derive(Debug, Parser)]
#[command(name = "overlay-switch-webhook", version, args_override_self = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "json", env = "OSW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the admission webhook.
    Serve(Box<serve::ServeArgs>),
    /// Make a CA and a serving certificate; print the base64 caBundle.
    Certs {
        /// Where to write ca.crt, ca.key, tls.crt, tls.key.
        #[arg(long, default_value = "certs/out")]
        out_dir: PathBuf,
        /// DNS names of the serving certificate (default: the Service names and localhost).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP addresses of the serving certificate (default: 127.0.0.1).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Validity of the serving certificate in days (the CA gets twice that).
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Show what the guard sees: toggle, nodes and their routes, held objects, gate.
    /// Exit code 0: nothing held; 1: a switch is held; 2: error.
    Status(Box<status::StatusArgs>),
    /// Print the MutatingWebhookConfiguration with the caBundle filled in.
    WebhookConfig {
        #[arg(long, value_enum, default_value = "service")]
        mode: webhook_config::Mode,
        /// The CA certificate (PEM) that signed the serving certificate.
        #[arg(long, default_value = "certs/out/ca.crt")]
        ca_file: PathBuf,
        /// With --mode url: the URL the API server calls for the Calico
        /// objects; node status goes to the same URL with its last path
        /// segment replaced (`.../mutate` -> `.../mutate-node-status`).
        #[arg(long)]
        url: Option<String>,
        /// A user whose updates of node status are sent to the webhook
        /// (repeatable; the same list as `serve --calico-node-user`).
        #[arg(
            long = "calico-node-user",
            value_name = "USER",
            default_value = overlay_switch_webhook::server::node_status::DEFAULT_CALICO_NODE_USER,
            value_parser = webhook_config::parse_user,
        )]
        calico_node_users: Vec<String>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("overlay-switch-webhook: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Serve(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if args.gardener.gardener {
                rt.block_on(serve_gardener::run(*args))?;
            } else {
                rt.block_on(serve::run(*args))?;
            }
        }
        Command::Status(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let code = if args.gardener {
                rt.block_on(status_gardener::run(*args))?
            } else {
                rt.block_on(status::run(*args))?
            };
            return Ok(std::process::ExitCode::from(code));
        }
        Command::Certs {
            out_dir,
            dns,
            ips,
            days,
        } => {
            let dns = if dns.is_empty() && ips.is_empty() {
                certs::DEFAULT_DNS_NAMES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                dns
            };
            let ips = if ips.is_empty() {
                certs::DEFAULT_IPS
                    .iter()
                    .map(|s| s.parse().expect("default IP"))
                    .collect()
            } else {
                ips
            };
            anyhow::ensure!(
                days >= 1,
                "--days {days}: a certificate must be valid for at least one day"
            );
            let bundle = certs::generate(&dns, &ips, days)?;
            let paths = certs::write(&bundle, &out_dir)?;
            eprintln!(
                "wrote {}, {}, {}, {}",
                paths.ca_cert.display(),
                paths.ca_key.display(),
                paths.tls_cert.display(),
                paths.tls_key.display()
            );
            println!("{}", bundle.ca_bundle());
        }
        Command::WebhookConfig {
            mode,
            ca_file,
            url,
            calico_node_users,
        } => {
            let ca = std::fs::read_to_string(&ca_file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", ca_file.display()))?;
            print!(
                "{}",
                webhook_config::render(mode, &ca, url.as_deref(), &calico_node_users)?
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
