//! `Options`: the consumer group, the lease, batching and timeouts.

use std::time::Duration;

/// How a [`RedisQueue`](crate::RedisQueue) uses Redis. Every field has a
/// default suited to production; tests shorten the lease.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_redis::Options;
///
/// let o = Options::default()
///     .group("mailers")
///     .lease(Duration::from_secs(60))
///     .block(Duration::from_millis(500))
///     .max_deliveries(Some(8));
/// assert_eq!(o.lease_time(), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) prefix: String,
    pub(crate) group: String,
    pub(crate) consumer: Option<String>,
    pub(crate) lease: Duration,
    pub(crate) reclaim_every: Option<Duration>,
    pub(crate) block: Duration,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) io_timeout: Duration,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) reap_idle_consumers: Option<Duration>,
}

impl Default for Options {
    /// Prefix `prefork`, group `prefork`, a generated consumer name, a 30 s
    /// lease, reclaim every half lease, 1 s blocking reads, dead-letter after
    /// 16 deliveries nobody settled, 5 s I/O timeout, reconnect backoff from
    /// 50 ms to 2 s, consumers idle and empty for a day deleted.
    fn default() -> Options {
        Options {
            prefix: "prefork".to_owned(),
            group: "prefork".to_owned(),
            consumer: None,
            lease: Duration::from_secs(30),
            reclaim_every: None,
            block: Duration::from_secs(1),
            max_deliveries: Some(16),
            io_timeout: Duration::from_secs(5),
            backoff: (Duration::from_millis(50), Duration::from_secs(2)),
            reap_idle_consumers: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

impl Options {
    /// The prefix of every key (default `prefork`): a queue `q` lives in
    /// `PREFIX:{q}:jobs`, `PREFIX:{q}:delayed`, `PREFIX:{q}:dead` and
    /// `PREFIX:{q}:dead-index`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Options {
        self.prefix = prefix.into();
        self
    }

    /// The consumer group (default `prefork`). Every process that shares
    /// the work of a queue uses the same group; two groups each get every
    /// job.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Options {
        self.group = group.into();
        self
    }

    /// A fixed consumer name instead of the generated
    /// `hostname:pid:random`. Two live handles must never share a name:
    /// they would settle each other's jobs. Meant for tests and tools; a
    /// name not of the form `hostname:pid:anything` is never found by
    /// [`take_over`](prefork_broker::Broker::take_over) (its claims come
    /// back after the lease).
    #[must_use]
    pub fn consumer(mut self, consumer: impl Into<String>) -> Options {
        self.consumer = Some(consumer.into());
        self
    }

    /// The lease (default 30 s): a job held this long without being
    /// settled or [touched](prefork_broker::Broker::touch) is reclaimed by
    /// another consumer (the min-idle time of `XPENDING IDLE`/`XCLAIM`). Rounded up to whole
    /// milliseconds.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Options {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// The lease in effect.
    pub fn lease_time(&self) -> Duration {
        self.lease
    }

    /// How often a handle looks for jobs to reclaim (default: half the
    /// lease).
    #[must_use]
    pub fn reclaim_every(mut self, every: Duration) -> Options {
        self.reclaim_every = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// The longest single blocking read (`XREADGROUP BLOCK`, default 1 s).
    /// A fetch with a longer timeout blocks in several reads, checking for
    /// due delayed jobs and jobs to reclaim in between, so this also bounds
    /// how late a delayed job published by another process can be seen.
    #[must_use]
    pub fn block(mut self, block: Duration) -> Options {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Dead-letter a job once it has been delivered this many times without
    /// anyone settling it (its holders died or stalled: a poison job);
    /// `None` never does (default 16).
    #[must_use]
    pub fn max_deliveries(mut self, max: Option<u32>) -> Options {
        self.max_deliveries = max.map(|m| m.max(1));
        self
    }

    /// The connect, write and read timeout beyond a blocking read's own
    /// time (default 5 s). A server that does not answer within it counts as
    /// a lost connection.
    #[must_use]
    pub fn io_timeout(mut self, timeout: Duration) -> Options {
        self.io_timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// The delays between reconnection attempts: from `min`, doubling up to
    /// `max`, with jitter (default 50 ms to 2 s).
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Options {
        self.backoff = (min, max);
        self
    }

    /// Delete, when a handle connects, consumers of the group that hold no
    /// job and were idle this long (default a day; `None` keeps them). The
    /// check and the deletion are one atomic script, so a consumer that
    /// holds a job is never deleted.
    #[must_use]
    pub fn reap_idle_consumers(mut self, idle: Option<Duration>) -> Options {
        self.reap_idle_consumers = idle;
        self
    }

    pub(crate) fn reclaim_interval(&self) -> Duration {
        self.reclaim_every
            .unwrap_or(self.lease / 2)
            .max(Duration::from_millis(1))
    }
}
