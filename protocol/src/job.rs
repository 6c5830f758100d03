//! Signed job envelopes.
//!
//! A job is an envelope {job id, agent id, issued at, expires at, payload}, encoded with
//! postcard, and an Ed25519 signature over a domain tag followed by exactly those bytes. The
//! agent verifies the signature before it decodes the envelope, so nothing unsigned is ever
//! interpreted. Transport security (mTLS) and job signing are independent layers: a job is
//! refused when its signature is wrong even if it arrived on an authenticated connection.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prepended to the envelope bytes before signing, so that a signature over a job can never be
/// mistaken for a signature over anything else.
const SIGNING_DOMAIN: &[u8] = b"windflow-job-v1\0";

/// Largest clock difference tolerated for a job issued "in the future".
pub const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// What the agent is asked to do. Variants are only appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPayload {
    /// Gather the host's facts again and return them.
    CollectFacts,
    /// Make the project's containers, networks and volumes match the spec.
    DeployStack { deployment_id: Uuid, spec: crate::stack::StackSpec },
    /// Remove everything labelled with the project; named volumes only when asked.
    RemoveStack { deployment_id: Uuid, project: String, remove_volumes: bool },
    /// Stream the logs of the project's containers as `JobEvent::Log` frames: the last `tail`
    /// lines (all when `None`) since `since_unix_s`, then, with `follow`, new lines until the
    /// control plane closes the stream.
    StreamLogs { project: String, service: Option<String>, tail: Option<u32>, since_unix_s: Option<i64>, follow: bool },
    /// Make a workload on an orchestrator (not the Docker engine's own containers) match its spec.
    DeployWorkload { deployment_id: Uuid, workload: Workload },
    /// Remove everything of the project on `platform`; volumes only when asked.
    RemoveWorkload { deployment_id: Uuid, project: String, platform: Platform, remove_volumes: bool },
    /// As `StreamLogs`, from the project's workload on `platform`.
    StreamWorkloadLogs {
        platform: Platform,
        project: String,
        service: Option<String>,
        tail: Option<u32>,
        since_unix_s: Option<i64>,
        follow: bool,
    },
    /// Starts, stops (gracefully), reboots or powers off one VM of a libvirt deployment.
    VmAction { project: String, vm: String, action: VmAction },
    /// Measures the CPU and memory the project's running containers use: `samples` readings,
    /// `interval_ms` apart, answered as `JobOutput::Usage`.
    SampleUsage { project: String, samples: u32, interval_ms: u32 },
}

/// What can be done to a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmAction {
    Start,
    /// An ACPI shutdown: the guest stops itself.
    Stop,
    Reboot,
    /// Pulls the plug.
    PowerOff,
}

/// Where a deployment runs. Grows as drivers are added, at the end only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Platform {
    /// Containers of the Docker engine, with Compose's semantics.
    Docker,
    /// Services of a Swarm (the agent runs on a manager).
    Swarm,
    /// Objects of a Kubernetes cluster (the agent runs in it, or holds a kubeconfig).
    Kubernetes,
    /// Virtual machines of a libvirt hypervisor.
    Libvirt,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Docker => "docker",
            Platform::Swarm => "swarm",
            Platform::Kubernetes => "kubernetes",
            Platform::Libvirt => "libvirt",
        }
    }
}

/// A workload for an orchestrator, with what that orchestrator needs beyond the Compose model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    Swarm {
        spec: crate::stack::StackSpec,
        swarm: crate::stack::SwarmSpec,
    },
    /// A stack in a Kubernetes namespace. Compose's `deploy` section, secrets and configs
    /// travel in `orchestration`, as they do for a Swarm.
    Kubernetes {
        spec: crate::stack::StackSpec,
        orchestration: crate::stack::SwarmSpec,
        namespace: String,
    },
    /// A Helm release named after the project, in `namespace`, on a Kubernetes cluster.
    Helm {
        project: String,
        namespace: String,
        chart: crate::stack::HelmChart,
    },
    /// Virtual machines of a libvirt hypervisor, named `<project>-<vm>`.
    Libvirt {
        project: String,
        vms: Vec<crate::stack::VmSpec>,
    },
}

