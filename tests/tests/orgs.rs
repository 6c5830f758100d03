//! Organisations, roles, users and tenant isolation through the real API and CLI.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

const PASSWORD: &str = "a long enough passphrase";

async fn call(cp: &ControlPlane, bearer: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    cp.call_with(Some(bearer), method, &format!("/api/v1{path}"), body).await
}

fn code(answer: &(StatusCode, Value)) -> (StatusCode, String) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or_default().to_owned())
}

/// Creates an organisation as the admin (who owns it) and returns its id.
async fn org(cp: &mut ControlPlane, name: &str) -> String {
    let (status, body) = cp.api(Method::POST, "/orgs", Some(json!({"name": name}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

/// Creates a user who is a member of `org_id` with `role`, and signs them in.
async fn member(cp: &mut ControlPlane, username: &str, org_id: &str, role: &str) -> String {
    let body = json!({"username": username, "password": PASSWORD, "org_id": org_id, "role": role});
    let (status, created) = cp.api(Method::POST, "/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    cp.login(username, PASSWORD).await
}

async fn default_org(cp: &mut ControlPlane) -> String {
    let (_, orgs) = cp.api(Method::GET, "/orgs", None).await;
    let default = orgs["items"].as_array().expect("items").iter().find(|o| o["name"] == "Default").expect("Default");
    default["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_organisation_never_sees_or_touches_another_ones_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let default = default_org(&mut cp).await;
    let blue = org(&mut cp, "Blue").await;
    let bob = member(&mut cp, "bob", &blue, "admin").await;

    // The admin's target and stack, in Default.
    let target = cp.start_agent(dir.path(), "red-host").await;
    let target_id = target.id();
    let (_, stack) = cp
        .api(Method::POST, "/stacks", Some(json!({"name": "web", "compose": "services:\n  a:\n    image: x\n"})))
        .await;
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (status, deployment) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target_id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deployment}");
    let deployment_id = deployment["id"].as_str().expect("id").to_owned();

    // Bob, in Blue, sees none of it: every id answers 404, exactly like an id that never existed.
    for path in [
        format!("/targets/{target_id}"),
        format!("/stacks/{stack_id}"),
        format!("/stacks/{stack_id}/versions"),
        format!("/deployments/{deployment_id}"),
        format!("/deployments/{deployment_id}/events"),
        format!("/deployments/{deployment_id}/logs"),
    ] {
        assert_eq!(
            code(&call(&cp, &bob, Method::GET, &path, None).await),
            (StatusCode::NOT_FOUND, "not_found".into()),
            "{path}"
        );
    }
    for (method, path) in [
        (Method::DELETE, format!("/targets/{target_id}")),
        (Method::POST, format!("/targets/{target_id}/revoke")),
        (Method::DELETE, format!("/stacks/{stack_id}")),
        (Method::DELETE, format!("/deployments/{deployment_id}")),
        (Method::POST, format!("/deployments/{deployment_id}/rollback?version=1")),
    ] {
        assert_eq!(call(&cp, &bob, method.clone(), &path, None).await.0, StatusCode::NOT_FOUND, "{method} {path}");
    }
    for list in ["/targets", "/stacks", "/deployments", "/targets/join-tokens"] {
        let (status, page) = call(&cp, &bob, Method::GET, list, None).await;
        assert_eq!((status, page["total"].clone()), (StatusCode::OK, json!(0)), "{list}: {page}");
    }

    // Bob's own stack, with the same name (names are per organisation), cannot go onto Default's target.
    let (status, blue_stack) = call(
        &cp,
        &bob,
        Method::POST,
        "/stacks",
        Some(json!({"name": "web", "compose": "services:\n  a:\n    image: y\n"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{blue_stack}");
    let blue_stack_id = blue_stack["id"].as_str().expect("id");
    let (status, refused) =
        call(&cp, &bob, Method::POST, &format!("/stacks/{blue_stack_id}/deploy/{target_id}"), None).await;
    assert_eq!((status, refused["error"]["message"].clone()), (StatusCode::NOT_FOUND, json!("target not found")));

    // The admin acting in Default does not see Bob's stack either; acting in Blue, it does.
    assert_eq!(cp.api(Method::GET, &format!("/stacks/{blue_stack_id}"), None).await.0, StatusCode::NOT_FOUND);
    let admin = cp.admin_login().await;
    assert_eq!(
        cp.call_in(&admin, "Blue", Method::GET, &format!("/stacks/{blue_stack_id}"), None).await.0,
        StatusCode::OK
    );

    // Bob cannot act in an organisation he is not a member of: it does not exist for him.
    let answer = cp.call_in(&bob, &default, Method::GET, "/stacks", None).await;
    assert_eq!(code(&answer), (StatusCode::NOT_FOUND, "not_found".into()), "{}", answer.1);
    assert_eq!(call(&cp, &bob, Method::GET, &format!("/orgs/{default}"), None).await.0, StatusCode::NOT_FOUND);
    let (_, orgs) = call(&cp, &bob, Method::GET, "/orgs", None).await;
    assert_eq!(orgs["items"].as_array().map(Vec::len), Some(1), "{orgs}");

    // A target enrolled with Blue's join token is Blue's.
    let (status, join) = call(&cp, &bob, Method::POST, "/targets/join-tokens", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{join}");
    let blue_agent =
        Agent::enroll(&cp, &dir.path().join("blue-host"), join["token"].as_str().expect("token")).expect("enrolls");
    let (_, page) = call(&cp, &bob, Method::GET, "/targets", None).await;
    assert_eq!(page["items"][0]["id"], json!(blue_agent.id()), "{page}");
    assert_eq!(cp.api(Method::GET, &format!("/targets/{}", blue_agent.id()), None).await.0, StatusCode::NOT_FOUND);
    let (_, page) = cp.api(Method::GET, "/targets", None).await;
    assert_eq!(page["total"], json!(1), "Default still has only its own target: {page}");

    // Bob's audit trail holds Blue's entries only: his own requests, none of the admin's in Default.
    let (status, events) = call(&cp, &bob, Method::GET, "/events?per_page=500", None).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let entries = events["items"].as_array().expect("items");
    assert!(entries.iter().any(|e| e["object"] == "POST /api/v1/stacks"), "{events}");
    assert!(entries.iter().all(|e| e["actor"] == "user:bob" && e["org_id"] == json!(blue)), "{events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_does_what_it_may_and_no_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let blue = org(&mut cp, "Blue").await;
    let viewer = member(&mut cp, "vera", &blue, "viewer").await;
    let operator = member(&mut cp, "otto", &blue, "operator").await;
    let admin = member(&mut cp, "ada", &blue, "admin").await;
    let owner = cp.admin_login().await;
    let in_blue = |token: &str, method: Method, path: &str, body: Option<Value>| {
        let token = token.to_owned();
        let path = path.to_owned();
        let cp = &cp;
        async move { cp.call_in(&token, "Blue", method, &path, body).await }
    };
    let compose = json!({"name": "app", "compose": "services:\n  a:\n    image: x\n"});

    // Viewer: reads; changes nothing.
    assert_eq!(in_blue(&viewer, Method::GET, "/stacks", None).await.0, StatusCode::OK);
    let answer = in_blue(&viewer, Method::POST, "/stacks", Some(compose.clone())).await;
    assert_eq!(code(&answer), (StatusCode::FORBIDDEN, "forbidden".into()));
    assert!(answer.1["error"]["message"].as_str().is_some_and(|m| m.contains("admin role") && m.contains("viewer")));

    // Admin: edits stacks and makes join tokens. Operator: deploys, but edits nothing.
    let (status, stack) = in_blue(&admin, Method::POST, "/stacks", Some(compose)).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (_, join) = in_blue(&admin, Method::POST, "/targets/join-tokens", Some(json!({}))).await;
    let agent = Agent::enroll(&cp, &dir.path().join("agent"), join["token"].as_str().expect("token")).expect("enrolls");
    let deploy = format!("/stacks/{stack_id}/deploy/{}", agent.id());
    assert_eq!(in_blue(&viewer, Method::POST, &deploy, None).await.0, StatusCode::FORBIDDEN);
    let (status, deployment) = in_blue(&operator, Method::POST, &deploy, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deployment}");
    assert_eq!(in_blue(&operator, Method::DELETE, &format!("/stacks/{stack_id}"), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        in_blue(&operator, Method::POST, "/targets/join-tokens", Some(json!({}))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(in_blue(&operator, Method::GET, "/events", None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(in_blue(&admin, Method::GET, "/events", None).await.0, StatusCode::OK);

    // Members: admins manage roles below owner; only an owner makes or unmakes owners.
    let (_, members) = in_blue(&admin, Method::GET, &format!("/orgs/{blue}/members"), None).await;
    let id_of = |name: &str| {
        members["items"].as_array().expect("items").iter().find(|m| m["username"] == name).expect("member")["user_id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let (vera, ada) = (id_of("vera"), id_of("ada"));
    let promote = |role: &str| Some(json!({"role": role}));
    assert_eq!(
        in_blue(&admin, Method::PATCH, &format!("/orgs/{blue}/members/{vera}"), promote("operator")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        in_blue(&admin, Method::PATCH, &format!("/orgs/{blue}/members/{vera}"), promote("owner")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        in_blue(&viewer, Method::DELETE, &format!("/orgs/{blue}/members/{ada}"), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        in_blue(&owner, Method::PATCH, &format!("/orgs/{blue}/members/{ada}"), promote("owner")).await.0,
        StatusCode::OK
    );
    let answer = in_blue(
        &admin,
        Method::POST,
        &format!("/orgs/{blue}/members"),
        Some(json!({"username": "nobody", "role": "viewer"})),
    )
    .await;
    assert_eq!((answer.0, answer.1["error"]["field"].clone()), (StatusCode::NOT_FOUND, json!("username")));
    let answer = in_blue(&admin, Method::PATCH, &format!("/orgs/{blue}/members/{vera}"), promote("emperor")).await;
    assert_eq!(answer.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", answer.1);

    // The last owner cannot leave; an empty organisation is deleted by an owner.
    let (_, me) = call(&cp, &owner, Method::GET, "/auth/me", None).await;
    let admin_id = me["id"].as_str().expect("id");
    assert_eq!(
        in_blue(&owner, Method::DELETE, &format!("/orgs/{blue}/members/{admin_id}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    let answer = in_blue(&admin, Method::DELETE, &format!("/orgs/{blue}/members/{ada}"), None).await;
    assert_eq!(code(&answer), (StatusCode::CONFLICT, "last_owner".into()), "{}", answer.1);
    let answer = in_blue(&admin, Method::DELETE, &format!("/orgs/{blue}"), None).await;
    assert_eq!(code(&answer), (StatusCode::CONFLICT, "org_not_empty".into()), "{}", answer.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn administrators_manage_users_and_a_disabled_user_is_locked_out_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let default = default_org(&mut cp).await;

    // Bad input names the field.
    let weak = json!({"username": "carol", "password": "short"});
    let (status, body) = cp.api(Method::POST, "/users", Some(weak)).await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("password")),
        "{body}"
    );
    let (status, body) = cp.api(Method::POST, "/users", Some(json!({"username": "a b", "password": PASSWORD}))).await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("username")),
        "{body}"
    );
    let carol = member(&mut cp, "carol", &default, "operator").await;
    let (status, body) = cp.api(Method::POST, "/users", Some(json!({"username": "carol", "password": PASSWORD}))).await;
    assert_eq!(code(&(status, body)), (StatusCode::CONFLICT, "user_exists".into()));

    // Only installation administrators manage users or create organisations.
    assert_eq!(call(&cp, &carol, Method::GET, "/users", None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&cp, &carol, Method::POST, "/orgs", Some(json!({"name": "Mine"}))).await.0, StatusCode::FORBIDDEN);

    // Carol changes her own password: the current one is checked, the new one must pass the policy.
    let change = |current: &str, new: &str| Some(json!({"current_password": current, "new_password": new}));
    let answer = call(&cp, &carol, Method::POST, "/users/me/password", change("wrong one", "another passphrase")).await;
    assert_eq!((answer.0, answer.1["error"]["field"].clone()), (StatusCode::UNAUTHORIZED, json!("current_password")));
    let answer = call(&cp, &carol, Method::POST, "/users/me/password", change(PASSWORD, "aaaaaaaaaaaaaa")).await;
    assert_eq!(code(&answer), (StatusCode::UNPROCESSABLE_ENTITY, "weak_password".into()));
    let answer = call(&cp, &carol, Method::POST, "/users/me/password", change(PASSWORD, "another passphrase")).await;
    assert_eq!(answer.0, StatusCode::NO_CONTENT, "{}", answer.1);
    assert_eq!(call(&cp, &carol, Method::GET, "/stacks", None).await.0, StatusCode::OK, "this session stays");
    let carol = cp.login("carol", "another passphrase").await;

    // Her API token acts in her organisation only.
    let (_, token) = call(&cp, &carol, Method::POST, "/tokens", Some(json!({"name": "ci", "scope": "deploy"}))).await;
    let token = token["token"].as_str().expect("token").to_owned();
    assert_eq!(call(&cp, &token, Method::GET, "/stacks", None).await.0, StatusCode::OK);
    assert_eq!(cp.call_in(&token, "Blue", Method::GET, "/stacks", None).await.0, StatusCode::NOT_FOUND);

    // Disabled: her session, her token and her password all stop working at once.
    let (_, users) = cp.api(Method::GET, "/users", None).await;
    let carol_id = users["items"].as_array().expect("items").iter().find(|u| u["username"] == "carol").expect("carol")
        ["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, body) = cp.api(Method::PATCH, &format!("/users/{carol_id}"), Some(json!({"disabled": true}))).await;
    assert_eq!((status, body["disabled"].clone()), (StatusCode::OK, json!(true)), "{body}");
    assert_eq!(call(&cp, &carol, Method::GET, "/stacks", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        code(&call(&cp, &token, Method::GET, "/stacks", None).await),
        (StatusCode::FORBIDDEN, "account_disabled".into())
    );
    let login = json!({"username": "carol", "password": "another passphrase"});
    let answer = cp.call_with(None, Method::POST, "/api/v1/auth/login", Some(login.clone())).await;
    assert_eq!(code(&answer), (StatusCode::FORBIDDEN, "account_disabled".into()));

    // Enabled again, she signs in; the admin cannot disable themselves.
    cp.api(Method::PATCH, &format!("/users/{carol_id}"), Some(json!({"disabled": false}))).await;
    assert_eq!(cp.call_with(None, Method::POST, "/api/v1/auth/login", Some(login)).await.0, StatusCode::OK);
    let (_, me) = cp.api(Method::GET, "/auth/me", None).await;
    let answer = cp
        .api(Method::PATCH, &format!("/users/{}", me["id"].as_str().expect("id")), Some(json!({"disabled": true})))
        .await;
    assert_eq!(code(&answer), (StatusCode::CONFLICT, "self_change".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_manages_organisations_members_and_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(dir.path()).await;
    cp.cli_login(dir.path());
    let run = |args: &[&str]| {
        let (ok, out, err) = cp.cli(dir.path(), args);
        assert!(ok, "windflow {args:?}: {err}");
        out
    };
    run(&["orgs", "create", "Green"]);
    let user = std::process::Command::new(bin("windflow"))
        .args(["users", "create", "gina", "--org", "Green", "--role", "operator"])
        .env("WINDFLOW_CLI_CONFIG", dir.path().join("cli.json"))
        .env("WINDFLOW_NEW_PASSWORD", PASSWORD)
        .output()
        .expect("runs");
    assert!(user.status.success(), "{}", String::from_utf8_lossy(&user.stderr));
    assert!(run(&["orgs", "members", "Green"]).contains("\"gina\""));
    run(&["orgs", "add", "Green", "gina", "--role", "admin"]);
    assert!(run(&["orgs", "members", "Green"]).contains("\"admin\""));

    // `orgs use` switches where later commands act.
    run(&["orgs", "use", "Green"]);
    run(&["stack", "create", "green-app", "-f", &write_compose(dir.path())]);
    run(&["orgs", "use"]);
    assert!(!run(&["stack", "list"]).contains("green-app"));
    run(&["orgs", "use", "Green"]);
    assert!(run(&["stack", "list"]).contains("green-app"));

    run(&["users", "disable", "gina"]);
    assert!(run(&["users", "list"]).contains("\"disabled\": true"));
    run(&["orgs", "remove", "Green", "gina"]);
    assert!(!run(&["orgs", "members", "Green"]).contains("gina"));
}

fn write_compose(dir: &std::path::Path) -> String {
    let path = dir.join("compose.yaml");
    std::fs::write(&path, "services:\n  a:\n    image: x\n").expect("write");
    path.display().to_string()
}
