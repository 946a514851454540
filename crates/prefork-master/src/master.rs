//! [`Master`]: the single-threaded `mio` loop that reports what it sees to
//! the supervisor and carries out what the supervisor decides. The child
//! side of a fork is in `child.rs`.
//!
//! # One turn of the loop
//!
//! The supervisor (`supervisor.rs`, which drives the dispatch router of
//! `router.rs`) decides everything and never touches a descriptor. This
//! loop is the only code that does I/O, and it interprets nothing: what
//! it sees goes to `Supervisor::handle` as one closed `Event` (a fork
//! done, a message as it came, a failed channel, a reaped child, a
//! signal, the clock), and what comes back is a flat list of `Action`s
//! (fork, send a message to a serial, signal a process, run a hook). One
//! turn is:
//!
//! 1. **Carry out** the actions (`carry_out`). A fork's parent side
//!    registers the new channel in the poll and answers `Spawned`; the
//!    child side never returns here. A send only queues the frame.
//! 2. **Stop** if the supervisor has a final [`Report`].
//! 3. **Flush** every channel written to during the last turn
//!    (`flush_pending`): a worker's next job, the feeder's copy of the
//!    report and its next credit are queued as they are decided and leave
//!    in one `write` per peer, here. A peer whose socket is full stays
//!    pending and is flushed again next turn.
//! 4. **Wait** in `poll` until the supervisor's next deadline (a heartbeat
//!    timeout, a kill's grace period, a restart's backoff), or not at all
//!    when some channel still has unread input (below).
//! 5. **Read**: signals from the self-pipe (SIGCHLD reaps; the others are
//!    handed in), then each readable channel, at most `MESSAGES_PER_TURN`
//!    messages each, so a flooding worker cannot starve the others; each
//!    message is handed in as it is read.
//! 6. **Tick**: hand in the time, for timeouts, recycling and scaling.
//!
//! **The draining rule.** The poll is edge-triggered: a channel reports
//! readable once per arrival of data, not while data remains. A channel
//! left with unread messages after its `MESSAGES_PER_TURN` would therefore
//! never be reported again if its peer then fell silent. So such a channel
//! goes into `backlog`; step 4 does not block while the backlog is
//! non-empty, and step 5 reads the backlog first. Every channel is thus read
//! until `recv` says it is empty, across as many turns as it takes, and
//! one busy peer costs the others at most one batch of latency a turn.
//!
//! **Death is read to the end.** A reaped worker's channel is drained
//! (`drain`) and its messages handed in before its `Reaped` event, so a
//! report it wrote just before exiting settles its job instead of being
//! lost as a failed attempt.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use libc::c_int;
use mio::{Events, Interest, Poll, Token};
use prefork_heartbeat::{Channel, ChannelError, Message};
use prefork_proc::{Child, Fork};
use prefork_selfpipe::SignalQueue;

use crate::backoff::XorShift;
use crate::child;
use crate::config::{Builder, Hooks, MAX_WORKERS, Settings};
use crate::control::{self, Reply, Request};
use crate::feeder::{Feeder, Job, Settle};
use crate::report::Shutdown;
use crate::report::{Phase, Report, Role, WorkerInfo};
use crate::supervisor::{Action, Command, Event, Serial, Supervisor, signal_name};
use crate::worker::{BoxError, Context, Worker};

/// The signals the master handles (see `docs/signals.md`).
pub(crate) const SIGNALS: &[c_int] = &[
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
];

/// The largest frame the master accepts from a worker: workers send small
/// control messages, so a bigger one is garbage (and the master never
/// buffers much for a flooding worker).
const MAX_FRAME_FROM_WORKER: usize = 64 * 1024;

/// The largest job (its delivery id plus its payload) dispatch mode carries
/// from the feeder through the master to a worker. A bigger one is refused by
/// the feeder (settled as a failure that is not retried, with the reason)
/// instead of being sent; nothing a payload holds can break a channel.
pub const MAX_JOB_BYTES: usize = 64 * 1024 * 1024;

