//! The one error shape of the API, `{"error": {"code", "message", "field"?, "details"?}}`, and
//! the one table of error codes ([`Code`]) that gives each its HTTP status and meaning. Internal
//! details are logged, never returned.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::agents::EnrollError;
use crate::auth::AuthError;
use crate::hub::HubError;
use crate::join_tokens::JoinTokenError;
use crate::store::StoreError;

macro_rules! codes {
    ($($variant:ident = $status:ident, $text:literal, $doc:literal;)*) => {
        /// Every error code the API answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $(#[doc = $doc] $variant,)*
        }

        impl Code {
            pub const ALL: &[Code] = &[$(Code::$variant,)*];

            pub fn status(self) -> StatusCode {
                match self { $(Code::$variant => StatusCode::$status,)* }
            }

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $text,)* }
            }

            pub fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $doc,)* }
            }
        }
    };
}

codes! {
    InvalidBody = BAD_REQUEST, "invalid_body", "The body is not the JSON this route takes; the message says which field and where. 400 for malformed JSON, 422 for a missing or mistyped field, 415 without a JSON content type.";
    InvalidQuery = BAD_REQUEST, "invalid_query", "A query parameter has the wrong type.";
    InvalidField = UNPROCESSABLE_ENTITY, "invalid_field", "A field has a value this route refuses; `field` names it.";
    InvalidCompose = UNPROCESSABLE_ENTITY, "invalid_compose", "The Compose file does not validate; `details.errors` say where (path, or line and column).";
    AiAnswerInvalid = UNPROCESSABLE_ENTITY, "ai_answer_invalid", "The model's answers never passed the stack pipeline; `details.errors` are the last round's, `details.last_answer` its answer. Nothing was saved.";
    InvalidTemplate = UNPROCESSABLE_ENTITY, "invalid_template", "The template does not pass its checks; `details.errors` say where (path, or line and column).";
    InvalidWorkflow = UNPROCESSABLE_ENTITY, "invalid_workflow", "The workflow does not pass its checks; `details.problems` name the node or edge of each.";
    IncompatibleStack = UNPROCESSABLE_ENTITY, "incompatible_stack", "The stack uses what the target's platform cannot do; `details.findings` list each (path, message, blocking).";
    PlatformUnavailable = UNPROCESSABLE_ENTITY, "platform_unavailable", "The target cannot drive the platform the deploy needs (no such driver, no cluster access); the message gives the agent's reason.";
    WeakPassword = UNPROCESSABLE_ENTITY, "weak_password", "The password breaks the password policy.";
    Unauthenticated = UNAUTHORIZED, "unauthenticated", "No valid bearer token: missing, malformed, expired, wrongly signed, or its session was signed out.";
    BadCredentials = UNAUTHORIZED, "bad_credentials", "Wrong user name or password.";
    BadRefreshToken = UNAUTHORIZED, "bad_refresh_token", "The refresh token is invalid, expired, spent or revoked.";
    SecondFactorRequired = UNAUTHORIZED, "second_factor_required", "The password was right; finish signing in at /auth/login/totp with `details.mfa_token` and a code.";
    BadSecondFactor = UNAUTHORIZED, "bad_second_factor", "The TOTP or recovery code is wrong, expired or already used.";
    BadMfaToken = UNAUTHORIZED, "bad_mfa_token", "The sign-in step expired or is invalid; sign in with the password again.";
    SsoFailed = UNAUTHORIZED, "sso_failed", "Single sign-on did not complete (refused by the provider, a bad state, or an ID token that does not verify).";
    JoinTokenInvalid = UNAUTHORIZED, "join_token_invalid", "The join token does not exist.";
    Forbidden = FORBIDDEN, "forbidden", "The caller's role does not allow this here.";
    InsufficientScope = FORBIDDEN, "insufficient_scope", "The API token's scope does not allow this.";
    SessionRequired = FORBIDDEN, "session_required", "This needs a signed-in session, not an API token.";
    OrgRequiresSecondFactor = FORBIDDEN, "org_requires_second_factor", "The organisation requires two-factor authentication; enrol at /auth/totp and sign in with it.";
    AccountDisabled = FORBIDDEN, "account_disabled", "The account is disabled.";
    JoinTokenRevoked = FORBIDDEN, "join_token_revoked", "The join token was revoked.";
    JoinTokenExpired = FORBIDDEN, "join_token_expired", "The join token expired.";
    JoinTokenUsedUp = FORBIDDEN, "join_token_used_up", "The join token has no uses left.";
    JoinTokenMalformed = BAD_REQUEST, "join_token_malformed", "The join token does not have the shape of one.";
    NotFound = NOT_FOUND, "not_found", "No such object here; objects of other organisations answer this too.";
    Conflict = CONFLICT, "conflict", "The object changed meanwhile; read it again and retry.";
    NameTaken = CONFLICT, "name_taken", "The name is in use.";
    UserExists = CONFLICT, "user_exists", "A user with this name exists.";
    AlreadyMember = CONFLICT, "already_member", "The user is already a member.";
    LastOwner = CONFLICT, "last_owner", "An organisation keeps at least one owner.";
    OrgNotEmpty = CONFLICT, "org_not_empty", "The organisation still holds targets, stacks or deployments.";
    SelfChange = CONFLICT, "self_change", "Administrators cannot disable themselves or change their own administrator status.";
    StackInUse = CONFLICT, "stack_in_use", "The stack is deployed; remove its deployments first.";
    TargetRevoked = CONFLICT, "target_revoked", "The target is revoked.";
    NoPreviousVersion = CONFLICT, "no_previous_version", "There is no version before this one to roll back to.";
    TotpAlreadyEnabled = CONFLICT, "totp_already_enabled", "Two-factor authentication is already enabled.";
    TotpNotEnrolled = CONFLICT, "totp_not_enrolled", "Two-factor authentication is not set up for this account.";
    SsoNotConfigured = CONFLICT, "sso_not_configured", "The organisation has no single sign-on configured.";
    AiNotConfigured = CONFLICT, "ai_not_configured", "The organisation has no language model configured; the rule analyser works without one.";
    AgentNotConnected = CONFLICT, "agent_not_connected", "The target's agent is not connected.";
    TooManyAttempts = TOO_MANY_REQUESTS, "too_many_attempts", "Too many failed sign-ins for this account or address; wait `Retry-After` seconds.";
    RateLimited = TOO_MANY_REQUESTS, "rate_limited", "Too many requests from this address or token; wait `Retry-After` seconds.";
    PayloadTooLarge = PAYLOAD_TOO_LARGE, "payload_too_large", "The body is over the size limit.";
    AgentLinkFailed = BAD_GATEWAY, "agent_link_failed", "The link to the agent failed during the request.";
    JobRefused = BAD_GATEWAY, "job_refused", "The agent refused the job.";
    JobFailed = BAD_GATEWAY, "job_failed", "The agent ran the job and it failed.";
    SsoProviderUnavailable = BAD_GATEWAY, "sso_provider_unavailable", "The identity provider did not answer as expected.";
    AiProviderFailed = BAD_GATEWAY, "ai_provider_failed", "The language-model provider refused or failed the request; the message is the provider's.";
    AiCircuitOpen = SERVICE_UNAVAILABLE, "ai_circuit_open", "The language-model provider failed repeatedly; calls to it are paused (`details.retry_in_s`).";
    AgentBinaryMissing = SERVICE_UNAVAILABLE, "agent_binary_missing", "This control plane has no agent binary to serve.";
    AgentTimeout = GATEWAY_TIMEOUT, "agent_timeout", "The agent did not answer in time.";
    AgentCircuitOpen = SERVICE_UNAVAILABLE, "agent_circuit_open", "Jobs for this agent failed on the link repeatedly; they are paused for a few seconds (its next session resumes them).";
    Timeout = REQUEST_TIMEOUT, "timeout", "The request took longer than the control plane allows.";
    Internal = INTERNAL_SERVER_ERROR, "internal", "An internal error; the control plane's log says more.";
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for Code {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let table: String = Code::ALL
            .iter()
            .map(|c| format!("\n- `{}` ({}): {}", c.as_str(), c.status().as_u16(), c.meaning()))
            .collect();
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Code::ALL.iter().map(|c| c.as_str())))
            .description(Some(format!("What went wrong, from one table:{table}")))
            .into()
    }
}

