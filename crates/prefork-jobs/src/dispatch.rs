//! Dispatch mode: [`DispatchFeeder`], the one process of a pool that owns
//! a broker connection, and [`DispatchWorker`], the workers that run the
//! jobs the master hands them. Run them with
//! `prefork_master::Master::run_dispatch`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use prefork_broker::{Broker, Connect, Delivery, DeliveryId, SettleError};
use prefork_master::{BoxError, Context, Feeder, Job, Orphans, Settle, Worker};

use crate::outage::Outage;
use crate::registry::{LostJobs, Outcome, Registry};
use crate::report;
use crate::retry::Jitter;
use crate::run::{InHand, JobEvent, Observer, run_one, settled};

/// Dispatch mode's feeder: fetches from one queue only as many jobs as the
/// master has idle workers, keeps each [`Delivery`] until its worker
/// reports, and settles it: ack, retry after the delay the worker computed,
/// dead letter, release (never started), or, when the worker died holding
/// it, a failed attempt run again at once (dead letter once the job's
/// [`RetryPolicy`](crate::RetryPolicy) attempts are spent, so poison
/// protection holds). It renews the claims of running jobs every
/// [`touch_every`](DispatchFeeder::touch_every).
///
/// When a feeder dies, the next one [adopts](Feeder::adopt) its claims
/// ([`Broker::take_over`]): it settles the reports of the jobs still
/// running on workers, and hands out at once the jobs the dead feeder held
/// that no worker started.
///
/// The registry is the same as the workers' (it is read here for the
/// retry policy of lost jobs; its state is never opened in the feeder);
/// pass a clone of the set-up or build it twice.
///
/// # Examples
///
/// ```no_run
/// use prefork_jobs::{DispatchFeeder, DispatchWorker, JobContext, JobError, Registry};
///
/// fn jobs() -> Registry {
///     let mut jobs = Registry::new();
///     jobs.register("hello", |_: &mut JobContext<'_>, name: String| {
///         println!("hello {name}");
///         Ok::<(), JobError>(())
///     });
///     jobs
/// }
/// let spool = prefork_spool::Spool::open("/var/lib/myapp/spool")?;
/// let feeder = DispatchFeeder::new(jobs(), spool, "default");
/// let report = prefork_master::Master::builder()
///     .workers(4)
///     .build()?
///     .run_dispatch(feeder, DispatchWorker::new(jobs()))?;
/// # drop(report);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DispatchFeeder {
    registry: Box<dyn LostJobs>,
    connect: Box<dyn Connect>,
    queue: String,
    broker: Option<Box<dyn Broker + Send>>,
    held: HashMap<String, Delivery>,
    /// Adopted deliveries no worker runs: handed out by the next fetch.
    adopted: VecDeque<Delivery>,
    /// Whether the broker is away, for the outage's two log lines.
    outage: Outage,
    jitter: Jitter,
    touch_every: Duration,
    last_touch: Instant,
}

impl fmt::Debug for DispatchFeeder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchFeeder")
            .field("queue", &self.queue)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl DispatchFeeder {
    /// A feeder of `queue`, opened through `connect` in the feeder process.
    pub fn new<S: 'static>(
        registry: Registry<S>,
        connect: impl Connect + 'static,
        queue: &str,
    ) -> DispatchFeeder {
        DispatchFeeder {
            registry: Box::new(registry),
            connect: Box::new(connect),
            queue: queue.to_owned(),
            broker: None,
            held: HashMap::new(),
            adopted: VecDeque::new(),
            outage: Outage::default(),
            jitter: Jitter::seeded(),
            touch_every: Duration::from_secs(5),
            last_touch: Instant::now(),
        }
    }

    /// How often the claims of the jobs in flight are renewed (default
    /// 5 s; keep it well under the broker's claim timeout).
    pub fn touch_every(mut self, every: Duration) -> DispatchFeeder {
        self.touch_every = every;
        self
    }

    fn touch_all(&mut self) {
        let Some(broker) = self.broker.as_mut() else {
            return;
        };
        for (id, d) in self.held.iter_mut() {
            if let Err(e) = broker.touch(d) {
                tracing::warn!(delivery = %id, error = %e, "could not renew the claim of a running job");
            }
        }
    }
}

