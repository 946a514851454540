//! Dispatch mode's feeder: the [`Feeder`] trait users implement (the one
//! process of a pool that talks to the broker), the [`Job`] it hands the
//! master, the [`Settle`] requests it gets back, and its runtime loop in
//! the feeder process.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use prefork_heartbeat::Message;

use crate::master::MAX_JOB_BYTES;
use crate::worker::{BoxError, Context, Orphans};

/// A job as the master routes it: the broker's delivery id, the payload
/// and the delivery count, all opaque to the master.
///
/// # Examples
///
/// ```
/// let job = prefork_master::Job::new("delivery-7", b"{}".to_vec(), 2);
/// assert_eq!((job.delivery.as_str(), job.attempt), ("delivery-7", 2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Job {
    /// The broker's delivery id: unique among the jobs in flight (not the
    /// job's own id, which the job layer keeps in its payload).
    pub delivery: String,
    /// The job's bytes.
    pub payload: Vec<u8>,
    /// The broker's delivery count, from 1.
    pub attempt: u32,
}

impl Job {
    /// A job with this delivery id, payload and delivery count.
    pub fn new(delivery: impl Into<String>, payload: Vec<u8>, attempt: u32) -> Job {
        Job {
            delivery: delivery.into(),
            payload,
            attempt,
        }
    }
}

/// What the master asks the feeder to do with a job it fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settle {
    /// The worker is done with it: `report` is its verdict (succeeded,
    /// retry, dead letter, and why), as the worker's
    /// [`Context::finish_job`] sent it. The master relays it unread: the
    /// layer that wrote it in the worker reads it here.
    Finished {
        /// The delivery id.
        id: String,
        /// The worker's verdict.
        report: Vec<u8>,
    },
    /// No worker started it (graceful shutdown): give it back without
    /// counting an attempt.
    Release {
        /// The delivery id.
        id: String,
    },
    /// The master will not carry it to a worker, ever (it is larger than
    /// [`MAX_JOB_BYTES`]): dead-letter it with `reason`, which says why
    /// and what to do instead. No worker ran it.
    Refused {
        /// The delivery id.
        id: String,
        /// Why, for the dead letter.
        reason: String,
    },
    /// Its worker died while running it (crash, SIGKILL, hard time limit):
    /// a failed attempt; retry under the retry policy (with its backoff) or
    /// dead-letter once the attempts are spent.
    Lost {
        /// The delivery id.
        id: String,
        /// What happened to the worker (names the signal).
        reason: String,
    },
}

impl Settle {
    /// The delivery id this is about.
    pub fn id(&self) -> &str {
        match self {
            Settle::Finished { id, .. }
            | Settle::Release { id }
            | Settle::Refused { id, .. }
            | Settle::Lost { id, .. } => id,
        }
    }

    pub(crate) fn from_message(msg: Message) -> Option<Settle> {
        Some(match msg {
            Message::Finished { id, report } => Settle::Finished { id, report },
            Message::Release { id } => Settle::Release { id },
            Message::Lost { id, reason } => Settle::Lost { id, reason },
            _ => return None,
        })
    }
}

