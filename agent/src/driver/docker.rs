//! The Docker driver: Compose semantics implemented natively on the engine API (bollard).
//!
//! Names and labels follow Docker Compose, so `docker compose ls/ps` see WindFlow's projects:
//! containers `<project>-<service>-<n>`, networks and volumes `<project>_<name>`, and the
//! `com.docker.compose.*` labels including the service's configuration hash. A deploy creates
//! what is missing, recreates only services whose hash changed (in dependency order, waiting
//! for each dependency's condition), and removes what the spec no longer has.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, Mount,
    MountTmpfsOptions, MountType, NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, PortBinding,
    RestartPolicy as DockerRestart, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions, LogsOptions, RemoveContainerOptions, RemoveVolumeOptions, StatsOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use uuid::Uuid;
use windflow_protocol::messages::{
    ContainerState, ContainerStatus, ContainerUsage, HealthState, LogChunk, LogStream, ServiceStatus, StackStatus,
};
use windflow_protocol::stack::{
    DependencyCondition, MountSource, Protocol, PullPolicy, RestartPolicy, ServiceSpec, StackSpec,
};

use super::usage::{Reading, summarise};
use super::{DriverError, ProgressSender, report};

pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_NUMBER: &str = "com.docker.compose.container-number";
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
pub const LABEL_NETWORK: &str = "com.docker.compose.network";
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";
pub const LABEL_DEPLOYMENT: &str = "io.windflow.deployment";
pub const LABEL_MANAGED: &str = "io.windflow.managed";

/// How long a deploy waits for one dependency's condition.
const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(200);

pub(super) fn engine(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DriverError {
    let context = context.into();
    move |error| {
        let message = match error {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message,
            other => other.to_string(),
        };
        DriverError::Engine { context, message }
    }
}

pub(super) fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

#[derive(Debug, Clone)]
pub struct DockerDriver {
    docker: Docker,
}

pub(super) fn filters(pairs: &[(&str, String)]) -> Option<HashMap<String, Vec<String>>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (key, value) in pairs {
        map.entry((*key).to_owned()).or_default().push(value.clone());
    }
    Some(map)
}

fn project_filter(project: &str) -> Option<HashMap<String, Vec<String>>> {
    filters(&[("label", format!("{LABEL_PROJECT}={project}"))])
}

pub fn network_name(project: &str, network: &str) -> String {
    format!("{project}_{network}")
}

pub fn volume_name(project: &str, volume: &str) -> String {
    format!("{project}_{volume}")
}

pub fn container_name(project: &str, service: &str, number: u32) -> String {
    format!("{project}-{service}-{number}")
}

/// The user's labels plus Compose's and WindFlow's own, for a network or a volume.
fn managed_labels(
    user: &BTreeMap<String, String>,
    project: &str,
    (kind, name): (&str, &str),
    deployment_id: Uuid,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = user.clone().into_iter().collect();
    labels.insert(LABEL_PROJECT.into(), project.into());
    labels.insert(kind.into(), name.into());
    labels.insert(LABEL_DEPLOYMENT.into(), deployment_id.to_string());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels
}

/// A container of the project as listed by the engine.
#[derive(Debug, Clone)]
struct Existing {
    id: String,
    name: String,
    service: String,
    number: u32,
    config_hash: String,
    /// Started at least once (running, or stopped since): it has logs to follow.
    started: bool,
}

