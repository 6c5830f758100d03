//! Deployment logs, from the agent over their own QUIC job stream.
//!
//! Followers of the same deployment and service share one agent stream: its lines go into a
//! broadcast channel, so a slow follower only loses lines of its own (it is told how many) and
//! never slows the agent or the other followers. When the last follower leaves, the stream is
//! stopped, which stops the agent's log readers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use uuid::Uuid;
use windflow_protocol::io::read_frame;
use windflow_protocol::messages::{JobEvent, JobOutcome, LogChunk, LogStream};
use windflow_protocol::{JobPayload, Platform};

use crate::hub::{Hub, HubError};

/// How long a log request stays valid for the agent (follows then run until stopped).
const REQUEST_VALIDITY: Duration = Duration::from_secs(60);
/// Bytes read from an agent's log stream at once.
const READ_BUFFER: usize = 256 * 1024;
/// Lines a follower may fall behind before it starts skipping.
const FOLLOWER_BUFFER: usize = 2048;

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub container: String,
    pub service: String,
    pub stream: LogStream,
    pub at_unix_ms: u64,
    pub text: String,
}

impl LogLine {
    fn from_chunk(project: &str, chunk: LogChunk) -> Self {
        // Containers are named <project>-<service>-<n>.
        let service = chunk
            .source
            .strip_prefix(project)
            .and_then(|s| s.strip_prefix('-'))
            .and_then(|s| s.rsplit_once('-').map(|(service, _)| service.to_owned()))
            .unwrap_or_else(|| chunk.source.clone());
        let text = String::from_utf8_lossy(&chunk.data).trim_end_matches(['\n', '\r']).to_owned();
        Self { container: chunk.source, service, stream: chunk.stream, at_unix_ms: chunk.timestamp_unix_ms, text }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    deployment_id: Uuid,
    service: Option<String>,
}

/// What one log request names.
#[derive(Debug, Clone)]
pub struct Source {
    pub deployment_id: Uuid,
    pub target_id: Uuid,
    pub project: String,
    pub platform: Platform,
    pub service: Option<String>,
}

impl Source {
    fn payload(&self, tail: Option<u32>, since_unix_s: Option<i64>, follow: bool) -> JobPayload {
        let (project, service) = (self.project.clone(), self.service.clone());
        match self.platform {
            Platform::Docker => JobPayload::StreamLogs { project, service, tail, since_unix_s, follow },
            platform => JobPayload::StreamWorkloadLogs { platform, project, service, tail, since_unix_s, follow },
        }
    }
}

pub struct LogHub {
    hub: Arc<Hub>,
    follows: Mutex<HashMap<Key, broadcast::Sender<Arc<LogLine>>>>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHub")
    }
}

impl LogHub {
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self { hub, follows: Mutex::new(HashMap::new()) })
    }

    /// The lines logged so far (the last `tail`, since `since_unix_s`), in order.
    pub async fn fetch(
        &self,
        source: &Source,
        tail: Option<u32>,
        since_unix_s: Option<i64>,
    ) -> Result<Vec<LogLine>, HubError> {
        let payload = source.payload(tail, since_unix_s, false);
        let mut recv = self.hub.open_job(source.target_id, payload, REQUEST_VALIDITY).await?;
        let mut lines = Vec::new();
        loop {
            match read_frame::<JobEvent, _>(&mut recv, self.hub.max_frame()).await {
                Ok(Some(JobEvent::Log(chunk))) => lines.push(LogLine::from_chunk(&source.project, chunk)),
                Ok(Some(JobEvent::Completed { outcome: JobOutcome::Failed { message }, .. })) => {
                    return Err(HubError::JobFailed(message));
                }
                Ok(Some(JobEvent::Completed { .. })) | Ok(None) => break,
                Ok(Some(JobEvent::Refused { reason, .. })) => return Err(HubError::JobRefused(reason)),
                Ok(Some(_)) => {}
                Err(e) => return Err(HubError::Link(e.to_string())),
            }
        }
        // Lines of several containers arrive per container; show them in time order.
        lines.sort_by_key(|l| l.at_unix_ms);
        Ok(lines)
    }

    /// New lines from now on. The receiver ends when the agent's stream ends (the target
    /// disconnected); a lagging receiver gets `RecvError::Lagged(n)` and continues.
    pub async fn follow(self: &Arc<Self>, source: &Source) -> Result<broadcast::Receiver<Arc<LogLine>>, HubError> {
        let key = Key { deployment_id: source.deployment_id, service: source.service.clone() };
        if let Some(sender) = self.follows.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(sender.subscribe());
        }
        let payload = source.payload(Some(0), None, true);
        let recv = self.hub.open_job(source.target_id, payload, REQUEST_VALIDITY).await?;
        let (sender, receiver) = broadcast::channel(FOLLOWER_BUFFER);
        {
            let mut follows = self.follows.lock().unwrap_or_else(|e| e.into_inner());
            // Another follower may have opened the same stream meanwhile: share theirs.
            if let Some(existing) = follows.get(&key) {
                let mut recv = recv;
                let _ = recv.stop(0u32.into());
                return Ok(existing.subscribe());
            }
            follows.insert(key.clone(), sender.clone());
        }
        tokio::spawn(self.clone().pump(key, source.project.clone(), recv, sender));
        Ok(receiver)
    }

    async fn pump(
        self: Arc<Self>,
        key: Key,
        project: String,
        mut recv: quinn::RecvStream,
        sender: broadcast::Sender<Arc<LogLine>>,
    ) {
        let (frames_tx, mut frames) = tokio::sync::mpsc::channel(256);
        let max = self.hub.max_frame();
        // Reads on their own task: a read is not cancel-safe.
        let reader = tokio::spawn(async move {
            // Log frames are small and many: read the stream in large pieces.
            let mut buffered = tokio::io::BufReader::with_capacity(READ_BUFFER, &mut recv);
            while let Ok(Some(event)) = read_frame::<JobEvent, _>(&mut buffered, max).await {
                if frames_tx.send(event).await.is_err() {
                    break;
                }
            }
            let _ = recv.stop(0u32.into());
        });
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = frames.recv() => match event {
                    Some(JobEvent::Log(chunk)) => {
                        let _ = sender.send(Arc::new(LogLine::from_chunk(&project, chunk)));
                    }
                    Some(JobEvent::Completed { .. } | JobEvent::Refused { .. }) | None => break,
                    Some(_) => {}
                },
                _ = check.tick() => {
                    if sender.receiver_count() == 0 {
                        break;
                    }
                }
            }
        }
        self.follows.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        // Dropping our receiving side makes the reader stop the stream, which the agent sees.
        drop(frames);
        reader.abort();
    }

    /// Agent streams open for followers right now.
    pub fn open_follows(&self) -> usize {
        self.follows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_knows_its_service_from_the_container_name() {
        let chunk = LogChunk {
            source: "shop-api-worker-2".into(),
            stream: LogStream::Stdout,
            timestamp_unix_ms: 5,
            data: b"hello\n".to_vec(),
        };
        let line = LogLine::from_chunk("shop", chunk);
        assert_eq!((line.service.as_str(), line.text.as_str()), ("api-worker", "hello"));
    }
}
