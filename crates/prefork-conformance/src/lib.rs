//! The conformance kit of prefork's broker adapters; the README below is
//! its guide (the case table, how an adapter runs it), and its example is
//! compiled as a doctest.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefork_broker::{Broker, BrokerError, Delivery, DeliveryId, ErrorKind, QueueStats};

/// Environment variable naming the helper role of a re-executed test binary.
const ROLE_ENV: &str = "PREFORK_BROKER_KIT_ROLE";
/// Environment variable naming the queue a helper works on.
const QUEUE_ENV: &str = "PREFORK_BROKER_KIT_QUEUE";

type Opener = dyn Fn(&str) -> Result<Box<dyn Broker>, BrokerError>;

/// The conformance suite, bound to a factory that opens a fresh handle on a
/// named queue of the broker under test.
///
/// The factory is called with queue names unique to each case (they match
/// `[a-z0-9-]{1,40}`), and again with the same name in helper processes, so
/// it must reach the same broker from any process (an address, a directory
/// known from the name alone).
pub struct Kit {
    open: Box<Opener>,
    lease: Duration,
    patience: Duration,
    redeliveries_counted: bool,
}

impl fmt::Debug for Kit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kit")
            .field("lease", &self.lease)
            .field("patience", &self.patience)
            .field("redeliveries_counted", &self.redeliveries_counted)
            .finish_non_exhaustive()
    }
}

/// The names of every case, in the order [`cases!`](crate::cases) lists them.
pub const CASES: &[&str] = &[
    "round_trip_bytes",
    "fetch_times_out_empty",
    "batch_fetch_respects_max",
    "ack_removes",
    "ack_batch_removes_all",
    "redelivered_after_holder_killed",
    "retry_delay_hides_the_job",
    "delayed_publish_hides_the_job",
    "release_returns_without_attempt",
    "dead_letters_kept_listed_redriven",
    "claims_are_exclusive",
    "touch_keeps_the_claim",
    "concurrent_consumers_ack_once",
    "restart_loses_nothing",
    "taken_over_at_once",
    "publish_batch_round_trip",
    "large_payload_round_trip",
    "deferred_acks_hold",
    "stats_follow_the_jobs",
    "dead_letters_deleted",
];

/// Expands to an array with one test case per conformance case: each element
/// is `$case("name", || $kit.name())`, e.g. with
/// `prefork_tests::harness::Case::new` as `$case` and a function call that
/// builds the [`Kit`](crate::Kit) as `$kit` (closures that
/// capture nothing, so they coerce to `fn()`).
///
/// # Examples
///
/// ```no_run
/// # use prefork_conformance::Kit;
/// # fn open(_queue: &str) -> Result<Box<dyn prefork_broker::Broker>, prefork_broker::BrokerError> {
/// #     Err(prefork_broker::BrokerError::new(prefork_broker::ErrorKind::Unsupported, "your adapter here"))
/// # }
/// # fn kit() -> Kit { Kit::new(open) }
/// # #[derive(Clone, Copy)] struct Case;
/// # impl Case { fn new(_: &'static str, _: fn()) -> Case { Case } }
/// let cases = prefork_conformance::cases!(Case::new, kit());
/// assert_eq!(cases.len(), prefork_conformance::CASES.len());
/// ```
#[macro_export]
macro_rules! cases {
    ($case:path, $kit:expr) => {
        [
            $case("round_trip_bytes", || $kit.round_trip_bytes()),
            $case("fetch_times_out_empty", || $kit.fetch_times_out_empty()),
            $case("batch_fetch_respects_max", || {
                $kit.batch_fetch_respects_max()
            }),
            $case("ack_removes", || $kit.ack_removes()),
            $case("ack_batch_removes_all", || $kit.ack_batch_removes_all()),
            $case("redelivered_after_holder_killed", || {
                $kit.redelivered_after_holder_killed()
            }),
            $case("retry_delay_hides_the_job", || {
                $kit.retry_delay_hides_the_job()
            }),
            $case("delayed_publish_hides_the_job", || {
                $kit.delayed_publish_hides_the_job()
            }),
            $case("release_returns_without_attempt", || {
                $kit.release_returns_without_attempt()
            }),
            $case("dead_letters_kept_listed_redriven", || {
                $kit.dead_letters_kept_listed_redriven()
            }),
            $case("claims_are_exclusive", || $kit.claims_are_exclusive()),
            $case("touch_keeps_the_claim", || $kit.touch_keeps_the_claim()),
            $case("concurrent_consumers_ack_once", || {
                $kit.concurrent_consumers_ack_once()
            }),
            $case("restart_loses_nothing", || $kit.restart_loses_nothing()),
            $case("taken_over_at_once", || $kit.taken_over_at_once()),
            $case("publish_batch_round_trip", || {
                $kit.publish_batch_round_trip()
            }),
            $case("large_payload_round_trip", || {
                $kit.large_payload_round_trip()
            }),
            $case("deferred_acks_hold", || $kit.deferred_acks_hold()),
            $case("stats_follow_the_jobs", || $kit.stats_follow_the_jobs()),
            $case("dead_letters_deleted", || $kit.dead_letters_deleted()),
        ]
    };
}

