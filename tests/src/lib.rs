//! Test harness: runs the real `windflow` and `windflow-agent` binaries as separate processes
//! on 127.0.0.1 and talks to them over real HTTPS and QUIC. Every process it starts is killed
//! when its handle drops, so a failing test leaves nothing running.

pub mod fake_kube;
pub mod fleet;
pub mod impaired_link;
pub mod isolated_browser;
pub mod model_server;
pub mod netns;
pub mod private_engine;
pub mod recorder;
pub mod store_crash;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "correct-horse-battery";

/// A binary of the workspace, built next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps, the bench binary from target/<profile>.
    let own_dir = exe.parent().expect("executable directory");
    let candidates = [own_dir.join(name), own_dir.parent().map(|d| d.join(name)).unwrap_or_default()];
    let found = candidates.iter().find(|p| p.exists()).cloned();
    found
        .unwrap_or_else(|| panic!("{} is missing: run `cargo build --workspace --bins` first", candidates[1].display()))
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new().create(true).append(true).open(path).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// Kills a child process when dropped.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(command: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let child = command.stdin(Stdio::null()).stdout(log_file(&log)).stderr(log_file(&log)).spawn()?;
        Ok(Self { child: Some(child), log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait, as a clean stop.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTPS client that trusts exactly `ca_pem`.
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM")).expect("CA");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().expect("client")
}

/// Sends one HTTP/1.1 request over TLS the simplest way a client can: the whole request is
/// written before the answer is read (as Python's `requests` does). Returns the raw answer, or
/// the error the client saw.
pub fn send_whole_then_read(ca_pem: &str, port: u16, request: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM")).expect("CA");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let connection = rustls::ClientConnection::new(Arc::new(tls), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(connection, std::net::TcpStream::connect(("127.0.0.1", port))?);
    stream.write_all(request)?;
    stream.flush()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).or_else(|e| if answer.is_empty() { Err(e) } else { Ok(0) })?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub api_port: u16,
    pub quic_port: u16,
    /// The address the QUIC endpoint binds to (127.0.0.1 unless a test's namespace needs another).
    pub quic_ip: String,
    pub process: Process,
    pub extra_args: Vec<String>,
    http: Option<reqwest::Client>,
    token: Option<String>,
}

