//! The stack pipeline: Compose YAML + variables → a validated, typed [`StackSpec`].
//!
//! Stages, each with errors that say where: YAML syntax (line and column) → merge keys and
//! anchors → interpolation ([`interpolate`]) → typed Compose via `compose_spec` (path of the
//! offending field) → WindFlow's own checks (unknown dependencies, cycles, undefined networks
//! and volumes) → conversion. Keys that parse but that WindFlow does not apply are returned as
//! warnings, never dropped silently. Nothing here touches the store or the network.

pub mod helm;
pub mod interpolate;
pub mod swarm;
pub mod vms;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use compose_spec::service::{Condition, Healthcheck as ComposeHealthcheck, Restart};
use compose_spec::{Compose, ListOrMap, Resource, Service, ShortOrLong};
use serde::Serialize;
use serde_yaml::Value;
use windflow_protocol::stack::*;

/// Largest Compose file accepted, in bytes.
pub const MAX_COMPOSE_BYTES: usize = 1024 * 1024;

/// A finding: an error or a warning, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Diagnostic {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Self { path: None, line: None, column: None, message: message.into() }
    }

    pub fn at(path: &Path, message: impl Into<String>) -> Self {
        Self { path: Some(path.to_string()), ..Self::new(message) }
    }

    pub fn at_str(path: &str, message: impl Into<String>) -> Self {
        Self { path: Some(path.to_owned()), ..Self::new(message) }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line, self.column) {
            (_, Some(line), Some(column)) => write!(f, "line {line}, column {column}: {}", self.message),
            (Some(path), _, _) => write!(f, "{path}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// A position in the YAML tree, displayed as `services.web.ports[1]`.
#[derive(Debug, Default, Clone)]
pub struct Path(Vec<String>);

impl Path {
    pub fn push_key(&mut self, key: &Value) {
        let key = match key {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other).unwrap_or_default().trim().to_owned(),
        };
        self.0.push(if self.0.is_empty() { key } else { format!(".{key}") });
    }

    pub fn push_index(&mut self, index: usize) {
        self.0.push(format!("[{index}]"));
    }

    pub fn pop(&mut self) {
        self.0.pop();
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|s| f.write_str(s))
    }
}

#[derive(Debug)]
pub struct Parsed {
    pub spec: StackSpec,
    /// What only a Swarm applies (placement, updates, secrets, configs).
    pub swarm: windflow_protocol::stack::SwarmSpec,
    /// The chart, when the stack is a Helm release (`x-helm`).
    pub helm: Option<windflow_protocol::stack::HelmChart>,
    /// The virtual machines, when the stack is VMs for a libvirt target (`x-vms`).
    pub vms: Vec<windflow_protocol::stack::VmSpec>,
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug)]
pub struct Invalid {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        f.write_str(&errors.join("; "))
    }
}

/// Service keys WindFlow applies. Anything else that Compose accepts is reported as a warning.
const APPLIED_SERVICE_KEYS: &[&str] = &[
    "image",
    "pull_policy",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "tmpfs",
    "networks",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "labels",
    "user",
    "working_dir",
    "hostname",
    "extra_hosts",
    "stop_grace_period",
    "read_only",
    "privileged",
    "cap_add",
    "cap_drop",
    "mem_limit",
    "mem_reservation",
    "cpus",
    "pids_limit",
    "scale",
    "container_name",
];
const APPLIED_DEPLOY_KEYS: &[&str] = &["replicas", "resources", "labels"];
/// Applied by Swarm targets (see [`swarm`]), ignored by the Docker engine's containers.
const SWARM_ONLY_DEPLOY_KEYS: &[&str] = &["placement", "mode", "update_config", "rollback_config", "restart_policy"];
const SWARM_ONLY_SERVICE_KEYS: &[&str] = &["secrets", "configs"];

