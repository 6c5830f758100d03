//! The foundation, end to end: a real control plane and real agents as separate processes,
//! over real HTTPS and mutual-TLS QUIC on 127.0.0.1.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

async fn wait_connected(cp: &mut ControlPlane, id: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cp.is_connected(id).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn three_agents_connect_report_their_host_and_answer_pings_and_jobs() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let token = cp.join_token(3, 600).await;
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        let mut agent =
            Agent::enroll(&cp, &dir.path().join(name), token["token"].as_str().expect("token")).expect("enrolls");
        agent.start();
        agents.push(agent);
    }
    for agent in &agents {
        assert!(
            wait_connected(&mut cp, &agent.id(), Duration::from_secs(10)).await,
            "{} never connected:\n{}",
            agent.id(),
            agent.logs()
        );
    }
    let targets = cp.targets().await;
    assert_eq!(targets.len(), 3);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    for target in &targets {
        assert_eq!(target["status"], "connected");
        assert_eq!(target["facts"]["hostname"], hostname.trim());
        assert_eq!(target["facts"]["arch"], std::env::consts::ARCH);
        assert!(target["facts"]["cpus"].as_u64().expect("cpus") >= 1);
        assert!(target["facts"]["memory_bytes"].as_u64().expect("memory") > 0);
    }

    let id = agents[0].id();
    let (status, ping) = cp.api(Method::POST, &format!("/targets/{id}/test"), None).await;
    assert_eq!(status, StatusCode::OK, "{ping}");
    assert!(ping["latency_ms"].as_f64().expect("latency") > 0.0);

    // A signed job through the real agent and back.
    let (status, facts) = cp.api(Method::POST, &format!("/targets/{id}/facts"), None).await;
    assert_eq!(status, StatusCode::OK, "{facts}");
    assert_eq!(facts["hostname"], hostname.trim());
    assert!(agents[0].logs().contains("job admitted"));

    // Pagination.
    let (_, page) = cp.api(Method::GET, "/targets?page=2&per_page=2", None).await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().expect("items").len(), 1);
    let (status, error) = cp.api(Method::GET, "/targets?per_page=0", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "per_page");

    // Metrics: requests by route template (not by id), jobs by outcome, deployments by state.
    let metrics = cp.http().get(cp.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for series in [
        r#"windflow_http_requests_total{method="GET",route="/api/v1/targets",status="200"}"#,
        r#"windflow_http_request_duration_seconds_bucket{route="/api/v1/targets/{id}/test",le="+Inf"} 1"#,
        r#"windflow_jobs_total{outcome="succeeded"} 1"#,
        r#"windflow_deployments{state="running"} 0"#,
        "windflow_agents_connected 3",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }

    // The token allowed three enrollments and is now used up.
    let (_, tokens) = cp.api(Method::GET, "/targets/join-tokens", None).await;
    let listed = &tokens["items"][0];
    assert_eq!((listed["uses"].clone(), listed["usable"].clone()), (json!(3), json!(false)));
}

fn run_one_liner(command: &str, install_dir: &std::path::Path, data_dir: &std::path::Path) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("WINDFLOW_INSTALL_DIR", install_dir)
        .env("WINDFLOW_AGENT_DATA_DIR", data_dir)
        .output()
        .expect("sh runs")
}

