//! WindFlow for AI assistants: a Model Context Protocol server at `/mcp` (streamable HTTP, the
//! `rmcp` SDK). Every request is authenticated like the REST API (a bearer API token or
//! session); each tool then asks what its REST route asks — listing and reading need `read`
//! and a viewer, deploying and diagnosing need `deploy` and an operator — and acts in the
//! caller's organisation only. Tools answer with the REST API's own views.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::ErrorData as McpError;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiQuery};
use super::{AppState, PageQuery};
use crate::api_tokens::Scope;
use crate::auth::Caller;
use crate::orgs::Role;

/// A tool: its name, what it does, its arguments (JSON Schema), and what it asks of a caller.
struct ToolSpec {
    name: &'static str,
    description: &'static str,
    arguments: fn() -> Value,
    scope: Scope,
    role: Role,
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn paging() -> Value {
    json!({
        "page": {"type": "integer", "minimum": 1, "description": "1-based"},
        "per_page": {"type": "integer", "minimum": 1, "maximum": 500},
    })
}

fn with_paging(mut properties: Value) -> Value {
    if let (Some(map), Value::Object(extra)) = (properties.as_object_mut(), paging()) {
        map.extend(extra);
    }
    properties
}

const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "list_targets",
        description: "The organisation's targets (hosts, Swarm managers, clusters, hypervisors running an agent): name, kind, whether connected, labels.",
        arguments: || {
            object(
                with_paging(json!({
                    "q": {"type": "string", "description": "text in the name"},
                    "status": {"type": "string", "enum": ["connected", "disconnected", "revoked"]},
                    "label": {"type": "string", "description": "key=value"},
                })),
                &[],
            )
        },
        scope: Scope::Read,
        role: Role::Viewer,
    },
    ToolSpec {
        name: "list_stacks",
        description: "The organisation's stacks (Compose files with numbered versions).",
        arguments: || object(paging(), &[]),
        scope: Scope::Read,
        role: Role::Viewer,
    },
    ToolSpec {
        name: "list_deployments",
        description: "The organisation's deployments: which stack version runs on which target, desired and observed state, each service's containers.",
        arguments: || {
            object(
                with_paging(json!({
                    "stack": {"type": "string", "description": "a stack id"},
                    "target": {"type": "string", "description": "a target id"},
                    "state": {"type": "string", "enum": ["pending", "deploying", "running", "failed", "removing", "removed"]},
                })),
                &[],
            )
        },
        scope: Scope::Read,
        role: Role::Viewer,
    },
    ToolSpec {
        name: "get_logs",
        description: "The last log lines of a deployment's containers, oldest first.",
        arguments: || {
            object(
                json!({
                    "deployment_id": {"type": "string"},
                    "service": {"type": "string", "description": "only this service"},
                    "tail": {"type": "integer", "minimum": 1, "maximum": 5000, "description": "default 200"},
                }),
                &["deployment_id"],
            )
        },
        scope: Scope::Read,
        role: Role::Viewer,
    },
    ToolSpec {
        name: "analyze_stack",
        description: "The rule analyser's findings on a stack (no language model): severity, where, and how to fix.",
        arguments: || object(json!({"stack": {"type": "string", "description": "a stack id or name"}}), &["stack"]),
        scope: Scope::Read,
        role: Role::Viewer,
    },
    ToolSpec {
        name: "deploy_stack",
        description: "Deploys a stack version (the current one by default) to a target, or updates the deployment already there. Returns the deployment; it settles in the background.",
        arguments: || {
            object(
                json!({
                    "stack": {"type": "string", "description": "a stack id or name"},
                    "target": {"type": "string", "description": "a target id or name"},
                    "version": {"type": "integer", "minimum": 1},
                }),
                &["stack", "target"],
            )
        },
        scope: Scope::Deploy,
        role: Role::Operator,
    },
    ToolSpec {
        name: "diagnose_deployment",
        description: "Why a deployment failed or is unhealthy: the probable cause, the evidence (states, exit codes, log lines) and a fix, from rules and the organisation's language model when it has one.",
        arguments: || object(json!({"deployment_id": {"type": "string"}}), &["deployment_id"]),
        scope: Scope::Deploy,
        role: Role::Operator,
    },
];

/// The `/mcp` route, authenticated.
pub fn routes(state: AppState) -> axum::Router<AppState> {
    let handler_state = state.clone();
    let config = StreamableHttpServerConfig::default()
        // Every request carries a bearer credential, which a rebinding page cannot have.
        .disable_allowed_hosts()
        .with_json_response(true);
    let service = StreamableHttpService::new(
        move || Ok(WindFlowMcp { state: handler_state.clone() }),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().nest_service("/mcp", service).layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// Refuses requests without valid credentials, and hands the caller to the tools.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(error) => error.into_response(),
    }
}

#[derive(Clone)]
struct WindFlowMcp {
    state: AppState,
}

fn tool(spec: &ToolSpec) -> Tool {
    let schema = match (spec.arguments)() {
        Value::Object(schema) => schema,
        _ => Map::new(),
    };
    let read_only = spec.scope == Scope::Read;
    let mut tool = Tool::new(spec.name, spec.description, Arc::new(schema));
    tool.annotations = Some(ToolAnnotations::new().read_only(read_only).destructive(false));
    tool
}

