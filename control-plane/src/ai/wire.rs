//! The three wire formats spoken to language models, without any IO: how a chat request is
//! written, how an answer and an error are read, and how a streamed answer is decoded from the
//! bytes as they arrive.
//!
//! - **OpenAI-compatible** (`{base}/chat/completions`, Server-Sent Events when streamed): OpenAI,
//!   LiteLLM's proxy, vLLM, Ollama's `/v1`, and most hosted gateways.
//! - **Anthropic** (`{base}/v1/messages`, Server-Sent Events with typed events).
//! - **Ollama native** (`{base}/api/chat`, newline-delimited JSON when streamed).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = AiProviderKind)]
pub enum ProviderKind {
    /// OpenAI's Chat Completions API and everything that speaks it.
    Openai,
    Anthropic,
    /// Ollama's own API.
    Ollama,
}

impl ProviderKind {
    pub fn label(self) -> &'static str {
        match self {
            ProviderKind::Openai => "the OpenAI-compatible provider",
            ProviderKind::Anthropic => "Anthropic",
            ProviderKind::Ollama => "Ollama",
        }
    }

    /// Where chats go, under the configured base URL.
    pub fn chat_path(self) -> &'static str {
        match self {
            ProviderKind::Openai => "/chat/completions",
            ProviderKind::Anthropic => "/v1/messages",
            ProviderKind::Ollama => "/api/chat",
        }
    }

    /// The headers that carry the key.
    pub fn auth_headers(self, key: Option<&str>) -> Vec<(&'static str, String)> {
        match (self, key) {
            (ProviderKind::Anthropic, key) => {
                let mut headers = vec![("anthropic-version", ANTHROPIC_VERSION.to_owned())];
                headers.extend(key.map(|k| ("x-api-key", k.to_owned())));
                headers
            }
            (_, Some(key)) => vec![("authorization", format!("Bearer {key}"))],
            (_, None) => Vec::new(),
        }
    }
}

const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into() }
    }
}

/// A conversation to continue: the instructions, then the turns.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub system: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub text: String,
    pub usage: Usage,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The request body for `model`.
pub fn request_body(kind: ProviderKind, model: &str, request: &ChatRequest, stream: bool) -> Value {
    let turns = request.messages.iter().map(|m| json!({"role": role_name(m.role), "content": m.content}));
    match kind {
        ProviderKind::Openai => {
            let messages: Vec<Value> =
                std::iter::once(json!({"role": "system", "content": request.system})).chain(turns).collect();
            let mut body =
                json!({"model": model, "messages": messages, "max_tokens": request.max_tokens, "stream": stream});
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            body
        }
        ProviderKind::Anthropic => json!({
            "model": model,
            "system": request.system,
            "messages": turns.collect::<Vec<_>>(),
            "max_tokens": request.max_tokens,
            "stream": stream,
        }),
        ProviderKind::Ollama => {
            let messages: Vec<Value> =
                std::iter::once(json!({"role": "system", "content": request.system})).chain(turns).collect();
            json!({"model": model, "messages": messages, "stream": stream, "options": {"num_predict": request.max_tokens}})
        }
    }
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// A whole (not streamed) answer.
pub fn parse_answer(kind: ProviderKind, body: &[u8]) -> Result<Answer, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if let Some(message) = error_in(&value) {
        return Err(message);
    }
    let (text, usage) = match kind {
        ProviderKind::Openai => (
            value.pointer("/choices/0/message/content").and_then(Value::as_str).map(str::to_owned),
            Usage {
                input_tokens: count(&value["usage"]["prompt_tokens"]),
                output_tokens: count(&value["usage"]["completion_tokens"]),
            },
        ),
        ProviderKind::Anthropic => (
            value["content"].as_array().map(|blocks| {
                blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect::<String>()
            }),
            Usage {
                input_tokens: count(&value["usage"]["input_tokens"]),
                output_tokens: count(&value["usage"]["output_tokens"]),
            },
        ),
        ProviderKind::Ollama => (
            value.pointer("/message/content").and_then(Value::as_str).map(str::to_owned),
            Usage { input_tokens: count(&value["prompt_eval_count"]), output_tokens: count(&value["eval_count"]) },
        ),
    };
    let text = text.ok_or_else(|| "the answer has no text".to_owned())?;
    Ok(Answer { text, usage })
}

/// The message of an error body, in whichever of the providers' shapes it comes:
/// `{"error": {"message": …}}` (OpenAI, Anthropic) or `{"error": "…"}` (Ollama).
fn error_in(value: &Value) -> Option<String> {
    match &value["error"] {
        Value::String(message) => Some(message.clone()),
        Value::Object(error) => Some(
            error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| Value::Object(error.clone()).to_string()),
        ),
        _ => None,
    }
}

/// What a provider said when it refused a request: its own message when the body has one, else
/// the start of the body.
pub fn error_message(body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    if let Some(message) = parsed.as_ref().and_then(error_in) {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "no message".to_owned(),
        None => text.to_owned(),
    }
}

