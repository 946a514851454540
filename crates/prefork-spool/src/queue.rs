//! `Queue`: a handle on one queue of a spool, the [`Broker`] implementation.
//! The type, its directories, housekeeping and its trait impl live here;
//! each idea has a module of its own: [`claims`] (fetch, reclaim, promote,
//! take-over), [`publishing`], [`settling`] (ack, retry, release, dead
//! letter, touch) and [`dead_letters`] (listing, re-driving and deleting
//! them).

mod claims;
mod dead_letters;
mod publishing;
mod settling;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prefork_broker::{
    Broker, BrokerError, DeadLetter, Delivery, DeliveryId, ErrorKind, QueueStats, SettleError,
};

use crate::holder::{Holder, Judged, Liveness};
use crate::name::{Dead, JobId};
use crate::wait::Waiter;
use crate::{Options, Spool};

/// How many jobs a queue holds in each state, from [`Queue::counts`] (the
/// spool's own form of [`Broker::stats`], with exact `usize` counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs waiting to be fetched.
    pub ready: usize,
    /// Jobs waiting for their delay to pass.
    pub delayed: usize,
    /// Jobs fetched and not yet settled (live or expired leases).
    pub claimed: usize,
    /// Dead letters.
    pub dead: usize,
    /// Files the spool could not read, kept aside in `quarantine/`.
    pub quarantined: usize,
}

/// A handle on one queue of a [`Spool`](crate::Spool); implements [`Broker`].
///
/// # On disk
///
/// A queue is a directory with `tmp/`, `ready/`, `delayed/`, `claimed/`,
/// `dead/` and `quarantine/`. A job is one file whose content (a 24-byte
/// header with a length and checksum, then the payload) is written once in
/// `tmp/` and never changes; its state is where it is and its name:
///
/// | state | name |
/// |---|---|
/// | ready | `ready/{due}.{id}.{attempt}` |
/// | delayed | `delayed/{due}.{id}.{attempt}` |
/// | claimed | `claimed/{id}.{attempt}.{lease expiry}.{pid}.{start}.{host}` |
/// | dead | `dead/{id}.{attempt}` and `dead/{id}.reason` |
///
/// Times are µs since the epoch in 16 hex digits, so names sort by time;
/// an id is `{published µs}-{publisher pid}-{sequence}` in hex. Every
/// change of state is one `rename(2)` (or the `unlink(2)` of an ack), which
/// the kernel does atomically: of two processes claiming the same job,
/// exactly one rename succeeds; a process killed at any point leaves every
/// job in exactly one state. Expired leases, and leases of processes on
/// this host that no longer run (judged by pid and start time), are taken
/// back by whichever process fetches next.
///
/// Files whose name or content the spool cannot read are moved to
/// `quarantine/` with a `.why` note, counted in [`Stats::quarantined`], and
/// never delivered; the jobs around them are not affected.
#[derive(Debug)]
pub struct Queue {
    name: String,
    dir: PathBuf,
    ready: PathBuf,
    delayed: PathBuf,
    claimed: PathBuf,
    dead: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    options: Options,
    /// Names from the last listing of `ready/`, and how far we got.
    cache: Vec<String>,
    cursor: usize,
    /// µs since the epoch: when to look at `claimed/` and `delayed/` again.
    next_reclaim_us: u64,
    next_promote_us: u64,
    waiter: Option<Waiter>,
    /// This process, as its claims record it (refreshed after a fork).
    me: Holder,
}

impl Queue {
    pub(crate) fn open(spool: &Spool, name: &str) -> Result<Queue, BrokerError> {
        valid_queue_name(name)?;
        let dir = spool.root().join(name);
        let q = Queue {
            name: name.to_owned(),
            ready: dir.join("ready"),
            delayed: dir.join("delayed"),
            claimed: dir.join("claimed"),
            dead: dir.join("dead"),
            tmp: dir.join("tmp"),
            quarantine: dir.join("quarantine"),
            dir,
            options: spool.options().clone(),
            cache: Vec::new(),
            cursor: 0,
            next_reclaim_us: 0,
            next_promote_us: 0,
            waiter: None,
            me: Holder::current(),
        };
        for d in [
            &q.ready,
            &q.delayed,
            &q.claimed,
            &q.dead,
            &q.tmp,
            &q.quarantine,
        ] {
            fs::create_dir_all(d)
                .map_err(|e| BrokerError::io(format_args!("create {}", d.display()), e))?;
        }
        q.sweep_tmp()?;
        Ok(q)
    }

    /// The queue's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Counts the jobs in each state (a listing of each directory). It is
    /// [`Broker::stats`] in the spool's own terms (named apart, so neither
    /// hides the other).
    ///
    /// # Errors
    ///
    /// When a directory cannot be listed.
    pub fn counts(&self) -> Result<Stats, BrokerError> {
        let count = |dir: &Path, keep: &dyn Fn(&str) -> bool| -> Result<usize, BrokerError> {
            Ok(list(dir)?.iter().filter(|n| keep(n)).count())
        };
        Ok(Stats {
            ready: count(&self.ready, &|_| true)?,
            delayed: count(&self.delayed, &|_| true)?,
            claimed: count(&self.claimed, &|_| true)?,
            dead: count(&self.dead, &|n| {
                matches!(Dead::parse(n), Some(Dead::Job { .. }))
            })?,
            quarantined: count(&self.quarantine, &|n| !n.ends_with(".why"))?,
        })
    }

