//! Marketplace templates: a versioned file format (documented in `docs/templates.md`) holding
//! an app's metadata, its Compose file, the schema of the variables that fill it, what it needs
//! of a host, and its changelog; the checks a template must pass before it is offered; and the
//! validation of the values someone deploys it with (passwords generated when left empty).
//!
//! **Invariant:** a template that fails [`check`] is never offered nor stored: every problem is
//! reported with its path (`variables[2].default`, `compose: services.web.image`).

pub mod catalog;
pub mod portainer;
pub mod records;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compose::{self, Diagnostic};

/// The template file format this build reads.
pub const FORMAT: u32 = 1;

/// A template as its file describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The file format's version: 1.
    pub format: u32,
    /// Lowercase letters, digits and `-`: the template's name in URLs.
    pub slug: String,
    pub name: String,
    /// This template's version (semver), not the app's.
    pub version: String,
    pub description: String,
    pub category: Category,
    #[serde(default)]
    pub tags: Vec<String>,
    pub author: String,
    /// An SPDX licence expression: the app's licence.
    pub licence: String,
    /// An https URL of the app's logo.
    pub logo: String,
    /// An https URL of the app's documentation.
    pub documentation: String,
    #[serde(default)]
    pub screenshots: Vec<String>,
    #[serde(default)]
    pub requirements: Requirements,
    #[serde(default)]
    pub variables: Vec<Variable>,
    /// Newest first; the first entry is this version.
    pub changelog: Vec<ChangelogEntry>,
    /// The Compose file, interpolated with the variables.
    pub compose: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Cms,
    Database,
    DevTools,
    Monitoring,
    Storage,
    Communication,
    Security,
    Automation,
    Networking,
    Messaging,
    Search,
    WebStack,
}

/// What a host needs to run the template, checked against the target's facts before a deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// CPUs the host must have.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory the host must have, as `2g` or `512m`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Host ports the template publishes (by default); they must be free on the target.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangelogEntry {
    pub version: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub changes: Vec<String>,
}

/// One value a person gives when deploying the template, used as `${NAME}` in its Compose file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// Upper-case letters, digits and `_`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: VariableKind,
    /// A label for the deploy form.
    pub label: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Used when no value is given; a password without one is generated.
    #[serde(default)]
    pub default: Option<String>,
    /// A value must be given (or defaulted, or generated).
    #[serde(default)]
    pub required: bool,
    /// Kept as a sealed stack secret, never shown again (passwords always are).
    #[serde(default)]
    pub secret: bool,
    /// A regular expression the whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The choices of an `enum`.
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VariableKind {
    String,
    /// Generated (24 letters and digits) when left empty.
    Password,
    Port,
    Integer,
    Boolean,
    Enum,
    Url,
    Email,
}

impl Variable {
    pub fn is_secret(&self) -> bool {
        self.secret || self.kind == VariableKind::Password
    }

    /// Why `value` is not acceptable for this variable, if it is not.
    pub fn refuse(&self, value: &str) -> Option<String> {
        let kind_error = match self.kind {
            VariableKind::String | VariableKind::Password => None,
            VariableKind::Port => match value.parse::<u32>() {
                Ok(port) if (1..=65535).contains(&port) => None,
                _ => Some("must be a port number from 1 to 65535".to_owned()),
            },
            VariableKind::Integer => value.parse::<i64>().err().map(|_| "must be a whole number".to_owned()),
            VariableKind::Boolean => (!matches!(value, "true" | "false")).then(|| "must be true or false".to_owned()),
            VariableKind::Enum => (!self.options.iter().any(|o| o == value))
                .then(|| format!("must be one of {}", self.options.join(", "))),
            VariableKind::Url => {
                let ok = (value.starts_with("https://") || value.starts_with("http://"))
                    && value.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains(' '));
                (!ok).then(|| "must be an http(s) URL".to_owned())
            }
            VariableKind::Email => {
                let ok = value.split_once('@').is_some_and(|(user, domain)| {
                    !user.is_empty() && domain.contains('.') && !domain.starts_with('.') && !value.contains(' ')
                });
                (!ok).then(|| "must be an email address".to_owned())
            }
        };
        if kind_error.is_some() {
            return kind_error;
        }
        if self.kind == VariableKind::Password && value.len() < 8 {
            return Some("must be at least 8 characters".to_owned());
        }
        let pattern = self.pattern.as_deref()?;
        match regex::Regex::new(&format!("^(?:{pattern})$")) {
            Ok(re) if re.is_match(value) => None,
            Ok(_) => Some(format!("must match {pattern}")),
            Err(_) => Some(format!("its pattern {pattern:?} is not a valid regular expression")),
        }
    }
}