/// Turns a stack project name into a Compose project name.
pub fn project_name(name: &str) -> String {
    let mut out: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    out = out.trim_matches(|c| c == '-' || c == '_').to_owned();
    if out.is_empty() { "stack".to_owned() } else { out }
}

pub fn parse(yaml: &str, project: &str, variables: &BTreeMap<String, String>) -> Result<Parsed, Invalid> {
    let mut warnings = Vec::new();
    let invalid = |errors: Vec<Diagnostic>, warnings: Vec<Diagnostic>| Err(Invalid { errors, warnings });
    if yaml.len() > MAX_COMPOSE_BYTES {
        return invalid(vec![Diagnostic::new(format!("the Compose file is over {MAX_COMPOSE_BYTES} bytes"))], warnings);
    }
    let mut value: Value = match serde_yaml::from_str(yaml) {
        Ok(value) => value,
        Err(error) => {
            let location = error.location();
            let message = error.to_string();
            // serde_yaml appends " at line L column C"; the fields carry that already.
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            let diagnostic = Diagnostic {
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                ..Diagnostic::new(message)
            };
            return invalid(vec![diagnostic], warnings);
        }
    };
    if !value.as_mapping().is_some_and(|m| m.contains_key("services")) {
        return invalid(vec![Diagnostic::new("a Compose file is a mapping with a `services` key")], warnings);
    }
    if let Err(error) = value.apply_merge() {
        return invalid(vec![Diagnostic::new(format!("merge keys: {error}"))], warnings);
    }
    let mut errors = Vec::new();
    interpolate::interpolate_tree(&mut value, variables, &mut Path::default(), &mut errors, &mut warnings);
    if !errors.is_empty() {
        return invalid(errors, warnings);
    }
    let swarm = swarm::extract(&mut value, variables, &mut errors);
    let helm = helm::extract(&value, &mut errors);
    let vms = vms::extract(&value, &mut errors);
    if !errors.is_empty() {
        return invalid(errors, warnings);
    }
    warn_unapplied(&value, &mut warnings);
    let hazards = compose_spec_hazards(&value);
    if !hazards.is_empty() {
        return invalid(hazards, warnings);
    }

    let compose: Compose = match serde_path_to_error::deserialize(value) {
        Ok(compose) => compose,
        Err(error) => {
            let path = error.path().to_string();
            let message = error.into_inner().to_string();
            return invalid(vec![Diagnostic::at_str(&path, message)], warnings);
        }
    };
    match convert(compose, project, &mut warnings) {
        Ok(spec) => Ok(Parsed { spec, swarm, helm, vms, warnings }),
        Err(errors) => invalid(errors, warnings),
    }
}

/// Keys whose values `compose_spec` reads as durations.
const DURATION_KEYS: &[&str] =
    &["interval", "timeout", "start_period", "start_interval", "stop_grace_period", "delay", "monitor", "window"];

/// Values that `compose_spec` would panic on instead of refusing, refused here first with their
/// place: port ranges written backwards (`9080-9001`: their size overflows) and durations with
/// more digits than a `u64` holds. Both were found by the `compose_pipeline` fuzz target.
fn compose_spec_hazards(value: &Value) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    if let Some(services) = value.get("services") {
        hazards_in(services, "services", &mut errors);
    }
    errors
}