    /// Makes `me` this process again when the handle crossed a fork.
    fn refresh_me(&mut self) {
        if self.me.pid != std::process::id() {
            self.me = Holder::current();
        }
    }

    fn now_us(&self) -> u64 {
        micros(self.options.clock.now())
    }

    fn lease_us(&self) -> u64 {
        duration_us(self.options.lease)
    }

    /// How often to look for claims of dead owners when nothing else is due.
    fn reclaim_interval_us(&self) -> u64 {
        (self.lease_us() / 4).clamp(10_000, 1_000_000)
    }

    /// Moves an unreadable file aside, with a note saying why. Best effort:
    /// a failure here only means the file is looked at again later.
    fn quarantine(&self, dir: &Path, name: &str, why: &str) {
        let to = self.quarantine.join(name);
        if fs::rename(dir.join(name), &to).is_ok() {
            let note = format!("from {}: {why}\n", dir.display());
            let _ = fs::write(self.quarantine.join(format!("{name}.why")), note);
        }
    }

    /// Removes files in `tmp/` left by writers on this host that no longer
    /// run. Temp names are `{id}[.reason].{writer pid}.{host}`: the writer
    /// is who matters, not who published the job (a worker writes a dead
    /// letter's reason for a job a long-gone process published). Names of
    /// an earlier version, `{id}[.reason].{host}`, are judged by the pid in
    /// the id.
    fn sweep_tmp(&self) -> Result<(), BrokerError> {
        if !self.options.reclaim_dead_owners {
            return Ok(());
        }
        let mut judged = Judged::default();
        for name in list(&self.tmp)? {
            let parts: Vec<&str> = name.split('.').collect();
            let (Some(id), Some(host)) = (parts.first(), parts.last()) else {
                continue;
            };
            let Some(id) = JobId::parse(id) else { continue };
            let writer = match parts.len() {
                // {id}.{pid}.{host} or {id}.reason.{pid}.{host}
                3 | 4 if parts[parts.len() - 2] != "reason" => {
                    parts[parts.len() - 2].parse().unwrap_or(id.pid)
                }
                _ => id.pid,
            };
            let writer = Holder {
                pid: writer,
                start: 0,
                host: u64::from_str_radix(host, 16).unwrap_or(0),
            };
            if judged.liveness(writer, &self.me) == Liveness::Dead {
                let _ = fs::remove_file(self.tmp.join(&name));
            }
        }
        Ok(())
    }
}

impl Broker for Queue {
    fn queue(&self) -> &str {
        &self.name
    }

    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        self.publish_batch(&[payload], delay)
    }

    /// Writes every job file and `fdatasync`s each (with
    /// [`Durability::Fsync`](crate::Durability::Fsync)), renames them into place, then `fsync`s the
    /// directory once for the whole batch instead of once per job; files
    /// are handled in chunks of 256 so a large batch stays within the fd
    /// limit. On an error, the jobs of the chunks before it are published.
    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
        self.publish_jobs(payloads, delay)
    }

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        self.fetch_jobs(max, timeout)
    }

    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.ack_job(delivery)
    }

    /// Renames every claim of `holder_pid` on this host (and every claim of
    /// that pid in `ids` written before claims recorded a host) to a claim
    /// of this handle, one atomic rename each, counting one more attempt.
    /// A claim whose pid now names a live process that started when the
    /// claim says (the holder is alive after all) is left alone. Jobs in
    /// `ids` that a fetch already gave back (it found the holder dead) are
    /// claimed from `ready/` if no one was first.
    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.take_over_claims(holder_pid, ids)
    }

    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        self.retry_job(delivery, delay)
    }

    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.release_job(delivery)
    }

    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        self.dead_letter_job(delivery, reason)
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        self.touch_job(delivery)
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.list_dead_letters(limit)
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.redrive_dead_letter(id)
    }

    fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.delete_dead_letter(id)
    }

    /// [`Queue::counts`]: a listing of each directory; the quarantined
    /// files are the extra count `quarantined`. Claimed counts every claim
    /// file, live or with an expired lease not yet taken back; delayed
    /// counts the jobs of `delayed/`, due ones not yet moved by a fetch
    /// included.
    fn stats(&mut self) -> Result<QueueStats, BrokerError> {
        let s = self.counts()?;
        let n = |c: usize| c as u64;
        Ok(QueueStats::new(n(s.ready), n(s.dead))
            .with_delayed(n(s.delayed))
            .with_claimed(n(s.claimed))
            .with_extra("quarantined", n(s.quarantined)))
    }
}

/// The names in a directory (non-UTF-8 names are left out).
fn list(dir: &Path) -> Result<Vec<String>, BrokerError> {
    let rd = fs::read_dir(dir)
        .map_err(|e| BrokerError::io(format_args!("list {}", dir.display()), e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry =
            entry.map_err(|e| BrokerError::io(format_args!("list {}", dir.display()), e))?;
        if let Ok(n) = entry.file_name().into_string() {
            names.push(n);
        }
    }
    Ok(names)
}

fn valid_queue_name(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::new(
            ErrorKind::Invalid,
            format!("queue name {name:?}: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)"),
        ))
    }
}

fn micros(t: SystemTime) -> u64 {
    duration_us(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Whole µs, rounded up, saturating.
fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
