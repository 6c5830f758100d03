//! Enrollment: the files a new host fetches (`/install.sh`, `/ca.pem`, the agent binary, the
//! in-cluster manifests `/kubernetes/agent.yaml`) and
//! `POST /agents/enroll`, where a join token and a CSR become an agent certificate.
//! These routes are public: the join token is the credential.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiJson, Code};
use crate::agents;

const INSTALL_SH: &str = include_str!("../../../packaging/install.sh");
const CLUSTER_MANIFEST: &str = include_str!("../../../packaging/kubernetes/agent.yaml");

pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(enroll))
}

pub fn file_routes() -> Router<AppState> {
    Router::new()
        .route("/install.sh", get(install_sh))
        .route("/kubernetes/agent.yaml", get(cluster_manifest))
        .route("/ca.pem", get(ca_pem))
        .route("/downloads/{file}", get(download))
}

async fn install_sh(State(state): State<AppState>) -> impl IntoResponse {
    let script = INSTALL_SH
        .replace("@@SERVER_URL@@", &state.settings.public_url)
        .replace("@@SERVER_PIN@@", &state.pki.server_pin())
        .replace("@@CA_SHA256@@", &state.pki.ca_sha256());
    ([(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")], script)
}

/// The agent's in-cluster manifests, with this control plane's address, CA and agent image.
/// The join token stays a placeholder: the one-liner fills it in on the user's machine.
async fn cluster_manifest(State(state): State<AppState>) -> impl IntoResponse {
    let ca: String = state.pki.ca_cert_pem().lines().map(|line| format!("    {line}\n")).collect();
    let manifest = CLUSTER_MANIFEST
        .replace("@@SERVER_URL@@", &state.settings.public_url)
        .replace("@@AGENT_IMAGE@@", &state.settings.agent_image)
        .replace("@@CA_PEM@@\n", &ca);
    ([(header::CONTENT_TYPE, "application/yaml")], manifest)
}

async fn ca_pem(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], state.pki.ca_cert_pem().to_owned())
}

async fn download(State(state): State<AppState>, Path(file): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let expected = format!("windflow-agent-{}", std::env::consts::ARCH);
    if file != expected {
        return Err(ApiError::new(
            Code::NotFound,
            format!("this control plane serves only {expected}; build the agent for your architecture from source"),
        ));
    }
    let bytes = tokio::fs::read(&state.settings.agent_binary).await.map_err(|e| {
        tracing::error!(path = %state.settings.agent_binary.display(), error = %e, "agent binary unavailable");
        ApiError::new(
            Code::AgentBinaryMissing,
            "the agent binary is not available on this control plane (see --agent-binary)",
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EnrollRequest {
    /// A join token (`wfj_…`).
    token: String,
    /// A PKCS#10 certificate signing request, made on the host; only its public key is used.
    csr_pem: String,
    /// The target's name, 1 to 64 characters.
    name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollResponse {
    agent_id: Uuid,
    certificate_pem: String,
    ca_pem: String,
    /// Hex of the Ed25519 key that signs jobs; the agent pins it.
    job_public_key: String,
    quic_endpoint: String,
    server_name: String,
}

/// Turns a join token and a CSR into an agent certificate; used by `windflow-agent enroll`.
#[utoipa::path(post, path = "/agents/enroll", tag = "agents", security(()), request_body = EnrollRequest,
    responses((status = 201, body = EnrollResponse)))]
async fn enroll(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let csr = CertificateSigningRequestDer::from_pem_slice(body.csr_pem.as_bytes())
        .map_err(|_| ApiError::invalid("csr_pem", "csr_pem is not a PEM certificate signing request"))?;
    let enrollment = agents::enroll(
        state.store.as_ref(),
        &state.pki,
        &body.token,
        csr.as_ref(),
        body.name.trim(),
        state.settings.agent_cert_lifetime,
    )?;
    tracing::info!(agent_id = %enrollment.agent.id, name = %enrollment.agent.name, token_id = %enrollment.agent.join_token_id, "agent enrolled");
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            agent_id: enrollment.agent.id,
            certificate_pem: enrollment.certificate_pem,
            ca_pem: state.pki.ca_cert_pem().to_owned(),
            job_public_key: state.pki.job_public_key_hex(),
            quic_endpoint: state.settings.quic_endpoint.clone(),
            server_name: state.settings.server_name.clone(),
        }),
    ))
}