/// A template file as a [`Template`], with the path of what does not read.
pub fn parse(yaml: &str) -> Result<Template, Vec<Diagnostic>> {
    let deserializer = serde_yaml::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let location = inner.location();
        let message = inner.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        let mut diagnostic = Diagnostic::at_str(&path, message);
        diagnostic.line = location.as_ref().map(|l| l.line());
        diagnostic.column = location.as_ref().map(|l| l.column());
        vec![diagnostic]
    })
}

fn is_slug(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_https(text: &str) -> bool {
    text.strip_prefix("https://").is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
}

/// An image reference is pinned when it names a tag other than `latest`, or a digest.
pub fn is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest")
}

/// Every problem of the template, by path; empty when it may be offered.
pub fn check(template: &Template) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| problems.push(Diagnostic::at_str(path, message));
    if template.format != FORMAT {
        problem("format", format!("this control plane reads template format {FORMAT}"));
    }
    if !is_slug(&template.slug) {
        problem("slug", "must be lowercase letters, digits and '-', starting with a letter".into());
    }
    for (field, text) in
        [("name", &template.name), ("description", &template.description), ("author", &template.author)]
    {
        if text.trim().is_empty() {
            problem(field, "must not be empty".into());
        }
    }
    if semver::Version::parse(&template.version).is_err() {
        problem("version", format!("{:?} is not a semantic version (1.2.3)", template.version));
    }
    if template.changelog.first().is_none_or(|c| c.version != template.version) {
        problem("changelog", "its first entry must be this version's".into());
    }
    for (i, entry) in template.changelog.iter().enumerate() {
        let date_ok = entry.date.len() == 10
            && time::Date::parse(&entry.date, &time::format_description::well_known::Iso8601::DATE).is_ok();
        if !date_ok {
            problem(&format!("changelog[{i}].date"), "must be a date, YYYY-MM-DD".into());
        }
    }
    for (field, url) in [("logo", &template.logo), ("documentation", &template.documentation)] {
        if !is_https(url) {
            problem(field, "must be an https URL".into());
        }
    }
    for (i, url) in template.screenshots.iter().enumerate() {
        if !is_https(url) {
            problem(&format!("screenshots[{i}]"), "must be an https URL".into());
        }
    }
    for (i, tag) in template.tags.iter().enumerate() {
        if !is_slug(tag) {
            problem(&format!("tags[{i}]"), "must be lowercase letters, digits and '-'".into());
        }
    }
    if let Some(memory) = &template.requirements.memory
        && windflow_platforms::libvirt::parse_mib(memory).is_none()
    {
        problem("requirements.memory", format!("{memory:?} is not a size such as 2g or 512m"));
    }
    for (i, variable) in template.variables.iter().enumerate() {
        let at = |key: &str| format!("variables[{i}].{key}");
        let valid_name = !variable.name.is_empty()
            && variable.name.starts_with(|c: char| c.is_ascii_uppercase())
            && variable.name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            problem(&at("name"), format!("{:?} must be upper-case letters, digits and '_'", variable.name));
        }
        if template.variables[..i].iter().any(|v| v.name == variable.name) {
            problem(&at("name"), format!("{} is declared twice", variable.name));
        }
        if (variable.kind == VariableKind::Enum) == variable.options.is_empty() {
            problem(&at("options"), "an enum lists its options; other types have none".into());
        }
        if let Some(pattern) = &variable.pattern
            && regex::Regex::new(pattern).is_err()
        {
            problem(&at("pattern"), format!("{pattern:?} is not a valid regular expression"));
        }
        if let Some(default) = &variable.default {
            if variable.is_secret() && !default.is_empty() {
                problem(&at("default"), "a secret has no default: it is given, or generated for a password".into());
            } else if let Some(why) = variable.refuse(default) {
                problem(&at("default"), format!("the default {default:?} {why}"));
            }
        }
    }
    let used = compose::interpolate::referenced_names(&template.compose);
    for name in &used {
        if !template.variables.iter().any(|v| &v.name == name) {
            problem("compose", format!("${{{name}}} is used but not declared under variables"));
        }
    }
    for variable in &template.variables {
        if !used.contains(&variable.name) {
            problem("variables", format!("{} is declared but the Compose file never uses it", variable.name));
        }
    }
    if problems.is_empty() {
        let values = sample_values(template);
        match compose::parse(&template.compose, &template.slug, &values) {
            Ok(parsed) => {
                for service in &parsed.spec.services {
                    if !is_pinned(&service.image) {
                        problems.push(Diagnostic::at_str(
                            &format!("compose: services.{}.image", service.name),
                            format!("{:?} must name an explicit version, never latest", service.image),
                        ));
                    }
                }
            }
            Err(invalid) => problems.extend(invalid.errors.into_iter().map(|mut e| {
                e.path = Some(format!("compose: {}", e.path.unwrap_or_default()));
                e
            })),
        }
    }
    problems
}

