//! A local HTTP server that records every request it gets and answers 200 (or, for the paths
//! told so, another status): where workflows send their requests and notifications in tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct Book {
    requests: Mutex<Vec<Recorded>>,
    statuses: Mutex<HashMap<String, u16>>,
}

pub struct Recorder {
    pub port: u16,
    book: Arc<Book>,
    server: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start() -> Self {
        let book = Arc::new(Book::default());
        let app = axum::Router::new().fallback(record).with_state(book.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the recorder");
        let port = listener.local_addr().expect("its address").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, book, server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers `status` to requests for `path` from now on.
    pub fn answer(&self, path: &str, status: u16) {
        self.book.statuses.lock().expect("statuses").insert(path.to_owned(), status);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.book.requests.lock().expect("requests").clone()
    }

    /// The requests for `path`, once there are at least `count` (waiting up to `within`).
    pub async fn wait_for(&self, path: &str, count: usize, within: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + within;
        loop {
            let got: Vec<Recorded> = self.requests().into_iter().filter(|r| r.path == path).collect();
            if got.len() >= count || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(book): State<Arc<Book>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let headers = headers.iter().filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned()))).collect();
    let status = book.statuses.lock().expect("statuses").get(&path).copied().unwrap_or(200);
    book.requests.lock().expect("requests").push(Recorded {
        method: method.to_string(),
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}
