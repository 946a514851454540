//! The broker conformance kit against a live beanstalkd, plus the
//! adapter's own cases that need the real server: a forked child dropping
//! an inherited handle, attempt counting, dead-letter
//! records, oversized jobs.
//!
//! A `harness = false` target: every case runs in a process of its own
//! (`prefork_tests::harness`); the kit's cases start this binary again as
//! helpers and SIGKILL them, and one case forks.
//!
//! The server comes from `PREFORK_BEANSTALKD_URL` (set by `cargo xtask`).
//! Without it the run fails under CI (`CI` or `PREFORK_REQUIRE_BROKERS=1`)
//! and is skipped, saying why, elsewhere.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_beanstalkd::{Beanstalkd, Config, URL_ENV};
use prefork_broker::{Broker, Delivery, DeliveryId, ErrorKind};
use prefork_conformance::Kit;
use prefork_proc::Fork;
use prefork_tests::harness::{Case, run};

/// The claim timeout of the handles under test: beanstalkd's smallest TTR.
const TTR: Duration = Duration::from_secs(1);

fn config() -> Config {
    Config::from_env()
        .expect("PREFORK_BEANSTALKD_URL")
        .expect("PREFORK_BEANSTALKD_URL is set (checked in main)")
        .ttr(TTR)
}

fn open(tube: &str) -> Beanstalkd {
    config()
        .open(tube)
        .unwrap_or_else(|e| panic!("open {tube}: {e}"))
}

fn kit() -> Kit {
    Kit::new(|q: &str| config().open(q)).lease(TTR)
}

/// A tube name no other case (in any process or run) uses.
fn unique_tube(tag: &str) -> String {
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

fn fetch_one(b: &mut Beanstalkd, within: Duration) -> Delivery {
    let deadline = Instant::now() + within;
    loop {
        if let Some(d) = b.fetch_one(Duration::from_millis(300)).expect("fetch") {
            return d;
        }
        assert!(Instant::now() < deadline, "no job came within {within:?}");
    }
}

fn assert_empty(b: &mut Beanstalkd) {
    if let Some(d) = b.fetch_one(Duration::from_millis(300)).expect("fetch") {
        panic!("expected an empty tube, got {d:?}");
    }
}

/// beanstalkc sends `quit` when a connection is dropped, so a forked child
/// dropping its inherited copy ends the parent's session (and the server
/// then releases the parent's reserved jobs). Ours writes nothing on drop:
/// the parent's claim and session survive the child's drop, and the child
/// works through a connection of its own, opened after the fork.
fn fork_child_dropping_inherited_handle_keeps_parent_session() {
    let tube = unique_tube("fork");
    let mut parent = open(&tube);
    parent
        .publish(b"held by the parent", Duration::ZERO)
        .unwrap();
    let held = fetch_one(&mut parent, Duration::from_secs(5));
    parent.publish(b"for the child", Duration::ZERO).unwrap();
    match prefork_proc::fork().expect("fork") {
        Fork::Child => {
            let ok = catch_unwind(AssertUnwindSafe(|| {
                // What a worker must not rely on, done on purpose: drop the
                // copy of the parent's handle (and its delivery).
                drop(held);
                drop(parent);
                let mut own = config().open(&tube).expect("open after the fork");
                let d = fetch_one(&mut own, Duration::from_secs(5));
                assert_eq!(d.payload(), b"for the child");
                own.ack(d).expect("ack in the child");
            }))
            .is_ok();
            std::process::exit(if ok { 0 } else { 1 });
        }
        Fork::Parent(child) => {
            let status = child.wait().expect("wait for the child");
            assert!(status.success(), "child failed: {status:?}");
            // Our claim survived: the session was not ended by the child.
            parent.ack(held).expect("ack the job held across the fork");
            parent.publish(b"after", Duration::ZERO).unwrap();
            let d = fetch_one(&mut parent, Duration::from_secs(5));
            assert_eq!(d.payload(), b"after");
            parent.ack(d).unwrap();
            assert_empty(&mut parent);
        }
    }
}

/// Attempts: a retry (a copy carrying the attempts used) counts one, a
/// release (`release`, same job id) counts none, a holder killed with the
/// job counts one; the payload comes back unchanged throughout, even one
/// that looks like the copy's header.
fn attempts_count_retries_not_releases() {
    let tube = unique_tube("attempts");
    let mut b = open(&tube);
    let payload: &[u8] = b"PFAT1 9\nflaky";
    b.publish(payload, Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.attempt(), d.payload()), (1, payload));
    b.retry(d, Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!(
        (d.attempt(), d.payload()),
        (2, payload),
        "a retry counts an attempt"
    );
    let id = d.id().clone();
    b.release(d).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!(
        (d.id(), d.attempt(), d.payload()),
        (&id, 2, payload),
        "a release does not"
    );
    // A holder killed with the job: its connection closes.
    drop(d);
    drop(b);
    let mut b = open(&tube);
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.id(), d.attempt()), (&id, 3), "a lost holder counts one");
    b.retry(d, Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.attempt(), d.payload()), (4, payload));
    b.ack(d).unwrap();
    assert_empty(&mut b);
}

