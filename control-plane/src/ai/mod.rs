//! AI assistance: each organisation's language-model provider (its key sealed at rest), the
//! guard every call goes through (redaction, retries with backoff, a circuit breaker per
//! provider, token and cost accounting), and the features built on it: generating a stack
//! ([`generate`]) and diagnosing a deployment ([`diagnose`]). [`optimize`] needs no model: it
//! sizes limits from measured usage.
//!
//! The rule analyser ([`crate::analyzer`]) needs no model and is what the features fall back on
//! when an organisation has none.

pub mod diagnose;
pub mod generate;
pub mod optimize;
pub mod provider;
pub mod redact;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use windflow_protocol::backoff::Backoff;

use self::provider::{DeltaSink, HttpProvider, ProviderError};
use self::redact::Redactor;
use self::wire::{Answer, ChatRequest, Message, ProviderKind};
use crate::breaker::{Breaker, BreakerView, Breakers};
use crate::sealing::MasterKey;
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// An organisation's language model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiConfig {
    pub org_id: Uuid,
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: String,
    pub model: String,
    /// Sealed for `ai-key:<org id>`; none for providers without keys (a local Ollama).
    pub api_key_sealed: Option<String>,
    /// How long one answer may take.
    pub timeout_s: u64,
    /// The longest answer asked for.
    pub max_tokens: u32,
    /// US dollars per million tokens, for the cost figures (0: not counted).
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
    pub updated_by: String,
    pub updated_at_unix_s: i64,
}

impl Record for AiConfig {
    const TABLE: Table = Table::AiConfigs;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.org_id.as_bytes().to_vec()
    }
}

/// What an organisation's model cost in a month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AiUsageMonth)]
pub struct UsageMonth {
    pub org_id: Uuid,
    /// `2026-11`.
    pub month: String,
    pub requests: u64,
    /// Requests that failed after their retries.
    pub failures: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US dollars, at the prices configured when each request was made.
    pub cost_usd: f64,
}

impl Record for UsageMonth {
    const TABLE: Table = Table::AiUsage;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        let mut key = self.org_id.as_bytes().to_vec();
        key.extend_from_slice(self.month.as_bytes());
        key
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AiError {
    #[error(
        "no language model is configured for this organisation: its admins can set one in the organisation's AI settings; the rule analyser works without one"
    )]
    NotConfigured,
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("{provider} failed {failures} times in a row; calls to it resume in {}s", .retry_in.as_secs().max(1))]
    CircuitOpen { provider: &'static str, failures: u32, retry_in: Duration },
    #[error("the model's answer never became a valid stack after {rounds} attempts: {}", .errors.join("; "))]
    InvalidAnswer { rounds: u32, errors: Vec<String>, last_answer: String },
    #[error("the organisation's provider key cannot be opened: {0}")]
    Key(#[from] crate::sealing::SealError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How hard a call tries, and when a provider counts as down.
#[derive(Debug, Clone)]
pub struct Resilience {
    /// Attempts per request, the first included.
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Failed attempts in a row that open a provider's circuit, and for how long.
    pub breaker_threshold: u32,
    pub breaker_pause: Duration,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            breaker_threshold: 5,
            breaker_pause: Duration::from_secs(30),
        }
    }
}

pub struct Assistant {
    store: Arc<dyn Store>,
    master_key: Arc<MasterKey>,
    client: reqwest::Client,
    resilience: Resilience,
    breakers: Breakers,
}

fn key_context(org_id: Uuid) -> String {
    format!("ai-key:{org_id}")
}

fn month_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

