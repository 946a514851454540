//! Reconnection backoff: exponential, capped, with jitter; pure (the caller
//! supplies the randomness and reads the clock), so it is tested without
//! sleeping.

use std::time::Duration;

/// The delays between connection attempts: `min`, doubling up to `max`,
/// each scaled by a random factor in [1/2, 1] so a fleet of workers that
/// lost the same server do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt after one more failure; `random`
    /// is any 64-bit value (it picks the jitter).
    pub(crate) fn failed(&mut self, random: u64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // base * (1/2 + (random mod 1024) / 2048)
        let half = base / 2;
        half + half.mul_f64((random % 1024) as f64 / 1023.0)
    }

    /// Back to the shortest delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A small xorshift generator, seeded per process and handle.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        Rng(h.finish() | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::{Backoff, Rng};
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn doubles_to_the_cap_then_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(400));
        // random 1023: the full base each time.
        let got: Vec<_> = (0..6).map(|_| b.failed(1023)).collect();
        assert_eq!(got, [ms(50), ms(100), ms(200), ms(400), ms(400), ms(400)]);
        b.reset();
        assert_eq!(b.failed(1023), ms(50));
        assert_eq!(b.failed(0), ms(50), "random 0: half of the 100 ms base");
    }

    #[test]
    fn the_rng_moves() {
        let mut r = Rng::new();
        let (a, b) = (r.next(), r.next());
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }

    proptest! {
        #[test]
        fn delays_stay_within_half_the_base_and_the_cap(
            min_ms in 1u64..1000, extra in 0u64..10_000, randoms in proptest::collection::vec(any::<u64>(), 1..40)
        ) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(min_ms + extra));
            let mut b = Backoff::new(min, max);
            let mut base = min;
            for r in randoms {
                let d = b.failed(r);
                prop_assert!(d <= base && d >= base / 2, "{d:?} outside [{:?}, {base:?}]", base / 2);
                prop_assert!(d <= max);
                base = (base * 2).min(max);
            }
        }
    }
}
