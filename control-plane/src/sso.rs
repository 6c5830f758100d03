//! Single sign-on with OpenID Connect, configured per organisation: the authorization-code flow
//! with PKCE and a nonce (openidconnect), ID-token validation (signature from the provider's
//! JWKS, issuer, audience, expiry, nonce), users made on their first sign-in, and the provider's
//! groups claim mapped to a role in the organisation at every sign-in.
//!
//! Flow: [`Sso::begin`] answers the provider's authorization URL and remembers the attempt (state
//! → PKCE verifier, nonce) for ten minutes; the provider sends the browser back to the callback,
//! where [`Sso::finish`] checks everything, signs the user in and answers a single-use exchange
//! code (60 s) that the dashboard trades for tokens ([`Sso::exchange`]) — tokens never travel in
//! a URL. Attempts and exchange codes live in memory: a restart only cancels sign-ins in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Auth, AuthError, SsoIdentity, Tokens, User};
use crate::orgs::{self, Membership, Org, Role};
use crate::sealing::MasterKey;
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// How long a sign-in may stay at the provider.
const ATTEMPT_TTL: Duration = Duration::from_secs(10 * 60);
/// How long the dashboard has to trade an exchange code for tokens.
const EXCHANGE_TTL: Duration = Duration::from_secs(60);
/// Attempts kept at most, so that anonymous starts cannot fill the memory.
const MAX_ATTEMPTS: usize = 10_000;
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// An organisation's identity provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SsoConfig {
    pub org_id: Uuid,
    /// The provider's issuer URL (discovery is at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// Sealed for `sso:<org id>`.
    pub client_secret_sealed: String,
    /// Asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The ID-token claim that lists the user's groups (`groups` by default).
    pub groups_claim: String,
    /// Groups and the role each gives; the highest role among a user's groups wins.
    pub role_mapping: Vec<GroupRole>,
    /// The role of users in none of the mapped groups; without one they are refused.
    pub default_role: Option<Role>,
    /// Extra CA certificates (PEM) to trust for this provider, e.g. a company CA.
    pub ca_pem: Option<String>,
    pub enabled: bool,
    pub updated_by: String,
    pub updated_at_unix_s: i64,
}

impl Record for SsoConfig {
    const TABLE: Table = Table::SsoConfigs;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.org_id.as_bytes().to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupRole {
    pub group: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("single sign-on is not configured for this organisation")]
    NotConfigured,
    #[error("{field}: {message}")]
    BadConfig { field: &'static str, message: String },
    #[error("the identity provider: {0}")]
    Provider(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A sign-in waiting at the provider.
struct Attempt {
    org_id: Uuid,
    pkce_verifier: String,
    nonce: String,
    return_to: String,
    started: Instant,
}

/// A finished sign-in.
#[derive(Debug)]
pub struct SignedIn {
    pub user: User,
    pub org_id: Uuid,
    pub role: Role,
    /// Where the dashboard goes next, with `#sso=<exchange code>`.
    pub return_to: String,
    pub exchange_code: String,
}

pub struct Sso {
    store: Arc<dyn Store>,
    master_key: Arc<MasterKey>,
    redirect_uri: String,
    attempts: Mutex<HashMap<String, Attempt>>,
    exchanges: Mutex<HashMap<String, (Tokens, Instant)>>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sso")
    }
}

fn secret_context(org_id: Uuid) -> String {
    format!("sso:{org_id}")
}

/// Whether an issuer URL is acceptable: HTTPS, or HTTP on the loopback interface only (a
/// provider on the same machine; nothing else may see the exchange in clear).
pub fn check_issuer(issuer: &str) -> Result<(), SsoError> {
    let bad = |message: &str| SsoError::BadConfig { field: "issuer", message: message.into() };
    let url = reqwest::Url::parse(issuer).map_err(|e| bad(&format!("not a URL: {e}")))?;
    match (url.scheme(), url.host_str()) {
        ("https", Some(_)) => Ok(()),
        ("http", Some("127.0.0.1" | "localhost" | "[::1]")) => Ok(()),
        ("http", _) => Err(bad("use https (plain http is accepted for a provider on 127.0.0.1 only)")),
        _ => Err(bad("use an https URL")),
    }
}

/// A user name for someone the provider names `preferred`: our allowed characters only.
fn username_from(preferred: &str) -> String {
    let cleaned: String = preferred
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
        .take(48)
        .collect();
    if cleaned.is_empty() { "sso-user".into() } else { cleaned }
}

/// Whether the provider says the sign-in used more than a password (RFC 8176 `amr` values).
fn passed_second_factor(amr: &[String]) -> bool {
    amr.iter().any(|m| matches!(m.as_str(), "mfa" | "otp" | "hwk" | "swk" | "sms" | "sc" | "tel"))
}

/// The claims of an ID token whose signature was already verified.
fn verified_payload(id_token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    }
}

/// The role `groups` give under `config`, if any.
pub fn role_for(config: &SsoConfig, groups: &[String]) -> Option<Role> {
    config
        .role_mapping
        .iter()
        .filter(|m| groups.iter().any(|g| g == &m.group))
        .map(|m| m.role)
        .max()
        .or(config.default_role)
}

impl Sso {
    pub fn new(store: Arc<dyn Store>, master_key: Arc<MasterKey>, public_url: &str) -> Self {
        Self {
            store,
            master_key,
            redirect_uri: format!("{public_url}/api/v1/auth/sso/callback"),
            attempts: Mutex::default(),
            exchanges: Mutex::default(),
        }
    }

