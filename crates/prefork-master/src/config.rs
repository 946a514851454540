//! The [`Builder`]: every setting of the master, its default, and the
//! checks that refuse impossible combinations with a [`ConfigError`].

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::master::Master;
use crate::report::{Phase, WorkerExit, WorkerInfo};
use crate::worker::Context;

/// The most workers one master accepts.
pub const MAX_WORKERS: usize = 4096;

/// The shortest accepted heartbeat timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);

/// The smallest accepted memory limit (1 MiB).
pub const MIN_MEMORY: u64 = 1 << 20;

/// A setting that cannot work, found by [`Builder::build`].
///
/// It names the setting (as the builder method is named) and says why.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let err = prefork_master::Master::builder()
///     .timeout(Duration::ZERO)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), "timeout");
/// assert!(err.to_string().contains("timeout"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the refused setting (the name of its builder method).
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting `{}`: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Which file descriptors a freshly forked worker closes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum CloseFds {
    /// Only the master's own descriptors (its poll, its signal pipe, the
    /// other workers' channels). Whatever the program opened before
    /// [`Master::run`] stays open in every worker.
    #[default]
    MasterOnly,
    /// Every descriptor except stdio, the worker's channel and these.
    AllExcept(Vec<RawFd>),
}

/// The validated settings, as the master and the worker runtime read them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) workers: usize,
    pub(crate) timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) graceful_timeout: Duration,
    pub(crate) kill_grace: Duration,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) term_is_graceful: bool,
    pub(crate) max_memory: Option<u64>,
    pub(crate) memory_check_interval: Duration,
    pub(crate) max_iterations: Option<u64>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) recycle_jitter: f64,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) healthy_after: Duration,
    pub(crate) crash_limit: u32,
    pub(crate) close_fds: CloseFds,
    /// Dispatch mode: supervise a feeder process too.
    pub(crate) feeder: bool,
    /// Dispatch mode: jobs asked for beyond the idle workers.
    /// `None`: adaptive (see `Builder::dispatch_lookahead`).
    pub(crate) dispatch_lookahead: Option<usize>,
    /// The control socket's path, if the master listens on one.
    pub(crate) control_socket: Option<PathBuf>,
    /// A group (gid) whose members may use the control socket.
    pub(crate) control_group: Option<u32>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            name: "prefork".to_owned(),
            workers: 1,
            timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::ZERO, // timeout / 4, filled in by build()
            graceful_timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(2),
            stop_timeout: None,
            term_is_graceful: false,
            max_memory: None,
            memory_check_interval: Duration::from_secs(10),
            max_iterations: None,
            max_age: None,
            recycle_jitter: 0.1,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(10),
            crash_limit: 8,
            close_fds: CloseFds::MasterOnly,
            feeder: false,
            dispatch_lookahead: None,
            control_socket: None,
            control_group: None,
        }
    }
}

/// A hook run in the master with a worker's description.
pub(crate) type InfoHook = Box<dyn FnMut(&WorkerInfo)>;
/// A hook run in a worker with its context.
pub(crate) type ContextHook = Box<dyn FnMut(&mut Context)>;
/// A hook run in the master after a worker was reaped.
pub(crate) type ExitHook = Box<dyn FnMut(&WorkerExit)>;
/// A hook run in the master without arguments.
pub(crate) type PlainHook = Box<dyn FnMut()>;
/// A hook run in the master on every phase change.
pub(crate) type PhaseHook = Box<dyn FnMut(Phase)>;

