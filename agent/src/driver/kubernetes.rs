//! The Kubernetes driver: applies a stack's objects (see `windflow_platforms::kubernetes`) to
//! the cluster the agent can reach — in-cluster with its service account, or through a
//! kubeconfig — by server-side apply as field manager `windflow`, then watches the rollout
//! until every controller runs the new pod template ready, reporting progress on the way. A
//! pod that cannot start (image pull, crash loop) fails the deploy with the cluster's reason.
//! Everything is found again by label: status, logs and removal.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use uuid::Uuid;
use windflow_platforms::kubernetes::{ANNOTATION_CONFIG_HASH, Controller, FIELD_MANAGER, LABEL_SERVICE, Objects};
use windflow_platforms::{LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_PROJECT};
use windflow_protocol::Platform;
use windflow_protocol::messages::{
    Capability, ContainerState, ContainerStatus, HealthState, LogChunk, LogStream, ServiceStatus, StackStatus,
};
use windflow_protocol::stack::{StackSpec, SwarmSpec};

use super::{DriverError, ProgressSender, report};

/// How long a rollout may take before the deploy fails.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often pods are looked at during a rollout, for the failures no controller reports.
const POD_CHECK: Duration = Duration::from_secs(1);
/// How long a removal waits for the stack's pods to go.
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the capability probe waits for the API server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the driver does on a cluster, as RBAC rules: (API group, resource, verbs). The
/// in-cluster manifests (`packaging/kubernetes/agent.yaml`) grant exactly this; tests check
/// both that the manifests say so and that the driver asks for nothing else.
pub const REQUIRED_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "namespaces", &["list", "create", "patch", "delete"]),
    ("", "secrets", &["list", "create", "patch", "delete"]),
    ("", "configmaps", &["list", "create", "patch", "delete"]),
    ("", "services", &["list", "create", "patch", "delete"]),
    ("", "persistentvolumeclaims", &["list", "create", "patch", "delete"]),
    ("", "pods", &["list", "watch"]),
    ("", "pods/log", &["get"]),
    ("apps", "deployments", &["list", "watch", "create", "patch", "delete"]),
    ("apps", "statefulsets", &["list", "watch", "create", "patch", "delete"]),
    ("apps", "daemonsets", &["list", "watch", "create", "patch", "delete"]),
];

/// Waiting reasons that mean a pod will not start without a change to the stack.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

fn api_error(context: impl Into<String>) -> impl FnOnce(kube::Error) -> DriverError {
    let context = context.into();
    move |error| match error {
        kube::Error::Api(status) => DriverError::Engine { context, message: status.message.clone() },
        other => DriverError::Engine { context, message: other.to_string() },
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

#[derive(Clone)]
pub struct KubernetesDriver {
    client: Client,
}

impl Debug for KubernetesDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesDriver").finish_non_exhaustive()
    }
}

/// Whether this agent can reach a cluster, and which: "Kubernetes v1.33.1 at https://…", or why not.
pub async fn probe() -> Capability {
    let found = async {
        let config = kube::Config::infer().await.map_err(|e| format!("no cluster access: {e}"))?;
        let url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| format!("no cluster access: {e}"))?;
        let version =
            client.apiserver_version().await.map_err(|e| format!("the API server at {url} does not answer: {e}"))?;
        let helm = match super::helm::version().await {
            Some(helm) => format!("helm {helm}"),
            None => "no helm CLI (Helm stacks cannot run)".to_owned(),
        };
        Ok::<_, String>(format!("Kubernetes {} at {url}; {helm}", version.git_version))
    };
    let (available, detail) = match tokio::time::timeout(PROBE_TIMEOUT, found).await {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(why)) => (false, why),
        Err(_) => (false, "the API server did not answer within 3 s".to_owned()),
    };
    Capability { platform: Platform::Kubernetes, available, detail }
}

impl KubernetesDriver {
    pub async fn connect() -> Result<Self, DriverError> {
        let client = Client::try_default().await.map_err(|e| DriverError::ClusterUnreachable(e.to_string()))?;
        Ok(Self { client })
    }

    /// A driver over any client: tests hand in one whose transport they control.
    pub fn with_client(client: Client) -> Self {
        Self { client }
    }

