//! What people need to find their way around a fleet: targets named and labelled by their join
//! token, filtered, renamed and relabelled; a target's connection history; deployment activity
//! per day; the live change stream every member can follow; and the language preference.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

fn names(page: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        page["items"].as_array().expect("items").iter().map(|t| t["name"].as_str().expect("name").to_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_take_names_and_labels_from_their_token_and_are_found_by_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Quick heartbeats: a stopped agent is missed within seconds.
    let args = vec!["--heartbeat-interval".to_owned(), "1s".to_owned()];
    let mut cp = ControlPlane::start_with(dir.path(), free_tcp_port(), free_udp_port(), args).await;

    // The live change stream, followed from before anything happens.
    let session = cp.admin_login().await;
    let changes =
        cp.http().get(cp.url("/api/v1/changes")).bearer_auth(&session).send().await.expect("the change stream opens");
    assert_eq!(changes.status(), StatusCode::OK);
    let mut changes = changes.bytes_stream();

    let mut agents = Vec::new();
    for (name, labels) in
        [("web-1", json!({"env": "prod", "group": "web"})), ("db-1", json!({"env": "prod"})), ("lab", json!({}))]
    {
        let (status, token) = cp
            .api(
                Method::POST,
                "/targets/join-tokens",
                Some(json!({"uses": 1, "ttl_seconds": 600, "name": name, "labels": labels})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{token}");
        let mut agent =
            Agent::enroll(&cp, &dir.path().join(name), token["token"].as_str().expect("token")).expect("enrolls");
        agent.start();
        agents.push(agent);
    }
    let (_, tokens) = cp.api(Method::GET, "/targets/join-tokens", None).await;
    assert!(
        tokens["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|t| t["name"] == "web-1" && t["labels"]["group"] == "web")
    );
    let bad = json!({"labels": {"Not A Key": "x"}});
    let (status, refused) = cp.api(Method::POST, "/targets/join-tokens", Some(bad)).await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("labels")));

    let connected = eventually(Duration::from_secs(15), || async {
        let (_, page) = cp.call_with(Some(&session), Method::GET, "/api/v1/targets?status=connected", None).await;
        page["total"] == 3
    })
    .await;
    assert!(connected, "three targets connected");
    let (_, all) = cp.api(Method::GET, "/targets", None).await;
    assert_eq!(names(&all), ["db-1", "lab", "web-1"], "named by their tokens, not their host");

    for (query, expected) in [
        ("label=env=prod", vec!["db-1", "web-1"]),
        ("label=env=prod,group=web", vec!["web-1"]),
        ("label=group", vec!["web-1"]),
        ("q=WEB", vec!["web-1"]),
        ("kind=docker&label=env=prod", vec!["db-1", "web-1"]),
        ("status=disconnected", vec![]),
    ] {
        let (status, page) = cp.api(Method::GET, &format!("/targets?{query}"), None).await;
        assert_eq!(
            (status, names(&page)),
            (StatusCode::OK, expected.iter().map(|s| (*s).to_owned()).collect()),
            "{query}"
        );
    }
    assert_eq!(cp.api(Method::GET, "/targets?status=sleeping", None).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    // Renamed and relabelled.
    let lab = agents[2].id();
    let (status, changed) = cp
        .api(Method::PATCH, &format!("/targets/{lab}"), Some(json!({"name": "lab-2", "labels": {"env": "test"}})))
        .await;
    assert_eq!(
        (status, changed["name"].clone(), changed["labels"].clone()),
        (StatusCode::OK, json!("lab-2"), json!({"env": "test"}))
    );

    // Its connection history, newest first, as the change stream saw it too.
    agents[2].process.take();
    let disconnected = eventually(Duration::from_secs(20), || async {
        let (_, history) =
            cp.call_with(Some(&session), Method::GET, &format!("/api/v1/targets/{lab}/history"), None).await;
        history["items"][0]["kind"] == "agent.disconnected"
    })
    .await;
    assert!(disconnected, "the disconnection is in the history");
    let (_, history) = cp.api(Method::GET, &format!("/targets/{lab}/history"), None).await;
    assert_eq!(history["items"][1]["kind"], "agent.connected");
    let mut seen = String::new();
    let saw = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = changes.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("agent.disconnected") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(saw.unwrap_or(false), "the change stream told: {seen}");
    assert!(seen.contains("event: change") && seen.contains("agent.connected"), "{seen}");

    // Activity per day, today last.
    let (status, activity) = cp.api(Method::GET, "/deployments/activity?days=7", None).await;
    assert_eq!((status, activity["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(7)));
    assert_eq!(cp.api(Method::GET, "/deployments/activity?days=365", None).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    // The language follows the user.
    let (status, me) = cp.api(Method::PATCH, "/auth/me", Some(json!({"locale": "fr"}))).await;
    assert_eq!((status, me["locale"].clone()), (StatusCode::OK, json!("fr")));
    assert_eq!(
        cp.api(Method::PATCH, "/auth/me", Some(json!({"locale": "xx"}))).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}
