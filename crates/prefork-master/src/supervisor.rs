//! The master's decisions, as a pure state machine: [`Event`]s and the
//! time go in, [`Action`]s come out. No fork, no signal, no socket here;
//! the loop in `master.rs` hands in what it saw and carries the actions
//! out. This is what makes the timing logic (heartbeat deadlines,
//! escalation, backoff, recycling, crash loops) testable with an injected
//! clock and no sleeping.
//!
//! The supervisor also decides what the jobs need from an event, so the
//! loop never interprets a message: in dispatch mode it owns the
//! [`Router`] and tells it what concerns it (a ready worker or feeder, a
//! job from the feeder, a report, a worker asked to stop, a death with the
//! reason the feeder is given), and turns the router's [`Route`]s into
//! [`Action::Send`]s; in pull mode it keeps the pids of dead workers whose
//! claims the next worker to be ready takes over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libc::c_int;
use prefork_heartbeat::{Control, Message, Progress};

use crate::backoff::{XorShift, backoff, jittered_count, jittered_duration};
use crate::config::{MAX_WORKERS, Settings};
use crate::control::{JobStatus, ProcessStatus, Status};
use crate::feeder::Job;
use crate::report::{Cause, ExitStatus, Phase, Report, Role, Shutdown, WorkerExit};
use crate::router::{Route, Router};

/// A number unique to each worker process for the life of the master.
pub(crate) type Serial = u64;

/// Something the loop saw: the supervisor's only input, with the time
/// ([`Supervisor::handle`]).
#[derive(Debug)]
pub(crate) enum Event {
    /// The loop forked the process of an [`Action::Spawn`] (`pid`), or
    /// could not (`None`).
    Spawned { serial: Serial, pid: Option<i32> },
    /// A message read from the channel of `serial`, as it came.
    Message { serial: Serial, msg: Message },
    /// The channel of `serial` failed: closed (`protocol == false`) or
    /// garbage (`protocol == true`).
    ChannelFailed { serial: Serial, protocol: bool },
    /// A child was reaped. The loop hands in everything left in its
    /// channel first, so a report written just before the exit settles
    /// its job.
    Reaped { pid: i32, status: ExitStatus },
    /// A signal from the self-pipe (CHLD excepted: it makes the loop reap).
    Signal(c_int),
    /// A request from the control socket that changes something: the
    /// same [`Command`] a signal becomes, without a signal.
    Command(Command),
    /// Time passed: handle the deadlines due by now.
    Tick,
}

/// Something the loop must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Fork a process for this slot, then hand in [`Event::Spawned`].
    Spawn {
        serial: Serial,
        role: Role,
        /// Iterations after which the worker reports its stats (the
        /// jittered recycling limit).
        iteration_limit: Option<u64>,
    },
    /// Queue this message on the channel of `serial`: a control request,
    /// a job for a worker, a report or credit for the feeder, claims to
    /// take over.
    Send(Serial, Message),
    /// Send a real signal to the process.
    Kill {
        serial: Serial,
        pid: i32,
        signal: c_int,
    },
    /// Run the master's reopen-logs hook.
    ReopenMasterLogs,
    /// The phase changed: log it, retitle, run the hook.
    Phase(Phase),
    /// A worker was reaped: run the exit hook.
    Exited(WorkerExit),
}

/// What an operator asks of the master, by a signal (QUIT, TERM, INT,
/// HUP, WINCH, TTIN, TTOU become one of these) or through the control
/// socket: one implementation for both ways in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Stop the pool: graceful (QUIT) or quick (TERM, INT).
    Stop(Shutdown),
    /// Replace every worker, one at a time (HUP).
    Reload,
    /// Set the number of workers wanted (TTIN and TTOU: one more or less,
    /// WINCH: 0), capped at [`MAX_WORKERS`].
    Scale(usize),
}

/// What a worker said about itself in its latest heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Activity {
    Idle,
    Busy { what: String, since: SystemTime },
}

/// Why a worker is to be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recycle {
    Reload,
    Memory,
    Iterations,
    Age,
}

