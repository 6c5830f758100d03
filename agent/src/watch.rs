//! Reports the observed state of every deployment this agent drives: right after something of
//! one changes (Docker container events, Kubernetes pod events; debounced) and every few
//! seconds regardless (libvirt domains are only polled). This is what lets the control plane notice and repair drift, such as a
//! container or a Swarm service removed by hand. Swarm tasks' containers carry the stack's
//! labels, so their events wake it too.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures_util::future::OptionFuture;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use uuid::Uuid;
use windflow_protocol::Platform;
use windflow_protocol::messages::AgentMessage;

use crate::driver::docker::{DockerDriver, LABEL_DEPLOYMENT, LABEL_MANAGED};
use crate::driver::kubernetes::KubernetesDriver;
use crate::driver::libvirt::LibvirtDriver;
use crate::driver::swarm::SwarmDriver;
use crate::jobs::Executor;

const PERIOD: Duration = Duration::from_secs(15);
const DEBOUNCE: Duration = Duration::from_millis(300);
const ENGINE_RETRY: Duration = Duration::from_secs(5);

/// A change to something of a deployment (its id when known); `None` ends the stream: the
/// engine went away.
type Changes = Pin<Box<dyn Stream<Item = Option<Uuid>> + Send>>;

/// Runs until `out` is closed (the session ended).
pub async fn report_stacks(executor: Arc<Executor>, out: mpsc::Sender<AgentMessage>) {
    while !out.is_closed() {
        let drivers = Drivers::connect().await;
        if drivers.docker.is_none() && drivers.kubernetes.is_none() && drivers.libvirt.is_none() {
            tokio::time::sleep(ENGINE_RETRY).await;
            continue;
        }
        drivers.track_managed(&executor).await;
        if !push(&drivers, &executor, &out, None).await {
            return;
        }
        let mut changes = drivers.changes();
        let mut tick = tokio::time::interval(PERIOD);
        tick.tick().await;
        let mut dirty: HashSet<Uuid> = HashSet::new();
        loop {
            let debounce = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                change = changes.next() => match change {
                    Some(deployment) => dirty.extend(deployment),
                    // An engine went away: start over once it is back.
                    None => break,
                },
                () = debounce, if !dirty.is_empty() => {
                    if !push(&drivers, &executor, &out, Some(std::mem::take(&mut dirty))).await {
                        return;
                    }
                }
                _ = tick.tick() => {
                    if !push(&drivers, &executor, &out, None).await {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(ENGINE_RETRY).await;
    }
}

/// Sends the state of the given deployments (all tracked ones when `None`). False once the
/// session is gone.
async fn push(
    drivers: &Drivers,
    executor: &Executor,
    out: &mpsc::Sender<AgentMessage>,
    only: Option<HashSet<Uuid>>,
) -> bool {
    for (id, project, platform) in executor.tracked() {
        if only.as_ref().is_some_and(|only| !only.contains(&id)) {
            continue;
        }
        let status = match platform {
            Platform::Docker => match &drivers.docker {
                Some(docker) => docker.status(id, &project).await,
                None => continue,
            },
            // No longer a manager: nothing this host can say about the stack.
            Platform::Swarm => match &drivers.swarm {
                Some(swarm) => swarm.status(id, &project).await,
                None => continue,
            },
            Platform::Kubernetes => match &drivers.kubernetes {
                Some(kubernetes) => kubernetes.status(id, &project).await,
                None => continue,
            },
            Platform::Libvirt => match &drivers.libvirt {
                Some(libvirt) => libvirt.status(id, &project).await,
                None => continue,
            },
        };
        if let Ok(status) = status
            && out.send(AgentMessage::StackStatus(status)).await.is_err()
        {
            return false;
        }
    }
    true
}

struct Drivers {
    docker: Option<DockerDriver>,
    /// Only a manager sees the Swarm's services.
    swarm: Option<SwarmDriver>,
    kubernetes: Option<KubernetesDriver>,
    /// Polled: libvirt's domain events are not watched.
    libvirt: Option<LibvirtDriver>,
}

impl Drivers {
    async fn connect() -> Self {
        let docker = DockerDriver::connect().await.ok();
        let swarm = match docker {
            Some(_) => SwarmDriver::connect().await.ok(),
            None => None,
        };
        let kubernetes = KubernetesDriver::connect().await.ok();
        // A kubeconfig pointing nowhere is no cluster.
        let kubernetes = match kubernetes {
            Some(driver) if driver.managed().await.is_ok() => Some(driver),
            _ => None,
        };
        let libvirt = LibvirtDriver::from_env();
        let libvirt = libvirt.domains(None).await.is_ok().then_some(libvirt);
        Self { docker, swarm, kubernetes, libvirt }
    }

    /// Picks up the deployments already on this host (after an agent restart).
    async fn track_managed(&self, executor: &Executor) {
        if let Some(Ok(found)) = OptionFuture::from(self.docker.as_ref().map(DockerDriver::managed)).await {
            found.into_iter().for_each(|(id, project)| executor.track(id, Some((&project, Platform::Docker))));
        }
        if let Some(Ok(found)) = OptionFuture::from(self.swarm.as_ref().map(SwarmDriver::managed)).await {
            found.into_iter().for_each(|(id, project)| executor.track(id, Some((&project, Platform::Swarm))));
        }
        if let Some(Ok(found)) = OptionFuture::from(self.kubernetes.as_ref().map(KubernetesDriver::managed)).await {
            found.into_iter().for_each(|(id, project)| executor.track(id, Some((&project, Platform::Kubernetes))));
        }
        if let Some(Ok(found)) = OptionFuture::from(self.libvirt.as_ref().map(LibvirtDriver::managed)).await {
            found.into_iter().for_each(|(id, project)| executor.track(id, Some((&project, Platform::Libvirt))));
        }
    }

    /// Container events of the Docker engine and pod events of the cluster, as deployment ids.
    fn changes(&self) -> Changes {
        let docker: Changes = match &self.docker {
            Some(docker) => {
                let filters = std::collections::HashMap::from([
                    ("type".to_owned(), vec!["container".to_owned()]),
                    ("label".to_owned(), vec![format!("{LABEL_MANAGED}=true")]),
                ]);
                let events =
                    docker.client().events(Some(EventsOptions { filters: Some(filters), ..Default::default() }));
                Box::pin(
                    events
                        .map(|event| {
                            event.ok().map(|event| {
                                event
                                    .actor
                                    .and_then(|a| a.attributes)
                                    .and_then(|a| a.get(LABEL_DEPLOYMENT).and_then(|d| Uuid::try_parse(d).ok()))
                            })
                        })
                        .take_while(|event| std::future::ready(event.is_some()))
                        .map(Option::flatten)
                        .chain(futures_util::stream::once(async { None })),
                )
            }
            None => Box::pin(futures_util::stream::pending()),
        };
        let pods: Changes = match &self.kubernetes {
            Some(kubernetes) => {
                let config = watcher::Config::default().labels(&format!("{LABEL_MANAGED}=true"));
                let events = watcher::watcher(kubernetes.pods(), config).default_backoff().touched_objects();
                Box::pin(events.filter_map(|pod: Result<Pod, watcher::Error>| {
                    std::future::ready(
                        pod.ok().map(|pod| pod.labels().get(LABEL_DEPLOYMENT).and_then(|d| Uuid::try_parse(d).ok())),
                    )
                }))
            }
            None => Box::pin(futures_util::stream::pending()),
        };
        Box::pin(futures_util::stream::select(docker, pods))
    }
}
