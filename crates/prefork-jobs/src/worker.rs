//! Pull mode: [`JobWorker`], a `prefork_master::Worker` that owns a broker
//! connection (opened after the fork), fetches, runs and settles jobs in
//! adaptive batches, and hands hard time limits to the master.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use prefork_broker::{Broker, Connect, Delivery, DeliveryId, SettleError};
use prefork_master::{BoxError, Context, Orphans, Worker};

use crate::outage::Outage;
use crate::registry::{Outcome, Registry};
use crate::retry::Jitter;
use crate::run::{InHand, JobEvent, Observer, run_one, settled};

/// A pull-mode job worker: each worker process opens its own broker handle
/// in [`Worker::start`] (after the fork), then each
/// [`execute`](Worker::execute) runs one job: fetch a batch when none is
/// buffered (waiting at most the [`poll_interval`](JobWorker::poll_interval)
/// so stop requests are seen), run its handler, and settle it (ack, retry
/// with backoff, or dead letter with the reason).
///
/// - **Batching**: by default a worker fetches as many jobs as it runs in
///   about [`BATCH_WINDOW`] (measured as it goes: one at a time for slow
///   jobs, up to [`MAX_AUTO_BATCH`] for quick ones), so quick jobs cost one
///   broker round trip per batch while no worker sits on jobs an idle
///   sibling could run. Acks are [deferred](prefork_broker::Broker::ack_deferred):
///   sent at once, their replies read with the next command.
///   [`prefetch`](JobWorker::prefetch) fixes the batch size instead.
/// - **Graceful stop** (QUIT, TTOU, HUP, recycling): the job in hand
///   finishes; jobs fetched but not started are
///   [released](prefork_broker::Broker::release) in [`Worker::stop`].
/// - **Quick stop or death** (TERM, SIGKILL, OOM, a panic): nothing is
///   settled; the master tells the next worker to start (the dead one's
///   replacement) to [take over](prefork_broker::Broker::take_over) what
///   the dead one held ([`Context::take_orphans`]), so those jobs run
///   again at once, counting an attempt, instead of after their claim
///   timeout.
/// - **Hard time limit**: the worker gives the job's deadline to the master
///   ([`Context::set_deadline`]), which SIGKILLs the worker when the job
///   overruns, logs the job, and replaces the worker at once (a time-limit
///   kill is the job's failure, not a crash of the slot). The job comes
///   back as a new attempt; one that keeps being killed goes to the dead
///   letters once its attempts exceed the maximum (see
///   [`Registry::prepare`]), with its hard time limit in the reason.
/// - **A settlement the broker refuses** (the one policy of both modes):
///   a lost claim is a warning (the job runs again), a retryable broker
///   error is logged (the job comes back when its claim expires), any other
///   error ends the worker, which the master replaces.
/// - **Long jobs** call [`JobContext::alive`](crate::JobContext::alive),
///   which sends the heartbeat and renews the broker's claim (at most once
///   a second); once the job has run 100 ms, it also gives the rest of the
///   worker's batch back to the broker (unstarted: no attempt counted), so
///   no job waits behind a slow one while a sibling is idle. A job that
///   never calls `alive` keeps its batch until it ends: the batch is sized
///   to about 10 ms of the jobs seen so far, so that is rare.
///
/// # Examples
///
/// ```no_run
/// use prefork_jobs::{JobContext, JobError, JobWorker, Registry};
/// use prefork_master::Master;
///
/// let mut jobs = Registry::new();
/// jobs.register("hello", |_: &mut JobContext<'_>, name: String| {
///     println!("hello {name}");
///     Ok::<(), JobError>(())
/// });
/// let spool = prefork_spool::Spool::open("/var/lib/myapp/spool")?;
/// let worker = JobWorker::new(jobs, spool, "default");
/// let report = Master::builder().workers(4).build()?.run(worker)?;
/// # drop(report);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JobWorker<S = ()> {
    registry: Registry<S>,
    /// The handlers' state, opened in [`Worker::start`].
    state: Option<S>,
    connect: Box<dyn Connect>,
    queue: String,
    /// A fixed batch size, or `None` for the adaptive one.
    prefetch: Option<usize>,
    poll: Duration,
    observer: Option<Observer>,
    broker: Option<Box<dyn Broker + Send>>,
    buffered: VecDeque<Delivery>,
    /// Whether the broker is away, for the outage's two log lines.
    outage: Outage,
    jitter: Jitter,
    /// Mean time per job (handler plus settle), smoothed, in µs: what the
    /// adaptive batch size is worked out from.
    mean_job_us: f64,
}