/// Dead letters keep the attempt they died at and the id of the job that
/// died (a retry is a copy: the last copy's id);
/// listing does not consume them; a re-driven job starts at attempt 1; an
/// id that is a live job of the tube, not a dead letter, is refused and the
/// job left alone.
fn dead_letter_records_and_redrive() {
    let tube = unique_tube("dead");
    let mut b = open(&tube);
    b.publish(b"poison", Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    b.retry(d, Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!(d.attempt(), 2);
    let original = d.id().clone();
    b.dead_letter(d, "boom\non line 2").unwrap();
    for _ in 0..2 {
        let dead = b.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].payload(), b"poison");
        assert_eq!(dead[0].reason(), "boom\non line 2");
        assert_eq!(dead[0].attempt(), 2);
        assert_eq!(dead[0].meta("job-id"), Some(original.as_str()));
    }
    // A live job's id is not a dead letter.
    b.publish(b"live", Duration::ZERO).unwrap();
    let live = fetch_one(&mut b, Duration::from_secs(5));
    let e = b.redrive(live.id()).expect_err("redrive of a live job");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    b.ack(live).expect("the live job was left alone");
    let e = b
        .redrive(&DeliveryId::new("18446744073709551615"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let id = b.dead_letters(1).unwrap()[0].id().clone();
    b.redrive(&id).unwrap();
    let back = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!(back.payload(), b"poison");
    assert_eq!(back.attempt(), 1, "a re-driven job starts over");
    b.ack(back).unwrap();
    assert!(b.dead_letters(10).unwrap().is_empty());
    let e = b.redrive(&id).expect_err("a second redrive");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_empty(&mut b);
}

/// A payload over `max_job_size` (the server's `max-job-size` less the
/// headroom) is a clear `Invalid` error and the handle keeps working; the
/// largest payload taken can still be retried and dead-lettered; a job
/// another client put at the server's own limit, too big to carry a
/// dead-letter header, stays buried in its tube (not redelivered), and
/// the error says so.
fn oversized_jobs_get_clear_errors() {
    let tube = unique_tube("big");
    let mut b = open(&tube);
    let max = b.max_job_size();
    let e = b.publish(&vec![b'x'; max + 1], Duration::ZERO).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.message().contains("max-job-size"), "{e}");
    let (small, big) = (vec![b's'; 10], vec![b'x'; max + 1]);
    let e = b
        .publish_batch(&[&small, &big, &small], Duration::ZERO)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    for size in [max.to_string(), (max + 1).to_string()] {
        assert!(e.message().contains(&size), "names {size}: {e}");
    }
    assert!(e.message().contains("none was sent"), "{e}");
    assert_empty(&mut b); // nothing of the refused batch was added
    b.publish(&vec![b'y'; max], Duration::ZERO)
        .expect("a job of exactly max_job_size");
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!(d.payload().len(), max);
    b.retry(d, Duration::ZERO).expect("the largest job retried");
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.payload().len(), d.attempt()), (max, 2));
    b.dead_letter(d, "the largest job, dead")
        .expect("the largest job dead-lettered");
    let dead = b.dead_letters(1).unwrap();
    assert_eq!(dead[0].payload().len(), max);
    assert_empty(&mut b);
    let server_max = max + prefork_beanstalkd::HEADROOM;
    let put = raw(&[
        format!("use {tube}"),
        format!("put 0 0 5 {server_max}\r\n{}", "z".repeat(server_max)),
    ]);
    assert!(put[1].starts_with("INSERTED"), "{put:?}");
    let d = fetch_one(&mut b, Duration::from_secs(5));
    let id = d.id().clone();
    let e = b.dead_letter(d, "too big to explain").unwrap_err();
    assert_eq!(e.error().kind(), ErrorKind::Invalid, "{}", e.error());
    assert!(
        e.error().message().contains(&format!("kick-job {id}")),
        "{}",
        e.error()
    );
    sleep(TTR + Duration::from_millis(500));
    assert_empty(&mut b); // buried, not redelivered
}

