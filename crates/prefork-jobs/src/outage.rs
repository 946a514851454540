//! [`Outage`]: what a worker or feeder says while its broker is away. One
//! WARN when the first fetch fails, nothing for the retries, one INFO when
//! a fetch works again, with how long it was away and how many fetches
//! failed; an operator reads two lines per process for an outage, not one
//! a retry (113 lines for a 3 s redis outage with 4 workers, before).

use std::time::Instant;

use prefork_broker::BrokerError;

/// A process's view of its broker's availability, fed by its fetches.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// When the first fetch of the current outage failed.
    since: Option<Instant>,
    /// Fetches that failed in the current outage, the first included.
    failed: u64,
}

impl Outage {
    /// A fetch on `queue` failed with the retryable `error`: the first of
    /// an outage logs a WARN, later ones a DEBUG.
    pub(crate) fn failed(&mut self, queue: &str, error: &BrokerError) {
        self.failed += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(%queue, %error, "broker unavailable; fetching again quietly until it is back");
        } else {
            tracing::debug!(%queue, %error, failed = self.failed, "fetch failed again");
        }
    }

    /// A fetch on `queue` worked: ends an outage, if one was going on, with
    /// an INFO.
    pub(crate) fn ok(&mut self, queue: &str) {
        if let Some(since) = self.since.take() {
            // Taken out of the macro: a disabled level does not evaluate
            // its fields.
            let failed = std::mem::take(&mut self.failed);
            tracing::info!(%queue, down_for = ?since.elapsed(), failed_fetches = failed, "broker available again");
        }
    }

    /// Whether an outage is going on.
    #[cfg(test)]
    fn ongoing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefork_broker::ErrorKind;

    #[test]
    fn an_outage_is_counted_from_its_first_failure_to_the_next_success() {
        let e = BrokerError::new(ErrorKind::Transient, "connection refused");
        let mut o = Outage::default();
        o.ok("q");
        assert!(!o.ongoing());
        for _ in 0..5 {
            o.failed("q", &e);
        }
        assert!(o.ongoing());
        assert_eq!(o.failed, 5);
        o.ok("q");
        assert!(!o.ongoing());
        assert_eq!(o.failed, 0, "the next outage counts from zero");
    }
}
