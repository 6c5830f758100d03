//! `windflow-agent`: enroll this host with a control plane, then run.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use windflow_agent::identity::DataDir;
use windflow_agent::link::{LinkConfig, run};

#[derive(Debug, Parser)]
#[command(name = "windflow-agent", version, about = "The WindFlow agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with a control plane using a join token (normally run by install.sh).
    Enroll {
        /// The control plane's URL, e.g. https://cp.example.com:8443
        #[arg(long)]
        server: String,
        /// The control plane's CA certificate, already checked against its pin.
        #[arg(long)]
        ca_file: PathBuf,
        /// Read from the environment so that it never appears in a process listing.
        #[arg(long, env = "WINDFLOW_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, env = "WINDFLOW_AGENT_DATA_DIR", default_value = "/var/lib/windflow-agent")]
        data_dir: PathBuf,
        /// The name shown in the dashboard (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Connect to the control plane and apply jobs. Given a server, its CA and a join token
    /// (as the in-cluster manifests give them), an agent not yet enrolled enrolls first.
    Run {
        #[arg(long, env = "WINDFLOW_AGENT_DATA_DIR", default_value = "/var/lib/windflow-agent")]
        data_dir: PathBuf,
        #[arg(long, env = "WINDFLOW_SERVER", requires = "ca_file")]
        server: Option<String>,
        #[arg(long, env = "WINDFLOW_CA_FILE")]
        ca_file: Option<PathBuf>,
        #[arg(long, env = "WINDFLOW_JOIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, env = "WINDFLOW_AGENT_NAME")]
        name: Option<String>,
    },
    /// Print this host's facts as JSON.
    Facts,
    /// Helm's post-renderer (run by helm, not by people): labels the release's manifests on
    /// stdin as WindFlow's own objects, to stdout.
    #[command(hide = true)]
    HelmPostRender {
        #[arg(long)]
        project: String,
        #[arg(long)]
        deployment: uuid::Uuid,
    },
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WINDFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match cli.command {
        Command::Enroll { server, ca_file, token, data_dir, name } => {
            windflow_agent::enroll::enroll(&DataDir::new(data_dir), &server, &ca_file, &token, name).await?;
            Ok(())
        }
        Command::Run { data_dir, server, ca_file, token, name } => {
            let data = DataDir::new(data_dir);
            if !data.is_enrolled()
                && let (Some(server), Some(ca_file), Some(token)) = (server, ca_file, token)
            {
                windflow_agent::enroll::enroll(&data, &server, &ca_file, &token, name).await?;
            }
            if let Err(error) = run(data, LinkConfig::default(), shutdown_signal()).await {
                tracing::error!(error = %format!("{error:#}"), "agent stopped");
                let revoked = error.downcast_ref::<windflow_agent::link::Revoked>().is_some();
                std::process::exit(if revoked { windflow_agent::EXIT_REVOKED } else { 1 });
            }
            Ok(())
        }
        Command::HelmPostRender { project, deployment } => {
            let mut manifests = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut manifests)?;
            print!("{}", windflow_platforms::kubernetes::label_manifests(&manifests, &project, deployment)?);
            Ok(())
        }
        Command::Facts => {
            let facts = windflow_agent::facts::collect().await;
            println!("{}", serde_json::to_string_pretty(&facts)?);
            Ok(())
        }
    }
}
