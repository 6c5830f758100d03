//! The CLI client: `windflow login`, `windflow token …`, `windflow targets …`. It talks to the
//! REST API like any other client and keeps its session in a file readable by the user only.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where the CLI keeps its server address, CA and tokens.
pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os("WINDFLOW_CLI_CONFIG") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/windflow/cli.json")
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CliConfig {
    pub server: String,
    pub ca_pem: String,
    pub access_token: String,
    pub refresh_token: String,
    /// The organisation requests act in (`windflow orgs use`); WINDFLOW_ORG overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    config: CliConfig,
}

fn http_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("reading the CA certificate")?)?;
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).build()?)
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        bail!("{status}: {message}");
    }
    Ok(body)
}

impl Client {
    /// Signs in with a password, and a second factor when the account has one: `totp_code`,
    /// or a code typed at the prompt when standard input is a terminal.
    pub async fn login(
        server: &str,
        ca_file: &std::path::Path,
        username: &str,
        password: &str,
        totp_code: Option<&str>,
    ) -> anyhow::Result<Self> {
        let ca_pem = std::fs::read_to_string(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
        let http = http_client(&ca_pem)?;
        let server = server.trim_end_matches('/').to_owned();
        let response = http
            .post(format!("{server}/api/v1/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let tokens = if body["error"]["code"] == "second_factor_required" {
            let code = match totp_code {
                Some(code) => code.to_owned(),
                None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    eprint!("two-factor code (or a recovery code): ");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim().to_owned()
                }
                None => bail!("{username} has two-factor authentication: pass --totp-code or set WINDFLOW_TOTP_CODE"),
            };
            let mfa_token = body["error"]["details"]["mfa_token"].as_str().unwrap_or_default();
            answer(
                http.post(format!("{server}/api/v1/auth/login/totp"))
                    .json(&json!({"mfa_token": mfa_token, "code": code}))
                    .send()
                    .await?,
            )
            .await?
        } else if !status.is_success() {
            bail!("{status}: {}", body["error"]["message"].as_str().unwrap_or("no details"));
        } else {
            body
        };
        let config = CliConfig {
            server,
            ca_pem,
            access_token: tokens["access_token"].as_str().unwrap_or_default().into(),
            refresh_token: tokens["refresh_token"].as_str().unwrap_or_default().into(),
            org: None,
        };
        let client = Self { http, config };
        client.save()?;
        Ok(client)
    }

    /// Uses an API token instead of a password session; it is checked once here.
    pub async fn login_with_token(server: &str, ca_file: &std::path::Path, token: &str) -> anyhow::Result<Value> {
        let ca_pem = std::fs::read_to_string(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
        let http = http_client(&ca_pem)?;
        let server = server.trim_end_matches('/').to_owned();
        let me = answer(http.get(format!("{server}/api/v1/auth/me")).bearer_auth(token).send().await?).await?;
        let config =
            CliConfig { server, ca_pem, access_token: token.to_owned(), refresh_token: String::new(), org: None };
        Self { http, config }.save()?;
        Ok(me)
    }

    pub fn load() -> anyhow::Result<Self> {
        let path = config_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("not logged in ({} missing); run `windflow login` first", path.display()))?;
        let config: CliConfig =
            serde_json::from_str(&text).with_context(|| format!("{} is corrupt; log in again", path.display()))?;
        Ok(Self { http: http_client(&config.ca_pem)?, config })
    }

    /// Makes later commands act in this organisation (an id or a name); `None` goes back to the
    /// default one.
    pub fn use_org(&mut self, org: Option<String>) -> anyhow::Result<()> {
        self.config.org = org;
        self.save()
    }

    /// A request to the API with the session's token and organisation.
    fn build(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.config.server))
            .bearer_auth(&self.config.access_token);
        match std::env::var("WINDFLOW_ORG").ok().filter(|o| !o.is_empty()).or_else(|| self.config.org.clone()) {
            Some(org) => request.header("x-windflow-org", org),
            None => request,
        }
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = config_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::fsutil::write_private(&path, serde_json::to_string_pretty(&self.config)?.as_bytes())?;
        Ok(())
    }

    /// Sends a request; on an expired access token, refreshes once and retries.
    pub async fn request(&mut self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        for attempt in 0..2 {
            let mut request = self.build(method.clone(), path);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED
                && attempt == 0
                && !self.config.refresh_token.is_empty()
            {
                self.refresh().await?;
                continue;
            }
            if response.status() == reqwest::StatusCode::NO_CONTENT {
                return Ok(Value::Null);
            }
            return answer(response).await;
        }
        bail!("not authorised; log in again")
    }

    /// Opens a Server-Sent Events stream and calls `on_event(event, data)` for each event until
    /// it returns false or the stream ends.
    pub async fn follow(&mut self, path: &str, mut on_event: impl FnMut(&str, &Value) -> bool) -> anyhow::Result<()> {
        use futures_util::StreamExt;
        let mut response = None;
        for attempt in 0..2 {
            let sent = self.build(reqwest::Method::GET, path).send().await?;
            if sent.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.refresh().await?;
                continue;
            }
            if !sent.status().is_success() {
                answer(sent).await?;
                bail!("the stream could not be opened");
            }
            response = Some(sent);
            break;
        }
        let Some(response) = response else { bail!("not authorised; log in again") };
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let mut event = String::from("message");
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let value: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if !on_event(&event, &value) {
                        return Ok(());
                    }
                } else if line.is_empty() {
                    event = "message".into();
                }
            }
        }
        Ok(())
    }

    async fn refresh(&mut self) -> anyhow::Result<()> {
        let tokens = answer(
            self.http
                .post(format!("{}/api/v1/auth/refresh", self.config.server))
                .json(&json!({"refresh_token": self.config.refresh_token}))
                .send()
                .await?,
        )
        .await
        .context("the session expired; log in again")?;
        self.config.access_token = tokens["access_token"].as_str().unwrap_or_default().into();
        self.config.refresh_token = tokens["refresh_token"].as_str().unwrap_or_default().into();
        self.save()
    }
}
