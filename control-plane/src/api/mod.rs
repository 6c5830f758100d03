//! The HTTP surface: REST under `/api/v1`, health and metrics, and the enrollment files
//! (`/install.sh`, `/ca.pem`, `/downloads/…`).
//!
//! JSON DTOs live only here; domain modules never see a request or a response. Every error
//! has the same JSON shape (see [`error`]).

pub mod ai;
pub mod audit;
pub mod auth;
pub mod deployments;
pub mod enroll;
pub mod error;
pub mod hardening;
pub mod health;
pub mod mcp;
pub mod migrations;
pub mod openapi;
pub mod orgs;
pub mod rollouts;
pub mod sso;
pub mod stacks;
pub mod targets;
pub mod templates;
pub mod totp;
pub mod users;
pub mod workflow_actions;
pub mod workflows;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::{self, Next};
use axum::response::Response;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Auth;
use crate::hub::Hub;
use crate::pki::Pki;
use crate::store::Store;

pub use error::{ApiError, Code};

/// What the HTTP layer needs to know about how the control plane is reached.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `https://host:port` as agents and users reach the API.
    pub public_url: String,
    /// `host:port` of the QUIC endpoint as agents reach it.
    pub quic_endpoint: String,
    /// The name agents check the server certificate against.
    pub server_name: String,
    pub agent_binary: PathBuf,
    /// The agent's container image, for the in-cluster manifests.
    pub agent_image: String,
    pub agent_cert_lifetime: Duration,
    /// Requests per second allowed from one address (0: no limit), and the burst above it.
    pub rate_limit_per_s: u32,
    pub rate_burst: u32,
    /// How long a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Origins other than the control plane's own that browsers may call the API from.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub pki: Arc<Pki>,
    pub hub: Arc<Hub>,
    pub auth: Arc<Auth>,
    pub reconciler: Arc<crate::deployments::Reconciler>,
    pub logs: Arc<crate::logs::LogHub>,
    pub audit: Arc<crate::audit::AuditLog>,
    pub master_key: Arc<crate::sealing::MasterKey>,
    pub sso: Arc<crate::sso::Sso>,
    pub login_guard: Arc<crate::login_guard::LoginGuard>,
    /// Requests per credential; `None` when that limit is off.
    pub credential_limiter: Option<Arc<hardening::CredentialLimiter>>,
    pub settings: Arc<Settings>,
    pub workflows: Arc<crate::workflows::engine::Engine>,
    pub assistant: Arc<crate::ai::Assistant>,
    /// Circuit breakers of the hosts workflows call (HTTP nodes, webhook and Slack notifications).
    pub outbound: Arc<crate::breaker::Breakers>,
    /// Starting, serving or stopping: what the probes answer.
    pub lifecycle: Arc<health::Lifecycle>,
}

/// Every route under `/api/v1`, each documented in the OpenAPI document as it is registered.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(totp::routes())
        .merge(sso::routes())
        .merge(targets::routes())
        .merge(stacks::routes())
        .merge(deployments::routes())
        .merge(migrations::routes())
        .merge(rollouts::routes())
        .merge(templates::routes())
        .merge(workflows::routes())
        .merge(ai::routes())
        .merge(audit::routes())
        .merge(orgs::routes())
        .merge(users::routes())
        .merge(enroll::api_routes())
}

/// The API's routes and their OpenAPI document. Nested before splitting, so that the
/// document's paths carry `/api/v1`.
fn api_and_document() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, document) =
        OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).nest("/api/v1", api_routes()).split_for_parts();
    (api, openapi::finish(document))
}

/// The OpenAPI document of the whole API (what `/api/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_and_document().1
}

pub fn router(state: AppState) -> Router {
    let (api, document) = api_and_document();
    let router = Router::new()
        .merge(api)
        .merge(openapi::docs(document))
        .merge(health::routes())
        .merge(enroll::file_routes())
        .merge(mcp::routes(state.clone()))
        // Unknown API paths answer in the API's error shape; every other path is the dashboard's
        // (its own routes are the browser's, so deep links load the app).
        .route("/api/{*rest}", axum::routing::any(|| async { ApiError::not_found("route") }))
        .fallback_service(dashboard())
        .layer(middleware::from_fn_with_state(state.clone(), audit::record_requests))
        .layer(middleware::from_fn_with_state(state.clone(), measure_requests));
    hardening::protect(router, &state).with_state(state)
}

/// The dashboard, embedded at build time (see `build.rs`): compressed, with ETags, its hashed
/// assets cached for good and `index.html` for every path it does not have.
fn dashboard() -> Router {
    memory_serve::load!()
        .index_file(Some("/index.html"))
        .fallback(Some("/index.html"))
        .fallback_status(axum::http::StatusCode::OK)
        .html_cache_control(memory_serve::CacheControl::NoCache)
        .into_router()
}

/// Counts and times every request by its route template (never by its concrete path, which
/// would make one series per id).
async fn measure_requests(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.hub.metrics.observe_request(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

/// The highest page number a list answers (with at most 500 per page, far past any list).
const MAX_PAGE: usize = 1_000_000;

/// `?page=&per_page=` on list routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The page, from 1.
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<usize>,
    /// Items per page: 50 by default, 500 at most.
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<usize>,
}

/// One page of a list.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many there are in all pages.
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
}

/// A whole list, not paged (short by nature: an organisation's members, a user's tokens).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

impl<T> From<Vec<T>> for Items<T> {
    fn from(items: Vec<T>) -> Self {
        Self { items }
    }
}

impl PageQuery {
    /// Page number and size, checked: (page, per_page, offset).
    pub fn bounds(&self) -> Result<(usize, usize, usize), ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(50);
        if !(1..=MAX_PAGE).contains(&page) {
            return Err(ApiError::invalid("page", format!("page must be between 1 and {MAX_PAGE}")));
        }
        if !(1..=500).contains(&per_page) {
            return Err(ApiError::invalid("per_page", "per_page must be between 1 and 500"));
        }
        Ok((page, per_page, (page - 1) * per_page))
    }

    /// A page of items that the store already paged, with the total.
    pub fn paged<T>(&self, total: usize, items: Vec<T>) -> Result<Page<T>, ApiError> {
        let (page, per_page, _) = self.bounds()?;
        Ok(Page { items, total, page, per_page })
    }

    /// Pages a list held in full.
    pub fn apply<T>(&self, all: Vec<T>) -> Result<Page<T>, ApiError> {
        let (_, per_page, offset) = self.bounds()?;
        let total = all.len();
        self.paged(total, all.into_iter().skip(offset).take(per_page).collect())
    }
}

/// RFC 3339 for a Unix time in seconds.
pub fn rfc3339_s(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// RFC 3339 for a Unix time in milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// An HTTP client for what the control plane fetches or calls on people's behalf (template
/// files, workflow requests and notifications): the system's trusted roots, at most three
/// redirects, and a time limit.
pub fn outbound_http(timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::limited(3))
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}
