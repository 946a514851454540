//! A durable job queue in a directory: no server, shared safely by several
//! processes, and a SIGKILL of any of them at any instant loses no job and
//! corrupts nothing. It implements [`prefork_broker::Broker`] and is the
//! embedded broker of prefork's quick start.
//!
//! The README below is the crate's guide (its example is a doctest); the
//! on-disk format is described in [`Queue`].
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod holder;
mod name;
mod record;
mod wait;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefork_broker::{
    Broker, BrokerError, Connect, DeadLetter, Delivery, DeliveryId, ErrorKind, SettleError,
};

use crate::holder::{Holder, Judged, Liveness};
use crate::name::{Claimed, Dead, JobId, Ready};
use crate::wait::Waiter;

/// Payloads up to this size are written with the header in one `write(2)`.
const ONE_WRITE: usize = 64 * 1024;
/// Most temp files a batch publish holds open at once.
const BATCH_FILES: usize = 256;
/// Longest time between looks for newly delayed jobs written by others.
const DELAYED_SCAN_MAX: Duration = Duration::from_secs(1);

/// How hard the spool works to keep jobs across an operating-system crash
/// or power loss. Process crashes (SIGKILL, OOM, panics) never lose a job
/// in either mode: the data is in the kernel's page cache as soon as a
/// write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `fsync` the job file before it becomes visible and the directory
    /// after, so a job whose [`publish`](Broker::publish) returned, or a
    /// dead letter whose [`dead_letter`](Broker::dead_letter) returned,
    /// survives a power loss. Acks, claims and retries are not synced: after
    /// a power loss a job may run again (at-least-once), never vanish.
    #[default]
    Fsync,
    /// No `fsync`: much faster, and safe against any process crash, but an
    /// operating-system crash or power loss can lose recently published
    /// jobs (a file cut short is then quarantined, not delivered).
    Buffered,
}

/// The wall clock the spool reads for due times and lease expiries; an
/// implementation other than [`SystemClock`] lets tests move time without
/// sleeping.
///
/// All processes sharing a spool must agree on the time, so production code
/// uses [`SystemClock`].
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// [`Clock`] that reads [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Settings of a [`Spool`]; every queue opened from it shares them.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_spool::{Durability, Options};
///
/// let o = Options::default()
///     .lease(Duration::from_secs(10))
///     .durability(Durability::Buffered);
/// assert_eq!(o.get_lease(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    lease: Duration,
    durability: Durability,
    reclaim_dead_owners: bool,
    clock: Arc<dyn Clock>,
}

impl Default for Options {
    /// A lease of 60 s, [`Durability::Fsync`], dead owners reclaimed, the
    /// system clock.
    fn default() -> Options {
        Options {
            lease: Duration::from_secs(60),
            durability: Durability::Fsync,
            reclaim_dead_owners: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl Options {
    /// How long a fetched job stays claimed without a
    /// [`touch`](Broker::touch) before any process may hand it out again
    /// (at least 1 ms).
    pub fn lease(mut self, lease: Duration) -> Options {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// The lease set by [`lease`](Options::lease).
    pub fn get_lease(&self) -> Duration {
        self.lease
    }

    /// The [`Durability`] of published jobs and dead letters.
    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    /// Whether a job claimed by a process that no longer exists is handed
    /// out again at once rather than when its lease expires (default: yes).
    ///
    /// A claim records its holder's pid, start time and host (UTS host name
    /// and pid namespace); the holder is dead when it is on this host and
    /// `kill(pid, 0)` fails with `ESRCH`, the pid is a zombie, or the pid
    /// now names a process that started at another time (pid reuse).
    /// Claims of other hosts (containers sharing the directory) are left to
    /// their lease.
    pub fn reclaim_dead_owners(mut self, yes: bool) -> Options {
        self.reclaim_dead_owners = yes;
        self
    }

    /// The clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Options {
        self.clock = clock;
        self
    }
}

/// A spool: a directory holding named queues, one subdirectory each.
///
/// Cheap to clone; it holds no file descriptor. Open a [`Queue`] with
/// [`Spool::queue`], or through [`Connect`] (after the fork, in the process
/// that uses it).
///
/// # Examples
///
/// ```
/// use prefork_spool::Spool;
///
/// let dir = std::env::temp_dir().join(format!("spool-ex-{}", std::process::id()));
/// let spool = Spool::open(&dir)?;
/// let q = spool.queue("emails")?;
/// assert_eq!(q.path(), dir.join("emails"));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    options: Options,
}

impl Spool {
    /// Opens (creating it if needed) the spool at `root` with default
    /// [`Options`].
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, BrokerError> {
        Spool::with_options(root, Options::default())
    }

    /// Opens (creating it if needed) the spool at `root` with `options`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn with_options(root: impl Into<PathBuf>, options: Options) -> Result<Spool, BrokerError> {
        let root = root.into();
        fs::create_dir_all(&root)
            .map_err(|e| BrokerError::io(format_args!("create {}", root.display()), e))?;
        Ok(Spool { root, options })
    }

    /// The spool's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The spool's settings.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Opens queue `name`, creating its directories if needed, and removes
    /// half-written files left by publishers that died.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] when `name` is not 1 to 128 characters of
    /// `A-Z a-z 0-9 . _ -` or starts with a dot; an I/O error when the
    /// directories cannot be created.
    pub fn queue(&self, name: &str) -> Result<Queue, BrokerError> {
        Queue::open(self, name)
    }
}

impl Connect for Spool {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Ok(Box::new(self.queue(queue)?))
    }
}