/// The largest frame on a channel that carries jobs: a job of
/// [`MAX_JOB_BYTES`] plus the frame's own fields.
pub(crate) const MAX_JOB_FRAME: usize = MAX_JOB_BYTES + 1024;

/// At most this many messages are read from one worker per loop turn, so a
/// flooding worker cannot starve the others.
const MESSAGES_PER_TURN: usize = 256;

const SIGNAL_TOKEN: Token = Token(0);

/// How long one `status` request may spend reading the processes' PSS
/// from `/proc` (the loop waits meanwhile): about 100 to 400 processes.
const PSS_BUDGET: Duration = Duration::from_millis(20);

/// A pre-forking master: forks the workers, supervises them from a
/// single-threaded `mio` loop, and answers Unicorn's signals.
///
/// Built with [`Master::builder`]; [`run`](Master::run) takes the
/// [`Worker`] and returns once the master has shut down.
///
/// # Examples
///
/// ```no_run
/// use prefork_master::{BoxError, Context, Master, Worker};
///
/// struct Hello;
/// impl Worker for Hello {
///     fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
///         println!("hello from worker {}", ctx.worker_index());
///         std::thread::sleep(std::time::Duration::from_secs(1));
///         Ok(())
///     }
/// }
///
/// fn main() -> Result<prefork_master::Report, Box<dyn std::error::Error>> {
///     Ok(Master::builder().workers(2).build()?.run(Hello)?)
/// }
/// ```
#[derive(Debug)]
pub struct Master {
    settings: Settings,
    hooks: Hooks,
}