/// The user's hooks. Master hooks that panic are caught and logged; worker
/// hooks that panic make that worker exit with a failure.
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) before_fork: Option<InfoHook>,
    pub(crate) after_fork: Option<ContextHook>,
    pub(crate) after_worker_ready: Option<ContextHook>,
    pub(crate) after_worker_exit: Option<ExitHook>,
    pub(crate) reopen_logs: Option<PlainHook>,
    pub(crate) on_phase: Option<PhaseHook>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("before_fork", &self.before_fork.is_some())
            .field("after_fork", &self.after_fork.is_some())
            .field("after_worker_ready", &self.after_worker_ready.is_some())
            .field("after_worker_exit", &self.after_worker_exit.is_some())
            .field("reopen_logs", &self.reopen_logs.is_some())
            .field("on_phase", &self.on_phase.is_some())
            .finish()
    }
}

/// Builds a [`Master`]: every setting has a default, and [`build`] refuses
/// the combinations that cannot work.
///
/// See `docs/configuration.md` for the full table.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let master = prefork_master::Master::builder()
///     .name("thumbnailer")
///     .workers(4)
///     .timeout(Duration::from_secs(30))
///     .graceful_timeout(Duration::from_secs(20))
///     .max_memory(512 << 20)
///     .max_iterations(10_000)
///     .after_worker_exit(|exit| eprintln!("{exit}"))
///     .build()
///     .expect("valid settings");
/// # drop(master);
/// ```
///
/// [`build`]: Builder::build
#[derive(Debug, Default)]
pub struct Builder {
    settings: Settings,
    heartbeat_interval: Option<Duration>,
    hooks: Hooks,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder::default()
    }

    /// The name used in process titles (`NAME master`, `NAME worker[3]`)
    /// and logs. Default `prefork`.
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.settings.name = name.into();
        self
    }

    /// How many workers to run (1 to [`MAX_WORKERS`]). Default 1. TTIN and
    /// TTOU change the number at run time.
    pub fn workers(mut self, n: usize) -> Builder {
        self.settings.workers = n;
        self
    }

    /// Dispatch mode ([`Master::run_dispatch`]): a fixed number of jobs the
    /// master asks the feeder for beyond one per idle worker (0 to
    /// [`MAX_WORKERS`]). Default: adaptive, about 10 ms of work across the
    /// pool from the jobs' measured run time (hand-out to report), from 0
    /// for slow jobs to 8 per worker for quick ones, starting at one per
    /// worker.
    ///
    /// The master asks for up to `idle workers + lookahead - queued - asked`
    /// jobs (the lookahead part in chunks of half of it, so quick jobs come
    /// in a few big fetches), so when a worker finishes, its next job is
    /// already waiting in the master: it is handed out before the worker's
    /// report goes to the feeder, and the feeder's round trip to the broker
    /// is off the critical path. Jobs waiting in the master are not any
    /// worker's: the first worker to be free takes the next, so none waits
    /// behind a slow job while a sibling is idle. They are unstarted: on a
    /// graceful stop they go back to the broker (`Release`), and if the
    /// feeder dies the next feeder takes its claims over and hands them out
    /// again. A SIGKILLed pool leaves their claims to expire; as unstarted
    /// jobs they never run twice. The cost is elsewhere: a worker starts its
    /// next job while its last report is on its way, so the feeder may be
    /// up to `lookahead` reports behind, and a SIGKILL of the whole pool
    /// (master, feeder and workers at once) can run up to `workers +
    /// lookahead` finished jobs again instead of `workers` (a feeder killed
    /// alone runs none again: the next one settles those reports). 0 takes
    /// a job from the broker only when a worker can start it at once: least
    /// in flight, one broker round trip (and two more hops) on every job's
    /// critical path.
    pub fn dispatch_lookahead(mut self, n: usize) -> Builder {
        self.settings.dispatch_lookahead = Some(n);
        self
    }

    /// The heartbeat timeout: a worker silent for longer (stuck in one
    /// iteration, deadlocked, stopped) is killed with SIGKILL and replaced.
    /// An iteration that may run longer must call [`Context::alive`].
    /// At least [`MIN_TIMEOUT`]. Default 60 s.
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.settings.timeout = timeout;
        self
    }

    /// How often an idle worker reports that it is alive. At most half of
    /// the timeout. Default: a quarter of the timeout. A single iteration
    /// may last `timeout - heartbeat_interval` without calling
    /// [`Context::alive`].
    pub fn heartbeat_interval(mut self, every: Duration) -> Builder {
        self.heartbeat_interval = Some(every);
        self
    }

    /// How long a worker asked to stop gracefully (QUIT, WINCH, TTOU, HUP,
    /// recycling) may take to finish its iteration before it is killed with
    /// SIGKILL. Default 30 s.
    pub fn graceful_timeout(mut self, timeout: Duration) -> Builder {
        self.settings.graceful_timeout = timeout;
        self
    }

    /// In a quick shutdown (TERM, INT), how long a worker has between
    /// SIGTERM and SIGKILL. A worker with the default SIGTERM disposition
    /// dies at once. Default 2 s.
    pub fn kill_grace(mut self, grace: Duration) -> Builder {
        self.settings.kill_grace = grace;
        self
    }

    /// The time your service manager allows for a stop (systemd's
    /// `TimeoutStopSec=`, Kubernetes' `terminationGracePeriodSeconds`).
    /// When set, `graceful_timeout + kill_grace` must fit in it, or the
    /// master would be killed before its workers are. Default: not set.
    pub fn stop_timeout(mut self, timeout: Duration) -> Builder {
        self.settings.stop_timeout = Some(timeout);
        self
    }

    /// Make TERM a graceful shutdown, like QUIT (INT stays quick). This is
    /// what systemd (`KillSignal=` defaults to SIGTERM) and Kubernetes (which
    /// sends SIGTERM) users want. Default false, as in Unicorn.
    pub fn term_is_graceful(mut self, graceful: bool) -> Builder {
        self.settings.term_is_graceful = graceful;
        self
    }

    /// Recycle a worker whose proportional set size (PSS: its private pages
    /// plus its share of the pages it shares, read from
    /// `/proc/self/smaps_rollup`) exceeds this many bytes. At least
    /// [`MIN_MEMORY`]. Default: no limit.
    pub fn max_memory(mut self, bytes: u64) -> Builder {
        self.settings.max_memory = Some(bytes);
        self
    }

    /// How often each worker measures its memory, between iterations, when
    /// [`max_memory`](Builder::max_memory) is set. Default 10 s.
    pub fn memory_check_interval(mut self, every: Duration) -> Builder {
        self.settings.memory_check_interval = every;
        self
    }

    /// Recycle a worker after about this many iterations (lowered by up to
    /// [`recycle_jitter`](Builder::recycle_jitter) so workers do not all go
    /// at once). At least 1. Default: no limit.
    pub fn max_iterations(mut self, n: u64) -> Builder {
        self.settings.max_iterations = Some(n);
        self
    }

    /// Recycle a worker after about this long (lowered by up to
    /// [`recycle_jitter`](Builder::recycle_jitter)). Default: no limit.
    pub fn max_age(mut self, age: Duration) -> Builder {
        self.settings.max_age = Some(age);
        self
    }

    /// The largest fraction (0 to below 1) by which iteration and age
    /// limits are lowered at random for each worker. Default 0.1.
    pub fn recycle_jitter(mut self, fraction: f64) -> Builder {
        self.settings.recycle_jitter = fraction;
        self
    }

    /// The first delay before restarting a worker that died early; it
    /// doubles with each consecutive early death, up to
    /// [`backoff_max`](Builder::backoff_max), with jitter. Default 100 ms.
    pub fn backoff_initial(mut self, delay: Duration) -> Builder {
        self.settings.backoff_initial = delay;
        self
    }

    /// The longest restart delay. Default 30 s.
    pub fn backoff_max(mut self, delay: Duration) -> Builder {
        self.settings.backoff_max = delay;
        self
    }

    /// A worker that dies sooner than this after it was forked (or before
    /// it was ready) died early: its slot backs off. One that lives this
    /// long resets its slot's backoff. Default 10 s.
    pub fn healthy_after(mut self, uptime: Duration) -> Builder {
        self.settings.healthy_after = uptime;
        self
    }

    /// When every worker slot has died early this many times in a row, the
    /// master gives up: it stops and [`Master::run`] reports a failure, so
    /// that systemd sees it. At least 1. Default 8.
    pub fn crash_limit(mut self, deaths: u32) -> Builder {
        self.settings.crash_limit = deaths;
        self
    }

    /// In each worker, close every file descriptor except stdio (0, 1, 2),
    /// the worker's channel to the master and `keep` (listeners, log
    /// files). By default a worker closes only the master's own descriptors
    /// and keeps everything the program opened before [`Master::run`].
    pub fn close_other_fds(mut self, keep: impl IntoIterator<Item = RawFd>) -> Builder {
        self.settings.close_fds = CloseFds::AllExcept(keep.into_iter().collect());
        self
    }

    /// Listen for operators on a UNIX stream socket at `path`: `status`,
    /// `scale N`, `stop [--graceful]` and `reload`, one line of JSON each
    /// way (the [`control`](crate::control) module has the protocol and a
    /// client). Off by default. The file is created with mode 0600 (0660
    /// with a [`control_group`](Builder::control_group)); a socket file
    /// left by a dead master is replaced, and [`Master::run`] fails while
    /// a live master listens at `path`. Only the socket's owner, root and
    /// the control group's members may act; the file is removed when the
    /// master stops. The parent directory must exist.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Builder {
        self.settings.control_socket = Some(path.into());
        self
    }

    /// Lets the members of group `gid` (its primary or supplementary
    /// members) use the [`control_socket`](Builder::control_socket) too:
    /// the socket file gets this group and mode 0660. Default: none (the
    /// owner and root only).
    pub fn control_group(mut self, gid: u32) -> Builder {
        self.settings.control_group = Some(gid);
        self
    }

    /// Runs in the master just before each fork.
    pub fn before_fork(mut self, hook: impl FnMut(&WorkerInfo) + 'static) -> Builder {
        self.hooks.before_fork = Some(Box::new(hook));
        self
    }

    /// Runs in each new worker, after the fork and the worker's set-up,
    /// before [`Worker::start`](crate::Worker::start).
    pub fn after_fork(mut self, hook: impl FnMut(&mut Context) + 'static) -> Builder {
        self.hooks.after_fork = Some(Box::new(hook));
        self
    }

    /// Runs in each worker once [`Worker::start`](crate::Worker::start)
    /// succeeded and the master was told the worker is ready.
    pub fn after_worker_ready(mut self, hook: impl FnMut(&mut Context) + 'static) -> Builder {
        self.hooks.after_worker_ready = Some(Box::new(hook));
        self
    }

    /// Runs in the master after a worker was reaped, with its decoded exit
    /// status and the reason the master knows for it.
    pub fn after_worker_exit(mut self, hook: impl FnMut(&WorkerExit) + 'static) -> Builder {
        self.hooks.after_worker_exit = Some(Box::new(hook));
        self
    }

    /// Runs in the master on USR1, before the workers are asked to reopen
    /// their logs: reopen the master's log files here.
    pub fn reopen_logs(mut self, hook: impl FnMut() + 'static) -> Builder {
        self.hooks.reopen_logs = Some(Box::new(hook));
        self
    }

    /// Runs in the master on every phase change (after it was logged),
    /// e.g. to notify systemd.
    pub fn on_phase(mut self, hook: impl FnMut(Phase) + 'static) -> Builder {
        self.hooks.on_phase = Some(Box::new(hook));
        self
    }

    /// Checks the settings and builds the master.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that cannot work, e.g. a
    /// zero timeout, a heartbeat interval longer than half the timeout, or
    /// a graceful timeout that does not fit in the stop timeout.
    pub fn build(self) -> Result<Master, ConfigError> {
        let mut s = self.settings;
        s.heartbeat_interval = self.heartbeat_interval.unwrap_or(s.timeout / 4);
        validate(&s)?;
        Ok(Master::new(s, self.hooks))
    }
}

