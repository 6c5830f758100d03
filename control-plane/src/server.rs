//! `windflow serve`: wires the store, PKI, accounts, QUIC hub and HTTPS API together and runs
//! them until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{self, AppState, Settings};
use crate::auth::Auth;
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::sealing::MasterKey;
use crate::store::{RedbStore, Store};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Where the store, the CA and the keys live.
    #[arg(long, env = "WINDFLOW_DATA_DIR", default_value = "/var/lib/windflow")]
    pub data_dir: PathBuf,
    /// HTTPS address of the API and dashboard.
    #[arg(long, env = "WINDFLOW_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// UDP address of the agents' QUIC endpoint.
    #[arg(long, env = "WINDFLOW_QUIC_LISTEN", default_value = "0.0.0.0:7443")]
    pub quic_listen: SocketAddr,
    /// Names and addresses agents and users reach this control plane by (comma separated).
    /// The first one goes into one-liners. Default: this host's name and 127.0.0.1.
    #[arg(long, env = "WINDFLOW_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<String>,
    /// The agent binary served to new hosts. Default: `windflow-agent` next to this binary.
    #[arg(long, env = "WINDFLOW_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,
    /// The agent's container image, put into the in-cluster manifests (`scripts/agent-image`
    /// builds it). Default: `windflow/agent:<this version>`.
    #[arg(long, env = "WINDFLOW_AGENT_IMAGE")]
    pub agent_image: Option<String>,
    /// Lifetime of agent certificates; agents renew at two thirds of it.
    #[arg(long, env = "WINDFLOW_AGENT_CERT_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub agent_cert_ttl: Duration,
    /// How often agents send heartbeats; three missed ones end a session. It also bounds how
    /// long a link that came back after a cut stays stalled (see docs/reliability.md).
    #[arg(long, env = "WINDFLOW_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// API requests per second allowed from one address (0 turns the limit off).
    #[arg(long, env = "WINDFLOW_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Requests one address may send at once above its rate.
    #[arg(long, env = "WINDFLOW_RATE_BURST", default_value_t = 300)]
    pub rate_burst: u32,
    /// API requests per second allowed per credential (session or API token; 0 turns the
    /// limit off), with a burst of three times that.
    #[arg(long, env = "WINDFLOW_TOKEN_RATE_LIMIT", default_value_t = 50)]
    pub token_rate_limit: u32,
    /// On a stop: how long `/ready` fails before the listeners close and in-flight requests are
    /// given five seconds to finish (time for a load balancer to stop sending).
    #[arg(long, env = "WINDFLOW_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Memory the store may use to cache its pages, in MiB: the most it holds in memory, however
    /// much history is on disk. A bigger cache only saves reads of the file, which the kernel's
    /// page cache serves anyway.
    #[arg(long, env = "WINDFLOW_STORE_CACHE_MIB", default_value_t = crate::store::DEFAULT_CACHE_MIB)]
    pub store_cache_mib: u64,
    /// How long a removed deployment stays listed, with its events, before it is purged.
    #[arg(long, env = "WINDFLOW_REMOVED_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub removed_retention: Duration,
    /// How long an API request may take before it is answered 503.
    #[arg(long, env = "WINDFLOW_REQUEST_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Origins (besides the control plane's own) that browsers may call the API from, e.g. a
    /// dashboard development server (comma separated).
    #[arg(long, env = "WINDFLOW_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
}

fn host_for_url(name: &str) -> String {
    if name.contains(':') { format!("[{name}]") } else { name.to_owned() }
}

/// The control plane's parts, wired together from its configuration and data directory, before
/// anything runs: the API's state (the store, the hub, the reconciler, the engines…) and the
/// bound QUIC endpoint.
pub struct Assembled {
    pub state: AppState,
    pub endpoint: quinn::Endpoint,
}

