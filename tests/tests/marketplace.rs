//! The marketplace through the API: search, filters and sorting over the certified templates,
//! reviews (one per person, 1 to 5 stars), private templates of an organisation (from a file or
//! a stack, versioned, invisible to other organisations), certification by an installation
//! administrator only, and one-click deploy with every variable checked first.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

const PASSWORD: &str = "a long enough passphrase";

async fn call(cp: &ControlPlane, bearer: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    cp.call_with(Some(bearer), method, &format!("/api/v1{path}"), body).await
}

/// A user of `org_id` with `role`, signed in.
async fn member(cp: &mut ControlPlane, username: &str, org_id: &str, role: &str) -> String {
    let body = json!({"username": username, "password": PASSWORD, "org_id": org_id, "role": role});
    let (status, created) = cp.api(Method::POST, "/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    cp.login(username, PASSWORD).await
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().expect("items").iter().map(|t| t["id"].as_str().unwrap_or_default().to_owned()).collect()
}

fn web_template(slug: &str, version: &str, image: &str) -> String {
    format!(
        r#"format: 1
slug: {slug}
name: "Hello web"
version: {version}
description: "A web page served by busybox httpd."
category: web-stack
tags: [web, test]
author: Tests
licence: MIT
logo: https://example.com/logo.png
documentation: https://example.com/docs
requirements:
  cpus: 1
variables:
  - name: PORT
    type: port
    label: Port
    default: "18080"
    required: true
  - name: GREETING
    type: string
    label: Greeting
    default: hello
    pattern: "[a-z ]+"
changelog:
  - version: {version}
    date: "2026-11-26"
    changes: [A version.]
compose: |
  services:
    web:
      image: {image}
      command: ["sh", "-c", "mkdir -p /www && echo ${{GREETING}} > /www/index.html && exec httpd -f -p 80 -h /www"]
      ports: ["${{PORT}}:80"]
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certified_templates_are_searched_filtered_sorted_and_reviewed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let (status, all) = cp.api(Method::GET, "/templates?per_page=100", None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert!(all["total"].as_u64().is_some_and(|n| n >= 20), "{all}");
    assert!(all["items"].as_array().expect("items").iter().all(|t| t["certified"] == true && t["private"] == false));

    let (_, found) = cp.api(Method::GET, "/templates?q=mysql%20blog", None).await;
    assert_eq!(ids(&found), ["ghost", "wordpress"], "every word, in the name, description or tags");
    let (_, found) = cp.api(Method::GET, "/templates?q=WordPress", None).await;
    assert_eq!(ids(&found), ["wordpress"]);
    let (_, databases) = cp.api(Method::GET, "/templates?category=database", None).await;
    assert!(databases["items"].as_array().expect("items").iter().all(|t| t["category"] == "database"));
    assert!(ids(&databases).contains(&"postgresql-pgadmin".to_owned()));
    let (_, git) = cp.api(Method::GET, "/templates?tag=git", None).await;
    assert_eq!(ids(&git), ["gitea", "gitlab-ce"]);
    let (_, second) = cp.api(Method::GET, "/templates?per_page=5&page=2", None).await;
    assert_eq!((second["items"].as_array().map(Vec::len), second["page"].as_u64()), (Some(5), Some(2)));
    let (status, bad) = cp.api(Method::GET, "/templates?sort=colour", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    let (status, wordpress) = cp.api(Method::GET, "/templates/wordpress", None).await;
    assert_eq!(status, StatusCode::OK, "{wordpress}");
    assert_eq!(wordpress["versions"], json!(["1.0.0"]));
    let variables = wordpress["template"]["variables"].as_array().expect("variables");
    assert!(variables.iter().any(|v| v["name"] == "DB_PASSWORD" && v["type"] == "password"));
    assert_eq!(cp.api(Method::GET, "/templates/no-such-app", None).await.0, StatusCode::NOT_FOUND);

    // One review per person, 1 to 5 stars, editable; the average follows.
    let (status, refused) = cp.api(Method::POST, "/templates/wordpress/reviews", Some(json!({"stars": 6}))).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("stars")));
    let (status, _) =
        cp.api(Method::POST, "/templates/wordpress/reviews", Some(json!({"stars": 5, "text": "Runs."}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = cp.api(Method::POST, "/templates/wordpress/reviews", Some(json!({"stars": 4}))).await;
    assert_eq!((status, again["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let (status, edited) =
        cp.api(Method::PUT, "/templates/wordpress/reviews/mine", Some(json!({"stars": 3, "text": "Fine."}))).await;
    assert_eq!((status, edited["stars"].as_u64()), (StatusCode::OK, Some(3)));
    let (_, default_org) = cp.api(Method::GET, "/orgs", None).await;
    let org = default_org["items"][0]["id"].as_str().expect("org").to_owned();
    let viewer = member(&mut cp, "vic", &org, "viewer").await;
    let (status, _) = call(&cp, &viewer, Method::POST, "/templates/wordpress/reviews", Some(json!({"stars": 5}))).await;
    assert_eq!(status, StatusCode::CREATED, "any member may review");
    let (_, wordpress) = cp.api(Method::GET, "/templates/wordpress", None).await;
    assert_eq!(wordpress["rating"], json!({"average": 4.0, "count": 2}));
    let (_, reviews) = cp.api(Method::GET, "/templates/wordpress/reviews", None).await;
    assert_eq!(reviews["items"].as_array().map(Vec::len), Some(2));
    let (_, best) = cp.api(Method::GET, "/templates?sort=rating&per_page=1", None).await;
    assert_eq!(ids(&best), ["wordpress"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_templates_stay_in_their_organisation_are_versioned_and_deploy_in_one_click() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "web-host").await;
    let target = agent.id();

    // A file with problems is refused with where each is.
    let undeclared = web_template("hello-web", "1.0.0", &image).replace("${GREETING}", "${SALUTATION}");
    let (status, refused) = cp.api(Method::POST, "/templates", Some(json!({"template": undeclared}))).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_template"))
    );
    let paths: Vec<&str> = refused["error"]["details"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(paths, ["compose", "variables"], "{refused}");
    let latest = web_template("hello-web", "1.0.0", "busybox:latest");
    let (_, refused) = cp.api(Method::POST, "/templates", Some(json!({"template": latest}))).await;
    assert_eq!(refused["error"]["details"]["errors"][0]["path"], "compose: services.web.image");

    let (status, created) =
        cp.api(Method::POST, "/templates", Some(json!({"template": web_template("hello-web", "1.0.0", &image)}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!((created["private"].as_bool(), created["certified"].as_bool()), (Some(true), Some(false)));
    let id = created["id"].as_str().expect("id").to_owned();
    let (status, _) =
        cp.api(Method::POST, "/templates", Some(json!({"template": web_template("hello-web", "1.0.0", &image)}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "slugs are unique");

    // Versions only go up.
    let same = json!({"template": web_template("hello-web", "1.0.0", &image)});
    assert_eq!(cp.api(Method::PUT, &format!("/templates/{id}"), Some(same)).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    let next = json!({"template": web_template("hello-web", "1.1.0", &image)});
    let (status, updated) = cp.api(Method::PUT, &format!("/templates/{id}"), Some(next)).await;
    assert_eq!((status, updated["versions"].clone()), (StatusCode::OK, json!(["1.1.0", "1.0.0"])));

    // Another organisation sees none of it.
    let (_, other) = cp.api(Method::POST, "/orgs", Some(json!({"name": "Other"}))).await;
    let outsider = member(&mut cp, "olga", other["id"].as_str().expect("org"), "admin").await;
    let (_, theirs) = call(&cp, &outsider, Method::GET, "/templates?per_page=100", None).await;
    assert!(!ids(&theirs).contains(&id), "{theirs}");
    assert_eq!(call(&cp, &outsider, Method::GET, &format!("/templates/{id}"), None).await.0, StatusCode::NOT_FOUND);
    let deploy = json!({"target_id": target, "variables": {}});
    let (status, _) = call(&cp, &outsider, Method::POST, &format!("/templates/{id}/deploy"), Some(deploy)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Only an installation administrator certifies; the organisation's admin is not one.
    let certify = json!({"certified": true});
    let (status, _) =
        call(&cp, &outsider, Method::PUT, &format!("/templates/{id}/certified"), Some(certify.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, certified) = cp.api(Method::PUT, &format!("/templates/{id}/certified"), Some(certify)).await;
    assert_eq!((status, certified["certified"].as_bool()), (StatusCode::OK, Some(true)));

    // One-click deploy: every value checked first, by name; then a stack and its deployment.
    let port = free_tcp_port();
    let bad = json!({"target_id": target, "variables": {"PORT": "99999", "GREETING": "Hi!"}});
    let (status, refused) = cp.api(Method::POST, &format!("/templates/{id}/deploy"), Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["field"], "variables.PORT");
    assert!(refused["error"]["details"]["variables"]["GREETING"].as_str().is_some_and(|m| m.contains("[a-z ]+")));
    let (_, stacks) = cp.api(Method::GET, "/stacks", None).await;
    assert_eq!(stacks["total"], 0, "nothing was made of a refused deploy");
    let good = json!({"target_id": target, "variables": {"PORT": port.to_string(), "GREETING": "hello market"}, "stack_name": "market"});
    let (status, made) = cp.api(Method::POST, &format!("/templates/{id}/deploy"), Some(good)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let deployment = made["deployment"].clone();
    let running = cp.settled(&json!({"id": deployment["id"], "events_from": deployment["events_from"]})).await;
    assert_eq!(running["state"], "running", "{running:#}");
    let page = reqwest::get(format!("http://127.0.0.1:{port}/")).await.expect("served").text().await.expect("text");
    assert_eq!(page.trim(), "hello market");
    let (_, listed) = cp.api(Method::GET, &format!("/templates/{id}"), None).await;
    assert_eq!(listed["deployments"], 1);
    // A port another deployment of the target publishes is refused, naming the variable.
    let again = json!({"target_id": target, "variables": {"PORT": port.to_string()}, "stack_name": "market-2"});
    let (status, refused) = cp.api(Method::POST, &format!("/templates/{id}/deploy"), Some(again)).await;
    assert_eq!(
        (status, refused["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("variables.PORT"))
    );
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains(&format!("port {port}/tcp"))), "{refused}");

    // A stack becomes a template: its variables as defaults, its secrets as passwords.
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"${{NAP}}\"]\n    environment:\n      TOKEN: ${{TOKEN}}\n"
    );
    let body =
        json!({"name": "napper", "compose": compose, "variables": {"NAP": "60"}, "secrets": {"TOKEN": "s3cret-token"}});
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(body)).await;
    let stack_id = stack["id"].as_str().expect("stack");
    let about = json!({"slug": "napper", "name": "Napper", "description": "Sleeps.", "category": "automation"});
    let (status, made) = cp.api(Method::POST, &format!("/templates/from-stack/{stack_id}"), Some(about)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let variables = made["template"]["variables"].as_array().expect("variables");
    assert!(variables.iter().any(|v| v["name"] == "NAP" && v["default"] == "60"));
    assert!(variables.iter().any(|v| v["name"] == "TOKEN" && v["type"] == "password" && v["default"].is_null()));
    assert!(!made.to_string().contains("s3cret-token"), "a secret's value never becomes a template's");

    // Requirements are checked against the target.
    let greedy = web_template("greedy", "1.0.0", &image).replace("  cpus: 1", "  cpus: 4096");
    let (_, greedy) = cp.api(Method::POST, "/templates", Some(json!({"template": greedy}))).await;
    let greedy_id = greedy["id"].as_str().expect("id");
    let (status, refused) =
        cp.api(Method::POST, &format!("/templates/{greedy_id}/deploy"), Some(json!({"target_id": target}))).await;
    assert_eq!(
        (status, refused["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("requirements.cpus"))
    );

    // A deploy the target cannot take leaves no stack behind.
    let before = cp.api(Method::GET, "/stacks", None).await.1["total"].clone();
    let swarm_only = json!({"target_id": target, "variables": {"PORT": free_tcp_port().to_string()}, "platform": "swarm", "stack_name": "nowhere"});
    let (status, refused) = cp.api(Method::POST, &format!("/templates/{id}/deploy"), Some(swarm_only)).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("platform_unavailable"))
    );
    assert_eq!(cp.api(Method::GET, "/stacks", None).await.1["total"], before, "no stack is left of a refused deploy");

    // Deleting a private template; certified ones cannot be.
    assert_eq!(cp.api(Method::DELETE, &format!("/templates/{greedy_id}"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(cp.api(Method::GET, &format!("/templates/{greedy_id}"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(cp.api(Method::DELETE, "/templates/wordpress", None).await.0, StatusCode::FORBIDDEN);
    let (_, accepted) =
        cp.api(Method::DELETE, &format!("/deployments/{}", deployment["id"].as_str().expect("id")), None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "removed");
    drop(agent);
}

/// A Portainer v2 file (uploaded) and a v3 file (fetched by URL, with a stack whose Compose file
/// lives in a repository) are imported entry by entry, each whole or skipped with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn portainer_template_files_are_imported_entry_by_entry() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;

    let v2 = json!({
        "version": "2",
        "templates": [
            {"type": 1, "title": "Busy Web", "description": "httpd", "categories": ["Web"], "image": image,
             "ports": ["8088:80/tcp"], "command": "httpd -f -p 80",
             "env": [{"name": "MODE", "label": "Mode", "select": [{"text": "Prod", "value": "prod", "default": true}, {"text": "Dev", "value": "dev"}]},
                     {"name": "ADMIN_PASSWORD", "label": "Admin password"}],
             "volumes": [{"container": "/data"}]},
            {"type": 1, "title": "Floating", "image": "nginx:latest"},
            {"type": 1, "title": "Imageless"}
        ]
    });
    let (status, report) = cp.api(Method::POST, "/templates/import", Some(json!({"content": v2.to_string()}))).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["imported"].as_array().map(Vec::len), Some(1), "{report:#}");
    assert_eq!(report["imported"][0]["slug"], "busy-web");
    let skipped = report["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 2);
    assert!(skipped[0]["reason"].as_str().is_some_and(|r| r.contains("never latest")), "{skipped:#?}");
    assert!(skipped[1]["reason"].as_str().is_some_and(|r| r.contains("no image")), "{skipped:#?}");
    let id = report["imported"][0]["id"].as_str().expect("id").to_owned();
    let (_, imported) = cp.api(Method::GET, &format!("/templates/{id}"), None).await;
    let variables = imported["template"]["variables"].as_array().expect("variables");
    assert!(variables.iter().any(|v| v["name"] == "MODE" && v["type"] == "enum" && v["default"] == "prod"));
    assert!(variables.iter().any(|v| v["name"] == "ADMIN_PASSWORD" && v["type"] == "password"));
    // Importing again skips what exists; nothing is written twice.
    let (_, again) = cp.api(Method::POST, "/templates/import", Some(json!({"content": v2.to_string()}))).await;
    assert_eq!(again["imported"].as_array().map(Vec::len), Some(0));

    // A v3 file served over HTTP, its stack file in a repository served the way forges do.
    let stack_file = format!("services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"${{NAP}}\"]\n");
    let port = free_tcp_port();
    let base = format!("http://127.0.0.1:{port}");
    let v3 = json!({
        "version": "3",
        "templates": [
            {"type": 3, "title": "Sleeper", "description": "Sleeps", "categories": ["Tools"],
             "repository": {"url": format!("{base}/acme/stacks"), "stackfile": "sleeper/compose.yml"},
             "env": [{"name": "NAP", "label": "Seconds", "default": "60"}]},
            {"type": 2, "title": "Missing", "repository": {"url": format!("{base}/acme/stacks"), "stackfile": "nope.yml"}}
        ]
    });
    let served = v3.to_string();
    let app = axum::Router::new()
        .route("/templates.json", axum::routing::get(move || async move { served }))
        .route("/acme/stacks/raw/HEAD/sleeper/compose.yml", axum::routing::get(move || async move { stack_file }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, report) =
        cp.api(Method::POST, "/templates/import", Some(json!({"url": format!("{base}/templates.json")}))).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["imported"][0]["slug"], "sleeper", "{report:#}");
    assert!(report["skipped"][0]["reason"].as_str().is_some_and(|r| r.contains("404")), "{report:#}");
    let sleeper = report["imported"][0]["id"].as_str().expect("id");
    let (_, sleeper) = cp.api(Method::GET, &format!("/templates/{sleeper}"), None).await;
    assert_eq!(sleeper["template"]["variables"][0]["default"], "60");
    server.abort();

    // What is not a Portainer file is refused as a whole.
    let (status, refused) =
        cp.api(Method::POST, "/templates/import", Some(json!({"content": "{\"version\": \"1\"}"}))).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("content")));
    let (status, _) = cp.api(Method::POST, "/templates/import", Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}
