//! Two-factor authentication through the real API and CLI: enrolment, sign-in in two steps,
//! replay and recovery codes, lockout, organisations that require it, and an administrator's
//! reset. Codes are computed here from the enrolment's `otpauth://` URL, as an app would.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

const PASSWORD: &str = "a long enough passphrase";

async fn call(cp: &ControlPlane, bearer: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    cp.call_with(Some(bearer), method, &format!("/api/v1{path}"), body).await
}

fn code_of(answer: &(StatusCode, Value)) -> (StatusCode, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or_default())
}

/// The app's view of an enrolment: codes for now, or a step before or after.
struct App(totp_rs::TOTP);

impl App {
    fn code(&self, steps_from_now: i64) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() + steps_from_now * 30;
        self.0.generate(now as u64)
    }
}

/// Enrols `token`'s user and turns the second factor on; answers the app and the recovery codes.
async fn enrol(cp: &ControlPlane, token: &str) -> (App, Vec<String>) {
    let (status, enrolment) = call(cp, token, Method::POST, "/auth/totp", None).await;
    assert_eq!(status, StatusCode::CREATED, "{enrolment}");
    let app = App(totp_rs::TOTP::from_url(enrolment["otpauth_url"].as_str().expect("url")).expect("an otpauth URL"));
    assert_eq!(app.0.get_secret_base32(), enrolment["secret"].as_str().expect("secret"));
    // Enabled with the previous step's code: the current and next ones stay unused for sign-ins.
    let (status, enabled) =
        call(cp, token, Method::POST, "/auth/totp/enable", Some(json!({"code": app.code(-1)}))).await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    let codes =
        enabled["recovery_codes"].as_array().expect("codes").iter().map(|c| c.as_str().expect("code").to_owned());
    (app, codes.collect())
}

/// The first step of a sign-in that needs a second factor: answers the `mfa_token`.
async fn password_step(cp: &ControlPlane, username: &str) -> String {
    let password = if username == "admin" { ADMIN_PASSWORD } else { PASSWORD };
    let answer = cp
        .call_with(None, Method::POST, "/api/v1/auth/login", Some(json!({"username": username, "password": password})))
        .await;
    assert_eq!(code_of(&answer), (StatusCode::UNAUTHORIZED, "second_factor_required"), "{}", answer.1);
    answer.1["error"]["details"]["mfa_token"].as_str().expect("mfa_token").to_owned()
}

async fn second_step(cp: &ControlPlane, mfa_token: &str, code: &str) -> (StatusCode, Value) {
    cp.call_with(None, Method::POST, "/api/v1/auth/login/totp", Some(json!({"mfa_token": mfa_token, "code": code})))
        .await
}

