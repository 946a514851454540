//! Dispatch mode's routing, as a pure state machine (Narwhal's): which
//! worker holds which job, how many jobs to ask the feeder for, and what
//! to tell the feeder when a worker dies. No socket here: the supervisor
//! (`supervisor.rs`) tells it what concerns it and turns its [`Route`]s
//! into the sends the loop in `master.rs` carries out.
//!
//! The three states of Narwhal's master fall out of two numbers:
//! - *wait for a client* (every worker busy): no idle worker, so no credit
//!   is given and jobs from the feeder wait in the queue;
//! - *wait for a message* (workers idle, queue empty): the feeder holds
//!   `idle + lookahead - queued` credits and the loop sleeps on the sockets;
//! - *running*: a job and an idle worker meet, the job goes out at once.
//!
//! Lookahead: the feeder is asked for up to `lookahead` jobs beyond one per
//! idle worker, so while every worker is busy up to `lookahead` jobs wait
//! in the queue, and a worker that finishes is handed the next one in the
//! same loop turn, before its report goes to the feeder: the feeder's
//! round trip to the broker is off the critical path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prefork_heartbeat::Message;

use crate::feeder::Job;
use crate::supervisor::Serial;

/// Something the loop must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Hand this job to this worker.
    ToWorker(Serial, Job),
    /// Tell the feeder: `Want` (credits), a worker's `Finished` report
    /// (relayed unread), `Release` (an unstarted job, no attempt counted),
    /// `Lost` (its worker died: a failed attempt), `Orphaned` (the feeder
    /// `pid` died: take its claims over, and hold `ids`, still running on
    /// workers or finished with their report to follow, rather than hand
    /// them out).
    ToFeeder(Message),
}

impl Route {
    fn is_for_feeder(&self) -> bool {
        matches!(self, Route::ToFeeder(_))
    }

