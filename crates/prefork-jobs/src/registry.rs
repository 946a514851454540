//! Named job handlers with typed arguments, registered before the fork,
//! the typed per-worker state they share, and what running one delivery
//! comes to (ack, retry, dead letter).

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use prefork_master::{BoxError, Context};
use serde::de::DeserializeOwned;

use crate::context::JobContext;
use crate::envelope::Envelope;
use crate::error::{Failure, JobError};
use crate::retry::RetryPolicy;

/// Time limits of one job.
///
/// The *soft* limit is advisory: the handler sees it through
/// [`JobContext::time_left`] and [`JobContext::over_soft_limit`] and may
/// stop early. The *hard* limit is enforced by the [`JobWorker`]: when a job
/// is still running at its hard limit the worker process is killed
/// (SIGKILL), the broker hands the job out again as a new attempt, and the
/// master starts a replacement worker. Both are separate from the master's
/// liveness timeout.
///
/// [`JobWorker`]: crate::JobWorker
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeLimits {
    /// The advisory limit.
    pub soft: Option<Duration>,
    /// The limit at which the worker is killed.
    pub hard: Option<Duration>,
}

impl TimeLimits {
    /// No limits.
    pub fn none() -> TimeLimits {
        TimeLimits::default()
    }

    /// Sets the soft limit.
    pub fn soft(mut self, limit: Duration) -> TimeLimits {
        self.soft = Some(limit);
        self
    }

    /// Sets the hard limit.
    pub fn hard(mut self, limit: Duration) -> TimeLimits {
        self.hard = Some(limit);
        self
    }
}

type Handler<S> = Box<dyn Fn(&mut JobContext<'_, S>, serde_json::Value) -> Result<(), Failure>>;

/// Opens a worker's state, in the worker process after the fork.
type Opener<S> = Box<dyn Fn(&mut Context) -> Result<S, BoxError>>;

struct Entry<S> {
    handler: Handler<S>,
    retry: Option<RetryPolicy>,
    limits: Option<TimeLimits>,
}

/// The named job handlers of a pool, registered once in the master before
/// the workers are forked (so every worker shares them copy-on-write).
///
/// `S` is the handlers' **per-worker state** (a database pool, an HTTP
/// client): [`Registry::with_state`] says how to open it, each worker
/// ([`JobWorker`], [`DispatchWorker`]) opens it once in its own process
/// after the fork (in [`Worker::start`]), every job that worker runs gets it
/// through [`JobContext::state`], and it is dropped when the worker stops
/// ([`Worker::stop`]; a killed worker drops nothing). [`Registry::new`] is
/// the registry without state (`S = ()`); its handlers take a
/// `&mut JobContext<'_>`.
///
/// [`JobWorker`]: crate::JobWorker
/// [`DispatchWorker`]: crate::DispatchWorker
/// [`Worker::start`]: prefork_master::Worker::start
/// [`Worker::stop`]: prefork_master::Worker::stop
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_jobs::{JobContext, JobError, Outcome, Registry, RetryPolicy};
///
/// #[derive(serde::Deserialize)]
/// struct Resize { path: String, width: u32 }
///
/// fn resize(_ctx: &mut JobContext<'_>, args: Resize) -> Result<(), JobError> {
///     if args.width == 0 { return Err(JobError::fatal("width 0")); }
///     let _ = args.path;
///     Ok(())
/// }
///
/// let mut jobs = Registry::new();
/// jobs.register("resize", resize).retry(RetryPolicy::new(3));
///
/// let ok = prefork_jobs::Envelope::new("images", "resize", serde_json::json!({"path": "a.png", "width": 64}));
/// assert_eq!(jobs.run(&ok.to_bytes(), 1, 0.0), Outcome::Done);
/// let bad = prefork_jobs::Envelope::new("images", "resize", serde_json::json!({"path": "a.png", "width": 0}));
/// assert!(matches!(jobs.run(&bad.to_bytes(), 1, 0.0), Outcome::Dead { .. }));
/// ```
///
/// With a state, opened in each worker after the fork:
///
/// ```
/// use prefork_jobs::{JobContext, JobError, Registry};
///
/// struct Db { queries: u64 } // a connection pool, say
///
/// let mut jobs = Registry::with_state(|_ctx| Ok(Db { queries: 0 }));
/// jobs.register("charge", |ctx: &mut JobContext<'_, Db>, cents: u64| {
///     let db = ctx.state();
///     db.queries += 1; // the same Db for every job of this worker
///     if cents == 0 { return Err(JobError::fatal("nothing to charge")); }
///     Ok(())
/// });
/// # let payload = prefork_jobs::Envelope::new("q", "charge", serde_json::json!(5)).to_bytes();
/// # let mut db = Db { queries: 0 };
/// # assert_eq!(jobs.run_with(&mut db, &payload, 1, 0.0), prefork_jobs::Outcome::Done);
/// # assert_eq!(db.queries, 1);
/// ```
pub struct Registry<S = ()> {
    handlers: HashMap<String, Entry<S>>,
    retry: RetryPolicy,
    limits: TimeLimits,
    open: Opener<S>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::with_state(|_| Ok(()))
    }
}

