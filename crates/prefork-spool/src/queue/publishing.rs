//! Publishing: writing job files in `tmp/`, syncing them as the
//! durability asks, and renaming them into `ready/` or `delayed/`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prefork_broker::BrokerError;

use super::{Queue, duration_us};
use crate::Durability;
use crate::name::{JobId, Ready};
use crate::record;

/// Payloads up to this size are written with the header in one `write(2)`.
pub(super) const ONE_WRITE: usize = 64 * 1024;
/// Most temp files a batch publish holds open at once.
pub(super) const BATCH_FILES: usize = 256;

/// Per-process sequence for job ids.
pub(super) static SEQ: AtomicU32 = AtomicU32::new(0);

impl Queue {
    /// Writes `parts` to a new file `tmp/{name}.{pid}.{host}` (this
    /// process: see [`sweep_tmp`](Queue::sweep_tmp)), not synced; the file
    /// is removed again on failure.
    pub(super) fn create_tmp(
        &self,
        name: &str,
        parts: &[&[u8]],
    ) -> Result<(PathBuf, File), BrokerError> {
        let path = self
            .tmp
            .join(format!("{name}.{}.{:016x}", self.me.pid, self.me.host));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            for part in parts {
                f.write_all(part)?;
            }
            Ok(f)
        })();
        match result {
            Ok(f) => Ok((path, f)),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(BrokerError::io(format_args!("write {}", path.display()), e))
            }
        }
    }

    /// `fdatasync`s a file written by [`create_tmp`](Queue::create_tmp)
    /// when durability asks for it.
    pub(super) fn sync_tmp(&self, path: &Path, f: &File) -> Result<(), BrokerError> {
        if self.options.durability == Durability::Fsync {
            f.sync_data()
                .map_err(|e| BrokerError::io(format_args!("fsync {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Writes `parts` to a new temp file, synced if so configured.
    pub(super) fn write_tmp(&self, name: &str, parts: &[&[u8]]) -> Result<PathBuf, BrokerError> {
        let (path, f) = self.create_tmp(name, parts)?;
        if let Err(e) = self.sync_tmp(&path, &f) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Writes one job's temp file (not synced).
    pub(super) fn create_job(
        &self,
        id: JobId,
        payload: &[u8],
    ) -> Result<(PathBuf, File), BrokerError> {
        if payload.len() <= ONE_WRITE {
            self.create_tmp(&id.to_string(), &[&record::encode(payload)])
        } else {
            self.create_tmp(&id.to_string(), &[&record::header(payload), payload])
        }
    }

    /// Publishes up to [`BATCH_FILES`] jobs into `dir`: writes every file,
    /// syncs each, then renames each into place (the caller syncs `dir`).
    /// On failure nothing of this chunk after the failure point is left.
    pub(super) fn publish_chunk(
        &self,
        payloads: &[&[u8]],
        dir: &Path,
        due_us: u64,
        now: u64,
    ) -> Result<(), BrokerError> {
        let mut files: Vec<(JobId, PathBuf, File)> = Vec::with_capacity(payloads.len());
        let pid = std::process::id();
        let written = payloads.iter().try_for_each(|p| {
            let id = JobId {
                published_us: now,
                pid,
                seq: SEQ.fetch_add(1, Ordering::Relaxed),
            };
            let (path, f) = self.create_job(id, p)?;
            files.push((id, path, f));
            Ok(())
        });
        let synced = written.and_then(|()| {
            files
                .iter()
                .try_for_each(|(_, path, f)| self.sync_tmp(path, f))
        });
        if let Err(e) = synced {
            for (_, path, _) in files {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        let mut files = files.into_iter();
        while let Some((id, tmp, f)) = files.next() {
            drop(f);
            let r = Ready {
                due_us,
                id,
                attempt: 1,
            };
            if let Err(e) = fs::rename(&tmp, dir.join(r.to_string())) {
                let _ = fs::remove_file(&tmp);
                for (_, path, _) in files {
                    let _ = fs::remove_file(path);
                }
                return Err(BrokerError::io("publish", e));
            }
        }
        Ok(())
    }

    /// `fsync`s a directory when durability asks for it.
    pub(super) fn sync_dir(&self, dir: &Path) -> Result<(), BrokerError> {
        if self.options.durability == Durability::Fsync {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| BrokerError::io(format_args!("fsync {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// The body of [`Broker::publish_batch`](prefork_broker::Broker::publish_batch).
    pub(super) fn publish_jobs(
        &mut self,
        payloads: &[&[u8]],
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let now = self.now_us();
        let delay_us = duration_us(delay);
        let due_us = now.saturating_add(delay_us);
        let dir = if delay_us == 0 {
            &self.ready
        } else {
            &self.delayed
        };
        for chunk in payloads.chunks(BATCH_FILES) {
            if let Err(e) = self.publish_chunk(chunk, dir, due_us, now) {
                let _ = self.sync_dir(dir); // the chunks before: best effort
                return Err(e);
            }
        }
        self.sync_dir(dir)?;
        if delay_us > 0 {
            self.next_promote_us = self.next_promote_us.min(due_us);
        }
        Ok(())
    }
}
