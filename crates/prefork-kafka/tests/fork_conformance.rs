//! The broker conformance kit against a live Kafka-compatible broker
//! (tansu, started by `cargo xtask`), plus the adapter's own cases that
//! need it: two consumers of one group splitting the partitions, and a
//! consumer SIGKILLed while it holds messages finished out of order.
//!
//! A `harness = false` target: every case runs in a process of its own
//! (`prefork_tests::harness`); the kit's cases and ours start this binary
//! again as helpers and SIGKILL them.
//!
//! The broker comes from `PREFORK_KAFKA_URL` (set by `cargo xtask`).
//! Without it the run fails under CI (`CI` or `PREFORK_REQUIRE_BROKERS=1`)
//! and is skipped, saying why, elsewhere.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use prefork_broker::{Broker, Delivery};
use prefork_conformance::Kit;
use prefork_kafka::{Config, Kafka, URL_ENV};
use prefork_tests::harness::{Case, run};

/// The session timeout of the handles under test: how long a killed
/// member keeps its partitions, so the claim timeout the kit waits for.
const SESSION: Duration = Duration::from_secs(3);
/// The helper role of this binary started again by our own cases.
const ROLE_ENV: &str = "PREFORK_KAFKA_TEST_ROLE";
/// The queue such a helper works on.
const QUEUE_ENV: &str = "PREFORK_KAFKA_TEST_QUEUE";

fn config() -> Config {
    Config::from_env()
        .expect("PREFORK_KAFKA_URL")
        .expect("PREFORK_KAFKA_URL is set (checked in main)")
        .session_timeout(SESSION)
        // The kit's taken_over_at_once wants the dead holder's jobs from
        // take_over itself: wait for the group to hand them over.
        .take_over_wait(SESSION * 2 + Duration::from_secs(5))
}

/// The handle on `queue` in the consumer group named after it: queues are
/// unique to a case and run, so a case never waits on a member an earlier
/// case or run left behind (tansu can leave a group stalled for good).
fn open_in_own_group(config: Config, queue: &str) -> Result<Kafka, prefork_broker::BrokerError> {
    config.group(format!("g-{queue}")).open(queue)
}

fn open(queue: &str) -> Kafka {
    open_in_own_group(config(), queue).unwrap_or_else(|e| panic!("open {queue}: {e}"))
}

fn kit() -> Kit {
    Kit::new(|q: &str| open_in_own_group(config(), q))
        .lease(SESSION)
        .redeliveries_counted(false)
}

/// A queue name no other case (in any process or run) uses.
fn unique_queue(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{tag}-{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .expect("say");
}

/// Two handles of one group, both fetching: the group splits the four
/// partitions between them, and together they process every message.
fn two_consumers_split_partitions_and_process_everything() {
    let q = unique_queue("split");
    let (mut a, mut b) = (open(&q), open(&q));
    // Both join before anything is there, so neither takes it all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(a.fetch(1, Duration::from_millis(50)).unwrap().is_empty());
        assert!(b.fetch(1, Duration::from_millis(50)).unwrap().is_empty());
        let (pa, pb) = (a.assigned_partitions(), b.assigned_partitions());
        let main = |p: &[(String, i32)]| p.iter().filter(|(t, _)| *t == q).count();
        if main(&pa) > 0 && main(&pb) > 0 && main(&pa) + main(&pb) == 4 {
            let sa: BTreeSet<_> = pa.into_iter().collect();
            assert!(
                pb.iter().all(|p| !sa.contains(p)),
                "a partition assigned twice"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group never split the partitions: {pa:?} / {pb:?}"
        );
    }
    let sent: BTreeSet<Vec<u8>> = (0..200).map(|i| format!("m-{i:03}").into_bytes()).collect();
    let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    a.publish_batch(&refs, Duration::ZERO).unwrap();
    let mut got = BTreeSet::new();
    let (mut by_a, mut by_b) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < sent.len() {
        assert!(Instant::now() < deadline, "only {} of 200 came", got.len());
        for (h, n) in [(&mut a, &mut by_a), (&mut b, &mut by_b)] {
            for d in h.fetch(16, Duration::from_millis(50)).unwrap() {
                assert!(got.insert(d.payload().to_vec()), "{d:?} processed twice");
                *n += 1;
                h.ack(d).unwrap();
            }
        }
    }
    assert_eq!(got, sent);
    assert!(
        by_a > 0 && by_b > 0,
        "one consumer did everything: {by_a} / {by_b}"
    );
    println!("a processed {by_a}, b {by_b}");
}

/// The helper of the kill case: fetches 20 messages of the one-partition
/// queue, acks every odd one (out of order, later ones first), says what
/// it did, and waits to be killed holding the even ones.
fn role_ack_odd_hold_even(q: &str) {
    let mut b = open_in_own_group(config().partitions(1), q).expect("open");
    let mut held: Vec<Delivery> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "helper: only {} came",
            held.len()
        );
        held.extend(
            b.fetch(20 - held.len(), Duration::from_millis(300))
                .expect("fetch"),
        );
    }
    let (odd, even): (Vec<Delivery>, Vec<Delivery>) =
        held.into_iter().partition(|d| d.payload()[3] % 2 == 1);
    for d in odd.into_iter().rev() {
        let p = String::from_utf8_lossy(d.payload()).into_owned();
        b.ack(d).expect("ack");
        say(&format!("acked {p}"));
    }
    for d in even {
        say(&format!("held {}", String::from_utf8_lossy(d.payload())));
        std::mem::forget(d);
    }
    say("ready");
    std::thread::sleep(Duration::from_secs(120));
}