impl<S> fmt::Debug for Registry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Registry")
            .field("jobs", &names)
            .field("retry", &self.retry)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Per-job settings of a registered handler, returned by
/// [`Registry::register`].
pub struct Registration<'r, S = ()> {
    entry: &'r mut Entry<S>,
}

impl<S> fmt::Debug for Registration<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("entry", &self.entry)
            .finish()
    }
}

impl<S> fmt::Debug for Entry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("retry", &self.retry)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S> Registration<'_, S> {
    /// This job's retry policy instead of the registry's default.
    pub fn retry(self, policy: RetryPolicy) -> Self {
        self.entry.retry = Some(policy);
        self
    }

    /// This job's time limits instead of the registry's default.
    pub fn time_limits(self, limits: TimeLimits) -> Self {
        self.entry.limits = Some(limits);
        self
    }
}

/// What running one delivery came to: what to tell the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned `Ok`: acknowledge.
    Done,
    /// Retry after `delay` (counts an attempt).
    Retry {
        /// How long to wait.
        delay: Duration,
        /// The failure, for the log.
        reason: String,
    },
    /// Move to the dead letters with `reason`.
    Dead {
        /// Why, for the operator.
        reason: String,
    },
}

/// A delivery whose envelope was read and whose handler was found, ready
/// to run: see [`Registry::prepare`].
pub struct Prepared<'r, S = ()> {
    registry: &'r Registry<S>,
    entry: &'r Entry<S>,
    envelope: Envelope,
    attempt: u32,
}

impl<S> fmt::Debug for Prepared<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("envelope", &self.envelope)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry without state, with the default [`RetryPolicy`]
    /// and no time limits.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Runs one delivery start to end with no keep-alive: [`prepare`]
    /// then [`Prepared::run`]. `random` in `[0, 1)` picks the jitter.
    ///
    /// [`prepare`]: Registry::prepare
    pub fn run(&self, payload: &[u8], delivery_attempt: u32, random: f64) -> Outcome {
        self.run_with(&mut (), payload, delivery_attempt, random)
    }
}