    /// The job a report to the feeder is about.
    fn report_id(&self) -> Option<&str> {
        match self {
            Route::ToFeeder(
                Message::Finished { id, .. } | Message::Release { id } | Message::Lost { id, .. },
            ) => Some(id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// The jobs handed to the worker, in order: the first runs, the others
    /// wait in its socket (at most `depth` in all).
    jobs: VecDeque<String>,
    accepting: bool,
}

/// The router's state. See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Router {
    workers: BTreeMap<Serial, Slot>,
    /// Workers ready, accepting and holding no job.
    idle: BTreeSet<Serial>,
    /// Workers ready, accepting, running a job and with room for one more
    /// (`depth` 2 only).
    spare: BTreeSet<Serial>,
    /// How many jobs a worker holds at most: 1, or 2 while the adaptive
    /// lookahead sees quick jobs (the next one waits in the worker's socket,
    /// so the master's hop is off the worker's path).
    depth: usize,
    /// Jobs from the feeder not yet handed out.
    queue: VecDeque<Job>,
    /// Credits given to the feeder and not yet used.
    asked: usize,
    /// Jobs asked for beyond one per idle worker (now).
    lookahead: usize,
    /// Set: the lookahead follows the jobs' run time (see `observe`).
    adaptive: Option<Adaptive>,
    feeder_ready: bool,
    stopped: bool,
    /// Messages for the feeder while there is none (it died): delivered to
    /// the next one.
    held: Vec<Route>,
    /// The last reports sent to the feeder: one that dies may not have
    /// read them, so they go to the next one as well (see `feeder_gone`).
    sent: VecDeque<Route>,
    out: Vec<Route>,
}

/// The adaptive lookahead keeps about this much work waiting in the
/// master, across the pool: enough that quick jobs go out in batches (one
/// feeder wake-up and one broker round trip for several), little enough
/// that slow ones are taken from the broker only as workers free up (other
/// pools on the same queue are not starved).
const LOOKAHEAD_WINDOW_US: f64 = 10_000.0;

/// The adaptive lookahead's cap, per worker.
const LOOKAHEAD_PER_WORKER: usize = 8;

/// The adaptive router hands a worker its next job while it runs one
/// (depth 2) when jobs take less than this on average: a slow job then
/// holds back at most one quick one, and a quick one saves a round trip
/// through the master per job.
const DEPTH2_BELOW_US: f64 = 1_000.0;

#[derive(Debug)]
struct Adaptive {
    workers: usize,
    /// Smoothed hand-out-to-report time of a job, in µs.
    mean_us: f64,
}

/// How many of the last reports sent to the feeder are kept to be sent
/// again to the next feeder when it dies (a feeder reads its inbox every
/// few ms: a dead one left at most a few turns' worth unread).
const RESEND_REPORTS: usize = 1024;

impl Router {
    /// A router that asks the feeder for up to `lookahead` jobs beyond one
    /// per idle worker.
    pub(crate) fn new(lookahead: usize) -> Router {
        Router {
            lookahead,
            depth: 1,
            ..Router::default()
        }
    }

    /// A router whose lookahead follows the jobs' run time
    /// ([`observe`](Router::observe)): about 10 ms of work for the pool
    /// of `workers`, from 0 (slow jobs: fetched only for an idle worker)
    /// to 8 per worker (quick ones). It starts at one per worker.
    pub(crate) fn adaptive(workers: usize) -> Router {
        Router {
            lookahead: workers,
            depth: 1,
            adaptive: Some(Adaptive {
                workers,
                mean_us: LOOKAHEAD_WINDOW_US / workers.max(1) as f64,
            }),
            ..Router::default()
        }
    }

    /// A job took `ran` from hand-out to report: the adaptive lookahead
    /// moves toward what fits the window.
    pub(crate) fn observe(&mut self, ran: std::time::Duration) {
        if let Some(a) = self.adaptive.as_mut() {
            a.mean_us = 0.8 * a.mean_us + 0.2 * ran.as_micros() as f64;
            let fit = LOOKAHEAD_WINDOW_US * a.workers as f64 / a.mean_us.max(1.0);
            self.lookahead = (fit as usize).min(LOOKAHEAD_PER_WORKER * a.workers);
            let depth = if a.mean_us < DEPTH2_BELOW_US { 2 } else { 1 };
            if depth != self.depth {
                self.depth = depth;
                self.spare = self
                    .workers
                    .iter()
                    .filter(|(_, w)| w.accepting && w.jobs.len() == 1 && depth == 2)
                    .map(|(&s, _)| s)
                    .collect();
            }
            self.pump();
        }
    }

    /// How many jobs a worker may hold now.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// The lookahead in effect.
    #[cfg(test)]
    pub(crate) fn lookahead(&self) -> usize {
        self.lookahead
    }

    /// The routes decided since the last call, in order.
    #[cfg(test)]
    pub(crate) fn take_routes(&mut self) -> Vec<Route> {
        std::mem::take(&mut self.out)
    }

    /// The routes decided since the last call, in order (the buffer keeps
    /// its capacity: no allocation per job).
    pub(crate) fn drain_routes(&mut self) -> std::vec::Drain<'_, Route> {
        self.out.drain(..)
    }

    /// The job `serial` runs, if any.
    pub(crate) fn job_of(&self, serial: Serial) -> Option<&str> {
        self.workers.get(&serial)?.jobs.front().map(String::as_str)
    }

    /// Whether `serial` holds a job (running, or waiting behind one).
    pub(crate) fn holds_a_job(&self, serial: Serial) -> bool {
        self.workers
            .get(&serial)
            .is_some_and(|w| !w.jobs.is_empty())
    }

    /// Jobs waiting for a worker.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A worker said it is ready: it can take a job.
    pub(crate) fn worker_ready(&mut self, serial: Serial) {
        let slot = self.workers.entry(serial).or_default();
        if slot.jobs.is_empty() {
            slot.accepting = true;
            self.idle.insert(serial);
        }
        self.pump();
    }

    /// The worker was asked to stop (or is being killed): no new job for it.
    pub(crate) fn worker_closing(&mut self, serial: Serial) {
        if let Some(slot) = self.workers.get_mut(&serial) {
            slot.accepting = false;
            self.idle.remove(&serial);
            self.spare.remove(&serial);
        }
    }

    /// The worker is gone. Returns the job it was running, which the
    /// feeder is told about at once (`Lost`, with `reason`); a job waiting
    /// behind it never started, and is given back (`Release`). (Its channel
    /// was read to the end first: a report it sent is already counted.)
    pub(crate) fn worker_gone(&mut self, serial: Serial, reason: &str) -> Option<String> {
        self.idle.remove(&serial);
        self.spare.remove(&serial);
        let mut jobs = self.workers.remove(&serial)?.jobs;
        let running = jobs.pop_front();
        if let Some(id) = &running {
            self.emit(Route::ToFeeder(Message::Lost {
                id: id.clone(),
                reason: reason.to_owned(),
            }));
        }
        for id in jobs {
            self.emit(Route::ToFeeder(Message::Release { id }));
        }
        self.pump();
        running
    }

    /// A worker reported the end of its job (`report` is its `Finished`
    /// message, forwarded to the feeder unread). Returns false when the
    /// worker did not hold that job (the report is forwarded anyway: the
    /// feeder settles what it knows).
    pub(crate) fn worker_finished(&mut self, serial: Serial, report: Message) -> bool {
        let Message::Finished { id, .. } = &report else {
            return false;
        };
        let held = match self.workers.get_mut(&serial) {
            Some(slot) if slot.jobs.front() == Some(id) => {
                slot.jobs.pop_front();
                if slot.accepting {
                    if slot.jobs.is_empty() {
                        self.spare.remove(&serial);
                        self.idle.insert(serial);
                    } else if self.depth > slot.jobs.len() {
                        self.spare.insert(serial);
                    }
                }
                true
            }
            _ => false,
        };
        // The worker's next job first, then the report: the worker starts
        // while the feeder settles.
        self.hand_out();
        self.emit(Route::ToFeeder(report));
        self.top_up();
        held
    }

    /// The feeder sent a job.
    pub(crate) fn job_from_feeder(&mut self, job: Job) {
        self.asked = self.asked.saturating_sub(1);
        if self.stopped {
            self.emit(Route::ToFeeder(Message::Release { id: job.delivery }));
            return;
        }
        self.queue.push_back(job);
        self.pump();
    }

    /// A (new) feeder is ready: it holds no credit yet, and gets what was
    /// held for it while there was none.
    pub(crate) fn feeder_ready(&mut self) {
        self.feeder_ready = true;
        self.asked = 0;
        for route in std::mem::take(&mut self.held) {
            self.remember(&route);
            self.out.push(route);
        }
        self.pump();
    }

    /// The feeder (process `pid`) died. Its unused credits die with it,
    /// and the jobs it sent that no worker has started are dropped here
    /// (they are its claims: the next feeder takes them over and hands
    /// them out again). The next feeder is told, before anything else that
    /// follows, which of the dead one's jobs still run on workers
    /// (`Orphaned`). `pid` is `None` for a feeder that stopped
    /// cleanly (it gave its claims back). Returns how many were dropped.
    pub(crate) fn feeder_gone(&mut self, pid: Option<u32>) -> usize {
        self.feeder_ready = false;
        self.asked = 0;
        let dropped = self.queue.len();
        let sent = std::mem::take(&mut self.sent);
        if let Some(pid) = pid {
            let running: Vec<String> = self
                .workers
                .values()
                .flat_map(|slot| slot.jobs.iter().cloned())
                .collect();
            // The reports the dead feeder may not have settled go to the
            // next, after the adoption that lets it settle them. A report
            // about a job handed out again since (the same delivery id,
            // running or queued) is stale: dropped.
            let again: BTreeSet<&str> = running
                .iter()
                .map(String::as_str)
                .chain(self.queue.iter().map(|j| j.delivery.as_str()))
                .collect();
            let resend: Vec<Route> = sent
                .into_iter()
                .filter(|r| r.report_id().is_some_and(|id| !again.contains(id)))
                .collect();
            // What the next feeder must hold rather than hand out: the
            // jobs still running, and those whose report follows (finished,
            // perhaps not settled).
            let mut hold: Vec<String> = running;
            let mut seen: BTreeSet<String> = hold.iter().cloned().collect();
            for r in &resend {
                if let Some(id) = r.report_id()
                    && seen.insert(id.to_owned())
                {
                    hold.push(id.to_owned());
                }
            }
            self.emit(Route::ToFeeder(Message::Orphaned { pid, ids: hold }));
            for route in resend {
                self.emit(route);
            }
        }
        self.queue.clear();
        dropped
    }

    /// Shutdown: no more fetching; the jobs no worker has started go back
    /// to the broker.
    pub(crate) fn stop_fetching(&mut self) {
        self.stopped = true;
        while let Some(job) = self.queue.pop_front() {
            self.emit(Route::ToFeeder(Message::Release { id: job.delivery }));
        }
    }

    fn emit(&mut self, route: Route) {
        if route.is_for_feeder() && !self.feeder_ready {
            self.held.push(route);
        } else {
            self.remember(&route);
            self.out.push(route);
        }
    }

    /// Keeps a report sent to the feeder among the last `RESEND_REPORTS`.
    fn remember(&mut self, route: &Route) {
        if route.report_id().is_some() {
            if self.sent.len() == RESEND_REPORTS {
                self.sent.pop_front();
            }
            self.sent.push_back(route.clone());
        }
    }

    /// Hands queued jobs to idle workers, then tops the feeder's credits up.
    fn pump(&mut self) {
        self.hand_out();
        self.top_up();
    }

    /// Hands queued jobs to idle workers, oldest job first, then (depth 2)
    /// to workers with room for the next one.
    fn hand_out(&mut self) {
        while !self.queue.is_empty() {
            let Some(serial) = self.idle.pop_first().or_else(|| self.spare.pop_first()) else {
                break;
            };
            let job = self.queue.pop_front().expect("not empty");
            let slot = self
                .workers
                .get_mut(&serial)
                .expect("idle workers are known");
            slot.jobs.push_back(job.delivery.clone());
            if slot.jobs.len() < self.depth {
                self.spare.insert(serial);
            }
            self.out.push(Route::ToWorker(serial, job));
        }
    }

    /// Room for jobs in the workers: one per idle worker, plus (depth 2) one
    /// per worker with a spare place.
    fn room(&self) -> usize {
        self.idle.len() + self.spare.len()
    }

    /// Tops the feeder's credits up so that credits + queued jobs reach
    /// idle workers + lookahead.
    /// Credits for the lookahead go out in chunks of half of it (fewer,
    /// bigger fetches); credits an idle worker needs go out at once.
    fn top_up(&mut self) {
        if self.feeder_ready && !self.stopped {
            let have = self.queue.len() + self.asked;
            let want = (self.room() + self.lookahead).saturating_sub(have);
            if want > 0 && (have < self.idle.len() || want >= self.chunk()) {
                self.asked += want;
                let n = u32::try_from(want).unwrap_or(u32::MAX);
                self.out.push(Route::ToFeeder(Message::Want { n }));
            }
        }
    }

    /// The smallest lookahead top-up sent on its own.
    fn chunk(&self) -> usize {
        (self.lookahead / 2).max(1)
    }

    /// Credits given and not used, jobs queued, idle workers (for tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        (self.asked, self.queue.len(), self.room())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn want(n: u32) -> Route {
        Route::ToFeeder(Message::Want { n })
    }

