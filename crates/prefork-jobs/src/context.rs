//! [`JobContext`]: what a running job can learn (who it is, how much time
//! it has), use (its worker's state) and do (say it is alive).

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a running job can learn and do: who it is, how much time it has,
/// its worker's state `S` ([`state`](JobContext::state); `()` for a
/// [`Registry::new`](crate::Registry::new)), and "I am alive" for long
/// jobs.
pub struct JobContext<'a, S = ()> {
    pub(crate) id: &'a str,
    pub(crate) job: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) enqueued_at_ms: u64,
    pub(crate) started: Instant,
    pub(crate) soft: Option<Instant>,
    pub(crate) hard: Option<Instant>,
    pub(crate) keepalive: Option<&'a mut dyn FnMut()>,
    pub(crate) state: &'a mut S,
}

impl<S> fmt::Debug for JobContext<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("job", &self.job)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<'a> JobContext<'a> {
    /// A context outside any worker, for calling a handler in a unit test:
    /// no time limits, `alive` does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_jobs::JobContext;
    /// let ctx = JobContext::standalone("resize", 2);
    /// assert_eq!(ctx.attempt(), 2);
    /// assert!(!ctx.over_soft_limit());
    /// ```
    pub fn standalone(job: &'a str, attempt: u32) -> JobContext<'a> {
        // A `()` takes no memory: leaking a box of it allocates nothing.
        JobContext::standalone_with_state(job, attempt, Box::leak(Box::new(())))
    }
}

impl<'a, S> JobContext<'a, S> {
    /// [`standalone`](JobContext::standalone) for a handler with a state:
    /// the handler gets `state` as its worker's.
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_jobs::JobContext;
    /// let mut sent = Vec::<String>::new();
    /// let mut ctx = JobContext::standalone_with_state("mail", 1, &mut sent);
    /// ctx.state().push("hello".into());
    /// assert_eq!(sent, ["hello"]);
    /// ```
    pub fn standalone_with_state(
        job: &'a str,
        attempt: u32,
        state: &'a mut S,
    ) -> JobContext<'a, S> {
        JobContext {
            id: "standalone",
            job,
            queue: "",
            attempt,
            max_attempts: attempt,
            enqueued_at_ms: 0,
            started: Instant::now(),
            soft: None,
            hard: None,
            keepalive: None,
            state,
        }
    }

    /// The worker's state: opened once in this worker process after the
    /// fork (see [`Registry::with_state`](crate::Registry::with_state)),
    /// the same value for every job the worker runs.
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// The job's id (from its envelope).
    pub fn id(&self) -> &str {
        self.id
    }

    /// The job's registered name.
    pub fn job(&self) -> &str {
        self.job
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        self.queue
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The most attempts the job's retry policy allows.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether a failure now is final.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// When the job was enqueued (the Unix epoch when the producer did not
    /// say).
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.enqueued_at_ms)
    }

    /// How long this attempt has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time left before the soft limit (zero once past it); `None` without
    /// a soft limit.
    pub fn time_left(&self) -> Option<Duration> {
        self.soft
            .map(|s| s.saturating_duration_since(Instant::now()))
    }

    /// Whether the soft limit has passed: a well-behaved job wraps up and
    /// returns (an `Err` to be retried, or `Ok` with partial work saved).
    pub fn over_soft_limit(&self) -> bool {
        self.soft.is_some_and(|s| Instant::now() >= s)
    }

    /// Time left before the hard limit kills the worker; `None` without one.
    pub fn hard_time_left(&self) -> Option<Duration> {
        self.hard
            .map(|h| h.saturating_duration_since(Instant::now()))
    }

    /// Tells the supervisor and the broker that this job is still running:
    /// sends the worker's heartbeat (at most every quarter heartbeat
    /// interval) and renews the broker's claim on the job. Call it from
    /// jobs that may run longer than the master's timeout or the broker's
    /// claim timeout. It does not move the time limits.
    pub fn alive(&mut self) {
        if let Some(k) = self.keepalive.as_mut() {
            k();
        }
    }
}
