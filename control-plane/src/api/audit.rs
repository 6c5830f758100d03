//! `/events` (the audit trail, filtered and paged, or live over SSE) and `/audit/verify`; and the
//! middleware that records every mutating API request. Readable by installation administrators.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiQuery};
use super::{AppState, Page, PageQuery, rfc3339_ms};
use crate::audit::{Entry, Fact};
use crate::auth::Caller;
use crate::orgs::Role;
use uuid::Uuid;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(stream_events)).routes(routes!(verify))
}

/// Records every mutating request under /api: who (from the bearer token), what (method and
/// path, never the body or the query), the status and the remote address. Refusals repeated
/// within a minute are coalesced into one entry and a count.
pub async fn record_requests(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !mutating || !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let object = format!("{} {}", request.method(), request.uri().path());
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let actor = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|bearer| match crate::api_tokens::unverified_id(bearer) {
            Some(id) => Some(format!("token:{id}")),
            None => state.auth.token_subject(bearer).map(|name| format!("user:{name}")),
        })
        .unwrap_or_else(|| "anonymous".to_owned());
    // The Caller extractor fills this in with the organisation the request acted in.
    let acting_org = super::auth::ActingOrg::default();
    request.extensions_mut().insert(acting_org.clone());
    let response = next.run(request).await;
    // Routes about one organisation's objects act in the caller's; `/orgs/{id}/…` in that one.
    let org_id = acting_org.0.lock().unwrap_or_else(|e| e.into_inner()).or_else(|| org_in_path(&object));
    let status = response.status().as_u16();
    let fact = Fact { actor, kind: "api.request", object, status: Some(status), remote, org_id, ..Fact::default() };
    if crate::audit::is_refusal(status) {
        state.audit.record_refusal(fact);
    } else {
        state.audit.record(fact);
    }
    response
}

/// Which entries the caller may read: an installation administrator reads them all; an
/// organisation's admins and owners read that organisation's.
fn visible_org(caller: &Caller) -> Result<Option<Uuid>, ApiError> {
    if caller.is_admin {
        return Ok(None);
    }
    match caller.role {
        Some(role) if role >= Role::Admin => Ok(Some(caller.org_id)),
        _ => Err(ApiError::forbidden("the audit trail is for the organisation's admins and owners")),
    }
}

fn org_in_path(object: &str) -> Option<Uuid> {
    let path = object.split_once(' ')?.1;
    let rest = path.strip_prefix("/api/v1/orgs/")?;
    Uuid::try_parse(rest.split('/').next()?).ok()
}

/// One entry of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryView {
    seq: u64,
    at: String,
    /// `user:<name>`, `token:<id>`, `agent:<id>`, `anonymous` or `system`.
    actor: String,
    /// What happened: `api.request`, `agent.connected`, `deployment.applied`…
    kind: String,
    /// What it happened to: `POST /api/v1/stacks`, a deployment id…
    object: String,
    /// The HTTP status, for requests.
    status: Option<u16>,
    detail: Option<String>,
    remote: Option<String>,
    org_id: Option<Uuid>,
    /// This entry's link in the hash chain.
    hash: String,
}