/// The `current-jobs-*` counts of `tube`, from `stats-tube` on a
/// connection of its own: (ready, reserved, delayed, buried).
fn tube_counts(tube: &str) -> (u64, u64, u64, u64) {
    use std::io::{BufRead, BufReader, Read, Write};
    let url = std::env::var(URL_ENV).unwrap();
    let mut s = std::net::TcpStream::connect(url.trim_start_matches("beanstalk://")).unwrap();
    write!(s, "stats-tube {tube}\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let len: usize = match line.strip_prefix("OK ") {
        Some(n) => n.trim().parse().unwrap(),
        None if line.starts_with("NOT_FOUND") => return (0, 0, 0, 0),
        None => panic!("stats-tube {tube}: {line}"),
    };
    let mut yaml = vec![0; len + 2];
    r.read_exact(&mut yaml).unwrap();
    let yaml = String::from_utf8(yaml).unwrap();
    let n = |k: &str| {
        yaml.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(": ")?.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        n("current-jobs-ready"),
        n("current-jobs-reserved"),
        n("current-jobs-delayed"),
        n("current-jobs-buried"),
    )
}

/// A handle SIGKILLed in the middle of a settlement leaves no job stuck:
/// every job it held is back in circulation (ready, or delayed by a
/// retry) once the server sees its connection close; none is left buried,
/// which only an operator's `kick` would bring back. A child loops over
/// every settlement that moves a job (release, retry, dead letter) and is
/// killed at random moments.
fn a_kill_mid_settle_leaves_no_job_buried() {
    let tube = unique_tube("killsettle");
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for trial in 0..40 {
        let child = match prefork_proc::fork().expect("fork") {
            Fork::Child => {
                let mut b = config().open(&tube).expect("open after the fork");
                loop {
                    b.publish(b"moved around", Duration::ZERO).unwrap();
                    let d = fetch_one(&mut b, Duration::from_secs(5));
                    b.release(d).unwrap();
                    let d = fetch_one(&mut b, Duration::from_secs(5));
                    b.retry(d, Duration::ZERO).unwrap();
                    let d = fetch_one(&mut b, Duration::from_secs(5));
                    b.dead_letter(d, "killed mid-settle").unwrap();
                }
            }
            Fork::Parent(child) => child,
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        sleep(Duration::from_millis(20 + seed % 30));
        child.signal(libc::SIGKILL).expect("SIGKILL the child");
        child.wait().expect("reap the child");
        // The server returns a closed connection's reservations at once.
        let deadline = Instant::now() + Duration::from_secs(2);
        let (ready, mut reserved, delayed, mut buried) = tube_counts(&tube);
        while reserved > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(10));
            (_, reserved, _, buried) = tube_counts(&tube);
        }
        assert_eq!(
            reserved, 0,
            "trial {trial}: the dead child's jobs were not returned"
        );
        assert_eq!(
            buried, 0,
            "trial {trial}: a kill mid-settle left {buried} job(s) buried (ready {ready}, delayed {delayed})"
        );
    }
}