/// How many jobs a queue holds in each state, from [`Queue::stats`].
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

/// A handle on one queue of a [`Spool`]; implements [`Broker`].
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

/// Per-process sequence for job ids.
static SEQ: AtomicU32 = AtomicU32::new(0);

impl Queue {
    fn open(spool: &Spool, name: &str) -> Result<Queue, BrokerError> {
        valid_queue_name(name)?;
        let dir = spool.root.join(name);
        let q = Queue {
            name: name.to_owned(),
            ready: dir.join("ready"),
            delayed: dir.join("delayed"),
            claimed: dir.join("claimed"),
            dead: dir.join("dead"),
            tmp: dir.join("tmp"),
            quarantine: dir.join("quarantine"),
            dir,
            options: spool.options.clone(),
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

    /// Counts the jobs in each state (a listing of each directory).
    ///
    /// # Errors
    ///
    /// When a directory cannot be listed.
    pub fn stats(&self) -> Result<Stats, BrokerError> {
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

    // ----- time --------------------------------------------------------

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

    // ----- fetching ----------------------------------------------------

    /// Claims up to `max` ready jobs, doing housekeeping first when due.
    fn claim_some(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        self.refresh_me();
        let now = self.now_us();
        if now >= self.next_reclaim_us {
            self.reclaim(now)?;
        }
        if now >= self.next_promote_us {
            self.promote(now)?;
        }
        let mut out = Vec::new();
        let mut rescanned = false;
        while out.len() < max {
            if self.cursor >= self.cache.len() {
                if rescanned {
                    break;
                }
                self.rescan()?;
                rescanned = true;
                continue;
            }
            let name = std::mem::take(&mut self.cache[self.cursor]);
            self.cursor += 1;
            match Ready::parse(&name) {
                None => self.quarantine(&self.ready, &name, "not a ready-job name"),
                Some(r) if r.due_us > now => {
                    // Not due (a clock step, or put here by hand): leave it
                    // and look again later.
                    self.next_promote_us = self.next_promote_us.min(r.due_us);
                }
                Some(r) => match self.claim(&name, r, now) {
                    Ok(Some(d)) => out.push(d),
                    Ok(None) => {}
                    // Hand out what is claimed already; the error comes
                    // back on the next call if it persists.
                    Err(_) if !out.is_empty() => break,
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(out)
    }

    /// Lists `ready/` into the cache, oldest first.
    fn rescan(&mut self) -> Result<(), BrokerError> {
        self.cache = list(&self.ready)?;
        self.cache.sort_unstable();
        self.cursor = 0;
        Ok(())
    }

    /// Tries to claim `ready/name`; `None` when another process was first
    /// or the file was quarantined.
    fn claim(&self, name: &str, r: Ready, now: u64) -> Result<Option<Delivery>, BrokerError> {
        let c = Claimed {
            id: r.id,
            attempt: r.attempt,
            expiry_us: now.saturating_add(self.lease_us()),
            holder: self.me,
        };
        match fs::rename(self.ready.join(name), self.claimed.join(c.to_string())) {
            Ok(()) => self.deliver(&c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BrokerError::io("claim", e)),
        }
    }

    /// Reads the job this handle just claimed as `c`; `None` when the file
    /// was quarantined (or taken back meanwhile).
    fn deliver(&self, c: &Claimed) -> Result<Option<Delivery>, BrokerError> {
        let receipt = c.to_string();
        let path = self.claimed.join(&receipt);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BrokerError::io(format_args!("read {}", path.display()), e)),
        };
        match record::decode(bytes) {
            Ok(payload) => Ok(Some(
                Delivery::new(DeliveryId::new(c.id.to_string()), payload)
                    .with_attempt(c.attempt)
                    .with_receipt(receipt),
            )),
            Err(why) => {
                self.quarantine(&self.claimed, &receipt, &why.to_string());
                Ok(None)
            }
        }
    }

    /// Hands out again jobs whose lease expired or whose holder is gone.
    fn reclaim(&mut self, now: u64) -> Result<(), BrokerError> {
        let mut next = now.saturating_add(self.reclaim_interval_us());
        let mut judged = Judged::default();
        for name in list(&self.claimed)? {
            let Some(c) = Claimed::parse(&name) else {
                self.quarantine(&self.claimed, &name, "not a claimed-job name");
                continue;
            };
            let orphan = self.options.reclaim_dead_owners
                && judged.liveness(c.holder, &self.me) == Liveness::Dead;
            if c.expiry_us > now && !orphan {
                next = next.min(c.expiry_us);
                continue;
            }
            let back = Ready {
                due_us: now,
                id: c.id,
                attempt: c.attempt.saturating_add(1),
            };
            match fs::rename(self.claimed.join(&name), self.ready.join(back.to_string())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BrokerError::io("reclaim", e)),
            }
        }
        self.next_reclaim_us = next;
        Ok(())
    }

    /// Moves delayed jobs that are due into `ready/`.
    fn promote(&mut self, now: u64) -> Result<(), BrokerError> {
        let mut next = now.saturating_add(duration_us(DELAYED_SCAN_MAX));
        for name in list(&self.delayed)? {
            let Some(r) = Ready::parse(&name) else {
                self.quarantine(&self.delayed, &name, "not a delayed-job name");
                continue;
            };
            if r.due_us > now {
                next = next.min(r.due_us);
                continue;
            }
            match fs::rename(self.delayed.join(&name), self.ready.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BrokerError::io("promote a delayed job", e)),
            }
        }
        self.next_promote_us = next;
        Ok(())
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

    fn waiter(&mut self) -> &Waiter {
        let ready = &self.ready;
        self.waiter.get_or_insert_with(|| Waiter::new(ready))
    }

    // ----- writing -----------------------------------------------------

    /// Writes `parts` to a new file `tmp/{name}.{pid}.{host}` (this
    /// process: see [`sweep_tmp`](Queue::sweep_tmp)), not synced; the file
    /// is removed again on failure.
    fn create_tmp(&self, name: &str, parts: &[&[u8]]) -> Result<(PathBuf, File), BrokerError> {
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
    fn sync_tmp(&self, path: &Path, f: &File) -> Result<(), BrokerError> {
        if self.options.durability == Durability::Fsync {
            f.sync_data()
                .map_err(|e| BrokerError::io(format_args!("fsync {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Writes `parts` to a new temp file, synced if so configured.
    fn write_tmp(&self, name: &str, parts: &[&[u8]]) -> Result<PathBuf, BrokerError> {
        let (path, f) = self.create_tmp(name, parts)?;
        if let Err(e) = self.sync_tmp(&path, &f) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Writes one job's temp file (not synced).
    fn create_job(&self, id: JobId, payload: &[u8]) -> Result<(PathBuf, File), BrokerError> {
        if payload.len() <= ONE_WRITE {
            self.create_tmp(&id.to_string(), &[&record::encode(payload)])
        } else {
            self.create_tmp(&id.to_string(), &[&record::header(payload), payload])
        }
    }

    /// Publishes up to [`BATCH_FILES`] jobs into `dir`: writes every file,
    /// syncs each, then renames each into place (the caller syncs `dir`).
    /// On failure nothing of this chunk after the failure point is left.
    fn publish_chunk(
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
    fn sync_dir(&self, dir: &Path) -> Result<(), BrokerError> {
        if self.options.durability == Durability::Fsync {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| BrokerError::io(format_args!("fsync {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Renames the claimed file of `d` to `to`; a missing file means the
    /// lease was lost.
    fn settle(&self, d: Delivery, to: &Path, what: &str) -> Result<(), SettleError> {
        let from = match claimed_name(&d) {
            Ok(c) => self.claimed.join(c.to_string()),
            Err(e) => return Err(SettleError::new(d, e)),
        };
        match fs::rename(from, to) {
            Ok(()) => Ok(()),
            Err(e) => Err(SettleError::new(d, lost_or(what, e))),
        }
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
    /// [`Durability::Fsync`]), renames them into place, then `fsync`s the
    /// directory once for the whole batch instead of once per job; files
    /// are handled in chunks of 256 so a large batch stays within the fd
    /// limit. On an error, the jobs of the chunks before it are published.
    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
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

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + timeout;
        if !timeout.is_zero() {
            // Watch before looking, so nothing that arrives after the look
            // is missed.
            self.waiter();
        }
        loop {
            if let Some(w) = &self.waiter {
                w.clear();
            }
            let got = self.claim_some(max)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            // Sleep until something arrives, housekeeping is due, or time is up.
            let now = self.now_us();
            let next = self.next_reclaim_us.min(self.next_promote_us);
            let until_next = Duration::from_micros(next.saturating_sub(now));
            // The cache is exhausted: list again after waking.
            self.cursor = self.cache.len();
            self.waiter().wait(left.min(until_next));
        }
    }

    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let path = match claimed_name(&delivery) {
            Ok(c) => self.claimed.join(c.to_string()),
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        fs::remove_file(path).map_err(|e| SettleError::new(delivery, lost_or("ack", e)))
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
        self.refresh_me();
        let now = self.now_us();
        let mut missed: Vec<JobId> = ids
            .iter()
            .filter_map(|i| JobId::parse(i.as_str()))
            .collect();
        let mut out = Vec::new();
        let mut judged = Judged::default();
        for name in list(&self.claimed)? {
            let Some(c) = Claimed::parse(&name) else {
                continue; // quarantined by the next reclaim
            };
            let recorded = c.holder.host != 0;
            if c.holder.pid != holder_pid
                || (recorded && c.holder.host != self.me.host)
                || (!recorded && !missed.contains(&c.id))
                || judged.liveness(c.holder, &self.me) == Liveness::Alive
            {
                continue;
            }
            let taken = Claimed {
                attempt: c.attempt.saturating_add(1),
                expiry_us: now.saturating_add(self.lease_us()),
                holder: self.me,
                ..c
            };
            match fs::rename(
                self.claimed.join(&name),
                self.claimed.join(taken.to_string()),
            ) {
                Ok(()) => {}
                // Given back meanwhile: looked for in ready/ below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missed.push(c.id);
                    continue;
                }
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(BrokerError::io("take over a claim", e)),
            }
            missed.retain(|id| *id != c.id);
            match self.deliver(&taken) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => {}
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        if !missed.is_empty() {
            for name in list(&self.ready)? {
                let Some(r) = Ready::parse(&name).filter(|r| missed.contains(&r.id)) else {
                    continue;
                };
                match self.claim(&name, r, now) {
                    Ok(Some(d)) => out.push(d),
                    Ok(None) => {}
                    Err(_) if !out.is_empty() => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        let c = match claimed_name(&delivery) {
            Ok(c) => c,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        let delay_us = duration_us(delay);
        let r = Ready {
            due_us: self.now_us().saturating_add(delay_us),
            id: c.id,
            attempt: c.attempt.saturating_add(1),
        };
        let dir = if delay_us == 0 {
            &self.ready
        } else {
            &self.delayed
        };
        self.settle(delivery, &dir.join(r.to_string()), "retry")?;
        if delay_us > 0 {
            self.next_promote_us = self.next_promote_us.min(r.due_us);
        }
        Ok(())
    }

    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let c = match claimed_name(&delivery) {
            Ok(c) => c,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        // Due at its publish time: back at the front of the queue.
        let r = Ready {
            due_us: c.id.published_us.min(self.now_us()),
            id: c.id,
            attempt: c.attempt,
        };
        self.settle(delivery, &self.ready.join(r.to_string()), "release")?;
        // List again on the next fetch, so the released job goes first.
        self.cursor = self.cache.len();
        Ok(())
    }

    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        let c = match claimed_name(&delivery) {
            Ok(c) => c,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        let reason_name = Dead::Reason { id: c.id }.to_string();
        let reason_path = self.dead.join(&reason_name);
        let written = self
            .write_tmp(&reason_name, &[reason.as_bytes()])
            .and_then(|tmp| {
                fs::rename(&tmp, &reason_path).map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    BrokerError::io("store the dead-letter reason", e)
                })
            });
        if let Err(e) = written {
            return Err(SettleError::new(delivery, e));
        }
        let to = self.dead.join(
            Dead::Job {
                id: c.id,
                attempt: c.attempt,
            }
            .to_string(),
        );
        if let Err(e) = self.settle(delivery, &to, "dead-letter") {
            let _ = fs::remove_file(&reason_path);
            return Err(e);
        }
        // The job is dead-lettered now; a failed fsync (EIO) would only put
        // its durability in doubt, and the delivery is gone: best effort.
        let _ = self.sync_dir(&self.dead);
        Ok(())
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        let c = claimed_name(delivery)?;
        self.refresh_me();
        let renewed = Claimed {
            expiry_us: self.now_us().saturating_add(self.lease_us()),
            holder: self.me,
            ..c
        };
        let receipt = renewed.to_string();
        fs::rename(
            self.claimed.join(c.to_string()),
            self.claimed.join(&receipt),
        )
        .map_err(|e| lost_or("touch", e))?;
        delivery.set_receipt(receipt);
        Ok(())
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut jobs: Vec<(JobId, u32, String)> = list(&self.dead)?
            .into_iter()
            .filter_map(|n| match Dead::parse(&n) {
                Some(Dead::Job { id, attempt }) => Some((id, attempt, n)),
                _ => None,
            })
            .collect();
        jobs.sort_unstable();
        let mut out = Vec::new();
        for (id, attempt, name) in jobs {
            if out.len() >= limit {
                break;
            }
            let bytes = match fs::read(self.dead.join(&name)) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // re-driven meanwhile
                Err(e) => return Err(BrokerError::io("read a dead letter", e)),
            };
            let payload = match record::decode(bytes) {
                Ok(p) => p,
                Err(why) => {
                    self.quarantine(&self.dead, &name, &why.to_string());
                    continue;
                }
            };
            let reason = fs::read(self.dead.join(Dead::Reason { id }.to_string()))
                .map(|r| String::from_utf8_lossy(&r).into_owned())
                .unwrap_or_else(|_| String::from("(no reason recorded)"));
            out.push(
                DeadLetter::new(DeliveryId::new(id.to_string()), payload, reason)
                    .with_attempt(attempt),
            );
        }
        Ok(out)
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let not_found = || BrokerError::new(ErrorKind::NotFound, format!("no dead letter {id}"));
        let job = JobId::parse(id.as_str()).ok_or_else(not_found)?;
        let found = list(&self.dead)?
            .into_iter()
            .find_map(|n| match Dead::parse(&n) {
                Some(Dead::Job { id, .. }) if id == job => Some(n),
                _ => None,
            });
        let name = found.ok_or_else(not_found)?;
        let r = Ready {
            due_us: self.now_us(),
            id: job,
            attempt: 1,
        };
        match fs::rename(self.dead.join(&name), self.ready.join(r.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(BrokerError::io("redrive", e)),
        }
        let _ = fs::remove_file(self.dead.join(Dead::Reason { id: job }.to_string()));
        Ok(())
    }
}

/// The claim a delivery's receipt names.
fn claimed_name(d: &Delivery) -> Result<Claimed, BrokerError> {
    Claimed::parse(d.receipt()).ok_or_else(|| {
        BrokerError::new(
            ErrorKind::Invalid,
            format!("receipt {:?} is not a spool claim", d.receipt()),
        )
    })
}

/// A failed rename or unlink of a claimed file: missing means the lease
/// was lost.
fn lost_or(what: &str, e: io::Error) -> BrokerError {
    if e.kind() == io::ErrorKind::NotFound {
        BrokerError::new(
            ErrorKind::LeaseLost,
            format!("{what}: the claim expired and the job was handed out again"),
        )
    } else {
        BrokerError::io(what, e)
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
