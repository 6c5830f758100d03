//! Admission and execution of signed jobs. [`JobGate`] is the single door: signature, addressee,
//! validity window, then the journal. Only what passes it is executed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use tokio::sync::mpsc;
use uuid::Uuid;
use windflow_protocol::messages::{JobOutcome, JobOutput, LogChunk};
use windflow_protocol::{JobEnvelope, JobPayload, JobRejection, SignedJob};

use crate::driver::ProgressSender;
use crate::driver::docker::{DockerDriver, DockerError};
use crate::journal::Journal;

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
    journal: Mutex<Journal>,
}

impl JobGate {
    pub fn new(agent_id: Uuid, job_key: VerifyingKey, journal: Journal) -> Self {
        Self { agent_id, job_key, journal: Mutex::new(journal) }
    }

    /// Parses the hex job key pinned at enrollment.
    pub fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
        let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }

    /// Checks a job and, if it may run, records it as applied before returning it.
    pub fn admit(&self, job: &SignedJob, now_unix_ms: u64) -> Result<JobEnvelope, AdmitError> {
        let envelope = job.verify(&self.job_key, self.agent_id, now_unix_ms)?;
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if !journal.record(envelope.job_id)? {
            return Err(JobRejection::Replayed { job_id: envelope.job_id }.into());
        }
        Ok(envelope)
    }
}

/// Runs admitted jobs. Jobs on the same project run one at a time, in arrival order; jobs on
/// different projects run side by side.
#[derive(Debug, Default)]
pub struct Executor {
    projects: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deployments applied here (id → project), whose state the agent reports.
    pub deployments: Mutex<HashMap<Uuid, String>>,
}

impl Executor {
    async fn project_lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.projects.lock().await.entry(project.to_owned()).or_default().clone()
    }

    /// Starts (with a project) or stops (without) reporting a deployment's state.
    pub fn track(&self, deployment_id: Uuid, project: Option<&str>) {
        let mut deployments = self.deployments.lock().unwrap_or_else(|e| e.into_inner());
        match project {
            Some(project) => deployments.insert(deployment_id, project.to_owned()),
            None => deployments.remove(&deployment_id),
        };
    }

    pub fn tracked(&self) -> Vec<(Uuid, String)> {
        self.deployments.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(id, p)| (*id, p.clone())).collect()
    }

    /// Runs a job. Progress goes to `progress`; log lines of a `StreamLogs` job go to `logs`,
    /// and the job ends when `logs` is closed (the control plane stopped listening).
    pub async fn execute(
        &self,
        payload: &JobPayload,
        progress: &ProgressSender,
        logs: &mpsc::Sender<LogChunk>,
    ) -> JobOutcome {
        let failed = |e: DockerError| JobOutcome::Failed { message: e.to_string() };
        match payload {
            JobPayload::CollectFacts => JobOutcome::Succeeded(JobOutput::Facts(crate::facts::collect().await)),
            JobPayload::DeployStack { deployment_id, spec } => {
                let lock = self.project_lock(&spec.project).await;
                let _guard = lock.lock().await;
                match DockerDriver::connect().await {
                    Ok(driver) => match driver.apply(*deployment_id, spec, progress).await {
                        Ok(status) => {
                            self.track(*deployment_id, Some(&spec.project));
                            JobOutcome::Succeeded(JobOutput::Stack(status))
                        }
                        Err(e) => failed(e),
                    },
                    Err(e) => failed(e),
                }
            }
            JobPayload::StreamLogs { project, service, tail, since_unix_s, follow } => {
                match DockerDriver::connect().await {
                    Ok(driver) => match driver.logs(project, service.as_deref(), *tail, *since_unix_s, *follow).await {
                        Ok(mut chunks) => {
                            while let Some(chunk) = chunks.recv().await {
                                if logs.send(chunk).await.is_err() {
                                    break;
                                }
                            }
                            JobOutcome::Succeeded(JobOutput::None)
                        }
                        Err(e) => failed(e),
                    },
                    Err(e) => failed(e),
                }
            }
            JobPayload::RemoveStack { deployment_id, project, remove_volumes } => {
                let lock = self.project_lock(project).await;
                let _guard = lock.lock().await;
                match DockerDriver::connect().await {
                    Ok(driver) => match driver.remove(project, *remove_volumes, progress).await {
                        Ok(()) => {
                            self.track(*deployment_id, None);
                            JobOutcome::Succeeded(JobOutput::None)
                        }
                        Err(e) => failed(e),
                    },
                    Err(e) => failed(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    const AGENT: Uuid = Uuid::from_u128(1);

    fn gate(dir: &tempfile::TempDir) -> JobGate {
        let journal = Journal::open(&dir.path().join("journal")).expect("journal");
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

    fn refused(result: Result<JobEnvelope, AdmitError>) -> JobRejection {
        match result {
            Err(AdmitError::Refused(rejection)) => rejection,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_job_is_admitted_once_and_its_replay_refused_even_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signed = job(AGENT, 10_000).sign(&key());
        let envelope = gate(&dir).admit(&signed, 2_000).expect("admitted");
        assert_eq!(refused(gate(&dir).admit(&signed, 2_000)), JobRejection::Replayed { job_id: envelope.job_id });
    }

    #[test]
    fn a_tampered_job_is_refused_and_not_journalled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = gate(&dir);
        let mut signed = job(AGENT, 10_000).sign(&key());
        signed.envelope[0] ^= 0x40;
        assert_eq!(refused(gate.admit(&signed, 2_000)), JobRejection::BadSignature);
        assert!(gate.journal.lock().expect("lock").is_empty());
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