impl Master {
    /// A builder with every setting at its default.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn new(settings: Settings, hooks: Hooks) -> Master {
        Master { settings, hooks }
    }

    #[cfg(test)]
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs the master until it has shut down: forks the workers, each of
    /// which runs `worker` (its own copy, made by the fork), and supervises
    /// them. Returns once every worker has been reaped after QUIT, TERM or
    /// INT, or after the master gave up on a crash loop
    /// ([`Report::success`] says which).
    ///
    /// The calling process must have a single thread (start threads and
    /// async runtimes in [`Worker::start`]). The master installs handlers
    /// for the signals of `docs/signals.md` and restores the previous ones
    /// before returning; it reaps every child (`waitpid(-1)`), including
    /// children its hooks start. It sets its process title (overwriting the
    /// memory of `std::env::args()`: read your arguments before).
    ///
    /// In the worker processes this function never returns: they exit.
    ///
    /// # Errors
    ///
    /// - the process has more than one thread (kind `Other`);
    /// - another signal handler library owns one of the master's signals
    ///   (`AlreadyExists`), or the signal queue, the poll or a socket pair
    ///   cannot be created;
    /// - the poll fails (it does not on a healthy system). The workers then
    ///   see their channel close and stop.
    pub fn run<W: Worker>(self, worker: W) -> io::Result<Report> {
        self.run_with(worker, None::<NoFeeder>)
    }

    /// Runs the master in *dispatch mode*: as [`run`](Master::run), plus
    /// one more child process, the feeder, that runs `feeder` (the only
    /// process that talks to the broker). The master asks the feeder for
    /// as many jobs as it has idle workers, hands each job to an idle
    /// worker over its socket ([`Context::next_job`]), relays the workers'
    /// reports back ([`Context::finish_job`]: a verdict the master relays
    /// unread, [`Settle::Finished`]), and
    /// knows at every moment which worker holds which job:
    ///
    /// - a worker that dies holding a job (crash, SIGKILL, OOM, hard time
    ///   limit) has it settled at once as a failed attempt
    ///   ([`Settle::Lost`]), and the log names the worker, the job and the
    ///   signal;
    /// - graceful shutdown (QUIT) stops fetching, gives back the jobs no
    ///   worker started, lets the workers finish theirs within the graceful
    ///   timeout, then stops the feeder;
    /// - the feeder is supervised like a worker (heartbeat, restart with
    ///   backoff; the master gives up when it keeps dying at start).
    ///
    /// The master itself holds no broker client: it moves opaque ids and
    /// bytes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use prefork_master::{BoxError, Context, Feeder, Job, Master, Settle, Worker};
    ///
    /// struct Count(u64);
    /// impl Feeder for Count {
    ///     fn fetch(&mut self, max: usize, _: Duration, _: &mut Context) -> Result<Vec<Job>, BoxError> {
    ///         self.0 += max as u64;
    ///         Ok((0..max).map(|i| Job::new(format!("{}-{i}", self.0), vec![], 1)).collect())
    ///     }
    ///     fn settle(&mut self, s: Settle, _: &mut Context) -> Result<(), BoxError> {
    ///         println!("{s:?}");
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let worker = prefork_master::from_fn(|ctx| {
    ///     if let Some(job) = ctx.next_job(Duration::from_millis(100)) {
    ///         ctx.finish_job(&job.delivery, b"");
    ///     }
    ///     Ok(())
    /// });
    /// let report = Master::builder().workers(4).build()?.run_dispatch(Count(0), worker)?;
    /// # drop(report);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`run`](Master::run).
    pub fn run_dispatch<F: Feeder, W: Worker>(
        mut self,
        feeder: F,
        worker: W,
    ) -> io::Result<Report> {
        self.settings.feeder = true;
        self.run_with(worker, Some(feeder))
    }

    fn run_with<W: Worker, F: Feeder>(self, worker: W, feeder: Option<F>) -> io::Result<Report> {
        let threads = settled_thread_count()?;
        if threads > 1 {
            return Err(io::Error::other(format!(
                "the master must be single-threaded to fork safely, but this process has {threads} threads: \
                 start threads and runtimes in Worker::start, after the fork"
            )));
        }
        raise_fd_limit();
        let mut queue = SignalQueue::new(SIGNALS)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut queue, SIGNAL_TOKEN, Interest::READABLE)?;
        let control = match &self.settings.control_socket {
            Some(path) => Some(control::Server::bind(
                path,
                self.settings.control_group,
                poll.registry(),
            )?),
            None => None,
        };
        let rng = XorShift::from_entropy();
        let sup = Supervisor::new(self.settings.clone(), rng);
        let mut m = Loop {
            settings: self.settings,
            hooks: self.hooks,
            worker,
            sup,
            poll: Some(poll),
            queue: Some(queue),
            procs: HashMap::new(),
            pids: HashMap::new(),
            backlog: BTreeSet::new(),
            pending_output: BTreeSet::new(),
            master_pid: std::process::id(),
            feeder,
            actions: Vec::new(),
            control,
            requests: Vec::new(),
        };
        let report = m.run();
        // Close the workers' channels before the queue restores the
        // previous signal dispositions.
        m.procs.clear();
        if let Some(c) = m.control.take() {
            c.remove_file();
        }
        report
    }
}

/// The feeder of [`Master::run`]: there is none.
struct NoFeeder;

