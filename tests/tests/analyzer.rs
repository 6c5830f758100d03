//! The rule analyser through the API: a stack's findings, each with its severity, path and
//! fix, and counts by severity; nothing is saved.

use reqwest::{Method, StatusCode};
use serde_json::json;
use windflow_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_is_analysed_finding_by_finding_with_where_and_how_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let compose = "services:\n  app:\n    image: example/app\n    privileged: true\n    environment:\n      API_TOKEN: abc\n    ports: [\"8080:80\"]\n";
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "risky", "compose": compose}))).await;
    let id = stack["id"].as_str().expect("id");
    let (status, analysis) = cp.api(Method::POST, &format!("/stacks/{id}/analyze"), None).await;
    assert_eq!(status, StatusCode::OK, "{analysis}");
    assert_eq!((analysis["version"].as_u64(), analysis["high"].as_u64()), (Some(1), Some(2)));
    let first = &analysis["findings"][0];
    assert_eq!((first["rule"].as_str(), first["severity"].as_str()), (Some("secret-in-environment"), Some("high")));
    assert_eq!(first["path"], "services.app.environment.API_TOKEN");
    assert!(first["fix"].as_str().is_some_and(|f| f.contains("stack secret")), "{first}");
    let rules: Vec<&str> =
        analysis["findings"].as_array().expect("findings").iter().filter_map(|f| f["rule"].as_str()).collect();
    for rule in [
        "privileged",
        "unpinned-image",
        "port-on-all-interfaces",
        "no-healthcheck",
        "no-resource-limits",
        "runs-as-root",
        "no-restart-policy",
    ] {
        assert!(rules.contains(&rule), "{rule} in {rules:?}");
    }
    let (status, _) = cp.api(Method::POST, &format!("/stacks/{id}/analyze?version=9"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "no version 9");
}
