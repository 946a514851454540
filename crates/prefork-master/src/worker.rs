//! The [`Worker`] trait users implement, and the [`Context`] a worker gets:
//! its slot, the shutdown flag, and the heartbeat.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::report::Role;

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
    role: Role,
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
    /// Messages for the dispatch layer (jobs, credits, reports), in order.
    inbox: VecDeque<Message>,
    jobs_finished: u64,
    jobs_finished_reported: u64,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("role", &self.role)
            .field("serial", &self.serial)
            .field("iterations", &self.iterations)
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

/// Settings the worker runtime needs, copied from the master's.
#[derive(Debug, Clone)]
pub(crate) struct ContextSettings {
    pub(crate) role: Role,
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
            role: s.role,
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
            inbox: VecDeque::new(),
            jobs_finished: 0,
            jobs_finished_reported: 0,
        }
    }

    /// This worker's slot, `0..workers`. A replacement gets the slot of the
    /// worker it replaces (so, during a HUP or a recycling, two processes
    /// briefly share a slot). The feeder has no slot: its
    /// [`role`](Context::role) says so, and this returns
    /// [`MAX_WORKERS`](crate::MAX_WORKERS), beyond every worker's.
    pub fn worker_index(&self) -> usize {
        self.role
            .worker_index()
            .unwrap_or(crate::config::MAX_WORKERS)
    }

    /// The part this process plays: a worker in its slot, or the feeder.
    pub fn role(&self) -> Role {
        self.role
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

    /// Whether the master had asked this worker to stop as of the last look
    /// at its channel (which the runtime takes before every iteration):
    /// [`shutting_down`](Context::shutting_down) without the `recv`, for
    /// loops that run many quick steps per iteration.
    pub fn stop_requested(&self) -> bool {
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
        let mut what = what.into();
        what.truncate(truncated(&what, MAX_ACTIVITY).len());
        self.activity = Some(what);
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
        let title = match self.role {
            Role::Worker(index) => format!("{} worker[{index}] {state}", self.name),
            Role::Feeder => format!("{} {state}", self.name),
        };
        prefork_proc::child::set_title(&title)
    }

    /// Dispatch mode: the next job the master handed this worker, waiting
    /// up to `timeout` for one. `None` when none came, or when the worker
    /// is asked to stop (check [`shutting_down`](Context::shutting_down)).
    ///
    /// The master hands a worker one job at a time and no other until it
    /// reports this one with [`finish_job`](Context::finish_job). A worker
    /// that dies holding a job
    /// has it settled as a failed attempt (the log names the job and the
    /// signal). Outside dispatch mode no job ever comes.
    pub fn next_job(&mut self, timeout: Duration) -> Option<crate::Job> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .inbox
                .iter()
                .position(|m| matches!(m, Message::Job { .. }))
                && let Some(Message::Job {
                    id,
                    payload,
                    attempt,
                }) = self.inbox.remove(i)
            {
                return Some(crate::Job::new(id, payload, attempt));
            }
            if self.stopping || self.master_gone {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.poll_master();
                if !self.inbox.iter().any(|m| matches!(m, Message::Job { .. })) {
                    return None;
                }
                continue;
            }
            self.wait_master(left.min(self.beat_every / 4).max(Duration::from_millis(1)));
            self.alive();
        }
    }

    /// Dispatch mode: tells the master this worker is done with the job
    /// `id` (from [`next_job`](Context::next_job)), and can take the next
    /// one. `report` is the verdict for the feeder (how it went: succeeded,
    /// retry, dead letter, why), relayed unread: the job layer encodes it
    /// here and decodes it in its [`Feeder`](crate::Feeder)'s
    /// [`Settle::Finished`](crate::Settle::Finished). At most
    /// [`MAX_REPORT`] bytes are sent (a longer report is cut). Counts a job
    /// finished.
    pub fn finish_job(&mut self, id: &str, report: &[u8]) {
        self.job_finished();
        self.send(&Message::Finished {
            id: id.to_owned(),
            report: report[..report.len().min(MAX_REPORT)].to_vec(),
        });
        self.flush();
    }

    /// Counts one job finished (any outcome); the count goes to the master
    /// with the next heartbeat (as `Stats::jobs_finished`) and is logged when
    /// the worker exits. [`finish_job`](Context::finish_job) counts for
    /// itself; pull-mode workers call this.
    pub fn job_finished(&mut self) {
        self.jobs_finished += 1;
    }

    /// Jobs this worker finished (see [`job_finished`](Context::job_finished)).
    pub fn jobs_finished(&self) -> u64 {
        self.jobs_finished
    }

    /// Sets a hard time limit on the job `what` (any label; the delivery id
    /// in dispatch mode): if this worker still runs it `limit` from now the
    /// master kills the worker with SIGKILL, logs the job, and (dispatch
    /// mode) settles it as a failed attempt under its retry policy; the
    /// worker is replaced. `None` clears the limit; in dispatch mode a
    /// report ([`finish_job`](Context::finish_job)) clears it too. It is
    /// separate from the liveness timeout: heartbeats do not move it.
    pub fn set_deadline(&mut self, what: &str, limit: Option<Duration>) {
        let in_ms = limit.map_or(0, |l| {
            u64::try_from(l.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.send(&Message::Deadline {
            id: truncated(what, MAX_ACTIVITY).to_owned(),
            in_ms,
        });
        self.flush();
    }

    /// The claims of dead siblings the master asked this worker to take
    /// over since the last call (pull mode: a worker of the pool died
    /// holding jobs; see [`Orphans`]). A worker that owns a broker handle
    /// passes each to `Broker::take_over` and runs what it gets before
    /// fetching more; one that ignores them leaves those jobs to come back
    /// when their claims expire.
    pub fn take_orphans(&mut self) -> Vec<Orphans> {
        let mut out = Vec::new();
        self.inbox.retain(|m| match m {
            Message::Orphaned { pid, ids } => {
                out.push(Orphans {
                    pid: *pid,
                    ids: ids.clone(),
                });
                false
            }
            _ => true,
        });
        out
    }

    /// Reads every pending request from the master.
    pub(crate) fn poll_master(&mut self) {
        if self.master_gone {
            return;
        }
        loop {
            match self.channel.recv() {
                Ok(Some(msg)) => self.take_message(msg),
                Ok(None) => return,
                Err(e) => {
                    self.channel_failed(e);
                    return;
                }
            }
        }
    }

    /// Waits up to `timeout` for a message from the master and takes it.
    /// Returns whether one came. Messages after it are left for the next
    /// call or [`poll_master`](Context::poll_master): draining at once would
    /// cost a `recv` that finds nothing, once a job (the socket is polled
    /// level-triggered, so nothing is missed).
    pub(crate) fn wait_master(&mut self, timeout: Duration) -> bool {
        if self.master_gone {
            return false;
        }
        match self.channel.recv_timeout(timeout) {
            Ok(Some(msg)) => {
                self.take_message(msg);
                return true;
            }
            Ok(None) => {}
            Err(e) => self.channel_failed(e),
        }
        false
    }

    fn take_message(&mut self, msg: Message) {
        match msg {
            Message::Control(Control::Stop) => self.stopping = true,
            Message::Control(Control::ReopenLogs) => self.reopen_pending = true,
            m @ (Message::Job { .. }
            | Message::Want { .. }
            | Message::Finished { .. }
            | Message::Release { .. }
            | Message::Lost { .. }
            | Message::Orphaned { .. }) => self.inbox.push_back(m),
            other => tracing::debug!(kind = other.kind(), "ignored message from the master"),
        }
    }

    fn channel_failed(&mut self, e: ChannelError) {
        if !matches!(e, ChannelError::Closed) {
            tracing::error!(error = %e, "channel to the master failed");
        }
        self.lose_master();
    }

    /// Dispatch messages received so far.
    pub(crate) fn take_inbox(&mut self) -> VecDeque<Message> {
        std::mem::take(&mut self.inbox)
    }

    /// Whether a job handed out by the master waits to be run.
    pub(crate) fn has_pending_job(&self) -> bool {
        !self.master_gone && self.inbox.iter().any(|m| matches!(m, Message::Job { .. }))
    }

    /// Writes buffered output, waiting up to a second for the master to
    /// take it.
    pub(crate) fn flush(&mut self) {
        if self.master_gone || !self.channel.has_pending_output() {
            return;
        }
        if !matches!(self.channel.flush_timeout(Duration::from_secs(1)), Ok(true)) {
            self.lose_master();
        }
    }

    /// Before the process exits: the jobs finished since the last report
    /// go to the master, which logs them on the exit line.
    pub(crate) fn report_final(&mut self) {
        if self.jobs_finished != self.jobs_finished_reported {
            self.report_stats();
        }
        self.flush();
    }

    fn lose_master(&mut self) {
        if !self.master_gone {
            tracing::warn!(worker = %self.role, "the master is gone: stopping");
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

    /// Queues a frame, written by the next [`send`](Context::send) or
    /// [`flush`](Context::flush) (the feeder queues a fetch's jobs and
    /// writes them at once).
    pub(crate) fn queue(&mut self, msg: &Message) {
        if self.master_gone {
            return;
        }
        if let Err(e) = self.channel.queue(msg) {
            tracing::error!(error = %e, "cannot write to the master");
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
        // The count of jobs finished goes with the heartbeat that follows
        // them (the master's `status` shows it): at most one stats report
        // per heartbeat, and none while no job finished.
        if self.jobs_finished != self.jobs_finished_reported {
            self.report_stats();
        }
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
            jobs_finished: self.jobs_finished,
            iterations: self.iterations,
        }));
        self.jobs_finished_reported = self.jobs_finished;
    }
}

/// Broker claims a dead process of the pool left behind, which the master
/// asks a live one to take over at once (`Broker::take_over`) instead of
/// waiting for the claims to expire: see [`Context::take_orphans`] (pull
/// mode) and [`Feeder::adopt`](crate::Feeder::adopt) (dispatch mode).
///
/// # Examples
///
/// ```
/// let o = prefork_master::Orphans::new(4242, vec!["1700000000000-0".into()]);
/// assert_eq!((o.pid, o.ids.len()), (4242, 1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Orphans {
    /// The dead process's id (its broker claims name it).
    pub pid: u32,
    /// Delivery ids the master knows it held: in pull mode the job it was
    /// running, when known (often empty: take every claim of `pid`); for a
    /// new feeder, the jobs the dead feeder handed out that still run on
    /// workers or whose reports follow (hold them for those reports; do not
    /// hand them out again).
    pub ids: Vec<String>,
}

impl Orphans {
    /// The claims of dead process `pid`, with the ids known to be among them.
    pub fn new(pid: u32, ids: Vec<String>) -> Orphans {
        Orphans { pid, ids }
    }
}

/// The longest report a worker sends with
/// [`finish_job`](Context::finish_job): the frames a worker sends are small
/// (a 64 KiB frame at most), so a worker cannot make the master buffer much.
pub const MAX_REPORT: usize = 16 * 1024;

/// The longest activity label a heartbeat carries.
const MAX_ACTIVITY: usize = 1024;

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
