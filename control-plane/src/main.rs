//! `windflow`: the control-plane server and the command-line client of its API.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
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
        /// Use an API token (wft_…) instead of a user name and password.
        #[arg(long, env = "WINDFLOW_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A code from the authenticator app (or a recovery code), for accounts with
        /// two-factor authentication; asked for at the prompt otherwise.
        #[arg(long, env = "WINDFLOW_TOTP_CODE", hide_env_values = true)]
        totp_code: Option<String>,
    },
    /// Print the API's OpenAPI document (what `/api/openapi.json` serves).
    Openapi,
    /// API tokens for automation (made from a signed-in session).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Organisations and their members; `orgs use` picks the one later commands act in.
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Accounts of the installation (installation administrators).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
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
    /// Compose stacks.
    Stack {
        #[command(subcommand)]
        command: StackCommand,
    },
    /// Deployments of stacks onto targets.
    Deployments {
        #[command(subcommand)]
        command: DeploymentsCommand,
    },
    /// Show a deployment's logs.
    Logs {
        deployment: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Return a deployment to its previous stack version (or --version N).
    Rollback {
        deployment: String,
        #[arg(long)]
        version: Option<u32>,
        /// Return at once instead of following the rollback.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Make a token; it is printed once.
    Create {
        name: String,
        /// read, deploy or admin.
        #[arg(long, default_value = "read")]
        scope: String,
        /// Lifetime, e.g. 30d (default: no expiry).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum OrgsCommand {
    List,
    Create {
        name: String,
    },
    /// Act in this organisation (id or name) from now on; without one, in the default.
    Use {
        org: Option<String>,
    },
    Members {
        org: String,
    },
    /// Add a user with a role (viewer, operator, admin, owner), or change their role.
    Add {
        org: String,
        username: String,
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    Remove {
        org: String,
        username: String,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    List,
    /// Create a user; the password is read from WINDFLOW_NEW_PASSWORD or standard input.
    Create {
        username: String,
        #[arg(long)]
        admin: bool,
        /// Add the user to this organisation (id or name)…
        #[arg(long)]
        org: Option<String>,
        /// …with this role.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the whole trail; exits 1 if an entry was changed, removed or moved.
    Verify,
    /// The latest entries, newest first.
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum StackCommand {
    /// Save a Compose file as a new stack.
    Create {
        name: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// A variable for interpolation, KEY=VALUE (repeatable).
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Save a new version of a stack.
    Update {
        name: String,
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    List,
    /// Deploy a stack onto a target and follow it until it runs or fails.
    Deploy {
        name: String,
        /// Target id or name.
        #[arg(long)]
        target: String,
        #[arg(long)]
        version: Option<u32>,
        /// `swarm`, `kubernetes` or `docker`; by default what the target is (a Swarm manager runs services).
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        detach: bool,
    },
    /// Print what a stack becomes on a platform (Swarm services, Kubernetes manifests), and what stands in the way.
    Render {
        name: String,
        /// The platform: swarm or kubernetes.
        #[arg(long)]
        to: String,
        #[arg(long)]
        version: Option<u32>,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeploymentsCommand {
    List {
        #[arg(long)]
        stack: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
    Show {
        id: String,
    },
    /// Stop and remove the deployment's containers and networks.
    Remove {
        id: String,
        /// Remove its named volumes too.
        #[arg(long)]
        volumes: bool,
    },
    /// Move a running deployment to another target (and platform), and follow each step.
    Migrate {
        id: String,
        /// Destination target id or name.
        #[arg(long)]
        target: String,
        /// `swarm`, `kubernetes` or `docker`; by default what the destination is.
        #[arg(long)]
        platform: Option<String>,
        /// Remove the source once the destination runs (its named volumes are kept).
        #[arg(long)]
        remove_source: bool,
        #[arg(long)]
        detach: bool,
    },
    /// Run this many replicas of one service, and follow until they run.
    Scale {
        id: String,
        service: String,
        replicas: u32,
        #[arg(long)]
        detach: bool,
    },
}

fn parse_var(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

fn read_compose(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

async fn find_stack(client: &mut Client, name: &str) -> anyhow::Result<Value> {
    let page = client.request(Method::GET, "/stacks?per_page=500", None).await?;
    page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name || s["id"] == name)
        .cloned()
        .with_context(|| format!("no stack named {name}"))
}

async fn find_org(client: &mut Client, org: &str) -> anyhow::Result<Value> {
    let list = client.request(Method::GET, "/orgs", None).await?;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["id"] == org || o["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(org)))
        .cloned()
        .with_context(|| format!("no organisation named {org}"))
}

async fn find_user(client: &mut Client, username: &str) -> anyhow::Result<Value> {
    let list = client.request(Method::GET, "/users", None).await?;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["username"] == username || u["id"] == username)
        .cloned()
        .with_context(|| format!("no user named {username}"))
}

async fn run_orgs(client: &mut Client, command: OrgsCommand) -> anyhow::Result<()> {
    match command {
        OrgsCommand::List => print(&client.request(Method::GET, "/orgs", None).await?),
        OrgsCommand::Create { name } => {
            print(&client.request(Method::POST, "/orgs", Some(json!({"name": name}))).await?)
        }
        OrgsCommand::Use { org: Some(org) } => {
            let found = find_org(client, &org).await?;
            client.use_org(found["id"].as_str().map(str::to_owned))?;
            println!("acting in {}", found["name"].as_str().unwrap_or("?"));
        }
        OrgsCommand::Use { org: None } => {
            client.use_org(None)?;
            println!("acting in the default organisation");
        }
        OrgsCommand::Members { org } => {
            let id = find_org(client, &org).await?["id"].as_str().unwrap_or_default().to_owned();
            print(&client.request(Method::GET, &format!("/orgs/{id}/members"), None).await?);
        }
        OrgsCommand::Add { org, username, role } => {
            let id = find_org(client, &org).await?["id"].as_str().unwrap_or_default().to_owned();
            let members = client.request(Method::GET, &format!("/orgs/{id}/members"), None).await?;
            let existing =
                members["items"].as_array().into_iter().flatten().find(|m| m["username"] == username.as_str());
            let answer = match existing.and_then(|m| m["user_id"].as_str()) {
                Some(user_id) => {
                    let path = format!("/orgs/{id}/members/{user_id}");
                    client.request(Method::PATCH, &path, Some(json!({"role": role}))).await?
                }
                None => {
                    let body = json!({"username": username, "role": role});
                    client.request(Method::POST, &format!("/orgs/{id}/members"), Some(body)).await?
                }
            };
            print(&answer);
        }
        OrgsCommand::Remove { org, username } => {
            let id = find_org(client, &org).await?["id"].as_str().unwrap_or_default().to_owned();
            let members = client.request(Method::GET, &format!("/orgs/{id}/members"), None).await?;
            let user_id = members["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["username"] == username.as_str())
                .and_then(|m| m["user_id"].as_str().map(str::to_owned))
                .with_context(|| format!("{username} is not a member"))?;
            client.request(Method::DELETE, &format!("/orgs/{id}/members/{user_id}"), None).await?;
            println!("{username} removed");
        }
    }
    Ok(())
}

async fn run_users(client: &mut Client, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::List => print(&client.request(Method::GET, "/users", None).await?),
        UsersCommand::Create { username, admin, org, role } => {
            let password = match std::env::var("WINDFLOW_NEW_PASSWORD") {
                Ok(password) => password,
                Err(_) => {
                    let mut password = String::new();
                    std::io::stdin().read_line(&mut password).context("reading the password")?;
                    password.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let mut body = json!({"username": username, "password": password, "is_admin": admin});
            if let Some(org) = org {
                body["org_id"] = find_org(client, &org).await?["id"].clone();
                body["role"] = json!(role);
            }
            print(&client.request(Method::POST, "/users", Some(body)).await?);
        }
        UsersCommand::Disable { username } => set_disabled(client, &username, true).await?,
        UsersCommand::Enable { username } => set_disabled(client, &username, false).await?,
    }
    Ok(())
}

async fn set_disabled(client: &mut Client, username: &str, disabled: bool) -> anyhow::Result<()> {
    let id = find_user(client, username).await?["id"].as_str().unwrap_or_default().to_owned();
    client.request(Method::PATCH, &format!("/users/{id}"), Some(json!({"disabled": disabled}))).await?;
    println!("{username} {}", if disabled { "disabled" } else { "enabled" });
    Ok(())
}

async fn find_target(client: &mut Client, name: &str) -> anyhow::Result<Value> {
    let page = client.request(Method::GET, "/targets?per_page=500", None).await?;
    let matches: Vec<Value> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"] == name || t["id"] == name)
        .cloned()
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no target named {name}"),
        _ => anyhow::bail!("several targets are named {name}; use its id"),
    }
}

/// Prints a deployment's events as they happen until it is running, failed or removed.
async fn follow_deployment(client: &mut Client, id: &str, from: u64) -> anyhow::Result<()> {
    let mut last_percent = None;
    client
        .follow(&format!("/deployments/{id}/events?follow=true&after={}", from.saturating_sub(1)), |event, data| {
            if event != "deployment" {
                return true;
            }
            let message = data["message"].as_str().unwrap_or_default();
            let percent = data["percent"].as_u64();
            if percent.is_some() && percent != last_percent {
                last_percent = percent;
            }
            let prefix = last_percent.map(|p| format!("[{p:>3}%] ")).unwrap_or_default();
            println!("{prefix}{message}");
            // The event that ends the operation carries the state it ended in.
            data["outcome"].is_null()
        })
        .await?;
    let deployment = client.request(Method::GET, &format!("/deployments/{id}"), None).await?;
    println!("deployment {id}: {}", deployment["state"].as_str().unwrap_or("?"));
    if deployment["state"] == "failed" {
        anyhow::bail!("{}", deployment["reason"].as_str().unwrap_or("the deployment failed"));
    }
    Ok(())
}

/// Prints the destination's events until the migration is over; fails if it failed.
async fn follow_migration(client: &mut Client, id: &str, destination: &str) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let events =
            client.request(Method::GET, &format!("/deployments/{destination}/events?after={after}"), None).await?;
        for event in events["items"].as_array().into_iter().flatten() {
            after = after.max(event["seq"].as_u64().unwrap_or(after));
            println!("{}", event["message"].as_str().unwrap_or_default());
        }
        let migration = client.request(Method::GET, &format!("/migrations/{id}"), None).await?;
        match migration["step"].as_str() {
            Some("done") => return Ok(()),
            Some("failed") => {
                anyhow::bail!("{}", migration["reason"].as_str().unwrap_or("the migration failed"))
            }
            _ => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
    }
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
    // rmcp logs MCP session ids at info: they stay out of the log unless asked for.
    let filter = EnvFilter::try_from_env("WINDFLOW_LOG").unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
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
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(config) => serve(config, shutdown_signal()).await,
        Command::Login { server, ca_file, token: Some(token), .. } => {
            let me = Client::login_with_token(&server, &ca_file, &token).await?;
            println!("using an API token of {} on {server}", me["username"].as_str().unwrap_or("?"));
            Ok(())
        }
        Command::Orgs { command } => run_orgs(&mut Client::load()?, command).await,
        Command::Users { command } => run_users(&mut Client::load()?, command).await,
        Command::Tokens { command } => {
            let mut client = Client::load()?;
            match command {
                TokensCommand::Create { name, scope, ttl } => {
                    let mut body = json!({"name": name, "scope": scope});
                    if let Some(ttl) = ttl {
                        body["ttl_seconds"] = json!(ttl.as_secs());
                    }
                    let created = client.request(Method::POST, "/tokens", Some(body)).await?;
                    println!("{}", created["token"].as_str().unwrap_or_default());
                    eprintln!(
                        "token {} ({} scope): shown once, keep it safe",
                        created["id"].as_str().unwrap_or("?"),
                        created["scope"].as_str().unwrap_or("?")
                    );
                }
                TokensCommand::List => print(&client.request(Method::GET, "/tokens", None).await?),
                TokensCommand::Revoke { id } => {
                    client.request(Method::DELETE, &format!("/tokens/{id}"), None).await?;
                    println!("token {id} revoked");
                }
            }
            Ok(())
        }
        Command::Openapi => {
            println!("{}", windflow_control_plane::api::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::Login { server, ca_file, username, password_stdin, token: None, totp_code } => {
            let password = if password_stdin {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input)?;
                input.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                std::env::var("WINDFLOW_PASSWORD").context("set WINDFLOW_PASSWORD or pass --password-stdin")?
            };
            Client::login(&server, &ca_file, &username, &password, totp_code.as_deref()).await?;
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
                        println!(
                            "Or, to add a Kubernetes cluster, run this where kubectl reaches it:\n\n  {}\n",
                            created["kubernetes_command"].as_str().unwrap_or_default()
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
        Command::Stack { command } => {
            let mut client = Client::load()?;
            match command {
                StackCommand::Create { name, file, vars } => {
                    let variables: BTreeMap<String, String> = vars.into_iter().collect();
                    let body = json!({"name": name, "compose": read_compose(&file)?, "variables": variables});
                    let stack = client.request(Method::POST, "/stacks", Some(body)).await?;
                    for warning in stack["warnings"].as_array().into_iter().flatten() {
                        eprintln!(
                            "warning: {}: {}",
                            warning["path"].as_str().unwrap_or(""),
                            warning["message"].as_str().unwrap_or("")
                        );
                    }
                    println!("stack {name} created ({}), version 1", stack["id"].as_str().unwrap_or("?"));
                }
                StackCommand::Update { name, file, vars } => {
                    let stack = find_stack(&mut client, &name).await?;
                    let mut body = json!({});
                    if let Some(file) = file {
                        body["compose"] = json!(read_compose(&file)?);
                    }
                    if !vars.is_empty() {
                        body["variables"] = json!(vars.into_iter().collect::<BTreeMap<_, _>>());
                    }
                    let updated = client
                        .request(Method::PUT, &format!("/stacks/{}", stack["id"].as_str().unwrap_or("")), Some(body))
                        .await?;
                    println!("stack {name} is now at version {}", updated["version"]);
                }
                StackCommand::List => {
                    let page = client.request(Method::GET, "/stacks?per_page=500", None).await?;
                    println!("{:<38} {:<24} {:>7}  UPDATED", "ID", "NAME", "VERSION");
                    for s in page["items"].as_array().into_iter().flatten() {
                        println!(
                            "{:<38} {:<24} {:>7}  {}",
                            s["id"].as_str().unwrap_or(""),
                            s["name"].as_str().unwrap_or(""),
                            s["version"],
                            s["updated_at"].as_str().unwrap_or("")
                        );
                    }
                }
                StackCommand::Deploy { name, target, version, platform, detach } => {
                    let stack = find_stack(&mut client, &name).await?;
                    let target = find_target(&mut client, &target).await?;
                    let mut query: Vec<String> = version.map(|v| format!("version={v}")).into_iter().collect();
                    query.extend(platform.map(|p| format!("platform={p}")));
                    let path = format!(
                        "/stacks/{}/deploy/{}?{}",
                        stack["id"].as_str().unwrap_or(""),
                        target["id"].as_str().unwrap_or(""),
                        query.join("&")
                    );
                    let deployment = client.request(Method::POST, &path, None).await?;
                    let id = deployment["id"].as_str().unwrap_or_default().to_owned();
                    println!(
                        "deployment {id}: {} (version {})",
                        deployment["state"].as_str().unwrap_or("?"),
                        deployment["version"]
                    );
                    if !detach {
                        follow_deployment(&mut client, &id, deployment["events_from"].as_u64().unwrap_or(0)).await?;
                    }
                }
                StackCommand::Render { name, to, version } => {
                    let stack = find_stack(&mut client, &name).await?;
                    let mut path = format!("/stacks/{}/render?to={to}", stack["id"].as_str().unwrap_or(""));
                    if let Some(version) = version {
                        path.push_str(&format!("&version={version}"));
                    }
                    let rendering = client.request(Method::GET, &path, None).await?;
                    print!("{}", rendering["yaml"].as_str().unwrap_or(""));
                    for finding in rendering["findings"].as_array().into_iter().flatten() {
                        let what = if finding["blocking"].as_bool() == Some(true) { "refused" } else { "note" };
                        eprintln!(
                            "{what}: {}: {}",
                            finding["path"].as_str().unwrap_or(""),
                            finding["message"].as_str().unwrap_or("")
                        );
                    }
                }
                StackCommand::Delete { name } => {
                    let stack = find_stack(&mut client, &name).await?;
                    client
                        .request(Method::DELETE, &format!("/stacks/{}", stack["id"].as_str().unwrap_or("")), None)
                        .await?;
                    println!("stack {name} deleted");
                }
            }
            Ok(())
        }
        Command::Deployments { command } => {
            let mut client = Client::load()?;
            match command {
                DeploymentsCommand::List { stack, state } => {
                    let mut path = "/deployments?per_page=500".to_owned();
                    if let Some(stack) = stack {
                        path.push_str(&format!("&stack={stack}"));
                    }
                    if let Some(state) = state {
                        path.push_str(&format!("&state={state}"));
                    }
                    let page = client.request(Method::GET, &path, None).await?;
                    println!("{:<38} {:<20} {:<20} {:>7}  STATE", "ID", "STACK", "TARGET", "VERSION");
                    for d in page["items"].as_array().into_iter().flatten() {
                        println!(
                            "{:<38} {:<20} {:<20} {:>7}  {}",
                            d["id"].as_str().unwrap_or(""),
                            d["stack_name"].as_str().unwrap_or("?"),
                            d["target_name"].as_str().unwrap_or("?"),
                            d["version"],
                            d["state"].as_str().unwrap_or(""),
                        );
                    }
                }
                DeploymentsCommand::Show { id } => {
                    print(&client.request(Method::GET, &format!("/deployments/{id}"), None).await?)
                }
                DeploymentsCommand::Remove { id, volumes } => {
                    let removing =
                        client.request(Method::DELETE, &format!("/deployments/{id}?volumes={volumes}"), None).await?;
                    follow_deployment(&mut client, &id, removing["events_from"].as_u64().unwrap_or(0)).await?;
                }
                DeploymentsCommand::Migrate { id, target, platform, remove_source, detach } => {
                    let target = find_target(&mut client, &target).await?;
                    let mut path = format!(
                        "/deployments/{id}/migrate/{}?remove_source={remove_source}",
                        target["id"].as_str().unwrap_or("")
                    );
                    if let Some(platform) = platform {
                        path.push_str(&format!("&platform={platform}"));
                    }
                    let migration = client.request(Method::POST, &path, None).await?;
                    let migration_id = migration["id"].as_str().unwrap_or_default().to_owned();
                    println!(
                        "migration {migration_id}: destination deployment {}",
                        migration["destination_id"].as_str().unwrap_or("?")
                    );
                    if !detach {
                        follow_migration(
                            &mut client,
                            &migration_id,
                            migration["destination_id"].as_str().unwrap_or(""),
                        )
                        .await?;
                    }
                }
                DeploymentsCommand::Scale { id, service, replicas, detach } => {
                    let body = serde_json::json!({ "service": service, "replicas": replicas });
                    let scaling = client.request(Method::POST, &format!("/deployments/{id}/scale"), Some(body)).await?;
                    if !detach {
                        follow_deployment(&mut client, &id, scaling["events_from"].as_u64().unwrap_or(0)).await?;
                    }
                }
            }
            Ok(())
        }
        Command::Logs { deployment, follow, service, tail } => {
            let mut client = Client::load()?;
            let mut query = format!("tail={tail}");
            if let Some(service) = &service {
                query.push_str(&format!("&service={service}"));
            }
            let print_line = |line: &Value| {
                println!(
                    "{} {} | {}",
                    line["at"].as_str().unwrap_or(""),
                    line["container"].as_str().unwrap_or(""),
                    line["line"].as_str().unwrap_or("")
                );
            };
            if follow {
                client
                    .follow(&format!("/deployments/{deployment}/logs?{query}&follow=true"), |event, data| {
                        match event {
                            "log" => print_line(data),
                            "logs" => data.as_array().into_iter().flatten().for_each(print_line),
                            "skipped" => eprintln!("… {} lines skipped (this terminal fell behind)", data["skipped"]),
                            _ => {}
                        }
                        true
                    })
                    .await?;
            } else {
                let lines =
                    client.request(Method::GET, &format!("/deployments/{deployment}/logs?{query}"), None).await?;
                lines["items"].as_array().into_iter().flatten().for_each(print_line);
            }
            Ok(())
        }
        Command::Audit { command } => {
            let mut client = Client::load()?;
            match command {
                AuditCommand::Verify => {
                    let result = client.request(Method::GET, "/audit/verify", None).await?;
                    if result["valid"] == json!(true) {
                        println!("audit trail intact: {} entries", result["entries"]);
                    } else {
                        anyhow::bail!(
                            "audit trail TAMPERED at entry {}: {}",
                            result["broken_at"],
                            result["problem"].as_str().unwrap_or("unknown problem")
                        );
                    }
                }
                AuditCommand::List { kind, limit } => {
                    let mut path = format!("/events?per_page={limit}");
                    if let Some(kind) = kind {
                        path.push_str(&format!("&kind={kind}"));
                    }
                    let page = client.request(Method::GET, &path, None).await?;
                    for e in page["items"].as_array().into_iter().flatten() {
                        println!(
                            "{:>6} {} {:<28} {:<24} {} {}",
                            e["seq"],
                            e["at"].as_str().unwrap_or(""),
                            e["kind"].as_str().unwrap_or(""),
                            e["actor"].as_str().unwrap_or(""),
                            e["object"].as_str().unwrap_or(""),
                            e["status"].as_u64().map(|s| s.to_string()).unwrap_or_default(),
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Rollback { deployment, version, detach } => {
            let mut client = Client::load()?;
            let path = match version {
                Some(v) => format!("/deployments/{deployment}/rollback?version={v}"),
                None => format!("/deployments/{deployment}/rollback"),
            };
            let rolled = client.request(Method::POST, &path, None).await?;
            println!("deployment {deployment}: rolling back to version {}", rolled["version"]);
            if !detach {
                follow_deployment(&mut client, &deployment, rolled["events_from"].as_u64().unwrap_or(0)).await?;
            }
            Ok(())
        }
    }
}