impl Recycle {
    fn as_str(self) -> &'static str {
        match self {
            Recycle::Reload => "reload (HUP)",
            Recycle::Memory => "memory limit",
            Recycle::Iterations => "iteration limit",
            Recycle::Age => "maximum age",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Running (starting or ready), and wanted.
    Live,
    /// Asked to stop: `Control::Stop` sent (graceful) or SIGTERM (quick);
    /// SIGKILL at `kill_at`.
    Stopping { kill_at: Instant, quick: bool },
    /// SIGKILL sent; waiting for the reap.
    Killed(Cause),
}

/// One process's life as the supervisor sees it: its slot, its state, its
/// liveness and what it runs.
#[derive(Debug, Clone)]
struct Life {
    role: Role,
    pid: Option<i32>,
    spawned_at: Instant,
    ready: bool,
    last_beat: Instant,
    activity: Activity,
    state: State,
    recycle: Option<Recycle>,
    age_limit: Option<Instant>,
    iteration_limit: Option<u64>,
    replaces: Option<Serial>,
    /// The running job's hard deadline, its label and its limit in ms.
    job_deadline: Option<(Instant, String, u64)>,
    /// Dispatch mode: when the router handed this worker its job (the
    /// adaptive lookahead learns the jobs' run time from it).
    handed_at: Option<Instant>,
    jobs_finished: u64,
    /// The PSS the worker last reported measuring (its stats), if any.
    pss: Option<u64>,
}

impl Life {
    /// What the feeder is told about the job this worker (process `pid`)
    /// held when it died: who, how, and why the master killed it, naming
    /// the hard time limit when that was why.
    fn lost_reason(&self, pid: i32, status: ExitStatus) -> String {
        let cause = match (&self.state, &self.job_deadline) {
            (State::Killed(Cause::TimeLimit), Some((_, _, ms))) => {
                format!(" (hard time limit of {ms} ms)")
            }
            (State::Killed(cause), _) => format!(" ({cause})"),
            _ => String::new(),
        };
        format!(
            "worker {} (pid {pid}) {status}{cause} while running the job",
            self.role
        )
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// Consecutive early deaths.
    failures: u32,
    /// Not before this time may the slot's next worker be forked.
    respawn_at: Option<Instant>,
    /// Deaths the slot's processes were not asked for (for `status`).
    restarts: u32,
}

/// The supervisor's state. See the module doc.
#[derive(Debug)]
pub(crate) struct Supervisor {
    s: Settings,
    rng: XorShift,
    phase: Phase,
    target: usize,
    procs: BTreeMap<Serial, Life>,
    /// The worker slots' restart state, by index.
    slots: Vec<Slot>,
    /// The feeder's restart state (dispatch mode).
    feeder_slot: Slot,
    next_serial: Serial,
    /// The one recycling in progress: (old, replacement).
    recycling: Option<(Serial, Serial)>,
    started: bool,
    reloading: bool,
    stop_signal: Option<c_int>,
    stop_kind: Option<Shutdown>,
    spawned: u64,
    failures: u64,
    actions: Vec<Action>,
    /// Dispatch mode: which worker holds which job, and the feeder's
    /// credits.
    router: Option<Router>,
    /// Dispatch mode: the feeder process, once forked, where the router's
    /// messages for the feeder go.
    feeder_at: Option<Serial>,
    /// Pull mode: dead workers (pids) that may have left broker claims,
    /// for the next worker to be ready to take over.
    orphans: Vec<u32>,
    /// When `start` was called.
    started_at: Option<Instant>,
}

impl Supervisor {
    pub(crate) fn new(settings: Settings, rng: XorShift) -> Supervisor {
        let router = settings.feeder.then(|| match settings.dispatch_lookahead {
            Some(n) => Router::new(n),
            None => Router::adaptive(settings.workers),
        });
        Supervisor {
            target: settings.workers,
            s: settings,
            rng,
            phase: Phase::Starting,
            procs: BTreeMap::new(),
            slots: Vec::new(),
            feeder_slot: Slot::default(),
            next_serial: 1,
            recycling: None,
            started: false,
            reloading: false,
            stop_signal: None,
            stop_kind: None,
            spawned: 0,
            failures: 0,
            actions: Vec::new(),
            router,
            feeder_at: None,
            orphans: Vec::new(),
            started_at: None,
        }
    }

    /// Begins: forks the first workers.
    pub(crate) fn start(&mut self, now: Instant) {
        self.started_at = Some(now);
        self.actions.push(Action::Phase(Phase::Starting));
        self.reconcile(now);
    }

    /// Handles one event at `now`.
    pub(crate) fn handle(&mut self, now: Instant, event: Event) {
        match event {
            Event::Spawned { serial, pid } => self.spawned(now, serial, pid),
            Event::Message { serial, msg } => self.message(now, serial, msg),
            Event::ChannelFailed { serial, protocol } => self.channel_failed(now, serial, protocol),
            Event::Reaped { pid, status } => self.reaped(now, pid, status),
            Event::Signal(sig) => self.signal(now, sig),
            Event::Command(command) => self.command(now, command, None),
            Event::Tick => self.tick(now),
        }
        self.route(now);
    }

    /// Appends the actions decided since the last call to `into`, in
    /// order (both vectors keep their capacity: no allocation per job).
    pub(crate) fn drain_actions_into(&mut self, into: &mut Vec<Action>) {
        into.append(&mut self.actions);
    }