impl ToSchema for Code {}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_compose", "message": "the Compose file is not valid: services.web.ports[0]: invalid port", "field": "compose", "details": {"errors": [{"path": "services.web.ports[0]", "message": "invalid port"}], "warnings": []}}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: Code,
    /// For people: what went wrong and, where it helps, what to do.
    pub message: String,
    /// The request field (or header or parameter) that was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Structured extras, e.g. every diagnostic of a refused Compose file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub field: Option<String>,
    pub details: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header (429 answers).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { status: code.status(), code, message: message.into(), field: None, details: None, retry_after_s: None }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidField, message).on(field)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// Names the field (or header or parameter) the error is about.
    pub fn on(self, field: &str) -> Self {
        Self { field: Some(field.into()), ..self }
    }

    pub fn with_details(self, details: serde_json::Value) -> Self {
        Self { details: Some(details), ..self }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error answering a request");
        Self::new(Code::Internal, "internal error; see the control plane's log")
    }
}

impl ApiError {
    /// The error as the API writes it, for answers that are not a response of their own (an
    /// `error` event of a stream).
    pub fn into_body(self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail { code: self.code, message: self.message, field: self.field, details: self.details },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, retry_after_s) = (self.status, self.retry_after_s);
        let mut response = (status, Json(self.into_body())).into_response();
        if let Some(seconds) = retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // 415 without a JSON content type, 422 for wrong fields, 413 over the body limit, 400
        // else; serde's message
        // names the field and position, e.g. "missing field `username` at line 1 column 2".
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { Code::PayloadTooLarge } else { Code::InvalidBody };
        Self { status, ..Self::new(code, rejection.body_text()) }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(e)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let e = match e {
            AuthError::Org(e) => return e.into(),
            other => other,
        };
        let code = match &e {
            AuthError::BadCredentials => Code::BadCredentials,
            AuthError::BadAccessToken | AuthError::SessionRevoked => Code::Unauthenticated,
            AuthError::BadRefreshToken => Code::BadRefreshToken,
            AuthError::Disabled => Code::AccountDisabled,
            AuthError::UserExists(_) => return Self::new(Code::UserExists, e.to_string()).on("username"),
            AuthError::BadUsername => return Self::invalid("username", e.to_string()),
            AuthError::WeakPassword(_) => return Self::new(Code::WeakPassword, e.to_string()).on("password"),
            AuthError::Conflict => Code::Conflict,
            AuthError::TotpAlreadyEnabled => Code::TotpAlreadyEnabled,
            AuthError::TotpNotEnrolled => Code::TotpNotEnrolled,
            AuthError::BadSecondFactor => return Self::new(Code::BadSecondFactor, e.to_string()).on("code"),
            AuthError::BadMfaToken => return Self::new(Code::BadMfaToken, e.to_string()).on("mfa_token"),
            AuthError::Store(_) | AuthError::Hash(_) | AuthError::Org(_) => return Self::internal(e),
        };
        Self::new(code, e.to_string())
    }
}

