//! What a workflow's action nodes do, through the same operations as the API's routes: deploy
//! (then wait for the deployment to settle), roll back, scale and remove deployments; HTTP
//! requests, jq transforms and notifications. A run acts as the organisation, in the name of
//! the workflow, with the rights of an operator.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::AppState;
use crate::auth::Caller;
use crate::breaker::{Breaker, Breakers};
use crate::deployments::{self, State as DeploymentState};
use crate::workflows::engine::{Call, Runner};
use crate::workflows::graph::{Action, Channel};
use crate::workflows::transform;

/// How long a deploy node waits for its deployment to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The largest HTTP answer body a node keeps.
const MAX_BODY: usize = 1024 * 1024;
/// Failures in a row (connection errors, timeouts, 5xx) that open a host's circuit, and how long
/// calls to it then fail at once instead of piling up on a host that is down.
pub const OUTBOUND_FAILURES: u32 = 5;
pub const OUTBOUND_PAUSE: Duration = Duration::from_secs(30);

/// The control plane's runner; attached to the state once that exists (the state holds the
/// engine that holds this).
pub struct ApiRunner {
    state: OnceLock<AppState>,
    http: reqwest::Client,
}

impl ApiRunner {
    pub fn new(http: reqwest::Client) -> Self {
        Self { state: OnceLock::new(), http }
    }

    pub fn attach(&self, state: AppState) {
        let _ = self.state.set(state);
    }
}

impl Runner for ApiRunner {
    fn run<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let state = self.state.get().ok_or("the control plane is still starting")?;
            let caller = acting_as(state, call.run.org_id, call.run.workflow_id)?;
            match &call.node.action {
                Action::Deploy { stack, target, version, platform } => {
                    deploy(state, &caller, &call, stack, target, version.as_deref(), platform.as_deref()).await
                }
                Action::Rollback { deployment, version } => {
                    let version = version.as_deref().map(parse_number).transpose()?;
                    let (_, view) =
                        super::deployments::rollback_deployment(state, &caller, deployment, version).map_err(said)?;
                    settle(state, &call, view.0.id()).await
                }
                Action::Scale { deployment, service, replicas } => {
                    let (_, view) = super::deployments::scale_deployment(
                        state,
                        &caller,
                        deployment,
                        service,
                        parse_number(replicas)?,
                    )
                    .map_err(said)?;
                    settle(state, &call, view.0.id()).await
                }
                Action::Remove { deployment, volumes } => {
                    let (_, view) =
                        super::deployments::remove_deployment(state, &caller, deployment, *volumes).map_err(said)?;
                    settle(state, &call, view.0.id()).await
                }
                Action::Http { method, url, headers, body } => {
                    http(&self.http, &state.outbound, &call, method, url, headers, body.as_deref()).await
                }
                Action::Transform { filter, input } => {
                    let input = match input {
                        // A rendered template: JSON when it reads as JSON, else the text.
                        Some(text) => {
                            serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.clone()))
                        }
                        None => previous_output(&call),
                    };
                    let output = transform::run(filter, &input)?;
                    call.log.line(format!("{filter} → {}", truncate(&output.to_string(), 200)));
                    Ok(output)
                }
                Action::Notify { channel, title, message } => {
                    notify(&self.http, &state.outbound, &call, channel, title, message).await
                }
                Action::Llm { prompt, system } => llm(state, &call, prompt, system).await,
                other => Err(format!("a {} node is not run by the runner", other.type_name())),
            }
        })
    }
}

/// Asks the organisation's model, through the same guard as the rest of the assistant.
async fn llm(state: &AppState, call: &Call<'_>, prompt: &str, system: &str) -> Result<serde_json::Value, String> {
    use crate::ai::Model;
    let model = state
        .assistant
        .model_for(call.run.org_id, crate::ai::redact::Redactor::default())
        .map_err(|e| e.to_string())?;
    let system = if system.trim().is_empty() { "Answer briefly and exactly." } else { system };
    let request = crate::ai::wire::ChatRequest {
        system: system.to_owned(),
        messages: vec![crate::ai::wire::Message::user(prompt)],
        max_tokens: model.config.max_tokens,
    };
    let answer = model.ask(&request, None).await.map_err(|e| e.to_string())?;
    call.log.line(format!(
        "{}: {} tokens in, {} out",
        model.config.model, answer.usage.input_tokens, answer.usage.output_tokens
    ));
    let mut output = serde_json::json!({ "text": answer.text, "usage": answer.usage });
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(answer.text.trim()) {
        output["json"] = json;
    }
    Ok(output)
}