/// The adaptive batch holds about this much work: short enough that a
/// sibling going idle finds the queue non-empty, long enough that quick jobs
/// share one round trip.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// The largest adaptive batch.
pub const MAX_AUTO_BATCH: usize = 64;

/// A job still running this long after it started, when it calls
/// [`JobContext::alive`](crate::JobContext::alive), gives the rest of its
/// worker's batch back to the broker: they would wait behind it while a
/// sibling may be idle, and their claims would age toward expiry.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(100);

impl<S> fmt::Debug for JobWorker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobWorker")
            .field("registry", &self.registry)
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("poll", &self.poll)
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl<S: 'static> JobWorker<S> {
    /// A worker running `registry`'s handlers on jobs from `queue`, opened
    /// through `connect` in each worker process, as is the registry's
    /// state ([`Registry::with_state`]). Adaptive batches, poll interval
    /// 200 ms.
    pub fn new(
        registry: Registry<S>,
        connect: impl Connect + 'static,
        queue: &str,
    ) -> JobWorker<S> {
        JobWorker {
            registry,
            state: None,
            connect: Box::new(connect),
            queue: queue.to_owned(),
            prefetch: None,
            poll: Duration::from_millis(200),
            observer: None,
            broker: None,
            buffered: VecDeque::new(),
            outage: Outage::default(),
            jitter: Jitter::seeded(),
            // Unknown: the first fetch takes one job.
            mean_job_us: BATCH_WINDOW.as_micros() as f64,
        }
    }

    /// A fixed number of jobs to claim per fetch (at least 1) instead of
    /// the adaptive batch. More saves broker round trips; each claimed job
    /// waits for the ones before it, and a worker killed mid-batch delays
    /// the rest of its batch.
    pub fn prefetch(mut self, n: usize) -> JobWorker<S> {
        self.prefetch = Some(n.max(1));
        self
    }

    /// The longest a fetch waits for a job, which bounds how long an idle
    /// worker takes to see a stop request (at least 1 ms).
    pub fn poll_interval(mut self, poll: Duration) -> JobWorker<S> {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// Calls `f` in the worker process after each delivery is settled
    /// (for metrics, progress bars, tests).
    pub fn on_outcome(mut self, f: impl FnMut(&JobEvent) + 'static) -> JobWorker<S> {
        self.observer = Some(Box::new(f));
        self
    }

    /// How many jobs the next fetch asks for.
    fn batch_size(&self) -> usize {
        self.prefetch.unwrap_or_else(|| {
            let fit = BATCH_WINDOW.as_micros() as f64 / self.mean_job_us.max(1.0);
            (fit as usize).clamp(1, MAX_AUTO_BATCH)
        })
    }

    fn release_buffered(&mut self) {
        if let Some(broker) = self.broker.as_mut() {
            release_all(broker.as_mut(), &mut self.buffered);
        }
    }
}

impl<S: 'static> Worker for JobWorker<S> {
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        self.broker = Some(self.connect.open(&self.queue)?);
        self.state = Some(self.registry.open_state(ctx)?);
        self.jitter = Jitter::seeded();
        Ok(())
    }

    fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        let batch = self.batch_size();
        let (Some(broker), Some(state)) = (self.broker.as_mut(), self.state.as_mut()) else {
            return Err("JobWorker::execute before start".into());
        };
        for orphans in ctx.take_orphans() {
            take_over(broker.as_mut(), &orphans, &mut self.buffered);
        }
        if self.buffered.is_empty() {
            match broker.fetch(batch, self.poll) {
                Ok(got) => {
                    self.outage.ok(&self.queue);
                    self.buffered.extend(got);
                }
                Err(e) if e.is_retryable() => {
                    self.outage.failed(&self.queue, &e);
                    std::thread::sleep(self.poll.min(Duration::from_millis(100)));
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            // The master may have asked to stop while the fetch waited.
            if ctx.shutting_down() {
                return Ok(()); // `stop` releases what is buffered
            }
        } else if ctx.stop_requested() {
            return Ok(());
        }
        let Some(mut delivery) = self.buffered.pop_front() else {
            return Ok(());
        };
        let mut held = Pulled {
            delivery: &mut delivery,
            broker: broker.as_mut(),
            buffered: &mut self.buffered,
            last_touch: None,
        };
        let ran = run_one(&self.registry, state, &mut held, ctx, self.jitter.next());
        if ran.hard_limit {
            ctx.set_deadline("", None);
        }
        let attempt = delivery.attempt();
        let result = settle(broker.as_mut(), delivery, &ran.outcome);
        let accepted = result.is_ok();
        let verdict = settled(result);
        ctx.clear_activity();
        ctx.job_finished();
        let took = ran.t0.elapsed().as_micros() as f64;
        self.mean_job_us = 0.8 * self.mean_job_us + 0.2 * took;
        ran.observe(&mut self.observer, attempt, accepted);
        verdict
    }

    fn stop(&mut self, _ctx: &mut Context) {
        self.release_buffered();
        if let Some(b) = self.broker.as_mut()
            && let Err(e) = b.flush()
        {
            tracing::warn!(error = %e, "could not confirm the last acks; those jobs may run again");
        }
        self.broker = None;
        self.state = None;
    }
}

