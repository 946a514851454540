//! What the master tells its user: its [`Phase`], the description of a
//! worker about to be forked ([`WorkerInfo`]), of one that exited
//! ([`WorkerExit`]), and the final [`Report`] of [`Master::run`](crate::Master::run).

use std::fmt;
use std::process::{ExitCode, Termination};
use std::time::Duration;

pub use prefork_proc::ExitStatus;

/// The master's phase. Every change is logged (at INFO) and passed to the
/// [`on_phase`](crate::Builder::on_phase) hook.
///
/// ```text
///  Starting ──all workers ready──▶ Running ◀──done──▶ Reloading (HUP, recycling every worker)
///                                   │   ▲
///                              WINCH│   │TTIN, HUP
///                                   ▼   │
///                                   Paused
///  any ──QUIT/TERM/INT, or crash loop──▶ Stopping ──last worker reaped──▶ Stopped
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Forking the first workers; not all of them are ready yet.
    Starting,
    /// Every worker slot has had a ready worker; supervising.
    Running,
    /// Replacing every worker, one at a time (after HUP).
    Reloading,
    /// No workers wanted (after WINCH); the master waits for TTIN or HUP.
    Paused,
    /// Shutting down; no worker is started any more.
    Stopping(Shutdown),
    /// Every worker is reaped; [`Master::run`](crate::Master::run) returns.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Starting => f.write_str("starting"),
            Phase::Running => f.write_str("running"),
            Phase::Reloading => f.write_str("reloading"),
            Phase::Paused => f.write_str("paused"),
            Phase::Stopping(kind) => write!(f, "stopping ({kind})"),
            Phase::Stopped => f.write_str("stopped"),
        }
    }
}

/// How the master shuts down, and why.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// QUIT (or TERM with [`term_is_graceful`](crate::Builder::term_is_graceful)):
    /// every worker finishes its iteration, then exits; SIGKILL after the
    /// graceful timeout.
    Graceful,
    /// TERM or INT: SIGTERM to every worker at once; SIGKILL after the kill
    /// grace.
    Quick,
    /// Every worker slot kept dying right after start (see
    /// [`crash_limit`](crate::Builder::crash_limit)): the master gave up.
    CrashLoop,
}

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shutdown::Graceful => "graceful",
            Shutdown::Quick => "quick",
            Shutdown::CrashLoop => "crash loop",
        })
    }
}

/// What [`Master::run`](crate::Master::run) returns once the master has
/// stopped. It is a [`Termination`], so `main` can return it.
///
/// # Examples
///
/// ```no_run
/// # struct Noop;
/// # impl prefork_master::Worker for Noop {
/// #     fn execute(&mut self, _: &mut prefork_master::Context) -> Result<(), prefork_master::BoxError> { Ok(()) }
/// # }
/// fn main() -> Result<prefork_master::Report, Box<dyn std::error::Error>> {
///     // Exit status 0 after QUIT/TERM/INT, 1 when the workers kept crashing.
///     Ok(prefork_master::Master::builder().build()?.run(Noop)?)
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// How the master stopped.
    pub shutdown: Shutdown,
    /// The signal that asked for the stop, if one did.
    pub signal: Option<i32>,
    /// How many workers were forked in all.
    pub spawned: u64,
    /// How many workers died without being asked to (crashes, hangs,
    /// protocol errors).
    pub failures: u64,
}

impl Report {
    /// Whether the master stopped because it was asked to (exit status 0),
    /// rather than because it gave up (exit status 1).
    pub fn success(&self) -> bool {
        !matches!(self.shutdown, Shutdown::CrashLoop)
    }

    /// The process exit code for this report: success, or 1.
    pub fn exit_code(&self) -> ExitCode {
        if self.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

impl Termination for Report {
    fn report(self) -> ExitCode {
        self.exit_code()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} shutdown after {} workers forked ({} failed)",
            self.shutdown, self.spawned, self.failures
        )
    }
}

/// The part a process plays in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A worker, in its slot `0..workers` (a replacement gets the slot of
    /// the worker it replaces).
    Worker(usize),
    /// Dispatch mode's feeder: the one process holding a broker connection
    /// (see [`Master::run_dispatch`](crate::Master::run_dispatch)).
    Feeder,
}

impl Role {
    /// The worker's slot; `None` for the feeder.
    pub fn worker_index(self) -> Option<usize> {
        match self {
            Role::Worker(index) => Some(index),
            Role::Feeder => None,
        }
    }
}

/// A worker's slot number, or `feeder`: what logs and titles show.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Worker(index) => write!(f, "{index}"),
            Role::Feeder => f.write_str("feeder"),
        }
    }
}

/// A worker (or the feeder) about to be forked, as the
/// [`before_fork`](crate::Builder::before_fork) hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its part: a worker's slot (a replacement gets the slot of the
    /// worker it replaces), or the feeder.
    pub role: Role,
    /// A number unique to this worker for the life of the master.
    pub serial: u64,
}

/// Why a worker exited, as far as the master knows.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The master asked it to stop (shutdown, scaling down, recycling,
    /// HUP) and it did.
    Requested,
    /// It missed its heartbeat timeout and was killed.
    Hung,
    /// It did not finish within the graceful timeout (or the kill grace)
    /// after being asked to stop, and was killed.
    TooSlowToStop,
    /// It broke the channel protocol (garbage, or closed its socket) and
    /// was killed.
    Protocol,
    /// It exited, crashed or was killed by someone else, unasked.
    Unexpected,
    /// A job it ran passed its hard time limit
    /// ([`Context::set_deadline`](crate::Context::set_deadline)), and it
    /// was killed.
    TimeLimit,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Requested => "asked to stop",
            Cause::Hung => "killed: heartbeat timeout",
            Cause::TooSlowToStop => "killed: too slow to stop",
            Cause::Protocol => "killed: channel protocol error",
            Cause::Unexpected => "died unexpectedly",
            Cause::TimeLimit => "killed: job hard time limit",
        })
    }
}

/// A worker that was reaped, as the [`after_worker_exit`](crate::Builder::after_worker_exit)
/// hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerExit {
    /// Its part: a worker's slot, or the feeder.
    pub role: Role,
    /// The worker's serial number (see [`WorkerInfo::serial`]).
    pub serial: u64,
    /// Its process id.
    pub pid: i32,
    /// Its decoded exit status.
    pub status: ExitStatus,
    /// Why it exited, as far as the master knows.
    pub cause: Cause,
    /// How long it lived.
    pub uptime: Duration,
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pid {}) {} after {:.1?}: {}",
            match self.role {
                Role::Worker(i) => format!("worker[{i}]"),
                Role::Feeder => "feeder".to_owned(),
            },
            self.pid,
            self.status,
            self.uptime,
            self.cause
        )
    }
}