impl ControlPlane {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, free_tcp_port(), free_udp_port(), vec![]).await
    }

    pub async fn start_with(dir: &Path, api_port: u16, quic_port: u16, extra_args: Vec<String>) -> Self {
        Self::launch(dir, api_port, "127.0.0.1", quic_port, extra_args).await
    }

    /// Starts with the QUIC endpoint on `quic_ip` (an address of a test's namespace link).
    pub async fn start_on(dir: &Path, quic_ip: &str, extra_args: Vec<String>) -> Self {
        Self::launch(dir, free_tcp_port(), quic_ip, free_udp_port(), extra_args).await
    }

    async fn launch(dir: &Path, api_port: u16, quic_ip: &str, quic_port: u16, extra_args: Vec<String>) -> Self {
        let process = Self::spawn(dir, api_port, quic_ip, quic_port, &extra_args);
        let quic_ip = quic_ip.to_owned();
        let mut cp =
            Self { dir: dir.to_owned(), api_port, quic_port, quic_ip, process, extra_args, http: None, token: None };
        cp.wait_ready().await;
        cp
    }

    fn spawn(dir: &Path, api_port: u16, quic_ip: &str, quic_port: u16, extra_args: &[String]) -> Process {
        std::fs::create_dir_all(dir).expect("dir");
        let mut command = Command::new(bin("windflow"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg("--quic-listen")
            .arg(format!("{quic_ip}:{quic_port}"))
            .arg("--advertise")
            .arg("127.0.0.1")
            .args(extra_args)
            .env("WINDFLOW_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("WINDFLOW_AGENT_BINARY", bin("windflow-agent"));
        Process::spawn(&mut command, dir.join("control-plane.log")).expect("spawn windflow")
    }

    async fn wait_ready(&mut self) {
        let ca = std::fs::read_to_string(self.dir.join("data/ca.pem"));
        let ready = eventually(Duration::from_secs(20), || {
            let dir = self.dir.clone();
            let url = self.url("/ready");
            async move {
                let Ok(ca) = std::fs::read_to_string(dir.join("data/ca.pem")) else { return false };
                https_client(&ca).get(&url).send().await.is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        assert!(ready, "control plane did not become ready:\n{}", self.process.logs());
        let _ = ca;
        self.http = Some(https_client(&self.ca_pem()));
        self.token = None;
    }

    /// Stops (SIGTERM) and starts again on the same ports and data.
    pub async fn restart(&mut self) {
        self.process.terminate();
        self.process = Self::spawn(&self.dir, self.api_port, &self.quic_ip, self.quic_port, &self.extra_args);
        self.wait_ready().await;
    }

    /// Kills the process (SIGKILL, as a crash: nothing is flushed or said goodbye to) and starts
    /// it again on the same ports and data.
    pub async fn crash_and_restart(&mut self) {
        self.process.kill();
        self.process = Self::spawn(&self.dir, self.api_port, &self.quic_ip, self.quic_port, &self.extra_args);
        self.wait_ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api_port)
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/ca.pem")).expect("ca.pem")
    }

    pub fn http(&self) -> &reqwest::Client {
        self.http.as_ref().expect("started")
    }

    /// Logs in as the admin and returns a fresh access token.
    pub async fn admin_login(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Logs in as any user and returns a fresh access token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .call_with(
                None,
                Method::POST,
                "/api/v1/auth/login",
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login of {username}: {body}");
        body["access_token"].as_str().expect("access token").to_owned()
    }

    pub async fn access_token(&mut self) -> String {
        if let Some(token) = &self.token {
            return token.clone();
        }
        let token = self.admin_login().await;
        self.token = Some(token.clone());
        token
    }

    /// Calls the API as the admin, signing in again once the access token has expired (long
    /// runs such as the soak outlive it).
    pub async fn api(&mut self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let token = self.access_token().await;
        let path = format!("/api/v1{path}");
        let answer = self.call_with(Some(&token), method.clone(), &path, body.clone()).await;
        if answer.0 != StatusCode::UNAUTHORIZED {
            return answer;
        }
        self.token = None;
        let token = self.access_token().await;
        self.call_with(Some(&token), method, &path, body).await
    }

    /// Calls any route with an optional bearer token.
    pub async fn call_with(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http().request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::send(request, body).await
    }

    /// Calls an `/api/v1` route as `token`, acting in organisation `org` (id or name).
    pub async fn call_in(
        &self,
        token: &str,
        org: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = self
            .http()
            .request(method, self.url(&format!("/api/v1{path}")))
            .bearer_auth(token)
            .header("x-windflow-org", org);
        Self::send(request, body).await
    }

    async fn send(mut request: reqwest::RequestBuilder, body: Option<Value>) -> (StatusCode, Value) {
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Creates a join token; returns the API's answer (`id`, `token`, `command`, …).
    pub async fn join_token(&mut self, uses: u32, ttl_seconds: u64) -> Value {
        let (status, body) = self
            .api(Method::POST, "/targets/join-tokens", Some(json!({"uses": uses, "ttl_seconds": ttl_seconds})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn targets(&mut self) -> Vec<Value> {
        let (status, body) = self.api(Method::GET, "/targets?per_page=500", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    pub async fn target(&mut self, id: &str) -> Value {
        let (status, body) = self.api(Method::GET, &format!("/targets/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits for the end of the operation a 202 answer (`accepted`) started, and returns the
    /// deployment as it is then.
    pub async fn settled(&mut self, accepted: &Value) -> Value {
        let id = accepted["id"].as_str().expect("id").to_owned();
        let from = accepted["events_from"].as_u64().expect("events_from");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (_, events) = self.api(Method::GET, &format!("/deployments/{id}/events?after={from}"), None).await;
            if events["items"].as_array().expect("items").iter().any(|e| !e["outcome"].is_null()) {
                return self.api(Method::GET, &format!("/deployments/{id}"), None).await.1;
            }
            assert!(Instant::now() < deadline, "the operation never ended: {events:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every event message of a deployment, oldest first.
    pub async fn messages(&mut self, id: &str) -> Vec<String> {
        let (_, events) = self.api(Method::GET, &format!("/deployments/{id}/events"), None).await;
        events["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Waits until the target's agent has reported whether it can drive `platform`; that report.
    pub async fn capability(&mut self, target: &str, platform: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.target(target).await;
            let capabilities = found["capabilities"].as_array().cloned().unwrap_or_default();
            if let Some(capability) = capabilities.into_iter().find(|c| c["platform"] == platform) {
                return capability;
            }
            assert!(Instant::now() < deadline, "no {platform} capability reported: {found:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn is_connected(&mut self, id: &str) -> bool {
        self.target(id).await["connected"] == json!(true)
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.http().get(self.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }
}

impl ControlPlane {
    /// Enrolls a new agent in `dir/name` with a fresh one-use token and starts it.
    pub async fn start_agent(&mut self, dir: &Path, name: &str) -> Agent {
        self.start_agent_with(dir, name, &[]).await
    }

    /// As [`start_agent`](Self::start_agent), the agent running with `env` (e.g. its `DOCKER_HOST`).
    pub async fn start_agent_with(&mut self, dir: &Path, name: &str, env: &[(&str, &str)]) -> Agent {
        let token = self.join_token(1, 600).await;
        let mut agent = Agent::enroll(self, &dir.join(name), token["token"].as_str().expect("token")).expect("enrolls");
        agent.env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        agent.start();
        agent
    }

    /// Runs the `windflow` CLI with its session kept in `dir`: (succeeded, stdout, stderr).
    pub fn cli(&self, dir: &Path, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(bin("windflow"))
            .args(args)
            .env("WINDFLOW_CLI_CONFIG", dir.join("cli.json"))
            .env("WINDFLOW_PASSWORD", ADMIN_PASSWORD)
            .output()
            .expect("the CLI runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Logs the CLI in as the admin, with its session kept in `dir`.
    pub fn cli_login(&self, dir: &Path) {
        let ca = self.dir.join("data/ca.pem");
        let (ok, out, err) =
            self.cli(dir, &["login", "--server", &self.url(""), "--ca-file", ca.to_str().expect("path")]);
        assert!(ok, "login: {out}{err}");
    }
}

/// The stack the Docker tests deploy: `init` writes a page into a named volume and exits, `web`
/// (busybox httpd) serves it on `127.0.0.1:port` once `init` completed and reports healthy, and
/// `worker` prints `line` every second once `web` is healthy.
pub fn three_service_stack(image: &str, port: u16, line: &str) -> String {
    format!(
        r#"
services:
  init:
    image: {image}
    command: ["sh", "-c", "echo '<h1>deployed by windflow</h1>' > /www/index.html"]
    volumes: [site:/www]
  web:
    image: {image}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    ports: ["127.0.0.1:{port}:80"]
    volumes: ["site:/www:ro"]
    depends_on:
      init: {{ condition: service_completed_successfully }}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      retries: 10
    restart: unless-stopped
    stop_grace_period: 1s
  worker:
    image: {image}
    command: ["sh", "-c", "while true; do echo \"$$LINE\"; sleep 1; done"]
    environment:
      LINE: "{line}"
    depends_on:
      web: {{ condition: service_healthy }}
    restart: unless-stopped
    stop_grace_period: 1s
volumes:
  site: {{}}
"#
    )
}

/// How many containers (or VMs) of `service` the deployment view shows running.
pub fn running(deployment: &Value, service: &str) -> usize {
    let services = deployment["services"].as_array().expect("services");
    let Some(service) = services.iter().find(|s| s["name"] == service) else { return 0 };
    service["containers"].as_array().expect("containers").iter().filter(|c| c["state"] == "running").count()
}

/// An agent's data directory and, once started, its process.
#[derive(Debug)]
pub struct Agent {
    pub data_dir: PathBuf,
    pub process: Option<Process>,
    /// Environment the agent runs with, over the test's own.
    pub env: Vec<(String, String)>,
}

impl Agent {
    /// Runs `windflow-agent enroll` against the control plane with `token`.
    pub fn enroll(cp: &ControlPlane, data_dir: &Path, token: &str) -> anyhow::Result<Self> {
        let ca_file = cp.dir.join("data/ca.pem");
        let output = Command::new(bin("windflow-agent"))
            .arg("enroll")
            .arg("--server")
            .arg(cp.url(""))
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--data-dir")
            .arg(data_dir)
            .env("WINDFLOW_JOIN_TOKEN", token)
            .output()
            .context("running windflow-agent enroll")?;
        if !output.status.success() {
            bail!(
                "enroll failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self { data_dir: data_dir.to_owned(), process: None, env: Vec::new() })
    }

    pub fn id(&self) -> String {
        let identity: Value =
            serde_json::from_str(&std::fs::read_to_string(self.data_dir.join("agent.json")).expect("agent.json"))
                .expect("json");
        identity["agent_id"].as_str().expect("agent_id").to_owned()
    }

    pub fn start(&mut self) {
        self.start_with(Command::new(bin("windflow-agent")));
    }

    /// Starts the agent inside a test's namespace.
    pub fn start_in(&mut self, netns: &netns::Netns) {
        self.start_with(netns.command(&bin("windflow-agent")));
    }

    fn start_with(&mut self, mut command: Command) {
        command.arg("run").arg("--data-dir").arg(&self.data_dir).envs(self.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(Process::spawn(&mut command, self.data_dir.join("agent.log")).expect("spawn agent"));
    }

    /// Points the agent at another address of the control plane's QUIC endpoint (the one its
    /// namespace reaches); the server name it checks stays the same.
    pub fn reach_control_plane_at(&self, endpoint: &str) {
        let path = self.data_dir.join("agent.json");
        let mut identity: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("agent.json")).expect("json");
        identity["quic_endpoint"] = json!(endpoint);
        std::fs::write(&path, serde_json::to_vec_pretty(&identity).expect("json")).expect("write agent.json");
    }

    /// Every line of the agent's job journal.
    pub fn journal(&self) -> Vec<windflow_agent::journal::Line> {
        windflow_agent::journal::read_lines(&self.data_dir.join("journal")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }
}

/// A raw QUIC client for refusal tests: optional client certificate, our CA as trust root.
pub fn quic_client(
    ca_pem: &str,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA")).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut tls = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"windflow/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// A client key and certificate for `common_name`, signed by the CA in `ca_dir` (ca.pem and
/// ca.key.pem), valid between the given offsets from now.
pub fn certificate_signed_by(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    valid_from: time::Duration,
    valid_to: time::Duration,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + valid_from;
    params.not_after = now + valid_to;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("signed");
    (vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).expect("key der"))
}

/// A self-made CA and a client certificate from it: a stranger's credentials.
pub fn foreign_certificate(common_name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Foreign CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    certificate_signed_by(
        &ca_cert.pem(),
        &ca_key.serialize_pem(),
        common_name,
        time::Duration::hours(-1),
        time::Duration::hours(1),
    )
}

/// The image every Docker test uses: `FROM scratch` with Debian's static busybox, built here
/// once per machine (no registry is reachable). Its name is returned.
pub fn busybox_image() -> String {
    const IMAGE: &str = "windflow-test/busybox:1";
    let present =
        Command::new("docker").args(["image", "inspect", IMAGE]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if present.is_ok_and(|s| s.success()) {
        return IMAGE.to_owned();
    }
    let context = tempfile::tempdir().expect("build context");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (scripts/bootstrap)");
    std::fs::copy(busybox, context.path().join("busybox")).expect("copy busybox");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n",
    )
    .expect("Dockerfile");
    let output = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(context.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build runs");
    assert!(output.status.success(), "building {IMAGE}: {}", String::from_utf8_lossy(&output.stderr));
    IMAGE.to_owned()
}

/// Removes everything of these Compose projects from the Docker engine when dropped, so that a
/// test that fails half-way leaves no containers or networks behind.
pub struct ProjectsCleanup(pub Vec<String>);

impl Drop for ProjectsCleanup {
    fn drop(&mut self) {
        for project in &self.0 {
            let label = format!("label=com.docker.compose.project={project}");
            for (kind, remove) in
                [("container", vec!["rm", "-f", "-v"]), ("network", vec!["rm"]), ("volume", vec!["rm", "-f"])]
            {
                let mut list = Command::new("docker");
                list.args([kind, "ls", "-q", "--filter", &label]);
                if kind == "container" {
                    list.arg("--all");
                }
                let Ok(listed) = list.output() else { continue };
                let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker").arg(kind).args(&remove).args(&ids).output();
                }
            }
        }
    }
}

/// Names of Docker objects (containers, networks, volumes) labelled with a Compose project.
pub fn docker_objects(project: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let mut names = Vec::new();
    for (kind, format) in [("container", "{{.Names}}"), ("network", "{{.Name}}"), ("volume", "{{.Name}}")] {
        let mut command = Command::new("docker");
        command.args([kind, "ls", "--filter", &label, "--format", format]);
        if kind == "container" {
            command.arg("--all");
        }
        let output = command.output().expect("docker ls");
        names.extend(String::from_utf8_lossy(&output.stdout).lines().map(|l| format!("{kind}:{l}")));
    }
    names
}

/// The Swarm test engine `scripts/test` starts (`ensure_swarm_dockerd` in `scripts/lib.sh`):
/// its Docker host and the address its published ports answer on.
pub fn swarm_engine() -> (String, String) {
    let host = std::env::var("WINDFLOW_SWARM_DOCKER_HOST")
        .expect("WINDFLOW_SWARM_DOCKER_HOST is set by scripts/test, which starts the Swarm test engine");
    let address = std::env::var("WINDFLOW_SWARM_ADDRESS").unwrap_or_else(|_| "10.231.0.2".into());
    (host, address)
}

/// `docker` against the Swarm test engine.
pub fn swarm_docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").arg("-H").arg(swarm_engine().0).args(args).output().expect("docker runs")
}

/// [`busybox_image`], loaded into the Swarm test engine too (it has no registry either).
pub fn swarm_busybox_image() -> String {
    let image = busybox_image();
    if swarm_docker(&["image", "inspect", &image]).status.success() {
        return image;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("docker save {image} | docker -H {} load -q", swarm_engine().0))
        .status()
        .expect("sh runs");
    assert!(status.success(), "loading {image} into the Swarm test engine");
    image
}

/// Names of a stack's objects on the Swarm test engine (services, containers, networks,
/// secrets, configs, volumes), by `docker stack`'s namespace label.
pub fn swarm_objects(project: &str) -> Vec<String> {
    let label = format!("label=com.docker.stack.namespace={project}");
    let mut names = Vec::new();
    for kind in ["service", "container", "network", "secret", "config", "volume"] {
        let format = if kind == "container" { "{{.Names}}" } else { "{{.Name}}" };
        let mut args = vec![kind, "ls", "--filter", &label, "--format", format];
        if kind == "container" {
            args.push("--all");
        }
        let output = swarm_docker(&args);
        names.extend(String::from_utf8_lossy(&output.stdout).lines().map(|l| format!("{kind}:{l}")));
    }
    names
}