/// Dispatch mode's broker side: the one process of a pool that fetches
/// jobs and settles them (see [`Master::run_dispatch`]).
///
/// The master forks the feeder like a worker (its own channel, heartbeat,
/// restart with backoff, `PR_SET_PDEATHSIG`) and never talks to the broker
/// itself. The runtime, in the feeder process, calls
/// [`start`](Feeder::start) once, then loops: it reads the master's
/// requests, calls [`settle`](Feeder::settle) for each report, and while
/// the master has idle workers it calls [`fetch`](Feeder::fetch) with the
/// number it can take; each [`Job`] returned goes to an idle worker. It
/// fetches nothing while every worker is busy.
///
/// - Graceful stop: the master stops asking, releases the jobs no worker
///   started, lets the workers finish theirs (their reports still reach
///   the feeder), and stops the feeder last; [`stop`](Feeder::stop) then
///   gives back whatever it still holds.
/// - A worker that dies holding a job: [`Settle::Lost`] at once.
/// - The feeder dying: the next feeder is told, before its first fetch,
///   the dead feeder's pid and which of its jobs still run on workers or have a report to follow
///   ([`adopt`](Feeder::adopt)): it takes the dead feeder's claims over at
///   once, holds the running ones for their reports (which reach it), and
///   hands the others out. A feeder that does not implement `adopt` lets
///   them come back when their claims expire, and the reports of jobs it
///   did not fetch are lost: those jobs run again (at-least-once).
///
/// Errors from `start` or `fetch` end the feeder process; the master starts
/// another after a backoff. Keep transient broker errors inside (log and
/// return no job).
///
/// [`Master::run_dispatch`]: crate::Master::run_dispatch
///
/// # Examples
///
/// ```
/// use std::collections::VecDeque;
/// use std::time::Duration;
/// use prefork_master::{BoxError, Context, Feeder, Job, Settle};
///
/// /// Feeds the numbers 1 to 100; forgets what is done.
/// struct Numbers { next: u32, retry: VecDeque<Job> }
///
/// impl Feeder for Numbers {
///     fn fetch(&mut self, max: usize, _wait: Duration, _ctx: &mut Context) -> Result<Vec<Job>, BoxError> {
///         let mut out: Vec<Job> = self.retry.drain(..self.retry.len().min(max)).collect();
///         while out.len() < max && self.next < 100 {
///             self.next += 1;
///             out.push(Job::new(self.next.to_string(), self.next.to_le_bytes().to_vec(), 1));
///         }
///         Ok(out)
///     }
///     fn settle(&mut self, settle: Settle, _ctx: &mut Context) -> Result<(), BoxError> {
///         if let Settle::Lost { id, .. } | Settle::Release { id } = settle {
///             let n: u32 = id.parse()?;
///             self.retry.push_back(Job::new(id, n.to_le_bytes().to_vec(), 2));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Feeder {
    /// Called once in the fresh feeder process: connect to the broker here.
    ///
    /// # Errors
    ///
    /// An error ends the feeder process; it is restarted with backoff.
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        let _ = ctx;
        Ok(())
    }

    /// Fetches up to `max` jobs (at least 1), waiting at most `wait` when
    /// none is ready. Return an empty `Vec` when none came.
    ///
    /// # Errors
    ///
    /// An error ends the feeder process (the broker gets its claims back).
    fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
        ctx: &mut Context,
    ) -> Result<Vec<Job>, BoxError>;

    /// Settles a job this feeder (or a previous one) handed out. An id it
    /// does not know (fetched by a feeder that died) is logged and ignored:
    /// the broker has given that job back already.
    ///
    /// # Errors
    ///
    /// An error ends the feeder process.
    fn settle(&mut self, settle: Settle, ctx: &mut Context) -> Result<(), BoxError>;

    /// Settles every report the master sent since the last call, in the
    /// order they came (one call per drain of the feeder's inbox), so a
    /// feeder can settle many jobs in one broker round trip (e.g. ack all
    /// the succeeded ones with one call). The provided method calls
    /// [`settle`](Feeder::settle) for each, stopping at the first error.
    ///
    /// # Errors
    ///
    /// As [`settle`](Feeder::settle): the feeder process exits with status
    /// 1 and is restarted.
    fn settle_batch(&mut self, settles: Vec<Settle>, ctx: &mut Context) -> Result<(), BoxError> {
        for settle in settles {
            self.settle(settle, ctx)?;
        }
        Ok(())
    }

    /// The feeder before this one (process `orphans.pid`) died; take its
    /// broker claims over (`Broker::take_over`). `orphans.ids` are the
    /// jobs it handed out that still run on workers or have a report to follow: hold them, their
    /// reports come to this feeder; hand the other claims out (return them
    /// from the next [`fetch`](Feeder::fetch)). Called before any report
    /// that came after the death, and before the first fetch. The provided
    /// method does nothing: those claims come back when they expire.
    ///
    /// # Errors
    ///
    /// An error ends the feeder process.
    fn adopt(&mut self, orphans: Orphans, ctx: &mut Context) -> Result<(), BoxError> {
        let _ = (orphans, ctx);
        Ok(())
    }

    /// Called when the master stops the feeder (last, after the workers):
    /// give back what is still held and close connections.
    fn stop(&mut self, ctx: &mut Context) {
        let _ = ctx;
    }
}