/// Who a run acts as: the organisation, as an operator, named after the workflow.
fn acting_as(state: &AppState, org_id: Uuid, workflow_id: Uuid) -> Result<Caller, String> {
    let workflow = crate::workflows::get(state.store.as_ref(), workflow_id)
        .map_err(|e| e.to_string())?
        .ok_or("the workflow was deleted")?;
    Ok(Caller {
        user_id: Uuid::nil(),
        username: format!("workflow:{}", workflow.name),
        session_id: Uuid::nil(),
        token: None,
        is_admin: false,
        org_id,
        role: Some(crate::orgs::Role::Operator),
        second_factor: true,
    })
}

/// A refusal of the API, as a step's error: what it said, and of which field.
fn said(error: super::error::ApiError) -> String {
    match error.field {
        Some(field) => format!("{field}: {}", error.message),
        None => error.message,
    }
}

fn parse_number(text: &str) -> Result<u32, String> {
    text.trim().parse().map_err(|_| format!("{text:?} is not a whole number"))
}

fn truncate(text: &str, at: usize) -> String {
    match text.char_indices().nth(at) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The output of the node that led here (the latest to finish), for a transform without input.
fn previous_output(call: &Call<'_>) -> serde_json::Value {
    call.run
        .progress
        .steps
        .values()
        .filter(|s| s.output.is_some())
        .max_by_key(|s| s.finished_at_ms)
        .and_then(|s| s.output.clone())
        .unwrap_or(serde_json::Value::Null)
}

/// A stack by id or name, in the organisation.
pub(super) fn find_stack(state: &AppState, caller: &Caller, wanted: &str) -> Result<crate::stacks::Stack, String> {
    if let Ok(stack) = super::stacks::load(state, caller, wanted) {
        return Ok(stack);
    }
    crate::stacks::list(state.store.as_ref(), caller.org_id)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| s.name == wanted)
        .ok_or_else(|| format!("there is no stack {wanted:?}"))
}

/// A target by id or name, in the organisation.
pub(super) fn find_target(state: &AppState, caller: &Caller, wanted: &str) -> Result<crate::agents::Agent, String> {
    if let Ok(target) = super::targets::load(state, caller, wanted) {
        return Ok(target);
    }
    let ids = crate::agents::ids_in(state.store.as_ref(), caller.org_id).map_err(|e| e.to_string())?;
    ids.into_iter()
        .filter_map(|id| crate::agents::get(state.store.as_ref(), id).ok().flatten())
        .find(|a| a.name == wanted)
        .ok_or_else(|| format!("there is no target {wanted:?}"))
}

