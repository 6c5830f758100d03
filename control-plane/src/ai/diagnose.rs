//! Why a deployment failed or is unhealthy. The evidence (its recent events, each container's
//! state, exit code and health, the last log lines) is read by rules first: exit codes and log
//! lines that mean something well known. With a model, the redacted evidence is also put to it,
//! and its answer (cause, fix, and a corrected Compose file when that is the fix) is checked by
//! the stack pipeline before it is offered. Without one, the rules' answer is the answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::provider::DeltaSink;
use super::redact::Redactor;
use super::wire::{ChatRequest, Message, Usage};
use super::{AiError, Model};
use crate::analyzer::Finding;

/// One container as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFacts {
    pub service: String,
    pub name: String,
    /// `running`, `exited`, `restarting`…
    pub state: String,
    pub exit_code: Option<i64>,
    pub health: Option<String>,
    pub restart_count: u32,
}

/// Everything a diagnosis is made from, secrets still in it (see [`Evidence::redacted`]).
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub stack: String,
    pub state: String,
    pub reason: Option<String>,
    /// The most recent events, oldest first, as `level: message`.
    pub events: Vec<String>,
    pub containers: Vec<ContainerFacts>,
    /// The last lines per container, oldest first: (container, line).
    pub logs: Vec<(String, String)>,
    /// Why there are no logs, when they could not be read.
    pub logs_unavailable: Option<String>,
    pub compose: String,
    pub findings: Vec<Finding>,
}

