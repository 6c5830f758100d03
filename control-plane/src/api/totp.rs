//! `/auth/totp`: the caller's own two-factor authentication — enrol a device (the `otpauth://`
//! URL goes into a QR code), confirm it with a first code, renew recovery codes, turn it off.
//! Signed-in sessions only: an API token cannot change how its user signs in.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::blocking;
use super::error::{ApiError, ApiJson};
use crate::auth::{AuthError, Caller, User};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status, begin))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(renew_recovery_codes))
}

fn current_user(state: &AppState, caller: &Caller) -> Result<User, ApiError> {
    state.auth.user(&caller.username)?.filter(|u| u.id == caller.user_id).ok_or_else(|| ApiError::not_found("user"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotpStatus {
    /// Sign-ins need a code.
    enabled: bool,
    /// Enrolment started and waits for a first code.
    pending: bool,
    /// Recovery codes not used yet.
    recovery_codes_left: usize,
}

/// Whether the caller's account has two-factor authentication.
#[utoipa::path(get, path = "/auth/totp", tag = "auth", responses((status = 200, body = TotpStatus)))]
async fn status(State(state): State<AppState>, caller: Caller) -> Result<Json<TotpStatus>, ApiError> {
    let user = current_user(&state, &caller)?;
    let totp = user.totp.as_ref();
    Ok(Json(TotpStatus {
        enabled: totp.is_some_and(|t| t.enabled),
        pending: totp.is_some_and(|t| !t.enabled),
        recovery_codes_left: totp.map_or(0, |t| t.recovery_hashes.len()),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// The seed, base32, for typing into an app by hand.
    secret: String,
    /// The seed and its settings for a QR code.
    #[schema(example = "otpauth://totp/WindFlow:alice?secret=JBSWY3DPEHPK3PXP&issuer=WindFlow")]
    otpauth_url: String,
}

/// Starts enrolment (or starts it again): a new seed, enabled once `/auth/totp/enable` sees a
/// code from it.
#[utoipa::path(post, path = "/auth/totp", tag = "auth",
    responses((status = 201, description = "Enrolment started", body = TotpEnrolment)))]
async fn begin(State(state): State<AppState>, caller: Caller) -> Result<(StatusCode, Json<TotpEnrolment>), ApiError> {
    let user = current_user(&state, &caller)?;
    let enrolment = state.auth.begin_totp(&user)?;
    tracing::info!(user = %caller.username, "two-factor enrolment started");
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrolment { secret: enrolment.secret_base32, otpauth_url: enrolment.otpauth_url }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// Six digits from the authenticator app.
    #[schema(example = "123456")]
    code: String,
}

/// Recovery codes: each signs in once in place of a code from the app. Shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// Turns two-factor authentication on with a first code from the app.
#[utoipa::path(post, path = "/auth/totp/enable", tag = "auth", request_body = CodeRequest,
    responses((status = 200, description = "Enabled", body = RecoveryCodes)))]
async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let user = current_user(&state, &caller)?;
    let recovery_codes = state.auth.enable_totp(&user, &body.code)?;
    tracing::info!(user = %caller.username, "two-factor authentication enabled");
    Ok(Json(RecoveryCodes { recovery_codes }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    password: String,
}

/// Turns two-factor authentication off, after checking the password.
#[utoipa::path(post, path = "/auth/totp/disable", tag = "auth", request_body = PasswordRequest,
    responses((status = 204, description = "Disabled")))]
async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordRequest>,
) -> Result<StatusCode, ApiError> {
    let user = current_user(&state, &caller)?;
    let auth = state.auth.clone();
    blocking(move || {
        if !auth.check_password(&user, &body.password) {
            return Err(AuthError::BadCredentials);
        }
        auth.disable_totp(&user)
    })
    .await
    .map_err(|e| if e.code == super::Code::BadCredentials { e.on("password") } else { e })?;
    tracing::warn!(user = %caller.username, "two-factor authentication disabled");
    Ok(StatusCode::NO_CONTENT)
}

/// New recovery codes for a code from the app; the old ones stop working.
#[utoipa::path(post, path = "/auth/totp/recovery-codes", tag = "auth", request_body = CodeRequest,
    responses((status = 200, description = "New codes", body = RecoveryCodes)))]
async fn renew_recovery_codes(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let user = current_user(&state, &caller)?;
    let recovery_codes = state.auth.renew_recovery_codes(&user, &body.code)?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}
