//! Unit tests of the spool: time is a manual clock, so leases and delays
//! are tested without sleeping; plus a model-based proptest of the state
//! machine.

use std::sync::atomic::AtomicU64;

use proptest::prelude::*;

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use prefork_broker::Connect;

use super::publishing::{BATCH_FILES, ONE_WRITE};
use super::settling::claimed_name;
use crate::name::Claimed;
use crate::{Clock, Durability, holder, record};

/// A clock that moves only when told.
#[derive(Debug)]
struct Manual(AtomicU64);

impl Manual {
    fn new() -> Arc<Manual> {
        Arc::new(Manual(AtomicU64::new(1_700_000_000_000_000)))
    }
    fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_us(d), Ordering::SeqCst);
    }
}

impl Clock for Manual {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "prefork-spool-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const LEASE: Duration = Duration::from_secs(30);

fn setup() -> (TempDir, Arc<Manual>, Spool) {
    let dir = TempDir::new();
    let clock = Manual::new();
    let spool = Spool::with_options(
        &dir.0,
        Options::default()
            .lease(LEASE)
            .durability(Durability::Buffered)
            .clock(clock.clone()),
    )
    .expect("spool");
    (dir, clock, spool)
}

fn one(q: &mut Queue) -> Option<Delivery> {
    q.fetch_one(Duration::ZERO).expect("fetch")
}

#[test]
fn publish_fetch_ack() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"one", Duration::ZERO).unwrap();
    q.publish(b"two", Duration::ZERO).unwrap();
    let a = one(&mut q).unwrap();
    let b = one(&mut q).unwrap();
    assert_eq!(
        (a.payload(), b.payload()),
        (&b"one"[..], &b"two"[..]),
        "FIFO"
    );
    assert_eq!(a.attempt(), 1);
    assert!(one(&mut q).is_none());
    q.ack(a).unwrap();
    q.ack(b).unwrap();
    assert_eq!(q.counts().unwrap(), Stats::default());
}

#[test]
fn expired_lease_is_handed_out_again_and_the_old_holder_loses_it() {
    let (_dir, clock, spool) = setup();
    let (mut a, mut b) = (spool.queue("q").unwrap(), spool.queue("q").unwrap());
    a.publish(b"job", Duration::ZERO).unwrap();
    let held = one(&mut a).unwrap();
    clock.advance(LEASE - Duration::from_millis(1));
    assert!(one(&mut b).is_none(), "lease still live");
    clock.advance(Duration::from_millis(2));
    let again = one(&mut b).expect("expired lease reclaimed");
    assert_eq!((again.id(), again.attempt()), (held.id(), 2));
    let err = a.ack(held).expect_err("old holder");
    assert_eq!(err.error().kind(), ErrorKind::LeaseLost);
    assert_eq!(err.delivery().payload(), b"job", "delivery handed back");
    b.ack(again).unwrap();
}

#[test]
fn touch_renews_the_lease() {
    let (_dir, clock, spool) = setup();
    let (mut a, mut b) = (spool.queue("q").unwrap(), spool.queue("q").unwrap());
    a.publish(b"long", Duration::ZERO).unwrap();
    let mut held = one(&mut a).unwrap();
    for _ in 0..4 {
        clock.advance(LEASE * 3 / 4);
        a.touch(&mut held).unwrap();
        assert!(one(&mut b).is_none());
    }
    clock.advance(LEASE + Duration::from_millis(1));
    let lost = a.touch(&mut held);
    // Nobody fetched yet, so the expired claim is still ours to renew.
    assert!(lost.is_ok());
    clock.advance(LEASE + Duration::from_millis(1));
    assert!(one(&mut b).is_some(), "not renewed: handed out");
    assert_eq!(a.touch(&mut held).unwrap_err().kind(), ErrorKind::LeaseLost);
}

#[test]
fn retry_and_delayed_publish_wait_for_their_time() {
    let (_dir, clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"a", Duration::ZERO).unwrap();
    q.publish(b"b", Duration::from_secs(5)).unwrap();
    let a = one(&mut q).unwrap();
    q.retry(a, Duration::from_secs(10)).unwrap();
    assert!(one(&mut q).is_none());
    let s = q.counts().unwrap();
    assert_eq!((s.ready, s.delayed), (0, 2));
    clock.advance(Duration::from_secs(5));
    let b = one(&mut q).expect("b due");
    assert_eq!((b.payload(), b.attempt()), (&b"b"[..], 1));
    assert!(one(&mut q).is_none());
    clock.advance(Duration::from_secs(5));
    let a = one(&mut q).expect("a due");
    assert_eq!((a.payload(), a.attempt()), (&b"a"[..], 2));
}