impl DockerDriver {
    pub async fn connect() -> Result<Self, DriverError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DriverError::Unreachable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| DriverError::Unreachable(e.to_string()))?;
        Ok(Self { docker })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes the project match `spec`.
    pub async fn apply(
        &self,
        deployment_id: Uuid,
        spec: &StackSpec,
        progress: &ProgressSender,
    ) -> Result<StackStatus, DriverError> {
        let project = &spec.project;
        for network in &spec.networks {
            self.ensure_network(project, network, deployment_id, progress).await?;
        }
        for volume in &spec.volumes {
            self.ensure_volume(project, volume, deployment_id, progress).await?;
        }
        let existing = self.existing(project).await?;
        // Services the spec no longer has.
        for container in existing.iter().filter(|c| !spec.services.iter().any(|s| s.name == c.service)) {
            report(progress, format!("removing {} (service {} is gone)", container.name, container.service), None);
            self.remove_container(&container.id, None).await?;
        }
        let total = spec.services.len().max(1);
        for (index, service) in spec.services.iter().enumerate() {
            let percent = u8::try_from(index * 100 / total).ok();
            self.wait_for_dependencies(project, service, progress).await?;
            self.apply_service(deployment_id, spec, service, &existing, progress, percent).await?;
        }
        report(progress, "done", Some(100));
        self.status(deployment_id, project).await
    }

    async fn ensure_network(
        &self,
        project: &str,
        network: &windflow_protocol::stack::NetworkSpec,
        deployment_id: Uuid,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        let name = if network.external { network.name.clone() } else { network_name(project, &network.name) };
        match self.docker.inspect_network(&name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine(format!("inspecting network {name}"))(e)),
        }
        if network.external {
            return Err(DriverError::Engine {
                context: format!("network {name}"),
                message: "external network does not exist".into(),
            });
        }
        report(progress, format!("creating network {name}"), None);
        let labels = managed_labels(&network.labels, project, (LABEL_NETWORK, &network.name), deployment_id);
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some(network.driver.clone().unwrap_or_else(|| "bridge".into())),
            internal: Some(network.internal),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker.create_network(request).await.map_err(engine(format!("creating network {name}")))?;
        Ok(())
    }

    async fn ensure_volume(
        &self,
        project: &str,
        volume: &windflow_protocol::stack::VolumeSpec,
        deployment_id: Uuid,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        let name = if volume.external { volume.name.clone() } else { volume_name(project, &volume.name) };
        match self.docker.inspect_volume(&name).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine(format!("inspecting volume {name}"))(e)),
        }
        if volume.external {
            return Err(DriverError::Engine {
                context: format!("volume {name}"),
                message: "external volume does not exist".into(),
            });
        }
        report(progress, format!("creating volume {name}"), None);
        let labels = managed_labels(&volume.labels, project, (LABEL_VOLUME, &volume.name), deployment_id);
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            driver: volume.driver.clone(),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker.create_volume(request).await.map_err(engine(format!("creating volume {name}")))?;
        Ok(())
    }

    async fn existing(&self, project: &str) -> Result<Vec<Existing>, DriverError> {
        let options = ListContainersOptions { all: true, filters: project_filter(project), ..Default::default() };
        let containers = self.docker.list_containers(Some(options)).await.map_err(engine("listing containers"))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(Existing {
                    id: c.id?,
                    name: c
                        .names
                        .and_then(|n| n.first().cloned())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned(),
                    service: labels.get(LABEL_SERVICE)?.clone(),
                    number: labels.get(LABEL_NUMBER).and_then(|n| n.parse().ok()).unwrap_or(1),
                    config_hash: labels.get(LABEL_CONFIG_HASH).cloned().unwrap_or_default(),
                    started: c.state.is_some_and(|s| {
                        !matches!(
                            s,
                            bollard::models::ContainerSummaryStateEnum::CREATED
                                | bollard::models::ContainerSummaryStateEnum::EMPTY
                        )
                    }),
                })
            })
            .collect())
    }

    async fn apply_service(
        &self,
        deployment_id: Uuid,
        spec: &StackSpec,
        service: &ServiceSpec,
        existing: &[Existing],
        progress: &ProgressSender,
        percent: Option<u8>,
    ) -> Result<(), DriverError> {
        let project = &spec.project;
        let hash = service.config_hash();
        let mine: Vec<&Existing> = existing.iter().filter(|c| c.service == service.name).collect();
        let mut image_ready = false;
        for number in 1..=service.replicas {
            let name = container_name(project, &service.name, number);
            let current = mine.iter().find(|c| c.number == number);
            if let Some(current) = current {
                if current.config_hash == hash {
                    self.ensure_started(current, service, progress).await?;
                    continue;
                }
                report(progress, format!("recreating {name} (configuration changed)"), percent);
                self.remove_container(&current.id, service.stop_grace_period_ms).await?;
            }
            if !image_ready {
                self.ensure_image(service, progress).await?;
                image_ready = true;
            }
            report(progress, format!("creating {name}"), percent);
            let id = self.create_container(deployment_id, spec, service, number, &hash).await?;
            report(progress, format!("starting {name}"), percent);
            self.docker.start_container(&id, None).await.map_err(engine(format!("starting {name}")))?;
        }
        for extra in mine.iter().filter(|c| c.number > service.replicas) {
            report(progress, format!("removing {} (scaled down)", extra.name), percent);
            self.remove_container(&extra.id, service.stop_grace_period_ms).await?;
        }
        Ok(())
    }

    /// An unchanged container is left alone, unless it was stopped: then it is started again,
    /// except a one-shot service (no restart policy) that already completed successfully.
    async fn ensure_started(
        &self,
        container: &Existing,
        service: &ServiceSpec,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        let inspect = self
            .docker
            .inspect_container(&container.id, None::<InspectContainerOptions>)
            .await
            .map_err(engine(format!("inspecting {}", container.name)))?;
        let state = inspect.state.unwrap_or_default();
        match state.status {
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING) => Ok(()),
            Some(ContainerStateStatusEnum::EXITED)
                if state.exit_code == Some(0) && service.restart == RestartPolicy::No =>
            {
                Ok(())
            }
            _ => {
                report(progress, format!("starting {} again", container.name), None);
                self.docker
                    .start_container(&container.id, None)
                    .await
                    .map_err(engine(format!("starting {}", container.name)))
            }
        }
    }

    async fn ensure_image(&self, service: &ServiceSpec, progress: &ProgressSender) -> Result<(), DriverError> {
        let present = match self.docker.inspect_image(&service.image).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(engine(format!("inspecting image {}", service.image))(e)),
        };
        match (service.pull_policy, present) {
            (PullPolicy::Missing, true) | (PullPolicy::Never, true) => Ok(()),
            (PullPolicy::Never, false) => Err(DriverError::Engine {
                context: format!("service {}", service.name),
                message: format!("image {} is not present and pull_policy is never", service.image),
            }),
            (PullPolicy::Missing, false) | (PullPolicy::Always, _) => self.pull(&service.image, progress).await,
        }
    }

    /// Pulls an image, reporting the share of layer bytes downloaded.
    async fn pull(&self, image: &str, progress: &ProgressSender) -> Result<(), DriverError> {
        let (repository, tag) = split_image(image);
        report(progress, format!("pulling {image}"), Some(0));
        let options = CreateImageOptions { from_image: Some(repository), tag: Some(tag), ..Default::default() };
        let mut stream = self.docker.create_image(Some(options), None, None);
        let mut layers: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut last_report = Instant::now();
        while let Some(item) = stream.next().await {
            let info = item.map_err(engine(format!("pulling {image}")))?;
            if let Some(detail) = info.error_detail {
                return Err(DriverError::Engine {
                    context: format!("pulling {image}"),
                    message: detail.message.unwrap_or_default(),
                });
            }
            if let (Some(id), Some(detail)) = (info.id, info.progress_detail)
                && let (Some(current), Some(total)) = (detail.current, detail.total)
            {
                layers.insert(id, (current, total));
            }
            if last_report.elapsed() >= Duration::from_millis(500) && !layers.is_empty() {
                let (current, total) = layers.values().fold((0i64, 0i64), |(c, t), (lc, lt)| (c + lc, t + lt));
                let percent = if total > 0 { u8::try_from((current * 100 / total).clamp(0, 100)).ok() } else { None };
                report(progress, format!("pulling {image}"), percent);
                last_report = Instant::now();
            }
        }
        report(progress, format!("pulled {image}"), Some(100));
        Ok(())
    }

    async fn create_container(
        &self,
        deployment_id: Uuid,
        spec: &StackSpec,
        service: &ServiceSpec,
        number: u32,
        hash: &str,
    ) -> Result<String, DriverError> {
        let project = &spec.project;
        let name = container_name(project, &service.name, number);
        let mut labels: HashMap<String, String> = service.labels.clone().into_iter().collect();
        labels.insert(LABEL_PROJECT.into(), project.clone());
        labels.insert(LABEL_SERVICE.into(), service.name.clone());
        labels.insert(LABEL_NUMBER.into(), number.to_string());
        labels.insert(LABEL_CONFIG_HASH.into(), hash.into());
        labels.insert(LABEL_ONEOFF.into(), "False".into());
        labels.insert(LABEL_DEPLOYMENT.into(), deployment_id.to_string());
        labels.insert(LABEL_MANAGED.into(), "true".into());

        let port_key = |p: &windflow_protocol::stack::PortSpec| {
            format!("{}/{}", p.container_port, if p.protocol == Protocol::Udp { "udp" } else { "tcp" })
        };
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for port in &service.ports {
            bindings.entry(port_key(port)).or_insert_with(|| Some(vec![])).get_or_insert_with(Vec::new).push(
                PortBinding {
                    host_ip: port.host_ip.clone(),
                    host_port: port.host_port.map(|p| p.to_string()).or(Some(String::new())),
                },
            );
        }
        let mounts = service
            .mounts
            .iter()
            .map(|m| {
                let (typ, source, tmpfs_options) = match &m.source {
                    MountSource::Volume(v) => {
                        let external = spec.volumes.iter().any(|spec| &spec.name == v && spec.external);
                        (MountType::VOLUME, Some(if external { v.clone() } else { volume_name(project, v) }), None)
                    }
                    MountSource::Anonymous => (MountType::VOLUME, None, None),
                    MountSource::Bind(path) => (MountType::BIND, Some(path.clone()), None),
                    MountSource::Tmpfs { size_bytes } => (
                        MountType::TMPFS,
                        None,
                        Some(MountTmpfsOptions {
                            size_bytes: size_bytes.and_then(|s| i64::try_from(s).ok()),
                            ..Default::default()
                        }),
                    ),
                };
                Mount {
                    target: Some(m.target.clone()),
                    source,
                    typ: Some(typ),
                    read_only: Some(m.read_only),
                    tmpfs_options,
                    ..Default::default()
                }
            })
            .collect();
        let restart = match service.restart {
            RestartPolicy::No => DockerRestart { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None },
            RestartPolicy::Always => {
                DockerRestart { name: Some(RestartPolicyNameEnum::ALWAYS), maximum_retry_count: None }
            }
            RestartPolicy::UnlessStopped => {
                DockerRestart { name: Some(RestartPolicyNameEnum::UNLESS_STOPPED), maximum_retry_count: None }
            }
            RestartPolicy::OnFailure { max_retries } => DockerRestart {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: max_retries.map(i64::from),
            },
        };
        let to_i64 = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        let nanos = |ms: Option<u64>| ms.and_then(|ms| i64::try_from(ms.saturating_mul(1_000_000)).ok());
        let host_config = HostConfig {
            port_bindings: Some(bindings),
            mounts: Some(mounts),
            restart_policy: Some(restart),
            nano_cpus: to_i64(service.resources.nano_cpus),
            memory: to_i64(service.resources.memory_bytes),
            memory_reservation: to_i64(service.resources.memory_reservation_bytes),
            pids_limit: to_i64(service.resources.pids_limit),
            extra_hosts: Some(service.extra_hosts.clone()),
            privileged: Some(service.privileged),
            cap_add: Some(service.cap_add.clone()),
            cap_drop: Some(service.cap_drop.clone()),
            readonly_rootfs: Some(service.read_only),
            ..Default::default()
        };
        let mut networks = service.networks.iter();
        let first = networks.next();
        let endpoint = |network: &str, aliases: &[String]| {
            let mut all = vec![service.name.clone()];
            all.extend(aliases.iter().cloned());
            let external = spec.networks.iter().any(|n| n.name == network && n.external);
            (
                if external { network.to_owned() } else { network_name(project, network) },
                EndpointSettings { aliases: Some(all), ..Default::default() },
            )
        };
        let networking_config = first.map(|(network, aliases)| {
            let (name, settings) = endpoint(network, aliases);
            NetworkingConfig { endpoints_config: Some(HashMap::from([(name, settings)])) }
        });
        let body = ContainerCreateBody {
            image: Some(service.image.clone()),
            cmd: service.command.clone(),
            entrypoint: service.entrypoint.clone(),
            env: Some(service.environment.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(service.ports.iter().map(port_key).collect()),
            healthcheck: service.healthcheck.as_ref().map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: nanos(h.interval_ms),
                timeout: nanos(h.timeout_ms),
                retries: h.retries.map(i64::from),
                start_period: nanos(h.start_period_ms),
                ..Default::default()
            }),
            user: service.user.clone(),
            working_dir: service.working_dir.clone(),
            hostname: service.hostname.clone(),
            stop_timeout: service.stop_grace_period_ms.map(|ms| i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)),
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created =
            self.docker.create_container(Some(options), body).await.map_err(engine(format!("creating {name}")))?;
        for (network, aliases) in networks {
            let (network_name, settings) = endpoint(network, aliases);
            let request = NetworkConnectRequest { container: created.id.clone(), endpoint_config: Some(settings) };
            self.docker
                .connect_network(&network_name, request)
                .await
                .map_err(engine(format!("connecting {name} to {network_name}")))?;
        }
        Ok(created.id)
    }

    async fn remove_container(&self, id: &str, grace_ms: Option<u64>) -> Result<(), DriverError> {
        // Without a grace period the engine uses the container's own StopTimeout, which
        // creation set from the service's stop_grace_period.
        let t = grace_ms.map(|ms| i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX));
        match self.docker.stop_container(id, Some(StopContainerOptions { t, ..Default::default() })).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(e) => return Err(engine(format!("stopping {id}"))(e)),
        }
        match self.docker.remove_container(id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine(format!("removing {id}"))(e)),
        }
    }

    async fn wait_for_dependencies(
        &self,
        project: &str,
        service: &ServiceSpec,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        for dependency in &service.depends_on {
            let waiting = match dependency.condition {
                DependencyCondition::Started => continue,
                DependencyCondition::Healthy => format!("waiting for {} to be healthy", dependency.service),
                DependencyCondition::CompletedSuccessfully => format!("waiting for {} to complete", dependency.service),
            };
            report(progress, waiting, None);
            let deadline = Instant::now() + DEPENDENCY_TIMEOUT;
            loop {
                let containers = self.service_states(project, &dependency.service).await?;
                let verdict = match dependency.condition {
                    DependencyCondition::Healthy => healthy_verdict(&dependency.service, &containers),
                    _ => completed_verdict(&dependency.service, &containers),
                };
                match verdict {
                    Some(Ok(())) => break,
                    Some(Err(message)) => return Err(DriverError::Failed(message)),
                    None if Instant::now() >= deadline => {
                        return Err(DriverError::Failed(format!("timed out waiting for {}", dependency.service)));
                    }
                    None => tokio::time::sleep(POLL).await,
                }
            }
        }
        Ok(())
    }

    async fn service_states(&self, project: &str, service: &str) -> Result<Vec<ContainerStatus>, DriverError> {
        let status = self.status(Uuid::nil(), project).await?;
        Ok(status.services.into_iter().find(|s| s.service == service).map(|s| s.containers).unwrap_or_default())
    }

    /// Every container of the project, grouped by service.
    pub async fn status(&self, deployment_id: Uuid, project: &str) -> Result<StackStatus, DriverError> {
        let mut services: BTreeMap<String, Vec<ContainerStatus>> = BTreeMap::new();
        for container in self.existing(project).await? {
            let inspect = match self.docker.inspect_container(&container.id, None::<InspectContainerOptions>).await {
                Ok(inspect) => inspect,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(engine(format!("inspecting {}", container.name))(e)),
            };
            let state = inspect.state.unwrap_or_default();
            let status = ContainerStatus {
                name: container.name.clone(),
                id: container.id.clone(),
                state: match state.status {
                    Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
                    Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
                    Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
                    Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
                    Some(ContainerStateStatusEnum::EXITED) => {
                        ContainerState::Exited { code: state.exit_code.unwrap_or_default() }
                    }
                    Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
                    other => ContainerState::Other(other.map(|s| s.to_string()).unwrap_or_default()),
                },
                health: state.health.and_then(|h| match h.status {
                    Some(HealthStatusEnum::STARTING) => Some(HealthState::Starting),
                    Some(HealthStatusEnum::HEALTHY) => Some(HealthState::Healthy),
                    Some(HealthStatusEnum::UNHEALTHY) => Some(HealthState::Unhealthy),
                    _ => None,
                }),
                restart_count: u32::try_from(inspect.restart_count.unwrap_or_default()).unwrap_or(u32::MAX),
                config_hash: container.config_hash.clone(),
            };
            services.entry(container.service.clone()).or_default().push(status);
        }
        Ok(StackStatus {
            deployment_id,
            project: project.to_owned(),
            services: services
                .into_iter()
                .map(|(service, mut containers)| {
                    containers.sort_by(|a, b| a.name.cmp(&b.name));
                    ServiceStatus { service, containers }
                })
                .collect(),
        })
    }

    /// The logs of the project's containers (of one service, or all), merged into one channel.
    /// With `follow`, containers that appear later (recreated by an update or a repair) are
    /// joined as they start. Dropping the receiver stops everything.
    pub async fn logs(
        &self,
        project: &str,
        service: Option<&str>,
        tail: Option<u32>,
        since_unix_s: Option<i64>,
        follow: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<LogChunk>, DriverError> {
        let (out, chunks) = tokio::sync::mpsc::channel(256);
        let wanted = |c: &Existing| service.is_none_or(|s| c.service == s);
        let initial: Vec<Existing> = self.existing(project).await?.into_iter().filter(wanted).collect();
        let mut attached: std::collections::HashSet<String> = std::collections::HashSet::new();
        for container in initial {
            attached.insert(container.id.clone());
            tokio::spawn(pipe_logs(self.docker.clone(), container, tail, since_unix_s, follow, out.clone()));
        }
        if follow {
            let driver = self.clone();
            let project = project.to_owned();
            let service = service.map(str::to_owned);
            tokio::spawn(async move {
                while !out.is_closed() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let Ok(containers) = driver.existing(&project).await else { continue };
                    // A container is joined once it has started: following one that is only
                    // created ends at once, and it would never be joined again.
                    for container in containers
                        .into_iter()
                        .filter(|c| c.started && service.as_deref().is_none_or(|s| c.service == s))
                    {
                        if attached.insert(container.id.clone()) {
                            // A newcomer: all of its lines, it started after the follow did.
                            tokio::spawn(pipe_logs(driver.docker.clone(), container, None, None, true, out.clone()));
                        }
                    }
                }
            });
        }
        Ok(chunks)
    }

    /// What each running container of the project uses: `samples` readings, `interval` apart.
    pub async fn usage(
        &self,
        project: &str,
        samples: u32,
        interval: Duration,
    ) -> Result<Vec<ContainerUsage>, DriverError> {
        let containers: Vec<Existing> = self.existing(project).await?;
        let mut readings: Vec<Vec<Reading>> = vec![Vec::new(); containers.len()];
        for round in 0..samples.max(1) {
            if round > 0 {
                tokio::time::sleep(interval).await;
            }
            for (container, taken) in containers.iter().zip(readings.iter_mut()) {
                let options = StatsOptions { stream: false, one_shot: true };
                let mut stats = self.docker.stats(&container.id, Some(options));
                match stats.next().await {
                    Some(Ok(stats)) => taken.extend(Reading::from_stats(&stats)),
                    Some(Err(e)) if is_not_found(&e) => {}
                    Some(Err(e)) => return Err(engine(format!("reading the usage of {}", container.name))(e)),
                    None => {}
                }
            }
        }
        Ok(containers
            .iter()
            .zip(readings)
            // A stopped container reports nothing worth keeping.
            .filter(|(_, taken)| taken.iter().any(|r| r.cpu_total_ns > 0))
            .map(|(container, taken)| {
                let ((cpu_avg, cpu_peak), (memory_avg, memory_peak)) = summarise(&taken);
                ContainerUsage {
                    container: container.name.clone(),
                    service: container.service.clone(),
                    samples: u32::try_from(taken.len()).unwrap_or(u32::MAX),
                    cpu_millicores_avg: cpu_avg,
                    cpu_millicores_peak: cpu_peak,
                    memory_bytes_avg: memory_avg,
                    memory_bytes_peak: memory_peak,
                    memory_limit_bytes: taken.last().and_then(|r| r.limit_bytes),
                }
            })
            .collect())
    }

    /// Deployments this engine runs for WindFlow (id → project), found by their labels on
    /// containers and networks, so an agent restart knows them again.
    pub async fn managed(&self) -> Result<HashMap<Uuid, String>, DriverError> {
        let managed = filters(&[("label", format!("{LABEL_MANAGED}=true"))]);
        let mut found = HashMap::new();
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions { all: true, filters: managed.clone(), ..Default::default() }))
            .await
            .map_err(engine("listing containers"))?;
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: managed }))
            .await
            .map_err(engine("listing networks"))?;
        let labels =
            containers.into_iter().filter_map(|c| c.labels).chain(networks.into_iter().filter_map(|n| n.labels));
        for labels in labels {
            if let (Some(id), Some(project)) =
                (labels.get(LABEL_DEPLOYMENT).and_then(|d| Uuid::try_parse(d).ok()), labels.get(LABEL_PROJECT))
            {
                found.insert(id, project.clone());
            }
        }
        Ok(found)
    }

    /// Removes every container and network labelled with the project, and its volumes if asked.
    pub async fn remove(
        &self,
        project: &str,
        remove_volumes: bool,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        for container in self.existing(project).await? {
            report(progress, format!("removing {}", container.name), None);
            self.remove_container(&container.id, None).await?;
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: project_filter(project) }))
            .await
            .map_err(engine("listing networks"))?;
        for network in networks {
            let Some(name) = network.name else { continue };
            report(progress, format!("removing network {name}"), None);
            match self.docker.remove_network(&name).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(engine(format!("removing network {name}"))(e)),
            }
        }
        if remove_volumes {
            let volumes = self
                .docker
                .list_volumes(Some(ListVolumesOptions { filters: project_filter(project) }))
                .await
                .map_err(engine("listing volumes"))?;
            for volume in volumes.volumes.unwrap_or_default() {
                report(progress, format!("removing volume {}", volume.name), None);
                match self.docker.remove_volume(&volume.name, Some(RemoveVolumeOptions { force: true })).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(engine(format!("removing volume {}", volume.name))(e)),
                }
            }
        }
        report(progress, "removed", Some(100));
        Ok(())
    }
}

