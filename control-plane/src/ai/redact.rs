//! What never leaves the control plane for a language model: the values of a stack's secret
//! variables, and anything that looks like a credential (keys, tokens, private keys, passwords
//! written into a file or a URL). Every prompt goes through [`Redactor::redact`] on its way out.

use std::sync::LazyLock;

use regex::Regex;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Secret values shorter than this are not searched for: replacing every `1` or `on` of a prompt
/// would say more about the value than leaving it.
const MIN_SECRET_LEN: usize = 4;

/// Shapes of credentials, replaced whole.
static CREDENTIALS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        // OpenAI, Anthropic and similar keys.
        r"\bsk-[A-Za-z0-9_-]{16,}",
        // AWS access key ids.
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        // GitHub, GitLab and Slack tokens.
        r"\bgh[pousr]_[A-Za-z0-9]{20,}",
        r"\bglpat-[A-Za-z0-9_-]{20,}",
        r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
        // JSON Web Tokens.
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ]
    .iter()
    .map(|pattern| Regex::new(pattern).expect("a valid pattern"))
    .collect()
});

/// `password=…`, `API_KEY: …`, `"token": "…"`: the name stays, the value goes. A `${VARIABLE}`
/// reference is not a value and stays.
static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(\b[A-Za-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)[A-Za-z0-9_.-]*"?\s*[:=]\s*"?)([^\s"',;}{]+)"#,
    )
    .expect("a valid pattern")
});

/// `Bearer …` in a header that was logged.
static BEARER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/-]{12,}=*").expect("a valid pattern"));

/// The password of `scheme://user:password@host`.
static URL_PASSWORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([a-z][a-z0-9+.-]*://[^\s:/@]+:)([^\s@/]+)(@)").expect("a valid pattern"));

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Known secret values, longest first so that a value containing another goes whole.
    values: Vec<String>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= MIN_SECRET_LEN).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for value in &self.values {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), REDACTED);
            }
        }
        for pattern in CREDENTIALS.iter() {
            text = pattern.replace_all(&text, REDACTED).into_owned();
        }
        text = ASSIGNMENT
            .replace_all(&text, |c: &regex::Captures<'_>| {
                let value = &c[2];
                if value.starts_with('$') || value == REDACTED {
                    c[0].to_owned()
                } else {
                    format!("{}{REDACTED}", &c[1])
                }
            })
            .into_owned();
        text = BEARER.replace_all(&text, format!("${{1}}{REDACTED}")).into_owned();
        URL_PASSWORD.replace_all(&text, format!("${{1}}{REDACTED}${{3}}")).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secret_values_are_replaced_wherever_they_appear() {
        let redactor = Redactor::new(["hunter2-but-longer".to_owned(), "ab".to_owned()]);
        let text = "connecting with hunter2-but-longer failed; ab is too short to matter";
        assert_eq!(redactor.redact(text), "connecting with [redacted] failed; ab is too short to matter");
    }

    #[test]
    fn credential_shapes_are_replaced_without_being_told() {
        let redactor = Redactor::default();
        for secret in [
            "sk-proj-abcdefghijklmnopqrstuvwx",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_abcdefghijklmnopqrstuvwxyz0123",
            "xoxb-1234567890-abcdefghij",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ] {
            let redacted = redactor.redact(&format!("value {secret} seen"));
            assert_eq!(redacted, "value [redacted] seen", "{secret}");
        }
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        assert_eq!(redactor.redact(pem), REDACTED);
    }

    #[test]
    fn secret_assignments_keep_their_name_and_lose_their_value() {
        let redactor = Redactor::default();
        assert_eq!(redactor.redact("MYSQL_ROOT_PASSWORD: s3cr3t"), "MYSQL_ROOT_PASSWORD: [redacted]");
        assert_eq!(redactor.redact("- API_KEY=abc123"), "- API_KEY=[redacted]");
        assert_eq!(redactor.redact(r#"{"token": "abc123"}"#), r#"{"token": "[redacted]"}"#);
        assert_eq!(redactor.redact("Authorization: Bearer abcdef123456789"), "Authorization: Bearer [redacted]");
        assert_eq!(
            redactor.redact("DATABASE_URL=postgres://app:pa55word@db:5432/app"),
            "DATABASE_URL=postgres://app:[redacted]@db:5432/app"
        );
    }

    #[test]
    fn references_and_ordinary_text_are_left_alone() {
        let redactor = Redactor::default();
        for text in [
            "MYSQL_PASSWORD: ${DB_PASSWORD}",
            "image: mysql:8.4",
            "password authentication failed for user \"app\"",
            "the token expired",
        ] {
            assert_eq!(redactor.redact(text), text);
        }
    }
}