#[test]
fn release_keeps_the_attempt_and_goes_first() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"first", Duration::ZERO).unwrap();
    q.publish(b"second", Duration::ZERO).unwrap();
    let first = one(&mut q).unwrap();
    q.release(first).unwrap();
    let again = one(&mut q).unwrap();
    assert_eq!((again.payload(), again.attempt()), (&b"first"[..], 1));
}

#[test]
fn dead_letters_keep_the_reason_and_redrive() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"bad", Duration::ZERO).unwrap();
    let d = one(&mut q).unwrap();
    let id = d.id().clone();
    q.dead_letter(d, "no handler\nnamed x").unwrap();
    let dead = q.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id(), dead[0].reason()),
        (&id, "no handler\nnamed x")
    );
    assert_eq!(q.counts().unwrap().dead, 1);
    assert_eq!(
        q.redrive(&DeliveryId::new("nonsense")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    q.redrive(&id).unwrap();
    assert_eq!(q.redrive(&id).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(q.dead_letters(10).unwrap().is_empty());
    assert_eq!(
        list(&q.dead).unwrap(),
        Vec::<String>::new(),
        "reason removed"
    );
    assert_eq!(one(&mut q).unwrap().payload(), b"bad");
}

#[test]
fn malformed_files_are_quarantined_and_harm_no_other_job() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"good 1", Duration::ZERO).unwrap();
    let id = "0000000000000001-00000002-00000003";
    // A garbage name in each state directory, and a well-named job file
    // whose content was cut short.
    fs::write(q.ready.join("garbage"), b"x").unwrap();
    fs::write(q.delayed.join("0.1.2"), b"x").unwrap();
    fs::write(q.claimed.join("not-a-claim"), b"x").unwrap();
    let mut truncated = record::encode(b"a longer payload");
    truncated.truncate(30);
    fs::write(q.ready.join(format!("0000000000000000.{id}.1")), truncated).unwrap();
    fs::write(q.dead.join(format!("{id}.1")), b"short").unwrap();
    q.publish(b"good 2", Duration::ZERO).unwrap();

    let mut got = Vec::new();
    while let Some(d) = one(&mut q) {
        got.push(d.payload().to_vec());
        q.ack(d).unwrap();
    }
    assert_eq!(got, [b"good 1".to_vec(), b"good 2".to_vec()]);
    assert!(q.dead_letters(10).unwrap().is_empty());
    let s = q.counts().unwrap();
    assert_eq!((s.ready, s.claimed, s.quarantined), (0, 0, 5), "{s:?}");
    let why = fs::read_to_string(q.quarantine.join(format!("{id}.1.why")));
    let notes: Vec<String> = list(&q.quarantine)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".why"))
        .map(|n| fs::read_to_string(q.quarantine.join(n)).unwrap())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("truncated")),
        "{notes:?} {why:?}"
    );
}

#[test]
fn a_claim_whose_owner_is_gone_comes_back_before_its_lease_ends() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"orphan", Duration::ZERO).unwrap();
    let d = one(&mut q).unwrap();
    // Re-own the claim by a pid above the kernel's pid_max (2^22): no such process.
    let c = Claimed::parse(d.receipt()).unwrap();
    let orphan = Claimed {
        holder: Holder {
            pid: 2_000_000_000,
            ..c.holder
        },
        ..c
    };
    fs::rename(
        q.claimed.join(d.receipt()),
        q.claimed.join(orphan.to_string()),
    )
    .unwrap();
    q.next_reclaim_us = 0;
    let back = one(&mut q).expect("reclaimed from a dead owner");
    assert_eq!((back.payload(), back.attempt()), (&b"orphan"[..], 2));

    let quiet = Spool::with_options(
        spool.root(),
        spool.options().clone().reclaim_dead_owners(false),
    )
    .unwrap();
    let mut q2 = quiet.queue("q").unwrap();
    let c = Claimed::parse(back.receipt()).unwrap();
    fs::rename(
        q.claimed.join(back.receipt()),
        q.claimed.join(
            Claimed {
                holder: Holder {
                    pid: 2_000_000_000,
                    ..c.holder
                },
                ..c
            }
            .to_string(),
        ),
    )
    .unwrap();
    assert!(one(&mut q2).is_none(), "dead owners not reclaimed when off");
}