impl Feeder for DispatchFeeder {
    fn start(&mut self, _ctx: &mut Context) -> Result<(), BoxError> {
        self.broker = Some(self.connect.open(&self.queue)?);
        self.jitter = Jitter::seeded();
        Ok(())
    }

    fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
        _ctx: &mut Context,
    ) -> Result<Vec<Job>, BoxError> {
        if self.last_touch.elapsed() >= self.touch_every {
            self.last_touch = Instant::now();
            self.touch_all();
        }
        let queue = self.queue.clone();
        let Some(broker) = self.broker.as_mut() else {
            return Err("DispatchFeeder used before start".into());
        };
        let adopted = self.adopted.len().min(max);
        let batch = match adopted {
            0 => broker.fetch(max, wait),
            n => Ok(self.adopted.drain(..n).collect()),
        };
        let batch = match batch {
            Ok(batch) => {
                if adopted == 0 {
                    self.outage.ok(&queue);
                }
                batch
            }
            Err(e) if e.is_retryable() => {
                self.outage.failed(&queue, &e);
                std::thread::sleep(wait.min(Duration::from_millis(100)));
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut jobs = Vec::with_capacity(batch.len());
        for d in batch {
            let id = d.id().as_str().to_owned();
            jobs.push(Job::new(id.clone(), d.payload().to_vec(), d.attempt()));
            self.held.insert(id, d);
        }
        Ok(jobs)
    }

    fn settle(&mut self, settle: Settle, _ctx: &mut Context) -> Result<(), BoxError> {
        let Some(delivery) = self.held.remove(settle.id()) else {
            tracing::info!(
                delivery = settle.id(),
                "a report about a job this feeder did not fetch (its feeder died, the broker took it back): ignored"
            );
            return Ok(());
        };
        let Some(broker) = self.broker.as_mut() else {
            return Err("DispatchFeeder used before start".into());
        };
        let id = delivery.id().clone();
        let outcome = match settle {
            Settle::Finished { report, .. } => match report::decode(&report) {
                Ok(outcome) => outcome,
                Err(why) => {
                    tracing::error!(delivery = %id, why, "a worker's report does not decode (a bug): the job runs again");
                    Outcome::Retry {
                        delay: Duration::ZERO,
                        reason: format!("its worker's report did not decode: {why}"),
                    }
                }
            },
            Settle::Release { .. } => return settled(broker.release(delivery)),
            Settle::Refused { reason, .. } => Outcome::Dead { reason },
            Settle::Lost { reason, .. } => {
                let outcome = self
                    .registry
                    .lost(delivery.payload(), delivery.attempt(), &reason);
                tracing::warn!(delivery = %id, %reason, ?outcome, "job lost with its worker");
                outcome
            }
            other => {
                tracing::warn!(delivery = %id, ?other, "unknown settlement: released");
                return settled(broker.release(delivery));
            }
        };
        let result: Result<(), SettleError> = match outcome {
            Outcome::Done => broker.ack(delivery),
            Outcome::Retry { delay, reason } => {
                tracing::info!(delivery = %id, ?delay, %reason, "job failed; retrying");
                broker.retry(delivery, delay)
            }
            Outcome::Dead { reason } => {
                tracing::warn!(delivery = %id, %reason, "job sent to the dead letters");
                broker.dead_letter(delivery, &reason)
            }
        };
        settled(result)
    }

    /// Acks the succeeded reports of one inbox drain with one
    /// [`Broker::ack_batch_deferred`] (sent at once, their replies read
    /// with the next fetch's: one script call and no round trip of their
    /// own on Redis); settles the others one by one.
    fn settle_batch(&mut self, settles: Vec<Settle>, ctx: &mut Context) -> Result<(), BoxError> {
        if self.broker.is_none() {
            return Err("DispatchFeeder used before start".into());
        }
        let mut acks = Vec::new();
        let mut rest = Vec::new();
        for settle in settles {
            match settle {
                Settle::Finished { id, report }
                    if report.is_empty() && self.held.contains_key(&id) =>
                {
                    acks.extend(self.held.remove(&id));
                }
                other => rest.push(other),
            }
        }
        if !acks.is_empty()
            && let Some(broker) = self.broker.as_mut()
        {
            for e in broker.ack_batch_deferred(acks) {
                settled(Err(e))?;
            }
        }
        for settle in rest {
            self.settle(settle, ctx)?;
        }
        Ok(())
    }

    /// Takes the dead feeder's claims over ([`Broker::take_over`]): the
    /// jobs still running on workers are held for their reports, the
    /// others are handed out by the next fetches. A broker error is logged:
    /// those claims then come back when they expire.
    fn adopt(&mut self, orphans: Orphans, _ctx: &mut Context) -> Result<(), BoxError> {
        let Some(broker) = self.broker.as_mut() else {
            return Err("DispatchFeeder used before start".into());
        };
        let ids: Vec<DeliveryId> = orphans.ids.iter().cloned().map(DeliveryId::new).collect();
        let running: HashSet<&str> = orphans.ids.iter().map(String::as_str).collect();
        match broker.take_over(orphans.pid, &ids) {
            Ok(taken) => {
                let n = taken.len();
                for d in taken {
                    if running.contains(d.id().as_str()) {
                        self.held.insert(d.id().as_str().to_owned(), d);
                    } else {
                        self.adopted.push_back(d);
                    }
                }
                tracing::info!(
                    pid = orphans.pid,
                    taken = n,
                    running = running.len(),
                    "took over the claims of the feeder before this one"
                );
            }
            Err(e) => {
                tracing::warn!(pid = orphans.pid, error = %e, "could not take over a dead feeder's claims; they come back when they expire");
            }
        }
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) {
        let Some(broker) = self.broker.as_mut() else {
            return;
        };
        for d in self.adopted.drain(..) {
            let id = d.id().clone();
            if let Err(e) = broker.release(d) {
                tracing::warn!(delivery = %id, error = %e.error(), "could not release an adopted job; it comes back when its claim expires");
            }
        }
        if let Err(e) = broker.flush() {
            tracing::warn!(error = %e, "could not confirm the last acks; those jobs may run again");
        }
        for (id, d) in self.held.drain() {
            tracing::info!(delivery = %id, "feeder stopping: giving back a job never settled");
            if let Err(e) = broker.release(d) {
                tracing::warn!(delivery = %id, error = %e.error(), "could not release a job; it comes back when its claim expires");
            }
        }
        self.broker = None;
    }
}

/// Dispatch mode's worker: takes each job the master hands it
/// ([`Context::next_job`]), runs it through the [`Registry`] (the hard
/// time limit is enforced by the master: [`Context::set_deadline`]), and
/// reports what came of it; the feeder settles it with the broker. It holds
/// no broker connection.
///
/// # Examples
///
/// See [`DispatchFeeder`].
pub struct DispatchWorker<S = ()> {
    registry: Registry<S>,
    /// The handlers' state, opened in [`Worker::start`].
    state: Option<S>,
    poll: Duration,
    jitter: Jitter,
    observer: Option<Observer>,
}

impl<S> fmt::Debug for DispatchWorker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchWorker")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<S: 'static> DispatchWorker<S> {
    /// A worker running `registry`'s handlers, with the registry's state
    /// ([`Registry::with_state`]) opened in each worker process.
    pub fn new(registry: Registry<S>) -> DispatchWorker<S> {
        DispatchWorker {
            registry,
            state: None,
            poll: Duration::from_millis(200),
            jitter: Jitter::seeded(),
            observer: None,
        }
    }

    /// Calls `f` in the worker process after each job is reported (the
    /// `settled` field says the report reached the master; the broker is
    /// told by the feeder).
    pub fn on_outcome(mut self, f: impl FnMut(&JobEvent) + 'static) -> DispatchWorker<S> {
        self.observer = Some(Box::new(f));
        self
    }
}

impl<S: 'static> Worker for DispatchWorker<S> {
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        self.state = Some(self.registry.open_state(ctx)?);
        self.jitter = Jitter::seeded();
        Ok(())
    }

    fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        let Some(state) = self.state.as_mut() else {
            return Err("DispatchWorker::execute before start".into());
        };
        let Some(mut job) = ctx.next_job(self.poll) else {
            return Ok(());
        };
        let ran = run_one(&self.registry, state, &mut job, ctx, self.jitter.next());
        ctx.finish_job(&job.delivery, &report::encode(&ran.outcome));
        ctx.clear_activity();
        ran.observe(&mut self.observer, job.attempt, true);
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) {
        self.state = None;
    }
}

/// A job the master handed this worker: the feeder renews its claim, so
/// being alive needs nothing more than the heartbeat.
impl InHand for Job {
    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn delivery_id(&self) -> &str {
        &self.delivery
    }
}