impl<S: 'static> Registry<S> {
    /// An empty registry whose handlers share a per-worker state `S`,
    /// opened by `open` once in each worker process after the fork (see
    /// [`open_state`](Registry::open_state)); default [`RetryPolicy`], no
    /// time limits.
    ///
    /// `open` gets the worker's [`Context`] (its index, its name). An error
    /// makes that worker fail to start: it exits and the master restarts
    /// it with backoff. The feeder of dispatch mode never opens it.
    ///
    /// # Examples
    ///
    /// See [`Registry`].
    pub fn with_state(open: impl Fn(&mut Context) -> Result<S, BoxError> + 'static) -> Registry<S> {
        Registry {
            handlers: HashMap::new(),
            retry: RetryPolicy::default(),
            limits: TimeLimits::default(),
            open: Box::new(open),
        }
    }

    /// Opens the state for this worker process: what [`JobWorker`] and
    /// [`DispatchWorker`] call in [`Worker::start`]. A worker of your own
    /// calls it once after the fork and passes the state to
    /// [`Prepared::run_with`].
    ///
    /// # Errors
    ///
    /// Whatever the `open` given to [`with_state`](Registry::with_state)
    /// returns.
    ///
    /// [`JobWorker`]: crate::JobWorker
    /// [`DispatchWorker`]: crate::DispatchWorker
    /// [`Worker::start`]: prefork_master::Worker::start
    pub fn open_state(&self, ctx: &mut Context) -> Result<S, BoxError> {
        (self.open)(ctx)
    }

    /// Sets the retry policy of jobs registered without one.
    pub fn default_retry(&mut self, policy: RetryPolicy) -> &mut Registry<S> {
        self.retry = policy;
        self
    }

    /// Sets the time limits of jobs registered without their own.
    pub fn default_time_limits(&mut self, limits: TimeLimits) -> &mut Registry<S> {
        self.limits = limits;
        self
    }

    /// Registers `handler` under `name`, replacing any handler of that
    /// name. Its arguments are the envelope's `args` deserialized into `A`
    /// (`null` when absent, which `()` and `Option` accept); the worker's
    /// state is [`JobContext::state`].
    pub fn register<A, F>(&mut self, name: &str, handler: F) -> Registration<'_, S>
    where
        A: DeserializeOwned,
        F: Fn(&mut JobContext<'_, S>, A) -> Result<(), JobError> + 'static,
    {
        let handler: Handler<S> = Box::new(move |ctx, value| {
            let args =
                serde_json::from_value::<A>(value).map_err(|e| Failure::Args(e.to_string()))?;
            handler(ctx, args).map_err(Failure::Job)
        });
        let new = Entry {
            handler,
            retry: None,
            limits: None,
        };
        let entry = match self.handlers.entry(name.to_owned()) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.insert(new);
                o.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(new),
        };
        Registration { entry }
    }

    /// Whether a handler is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Reads a delivery's payload and finds its handler.
    ///
    /// `delivery_attempt` is the broker's count ([`Delivery::attempt`]),
    /// which includes deliveries whose holder died; the job's attempt is
    /// that plus the envelope's `attempt - 1`.
    ///
    /// # Errors
    ///
    /// An [`Outcome::Dead`] with the reason when the payload is not an
    /// envelope, names an unknown job, or when the attempt is beyond the
    /// job's maximum (*poison protection*: earlier deliveries ended with
    /// their worker's death, e.g. a crash or the hard time limit; retrying
    /// cannot help). None of these is retried.
    ///
    /// [`Delivery::attempt`]: prefork_broker::Delivery::attempt
    pub fn prepare(
        &self,
        payload: &[u8],
        delivery_attempt: u32,
    ) -> Result<Prepared<'_, S>, Outcome> {
        let envelope = Envelope::from_bytes(payload).map_err(|e| Outcome::Dead {
            reason: e.to_string(),
        })?;
        let Some(entry) = self.handlers.get(&envelope.job) else {
            return Err(Outcome::Dead {
                reason: format!("unknown job {:?}", envelope.job),
            });
        };
        let attempt = envelope
            .attempt
            .max(1)
            .saturating_sub(1)
            .saturating_add(delivery_attempt.max(1));
        let max = entry.retry.unwrap_or(self.retry).max_attempts();
        if attempt > max {
            let how = match entry.limits.unwrap_or(self.limits).hard {
                Some(hard) => format!(
                    "a crash, a kill, or the hard time limit of {} ms",
                    hard.as_millis()
                ),
                None => "a crash or a kill; the job has no hard time limit".to_owned(),
            };
            return Err(Outcome::Dead {
                reason: format!(
                    "job {:?} delivered for attempt {attempt} of at most {max}: earlier attempts \
                     never finished (their worker died: {how})",
                    envelope.job
                ),
            });
        }
        Ok(Prepared {
            registry: self,
            entry,
            envelope,
            attempt,
        })
    }

    /// What to do with a delivery whose worker died while running it
    /// (dispatch mode: a crash, a SIGKILL, the hard time limit), as the
    /// same [`Outcome`] a run gives: it counts as a failed attempt, run
    /// again at once ([`Outcome::Retry`] with no delay, as a pull-mode
    /// worker's claims are taken over at once by its replacement; backoff is
    /// for failures a handler reports) until its attempts are spent, then
    /// [`Outcome::Dead`] (also for a payload that cannot be run at all).
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_jobs::{Envelope, JobContext, JobError, Outcome, Registry, RetryPolicy};
    ///
    /// let mut jobs = Registry::new();
    /// jobs.register("x", |_: &mut JobContext<'_>, ()| Ok::<(), JobError>(())).retry(RetryPolicy::new(2));
    /// let payload = Envelope::new("q", "x", serde_json::Value::Null).to_bytes();
    /// assert!(matches!(jobs.lost(&payload, 1, "killed by SIGKILL"), Outcome::Retry { delay, .. } if delay.is_zero()));
    /// let Outcome::Dead { reason } = jobs.lost(&payload, 2, "killed by SIGKILL") else { panic!() };
    /// assert!(reason.contains("attempt 2 of 2") && reason.contains("SIGKILL"));
    /// ```
    pub fn lost(&self, payload: &[u8], delivery_attempt: u32, reason: &str) -> Outcome {
        let prepared = match self.prepare(payload, delivery_attempt) {
            Ok(p) => p,
            Err(dead @ Outcome::Dead { .. }) => return dead,
            Err(other) => {
                return Outcome::Dead {
                    reason: format!("{other:?}"),
                };
            }
        };
        let (job, attempt) = (&prepared.envelope.job, prepared.attempt);
        let max = prepared.retry_policy().max_attempts();
        if attempt < max {
            Outcome::Retry {
                delay: Duration::ZERO,
                reason: format!("job {job:?} attempt {attempt} lost: {reason}"),
            }
        } else {
            Outcome::Dead {
                reason: format!("job {job:?} lost on attempt {attempt} of {max}: {reason}"),
            }
        }
    }

    /// Runs one delivery start to end with no keep-alive, its handler
    /// getting `state`: [`prepare`] then [`Prepared::run_with`]. `random`
    /// in `[0, 1)` picks the jitter. For testing stateful handlers.
    ///
    /// [`prepare`]: Registry::prepare
    pub fn run_with(
        &self,
        state: &mut S,
        payload: &[u8],
        delivery_attempt: u32,
        random: f64,
    ) -> Outcome {
        match self.prepare(payload, delivery_attempt) {
            Ok(p) => p.run_with(state, None, random),
            Err(outcome) => outcome,
        }
    }
}