/// Opens the data directory and wires the parts. Must be called inside a Tokio runtime (the
/// QUIC endpoint is bound here).
pub fn assemble(config: &mut ServeConfig) -> anyhow::Result<Assembled> {
    if config.advertise.is_empty() {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
        config.advertise = [hostname, "127.0.0.1".to_owned()].into_iter().filter(|n| !n.is_empty()).collect();
    }
    create_private_dir(&config.data_dir)?;
    let pki = Arc::new(Pki::load_or_create(&config.data_dir, &config.advertise).context("loading the PKI")?);
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open_with_cache(&config.data_dir.join("store"), config.store_cache_mib)
            .context("opening the store")?,
    );
    upgrade_records(store.as_ref()).context("upgrading the store's records")?;
    let master_key = Arc::new(
        MasterKey::load(&config.data_dir, std::env::var("WINDFLOW_MASTER_KEY").ok().as_deref())
            .context("loading the master key")?,
    );
    let auth = Arc::new(Auth::new(store.clone(), &config.data_dir, master_key.clone())?);
    let admin_password = std::env::var("WINDFLOW_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty());
    if let Some(generated) = auth.ensure_admin(admin_password)? {
        let path = config.data_dir.join("initial-admin-password");
        crate::fsutil::write_private(&path, generated.as_bytes())?;
        // Printed once, on the console of the person who started it; never logged.
        println!(
            "First start: created user `admin` with password {generated}\n(also in {}, readable by root only)",
            path.display()
        );
    }

    let audit = Arc::new(crate::audit::AuditLog::open(store.clone()).context("opening the audit trail")?);
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(
        store.clone(),
        pki.clone(),
        HubConfig {
            heartbeat_interval: config.heartbeat_interval,
            agent_cert_lifetime: config.agent_cert_ttl,
            ..HubConfig::default()
        },
        metrics,
        audit.clone(),
    )?;
    let endpoint = hub.endpoint(config.quic_listen).context("binding the QUIC endpoint")?;

    let primary = host_for_url(&config.advertise[0]);
    let agent_binary = match config.agent_binary.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("windflow-agent"),
    };
    let settings = Settings {
        public_url: format!("https://{primary}:{}", config.listen.port()),
        quic_endpoint: format!("{primary}:{}", endpoint.local_addr()?.port()),
        server_name: config.advertise[0].clone(),
        agent_binary,
        agent_image: config
            .agent_image
            .clone()
            .unwrap_or_else(|| format!("windflow/agent:{}", env!("CARGO_PKG_VERSION"))),
        agent_cert_lifetime: config.agent_cert_ttl,
        rate_limit_per_s: config.rate_limit,
        rate_burst: config.rate_burst,
        request_timeout: config.request_timeout,
        allowed_origins: config.allowed_origins.clone(),
    };
    let events = Arc::new(crate::deployments::Events::new(store.clone()));
    let reconciler = crate::deployments::Reconciler::new(
        store.clone(),
        hub.clone(),
        events,
        audit.clone(),
        master_key.clone(),
        config.removed_retention,
    );
    let runner = Arc::new(crate::api::workflow_actions::ApiRunner::new(
        crate::api::outbound_http(std::time::Duration::from_secs(60)).map_err(|e| anyhow::anyhow!(e))?,
    ));
    let workflows = crate::workflows::engine::Engine::new(store.clone(), runner.clone());
    let assistant =
        Arc::new(crate::ai::Assistant::new(store.clone(), master_key.clone(), crate::ai::Resilience::default()));
    let state = AppState {
        store: store.clone(),
        pki: pki.clone(),
        hub: hub.clone(),
        auth,
        reconciler: reconciler.clone(),
        logs: crate::logs::LogHub::new(hub.clone()),
        audit,
        sso: Arc::new(crate::sso::Sso::new(store, master_key.clone(), &settings.public_url)),
        master_key,
        login_guard: Arc::default(),
        credential_limiter: crate::api::hardening::CredentialLimiter::new(
            config.token_rate_limit,
            config.token_rate_limit.saturating_mul(3),
        ),
        settings: Arc::new(settings.clone()),
        workflows: workflows.clone(),
        assistant,
        outbound: Arc::new(crate::breaker::Breakers::new(
            crate::api::workflow_actions::OUTBOUND_FAILURES,
            crate::api::workflow_actions::OUTBOUND_PAUSE,
        )),
        lifecycle: Arc::default(),
    };
    runner.attach(state.clone());
    Ok(Assembled { state, endpoint })
}

