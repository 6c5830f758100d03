//! Admission and execution of signed jobs. [`JobGate`] is the single door: signature, addressee,
//! validity window, then the journal. Only what passes it is executed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use tokio::sync::mpsc;
use uuid::Uuid;
use windflow_protocol::messages::{JobOutcome, JobOutput, LogChunk, StackStatus};
use windflow_protocol::{JobEnvelope, JobPayload, JobRejection, Platform, SignedJob, Workload};

use crate::driver::DriverError;
use crate::driver::ProgressSender;
use crate::driver::docker::DockerDriver;
use crate::driver::helm::HelmDriver;
use crate::driver::kubernetes::KubernetesDriver;
use crate::driver::libvirt::LibvirtDriver;
use crate::driver::swarm::SwarmDriver;
use crate::journal::{JobState, Journal};

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Refused(#[from] JobRejection),
    #[error("the job journal could not be written: {0}")]
    Journal(#[from] std::io::Error),
}

#[derive(Debug)]
pub struct JobGate {
    agent_id: Uuid,
    job_key: VerifyingKey,
    jobs: Mutex<Jobs>,
    /// Woken whenever a job ends, for those waiting on its outcome.
    ended: tokio::sync::Notify,
}

#[derive(Debug)]
struct Jobs {
    journal: Journal,
    /// Jobs running in this process.
    running: HashSet<Uuid>,
}

/// What to do with a job that passed the checks.
#[derive(Debug)]
pub enum Admission {
    /// New: recorded as started; run it.
    Run(JobEnvelope),
    /// Started before a crash and never ended: run it again to its end.
    Resume(JobEnvelope),
    /// Already running here (its first answer was lost with the link): wait for its outcome.
    Running(Uuid),
    /// Already ended: answer with the recorded outcome, do not run it again.
    Ended(Uuid, JobOutcome),
}

impl JobGate {
    pub fn new(agent_id: Uuid, job_key: VerifyingKey, journal: Journal) -> Self {
        Self {
            agent_id,
            job_key,
            jobs: Mutex::new(Jobs { journal, running: HashSet::new() }),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// Parses the hex job key pinned at enrollment.
    pub fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
        let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a job and decides, from the journal, whether it runs. A job that will run is
    /// recorded as started before this returns.
    pub fn admit(&self, job: &SignedJob, now_unix_ms: u64) -> Result<Admission, AdmitError> {
        let envelope = job.verify(&self.job_key, self.agent_id, now_unix_ms)?;
        let job_id = envelope.job_id;
        let mut jobs = self.lock();
        let resumed = match jobs.journal.state(job_id) {
            None => false,
            Some(JobState::Finished(outcome)) => return Ok(Admission::Ended(job_id, outcome.clone())),
            Some(JobState::Started) if jobs.running.contains(&job_id) => return Ok(Admission::Running(job_id)),
            Some(JobState::Started) => true,
        };
        jobs.journal.start(&envelope, resumed, now_unix_ms)?;
        jobs.running.insert(job_id);
        Ok(if resumed { Admission::Resume(envelope) } else { Admission::Run(envelope) })
    }

    /// Records how a job ended and wakes whoever waits on it.
    pub fn finish(&self, job_id: Uuid, outcome: &JobOutcome, now_unix_ms: u64) {
        let mut jobs = self.lock();
        if let Err(error) = jobs.journal.finish(job_id, outcome, now_unix_ms) {
            // The job ran; if it is asked for again after a restart it is run again, which
            // the drivers make harmless.
            tracing::error!(%job_id, %error, "could not journal a job's outcome");
        }
        jobs.running.remove(&job_id);
        drop(jobs);
        self.ended.notify_waiters();
    }

    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    /// Resolves once no job runs here.
    pub async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.lock().running.is_empty() {
                return;
            }
            ended.await;
        }
    }

    /// The outcome of a job running here, once it ends.
    pub async fn outcome(&self, job_id: Uuid) -> JobOutcome {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let jobs = self.lock();
                match jobs.journal.state(job_id) {
                    Some(JobState::Finished(outcome)) => return outcome.clone(),
                    _ if !jobs.running.contains(&job_id) => {
                        return JobOutcome::Failed { message: "the job's outcome was not recorded".into() };
                    }
                    _ => {}
                }
            }
            ended.await;
        }
    }
}

