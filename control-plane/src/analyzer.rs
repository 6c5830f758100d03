//! The rule analyser: what a stack does that a careful operator would not, found without a
//! language model — each finding with its severity, where it is (`services.web.image`) and how
//! to fix it. Deterministic: the same stack always gets the same findings, in the same order.

use std::sync::LazyLock;

use serde::Serialize;
use utoipa::ToSchema;
use windflow_protocol::stack::{MountSource, RestartPolicy, ServiceSpec, StackSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = FindingSeverity)]
pub enum Severity {
    /// Gives the host or the data away: fix before running it.
    High,
    /// Makes the service fragile or exposed.
    Medium,
    /// Worth doing.
    Low,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = AnalyzerFinding)]
pub struct Finding {
    /// The rule's name, stable across versions: `unpinned-image`, `privileged`, …
    pub rule: &'static str,
    pub severity: Severity,
    /// Where in the Compose file: `services.web.image`.
    pub path: String,
    pub message: String,
    pub fix: String,
}

/// Environment variable names that hold secrets.
static SECRET_NAME: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"(?i)(password|passwd|secret|token|api_?key|private_?key|access_?key|credentials)")
        .expect("a valid pattern")
});

/// Whether an environment or variable name says it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    SECRET_NAME.is_match(name)
}

/// Every finding of a stack: `compose` is the file as written (to tell a literal value from a
/// `${VARIABLE}`), `spec` what it means.
pub fn analyze(compose: &str, spec: &StackSpec) -> Vec<Finding> {
    let raw: serde_yaml::Value = serde_yaml::from_str(compose).unwrap_or(serde_yaml::Value::Null);
    let mut findings: Vec<Finding> = spec
        .services
        .iter()
        .flat_map(|service| {
            let written = raw.get("services").and_then(|s| s.get(service.name.as_str()));
            service_findings(service, written)
        })
        .collect();
    findings.sort_by(|a, b| (a.severity, &a.path, a.rule).cmp(&(b.severity, &b.path, b.rule)));
    findings
}

fn finding(rule: &'static str, severity: Severity, path: String, message: String, fix: &str) -> Finding {
    Finding { rule, severity, path, message, fix: fix.to_owned() }
}

/// Whether an image reference names a version: a tag other than `latest`, or a digest.
fn is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest")
}