impl Evidence {
    pub fn redacted(mut self, redactor: &Redactor) -> Self {
        self.reason = self.reason.map(|r| redactor.redact(&r));
        self.events = self.events.iter().map(|e| redactor.redact(e)).collect();
        self.logs = self.logs.iter().map(|(c, l)| (c.clone(), redactor.redact(l))).collect();
        self.compose = redactor.redact(&self.compose);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosisSource {
    /// Rules over exit codes, health and log lines; no model was asked.
    Rules,
    /// The organisation's model, given the rules' evidence.
    Model,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Diagnosis {
    pub source: DiagnosisSource,
    /// The probable cause, in a sentence or two.
    pub cause: String,
    /// The facts it rests on: states, exit codes, log lines.
    pub evidence: Vec<String>,
    /// What to do about it.
    pub fix: String,
    /// A corrected Compose file, checked by the stack pipeline, when changing the stack is the fix.
    pub proposed_compose: Option<String>,
    /// Why the model's proposed file was not offered, when it was not.
    pub proposal_refused: Option<String>,
    /// What the rule analyser finds in the stack.
    pub findings: Vec<Finding>,
    pub usage: Option<Usage>,
    /// Why the model could not be asked, when it failed: the answer is then the rules'.
    pub model_error: Option<String>,
}

/// Log lines that mean something well known: what to look for, the cause, the fix.
const LOG_SIGNS: &[(&[&str], &str, &str)] = &[
    (
        &["address already in use", "port is already allocated"],
        "a port the service listens on or publishes is already taken",
        "publish another host port, or stop what holds it",
    ),
    (
        &["permission denied", "operation not permitted", "read-only file system"],
        "the service is not allowed to use a file, a directory or a port it needs",
        "check the ownership of its volumes and the user it runs as (`user:`), or what it is asked to bind",
    ),
    (
        &["exec format error"],
        "the image is built for another processor architecture",
        "pick an image or tag built for this host's architecture",
    ),
    (
        &["executable file not found", "command not found", "no such file or directory"],
        "a command or a file the service needs is missing",
        "check `command`/`entrypoint` and that every mounted path exists",
    ),
    (
        &["out of memory", "cannot allocate memory", "oomkilled", "java.lang.outofmemoryerror"],
        "the service ran out of memory",
        "raise its memory limit (`deploy.resources.limits.memory`) or make it use less",
    ),
    (
        &["password authentication failed", "access denied for user", "authentication failed", "wrong password"],
        "the service's credentials do not match what its database or dependency expects",
        "give both sides the same secret; a database volume initialised earlier keeps its first password",
    ),
    (
        &[
            "connection refused",
            "could not connect",
            "name or service not known",
            "could not translate host name",
            "temporary failure in name resolution",
            "no route to host",
        ],
        "the service cannot reach a dependency",
        "check the dependency's service name and port, and wait for it with `depends_on: {condition: service_healthy}`",
    ),
    (
        &["must be set", "is required", "missing required", "not set"],
        "the service is missing configuration it requires",
        "set the variable or option its log names",
    ),
];

/// Words that make a log line worth quoting when no sign matched.
const ERROR_WORDS: &[&str] = &["error", "fatal", "panic", "exception", "failed", "traceback", "cannot", "denied"];

fn exit_meaning(code: i64) -> Option<(&'static str, &'static str)> {
    Some(match code {
        0 => return None,
        137 => (
            "it was killed (SIGKILL), most often by the kernel for going over its memory limit",
            "raise its memory limit or find what makes it grow",
        ),
        139 => {
            ("it crashed (segmentation fault)", "check the image version; this is a bug in the program or its image")
        }
        143 => ("it was stopped (SIGTERM)", "check what stopped it; a healthcheck failing or a scale-down does"),
        126 => ("its command is not executable", "check `command`/`entrypoint` and file permissions"),
        127 => ("its command does not exist in the image", "check `command`/`entrypoint` against the image"),
        _ => ("the program reported an error and stopped", "read its last log lines for the reason"),
    })
}

/// The rules' diagnosis.
pub fn by_rules(evidence: &Evidence) -> Diagnosis {
    let mut facts = Vec::new();
    let mut causes: Vec<(String, String)> = Vec::new();
    for container in &evidence.containers {
        if let Some(code) = container.exit_code.filter(|c| *c != 0) {
            facts.push(format!("{} ({}) exited with code {code}", container.name, container.service));
            if let Some((meaning, fix)) = exit_meaning(code) {
                causes.push((format!("{} exited with code {code}: {meaning}", container.service), fix.to_owned()));
            }
        }
        if container.restart_count > 0 {
            facts.push(format!("{} restarted {} times", container.name, container.restart_count));
        }
        if container.health.as_deref() == Some("unhealthy") {
            facts.push(format!("{} fails its healthcheck", container.name));
            causes.push((
                format!("{} is running but fails its healthcheck", container.service),
                "check what the healthcheck runs, and the service's log around it".into(),
            ));
        }
    }
    let failing: Vec<&str> = evidence
        .containers
        .iter()
        .filter(|c| c.exit_code.is_some_and(|code| code != 0) || c.health.as_deref() == Some("unhealthy"))
        .map(|c| c.name.as_str())
        .collect();
    // A known log line says more than an exit code: its cause comes first.
    let mut signs_found = Vec::new();
    for (signs, cause, fix) in LOG_SIGNS {
        let hit = evidence.logs.iter().find(|(_, line)| {
            let lower = line.to_lowercase();
            signs.iter().any(|s| lower.contains(s))
        });
        if let Some((container, line)) = hit {
            facts.push(format!("{container} logged: {line}"));
            signs_found.push(((*cause).to_owned(), (*fix).to_owned()));
        }
    }
    if signs_found.is_empty() {
        // No known sign: quote the failing containers' last error-looking line, or last line.
        for name in &failing {
            let lines: Vec<&String> = evidence.logs.iter().filter(|(c, _)| c == name).map(|(_, l)| l).collect();
            let quoted = lines
                .iter()
                .rev()
                .find(|l| {
                    let lower = l.to_lowercase();
                    ERROR_WORDS.iter().any(|w| lower.contains(w))
                })
                .or(lines.last());
            if let Some(line) = quoted {
                facts.push(format!("{name} logged: {line}"));
            }
        }
    }
    if let Some(reason) = &evidence.reason {
        facts.push(format!("the deployment is {}: {reason}", evidence.state));
    }
    if let Some(why) = &evidence.logs_unavailable {
        facts.push(format!("its logs could not be read: {why}"));
    }
    let (cause, fix) = signs_found.into_iter().chain(causes).next().unwrap_or_else(|| match &evidence.reason {
        Some(reason) => (reason.clone(), "see the deployment's events for the step that failed".into()),
        None if facts.is_empty() => (
            "nothing in the containers' states or logs points to a failure".into(),
            "if the service misbehaves, read its full log".into(),
        ),
        None => ("no known sign matched; the evidence below is what stands out".into(), "read the quoted lines".into()),
    });
    Diagnosis {
        source: DiagnosisSource::Rules,
        cause,
        evidence: facts,
        fix,
        proposed_compose: None,
        proposal_refused: None,
        findings: evidence.findings.clone(),
        usage: None,
        model_error: None,
    }
}

const INSTRUCTIONS: &str = "You diagnose failed Docker Compose deployments for WindFlow. \
You get the stack's Compose file, its recent events, each container's state, and its last log \
lines. Answer with one JSON object and nothing else: {\"cause\": the probable cause in one or two \
sentences, \"fix\": what to do, \"compose\": the whole corrected Compose file when changing it is \
the fix, else null}. Secrets were replaced by [redacted]: keep references like ${NAME} as they are.";

/// The prompt: the evidence, and what the rules made of it.
fn prompt(evidence: &Evidence, rules: &Diagnosis) -> String {
    let containers: Vec<String> = evidence
        .containers
        .iter()
        .map(|c| {
            format!(
                "- {} (service {}): {}{}{}, restarts {}",
                c.name,
                c.service,
                c.state,
                c.exit_code.map(|code| format!(", exit code {code}")).unwrap_or_default(),
                c.health.as_ref().map(|h| format!(", health {h}")).unwrap_or_default(),
                c.restart_count
            )
        })
        .collect();
    let logs: Vec<String> = evidence.logs.iter().map(|(c, l)| format!("{c} | {l}")).collect();
    format!(
        "Stack {} is {}{}.\n\nCompose file:\n```yaml\n{}\n```\n\nRecent events:\n{}\n\nContainers:\n{}\n\nLast log lines:\n{}\n\nRules found: {} (fix: {})",
        evidence.stack,
        evidence.state,
        evidence.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        evidence.compose.trim(),
        evidence.events.join("\n"),
        containers.join("\n"),
        if logs.is_empty() { "(none)".to_owned() } else { logs.join("\n") },
        rules.cause,
        rules.fix,
    )
}

#[derive(Debug, Deserialize)]
struct ModelAnswer {
    cause: String,
    fix: String,
    #[serde(default)]
    compose: Option<String>,
}

/// The JSON object in an answer, fenced or not.
fn json_in(text: &str) -> Option<ModelAnswer> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    serde_json::from_str::<Value>(text.get(start..=end)?).ok().and_then(|v| serde_json::from_value(v).ok())
}

/// Diagnoses with `model` when there is one, else by the rules alone. `check` decides whether
/// a proposed Compose file is acceptable (the stack pipeline with the stack's variables).
/// With `deltas`, the model's answer is streamed to it as it is written.
pub async fn diagnose(
    model: Option<&dyn Model>,
    evidence: Evidence,
    redactor: &Redactor,
    check: impl Fn(&str) -> Result<(), String>,
    deltas: Option<&DeltaSink<'_>>,
) -> Result<Diagnosis, AiError> {
    let evidence = evidence.redacted(redactor);
    let rules = by_rules(&evidence);
    let Some(model) = model else {
        return Ok(rules);
    };
    let request = ChatRequest {
        system: INSTRUCTIONS.into(),
        messages: vec![Message::user(prompt(&evidence, &rules))],
        max_tokens: 4096,
    };
    let answer = match model.ask(&request, deltas).await {
        Ok(answer) => answer,
        // A provider that fails does not leave the user without an answer.
        Err(error @ (AiError::Provider(_) | AiError::CircuitOpen { .. })) => {
            return Ok(Diagnosis { model_error: Some(error.to_string()), ..rules });
        }
        Err(error) => return Err(error),
    };
    let Some(parsed) = json_in(&answer.text) else {
        // Not the JSON asked for: the text is still the model's reading of the evidence.
        return Ok(Diagnosis {
            source: DiagnosisSource::Model,
            cause: answer.text.trim().to_owned(),
            fix: rules.fix.clone(),
            usage: Some(answer.usage),
            ..rules
        });
    };
    let (proposed_compose, proposal_refused) = match parsed.compose.filter(|c| !c.trim().is_empty()) {
        Some(compose) if compose.contains(super::redact::REDACTED) => {
            (None, Some("the proposed file contains a redacted value".to_owned()))
        }
        Some(compose) => match check(&compose) {
            Ok(()) => (Some(format!("{}\n", compose.trim_end())), None),
            Err(why) => (None, Some(format!("the proposed file is not a valid stack: {why}"))),
        },
        None => (None, None),
    };
    Ok(Diagnosis {
        source: DiagnosisSource::Model,
        cause: parsed.cause,
        fix: parsed.fix,
        proposed_compose,
        proposal_refused,
        usage: Some(answer.usage),
        ..rules
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::generate::tests::Scripted;

    fn exited(service: &str, code: i64) -> ContainerFacts {
        ContainerFacts {
            service: service.into(),
            name: format!("shop-{service}-1"),
            state: "exited".into(),
            exit_code: Some(code),
            health: None,
            restart_count: 0,
        }
    }

    #[test]
    fn a_known_log_line_gives_the_cause_and_is_quoted_as_evidence() {
        let evidence = Evidence {
            containers: vec![exited("web", 1)],
            logs: vec![("shop-web-1".into(), "listen tcp :80: bind: address already in use".into())],
            ..Evidence::default()
        };
        let diagnosis = by_rules(&evidence);
        assert_eq!(diagnosis.cause, "a port the service listens on or publishes is already taken");
        assert!(diagnosis.evidence.contains(&"shop-web-1 (web) exited with code 1".to_owned()));
        assert!(
            diagnosis.evidence.contains(&"shop-web-1 logged: listen tcp :80: bind: address already in use".to_owned())
        );
    }

    #[test]
    fn without_a_known_sign_the_exit_code_explains_and_the_last_error_line_is_quoted() {
        let evidence = Evidence {
            containers: vec![exited("worker", 137)],
            logs: vec![
                ("shop-worker-1".into(), "ERROR queue overflow".into()),
                ("shop-worker-1".into(), "shutting down".into()),
            ],
            ..Evidence::default()
        };
        let diagnosis = by_rules(&evidence);
        assert!(diagnosis.cause.contains("SIGKILL"), "{}", diagnosis.cause);
        assert!(diagnosis.evidence.contains(&"shop-worker-1 logged: ERROR queue overflow".to_owned()));
    }

    #[test]
    fn a_healthy_deployment_has_nothing_to_report() {
        let diagnosis = by_rules(&Evidence::default());
        assert!(diagnosis.cause.starts_with("nothing"), "{}", diagnosis.cause);
    }

    #[tokio::test]
    async fn secrets_are_gone_from_the_prompt_and_a_valid_proposal_is_offered() {
        let answer = r#"Sure: {"cause": "wrong password", "fix": "use the same secret", "compose": "services:\n  db:\n    image: postgres:16\n"}"#;
        let model = Scripted::new(&[answer]);
        let evidence = Evidence {
            containers: vec![exited("db", 1)],
            logs: vec![("shop-db-1".into(), "using password hunter2-long".into())],
            compose:
                "services:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_PASSWORD: plain-text-pw\n"
                    .into(),
            ..Evidence::default()
        };
        let redactor = Redactor::new(["hunter2-long".to_owned()]);
        let diagnosis = diagnose(Some(&model), evidence, &redactor, |_| Ok(()), None).await.expect("diagnosed");
        let asked = model.asked.lock().expect("lock");
        let prompt = &asked[0].messages[0].content;
        assert!(!prompt.contains("hunter2-long") && !prompt.contains("plain-text-pw"), "{prompt}");
        assert_eq!(diagnosis.source, DiagnosisSource::Model);
        assert_eq!(diagnosis.cause, "wrong password");
        assert_eq!(diagnosis.proposed_compose.as_deref(), Some("services:\n  db:\n    image: postgres:16\n"));
        assert!(diagnosis.evidence.iter().any(|e| e.contains("exited with code 1")), "the rules' evidence is kept");
    }

    #[tokio::test]
    async fn a_proposal_the_pipeline_refuses_is_not_offered() {
        let model = Scripted::new(&[r#"{"cause": "c", "fix": "f", "compose": "services: ["}"#]);
        let diagnosis =
            diagnose(Some(&model), Evidence::default(), &Redactor::default(), |_| Err("bad YAML".into()), None)
                .await
                .expect("diagnosed");
        assert_eq!(diagnosis.proposed_compose, None);
        assert_eq!(diagnosis.proposal_refused.as_deref(), Some("the proposed file is not a valid stack: bad YAML"));
    }
}