/// Copies one container's log lines into `out` until they end or `out` is closed. The engine
/// follows its own log files across rotation.
async fn pipe_logs(
    docker: Docker,
    container: Existing,
    tail: Option<u32>,
    since_unix_s: Option<i64>,
    follow: bool,
    out: tokio::sync::mpsc::Sender<LogChunk>,
) {
    use bollard::container::LogOutput;
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        timestamps: true,
        since: since_unix_s.and_then(|s| i32::try_from(s).ok()).unwrap_or(0),
        tail: tail.map_or_else(|| "all".to_owned(), |t| t.to_string()),
        ..Default::default()
    };
    let mut stream = docker.logs(&container.id, Some(options));
    while let Some(item) = stream.next().await {
        let (kind, bytes) = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => (LogStream::Stdout, message),
            Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(_) => return,
        };
        let (timestamp_unix_ms, data) = split_timestamp(&bytes);
        let chunk = LogChunk { source: container.name.clone(), stream: kind, timestamp_unix_ms, data: data.to_vec() };
        if out.send(chunk).await.is_err() {
            return;
        }
    }
}

/// Splits the RFC 3339 timestamp the engine puts before each line (`timestamps=true`).
pub(super) fn split_timestamp(line: &[u8]) -> (u64, &[u8]) {
    let Some(space) = line.iter().position(|b| *b == b' ') else { return (0, line) };
    let parsed = std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok());
    match parsed {
        Some(at) => (u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0), &line[space + 1..]),
        None => (0, line),
    }
}