/// The environment values as written, by name: `KEY: value` maps and `KEY=value` lists.
fn written_environment(service: Option<&serde_yaml::Value>) -> Vec<(String, String)> {
    match service.and_then(|s| s.get("environment")) {
        Some(serde_yaml::Value::Mapping(map)) => map
            .iter()
            .filter_map(|(k, v)| {
                let value = match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.as_str()?.to_owned(), value))
            })
            .collect(),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| {
                let (k, v) = item.as_str()?.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn service_findings(service: &ServiceSpec, written: Option<&serde_yaml::Value>) -> Vec<Finding> {
    let at = |field: &str| format!("services.{}.{field}", service.name);
    let name = &service.name;
    let mut found = Vec::new();
    if !is_pinned(&service.image) {
        found.push(finding(
            "unpinned-image",
            Severity::Medium,
            at("image"),
            format!("{name} runs {} with no version: every pull may bring another image", service.image),
            "name a version (nginx:1.27) or a digest (nginx@sha256:…)",
        ));
    }
    if service.privileged {
        found.push(finding(
            "privileged",
            Severity::High,
            at("privileged"),
            format!("{name} is privileged: it can do anything the host's root can"),
            "remove privileged: true; add only the capabilities it needs with cap_add",
        ));
    }
    for (index, mount) in service.mounts.iter().enumerate() {
        if let MountSource::Bind(source) = &mount.source
            && source.ends_with("docker.sock")
        {
            found.push(finding(
                "docker-socket",
                Severity::High,
                at(&format!("volumes[{index}]")),
                format!("{name} mounts the Docker socket ({source}): it controls every container on the host"),
                "do not mount the socket; if it must read the engine, put a filtering proxy in front",
            ));
        }
    }
    for (key, value) in written_environment(written) {
        if SECRET_NAME.is_match(&key) && !value.is_empty() && !value.contains('$') {
            found.push(finding(
                "secret-in-environment",
                Severity::High,
                at(&format!("environment.{key}")),
                format!("{name} has the secret {key} written in the file"),
                "use a ${VARIABLE} kept as a stack secret (sealed, never shown again)",
            ));
        }
    }
    for (index, port) in service.ports.iter().enumerate() {
        let everywhere = port.host_ip.as_deref().is_none_or(|ip| ip == "0.0.0.0" || ip == "::");
        if port.host_port.is_some() && everywhere {
            found.push(finding(
                "port-on-all-interfaces",
                Severity::Medium,
                at(&format!("ports[{index}]")),
                format!("{name} publishes port {} on every interface of the host", port.host_port.unwrap_or_default()),
                "bind it to one address (127.0.0.1:8080:80) and put a reverse proxy in front",
            ));
        }
    }
    let long_running = service.restart != RestartPolicy::No;
    if service.healthcheck.as_ref().is_none_or(|h| h.test.first().is_some_and(|t| t == "NONE")) {
        found.push(finding(
            "no-healthcheck",
            if long_running { Severity::Medium } else { Severity::Low },
            at("healthcheck"),
            format!("{name} has no healthcheck: a hung process looks healthy"),
            "add a healthcheck that asks the service itself (an HTTP endpoint, a client command)",
        ));
    }
    if service.resources.memory_bytes.is_none() {
        found.push(finding(
            "no-resource-limits",
            Severity::Medium,
            at("deploy.resources.limits"),
            format!("{name} has no memory limit: a leak can take the whole host down"),
            "set deploy.resources.limits.memory (and cpus)",
        ));
    }
    if service.user.as_deref().is_none_or(|u| matches!(u, "root" | "0" | "0:0")) {
        found.push(finding(
            "runs-as-root",
            Severity::Low,
            at("user"),
            format!("{name} runs as root (unless its image says otherwise)"),
            "set user: to an unprivileged uid:gid the image supports",
        ));
    }
    if !long_running {
        found.push(finding(
            "no-restart-policy",
            Severity::Medium,
            at("restart"),
            format!("{name} is not restarted when it stops or the host reboots"),
            "set restart: unless-stopped (or on-failure for a job)",
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn findings(compose: &str) -> Vec<(String, &'static str, Severity)> {
        let parsed = crate::compose::parse(compose, "t", &BTreeMap::from([("DB_PASSWORD".into(), "x".into())]))
            .expect("a valid stack");
        analyze(compose, &parsed.spec).into_iter().map(|f| (f.path, f.rule, f.severity)).collect()
    }

    #[test]
    fn a_careful_stack_has_no_finding() {
        let good = r#"
services:
  web:
    image: nginx:1.27
    user: "101:101"
    restart: unless-stopped
    ports: ["127.0.0.1:8080:80"]
    environment:
      DB_PASSWORD: ${DB_PASSWORD}
      MODE: production
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1/"]
    deploy:
      resources:
        limits: {memory: 256m, cpus: "0.5"}
"#;
        assert_eq!(findings(good), []);
    }

    #[test]
    fn each_rule_finds_its_problem_where_it_is() {
        let bad = r#"
services:
  app:
    image: example/app
    privileged: true
    ports: ["8080:80", "127.0.0.1:9090:90"]
    environment:
      - API_KEY=abc123
      - LOG_LEVEL=debug
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
"#;
        assert_eq!(
            findings(bad),
            [
                ("services.app.environment.API_KEY".to_owned(), "secret-in-environment", Severity::High),
                ("services.app.privileged".to_owned(), "privileged", Severity::High),
                ("services.app.volumes[0]".to_owned(), "docker-socket", Severity::High),
                ("services.app.deploy.resources.limits".to_owned(), "no-resource-limits", Severity::Medium),
                ("services.app.image".to_owned(), "unpinned-image", Severity::Medium),
                ("services.app.ports[0]".to_owned(), "port-on-all-interfaces", Severity::Medium),
                ("services.app.restart".to_owned(), "no-restart-policy", Severity::Medium),
                ("services.app.healthcheck".to_owned(), "no-healthcheck", Severity::Low),
                ("services.app.user".to_owned(), "runs-as-root", Severity::Low),
            ]
        );
    }

    #[test]
    fn latest_is_not_a_version_but_a_digest_is() {
        assert!(!is_pinned("nginx"));
        assert!(!is_pinned("nginx:latest"));
        assert!(!is_pinned("registry.example:5000/team/app"));
        assert!(is_pinned("registry.example:5000/team/app:2.1"));
        assert!(is_pinned("nginx@sha256:0123"));
    }
}
