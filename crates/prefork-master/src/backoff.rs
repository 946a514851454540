//! Pure timing arithmetic: exponential backoff with jitter, jittered
//! recycling limits, and the small random number generator they share.

use std::time::Duration;

/// A small, seedable pseudo-random generator (xorshift64*), good enough to
/// spread restarts apart; not for anything security related.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (any value; zero is remapped).
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A generator seeded from the clock and the process id.
    pub(crate) fn from_entropy() -> XorShift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        XorShift::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform float in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The delay before the `failures`-th consecutive restart of a worker slot:
/// `initial * 2^(failures-1)`, capped at `max`, then "equal jitter": a
/// uniform value in `[d/2, d]`, so that slots failing together do not
/// restart together. Zero failures means no delay.
pub(crate) fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    rng: &mut XorShift,
) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = failures.saturating_sub(1).min(32);
    let full = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    let half = full / 2;
    half + half.mul_f64(rng.unit())
}

/// A limit reduced by a random fraction of up to `jitter` (in `[0, 1)`):
/// uniform in `(limit * (1 - jitter), limit]`, never below one.
pub(crate) fn jittered_count(limit: u64, jitter: f64, rng: &mut XorShift) -> u64 {
    let cut = (limit as f64 * jitter * rng.unit()) as u64;
    limit.saturating_sub(cut).max(1)
}

/// A duration reduced by a random fraction of up to `jitter` (in `[0, 1)`).
pub(crate) fn jittered_duration(limit: Duration, jitter: f64, rng: &mut XorShift) -> Duration {
    limit.saturating_sub(limit.mul_f64(jitter * rng.unit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_until_the_cap() {
        let mut rng = XorShift::new(7);
        let (init, max) = (100 * MS, 1000 * MS);
        assert_eq!(backoff(0, init, max, &mut rng), Duration::ZERO);
        for (failures, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = backoff(failures, init, max, &mut rng);
            assert!(d >= full * MS / 2 && d <= full * MS, "{failures}: {d:?}");
        }
    }

    #[test]
    fn rng_spreads_values() {
        let mut rng = XorShift::new(1);
        let xs: Vec<f64> = (0..1000).map(|_| rng.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let low = xs.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below one half");
    }

    proptest! {
        #[test]
        fn backoff_stays_within_bounds(failures in 0u32..200, init_ms in 1u64..10_000,
                                       extra_ms in 0u64..100_000, seed: u64) {
            let init = Duration::from_millis(init_ms);
            let max = init + Duration::from_millis(extra_ms);
            let d = backoff(failures, init, max, &mut XorShift::new(seed));
            prop_assert!(d <= max);
            if failures > 0 {
                prop_assert!(d >= init / 2);
            }
        }

        #[test]
        fn backoff_never_shrinks_on_average(failures in 1u32..60, seed: u64) {
            // The lower bound of each step is at least the lower bound of the previous one.
            let (init, max) = (Duration::from_millis(50), Duration::from_secs(60));
            let mut rng = XorShift::new(seed);
            let a = backoff(failures, init, max, &mut rng);
            let b = backoff(failures + 1, init, max, &mut rng);
            prop_assert!(b >= a / 2);
        }

        #[test]
        fn jitter_only_lowers_limits(limit in 1u64..u64::MAX / 2, jitter in 0.0f64..0.99, seed: u64) {
            let mut rng = XorShift::new(seed);
            let n = jittered_count(limit, jitter, &mut rng);
            prop_assert!(n >= 1 && n <= limit);
            prop_assert!(n as f64 >= limit as f64 * (1.0 - jitter) - 1.0);
            let d = jittered_duration(Duration::from_millis(limit % 10_000_000), jitter, &mut rng);
            prop_assert!(d <= Duration::from_millis(limit % 10_000_000));
        }
    }
}