/// `Some(Ok)` when every container of the dependency is healthy, `Some(Err)` when one can no
/// longer become healthy, `None` while it may still.
fn healthy_verdict(service: &str, containers: &[ContainerStatus]) -> Option<Result<(), String>> {
    if containers.is_empty() {
        return None;
    }
    for c in containers {
        match (&c.state, c.health) {
            (ContainerState::Exited { code }, _) => {
                return Some(Err(format!("dependency {service} exited with code {code} before becoming healthy")));
            }
            (_, Some(HealthState::Unhealthy)) => return Some(Err(format!("dependency {service} is unhealthy"))),
            (_, None) if c.state == ContainerState::Running => {
                return Some(Err(format!("dependency {service} has no healthcheck, so it can never be healthy")));
            }
            (_, Some(HealthState::Healthy)) => {}
            _ => return None,
        }
    }
    Some(Ok(()))
}

fn completed_verdict(service: &str, containers: &[ContainerStatus]) -> Option<Result<(), String>> {
    if containers.is_empty() {
        return None;
    }
    for c in containers {
        match c.state {
            ContainerState::Exited { code: 0 } => {}
            ContainerState::Exited { code } => {
                return Some(Err(format!("dependency {service} exited with code {code}")));
            }
            _ => return None,
        }
    }
    Some(Ok(()))
}

