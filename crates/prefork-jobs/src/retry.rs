//! Retry policy: how many attempts, and how long to wait between them
//! (exponential backoff with jitter). Pure: the randomness is an argument.

use std::time::Duration;

/// How often a failing job is tried and how long it waits in between.
///
/// Attempt `n` (1-based) that fails is retried after
/// `min(base * 2^(n-1), max_delay)`, less a random part of up to `jitter`
/// of it (so workers that failed together do not retry together), as long
/// as `n < max_attempts`; the failure of attempt `max_attempts` sends the
/// job to the dead letters.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_jobs::RetryPolicy;
///
/// let p = RetryPolicy::new(5)
///     .base(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(10))
///     .jitter(0.0);
/// assert_eq!(p.next_delay(1, 0.5), Some(Duration::from_millis(100)));
/// assert_eq!(p.next_delay(3, 0.5), Some(Duration::from_millis(400)));
/// assert_eq!(p.next_delay(5, 0.5), None); // the last attempt failed: dead letter
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    max_delay: Duration,
    jitter: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 1 s base, 5 min cap, jitter 0.5.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The default policy with `max_attempts` attempts (at least 1).
    pub fn new(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::default().with_max_attempts(max_attempts)
    }

    /// A policy that never retries: the first failure is final.
    pub fn never() -> RetryPolicy {
        RetryPolicy::new(1)
    }

    /// Sets the number of attempts (clamped to at least 1), as
    /// [`new`](RetryPolicy::new) does; read it with
    /// [`max_attempts`](RetryPolicy::max_attempts).
    pub fn with_max_attempts(mut self, n: u32) -> RetryPolicy {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the delay after the first failure.
    pub fn base(mut self, base: Duration) -> RetryPolicy {
        self.base = base;
        self
    }

    /// Sets the longest delay.
    pub fn max_delay(mut self, max: Duration) -> RetryPolicy {
        self.max_delay = max;
        self
    }

    /// Sets the jitter: the fraction (clamped to `0.0..=1.0`) of each delay
    /// that is randomly taken off.
    pub fn jitter(mut self, fraction: f64) -> RetryPolicy {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The number of attempts: the first failure of attempt
    /// `max_attempts()` is final.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before retrying after attempt `attempt` failed, or `None`
    /// when that was the last attempt. `random` is a number in `[0, 1)`
    /// (values outside are clamped) choosing how much jitter to take off.
    pub fn next_delay(&self, attempt: u32, random: f64) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exp = attempt.saturating_sub(1).min(63);
        let full = self
            .base
            .checked_mul(1u32 << exp.min(31))
            .filter(|_| exp < 32)
            .map_or(self.max_delay, |d| d.min(self.max_delay));
        let random = if random.is_nan() {
            0.0
        } else {
            random.clamp(0.0, 1.0)
        };
        Some(full.mul_f64(1.0 - self.jitter * random))
    }
}

/// A small xorshift generator for jitter: not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn seeded() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// A number in `[0, 1)`.
    pub(crate) fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        (1u32..40, 0u64..10_000, 0u64..1_000_000, 0.0f64..=1.0).prop_map(|(n, b, m, j)| {
            RetryPolicy::new(n)
                .base(Duration::from_millis(b))
                .max_delay(Duration::from_millis(m))
                .jitter(j)
        })
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_the_cap(p in policy(), attempt in 0u32..200, r in 0.0f64..1.0) {
            if let Some(d) = p.next_delay(attempt, r) {
                prop_assert!(d <= p.max_delay);
            }
        }

        #[test]
        fn retries_stop_exactly_at_max_attempts(p in policy(), r in 0.0f64..1.0) {
            for attempt in 1..p.max_attempts {
                prop_assert!(p.next_delay(attempt, r).is_some());
            }
            prop_assert_eq!(p.next_delay(p.max_attempts, r), None);
            prop_assert_eq!(p.next_delay(p.max_attempts + 1, r), None);
        }

        #[test]
        fn without_jitter_delays_grow_until_the_cap(p in policy(), attempt in 1u32..39) {
            let p = p.jitter(0.0).with_max_attempts(40);
            let a = p.next_delay(attempt, 0.3).unwrap();
            let b = p.next_delay(attempt + 1, 0.3).unwrap();
            prop_assert!(b >= a);
            prop_assert!(b == p.max_delay || b == a * 2);
        }

        #[test]
        fn jitter_takes_off_at_most_its_fraction(p in policy(), attempt in 1u32..39, r in 0.0f64..1.0) {
            let p = p.with_max_attempts(40);
            let full = p.jitter(0.0).next_delay(attempt, r).unwrap();
            let d = p.next_delay(attempt, r).unwrap();
            prop_assert!(d <= full);
            prop_assert!(d.as_secs_f64() >= full.as_secs_f64() * (1.0 - p.jitter) - 1e-6);
        }

        #[test]
        fn jitter_source_stays_in_range(seed in any::<u64>()) {
            let mut j = Jitter(seed | 1);
            for _ in 0..100 {
                let x = j.next();
                prop_assert!((0.0..1.0).contains(&x));
            }
        }
    }

    #[test]
    fn never_means_one_attempt() {
        assert_eq!(RetryPolicy::never().next_delay(1, 0.0), None);
        assert_eq!(RetryPolicy::new(0).max_attempts(), 1);
    }
}