    fn done(id: String) -> Message {
        Message::Finished {
            id,
            report: Vec::new(),
        }
    }

    fn to_feeder(m: Message) -> Route {
        Route::ToFeeder(m)
    }

    fn release(id: String) -> Route {
        Route::ToFeeder(Message::Release { id })
    }

    fn lost(id: String, reason: String) -> Route {
        Route::ToFeeder(Message::Lost { id, reason })
    }

    fn orphaned(pid: u32, ids: Vec<String>) -> Route {
        Route::ToFeeder(Message::Orphaned { pid, ids })
    }

    fn job(n: u64) -> Job {
        Job::new(format!("j{n}"), vec![], 1)
    }

    #[test]
    fn asks_for_one_job_per_idle_worker_and_hands_it_out() {
        let mut r = Router::new(0);
        r.feeder_ready();
        r.worker_ready(1);
        r.worker_ready(2);
        assert_eq!(r.take_routes(), [want(1), want(1)]);
        r.job_from_feeder(job(1));
        assert_eq!(r.take_routes(), [Route::ToWorker(1, job(1))]);
        assert_eq!(r.job_of(1), Some("j1"));
        assert!(r.worker_finished(1, done("j1".into())));
        assert_eq!(
            r.take_routes(),
            [to_feeder(done("j1".into())), want(1)],
            "one credit is still out, for worker 2"
        );
    }