async fn deploy(
    state: &AppState,
    caller: &Caller,
    call: &Call<'_>,
    stack: &str,
    target: &str,
    version: Option<&str>,
    platform: Option<&str>,
) -> Result<serde_json::Value, String> {
    let stack = find_stack(state, caller, stack)?;
    let target = find_target(state, caller, target)?;
    let version = version.filter(|v| !v.is_empty()).map(parse_number).transpose()?;
    let platform = platform
        .filter(|p| !p.is_empty())
        .map(|p| serde_json::from_value::<windflow_protocol::Platform>(serde_json::json!(capitalised(p))))
        .transpose()
        .map_err(|_| "`platform` is docker, swarm, kubernetes or libvirt".to_owned())?;
    let (_, view) =
        super::deployments::deploy_stack(state, caller, &stack, &target, version, platform).map_err(said)?;
    call.log.line(format!("deploying {} to {}", stack.name, target.name));
    settle(state, call, view.0.id()).await
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// Waits for a deployment to settle, logging its states; fails when it failed.
async fn settle(state: &AppState, call: &Call<'_>, id: Uuid) -> Result<serde_json::Value, String> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let mut last = None;
    loop {
        let deployment = deployments::get(state.store.as_ref(), id)
            .map_err(|e| e.to_string())?
            .ok_or("the deployment was deleted")?;
        if last != Some(deployment.state) {
            call.log.line(format!("deployment {}: {}", deployment.project, deployment.state.as_str()));
            last = Some(deployment.state);
        }
        let settled = deployment.settled_generation >= deployment.generation;
        let output = serde_json::json!({
            "deployment_id": deployment.id,
            "state": deployment.state.as_str(),
            "version": deployment.version,
            "reason": deployment.reason,
        });
        match deployment.state {
            DeploymentState::Failed if settled => {
                return Err(format!(
                    "the deployment failed: {}",
                    deployment.reason.as_deref().unwrap_or("no reason given")
                ));
            }
            DeploymentState::Running | DeploymentState::Removed if settled => return Ok(output),
            _ if tokio::time::Instant::now() > deadline => {
                return Err(format!("the deployment did not settle in {} min", SETTLE_TIMEOUT.as_secs() / 60));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The circuit of the host `url` goes to, if it lets a call go now.
fn admitted(breakers: &Breakers, url: &str) -> Result<Arc<Breaker>, String> {
    let host = reqwest::Url::parse(url)
        .ok()
        .map(|u| {
            format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or_default(), u.port_or_known_default().unwrap_or(0))
        })
        .unwrap_or_else(|| url.to_owned());
    let breaker = breakers.get(&host);
    breaker.admit(Instant::now()).map_err(|refused| {
        format!(
            "{host} failed {} times in a row: calls to it are paused for {} s (circuit open)",
            breakers.threshold(),
            refused.retry_in.as_secs().max(1)
        )
    })?;
    Ok(breaker)
}

/// Whether a host answered like one that is up: a 4xx is its answer to this request, not a sign
/// that it is down.
fn host_is_up<E>(sent: &Result<reqwest::Response, E>) -> bool {
    sent.as_ref().is_ok_and(|response| !response.status().is_server_error())
}

async fn http(
    client: &reqwest::Client,
    breakers: &Breakers,
    call: &Call<'_>,
    method: &str,
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    body: Option<&str>,
) -> Result<serde_json::Value, String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = client.request(method.clone(), url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let breaker = admitted(breakers, url)?;
    let sent = request.send().await;
    breaker.record(host_is_up(&sent), Instant::now());
    let response = sent.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let answer_headers: serde_json::Map<String, serde_json::Value> = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), serde_json::Value::String(v.to_str().ok()?.to_owned()))))
        .collect();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BODY)]).into_owned();
    call.log.line(format!("{method} {url} → {status}"));
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if status >= 400 {
        return Err(format!("{method} {url} answered {status}: {}", truncate(&body.to_string(), 300)));
    }
    Ok(serde_json::json!({ "status": status, "headers": answer_headers, "body": body }))
}

async fn notify(
    client: &reqwest::Client,
    breakers: &Breakers,
    call: &Call<'_>,
    channel: &Channel,
    title: &str,
    message: &str,
) -> Result<serde_json::Value, String> {
    let run = serde_json::json!({ "id": call.run.id, "workflow": call.run.workflow_id });
    let (url, body) = match channel {
        Channel::Webhook { url } => (url, serde_json::json!({ "title": title, "message": message, "run": run })),
        Channel::Slack { url } => {
            let text = if title.is_empty() { message.to_owned() } else { format!("*{title}*\n{message}") };
            (url, serde_json::json!({ "text": text }))
        }
        Channel::Email { to, relay, from } => return mail(call, to, relay, from, title, message).await,
    };
    let breaker = admitted(breakers, url)?;
    let sent = client.post(url).json(&body).send().await;
    breaker.record(host_is_up(&sent), Instant::now());
    let response = sent.map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the notification was refused: {status}"));
    }
    call.log.line(format!("notified {url} ({status})"));
    Ok(serde_json::json!({ "status": status.as_u16() }))
}

/// How long sending one email may take.
const MAIL_TIMEOUT: Duration = Duration::from_secs(30);

async fn mail(
    call: &Call<'_>,
    to: &[String],
    relay: &str,
    from: &str,
    title: &str,
    message: &str,
) -> Result<serde_json::Value, String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let mut email = Message::builder()
        .from(from.parse().map_err(|e| format!("{from:?}: {e}"))?)
        .subject(if title.is_empty() { "WindFlow" } else { title })
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for address in to {
        email = email.to(address.parse().map_err(|e| format!("{address:?}: {e}"))?);
    }
    let email = email.body(message.to_owned()).map_err(|e| e.to_string())?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(relay)
        .map_err(|e| format!("the relay {relay}: {e}"))?
        .timeout(Some(MAIL_TIMEOUT))
        .build();
    let answer = mailer.send(email).await.map_err(|e| format!("sending through {relay}: {e}"))?;
    call.log.line(format!("mailed {} through {relay}", to.join(", ")));
    Ok(serde_json::json!({ "to": to, "code": answer.code().to_string() }))
}
