//! A stack from a description: the model writes a Compose file, the stack pipeline checks it, and
//! what the pipeline refuses goes back to the model with the errors, for a bounded number of
//! rounds. Nothing is saved: the caller shows the result as a preview.

use std::collections::BTreeMap;

use super::provider::DeltaSink;
use super::wire::{ChatRequest, Message, Usage};
use super::{AiError, Model};
use crate::analyzer::{self, Finding};
use crate::compose::{self, Diagnostic};

/// Rounds of asking, the first included, unless the caller says otherwise.
pub const DEFAULT_ROUNDS: u32 = 3;

const INSTRUCTIONS: &str = "You write Docker Compose files for WindFlow, a deployment tool. \
Answer with exactly one Compose file in a ```yaml fenced block and nothing else. \
Rules: pin every image to an explicit version tag, never `latest`; give every long-running \
service a healthcheck, `restart: unless-stopped` and resource limits under \
`deploy.resources.limits` (cpus and memory); keep data in named volumes; never write a password, \
token or key: reference a variable instead, named like `${DB_PASSWORD}` (names ending in \
_PASSWORD, _SECRET, _TOKEN or _KEY are generated and kept secret); give every other variable a \
default, like `${HTTP_PORT:-8080}`; publish only the ports a user opens in a browser, on \
127.0.0.1 unless the description asks otherwise; use `depends_on` with `condition: service_healthy` \
between services that need each other.";