    #[test]
    fn lookahead_keeps_the_next_job_waiting_and_hands_it_out_before_the_report() {
        let mut r = Router::new(1);
        r.feeder_ready();
        r.worker_ready(1);
        assert_eq!(r.take_routes(), [want(1), want(1)]);
        r.job_from_feeder(job(1));
        r.job_from_feeder(job(2));
        assert_eq!(r.take_routes(), [Route::ToWorker(1, job(1))]);
        assert_eq!(r.queued(), 1, "the second job waits for worker 1");
        assert!(r.worker_finished(1, done("j1".into())));
        assert_eq!(
            r.take_routes(),
            [
                Route::ToWorker(1, job(2)),
                to_feeder(done("j1".into())),
                want(1)
            ],
            "the next job goes out before the report, then the queue is refilled"
        );
    }

    #[test]
    fn queued_jobs_beyond_the_idle_workers_are_released_on_stop_and_dropped_with_the_feeder() {
        let mut r = Router::new(2);
        r.feeder_ready();
        r.worker_ready(1);
        assert_eq!(r.take_routes(), [want(2), want(1)]);
        for n in 1..=3 {
            r.job_from_feeder(job(n));
        }
        r.take_routes();
        assert_eq!(r.queued(), 2);
        assert_eq!(
            r.feeder_gone(None),
            2,
            "unstarted: the broker gives them back"
        );
        r.feeder_ready();
        assert_eq!(r.take_routes(), [want(2)]);
        r.job_from_feeder(job(4));
        r.stop_fetching();
        assert_eq!(r.take_routes(), [release("j4".into())]);
        assert_eq!(r.job_of(1), Some("j1"));
    }