/// Renames the claim of `d` to one held by `holder`, as if that process
/// had fetched it.
fn reown(q: &Queue, d: &Delivery, holder: Holder) -> Claimed {
    let c = Claimed::parse(d.receipt()).unwrap();
    let moved = Claimed { holder, ..c };
    fs::rename(
        q.claimed.join(d.receipt()),
        q.claimed.join(moved.to_string()),
    )
    .unwrap();
    moved
}

/// A pid above the kernel's pid_max (2^22): no such process.
const NO_SUCH_PID: u32 = 2_000_000_000;

#[test]
fn dead_holders_on_this_host_are_reclaimed_early_others_wait_for_the_lease() {
    let (_dir, clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    let me = q.me;
    let init_start = holder::tests_support::start_of(1);
    for p in ["gone", "reused", "elsewhere", "init", "unrecorded"] {
        q.publish(p.as_bytes(), Duration::ZERO).unwrap();
    }
    let held: Vec<Delivery> = q.fetch(5, Duration::ZERO).unwrap();
    let dead = Holder {
        pid: NO_SUCH_PID,
        ..me
    };
    reown(&q, &held[0], dead);
    // pid 1 runs, but started long before this claim says its holder did.
    reown(&q, &held[1], Holder { pid: 1, ..me });
    // A dead pid of another host (a container sharing the directory).
    reown(
        &q,
        &held[2],
        Holder {
            host: me.host ^ 1,
            ..dead
        },
    );
    reown(
        &q,
        &held[3],
        Holder {
            pid: 1,
            start: init_start,
            ..me
        },
    );
    // A claim in the short form (no start time, no host).
    reown(
        &q,
        &held[4],
        Holder {
            start: 0,
            host: 0,
            ..dead
        },
    );
    q.next_reclaim_us = 0;
    let early = q.fetch(10, Duration::ZERO).unwrap();
    let mut back: Vec<Vec<u8>> = early.iter().map(|d| d.payload().to_vec()).collect();
    back.sort();
    assert_eq!(back, [b"gone".to_vec(), b"reused".to_vec()]);
    assert!(q.ack_batch(early).is_empty());
    clock.advance(LEASE + Duration::from_millis(1));
    let mut late: Vec<Vec<u8>> = q
        .fetch(10, Duration::ZERO)
        .unwrap()
        .iter()
        .map(|d| d.payload().to_vec())
        .collect();
    late.sort();
    assert_eq!(
        late,
        [
            b"elsewhere".to_vec(),
            b"init".to_vec(),
            b"unrecorded".to_vec()
        ],
        "the others come back when the lease ends"
    );
}

#[test]
fn take_over_takes_every_claim_of_the_dead_pid_on_this_host_and_no_other() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    let mut taker = spool.queue("q").unwrap();
    let me = q.me;
    for p in [
        "a",
        "b",
        "elsewhere",
        "other-pid",
        "mine",
        "short",
        "short-listed",
    ] {
        q.publish(p.as_bytes(), Duration::ZERO).unwrap();
    }
    let held = q.fetch(7, Duration::ZERO).unwrap();
    let dead = Holder {
        pid: NO_SUCH_PID,
        ..me
    };
    reown(&q, &held[0], dead);
    reown(&q, &held[1], dead);
    reown(
        &q,
        &held[2],
        Holder {
            host: me.host ^ 1,
            ..dead
        },
    );
    reown(
        &q,
        &held[3],
        Holder {
            pid: NO_SUCH_PID - 1,
            ..me
        },
    );
    // held[4] stays this (live) process's claim.
    reown(
        &q,
        &held[5],
        Holder {
            start: 0,
            host: 0,
            ..dead
        },
    );
    reown(
        &q,
        &held[6],
        Holder {
            start: 0,
            host: 0,
            ..dead
        },
    );
    let listed = [held[6].id().clone()];
    let mut got = taker.take_over(NO_SUCH_PID, &listed).unwrap();
    got.sort_by(|x, y| x.payload().cmp(y.payload()));
    let payloads: Vec<&[u8]> = got.iter().map(Delivery::payload).collect();
    assert_eq!(payloads, [&b"a"[..], b"b", b"short-listed"]);
    assert!(got.iter().all(|d| d.attempt() == 2), "{got:?}");
    for d in got {
        let c = Claimed::parse(d.receipt()).unwrap();
        assert_eq!(c.holder, taker.me, "held by the taker now");
        taker.ack(d).unwrap();
    }
    assert_eq!(q.counts().unwrap().claimed, 4, "the others are untouched");
    assert!(
        taker.take_over(me.pid, &[]).unwrap().is_empty(),
        "a live holder keeps its claims"
    );
}