impl Workload {
    pub fn project(&self) -> &str {
        match self {
            Workload::Swarm { spec, .. } | Workload::Kubernetes { spec, .. } => &spec.project,
            Workload::Helm { project, .. } | Workload::Libvirt { project, .. } => project,
        }
    }

    pub fn platform(&self) -> Platform {
        match self {
            Workload::Swarm { .. } => Platform::Swarm,
            Workload::Kubernetes { .. } | Workload::Helm { .. } => Platform::Kubernetes,
            Workload::Libvirt { .. } => Platform::Libvirt,
        }
    }
}

impl JobPayload {
    /// The deployment a job changes, for those that change one.
    pub fn deployment_id(&self) -> Option<Uuid> {
        match self {
            JobPayload::DeployStack { deployment_id, .. }
            | JobPayload::RemoveStack { deployment_id, .. }
            | JobPayload::DeployWorkload { deployment_id, .. }
            | JobPayload::RemoveWorkload { deployment_id, .. } => Some(*deployment_id),
            _ => None,
        }
    }

    /// A short name for logs: payloads can carry environment values, which never go to a log.
    pub fn kind(&self) -> &'static str {
        match self {
            JobPayload::CollectFacts => "collect_facts",
            JobPayload::DeployStack { .. } => "deploy_stack",
            JobPayload::RemoveStack { .. } => "remove_stack",
            JobPayload::StreamLogs { .. } => "stream_logs",
            JobPayload::DeployWorkload { .. } => "deploy_workload",
            JobPayload::RemoveWorkload { .. } => "remove_workload",
            JobPayload::StreamWorkloadLogs { .. } => "stream_workload_logs",
            JobPayload::VmAction { .. } => "vm_action",
            JobPayload::SampleUsage { .. } => "sample_usage",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnvelope {
    /// UUIDv7; also the replay-protection key in the agent's journal.
    pub job_id: Uuid,
    pub agent_id: Uuid,
    pub issued_at_unix_ms: u64,
    pub expires_at_unix_ms: u64,
    pub payload: JobPayload,
}

/// An envelope as signed bytes plus the signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedJob {
    pub envelope: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why an agent refused a job. Variants are only appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JobRejection {
    #[error("the job carries no valid Ed25519 signature")]
    MissingSignature,
    #[error("the job's signature does not match the control plane's job key")]
    BadSignature,
    #[error("the job envelope could not be decoded")]
    MalformedEnvelope,
    #[error("the job is addressed to agent {addressed_to}, not to this agent")]
    WrongAgent { addressed_to: Uuid },
    #[error("the job expired at {expired_at_unix_ms} (now {now_unix_ms})")]
    Expired { expired_at_unix_ms: u64, now_unix_ms: u64 },
    #[error("the job was issued in the future ({issued_at_unix_ms}, now {now_unix_ms})")]
    NotYetValid { issued_at_unix_ms: u64, now_unix_ms: u64 },
    #[error("job {job_id} was already applied")]
    Replayed { job_id: Uuid },
}

impl JobEnvelope {
    /// Encodes and signs the envelope with the control plane's job key.
    pub fn sign(&self, key: &SigningKey) -> SignedJob {
        // postcard serialisation of these plain types cannot fail.
        let envelope = postcard::to_allocvec(self).unwrap_or_default();
        let signature = key.sign(&signed_bytes(&envelope)).to_bytes().to_vec();
        SignedJob { envelope, signature }
    }
}

fn signed_bytes(envelope: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNING_DOMAIN.len() + envelope.len());
    bytes.extend_from_slice(SIGNING_DOMAIN);
    bytes.extend_from_slice(envelope);
    bytes
}

impl SignedJob {
    /// Checks signature, addressee and validity window, then returns the envelope.
    /// Replay is the caller's to check (it owns the journal), after this succeeds.
    pub fn verify(
        &self,
        job_key: &VerifyingKey,
        agent_id: Uuid,
        now_unix_ms: u64,
    ) -> Result<JobEnvelope, JobRejection> {
        let signature: [u8; 64] = self.signature.as_slice().try_into().map_err(|_| JobRejection::MissingSignature)?;
        job_key
            .verify(&signed_bytes(&self.envelope), &Signature::from_bytes(&signature))
            .map_err(|_| JobRejection::BadSignature)?;
        let envelope: JobEnvelope =
            crate::frame::decode_frame(&self.envelope).map_err(|_| JobRejection::MalformedEnvelope)?;
        if envelope.agent_id != agent_id {
            return Err(JobRejection::WrongAgent { addressed_to: envelope.agent_id });
        }
        if now_unix_ms >= envelope.expires_at_unix_ms {
            return Err(JobRejection::Expired { expired_at_unix_ms: envelope.expires_at_unix_ms, now_unix_ms });
        }
        if envelope.issued_at_unix_ms > now_unix_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(JobRejection::NotYetValid { issued_at_unix_ms: envelope.issued_at_unix_ms, now_unix_ms });
        }
        Ok(envelope)
    }