impl From<crate::orgs::OrgError> for ApiError {
    fn from(e: crate::orgs::OrgError) -> Self {
        use crate::orgs::OrgError;
        match e {
            OrgError::BadName => Self::invalid("name", e.to_string()),
            OrgError::NameTaken(_) => Self::new(Code::NameTaken, e.to_string()).on("name"),
            OrgError::LastOwner => Self::new(Code::LastOwner, e.to_string()),
            OrgError::Conflict => Self::new(Code::Conflict, e.to_string()),
            OrgError::Store(e) => e.into(),
        }
    }
}

impl From<JoinTokenError> for ApiError {
    fn from(e: JoinTokenError) -> Self {
        let code = match &e {
            JoinTokenError::Malformed => Code::JoinTokenMalformed,
            JoinTokenError::Unknown => Code::JoinTokenInvalid,
            JoinTokenError::Revoked => Code::JoinTokenRevoked,
            JoinTokenError::Expired => Code::JoinTokenExpired,
            JoinTokenError::UsedUp { .. } => Code::JoinTokenUsedUp,
            JoinTokenError::Store(_) => return Self::internal(e),
        };
        Self::new(code, e.to_string()).on("token")
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Token(e) => e.into(),
            EnrollError::Pki(crate::pki::PkiError::BadCsr(_)) => Self::invalid("csr_pem", e.to_string()),
            EnrollError::Pki(e) => Self::internal(e),
            EnrollError::BadName => Self::invalid("name", e.to_string()),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let code = match &e {
            HubError::NotConnected => Code::AgentNotConnected,
            HubError::Timeout => Code::AgentTimeout,
            HubError::Link(_) => Code::AgentLinkFailed,
            HubError::JobRefused(_) => Code::JobRefused,
            HubError::JobFailed(_) => Code::JobFailed,
            HubError::CircuitOpen { .. } => Code::AgentCircuitOpen,
        };
        Self::new(code, e.to_string())
    }
}