#[test]
fn take_over_finds_listed_jobs_a_fetch_gave_back_already() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"orphan", Duration::ZERO).unwrap();
    q.publish(b"other", Duration::ZERO).unwrap();
    let held = one(&mut q).unwrap();
    reown(
        &q,
        &held,
        Holder {
            pid: NO_SUCH_PID,
            ..q.me
        },
    );
    // A sibling's fetch reclaims it (its holder is dead) before take_over.
    let mut sibling = spool.queue("q").unwrap();
    sibling.next_reclaim_us = 0;
    sibling.reclaim(sibling.now_us()).unwrap();
    assert_eq!(q.counts().unwrap().ready, 2);
    let got = q.take_over(NO_SUCH_PID, &[held.id().clone()]).unwrap();
    assert_eq!(got.len(), 1, "only the listed job: {got:?}");
    assert_eq!((got[0].payload(), got[0].attempt()), (&b"orphan"[..], 2));
}

#[test]
fn publish_batch_keeps_order_across_chunks_and_honours_the_delay() {
    let (_dir, clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    let big = vec![7u8; ONE_WRITE + 1];
    let mut payloads: Vec<Vec<u8>> = (0..BATCH_FILES * 2 + 3)
        .map(|i| format!("{i:04}").into_bytes())
        .collect();
    payloads[BATCH_FILES] = big.clone();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    q.publish_batch(&refs, Duration::ZERO).unwrap();
    q.publish_batch(&[b"later", b"later too"], Duration::from_secs(5))
        .unwrap();
    q.publish_batch(&[], Duration::ZERO).unwrap();
    assert_eq!(q.counts().unwrap().delayed, 2);
    let got = q.fetch(payloads.len() + 2, Duration::ZERO).unwrap();
    let got: Vec<&[u8]> = got.iter().map(Delivery::payload).collect();
    assert_eq!(got, refs, "all of them, in order, nothing delayed");
    assert!(list(&q.tmp).unwrap().is_empty());
    clock.advance(Duration::from_secs(5));
    let late = q.fetch(5, Duration::ZERO).unwrap();
    let late: Vec<&[u8]> = late.iter().map(Delivery::payload).collect();
    assert_eq!(late, [&b"later"[..], b"later too"]);
}

#[test]
fn opening_removes_temp_files_of_dead_publishers_only() {
    let (_dir, _clock, spool) = setup();
    let q = spool.queue("q").unwrap();
    let dead = JobId {
        published_us: 1,
        pid: 2_000_000_000,
        seq: 0,
    };
    let mine = JobId {
        pid: std::process::id(),
        ..dead
    };
    let here = format!("{:016x}", q.me.host);
    let elsewhere = format!("{:016x}", q.me.host ^ 1);
    fs::write(q.tmp.join(format!("{dead}.{here}")), b"half").unwrap();
    fs::write(q.tmp.join(format!("{dead}.reason.{here}")), b"half").unwrap();
    fs::write(q.tmp.join(format!("{mine}.{here}")), b"in progress").unwrap();
    // Another host's publisher: its pid means nothing here.
    fs::write(q.tmp.join(format!("{dead}.{elsewhere}")), b"in progress").unwrap();
    let _q2 = spool.queue("q").unwrap();
    let mut left = list(&q.tmp).unwrap();
    left.sort();
    let mut want = [format!("{mine}.{here}"), format!("{dead}.{elsewhere}")];
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn opening_keeps_a_live_writer_s_temp_file_whatever_published_the_job() {
    // A worker dead-letters a job that a process long gone published: the
    // reason it is writing is its own, not the publisher's. A sibling that
    // opens the queue meanwhile (a replacement worker) must leave it, or
    // the dead letter fails and the job stays claimed until its lease.
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    q.publish(b"poison", Duration::ZERO).unwrap();
    let d = q.fetch_one(Duration::ZERO).unwrap().unwrap();
    // The reason's temp file as `dead_letter` writes it, for this job.
    let c = claimed_name(&d).unwrap();
    let dead_publisher = JobId {
        pid: 2_000_000_000,
        ..c.id
    };
    let reason_name = Dead::Reason { id: dead_publisher }.to_string();
    let (path, _f) = q.create_tmp(&reason_name, &[b"why"]).unwrap();
    let _sibling = spool.queue("q").unwrap();
    assert!(
        path.exists(),
        "a sibling's open removed a live writer's temp file"
    );
}

#[test]
fn bad_queue_names_and_receipts_are_refused() {
    let (_dir, _clock, spool) = setup();
    for name in ["", ".", "..", ".hidden", "a/b", "sp ace", &"x".repeat(129)] {
        let e = spool.queue(name).expect_err(name);
        assert_eq!(e.kind(), ErrorKind::Invalid, "{name:?}");
    }
    let mut q = spool.queue("ok-name_1.x").unwrap();
    let forged = Delivery::new(DeliveryId::new("x"), b"p".to_vec()).with_receipt("../../etc");
    let e = q.ack(forged).expect_err("forged receipt");
    assert_eq!(e.error().kind(), ErrorKind::Invalid);
    assert_eq!(e.delivery().payload(), b"p");
}

#[test]
fn large_payloads_round_trip() {
    let (_dir, _clock, spool) = setup();
    let mut q = spool.queue("q").unwrap();
    let big: Vec<u8> = (0..3 * ONE_WRITE).map(|i| (i * 7 % 251) as u8).collect();
    q.publish(&big, Duration::ZERO).unwrap();
    q.publish(b"", Duration::ZERO).unwrap();
    assert_eq!(one(&mut q).unwrap().payload(), &big[..]);
    assert_eq!(one(&mut q).unwrap().payload(), b"");
}

#[test]
fn fsync_durability_works_too() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0).unwrap();
    assert_eq!(spool.options().durability, Durability::Fsync);
    let mut q = spool.queue("q").unwrap();
    q.publish(b"synced", Duration::ZERO).unwrap();
    let d = q.fetch_one(Duration::from_secs(5)).unwrap().unwrap();
    q.dead_letter(d, "why").unwrap();
    assert_eq!(q.dead_letters(1).unwrap()[0].reason(), "why");
}