impl Kit {
    /// A kit whose handles come from `open(queue)`. Defaults: a claim
    /// timeout ([`lease`](Kit::lease)) of 1 s, 20 s of
    /// [`patience`](Kit::patience), redeliveries counted.
    pub fn new<F, B>(open: F) -> Kit
    where
        F: Fn(&str) -> Result<B, BrokerError> + 'static,
        B: Broker + 'static,
    {
        Kit {
            open: Box::new(move |q| Ok(Box::new(open(q)?) as Box<dyn Broker>)),
            lease: Duration::from_secs(1),
            patience: Duration::from_secs(20),
            redeliveries_counted: true,
        }
    }

    /// Declares the claim timeout the factory's handles use (lease,
    /// visibility timeout, TTR, reclaim idle time): a held job that is not
    /// touched comes back after about this long. Keep it short (about a
    /// second) so the suite is quick.
    pub fn lease(mut self, lease: Duration) -> Kit {
        self.lease = lease;
        self
    }

    /// The longest the kit waits for something that must happen (a job to
    /// arrive, a redelivery after the claim timeout, a helper to finish).
    /// Generous, so a loaded machine does not fail the suite; keep it well
    /// under the test runner's per-case time limit.
    pub fn patience(mut self, patience: Duration) -> Kit {
        self.patience = patience;
        self
    }

    /// Whether the broker counts a redelivery after the holder died as an
    /// attempt (see [`Delivery::attempt`]); when `false` the kit does not
    /// check attempt numbers of such redeliveries (retries are always
    /// checked).
    pub fn redeliveries_counted(mut self, counted: bool) -> Kit {
        self.redeliveries_counted = counted;
        self
    }

    /// Runs a helper role and exits the process, when this process was
    /// started by the kit as a helper; returns at once otherwise. Call it
    /// first thing in the test's `main`.
    pub fn serve_role(&self) {
        let Ok(role) = std::env::var(ROLE_ENV) else {
            return;
        };
        let queue = std::env::var(QUEUE_ENV).expect("kit helper started without a queue");
        let mut b = self.open(&queue);
        match role.as_str() {
            "hold" => self.role_hold(&mut b),
            "consume" => self.role_consume(&mut b),
            "partial" => self.role_partial(&mut b),
            "hold3" => self.role_hold3(&mut b),
            other => panic!("unknown kit role {other:?}"),
        }
        std::process::exit(0);
    }

    // ----- the cases -------------------------------------------------------

    /// Publish then fetch returns the exact bytes: an empty payload, every
    /// byte value, and 1 MiB of pseudo-random bytes.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn round_trip_bytes(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
        let big = pseudo_random(1 << 20, 0x5eed);
        let sent = [Vec::new(), all_bytes, big];
        for p in &sent {
            b.publish(p, Duration::ZERO).expect("publish");
        }
        let got = self.collect(&mut b, sent.len());
        let mut got_payloads: Vec<&[u8]> = got.iter().map(Delivery::payload).collect();
        let mut want: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        got_payloads.sort();
        want.sort();
        assert!(
            got_payloads == want,
            "payloads changed in transit (lengths sent {:?}, got {:?})",
            want.iter().map(|p| p.len()).collect::<Vec<_>>(),
            got_payloads.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
        for d in &got {
            assert_eq!(d.attempt(), 1, "first delivery of {}", d.id());
        }
        self.ack_all(&mut b, got);
        assert_empty(&mut b, Duration::from_millis(200));
    }

