//! [`Options`]: the lease, the [`Durability`] of published jobs, reclaiming
//! the claims of dead holders, and the [`Clock`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How hard the spool works to keep jobs across an operating-system crash
/// or power loss. Process crashes (SIGKILL, OOM, panics) never lose a job
/// in either mode: the data is in the kernel's page cache as soon as a
/// write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `fsync` the job file before it becomes visible and the directory
    /// after, so a job whose [`publish`](prefork_broker::Broker::publish) returned, or a
    /// dead letter whose [`dead_letter`](prefork_broker::Broker::dead_letter) returned,
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

/// Settings of a [`Spool`](crate::Spool); every queue opened from it shares them.
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
/// assert_eq!(o.lease_time(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) lease: Duration,
    pub(crate) durability: Durability,
    pub(crate) reclaim_dead_owners: bool,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Default for Options {
    /// A lease of 60 s, [`Durability::Fsync`](crate::Durability::Fsync), dead owners reclaimed, the
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
    /// [`touch`](prefork_broker::Broker::touch) before any process may hand it out again
    /// (at least 1 ms).
    pub fn lease(mut self, lease: Duration) -> Options {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// The lease set by [`lease`](Options::lease). (Named as
    /// `prefork_redis::Options::lease_time`: `lease` is the setter.)
    pub fn lease_time(&self) -> Duration {
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