#[test]
fn connect_opens_queues_by_name() {
    let (_dir, _clock, spool) = setup();
    let c: &dyn Connect = &spool;
    let mut a = c.open("alpha").unwrap();
    a.publish(b"x", Duration::ZERO).unwrap();
    assert_eq!(a.queue(), "alpha");
    let mut b = c.open("beta").unwrap();
    assert!(
        b.fetch_one(Duration::ZERO).unwrap().is_none(),
        "queues are separate"
    );
}

// ----- model-based test of the state machine ----------------------------

#[derive(Debug, Clone)]
enum Op {
    Publish { delayed: bool },
    Fetch { max: usize },
    Ack(usize),
    Retry(usize, bool),
    Release(usize),
    DeadLetter(usize),
    Touch(usize),
    Redrive(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(|delayed| Op::Publish { delayed }),
        3 => (1usize..4).prop_map(|max| Op::Fetch { max }),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, d)| Op::Retry(i, d)),
        1 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::DeadLetter),
        1 => any::<usize>().prop_map(Op::Touch),
        1 => any::<usize>().prop_map(Op::Redrive),
        2 => (0u64..45).prop_map(Op::Advance),
    ]
}

/// Where the model thinks a job is. Times in seconds of the manual clock.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Waiting {
        due: u64,
        attempt: u32,
    },
    Held {
        expiry: u64,
        attempt: u32,
        generation: u32,
    },
    Dead,
    Done,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of operations: every job is in exactly one state, a
    /// fetch returns exactly what is available (up to max), attempts are
    /// counted as documented, and settling a lost claim says LeaseLost.
    #[test]
    fn state_machine_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let (_dir, clock, spool) = setup();
        let mut q = spool.queue("m").unwrap();
        let mut now = 0u64; // seconds since the start
        let lease = LEASE.as_secs();
        let mut jobs: Vec<State> = Vec::new();
        // Deliveries held by the test: (job index, generation).
        let mut held: Vec<(usize, u32, Delivery)> = Vec::new();
        let mut generation = 0u32;
        let payload_index = |d: &Delivery| -> usize {
            std::str::from_utf8(d.payload()).unwrap().parse().unwrap()
        };
        for op in ops {
            match op {
                Op::Publish { delayed } => {
                    let delay = if delayed { 20 } else { 0 };
                    q.publish(jobs.len().to_string().as_bytes(), Duration::from_secs(delay)).unwrap();
                    jobs.push(State::Waiting { due: now + delay, attempt: 1 });
                }
                Op::Fetch { max } => {
                    // The spool looks at claims and delays on its own
                    // schedule; make it look now. Every expired claim goes
                    // back, counting an attempt, fetched or not.
                    q.next_reclaim_us = 0;
                    q.next_promote_us = 0;
                    for j in jobs.iter_mut() {
                        if let State::Held { expiry, attempt, .. } = *j
                            && expiry <= now
                        {
                            *j = State::Waiting { due: now, attempt: attempt + 1 };
                        }
                    }
                    let available = jobs
                        .iter()
                        .filter(|s| matches!(s, State::Waiting { due, .. } if *due <= now))
                        .count();
                    let got = q.fetch(max, Duration::ZERO).unwrap();
                    prop_assert_eq!(got.len(), max.min(available));
                    for d in got {
                        let i = payload_index(&d);
                        let attempt = match jobs[i] {
                            State::Waiting { due, attempt } if due <= now => attempt,
                            s => panic!("job {i} handed out in state {s:?}"),
                        };
                        prop_assert_eq!(d.attempt(), attempt);
                        generation += 1;
                        jobs[i] = State::Held { expiry: now + lease, attempt, generation };
                        held.push((i, generation, d));
                    }
                }
                Op::Ack(k) | Op::Retry(k, _) | Op::Release(k) | Op::DeadLetter(k) if !held.is_empty() => {
                    let (i, g, d) = held.remove(k % held.len());
                    let live = matches!(jobs[i], State::Held { generation, .. } if generation == g);
                    let attempt = match jobs[i] { State::Held { attempt, .. } => attempt, _ => 0 };
                    let result = match op {
                        Op::Ack(_) => q.ack(d).map(|()| State::Done),
                        Op::Retry(_, delayed) => {
                            let delay = if delayed { 10 } else { 0 };
                            q.retry(d, Duration::from_secs(delay))
                                .map(|()| State::Waiting { due: now + delay, attempt: attempt + 1 })
                        }
                        Op::Release(_) => q.release(d).map(|()| State::Waiting { due: now, attempt }),
                        _ => q.dead_letter(d, "model").map(|()| State::Dead),
                    };
                    match result {
                        Ok(next) => {
                            prop_assert!(live, "settled a lost claim of job {}", i);
                            jobs[i] = next;
                        }
                        Err(e) => {
                            prop_assert!(!live, "live claim of job {} refused: {}", i, e);
                            prop_assert_eq!(e.error().kind(), ErrorKind::LeaseLost);
                        }
                    }
                }
                Op::Touch(k) if !held.is_empty() => {
                    let k = k % held.len();
                    let (i, g, d) = &mut held[k];
                    let live = matches!(jobs[*i], State::Held { generation, .. } if generation == *g);
                    match q.touch(d) {
                        Ok(()) => {
                            prop_assert!(live);
                            if let State::Held { expiry, .. } = &mut jobs[*i] {
                                *expiry = now + lease;
                            }
                        }
                        Err(e) => {
                            prop_assert!(!live, "touch of a live claim: {}", e);
                            prop_assert_eq!(e.kind(), ErrorKind::LeaseLost);
                        }
                    }
                }
                Op::Redrive(k) => {
                    let dead: Vec<usize> = (0..jobs.len()).filter(|i| jobs[*i] == State::Dead).collect();
                    let listed = q.dead_letters(usize::MAX).unwrap();
                    prop_assert_eq!(listed.len(), dead.len());
                    if let Some(&i) = dead.get(k % dead.len().max(1)) {
                        let dl = listed.iter().find(|d| d.payload() == i.to_string().as_bytes()).unwrap();
                        q.redrive(dl.id()).unwrap();
                        jobs[i] = State::Waiting { due: now, attempt: 1 };
                    }
                }
                Op::Advance(s) => {
                    now += s;
                    clock.advance(Duration::from_secs(s));
                }
                _ => {}
            }
            // Every job is in exactly one place.
            let s = q.counts().unwrap();
            let count = |f: &dyn Fn(&State) -> bool| jobs.iter().filter(|j| f(j)).count();
            prop_assert_eq!(s.ready + s.delayed, count(&|j| matches!(j, State::Waiting { .. })));
            prop_assert_eq!(s.claimed, count(&|j| matches!(j, State::Held { .. })));
            prop_assert_eq!(s.dead, count(&|j| *j == State::Dead));
            prop_assert_eq!(s.quarantined, 0);
        }
    }
}

#[test]
fn the_manual_clock_moves_only_when_told() {
    let c = Manual::new();
    let t = c.now();
    assert_eq!(c.now(), t);
    c.advance(Duration::from_secs(1));
    assert_eq!(c.now().duration_since(t).unwrap(), Duration::from_secs(1));
}