fn entry_view(entry: &Entry) -> EntryView {
    EntryView {
        seq: entry.seq,
        at: rfc3339_ms(entry.at_unix_ms),
        actor: entry.actor.clone(),
        kind: entry.kind.clone(),
        object: entry.object.clone(),
        status: entry.status,
        detail: entry.detail.clone(),
        remote: entry.remote.clone(),
        org_id: entry.org_id,
        hash: entry.hash.clone(),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Filters {
    /// Exactly this actor, e.g. `user:alice`.
    actor: Option<String>,
    /// Exactly this kind, or a family such as `agent`.
    kind: Option<String>,
    /// Exact, or a prefix such as `POST /api/v1/stacks`.
    object: Option<String>,
    /// From this time: Unix seconds or RFC 3339.
    since: Option<String>,
    /// Until this time: Unix seconds or RFC 3339.
    until: Option<String>,
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<usize>,
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<usize>,
}

fn parse_time(field: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .map(|s| s * 1000)
        .or_else(|| {
            time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                .ok()
                .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        })
        .ok_or_else(|| ApiError::invalid(field, format!("{field} must be Unix seconds or an RFC 3339 time")))
}

impl Filters {
    /// The entries these filters keep, among those of `org` (all when `None`). Empty filters
    /// (as a form sends them) filter nothing.
    fn matcher(&self, org: Option<Uuid>) -> Result<impl Fn(&Entry) -> bool + '_, ApiError> {
        fn given(filter: &Option<String>) -> Option<&str> {
            filter.as_deref().filter(|s| !s.is_empty())
        }
        let since = given(&self.since).map(|s| parse_time("since", s)).transpose()?;
        let until = given(&self.until).map(|s| parse_time("until", s)).transpose()?;
        let (actor, object, kind) = (given(&self.actor), given(&self.object), given(&self.kind));
        Ok(move |e: &Entry| {
            org.is_none_or(|org| e.org_id == Some(org))
                && actor.is_none_or(|a| e.actor == a)
                && object.is_none_or(|o| e.object.starts_with(o))
                && kind.is_none_or(|k| e.kind == k || e.kind.strip_prefix(k).is_some_and(|rest| rest.starts_with('.')))
                && since.is_none_or(|s| e.at_unix_ms >= s)
                && until.is_none_or(|u| e.at_unix_ms <= u)
        })
    }
}

/// The trail, newest first, with filters. An organisation's admins and owners see its entries;
/// installation administrators see all.
#[utoipa::path(get, path = "/events", tag = "audit", params(Filters), responses((status = 200, body = Page<EntryView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filters): ApiQuery<Filters>,
) -> Result<Json<Page<EntryView>>, ApiError> {
    let matches = filters.matcher(visible_org(&caller)?)?;
    let mut all: Vec<EntryView> = state.audit.entries()?.iter().filter(|e| matches(e)).map(entry_view).collect();
    all.reverse();
    Ok(Json(PageQuery { page: filters.page, per_page: filters.per_page }.apply(all)?))
}

/// New entries as they are written, as Server-Sent Events (`audit` events carrying an
/// `EntryView`; `skipped` when this follower fell behind), with the same filters.
#[utoipa::path(get, path = "/events/stream", tag = "audit", params(Filters),
    responses((status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String)))]
async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filters): ApiQuery<Filters>,
) -> Result<Response, ApiError> {
    let org = visible_org(&caller)?;
    // Refuse bad filters now, not after the stream has started.
    filters.matcher(org).map(drop)?;
    let live = state.audit.subscribe();
    let events = stream::unfold((live, filters), move |(mut live, filters)| async move {
        loop {
            match live.recv().await {
                Ok(entry) => {
                    let keep = filters.matcher(org).map(|m| m(&entry)).unwrap_or(false);
                    if keep {
                        let event = SseEvent::default()
                            .event("audit")
                            .id(entry.seq.to_string())
                            .data(serde_json::to_string(&entry_view(&entry)).unwrap_or_default());
                        return Some((Ok::<_, Infallible>(event), (live, filters)));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    let marker = SseEvent::default().event("skipped").data(json!({ "skipped": skipped }).to_string());
                    return Some((Ok(marker), (live, filters)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(crate::metrics::tracked(events.boxed(), state.hub.metrics.clone()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Walks the hash chain and names the first entry that was changed, removed or moved
/// (installation administrators).
#[utoipa::path(get, path = "/audit/verify", tag = "audit", responses((status = 200, body = crate::audit::Verification)))]
async fn verify(State(state): State<AppState>, caller: Caller) -> Result<Json<crate::audit::Verification>, ApiError> {
    // The chain spans every organisation: only an installation administrator walks it.
    if !caller.is_admin {
        return Err(ApiError::forbidden("verifying the audit trail is for installation administrators"));
    }
    Ok(Json(state.audit.verify()?))
}
