//! The Swarm driver: a stack applied as Swarm services through a manager's API, the way
//! `docker stack deploy` would (names, `com.docker.stack.namespace`), built by
//! [`windflow_platforms::swarm`], the same functions the control plane renders with.
//!
//! An apply creates what is missing, updates only services whose spec changed (a hash label),
//! and then waits for Swarm to converge: every task running, or a rolling update completed.
//! A rolling update Swarm itself rolled back (`failure_action: rollback`) or paused is a failed
//! deploy, with Swarm's own reason. Secrets and configs are immutable in Swarm, so a new content
//! is a new object; the ones no service uses any more are removed afterwards.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ServiceSpec, ServiceUpdateStatus, ServiceUpdateStatusStateEnum, Task, TaskSpec, TaskState};
use bollard::query_parameters::{
    InspectServiceOptions, ListConfigsOptions, ListContainersOptions, ListNetworksOptions, ListSecretsOptions,
    ListServicesOptions, ListTasksOptions, ListVolumesOptions, LogsOptions, RemoveVolumeOptions, UpdateServiceOptions,
};
use futures_util::StreamExt;
use uuid::Uuid;
use windflow_platforms::swarm::{self as model, LABEL_CONFIG_HASH, LABEL_NAMESPACE, LABEL_SPEC_HASH};
use windflow_platforms::{LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_PROJECT};
use windflow_protocol::messages::{ContainerState, ContainerStatus, LogChunk, LogStream, ServiceStatus, StackStatus};
use windflow_protocol::stack::{StackSpec, SwarmSpec};

use super::DriverError;
use super::docker::{engine, filters, is_not_found, split_timestamp};
use super::{ProgressSender, report};

/// How long one service may take to converge (image pulls by the nodes included).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a removal waits for the services' containers to be gone before removing networks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// New tasks of a service that may fail before a deploy gives up on it (Swarm would go on
/// restarting them for ever).
const FAILED_TASKS_LIMIT: usize = 3;
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct SwarmDriver {
    docker: Docker,
}

fn namespace_filter(project: &str) -> Option<HashMap<String, Vec<String>>> {
    filters(&[("label", format!("{LABEL_NAMESPACE}={project}"))])
}

/// A service of the stack as Swarm has it.
#[derive(Debug, Clone)]
struct Existing {
    id: String,
    name: String,
    version: i32,
    spec_hash: Option<String>,
}