/// Sends `commands` on a connection of its own and returns the replies'
/// first lines (for what the adapter never does, such as burying a job).
fn raw(commands: &[String]) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let url = std::env::var(URL_ENV).unwrap();
    let addr = url.trim_start_matches("beanstalk://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for c in commands {
        write!(s, "{c}\r\n").unwrap();
    }
    let mut r = BufReader::new(s);
    (0..commands.len())
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(len) = line
                .strip_prefix("RESERVED ")
                .and_then(|l| l.split_whitespace().nth(1))
            {
                let mut body = vec![0; len.parse::<usize>().unwrap() + 2];
                std::io::Read::read_exact(&mut r, &mut body).unwrap();
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// `take_over` takes only ready jobs of its own tube: a job another live
/// handle holds (after a short wait), a delayed or buried one, one of
/// another tube, a deleted one and an id that is no number are left alone.
fn take_over_takes_only_ready_jobs_of_its_tube() {
    let tube = unique_tube("takeover");
    let mut b = open(&tube);
    let mut holder = open(&tube);
    let mut ids = Vec::new();
    for p in ["held", "ready", "buried", "gone"] {
        b.publish(p.as_bytes(), Duration::ZERO).unwrap();
        let d = fetch_one(&mut holder, Duration::from_secs(5));
        assert_eq!(d.payload(), p.as_bytes());
        ids.push(d);
    }
    let [held, ready, buried, gone] = <[Delivery; 4]>::try_from(ids).unwrap();
    let mut ids = vec![
        held.id().clone(),
        ready.id().clone(),
        buried.id().clone(),
        gone.id().clone(),
    ];
    holder.release(ready).unwrap();
    holder.ack(gone).unwrap();
    holder.release(buried).unwrap();
    let bury = raw(&[
        format!("watch {tube}"),
        format!("reserve-job {}", ids[2]),
        format!("bury {} 0", ids[2]),
    ]);
    assert_eq!(bury[2], "BURIED", "{bury:?}");
    b.publish(b"delayed", Duration::from_secs(30)).unwrap();
    let delayed = raw(&[format!("use {tube}"), "peek-delayed".into()]);
    let delayed_id = delayed[1].split(' ').nth(1).expect("FOUND <id>").to_owned();
    ids.push(DeliveryId::new(delayed_id));
    let mut other = open(&unique_tube("other"));
    other.publish(b"elsewhere", Duration::ZERO).unwrap();
    let elsewhere = fetch_one(&mut other, Duration::from_secs(5));
    ids.push(elsewhere.id().clone());
    other.release(elsewhere).unwrap();
    ids.push(DeliveryId::new("not-a-number"));

    let started = Instant::now();
    let got = b.take_over(0, &ids).unwrap();
    let payloads: Vec<&[u8]> = got.iter().map(Delivery::payload).collect();
    assert_eq!(payloads, [b"ready".as_slice()]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} for a live holder",
        started.elapsed()
    );
    for d in got {
        b.ack(d).unwrap();
    }
    holder.ack(held).expect("the live holder kept its claim");
    let e = other
        .fetch_one(Duration::from_secs(1))
        .unwrap()
        .expect("the other tube's job is still there");
    other.ack(e).unwrap();
}

fn main() {
    kit().serve_role();
    if std::env::var_os(URL_ENV).is_none() {
        let required = std::env::var_os("CI").is_some()
            || std::env::var("PREFORK_REQUIRE_BROKERS").is_ok_and(|v| v == "1");
        if required {
            eprintln!(
                "error: {URL_ENV} is not set, and CI requires the beanstalkd tests to run (start one with `cargo xtask brokers start`)"
            );
            std::process::exit(1);
        }
        println!(
            "skipping prefork-beanstalkd fork_conformance: {URL_ENV} is not set (run under `cargo xtask ci`, or start `beanstalkd -l 127.0.0.1 -p PORT -z 33554432` and set {URL_ENV}=beanstalk://127.0.0.1:PORT)"
        );
        return;
    }
    // The kit round-trips a 16 MiB payload; say up front what a failure of
    // `large_payload_round_trip` on a default server means.
    if std::env::var_os("PREFORK_TEST_CASE").is_none() {
        let max = open(&unique_tube("probe")).max_job_size();
        if max < (17 << 20) {
            eprintln!(
                "note: this beanstalkd's max-job-size is {max} bytes; the kit's large_payload_round_trip sends 16 MiB and needs `beanstalkd -z 33554432`"
            );
        }
    }
    let mut cases: Vec<Case> = prefork_conformance::cases!(Case::new, kit()).to_vec();
    cases.extend([
        Case::new(
            "a_kill_mid_settle_leaves_no_job_buried",
            a_kill_mid_settle_leaves_no_job_buried,
        ),
        Case::new(
            "fork_child_dropping_inherited_handle_keeps_parent_session",
            fork_child_dropping_inherited_handle_keeps_parent_session,
        ),
        Case::new(
            "attempts_count_retries_not_releases",
            attempts_count_retries_not_releases,
        ),
        Case::new(
            "dead_letter_records_and_redrive",
            dead_letter_records_and_redrive,
        ),
        Case::new(
            "oversized_jobs_get_clear_errors",
            oversized_jobs_get_clear_errors,
        ),
        Case::new(
            "take_over_takes_only_ready_jobs_of_its_tube",
            take_over_takes_only_ready_jobs_of_its_tube,
        ),
    ]);
    run(&cases);
}