fn ms(d: Duration) -> String {
    format!("{:?}", d)
}

fn err(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(setting, reason)
}

fn validate(s: &Settings) -> Result<(), ConfigError> {
    if s.name.is_empty() || s.name.contains(['\0', '\n']) {
        return Err(err(
            "name",
            "must be non-empty, without NUL or newline characters",
        ));
    }
    if s.workers == 0 || s.workers > MAX_WORKERS {
        return Err(err(
            "workers",
            format!("must be between 1 and {MAX_WORKERS} (got {})", s.workers),
        ));
    }
    if s.timeout < MIN_TIMEOUT {
        return Err(err(
            "timeout",
            format!(
                "must be at least {} (got {}): a worker could never prove it is alive",
                ms(MIN_TIMEOUT),
                ms(s.timeout)
            ),
        ));
    }
    if s.heartbeat_interval.is_zero() || s.heartbeat_interval > s.timeout / 2 {
        return Err(err(
            "heartbeat_interval",
            format!(
                "must be non-zero and at most half of the timeout ({}) (got {}), or an idle worker would be killed as hung",
                ms(s.timeout / 2),
                ms(s.heartbeat_interval)
            ),
        ));
    }
    if s.graceful_timeout.is_zero() {
        return Err(err(
            "graceful_timeout",
            "must be non-zero: a worker needs time to finish its iteration",
        ));
    }
    if s.kill_grace.is_zero() {
        return Err(err(
            "kill_grace",
            "must be non-zero: a worker needs time to handle SIGTERM",
        ));
    }
    if let Some(stop) = s.stop_timeout {
        let needed = s.graceful_timeout + s.kill_grace;
        if needed >= stop {
            return Err(err(
                "graceful_timeout",
                format!(
                    "graceful_timeout ({}) + kill_grace ({}) must be shorter than stop_timeout ({}), or the service manager kills the master before its workers",
                    ms(s.graceful_timeout),
                    ms(s.kill_grace),
                    ms(stop)
                ),
            ));
        }
    }
    if let Some(bytes) = s.max_memory
        && bytes < MIN_MEMORY
    {
        return Err(err(
            "max_memory",
            format!(
                "must be at least {MIN_MEMORY} bytes (got {bytes}): every worker would be recycled at once"
            ),
        ));
    }
    if s.memory_check_interval.is_zero() {
        return Err(err("memory_check_interval", "must be non-zero"));
    }
    if s.max_iterations == Some(0) {
        return Err(err("max_iterations", "must be at least 1"));
    }
    if s.max_age == Some(Duration::ZERO) {
        return Err(err("max_age", "must be non-zero"));
    }
    if !(0.0..1.0).contains(&s.recycle_jitter) {
        return Err(err(
            "recycle_jitter",
            format!("must be a fraction in [0, 1) (got {})", s.recycle_jitter),
        ));
    }
    if s.backoff_initial.is_zero() {
        return Err(err("backoff_initial", "must be non-zero"));
    }
    if s.backoff_max < s.backoff_initial {
        return Err(err(
            "backoff_max",
            format!(
                "must be at least backoff_initial ({}) (got {})",
                ms(s.backoff_initial),
                ms(s.backoff_max)
            ),
        ));
    }
    if s.healthy_after.is_zero() {
        return Err(err("healthy_after", "must be non-zero"));
    }
    if s.crash_limit == 0 {
        return Err(err("crash_limit", "must be at least 1"));
    }
    if let Some(lookahead) = s.dispatch_lookahead
        && lookahead > MAX_WORKERS
    {
        return Err(err(
            "dispatch_lookahead",
            format!("must be at most {MAX_WORKERS} (got {lookahead})"),
        ));
    }
    if let CloseFds::AllExcept(keep) = &s.close_fds
        && let Some(bad) = keep.iter().find(|fd| **fd < 0)
    {
        return Err(err(
            "close_other_fds",
            format!("{bad} is not a file descriptor"),
        ));
    }
    if let Some(path) = &s.control_socket {
        // sun_path holds 108 bytes, the terminating NUL included.
        let len = path.as_os_str().len();
        if len == 0 || len > 107 {
            return Err(err(
                "control_socket",
                format!(
                    "must be a path of 1 to 107 bytes, what a UNIX socket address holds (got {len})"
                ),
            ));
        }
    }
    if s.control_group.is_some() && s.control_socket.is_none() {
        return Err(err(
            "control_group",
            "is set without a control_socket: there is no socket to open to the group",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(b: Builder) -> ConfigError {
        b.build().map(|_| ()).unwrap_err()
    }

    #[test]
    fn defaults_are_valid() {
        let m = Builder::new().build().unwrap();
        assert_eq!(m.settings().workers, 1);
        assert_eq!(m.settings().heartbeat_interval, Duration::from_secs(15));
    }

    #[test]
    fn impossible_settings_are_refused_by_name() {
        let s = Duration::from_secs;
        let cases: Vec<(Builder, &str)> = vec![
            (Builder::new().workers(0), "workers"),
            (Builder::new().workers(MAX_WORKERS + 1), "workers"),
            (
                Builder::new().dispatch_lookahead(MAX_WORKERS + 1),
                "dispatch_lookahead",
            ),
            (Builder::new().timeout(Duration::ZERO), "timeout"),
            (
                Builder::new().timeout(s(10)).heartbeat_interval(s(6)),
                "heartbeat_interval",
            ),
            (
                Builder::new().heartbeat_interval(Duration::ZERO),
                "heartbeat_interval",
            ),
            (
                Builder::new().graceful_timeout(Duration::ZERO),
                "graceful_timeout",
            ),
            (Builder::new().kill_grace(Duration::ZERO), "kill_grace"),
            (
                Builder::new().graceful_timeout(s(30)).stop_timeout(s(30)),
                "graceful_timeout",
            ),
            (Builder::new().max_memory(1000), "max_memory"),
            (Builder::new().max_iterations(0), "max_iterations"),
            (Builder::new().max_age(Duration::ZERO), "max_age"),
            (Builder::new().recycle_jitter(1.0), "recycle_jitter"),
            (Builder::new().recycle_jitter(f64::NAN), "recycle_jitter"),
            (
                Builder::new().backoff_initial(Duration::ZERO),
                "backoff_initial",
            ),
            (
                Builder::new().backoff_initial(s(2)).backoff_max(s(1)),
                "backoff_max",
            ),
            (Builder::new().crash_limit(0), "crash_limit"),
            (Builder::new().name(""), "name"),
            (Builder::new().close_other_fds([-1]), "close_other_fds"),
            (
                Builder::new().memory_check_interval(Duration::ZERO),
                "memory_check_interval",
            ),
        ];
        for (builder, setting) in cases {
            let e = refused(builder);
            assert_eq!(e.setting(), setting, "{e}");
            assert!(e.to_string().contains(setting), "{e}");
            assert!(!e.reason().is_empty());
        }
    }

    #[test]
    fn settings_that_fit_are_accepted() {
        let s = Duration::from_secs;
        Builder::new()
            .workers(MAX_WORKERS)
            .timeout(MIN_TIMEOUT)
            .heartbeat_interval(MIN_TIMEOUT / 2)
            .graceful_timeout(s(25))
            .kill_grace(s(4))
            .stop_timeout(s(30))
            .max_memory(MIN_MEMORY)
            .max_age(s(3600))
            .recycle_jitter(0.0)
            .build()
            .unwrap();
    }
}