    /// The URL providers send browsers back to; register it with the provider.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    pub fn config(&self, org_id: Uuid) -> Result<Option<SsoConfig>, StoreError> {
        self.store.load(org_id.as_bytes())
    }

    pub fn save(&self, config: &SsoConfig) -> Result<(), StoreError> {
        self.store.save(config)
    }

    pub fn delete(&self, org_id: Uuid) -> Result<(), StoreError> {
        self.store.delete(Table::SsoConfigs, org_id.as_bytes())
    }

    /// Every enabled configuration, for the sign-in page.
    pub fn enabled(&self) -> Result<Vec<SsoConfig>, StoreError> {
        Ok(self.store.load_all::<SsoConfig>()?.into_iter().filter(|c| c.enabled).collect())
    }

    pub fn seal_secret(&self, org_id: Uuid, secret: &str) -> String {
        self.master_key.seal(&secret_context(org_id), secret.as_bytes())
    }

    fn http(config: &SsoConfig) -> Result<reqwest::Client, SsoError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = &config.ca_pem {
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| SsoError::BadConfig { field: "ca_pem", message: e.to_string() })?;
                roots.add(cert).map_err(|e| SsoError::BadConfig { field: "ca_pem", message: e.to_string() })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| SsoError::Provider(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // Following redirects would let a provider point us anywhere (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(|e| SsoError::Provider(e.to_string()))
    }

