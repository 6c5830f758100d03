//! The journal of applied job ids: the agent's replay protection. An id is made durable
//! (fsync) before its job runs, so a job is never applied twice, even across a crash.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    seen: HashSet<Uuid>,
}

impl Journal {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut seen = HashSet::new();
        if let Ok(file) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(file).lines() {
                // A torn last line after a crash is simply not an id.
                if let Ok(id) = Uuid::try_parse(line?.trim()) {
                    seen.insert(id);
                }
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_owned(), file, seen })
    }

    pub fn contains(&self, job_id: Uuid) -> bool {
        self.seen.contains(&job_id)
    }

    /// Records a job id durably. Returns false if it was already there.
    pub fn record(&mut self, job_id: Uuid) -> std::io::Result<bool> {
        if self.seen.contains(&job_id) {
            return Ok(false);
        }
        writeln!(self.file, "{job_id}")?;
        self.file.sync_data()?;
        self.seen.insert(job_id);
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_ids_survive_a_reopen_and_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let id = Uuid::now_v7();
        {
            let mut journal = Journal::open(&path).expect("open");
            assert!(journal.record(id).expect("record"));
            assert!(!journal.record(id).expect("record"));
        }
        std::fs::OpenOptions::new().append(true).open(&path).expect("open").write_all(b"0190ab").expect("torn");
        let journal = Journal::open(&path).expect("reopen");
        assert!(journal.contains(id));
        assert_eq!(journal.len(), 1);
    }
}