/// Kills the agent that install.sh left running in the background.
struct PidFileGuard(std::path::PathBuf);

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_one_liner_enrolls_a_host_over_pinned_https_and_is_safe_to_rerun() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let token = cp.join_token(1, 600).await;
    let command = token["command"].as_str().expect("command");
    assert!(command.contains("--pinnedpubkey 'sha256//"), "{command}");
    assert!(command.starts_with("curl -fsSL --pinnedpubkey"), "never an unpinned -k: {command}");

    let install = dir.path().join("bin");
    let data = dir.path().join("agent");
    let _guard = PidFileGuard(data.join("agent.pid"));
    let output = run_one_liner(command, &install, &data);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("enrolled with"), "{stdout}");
    assert!(stdout.contains("started the agent in the background"), "{stdout}");
    assert!(install.join("windflow-agent").exists());

    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("agent.json")).expect("identity")).expect("json");
    let id = identity["agent_id"].as_str().expect("id").to_owned();
    assert!(
        wait_connected(&mut cp, &id, Duration::from_secs(10)).await,
        "{}",
        std::fs::read_to_string(data.join("agent.log")).unwrap_or_default()
    );
    // Only a CSR left the host: the private key is here, 0600, and nowhere in the control plane's data.
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(data.join("key.pem")).expect("key").permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);

    // Re-running the same one-liner (its token is now used up) keeps the identity and restarts the agent.
    let rerun = run_one_liner(command, &install, &data);
    let rerun_out = String::from_utf8_lossy(&rerun.stdout);
    assert!(rerun.status.success(), "{rerun_out}{}", String::from_utf8_lossy(&rerun.stderr));
    assert!(rerun_out.contains("already enrolled"), "{rerun_out}");
    assert!(wait_connected(&mut cp, &id, Duration::from_secs(10)).await);
    assert_eq!(cp.targets().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_pin_or_a_bad_token_stops_the_one_liner_with_a_clear_message() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let token = cp.join_token(1, 600).await;
    let command = token["command"].as_str().expect("command");

    let forged_pin = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let start = command.find("sha256//").expect("pin");
    let end = command[start..].find('\'').expect("quote") + start;
    let wrong_pin = format!("{}{forged_pin}{}", &command[..start], &command[end..]);
    let install = dir.path().join("bin");
    let output = run_one_liner(&wrong_pin, &install, &dir.path().join("agent"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // `curl | sh` ends with sh's status; curl's own message is what the user sees.
    assert!(stderr.contains("pinned public key"), "{stderr}");
    assert!(!install.join("windflow-agent").exists(), "nothing is downloaded without the right pin");
    assert!(!dir.path().join("agent/agent.json").exists());

    let bad_token =
        command.replace(token["token"].as_str().expect("token"), "wfj_0190f0f0f0f07000800000000000000a_bogus");
    let output = run_one_liner(&bad_token, &install, &dir.path().join("agent"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("enrollment refused") && stderr.contains("join token is not valid"), "{stderr}");
    assert!(cp.targets().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_expired_used_up_and_revoked_join_tokens_are_refused_and_write_nothing() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let csr = {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem")
    };

    let (status, body) = enroll_with(&cp, "wfj_nonsense".into(), &csr).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("join_token_malformed")));

    let valid = cp.join_token(1, 600).await;
    let valid_token = valid["token"].as_str().expect("token").to_owned();
    // Change the secret's last character, whatever it was.
    let last = if valid_token.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{last}", &valid_token[..valid_token.len() - 1]);
    let (status, body) = enroll_with(&cp, forged, &csr).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("join_token_invalid")));

    let short = cp.join_token(5, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = enroll_with(&cp, short["token"].as_str().expect("token").into(), &csr).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("join_token_expired")));

    let (status, _) = enroll_with(&cp, valid_token.clone(), &csr).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = enroll_with(&cp, valid_token, &csr).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("join_token_used_up")));
    assert!(body["error"]["message"].as_str().expect("message").contains("used up"));

    let revoked = cp.join_token(5, 600).await;
    let (status, _) =
        cp.api(Method::DELETE, &format!("/targets/join-tokens/{}", revoked["id"].as_str().expect("id")), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = enroll_with(&cp, revoked["token"].as_str().expect("token").into(), &csr).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("join_token_revoked")));

    // A broken CSR with a good token: refused, and the token keeps its use.
    let spare = cp.join_token(1, 600).await;
    let (status, body) = cp
        .call_with(None, Method::POST, "/api/v1/agents/enroll", Some(json!({"token": spare["token"], "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "name": "x"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "csr_pem");

    // Only the one good enrollment was written, and the spare token is untouched.
    assert_eq!(cp.targets().await.len(), 1);
    let (_, tokens) = cp.api(Method::GET, "/targets/join-tokens", None).await;
    let spare_listed =
        tokens["items"].as_array().expect("items").iter().find(|t| t["id"] == spare["id"]).expect("listed").clone();
    assert_eq!(spare_listed["uses"], 0);
}

async fn enroll_with(cp: &ControlPlane, token: String, csr: &str) -> (StatusCode, Value) {
    cp.call_with(
        None,
        Method::POST,
        "/api/v1/agents/enroll",
        Some(json!({"token": token, "csr_pem": csr, "name": "x"})),
    )
    .await
}

async fn refused_at_first_exchange(cp: &ControlPlane, client: quinn::Endpoint) -> bool {
    let addr = format!("127.0.0.1:{}", cp.quic_port).parse().expect("addr");
    let attempt = async {
        let connection = client.connect(addr, "127.0.0.1").ok()?.await.ok()?;
        let (mut send, mut recv) = connection.open_bi().await.ok()?;
        send.write_all(&[0, 0, 0, 1, 1]).await.ok()?;
        let mut buf = [0u8; 16];
        recv.read(&mut buf).await.ok()?.map(|_| ())
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), attempt).await, Ok(None))
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_without_a_certificate_from_our_ca_are_refused_and_counted() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let ca = cp.ca_pem();
    let before = cp.metric("windflow_agent_handshakes_refused_total").await;

    assert!(refused_at_first_exchange(&cp, quic_client(&ca, None)).await, "no client certificate");
    let some_id = uuid::Uuid::now_v7().to_string();
    assert!(refused_at_first_exchange(&cp, quic_client(&ca, Some(foreign_certificate(&some_id)))).await, "foreign CA");
    let ca_key = std::fs::read_to_string(dir.path().join("data/ca.key.pem")).expect("CA key");
    let expired = certificate_signed_by(&ca, &ca_key, &some_id, time::Duration::hours(-2), time::Duration::hours(-1));
    assert!(refused_at_first_exchange(&cp, quic_client(&ca, Some(expired))).await, "expired certificate");

    let counted = eventually(Duration::from_secs(5), || async {
        cp.metric("windflow_agent_handshakes_refused_total").await >= before + 3
    })
    .await;
    assert!(counted, "three refusals counted");
    let metrics = cp.http().get(cp.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for reason in ["certificate_required", "unknown_ca", "certificate_expired"] {
        let line = format!("windflow_agent_handshake_refusals_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{reason} counted:\n{metrics}");
    }
    assert!(cp.process.logs().contains("agent handshake refused"));
    // The control plane is unharmed.
    assert_eq!(cp.api(Method::GET, "/targets", None).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_cut_off_at_once_and_refused_afterwards() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let mut agent = cp.start_agent(dir.path(), "a").await;
    let id = agent.id();
    assert!(wait_connected(&mut cp, &id, Duration::from_secs(10)).await, "{}", agent.logs());

    let (status, body) = cp.api(Method::POST, &format!("/targets/{id}/revoke"), None).await;
    let revoked_at = Instant::now();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["connected"], false);
    let process = agent.process.as_mut().expect("running");
    let mut exited = None;
    while revoked_at.elapsed() < Duration::from_secs(1) && exited.is_none() {
        exited = process.exited();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exited = exited.unwrap_or_else(|| panic!("agent still running 1 s after revocation:\n{}", agent.logs()));
    assert_eq!(exited.code(), Some(windflow_agent_exit_revoked()), "{}", agent.logs());

    // Started again with the same certificate: refused in the handshake, and it gives up.
    let before = cp.metric("windflow_agent_certificates_revoked_total").await;
    agent.start();
    let process = agent.process.as_mut().expect("running");
    let stopped = eventually(Duration::from_secs(10), || {
        let done = process.exited().is_some();
        async move { done }
    })
    .await;
    assert!(stopped, "a revoked agent stops retrying:\n{}", agent.logs());
    assert!(cp.metric("windflow_agent_certificates_revoked_total").await > before);
    assert!(!cp.is_connected(&id).await);
}

fn windflow_agent_exit_revoked() -> i32 {
    3
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_oversize_frames_close_the_connection_and_the_control_plane_stays_healthy() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let witness = cp.start_agent(dir.path(), "witness").await;
    assert!(wait_connected(&mut cp, &witness.id(), Duration::from_secs(10)).await);

    // A legitimately enrolled identity, driven by hand.
    let token = cp.join_token(1, 600).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem");
    let (status, enrolled) = cp
        .call_with(
            None,
            Method::POST,
            "/api/v1/agents/enroll",
            Some(json!({"token": token["token"], "csr_pem": csr, "name": "raw"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(
        enrolled["certificate_pem"].as_str().expect("cert").as_bytes(),
    )
    .expect("cert");
    let identity =
        || (vec![cert.clone()], rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"));

    let addr = format!("127.0.0.1:{}", cp.quic_port).parse().expect("addr");
    let garbage: &[&[u8]] = &[&[0, 0, 0, 3, 0xff, 0xff, 0xff], &u32::MAX.to_be_bytes(), &[0x00, 0x10, 0x00, 0x01]];
    for bytes in garbage {
        let client = quic_client(&cp.ca_pem(), Some(identity()));
        let connection = client.connect(addr, "127.0.0.1").expect("connect").await.expect("handshake");
        let (mut send, _recv) = connection.open_bi().await.expect("stream");
        send.write_all(bytes).await.expect("write");
        let reason = tokio::time::timeout(Duration::from_secs(5), connection.closed())
            .await
            .expect("closed by the control plane");
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, 3u32.into(), "BAD_FRAME close code");
                let why = String::from_utf8_lossy(&close.reason).into_owned();
                assert!(why.contains("not a valid message") || why.contains("over the limit"), "{why}");
            }
            other => panic!("unexpected close: {other:?}"),
        }
    }
    assert_eq!(cp.metric("windflow_agent_frames_rejected_total").await, 3);
    let (status, health) = cp.call_with(None, Method::GET, "/health", None).await;
    assert_eq!((status, health["status"].clone()), (StatusCode::OK, json!("ok")));
    assert!(cp.is_connected(&witness.id()).await, "other agents are unaffected");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_reconnects_by_itself_with_the_same_identity_after_the_control_plane_restarts() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "a").await;
    let id = agent.id();
    assert!(wait_connected(&mut cp, &id, Duration::from_secs(10)).await);
    let ca_before = cp.ca_pem();

    cp.restart().await;
    assert_eq!(cp.ca_pem(), ca_before, "a restart reuses the PKI");
    assert!(wait_connected(&mut cp, &id, Duration::from_secs(10)).await, "agent did not come back:\n{}", agent.logs());
    let targets = cp.targets().await;
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0]["id"], id.as_str());
    assert!(agent.logs().contains("reconnecting"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_renews_its_certificate_before_expiry_and_reconnects_with_the_new_one() {
    let dir = scratch();
    let mut cp = ControlPlane::start_with(
        dir.path(),
        free_tcp_port(),
        free_udp_port(),
        vec!["--agent-cert-ttl".into(), "24s".into()],
    )
    .await;
    let agent = cp.start_agent(dir.path(), "a").await;
    let id = agent.id();
    assert!(wait_connected(&mut cp, &id, Duration::from_secs(10)).await);
    let first = std::fs::read_to_string(agent.data_dir.join("cert.pem")).expect("cert");
    let renewed = eventually(Duration::from_secs(30), || {
        let changed = std::fs::read_to_string(agent.data_dir.join("cert.pem")).is_ok_and(|c| c != first);
        async move { changed }
    })
    .await;
    assert!(renewed, "no renewal:\n{}", agent.logs());
    assert!(agent.logs().contains("certificate renewed"));
    // Let the first certificate expire, then force a new handshake: only the renewed one can pass.
    let expiry = not_after(&first);
    let wait = expiry - time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    assert!(wait > time::Duration::ZERO, "renewed before expiry, not after");
    tokio::time::sleep(wait.unsigned_abs()).await;
    cp.restart().await;
    assert!(wait_connected(&mut cp, &id, Duration::from_secs(10)).await, "{}", agent.logs());
}

fn not_after(pem: &str) -> time::OffsetDateTime {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    cert.validity().not_after.to_datetime()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_requires_a_session_and_answers_bad_input_with_clear_errors() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;

    let (status, body) = cp.call_with(None, Method::GET, "/api/v1/targets", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("unauthenticated")));
    let (status, _) = cp.call_with(Some("not-a-jwt"), Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = cp
        .call_with(None, Method::POST, "/api/v1/auth/login", Some(json!({"username": "admin", "password": "nope"})))
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("bad_credentials")));
    let (status, body) = cp.call_with(None, Method::POST, "/api/v1/auth/login", Some(json!({"user": "admin"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["message"].as_str().expect("message").contains("username"), "{body}");

    let (status, login) = cp
        .call_with(
            None,
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(login["expires_in"], 900);
    let access = login["access_token"].as_str().expect("access").to_owned();
    let (status, me) = cp.call_with(Some(&access), Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!((status, me["username"].clone()), (StatusCode::OK, json!("admin")));

    // Refresh rotates; presenting the old refresh token again kills the whole session.
    let (status, rotated) = cp
        .call_with(None, Method::POST, "/api/v1/auth/refresh", Some(json!({"refresh_token": login["refresh_token"]})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = cp
        .call_with(None, Method::POST, "/api/v1/auth/refresh", Some(json!({"refresh_token": login["refresh_token"]})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = cp.call_with(rotated["access_token"].as_str(), Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "reuse revoked the family");

    // Logout revokes at once.
    let (_, fresh) = cp
        .call_with(
            None,
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    let fresh_access = fresh["access_token"].as_str().expect("access");
    assert_eq!(
        cp.call_with(Some(fresh_access), Method::POST, "/api/v1/auth/logout", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        cp.call_with(Some(fresh_access), Method::GET, "/api/v1/auth/me", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Unknown and malformed ids are the same 404; bad fields name themselves.
    for id in ["nope", "01900000-0000-7000-8000-000000000000"] {
        let (status, body) = cp.api(Method::GET, &format!("/targets/{id}"), None).await;
        assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    }
    let (status, body) = cp.api(Method::POST, "/targets/join-tokens", Some(json!({"uses": 0}))).await;
    assert_eq!((status, body["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("uses")));
    let (status, body) = cp.api(Method::POST, "/targets/join-tokens", Some(json!({"ttl": "1h"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Security headers on every answer, and the install script is templated with the pin.
    let response = cp.http().get(cp.url("/install.sh")).send().await.expect("install.sh");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let script = response.text().await.expect("text");
    assert!(script.contains("SERVER_PIN='sha256//") && !script.contains("@@"), "{script}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_logs_in_creates_tokens_and_lists_and_revokes_targets() {
    let dir = scratch();
    let mut cp = ControlPlane::start(dir.path()).await;
    cp.cli_login(dir.path());

    let (ok, out, _) = cp.cli(dir.path(), &["token", "create", "--uses", "2", "--ttl", "10m"]);
    assert!(ok && out.contains("--pinnedpubkey") && out.contains("usable 2 time(s)"), "{out}");
    let token = out.split("WINDFLOW_JOIN_TOKEN='").nth(1).and_then(|s| s.split('\'').next()).expect("token in command");

    let mut agent = Agent::enroll(&cp, &dir.path().join("a"), token).expect("enrolls");
    agent.start();
    let id = agent.id();
    assert!(wait_connected(&mut cp, &id, Duration::from_secs(10)).await);
    let (_, listed, _) = cp.cli(dir.path(), &["targets", "list"]);
    assert!(listed.contains(&id) && listed.contains("connected"), "{listed}");
    let (_, tested, _) = cp.cli(dir.path(), &["targets", "test", &id]);
    assert!(tested.contains("agent answered in"), "{tested}");
    assert!(cp.cli(dir.path(), &["targets", "revoke", &id]).0);
    let (_, listed, _) = cp.cli(dir.path(), &["targets", "list"]);
    assert!(listed.contains("revoked"), "{listed}");

    let (ok, _, err) = cp.cli(dir.path(), &["targets", "show", "01900000-0000-7000-8000-000000000000"]);
    assert!(!ok && err.contains("target not found"), "{err}");
}

async fn login_as(cp: &ControlPlane, username: &str, password: &str) -> (StatusCode, Option<String>) {
    let response = cp
        .http()
        .post(cp.url("/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login request");
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
    (response.status(), retry_after)
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_logins_lock_the_account_and_then_the_address() {
    // The account: five wrong passwords, then even the right one waits.
    let dir = scratch();
    let cp = ControlPlane::start(dir.path()).await;
    for _ in 0..5 {
        assert_eq!(login_as(&cp, "admin", "wrong-password").await.0, StatusCode::UNAUTHORIZED);
    }
    let (status, retry_after) = login_as(&cp, "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        retry_after.and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| (1..=30).contains(&s)),
        "Retry-After in seconds"
    );

    // The address: twenty failures over many names lock it for every account.
    let dir = scratch();
    let cp = ControlPlane::start(dir.path()).await;
    for n in 0..19 {
        assert_eq!(login_as(&cp, &format!("guess{n}"), "x").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login_as(&cp, "admin", ADMIN_PASSWORD).await.0, StatusCode::OK, "still below the address limit");
    assert_eq!(login_as(&cp, "guess19", "x").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login_as(&cp, "admin", ADMIN_PASSWORD).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_over_its_rate_limit_gets_429_with_retry_after_and_the_error_shape() {
    let dir = scratch();
    let cp = ControlPlane::start_with(
        dir.path(),
        free_tcp_port(),
        free_udp_port(),
        vec!["--rate-limit".into(), "2".into(), "--rate-burst".into(), "5".into()],
    )
    .await;
    let mut limited = None;
    for _ in 0..20 {
        let response = cp.http().get(cp.url("/api/v1/targets")).send().await.expect("request");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the burst ran out");
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "rate_limited");

    // Oversized bodies are refused with 413 before any handler reads them.
    let big = "x".repeat(5 * 1024 * 1024);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) =
        cp.call_with(None, Method::POST, "/api/v1/auth/login", Some(json!({"username": big, "password": "x"}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // A large body on a request refused before its route reads it still gets the answer, not a
    // connection reset while the client is still sending.
    let body = json!({"name": "big", "compose": "x".repeat(3 * 1024 * 1024)}).to_string();
    let request = format!(
        "POST /api/v1/stacks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (ca, port) = (cp.ca_pem(), cp.api_port);
    let answer = tokio::task::spawn_blocking(move || send_whole_then_read(&ca, port, request.as_bytes()))
        .await
        .expect("joined")
        .expect("the client gets an answer");
    assert!(answer.starts_with("HTTP/1.1 401") && answer.contains("unauthenticated"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_malformed_and_wrongly_signed_access_tokens_answer_401() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let dir = scratch();
    let cp = ControlPlane::start(dir.path()).await;
    let valid = cp.admin_login().await;
    let (_, me) = cp.call_with(Some(&valid), Method::GET, "/api/v1/auth/me", None).await;
    let claims = |exp_offset: i64| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // The claims of a real session, only the lifetime differs.
        let payload = valid.split('.').nth(1).expect("payload");
        let mut claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).expect("base64"),
        )
        .expect("json");
        claims["exp"] = json!(now + exp_offset);
        claims
    };
    let secret = std::fs::read(dir.path().join("data/jwt.key")).expect("the JWT key");
    let expired = encode(&Header::default(), &claims(-3600), &EncodingKey::from_secret(&secret)).expect("signed");
    let foreign = encode(&Header::default(), &claims(600), &EncodingKey::from_secret(b"another key")).expect("signed");
    let unsigned = format!("{}.", valid.rsplit_once('.').expect("three parts").0);
    for (what, token) in
        [("expired", expired), ("wrongly signed", foreign), ("unsigned", unsigned), ("malformed", "a.b.c".into())]
    {
        let (status, body) = cp.call_with(Some(&token), Method::GET, "/api/v1/auth/me", None).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("unauthenticated")),
            "{what}"
        );
    }
    assert_eq!(me["username"], "admin", "the real token works");
}