    /// Fetch on an empty queue returns an empty batch when the timeout
    /// passes, not an error.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn fetch_times_out_empty(&self) {
        let mut b = self.open(&unique_queue());
        let got = b
            .fetch(5, Duration::from_millis(300))
            .expect("fetch on an empty queue");
        assert!(got.is_empty(), "empty queue gave {got:?}");
        assert!(
            b.fetch_one(Duration::ZERO).expect("fetch_one").is_none(),
            "empty queue gave a job"
        );
    }

    /// A batch never holds more than `max`; `max` 0 returns nothing; every
    /// job is fetched once.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn batch_fetch_respects_max(&self) {
        let mut b = self.open(&unique_queue());
        for i in 0..10 {
            b.publish(format!("batch-{i}").as_bytes(), Duration::ZERO)
                .expect("publish");
        }
        let none = b.fetch(0, Duration::from_millis(100)).expect("fetch 0");
        assert!(none.is_empty(), "fetch(max = 0) returned {none:?}");
        let deadline = Instant::now() + self.patience;
        let mut seen = BTreeSet::new();
        let mut held = Vec::new();
        while seen.len() < 10 {
            assert!(
                Instant::now() < deadline,
                "only {} of 10 jobs came",
                seen.len()
            );
            let batch = b.fetch(4, Duration::from_millis(500)).expect("fetch");
            assert!(batch.len() <= 4, "fetch(max = 4) returned {}", batch.len());
            for d in batch {
                assert!(
                    seen.insert(d.payload().to_vec()),
                    "job delivered twice: {d:?}"
                );
                held.push(d);
            }
        }
        self.ack_all(&mut b, held);
        assert_empty(&mut b, Duration::from_millis(200));
    }

    /// An acked job never comes back, even after the claim timeout passed,
    /// to this handle or a fresh one.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn ack_removes(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        b.publish(b"ack me", Duration::ZERO).expect("publish");
        let d = self.collect(&mut b, 1).pop().expect("one job");
        b.ack(d).expect("ack");
        assert_empty(&mut b, self.lease * 2 + Duration::from_millis(500));
        let mut fresh = self.open(&q);
        assert_empty(&mut fresh, Duration::from_millis(300));
    }

    /// [`Broker::ack_batch`] acks every delivery it is given (none handed
    /// back), and an empty batch is a no-op.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn ack_batch_removes_all(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        assert!(b.ack_batch(Vec::new()).is_empty(), "an empty batch failed");
        for i in 0..5_u8 {
            b.publish(&[b'j', i], Duration::ZERO).expect("publish");
        }
        let ds = self.collect(&mut b, 5);
        let failed = b.ack_batch(ds);
        assert!(failed.is_empty(), "not acked: {failed:?}");
        assert_empty(&mut b, self.lease * 2 + Duration::from_millis(500));
        let mut fresh = self.open(&q);
        assert_empty(&mut fresh, Duration::from_millis(300));
    }

    /// A job held by a process that is then SIGKILLed is delivered again (to
    /// another handle), with its attempt number counted.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn redelivered_after_holder_killed(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        b.publish(b"survive the kill", Duration::ZERO)
            .expect("publish");
        let mut holder = Helper::spawn("hold", &q);
        let line = holder.next_line().expect("the holder said nothing");
        assert_eq!(line, format!("held {}", hex(b"survive the kill")));
        holder.kill();
        let mut other = self.open(&q);
        let d = self.collect(&mut other, 1).pop().expect("redelivery");
        assert_eq!(d.payload(), b"survive the kill");
        if self.redeliveries_counted {
            assert!(
                d.attempt() >= 2,
                "redelivery after a kill has attempt {}",
                d.attempt()
            );
        }
        other.ack(d).expect("ack the redelivered job");
        assert_empty(&mut other, Duration::from_millis(200));
    }

    /// A retried job is not visible before its delay has passed, comes back
    /// after it, and counts one attempt.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn retry_delay_hides_the_job(&self) {
        let mut b = self.open(&unique_queue());
        b.publish(b"later", Duration::ZERO).expect("publish");
        let d = self.collect(&mut b, 1).pop().expect("one job");
        assert_eq!(d.attempt(), 1);
        let delay = Duration::from_secs(1);
        let start = Instant::now();
        b.retry(d, delay).expect("retry");
        let d = self.collect(&mut b, 1).pop().expect("the retried job");
        let waited = start.elapsed();
        assert!(
            waited >= delay,
            "retried job visible after {waited:?} < {delay:?}"
        );
        assert_eq!(d.payload(), b"later");
        assert_eq!(d.attempt(), 2, "a retry counts one attempt");
        b.ack(d).expect("ack");
    }

    /// A job published with a delay is not visible before the delay passed.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn delayed_publish_hides_the_job(&self) {
        let mut b = self.open(&unique_queue());
        let delay = Duration::from_secs(1);
        let start = Instant::now();
        b.publish(b"scheduled", delay).expect("publish");
        b.publish(b"now", Duration::ZERO).expect("publish");
        let first = self.collect(&mut b, 1).pop().expect("the undelayed job");
        if first.payload() == b"scheduled" {
            let waited = start.elapsed();
            assert!(waited >= delay, "delayed job visible after {waited:?}");
        }
        // Acked now: held while the delay passes, its claim (as long as the
        // delay) would expire.
        let (first_payload, first_attempt) = (first.payload().to_vec(), first.attempt());
        b.ack(first).expect("ack");
        let second = self.collect(&mut b, 1).pop().expect("the delayed job");
        let waited = start.elapsed();
        assert!(
            waited >= delay,
            "delayed job visible after {waited:?} < {delay:?}"
        );
        let mut payloads = [first_payload.as_slice(), second.payload()];
        payloads.sort();
        assert_eq!(payloads, [&b"now"[..], &b"scheduled"[..]]);
        assert_eq!((first_attempt, second.attempt()), (1, 1));
        b.ack(second).expect("ack");
    }

    /// A released job comes back (before its claim would have expired,
    /// typically at once) with the same attempt number.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn release_returns_without_attempt(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        b.publish(b"not started", Duration::ZERO).expect("publish");
        let d = self.collect(&mut b, 1).pop().expect("one job");
        assert_eq!(d.attempt(), 1);
        b.release(d).expect("release");
        let mut other = self.open(&q);
        let d = self.collect(&mut other, 1).pop().expect("released job");
        assert_eq!(d.payload(), b"not started");
        assert_eq!(d.attempt(), 1, "release must not count an attempt");
        other.ack(d).expect("ack");
    }

    /// Dead-lettered jobs are not delivered again, are listed with their
    /// reason, and come back when re-driven; re-driving an unknown id is
    /// [`ErrorKind::NotFound`].
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn dead_letters_kept_listed_redriven(&self) {
        let mut b = self.open(&unique_queue());
        let reasons: BTreeMap<&[u8], &str> = [
            (
                &b"poison \x00\xff"[..],
                "handler panicked: index out of bounds\nat line 3 \u{2713}",
            ),
            (&b"unknown job"[..], "no handler named \"resize\""),
        ]
        .into_iter()
        .collect();
        for p in reasons.keys() {
            b.publish(p, Duration::ZERO).expect("publish");
        }
        for d in self.collect(&mut b, 2) {
            let reason = reasons[d.payload()];
            b.dead_letter(d, reason).expect("dead_letter");
        }
        assert_empty(&mut b, self.lease + Duration::from_millis(500));
        assert!(b.dead_letters(0).expect("dead_letters(0)").is_empty());
        assert_eq!(b.dead_letters(1).expect("dead_letters(1)").len(), 1);
        let dead = b.dead_letters(10).expect("dead_letters");
        assert_eq!(dead.len(), 2, "{dead:?}");
        for d in &dead {
            let want = reasons
                .get(d.payload())
                .unwrap_or_else(|| panic!("unexpected dead letter {d:?}"));
            assert_eq!(d.reason(), *want);
            assert_eq!(d.attempt(), 1);
        }
        let poison = dead
            .iter()
            .find(|d| d.payload().starts_with(b"poison"))
            .expect("poison");
        b.redrive(poison.id()).expect("redrive");
        let back = self.collect(&mut b, 1).pop().expect("the re-driven job");
        assert_eq!(back.payload(), poison.payload());
        b.ack(back).expect("ack");
        let left = b.dead_letters(10).expect("dead_letters");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].payload(), b"unknown job");
        let err = b
            .redrive(&DeliveryId::new("no-such-dead-letter"))
            .expect_err("redrive of an unknown id");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }

    /// A job held by one handle is not handed to another while the claim is
    /// live.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn claims_are_exclusive(&self) {
        let q = unique_queue();
        let (mut a, mut b) = (self.open(&q), self.open(&q));
        a.publish(b"mine", Duration::ZERO).expect("publish");
        let before_fetch = Instant::now();
        let d = self.collect(&mut a, 1).pop().expect("one job");
        let probe = (self.lease / 2).min(Duration::from_millis(500));
        if let Some(dup) = b.fetch_one(probe).expect("fetch") {
            let held = before_fetch.elapsed();
            assert!(
                held >= self.lease,
                "{dup:?} handed to a second handle while the first held it ({held:?} < lease {:?})",
                self.lease
            );
            return; // the machine stalled past the lease: legitimate
        }
        let held = before_fetch.elapsed();
        match a.ack(d) {
            Ok(()) => {}
            Err(e) if held >= self.lease && e.error().kind() == ErrorKind::LeaseLost => {}
            Err(e) => panic!("ack by the holder: {e}"),
        }
    }

    /// Renewing a claim with [`Broker::touch`] keeps it for several claim
    /// timeouts: no other handle gets the job, and the holder can ack it.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn touch_keeps_the_claim(&self) {
        let q = unique_queue();
        let (mut a, mut b) = (self.open(&q), self.open(&q));
        a.publish(b"long job", Duration::ZERO).expect("publish");
        let mut last_renewal = Instant::now();
        let mut d = self.collect(&mut a, 1).pop().expect("one job");
        let until = Instant::now() + self.lease * 3;
        while Instant::now() < until {
            sleep(self.lease / 5);
            let gap = last_renewal.elapsed();
            match a.touch(&mut d) {
                Ok(()) => last_renewal = Instant::now(),
                Err(e) if gap >= self.lease && e.kind() == ErrorKind::LeaseLost => return,
                Err(e) => panic!("touch {gap:?} after the last renewal: {e}"),
            }
            if let Some(dup) = b.fetch_one(Duration::ZERO).expect("fetch") {
                let gap = last_renewal.elapsed();
                assert!(
                    gap >= self.lease,
                    "{dup:?} handed out {gap:?} after its claim was renewed"
                );
                return;
            }
        }
        a.ack(d).expect("ack after renewals");
        assert_empty(&mut b, Duration::from_millis(200));
    }

    /// Three consumer processes drain a queue concurrently: every job is
    /// acked, and no job is acked by two consumers unless one of them held it
    /// past the claim timeout.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn concurrent_consumers_ack_once(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        let n = 150;
        let sent: BTreeSet<Vec<u8>> = (0..n).map(|i| format!("job-{i}").into_bytes()).collect();
        for p in &sent {
            b.publish(p, Duration::ZERO).expect("publish");
        }
        let helpers: Vec<Helper> = (0..3).map(|_| Helper::spawn("consume", &q)).collect();
        // payload -> how long each successful acker held it
        let mut acks: BTreeMap<Vec<u8>, Vec<Duration>> = BTreeMap::new();
        for h in helpers {
            for line in h.finish(self.patience * 2) {
                let mut words = line.split(' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("acked"), Some(p), Some(ms)) => {
                        let held = Duration::from_millis(ms.parse().expect("held ms"));
                        acks.entry(unhex(p)).or_default().push(held);
                    }
                    (Some("lost"), Some(_), None) => {}
                    _ => panic!("bad helper line {line:?}"),
                }
            }
        }
        // Whatever the helpers left (none should be left) is drained here.
        let deadline = Instant::now() + self.patience;
        while acks.len() < sent.len() && Instant::now() < deadline {
            for d in b.fetch(16, Duration::from_millis(300)).expect("fetch") {
                acks.entry(d.payload().to_vec())
                    .or_default()
                    .push(Duration::ZERO);
                b.ack(d).expect("ack");
            }
        }
        let got: BTreeSet<Vec<u8>> = acks.keys().cloned().collect();
        let lost: Vec<String> = sent
            .difference(&got)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert!(lost.is_empty(), "jobs never acked: {lost:?}");
        assert_eq!(got, sent, "jobs acked that were never sent");
        for (p, holds) in &acks {
            if holds.len() > 1 {
                let stalled = holds.iter().filter(|h| **h >= self.lease).count();
                assert!(
                    stalled >= holds.len() - 1,
                    "{} acked {} times while claims were live (holds {holds:?})",
                    String::from_utf8_lossy(p),
                    holds.len()
                );
            }
        }
        assert_empty(&mut b, Duration::from_millis(200));
    }

    /// A consumer process fetches a batch of 10 of 20 jobs, acks 3, releases
    /// 3 and exits holding 4; a new consumer then gets the 17 others, none
    /// twice: released ones with their attempt unchanged, held ones counted
    /// as redelivered.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn restart_loses_nothing(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        let sent: BTreeSet<Vec<u8>> = (0..20)
            .map(|i| format!("job-{i:02}").into_bytes())
            .collect();
        for p in &sent {
            b.publish(p, Duration::ZERO).expect("publish");
        }
        let mut acked = BTreeSet::new();
        let mut released = BTreeSet::new();
        let mut held = BTreeSet::new();
        for line in Helper::spawn("partial", &q).finish(self.patience * 2) {
            let (what, p) = line.split_once(' ').expect("helper line");
            let set = match what {
                "acked" => &mut acked,
                "released" => &mut released,
                "held" => &mut held,
                _ => panic!("bad helper line {line:?}"),
            };
            set.insert(unhex(p));
        }
        assert_eq!((acked.len(), released.len(), held.len()), (3, 3, 4));
        let want: BTreeSet<Vec<u8>> = sent.difference(&acked).cloned().collect();
        let got = self.collect(&mut b, want.len());
        let mut seen = BTreeSet::new();
        for d in &got {
            let p = d.payload().to_vec();
            assert!(!acked.contains(&p), "acked job {d:?} came back");
            if held.contains(&p) {
                if self.redeliveries_counted {
                    assert!(d.attempt() >= 2, "redelivered {d:?} not counted");
                }
            } else {
                assert_eq!(d.attempt(), 1, "released or untouched {d:?}");
            }
            assert!(seen.insert(p), "{d:?} delivered twice");
        }
        assert_eq!(seen, want);
        self.ack_all(&mut b, got);
        assert_empty(&mut b, Duration::from_millis(200));
    }

    /// Three jobs held by a process that is then SIGKILLed are handed to
    /// [`Broker::take_over`] (given the dead process's pid and the ids it
    /// held) at once, claimed by the taker: another handle is not handed
    /// them, and they are not delivered a second time when the dead
    /// holder's claim timeout passes. Redeliveries count an attempt.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn taken_over_at_once(&self) {
        let q = unique_queue();
        let mut b = self.open(&q);
        let sent: BTreeSet<Vec<u8>> = (0..3).map(|i| format!("orphan-{i}").into_bytes()).collect();
        for p in &sent {
            b.publish(p, Duration::ZERO).expect("publish");
        }
        let mut holder = Helper::spawn("hold3", &q);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let line = holder.next_line().expect("the holder said nothing");
            let (_, id) = line.split_once(' ').expect("held ID");
            ids.push(DeliveryId::new(id.to_owned()));
        }
        let pid = holder.child.id();
        holder.kill();
        let mut taker = self.open(&q);
        let mut got = taker.take_over(pid, &ids).expect("take over");
        let taken: BTreeSet<Vec<u8>> = got.iter().map(|d| d.payload().to_vec()).collect();
        assert_eq!(
            taken, sent,
            "take_over must hand over every job the dead holder held"
        );
        if self.redeliveries_counted {
            for d in &got {
                assert!(
                    d.attempt() >= 2,
                    "a taken-over job counts an attempt: {d:?}"
                );
            }
        }
        // The taker keeps its claims alive as a worker running them would;
        // meanwhile neither the dead holder's expiry nor another handle may
        // hand them out again.
        let mut other = self.open(&q);
        let until = Instant::now() + self.lease + self.lease / 2;
        while Instant::now() < until {
            for d in &mut got {
                taker.touch(d).expect("touch a taken-over job");
            }
            if let Some(dup) = other.fetch_one(Duration::ZERO).expect("fetch") {
                panic!("{dup:?} was handed out again after it was taken over");
            }
            sleep(self.lease / 5);
        }
        for d in got.drain(..) {
            taker.ack(d).expect("ack a taken-over job");
        }
        assert_empty(&mut other, Duration::from_millis(200));
    }

    /// [`Broker::publish_batch`] adds every payload: 50 at once, 3 after a
    /// delay that hides them until it passed. The handle fetches one job
    /// first, so the delay is measured against fetches and not against a
    /// handle's first one, which may take longer than the delay (joining a
    /// Kafka consumer group takes about 2 s on tansu).
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn publish_batch_round_trip(&self) {
        let mut b = self.open(&unique_queue());
        b.publish(b"warm-up", Duration::ZERO).expect("publish");
        let warm_up = self.collect(&mut b, 1);
        self.ack_all(&mut b, warm_up);
        let now: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("batch-{i:02}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = now.iter().map(Vec::as_slice).collect();
        b.publish_batch(&refs, Duration::ZERO)
            .expect("publish_batch");
        let later: [&[u8]; 3] = [b"late-1", b"late-2", b"late-3"];
        let delay = Duration::from_secs(2);
        let published = Instant::now();
        b.publish_batch(&later, delay)
            .expect("publish_batch delayed");
        let got = self.collect(&mut b, now.len());
        let mut payloads: Vec<Vec<u8>> = got.iter().map(|d| d.payload().to_vec()).collect();
        payloads.sort();
        assert_eq!(payloads, now);
        self.ack_all(&mut b, got);
        let early = b.fetch(10, Duration::from_millis(100)).expect("fetch");
        if !early.is_empty() {
            assert!(
                published.elapsed() >= delay,
                "delayed batch visible after {:?}",
                published.elapsed()
            );
        }
        let mut rest = early;
        rest.extend(self.collect(&mut b, later.len() - rest.len()));
        let mut late: Vec<&[u8]> = rest.iter().map(|d| d.payload()).collect();
        late.sort();
        assert_eq!(late, later);
        self.ack_all(&mut b, rest);
        assert_empty(&mut b, Duration::from_millis(200));
    }

    /// A 16 MiB job is published, fetched, retried and dead-lettered with
    /// its bytes intact: a job's size is bounded by the broker, not by
    /// prefork.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn large_payload_round_trip(&self) {
        let mut b = self.open(&unique_queue());
        let big = pseudo_random(16 << 20, 0xb16);
        b.publish(&big, Duration::ZERO).expect("publish 16 MiB");
        let d = self.collect(&mut b, 1).pop().expect("the big job");
        assert!(d.payload() == big.as_slice(), "16 MiB payload changed");
        b.retry(d, Duration::ZERO).expect("retry 16 MiB");
        let d = self.collect(&mut b, 1).pop().expect("the big job again");
        assert!(
            d.payload() == big.as_slice(),
            "16 MiB payload changed on retry"
        );
        b.dead_letter(d, "too big to live")
            .expect("dead letter 16 MiB");
        let dead = b.dead_letters(10).expect("dead letters");
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].payload() == big.as_slice(),
            "16 MiB dead letter changed"
        );
    }

    /// Jobs acked with [`Broker::ack_deferred`] or
    /// [`Broker::ack_batch_deferred`] (then [`Broker::flush`]) are
    /// gone: they never come back, even after the claim timeout, and the
    /// handle keeps working between deferred acks.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn deferred_acks_hold(&self) {
        let mut b = self.open(&unique_queue());
        for i in 0..20 {
            b.publish(format!("d-{i}").as_bytes(), Duration::ZERO)
                .expect("publish");
        }
        let mut acked = 0;
        while acked < 20 {
            let batch = self.collect(&mut b, 5.min(20 - acked));
            acked += batch.len();
            if acked <= 10 {
                for d in batch {
                    b.ack_deferred(d).expect("deferred ack");
                }
            } else {
                let failed = b.ack_batch_deferred(batch);
                assert!(failed.is_empty(), "deferred batch ack: {failed:?}");
            }
        }
        b.flush().expect("flush");
        assert_empty(&mut b, self.lease + self.lease / 2);
        let mut fresh = self.open(b.queue());
        assert_empty(&mut fresh, Duration::from_millis(200));
    }

    /// [`Broker::stats`] follows the jobs: a fresh queue counts nothing;
    /// published jobs are ready; fetched ones claimed; an ack, a dead
    /// letter, a delayed retry and a delayed publish each move the counts
    /// where they belong; jobs due again are ready, then claimed. Counts the
    /// adapter says it cannot tell (`None`) are not checked; ready and dead
    /// always are. Each expectation is polled within the kit's patience
    /// (a broker may update its counters a moment after it answered).
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn stats_follow_the_jobs(&self) {
        let mut b = self.open(&unique_queue());
        self.stats_reach(&mut b, "a fresh queue", [0, 0, 0, 0]);
        for i in 0..3_u8 {
            b.publish(&[b's', i], Duration::ZERO).expect("publish");
        }
        self.stats_reach(&mut b, "3 published", [3, 0, 0, 0]);
        let mut held = self.collect(&mut b, 2);
        self.stats_reach(&mut b, "2 of 3 fetched", [1, 0, 2, 0]);
        b.ack(held.pop().expect("held")).expect("ack");
        self.stats_reach(&mut b, "1 acked", [1, 0, 1, 0]);
        b.dead_letter(held.pop().expect("held"), "counted")
            .expect("dead_letter");
        self.stats_reach(&mut b, "1 dead-lettered", [1, 0, 0, 1]);
        let last = self.collect(&mut b, 1).pop().expect("the third job");
        self.stats_reach(&mut b, "the third fetched", [0, 0, 1, 1]);
        let delay = Duration::from_secs(4);
        let delayed_at = Instant::now();
        b.retry(last, delay).expect("retry");
        b.publish(b"later", delay).expect("delayed publish");
        self.stats_reach_if(&mut b, "1 retried and 1 published with a delay", |s| {
            if delayed_at.elapsed() < delay {
                return counts_are(s, [0, 2, 0, 1]);
            }
            // Too late to tell delayed from ready (beanstalkd and RabbitMQ
            // move due jobs themselves): only their sum is known.
            let waiting = match s.delayed {
                Some(d) => s.ready + d == 2,
                None => s.ready <= 2,
            };
            waiting && s.claimed.is_none_or(|c| c == 0) && s.dead == 1
        });
        let due = self.collect(&mut b, 2);
        assert!(
            delayed_at.elapsed() >= delay,
            "delayed jobs handed out after {:?} < {delay:?}",
            delayed_at.elapsed()
        );
        self.stats_reach(&mut b, "the 2 delayed jobs fetched when due", [0, 0, 2, 1]);
        self.ack_all(&mut b, due);
        self.stats_reach(&mut b, "all acked", [0, 0, 0, 1]);
    }

    /// [`Broker::delete_dead`] removes a dead letter for good (not listed,
    /// not delivered, not counted) and leaves the others; deleting it again,
    /// or an unknown id, is [`ErrorKind::NotFound`]. Listing with a limit
    /// of `usize::MAX` lists them all.
    ///
    /// # Panics
    ///
    /// When the broker does not conform.
    pub fn dead_letters_deleted(&self) {
        let mut b = self.open(&unique_queue());
        for p in [&b"doomed"[..], b"kept"] {
            b.publish(p, Duration::ZERO).expect("publish");
        }
        for d in self.collect(&mut b, 2) {
            b.dead_letter(d, "for deletion").expect("dead_letter");
        }
        // `usize::MAX`: every one (what an operator's "all" asks for).
        let dead = b
            .dead_letters(usize::MAX)
            .expect("dead_letters(usize::MAX)");
        assert_eq!(dead.len(), 2, "{dead:?}");
        let doomed = dead
            .iter()
            .find(|d| d.payload() == b"doomed")
            .expect("the doomed dead letter")
            .id()
            .clone();
        b.delete_dead(&doomed).expect("delete_dead");
        let left = b.dead_letters(10).expect("dead_letters");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].payload(), b"kept");
        let err = b.delete_dead(&doomed).expect_err("deleting it again");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let err = b
            .delete_dead(&DeliveryId::new("no-such-dead-letter"))
            .expect_err("deleting an unknown id");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let err = b.redrive(&doomed).expect_err("re-driving a deleted one");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        self.stats_reach(&mut b, "1 of 2 dead letters deleted", [0, 0, 0, 1]);
        assert_empty(&mut b, self.lease + Duration::from_millis(500));
    }

    // ----- helper roles ----------------------------------------------------

    /// Fetches three jobs, says `held ID` for each, and waits to be killed.
    fn role_hold3(&self, b: &mut Box<dyn Broker>) {
        for d in self.collect(b, 3) {
            say(&format!("held {}", d.id()));
            std::mem::forget(d);
        }
        let parent = std::os::unix::process::parent_id();
        let until = Instant::now() + self.patience * 3;
        while Instant::now() < until && std::os::unix::process::parent_id() == parent {
            sleep(Duration::from_millis(20));
        }
        std::process::exit(3);
    }

    /// Fetches one job, says so, and waits to be killed.
    fn role_hold(&self, b: &mut Box<dyn Broker>) {
        let d = self.collect(b, 1).pop().expect("a job to hold");
        say(&format!("held {}", hex(d.payload())));
        let parent = std::os::unix::process::parent_id();
        let until = Instant::now() + self.patience * 3;
        while Instant::now() < until && std::os::unix::process::parent_id() == parent {
            sleep(Duration::from_millis(20));
        }
        std::process::exit(3); // not killed: the test gave up on us
    }

    /// Fetches and acks until the queue stays empty for a while.
    fn role_consume(&self, b: &mut Box<dyn Broker>) {
        let quiet = Duration::from_millis(1500);
        let mut last_job = Instant::now();
        let give_up = Instant::now() + self.patience;
        while last_job.elapsed() < quiet && Instant::now() < give_up {
            let fetched_at = Instant::now();
            let batch = b.fetch(4, Duration::from_millis(200)).expect("fetch");
            if !batch.is_empty() {
                last_job = Instant::now();
            }
            for d in batch {
                let p = hex(d.payload());
                match b.ack(d) {
                    Ok(()) => say(&format!("acked {p} {}", fetched_at.elapsed().as_millis())),
                    Err(e) if e.error().kind() == ErrorKind::LeaseLost => say(&format!("lost {p}")),
                    Err(e) => panic!("ack: {e}"),
                }
            }
        }
    }

    /// Fetches 10 jobs, acks 3, releases 3, and exits holding 4.
    fn role_partial(&self, b: &mut Box<dyn Broker>) {
        let mut got = Vec::new();
        let deadline = Instant::now() + self.patience;
        while got.len() < 10 {
            assert!(
                Instant::now() < deadline,
                "partial: only {} jobs",
                got.len()
            );
            got.extend(
                b.fetch(10 - got.len(), Duration::from_millis(300))
                    .expect("fetch"),
            );
        }
        let mut it = got.into_iter();
        for d in it.by_ref().take(3) {
            let p = hex(d.payload());
            b.ack(d).expect("ack");
            say(&format!("acked {p}"));
        }
        for d in it.by_ref().take(3) {
            let p = hex(d.payload());
            b.release(d).expect("release");
            say(&format!("released {p}"));
        }
        for d in it {
            say(&format!("held {}", hex(d.payload())));
            std::mem::forget(d); // exit without settling, as a crash would
        }
    }

    // ----- helpers ---------------------------------------------------------

    fn open(&self, queue: &str) -> Box<dyn Broker> {
        (self.open)(queue).unwrap_or_else(|e| panic!("open queue {queue:?}: {e}"))
    }

    /// Fetches until `n` jobs are held, within the kit's patience.
    fn collect(&self, b: &mut Box<dyn Broker>, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + self.patience + self.lease;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} jobs came in time",
                got.len()
            );
            let batch = b
                .fetch(n - got.len(), left.min(Duration::from_millis(500)))
                .expect("fetch");
            assert!(batch.len() <= n - got.len(), "fetch returned more than max");
            got.extend(batch);
        }
        got
    }

    /// Polls [`Broker::stats`] until it counts `[ready, delayed, claimed,
    /// dead]` (the counts the broker can tell), within the kit's patience.
    fn stats_reach(&self, b: &mut Box<dyn Broker>, after: &str, want: [u64; 4]) -> QueueStats {
        self.stats_reach_if(b, &format!("{after} (want {want:?})"), |s| {
            counts_are(s, want)
        })
    }

    /// Polls [`Broker::stats`] until `ok` holds, within the kit's patience.
    fn stats_reach_if(
        &self,
        b: &mut Box<dyn Broker>,
        after: &str,
        ok: impl Fn(&QueueStats) -> bool,
    ) -> QueueStats {
        let deadline = Instant::now() + self.patience;
        loop {
            let s = b.stats().expect("stats");
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "after {after}, stats are {s:?} (ready, delayed, claimed, dead)"
            );
            sleep(Duration::from_millis(50));
        }
    }

    fn ack_all(&self, b: &mut Box<dyn Broker>, ds: Vec<Delivery>) {
        for d in ds {
            b.ack(d).expect("ack");
        }
    }
}

