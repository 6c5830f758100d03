//! API tokens through the real API and CLI: scopes, expiry, revocation, last use.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

async fn token(cp: &mut ControlPlane, name: &str, scope: &str, ttl: Option<u64>) -> (String, String) {
    let mut body = json!({"name": name, "scope": scope});
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = json!(ttl);
    }
    let (status, created) = cp.api(Method::POST, "/tokens", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (created["id"].as_str().expect("id").to_owned(), created["token"].as_str().expect("token").to_owned())
}

async fn call(cp: &ControlPlane, bearer: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    cp.call_with(Some(bearer), method, &format!("/api/v1{path}"), body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_act_within_their_scope_until_they_expire_or_are_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let (_, read) = token(&mut cp, "dashboard-kiosk", "read", None).await;
    let (_, deploy) = token(&mut cp, "ci-deploy", "deploy", None).await;
    let (admin_id, admin) = token(&mut cp, "terraform", "admin", None).await;
    let stack = json!({"name": "tok", "compose": "services:\n  a:\n    image: x\n"});

    // read: reads only.
    assert_eq!(call(&cp, &read, Method::GET, "/stacks", None).await.0, StatusCode::OK);
    let (status, refused) = call(&cp, &read, Method::POST, "/stacks", Some(stack.clone())).await;
    assert_eq!((status, refused["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("insufficient_scope")));

    // admin: edits stacks; deploy: deploys them but cannot edit them.
    let (status, created) = call(&cp, &admin, Method::POST, "/stacks", Some(stack)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let stack_id = created["id"].as_str().expect("id");
    assert_eq!(
        call(&cp, &deploy, Method::PUT, &format!("/stacks/{stack_id}"), Some(json!({"name": "x"}))).await.0,
        StatusCode::FORBIDDEN
    );
    let join = cp.join_token(1, 600).await;
    let agent = Agent::enroll(&cp, &dir.path().join("agent"), join["token"].as_str().expect("token")).expect("enrolls");
    let (status, deployment) =
        call(&cp, &deploy, Method::POST, &format!("/stacks/{stack_id}/deploy/{}", agent.id()), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deployment}");
    assert_eq!(
        call(&cp, &read, Method::POST, &format!("/stacks/{stack_id}/deploy/{}", agent.id()), None).await.0,
        StatusCode::FORBIDDEN
    );

    // No token makes tokens, whatever its scope.
    let (status, body) =
        call(&cp, &admin, Method::POST, "/tokens", Some(json!({"name": "child", "scope": "admin"}))).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("session_required")));

    // Listed with last use, never with the secret; revoked tokens stop working at once.
    let (_, listed) = cp.api(Method::GET, "/tokens", None).await;
    let terraform = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|t| t["id"] == admin_id.as_str())
        .expect("listed")
        .clone();
    assert!(terraform["last_used_at"].is_string() && terraform.get("token").is_none(), "{terraform}");
    assert!(!listed.to_string().contains(&admin[admin.len() - 20..]));
    assert_eq!(cp.api(Method::DELETE, &format!("/tokens/{admin_id}"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&cp, &admin, Method::GET, "/stacks", None).await.0, StatusCode::UNAUTHORIZED);

    // Expiry.
    let (_, short) = token(&mut cp, "short", "read", Some(1)).await;
    assert_eq!(call(&cp, &short, Method::GET, "/stacks", None).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&cp, &short, Method::GET, "/stacks", None).await.0, StatusCode::UNAUTHORIZED);

    // The audit trail names the token, not a user.
    let (_, events) = cp.api(Method::GET, "/events?kind=api", None).await;
    assert!(
        events["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|e| e["actor"].as_str().is_some_and(|a| a.starts_with("token:")))
    );

    // The CLI with a token instead of a password.
    let ca = dir.path().join("data/ca.pem");
    let cli_dir = dir.path().join("ci");
    std::fs::create_dir_all(&cli_dir).expect("dir");
    let (ok, out, err) = cp
        .cli(&cli_dir, &["login", "--server", &cp.url(""), "--ca-file", ca.to_str().expect("path"), "--token", &read]);
    assert!(ok && out.contains("using an API token of admin"), "{out}{err}");
    let (ok, out, _) = cp.cli(&cli_dir, &["stack", "list"]);
    assert!(ok && out.contains("tok"), "{out}");
    let (ok, _, err) = cp.cli(&cli_dir, &["stack", "delete", "tok"]);
    assert!(!ok && err.contains("needs a token with the admin scope; this one has read"), "{err}");
}