impl Feeder for NoFeeder {
    fn fetch(&mut self, _: usize, _: Duration, _: &mut Context) -> Result<Vec<Job>, BoxError> {
        Ok(Vec::new())
    }
    fn settle(&mut self, _: Settle, _: &mut Context) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A worker (or feeder) process as the loop holds it: the child to signal
/// and reap, and the master's end of its channel.
struct Peer {
    child: Child,
    channel: Channel,
    /// Still registered in the poll (false after EOF or a protocol error).
    open: bool,
}

struct Loop<W, F> {
    settings: Settings,
    hooks: Hooks,
    worker: W,
    sup: Supervisor,
    poll: Option<Poll>,
    queue: Option<SignalQueue>,
    procs: HashMap<Serial, Peer>,
    pids: HashMap<i32, Serial>,
    /// Workers with unread input left after a turn.
    backlog: BTreeSet<Serial>,
    /// Workers whose channel could not take a whole message.
    pending_output: BTreeSet<Serial>,
    master_pid: u32,
    /// Dispatch mode: what the feeder process runs.
    feeder: Option<F>,
    /// Scratch space for the supervisor's actions (kept between turns: no
    /// allocation per job).
    actions: Vec<Action>,
    /// The control socket, when the master listens on one.
    control: Option<control::Server>,
    /// Requests the control socket read this turn, to answer.
    requests: Vec<control::Incoming>,
}

fn token(serial: Serial) -> Token {
    Token(usize::try_from(serial).unwrap_or(usize::MAX))
}

impl<W: Worker, F: Feeder> Loop<W, F> {
    fn poll(&self) -> &Poll {
        self.poll.as_ref().expect("the master's poll")
    }

    fn run(&mut self) -> io::Result<Report> {
        self.set_title(Phase::Starting);
        tracing::info!(
            name = %self.settings.name,
            pid = self.master_pid,
            workers = self.settings.workers,
            "master starting"
        );
        self.sup.start(Instant::now());
        let mut events = Events::with_capacity(256);
        let mut signals = Vec::new();
        loop {
            self.carry_out();
            if let Some(report) = self.sup.report() {
                tracing::info!(%report, "master stopped");
                return Ok(report);
            }
            self.flush_pending();
            let timeout = if self.backlog.is_empty() {
                let control = self.control.as_ref().and_then(|c| c.next_deadline());
                let next = match (self.sup.next_deadline(), control) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                next.map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.as_mut().expect("poll").poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "poll failed: the master stops");
                return Err(e);
            }
            let mut readable: Vec<Serial> = std::mem::take(&mut self.backlog).into_iter().collect();
            for event in events.iter() {
                if event.token() == SIGNAL_TOKEN {
                    signals.clear();
                    if let Some(q) = self.queue.as_mut()
                        && let Err(e) = q.drain_into(&mut signals)
                    {
                        tracing::error!(error = %e, "cannot read the signal queue");
                    }
                    for &sig in &signals {
                        self.on_signal(sig);
                    }
                } else if control::Server::owns(event.token()) {
                    if let (Some(c), Some(poll)) = (self.control.as_mut(), self.poll.as_ref()) {
                        c.ready(
                            event.token(),
                            Instant::now(),
                            poll.registry(),
                            &mut self.requests,
                        );
                    }
                } else {
                    readable.push(event.token().0 as Serial);
                }
            }
            for serial in readable {
                self.read(serial);
            }
            self.answer_requests();
            self.sup.handle(Instant::now(), Event::Tick);
        }
    }