    /// Every pod of the cluster, for watching.
    pub fn pods(&self) -> Api<Pod> {
        self.everywhere()
    }

    fn namespaced<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn everywhere<K>(&self) -> Api<K>
    where
        K: Resource,
        <K as Resource>::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    async fn apply_one<K>(&self, api: &Api<K>, object: &K) -> Result<K, DriverError>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
        <K as Resource>::DynamicType: Default,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let kind = K::kind(&Default::default()).to_string();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .map_err(api_error(format!("applying {kind} {name}")))
    }

    /// Applies the stack and waits for its rollout.
    pub async fn apply(
        &self,
        deployment_id: Uuid,
        spec: &StackSpec,
        orchestration: &SwarmSpec,
        namespace: &str,
        progress: &ProgressSender,
    ) -> Result<StackStatus, DriverError> {
        let objects = windflow_platforms::kubernetes::objects(spec, orchestration, namespace, deployment_id);
        if let Some(owned) = &objects.namespace {
            report(progress, format!("applying namespace {namespace}"), Some(0));
            self.apply_one(&self.everywhere::<Namespace>(), owned).await?;
        }
        for secret in &objects.secrets {
            self.apply_one(&self.namespaced::<Secret>(namespace), secret).await?;
        }
        for config in &objects.config_maps {
            self.apply_one(&self.namespaced::<ConfigMap>(namespace), config).await?;
        }
        for claim in &objects.claims {
            self.apply_one(&self.namespaced::<PersistentVolumeClaim>(namespace), claim).await?;
        }
        let mut generations = BTreeMap::new();
        for controller in &objects.controllers {
            report(progress, format!("applying {}", describe(controller)), Some(5));
            let generation = match controller {
                Controller::Deployment(d) => self.apply_one(&self.namespaced(namespace), d).await?.metadata.generation,
                Controller::StatefulSet(s) => self.apply_one(&self.namespaced(namespace), s).await?.metadata.generation,
                Controller::DaemonSet(d) => self.apply_one(&self.namespaced(namespace), d).await?.metadata.generation,
            };
            generations.insert(controller.name().to_owned(), generation.unwrap_or(0));
        }
        for service in &objects.services {
            self.apply_one(&self.namespaced::<Service>(namespace), service).await?;
        }
        self.prune(&spec.project, namespace, &objects, progress).await?;
        self.await_rollout(&spec.project, namespace, &generations, progress).await?;
        report(progress, "done", Some(100));
        self.status(deployment_id, &spec.project).await
    }

    /// Deletes the stack's objects that the new version no longer has (a service taken out).
    async fn prune(
        &self,
        project: &str,
        namespace: &str,
        objects: &Objects,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        let selector = format!("{LABEL_PROJECT}={project},{LABEL_MANAGED}=true");
        let keep = |names: Vec<Option<String>>| names.into_iter().flatten().collect::<Vec<_>>();
        let controllers: Vec<String> = objects.controllers.iter().map(|c| c.name().to_owned()).collect();
        prune_kind::<Deployment>(&self.namespaced(namespace), &selector, &controllers, progress).await?;
        prune_kind::<StatefulSet>(&self.namespaced(namespace), &selector, &controllers, progress).await?;
        prune_kind::<DaemonSet>(&self.namespaced(namespace), &selector, &controllers, progress).await?;
        let services = keep(objects.services.iter().map(|s| s.metadata.name.clone()).collect());
        prune_kind::<Service>(&self.namespaced(namespace), &selector, &services, progress).await?;
        let secrets = keep(objects.secrets.iter().map(|s| s.metadata.name.clone()).collect());
        prune_kind::<Secret>(&self.namespaced(namespace), &selector, &secrets, progress).await?;
        let configs = keep(objects.config_maps.iter().map(|c| c.metadata.name.clone()).collect());
        prune_kind::<ConfigMap>(&self.namespaced(namespace), &selector, &configs, progress).await
    }

    /// Watches the stack's controllers until each has rolled out the generation just applied
    /// with every replica updated and ready.
    async fn await_rollout(
        &self,
        project: &str,
        namespace: &str,
        generations: &BTreeMap<String, i64>,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        let config = watcher::Config::default().labels(&format!("{LABEL_PROJECT}={project},{LABEL_MANAGED}=true"));
        let deployments = watcher::watcher(self.namespaced::<Deployment>(namespace), config.clone())
            .map_ok(|e| applied(e).map(|d| rollout::of_deployment(&d)));
        let sets = watcher::watcher(self.namespaced::<StatefulSet>(namespace), config.clone())
            .map_ok(|e| applied(e).map(|s| rollout::of_stateful_set(&s)));
        let daemons = watcher::watcher(self.namespaced::<DaemonSet>(namespace), config)
            .map_ok(|e| applied(e).map(|d| rollout::of_daemon_set(&d)));
        let mut changes =
            std::pin::pin!(futures_util::stream::select(deployments, futures_util::stream::select(sets, daemons)));
        let mut seen: BTreeMap<String, rollout::Rollout> = BTreeMap::new();
        let mut pods = tokio::time::interval(POD_CHECK);
        let deadline = tokio::time::Instant::now() + ROLLOUT_TIMEOUT;
        let mut last_line = String::new();
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(Some(state))) => {
                        seen.insert(state.name.clone(), state);
                    }
                    Some(Ok(None)) => {}
                    // The watcher retries by itself on the next poll; say so, keep going.
                    Some(Err(error)) => tracing::warn!(%error, "watching the rollout"),
                    None => return Err(DriverError::Failed("the rollout watch ended".into())),
                },
                _ = pods.tick() => {
                    let listed = self
                        .namespaced::<Pod>(namespace)
                        .list(&ListParams::default().labels(&format!("{LABEL_PROJECT}={project}")))
                        .await
                        .map_err(api_error("listing the stack's pods"))?;
                    if let Some(reason) = listed.items.iter().find_map(rollout::pod_failure) {
                        return Err(DriverError::Failed(reason));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(DriverError::Failed(format!(
                        "the rollout did not finish within {} s: {last_line}",
                        ROLLOUT_TIMEOUT.as_secs()
                    )));
                }
            }
            let (done, line) = rollout::summary(generations, &seen);
            if let Some(failure) = generations.keys().find_map(|name| seen.get(name).and_then(|s| s.failure.clone())) {
                return Err(DriverError::Failed(failure));
            }
            if line != last_line {
                let percent = u8::try_from(10 + done * 90 / generations.len().max(1)).ok();
                report(progress, line.clone(), percent);
                last_line = line;
            }
            if done == generations.len() {
                return Ok(());
            }
        }
    }

    /// The state of the deployment's services and their pods.
    pub async fn status(&self, deployment_id: Uuid, project: &str) -> Result<StackStatus, DriverError> {
        let selector = format!("{LABEL_DEPLOYMENT}={deployment_id}");
        let params = ListParams::default().labels(&selector);
        let mut services: BTreeMap<String, Vec<ContainerStatus>> = BTreeMap::new();
        for name in self.controller_names(&params).await? {
            services.entry(name).or_default();
        }
        let pods = self.everywhere::<Pod>().list(&params).await.map_err(api_error("listing the stack's pods"))?;
        for pod in &pods.items {
            if let Some(service) = pod.labels().get(LABEL_SERVICE) {
                services.entry(service.clone()).or_default().push(pod_status(pod));
            }
        }
        let services =
            services.into_iter().map(|(service, containers)| ServiceStatus { service, containers }).collect();
        Ok(StackStatus { deployment_id, project: project.to_owned(), services })
    }

    async fn controller_names(&self, params: &ListParams) -> Result<Vec<String>, DriverError> {
        let service_of = |labels: &BTreeMap<String, String>| labels.get(LABEL_SERVICE).cloned();
        let mut names = Vec::new();
        let deployments =
            self.everywhere::<Deployment>().list(params).await.map_err(api_error("listing Deployments"))?;
        names.extend(deployments.items.iter().filter_map(|d| service_of(d.labels())));
        let sets = self.everywhere::<StatefulSet>().list(params).await.map_err(api_error("listing StatefulSets"))?;
        names.extend(sets.items.iter().filter_map(|s| service_of(s.labels())));
        let daemons = self.everywhere::<DaemonSet>().list(params).await.map_err(api_error("listing DaemonSets"))?;
        names.extend(daemons.items.iter().filter_map(|d| service_of(d.labels())));
        Ok(names)
    }

    /// The deployments of this cluster WindFlow manages, found by label (after an agent restart).
    pub async fn managed(&self) -> Result<HashMap<Uuid, String>, DriverError> {
        let params = ListParams::default().labels(&format!("{LABEL_MANAGED}=true"));
        let mut found = HashMap::new();
        let mut note = |labels: &BTreeMap<String, String>| {
            if let (Some(id), Some(project)) =
                (labels.get(LABEL_DEPLOYMENT).and_then(|d| Uuid::try_parse(d).ok()), labels.get(LABEL_PROJECT))
            {
                found.insert(id, project.clone());
            }
        };
        let deployments =
            self.everywhere::<Deployment>().list(&params).await.map_err(api_error("listing Deployments"))?;
        deployments.items.iter().for_each(|d| note(d.labels()));
        let sets = self.everywhere::<StatefulSet>().list(&params).await.map_err(api_error("listing StatefulSets"))?;
        sets.items.iter().for_each(|s| note(s.labels()));
        let daemons = self.everywhere::<DaemonSet>().list(&params).await.map_err(api_error("listing DaemonSets"))?;
        daemons.items.iter().for_each(|d| note(d.labels()));
        Ok(found)
    }

    /// Streams the logs of the project's pods (one service's when given), as `docker logs` would.
    pub async fn logs(
        &self,
        project: &str,
        service: Option<&str>,
        tail: Option<u32>,
        since_unix_s: Option<i64>,
        follow: bool,
    ) -> Result<mpsc::Receiver<LogChunk>, DriverError> {
        let mut selector = format!("{LABEL_PROJECT}={project}");
        if let Some(service) = service {
            selector.push_str(&format!(",{LABEL_SERVICE}={service}"));
        }
        let pods = self
            .everywhere::<Pod>()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_error("listing the stack's pods"))?;
        let (tx, rx) = mpsc::channel(256);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for pod in pods.items {
            let (name, namespace) = (pod.name_any(), pod.namespace().unwrap_or_default());
            // Named as containers are, `<project>-<service>-<n>`: the pod's own suffix is the n.
            let service = pod.labels().get(LABEL_SERVICE).cloned().unwrap_or_default();
            let source = format!("{project}-{service}-{}", name.rsplit('-').next().unwrap_or_default());
            let params = LogParams {
                follow,
                tail_lines: tail.map(i64::from),
                since_seconds: since_unix_s.map(|since| (now - since).max(1)),
                timestamps: true,
                ..Default::default()
            };
            let api = self.namespaced::<Pod>(&namespace);
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(reader) = api.log_stream(&name, &params).await else { return };
                let mut lines = reader.lines();
                while let Some(Ok(line)) = lines.next().await {
                    let (timestamp_unix_ms, text) = split_timestamp(&line);
                    let chunk = LogChunk {
                        source: source.clone(),
                        stream: LogStream::Stdout,
                        timestamp_unix_ms,
                        data: format!("{text}\n").into_bytes(),
                    };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(rx)
    }

    /// Removes the project's objects; its claims (and the namespace it owns, which holds
    /// them) only with `remove_volumes`. Waits until its pods are gone.
    pub async fn remove(
        &self,
        project: &str,
        remove_volumes: bool,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        let params = ListParams::default().labels(&format!("{LABEL_PROJECT}={project},{LABEL_MANAGED}=true"));
        report(progress, "removing controllers and services", Some(10));
        delete_all::<Deployment>(&self.everywhere(), &params, |ns| self.namespaced(ns)).await?;
        delete_all::<StatefulSet>(&self.everywhere(), &params, |ns| self.namespaced(ns)).await?;
        delete_all::<DaemonSet>(&self.everywhere(), &params, |ns| self.namespaced(ns)).await?;
        delete_all::<Service>(&self.everywhere(), &params, |ns| self.namespaced(ns)).await?;
        delete_all::<Secret>(&self.everywhere(), &params, |ns| self.namespaced(ns)).await?;
        delete_all::<ConfigMap>(&self.everywhere(), &params, |ns| self.namespaced(ns)).await?;
        if remove_volumes {
            report(progress, "removing volume claims", Some(40));
            delete_all::<PersistentVolumeClaim>(&self.everywhere(), &params, |ns| self.namespaced(ns)).await?;
        }
        report(progress, "waiting for the pods to stop", Some(50));
        let pods = ListParams::default().labels(&format!("{LABEL_PROJECT}={project}"));
        let deadline = tokio::time::Instant::now() + REMOVAL_TIMEOUT;
        loop {
            let left = self.everywhere::<Pod>().list(&pods).await.map_err(api_error("listing the stack's pods"))?;
            if left.items.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DriverError::Failed(format!("{} pods did not stop within 120 s", left.items.len())));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if remove_volumes {
            let namespaces =
                self.everywhere::<Namespace>().list(&params).await.map_err(api_error("listing namespaces"))?;
            for namespace in namespaces.items {
                report(progress, format!("removing namespace {}", namespace.name_any()), Some(90));
                match self.everywhere::<Namespace>().delete(&namespace.name_any(), &DeleteParams::default()).await {
                    Err(e) if !is_not_found(&e) => return Err(api_error("removing the namespace")(e)),
                    _ => {}
                }
            }
        }
        report(progress, "removed", Some(100));
        Ok(())
    }
}

