//! `windflow`: the control-plane server and the command-line client of its API.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use windflow_control_plane::cli::Client;
use windflow_control_plane::server::{ServeConfig, serve};

#[derive(Debug, Parser)]
#[command(name = "windflow", version, about = "WindFlow: deploy containers and VMs onto many machines from one place")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(ServeConfig),
    /// Log in to a control plane and remember the session.
    Login {
        #[arg(long, env = "WINDFLOW_SERVER")]
        server: String,
        /// CA certificate of the control plane (its data directory's ca.pem).
        #[arg(long, env = "WINDFLOW_CA_FILE")]
        ca_file: PathBuf,
        #[arg(long, default_value = "admin")]
        username: String,
        /// Read the password from standard input instead of WINDFLOW_PASSWORD.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Join tokens for adding servers.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Enrolled targets (agents).
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token and print the one-liner that uses it.
    Create {
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Print the JSON answer instead of the one-liner.
        #[arg(long)]
        json: bool,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TargetsCommand {
    List,
    Show {
        id: String,
    },
    /// Round-trip a ping through the agent.
    Test {
        id: String,
    },
    /// Close the agent's connection now and refuse it from now on.
    Revoke {
        id: String,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WINDFLOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("WINDFLOW_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json { builder.json().init() } else { builder.init() }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn print(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve(config) => serve(config, shutdown_signal()).await,
        Command::Login { server, ca_file, username, password_stdin } => {
            let password = if password_stdin {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input)?;
                input.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                std::env::var("WINDFLOW_PASSWORD").context("set WINDFLOW_PASSWORD or pass --password-stdin")?
            };
            Client::login(&server, &ca_file, &username, &password).await?;
            println!("logged in to {server} as {username}");
            Ok(())
        }
        Command::Token { command } => {
            let mut client = Client::load()?;
            match command {
                TokenCommand::Create { uses, ttl, json } => {
                    let created = client
                        .request(
                            Method::POST,
                            "/targets/join-tokens",
                            Some(json!({"uses": uses, "ttl_seconds": ttl.as_secs()})),
                        )
                        .await?;
                    if json {
                        print(&created);
                    } else {
                        println!(
                            "Join token {} (usable {} time(s), expires {}).",
                            created["id"].as_str().unwrap_or("?"),
                            uses,
                            created["expires_at"].as_str().unwrap_or("?")
                        );
                        println!(
                            "Run this as root on the server to add:\n\n  {}\n",
                            created["command"].as_str().unwrap_or_default()
                        );
                    }
                }
                TokenCommand::List => print(&client.request(Method::GET, "/targets/join-tokens", None).await?),
                TokenCommand::Revoke { id } => {
                    client.request(Method::DELETE, &format!("/targets/join-tokens/{id}"), None).await?;
                    println!("join token {id} revoked");
                }
            }
            Ok(())
        }
        Command::Targets { command } => {
            let mut client = Client::load()?;
            match command {
                TargetsCommand::List => {
                    let page = client.request(Method::GET, "/targets?per_page=500", None).await?;
                    println!("{:<38} {:<24} {:<8} {:<13} LAST SEEN", "ID", "NAME", "KIND", "STATUS");
                    for t in page["items"].as_array().into_iter().flatten() {
                        println!(
                            "{:<38} {:<24} {:<8} {:<13} {}",
                            t["id"].as_str().unwrap_or(""),
                            t["name"].as_str().unwrap_or(""),
                            t["kind"].as_str().unwrap_or(""),
                            t["status"].as_str().unwrap_or(""),
                            t["last_seen"].as_str().unwrap_or("never"),
                        );
                    }
                }
                TargetsCommand::Show { id } => {
                    print(&client.request(Method::GET, &format!("/targets/{id}"), None).await?)
                }
                TargetsCommand::Test { id } => {
                    let result = client.request(Method::POST, &format!("/targets/{id}/test"), None).await?;
                    println!("agent answered in {:.2} ms", result["latency_ms"].as_f64().unwrap_or_default());
                }
                TargetsCommand::Revoke { id } => {
                    client.request(Method::POST, &format!("/targets/{id}/revoke"), None).await?;
                    println!("target {id} revoked; its connection is closed and will be refused");
                }
            }
            Ok(())
        }
    }
}