impl From<crate::stacks::StackError> for ApiError {
    fn from(e: crate::stacks::StackError) -> Self {
        use crate::stacks::StackError;
        match e {
            StackError::Invalid(invalid) => {
                Self::new(Code::InvalidCompose, format!("the Compose file is not valid: {invalid}"))
                    .on("compose")
                    .with_details(json!({ "errors": invalid.errors, "warnings": invalid.warnings }))
            }
            StackError::NameTaken(_) => Self::new(Code::NameTaken, e.to_string()).on("name"),
            StackError::BadName => Self::invalid("name", e.to_string()),
            StackError::Conflict => Self::new(Code::Conflict, e.to_string()),
            StackError::SecretClash(_) => Self::invalid("secrets", e.to_string()),
            StackError::BadVariableName { field, .. } => Self::invalid(field, e.to_string()),
            StackError::Sealed => Self::internal(e),
            StackError::Store(e) => e.into(),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        // serde names the parameter, e.g. "per_page: invalid digit found in string".
        Self::new(Code::InvalidQuery, rejection.body_text())
    }
}

/// `Query<T>` whose rejections use the API's error shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Json<T>` whose rejections use the API's error shape, and that takes a JSON object only
/// (serde alone would also read a struct from an array of its fields, which no client means).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
        if !is_json {
            let message = "expected a body with `Content-Type: application/json`";
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ..ApiError::new(Code::InvalidBody, message)
            });
        }
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(|rejection| {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE { Code::PayloadTooLarge } else { Code::InvalidBody };
            ApiError { status, ..ApiError::new(code, rejection.body_text()) }
        })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(Code::InvalidBody, "the body must be a JSON object"));
        }
        Ok(Self(axum::Json::<T>::from_bytes(&bytes)?.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_every_one_is_an_error_status() {
        let names: std::collections::HashSet<_> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Code::ALL.len());
        assert!(Code::ALL.iter().all(|c| c.status().is_client_error() || c.status().is_server_error()));
    }

    #[test]
    fn the_error_shape_has_code_message_and_the_optional_parts_only_when_set() {
        let plain = serde_json::to_value(ErrorBody {
            error: ErrorDetail { code: Code::NotFound, message: "stack not found".into(), field: None, details: None },
        })
        .expect("json");
        assert_eq!(plain, json!({ "error": { "code": "not_found", "message": "stack not found" } }));
    }
}