impl SwarmDriver {
    /// Connects to the local engine, which must be a Swarm manager.
    pub async fn connect() -> Result<Self, DriverError> {
        let docker = super::docker::DockerDriver::connect().await?.client().clone();
        let info = docker.info().await.map_err(engine("reading the engine's Swarm state"))?;
        if info.swarm.and_then(|s| s.control_available) != Some(true) {
            return Err(DriverError::Failed("this Docker engine is not a Swarm manager".into()));
        }
        Ok(Self { docker })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes the stack on the Swarm match `spec` and `swarm`, and waits until it converged.
    pub async fn apply(
        &self,
        deployment_id: Uuid,
        spec: &StackSpec,
        swarm: &SwarmSpec,
        progress: &ProgressSender,
    ) -> Result<StackStatus, DriverError> {
        let project = &spec.project;
        let refused: Vec<String> = model::check(spec, swarm)
            .into_iter()
            .filter(|f| f.blocking)
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect();
        if !refused.is_empty() {
            return Err(DriverError::Failed(format!("the stack cannot run on Swarm: {}", refused.join("; "))));
        }
        // Networks, secrets and configs first: services name them by id.
        let plan = model::objects(spec, swarm, deployment_id, &|_| String::new());
        self.ensure_networks(project, &plan, progress).await?;
        let ids = self.ensure_objects(project, &plan, progress).await?;
        let objects = model::objects(spec, swarm, deployment_id, &|name| ids.get(name).cloned().unwrap_or_default());

        let existing = self.services(project).await?;
        let wanted: HashSet<String> = objects.services.iter().filter_map(|s| s.name.clone()).collect();
        for gone in existing.values().filter(|s| !wanted.contains(&s.name)) {
            report(progress, format!("removing service {} (no longer in the stack)", gone.name), None);
            self.delete_service(&gone.name).await?;
        }
        let mut changed = Vec::new();
        for service in &objects.services {
            let name = service.name.clone().unwrap_or_default();
            let hash = service.labels.as_ref().and_then(|l| l.get(LABEL_SPEC_HASH)).cloned();
            match existing.get(&name) {
                Some(current) if current.spec_hash == hash => {}
                Some(current) => {
                    report(progress, format!("updating service {name}"), None);
                    let before = self.before_change(&current.id).await?;
                    let options = UpdateServiceOptions { version: current.version, ..Default::default() };
                    self.docker
                        .update_service(&current.id, service.clone(), options, None)
                        .await
                        .map_err(engine(format!("updating service {name}")))?;
                    changed.push((current.id.clone(), name, before));
                }
                None => {
                    report(progress, format!("creating service {name}"), None);
                    let created = self
                        .docker
                        .create_service(service.clone(), None)
                        .await
                        .map_err(engine(format!("creating service {name}")))?;
                    changed.push((created.id.unwrap_or_else(|| name.clone()), name, Before::default()));
                }
            }
        }
        let total = changed.len().max(1);
        for (index, (id, name, before)) in changed.iter().enumerate() {
            let spec = objects.services.iter().find(|s| s.name.as_deref() == Some(name.as_str()));
            self.converge(id, name, spec, before, progress, u8::try_from(index * 100 / total).ok()).await?;
        }
        self.remove_unused_objects(project, &plan, progress).await;
        report(progress, "done", Some(100));
        self.status(deployment_id, project).await
    }

    async fn ensure_networks(
        &self,
        project: &str,
        plan: &model::Objects,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        let present: HashSet<String> = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: namespace_filter(project) }))
            .await
            .map_err(engine("listing networks"))?
            .into_iter()
            .filter_map(|n| n.name)
            .collect();
        for network in plan.networks.iter().filter(|n| !present.contains(&n.name)) {
            report(progress, format!("creating network {}", network.name), None);
            self.docker
                .create_network(network.clone())
                .await
                .map_err(engine(format!("creating network {}", network.name)))?;
        }
        Ok(())
    }

    /// Creates the secrets and configs not there yet; returns every one's id by name.
    async fn ensure_objects(
        &self,
        project: &str,
        plan: &model::Objects,
        progress: &ProgressSender,
    ) -> Result<HashMap<String, String>, DriverError> {
        let (secrets, configs) = self.stack_objects(project).await?;
        let mut ids: HashMap<String, String> = secrets.into_iter().chain(configs).collect();
        for secret in &plan.secrets {
            let name = secret.name.clone().unwrap_or_default();
            if let Entry::Vacant(slot) = ids.entry(name.clone()) {
                report(progress, format!("creating secret {name}"), None);
                let created = self
                    .docker
                    .create_secret(secret.clone())
                    .await
                    .map_err(engine(format!("creating secret {name}")))?;
                slot.insert(created.id);
            }
        }
        for config in &plan.configs {
            let name = config.name.clone().unwrap_or_default();
            if let Entry::Vacant(slot) = ids.entry(name.clone()) {
                report(progress, format!("creating config {name}"), None);
                let created = self
                    .docker
                    .create_config(config.clone())
                    .await
                    .map_err(engine(format!("creating config {name}")))?;
                slot.insert(created.id);
            }
        }
        Ok(ids)
    }

    /// The stack's secrets and configs, each as (name, id).
    async fn stack_objects(
        &self,
        project: &str,
    ) -> Result<(Vec<(String, String)>, Vec<(String, String)>), DriverError> {
        let secrets = self
            .docker
            .list_secrets(Some(ListSecretsOptions { filters: namespace_filter(project) }))
            .await
            .map_err(engine("listing secrets"))?
            .into_iter()
            .filter_map(|s| Some((s.spec?.name?, s.id?)))
            .collect();
        let configs = self
            .docker
            .list_configs(Some(ListConfigsOptions { filters: namespace_filter(project) }))
            .await
            .map_err(engine("listing configs"))?
            .into_iter()
            .filter_map(|c| Some((c.spec?.name?, c.id?)))
            .collect();
        Ok((secrets, configs))
    }

    /// Secrets, configs and networks of the stack the current spec no longer has. Best effort:
    /// one still in use by a task that is shutting down stays until the next apply or removal.
    async fn remove_unused_objects(&self, project: &str, plan: &model::Objects, progress: &ProgressSender) {
        let wanted: HashSet<&String> = plan
            .secrets
            .iter()
            .filter_map(|s| s.name.as_ref())
            .chain(plan.configs.iter().filter_map(|c| c.name.as_ref()))
            .collect();
        let Ok((secrets, configs)) = self.stack_objects(project).await else { return };
        for (name, id) in secrets.iter().filter(|(name, _)| !wanted.contains(name)) {
            if self.docker.delete_secret(id).await.is_ok() {
                report(progress, format!("removed unused secret {name}"), None);
            }
        }
        for (name, id) in configs.iter().filter(|(name, _)| !wanted.contains(name)) {
            if self.docker.delete_config(id).await.is_ok() {
                report(progress, format!("removed unused config {name}"), None);
            }
        }
        let wanted_networks: HashSet<&String> = plan.networks.iter().map(|n| &n.name).collect();
        let Ok(networks) =
            self.docker.list_networks(Some(ListNetworksOptions { filters: namespace_filter(project) })).await
        else {
            return;
        };
        for name in networks.into_iter().filter_map(|n| n.name).filter(|n| !wanted_networks.contains(n)) {
            if self.docker.remove_network(&name).await.is_ok() {
                report(progress, format!("removed unused network {name}"), None);
            }
        }
    }

    /// The stack's services by Swarm name.
    async fn services(&self, project: &str) -> Result<HashMap<String, Existing>, DriverError> {
        let services = self
            .docker
            .list_services(Some(ListServicesOptions { filters: namespace_filter(project), status: None }))
            .await
            .map_err(engine("listing services"))?;
        Ok(services
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec?;
                let name = spec.name?;
                let version = i32::try_from(s.version.and_then(|v| v.index).unwrap_or_default()).unwrap_or(i32::MAX);
                let spec_hash = spec.labels.and_then(|l| l.get(LABEL_SPEC_HASH).cloned());
                Some((name.clone(), Existing { id: s.id?, name, version, spec_hash }))
            })
            .collect())
    }

    async fn delete_service(&self, name: &str) -> Result<(), DriverError> {
        match self.docker.delete_service(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine(format!("removing service {name}"))(e)),
        }
    }

    async fn tasks(&self, service_id: &str, desired_running: bool) -> Result<Vec<Task>, DriverError> {
        let mut pairs = vec![("service", service_id.to_owned())];
        if desired_running {
            pairs.push(("desired-state", "running".to_owned()));
        }
        self.docker
            .list_tasks(Some(ListTasksOptions { filters: filters(&pairs) }))
            .await
            .map_err(engine(format!("listing the tasks of {service_id}")))
    }

    /// What a service looked like just before an update: its tasks and its last update status.
    async fn before_change(&self, service_id: &str) -> Result<Before, DriverError> {
        let service = self
            .docker
            .inspect_service(service_id, None::<InspectServiceOptions>)
            .await
            .map_err(engine(format!("inspecting service {service_id}")))?;
        let tasks = self.tasks(service_id, false).await?.into_iter().filter_map(|t| t.id).collect();
        Ok(Before { tasks, update: service.update_status })
    }

    /// Waits until a created or updated service runs as asked: every task on the current spec
    /// and running, and no rolling update under way.
    async fn converge(
        &self,
        id: &str,
        name: &str,
        spec: Option<&ServiceSpec>,
        before: &Before,
        progress: &ProgressSender,
        percent: Option<u8>,
    ) -> Result<(), DriverError> {
        let started = Instant::now();
        let replicas = spec
            .and_then(|s| s.mode.as_ref())
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas)
            .map(|r| usize::try_from(r).unwrap_or(0));
        let mut last_line = String::new();
        loop {
            let service = self
                .docker
                .inspect_service(id, None::<InspectServiceOptions>)
                .await
                .map_err(engine(format!("inspecting service {name}")))?;
            // Swarm starts the update a moment after accepting it: until then, the status is
            // still the one of the previous update and says nothing about this one.
            let update = service.update_status.filter(|u| before.update.as_ref() != Some(u)).unwrap_or_default();
            let template = service.spec.and_then(|s| s.task_template);
            let message = update.message.unwrap_or_default();
            let rolling = match update.state {
                Some(ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED) => {
                    return Err(DriverError::Failed(format!(
                        "the update of service {name} failed and Swarm rolled it back: {message}"
                    )));
                }
                Some(ServiceUpdateStatusStateEnum::PAUSED | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED) => {
                    return Err(DriverError::Failed(format!("the update of service {name} was paused: {message}")));
                }
                Some(ServiceUpdateStatusStateEnum::UPDATING | ServiceUpdateStatusStateEnum::ROLLBACK_STARTED) => true,
                _ => false,
            };
            let tasks = self.tasks(id, false).await?;
            let verdict = convergence(&tasks, template.as_ref(), &before.tasks, replicas);
            let line = if rolling {
                format!("{name}: {message}")
            } else {
                format!("{name}: {} of {} tasks running", verdict.running, verdict.wanted)
            };
            if line != last_line {
                report(progress, line.clone(), percent);
                last_line = line;
            }
            if !rolling {
                if verdict.converged {
                    return Ok(());
                }
                if verdict.new_failures.len() >= FAILED_TASKS_LIMIT {
                    return Err(DriverError::Failed(format!(
                        "service {name} cannot start: {}",
                        verdict.new_failures.last().cloned().unwrap_or_default()
                    )));
                }
            }
            if started.elapsed() > CONVERGE_TIMEOUT {
                let why = verdict.new_failures.last().map(|e| format!("; last error: {e}")).unwrap_or_default();
                return Err(DriverError::Failed(format!(
                    "service {name} did not converge in {} s: {} of {} tasks running{why}",
                    CONVERGE_TIMEOUT.as_secs(),
                    verdict.running,
                    verdict.wanted
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every service of the stack with its current tasks (those Swarm wants running).
    pub async fn status(&self, deployment_id: Uuid, project: &str) -> Result<StackStatus, DriverError> {
        let prefix = format!("{project}_");
        let mut services = BTreeMap::new();
        for existing in self.services(project).await?.into_values() {
            let inspect = match self.docker.inspect_service(&existing.id, None::<InspectServiceOptions>).await {
                Ok(inspect) => inspect,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(engine(format!("inspecting service {}", existing.name))(e)),
            };
            let config_hash =
                inspect.spec.and_then(|s| s.labels).and_then(|l| l.get(LABEL_CONFIG_HASH).cloned()).unwrap_or_default();
            let tasks = self.tasks(&existing.id, false).await?;
            let service = existing.name.strip_prefix(&prefix).unwrap_or(&existing.name).to_owned();
            services.insert(service, task_statuses(&existing.name, &tasks, &config_hash));
        }
        Ok(StackStatus {
            deployment_id,
            project: project.to_owned(),
            services: services.into_iter().map(|(service, containers)| ServiceStatus { service, containers }).collect(),
        })
    }

    /// The logs of the stack's services (one, or all), merged into one channel, as Swarm
    /// gathers them from every node. Dropping the receiver stops everything.
    pub async fn logs(
        &self,
        project: &str,
        service: Option<&str>,
        tail: Option<u32>,
        since_unix_s: Option<i64>,
        follow: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<LogChunk>, DriverError> {
        let (out, chunks) = tokio::sync::mpsc::channel(256);
        let prefix = format!("{project}_");
        for existing in self.services(project).await?.into_values() {
            let short = existing.name.strip_prefix(&prefix).unwrap_or(&existing.name).to_owned();
            if service.is_some_and(|s| s != short) {
                continue;
            }
            let options = LogsOptions {
                follow,
                stdout: true,
                stderr: true,
                timestamps: true,
                since: since_unix_s.and_then(|s| i32::try_from(s).ok()).unwrap_or(0),
                tail: tail.map_or_else(|| "all".to_owned(), |t| t.to_string()),
                ..Default::default()
            };
            let mut stream = self.docker.service_logs(&existing.id, Some(options));
            let out = out.clone();
            tokio::spawn(async move {
                use bollard::container::LogOutput;
                while let Some(item) = stream.next().await {
                    let (kind, bytes) = match item {
                        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                            (LogStream::Stdout, message)
                        }
                        Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                        Ok(LogOutput::StdIn { .. }) => continue,
                        Err(_) => return,
                    };
                    let (timestamp_unix_ms, data) = split_timestamp(&bytes);
                    let chunk =
                        LogChunk { source: short.clone(), stream: kind, timestamp_unix_ms, data: data.to_vec() };
                    if out.send(chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(chunks)
    }

    /// Deployments this Swarm runs for WindFlow (id → project), found by their services' labels.
    pub async fn managed(&self) -> Result<HashMap<Uuid, String>, DriverError> {
        let services = self
            .docker
            .list_services(Some(ListServicesOptions {
                filters: filters(&[("label", format!("{LABEL_MANAGED}=true"))]),
                status: None,
            }))
            .await
            .map_err(engine("listing services"))?;
        Ok(services
            .into_iter()
            .filter_map(|s| {
                let labels = s.spec?.labels?;
                let id = labels.get(LABEL_DEPLOYMENT).and_then(|d| Uuid::try_parse(d).ok())?;
                Some((id, labels.get(LABEL_PROJECT)?.clone()))
            })
            .collect())
    }

    /// Removes the stack's services, then (once their containers are gone) its secrets, configs
    /// and networks, and its volumes on this node if asked: Swarm volumes live on each node.
    pub async fn remove(
        &self,
        project: &str,
        remove_volumes: bool,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        for service in self.services(project).await?.into_values() {
            report(progress, format!("removing service {}", service.name), None);
            self.delete_service(&service.name).await?;
        }
        let started = Instant::now();
        loop {
            let containers = self
                .docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: namespace_filter(project),
                    ..Default::default()
                }))
                .await
                .map_err(engine("listing containers"))?;
            if containers.is_empty() {
                break;
            }
            if started.elapsed() > DRAIN_TIMEOUT {
                return Err(DriverError::Failed(format!(
                    "{} containers of the stack were still stopping after {} s",
                    containers.len(),
                    DRAIN_TIMEOUT.as_secs()
                )));
            }
            report(progress, format!("waiting for {} containers to stop", containers.len()), None);
            tokio::time::sleep(POLL).await;
        }
        let (secrets, configs) = self.stack_objects(project).await?;
        for (name, id) in secrets {
            report(progress, format!("removing secret {name}"), None);
            match self.docker.delete_secret(&id).await {
                Err(e) if !is_not_found(&e) => return Err(engine(format!("removing secret {name}"))(e)),
                _ => {}
            }
        }
        for (name, id) in configs {
            report(progress, format!("removing config {name}"), None);
            match self.docker.delete_config(&id).await {
                Err(e) if !is_not_found(&e) => return Err(engine(format!("removing config {name}"))(e)),
                _ => {}
            }
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: namespace_filter(project) }))
            .await
            .map_err(engine("listing networks"))?;
        for name in networks.into_iter().filter_map(|n| n.name) {
            report(progress, format!("removing network {name}"), None);
            match self.docker.remove_network(&name).await {
                Err(e) if !is_not_found(&e) => return Err(engine(format!("removing network {name}"))(e)),
                _ => {}
            }
        }
        if remove_volumes {
            let volumes = self
                .docker
                .list_volumes(Some(ListVolumesOptions { filters: namespace_filter(project) }))
                .await
                .map_err(engine("listing volumes"))?;
            for volume in volumes.volumes.unwrap_or_default() {
                report(progress, format!("removing volume {}", volume.name), None);
                match self.docker.remove_volume(&volume.name, Some(RemoveVolumeOptions { force: true })).await {
                    Err(e) if !is_not_found(&e) => {
                        return Err(engine(format!("removing volume {}", volume.name))(e));
                    }
                    _ => {}
                }
            }
        }
        report(progress, "removed", Some(100));
        Ok(())
    }
}

/// A service just before an update.
#[derive(Debug, Default)]
struct Before {
    /// Its tasks then: only newer ones count as failures of this deploy.
    tasks: HashSet<String>,
    update: Option<ServiceUpdateStatus>,
}

/// Where a service stands while a deploy waits for it.
#[derive(Debug, PartialEq, Eq)]
struct Convergence {
    running: usize,
    wanted: usize,
    converged: bool,
    /// Errors of tasks that failed since the deploy began, oldest first.
    new_failures: Vec<String>,
}

/// `template` is the service's current task spec: tasks made from an earlier one are still to
/// be replaced. `replicas` is `None` for a global service (one task per eligible node).
fn convergence(
    tasks: &[Task],
    template: Option<&TaskSpec>,
    before: &HashSet<String>,
    replicas: Option<usize>,
) -> Convergence {
    let state = |t: &Task| t.status.as_ref().and_then(|s| s.state);
    // A task's copy of the spec leaves out the runtime Swarm adds to the service's.
    let comparable = |spec: &TaskSpec| TaskSpec { runtime: None, ..spec.clone() };
    let template = template.map(comparable);
    let current =
        |t: &Task| template.as_ref().is_none_or(|template| t.spec.as_ref().map(comparable).as_ref() == Some(template));
    let is_new = |t: &Task| !t.id.as_ref().is_some_and(|id| before.contains(id));
    let live: Vec<&Task> = tasks.iter().filter(|t| t.desired_state == Some(TaskState::RUNNING)).collect();
    let running = live.iter().filter(|t| current(t) && state(t) == Some(TaskState::RUNNING)).count();
    // One-shot tasks (restart condition none) that finished well are done, not missing.
    let completed = tasks
        .iter()
        .filter(|t| t.desired_state != Some(TaskState::RUNNING) && state(t) == Some(TaskState::COMPLETE))
        .filter(|t| current(t) && is_new(t))
        .count();
    let wanted = replicas.unwrap_or(live.len());
    let new_failures = tasks
        .iter()
        .filter(|t| is_new(t) && matches!(state(t), Some(TaskState::FAILED | TaskState::REJECTED)))
        .map(|t| {
            let status = t.status.clone().unwrap_or_default();
            status.err.or(status.message).unwrap_or_else(|| "the task failed".into())
        })
        .collect();
    let converged = running == live.len()
        && live.len() <= wanted
        && running + completed >= wanted
        && (replicas.is_some() || wanted > 0);
    Convergence { running, wanted, converged, new_failures }
}

/// A service's current tasks as container statuses; earlier failures in the same slot count as
/// restarts, as a container's restart count would.
fn task_statuses(service_name: &str, tasks: &[Task], config_hash: &str) -> Vec<ContainerStatus> {
    let slot_of = |t: &Task| t.slot.map_or_else(|| t.node_id.clone().unwrap_or_default(), |s| s.to_string());
    let mut restarts: HashMap<String, u32> = HashMap::new();
    for task in tasks.iter().filter(|t| t.desired_state != Some(TaskState::RUNNING)) {
        if matches!(task.status.as_ref().and_then(|s| s.state), Some(TaskState::FAILED | TaskState::REJECTED)) {
            *restarts.entry(slot_of(task)).or_default() += 1;
        }
    }
    let mut statuses: Vec<ContainerStatus> = tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .map(|task| {
            let status = task.status.clone().unwrap_or_default();
            let state = match status.state {
                Some(TaskState::RUNNING) => ContainerState::Running,
                Some(TaskState::COMPLETE) => ContainerState::Exited { code: 0 },
                Some(TaskState::FAILED) => {
                    ContainerState::Exited { code: status.container_status.and_then(|c| c.exit_code).unwrap_or(1) }
                }
                Some(
                    TaskState::NEW
                    | TaskState::ALLOCATED
                    | TaskState::PENDING
                    | TaskState::ASSIGNED
                    | TaskState::ACCEPTED
                    | TaskState::PREPARING
                    | TaskState::READY
                    | TaskState::STARTING,
                ) => ContainerState::Created,
                other => ContainerState::Other(other.map(|s| s.to_string()).unwrap_or_default()),
            };
            let slot = slot_of(task);
            ContainerStatus {
                name: format!("{service_name}.{slot}"),
                id: task.id.clone().unwrap_or_default(),
                state,
                health: None,
                restart_count: restarts.get(&slot).copied().unwrap_or(0),
                config_hash: config_hash.to_owned(),
            }
        })
        .collect();
    statuses.sort_by(|a, b| a.name.cmp(&b.name));
    statuses
}

#[cfg(test)]
mod tests {
    use bollard::models::TaskStatus;

    use super::*;

    fn task(id: &str, slot: i64, desired: TaskState, state: TaskState, err: Option<&str>) -> Task {
        Task {
            id: Some(id.into()),
            slot: Some(slot),
            desired_state: Some(desired),
            status: Some(TaskStatus { state: Some(state), err: err.map(str::to_owned), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_replicated_service_converges_when_every_replica_runs() {
        let tasks = [
            task("a", 1, TaskState::RUNNING, TaskState::RUNNING, None),
            task("b", 2, TaskState::RUNNING, TaskState::STARTING, None),
        ];
        let verdict = convergence(&tasks, None, &HashSet::new(), Some(2));
        assert_eq!((verdict.running, verdict.wanted, verdict.converged), (1, 2, false));
        let tasks = [tasks[0].clone(), task("b", 2, TaskState::RUNNING, TaskState::RUNNING, None)];
        assert!(convergence(&tasks, None, &HashSet::new(), Some(2)).converged);
    }

    #[test]
    fn tasks_of_an_earlier_spec_are_still_to_be_replaced() {
        let old = TaskSpec { force_update: Some(1), ..Default::default() };
        let new = TaskSpec { force_update: Some(2), ..Default::default() };
        let mut tasks = [task("a", 1, TaskState::RUNNING, TaskState::RUNNING, None)];
        tasks[0].spec = Some(old);
        assert!(!convergence(&tasks, Some(&new), &HashSet::new(), Some(1)).converged);
        tasks[0].spec = Some(new.clone());
        assert!(convergence(&tasks, Some(&new), &HashSet::new(), Some(1)).converged);
    }

    #[test]
    fn a_finished_one_shot_counts_as_done() {
        let tasks = [task("a", 1, TaskState::SHUTDOWN, TaskState::COMPLETE, None)];
        assert!(convergence(&tasks, None, &HashSet::new(), Some(1)).converged);
    }

    #[test]
    fn only_failures_since_the_deploy_count() {
        let tasks = [
            task("old", 1, TaskState::SHUTDOWN, TaskState::FAILED, Some("old failure")),
            task("new", 1, TaskState::SHUTDOWN, TaskState::REJECTED, Some("No such image: x")),
            task("now", 1, TaskState::RUNNING, TaskState::PREPARING, None),
        ];
        let verdict = convergence(&tasks, None, &HashSet::from(["old".to_owned()]), Some(1));
        assert_eq!(verdict.new_failures, ["No such image: x"]);
        assert!(!verdict.converged);
    }

    #[test]
    fn a_scaled_down_service_waits_for_extra_tasks_to_go() {
        let tasks = [
            task("a", 1, TaskState::RUNNING, TaskState::RUNNING, None),
            task("b", 2, TaskState::RUNNING, TaskState::RUNNING, None),
        ];
        assert!(!convergence(&tasks, None, &HashSet::new(), Some(1)).converged);
    }

    #[test]
    fn tasks_become_container_statuses_with_failed_attempts_as_restarts() {
        let tasks = [
            task("x", 1, TaskState::SHUTDOWN, TaskState::FAILED, Some("exit 1")),
            task("y", 1, TaskState::RUNNING, TaskState::RUNNING, None),
            task("z", 2, TaskState::RUNNING, TaskState::PREPARING, None),
        ];
        let statuses = task_statuses("shop_web", &tasks, "h");
        assert_eq!(statuses.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["shop_web.1", "shop_web.2"]);
        assert_eq!((statuses[0].state.clone(), statuses[0].restart_count), (ContainerState::Running, 1));
        assert_eq!(statuses[1].state, ContainerState::Created);
        assert!(statuses.iter().all(|s| s.config_hash == "h"));
    }
}