/// The object an event says is there now, if any.
fn applied<K>(event: watcher::Event<K>) -> Option<K> {
    match event {
        watcher::Event::Apply(object) | watcher::Event::InitApply(object) => Some(object),
        watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

fn describe(controller: &Controller) -> String {
    let kind = match controller {
        Controller::Deployment(_) => "Deployment",
        Controller::StatefulSet(_) => "StatefulSet",
        Controller::DaemonSet(_) => "DaemonSet",
    };
    format!("{kind} {}", controller.name())
}

async fn prune_kind<K>(
    api: &Api<K>,
    selector: &str,
    keep: &[String],
    progress: &ProgressSender,
) -> Result<(), DriverError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    <K as Resource>::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let listed =
        api.list(&ListParams::default().labels(selector)).await.map_err(api_error(format!("listing {kind}s")))?;
    for object in listed.items {
        let name = object.name_any();
        if !keep.contains(&name) {
            report(progress, format!("removing {kind} {name} (no longer in the stack)"), None);
            match api.delete(&name, &DeleteParams::background()).await {
                Err(e) if !is_not_found(&e) => return Err(api_error(format!("removing {kind} {name}"))(e)),
                _ => {}
            }
        }
    }
    Ok(())
}

async fn delete_all<K>(
    everywhere: &Api<K>,
    params: &ListParams,
    api_in: impl Fn(&str) -> Api<K>,
) -> Result<(), DriverError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    <K as Resource>::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let listed = everywhere.list(params).await.map_err(api_error(format!("listing {kind}s")))?;
    for object in listed.items {
        let (name, namespace) = (object.name_any(), object.namespace().unwrap_or_default());
        match api_in(&namespace).delete(&name, &DeleteParams::background()).await {
            Err(e) if !is_not_found(&e) => return Err(api_error(format!("removing {kind} {name}"))(e)),
            _ => {}
        }
    }
    Ok(())
}

