//! Running one delivery, the same way in both modes: [`run_one`], the body
//! that [`JobWorker`](crate::JobWorker) (pull) and
//! [`DispatchWorker`](crate::DispatchWorker) (dispatch) share, the
//! [`JobEvent`] it comes to, and [`settled`], the one policy for a
//! settlement the broker refused (used by the pull worker and the feeder).

use std::time::{Duration, Instant, SystemTime};

use prefork_broker::{ErrorKind, SettleError};
use prefork_master::{BoxError, Context};

use crate::envelope::unix_ms;
use crate::registry::{Outcome, Registry};

/// What happened to one delivery, handed to the `on_outcome` observer
/// ([`JobWorker::on_outcome`](crate::JobWorker::on_outcome),
/// [`DispatchWorker::on_outcome`](crate::DispatchWorker::on_outcome)) in
/// the worker process after the broker (pull) or the master (dispatch)
/// was told.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobEvent {
    /// The job's name, when the envelope could be read.
    pub job: Option<String>,
    /// The job's id, when the envelope could be read.
    pub id: Option<String>,
    /// The broker's delivery count.
    pub delivery_attempt: u32,
    /// What the worker told the broker.
    pub outcome: Outcome,
    /// When the envelope says the job was enqueued (ms since the epoch; 0
    /// when unknown).
    pub enqueued_at_ms: u64,
    /// When this attempt started (ms since the epoch).
    pub started_at_ms: u64,
    /// How long the handler ran.
    pub ran: Duration,
    /// Whether the broker accepted the settlement (`false`: the claim was
    /// lost or the broker failed; the job will be delivered again).
    pub settled: bool,
}

/// The `on_outcome` observer of a worker.
pub(crate) type Observer = Box<dyn FnMut(&JobEvent)>;

/// A delivery in a worker's hands, as [`run_one`] sees it: what to run,
/// and the mode's share of [`JobContext::alive`](crate::JobContext::alive).
pub(crate) trait InHand {
    /// The delivery's bytes (an envelope, if all is well).
    fn payload(&self) -> &[u8];
    /// The broker's delivery count.
    fn attempt(&self) -> u32;
    /// The delivery id, for the label of the hard time limit.
    fn delivery_id(&self) -> &str;
    /// Called each time the job says it is alive, after the heartbeat,
    /// with how long it has run. Pull mode renews the claim and gives a
    /// long job's batch back; dispatch mode has nothing to add (the feeder
    /// renews the claims).
    fn alive(&mut self, running: Duration) {
        let _ = running;
    }
}

/// What running one delivery came to, before the broker or the master is
/// told.
#[derive(Debug)]
pub(crate) struct Ran {
    /// What to tell the broker.
    pub(crate) outcome: Outcome,
    /// The job's name and id, when the envelope could be read.
    job: Option<(String, String)>,
    enqueued_at_ms: u64,
    started: SystemTime,
    /// When the run started, for the caller's own timing.
    pub(crate) t0: Instant,
    ran: Duration,
    /// Whether a hard time limit was given to the master (pull mode clears
    /// it; in dispatch mode the report does).
    pub(crate) hard_limit: bool,
}

impl Ran {
    /// Hands what happened to `observer`, if there is one.
    pub(crate) fn observe(self, observer: &mut Option<Observer>, attempt: u32, settled: bool) {
        let Some(observer) = observer.as_mut() else {
            return;
        };
        let (job, id) = self.job.unzip();
        observer(&JobEvent {
            job,
            id,
            delivery_attempt: attempt,
            outcome: self.outcome,
            enqueued_at_ms: self.enqueued_at_ms,
            started_at_ms: unix_ms(self.started),
            ran: self.ran,
            settled,
        });
    }
}

/// Runs one delivery through `registry` with the worker's `state`, the
/// same way in both modes: reads
/// its envelope (a payload that cannot run is a dead letter), gives the
/// job's hard time limit to the master ([`Context::set_deadline`]), runs
/// the handler with a [`JobContext`](crate::JobContext) whose `alive` sends
/// the heartbeat (naming the job in it) and then calls
/// [`InHand::alive`], and says what came of it. `random` in `[0, 1)` picks
/// the retry jitter.
///
/// The caller tells the broker (pull) or the master (dispatch), then calls
/// [`Context::clear_activity`] and [`Ran::observe`].
pub(crate) fn run_one<S: 'static>(
    registry: &Registry<S>,
    state: &mut S,
    held: &mut impl InHand,
    ctx: &mut Context,
    random: f64,
) -> Ran {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let prepared = match registry.prepare(held.payload(), held.attempt()) {
        Ok(prepared) => prepared,
        Err(outcome) => {
            return Ran {
                outcome,
                job: None,
                enqueued_at_ms: 0,
                started,
                t0,
                ran: t0.elapsed(),
                hard_limit: false,
            };
        }
    };
    let e = prepared.envelope();
    let (name, id, enqueued_at_ms) = (e.job.clone(), e.id.clone(), e.enqueued_at);
    let hard = prepared.time_limits().hard;
    if let Some(limit) = hard {
        // The master kills this worker if the job overruns; the label is
        // what its log line names.
        let label = format!("job {name} id {id} (delivery {})", held.delivery_id());
        ctx.set_deadline(&label, Some(limit));
    }
    let mut named = false;
    let mut keepalive = || {
        // The heartbeat says which job is running; quick jobs never call
        // this, so they never pay for the label.
        if !named {
            named = true;
            ctx.set_activity(format!("{name} {id}"));
        }
        ctx.alive();
        held.alive(t0.elapsed());
    };
    let outcome = prepared.run_with(state, Some(&mut keepalive), random);
    Ran {
        outcome,
        job: Some((name, id)),
        enqueued_at_ms,
        started,
        t0,
        ran: t0.elapsed(),
        hard_limit: hard.is_some(),
    }
}

/// The one policy for a settlement the broker refused, in both modes:
///
/// - the claim was lost (`LeaseLost`): a warning; another consumer holds
///   the job now and it runs again;
/// - a retryable broker error: an error log; the job comes back when its
///   claim expires;
/// - any other error is returned: the process errors out (the master
///   replaces it) rather than carry on with a broker it cannot trust.
pub(crate) fn settled(result: Result<(), SettleError>) -> Result<(), BoxError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.error().kind() == ErrorKind::LeaseLost => {
            let id = e.delivery().id();
            tracing::warn!(delivery = %id, "claim lost before the job was settled; it will run again");
            Ok(())
        }
        Err(e) if e.error().is_retryable() => {
            let id = e.delivery().id();
            tracing::error!(delivery = %id, error = %e.error(), "could not settle the job; it comes back when its claim expires");
            Ok(())
        }
        Err(e) => Err(e.into_error().into()),
    }
}