/// Gives unstarted jobs back to the broker, no attempt counted.
fn release_all(broker: &mut (dyn Broker + Send), buffered: &mut VecDeque<Delivery>) {
    for d in buffered.drain(..) {
        let id = d.id().clone();
        if let Err(e) = broker.release(d) {
            tracing::warn!(delivery = %id, error = %e.error(), "could not release an unstarted job; it comes back when its claim expires");
        }
    }
}

/// Takes over the claims of a dead sibling, to be run before anything else.
fn take_over(broker: &mut (dyn Broker + Send), orphans: &Orphans, into: &mut VecDeque<Delivery>) {
    let ids: Vec<DeliveryId> = orphans.ids.iter().cloned().map(DeliveryId::new).collect();
    match broker.take_over(orphans.pid, &ids) {
        Ok(taken) => {
            if !taken.is_empty() {
                tracing::info!(
                    pid = orphans.pid,
                    jobs = taken.len(),
                    "took over the jobs of a dead worker"
                );
            }
            for d in taken.into_iter().rev() {
                into.push_front(d);
            }
        }
        Err(e) => {
            tracing::warn!(pid = orphans.pid, error = %e, "could not take over a dead worker's jobs; they come back when their claims expire");
        }
    }
}

/// A pulled delivery while its handler runs: a long job renews its claim
/// and gives the rest of the worker's batch back.
struct Pulled<'a> {
    delivery: &'a mut Delivery,
    broker: &'a mut (dyn Broker + Send),
    buffered: &'a mut VecDeque<Delivery>,
    /// The last renewal of the claim (`None`: not since the job started).
    last_touch: Option<Instant>,
}

impl InHand for Pulled<'_> {
    fn payload(&self) -> &[u8] {
        self.delivery.payload()
    }

    fn attempt(&self) -> u32 {
        self.delivery.attempt()
    }

    fn delivery_id(&self) -> &str {
        self.delivery.id().as_str()
    }

    fn alive(&mut self, running: Duration) {
        // A job that runs long keeps the rest of its batch waiting (and
        // their claims ageing): give them back for an idle sibling to run.
        if !self.buffered.is_empty() && running >= GIVE_BACK_AFTER {
            release_all(self.broker, self.buffered);
        }
        let since = self.last_touch.map_or(running, |t| t.elapsed());
        if since >= Duration::from_secs(1) {
            self.last_touch = Some(Instant::now());
            if let Err(e) = self.broker.touch(self.delivery) {
                tracing::warn!(error = %e, "could not renew the claim of a running job");
            }
        }
    }
}

/// Tells the broker what came of a delivery (a `Done` is acked
/// [deferred](Broker::ack_deferred)).
fn settle(
    broker: &mut (dyn Broker + Send),
    delivery: Delivery,
    outcome: &Outcome,
) -> Result<(), SettleError> {
    match outcome {
        Outcome::Done => broker.ack_deferred(delivery),
        Outcome::Retry { delay, reason } => {
            tracing::info!(delivery = %delivery.id(), ?delay, %reason, "job failed; retrying");
            broker.retry(delivery, *delay)
        }
        Outcome::Dead { reason } => {
            tracing::warn!(delivery = %delivery.id(), %reason, "job sent to the dead letters");
            broker.dead_letter(delivery, reason)
        }
    }
}