/// The verdict on a lost job, which is all the dispatch feeder needs of a
/// registry, whatever its state type.
pub(crate) trait LostJobs {
    /// [`Registry::lost`].
    fn lost(&self, payload: &[u8], delivery_attempt: u32, reason: &str) -> Outcome;
}

impl<S: 'static> LostJobs for Registry<S> {
    fn lost(&self, payload: &[u8], delivery_attempt: u32, reason: &str) -> Outcome {
        Registry::lost(self, payload, delivery_attempt, reason)
    }
}

impl Prepared<'_> {
    /// Runs the handler of a registry without state: [`run_with`] with
    /// `&mut ()`.
    ///
    /// [`run_with`]: Prepared::run_with
    pub fn run(self, keepalive: Option<&mut dyn FnMut()>, random: f64) -> Outcome {
        self.run_with(&mut (), keepalive, random)
    }
}

impl<S> Prepared<'_, S> {
    /// The job's envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The job's retry policy (its own or the registry's default).
    pub fn retry_policy(&self) -> RetryPolicy {
        self.entry.retry.unwrap_or(self.registry.retry)
    }

    /// The job's time limits (its own or the registry's default).
    pub fn time_limits(&self) -> TimeLimits {
        self.entry.limits.unwrap_or(self.registry.limits)
    }

    /// Runs the handler with the worker's `state` ([`JobContext::state`]),
    /// catching panics, and says what to tell the broker.
    ///
    /// `keepalive` is what [`JobContext::alive`] calls; `random` in
    /// `[0, 1)` picks the retry jitter. Arguments that do not deserialize
    /// are a dead letter at once; a handler error or panic is retried by
    /// the policy, then dead-lettered with the last error.
    pub fn run_with(
        self,
        state: &mut S,
        mut keepalive: Option<&mut dyn FnMut()>,
        random: f64,
    ) -> Outcome {
        let policy = self.retry_policy();
        let limits = self.time_limits();
        let started = Instant::now();
        let e = &self.envelope;
        let mut ctx = JobContext {
            id: &e.id,
            job: &e.job,
            queue: &e.queue,
            attempt: self.attempt,
            max_attempts: policy.max_attempts(),
            enqueued_at_ms: e.enqueued_at,
            started,
            soft: limits.soft.map(|d| started + d),
            hard: limits.hard.map(|d| started + d),
            keepalive: keepalive.as_mut().map(|k| &mut **k as &mut dyn FnMut()),
            state,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            (self.entry.handler)(&mut ctx, e.args.clone())
        }));
        let failure = match result {
            Ok(Ok(())) => return Outcome::Done,
            Ok(Err(Failure::Args(why))) => {
                return Outcome::Dead {
                    reason: format!("bad arguments for job {:?}: {why}", e.job),
                };
            }
            Ok(Err(Failure::Job(err))) => err,
            Err(panic) => JobError::new(format!("panicked: {}", panic_message(&*panic))),
        };
        if !failure.is_retryable() {
            return Outcome::Dead {
                reason: format!("job {:?} failed (not retryable): {failure}", e.job),
            };
        }
        match policy.next_delay(self.attempt, random) {
            Some(delay) => Outcome::Retry {
                delay: failure.delay().unwrap_or(delay),
                reason: format!("job {:?} attempt {} failed: {failure}", e.job, self.attempt),
            },
            None => Outcome::Dead {
                reason: format!(
                    "job {:?} failed on attempt {} of {}: {failure}",
                    e.job,
                    self.attempt,
                    policy.max_attempts()
                ),
            },
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn env(job: &str, args: serde_json::Value) -> Vec<u8> {
        Envelope::new("q", job, args).to_bytes()
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.default_retry(
            RetryPolicy::new(3)
                .base(Duration::from_millis(10))
                .jitter(0.0),
        );
        r.register("add", |_: &mut JobContext<'_>, (a, b): (i32, i32)| {
            if a.checked_add(b).is_some() {
                Ok(())
            } else {
                Err(JobError::fatal("overflow"))
            }
        });
        r.register("flaky", |ctx: &mut JobContext<'_>, ()| {
            if ctx.attempt() < 2 {
                Err(JobError::new("first try fails"))
            } else {
                Ok(())
            }
        });
        r.register(
            "boom",
            |_: &mut JobContext<'_>, ()| -> Result<(), JobError> { panic!("kaboom {}", 42) },
        );
        r.register("io", |_: &mut JobContext<'_>, ()| {
            std::fs::read("/nonexistent/prefork/file")?;
            Ok(())
        })
        .retry(RetryPolicy::never());
        r
    }

    fn dead_reason(o: Outcome) -> String {
        match o {
            Outcome::Dead { reason } => reason,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn typed_arguments_reach_the_handler() {
        let r = registry();
        assert_eq!(
            r.run(&env("add", serde_json::json!([1, 2])), 1, 0.5),
            Outcome::Done
        );
        let reason = dead_reason(r.run(&env("add", serde_json::json!([i32::MAX, 1])), 1, 0.5));
        assert!(
            reason.contains("not retryable") && reason.contains("overflow"),
            "{reason}"
        );
    }

    #[test]
    fn bad_input_is_a_dead_letter_with_the_reason() {
        let r = registry();
        let reason = dead_reason(r.run(b"{not json", 1, 0.0));
        assert!(reason.starts_with("malformed envelope"), "{reason}");
        let reason = dead_reason(r.run(&env("nope", serde_json::Value::Null), 1, 0.0));
        assert_eq!(reason, "unknown job \"nope\"");
        let reason = dead_reason(r.run(&env("add", serde_json::json!({"x": 1})), 1, 0.0));
        assert!(
            reason.starts_with("bad arguments for job \"add\""),
            "{reason}"
        );
    }

    #[test]
    fn failures_are_retried_by_the_policy_then_dead() {
        let r = registry();
        let p = env("flaky", serde_json::Value::Null);
        assert_eq!(
            r.run(&p, 1, 0.0),
            Outcome::Retry {
                delay: Duration::from_millis(10),
                reason: "job \"flaky\" attempt 1 failed: first try fails".into()
            }
        );
        assert_eq!(r.run(&p, 2, 0.0), Outcome::Done);
    }

    #[test]
    fn panics_are_caught_retried_and_finally_dead_with_the_message() {
        let r = registry();
        let p = env("boom", serde_json::Value::Null);
        assert!(
            matches!(r.run(&p, 1, 0.0), Outcome::Retry { ref reason, .. } if reason.contains("panicked: kaboom 42"))
        );
        let reason = dead_reason(r.run(&p, 3, 0.0));
        assert!(
            reason.contains("attempt 3 of 3") && reason.contains("kaboom 42"),
            "{reason}"
        );
    }

    #[test]
    fn per_job_policy_overrides_the_default_and_errors_convert() {
        let r = registry();
        let reason = dead_reason(r.run(&env("io", serde_json::Value::Null), 1, 0.0));
        assert!(reason.contains("attempt 1 of 1"), "{reason}");
    }

    #[test]
    fn registering_again_replaces_the_handler_and_its_settings() {
        let mut r = registry();
        r.register("io", |_: &mut JobContext<'_>, ()| Ok(()));
        assert_eq!(
            r.run(&env("io", serde_json::Value::Null), 1, 0.0),
            Outcome::Done
        );
        assert_eq!(
            r.prepare(&env("io", serde_json::Value::Null), 1)
                .unwrap()
                .retry_policy()
                .max_attempts(),
            3
        );
        assert_eq!(r.names(), ["add", "boom", "flaky", "io"]);
    }

    #[test]
    fn deliveries_beyond_the_maximum_are_poison() {
        let r = registry();
        let reason = dead_reason(r.run(&env("add", serde_json::json!([1, 2])), 4, 0.0));
        assert!(
            reason.contains("attempt 4 of at most 3") && reason.contains("died"),
            "{reason}"
        );
    }

    #[test]
    fn envelope_attempt_adds_to_the_delivery_count() {
        let r = registry();
        let mut e = Envelope::new("q", "flaky", serde_json::Value::Null);
        e.attempt = 2;
        let p = r.prepare(&e.to_bytes(), 1).unwrap();
        assert_eq!(p.attempt(), 2);
        assert_eq!(p.run(None, 0.0), Outcome::Done);
    }

    #[test]
    fn handlers_share_the_state_they_are_run_with() {
        let mut r = Registry::with_state(|_| Ok(Vec::<u64>::new()));
        r.register("push", |ctx: &mut JobContext<'_, Vec<u64>>, n: u64| {
            ctx.state().push(n);
            Ok(())
        });
        let mut state = Vec::new();
        for n in 1..=3 {
            let p = env("push", serde_json::json!(n));
            assert_eq!(r.run_with(&mut state, &p, 1, 0.0), Outcome::Done);
        }
        assert_eq!(state, [1, 2, 3]);
        let p = r.prepare(&env("push", serde_json::json!(4)), 1).unwrap();
        assert_eq!(p.run_with(&mut state, None, 0.0), Outcome::Done);
        assert_eq!(state, [1, 2, 3, 4]);
    }

    #[test]
    fn context_sees_limits_and_calls_keepalive() {
        let mut r = Registry::new();
        let seen = Rc::new(Cell::new((false, false)));
        let s = seen.clone();
        r.register("slow", move |ctx: &mut JobContext<'_>, ()| {
            ctx.alive();
            let before = ctx.over_soft_limit();
            std::thread::sleep(Duration::from_millis(20));
            s.set((before, ctx.over_soft_limit()));
            assert!(ctx.time_left() == Some(Duration::ZERO));
            assert!(ctx.hard_time_left().unwrap() > Duration::ZERO);
            Ok(())
        })
        .time_limits(
            TimeLimits::none()
                .soft(Duration::from_millis(5))
                .hard(Duration::from_secs(60)),
        );
        let mut beats = 0;
        let mut keep = || beats += 1;
        let p = r.prepare(&env("slow", serde_json::Value::Null), 1).unwrap();
        assert_eq!(p.time_limits().hard, Some(Duration::from_secs(60)));
        assert_eq!(p.run(Some(&mut keep), 0.0), Outcome::Done);
        assert_eq!(beats, 1);
        assert_eq!(seen.get(), (false, true));
    }
}