    /// Answers the requests the control socket read this turn, and drops
    /// its clients that ran out of time. A command goes to the supervisor
    /// as the signal it stands for would (`Event::Command`); its reply is
    /// written before the actions are carried out, so a `stop` is answered
    /// before the master goes.
    fn answer_requests(&mut self) {
        let (Some(_), Some(_)) = (self.control.as_ref(), self.poll.as_ref()) else {
            return;
        };
        let requests = std::mem::take(&mut self.requests);
        for (token, request) in requests {
            let now = Instant::now();
            let command = match request {
                Request::Status => None,
                Request::Scale { workers } if workers > MAX_WORKERS => {
                    let why = format!("at most {MAX_WORKERS} workers (asked for {workers})");
                    self.reply(token, &Reply::error(why));
                    continue;
                }
                Request::Scale { workers } => Some(Command::Scale(workers)),
                Request::Stop { graceful: true } => Some(Command::Stop(Shutdown::Graceful)),
                Request::Stop { graceful: false } => Some(Command::Stop(Shutdown::Quick)),
                Request::Reload => Some(Command::Reload),
            };
            let reply = match command {
                None => {
                    let mut status = self.sup.status(now);
                    // Reading smaps_rollup costs 50-200 µs a process: past
                    // the budget, the figures the workers last sent stand.
                    let t0 = Instant::now();
                    for p in status.workers.iter_mut().chain(status.feeder.as_mut()) {
                        if t0.elapsed() >= PSS_BUDGET {
                            break;
                        }
                        if let Some(pid) = p.pid
                            && let Ok((_, pss)) = crate::memory::rss_pss_of(pid)
                        {
                            p.pss_bytes = Some(pss);
                        }
                    }
                    Reply {
                        status: Some(status),
                        ..Reply::done()
                    }
                }
                Some(command) if !self.sup.accepts(command) => {
                    Reply::error("the master is stopping: only stop is carried out")
                }
                Some(command) => {
                    self.sup.handle(now, Event::Command(command));
                    Reply {
                        workers: matches!(command, Command::Scale(_)).then(|| self.sup.target()),
                        ..Reply::done()
                    }
                }
            };
            self.reply(token, &reply);
            self.carry_out();
        }
        if let (Some(c), Some(poll)) = (self.control.as_mut(), self.poll.as_ref()) {
            c.expire(Instant::now(), poll.registry());
        }
    }

    fn reply(&mut self, token: Token, reply: &Reply) {
        if let (Some(c), Some(poll)) = (self.control.as_mut(), self.poll.as_ref()) {
            c.reply(token, reply, poll.registry());
        }
    }

    fn on_signal(&mut self, sig: c_int) {
        if sig == libc::SIGCHLD {
            self.reap();
        } else {
            self.sup.handle(Instant::now(), Event::Signal(sig));
        }
        self.carry_out();
    }

    /// Reaps every child that exited. A worker's channel is read to the end
    /// first: what it wrote before it died (its last report, its last
    /// stats) reaches the supervisor before its death does.
    fn reap(&mut self) {
        let reaped = match prefork_proc::reap() {
            Ok(reaped) => reaped,
            Err(e) => {
                tracing::error!(error = %e, "reaping failed");
                return;
            }
        };
        for r in reaped {
            if let Some(serial) = self.pids.remove(&r.pid) {
                self.drain(serial);
                if let Some(mut p) = self.procs.remove(&serial)
                    && p.open
                {
                    let _ = self.poll().registry().deregister(&mut p.channel);
                }
                self.backlog.remove(&serial);
                self.pending_output.remove(&serial);
            }
            let status = r.status;
            self.sup
                .handle(Instant::now(), Event::Reaped { pid: r.pid, status });
        }
    }

    /// Hands in everything a reaped worker left in its channel, up to EOF
    /// or garbage (the reap handles the rest).
    fn drain(&mut self, serial: Serial) {
        let now = Instant::now();
        let Some(p) = self.procs.get_mut(&serial).filter(|p| p.open) else {
            return;
        };
        while let Ok(Some(msg)) = p.channel.recv() {
            self.sup.handle(now, Event::Message { serial, msg });
        }
    }

