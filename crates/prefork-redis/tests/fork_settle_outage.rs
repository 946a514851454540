//! Settles that fail while `redis-server` is down (issue 8, defect 4): a
//! single consumer (a dispatch feeder, or a pull pool of one) must not keep
//! those jobs claimed forever. Failed acks are sent again after the
//! reconnect; jobs whose retry, release or dead-letter failed are taken back
//! by the handle once idle for the lease and run again; deferred acks whose
//! reply never came are sent again.
//!
//! A `harness = false` target: each case runs in a process of its own
//! (`prefork_tests::harness`) against a private `redis-server` (append-only
//! file, fsync always) that it SIGKILLs and starts again on the same data.
//! `PREFORK_REDIS_URL` must be set as for the other Redis tests (a missing
//! URL fails under CI, skips elsewhere), though the cases do not use it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prefork_broker::{Broker, Delivery};
use prefork_redis::{Options, Redis, RedisQueue};
use prefork_tests::harness::{Case, run};

use common::PrivateRedis;

const LEASE: Duration = Duration::from_millis(800);

fn start(tag: &str) -> PrivateRedis {
    PrivateRedis::start(tag, &["--appendonly", "yes", "--appendfsync", "always"])
}

fn open(server: &PrivateRedis) -> RedisQueue {
    let o = Options::default()
        .lease(LEASE)
        .reclaim_every(Duration::from_millis(100))
        .block(Duration::from_millis(100))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .io_timeout(Duration::from_millis(500));
    Redis::with_options(&server.url(""), o)
        .unwrap()
        .queue("jobs")
        .unwrap()
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.payload().to_vec()).unwrap()
}

/// Fetches until `n` jobs came (or panics after 10 s).
fn collect(q: &mut RedisQueue, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} came", got.len());
        got.extend(q.fetch(n - got.len(), Duration::from_millis(200)).unwrap());
    }
    got
}

/// `(pending entries of the group, entries in the stream)` on the server.
fn leftovers(server: &PrivateRedis, q: &RedisQueue) -> (i64, i64) {
    let client = redis::Client::open(server.url("")).unwrap();
    let mut c = client.get_connection().unwrap();
    let summary: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(q.stream_key())
        .arg(q.group())
        .query(&mut c)
        .unwrap();
    let pending = match &summary[0] {
        redis::Value::Int(n) => *n,
        other => panic!("XPENDING summary {other:?}"),
    };
    let len: i64 = redis::cmd("XLEN")
        .arg(q.stream_key())
        .query(&mut c)
        .unwrap();
    (pending, len)
}

/// One consumer holds 8 jobs when the server dies. During the outage it
/// acks two (one by one), acks two as a batch, retries one, releases one,
/// dead-letters one and defers the ack of the last; every call fails (or
/// queues the ack), and the caller drops what it got back (as the job layer does).
/// After the restart, with that same consumer the only one: the acked jobs
/// never come back, the others run again within a few leases, and nothing
/// stays claimed.
fn failed_settles_are_not_stuck_after_a_restart() {
    let server = start("outage");
    let mut q = open(&server);
    let names: Vec<String> = (0..8).map(|i| format!("job-{i}")).collect();
    let refs: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    q.publish_batch(&refs, Duration::ZERO).unwrap();
    let mut held = collect(&mut q, 8);
    held.sort_by_key(text);
    server.kill();
    let mut it = held.into_iter();
    for d in it.by_ref().take(2) {
        let e = q.ack(d).unwrap_err();
        assert!(e.error().is_retryable(), "{e}");
    }
    for e in q.ack_batch(it.by_ref().take(2).collect()) {
        assert!(e.error().is_retryable(), "{e}");
    }
    let d = it.next().unwrap();
    assert!(
        q.retry(d, Duration::ZERO)
            .unwrap_err()
            .error()
            .is_retryable()
    );
    let d = it.next().unwrap();
    assert!(q.release(d).unwrap_err().error().is_retryable());
    let d = it.next().unwrap();
    assert!(q.dead_letter(d, "x").unwrap_err().error().is_retryable());
    let d = it.next().unwrap();
    if let Err(e) = q.ack_deferred(d) {
        assert!(e.error().is_retryable(), "{e}"); // dropped, as the job layer does
    }
    server.launch();

    let want: BTreeSet<String> = ["job-4", "job-5", "job-6"].map(str::to_owned).into();
    let mut again = BTreeSet::new();
    let deadline = Instant::now() + LEASE * 6;
    while Instant::now() < deadline {
        match q.fetch(8, Duration::from_millis(100)) {
            Ok(got) => {
                for d in got {
                    assert!(again.insert(text(&d)), "{} delivered twice", text(&d));
                    q.ack(d).unwrap();
                }
            }
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
        if again == want {
            break;
        }
    }
    assert_eq!(
        again, want,
        "jobs whose retry/release/dead-letter failed must run again; acked ones must not"
    );
    q.flush().unwrap();
    assert_eq!(
        leftovers(&server, &q),
        (0, 0),
        "(pending, stream length): jobs stuck with the live consumer"
    );
    assert!(q.fetch(1, LEASE * 2).unwrap().is_empty());
}

/// Deferred acks written while the server is paused (`CLIENT PAUSE`: they
/// are never executed) and then lost with it are sent again after the
/// restart: `flush` confirms them and the jobs never come back.
fn unanswered_deferred_acks_are_sent_again() {
    let server = start("unanswered");
    let mut q = open(&server);
    q.publish_batch(&[b"a", b"b", b"c", b"d"], Duration::ZERO)
        .unwrap();
    let held = collect(&mut q, 4);
    let client = redis::Client::open(server.url("")).unwrap();
    let mut admin = client.get_connection().unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("ALL")
        .query(&mut admin)
        .unwrap();
    let t = Instant::now();
    for d in held {
        q.ack_deferred(d).unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "deferred acks waited for their replies ({:?})",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(50));
    server.kill(); // the acks were never executed
    server.launch();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match q.flush() {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "flush never succeeded: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    assert_eq!(leftovers(&server, &q), (0, 0), "(pending, stream length)");
    assert!(q.fetch(1, LEASE * 2).unwrap().is_empty());
}

fn main() {
    common::url_or_skip("prefork-redis settle outage tests");
    run(&[
        Case::new(
            "failed_settles_are_not_stuck_after_a_restart",
            failed_settles_are_not_stuck_after_a_restart,
        ),
        Case::new(
            "unanswered_deferred_acks_are_sent_again",
            unanswered_deferred_acks_are_sent_again,
        ),
    ]);
}
