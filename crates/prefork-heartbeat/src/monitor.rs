//! [`Monitor`]: per-worker liveness deadlines, and the [`Clock`] it reads.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A time source. The master uses [`SystemClock`]; tests inject a
/// [`ManualClock`] so that timeouts are tested without sleeping.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Instant;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Rc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// The real clock: [`Instant::now`] (monotonic).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to. Clones share the same time, so a
/// test keeps one clone and gives another to the [`Monitor`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_heartbeat::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// let t0 = clock.now();
/// shared.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - t0, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl ManualClock {
    /// A clock stopped at the current time.
    pub fn new() -> Self {
        ManualClock::starting_at(Instant::now())
    }

    /// A clock stopped at `t`.
    pub fn starting_at(t: Instant) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(t)),
        }
    }

    /// Moves the time forward by `d`, for every clone.
    ///
    /// # Panics
    ///
    /// If the new time cannot be represented as an `Instant`.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now
            .checked_add(d)
            .expect("ManualClock advanced past the end of time");
    }

    /// Sets the time, for every clone. Going backwards is allowed (a real
    /// monotonic clock never does; the [`Monitor`] copes without panicking).
    pub fn set(&self, t: Instant) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One worker's state in the monitor.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Last beat (or insertion).
    beat: Instant,
    timeout: Duration,
    deadline: Instant,
    /// Unique tag of this deadline in the order map; also breaks ties in
    /// insertion order.
    seq: u64,
}

/// Per-worker liveness deadlines for the master.
///
/// Each key (a worker id, a pid...) has a timeout; its deadline is its last
/// beat plus its timeout. The master calls [`beat`](Monitor::beat) on every
/// message from a worker, asks [`late`](Monitor::late) who missed its
/// deadline, and sleeps in `mio::Poll::poll` for
/// [`until_next`](Monitor::until_next).
///
/// Cost: deadlines are kept in a `BTreeMap` ordered by time beside a
/// `HashMap` by key, so `beat`, `insert`, `set_timeout` and `remove` are
/// O(log n), [`next_deadline`](Monitor::next_deadline) is O(log n) and
/// [`late`](Monitor::late) is O(log n + late ones), whatever the number of
/// workers (1,000 is nothing).
///
/// Times come from the clock `C`; comparisons saturate, so a clock that goes
/// backwards never panics.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_heartbeat::{ManualClock, Monitor};
///
/// let clock = ManualClock::new();
/// let mut monitor = Monitor::new(clock.clone());
/// monitor.insert("w1", Duration::from_secs(30));
/// monitor.insert("w2", Duration::from_secs(30));
///
/// clock.advance(Duration::from_secs(20));
/// monitor.beat(&"w2");
/// assert_eq!(monitor.until_next(), Some(Duration::from_secs(10))); // w1's deadline
///
/// clock.advance(Duration::from_secs(15));
/// assert_eq!(monitor.late(), vec!["w1"]);
/// assert_eq!(monitor.overdue(&"w1"), Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone)]
pub struct Monitor<K, C = SystemClock> {
    clock: C,
    entries: HashMap<K, Entry>,
    order: BTreeMap<(Instant, u64), K>,
    next_seq: u64,
}

impl<K: Eq + Hash + Clone, C: Clock> Monitor<K, C> {
    /// An empty monitor reading `clock`.
    pub fn new(clock: C) -> Self {
        Monitor {
            clock,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// The clock the monitor reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Starts watching `key`: its deadline is now plus `timeout`. A key
    /// already watched is replaced (new timeout, deadline from now).
    pub fn insert(&mut self, key: K, timeout: Duration) {
        let now = self.clock.now();
        if let Some(old) = self.entries.get(&key) {
            self.order.remove(&(old.deadline, old.seq));
        }
        let entry = self.schedule(key.clone(), now, timeout);
        self.entries.insert(key, entry);
    }

    /// Records a sign of life: the deadline of `key` becomes now plus its
    /// timeout. Returns `false` (and does nothing) if `key` is not watched.
    pub fn beat(&mut self, key: &K) -> bool {
        let now = self.clock.now();
        self.reschedule(key, |e| e.beat = now)
    }

    /// Changes the timeout of `key`, e.g. a longer one while a job runs. The
    /// new deadline counts from the last beat, not from now (call
    /// [`beat`](Monitor::beat) as well to restart it). Returns `false` if
    /// `key` is not watched.
    pub fn set_timeout(&mut self, key: &K, timeout: Duration) -> bool {
        self.reschedule(key, |e| e.timeout = timeout)
    }

    /// Stops watching `key`. Returns `false` if it was not watched.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.entries.remove(key) {
            Some(e) => {
                self.order.remove(&(e.deadline, e.seq));
                true
            }
            None => false,
        }
    }

