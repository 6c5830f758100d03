//! Stacks through the real API: versions, clone, validation, and refusals that store nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

const WEB: &str = "services:\n  web:\n    image: busybox:${TAG:-1.36}\n    ports: [\"8080:80\"]\n";

async fn stack_count(cp: &mut ControlPlane) -> u64 {
    let (status, page) = cp.api(Method::GET, "/stacks", None).await;
    assert_eq!(status, StatusCode::OK);
    page["total"].as_u64().expect("total")
}

fn error_paths(body: &Value) -> Vec<String> {
    body["error"]["details"]["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["path"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_is_saved_in_numbered_versions_and_can_be_cloned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;

    let (status, created) = cp.api(Method::POST, "/stacks", Some(json!({"name": "shop", "compose": WEB}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!((created["version"].clone(), created["services"].clone()), (json!(1), json!(["web"])));
    let id = created["id"].as_str().expect("id").to_owned();

    let changed = WEB.replace("8080", "8081");
    let (status, updated) = cp
        .api(Method::PUT, &format!("/stacks/{id}"), Some(json!({"compose": changed, "variables": {"TAG": "1.37"}})))
        .await;
    assert_eq!((status, updated["version"].clone()), (StatusCode::OK, json!(2)), "{updated}");

    let (_, versions) = cp.api(Method::GET, &format!("/stacks/{id}/versions"), None).await;
    let numbers: Vec<u64> =
        versions["items"].as_array().expect("items").iter().map(|v| v["version"].as_u64().expect("n")).collect();
    assert_eq!(numbers, [2, 1]);
    let (_, first) = cp.api(Method::GET, &format!("/stacks/{id}/versions/1"), None).await;
    assert_eq!(first["compose"], WEB, "versions are immutable");
    let (_, current) = cp.api(Method::GET, &format!("/stacks/{id}"), None).await;
    assert_eq!(current["variables"]["TAG"], "1.37");

    let (status, clone) =
        cp.api(Method::POST, &format!("/stacks/{id}/clone"), Some(json!({"name": "shop-staging"}))).await;
    assert_eq!((status, clone["version"].clone()), (StatusCode::CREATED, json!(1)));
    assert_eq!(clone["compose"], changed);

    let (status, taken) = cp.api(Method::POST, &format!("/stacks/{id}/clone"), Some(json!({"name": "shop"}))).await;
    assert_eq!((status, taken["error"]["code"].clone()), (StatusCode::CONFLICT, json!("name_taken")));

    assert_eq!(cp.api(Method::DELETE, &format!("/stacks/{id}"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(cp.api(Method::GET, &format!("/stacks/{id}/versions/1"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(stack_count(&mut cp).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_compose_is_a_422_that_says_where_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;

    // Invalid YAML: line and column.
    let (status, body) = cp
        .api(Method::POST, "/stacks", Some(json!({"name": "a", "compose": "services:\n  web:\n    image: [oops\n"})))
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_compose")));
    let first = &body["error"]["details"]["errors"][0];
    assert!(first["line"].as_u64().is_some() && first["column"].as_u64().is_some(), "{body}");

    let cases = [
        ("services:\n  web:\n    image: a\n    depends_on: [db]\n", "services.web.depends_on.db"),
        ("services:\n  a: { image: x, depends_on: [b] }\n  b: { image: x, depends_on: [a] }\n", "services"),
        ("services:\n  web:\n    image: a\n    ports: [\"80\", \"http:80\"]\n", "services.web.ports[1]"),
        ("services:\n  web:\n    image: a\n    volumes: [\"no/absolute\"]\n", "services.web.volumes[0]"),
        (
            "services:\n  web:\n    image: a\n    environment: { P: \"${PASSWORD:?needed}\" }\n",
            "services.web.environment.P",
        ),
    ];
    for (compose, path) in cases {
        let (status, body) = cp.api(Method::POST, "/stacks", Some(json!({"name": "a", "compose": compose}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{compose}: {body}");
        assert_eq!(error_paths(&body), [path], "{body}");
    }
    assert_eq!(stack_count(&mut cp).await, 0, "nothing was stored");

    // An update that breaks the file is refused and leaves the current version alone.
    let (_, created) = cp.api(Method::POST, "/stacks", Some(json!({"name": "ok", "compose": WEB}))).await;
    let id = created["id"].as_str().expect("id");
    let (status, _) = cp.api(Method::PUT, &format!("/stacks/{id}"), Some(json!({"compose": cases[0].0}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, current) = cp.api(Method::GET, &format!("/stacks/{id}"), None).await;
    assert_eq!(current["version"], 1);

    // Unapplied keys come back as warnings, on save and from the validator.
    let with_logging = "services:\n  web:\n    image: a\n    logging: { driver: none }\n";
    let (_, validated) = cp.api(Method::POST, "/stacks/validate", Some(json!({"compose": with_logging}))).await;
    assert_eq!(validated["valid"], true);
    assert_eq!(validated["warnings"][0]["path"], "services.web.logging");
    let (status, saved) =
        cp.api(Method::POST, "/stacks", Some(json!({"name": "logged", "compose": with_logging}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(saved["warnings"][0]["path"], "services.web.logging");

    // Request-shape mistakes are 4xx too.
    let (status, body) = cp.api(Method::POST, "/stacks", Some(json!({"name": "x"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["message"].as_str().expect("message").contains("compose"), "{body}");
    let (status, body) = cp.api(Method::POST, "/stacks", Some(json!({"name": "", "compose": WEB}))).await;
    assert_eq!((status, body["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("name")));
}
