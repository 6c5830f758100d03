//! Reports the observed state of every deployment on this host: right after a container of one
//! changes (Docker events, debounced) and every few seconds regardless. This is what lets the
//! control plane notice and repair drift, such as a container or a Swarm service removed by
//! hand. Swarm tasks' containers carry the stack's labels, so their events wake it too.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;
use windflow_protocol::messages::AgentMessage;

use futures_util::future::OptionFuture;
use windflow_protocol::Platform;

use crate::driver::docker::{DockerDriver, LABEL_DEPLOYMENT, LABEL_MANAGED};
use crate::driver::swarm::SwarmDriver;
use crate::jobs::Executor;

const PERIOD: Duration = Duration::from_secs(15);
const DEBOUNCE: Duration = Duration::from_millis(300);
const ENGINE_RETRY: Duration = Duration::from_secs(5);

/// Runs until `out` is closed (the session ended).
pub async fn report_stacks(executor: Arc<Executor>, out: mpsc::Sender<AgentMessage>) {
    while !out.is_closed() {
        let driver = match DockerDriver::connect().await {
            Ok(driver) => driver,
            Err(_) => {
                tokio::time::sleep(ENGINE_RETRY).await;
                continue;
            }
        };
        // Only a manager sees the Swarm's services.
        let swarm = SwarmDriver::connect().await.ok();
        if let Ok(found) = driver.managed().await {
            for (id, project) in found {
                executor.track(id, Some((&project, Platform::Docker)));
            }
        }
        if let Some(Ok(found)) = OptionFuture::from(swarm.as_ref().map(SwarmDriver::managed)).await {
            for (id, project) in found {
                executor.track(id, Some((&project, Platform::Swarm)));
            }
        }
        let drivers = Drivers { docker: driver, swarm };
        let driver = &drivers;
        if !push(driver, &executor, &out, None).await {
            return;
        }
        let filters = [("type", "container".to_owned()), ("label", format!("{LABEL_MANAGED}=true"))].into_iter().fold(
            std::collections::HashMap::<String, Vec<String>>::new(),
            |mut map, (k, v)| {
                map.entry(k.to_owned()).or_default().push(v);
                map
            },
        );
        let mut events =
            driver.docker.client().events(Some(EventsOptions { filters: Some(filters), ..Default::default() }));
        let mut tick = tokio::time::interval(PERIOD);
        tick.tick().await;
        let mut dirty: HashSet<Uuid> = HashSet::new();
        loop {
            let debounce = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        let deployment = event.actor.and_then(|a| a.attributes).and_then(|a| a.get(LABEL_DEPLOYMENT).and_then(|d| Uuid::try_parse(d).ok()));
                        dirty.extend(deployment);
                    }
                    // The engine went away: start over once it is back.
                    _ => break,
                },
                () = debounce, if !dirty.is_empty() => {
                    if !push(driver, &executor, &out, Some(std::mem::take(&mut dirty))).await {
                        return;
                    }
                }
                _ = tick.tick() => {
                    if !push(driver, &executor, &out, None).await {
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
        let status = match (platform, &drivers.swarm) {
            (Platform::Docker, _) => drivers.docker.status(id, &project).await,
            (Platform::Swarm, Some(swarm)) => swarm.status(id, &project).await,
            // No longer a manager: nothing this host can say about the stack.
            (Platform::Swarm, None) => continue,
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
    docker: DockerDriver,
    swarm: Option<SwarmDriver>,
}