impl Assistant {
    pub fn new(store: Arc<dyn Store>, master_key: Arc<MasterKey>, resilience: Resilience) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let breakers = Breakers::new(resilience.breaker_threshold, resilience.breaker_pause);
        Self { store, master_key, client, resilience, breakers }
    }

    pub fn config(&self, org_id: Uuid) -> Result<Option<AiConfig>, StoreError> {
        self.store.load(org_id.as_bytes())
    }

    pub fn save(&self, config: &AiConfig) -> Result<(), StoreError> {
        self.store.save(config)
    }

    pub fn delete(&self, org_id: Uuid) -> Result<(), StoreError> {
        self.store.delete(Table::AiConfigs, org_id.as_bytes())
    }

    pub fn seal_key(&self, org_id: Uuid, key: &str) -> String {
        self.master_key.seal(&key_context(org_id), key.as_bytes())
    }

    /// The organisation's usage, month by month, oldest first.
    pub fn usage(&self, org_id: Uuid) -> Result<Vec<UsageMonth>, StoreError> {
        self.store.load_prefix(org_id.as_bytes())
    }

    fn breaker(&self, config: &AiConfig) -> Arc<Breaker> {
        self.breakers.get(&format!("{}|{:?}|{}", config.org_id, config.kind, config.base_url))
    }

    /// Provider circuits open now, and how many times they opened: for the metrics.
    pub fn circuits(&self) -> (u64, u64) {
        self.breakers.totals(Instant::now())
    }

    pub fn breaker_view(&self, config: &AiConfig) -> BreakerView {
        self.breaker(config).view(Instant::now())
    }

    /// The organisation's model, guarded, with `redactor` applied to everything sent to it.
    pub fn model_for(self: &Arc<Self>, org_id: Uuid, redactor: Redactor) -> Result<OrgModel, AiError> {
        let config = self.config(org_id)?.ok_or(AiError::NotConfigured)?;
        let key = match &config.api_key_sealed {
            Some(sealed) => Some(self.master_key.open_string(&key_context(org_id), sealed)?),
            None => None,
        };
        let provider = HttpProvider {
            kind: config.kind,
            base_url: config.base_url.clone(),
            model: config.model.clone(),
            key,
            timeout: Duration::from_secs(config.timeout_s.max(1)),
            client: self.client.clone(),
        };
        let breaker = self.breaker(&config);
        Ok(OrgModel { assistant: self.clone(), config, provider, redactor, breaker })
    }

    fn account(&self, org_id: Uuid, config: &AiConfig, outcome: Result<&Answer, ()>) {
        let empty = UsageMonth {
            org_id,
            month: month_now(),
            requests: 0,
            failures: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        };
        let key = empty.key();
        // Compare-and-swap, so that answers finishing together all count.
        for _ in 0..16 {
            let current: Option<UsageMonth> = match self.store.load(&key) {
                Ok(current) => current,
                Err(error) => {
                    tracing::warn!(%org_id, %error, "could not read the AI usage");
                    return;
                }
            };
            let mut next = current.clone().unwrap_or_else(|| empty.clone());
            next.requests += 1;
            match outcome {
                Ok(answer) => {
                    next.input_tokens += answer.usage.input_tokens;
                    next.output_tokens += answer.usage.output_tokens;
                    next.cost_usd += (answer.usage.input_tokens as f64 * config.input_price_per_mtok
                        + answer.usage.output_tokens as f64 * config.output_price_per_mtok)
                        / 1_000_000.0;
                }
                Err(()) => next.failures += 1,
            }
            let written = match &current {
                Some(current) => self.store.replace(current, &next),
                None => self.store.atomic(
                    &[crate::store::Check { table: Table::AiUsage, key: key.clone(), expected: None }],
                    &[crate::store::Write { table: Table::AiUsage, key: key.clone(), value: Some(next.encode()) }],
                ),
            };
            match written {
                Ok(true) => return,
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(%org_id, %error, "could not record the AI usage");
                    return;
                }
            }
        }
    }
}

/// An organisation's model behind its guard.
pub struct OrgModel {
    assistant: Arc<Assistant>,
    pub config: AiConfig,
    provider: HttpProvider,
    redactor: Redactor,
    breaker: Arc<Breaker>,
}

impl OrgModel {
    async fn guarded(&self, request: &ChatRequest, deltas: Option<&DeltaSink<'_>>) -> Result<Answer, AiError> {
        let redacted = ChatRequest {
            system: self.redactor.redact(&request.system),
            messages: request
                .messages
                .iter()
                .map(|m| Message { role: m.role, content: self.redactor.redact(&m.content) })
                .collect(),
            max_tokens: request.max_tokens.min(self.config.max_tokens),
        };
        let resilience = &self.assistant.resilience;
        let mut backoff = Backoff::new(resilience.backoff_base, resilience.backoff_max);
        // Once pieces of an answer went out, trying again would send them twice.
        let streamed = AtomicBool::new(false);
        let sink = |piece: &str| {
            streamed.store(true, Ordering::Relaxed);
            if let Some(deltas) = deltas {
                deltas(piece);
            }
        };
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            if let Err(refused) = self.breaker.admit(Instant::now()) {
                break Err(AiError::CircuitOpen {
                    provider: self.config.kind.label(),
                    failures: resilience.breaker_threshold,
                    retry_in: refused.retry_in,
                });
            }
            let result = self.provider.chat(&redacted, deltas.map(|_| &sink as &DeltaSink<'_>)).await;
            // A malformed answer is the model's doing, not the provider being down.
            let failed = matches!(&result, Err(e) if !matches!(e, ProviderError::Malformed { .. }));
            self.breaker.record(!failed, Instant::now());
            match result {
                Ok(answer) => break Ok(answer),
                Err(error)
                    if error.is_transient() && attempt < resilience.attempts && !streamed.load(Ordering::Relaxed) =>
                {
                    let delay = error
                        .retry_after()
                        .unwrap_or_else(|| backoff.next_delay(rand::random()))
                        .min(resilience.backoff_max);
                    tracing::info!(org_id = %self.config.org_id, attempt, %error, ?delay, "retrying the language model");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => break Err(AiError::Provider(error)),
            }
        };
        self.assistant.account(self.config.org_id, &self.config, outcome.as_ref().map_err(|_| ()));
        outcome
    }
}

/// What the features ask of a model: the guarded one in production, scripted ones in tests.
pub trait Model: Send + Sync {
    fn ask<'a>(
        &'a self,
        request: &'a ChatRequest,
        deltas: Option<&'a DeltaSink<'a>>,
    ) -> BoxFuture<'a, Result<Answer, AiError>>;
}

impl Model for OrgModel {
    fn ask<'a>(
        &'a self,
        request: &'a ChatRequest,
        deltas: Option<&'a DeltaSink<'a>>,
    ) -> BoxFuture<'a, Result<Answer, AiError>> {
        Box::pin(self.guarded(request, deltas))
    }
}
