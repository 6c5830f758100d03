use std::collections::BTreeMap;

use super::*;
use crate::templates::catalog;

#[test]
fn every_shipped_template_reads_and_passes_every_check() {
    assert!(catalog::FILES.len() >= 20, "the marketplace ships at least twenty templates");
    for (slug, file) in catalog::FILES {
        let template = parse(file).unwrap_or_else(|e| panic!("{slug}: {e:?}"));
        assert_eq!(&template.slug, slug, "a template's file is named after its slug");
        let problems = check(&template);
        assert!(problems.is_empty(), "{slug}: {problems:#?}");
    }
}

#[test]
fn the_ten_the_plan_names_are_shipped() {
    let slugs: Vec<String> = catalog::certified().iter().map(|t| t.slug.clone()).collect();
    for wanted in [
        "lamp",
        "mean",
        "mern",
        "wordpress",
        "postgresql-pgadmin",
        "redis-cluster",
        "elasticsearch-kibana",
        "prometheus-grafana",
        "gitlab-ce",
        "nextcloud",
    ] {
        assert!(slugs.iter().any(|s| s == wanted), "{wanted} is missing from {slugs:?}");
    }
}

/// What a deploy of each shipped template with its defaults is made of, through the pipeline.
fn parsed_with_defaults(template: &Template) -> compose::Parsed {
    let resolved = resolve(template, &BTreeMap::new()).unwrap_or_else(|e| panic!("{}: {e:?}", template.slug));
    let mut values = resolved.variables.clone();
    values.extend(resolved.secrets.clone());
    compose::parse(&template.compose, &template.slug, &values)
        .unwrap_or_else(|e| panic!("{}: {:?}", template.slug, e.errors))
}

#[test]
fn every_shipped_template_is_pinned_wired_and_runs_on_swarm_and_kubernetes() {
    for template in catalog::certified() {
        let parsed = parsed_with_defaults(template);
        assert!(!parsed.spec.services.is_empty(), "{}", template.slug);
        for service in &parsed.spec.services {
            let at = format!("{}: {}", template.slug, service.name);
            assert!(is_pinned(&service.image), "{at}: {} is not pinned", service.image);
            assert!(
                service.healthcheck.is_some() || service.restart == windflow_protocol::stack::RestartPolicy::No,
                "{at} has no healthcheck"
            );
            assert!(service.resources.memory_bytes.is_some(), "{at} has no memory limit");
            assert!(
                service.mounts.iter().all(|m| !matches!(m.source, windflow_protocol::stack::MountSource::Bind(_))),
                "{at} bind-mounts a host path"
            );
        }
        for (platform, findings) in [
            ("swarm", windflow_platforms::swarm::check(&parsed.spec, &parsed.swarm)),
            ("kubernetes", windflow_platforms::kubernetes::check(&parsed.spec, &parsed.swarm)),
        ] {
            let blocking: Vec<_> = findings.iter().filter(|f| f.blocking).collect();
            assert!(blocking.is_empty(), "{} on {platform}: {blocking:#?}", template.slug);
        }
        assert!(!windflow_platforms::kubernetes::render(&parsed.spec, &parsed.swarm, None).is_empty());
        assert!(!windflow_platforms::swarm::render(&parsed.spec, &parsed.swarm).is_empty());
    }
}

#[test]
fn passwords_are_generated_secret_and_never_defaulted() {
    let wordpress = catalog::certified().iter().find(|t| t.slug == "wordpress").expect("wordpress");
    let first = resolve(wordpress, &BTreeMap::new()).expect("defaults resolve");
    let second = resolve(wordpress, &BTreeMap::new()).expect("defaults resolve");
    let password = first.secrets.get("DB_PASSWORD").expect("generated into the secrets");
    assert_eq!(password.len(), 24);
    assert_ne!(Some(password), second.secrets.get("DB_PASSWORD"), "each deploy gets its own");
    assert!(!first.variables.contains_key("DB_PASSWORD"), "a secret is never a plain variable");
    assert_eq!(first.variables.get("HTTP_PORT").map(String::as_str), Some("8080"));
}

fn variable(kind: VariableKind) -> Variable {
    Variable {
        name: "V".into(),
        kind,
        label: "V".into(),
        description: None,
        default: None,
        required: true,
        secret: false,
        pattern: None,
        options: vec![],
    }
}