/// Runs admitted jobs. Jobs on the same project run one at a time, in arrival order; jobs on
/// different projects run side by side.
#[derive(Debug, Default)]
pub struct Executor {
    projects: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deployments applied here (id → project and platform), whose state the agent reports.
    pub deployments: Mutex<HashMap<Uuid, (String, Platform)>>,
}

impl Executor {
    async fn project_lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.projects.lock().await.entry(project.to_owned()).or_default().clone()
    }

    /// Starts (with a project) or stops (without) reporting a deployment's state.
    pub fn track(&self, deployment_id: Uuid, workload: Option<(&str, Platform)>) {
        let mut deployments = self.deployments.lock().unwrap_or_else(|e| e.into_inner());
        match workload {
            Some((project, platform)) => deployments.insert(deployment_id, (project.to_owned(), platform)),
            None => deployments.remove(&deployment_id),
        };
    }

    /// The deployment of a project here, if one is tracked.
    fn deployment_of(&self, project: &str) -> Option<Uuid> {
        let deployments = self.deployments.lock().unwrap_or_else(|e| e.into_inner());
        deployments.iter().find(|(_, (p, _))| p == project).map(|(id, _)| *id)
    }

    pub fn tracked(&self) -> Vec<(Uuid, String, Platform)> {
        let deployments = self.deployments.lock().unwrap_or_else(|e| e.into_inner());
        deployments.iter().map(|(id, (project, platform))| (*id, project.clone(), *platform)).collect()
    }

    /// Runs a job. Progress goes to `progress`; log lines of a log job go to `logs`, and the
    /// job ends when `logs` is closed (the control plane stopped listening).
    pub async fn execute(
        &self,
        payload: &JobPayload,
        progress: &ProgressSender,
        logs: &mpsc::Sender<LogChunk>,
    ) -> JobOutcome {
        let result = match payload {
            JobPayload::CollectFacts => return JobOutcome::Succeeded(JobOutput::Facts(crate::facts::collect().await)),
            JobPayload::DeployStack { deployment_id, spec } => {
                let apply = async { DockerDriver::connect().await?.apply(*deployment_id, spec, progress).await };
                self.deploy(*deployment_id, &spec.project, Platform::Docker, apply).await
            }
            JobPayload::DeployWorkload { deployment_id, workload: workload @ Workload::Swarm { spec, swarm } } => {
                let apply = async { SwarmDriver::connect().await?.apply(*deployment_id, spec, swarm, progress).await };
                self.deploy(*deployment_id, workload.project(), workload.platform(), apply).await
            }
            JobPayload::DeployWorkload {
                deployment_id,
                workload: workload @ Workload::Kubernetes { spec, orchestration, namespace },
            } => {
                let apply = async {
                    KubernetesDriver::connect()
                        .await?
                        .apply(*deployment_id, spec, orchestration, namespace, progress)
                        .await
                };
                self.deploy(*deployment_id, workload.project(), workload.platform(), apply).await
            }
            JobPayload::DeployWorkload {
                deployment_id,
                workload: workload @ Workload::Helm { project, namespace, chart },
            } => {
                let apply = async {
                    let cluster = KubernetesDriver::connect().await?;
                    HelmDriver::locate()?.apply(*deployment_id, project, namespace, chart, progress).await?;
                    cluster.status(*deployment_id, project).await
                };
                self.deploy(*deployment_id, workload.project(), workload.platform(), apply).await
            }
            JobPayload::DeployWorkload { deployment_id, workload: workload @ Workload::Libvirt { project, vms } } => {
                let driver = LibvirtDriver::from_env();
                let apply = driver.apply(*deployment_id, project, vms, progress);
                self.deploy(*deployment_id, workload.project(), workload.platform(), apply).await
            }
            JobPayload::VmAction { project, vm, action } => {
                let lock = self.project_lock(project).await;
                let _guard = lock.lock().await;
                let driver = LibvirtDriver::from_env();
                let acted = async {
                    driver.act(project, vm, *action).await?;
                    let id = self.deployment_of(project).unwrap_or_default();
                    driver.status(id, project).await
                };
                acted.await.map(|status| JobOutcome::Succeeded(JobOutput::Stack(status)))
            }
            JobPayload::SampleUsage { project, samples, interval_ms } => {
                let interval = std::time::Duration::from_millis(u64::from(*interval_ms).min(60_000));
                // Bounded, so that a job cannot keep the agent sampling for long.
                let samples = (*samples).clamp(1, 60);
                let usage = async { DockerDriver::connect().await?.usage(project, samples, interval).await };
                usage.await.map(|usage| JobOutcome::Succeeded(JobOutput::Usage(usage)))
            }
            JobPayload::RemoveStack { deployment_id, project, remove_volumes } => {
                self.remove(*deployment_id, project, Platform::Docker, *remove_volumes, progress).await
            }
            JobPayload::RemoveWorkload { deployment_id, project, platform, remove_volumes } => {
                self.remove(*deployment_id, project, *platform, *remove_volumes, progress).await
            }
            JobPayload::StreamLogs { project, service, tail, since_unix_s, follow } => {
                let stream = async {
                    DockerDriver::connect()
                        .await?
                        .logs(project, service.as_deref(), *tail, *since_unix_s, *follow)
                        .await
                };
                forward_logs(stream, logs).await
            }
            JobPayload::StreamWorkloadLogs { platform, project, service, tail, since_unix_s, follow } => {
                let stream = async {
                    match platform {
                        Platform::Docker => {
                            DockerDriver::connect()
                                .await?
                                .logs(project, service.as_deref(), *tail, *since_unix_s, *follow)
                                .await
                        }
                        Platform::Swarm => {
                            SwarmDriver::connect()
                                .await?
                                .logs(project, service.as_deref(), *tail, *since_unix_s, *follow)
                                .await
                        }
                        Platform::Kubernetes => {
                            KubernetesDriver::connect()
                                .await?
                                .logs(project, service.as_deref(), *tail, *since_unix_s, *follow)
                                .await
                        }
                        Platform::Libvirt => {
                            LibvirtDriver::from_env().logs(project, service.as_deref(), *tail, *follow).await
                        }
                    }
                };
                forward_logs(stream, logs).await
            }
        };
        result.unwrap_or_else(|e| JobOutcome::Failed { message: e.to_string() })
    }

    async fn deploy(
        &self,
        deployment_id: Uuid,
        project: &str,
        platform: Platform,
        apply: impl Future<Output = Result<StackStatus, DriverError>>,
    ) -> Result<JobOutcome, DriverError> {
        let lock = self.project_lock(project).await;
        let _guard = lock.lock().await;
        let status = apply.await?;
        self.track(deployment_id, Some((project, platform)));
        Ok(JobOutcome::Succeeded(JobOutput::Stack(status)))
    }

    async fn remove(
        &self,
        deployment_id: Uuid,
        project: &str,
        platform: Platform,
        remove_volumes: bool,
        progress: &ProgressSender,
    ) -> Result<JobOutcome, DriverError> {
        let lock = self.project_lock(project).await;
        let _guard = lock.lock().await;
        match platform {
            Platform::Docker => DockerDriver::connect().await?.remove(project, remove_volumes, progress).await?,
            Platform::Swarm => SwarmDriver::connect().await?.remove(project, remove_volumes, progress).await?,
            Platform::Kubernetes => {
                let cluster = KubernetesDriver::connect().await?;
                // A Helm stack's release goes first, through Helm, when helm is here.
                if let Ok(helm) = HelmDriver::locate() {
                    let namespace = windflow_platforms::kubernetes::namespace_for(project);
                    helm.uninstall(project, &namespace, progress).await?;
                }
                cluster.remove(project, remove_volumes, progress).await?;
            }
            Platform::Libvirt => LibvirtDriver::from_env().remove(project, remove_volumes, progress).await?,
        }
        self.track(deployment_id, None);
        Ok(JobOutcome::Succeeded(JobOutput::None))
    }
}

