//! The API keeps the contract its OpenAPI document states: the document is served with its
//! browsable docs, and schemathesis (the real tool, from PyPI) throws a bounded number of
//! generated requests at every operation of a live control plane — valid and invalid ones, with
//! real ids to reach past the 404s — and finds no 5xx, no undocumented status or content type,
//! and no answer that breaks its schema.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;
use windflow_tests::*;

/// Generated requests per operation and pass; the whole run stays well under a minute.
const EXAMPLES_PER_OPERATION: &str = "25";

fn schemathesis() -> PathBuf {
    let venv = std::env::var("WINDFLOW_VENV").unwrap_or_else(|_| "/var/cache/windflow/venv".into());
    let path = Path::new(&venv).join("bin/schemathesis");
    assert!(path.exists(), "{} is missing: scripts/bootstrap installs it", path.display());
    path
}

/// One schemathesis run; panics with its report when it found anything.
fn run_schemathesis(cp: &ControlPlane, scratch: &Path, config: &str, bearer: &str, filters: &[&str]) {
    let config_file = scratch.join("schemathesis.toml");
    std::fs::write(&config_file, config).expect("config written");
    let output = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(cp.url("/api/openapi.json"))
        .arg("--tls-verify")
        .arg(cp.dir.join("data/ca.pem"))
        .args(["--header", &format!("Authorization: Bearer {bearer}")])
        // Removing a deployment is asynchronous (202): it stays readable, `removing`, until its
        // agent confirms, which `use_after_free` would count as a deleted resource still there.
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free"])
        .args(["--max-examples", EXAMPLES_PER_OPERATION, "--seed", "7", "--request-timeout", "10"])
        // Python 3.11's `ast` is not thread-safe, and hypothesis parses source in its workers.
        .args(["--workers", "1", "--no-color", "--generation-database", "none"])
        .args(filters)
        .current_dir(scratch)
        .output()
        .expect("schemathesis runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\ncontrol plane log:\n{}",
        cp.process.logs()
    );
    assert!(report.contains("passed"), "{report}");
    // The summary (operations, phases, cases) goes into the test's output for the record.
    let summary: Vec<&str> = report.lines().skip_while(|l| !l.contains("SUMMARY")).collect();
    eprintln!("{}", summary.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_and_its_docs_are_served_and_describe_every_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(dir.path()).await;
    let document: serde_json::Value =
        cp.http().get(cp.url("/api/openapi.json")).send().await.expect("sent").json().await.expect("json");
    assert_eq!(document["openapi"], "3.1.0");
    for path in
        ["/api/v1/auth/login", "/api/v1/stacks/{id}", "/api/v1/deployments/{id}/logs", "/api/v1/orgs/{id}/members"]
    {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
    let codes = document["components"]["schemas"]["Code"]["enum"].as_array().expect("the code table");
    assert!(codes.contains(&json!("invalid_compose")) && codes.contains(&json!("rate_limited")));

    // The browsable docs come from the binary itself: no network needed.
    let page = cp.http().get(cp.url("/api/docs/")).send().await.expect("sent");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains("swagger"));
    let init = cp.http().get(cp.url("/api/docs/swagger-initializer.js")).send().await.expect("sent");
    assert!(init.text().await.expect("js").contains("/api/openapi.json"));
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_requests_find_no_server_error_and_no_answer_outside_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--rate-limit", "0", "--token-rate-limit", "0"].map(String::from).to_vec();
    let mut cp = ControlPlane::start_with(dir.path(), free_tcp_port(), free_udp_port(), args).await;

    // Real objects, so that generated requests reach past "not found".
    let token = cp.join_token(1, 600).await;
    let agent =
        Agent::enroll(&cp, &dir.path().join("agent"), token["token"].as_str().expect("token")).expect("enrolls");
    let target = agent.id();
    let compose = "services:\n  web:\n    image: busybox:1.36\n    ports: [\"8080:80\"]\n";
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "web", "compose": compose}))).await;
    let stack = stack["id"].as_str().expect("stack");
    let (_, deployment) = cp.api(Method::POST, &format!("/stacks/{stack}/deploy/{target}"), None).await;
    let deployment = deployment["id"].as_str().expect("deployment").to_owned();
    let body = json!({"username": "fuzzed", "password": "a long enough passphrase"});
    let (_, user) = cp.api(Method::POST, "/users", Some(body)).await;
    let user = user["id"].as_str().expect("user").to_owned();

    // Ids of objects the API cannot make (targets) or never deletes (deployments, users), so
    // that generated requests reach past "not found"; the stateful phase follows links from
    // what it creates for the rest. The deployment's target is not connected, so its logs answer
    // at once; its events would stream for ever with follow=true, so that one is pinned to false.
    let config = format!(
        r#"
[[operations]]
include-path-regex = "^/api/v1/targets/\\{{id\\}}"
parameters = {{ "path.id" = "{target}" }}

[[operations]]
include-path-regex = "^/api/v1/deployments/\\{{id\\}}"
parameters = {{ "path.id" = "{deployment}", "query.follow" = false }}

[[operations]]
include-path-regex = "^/api/v1/users/\\{{id\\}}"
parameters = {{ "path.id" = "{user}" }}
"#
    );

    // Everything an API token may call, as an admin-scoped token (it cannot sign itself out),
    // but the endless streams.
    let session = cp.admin_login().await;
    let (status, made) = cp
        .call_with(Some(&session), Method::POST, "/api/v1/tokens", Some(json!({"name": "fuzz", "scope": "admin"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let api_token = made["token"].as_str().expect("token").to_owned();
    run_schemathesis(
        &cp,
        dir.path(),
        &config,
        &api_token,
        &["--exclude-path-regex", "^/api/v1/(events/stream|changes)$"],
    );

    // The routes only a signed-in session may call, except signing out.
    let session_only =
        ["--include-path-regex", "^/api/v1/(tokens|auth/totp|users/me)", "--exclude-path", "/api/v1/auth/logout"];
    run_schemathesis(&cp, dir.path(), &config, &session, &session_only);

    // And the control plane is still well.
    assert_eq!(cp.api(Method::GET, "/auth/me", None).await.0, StatusCode::OK);
}