/// Fails if a job arrives within `wait`.
fn assert_empty(b: &mut Box<dyn Broker>, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(d) = b.fetch_one(left).expect("fetch") {
            panic!("expected an empty queue, got {d:?}");
        }
        if left.is_zero() {
            return;
        }
    }
}

/// Whether `s` counts `[ready, delayed, claimed, dead]`, leaving out the
/// counts it cannot tell.
fn counts_are(s: &QueueStats, [ready, delayed, claimed, dead]: [u64; 4]) -> bool {
    s.ready == ready
        && s.delayed.is_none_or(|d| d == delayed)
        && s.claimed.is_none_or(|c| c == claimed)
        && s.dead == dead
}

/// A queue name no other case (in any process) uses.
fn unique_queue() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "kit-{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .expect("write to the test");
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".to_owned();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// The test binary started again in a helper role; killed and reaped on
/// drop so a failing case leaves no process behind.
struct Helper {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Helper {
    fn spawn(role: &str, queue: &str) -> Helper {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .env(ROLE_ENV, role)
            .env(QUEUE_ENV, queue)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test binary as a kit helper");
        let stdout = child.stdout.take().expect("piped stdout");
        Helper {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    fn next_line(&mut self) -> Option<String> {
        self.lines.next().map(|l| l.expect("read from helper"))
    }

    /// SIGKILLs the helper and reaps it.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the helper");
        self.child.wait().expect("reap the helper");
    }

    /// Reads every line until the helper exits, checks it exited 0 within
    /// `limit`.
    fn finish(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let lines: Vec<String> = self.lines.by_ref().map(|l| l.expect("read")).collect();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "kit helper failed: {status}");
                return lines;
            }
            assert!(Instant::now() < deadline, "kit helper did not exit");
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        for p in [&b""[..], b"\x00\xffabc", &pseudo_random(300, 7)] {
            assert_eq!(unhex(&hex(p)), p);
        }
    }

    #[test]
    fn queue_names_are_unique_and_portable() {
        let (a, b) = (unique_queue(), unique_queue());
        assert_ne!(a, b);
        for q in [a, b] {
            assert!(q.len() <= 40, "{q}");
            assert!(
                q.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{q}"
            );
        }
    }

    #[test]
    fn the_macro_lists_every_case() {
        fn kit() -> Kit {
            Kit::new(|_q: &str| -> Result<Box<dyn Broker>, BrokerError> {
                Err(BrokerError::new(ErrorKind::Unsupported, "not used"))
            })
        }
        #[derive(Clone, Copy)]
        struct Case(&'static str);
        impl Case {
            fn new(name: &'static str, _body: fn()) -> Case {
                Case(name)
            }
        }
        let names: Vec<&str> = crate::cases!(Case::new, kit())
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(names, CASES);
    }
}