    /// The actions decided since the last call, in order.
    #[cfg(test)]
    pub(crate) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Turns what the router decided into sends: a job to its worker (the
    /// time noted for the adaptive lookahead), the rest to the feeder.
    fn route(&mut self, now: Instant) {
        let Some(router) = self.router.as_mut() else {
            return;
        };
        for route in router.drain_routes() {
            match route {
                Route::ToWorker(serial, job) => {
                    // A job handed out behind a running one starts when
                    // that one's report comes (see `finished`).
                    if let Some(p) = self.procs.get_mut(&serial)
                        && p.handed_at.is_none()
                    {
                        p.handed_at = Some(now);
                    }
                    let msg = Message::Job {
                        id: job.delivery,
                        payload: job.payload,
                        attempt: job.attempt,
                    };
                    self.actions.push(Action::Send(serial, msg));
                }
                Route::ToFeeder(msg) => match self.feeder_at {
                    Some(feeder) => self.actions.push(Action::Send(feeder, msg)),
                    None => tracing::warn!(kind = msg.kind(), "no feeder to tell: dropped"),
                },
            }
        }
    }

    /// `serial` is asked to stop or signalled: the router hands it no new
    /// job.
    fn closing(&mut self, serial: Serial) {
        if let Some(router) = self.router.as_mut() {
            router.worker_closing(serial);
        }
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The number of workers wanted now.
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// What the master knows of itself and every process, for the control
    /// socket's `status` (PSS as the workers last reported it: the loop
    /// reads fresher figures where it has the time).
    pub(crate) fn status(&self, now: Instant) -> Status {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let wall = SystemTime::now();
        let mut workers = Vec::new();
        let mut feeder = None;
        for (&serial, p) in &self.procs {
            let dispatched = self.router.as_ref().and_then(|r| r.job_of(serial));
            let activity = match &p.activity {
                Activity::Busy { what, since } => Some((what.clone(), *since)),
                Activity::Idle => None,
            };
            let job = match (dispatched, &activity) {
                (None, None) => None,
                (id, _) => Some(JobStatus {
                    id: id.map(str::to_owned),
                    activity: activity.as_ref().map(|(what, _)| what.clone()),
                    for_ms: match (id, p.handed_at, &activity) {
                        (Some(_), Some(at), _) => Some(ms(now.saturating_duration_since(at))),
                        (_, _, Some((_, since))) => {
                            Some(ms(wall.duration_since(*since).unwrap_or_default()))
                        }
                        _ => None,
                    },
                }),
            };
            let state = match p.state {
                State::Killed(_) => "killed",
                State::Stopping { .. } => "stopping",
                State::Live if !p.ready => "starting",
                State::Live if job.is_some() || p.handed_at.is_some() => "busy",
                State::Live => "idle",
            };
            let entry = ProcessStatus {
                slot: p.role.worker_index(),
                serial,
                pid: p.pid,
                state: state.to_owned(),
                uptime_ms: ms(now.saturating_duration_since(p.spawned_at)),
                job,
                jobs_finished: p.jobs_finished,
                restarts: self.slot_ref(p.role).map_or(0, |s| s.restarts),
                pss_bytes: p.pss,
            };
            match p.role {
                Role::Feeder => feeder = Some(entry),
                Role::Worker(_) => workers.push(entry),
            }
        }
        workers.sort_by_key(|w| (w.slot, w.serial));
        Status {
            name: self.s.name.clone(),
            pid: std::process::id(),
            phase: self.phase.to_string(),
            uptime_ms: ms(self
                .started_at
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))),
            mode: if self.router.is_some() {
                "dispatch"
            } else {
                "pull"
            }
            .to_owned(),
            target: self.target,
            spawned: self.spawned,
            failures: self.failures,
            queued: self.router.as_ref().map(Router::queued),
            workers,
            feeder,
        }
    }

    /// The number of worker processes alive (in any state).
    #[cfg(test)]
    pub(crate) fn process_count(&self) -> usize {
        self.procs.len()
    }

    /// Once stopped, what `run` reports.
    pub(crate) fn report(&self) -> Option<Report> {
        let shutdown = match self.phase {
            Phase::Stopped => self.stop_kind?,
            _ => return None,
        };
        Some(Report {
            shutdown,
            signal: self.stop_signal,
            spawned: self.spawned,
            failures: self.failures,
        })
    }

    /// The earliest time at which [`tick`](Supervisor::tick) has something
    /// to do, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for p in self.procs.values() {
            if let Some((t, _, _)) = &p.job_deadline
                && !matches!(p.state, State::Killed(_))
            {
                at(*t);
            }
            match p.state {
                State::Live => {
                    at(p.last_beat + self.s.timeout);
                    if p.recycle.is_none()
                        && let Some(t) = p.age_limit
                    {
                        at(t);
                    }
                    if p.ready && self.slot_failures(p.role) > 0 {
                        at(p.spawned_at + self.s.healthy_after);
                    }
                }
                State::Stopping { kill_at, quick } => {
                    at(kill_at);
                    if !quick {
                        at(p.last_beat + self.s.timeout);
                    }
                }
                State::Killed(_) => {}
            }
        }
        if !self.is_stopping() && self.slots.iter().any(|s| s.respawn_at.is_some()) {
            let occupied = self.slot_summary(|p| matches!(p.state, State::Live | State::Killed(_)));
            let recyclable = self.slot_summary(|p| p.state == State::Live && p.recycle.is_some());
            for (i, slot) in self.slots.iter().enumerate().take(self.target) {
                if let Some(t) = slot.respawn_at
                    && (!occupied[i] || (self.recycling.is_none() && recyclable[i]))
                {
                    at(t);
                }
            }
        }
        next
    }