async fn user(cp: &mut ControlPlane, username: &str, org_id: Option<&str>) -> String {
    let mut body = json!({"username": username, "password": PASSWORD});
    if let Some(org_id) = org_id {
        body["org_id"] = json!(org_id);
        body["role"] = json!("operator");
    }
    let (status, created) = cp.api(Method::POST, "/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_factor_is_asked_after_the_password_and_each_code_works_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    user(&mut cp, "carol", None).await;
    let session = cp.login("carol", PASSWORD).await;
    let (app, recovery) = enrol(&cp, &session).await;
    assert_eq!(recovery.len(), 10);
    let (_, status) = call(&cp, &session, Method::GET, "/auth/totp", None).await;
    assert_eq!(status, json!({"enabled": true, "pending": false, "recovery_codes_left": 10}));
    // A device is enrolled once; a new one needs the old one turned off first.
    assert_eq!(code_of(&call(&cp, &session, Method::POST, "/auth/totp", None).await).1, "totp_already_enabled");

    // The password alone no longer signs in, and its step token is no access token.
    let mfa_token = password_step(&cp, "carol").await;
    assert_eq!(code_of(&call(&cp, &mfa_token, Method::GET, "/auth/me", None).await).0, StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(&second_step(&cp, &mfa_token, "000000").await).1, "bad_second_factor");
    assert_eq!(code_of(&second_step(&cp, "not-a-token", &app.code(0)).await).1, "bad_mfa_token");

    let code = app.code(0);
    let (status, tokens) = second_step(&cp, &mfa_token, &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let token = tokens["access_token"].as_str().expect("access token");
    let (_, me) = call(&cp, token, Method::GET, "/auth/me", None).await;
    assert_eq!((me["totp_enabled"].clone(), me["second_factor"].clone()), (json!(true), json!(true)));
    // The same code again, even within its 30 seconds: refused.
    assert_eq!(code_of(&second_step(&cp, &mfa_token, &code).await).1, "bad_second_factor");
    assert_eq!(second_step(&cp, &mfa_token, &app.code(1)).await.0, StatusCode::OK, "the next step's code");

    // A recovery code works once, in any case and with or without its dash.
    let spaced = recovery[0].to_uppercase().replace('-', " ");
    assert_eq!(second_step(&cp, &mfa_token, &spaced).await.0, StatusCode::OK);
    assert_eq!(code_of(&second_step(&cp, &mfa_token, &recovery[0]).await).1, "bad_second_factor");
    let (_, status) = call(&cp, token, Method::GET, "/auth/totp", None).await;
    assert_eq!(status["recovery_codes_left"], 9);

    // Turning it off needs the password.
    let wrong = call(&cp, token, Method::POST, "/auth/totp/disable", Some(json!({"password": "not it at all"}))).await;
    assert_eq!((code_of(&wrong).1, wrong.1["error"]["field"].as_str()), ("bad_credentials", Some("password")));
    let disabled = call(&cp, token, Method::POST, "/auth/totp/disable", Some(json!({"password": PASSWORD}))).await;
    assert_eq!(disabled.0, StatusCode::NO_CONTENT, "{}", disabled.1);
    cp.login("carol", PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_lock_the_account_like_wrong_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    user(&mut cp, "dave", None).await;
    let session = cp.login("dave", PASSWORD).await;
    let (app, _) = enrol(&cp, &session).await;
    let mfa_token = password_step(&cp, "dave").await;
    for _ in 0..5 {
        assert_eq!(code_of(&second_step(&cp, &mfa_token, "123456").await).1, "bad_second_factor");
    }
    let locked = second_step(&cp, &mfa_token, &app.code(0)).await;
    assert_eq!(code_of(&locked), (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"), "{}", locked.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_organisation_that_requires_a_second_factor_admits_only_sessions_that_passed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let (_, created) = cp.api(Method::POST, "/orgs", Some(json!({"name": "Vault"}))).await;
    let vault = created["id"].as_str().expect("id").to_owned();
    user(&mut cp, "erin", Some(&vault)).await;

    // The admin may not require what their own session lacks.
    let admin = cp.admin_login().await;
    let require = json!({"require_2fa": true});
    let refused = call(&cp, &admin, Method::PATCH, &format!("/orgs/{vault}"), Some(require.clone())).await;
    assert_eq!(code_of(&refused), (StatusCode::FORBIDDEN, "org_requires_second_factor"), "{}", refused.1);
    let (admin_app, _) = enrol(&cp, &admin).await;
    let mfa_token = password_step(&cp, "admin").await;
    let (_, tokens) = second_step(&cp, &mfa_token, &admin_app.code(0)).await;
    let admin = tokens["access_token"].as_str().expect("token").to_owned();
    let (status, org) = call(&cp, &admin, Method::PATCH, &format!("/orgs/{vault}"), Some(require)).await;
    assert_eq!((status, &org["require_2fa"]), (StatusCode::OK, &json!(true)), "{org}");

    // Erin has no second factor: she may sign in and enrol, but not act in Vault.
    let erin = cp.login("erin", PASSWORD).await;
    let blocked = cp.call_in(&erin, &vault, Method::GET, "/stacks", None).await;
    assert_eq!(code_of(&blocked), (StatusCode::FORBIDDEN, "org_requires_second_factor"), "{}", blocked.1);
    assert_eq!(call(&cp, &erin, Method::GET, "/auth/me", None).await.0, StatusCode::OK);
    let (app, _) = enrol(&cp, &erin).await;
    // Enrolling does not upgrade the session that had no second factor…
    assert_eq!(code_of(&cp.call_in(&erin, &vault, Method::GET, "/stacks", None).await).1, "org_requires_second_factor");
    // …signing in with one does.
    let mfa_token = password_step(&cp, "erin").await;
    let (_, tokens) = second_step(&cp, &mfa_token, &app.code(0)).await;
    let erin = tokens["access_token"].as_str().expect("token").to_owned();
    assert_eq!(cp.call_in(&erin, &vault, Method::GET, "/stacks", None).await.0, StatusCode::OK);

    // API tokens count as two-factor when their user has it.
    let (_, made) =
        cp.call_in(&erin, &vault, Method::POST, "/tokens", Some(json!({"name": "ci", "scope": "read"}))).await;
    let api_token = made["token"].as_str().expect("token").to_owned();
    assert_eq!(call(&cp, &api_token, Method::GET, "/stacks", None).await.0, StatusCode::OK);

    // An administrator resets Erin's lost device: her sessions end and her token stops working
    // in Vault until she enrols again.
    let erin_id = created_user_id(&mut cp, "erin").await;
    let reset = call(&cp, &admin, Method::DELETE, &format!("/users/{erin_id}/totp"), None).await;
    assert_eq!(reset.0, StatusCode::NO_CONTENT, "{}", reset.1);
    assert_eq!(call(&cp, &erin, Method::GET, "/auth/me", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(&call(&cp, &api_token, Method::GET, "/stacks", None).await).1, "org_requires_second_factor");
    cp.login("erin", PASSWORD).await;
}

async fn created_user_id(cp: &mut ControlPlane, username: &str) -> String {
    let (_, users) = cp.api(Method::GET, "/users", None).await;
    let user = users["items"].as_array().expect("items").iter().find(|u| u["username"] == username).expect("user");
    user["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_signs_in_with_a_code_and_says_what_is_missing_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin_login().await;
    let (app, _) = enrol(&cp, &admin).await;
    let ca = cp.dir.join("data/ca.pem");
    let login = ["login", "--server", &cp.url(""), "--ca-file", ca.to_str().expect("path")];

    let (ok, _, err) = cp.cli(dir.path(), &login);
    assert!(!ok && err.contains("--totp-code"), "{err}");
    let code = app.code(0);
    let (ok, out, err) = cp.cli(dir.path(), &[&login[..], &["--totp-code", &code]].concat());
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cp.cli(dir.path(), &["orgs", "list"]);
    assert!(ok && out.contains("Default"), "{out}{err}");
}