/// Copies a driver's log lines to the job's log channel until either side ends.
async fn forward_logs(
    stream: impl Future<Output = Result<mpsc::Receiver<LogChunk>, DriverError>>,
    logs: &mpsc::Sender<LogChunk>,
) -> Result<JobOutcome, DriverError> {
    let mut chunks = stream.await?;
    while let Some(chunk) = chunks.recv().await {
        if logs.send(chunk).await.is_err() {
            break;
        }
    }
    Ok(JobOutcome::Succeeded(JobOutput::None))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    const AGENT: Uuid = Uuid::from_u128(1);

    fn gate(dir: &tempfile::TempDir) -> JobGate {
        let journal = Journal::open(&dir.path().join("journal"), 1_000).expect("journal");
        JobGate::new(AGENT, key().verifying_key(), journal)
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn job(agent_id: Uuid, expires_at_unix_ms: u64) -> JobEnvelope {
        JobEnvelope {
            job_id: Uuid::now_v7(),
            agent_id,
            issued_at_unix_ms: 1_000,
            expires_at_unix_ms,
            payload: JobPayload::CollectFacts,
        }
    }

    fn refused(result: Result<Admission, AdmitError>) -> JobRejection {
        match result {
            Err(AdmitError::Refused(rejection)) => rejection,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_job_runs_once_and_asking_again_waits_for_or_returns_its_recorded_outcome() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = Arc::new(gate(&dir));
        let signed = job(AGENT, 10_000).sign(&key());
        let Ok(Admission::Run(envelope)) = gate.admit(&signed, 2_000) else { panic!("a new job runs") };
        let job_id = envelope.job_id;

        // Asked again while it runs: the second request waits for the first run's outcome.
        let Ok(Admission::Running(id)) = gate.admit(&signed, 2_000) else { panic!("a running job is not rerun") };
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.outcome(id).await }
        });
        let outcome = JobOutcome::Succeeded(JobOutput::None);
        gate.finish(job_id, &outcome, 3_000);
        assert_eq!(waiting.await.expect("join"), outcome);

        // Asked again after it ended, even by a restarted agent: the recorded outcome.
        let restarted = self::gate(&dir);
        assert!(matches!(restarted.admit(&signed, 4_000), Ok(Admission::Ended(id, o)) if id == job_id && o == outcome));
    }

    #[test]
    fn a_job_a_crash_interrupted_is_resumed_once_and_journalled_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signed = job(AGENT, 10_000).sign(&key());
        assert!(matches!(gate(&dir).admit(&signed, 2_000), Ok(Admission::Run(_))));
        // The agent died before the job ended; the new process resumes it, once.
        let restarted = gate(&dir);
        assert!(matches!(restarted.admit(&signed, 3_000), Ok(Admission::Resume(_))));
        assert!(matches!(restarted.admit(&signed, 3_000), Ok(Admission::Running(_))));
        let lines = crate::journal::read_lines(&dir.path().join("journal")).expect("lines");
        assert_eq!(lines.iter().map(|l| l.resumed).collect::<Vec<_>>(), [false, true]);
    }

    #[test]
    fn a_tampered_job_is_refused_and_not_journalled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = gate(&dir);
        let mut signed = job(AGENT, 10_000).sign(&key());
        signed.envelope[0] ^= 0x40;
        assert_eq!(refused(gate.admit(&signed, 2_000)), JobRejection::BadSignature);
        assert!(gate.lock().journal.is_empty());
    }

    #[test]
    fn an_expired_job_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signed = job(AGENT, 10_000).sign(&key());
        assert!(matches!(refused(gate(&dir).admit(&signed, 10_001)), JobRejection::Expired { .. }));
    }

    #[test]
    fn a_misaddressed_job_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = Uuid::from_u128(2);
        let signed = job(other, 10_000).sign(&key());
        assert_eq!(refused(gate(&dir).admit(&signed, 2_000)), JobRejection::WrongAgent { addressed_to: other });
    }

    #[test]
    fn a_job_signed_by_a_foreign_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signed = job(AGENT, 10_000).sign(&SigningKey::from_bytes(&[8; 32]));
        assert_eq!(refused(gate(&dir).admit(&signed, 2_000)), JobRejection::BadSignature);
    }
}