/// Runs the control plane until `shutdown` resolves.
pub async fn serve(
    mut config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Assembled { state, endpoint } = assemble(&mut config)?;
    let (store, pki, settings) = (state.store.clone(), state.pki.clone(), state.settings.clone());
    let (hub, reconciler, workflows, audit, lifecycle) = (
        state.hub.clone(),
        state.reconciler.clone(),
        state.workflows.clone(),
        state.audit.clone(),
        state.lifecycle.clone(),
    );
    let resumed = workflows.resume_all()?;
    if resumed > 0 {
        tracing::info!(resumed, "workflow runs resumed");
    }

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(pki.server_cert_chain(), pki.server_key_der())?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));

    let handle = axum_server::Handle::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    {
        let (handle, lifecycle, drain_delay) = (handle.clone(), lifecycle.clone(), config.drain_delay);
        tokio::spawn(async move {
            shutdown.await;
            // Not ready any more; after the drain delay the agents are told to come back later
            // (QUIC close code 5) and requests in flight get five seconds to finish.
            lifecycle.set(crate::api::health::Phase::Stopping);
            tracing::info!(drain_delay = ?drain_delay, "shutting down");
            tokio::time::sleep(drain_delay).await;
            let _ = stop.send(true);
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        });
    }
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let quic_addr = endpoint.local_addr()?;
    let hub_task = tokio::spawn(hub.run(endpoint, until_stopped()));
    let migrations_task =
        tokio::spawn(crate::migrations::run(store.clone(), reconciler.clone(), audit.clone(), until_stopped()));
    let rollouts_task =
        tokio::spawn(crate::rollouts::run(store.clone(), reconciler.clone(), audit.clone(), until_stopped()));
    let reconciler_task = tokio::spawn(reconciler.run(until_stopped()));
    let refusals_task = tokio::spawn(crate::audit::close_refusal_windows(audit.clone(), until_stopped()));
    let audit_at_stop = audit.clone();
    let triggers = crate::workflows::triggers::run(workflows.clone(), store.clone(), audit);
    let stopping = until_stopped();
    tokio::spawn(async move {
        tokio::select! {
            () = triggers => {}
            () = stopping => {}
        }
    });
    let http = axum_server::bind_rustls(config.listen, tls)
        .handle(handle.clone())
        .serve(api::router(state).into_make_service_with_connect_info::<SocketAddr>());
    let http_task = tokio::spawn(http);
    if let Some(addr) = handle.listening().await {
        lifecycle.set(crate::api::health::Phase::Serving);
        tracing::info!(api = %addr, quic = %quic_addr, url = %settings.public_url, pin = %pki.server_pin(), "control plane listening");
    }
    http_task.await?.context("HTTPS server")?;
    let _ = hub_task.await;
    let _ = reconciler_task.await;
    let _ = migrations_task.await;
    let _ = rollouts_task.await;
    let _ = refusals_task.await;
    // After the last request: counts of refusals still being coalesced are written now.
    audit_at_stop.close_refusal_windows(true);
    // Relaxed writes (observations, the audit trail) reach the disk before the process ends.
    store.sync().context("flushing the store")?;
    Ok(())
}

/// Rewrites records an older build stored in an older version (see [`crate::store::upgrade`]).
fn upgrade_records(store: &dyn Store) -> anyhow::Result<()> {
    use crate::store::upgrade;
    let rewritten = upgrade::<crate::auth::User>(store)?
        + upgrade::<crate::auth::Session>(store)?
        + upgrade::<crate::orgs::Org>(store)?
        + upgrade::<crate::stacks::StackVersion>(store)?
        + upgrade::<crate::join_tokens::JoinToken>(store)?
        + upgrade::<crate::agents::Agent>(store)?
        + upgrade::<crate::deployments::Deployment>(store)?;
    if rewritten > 0 {
        tracing::info!(records = rewritten, "upgraded stored records to this version");
    }
    Ok(())
}

fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}