/// What the caller sees while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A round starts (1-based).
    Round(u32),
    /// A piece of the model's answer.
    Delta(&'a str),
    /// The pipeline refused the round's answer for these reasons; another round follows.
    Rejected(&'a [String]),
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Generated {
    /// The Compose file, as the pipeline accepted it.
    pub compose: String,
    /// Rounds it took.
    pub rounds: u32,
    /// Variables the file references that hold secrets: generated when a stack is made from it.
    pub secrets: Vec<String>,
    /// The other variables it references (each has a default in the file).
    pub variables: Vec<String>,
    /// What the pipeline warned about.
    pub warnings: Vec<Diagnostic>,
    /// What the rule analyser finds in it.
    pub findings: Vec<Finding>,
    pub usage: Usage,
}

/// The Compose file inside an answer: its first fenced block, or the whole answer.
fn compose_in(answer: &str) -> &str {
    let Some(start) = answer.find("```") else {
        return answer.trim();
    };
    let after = &answer[start + 3..];
    let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
    let body = &after[body_start..];
    body.find("```").map_or(body, |end| &body[..end]).trim()
}

/// Whether the pipeline accepts an answer; the accepted file, or every reason it does not.
pub fn check(answer: &str) -> Result<Generated, Vec<String>> {
    let compose = compose_in(answer);
    if compose.is_empty() {
        return Err(vec!["the answer holds no Compose file".into()]);
    }
    let names = compose::interpolate::referenced_names(compose);
    let (secrets, variables): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| analyzer::is_secret_name(n));
    // Secrets get a stand-in value; every other variable must carry its own default.
    let values: BTreeMap<String, String> = secrets.iter().map(|n| (n.clone(), "generated-secret".into())).collect();
    if let Ok((_, unset)) = compose::interpolate::interpolate(compose, &values)
        && !unset.is_empty()
    {
        return Err(unset
            .iter()
            .map(|name| format!("variable {name} has no default: write ${{{name}:-value}}"))
            .collect());
    }
    let parsed = compose::parse(compose, "generated", &values)
        .map_err(|invalid| invalid.errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let findings = analyzer::analyze(compose, &parsed.spec);
    Ok(Generated {
        compose: format!("{compose}\n"),
        rounds: 0,
        secrets,
        variables,
        warnings: parsed.warnings,
        findings,
        usage: Usage::default(),
    })
}

/// Asks `model` for a stack matching `description`, for at most `rounds` rounds.
pub async fn generate(
    model: &dyn Model,
    description: &str,
    rounds: u32,
    stream: bool,
    progress: &(dyn Fn(Progress<'_>) + Send + Sync),
) -> Result<Generated, AiError> {
    let mut request = ChatRequest {
        system: INSTRUCTIONS.into(),
        messages: vec![Message::user(format!("Write the Compose file for: {}", description.trim()))],
        max_tokens: 4096,
    };
    let deltas = |piece: &str| progress(Progress::Delta(piece));
    let mut usage = Usage::default();
    let mut last = (Vec::new(), String::new());
    for round in 1..=rounds.max(1) {
        progress(Progress::Round(round));
        let answer = model.ask(&request, stream.then_some(&deltas as &DeltaSink<'_>)).await?;
        usage.input_tokens += answer.usage.input_tokens;
        usage.output_tokens += answer.usage.output_tokens;
        match check(&answer.text) {
            Ok(generated) => return Ok(Generated { rounds: round, usage, ..generated }),
            Err(errors) => {
                progress(Progress::Rejected(&errors));
                request.messages.push(Message::assistant(answer.text.clone()));
                request.messages.push(Message::user(format!(
                    "WindFlow refused that file:\n- {}\nAnswer with the whole corrected file.",
                    errors.join("\n- ")
                )));
                last = (errors, answer.text);
            }
        }
    }
    Err(AiError::InvalidAnswer { rounds: rounds.max(1), errors: last.0, last_answer: last.1 })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::ai::wire::Answer;

    /// Answers from a script, and remembers what it was asked.
    pub struct Scripted {
        answers: Mutex<Vec<String>>,
        pub asked: Mutex<Vec<ChatRequest>>,
    }

    impl Scripted {
        pub fn new(answers: &[&str]) -> Self {
            Self {
                answers: Mutex::new(answers.iter().rev().map(|a| (*a).to_owned()).collect()),
                asked: Mutex::default(),
            }
        }
    }

    impl Model for Scripted {
        fn ask<'a>(
            &'a self,
            request: &'a ChatRequest,
            _deltas: Option<&'a DeltaSink<'a>>,
        ) -> BoxFuture<'a, Result<Answer, AiError>> {
            self.asked.lock().expect("lock").push(request.clone());
            let text = self.answers.lock().expect("lock").pop().expect("a scripted answer");
            Box::pin(async move { Ok(Answer { text, usage: Usage { input_tokens: 10, output_tokens: 5 } }) })
        }
    }

    const GOOD: &str = "Here it is:\n```yaml\nservices:\n  web:\n    image: nginx:1.27\n    ports: [\"127.0.0.1:${HTTP_PORT:-8080}:80\"]\n    environment:\n      ADMIN_PASSWORD: ${ADMIN_PASSWORD}\n```\n";

    #[test]
    fn an_accepted_answer_names_its_secrets_and_variables() {
        let generated = check(GOOD).expect("valid");
        assert!(generated.compose.starts_with("services:"));
        assert_eq!(generated.secrets, ["ADMIN_PASSWORD"]);
        assert_eq!(generated.variables, ["HTTP_PORT"]);
    }

    #[test]
    fn refusals_say_what_is_wrong_and_where() {
        let errors = check("```yaml\nservices:\n  web:\n    image: [nginx\n```").expect_err("bad YAML");
        assert!(errors[0].starts_with("line "), "{errors:?}");
        let errors =
            check("services:\n  web:\n    image: nginx:1\n    ports: [\"${PORT}:80\"]\n").expect_err("no default");
        assert!(errors.iter().any(|e| e.contains("PORT") && e.contains("default")), "{errors:?}");
        assert_eq!(check("I cannot help with that.").expect_err("no file").len(), 1);
    }

    #[tokio::test]
    async fn an_invalid_answer_is_sent_back_with_its_errors_and_the_repair_is_accepted() {
        let model = Scripted::new(&["services: [oops", GOOD]);
        let rejected = Mutex::new(Vec::new());
        let progress = |p: Progress<'_>| {
            if let Progress::Rejected(errors) = p {
                rejected.lock().expect("lock").push(errors.to_vec());
            }
        };
        let generated = generate(&model, "a web server", 3, false, &progress).await.expect("repaired");
        assert_eq!(generated.rounds, 2);
        assert_eq!(generated.usage, Usage { input_tokens: 20, output_tokens: 10 });
        let asked = model.asked.lock().expect("lock");
        let repair = &asked[1].messages;
        assert_eq!(repair.len(), 3, "the description, the bad answer, the errors");
        assert_eq!(repair[1].content, "services: [oops");
        assert!(repair[2].content.contains("refused"), "{}", repair[2].content);
        assert_eq!(rejected.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn an_answer_that_never_validates_fails_with_the_last_errors() {
        let model = Scripted::new(&["no", "still no"]);
        let error = generate(&model, "anything", 2, false, &|_| {}).await.expect_err("never valid");
        match error {
            AiError::InvalidAnswer { rounds, errors, last_answer } => {
                assert_eq!(rounds, 2);
                assert!(!errors.is_empty());
                assert_eq!(last_answer, "still no");
            }
            other => panic!("unexpected {other}"),
        }
    }
}