    #[test]
    fn a_dead_worker_s_job_is_lost_at_once_and_a_dead_feeder_s_queue_dropped() {
        let mut r = Router::new(0);
        r.worker_ready(1);
        r.feeder_ready();
        r.job_from_feeder(job(1));
        r.take_routes();
        assert_eq!(r.worker_gone(1, "killed by SIGKILL"), Some("j1".into()));
        assert_eq!(
            r.take_routes(),
            [lost("j1".into(), "killed by SIGKILL".into())]
        );
        r.job_from_feeder(job(2)); // no worker: it waits
        assert_eq!(r.queued(), 1);
        assert_eq!(r.feeder_gone(Some(77)), 1);
        r.worker_ready(2);
        assert_eq!(r.take_routes(), [], "nothing to hand out, no feeder to ask");
        r.feeder_ready();
        assert_eq!(
            r.take_routes(),
            [
                orphaned(77, vec!["j1".into()]),
                lost("j1".into(), "killed by SIGKILL".into()),
                want(1)
            ],
            "the next feeder holds the job whose report it may have missed, then hears it"
        );
    }

    #[test]
    fn the_adaptive_lookahead_follows_the_run_time_and_asks_in_chunks() {
        let mut r = Router::adaptive(2);
        assert_eq!(r.lookahead(), 2, "one per worker to start");
        for _ in 0..50 {
            r.observe(std::time::Duration::from_micros(100));
        }
        assert_eq!(r.lookahead(), 16, "quick jobs: the cap, 8 per worker");
        r.feeder_ready();
        r.worker_ready(1);
        r.worker_ready(2);
        let asked: u32 = r
            .take_routes()
            .iter()
            .map(|x| match x {
                Route::ToFeeder(Message::Want { n }) => *n,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(asked, 16, "16 ahead, which the two idle workers draw on");
        for n in 1..=16 {
            r.job_from_feeder(job(n));
        }
        r.take_routes();
        assert_eq!(r.depth(), 2, "quick jobs: a worker holds the next one too");
        assert_eq!(
            r.queued(),
            12,
            "2 running, 2 waiting in the workers' sockets"
        );
        // Each finish hands the worker the next queued job; credit goes
        // out once a chunk (8) of the lookahead is used up, not per job.
        let wants = |r: &mut Router| -> Vec<u32> {
            r.take_routes()
                .iter()
                .filter_map(|x| match x {
                    Route::ToFeeder(Message::Want { n }) => Some(*n),
                    _ => None,
                })
                .collect()
        };
        for n in 1..=3 {
            let w = if n % 2 == 1 { 1 } else { 2 };
            assert!(r.worker_finished(w, done(format!("j{n}"))));
        }
        assert_eq!(
            wants(&mut r),
            Vec::<u32>::new(),
            "7 short of 16: under a chunk"
        );
        assert!(r.worker_finished(2, done("j4".into())));
        assert_eq!(wants(&mut r), [8], "a chunk of 8 once 8 were used");
        for _ in 0..50 {
            r.observe(std::time::Duration::from_secs(1));
        }
        assert_eq!(r.depth(), 1, "slow jobs: one at a time");
        assert_eq!(r.lookahead(), 0, "slow jobs: fetched only for idle workers");
    }

    #[test]
    fn quick_jobs_go_two_deep_and_a_dead_worker_s_waiting_job_goes_back_unstarted() {
        let mut r = Router::adaptive(1);
        for _ in 0..50 {
            r.observe(std::time::Duration::from_micros(100));
        }
        assert_eq!(r.depth(), 2);
        r.feeder_ready();
        r.worker_ready(1);
        r.take_routes();
        for n in 1..=3 {
            r.job_from_feeder(job(n));
        }
        assert_eq!(
            r.take_routes()
                .into_iter()
                .filter(|x| matches!(x, Route::ToWorker(..)))
                .collect::<Vec<_>>(),
            [Route::ToWorker(1, job(1)), Route::ToWorker(1, job(2))],
            "the next job waits in the worker's socket; the third in the master"
        );
        assert_eq!(r.queued(), 1);
        // The report of j1 hands out j3 behind j2, before the report goes on.
        assert!(r.worker_finished(1, done("j1".into())));
        assert_eq!(
            r.take_routes()[..2],
            [Route::ToWorker(1, job(3)), to_feeder(done("j1".into()))]
        );
        // It dies running j2: j2 is lost (a failed attempt), j3 never
        // started and goes back without counting one.
        assert_eq!(r.worker_gone(1, "killed"), Some("j2".into()));
        assert_eq!(
            r.take_routes()[..2],
            [lost("j2".into(), "killed".into()), release("j3".into())]
        );
        // Slow jobs: one at a time again.
        for _ in 0..50 {
            r.observe(std::time::Duration::from_secs(1));
        }
        assert_eq!(r.depth(), 1);
        r.worker_ready(2);
        r.job_from_feeder(job(4));
        r.job_from_feeder(job(5));
        let to_workers: Vec<Route> = r
            .take_routes()
            .into_iter()
            .filter(|x| matches!(x, Route::ToWorker(..)))
            .collect();
        assert_eq!(to_workers, [Route::ToWorker(2, job(4))]);
        assert_eq!(r.queued(), 1, "j5 waits for a free worker");
    }

    #[test]
    fn reports_wait_for_the_next_feeder() {
        let mut r = Router::new(0);
        r.feeder_ready();
        r.worker_ready(1);
        r.job_from_feeder(job(1));
        r.feeder_gone(Some(9));
        r.take_routes();
        r.worker_finished(1, done("j1".into()));
        assert_eq!(r.take_routes(), []);
        r.feeder_ready();
        assert_eq!(
            r.take_routes(),
            [
                orphaned(9, vec!["j1".into()]),
                to_feeder(done("j1".into())),
                want(1)
            ],
            "the adoption names the running job before its report"
        );
    }

    #[test]
    fn a_report_the_dead_feeder_may_not_have_read_goes_to_the_next_unless_stale() {
        let mut r = Router::new(0);
        r.feeder_ready();
        r.worker_ready(1);
        r.worker_ready(2);
        r.job_from_feeder(job(1));
        r.job_from_feeder(job(2));
        r.worker_finished(1, done("j1".into()));
        let failed = Message::Finished {
            id: "j2".into(),
            report: b"retry: x".to_vec(),
        };
        r.worker_finished(2, failed);
        // The feeder retried j2 and handed it out again (same id) before
        // it died: the old report about j2 must not reach the next feeder.
        r.job_from_feeder(job(2));
        r.take_routes();
        assert_eq!(r.job_of(1), Some("j2"));
        r.feeder_gone(Some(5));
        r.feeder_ready();
        assert_eq!(
            r.take_routes(),
            [
                orphaned(5, vec!["j2".into(), "j1".into()]),
                to_feeder(done("j1".into())),
                want(1)
            ]
        );
    }

    #[test]
    fn stopping_releases_unstarted_jobs_and_asks_no_more() {
        let mut r = Router::new(0);
        r.feeder_ready();
        r.worker_ready(1);
        r.job_from_feeder(job(1));
        r.job_from_feeder(job(2)); // more than asked for: it waits
        r.take_routes();
        r.stop_fetching();
        r.job_from_feeder(job(3)); // already on its way
        assert_eq!(
            r.take_routes(),
            [release("j2".into()), release("j3".into())]
        );
        r.worker_finished(1, done("j1".into()));
        assert_eq!(r.take_routes(), [to_feeder(done("j1".into()))]);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Ready(u8),
        Closing(u8),
        Gone(u8),
        Finish(u8, bool),
        /// A job's run time reaches the adaptive lookahead: quick or slow.
        Observe(bool),
        FeederSends,
        FeederReady,
        FeederGone,
        Stop,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            3 => (0_u8..6).prop_map(Ev::Ready),
            1 => (0_u8..6).prop_map(Ev::Closing),
            1 => (0_u8..6).prop_map(Ev::Gone),
            4 => ((0_u8..6), any::<bool>()).prop_map(|(w, ok)| Ev::Finish(w, ok)),
            2 => any::<bool>().prop_map(Ev::Observe),
            4 => Just(Ev::FeederSends),
            1 => Just(Ev::FeederReady),
            1 => Just(Ev::FeederGone),
            1 => Just(Ev::Stop),
        ]
    }

    proptest! {
        /// Whatever happens: no job is held by two workers at once; a job
        /// never waits while a worker is idle; the router's count of credits
        /// is the feeder's; whenever the router gives credits, credits out
        /// + queued jobs <= idle workers + lookahead (equal, in fact, right
        /// after it gives them); while a feeder is up and fetching has not
        /// stopped, credits out + queued >= idle + lookahead (the feeder is
        /// always topped up); and every job handed out ends (done, failed,
        /// lost or released) once its worker finishes or dies.
        #[test]
        fn routing_invariants(
            fixed in proptest::option::of(0_usize..7),
            events in proptest::collection::vec(ev(), 1..200),
        ) {
            // A fixed lookahead, or the adaptive one (whose depth goes to 2
            // for quick jobs: a worker then holds the next job too).
            let mut r = match fixed {
                Some(n) => Router::new(n),
                None => Router::adaptive(3),
            };
            let mut stopped = false;
            let mut next = 0_u64;
            // Worker processes: the serial of each simulated slot (a slot's
            // worker that dies is replaced by a new serial).
            let mut serial_of: HashMap<u8, Serial> = HashMap::new();
            let mut next_serial: Serial = 1;
            let mut credits = 0_usize; // what the simulated feeder holds
            // What each worker holds, in order: the first runs.
            let mut holding: HashMap<Serial, VecDeque<String>> = HashMap::new();
            let mut handed: HashSet<String> = HashSet::new();
            // Handed out behind a running job, then given back unstarted.
            let mut handed_back: HashSet<String> = HashSet::new();
            let mut ended: HashSet<String> = HashSet::new();
            let mut released: HashSet<String> = HashSet::new();
            let mut sent: HashSet<String> = HashSet::new();
            let mut feeder = false;
            // Reports a dead feeder may not have read are sent again.
            let mut ended_before_gone: HashSet<String> = HashSet::new();
            let mut released_before_gone: HashSet<String> = HashSet::new();
            let mut orphans_expected: Option<Vec<String>> = None;
            for e in events {
                match e {
                    Ev::Ready(w) => {
                        let s = *serial_of.entry(w).or_insert_with(|| { next_serial += 1; next_serial });
                        r.worker_ready(s);
                    }
                    Ev::Closing(w) => if let Some(&s) = serial_of.get(&w) { r.worker_closing(s) },
                    Ev::Gone(w) => if let Some(s) = serial_of.remove(&w) {
                        let mut held = holding.remove(&s).unwrap_or_default();
                        let lost = r.worker_gone(s, "killed");
                        prop_assert_eq!(lost, held.pop_front());
                        handed_back.extend(held);
                    },
                    Ev::Observe(quick) => r.observe(std::time::Duration::from_micros(if quick { 50 } else { 50_000 })),
                    Ev::Finish(w, ok) => if let Some(&s) = serial_of.get(&w) && let Some(id) = holding.get_mut(&s).and_then(VecDeque::pop_front) {
                        let report = if ok { done(id) } else {
                            Message::Finished { id, report: b"retry in 5 ms: x".to_vec() }
                        };
                        prop_assert!(r.worker_finished(s, report));
                    },
                    Ev::FeederSends => if feeder && credits > 0 {
                        credits -= 1;
                        next += 1;
                        sent.insert(format!("j{next}"));
                        r.job_from_feeder(job(next));
                    },
                    Ev::FeederReady => if !feeder { feeder = true; credits = 0; r.feeder_ready() },
                    Ev::FeederGone => if feeder {
                        feeder = false;
                        credits = 0;
                        orphans_expected = Some(holding.values().flatten().cloned().collect::<Vec<String>>());
                        r.feeder_gone(Some(1));
                        ended_before_gone.extend(ended.iter().cloned());
                        released_before_gone.extend(released.iter().cloned());
                    },
                    Ev::Stop => { stopped = true; r.stop_fetching() }
                }
                for route in r.take_routes() {
                    match route {
                        Route::ToWorker(s, j) => {
                            prop_assert!(!holding.values().flatten().any(|h| *h == j.delivery), "{} handed out twice at once", j.delivery);
                            let held = holding.entry(s).or_default();
                            held.push_back(j.delivery.clone());
                            prop_assert!(held.len() <= 2, "worker {} given {} jobs", s, held.len());
                            prop_assert!(held.len() <= r.depth(), "worker {} holds {} jobs at depth {}", s, held.len(), r.depth());
                            prop_assert!(handed.insert(j.delivery));
                        }
                        Route::ToFeeder(Message::Want { n }) => {
                            prop_assert!(feeder);
                            credits += n as usize;
                            let (asked, queued, room) = r.counts();
                            let lookahead = r.lookahead();
                            prop_assert!(asked + queued <= room + lookahead, "credits {} + queued {} > room {} + lookahead {}", asked, queued, room, lookahead);
                        }
                        Route::ToFeeder(Message::Finished { id, .. } | Message::Lost { id, .. }) => {
                            prop_assert!(handed.contains(&id));
                            prop_assert!(ended.insert(id.clone()) || ended_before_gone.contains(&id), "{} reported twice", id);
                        }
                        Route::ToFeeder(Message::Release { id }) => {
                            prop_assert!(!handed.contains(&id) || handed_back.contains(&id), "{} released after it started", id);
                            prop_assert!(released.insert(id.clone()) || ended_before_gone.contains(&id) || released_before_gone.contains(&id));
                        }
                        Route::ToFeeder(Message::Orphaned { ids: running, .. }) => {
                            let expected = orphans_expected.take();
                            prop_assert!(expected.is_some(), "an adoption without a feeder death");
                            for id in expected.unwrap() {
                                prop_assert!(running.contains(&id), "the adoption does not name {}, running when the feeder died", id);
                            }
                        }
                        Route::ToFeeder(other) => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                let (asked, queued, room) = r.counts();
                let lookahead = r.lookahead();
                prop_assert!(queued == 0 || room == 0, "{} jobs wait while workers have room for {}", queued, room);
                if feeder {
                    prop_assert_eq!(asked, credits, "the router's credits are the feeder's");
                    if !stopped {
                        prop_assert!(asked + queued >= r.idle.len(), "an idle worker has no job coming: credits {} + queued {} < idle {}", asked, queued, r.idle.len());
                        prop_assert!(asked + queued + r.chunk() > room + lookahead, "feeder not topped up: credits {} + queued {} + chunk {} <= room {} + lookahead {}", asked, queued, r.chunk(), room, lookahead);
                    }
                }
            }
            // Shutdown: fetching stops (queued jobs go back), every worker
            // finishes, and a feeder comes up to hear it. Stopping first
            // matters: a worker that finishes while jobs are queued is
            // handed the next one, as it should be.
            r.stop_fetching();
            let serials: Vec<Serial> = holding.keys().copied().collect();
            for s in serials {
                for id in holding.remove(&s).unwrap() {
                    r.worker_finished(s, done(id));
                }
            }
            if !feeder { r.feeder_ready(); }
            for route in r.take_routes() {
                match route {
                    Route::ToFeeder(Message::Finished { id, .. } | Message::Lost { id, .. }) => { prop_assert!(ended.insert(id.clone()) || ended_before_gone.contains(&id)); }
                    Route::ToFeeder(Message::Release { id }) => { prop_assert!(released.insert(id.clone()) || released_before_gone.contains(&id)); }
                    other => prop_assert!(matches!(other, Route::ToFeeder(Message::Want { .. } | Message::Orphaned { .. })), "{:?}", other),
                }
            }
            let ended_or_back: HashSet<String> = ended.union(&handed_back).cloned().collect();
            prop_assert_eq!(&handed, &ended_or_back, "every job handed out ended, or went back unstarted");
            prop_assert!(ended.is_disjoint(&handed_back), "a job given back unstarted was reported too");
            // Every job sent was handed out, released, or dropped with a dead feeder.
            prop_assert!(handed.difference(&handed_back).all(|id| !released.contains(id)));
            prop_assert!(handed.union(&released).all(|id| sent.contains(id)));
        }
    }
}
