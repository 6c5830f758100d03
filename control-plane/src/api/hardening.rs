//! What protects the HTTP surface as a whole, whatever the route: rate limits per client
//! address and per credential, a time limit per request, the body limit (bodies are read whole
//! before a route may refuse them), CORS for the origins
//! the operator allows, security headers on every answer, and a panic turned into a 500 in the
//! API's error shape instead of a dropped connection.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

use super::error::{ApiError, Code};
use super::{AppState, Settings};

/// Largest request body accepted (a Compose file may be 1 MiB, plus its JSON envelope).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// How much of a too-large body is read and dropped before its 413 is sent; past this the
/// connection is simply closed (and the request time limit bounds the reading too).
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Wraps the whole router, outermost last: what runs first for a request is at the bottom.
pub fn protect(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let settings = &state.settings;
    let router = router
        .layer(middleware::from_fn_with_state(state.clone(), limit_credentials))
        .layer(middleware::from_fn(read_whole_body))
        .layer(middleware::from_fn_with_state(settings.request_timeout, time_limit))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal("a request handler panicked").into_response()
        }));
    let router = match per_address_limit(settings) {
        Some(limit) => router.layer(limit),
        None => router,
    };
    let router = match cors(settings) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(middleware::from_fn(security_headers))
}

/// Reads a request's body before anything may refuse the request. A route that answers without
/// reading it (401, 403, 404 before the body is looked at) would otherwise leave the client still
/// sending while the server closes the connection, and the client would see a reset instead of
/// the answer.
async fn read_whole_body(request: Request, next: Next) -> Response {
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0");
    if !has_body {
        return next.run(request).await;
    }
    let (parts, mut body) = request.into_parts();
    let mut bytes = Vec::new();
    let mut received = 0usize;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let data = match frame {
            Ok(frame) => frame.into_data().unwrap_or_default(),
            Err(error) => {
                return ApiError::new(Code::InvalidBody, format!("the body could not be read: {error}"))
                    .into_response();
            }
        };
        received = received.saturating_add(data.len());
        if received <= MAX_BODY {
            bytes.extend_from_slice(&data);
        } else if received > DRAIN_LIMIT {
            break;
        }
    }
    if received > MAX_BODY {
        // The rest was read and dropped (up to DRAIN_LIMIT), so the client, still sending
        // when the limit was passed, gets this answer rather than a broken pipe.
        return ApiError::new(Code::PayloadTooLarge, format!("the body is over {MAX_BODY} bytes")).into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

type AddressLimit = tower_governor::GovernorLayer<
    tower_governor::key_extractor::PeerIpKeyExtractor,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    axum::body::Body,
>;

fn rate_limited(wait_s: u64, what: &str) -> ApiError {
    ApiError {
        retry_after_s: Some(wait_s.max(1)),
        ..ApiError::new(Code::RateLimited, format!("too many requests from this {what}; slow down"))
    }
}

/// A token bucket per client address. Idle addresses are forgotten every minute.
fn per_address_limit(settings: &Settings) -> Option<AddressLimit> {
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
            GovernorError::TooManyRequests { wait_time, .. } => rate_limited(wait_time, "address"),
            GovernorError::UnableToExtractKey | GovernorError::Other { .. } => {
                ApiError::internal(format!("rate limiter: {error}"))
            }
        };
        error.into_response()
    }))
}

/// A token bucket per bearer credential (session or API token), so that one script cannot
/// starve the others that share its address.
pub struct CredentialLimiter {
    limiter: governor::DefaultKeyedRateLimiter<[u8; 16]>,
    clock: governor::clock::DefaultClock,
}

impl std::fmt::Debug for CredentialLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialLimiter")
    }
}

impl CredentialLimiter {
    /// `None` when the limit is off (0 per second).
    pub fn new(per_s: u32, burst: u32) -> Option<Arc<Self>> {
        let quota = Quota::per_second(NonZeroU32::new(per_s)?).allow_burst(NonZeroU32::new(burst.max(1))?);
        let limiter = Arc::new(Self { limiter: RateLimiter::keyed(quota), clock: Default::default() });
        let idle = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            while let Some(limiter) = idle.upgrade() {
                limiter.limiter.retain_recent();
                drop(limiter);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        Some(limiter)
    }

    /// Seconds to wait, if the credential is over its rate.
    fn check(&self, bearer: &str) -> Result<(), u64> {
        // Keyed by a hash: the limiter never holds a credential.
        let digest = Sha256::digest(bearer.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        self.limiter.check_key(&key).map_err(|not_until| {
            use governor::clock::Clock;
            not_until.wait_time_from(self.clock.now()).as_secs()
        })
    }
}

async fn limit_credentials(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let (Some(limiter), Some(bearer)) = (&state.credential_limiter, bearer)
        && let Err(wait_s) = limiter.check(bearer)
    {
        return rate_limited(wait_s, "credential").into_response();
    }
    next.run(request).await
}

/// Answers 503 when a request takes longer than the limit. Streams (logs, events) are not
/// cut: the limit covers the time to the start of an answer, not its body.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            Code::Timeout,
            format!("the request took longer than {} s; the work may go on in the background", limit.as_secs()),
        )
        .into_response(),
    }
}

/// The dashboard is served from the API's own origin, so no other origin is allowed unless the
/// operator names it (e.g. a development server for the dashboard).
fn cors(settings: &Settings) -> Option<tower_http::cors::CorsLayer> {
    let origins: Vec<HeaderValue> = settings.allowed_origins.iter().filter_map(|o| o.parse().ok()).collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                axum::http::HeaderName::from_static(super::auth::ORG_HEADER),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Images from any https site: the marketplace shows templates' logos and screenshots
        // where their projects publish them (no referrer is sent, see above).
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
