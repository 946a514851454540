//! The [`Worker`] trait users implement, and the [`Context`] a worker gets:
//! its slot, the shutdown flag, and the heartbeat.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefork_heartbeat::{Channel, ChannelError, Control, Message, Progress, Stats};

/// The error type a [`Worker`] returns: any error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What each worker process runs.
///
/// The value is built once, in the master, before [`Master::run`] (so what
/// it holds is *preloaded*: shared copy-on-write by every worker). Each
/// worker process gets its own copy at fork time; the master never calls
/// these methods itself.
///
/// In each worker, the runtime calls [`start`](Worker::start) once, tells
/// the master the worker is ready, then calls [`execute`](Worker::execute)
/// in a loop. Between two calls it reads the master's requests (stop,
/// reopen logs), sends the heartbeat, and measures memory when a limit is
/// set. When asked to stop it calls [`stop`](Worker::stop) and the process
/// exits with status 0.
///
/// - An `Err` from `start` or `execute` is logged and the worker exits with
///   status 1 (after `stop`); the master replaces it.
/// - A panic in any method is caught and the worker exits with status 101.
/// - One call to `execute` must not last longer than the
///   [timeout](crate::Builder::timeout) minus the heartbeat interval
///   unless it calls [`Context::alive`]; the master kills workers that stay
///   silent.
/// - The worker process never drops its copy of the worker (nor anything
///   else the master owned): it exits without running destructors. Release
///   what needs releasing in `stop`.
///
/// Open connections, start threads and async runtimes in `start`, never
/// before [`Master::run`]: the master must stay single-threaded to fork
/// safely, and a connection opened before the fork would be shared by
/// every worker.
///
/// [`Master::run`]: crate::Master::run
///
/// # Examples
///
/// ```
/// use prefork_master::{BoxError, Context, Worker};
///
/// struct Squares {
///     table: Vec<u64>, // built before run(): shared by every worker
///     done: u64,
/// }
///
/// impl Worker for Squares {
///     fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
///         let i = (ctx.iterations() as usize) % self.table.len();
///         self.done += self.table[i];
///         Ok(())
///     }
/// }
/// ```
pub trait Worker {
    /// Called once in the fresh worker process, before it is reported
    /// ready: open connections, start runtimes here. It may take a while;
    /// call [`Context::alive`] if it may take longer than the timeout.
    ///
    /// # Errors
    ///
    /// An error makes the worker exit with status 1; a worker that keeps
    /// failing to start is restarted with backoff, and the master gives up
    /// when every worker does (see [`crash_limit`](crate::Builder::crash_limit)).
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        let _ = ctx;
        Ok(())
    }

    /// One iteration of the worker's loop (Raemon's `execute`). A worker
    /// that prefers its own loop loops here and checks
    /// [`Context::shutting_down`] between its steps.
    ///
    /// # Errors
    ///
    /// An error ends the worker (status 1); the master replaces it.
    fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError>;

    /// Called between iterations after the master got USR1: reopen log
    /// files here. The default does nothing.
    fn reopen_logs(&mut self, ctx: &mut Context) {
        let _ = ctx;
    }

    /// Called once before the worker exits after a stop request (or an
    /// error from `execute`): close connections, flush buffers.
    fn stop(&mut self, ctx: &mut Context) {
        let _ = ctx;
    }
}

/// A [`Worker`] made of a closure that runs one iteration. See [`from_fn`].
#[derive(Clone)]
pub struct FnWorker<F>(F);

impl<F> fmt::Debug for FnWorker<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnWorker")
    }
}

/// A worker whose iterations are calls to `f`.
///
/// # Examples
///
/// ```
/// let worker = prefork_master::from_fn(|ctx| {
///     println!("worker {} iteration {}", ctx.worker_index(), ctx.iterations());
///     std::thread::sleep(std::time::Duration::from_millis(100));
///     Ok(())
/// });
/// # drop(worker);
/// ```
pub fn from_fn<F>(f: F) -> FnWorker<F>
where
    F: FnMut(&mut Context) -> Result<(), BoxError>,
{
    FnWorker(f)
}

impl<F> Worker for FnWorker<F>
where
    F: FnMut(&mut Context) -> Result<(), BoxError>,
{
    fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        (self.0)(ctx)
    }
}

/// The worker's side of the supervision: its slot, whether it should stop,
/// and its heartbeat. One per worker process; passed to every [`Worker`]
/// method and worker hook.
pub struct Context {
    index: usize,
    serial: u64,
    name: String,
    channel: Channel,
    stopping: bool,
    master_gone: bool,
    reopen_pending: bool,
    iterations: u64,
    beat_every: Duration,
    last_beat: Instant,
    activity: Option<String>,
    iteration_started: SystemTime,
    memory_every: Option<Duration>,
    last_memory: Instant,
    iteration_limit: Option<u64>,
    limit_reported: bool,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("index", &self.index)
            .field("serial", &self.serial)
            .field("iterations", &self.iterations)
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

/// Settings the worker runtime needs, copied from the master's.
#[derive(Debug, Clone)]
pub(crate) struct ContextSettings {
    pub(crate) index: usize,
    pub(crate) serial: u64,
    pub(crate) name: String,
    pub(crate) beat_every: Duration,
    pub(crate) memory_every: Option<Duration>,
    pub(crate) iteration_limit: Option<u64>,
}

impl Context {
    pub(crate) fn new(channel: Channel, s: ContextSettings) -> Context {
        let now = Instant::now();
        Context {
            index: s.index,
            serial: s.serial,
            name: s.name,
            channel,
            stopping: false,
            master_gone: false,
            reopen_pending: false,
            iterations: 0,
            beat_every: s.beat_every,
            last_beat: now,
            activity: None,
            iteration_started: SystemTime::now(),
            memory_every: s.memory_every,
            last_memory: now,
            iteration_limit: s.iteration_limit,
            limit_reported: false,
        }
    }

