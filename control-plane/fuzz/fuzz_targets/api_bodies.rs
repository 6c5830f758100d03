//! Arbitrary JSON bodies into every API route that takes one, through the real router over a
//! real store, signed in as the administrator. Whatever the bytes, the answer is never a 500
//! (bad input is the client's error, and must be said as one) and nothing panics.
//!
//! The first byte picks the route; the rest is the body. The routes and their methods come from
//! the OpenAPI document, so a new route is fuzzed as soon as it is documented.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use clap::Parser;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use windflow_control_plane::{api, server};

const PASSWORD: &str = "Fz7-Qq9-Wx2-Lm4-Rt8-Kp3";

/// Routes left out: they sign the caller out or change its credentials, which would turn every
/// later input into a 401 and fuzz nothing.
const LEFT_OUT: &[&str] = &["/api/v1/auth/", "/api/v1/users/me/password", "/api/v1/users/me/totp"];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
    routes: Vec<(Method, String)>,
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: server::ServeConfig,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data = std::env::temp_dir().join(format!("windflow-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        // SAFETY: set once, before any thread of ours reads the environment.
        unsafe { std::env::set_var("WINDFLOW_ADMIN_PASSWORD", PASSWORD) };
        let mut config = Args::parse_from([
            "fuzz",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--quic-listen",
            "127.0.0.1:0",
            "--advertise",
            "127.0.0.1",
            "--rate-limit",
            "0",
            "--token-rate-limit",
            "0",
        ])
        .config;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let assembled = {
            let _entered = runtime.enter();
            server::assemble(&mut config).expect("the control plane assembles")
        };
        let router = api::router(assembled.state);
        let mut fixture = Fixture { runtime, router, token: String::new(), routes: Vec::new() };
        let login = serde_json::json!({"username": "admin", "password": PASSWORD}).to_string();
        let (status, tokens) = fixture.call(Method::POST, "/api/v1/auth/login", login.as_bytes(), false);
        assert_eq!(status, StatusCode::OK, "{tokens}");
        fixture.token = tokens["access_token"].as_str().expect("access token").to_owned();

        // Real objects, so that routes with an id reach their validation, not a 404.
        let stack = serde_json::json!({"name": "fuzz", "compose": "services:\n  web:\n    image: busybox:1\n"});
        let (status, stack) = fixture.call(Method::POST, "/api/v1/stacks", stack.to_string().as_bytes(), true);
        assert_eq!(status, StatusCode::CREATED, "{stack}");
        let stack_id = stack["id"].as_str().expect("stack id").to_owned();
        let (_, orgs) = fixture.call(Method::GET, "/api/v1/orgs", b"", true);
        let org_id = orgs["items"][0]["id"].as_str().expect("the administrator's organisation").to_owned();

        let document = serde_json::to_value(api::openapi()).expect("document");
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                if operation.get("requestBody").is_none() || LEFT_OUT.iter().any(|p| path.starts_with(p)) {
                    continue;
                }
                let concrete = if path.starts_with("/api/v1/stacks/") {
                    path.replacen("{id}", &stack_id, 1)
                } else if path.starts_with("/api/v1/orgs/") {
                    path.replacen("{id}", &org_id, 1)
                } else {
                    path.clone()
                };
                // Remaining parameters get a well-formed id of nothing.
                let concrete = fill_parameters(&concrete);
                fixture.routes.push((method.to_uppercase().parse().expect("method"), concrete));
            }
        }
        assert!(fixture.routes.len() > 20, "routes with bodies: {:?}", fixture.routes);
        fixture
    })
}

fn fill_parameters(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map_or(rest.len(), |e| start + e + 1);
        out.push_str("0190ab00-0000-7000-8000-000000000000");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

impl Fixture {
    fn call(&self, method: Method, path: &str, body: &[u8], signed_in: bool) -> (StatusCode, serde_json::Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::HOST, "127.0.0.1");
        if signed_in {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let mut request = request.body(Body::from(body.to_vec())).expect("request");
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        self.runtime.block_on(async {
            let response = self.router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Some((selector, body)) = data.split_first() else { return };
    let (method, path) = &fixture.routes[usize::from(*selector) % fixture.routes.len()];
    let (status, answer) = fixture.call(method.clone(), path, body, true);
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {path} answered 500 to {:?}: {answer}",
        String::from_utf8_lossy(body)
    );
});