fn hazards_in(value: &Value, path: &str, errors: &mut Vec<Diagnostic>) {
    match value {
        Value::Mapping(mapping) => {
            for (key, item) in mapping {
                let key = key.as_str().unwrap_or_default();
                let path = format!("{path}.{key}");
                if key == "ports" {
                    for (index, port) in item.as_sequence().into_iter().flatten().enumerate() {
                        reversed_port_ranges(port, &format!("{path}[{index}]"), errors);
                    }
                } else if DURATION_KEYS.contains(&key)
                    && let Some(text) = item.as_str()
                    && text
                        .split(|c: char| !c.is_ascii_digit())
                        .any(|digits| !digits.is_empty() && digits.parse::<u64>().is_err())
                {
                    errors.push(Diagnostic::at_str(&path, format!("the duration `{text}` is too large")));
                } else {
                    hazards_in(item, &path, errors);
                }
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter().enumerate() {
                hazards_in(item, &format!("{path}[{index}]"), errors);
            }
        }
        _ => {}
    }
}

fn reversed_port_ranges(port: &Value, path: &str, errors: &mut Vec<Diagnostic>) {
    let texts: Vec<String> = match port {
        Value::Mapping(long) => ["published", "target"]
            .iter()
            .filter_map(|key| long.get(*key))
            .filter_map(|v| v.as_str().map(str::to_owned).or_else(|| v.as_u64().map(|n| n.to_string())))
            .collect(),
        Value::String(short) => vec![short.clone()],
        _ => Vec::new(),
    };
    for text in texts {
        for range in text.split([':', '/']) {
            let Some((start, end)) = range.split_once('-') else { continue };
            if let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.parse::<u16>())
                && start > end
            {
                errors.push(Diagnostic::at_str(path, format!("the port range `{range}` ends before it starts")));
            }
        }
    }
}

fn warn_unapplied(value: &Value, warnings: &mut Vec<Diagnostic>) {
    let Some(top) = value.as_mapping() else { return };
    for (key, _) in top {
        if let Some(key) = key.as_str()
            && !matches!(key, "services" | "networks" | "volumes" | "name" | "version")
            && !key.starts_with("x-")
        {
            let message = if matches!(key, "secrets" | "configs") {
                format!("`{key}` are applied on Swarm targets only")
            } else {
                format!("`{key}` is not applied by WindFlow")
            };
            warnings.push(Diagnostic::at_str(key, message));
        }
    }
    let Some(services) = top.get("services").and_then(Value::as_mapping) else { return };
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        for (key, item) in service.as_mapping().into_iter().flatten() {
            let Some(key) = key.as_str() else { continue };
            if key.starts_with("x-") {
                continue;
            }
            if SWARM_ONLY_SERVICE_KEYS.contains(&key) {
                warnings.push(Diagnostic::at_str(
                    &format!("services.{name}.{key}"),
                    format!("`{key}` is applied on Swarm targets only"),
                ));
            } else if !APPLIED_SERVICE_KEYS.contains(&key) {
                warnings.push(Diagnostic::at_str(
                    &format!("services.{name}.{key}"),
                    format!("`{key}` is not applied by WindFlow"),
                ));
            }
            if key == "deploy" {
                for (deploy_key, _) in item.as_mapping().into_iter().flatten() {
                    let Some(deploy_key) = deploy_key.as_str() else { continue };
                    if !APPLIED_DEPLOY_KEYS.contains(&deploy_key) {
                        let on = if SWARM_ONLY_DEPLOY_KEYS.contains(&deploy_key) {
                            "is applied on Swarm targets only"
                        } else {
                            "is not applied by WindFlow"
                        };
                        warnings.push(Diagnostic::at_str(
                            &format!("services.{name}.deploy.{deploy_key}"),
                            format!("`deploy.{deploy_key}` {on}"),
                        ));
                    }
                }
            }
        }
    }
}

fn list_or_map(value: ListOrMap, path: &str, errors: &mut Vec<Diagnostic>) -> BTreeMap<String, String> {
    match value.into_map() {
        Ok(map) => map
            .into_iter()
            .map(|(key, value)| (key.to_string(), value.map(|v| v.to_string()).unwrap_or_default()))
            .collect(),
        Err(error) => {
            errors.push(Diagnostic::at_str(path, error.to_string()));
            BTreeMap::new()
        }
    }
}