    /// This worker's slot, `0..workers`. A replacement gets the slot of the
    /// worker it replaces (so, during a HUP or a recycling, two processes
    /// briefly share a slot).
    pub fn worker_index(&self) -> usize {
        self.index
    }

    /// A number unique to this worker process for the life of the master.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// How many iterations ([`Worker::execute`] calls) have completed.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The name given to the master ([`Builder::name`](crate::Builder::name)).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the worker should stop: the master asked (QUIT, TTOU, HUP,
    /// recycling) or is gone. Cheap (one non-blocking `recv`); a worker
    /// running its own loop calls it between steps and returns from
    /// [`Worker::execute`] once it says `true`.
    pub fn shutting_down(&mut self) -> bool {
        self.poll_master();
        self.stopping
    }

    /// Tells the master this worker is alive, from inside a long iteration
    /// (or a long [`Worker::start`]). Cheap to call often: it sends at most
    /// one heartbeat per quarter of the heartbeat interval.
    pub fn alive(&mut self) {
        if self.last_beat.elapsed() >= self.beat_every / 4 {
            self.beat();
        }
    }

    /// Says what the worker is doing (a job id, a task name). It goes with
    /// the heartbeats, and the master logs it if the worker hangs. Cleared
    /// with [`clear_activity`](Context::clear_activity).
    pub fn set_activity(&mut self, what: impl Into<String>) {
        self.activity = Some(what.into());
    }

    /// Forgets the activity set with [`set_activity`](Context::set_activity).
    pub fn clear_activity(&mut self) {
        self.activity = None;
    }

    /// Sets the worker's process title to `NAME worker[N] STATE`.
    ///
    /// # Errors
    ///
    /// When the process has started threads (the title cannot be changed
    /// safely then), or `/proc` cannot be read.
    pub fn set_state(&mut self, state: &str) -> std::io::Result<()> {
        prefork_proc::child::set_title(&format!("{} worker[{}] {state}", self.name, self.index))
    }

    /// Reads every pending request from the master.
    pub(crate) fn poll_master(&mut self) {
        if self.master_gone {
            return;
        }
        loop {
            match self.channel.recv() {
                Ok(Some(Message::Control(Control::Stop | Control::Recycle))) => {
                    self.stopping = true;
                }
                Ok(Some(Message::Control(Control::ReopenLogs))) => self.reopen_pending = true,
                Ok(Some(other)) => {
                    tracing::debug!(kind = other.kind(), "ignored message from the master")
                }
                Ok(None) => return,
                Err(e) => {
                    if !matches!(e, ChannelError::Closed) {
                        tracing::error!(error = %e, "channel to the master failed");
                    }
                    self.lose_master();
                    return;
                }
            }
        }
    }

    fn lose_master(&mut self) {
        if !self.master_gone {
            tracing::warn!(worker = self.index, "the master is gone: stopping");
        }
        self.master_gone = true;
        self.stopping = true;
    }

    pub(crate) fn take_reopen(&mut self) -> bool {
        std::mem::take(&mut self.reopen_pending)
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping
    }

    pub(crate) fn send(&mut self, msg: &Message) {
        if self.master_gone {
            return;
        }
        if let Err(e) = self.channel.send(msg) {
            if !matches!(e, ChannelError::Closed) {
                tracing::error!(error = %e, "cannot write to the master");
            }
            self.lose_master();
        }
    }

    /// Sends Ready, waiting (up to `timeout`) until it is written.
    pub(crate) fn send_ready(&mut self, timeout: Duration) -> bool {
        let msg = Message::Ready {
            pid: std::process::id(),
        };
        if self.channel.send(&msg).is_err() {
            self.lose_master();
            return false;
        }
        match self.channel.flush_timeout(timeout) {
            Ok(true) => {
                self.last_beat = Instant::now();
                true
            }
            _ => {
                self.lose_master();
                false
            }
        }
    }

    fn beat(&mut self) {
        let progress = match &self.activity {
            Some(what) => Progress::Busy {
                job: what.clone(),
                since_unix_ms: unix_ms(self.iteration_started),
            },
            None => Progress::Idle,
        };
        self.send(&Message::Heartbeat(progress));
        self.last_beat = Instant::now();
    }

    /// Before an iteration: heartbeat and memory report when due.
    pub(crate) fn before_iteration(&mut self) {
        let now = Instant::now();
        self.iteration_started = SystemTime::now();
        if now.duration_since(self.last_beat) >= self.beat_every {
            self.beat();
        }
        if let Some(every) = self.memory_every
            && now.duration_since(self.last_memory) >= every
        {
            self.last_memory = now;
            self.report_stats();
        }
    }

    /// After an iteration: count it, and report reaching the iteration limit.
    pub(crate) fn after_iteration(&mut self) {
        self.iterations += 1;
        if !self.limit_reported
            && let Some(limit) = self.iteration_limit
            && self.iterations >= limit
        {
            self.limit_reported = true;
            self.report_stats();
        }
    }

    fn report_stats(&mut self) {
        let (rss_bytes, pss_bytes) = crate::memory::own_rss_pss().unwrap_or((0, 0));
        self.send(&Message::Stats(Stats {
            rss_bytes,
            pss_bytes,
            jobs_done: 0,
            iterations: self.iterations,
        }));
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
