//! The one error shape of the API: `{"error": {"code", "message", "field"?}}` with the HTTP
//! status that the code table below gives it. Internal details are logged, never returned.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::agents::EnrollError;
use crate::auth::AuthError;
use crate::hub::HubError;
use crate::join_tokens::JoinTokenError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Extra structured data, e.g. every diagnostic of a refused Compose file.
    pub details: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header (429 answers).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, details: None, retry_after_s: None }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message) }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error answering a request");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the control plane's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // 415 without a JSON content type, 422 for wrong fields, 413 over the body limit, 400 else.
        let status = rejection.status();
        // serde's message names the field and position, e.g. "missing field `username` at line 1 column 2".
        Self::new(status, "invalid_body", rejection.body_text())
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
        let (status, code) = match &e {
            AuthError::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            AuthError::BadAccessToken | AuthError::SessionRevoked => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            AuthError::BadRefreshToken => (StatusCode::UNAUTHORIZED, "bad_refresh_token"),
            AuthError::Disabled => (StatusCode::FORBIDDEN, "account_disabled"),
            AuthError::UserExists(_) => {
                return Self {
                    field: Some("username".into()),
                    ..Self::new(StatusCode::CONFLICT, "user_exists", e.to_string())
                };
            }
            AuthError::BadUsername => return Self::invalid("username", e.to_string()),
            AuthError::WeakPassword(_) => {
                return Self {
                    field: Some("password".into()),
                    ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", e.to_string())
                };
            }
            AuthError::Conflict => (StatusCode::CONFLICT, "conflict"),
            AuthError::Store(_) | AuthError::Hash(_) | AuthError::Org(_) => return Self::internal(e),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<crate::orgs::OrgError> for ApiError {
    fn from(e: crate::orgs::OrgError) -> Self {
        use crate::orgs::OrgError;
        match e {
            OrgError::BadName => Self::invalid("name", e.to_string()),
            OrgError::NameTaken(_) => {
                Self { field: Some("name".into()), ..Self::new(StatusCode::CONFLICT, "name_taken", e.to_string()) }
            }
            OrgError::LastOwner => Self::new(StatusCode::CONFLICT, "last_owner", e.to_string()),
            OrgError::Conflict => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            OrgError::Store(e) => e.into(),
        }
    }
}

impl From<JoinTokenError> for ApiError {
    fn from(e: JoinTokenError) -> Self {
        let (status, code) = match &e {
            JoinTokenError::Malformed => (StatusCode::BAD_REQUEST, "join_token_malformed"),
            JoinTokenError::Unknown => (StatusCode::UNAUTHORIZED, "join_token_invalid"),
            JoinTokenError::Revoked => (StatusCode::FORBIDDEN, "join_token_revoked"),
            JoinTokenError::Expired => (StatusCode::FORBIDDEN, "join_token_expired"),
            JoinTokenError::UsedUp { .. } => (StatusCode::FORBIDDEN, "join_token_used_up"),
            JoinTokenError::Store(_) => return Self::internal(e),
        };
        Self { field: Some("token".into()), ..Self::new(status, code, e.to_string()) }
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
        let (status, code) = match &e {
            HubError::NotConnected => (StatusCode::CONFLICT, "agent_not_connected"),
            HubError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "agent_timeout"),
            HubError::Link(_) => (StatusCode::BAD_GATEWAY, "agent_link_failed"),
            HubError::JobRefused(_) => (StatusCode::BAD_GATEWAY, "job_refused"),
            HubError::JobFailed(_) => (StatusCode::BAD_GATEWAY, "job_failed"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<crate::stacks::StackError> for ApiError {
    fn from(e: crate::stacks::StackError) -> Self {
        use crate::stacks::StackError;
        match e {
            StackError::Invalid(invalid) => Self {
                details: Some(json!({ "errors": invalid.errors, "warnings": invalid.warnings })),
                field: Some("compose".into()),
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_compose",
                    format!("the Compose file is not valid: {invalid}"),
                )
            },
            StackError::NameTaken(_) => {
                Self { field: Some("name".into()), ..Self::new(StatusCode::CONFLICT, "name_taken", e.to_string()) }
            }
            StackError::BadName => Self::invalid("name", e.to_string()),
            StackError::Conflict => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            StackError::Store(e) => e.into(),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        // serde names the parameter, e.g. "per_page: invalid digit found in string".
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", rejection.body_text())
    }
}

/// `Query<T>` whose rejections use the API's error shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Json<T>` whose rejections use the API's error shape.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);
