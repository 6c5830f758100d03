//! Single sign-on against a real OpenID Connect provider (panva/oidc-provider, OpenID
//! Certified, run by Node.js): the browser's whole round trip — WindFlow, the provider's sign-in,
//! back to WindFlow — with cookies and redirects as a browser has them. Users are made on first
//! sign-in, their groups give their role, and every way a sign-in can go wrong is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use windflow_tests::*;

const CLIENT_ID: &str = "windflow";
const CLIENT_SECRET: &str = "provider-shared-secret-4f9a71";

/// The identity provider, killed when dropped.
struct Provider {
    _process: Process,
    issuer: String,
}

impl Provider {
    async fn start(dir: &Path, cp: &ControlPlane) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc/provider.mjs");
        assert!(
            script.with_file_name("node_modules").exists(),
            "tests/oidc/node_modules is missing: scripts/bootstrap runs npm ci there"
        );
        let port = free_tcp_port();
        let mut command = Command::new("node");
        command
            .arg(&script)
            .env("PORT", port.to_string())
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", cp.url("/api/v1/auth/sso/callback"));
        let process = Process::spawn(&mut command, dir.join("oidc-provider.log")).expect("node runs");
        let issuer = format!("http://127.0.0.1:{port}");
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        let up = eventually(Duration::from_secs(20), || {
            let discovery = discovery.clone();
            async move { reqwest::get(&discovery).await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(up, "the provider did not start:\n{}", process.logs());
        Self { _process: process, issuer }
    }

    async fn set_groups(&self, account: &str, groups: &[&str]) {
        let url = format!("{}/test/groups/{account}", self.issuer);
        let answer = reqwest::Client::new().put(url).json(&groups).send().await.expect("provider answers");
        assert!(answer.status().is_success());
    }
}

/// A browser: cookies kept, redirects looked at one by one.
struct Browser {
    http: reqwest::Client,
}

impl Browser {
    fn new(cp: &ControlPlane) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        roots.add(rustls_pki_types::CertificateDer::from_pem_slice(cp.ca_pem().as_bytes()).expect("pem")).expect("ca");
        let tls =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self { http }
    }

    /// Sends a request and answers the redirect's target, resolved against the request URL.
    async fn redirected(&self, request: reqwest::RequestBuilder) -> Url {
        let response = request.send().await.expect("sent");
        let from = response.url().clone();
        let status = response.status();
        let location = response.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned);
        let Some(location) = location else {
            panic!("{from}: {status} without a redirect: {}", response.text().await.unwrap_or_default())
        };
        from.join(&location).expect("a URL")
    }

    /// The whole sign-in as `account` (unless this browser is signed in at the provider already)
    /// for organisation `org`: answers the fragment WindFlow sent the browser back with (`sso=…`
    /// or `sso_error=…`), and that URL's path.
    async fn sign_in(&self, cp: &ControlPlane, org: &str, account: &str) -> (String, String) {
        let to_provider =
            self.redirected(self.http.get(cp.url(&format!("/api/v1/auth/sso/{org}/start?return_to=/welcome")))).await;
        let query: std::collections::HashMap<String, String> = to_provider.query_pairs().into_owned().collect();
        assert_eq!(query.get("code_challenge_method").map(String::as_str), Some("S256"), "PKCE: {to_provider}");
        assert!(query.contains_key("nonce") && query.contains_key("state"), "{to_provider}");
        let mut callback = self.redirected(self.http.get(to_provider)).await;
        // A browser already signed in at the provider goes straight back; else it signs in.
        if callback.path().starts_with("/interaction/") {
            let login = callback.join(&format!("{}/login", callback.path())).expect("url");
            let resume = self.redirected(self.http.post(login).form(&[("login", account)])).await;
            callback = self.redirected(self.http.get(resume)).await;
        }
        assert!(callback.as_str().starts_with(&cp.url("/api/v1/auth/sso/callback")), "{callback}");
        let back = self.redirected(self.http.get(callback)).await;
        (back.fragment().unwrap_or_default().to_owned(), back.path().to_owned())
    }
}

/// Trades the exchange code in `fragment` for tokens; answers the access token.
async fn exchange(cp: &ControlPlane, fragment: &str) -> String {
    let code = fragment.strip_prefix("sso=").unwrap_or_else(|| panic!("not signed in: {fragment}"));
    let (status, tokens) =
        cp.call_with(None, Method::POST, "/api/v1/auth/sso/exchange", Some(json!({"code": code}))).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens["access_token"].as_str().expect("access token").to_owned()
}

