//! The HTTP surface: REST under `/api/v1`, health and metrics, and the enrollment files
//! (`/install.sh`, `/ca.pem`, `/downloads/…`).
//!
//! JSON DTOs live only here; domain modules never see a request or a response. Every error
//! has the same JSON shape (see [`error`]).

pub mod audit;
pub mod auth;
pub mod deployments;
pub mod enroll;
pub mod error;
pub mod health;
pub mod orgs;
pub mod stacks;
pub mod targets;
pub mod users;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;

use crate::auth::Auth;
use crate::hub::Hub;
use crate::pki::Pki;
use crate::store::Store;

pub use error::ApiError;

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
    pub agent_cert_lifetime: Duration,
    /// Requests per second allowed from one address (0: no limit), and the burst above it.
    pub rate_limit_per_s: u32,
    pub rate_burst: u32,
}

/// Largest request body accepted (a Compose file may be 1 MiB, plus its JSON envelope).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub pki: Arc<Pki>,
    pub hub: Arc<Hub>,
    pub auth: Arc<Auth>,
    pub reconciler: Arc<crate::deployments::Reconciler>,
    pub logs: Arc<crate::logs::LogHub>,
    pub audit: Arc<crate::audit::AuditLog>,
    pub login_guard: Arc<crate::login_guard::LoginGuard>,
    pub settings: Arc<Settings>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(auth::routes())
        .merge(targets::routes())
        .merge(stacks::routes())
        .merge(deployments::routes())
        .merge(audit::routes())
        .merge(orgs::routes())
        .merge(users::routes())
        .merge(enroll::api_routes());
    let router = Router::new()
        .nest("/api/v1", api)
        .merge(health::routes())
        .merge(enroll::file_routes())
        .route("/", axum::routing::get(dashboard))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::from_fn_with_state(state.clone(), audit::record_requests))
        .layer(middleware::from_fn_with_state(state.clone(), measure_requests))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    let router = match rate_limit(&state.settings) {
        Some(limit) => router.layer(limit),
        None => router,
    };
    router.layer(middleware::from_fn(security_headers)).with_state(state)
}

type RateLimit = tower_governor::GovernorLayer<
    tower_governor::key_extractor::PeerIpKeyExtractor,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    axum::body::Body,
>;

/// Per-address rate limiting: a token bucket per client IP, answered with the API's error shape
/// and `Retry-After`. Idle addresses are forgotten every minute.
fn rate_limit(settings: &Settings) -> Option<RateLimit> {
    if settings.rate_limit_per_s == 0 {
        return None;
    }
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1_000_000_000 / u64::from(settings.rate_limit_per_s))
        .burst_size(settings.rate_burst.max(1))
        .finish()?;
    let limiter = config.limiter().clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            limiter.retain_recent();
        }
    });
    Some(tower_governor::GovernorLayer::new(config).error_handler(|error| {
        use tower_governor::GovernorError;
        let error = match error {
            GovernorError::TooManyRequests { wait_time, .. } => ApiError {
                retry_after_s: Some(wait_time.max(1)),
                ..ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests from this address; slow down",
                )
            },
            GovernorError::UnableToExtractKey => {
                ApiError::new(axum::http::StatusCode::BAD_REQUEST, "no_peer_address", "the client address is unknown")
            }
            GovernorError::Other { code, msg, .. } => ApiError::new(code, "rate_limit_error", msg.unwrap_or_default()),
        };
        axum::response::IntoResponse::into_response(error)
    }))
}

async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../../dashboard/index.html"))
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

async fn security_headers(request: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `?page=&per_page=` on list routes (pages start at 1; 50 per page by default, 500 at most).
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    pub page: Option<usize>,
    pub per_page: Option<usize>,
}

/// One page of a list.
#[derive(Debug, serde::Serialize)]
pub struct Page<T> {
    items: Vec<T>,
    total: usize,
    page: usize,
    per_page: usize,
}

impl PageQuery {
    /// Page number and size, checked: (page, per_page, offset).
    pub fn bounds(&self) -> Result<(usize, usize, usize), ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(50);
        if page == 0 {
            return Err(ApiError::invalid("page", "page numbers start at 1"));
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