/// What a tool failed with, for the assistant to read.
fn failure(message: impl Into<String>) -> CallToolResult {
    CallToolResult::structured_error(json!({ "error": message.into() }))
}

fn api_failure(error: ApiError) -> CallToolResult {
    CallToolResult::structured_error(json!(error.into_body()))
}

fn arguments<T: DeserializeOwned>(raw: &Map<String, Value>) -> Result<T, CallToolResult> {
    serde_json::from_value(Value::Object(raw.clone())).map_err(|e| failure(format!("bad arguments: {e}")))
}

fn string(raw: &Map<String, Value>, name: &str) -> Result<String, CallToolResult> {
    raw.get(name).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| failure(format!("`{name}` is required")))
}

/// Whether the caller may use a tool, with the reason when not (as the REST API words it).
fn allowed(caller: &Caller, spec: &ToolSpec) -> Result<(), CallToolResult> {
    if let Some((_, scope)) = caller.token
        && scope < spec.scope
    {
        return Err(failure(format!(
            "{} needs a token with the {} scope; this one has {}",
            spec.name,
            spec.scope.as_str(),
            scope.as_str()
        )));
    }
    match caller.role {
        Some(role) if role < spec.role && !caller.is_admin => Err(failure(format!(
            "{} needs the {} role in the organisation; you are {}",
            spec.name,
            spec.role.as_str(),
            role.as_str()
        ))),
        None if !caller.is_admin => Err(failure("you are not a member of any organisation")),
        _ => Ok(()),
    }
}

fn view<T: serde::Serialize>(result: Result<Json<T>, ApiError>) -> CallToolResult {
    match result {
        Ok(Json(view)) => CallToolResult::structured(json!(view)),
        Err(error) => api_failure(error),
    }
}

impl WindFlowMcp {
    async fn call(
        &self,
        caller: Caller,
        name: &str,
        raw: Map<String, Value>,
    ) -> Result<CallToolResult, CallToolResult> {
        let state = &self.state;
        let spec = TOOLS.iter().find(|t| t.name == name).ok_or_else(|| failure(format!("no tool {name:?}")))?;
        allowed(&caller, spec)?;
        Ok(match name {
            "list_targets" => {
                view(super::targets::list(State(state.clone()), caller, ApiQuery(arguments(&raw)?)).await)
            }
            "list_stacks" => {
                view(super::stacks::list(State(state.clone()), caller, ApiQuery(arguments::<PageQuery>(&raw)?)).await)
            }
            "list_deployments" => {
                view(super::deployments::list(State(state.clone()), caller, ApiQuery(arguments(&raw)?)).await)
            }
            "get_logs" => {
                let deployment =
                    super::deployments::load(state, &caller, &string(&raw, "deployment_id")?).map_err(api_failure)?;
                let service = raw.get("service").and_then(Value::as_str).map(str::to_owned);
                let tail = raw.get("tail").and_then(Value::as_u64).unwrap_or(200).clamp(1, 5000) as u32;
                let source = super::deployments::log_source(&deployment, service);
                let lines = state.logs.fetch(&source, Some(tail), None).await.map_err(|e| api_failure(e.into()))?;
                let lines: Vec<Value> = lines
                    .iter()
                    .map(|l| json!({"container": l.container, "service": l.service, "line": l.text}))
                    .collect();
                CallToolResult::structured(json!({ "lines": lines }))
            }
            "analyze_stack" => {
                let stack =
                    super::workflow_actions::find_stack(state, &caller, &string(&raw, "stack")?).map_err(failure)?;
                view(super::stacks::analysis(state, &stack, None))
            }
            "deploy_stack" => {
                let stack =
                    super::workflow_actions::find_stack(state, &caller, &string(&raw, "stack")?).map_err(failure)?;
                let target =
                    super::workflow_actions::find_target(state, &caller, &string(&raw, "target")?).map_err(failure)?;
                let version = raw.get("version").and_then(Value::as_u64).map(|v| v as u32);
                let deployed = super::deployments::deploy_stack(state, &caller, &stack, &target, version, None);
                view(deployed.map(|(_, view)| view))
            }
            "diagnose_deployment" => {
                let deployment =
                    super::deployments::load(state, &caller, &string(&raw, "deployment_id")?).map_err(api_failure)?;
                view(super::ai::diagnose(state, &caller, &deployment).await.map(Json))
            }
            _ => failure(format!("no tool {name:?}")),
        })
    }
}

impl ServerHandler for WindFlowMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("windflow", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "WindFlow deploys Compose stacks to Docker hosts, Swarm, Kubernetes and libvirt. List targets, stacks and deployments, read logs, analyse a stack, deploy one, and diagnose a failing deployment. You act in your token's organisation with its scope.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(TOOLS.iter().map(tool).collect()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| McpError::internal_error("the request carries no caller", None))?;
        let arguments = request.arguments.unwrap_or_default();
        let result = match self.call(caller, &request.name, arguments).await {
            Ok(result) | Err(result) => result,
        };
        Ok(result.into())
    }
}