    /// Handles the deadlines that have passed by `now`.
    fn tick(&mut self, now: Instant) {
        let timeout = self.s.timeout;
        let mut to_kill = Vec::new();
        let mut healthy = Vec::new();
        for (&serial, p) in self.procs.iter_mut() {
            if !matches!(p.state, State::Killed(_))
                && let Some((t, job, _)) = &p.job_deadline
                && *t <= now
            {
                tracing::error!(
                    worker = %p.role,
                    pid = p.pid,
                    job = %job,
                    "job {job} exceeded its hard time limit: SIGKILL"
                );
                to_kill.push((serial, Cause::TimeLimit));
                continue;
            }
            match p.state {
                State::Live | State::Stopping { quick: false, .. }
                    if p.last_beat + timeout <= now =>
                {
                    to_kill.push((serial, Cause::Hung));
                }
                State::Stopping { kill_at, .. } if kill_at <= now => {
                    to_kill.push((serial, Cause::TooSlowToStop));
                }
                State::Live => {
                    if p.recycle.is_none()
                        && let Some(t) = p.age_limit
                        && t <= now
                    {
                        tracing::info!(
                            worker = %p.role,
                            pid = p.pid,
                            "recycling: maximum age reached"
                        );
                        p.recycle = Some(Recycle::Age);
                    }
                    if p.ready && p.spawned_at + self.s.healthy_after <= now {
                        healthy.push(p.role);
                    }
                }
                _ => {}
            }
        }
        for role in healthy {
            if let Some(slot) = self.slot_mut(role)
                && slot.failures > 0
            {
                tracing::info!(
                    worker = %role,
                    "worker healthy again: restart backoff reset"
                );
                slot.failures = 0;
                slot.respawn_at = None;
            }
        }
        for (serial, cause) in to_kill {
            if cause == Cause::Hung {
                self.log_hung(serial, now);
            } else if cause == Cause::TimeLimit {
                // Logged above.
            } else if let Some(p) = self.procs.get(&serial) {
                tracing::warn!(
                    worker = %p.role,
                    pid = p.pid,
                    "worker did not stop in time: SIGKILL"
                );
            }
            self.kill(serial, cause);
        }
        self.reconcile(now);
    }