/// `2024-05-01T10:00:00.123456789Z text` (what `timestamps=true` gives) as milliseconds and text.
fn split_timestamp(line: &str) -> (u64, &str) {
    let Some((stamp, text)) = line.split_once(' ') else { return (0, line) };
    match time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339) {
        Ok(at) => (u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0), text),
        Err(_) => (0, line),
    }
}

fn pod_status(pod: &Pod) -> ContainerStatus {
    let status = pod.status.as_ref();
    let container = status.and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
    let state = container.and_then(|c| c.state.as_ref());
    let state = match state {
        Some(s) if s.running.is_some() => ContainerState::Running,
        Some(s) if s.terminated.is_some() => {
            ContainerState::Exited { code: s.terminated.as_ref().map_or(0, |t| i64::from(t.exit_code)) }
        }
        Some(s) => {
            ContainerState::Other(s.waiting.as_ref().and_then(|w| w.reason.clone()).unwrap_or_else(|| "waiting".into()))
        }
        None => ContainerState::Other(status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into())),
    };
    let probed = pod.spec.as_ref().and_then(|s| s.containers.first()).is_some_and(|c| c.readiness_probe.is_some());
    let health = probed.then(|| match (container.map(|c| c.ready), &state) {
        (Some(true), _) => HealthState::Healthy,
        (_, ContainerState::Running) => HealthState::Starting,
        _ => HealthState::Unhealthy,
    });
    ContainerStatus {
        name: pod.name_any(),
        id: pod.uid().unwrap_or_default(),
        state,
        health,
        restart_count: container.map_or(0, |c| u32::try_from(c.restart_count).unwrap_or(0)),
        config_hash: pod.annotations().get(ANNOTATION_CONFIG_HASH).cloned().unwrap_or_default(),
    }
}