fn millis(duration: Option<std::time::Duration>) -> Option<u64> {
    duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn command(command: compose_spec::service::Command) -> Vec<String> {
    match command {
        compose_spec::service::Command::String(s) => shell_words(&s),
        compose_spec::service::Command::List(list) => list,
    }
}

/// Splits a command string as Compose does (POSIX shell words, no expansion).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

fn convert(compose: Compose, project: &str, warnings: &mut Vec<Diagnostic>) -> Result<StackSpec, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let project = compose.name.as_ref().map_or_else(|| project_name(project), |n| project_name(n.as_str()));

    let mut networks: Vec<NetworkSpec> = compose
        .networks
        .into_iter()
        .map(|(name, resource)| match resource {
            Some(Resource::External { .. }) => NetworkSpec {
                name: name.to_string(),
                external: true,
                driver: None,
                internal: false,
                labels: BTreeMap::new(),
            },
            Some(Resource::Compose(network)) => NetworkSpec {
                name: name.to_string(),
                external: false,
                driver: network.driver.map(|d| d.to_string()),
                internal: network.internal,
                labels: list_or_map(network.labels, &format!("networks.{name}.labels"), &mut errors),
            },
            None => NetworkSpec {
                name: name.to_string(),
                external: false,
                driver: None,
                internal: false,
                labels: BTreeMap::new(),
            },
        })
        .collect();
    let volumes: Vec<VolumeSpec> = compose
        .volumes
        .into_iter()
        .map(|(name, resource)| match resource {
            Some(Resource::External { .. }) => {
                VolumeSpec { name: name.to_string(), external: true, driver: None, labels: BTreeMap::new() }
            }
            Some(Resource::Compose(volume)) => VolumeSpec {
                name: name.to_string(),
                external: false,
                driver: volume.driver,
                labels: list_or_map(volume.labels, &format!("volumes.{name}.labels"), &mut errors),
            },
            None => VolumeSpec { name: name.to_string(), external: false, driver: None, labels: BTreeMap::new() },
        })
        .collect();

    let names: BTreeSet<String> = compose.services.keys().map(|k| k.to_string()).collect();
    let mut services = Vec::new();
    let mut uses_default_network = false;
    for (name, service) in compose.services {
        let name = name.to_string();
        let spec = convert_service(&name, service, &names, &networks, &volumes, &mut errors, warnings);
        uses_default_network |= spec.networks.contains_key("default");
        services.push(spec);
    }
    if uses_default_network && !networks.iter().any(|n| n.name == "default") {
        networks.push(NetworkSpec {
            name: "default".into(),
            external: false,
            driver: None,
            internal: false,
            labels: BTreeMap::new(),
        });
    }
    let services = match dependency_order(services) {
        Ok(services) => services,
        Err(cycle) => {
            errors.push(Diagnostic::at_str("services", format!("dependency cycle: {}", cycle.join(" → "))));
            Vec::new()
        }
    };
    if errors.is_empty() { Ok(StackSpec { project, services, networks, volumes }) } else { Err(errors) }
}

