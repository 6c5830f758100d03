//! The audit trail of a real control plane: what it records, that it never records secrets, and
//! that editing, removing or reordering a stored entry is detected.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_control_plane::store::{RedbStore, Store, Table};
use windflow_tests::*;

async fn entries(cp: &mut ControlPlane, query: &str) -> Vec<Value> {
    let (status, page) = cp.api(Method::GET, &format!("/events?per_page=500{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

/// Copies a stopped control plane's data directory, changes its audit table with `tamper`, starts
/// a control plane on the copy and returns what verification says.
async fn verify_after(source: &std::path::Path, scratch: &std::path::Path, tamper: impl FnOnce(&RedbStore)) -> Value {
    let copy = scratch.join("copy");
    let _ = std::fs::remove_dir_all(&copy);
    let status = std::process::Command::new("cp").arg("-a").arg(source).arg(&copy).status().expect("cp");
    assert!(status.success());
    {
        let store = RedbStore::open(&copy.join("data/store")).expect("open the copied store");
        tamper(&store);
    }
    let mut cp = ControlPlane::start(&copy).await;
    cp.api(Method::GET, "/audit/verify", None).await.1
}

fn entry(store: &RedbStore, seq: u64) -> Vec<u8> {
    store.get(Table::Audit, &seq.to_be_bytes()).expect("read").expect("entry exists")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_trail_records_requests_and_agents_and_detects_tampering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let agent = cp.start_agent(dir.path(), "agent").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cp.is_connected(&agent.id()).await {
        assert!(std::time::Instant::now() < deadline, "the agent never connected:\n{}", agent.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let secret = "s3cr3t-value-never-logged";
    let (status, _) = cp
        .api(Method::POST, "/stacks", Some(json!({"name": "audited", "compose": "services:\n  a:\n    image: x\n", "variables": {"PASSWORD": secret}})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = cp
        .call_with(
            None,
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({"username": "admin", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let all = entries(&mut cp, "").await;
    let has = |kind: &str, actor: &str, object: &str, status: Option<u16>| {
        all.iter().any(|e| {
            e["kind"] == kind
                && e["actor"] == actor
                && e["object"].as_str().is_some_and(|o| o.contains(object))
                && status.is_none_or(|s| e["status"] == s)
        })
    };
    assert!(has("api.request", "user:admin", "POST /api/v1/stacks", Some(201)), "{all:#?}");
    assert!(has("api.request", "anonymous", "POST /api/v1/auth/login", Some(401)), "failed logins are recorded");
    assert!(has("api.request", "anonymous", "POST /api/v1/agents/enroll", Some(201)), "enrollment is recorded");
    assert!(has("agent.connected", &format!("agent:{}", agent.id()), &agent.id(), None), "{all:#?}");
    assert!(!serde_json::to_string(&all).expect("json").contains(secret), "no secret in the trail");
    let agent_only = entries(&mut cp, "&kind=agent").await;
    assert!(
        !agent_only.is_empty()
            && agent_only.iter().all(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("agent.")))
    );

    let (_, verified) = cp.api(Method::GET, "/audit/verify", None).await;
    assert_eq!(verified["valid"], true, "{verified}");
    cp.cli_login(dir.path());
    let (ok, out, _) = cp.cli(dir.path(), &["audit", "verify"]);
    assert!(ok && out.contains("audit trail intact"), "{out}");

    // Tampering, on copies of the stopped control plane's data.
    cp.process.terminate();
    let source = dir.path().join("cp");
    let edited = verify_after(&source, dir.path(), |store| {
        let changed = String::from_utf8(entry(store, 2))
            .expect("utf8")
            .replace("\"status\":201", "\"status\":200")
            .replace("\"status\":null", "\"status\":200");
        store.put(Table::Audit, &2u64.to_be_bytes(), changed.into_bytes()).expect("edit");
    })
    .await;
    assert_eq!((edited["valid"].clone(), edited["broken_at"].clone()), (json!(false), json!(2)), "{edited}");

    let removed =
        verify_after(&source, dir.path(), |store| store.delete(Table::Audit, &3u64.to_be_bytes()).expect("remove"))
            .await;
    assert_eq!((removed["valid"].clone(), removed["broken_at"].clone()), (json!(false), json!(3)), "{removed}");

    let reordered = verify_after(&source, dir.path(), |store| {
        let (a, b) = (entry(store, 2), entry(store, 3));
        store.put(Table::Audit, &2u64.to_be_bytes(), b).expect("swap");
        store.put(Table::Audit, &3u64.to_be_bytes(), a).expect("swap");
    })
    .await;
    assert_eq!((reordered["valid"].clone(), reordered["broken_at"].clone()), (json!(false), json!(2)), "{reordered}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_refused_again_and_again_makes_one_entry_and_a_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let stack = json!({"name": "refused", "compose": "services:\n  a:\n    image: x\n"});
    for _ in 0..40 {
        let (status, _) = cp.call_with(Some("not-a-token"), Method::POST, "/api/v1/stacks", Some(stack.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let refused_query = "&actor=anonymous&object=POST%20/api/v1/stacks";
    let refused = entries(&mut cp, refused_query).await;
    assert_eq!(refused.len(), 1, "the first refusal is written, the repeats are counted: {refused:#?}");
    assert_eq!(refused[0]["status"], 401);

    // The count is written when its minute has passed, or when the control plane stops.
    cp.restart().await;
    let refused = entries(&mut cp, refused_query).await;
    let details: Vec<&str> = refused.iter().filter_map(|e| e["detail"].as_str()).collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(details.iter().any(|d| d.starts_with("refused 39 more times")), "{details:?}");
    let (_, verified) = cp.api(Method::GET, "/audit/verify", None).await;
    assert_eq!(verified["valid"], true, "{verified}");
}