/// A consumer holding ten messages of one partition, with the ten
/// between them acked, is SIGKILLed: a new member of the group gets every
/// message it had not finished (the held ones and the ten it never
/// fetched). Acked ones above the lowest held one come again too (the
/// commit cannot pass an unfinished message); none of the held is skipped.
fn killed_consumer_never_skips_an_unfinished_message() {
    let q = unique_queue("kill");
    let mut b = open_in_own_group(config().partitions(1), &q).expect("open");
    let sent: Vec<Vec<u8>> = (0..30).map(|i| format!("k-{i:02}").into_bytes()).collect();
    let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    b.publish_batch(&refs, Duration::ZERO).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, "ack-odd-hold-even")
        .env(QUEUE_ENV, &q)
        .env(
            "PREFORK_TEST_CASE",
            std::env::var("PREFORK_TEST_CASE").unwrap_or_default(),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = BTreeSet::new();
    let mut held = BTreeSet::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        match line.split_once(' ') {
            Some(("acked", p)) => acked.insert(p.as_bytes().to_vec()),
            Some(("held", p)) => held.insert(p.as_bytes().to_vec()),
            _ if line == "ready" => break,
            _ => panic!("bad helper line {line:?}"),
        };
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!((acked.len(), held.len()), (10, 10));
    let unfinished: BTreeSet<Vec<u8>> = sent
        .iter()
        .filter(|p| !acked.contains(*p))
        .cloned()
        .collect();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !unfinished.is_subset(&got) {
        assert!(
            Instant::now() < deadline,
            "never came back: {:?}",
            unfinished.difference(&got).collect::<Vec<_>>()
        );
        for d in b.fetch(30, Duration::from_millis(300)).unwrap() {
            got.insert(d.payload().to_vec());
            b.ack(d).unwrap();
        }
    }
    let lowest_held = held.iter().min().unwrap().clone();
    for p in &got {
        if acked.contains(p) {
            assert!(
                *p > lowest_held,
                "{p:?} was acked below every held message, yet came back"
            );
        }
    }
}

fn main() {
    kit().serve_role();
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let q = std::env::var(QUEUE_ENV).expect("queue");
        match role.as_str() {
            "ack-odd-hold-even" => role_ack_odd_hold_even(&q),
            other => panic!("unknown role {other:?}"),
        }
        std::process::exit(0);
    }
    if std::env::var_os(URL_ENV).is_none() {
        let required = std::env::var_os("CI").is_some()
            || std::env::var("PREFORK_REQUIRE_BROKERS").is_ok_and(|v| v == "1");
        if required {
            eprintln!(
                "error: {URL_ENV} is not set, and CI requires the Kafka tests to run (start tansu with `cargo xtask brokers start`)"
            );
            std::process::exit(1);
        }
        println!(
            "skipping prefork-kafka fork_conformance: {URL_ENV} is not set (run under `cargo xtask ci`, or `cargo xtask brokers start kafka` and source target/brokers.env)"
        );
        return;
    }
    let mut cases: Vec<Case> = prefork_conformance::cases!(Case::new, kit())
        .into_iter()
        .collect();
    cases.extend([
        Case::new(
            "two_consumers_split_partitions_and_process_everything",
            two_consumers_split_partitions_and_process_everything,
        ),
        Case::new(
            "killed_consumer_never_skips_an_unfinished_message",
            killed_consumer_never_skips_an_unfinished_message,
        ),
    ]);
    run(&cases);
}