#[allow(clippy::too_many_arguments)]
fn convert_service(
    name: &str,
    service: Service,
    services: &BTreeSet<String>,
    networks: &[NetworkSpec],
    volumes: &[VolumeSpec],
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> ServiceSpec {
    let at = |field: &str| format!("services.{name}.{field}");
    let image = match (&service.image, &service.build) {
        (Some(image), _) => image.to_string(),
        (None, Some(_)) => {
            errors.push(Diagnostic::at_str(
                &at("build"),
                "building images is not supported: give the service an `image` from a registry the target can reach",
            ));
            String::new()
        }
        (None, None) => {
            errors.push(Diagnostic::at_str(&format!("services.{name}"), "the service has no `image`"));
            String::new()
        }
    };
    if service.env_file.is_some() {
        warnings.push(Diagnostic::at_str(&at("env_file"), "env_file is read on the machine that saves the stack; put its variables in `environment` or the stack's variables"));
    }
    let pull_policy = match service.pull_policy {
        Some(compose_spec::service::PullPolicy::Always) => PullPolicy::Always,
        Some(compose_spec::service::PullPolicy::Never) => PullPolicy::Never,
        Some(compose_spec::service::PullPolicy::Build) => {
            errors.push(Diagnostic::at_str(&at("pull_policy"), "pull_policy `build` is not supported"));
            PullPolicy::Missing
        }
        Some(compose_spec::service::PullPolicy::Missing) | None => PullPolicy::Missing,
    };

    let ports = compose_spec::service::ports::into_long_iter(service.ports)
        .enumerate()
        .filter_map(|(index, port)| {
            let host_port = match port.published {
                None => None,
                Some(range) if range.end().is_none_or(|end| end == range.start()) => Some(range.start()),
                Some(_) => {
                    errors.push(Diagnostic::at_str(
                        &format!("{}[{index}]", at("ports")),
                        "published port ranges are not supported; publish each port",
                    ));
                    return None;
                }
            };
            let protocol = match port.protocol.as_ref().map(|p| p.as_str()) {
                None | Some("tcp") => Protocol::Tcp,
                Some("udp") => Protocol::Udp,
                Some(other) => {
                    errors.push(Diagnostic::at_str(
                        &format!("{}[{index}]", at("ports")),
                        format!("protocol `{other}` is not supported (tcp or udp)"),
                    ));
                    return None;
                }
            };
            Some(PortSpec {
                container_port: port.target,
                host_port,
                host_ip: port.host_ip.map(|ip| ip.to_string()),
                protocol,
            })
        })
        .collect();

    let mut mounts: Vec<MountSpec> = compose_spec::service::volumes::into_long_iter(service.volumes)
        .enumerate()
        .filter_map(|(index, mount)| {
            use compose_spec::service::volumes::Mount;
            match mount {
                Mount::Volume(volume) => {
                    let source = match volume.source {
                        Some(source) => {
                            let source = source.to_string();
                            if !volumes.iter().any(|v| v.name == source) {
                                errors.push(Diagnostic::at_str(
                                    &format!("{}[{index}]", at("volumes")),
                                    format!("named volume `{source}` is not declared under the top-level `volumes`"),
                                ));
                            }
                            MountSource::Volume(source)
                        }
                        None => MountSource::Anonymous,
                    };
                    Some(MountSpec {
                        source,
                        target: volume.common.target.as_path().display().to_string(),
                        read_only: volume.common.read_only,
                    })
                }
                Mount::Bind(bind) => Some(MountSpec {
                    source: MountSource::Bind(bind.source.as_path().display().to_string()),
                    target: bind.common.target.as_path().display().to_string(),
                    read_only: bind.common.read_only,
                }),
                Mount::Tmpfs(tmpfs) => Some(MountSpec {
                    source: MountSource::Tmpfs {
                        size_bytes: tmpfs.tmpfs.and_then(|t| t.size).and_then(|s| s.into_bytes()),
                    },
                    target: tmpfs.common.target.as_path().display().to_string(),
                    read_only: tmpfs.common.read_only,
                }),
                other => {
                    errors.push(Diagnostic::at_str(
                        &format!("{}[{index}]", at("volumes")),
                        format!("mount type {other:?} is not supported"),
                    ));
                    None
                }
            }
        })
        .collect();
    if let Some(tmpfs) = service.tmpfs {
        for target in tmpfs.into_list() {
            mounts.push(MountSpec {
                source: MountSource::Tmpfs { size_bytes: None },
                target: target.as_path().display().to_string(),
                read_only: false,
            });
        }
    }

    let service_networks: BTreeMap<String, Vec<String>> = match service.network_config {
        None => BTreeMap::from([("default".to_owned(), vec![])]),
        Some(compose_spec::service::NetworkConfig::NetworkMode(mode)) => {
            errors.push(Diagnostic::at_str(
                &at("network_mode"),
                format!("network_mode `{mode}` is not supported; use networks"),
            ));
            BTreeMap::new()
        }
        Some(compose_spec::service::NetworkConfig::Networks(ShortOrLong::Short(list))) => {
            list.into_iter().map(|n| (n.to_string(), vec![])).collect()
        }
        Some(compose_spec::service::NetworkConfig::Networks(ShortOrLong::Long(map))) => map
            .into_iter()
            .map(|(n, network)| {
                (
                    n.to_string(),
                    network.map(|n| n.aliases.into_iter().map(|a| a.to_string()).collect()).unwrap_or_default(),
                )
            })
            .collect(),
    };
    for network in service_networks.keys() {
        if network != "default" && !networks.iter().any(|n| &n.name == network) {
            errors.push(Diagnostic::at_str(
                &format!("{}.{network}", at("networks")),
                format!("network `{network}` is not declared under the top-level `networks`"),
            ));
        }
    }

    let depends_on: Vec<Dependency> = match service.depends_on {
        ShortOrLong::Short(list) => {
            list.into_iter().map(|s| (s.to_string(), Condition::ServiceStarted)).collect::<Vec<_>>()
        }
        ShortOrLong::Long(map) => map.into_iter().map(|(s, d)| (s.to_string(), d.condition)).collect(),
    }
    .into_iter()
    .filter_map(|(dependency, condition)| {
        if !services.contains(&dependency) {
            errors.push(Diagnostic::at_str(
                &format!("{}.{dependency}", at("depends_on")),
                format!("service `{dependency}` does not exist"),
            ));
            return None;
        }
        if dependency == name {
            errors.push(Diagnostic::at_str(
                &format!("{}.{dependency}", at("depends_on")),
                "a service cannot depend on itself",
            ));
            return None;
        }
        let condition = match condition {
            Condition::ServiceStarted => DependencyCondition::Started,
            Condition::ServiceHealthy => DependencyCondition::Healthy,
            Condition::ServiceCompletedSuccessfully => DependencyCondition::CompletedSuccessfully,
        };
        Some(Dependency { service: dependency, condition })
    })
    .collect();

    let healthcheck = service.healthcheck.map(|check| match check {
        ComposeHealthcheck::Disable => Healthcheck {
            test: vec!["NONE".into()],
            interval_ms: None,
            timeout_ms: None,
            retries: None,
            start_period_ms: None,
        },
        ComposeHealthcheck::Command(c) => Healthcheck {
            test: match c.test {
                Some(compose_spec::service::healthcheck::Test::Command(args)) => {
                    std::iter::once("CMD".to_owned()).chain(args).collect()
                }
                Some(compose_spec::service::healthcheck::Test::ShellCommand(shell)) => vec!["CMD-SHELL".into(), shell],
                None => vec![],
            },
            interval_ms: millis(c.interval),
            timeout_ms: millis(c.timeout),
            retries: c.retries.map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
            start_period_ms: millis(c.start_period),
        },
    });

    let restart = match service.restart {
        None | Some(Restart::No) => RestartPolicy::No,
        Some(Restart::Always) => RestartPolicy::Always,
        Some(Restart::OnFailure) => RestartPolicy::OnFailure { max_retries: None },
        Some(Restart::UnlessStopped) => RestartPolicy::UnlessStopped,
    };

    let mut resources = Resources {
        nano_cpus: service.cpus.map(|c| (c.into_inner() * 1e9) as u64),
        memory_bytes: service.mem_limit.and_then(|m| m.into_bytes()),
        memory_reservation_bytes: service.mem_reservation.and_then(|m| m.into_bytes()),
        pids_limit: service.pids_limit.and_then(|l| match l {
            compose_spec::service::Limit::Value(v) => Some(u64::from(v)),
            compose_spec::service::Limit::Unlimited => None,
        }),
    };
    let mut labels = list_or_map(service.labels, &at("labels"), errors);
    let mut replicas = service.scale.map(|s| u32::try_from(s).unwrap_or(u32::MAX));
    if let Some(deploy) = service.deploy {
        replicas = deploy.replicas.map(|r| u32::try_from(r).unwrap_or(u32::MAX)).or(replicas);
        if let Some(limits) = deploy.resources.as_ref().and_then(|r| r.limits.as_ref()) {
            resources.nano_cpus = limits.cpus.map(|c| (c.into_inner() * 1e9) as u64).or(resources.nano_cpus);
            resources.memory_bytes = limits.memory.and_then(|m| m.into_bytes()).or(resources.memory_bytes);
        }
        if let Some(reservations) = deploy.resources.as_ref().and_then(|r| r.reservations.as_ref()) {
            resources.memory_reservation_bytes =
                reservations.memory.and_then(|m| m.into_bytes()).or(resources.memory_reservation_bytes);
        }
        labels.extend(list_or_map(deploy.labels, &at("deploy.labels"), errors));
    }
    if service.container_name.is_some() {
        warnings.push(Diagnostic::at_str(&at("container_name"), "container_name is ignored: WindFlow names containers <project>-<service>-<n> so that replicas and updates work"));
    }

    ServiceSpec {
        name: name.to_owned(),
        image,
        pull_policy,
        command: service.command.map(command),
        entrypoint: service.entrypoint.map(command),
        environment: list_or_map(service.environment, &at("environment"), errors),
        ports,
        mounts,
        networks: service_networks,
        depends_on,
        healthcheck,
        restart,
        resources,
        labels,
        replicas: replicas.unwrap_or(1),
        user: service.user.map(|u| u.to_string()),
        working_dir: service.working_dir.map(|w| w.as_path().display().to_string()),
        hostname: service.hostname.map(|h| h.to_string()),
        extra_hosts: service.extra_hosts.into_iter().map(|(host, ip)| format!("{host}:{ip}")).collect(),
        stop_grace_period_ms: millis(service.stop_grace_period),
        read_only: service.read_only,
        privileged: service.privileged,
        cap_add: service.cap_add.into_iter().collect(),
        cap_drop: service.cap_drop.into_iter().collect(),
    }
}

/// Orders services so that each comes after its dependencies (stable: declaration order
/// otherwise). On a cycle, returns the services on it.
fn dependency_order(services: Vec<ServiceSpec>) -> Result<Vec<ServiceSpec>, Vec<String>> {
    let mut ordered: Vec<ServiceSpec> = Vec::with_capacity(services.len());
    let mut remaining = services;
    while !remaining.is_empty() {
        let placed: BTreeSet<String> = ordered.iter().map(|s| s.name.clone()).collect();
        let ready = remaining.iter().position(|s| s.depends_on.iter().all(|d| placed.contains(&d.service)));
        match ready {
            Some(index) => ordered.push(remaining.remove(index)),
            None => return Err(cycle_among(&remaining)),
        }
    }
    Ok(ordered)
}

/// Follows dependencies among the unplaced services until one repeats: that loop is the cycle.
fn cycle_among(remaining: &[ServiceSpec]) -> Vec<String> {
    let mut trail: Vec<String> = Vec::new();
    let mut current = remaining.first().map(|s| s.name.clone()).unwrap_or_default();
    loop {
        if let Some(start) = trail.iter().position(|n| *n == current) {
            let mut cycle = trail[start..].to_vec();
            cycle.push(current);
            return cycle;
        }
        trail.push(current.clone());
        let next = remaining
            .iter()
            .find(|s| s.name == current)
            .and_then(|s| s.depends_on.iter().find(|d| remaining.iter().any(|r| r.name == d.service)))
            .map(|d| d.service.clone());
        match next {
            Some(next) => current = next,
            None => return trail,
        }
    }
}

#[cfg(test)]
mod tests;