    fn log_hung(&self, serial: Serial, now: Instant) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        let silent = now.saturating_duration_since(p.last_beat);
        match &p.activity {
            Activity::Busy { what, since } => {
                let busy_for = SystemTime::now().duration_since(*since).unwrap_or_default();
                tracing::error!(
                    worker = %p.role,
                    pid = p.pid,
                    doing = %what,
                    busy_for = ?busy_for,
                    silent_for = ?silent,
                    timeout = ?self.s.timeout,
                    "worker missed its heartbeat timeout while busy with {what} for {busy_for:.1?}: SIGKILL"
                );
            }
            Activity::Idle => {
                tracing::error!(
                    worker = %p.role,
                    pid = p.pid,
                    ready = p.ready,
                    silent_for = ?silent,
                    timeout = ?self.s.timeout,
                    "worker missed its heartbeat timeout ({}, silent for {silent:.1?}): SIGKILL",
                    if p.ready { "last seen idle" } else { "still starting" }
                );
            }
        }
    }

    /// A signal from the self-pipe (CHLD is the loop's business: it reaps
    /// and hands in [`Event::Reaped`]).
    fn signal(&mut self, now: Instant, sig: c_int) {
        if sig == libc::SIGUSR2 {
            tracing::warn!("USR2 (binary upgrade) is not supported by this version; ignored");
            return;
        }
        tracing::info!(signal = signal_name(sig), "signal received");
        let command = match sig {
            libc::SIGQUIT => Command::Stop(Shutdown::Graceful),
            libc::SIGTERM if self.s.term_is_graceful => Command::Stop(Shutdown::Graceful),
            libc::SIGTERM | libc::SIGINT => Command::Stop(Shutdown::Quick),
            libc::SIGHUP => Command::Reload,
            libc::SIGWINCH => Command::Scale(0),
            libc::SIGTTIN => Command::Scale(self.target + 1),
            libc::SIGTTOU => Command::Scale(self.target.saturating_sub(1)),
            _ if self.is_stopping() => {
                tracing::debug!(signal = sig, "ignored while stopping");
                return;
            }
            libc::SIGUSR1 => {
                tracing::info!("USR1: reopening logs");
                self.actions.push(Action::ReopenMasterLogs);
                for (&serial, p) in &self.procs {
                    if matches!(p.state, State::Live | State::Stopping { quick: false, .. }) {
                        let msg = Message::Control(Control::ReopenLogs);
                        self.actions.push(Action::Send(serial, msg));
                    }
                }
                self.reconcile(now);
                return;
            }
            other => {
                tracing::debug!(signal = other, "signal ignored");
                self.reconcile(now);
                return;
            }
        };
        self.command(now, command, Some(sig));
    }

    /// Whether `command` would be carried out now: every command but a
    /// stop is ignored once the master is stopping.
    pub(crate) fn accepts(&self, command: Command) -> bool {
        matches!(command, Command::Stop(_)) || !self.is_stopping()
    }

    /// Carries out an operator's command, from `signal` or (`None`) from
    /// the control socket.
    fn command(&mut self, now: Instant, command: Command, signal: Option<c_int>) {
        let via = signal.map_or("control socket", signal_name);
        match command {
            Command::Stop(kind) => {
                if signal.is_none() {
                    tracing::info!(via, shutdown = %kind, "stop requested");
                }
                self.shutdown(now, kind, signal);
            }
            _ if self.is_stopping() => {
                tracing::debug!(via, ?command, "ignored while stopping");
            }
            Command::Reload => {
                if self.target == 0 {
                    self.target = self.s.workers;
                }
                let mut n = 0;
                for p in self.procs.values_mut() {
                    if p.state == State::Live && p.role != Role::Feeder {
                        p.recycle = Some(Recycle::Reload);
                        n += 1;
                    }
                }
                tracing::info!(
                    via,
                    workers = n,
                    "reload: replacing every worker, one at a time"
                );
                self.reloading = n > 0;
            }
            Command::Scale(n) => {
                let from = self.target;
                self.target = n.min(MAX_WORKERS);
                match signal {
                    Some(libc::SIGWINCH) => {
                        tracing::info!("WINCH: stopping every worker, the master stays")
                    }
                    _ => tracing::info!(
                        via,
                        from,
                        target = self.target,
                        "scaling to {} workers",
                        self.target
                    ),
                }
            }
        }
        self.reconcile(now);
    }

    fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping(_) | Phase::Stopped)
    }

    fn shutdown(&mut self, now: Instant, kind: Shutdown, signal: Option<c_int>) {
        let quick = kind != Shutdown::Graceful;
        match self.phase {
            Phase::Stopped => return,
            Phase::Stopping(Shutdown::Graceful) if quick => {}
            Phase::Stopping(_) => return,
            _ => {}
        }
        if self.stop_signal.is_none() {
            self.stop_signal = signal;
        }
        self.stop_kind = Some(kind);
        self.set_phase(Phase::Stopping(kind));
        self.recycling = None;
        let (grace, serials): (Duration, Vec<Serial>) = if quick {
            (self.s.kill_grace, self.procs.keys().copied().collect())
        } else {
            (
                self.s.graceful_timeout,
                self.procs.keys().copied().collect(),
            )
        };
        for serial in serials {
            let p = self.procs.get_mut(&serial).expect("known serial");
            match (p.state, quick) {
                (State::Live, false) if p.role == Role::Feeder => {}
                (State::Live, false) => {
                    p.state = State::Stopping {
                        kill_at: now + grace,
                        quick: false,
                    };
                    self.actions.push(stop(serial));
                    self.closing(serial);
                }
                (State::Live | State::Stopping { quick: false, .. }, true) => {
                    p.state = State::Stopping {
                        kill_at: now + grace,
                        quick: true,
                    };
                    if let Some(pid) = p.pid {
                        self.closing(serial);
                        self.actions.push(Action::Kill {
                            serial,
                            pid,
                            signal: libc::SIGTERM,
                        });
                    }
                }
                _ => {}
            }
        }
        self.check_finished(now);
    }

    fn check_finished(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Stopping(_)) {
            return;
        }
        // The feeder goes last: the workers' reports go through it.
        if self.procs.values().all(|p| p.role == Role::Feeder) {
            let feeders: Vec<Serial> = self
                .procs
                .iter()
                .filter(|(_, p)| p.state == State::Live)
                .map(|(&s, _)| s)
                .collect();
            for serial in feeders {
                self.stop_gracefully(now, serial);
            }
        }
        if self.procs.is_empty() {
            self.set_phase(Phase::Stopped);
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.actions.push(Action::Phase(phase));
            if matches!(phase, Phase::Stopping(_))
                && let Some(router) = self.router.as_mut()
            {
                router.stop_fetching();
            }
        }
    }

    fn kill(&mut self, serial: Serial, cause: Cause) {
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        if matches!(p.state, State::Killed(_)) {
            return;
        }
        p.state = State::Killed(cause);
        if let Some(pid) = p.pid {
            self.closing(serial);
            self.actions.push(Action::Kill {
                serial,
                pid,
                signal: libc::SIGKILL,
            });
        }
    }

    /// The loop forked the worker `serial` (or failed to: `pid` is None).
    fn spawned(&mut self, now: Instant, serial: Serial, pid: Option<i32>) {
        match pid {
            Some(pid) => {
                if let Some(p) = self.procs.get_mut(&serial) {
                    p.pid = Some(pid);
                    p.spawned_at = now;
                    p.last_beat = now;
                    if p.role == Role::Feeder {
                        self.feeder_at = Some(serial);
                    }
                }
            }
            None => {
                if let Some(p) = self.procs.remove(&serial) {
                    self.failures += 1;
                    self.note_failure(now, p.role, true);
                    if self.recycling.is_some_and(|(_, new)| new == serial) {
                        self.recycling = None;
                    }
                }
                self.reconcile(now);
            }
        }
    }

    /// A message from `serial`: liveness and progress for the supervisor,
    /// jobs and reports for the router.
    fn message(&mut self, now: Instant, serial: Serial, msg: Message) {
        match msg {
            Message::Ready { .. } => {
                self.ready(now, serial);
                self.ready_for_work(serial);
            }
            Message::Heartbeat(Progress::Idle) => self.beat(now, serial, Activity::Idle),
            Message::Heartbeat(Progress::Busy { job, since_unix_ms }) => {
                let since = UNIX_EPOCH + Duration::from_millis(since_unix_ms);
                let since = since.min(SystemTime::now());
                self.beat(now, serial, Activity::Busy { what: job, since });
            }
            Message::Stats(s) => {
                self.stats(now, serial, s.pss_bytes, s.iterations, s.jobs_finished)
            }
            Message::Deadline { id, in_ms } => self.job_deadline(now, serial, id, in_ms),
            Message::Job {
                id,
                payload,
                attempt,
            } if self.feeder_at == Some(serial) => {
                self.alive(now, serial);
                if let Some(router) = self.router.as_mut() {
                    router.job_from_feeder(Job::new(id, payload, attempt));
                }
            }
            report @ Message::Finished { .. } => self.finished(now, serial, report),
            other => {
                if matches!(other, Message::Job { .. }) {
                    tracing::warn!(serial, "a job frame from a worker: ignored");
                }
                self.alive(now, serial)
            }
        }
    }

    /// `serial` said it is ready (again, perhaps): in dispatch mode the
    /// router hears of a feeder, or of a live worker that can take a job;
    /// in pull mode a live worker (usually a dead one's replacement, the
    /// first up) takes over the claims dead workers left.
    fn ready_for_work(&mut self, serial: Serial) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        let live = p.state == State::Live;
        match self.router.as_mut() {
            Some(router) if p.role == Role::Feeder => router.feeder_ready(),
            Some(router) if live => router.worker_ready(serial),
            None if live => {
                for pid in self.orphans.drain(..) {
                    tracing::debug!(pid, serial, "a new worker takes over a dead one's claims");
                    let msg = Message::Orphaned {
                        pid,
                        ids: Vec::new(),
                    };
                    self.actions.push(Action::Send(serial, msg));
                }
            }
            _ => {}
        }
    }

    /// `serial` reported the end of its job (`report`, a `Finished`
    /// message): its hard time limit is cleared, and in dispatch mode the
    /// report goes to the feeder and the run time to the lookahead.
    fn finished(&mut self, now: Instant, serial: Serial, report: Message) {
        let handed_at = self.procs.get_mut(&serial).and_then(|p| {
            p.last_beat = now;
            p.job_deadline = None;
            p.handed_at.take()
        });
        let Some(router) = self.router.as_mut() else {
            return;
        };
        if let Some(t) = handed_at {
            router.observe(now.saturating_duration_since(t));
        }
        if !router.worker_finished(serial, report) {
            tracing::warn!(serial, "a worker reported a job it was not given");
        }
        // The job waiting behind it starts now.
        if router.holds_a_job(serial)
            && let Some(p) = self.procs.get_mut(&serial)
        {
            p.handed_at = Some(now);
        }
    }

    /// The worker said it is ready.
    fn ready(&mut self, now: Instant, serial: Serial) {
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        p.last_beat = now;
        if p.ready {
            return;
        }
        p.ready = true;
        let role = if p.role == Role::Feeder {
            "feeder"
        } else {
            "worker"
        };
        tracing::info!(worker = %p.role, pid = p.pid, started_in = ?now.saturating_duration_since(p.spawned_at), "{role} ready");
        if let Some(old) = p.replaces
            && p.state == State::Live
            && self.recycling == Some((old, serial))
        {
            self.stop_gracefully(now, old);
        }
        self.reconcile(now);
    }

    /// The worker sent a heartbeat.
    fn beat(&mut self, now: Instant, serial: Serial, activity: Activity) {
        if let Some(p) = self.procs.get_mut(&serial) {
            p.last_beat = now;
            p.activity = activity;
        }
    }

    /// The worker sent some other message: it is alive.
    fn alive(&mut self, now: Instant, serial: Serial) {
        if let Some(p) = self.procs.get_mut(&serial) {
            p.last_beat = now;
        }
    }

    /// The worker reported its memory (PSS, bytes) and iteration count.
    fn stats(
        &mut self,
        now: Instant,
        serial: Serial,
        pss: u64,
        iterations: u64,
        jobs_finished: u64,
    ) {
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        p.last_beat = now;
        p.jobs_finished = jobs_finished;
        // 0: the worker could not read it.
        p.pss = (pss > 0).then_some(pss).or(p.pss);
        if p.state != State::Live || p.recycle.is_some() {
            return;
        }
        if let Some(max) = self.s.max_memory
            && pss > max
        {
            tracing::warn!(
                worker = %p.role,
                pid = p.pid,
                pss,
                max,
                "recycling: memory limit exceeded"
            );
            p.recycle = Some(Recycle::Memory);
        } else if let Some(limit) = p.iteration_limit
            && iterations >= limit
        {
            tracing::info!(
                worker = %p.role,
                pid = p.pid,
                iterations,
                "recycling: iteration limit reached"
            );
            p.recycle = Some(Recycle::Iterations);
        }
        self.reconcile(now);
    }

    /// The worker's channel failed: closed (`protocol == false`) or
    /// garbage (`protocol == true`). Either way it cannot be supervised.
    fn channel_failed(&mut self, now: Instant, serial: Serial, protocol: bool) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        match p.state {
            State::Live => {
                if protocol {
                    tracing::error!(
                        worker = %p.role,
                        pid = p.pid,
                        "worker broke the channel protocol: SIGKILL"
                    );
                    self.kill(serial, Cause::Protocol);
                } else {
                    tracing::warn!(worker = %p.role, pid = p.pid, "worker closed its channel");
                    self.kill(serial, Cause::Unexpected);
                }
            }
            State::Stopping { .. } if protocol => self.kill(serial, Cause::Protocol),
            _ => {}
        }
        self.reconcile(now);
    }

    /// The worker set (`in_ms > 0`) or cleared a job's hard time limit.
    fn job_deadline(&mut self, now: Instant, serial: Serial, job: String, in_ms: u64) {
        if let Some(p) = self.procs.get_mut(&serial) {
            p.last_beat = now;
            p.job_deadline = (in_ms > 0).then(|| (now + Duration::from_millis(in_ms), job, in_ms));
        }
    }

    /// A child was reaped (one of the hooks' children, not a worker, when
    /// `pid` is none of ours).
    fn reaped(&mut self, now: Instant, pid: i32, status: ExitStatus) {
        let Some((&serial, _)) = self.procs.iter().find(|(_, p)| p.pid == Some(pid)) else {
            tracing::debug!(pid, %status, "reaped a child that is not a worker");
            return;
        };
        let p = self.procs.remove(&serial).expect("found above");
        self.left_behind(serial, pid, status, &p);
        let cause = match p.state {
            State::Live => Cause::Unexpected,
            State::Stopping { .. } => Cause::Requested,
            State::Killed(cause) => cause,
        };
        let uptime = now.saturating_duration_since(p.spawned_at);
        let exit = WorkerExit {
            role: p.role,
            serial,
            pid,
            status,
            cause,
            uptime,
        };
        let role = if p.role == Role::Feeder {
            "feeder"
        } else {
            "worker"
        };
        if cause == Cause::Requested {
            tracing::info!(worker = %p.role, pid, %status, jobs_finished = p.jobs_finished, "{role} exited");
        } else {
            tracing::warn!(worker = %p.role, pid, %status, %cause, uptime = ?uptime, jobs_finished = p.jobs_finished, "{role} died");
        }
        self.actions.push(Action::Exited(exit));
        if let Some((old, new)) = self.recycling
            && (serial == old || serial == new)
        {
            self.recycling = None;
        }
        if cause != Cause::Requested {
            self.slot(p.role).restarts += 1;
            self.failures += 1;
            if !self.is_stopping() {
                // A job past its hard time limit failed, not the slot: it
                // is restarted at once and never counts towards giving up.
                let early =
                    cause != Cause::TimeLimit && (!p.ready || uptime < self.s.healthy_after);
                self.note_failure(now, p.role, early);
            }
        }
        self.reconcile(now);
    }

    /// What the death of `p` (process `pid`) leaves to settle. Dispatch
    /// mode: a dead feeder's claims go to the next feeder (the router
    /// tells it), a dead worker's job is lost (the feeder is told why).
    /// Pull mode: a worker that did not stop cleanly may have left broker
    /// claims, which the next worker to be ready takes over.
    fn left_behind(&mut self, serial: Serial, pid: i32, status: ExitStatus, p: &Life) {
        let clean = status == ExitStatus::Exited(0);
        let orphaned = u32::try_from(pid).ok().filter(|_| !clean);
        let Some(router) = self.router.as_mut() else {
            self.orphans.extend(orphaned);
            return;
        };
        if p.role == Role::Feeder {
            self.feeder_at = None;
            let dropped = router.feeder_gone(orphaned);
            if dropped == 0 && clean {
                tracing::debug!(pid, "the feeder stopped");
            } else {
                tracing::warn!(pid, %status, dropped, "feeder gone: the next feeder takes its claims over");
            }
            return;
        }
        if let Some(job) = router.worker_gone(serial, &p.lost_reason(pid, status)) {
            tracing::warn!(
                worker = %p.role,
                pid,
                job = %job,
                %status,
                "worker {} (pid {pid}) {status} holding job {job}: released to the feeder as a failed attempt",
                p.role
            );
        }
    }

    fn slot(&mut self, role: Role) -> &mut Slot {
        match role {
            Role::Worker(index) => {
                if self.slots.len() <= index {
                    self.slots.resize(index + 1, Slot::default());
                }
                &mut self.slots[index]
            }
            Role::Feeder => &mut self.feeder_slot,
        }
    }

    fn slot_mut(&mut self, role: Role) -> Option<&mut Slot> {
        match role {
            Role::Worker(index) => self.slots.get_mut(index),
            Role::Feeder => Some(&mut self.feeder_slot),
        }
    }

    fn slot_ref(&self, role: Role) -> Option<&Slot> {
        match role {
            Role::Worker(index) => self.slots.get(index),
            Role::Feeder => Some(&self.feeder_slot),
        }
    }

    fn slot_failures(&self, role: Role) -> u32 {
        self.slot_ref(role).map_or(0, |s| s.failures)
    }

    fn note_failure(&mut self, now: Instant, role: Role, early: bool) {
        let (initial, max) = (self.s.backoff_initial, self.s.backoff_max);
        let failures = if early {
            self.slot(role).failures.saturating_add(1)
        } else {
            0
        };
        let delay = backoff(failures, initial, max, &mut self.rng);
        let slot = self.slot(role);
        slot.failures = failures;
        slot.respawn_at = (failures > 0).then(|| now + delay);
        if failures > 0 {
            tracing::warn!(worker = %role, failures, delay = ?delay, "worker died early: restart after backoff");
        }
        let limit = self.s.crash_limit;
        if role == Role::Feeder && failures >= limit {
            tracing::error!(
                crash_limit = limit,
                "the feeder died early {limit} times in a row: giving up"
            );
            self.shutdown(now, Shutdown::CrashLoop, None);
            return;
        }
        if self.target > 0
            && (0..self.target).all(|i| self.slots.get(i).is_some_and(|s| s.failures >= limit))
        {
            tracing::error!(
                crash_limit = limit,
                "every worker slot died early {limit} times in a row: giving up"
            );
            self.shutdown(now, Shutdown::CrashLoop, None);
        }
    }

    /// For each slot below the target, whether some process of it matches.
    fn slot_summary(&self, matches: impl Fn(&Life) -> bool) -> Vec<bool> {
        let mut out = vec![false; self.target];
        for p in self.procs.values() {
            if let Role::Worker(i) = p.role
                && i < self.target
                && matches(p)
            {
                out[i] = true;
            }
        }
        out
    }

    fn stop_gracefully(&mut self, now: Instant, serial: Serial) {
        let kill_at = now + self.s.graceful_timeout;
        if let Some(p) = self.procs.get_mut(&serial)
            && p.state == State::Live
        {
            p.state = State::Stopping {
                kill_at,
                quick: false,
            };
            self.actions.push(stop(serial));
            self.closing(serial);
        }
    }

    fn spawn(&mut self, now: Instant, role: Role, replaces: Option<Serial>) -> Serial {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.spawned += 1;
        let iteration_limit = self
            .s
            .max_iterations
            .map(|n| jittered_count(n, self.s.recycle_jitter, &mut self.rng));
        let age_limit = self
            .s
            .max_age
            .map(|a| now + jittered_duration(a, self.s.recycle_jitter, &mut self.rng));
        self.slot(role).respawn_at = None;
        self.procs.insert(
            serial,
            Life {
                role,
                pid: None,
                spawned_at: now,
                ready: false,
                last_beat: now,
                activity: Activity::Idle,
                state: State::Live,
                recycle: None,
                age_limit,
                iteration_limit,
                replaces,
                job_deadline: None,
                handed_at: None,
                jobs_finished: 0,
                pss: None,
            },
        );
        self.actions.push(Action::Spawn {
            serial,
            role,
            iteration_limit,
        });
        serial
    }

    /// Brings the processes in line with what is wanted: scale down, fill
    /// empty slots, start the next recycling, update the phase.
    fn reconcile(&mut self, now: Instant) {
        if self.is_stopping() {
            self.check_finished(now);
            return;
        }
        // Scale down: the highest slots go first (TTOU, WINCH).
        let extra: Vec<Serial> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.state == State::Live && matches!(p.role, Role::Worker(i) if i >= self.target)
            })
            .map(|(&s, _)| s)
            .collect();
        for serial in extra {
            self.stop_gracefully(now, serial);
        }
        // Fill the empty slots whose backoff has passed (one pass over the
        // processes, not one per slot: this runs on every loop turn).
        let occupied = self.slot_summary(|p| matches!(p.state, State::Live | State::Killed(_)));
        for (index, occupied) in occupied.into_iter().enumerate() {
            if !occupied
                && self
                    .slots
                    .get(index)
                    .and_then(|s| s.respawn_at)
                    .is_none_or(|t| t <= now)
            {
                self.spawn(now, Role::Worker(index), None);
            }
        }
        // The feeder, in dispatch mode.
        if self.s.feeder
            && !self.procs.values().any(|p| {
                p.role == Role::Feeder && matches!(p.state, State::Live | State::Killed(_))
            })
            && self.feeder_slot.respawn_at.is_none_or(|t| t <= now)
        {
            self.spawn(now, Role::Feeder, None);
        }
        // One recycling at a time: the replacement is forked now, the old
        // worker is asked to stop once the replacement is ready.
        if self.recycling.is_none() {
            let candidate = self
                .procs
                .iter()
                .filter(|(_, p)| {
                    p.state == State::Live
                        && p.ready
                        && p.recycle.is_some()
                        && matches!(p.role, Role::Worker(i) if i < self.target)
                })
                .filter(|(_, p)| {
                    self.slot_ref(p.role)
                        .and_then(|s| s.respawn_at)
                        .is_none_or(|t| t <= now)
                })
                .map(|(&s, p)| (s, p.role, p.recycle))
                .next();
            if let Some((old, role, why)) = candidate {
                tracing::info!(
                    worker = %role,
                    reason = why.map(Recycle::as_str),
                    "recycling: forking a replacement"
                );
                let new = self.spawn(now, role, Some(old));
                self.recycling = Some((old, new));
            }
        }
        // The phase.
        if self.reloading
            && self.recycling.is_none()
            && !self
                .procs
                .values()
                .any(|p| p.state == State::Live && p.recycle == Some(Recycle::Reload))
        {
            self.reloading = false;
            tracing::info!("HUP: every worker replaced");
        }
        let all_ready = self.started
            || self
                .slot_summary(|p| p.state == State::Live && p.ready)
                .iter()
                .all(|ready| *ready);
        if all_ready {
            self.started = true;
        }
        let phase = if self.target == 0 {
            Phase::Paused
        } else if self.reloading {
            Phase::Reloading
        } else if !self.started {
            Phase::Starting
        } else {
            Phase::Running
        };
        self.set_phase(phase);
    }
}

/// The message that asks `serial` to stop.
fn stop(serial: Serial) -> Action {
    Action::Send(serial, Message::Control(Control::Stop))
}

/// The conventional name of a signal, for logs.
pub(crate) fn signal_name(sig: c_int) -> &'static str {
    match sig {
        libc::SIGHUP => "HUP",
        libc::SIGINT => "INT",
        libc::SIGQUIT => "QUIT",
        libc::SIGKILL => "KILL",
        libc::SIGUSR1 => "USR1",
        libc::SIGUSR2 => "USR2",
        libc::SIGTERM => "TERM",
        libc::SIGCHLD => "CHLD",
        libc::SIGTTIN => "TTIN",
        libc::SIGTTOU => "TTOU",
        libc::SIGWINCH => "WINCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests;