/// Decodes a streamed answer from its bytes as they arrive, whatever the chunk boundaries.
#[derive(Debug)]
pub struct StreamDecoder {
    kind: ProviderKind,
    pending: Vec<u8>,
    text: String,
    usage: Usage,
    done: bool,
}

/// Longest line accepted in a stream; a provider sending more without a newline is broken.
const MAX_LINE: usize = 1 << 20;

impl StreamDecoder {
    pub fn new(kind: ProviderKind) -> Self {
        Self { kind, pending: Vec::new(), text: String::new(), usage: Usage::default(), done: false }
    }

    /// Feeds bytes; returns the text pieces they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.pending.extend_from_slice(bytes);
        let mut deltas = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(delta) = self.line(line.trim())? {
                self.text.push_str(&delta);
                deltas.push(delta);
            }
        }
        if self.pending.len() > MAX_LINE {
            return Err("a line of the stream is too long".into());
        }
        Ok(deltas)
    }

    fn line(&mut self, line: &str) -> Result<Option<String>, String> {
        let payload = match self.kind {
            ProviderKind::Ollama => line,
            // Server-Sent Events: only `data:` lines carry anything; Anthropic's `event:` lines
            // repeat the `type` of the data.
            ProviderKind::Openai | ProviderKind::Anthropic => match line.strip_prefix("data:") {
                Some(data) => data.trim_start(),
                None => return Ok(None),
            },
        };
        if payload.is_empty() {
            return Ok(None);
        }
        if payload == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let value: Value =
            serde_json::from_str(payload).map_err(|e| format!("a piece of the stream is not JSON: {e}"))?;
        if let Some(message) = error_in(&value) {
            return Err(message);
        }
        Ok(match self.kind {
            ProviderKind::Openai => {
                if value["usage"].is_object() {
                    self.usage.input_tokens = count(&value["usage"]["prompt_tokens"]);
                    self.usage.output_tokens = count(&value["usage"]["completion_tokens"]);
                }
                if value.pointer("/choices/0/finish_reason").is_some_and(|r| !r.is_null()) {
                    self.done = true;
                }
                value.pointer("/choices/0/delta/content").and_then(Value::as_str).map(str::to_owned)
            }
            ProviderKind::Anthropic => match value["type"].as_str() {
                Some("message_start") => {
                    self.usage.input_tokens = count(&value["message"]["usage"]["input_tokens"]);
                    None
                }
                Some("content_block_delta") => value["delta"]["text"].as_str().map(str::to_owned),
                Some("message_delta") => {
                    self.usage.output_tokens = count(&value["usage"]["output_tokens"]);
                    None
                }
                Some("message_stop") => {
                    self.done = true;
                    None
                }
                _ => None,
            },
            ProviderKind::Ollama => {
                if value["done"] == true {
                    self.done = true;
                    self.usage = Usage {
                        input_tokens: count(&value["prompt_eval_count"]),
                        output_tokens: count(&value["eval_count"]),
                    };
                }
                value.pointer("/message/content").and_then(Value::as_str).map(str::to_owned)
            }
        })
    }

    /// The whole answer, once the stream has ended; an answer cut short is an error.
    pub fn finish(mut self) -> Result<Answer, String> {
        if !self.pending.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            if let Some(delta) = self.line(rest.trim())? {
                self.text.push_str(&delta);
            }
        }
        if !self.done {
            return Err("the stream ended before the answer did".into());
        }
        Ok(Answer { text: self.text, usage: self.usage })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChatRequest {
        ChatRequest {
            system: "be brief".into(),
            messages: vec![Message::user("hi"), Message::assistant("hello"), Message::user("again")],
            max_tokens: 100,
        }
    }

    #[test]
    fn each_format_puts_the_instructions_where_its_api_wants_them() {
        let openai = request_body(ProviderKind::Openai, "gpt", &request(), false);
        assert_eq!(openai["messages"][0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(openai["messages"].as_array().map(Vec::len), Some(4));
        let anthropic = request_body(ProviderKind::Anthropic, "claude", &request(), true);
        assert_eq!(anthropic["system"], "be brief");
        assert_eq!(anthropic["messages"][0], json!({"role": "user", "content": "hi"}));
        assert_eq!(anthropic["max_tokens"], 100);
        let ollama = request_body(ProviderKind::Ollama, "llama", &request(), false);
        assert_eq!(ollama["options"]["num_predict"], 100);
        assert_eq!(ollama["stream"], false);
    }

    #[test]
    fn whole_answers_and_their_token_counts_are_read() {
        let openai = br#"{"choices":[{"message":{"role":"assistant","content":"yes"}}],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        assert_eq!(
            parse_answer(ProviderKind::Openai, openai),
            Ok(Answer { text: "yes".into(), usage: Usage { input_tokens: 7, output_tokens: 2 } })
        );
        let anthropic = br#"{"content":[{"type":"text","text":"y"},{"type":"text","text":"es"}],"usage":{"input_tokens":7,"output_tokens":2}}"#;
        assert_eq!(parse_answer(ProviderKind::Anthropic, anthropic).map(|a| a.text), Ok("yes".into()));
        let ollama =
            br#"{"message":{"role":"assistant","content":"yes"},"done":true,"prompt_eval_count":7,"eval_count":2}"#;
        assert_eq!(parse_answer(ProviderKind::Ollama, ollama).map(|a| a.usage.output_tokens), Ok(2));
    }

    #[test]
    fn the_providers_own_error_messages_are_kept() {
        assert_eq!(
            error_message(br#"{"error":{"message":"Incorrect API key provided","type":"x"}}"#),
            "Incorrect API key provided"
        );
        assert_eq!(
            error_message(br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#),
            "slow down"
        );
        assert_eq!(error_message(br#"{"error":"model 'x' not found"}"#), "model 'x' not found");
        assert_eq!(error_message(b"Bad Gateway"), "Bad Gateway");
        assert_eq!(error_message(b""), "no message");
    }

    fn decode(kind: ProviderKind, stream: &str, chunk: usize) -> Result<(Vec<String>, Answer), String> {
        let mut decoder = StreamDecoder::new(kind);
        let mut deltas = Vec::new();
        for piece in stream.as_bytes().chunks(chunk) {
            deltas.extend(decoder.feed(piece)?);
        }
        Ok((deltas, decoder.finish()?))
    }

    #[test]
    fn an_openai_stream_is_decoded_whatever_the_chunk_boundaries() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        for chunk in [1, 7, 1000] {
            let (deltas, answer) = decode(ProviderKind::Openai, stream, chunk).expect("decoded");
            assert_eq!(deltas, ["Hel", "lo"]);
            assert_eq!(answer, Answer { text: "Hello".into(), usage: Usage { input_tokens: 3, output_tokens: 2 } });
        }
    }

    #[test]
    fn an_anthropic_stream_is_decoded_from_its_typed_events() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":1}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        );
        let (deltas, answer) = decode(ProviderKind::Anthropic, stream, 5).expect("decoded");
        assert_eq!(deltas, ["Hi"]);
        assert_eq!(answer.usage, Usage { input_tokens: 5, output_tokens: 1 });
    }

    #[test]
    fn an_ollama_stream_is_newline_delimited_json() {
        let stream = concat!(
            "{\"message\":{\"content\":\"a\"},\"done\":false}\n",
            "{\"message\":{\"content\":\"b\"},\"done\":false}\n",
            "{\"message\":{\"content\":\"\"},\"done\":true,\"prompt_eval_count\":4,\"eval_count\":2}"
        );
        let (deltas, answer) = decode(ProviderKind::Ollama, stream, 3).expect("decoded");
        assert_eq!(answer.text, "ab");
        assert_eq!(deltas.concat(), "ab");
        assert_eq!(answer.usage.input_tokens, 4);
    }

    #[test]
    fn arbitrary_bytes_from_a_provider_never_panic_the_decoders() {
        // Pieces of the real formats mixed with raw bytes, from a fixed xorshift sequence, so
        // that inputs get past the JSON parser into the decoders' own logic.
        const PIECES: &[&str] = &[
            "data: ",
            "event: ",
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\n",
            "\n\n",
            "\"choices\"",
            "\"delta\"",
            "\"content\"",
            "\"text\"",
            "\"type\"",
            "\"message_start\"",
            "\"content_block_delta\"",
            "\"usage\"",
            "\"done\"",
            "true",
            "null",
            "1e309",
            "-1",
            "\"",
            "[DONE]",
            "\u{fffd}",
            "\"error\"",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut bytes = Vec::new();
            for _ in 0..next() % 40 {
                match next() % 4 {
                    0 => bytes.push((next() % 256) as u8),
                    _ => bytes.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize].as_bytes()),
                }
            }
            let _ = error_message(&bytes);
            for kind in [ProviderKind::Openai, ProviderKind::Anthropic, ProviderKind::Ollama] {
                let _ = parse_answer(kind, &bytes);
                let mut decoder = StreamDecoder::new(kind);
                let cut = (next() as usize) % (bytes.len() + 1);
                let _ = decoder.feed(&bytes[..cut]);
                let _ = decoder.feed(&bytes[cut..]);
                let _ = decoder.finish();
            }
        }
    }

    #[test]
    fn a_stream_cut_short_or_carrying_an_error_fails() {
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
        assert_eq!(
            decode(ProviderKind::Openai, cut, 100).map(|_| ()),
            Err("the stream ended before the answer did".into())
        );
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert_eq!(decode(ProviderKind::Anthropic, error, 100).map(|_| ()), Err("Overloaded".into()));
        assert!(decode(ProviderKind::Ollama, "not json\n", 100).is_err());
    }
}