/// `registry/repo:tag` or `repo@digest` → (repository, tag or digest); no tag means `latest`.
fn split_image(image: &str) -> (String, String) {
    if let Some((repository, digest)) = image.split_once('@') {
        return (repository.to_owned(), digest.to_owned());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (image[..last_slash + colon].to_owned(), image[last_slash + colon + 1..].to_owned()),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_their_engine_timestamp() {
        assert_eq!(
            split_timestamp(b"2026-11-25T16:54:16.123456789Z hello world\n"),
            (1_795_625_656_123, &b"hello world\n"[..])
        );
        assert_eq!(split_timestamp(b"no timestamp here"), (0, &b"no timestamp here"[..]));
    }

    #[test]
    fn image_references_split_into_repository_and_tag() {
        assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_image("busybox:1.36"), ("busybox".into(), "1.36".into()));
        assert_eq!(split_image("registry:5000/team/app:2"), ("registry:5000/team/app".into(), "2".into()));
        assert_eq!(split_image("registry:5000/app"), ("registry:5000/app".into(), "latest".into()));
        assert_eq!(split_image("app@sha256:abc"), ("app".into(), "sha256:abc".into()));
    }

    fn container(state: ContainerState, health: Option<HealthState>) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            id: "i".into(),
            state,
            health,
            restart_count: 0,
            config_hash: String::new(),
        }
    }

    #[test]
    fn health_waits_until_healthy_and_fails_on_unhealthy_or_exit() {
        assert_eq!(healthy_verdict("db", &[]), None);
        assert_eq!(healthy_verdict("db", &[container(ContainerState::Running, Some(HealthState::Starting))]), None);
        assert_eq!(
            healthy_verdict("db", &[container(ContainerState::Running, Some(HealthState::Healthy))]),
            Some(Ok(()))
        );
        assert!(matches!(
            healthy_verdict("db", &[container(ContainerState::Running, Some(HealthState::Unhealthy))]),
            Some(Err(_))
        ));
        assert!(matches!(healthy_verdict("db", &[container(ContainerState::Exited { code: 1 }, None)]), Some(Err(_))));
    }

    #[test]
    fn completion_needs_exit_code_zero() {
        assert_eq!(completed_verdict("init", &[container(ContainerState::Running, None)]), None);
        assert_eq!(completed_verdict("init", &[container(ContainerState::Exited { code: 0 }, None)]), Some(Ok(())));
        assert_eq!(
            completed_verdict("init", &[container(ContainerState::Exited { code: 2 }, None)]),
            Some(Err("dependency init exited with code 2".into()))
        );
    }
}