/// Rollout state from controllers' status, as `kubectl rollout status` reads it: pure.
pub mod rollout {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;

    use super::FATAL_WAITING;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Rollout {
        pub name: String,
        /// The generation the controller has acted on.
        pub observed_generation: i64,
        pub desired: i32,
        pub updated: i32,
        pub ready: i32,
        /// The controller's own word that it gave up (a Deployment past its progress deadline).
        pub failure: Option<String>,
        /// A StatefulSet still has pods of the previous revision.
        pub old_revision: bool,
    }

    pub fn of_deployment(d: &Deployment) -> Rollout {
        let status = d.status.clone().unwrap_or_default();
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let failure = status.conditions.unwrap_or_default().into_iter().find_map(|c| {
            (c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                .then(|| format!("Deployment {}: {}", d.name_any(), c.message.unwrap_or_default()))
        });
        Rollout {
            name: d.name_any(),
            observed_generation: status.observed_generation.unwrap_or(0),
            desired,
            updated: status.updated_replicas.unwrap_or(0),
            // Old pods still running count against the rollout until they are gone.
            ready: if status.replicas.unwrap_or(0) > desired { 0 } else { status.available_replicas.unwrap_or(0) },
            failure,
            old_revision: false,
        }
    }

    pub fn of_stateful_set(s: &StatefulSet) -> Rollout {
        let status = s.status.clone().unwrap_or_default();
        Rollout {
            name: s.name_any(),
            observed_generation: status.observed_generation.unwrap_or(0),
            desired: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            failure: None,
            old_revision: status.update_revision.is_some() && status.current_revision != status.update_revision,
        }
    }

    pub fn of_daemon_set(d: &DaemonSet) -> Rollout {
        let status = d.status.clone().unwrap_or_default();
        Rollout {
            name: d.name_any(),
            observed_generation: status.observed_generation.unwrap_or(0),
            desired: status.desired_number_scheduled,
            updated: status.updated_number_scheduled.unwrap_or(0),
            ready: status.number_available.unwrap_or(0),
            failure: None,
            old_revision: false,
        }
    }

    impl Rollout {
        /// Rolled out: the controller saw `generation` and every replica is new and ready.
        pub fn is_done(&self, generation: i64) -> bool {
            self.observed_generation >= generation
                && self.updated >= self.desired
                && self.ready >= self.desired
                && !self.old_revision
        }
    }

    /// How many of the applied controllers are rolled out, and a line saying where each is.
    pub fn summary(generations: &BTreeMap<String, i64>, seen: &BTreeMap<String, Rollout>) -> (usize, String) {
        let mut done = 0;
        let mut parts = Vec::new();
        for (name, generation) in generations {
            match seen.get(name) {
                Some(state) if state.is_done(*generation) => {
                    done += 1;
                    parts.push(format!("{name} {}/{} ready", state.ready, state.desired));
                }
                Some(state) if state.observed_generation < *generation => parts.push(format!("{name} waiting")),
                Some(state) => {
                    parts.push(format!("{name} {}/{} updated, {} ready", state.updated, state.desired, state.ready))
                }
                None => parts.push(format!("{name} waiting")),
            }
        }
        (done, format!("rollout: {}", parts.join(", ")))
    }

    /// Why a pod will not start without a change to the stack, if that is so.
    pub fn pod_failure(pod: &Pod) -> Option<String> {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            FATAL_WAITING.contains(&reason).then(|| {
                format!("pod {}: {reason}: {}", pod.name_any(), waiting.message.as_deref().unwrap_or("no message"))
            })
        })
    }
}

#[cfg(test)]
mod tests;