    /// The job id, read without checking anything: only for reporting a refusal.
    pub fn unverified_job_id(&self) -> Option<Uuid> {
        crate::frame::decode_frame::<JobEnvelope>(&self.envelope).ok().map(|e| e.job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn envelope(agent_id: Uuid) -> JobEnvelope {
        JobEnvelope {
            job_id: Uuid::from_u128(7),
            agent_id,
            issued_at_unix_ms: 1_000,
            expires_at_unix_ms: 61_000,
            payload: JobPayload::CollectFacts,
        }
    }

    const AGENT: Uuid = Uuid::from_u128(42);

    #[test]
    fn a_well_signed_job_for_this_agent_verifies() {
        let signed = envelope(AGENT).sign(&key(1));
        assert_eq!(signed.verify(&key(1).verifying_key(), AGENT, 2_000), Ok(envelope(AGENT)));
    }

    #[test]
    fn a_tampered_envelope_is_refused() {
        let mut signed = envelope(AGENT).sign(&key(1));
        let last = signed.envelope.len() - 1;
        signed.envelope[last] ^= 1;
        assert_eq!(signed.verify(&key(1).verifying_key(), AGENT, 2_000), Err(JobRejection::BadSignature));
    }

    #[test]
    fn a_job_signed_by_another_key_is_refused() {
        let signed = envelope(AGENT).sign(&key(2));
        assert_eq!(signed.verify(&key(1).verifying_key(), AGENT, 2_000), Err(JobRejection::BadSignature));
    }

    #[test]
    fn an_unsigned_job_is_refused() {
        let mut signed = envelope(AGENT).sign(&key(1));
        signed.signature.clear();
        assert_eq!(signed.verify(&key(1).verifying_key(), AGENT, 2_000), Err(JobRejection::MissingSignature));
    }

    #[test]
    fn a_job_for_another_agent_is_refused() {
        let other = Uuid::from_u128(43);
        let signed = envelope(other).sign(&key(1));
        assert_eq!(
            signed.verify(&key(1).verifying_key(), AGENT, 2_000),
            Err(JobRejection::WrongAgent { addressed_to: other })
        );
    }

    #[test]
    fn an_expired_job_is_refused() {
        let signed = envelope(AGENT).sign(&key(1));
        assert_eq!(
            signed.verify(&key(1).verifying_key(), AGENT, 61_000),
            Err(JobRejection::Expired { expired_at_unix_ms: 61_000, now_unix_ms: 61_000 })
        );
    }

    #[test]
    fn a_job_from_the_far_future_is_refused() {
        let mut e = envelope(AGENT);
        e.issued_at_unix_ms = 1_000 + CLOCK_SKEW_MS + 1;
        e.expires_at_unix_ms = u64::MAX;
        let signed = e.sign(&key(1));
        assert!(matches!(signed.verify(&key(1).verifying_key(), AGENT, 0), Err(JobRejection::NotYetValid { .. })));
    }
}
