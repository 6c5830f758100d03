//! One provider endpoint over HTTP, in one of the wire formats, with the provider's own errors
//! kept. Tested against servers that speak the real formats.

use std::time::Duration;

use futures_util::StreamExt;

use super::wire::{self, Answer, ChatRequest, ProviderKind, StreamDecoder};

/// Receives the pieces of a streamed answer as they arrive.
pub type DeltaSink<'a> = dyn Fn(&str) + Send + Sync + 'a;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("{provider} refused the credentials (HTTP {status}): {message}")]
    Unauthorized { provider: &'static str, status: u16, message: String },
    #[error("{provider} is limiting requests (HTTP 429): {message}")]
    RateLimited { provider: &'static str, message: String, retry_after: Option<Duration> },
    #[error("{provider} answered HTTP {status}: {message}")]
    Status { provider: &'static str, status: u16, message: String },
    #[error("{provider} did not answer within {}s", .timeout.as_secs())]
    Timeout { provider: &'static str, timeout: Duration },
    #[error("{provider} cannot be reached: {message}")]
    Unreachable { provider: &'static str, message: String },
    #[error("{provider}'s answer is not understood: {message}")]
    Malformed { provider: &'static str, message: String },
}

impl ProviderError {
    /// Whether trying again may help: the provider was busy, down or slow, not refusing this
    /// request for what it is.
    pub fn is_transient(&self) -> bool {
        match self {
            ProviderError::RateLimited { .. } | ProviderError::Timeout { .. } | ProviderError::Unreachable { .. } => {
                true
            }
            ProviderError::Status { status, .. } => *status >= 500,
            ProviderError::Unauthorized { .. } | ProviderError::Malformed { .. } => false,
        }
    }

    /// How long the provider asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One configured endpoint.
pub struct HttpProvider {
    pub kind: ProviderKind,
    /// Without a trailing slash: `https://api.openai.com/v1`, `https://api.anthropic.com`,
    /// `http://ollama:11434`.
    pub base_url: String,
    pub model: String,
    pub key: Option<String>,
    pub timeout: Duration,
    pub client: reqwest::Client,
}

impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProvider")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl HttpProvider {
    async fn send(&self, request: &ChatRequest, deltas: Option<&DeltaSink<'_>>) -> Result<Answer, ProviderError> {
        let provider = self.kind.label();
        let url = format!("{}{}", self.base_url, self.kind.chat_path());
        let body = wire::request_body(self.kind, &self.model, request, deltas.is_some());
        let mut builder = self.client.post(&url).json(&body);
        for (name, value) in self.kind.auth_headers(self.key.as_deref()) {
            builder = builder.header(name, value);
        }
        let unreachable = |e: reqwest::Error| ProviderError::Unreachable { provider, message: without_url(&e) };
        let response = builder.send().await.map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let message = wire::error_message(&response.bytes().await.unwrap_or_default());
            let status = status.as_u16();
            return Err(match status {
                401 | 403 => ProviderError::Unauthorized { provider, status, message },
                429 => ProviderError::RateLimited { provider, message, retry_after },
                _ => ProviderError::Status { provider, status, message },
            });
        }
        let malformed = |message: String| ProviderError::Malformed { provider, message };
        // Some gateways answer a streamed request whole (LiteLLM's mock models do): then the
        // answer is one piece.
        let whole = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let deltas = match deltas {
            Some(deltas) if !whole => deltas,
            _ => {
                let body = response.bytes().await.map_err(unreachable)?;
                let answer = wire::parse_answer(self.kind, &body).map_err(malformed)?;
                if let Some(deltas) = deltas {
                    deltas(&answer.text);
                }
                return Ok(answer);
            }
        };
        let mut decoder = StreamDecoder::new(self.kind);
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            for delta in decoder.feed(&chunk.map_err(unreachable)?).map_err(malformed)? {
                deltas(&delta);
            }
        }
        decoder.finish().map_err(malformed)
    }
}

/// reqwest's errors name the URL, which for some gateways carries a key in its query.
fn without_url(error: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut deepest = None;
    while let Some(cause) = source {
        deepest = Some(cause.to_string());
        source = cause.source();
    }
    deepest.unwrap_or_else(|| if error.is_connect() { "connection failed".into() } else { "request failed".into() })
}

impl HttpProvider {
    /// Continues the conversation; with `deltas`, the answer is streamed and each piece handed
    /// over as it arrives (the returned answer is still whole).
    pub async fn chat(&self, request: &ChatRequest, deltas: Option<&DeltaSink<'_>>) -> Result<Answer, ProviderError> {
        match tokio::time::timeout(self.timeout, self.send(request, deltas)).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout { provider: self.kind.label(), timeout: self.timeout }),
        }
    }
}