/// How long one `fetch` may wait, and the longest the feeder sleeps on its
/// channel when it has no credit.
pub(crate) const FEEDER_WAIT: Duration = Duration::from_millis(50);

/// The feeder's life after set-up. Returns its exit status.
pub(crate) fn run_feeder<F: Feeder>(feeder: &mut F, ctx: &mut Context, timeout: Duration) -> i32 {
    let _span = tracing::info_span!("feeder", pid = std::process::id()).entered();
    let _ = ctx.set_state("feeder starting");
    match catch_unwind(AssertUnwindSafe(|| feeder.start(ctx))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "feeder start failed");
            return 1;
        }
        Err(_) => {
            tracing::error!("feeder start panicked");
            return crate::child::PANIC_STATUS;
        }
    }
    if !ctx.send_ready(timeout) {
        return 1;
    }
    let _ = ctx.set_state("feeder");
    let mut credits: usize = 0;
    let mut status = 0;
    // Whether the last turn's wait took a message: the inbox then holds
    // what woke it, and what follows is read next turn (no empty `recv`).
    let mut woken = false;
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), BoxError> {
        loop {
            if !woken {
                ctx.poll_master();
            }
            woken = false;
            let mut settles = Vec::new();
            for msg in ctx.take_inbox() {
                match msg {
                    Message::Want { n } => credits = credits.saturating_add(n as usize),
                    Message::Orphaned { pid, ids } => {
                        // The reports before it are about this feeder's own
                        // jobs; those after it may be about the adopted.
                        if !settles.is_empty() {
                            feeder.settle_batch(std::mem::take(&mut settles), ctx)?;
                        }
                        feeder.adopt(Orphans::new(pid, ids), ctx)?;
                    }
                    other => settles.extend(Settle::from_message(other)),
                }
            }
            if !settles.is_empty() {
                feeder.settle_batch(settles, ctx)?;
            }
            if ctx.is_stopping() {
                return Ok(());
            }
            ctx.before_iteration();
            if credits > 0 {
                let jobs = feeder.fetch(credits, FEEDER_WAIT, ctx)?;
                credits = credits.saturating_sub(jobs.len());
                for job in jobs {
                    let size = job.delivery.len() + job.payload.len();
                    if size > MAX_JOB_BYTES {
                        tracing::error!(delivery = %job.delivery, size, "job too large to dispatch: dead-lettered");
                        let reason = format!(
                            "job of {size} bytes is larger than dispatch mode carries \
                             ({MAX_JOB_BYTES} bytes); run it in pull mode or make it smaller"
                        );
                        feeder.settle(
                            Settle::Refused {
                                id: job.delivery,
                                reason,
                            },
                            ctx,
                        )?;
                        continue;
                    }
                    ctx.queue(&Message::Job {
                        id: job.delivery,
                        payload: job.payload,
                        attempt: job.attempt,
                    });
                }
                ctx.flush();
            } else {
                woken = ctx.wait_master(FEEDER_WAIT);
            }
            ctx.after_iteration();
        }
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "feeder failed");
            status = 1;
        }
        Err(_) => {
            tracing::error!("feeder panicked");
            return crate::child::PANIC_STATUS;
        }
    }
    let _ = ctx.set_state("feeder stopping");
    if catch_unwind(AssertUnwindSafe(|| feeder.stop(ctx))).is_err() {
        tracing::error!("feeder stop panicked");
        return crate::child::PANIC_STATUS;
    }
    ctx.flush();
    status
}
