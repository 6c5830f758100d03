//! The journal of jobs: the agent's replay protection and its memory of outcomes. A job's start
//! is made durable (fsync) before it runs and its outcome when it ends, so a job is applied at
//! most once even across a crash, and a job asked for again (its answer was lost with the link)
//! gets the outcome already recorded instead of running twice.
//!
//! One JSON line per event: a start (`outcome` absent) or an end. Entries older than
//! [`RETENTION`] are dropped when the journal is opened; the control plane redelivers a job
//! under its first id only well within that time.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use windflow_protocol::JobEnvelope;
use windflow_protocol::messages::JobOutcome;

/// How long a job's entry is kept.
pub const RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// What the journal knows of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Started and not ended: running now, or interrupted by a crash.
    Started,
    Finished(JobOutcome),
}

/// One line of the journal file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    pub job_id: Uuid,
    pub at_unix_ms: u64,
    /// The job's kind and deployment, on starts: what an operator (or a test) reads it for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<Uuid>,
    /// A start after a crash interrupted the job: the job is run again to its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<JobOutcome>,
}

#[derive(Debug)]
struct Entry {
    state: JobState,
    last_unix_ms: u64,
    kind: Option<String>,
    deployment_id: Option<Uuid>,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    entries: HashMap<Uuid, Entry>,
}

impl Journal {
    /// Opens (or creates) the journal, dropping entries older than [`RETENTION`].
    pub fn open(path: &Path, now_unix_ms: u64) -> std::io::Result<Self> {
        let mut entries = HashMap::new();
        let mut lines = 0usize;
        if let Ok(file) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(file).lines() {
                let line = line?;
                lines += 1;
                // A torn last line after a crash is simply not an entry.
                let Ok(line) = serde_json::from_str::<Line>(&line) else { continue };
                let entry = entries.entry(line.job_id).or_insert(Entry {
                    state: JobState::Started,
                    last_unix_ms: 0,
                    kind: None,
                    deployment_id: None,
                });
                entry.last_unix_ms = line.at_unix_ms;
                entry.kind = line.kind.or(entry.kind.take());
                entry.deployment_id = line.deployment_id.or(entry.deployment_id);
                entry.state = match line.outcome {
                    Some(outcome) => JobState::Finished(outcome),
                    None => JobState::Started,
                };
            }
        }
        let horizon = now_unix_ms.saturating_sub(u64::try_from(RETENTION.as_millis()).unwrap_or(u64::MAX));
        let before = entries.len();
        entries.retain(|_, entry| entry.last_unix_ms >= horizon);
        if entries.len() < before || lines > entries.len() * 2 {
            rewrite(path, &entries)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_owned(), file, entries })
    }

    pub fn state(&self, job_id: Uuid) -> Option<&JobState> {
        self.entries.get(&job_id).map(|e| &e.state)
    }

    /// Records durably that a job starts (again, when `resumed`).
    pub fn start(&mut self, envelope: &JobEnvelope, resumed: bool, now_unix_ms: u64) -> std::io::Result<()> {
        let kind = Some(envelope.payload.kind().to_owned());
        let deployment_id = envelope.payload.deployment_id();
        self.append(&Line {
            job_id: envelope.job_id,
            at_unix_ms: now_unix_ms,
            kind: kind.clone(),
            deployment_id,
            resumed,
            outcome: None,
        })?;
        self.entries.insert(
            envelope.job_id,
            Entry { state: JobState::Started, last_unix_ms: now_unix_ms, kind, deployment_id },
        );
        Ok(())
    }

    /// Records durably how a job ended.
    pub fn finish(&mut self, job_id: Uuid, outcome: &JobOutcome, now_unix_ms: u64) -> std::io::Result<()> {
        self.append(&Line {
            job_id,
            at_unix_ms: now_unix_ms,
            kind: None,
            deployment_id: None,
            resumed: false,
            outcome: Some(outcome.clone()),
        })?;
        if let Some(entry) = self.entries.get_mut(&job_id) {
            entry.state = JobState::Finished(outcome.clone());
            entry.last_unix_ms = now_unix_ms;
        }
        Ok(())
    }

    fn append(&mut self, line: &Line) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.file.sync_data()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes the kept entries to a new file and renames it over the journal, so a crash leaves
/// either the old journal or the new one.
fn rewrite(path: &Path, entries: &HashMap<Uuid, Entry>) -> std::io::Result<()> {
    let temporary = path.with_extension("compacting");
    {
        let mut file = std::fs::File::create(&temporary)?;
        for (job_id, entry) in entries {
            let outcome = match &entry.state {
                JobState::Started => None,
                JobState::Finished(outcome) => Some(outcome.clone()),
            };
            let line = Line {
                job_id: *job_id,
                at_unix_ms: entry.last_unix_ms,
                kind: entry.kind.clone(),
                deployment_id: entry.deployment_id,
                resumed: false,
                outcome,
            };
            let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            file.write_all(&bytes)?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Every line of a journal file, for tools and tests that audit what an agent applied.
pub fn read_lines(path: &Path) -> std::io::Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

#[cfg(test)]
mod tests {
    use windflow_protocol::JobPayload;
    use windflow_protocol::messages::JobOutput;

    use super::*;

    const DAY_MS: u64 = 86_400_000;

    fn envelope() -> JobEnvelope {
        JobEnvelope {
            job_id: Uuid::now_v7(),
            agent_id: Uuid::from_u128(1),
            issued_at_unix_ms: 0,
            expires_at_unix_ms: u64::MAX,
            payload: JobPayload::CollectFacts,
        }
    }

    #[test]
    fn starts_and_outcomes_survive_a_reopen_and_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let (running, done) = (envelope(), envelope());
        {
            let mut journal = Journal::open(&path, 1_000).expect("open");
            journal.start(&running, false, 1_000).expect("start");
            journal.start(&done, false, 1_000).expect("start");
            journal.finish(done.job_id, &JobOutcome::Succeeded(JobOutput::None), 2_000).expect("finish");
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open")
            .write_all(b"{\"job_id\":\"01")
            .expect("torn");
        let journal = Journal::open(&path, 3_000).expect("reopen");
        assert_eq!(journal.state(running.job_id), Some(&JobState::Started));
        assert_eq!(journal.state(done.job_id), Some(&JobState::Finished(JobOutcome::Succeeded(JobOutput::None))));
        assert_eq!(journal.len(), 2);
    }

    #[test]
    fn entries_older_than_the_retention_are_dropped_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let (old, recent) = (envelope(), envelope());
        {
            let mut journal = Journal::open(&path, DAY_MS).expect("open");
            journal.start(&old, false, DAY_MS).expect("start");
            journal.start(&recent, false, 7 * DAY_MS).expect("start");
        }
        let journal = Journal::open(&path, 8 * DAY_MS + 1).expect("reopen");
        assert_eq!(journal.state(old.job_id), None);
        assert_eq!(journal.state(recent.job_id), Some(&JobState::Started));
        assert_eq!(read_lines(&path).expect("lines").len(), 1, "the file was compacted");
    }
}
