//! A local language-model server speaking the three wire formats WindFlow uses — OpenAI's
//! `/v1/chat/completions`, Anthropic's `/v1/messages` and Ollama's `/api/chat`, each whole or
//! streamed as that API streams — answering from a script and recording every request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the server answers next.
#[derive(Debug, Clone)]
pub enum Reply {
    Text(String),
    /// An error status with the provider's error body.
    Status(u16, String),
}

#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The request exactly as sent, to search for what must not be in it.
    pub raw: String,
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    /// Answered when the script is empty.
    fallback: Mutex<Option<Reply>>,
    requests: Mutex<Vec<ModelRequest>>,
}

pub struct ModelServer {
    pub port: u16,
    script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl ModelServer {
    pub async fn start() -> Self {
        let script = Arc::new(Script::default());
        let app = axum::Router::new().fallback(answer).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the model server");
        let port = listener.local_addr().expect("its address").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, script, server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn reply(&self, reply: Reply) {
        self.script.replies.lock().expect("script").push_back(reply);
    }

    pub fn text(&self, text: &str) {
        self.reply(Reply::Text(text.to_owned()));
    }

    /// Answers this whenever the script has nothing else.
    pub fn always(&self, reply: Reply) {
        *self.script.fallback.lock().expect("script") = Some(reply);
    }

    pub fn requests(&self) -> Vec<ModelRequest> {
        self.script.requests.lock().expect("requests").clone()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    OpenAi,
    Anthropic,
    Ollama,
}

async fn answer(State(script): State<Arc<Script>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let raw = String::from_utf8_lossy(&body).into_owned();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    script.requests.lock().expect("requests").push(ModelRequest {
        path: uri.path().to_owned(),
        headers,
        body: request.clone(),
        raw,
    });
    let format = match uri.path() {
        "/v1/chat/completions" | "/chat/completions" => Format::OpenAi,
        "/v1/messages" => Format::Anthropic,
        "/api/chat" => Format::Ollama,
        _ => return (StatusCode::NOT_FOUND, "no such route").into_response(),
    };
    let next = script.replies.lock().expect("script").pop_front();
    let reply = next.or_else(|| script.fallback.lock().expect("script").clone());
    let text = match reply {
        Some(Reply::Text(text)) => text,
        Some(Reply::Status(status, body)) => {
            return (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body).into_response();
        }
        None => "(the script is empty)".to_owned(),
    };
    let (input, output) = (11u64, text.split_whitespace().count() as u64);
    if request["stream"] == true {
        return streamed(format, &text, input, output);
    }
    let body = match format {
        Format::OpenAi => json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
        }),
        Format::Anthropic => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": request["model"],
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": input, "output_tokens": output},
        }),
        Format::Ollama => json!({
            "model": request["model"], "message": {"role": "assistant", "content": text}, "done": true,
            "prompt_eval_count": input, "eval_count": output,
        }),
    };
    axum::Json(body).into_response()
}

/// The answer in pieces of a few characters, framed as the API frames them.
fn streamed(format: Format, text: &str, input: u64, output: u64) -> Response {
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars.chunks(7).map(|c| c.iter().collect()).collect();
    let mut frames: Vec<String> = Vec::new();
    match format {
        Format::OpenAi => {
            for piece in &pieces {
                frames.push(format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": piece}}]})));
            }
            frames.push(format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            ));
            frames.push(format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": input, "completion_tokens": output}})
            ));
            frames.push("data: [DONE]\n\n".to_owned());
        }
        Format::Anthropic => {
            let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
            frames.push(event(
                "message_start",
                json!({"type": "message_start", "message": {"usage": {"input_tokens": input, "output_tokens": 1}}}),
            ));
            for piece in &pieces {
                frames.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            frames.push(event("message_delta", json!({"type": "message_delta", "usage": {"output_tokens": output}})));
            frames.push(event("message_stop", json!({"type": "message_stop"})));
        }
        Format::Ollama => {
            for piece in &pieces {
                frames
                    .push(format!("{}\n", json!({"message": {"role": "assistant", "content": piece}, "done": false})));
            }
            frames.push(format!(
                "{}\n",
                json!({"message": {"role": "assistant", "content": ""}, "done": true, "prompt_eval_count": input, "eval_count": output})
            ));
        }
    }
    let content_type = if format == Format::Ollama { "application/x-ndjson" } else { "text/event-stream" };
    let body =
        Body::from_stream(futures_util::stream::iter(frames.into_iter().map(|f| Ok::<_, Infallible>(Bytes::from(f)))));
    Response::builder().header("content-type", content_type).body(body).unwrap_or_default()
}