    /// Discovers the provider: its endpoints and signing keys.
    pub async fn discover(&self, config: &SsoConfig) -> Result<CoreProviderMetadata, SsoError> {
        check_issuer(&config.issuer)?;
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| SsoError::BadConfig { field: "issuer", message: e.to_string() })?;
        CoreProviderMetadata::discover_async(issuer, &Self::http(config)?)
            .await
            .map_err(|e| SsoError::Provider(format!("discovery at {} failed: {e}", config.issuer)))
    }

    fn client_secret(&self, config: &SsoConfig) -> Result<ClientSecret, SsoError> {
        let secret = self
            .master_key
            .open_string(&secret_context(config.org_id), &config.client_secret_sealed)
            .map_err(|_| SsoError::Provider("the client secret cannot be opened with this master key".into()))?;
        Ok(ClientSecret::new(secret))
    }

    fn redirect_url(&self) -> Result<RedirectUrl, SsoError> {
        RedirectUrl::new(self.redirect_uri.clone()).map_err(|e| SsoError::Provider(e.to_string()))
    }

    /// Starts a sign-in for `org`: answers the provider's authorization URL.
    pub async fn begin(&self, org: &Org, return_to: &str) -> Result<String, SsoError> {
        let config = self.config(org.id)?.filter(|c| c.enabled).ok_or(SsoError::NotConfigured)?;
        let metadata = self.discover(&config).await?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(self.client_secret(&config)?),
        )
        .set_redirect_uri(self.redirect_url()?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        for scope in &config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        attempts.retain(|_, a| a.started.elapsed() < ATTEMPT_TTL);
        if attempts.len() >= MAX_ATTEMPTS {
            return Err(SsoError::Refused("too many sign-ins in progress; try again in a few minutes".into()));
        }
        attempts.insert(
            state.secret().clone(),
            Attempt {
                org_id: org.id,
                pkce_verifier: verifier.secret().clone(),
                nonce: nonce.secret().clone(),
                return_to: return_to.to_owned(),
                started: Instant::now(),
            },
        );
        Ok(url.to_string())
    }

    /// Where a refused callback sends the browser back to, when the attempt is known.
    pub fn return_to(&self, state: &str) -> Option<String> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).get(state).map(|a| a.return_to.clone())
    }

    /// Drops the attempt of a callback the provider refused.
    pub fn abandon(&self, state: &str) {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).remove(state);
    }

    /// Finishes a sign-in at the callback: the code for tokens, the ID token checked, the user
    /// made or found, their role set from their groups, a session started.
    pub async fn finish(&self, auth: &Auth, state: &str, code: &str) -> Result<SignedIn, SsoError> {
        let attempt = self
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
            .filter(|a| a.started.elapsed() < ATTEMPT_TTL)
            .ok_or_else(|| SsoError::Refused("this sign-in is unknown or expired; start again".into()))?;
        let config = self.config(attempt.org_id)?.filter(|c| c.enabled).ok_or(SsoError::NotConfigured)?;
        let http = Self::http(&config)?;
        let metadata = self.discover(&config).await?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(self.client_secret(&config)?),
        )
        .set_redirect_uri(self.redirect_url()?);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| SsoError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(attempt.pkce_verifier))
            .request_async(&http)
            .await
            .map_err(|e| SsoError::Refused(format!("the provider did not exchange the code: {e}")))?;
        use openidconnect::TokenResponse;
        let id_token = response.id_token().ok_or_else(|| SsoError::Refused("the provider sent no ID token".into()))?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(attempt.nonce))
            .map_err(|e| SsoError::Refused(format!("the ID token does not verify: {e}")))?;
        let payload = verified_payload(&id_token.to_string()).unwrap_or_default();
        let groups = strings(&payload[config.groups_claim.as_str()]);
        let identity = SsoIdentity { issuer: config.issuer.clone(), subject: claims.subject().to_string() };
        let preferred = claims
            .preferred_username()
            .map(|u| u.to_string())
            .or_else(|| claims.email().map(|e| e.to_string()))
            .unwrap_or_else(|| identity.subject.clone());
        let role = role_for(&config, &groups).ok_or_else(|| {
            SsoError::Refused(format!("{preferred} is in no group that gives a role in this organisation"))
        })?;
        let user = self.user_for(auth, &identity, &preferred)?;
        if user.disabled {
            return Err(AuthError::Disabled.into());
        }
        self.set_role(&user, attempt.org_id, role)?;
        let tokens = auth.start_session(&user, passed_second_factor(&strings(&payload["amr"])))?;
        let exchange_code = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        };
        let mut exchanges = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        exchanges.retain(|_, (_, made)| made.elapsed() < EXCHANGE_TTL);
        exchanges.insert(exchange_code.clone(), (tokens, Instant::now()));
        Ok(SignedIn { user, org_id: attempt.org_id, role, return_to: attempt.return_to, exchange_code })
    }

    /// Trades an exchange code for the session's tokens, once.
    pub fn exchange(&self, code: &str) -> Option<Tokens> {
        let (tokens, made) = self.exchanges.lock().unwrap_or_else(|e| e.into_inner()).remove(code)?;
        (made.elapsed() < EXCHANGE_TTL).then_some(tokens)
    }

    /// The account of this provider identity, made on its first sign-in.
    fn user_for(&self, auth: &Auth, identity: &SsoIdentity, preferred: &str) -> Result<User, SsoError> {
        if let Some(user) = auth.users()?.into_iter().find(|u| u.sso.as_ref() == Some(identity)) {
            return Ok(user);
        }
        let base = username_from(preferred);
        // A local account may hold the name already: never merge with it, pick another name.
        for attempt in 0..5u32 {
            let name = if attempt == 0 { base.clone() } else { format!("{base}-{:04x}", rand::random::<u16>()) };
            match auth.create_sso_user(&name, identity.clone()) {
                Ok(user) => {
                    tracing::info!(user = %user.username, issuer = %identity.issuer, "user made by single sign-on");
                    return Ok(user);
                }
                Err(AuthError::UserExists(_)) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SsoError::Refused("no free user name for this account".into()))
    }

    /// Gives the user the role their groups map to; the last owner keeps ownership.
    fn set_role(&self, user: &User, org_id: Uuid, role: Role) -> Result<(), SsoError> {
        let store = self.store.as_ref();
        let current = orgs::membership(store, org_id, user.id)?;
        if current.as_ref().is_some_and(|m| m.role == role) {
            return Ok(());
        }
        let membership = Membership {
            org_id,
            user_id: user.id,
            username: user.username.clone(),
            role,
            since_unix_s: current.map_or_else(crate::auth::now_unix_s, |m| m.since_unix_s),
        };
        match orgs::set_member(store, &membership) {
            Ok(()) => Ok(()),
            Err(orgs::OrgError::LastOwner) => {
                tracing::warn!(user = %user.username, "single sign-on would demote the last owner; kept as owner");
                Ok(())
            }
            Err(orgs::OrgError::Store(e)) => Err(e.into()),
            Err(other) => Err(SsoError::Refused(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mapping: &[(&str, Role)], default_role: Option<Role>) -> SsoConfig {
        SsoConfig {
            org_id: Uuid::nil(),
            issuer: "https://id.example.com".into(),
            client_id: "windflow".into(),
            client_secret_sealed: String::new(),
            scopes: vec![],
            groups_claim: "groups".into(),
            role_mapping: mapping.iter().map(|(g, r)| GroupRole { group: (*g).into(), role: *r }).collect(),
            default_role,
            ca_pem: None,
            enabled: true,
            updated_by: "admin".into(),
            updated_at_unix_s: 0,
        }
    }

    #[test]
    fn the_highest_role_among_the_groups_wins_and_the_default_catches_the_rest() {
        let c = config(&[("ops", Role::Operator), ("admins", Role::Admin), ("all", Role::Viewer)], None);
        let groups = |g: &[&str]| g.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(role_for(&c, &groups(&["all", "admins"])), Some(Role::Admin));
        assert_eq!(role_for(&c, &groups(&["ops"])), Some(Role::Operator));
        assert_eq!(role_for(&c, &groups(&["contractors"])), None);
        let with_default = config(&[("ops", Role::Operator)], Some(Role::Viewer));
        assert_eq!(role_for(&with_default, &groups(&[])), Some(Role::Viewer));
    }

    #[test]
    fn issuers_are_https_or_loopback_http() {
        for good in ["https://id.example.com/realms/main", "http://127.0.0.1:8080", "http://localhost:9000/x"] {
            assert!(check_issuer(good).is_ok(), "{good}");
        }
        for bad in ["http://id.example.com", "ftp://x", "not a url", "http://10.0.0.1"] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn provider_names_become_valid_user_names_and_amr_tells_a_second_factor() {
        assert_eq!(username_from("Jane Doe <jane@example.com>"), "JaneDoejane@example.com");
        assert_eq!(username_from("名前"), "sso-user");
        assert!(passed_second_factor(&["pwd".into(), "otp".into()]));
        assert!(!passed_second_factor(&["pwd".into()]));
    }
}