#[test]
fn each_variable_type_refuses_what_it_cannot_be() {
    let port = variable(VariableKind::Port);
    assert_eq!(port.refuse("8080"), None);
    assert!(port.refuse("0").is_some() && port.refuse("70000").is_some() && port.refuse("http").is_some());
    assert!(variable(VariableKind::Integer).refuse("1.5").is_some());
    assert!(variable(VariableKind::Boolean).refuse("yes").is_some());
    assert_eq!(variable(VariableKind::Boolean).refuse("true"), None);
    assert!(variable(VariableKind::Url).refuse("ftp://x").is_some());
    assert_eq!(variable(VariableKind::Url).refuse("https://example.com/a"), None);
    assert!(variable(VariableKind::Email).refuse("not-an-address").is_some());
    assert_eq!(variable(VariableKind::Email).refuse("me@example.com"), None);
    assert!(variable(VariableKind::Password).refuse("short").is_some());
    let mut choice = variable(VariableKind::Enum);
    choice.options = vec!["a".into(), "b".into()];
    assert!(choice.refuse("c").is_some_and(|why| why.contains("a, b")));
    let mut named = variable(VariableKind::String);
    named.pattern = Some("[a-z]+".into());
    assert_eq!(named.refuse("abc"), None);
    assert!(named.refuse("abc1").is_some(), "the whole value must match");
}

#[test]
fn a_deploy_names_every_variable_it_refuses() {
    let wordpress = catalog::certified().iter().find(|t| t.slug == "wordpress").expect("wordpress");
    let given = BTreeMap::from([
        ("HTTP_PORT".to_owned(), "99999".to_owned()),
        ("DB_PASSWORD".to_owned(), "short".to_owned()),
        ("NOPE".to_owned(), "x".to_owned()),
    ]);
    let refused = resolve(wordpress, &given).expect_err("refused");
    let names: Vec<&str> = refused.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["NOPE", "HTTP_PORT", "DB_PASSWORD"], "{refused:?}");
}

const MINIMAL: &str = r#"
format: 1
slug: hello
name: Hello
version: 1.0.0
description: A web page.
category: web-stack
author: Someone
licence: MIT
logo: https://example.com/logo.png
documentation: https://example.com/docs
variables:
  - name: PORT
    type: port
    label: Port
    default: "8080"
changelog:
  - version: 1.0.0
    date: "2026-11-01"
    changes: [First.]
compose: |
  services:
    web:
      image: nginx:1.27.0
      ports: ["${PORT}:80"]
"#;

#[test]
fn a_minimal_template_passes() {
    let template = parse(MINIMAL).expect("reads");
    assert_eq!(check(&template), vec![]);
}

#[test]
fn an_invalid_template_is_refused_with_the_path_of_each_problem() {
    let paths = |yaml: &str| -> Vec<String> {
        match parse(yaml) {
            Err(problems) => problems.into_iter().map(|p| p.path.unwrap_or_default()).collect(),
            Ok(template) => check(&template).into_iter().map(|p| p.path.unwrap_or_default()).collect(),
        }
    };
    let undeclared = MINIMAL.replace(
        r#"["${PORT}:80"]"#,
        r#"["${PORT}:80"]
      environment: { MODE: "${MODE}" }"#,
    );
    assert_eq!(paths(&undeclared), ["compose"]);
    let bad_default = MINIMAL.replace(r#"default: "8080""#, r#"default: "80800""#);
    assert_eq!(paths(&bad_default), ["variables[0].default"]);
    let latest = MINIMAL.replace("nginx:1.27.0", "nginx:latest");
    assert_eq!(paths(&latest), ["compose: services.web.image"]);
    let untagged = MINIMAL.replace("nginx:1.27.0", "nginx");
    assert_eq!(paths(&untagged), ["compose: services.web.image"]);
    let bad_compose = MINIMAL.replace(
        r#"ports: ["${PORT}:80"]"#,
        r#"ports: ["${PORT}:80"]
      restart: sometimes"#,
    );
    assert!(paths(&bad_compose)[0].starts_with("compose: services.web"), "{:?}", paths(&bad_compose));
    let unknown_key = MINIMAL.replace("author: Someone", "author: Someone\nrating: 5");
    assert_eq!(paths(&unknown_key), ["rating"], "an unknown key is refused as it is read");
    let wrong_type = MINIMAL.replace("type: port", "type: colour");
    assert_eq!(paths(&wrong_type), ["variables[0].type"]);
    let bad_version = MINIMAL.replace("version: 1.0.0\ndescription", "version: one\ndescription");
    assert_eq!(paths(&bad_version), ["version", "changelog"]);
}

#[test]
fn a_template_written_back_as_a_file_reads_the_same() {
    for template in catalog::certified() {
        let file = serde_yaml::to_string(template).expect("writes");
        assert_eq!(&parse(&file).expect("reads back"), template, "{}", template.slug);
        assert!(file.contains("compose: |"), "the Compose file stays a block: {file}");
    }
}

#[test]
fn the_rule_analyser_finds_nothing_severe_in_a_shipped_template() {
    for template in catalog::certified() {
        let parsed = parsed_with_defaults(template);
        let severe: Vec<_> = crate::analyzer::analyze(&template.compose, &parsed.spec)
            .into_iter()
            .filter(|f| f.severity == crate::analyzer::Severity::High)
            .collect();
        assert_eq!(severe, [], "{}", template.slug);
    }
}
