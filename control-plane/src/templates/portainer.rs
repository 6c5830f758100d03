//! Portainer's app-template files (formats 2 and 3) as WindFlow templates: container entries
//! become a one-service Compose file (its published ports and environment as variables), stack
//! entries take the Compose file of their repository (fetched by the caller, see
//! [`stack_file_url`]). Every entry is converted on its own: one that cannot be is reported with
//! why, never half-imported.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Category, ChangelogEntry, FORMAT, Requirements, Template, Variable, VariableKind};

#[derive(Debug, Deserialize)]
pub struct File {
    pub version: String,
    pub templates: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    /// 1: a container; 2: a Swarm stack; 3: a Compose stack.
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub logo: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<PortainerVolume>,
    #[serde(default)]
    pub env: Vec<EnvEntry>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub restart_policy: Option<String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub repository: Option<Repository>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortainerVolume {
    pub container: String,
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnvEntry {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub default: Option<String>,
    /// A fixed value, not asked for.
    #[serde(default)]
    pub preset: bool,
    #[serde(default)]
    pub select: Vec<Choice>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    pub text: String,
    pub value: String,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    pub url: String,
    pub stackfile: String,
}

/// Reads a Portainer template file; only formats 2 and 3 are known.
pub fn read(json: &str) -> Result<File, String> {
    let file: File = serde_json::from_str(json).map_err(|e| format!("not a Portainer template file: {e}"))?;
    if !matches!(file.version.as_str(), "2" | "3") {
        return Err(format!("Portainer template format {:?} is not supported (2 and 3 are)", file.version));
    }
    Ok(file)
}

/// Where the raw Compose file of a stack entry is: GitHub's raw host, else the `/raw/HEAD/`
/// path Gitea, Forgejo and GitLab (`/-/raw/HEAD/`) serve.
pub fn stack_file_url(repository: &Repository) -> String {
    let url = repository.url.trim_end_matches('/').trim_end_matches(".git");
    let file = repository.stackfile.trim_start_matches('/');
    match url.strip_prefix("https://github.com/") {
        Some(path) => format!("https://raw.githubusercontent.com/{path}/HEAD/{file}"),
        None if url.contains("gitlab") => format!("{url}/-/raw/HEAD/{file}"),
        None => format!("{url}/raw/HEAD/{file}"),
    }
}

fn slug_of(title: &str) -> String {
    let mut slug = String::new();
    for c in title.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-').to_owned();
    match slug.chars().next() {
        Some(c) if c.is_ascii_lowercase() => slug.chars().take(64).collect(),
        _ => format!("app-{slug}").chars().take(64).collect::<String>().trim_end_matches('-').to_owned(),
    }
}

fn category_of(categories: &[String]) -> Category {
    let words = categories.join(" ").to_lowercase();
    let has = |w: &str| words.contains(w);
    if has("database") {
        Category::Database
    } else if has("cms") || has("blog") {
        Category::Cms
    } else if has("monitor") {
        Category::Monitoring
    } else if has("storage") || has("file") {
        Category::Storage
    } else if has("messag") || has("queue") {
        Category::Messaging
    } else if has("chat") || has("communication") {
        Category::Communication
    } else if has("security") || has("auth") {
        Category::Security
    } else if has("proxy") || has("network") {
        Category::Networking
    } else if has("automation") {
        Category::Automation
    } else if has("search") {
        Category::Search
    } else if has("develop") || has("git") || has("ci") {
        Category::DevTools
    } else {
        Category::WebStack
    }
}

/// Upper-case letters, digits and `_`, starting with a letter: a template variable's name.
fn variable_name(name: &str) -> String {
    let upper: String = name.to_uppercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if upper.starts_with(|c: char| c.is_ascii_uppercase()) { upper } else { format!("V_{upper}") }
}

fn yaml(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The template of one entry; `stack_file` is the fetched Compose file of a stack entry.
pub fn convert(entry: &Entry, stack_file: Option<&str>, source: &str, today: &str) -> Result<Template, String> {
    let title =
        if entry.title.trim().is_empty() { entry.name.clone().unwrap_or_default() } else { entry.title.clone() };
    if title.trim().is_empty() {
        return Err("the entry has no title".into());
    }
    let slug = slug_of(&title);
    let mut variables = Vec::new();
    let compose = match entry.kind {
        1 => container_compose(entry, &slug, &mut variables)?,
        2 | 3 => {
            let file = stack_file.ok_or("its stack file could not be fetched from the repository")?;
            for name in crate::compose::interpolate::referenced_names(file) {
                let given = entry.env.iter().find(|e| e.name == name);
                let variable = env_variable(given.cloned().unwrap_or(EnvEntry {
                    name: name.clone(),
                    label: None,
                    description: None,
                    default: None,
                    preset: false,
                    select: vec![],
                }));
                if variable.name != name {
                    return Err(format!("its stack file uses ${{{name}}}, which is not a valid variable name here"));
                }
                variables.push(variable);
            }
            file.to_owned()
        }
        other => return Err(format!("entries of type {other} are not known (1: container, 2 and 3: stacks)")),
    };
    let logo = entry.logo.clone().filter(|l| l.starts_with("https://"));
    let mut description = if entry.description.trim().is_empty() { title.clone() } else { entry.description.clone() };
    if let Some(note) = entry.note.as_ref().filter(|n| !n.trim().is_empty()) {
        description.push_str(&format!(" ({})", note.trim()));
    }
    Ok(Template {
        format: FORMAT,
        slug,
        name: title.clone(),
        version: "1.0.0".into(),
        description,
        category: category_of(&entry.categories),
        tags: entry.categories.iter().map(|c| slug_of(c)).filter(|t| !t.is_empty()).collect(),
        author: "Imported from Portainer".into(),
        licence: "NOASSERTION".into(),
        logo: logo.unwrap_or_else(|| "https://windflow.dev/template.svg".into()),
        documentation: "https://docs.portainer.io/advanced/app-templates/format".into(),
        screenshots: vec![],
        requirements: Requirements::default(),
        variables,
        changelog: vec![ChangelogEntry {
            version: "1.0.0".into(),
            date: today.to_owned(),
            changes: vec![format!("Imported from {source}.")],
        }],
        compose,
    })
}

fn env_variable(env: EnvEntry) -> Variable {
    let options: Vec<String> = env.select.iter().map(|c| c.value.clone()).collect();
    let default = env.select.iter().find(|c| c.default).map(|c| c.value.clone()).or(env.default.clone());
    let secret = env.name.to_lowercase().contains("password") || env.name.to_lowercase().contains("secret");
    Variable {
        name: variable_name(&env.name),
        kind: if !options.is_empty() {
            VariableKind::Enum
        } else if secret {
            VariableKind::Password
        } else {
            VariableKind::String
        },
        label: env.label.clone().unwrap_or_else(|| env.name.clone()),
        description: env.description.clone(),
        default: if secret { None } else { default },
        required: false,
        secret,
        pattern: None,
        options,
    }
}

/// One service from a container entry: published ports and asked-for environment become
/// variables, preset environment stays as it is.
fn container_compose(entry: &Entry, slug: &str, variables: &mut Vec<Variable>) -> Result<String, String> {
    let image = entry.image.as_deref().filter(|i| !i.trim().is_empty()).ok_or("the container entry has no image")?;
    let mut service = format!("services:\n  {slug}:\n    image: {}\n", yaml(image));
    if let Some(restart) = &entry.restart_policy {
        service.push_str(&format!("    restart: {}\n", yaml(restart)));
    }
    if let Some(command) = entry.command.as_ref().filter(|c| !c.trim().is_empty()) {
        service.push_str(&format!("    command: {}\n", yaml(&command.replace('$', "$$"))));
    }
    if let Some(hostname) = &entry.hostname {
        service.push_str(&format!("    hostname: {}\n", yaml(hostname)));
    }
    if entry.privileged {
        service.push_str("    privileged: true\n");
    }
    if !entry.ports.is_empty() {
        service.push_str("    ports:\n");
        for (i, port) in entry.ports.iter().enumerate() {
            match port.split_once(':') {
                Some((host, container)) => {
                    let name = format!("PORT_{}", i + 1);
                    variables.push(Variable {
                        name: name.clone(),
                        kind: VariableKind::Port,
                        label: format!("Host port for {container}"),
                        description: None,
                        default: Some(host.to_owned()),
                        required: true,
                        secret: false,
                        pattern: None,
                        options: vec![],
                    });
                    service.push_str(&format!("      - {}\n", yaml(&format!("${{{name}}}:{container}"))));
                }
                None => service.push_str(&format!("      - {}\n", yaml(port))),
            }
        }
    }
    let mut environment = BTreeMap::new();
    for env in &entry.env {
        if env.preset {
            environment.insert(env.name.clone(), env.default.clone().unwrap_or_default().replace('$', "$$"));
        } else {
            let variable = env_variable(env.clone());
            environment.insert(env.name.clone(), format!("${{{}}}", variable.name));
            if !variables.iter().any(|v| v.name == variable.name) {
                variables.push(variable);
            }
        }
    }
    if !environment.is_empty() {
        service.push_str("    environment:\n");
        for (name, value) in &environment {
            service.push_str(&format!("      {}: {}\n", yaml(name), yaml(value)));
        }
    }
    let mut volumes = Vec::new();
    if !entry.volumes.is_empty() {
        service.push_str("    volumes:\n");
        for (i, volume) in entry.volumes.iter().enumerate() {
            let source = match &volume.bind {
                Some(bind) => bind.clone(),
                None => {
                    let name = format!("data-{}", i + 1);
                    volumes.push(name.clone());
                    name
                }
            };
            let mode = if volume.readonly { ":ro" } else { "" };
            service.push_str(&format!("      - {}\n", yaml(&format!("{source}:{}{mode}", volume.container))));
        }
    }
    if !volumes.is_empty() {
        service.push_str("volumes:\n");
        for volume in volumes {
            service.push_str(&format!("  {volume}: {{}}\n"));
        }
    }
    Ok(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"{
      "version": "2",
      "templates": [
        {
          "type": 1, "title": "Adminer", "description": "Database management in a single PHP file",
          "categories": ["Tools", "Database"], "logo": "https://example.com/adminer.png",
          "image": "adminer:4.8.1", "ports": ["8080:8080/tcp"], "restart_policy": "unless-stopped",
          "env": [
            {"name": "ADMINER_DESIGN", "label": "Design", "select": [{"text": "Default", "value": "default", "default": true}, {"text": "Nette", "value": "nette"}]},
            {"name": "TZ", "preset": true, "default": "UTC"}
          ],
          "volumes": [{"container": "/data"}]
        },
        {"type": 1, "title": "Unpinned", "image": "nginx:latest"},
        {"type": 1, "title": "No image"}
      ]
    }"#;

    #[test]
    fn a_container_entry_becomes_one_service_with_its_ports_and_choices_as_variables() {
        let file = read(V2).expect("reads");
        let template = convert(&file.templates[0], None, "a test", "2026-11-26").expect("converts");
        assert_eq!(template.slug, "adminer");
        assert_eq!(template.category, Category::Database);
        let port = template.variables.iter().find(|v| v.name == "PORT_1").expect("port variable");
        assert_eq!((port.kind, port.default.as_deref()), (VariableKind::Port, Some("8080")));
        let design = template.variables.iter().find(|v| v.name == "ADMINER_DESIGN").expect("design");
        assert_eq!(
            (design.kind, design.options.len(), design.default.as_deref()),
            (VariableKind::Enum, 2, Some("default"))
        );
        assert!(!template.variables.iter().any(|v| v.name == "TZ"), "a preset is not asked for");
        assert!(
            template.compose.contains("\"TZ\": \"UTC\"") && template.compose.contains("data-1:/data"),
            "{}",
            template.compose
        );
        assert!(super::super::check(&template).is_empty(), "{:?}", super::super::check(&template));
    }

    #[test]
    fn an_unpinned_or_incomplete_entry_is_reported_not_imported() {
        let file = read(V2).expect("reads");
        let unpinned = convert(&file.templates[1], None, "a test", "2026-11-26").expect("converts");
        assert!(!super::super::check(&unpinned).is_empty(), "the checks refuse latest");
        assert!(convert(&file.templates[2], None, "a test", "2026-11-26").is_err());
        assert!(read(r#"{"version": "1", "templates": []}"#).is_err());
        assert!(read("not json").is_err());
    }

    #[test]
    fn a_stack_entrys_file_is_found_where_its_forge_serves_raw_files() {
        let on = |url: &str| {
            stack_file_url(&Repository { url: url.into(), stackfile: "stacks/app/docker-compose.yml".into() })
        };
        assert_eq!(
            on("https://github.com/acme/templates"),
            "https://raw.githubusercontent.com/acme/templates/HEAD/stacks/app/docker-compose.yml"
        );
        assert_eq!(
            on("https://gitlab.com/acme/templates.git"),
            "https://gitlab.com/acme/templates/-/raw/HEAD/stacks/app/docker-compose.yml"
        );
        assert_eq!(
            on("https://git.example.com/acme/templates"),
            "https://git.example.com/acme/templates/raw/HEAD/stacks/app/docker-compose.yml"
        );
    }
}