    /// Reads at most `MESSAGES_PER_TURN` messages from a readable channel
    /// (the draining rule of the module doc), handing each in as it comes.
    fn read(&mut self, serial: Serial) {
        let now = Instant::now();
        let Some(p) = self.procs.get_mut(&serial).filter(|p| p.open) else {
            return;
        };
        let mut failure = None;
        let mut read = 0;
        while read < MESSAGES_PER_TURN {
            match p.channel.recv() {
                Ok(Some(msg)) => {
                    read += 1;
                    self.sup.handle(now, Event::Message { serial, msg });
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(err) = failure else {
            if read == MESSAGES_PER_TURN {
                self.backlog.insert(serial);
            }
            return;
        };
        let protocol = !matches!(err, ChannelError::Closed);
        if protocol {
            tracing::error!(error = %err, serial, "bad data from a worker");
        }
        p.open = false;
        let _ = self
            .poll
            .as_ref()
            .expect("poll")
            .registry()
            .deregister(&mut p.channel);
        self.backlog.remove(&serial);
        self.sup
            .handle(now, Event::ChannelFailed { serial, protocol });
        self.carry_out();
        // The worker is probably exiting: reap it now rather than wait for
        // SIGCHLD to come round.
        self.reap();
    }

    /// Queues `msg` for `serial`; everything queued in one loop turn is
    /// written at the end of the turn (`flush_pending`), one write per
    /// peer: a worker's report, the feeder's copy of it and the feeder's
    /// next credit cost one system call each way, not three.
    fn send(&mut self, serial: Serial, msg: &Message) {
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        match p.channel.queue(msg) {
            Ok(()) => {
                self.pending_output.insert(serial);
            }
            Err(e) => tracing::error!(error = %e, serial, "cannot write to a worker"),
        }
    }

    fn flush_pending(&mut self) {
        let serials: Vec<Serial> = self.pending_output.iter().copied().collect();
        for serial in serials {
            let done = match self.procs.get_mut(&serial) {
                Some(p) => !matches!(p.channel.flush(), Ok(false)),
                None => true,
            };
            if done {
                self.pending_output.remove(&serial);
            }
        }
    }

    /// Carries out every action the supervisor decided, and those its
    /// answers to them decide (a fork is answered with `Spawned`).
    fn carry_out(&mut self) {
        let mut actions = std::mem::take(&mut self.actions);
        loop {
            self.sup.drain_actions_into(&mut actions);
            if actions.is_empty() {
                break;
            }
            for action in actions.drain(..) {
                match action {
                    Action::Spawn {
                        serial,
                        role,
                        iteration_limit,
                    } => {
                        let pid = self.spawn(serial, role, iteration_limit);
                        self.sup
                            .handle(Instant::now(), Event::Spawned { serial, pid });
                    }
                    Action::Send(serial, msg) => self.send(serial, &msg),
                    Action::Kill {
                        serial,
                        pid,
                        signal,
                    } => {
                        let result = match self.procs.get(&serial) {
                            Some(p) => p.child.signal(signal),
                            None => Ok(()),
                        };
                        let signal = signal_name(signal);
                        match result {
                            Err(e) if !prefork_proc::is_gone(&e) => {
                                tracing::error!(error = %e, pid, signal, "cannot signal a worker")
                            }
                            _ => tracing::debug!(pid, signal, "signalled a worker"),
                        }
                    }
                    Action::ReopenMasterLogs => {
                        if let Some(hook) = self.hooks.reopen_logs.as_mut() {
                            guard("reopen_logs", hook);
                        }
                    }
                    Action::Phase(phase) => {
                        tracing::info!(%phase, workers = self.sup.target(), "master phase");
                        self.set_title(phase);
                        if let Some(hook) = self.hooks.on_phase.as_mut() {
                            guard("on_phase", || hook(phase));
                        }
                    }
                    Action::Exited(exit) => {
                        if let Some(hook) = self.hooks.after_worker_exit.as_mut() {
                            guard("after_worker_exit", || hook(&exit));
                        }
                    }
                }
            }
        }
        self.actions = actions;
    }

    fn set_title(&self, phase: Phase) {
        let title = match phase {
            Phase::Running => format!("{} master", self.settings.name),
            other => format!("{} master ({other})", self.settings.name),
        };
        if let Err(e) = prefork_proc::child::set_title(&title) {
            tracing::debug!(error = %e, "cannot set the master's process title");
        }
    }

    /// Forks a worker. Returns its pid in the master; never returns in the
    /// worker.
    fn spawn(&mut self, serial: Serial, role: Role, iteration_limit: Option<u64>) -> Option<i32> {
        if let Some(hook) = self.hooks.before_fork.as_mut() {
            let info = WorkerInfo { role, serial };
            guard("before_fork", || hook(&info));
        }
        let (mut ours, mut theirs) = match Channel::pair() {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, worker = %role, "cannot create a worker channel");
                return None;
            }
        };
        // Jobs flow feeder -> master -> worker; a worker sends small
        // reports back, so a big frame from it is garbage.
        if role == Role::Feeder {
            ours.set_max_frame(MAX_JOB_FRAME);
            theirs.set_max_frame(MAX_JOB_FRAME);
        } else {
            ours.set_max_frame(MAX_FRAME_FROM_WORKER);
            ours.set_max_send_frame(MAX_JOB_FRAME);
            theirs.set_max_frame(MAX_JOB_FRAME);
            theirs.set_max_send_frame(MAX_FRAME_FROM_WORKER);
        }
        // Buffered output would be written twice, once by each process.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        match prefork_proc::fork() {
            Ok(Fork::Parent(child)) => {
                drop(theirs);
                let pid = child.pid();
                if let Err(e) =
                    self.poll()
                        .registry()
                        .register(&mut ours, token(serial), Interest::READABLE)
                {
                    // Unsupervisable: kill it; the reap reports it.
                    tracing::error!(error = %e, "cannot watch a worker's channel");
                    let _ = child.signal(libc::SIGKILL);
                }
                tracing::debug!(worker = %role, pid, serial, "forked a worker");
                self.pids.insert(pid, serial);
                self.procs.insert(
                    serial,
                    Peer {
                        child,
                        channel: ours,
                        open: true,
                    },
                );
                Some(pid)
            }
            Ok(Fork::Child) => {
                drop(ours);
                self.become_worker(serial, role, iteration_limit, theirs)
            }
            Err(e) => {
                tracing::error!(error = %e, worker = %role, "fork failed");
                None
            }
        }
    }

