//! [`QueueStats`]: how many jobs a queue holds in each state, as
//! [`Broker::stats`](crate::Broker::stats) reports them.

/// How many jobs a queue holds in each state, from the broker's own
/// counters (see each adapter's README for what it reads).
///
/// The counts are a snapshot: jobs move while they are read, and an adapter
/// that reads several counters in several round trips may see a job twice
/// or not at all when it moves between them. `None` means the broker cannot
/// tell (RabbitMQ does not expose its unacked count over AMQP, for
/// instance); it is never a stand-in for zero.
///
/// # Examples
///
/// ```
/// use prefork_broker::QueueStats;
///
/// let s = QueueStats::new(7, 1).with_delayed(2).with_extra("quarantined", 0);
/// assert_eq!((s.ready, s.delayed, s.claimed, s.dead), (7, Some(2), None, 1));
/// assert_eq!(s.extra("quarantined"), Some(0));
/// assert_eq!(s.to_string(), "ready 7\ndelayed 2\nclaimed unknown\ndead 1\nquarantined 0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueStats {
    /// Jobs a fetch would be handed now.
    pub ready: u64,
    /// Jobs waiting for a delay to pass (delayed publishes and retries);
    /// `None` when the broker cannot count them.
    pub delayed: Option<u64>,
    /// Jobs fetched and not yet settled (in flight); `None` when the broker
    /// cannot count them.
    pub claimed: Option<u64>,
    /// Dead letters, as [`Broker::dead_letters`](crate::Broker::dead_letters)
    /// lists them.
    pub dead: u64,
    /// Counts of the adapter's own (the spool's quarantined files, for
    /// instance), by name, in the adapter's order.
    pub extras: Vec<(&'static str, u64)>,
}

impl QueueStats {
    /// Counts of `ready` jobs and `dead` letters, with the delayed and
    /// claimed counts unknown until given.
    pub fn new(ready: u64, dead: u64) -> QueueStats {
        QueueStats {
            ready,
            dead,
            ..QueueStats::default()
        }
    }

    /// The same counts with `delayed` jobs.
    pub fn with_delayed(mut self, delayed: u64) -> QueueStats {
        self.delayed = Some(delayed);
        self
    }

    /// The same counts with `claimed` jobs.
    pub fn with_claimed(mut self, claimed: u64) -> QueueStats {
        self.claimed = Some(claimed);
        self
    }

    /// The same counts with one more count of the adapter's own.
    pub fn with_extra(mut self, name: &'static str, count: u64) -> QueueStats {
        self.extras.push((name, count));
        self
    }

    /// The adapter's own count named `name`, if it gave one.
    pub fn extra(&self, name: &str) -> Option<u64> {
        self.extras
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
    }
}

impl std::fmt::Display for QueueStats {
    /// One `name count` line per count (`unknown` for a count the broker
    /// cannot tell), the adapter's own counts last.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = |c: Option<u64>| c.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
        write!(
            f,
            "ready {}\ndelayed {}\nclaimed {}\ndead {}",
            self.ready,
            known(self.delayed),
            known(self.claimed),
            self.dead
        )?;
        for (name, count) in &self.extras {
            write!(f, "\n{name} {count}")?;
        }
        Ok(())
    }
}