    /// The keys whose deadline is now or past, most overdue first (ties in
    /// the order their deadlines were set).
    pub fn late(&self) -> Vec<K> {
        let now = self.clock.now();
        self.order
            .range(..=(now, u64::MAX))
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// How far past its deadline `key` is: `Some` (zero at the deadline
    /// itself) when it is late, `None` when it is not late or not watched.
    pub fn overdue(&self, key: &K) -> Option<Duration> {
        let e = self.entries.get(key)?;
        let now = self.clock.now();
        (e.deadline <= now).then(|| now.duration_since(e.deadline))
    }

    /// The deadline of `key`, if watched.
    pub fn deadline(&self, key: &K) -> Option<Instant> {
        self.entries.get(key).map(|e| e.deadline)
    }

    /// The timeout of `key`, if watched.
    pub fn timeout(&self, key: &K) -> Option<Duration> {
        self.entries.get(key).map(|e| e.timeout)
    }

    /// Whether `key` is watched.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The earliest deadline, past or future; `None` when empty.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.first_key_value().map(|(&(d, _), _)| d)
    }

    /// Time left until the earliest deadline, zero if it has passed; `None`
    /// when empty. Made for the timeout of `mio::Poll::poll`.
    pub fn until_next(&self) -> Option<Duration> {
        let d = self.next_deadline()?;
        Some(d.saturating_duration_since(self.clock.now()))
    }

    /// Number of keys watched.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is watched.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys watched, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    fn reschedule(&mut self, key: &K, change: impl FnOnce(&mut Entry)) -> bool {
        let Some(mut e) = self.entries.get(key).copied() else {
            return false;
        };
        let k = self
            .order
            .remove(&(e.deadline, e.seq))
            .expect("every entry has a deadline in the order map");
        change(&mut e);
        let e = self.schedule(k, e.beat, e.timeout);
        self.entries.insert(key.clone(), e);
        true
    }

    /// Puts `key` in the order map at `beat + timeout`; returns its entry.
    fn schedule(&mut self, key: K, beat: Instant, timeout: Duration) -> Entry {
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = far_add(beat, timeout);
        self.order.insert((deadline, seq), key);
        Entry {
            beat,
            timeout,
            deadline,
            seq,
        }
    }
}

/// `t + d`, or as far as an `Instant` goes when that overflows (a timeout of
/// `Duration::MAX` means "never").
fn far_add(t: Instant, d: Duration) -> Instant {
    if let Some(x) = t.checked_add(d) {
        return x;
    }
    // Halve until it fits: at worst ~64 steps, only for absurd timeouts.
    let mut step = d;
    let mut x = t;
    while !step.is_zero() {
        match x.checked_add(step) {
            Some(y) => x = y,
            None => step /= 2,
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_timeout_is_never_late_and_does_not_panic() {
        let clock = ManualClock::new();
        let mut m = Monitor::new(clock.clone());
        m.insert(1, Duration::MAX);
        clock.advance(Duration::from_secs(1 << 40));
        assert!(m.late().is_empty());
        assert!(m.until_next().unwrap() > Duration::from_secs(1 << 40));
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let mut m = Monitor::new(clock.clone());
        clock.advance(Duration::from_secs(10));
        m.insert(1, Duration::from_secs(1));
        clock.set(t0);
        assert_eq!(m.until_next(), Some(Duration::from_secs(11)));
        assert_eq!(m.overdue(&1), None);
    }
}