    /// The child side of the fork ([`child::become_child`]): never returns.
    fn become_worker(
        &mut self,
        serial: Serial,
        role: Role,
        iteration_limit: Option<u64>,
        channel: Channel,
    ) -> ! {
        // Its poll and the other workers' channels and pidfds: the child
        // closes them (dropping these types only closes fds).
        let master_fds = (
            std::mem::take(&mut self.procs),
            self.poll.take(),
            self.control.take(),
        );
        let feeder = self.feeder.as_mut().filter(|_| role == Role::Feeder);
        child::become_child(
            child::Birth {
                serial,
                role,
                iteration_limit,
                channel,
                master_pid: self.master_pid,
                queue: self.queue.take(),
            },
            master_fds,
            &self.settings,
            &mut self.hooks,
            &mut self.worker,
            feeder,
        )
    }
}

/// The master holds two descriptors per worker (its channel and its
/// pidfd): raise the soft `RLIMIT_NOFILE` (often 1024) towards the hard
/// limit so that [`MAX_WORKERS`](crate::MAX_WORKERS) fit. Workers inherit
/// the raised limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = 2 * crate::config::MAX_WORKERS as u64 + 256;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < wanted
    {
        let new = wanted.min(hard);
        match setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
            Ok(()) => tracing::debug!(from = soft, to = new, "raised the open file limit"),
            Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open file limit"),
        }
    }
}

/// The process's thread count, once threads that already ended have left
/// it: a thread that was just joined (a client's I/O thread, closed by a
/// connect-and-close check before the pool starts) is still counted by the
/// kernel for a moment after `join` returns, until it is reaped. Waits up
/// to 200 ms for the count to reach 1; a thread that still runs keeps it
/// above.
fn settled_thread_count() -> io::Result<usize> {
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let threads = prefork_proc::thread_count()?;
        if threads <= 1 || Instant::now() >= deadline {
            return Ok(threads);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs a master hook, catching (and logging) a panic.
fn guard<R>(name: &str, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::error!(hook = name, "a hook panicked; the master carries on");
            None
        }
    }
}