async fn me(cp: &ControlPlane, token: &str) -> Value {
    let (status, me) = cp.call_with(Some(token), Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    me
}

/// The text of an `sso_error=` fragment (percent-decoded).
fn decoded(fragment: &str) -> String {
    let raw = fragment.strip_prefix("sso_error=").unwrap_or(fragment);
    let mut out = Vec::new();
    let mut rest = raw.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match (first, tail.get(..2).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                rest = &tail[2..];
            }
            _ => {
                out.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_sign_in_through_the_organisations_provider_with_roles_from_their_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let provider = Provider::start(dir.path(), &cp).await;
    let (_, orgs) = cp.api(Method::GET, "/orgs", None).await;
    let org = orgs["items"][0]["id"].as_str().expect("Default").to_owned();

    // Configured by an admin; the secret is never shown again.
    let config = json!({
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "role_mapping": [{"group": "windflow-admins", "role": "admin"}, {"group": "windflow-operators", "role": "operator"}],
    });
    let (status, saved) = cp.api(Method::PUT, &format!("/orgs/{org}/sso"), Some(config)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(
        (saved["has_client_secret"].clone(), saved["redirect_uri"].clone()),
        (json!(true), json!(cp.url("/api/v1/auth/sso/callback")))
    );
    assert!(!saved.to_string().contains(CLIENT_SECRET));
    let (status, tested) = cp.api(Method::POST, &format!("/orgs/{org}/sso/test"), None).await;
    assert_eq!((status, tested["issuer"].clone()), (StatusCode::OK, json!(provider.issuer)), "{tested}");
    let (_, providers) = cp.call_with(None, Method::GET, "/api/v1/auth/sso/providers", None).await;
    assert_eq!(providers["items"][0]["org_name"], "Default");

    // A local account already named bob is never merged with the provider's bob.
    let local = json!({"username": "bob", "password": "a long enough passphrase"});
    assert_eq!(cp.api(Method::POST, "/users", Some(local)).await.0, StatusCode::CREATED);

    let browser = Browser::new(&cp);
    let (fragment, path) = browser.sign_in(&cp, &org, "alice").await;
    assert_eq!(path, "/welcome", "back where the sign-in started");
    let alice = exchange(&cp, &fragment).await;
    let profile = me(&cp, &alice).await;
    assert_eq!((profile["username"].clone(), profile["source"].clone()), (json!("alice"), json!("sso")));
    assert_eq!(profile["org"]["role"], "admin", "windflow-admins → admin: {profile}");
    assert_eq!(profile["second_factor"], false);
    // The exchange code works once.
    let code = fragment.trim_start_matches("sso=");
    let (status, again) =
        cp.call_with(None, Method::POST, "/api/v1/auth/sso/exchange", Some(json!({"code": code}))).await;
    assert_eq!((status, again["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("sso_failed")));

    // Signing in again (the organisation named this time) finds the same account.
    let (fragment, _) = Browser::new(&cp).sign_in(&cp, "Default", "alice").await;
    assert_eq!(me(&cp, &exchange(&cp, &fragment).await).await["id"], profile["id"]);

    // Bob: operator, under another name than the local bob; promoted when his groups change
    // (his browser's provider session skips the provider's sign-in the second time).
    let bobs_browser = Browser::new(&cp);
    let (fragment, _) = bobs_browser.sign_in(&cp, &org, "bob").await;
    let bob = me(&cp, &exchange(&cp, &fragment).await).await;
    assert!(bob["username"].as_str().expect("name").starts_with("bob-"), "{bob}");
    assert_eq!(bob["org"]["role"], "operator");
    provider.set_groups("bob", &["windflow-admins"]).await;
    let (fragment, _) = bobs_browser.sign_in(&cp, &org, "bob").await;
    assert_eq!(me(&cp, &exchange(&cp, &fragment).await).await["org"]["role"], "admin");

    // A second factor at the provider counts as one here.
    let (fragment, _) = Browser::new(&cp).sign_in(&cp, &org, "alice-mfa").await;
    assert_eq!(me(&cp, &exchange(&cp, &fragment).await).await["second_factor"], true);

    // Mallory's groups give no role: refused, and no account made.
    let (fragment, _) = Browser::new(&cp).sign_in(&cp, &org, "mallory").await;
    assert!(decoded(&fragment).contains("no group that gives a role"), "{fragment}");
    let (_, users) = cp.api(Method::GET, "/users", None).await;
    assert!(!users.to_string().contains("mallory"), "{users}");

    // An SSO account has no password to sign in with.
    let login = json!({"username": "alice", "password": "anything at all really"});
    let (status, _) = cp.call_with(None, Method::POST, "/api/v1/auth/login", Some(login)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A forged or replayed callback goes nowhere.
    let forged = browser.redirected(browser.http.get(cp.url("/api/v1/auth/sso/callback?code=abc&state=forged"))).await;
    assert!(decoded(forged.fragment().unwrap_or_default()).contains("unknown or expired"), "{forged}");
    let refused =
        browser.redirected(browser.http.get(cp.url("/api/v1/auth/sso/callback?error=access_denied&state=x"))).await;
    assert!(decoded(refused.fragment().unwrap_or_default()).contains("access_denied"), "{refused}");

    // A disabled account is refused even when the provider vouches for it.
    let alice_id = profile["id"].as_str().expect("id");
    cp.api(Method::PATCH, &format!("/users/{alice_id}"), Some(json!({"disabled": true}))).await;
    let (fragment, _) = browser.sign_in(&cp, &org, "alice").await;
    assert!(decoded(&fragment).contains("disabled"), "{fragment}");

    // The client secret is sealed at rest.
    cp.process.terminate();
    let mut pending = vec![cp.dir.join("data")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                assert!(
                    !bytes.windows(CLIENT_SECRET.len()).any(|w| w == CLIENT_SECRET.as_bytes()),
                    "{}",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_configure_sso_and_only_owners_map_a_group_to_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let (_, orgs) = cp.api(Method::GET, "/orgs", None).await;
    let org = orgs["items"][0]["id"].as_str().expect("Default").to_owned();
    for (name, role) in [("olga", "operator"), ("adam", "admin")] {
        let body = json!({"username": name, "password": "a long enough passphrase", "org_id": org, "role": role});
        assert_eq!(cp.api(Method::POST, "/users", Some(body)).await.0, StatusCode::CREATED);
    }
    let config = |role: &str, issuer: &str| json!({"issuer": issuer, "client_id": "c", "client_secret": "s", "role_mapping": [{"group": "g", "role": role}]});
    let olga = cp.login("olga", "a long enough passphrase").await;
    let adam = cp.login("adam", "a long enough passphrase").await;
    let path = format!("/api/v1/orgs/{org}/sso");
    let put = |token: String, body: Value| {
        let path = path.clone();
        let cp = &cp;
        async move { cp.call_with(Some(&token), Method::PUT, &path, Some(body)).await }
    };
    assert_eq!(put(olga, config("viewer", "https://id.example.com")).await.0, StatusCode::FORBIDDEN);
    let owner_mapping = put(adam.clone(), config("owner", "https://id.example.com")).await;
    assert_eq!(
        (owner_mapping.0, owner_mapping.1["error"]["field"].clone()),
        (StatusCode::FORBIDDEN, json!("role_mapping"))
    );
    let plain_http = put(adam.clone(), config("viewer", "http://id.example.com")).await;
    assert_eq!(
        (plain_http.0, plain_http.1["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("issuer"))
    );
    let no_secret = json!({"issuer": "https://id.example.com", "client_id": "c"});
    assert_eq!(put(adam.clone(), no_secret).await.1["error"]["field"], "client_secret");
    assert_eq!(put(adam.clone(), config("admin", "https://id.example.com")).await.0, StatusCode::OK);
    // Left out, the secret is kept.
    let (status, kept) = put(adam, json!({"issuer": "https://id.example.com", "client_id": "c2"})).await;
    assert_eq!((status, kept["has_client_secret"].clone()), (StatusCode::OK, json!(true)));
    // An unreachable provider is a clear answer of the test, not a hang or a 500…
    let (status, test) = cp.api(Method::POST, &format!("/orgs/{org}/sso/test"), None).await;
    assert_eq!((status, test["ok"].clone()), (StatusCode::OK, json!(false)), "{test}");
    assert!(test["error"].as_str().expect("why").contains("discovery"), "{test}");
    // …and a browser sent to sign in through it comes back with the reason.
    let browser = Browser::new(&cp);
    let back = browser.redirected(browser.http.get(cp.url(&format!("/api/v1/auth/sso/{org}/start")))).await;
    assert!(decoded(back.fragment().unwrap_or_default()).contains("discovery"), "{back}");
}