/// Values good enough to run the Compose pipeline on: defaults, generated passwords, and a
/// value of the right type for the rest.
fn sample_values(template: &Template) -> BTreeMap<String, String> {
    template
        .variables
        .iter()
        .map(|v| {
            let value = v.default.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| match v.kind {
                VariableKind::Password => generate_password(),
                VariableKind::Port => "8080".into(),
                VariableKind::Integer => "1".into(),
                VariableKind::Boolean => "false".into(),
                VariableKind::Enum => v.options.first().cloned().unwrap_or_default(),
                VariableKind::Url => "https://example.com".into(),
                VariableKind::Email => "admin@example.com".into(),
                VariableKind::String => "example".into(),
            });
            (v.name.clone(), value)
        })
        .collect()
}

/// 24 letters and digits from the operating system's generator.
pub fn generate_password() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect()
}

/// What a deploy of the template is made of: the stack's variables and its (sealed) secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub variables: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

/// Checks every given value (unknown names too) and fills in defaults and passwords; every
/// refusal names its variable.
pub fn resolve(template: &Template, given: &BTreeMap<String, String>) -> Result<Resolved, Vec<(String, String)>> {
    let mut refusals = Vec::new();
    for name in given.keys() {
        if !template.variables.iter().any(|v| &v.name == name) {
            refusals.push((name.clone(), "the template has no such variable".to_owned()));
        }
    }
    let mut resolved = Resolved::default();
    for variable in &template.variables {
        let value = match given.get(&variable.name).filter(|v| !v.is_empty()) {
            Some(value) => Some(value.clone()),
            None => match (&variable.default, variable.kind) {
                (Some(default), _) if !default.is_empty() => Some(default.clone()),
                (_, VariableKind::Password) => Some(generate_password()),
                _ => None,
            },
        };
        let Some(value) = value else {
            if variable.required {
                refusals.push((variable.name.clone(), format!("{} is required", variable.label)));
            } else {
                resolved.variables.insert(variable.name.clone(), String::new());
            }
            continue;
        };
        if let Some(why) = variable.refuse(&value) {
            refusals.push((variable.name.clone(), format!("{} {why}", variable.label)));
            continue;
        }
        if variable.is_secret() {
            resolved.secrets.insert(variable.name.clone(), value);
        } else {
            resolved.variables.insert(variable.name.clone(), value);
        }
    }
    if refusals.is_empty() { Ok(resolved) } else { Err(refusals) }
}

#[cfg(test)]
mod tests;
