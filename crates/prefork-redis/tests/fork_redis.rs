//! Redis-specific cases beyond the conformance kit: malformed entries,
//! poison jobs, binary delayed payloads, two masters sharing one queue,
//! passwords kept out of every output, and a restart of `redis-server`
//! (SIGKILL, then start again on the same data) in the middle of a run.
//!
//! A `harness = false` target: each case runs in a process of its own
//! (`prefork_tests::harness`); the two-masters case starts this binary again
//! as the masters. The shared server comes from `PREFORK_REDIS_URL` (a
//! missing URL fails under CI, skips elsewhere); the password and restart
//! cases start a private `redis-server` of their own on a free port and
//! stop it by pid.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_broker::{Broker, ErrorKind};
use prefork_redis::{Options, Redis, RedisQueue};
use prefork_tests::harness::{Case, run};

use common::PrivateRedis;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{tag}-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

fn options() -> Options {
    Options::default()
        .prefix("prefork-test")
        .block(Duration::from_millis(200))
}

fn open(queue: &str, options: Options) -> RedisQueue {
    Redis::with_options(&common::url(), options)
        .unwrap()
        .queue(queue)
        .unwrap()
}

/// Sends one command to the shared server with a raw client (what another
/// program, not this adapter, might write).
fn raw(args: &[&[u8]]) -> redis::Value {
    let client = redis::Client::open(common::url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c).unwrap()
}

/// Fetches until `n` jobs came (or panics after 20 s).
fn collect(q: &mut RedisQueue, n: usize) -> Vec<prefork_broker::Delivery> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} jobs came",
            got.len()
        );
        got.extend(q.fetch(n - got.len(), Duration::from_millis(300)).unwrap());
    }
    got
}

// ----- entries and attempts --------------------------------------------------

/// Entries written by someone else without a payload field or with a bad
/// attempt are dead-lettered with the reason; the fetch returns the good job
/// between them and does not fail.
fn malformed_entries_are_dead_lettered() {
    let name = unique("malformed");
    let mut q = open(&name, options());
    let stream = q.stream_key().to_owned();
    raw(&[b"XADD", stream.as_bytes(), b"*", b"payload", b"oops"]);
    q.publish(b"good", Duration::ZERO).unwrap();
    raw(&[
        b"XADD",
        stream.as_bytes(),
        b"*",
        b"p",
        b"x",
        b"a",
        b"banana",
    ]);
    let got = q.fetch(10, Duration::from_millis(500)).unwrap();
    let payloads: Vec<&[u8]> = got.iter().map(|d| d.payload()).collect();
    assert_eq!(payloads, [&b"good"[..]]);
    for d in got {
        q.ack(d).unwrap();
    }
    let dead = q.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead[0].reason().contains("no field \"p\""),
        "{}",
        dead[0].reason()
    );
    assert_eq!(dead[0].payload(), b"payload=oops\n");
    assert!(dead[1].reason().contains("banana"), "{}", dead[1].reason());
    // Nothing is pending: the malformed entries were settled, not left held.
    let pending = raw(&[b"XPENDING", stream.as_bytes(), b"prefork"]);
    let redis::Value::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(summary[0], redis::Value::Int(0), "{summary:?}");
    // Re-driven, a dead letter comes back as a well-formed job.
    q.redrive(dead[0].id()).unwrap();
    let back = collect(&mut q, 1).pop().unwrap();
    assert_eq!(back.payload(), b"payload=oops\n");
    assert_eq!(back.id(), dead[0].id());
    q.ack(back).unwrap();
}

/// A job whose holders keep dying (nobody settles it) is reclaimed with a
/// growing attempt number, then dead-lettered once its delivery count passes
/// the limit.
fn poison_jobs_are_dead_lettered_after_max_deliveries() {
    let name = unique("poison");
    let lease = Duration::from_millis(300);
    let o = options()
        .lease(lease)
        .reclaim_every(Duration::from_millis(50))
        .max_deliveries(Some(2));
    let (mut a, mut b, mut c) = (
        open(&name, o.clone()),
        open(&name, o.clone()),
        open(&name, o),
    );
    a.publish(b"kills its worker", Duration::ZERO).unwrap();
    let d1 = collect(&mut a, 1).pop().unwrap();
    assert_eq!(d1.attempt(), 1);
    drop(d1); // a's worker "died": never settled
    let d2 = collect(&mut b, 1).pop().unwrap();
    assert_eq!(d2.attempt(), 2, "a reclaim counts an attempt");
    assert_eq!(d2.meta("deliveries"), Some("2"));
    drop(d2);
    // The third delivery is over the limit: dead-lettered, never handed out.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = c.fetch(1, Duration::from_millis(200)).unwrap();
        assert!(got.is_empty(), "poison job handed out again: {got:?}");
        if !c.dead_letters(1).unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "poison job never dead-lettered");
    }
    let dead = c.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload(), b"kills its worker");
    assert!(
        dead[0].reason().contains("delivered 3 times"),
        "{}",
        dead[0].reason()
    );
    assert_eq!(dead[0].attempt(), 3);
}

/// Binary payloads holding the delayed-entry separator (`:`), NULs and
/// newlines come back intact from delayed publishes (one at a time and
/// batched) and a delayed retry, with the same job id and a counted
/// attempt; a batch of identical payloads stays two jobs.
fn delayed_binary_payloads_survive() {
    let name = unique("binary");
    let mut q = open(&name, options());
    let weird: Vec<u8> = b"a:b::c:\x00\n\xff:".to_vec();
    q.publish(&weird, Duration::from_millis(50)).unwrap();
    q.publish(b"", Duration::from_millis(50)).unwrap();
    q.publish_batch(&[b"b1:", b"b2"], Duration::from_millis(50))
        .unwrap();
    q.publish_batch(&[b"n1", b"n1"], Duration::ZERO).unwrap();
    let mut got = collect(&mut q, 6);
    got.sort_by(|x, y| x.payload().cmp(y.payload()));
    let payloads: Vec<&[u8]> = got.iter().map(|d| d.payload()).collect();
    assert_eq!(
        payloads,
        [&b""[..], b"a:b::c:\x00\n\xff:", b"b1:", b"b2", b"n1", b"n1"]
    );
    let weird_at = got.iter().position(|d| d.payload() == &weird[..]).unwrap();
    let d = got.remove(weird_at);
    let id = d.id().clone();
    for other in got {
        q.ack(other).unwrap();
    }
    q.retry(d, Duration::from_millis(50)).unwrap();
    let d = collect(&mut q, 1).pop().unwrap();
    assert_eq!((d.payload(), d.attempt(), d.id()), (&weird[..], 2, &id));
    q.ack(d).unwrap();
}
/// Every handle gets a consumer name of its own, `hostname:pid:random`.
fn consumer_names_are_unique_per_handle() {
    let name = unique("names");
    let (a, b) = (open(&name, options()), open(&name, options()));
    assert_ne!(a.consumer(), b.consumer());
    for c in [a.consumer(), b.consumer()] {
        let parts: Vec<&str> = c.split(':').collect();
        assert_eq!(parts.len(), 3, "{c}");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(parts[0], host.trim(), "{c}");
        assert_eq!(parts[1], std::process::id().to_string());
        assert_eq!(parts[2].len(), 8, "{c}");
    }
}

/// `take_over(pid)` takes the claims of consumers named `THIS-HOST:pid:*`
/// and nothing else: not a consumer of the same pid on another host, nor
/// one whose pid merely starts with the same digits, not even when their
/// entry ids are passed in `ids`. The dead consumer is deleted once empty.
fn take_over_is_per_host() {
    let name = unique("takeover");
    let mine = open(&name, options());
    let host = mine.consumer().rsplitn(3, ':').nth(2).unwrap().to_owned();
    // A pid that is surely dead: a child we started and reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let named = |consumer: String| open(&name, options().consumer(consumer));
    let mut dead_here = named(format!("{host}:{pid}:0000beef"));
    let mut same_pid_elsewhere = named(format!("elsewhere.example:{pid}:0000abcd"));
    let mut longer_pid_here = named(format!("{host}:{pid}7:00000001"));
    let mut taker = open(&name, options());
    taker
        .publish_batch(&[b"here", b"elsewhere", b"longer"], Duration::ZERO)
        .unwrap();
    let d_here = collect(&mut dead_here, 1).pop().unwrap();
    let d_elsewhere = collect(&mut same_pid_elsewhere, 1).pop().unwrap();
    let d_longer = collect(&mut longer_pid_here, 1).pop().unwrap();
    let ids = [d_here.id(), d_elsewhere.id(), d_longer.id()].map(Clone::clone);
    let got = taker.take_over(pid, &ids).unwrap();
    let payloads: Vec<&[u8]> = got.iter().map(|d| d.payload()).collect();
    assert_eq!(payloads, [&b"here"[..]], "{got:?}");
    assert_eq!(got[0].attempt(), 2, "a take-over counts an attempt");
    assert_eq!(got[0].id(), d_here.id());
    // The other two are still their holders' own; the dead one's is not.
    same_pid_elsewhere.ack(d_elsewhere).unwrap();
    longer_pid_here.ack(d_longer).unwrap();
    let e = dead_here.ack(d_here).unwrap_err();
    assert_eq!(e.error().kind(), ErrorKind::LeaseLost, "{e}");
    for d in got {
        taker.ack(d).unwrap();
    }
    let consumers = raw(&[
        b"XINFO",
        b"CONSUMERS",
        taker.stream_key().as_bytes(),
        b"prefork",
    ]);
    let listed = format!("{consumers:?}");
    assert!(
        !listed.contains("0000beef"),
        "the dead consumer was kept: {listed}"
    );
    assert!(listed.contains("0000abcd"), "{listed}");
}

// ----- two masters -----------------------------------------------------------

const ROLE: &str = "PREFORK_REDIS_TEST_ROLE";

/// A "master" process: its own handle (own consumer name) on the queue,
/// fetching batches and acking each job after a little work, until the queue
/// stays quiet.
fn role_master(queue: &str) {
    let mut q = open(queue, options().lease(Duration::from_secs(30)));
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", q.consumer()).unwrap();
    out.flush().unwrap();
    let mut last = Instant::now();
    let mut started = false;
    while !started || last.elapsed() < Duration::from_millis(1500) {
        let batch = q.fetch(8, Duration::from_millis(200)).unwrap();
        if !batch.is_empty() {
            started = true;
            last = Instant::now();
        }
        for d in batch {
            sleep(Duration::from_millis(2)); // the job
            let p = String::from_utf8(d.payload().to_vec()).unwrap();
            q.ack(d).unwrap();
            writeln!(out, "acked {p}").unwrap();
        }
        out.flush().unwrap();
        assert!(last.elapsed() < Duration::from_secs(30), "no job came");
    }
}

/// Two independent master processes share one queue through one group
/// under distinct consumer names: every job is run exactly once, and both
/// do part of the work.
fn two_masters_share_the_work() {
    let name = unique("masters");
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .env(ROLE, format!("master:{name}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut masters: Vec<Child> = vec![spawn(), spawn()];
    let mut readers: Vec<_> = masters
        .iter_mut()
        .map(|m| BufReader::new(m.stdout.take().unwrap()).lines())
        .collect();
    let mut consumers = BTreeSet::new();
    for r in &mut readers {
        let line = r.next().unwrap().unwrap();
        consumers.insert(line.strip_prefix("ready ").unwrap().to_owned());
    }
    assert_eq!(consumers.len(), 2, "the masters share a consumer name");
    let mut q = open(&name, options());
    let n = 300;
    for i in 0..n {
        q.publish(format!("job-{i}").as_bytes(), Duration::ZERO)
            .unwrap();
    }
    let mut acks: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_master = Vec::new();
    for (m, r) in masters.iter_mut().zip(readers) {
        let mine: Vec<String> = r
            .map(|l| l.unwrap())
            .filter_map(|l| l.strip_prefix("acked ").map(str::to_owned))
            .collect();
        assert!(m.wait().unwrap().success());
        per_master.push(mine.len());
        for p in mine {
            *acks.entry(p).or_default() += 1;
        }
    }
    let twice: Vec<_> = acks.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "run twice: {twice:?}");
    assert_eq!(acks.len(), n, "jobs never run: {}", n - acks.len());
    assert!(
        per_master.iter().all(|c| *c > 0),
        "one master did nothing: {per_master:?}"
    );
    assert!(q.fetch(1, Duration::from_millis(200)).unwrap().is_empty());
}

// ----- passwords ---------------------------------------------------------------

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The password of a URL shows up in no `Debug` output, no error message
/// (bad password, unreachable server, bad URL), no log line (reconnects
/// after the server died) and not in the process title.
fn passwords_never_show() {
    const SECRET: &str = "Hunter2-s3cr3t-pw";
    const WRONG: &str = "Wr0ng-s3cr3t-pw";
    let logs = Captured::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();
    let server = PrivateRedis::start("auth", &["--requirepass", SECRET, "--appendonly", "no"]);
    let mut shown = Vec::new();

    let good = Redis::with_options(&server.url(&format!(":{SECRET}@")), options()).unwrap();
    shown.push(format!("{good:?}"));
    shown.push(good.url().to_owned());
    assert_eq!(good.url(), server.url(":***@"));
    let mut q = good.queue(&unique("auth")).unwrap();
    shown.push(format!("{q:?}"));
    q.publish(b"x", Duration::ZERO).unwrap();
    let d = collect(&mut q, 1).pop().unwrap();

    let wrong = Redis::with_options(&server.url(&format!("default:{WRONG}@")), options()).unwrap();
    let e = wrong.queue("q").unwrap_err();
    assert!(
        !e.is_retryable(),
        "a refused password is not transient: {e}"
    );
    shown.push(e.to_string());
    shown.push(format!("{e:?}"));

    let nowhere = Redis::with_options(
        &format!("redis://:{SECRET}@127.0.0.1:1/"),
        options().io_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let e = nowhere.queue("q").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    shown.push(e.to_string());
    shown.push(format!("{e:?}"));

    let e = Redis::new(&format!("redis://:{SECRET}@[::1:bad/")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    shown.push(e.to_string());

    // Lose the server under a live handle: the errors and the warnings
    // logged while reconnecting name the server, not its password.
    server.kill();
    let e = q.ack(d).unwrap_err();
    shown.push(e.to_string());
    let e = q.fetch(1, Duration::from_millis(300)).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    shown.push(e.to_string());

    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("127.0.0.1"),
        "no reconnect warning logged: {log}"
    );
    shown.push(log);
    shown.push(String::from_utf8_lossy(&std::fs::read("/proc/self/cmdline").unwrap()).into_owned());
    shown.push(std::fs::read_to_string("/proc/self/comm").unwrap());
    for s in &shown {
        assert!(
            !s.contains(SECRET) && !s.contains(WRONG),
            "a password leaked: {s}"
        );
    }
}

// ----- restart -----------------------------------------------------------------

/// `redis-server` is SIGKILLed mid-run and started again on its append-only
/// file: the consumer carries on through the outage (retryable errors, no
/// busy loop, no panic), jobs held across the restart are acked after it,
/// delayed jobs still come, and every job is acked.
fn restart_of_redis_loses_nothing() {
    let server = PrivateRedis::start(
        "restart",
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    let o = options()
        .lease(Duration::from_secs(60))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .io_timeout(Duration::from_secs(2));
    let url = server.url("");
    let mut q = Redis::with_options(&url, o).unwrap().queue("jobs").unwrap();
    let mut want = BTreeSet::new();
    for i in 0..100 {
        let p = format!("job-{i}");
        q.publish(p.as_bytes(), Duration::ZERO).unwrap();
        want.insert(p);
    }
    for i in 0..10 {
        let p = format!("delayed-{i}");
        q.publish(p.as_bytes(), Duration::from_millis(1500))
            .unwrap();
        want.insert(p);
    }
    let mut acked = BTreeSet::new();
    // Hold a batch across the restart.
    let held = collect(&mut q, 5);
    for d in q.fetch(20, Duration::from_millis(300)).unwrap() {
        acked.insert(String::from_utf8(d.payload().to_vec()).unwrap());
        q.ack(d).unwrap();
    }
    server.kill();
    // While it is down: fetches fail after waiting their timeout, not at once.
    let timeout = Duration::from_millis(150);
    for _ in 0..3 {
        let t = Instant::now();
        let e = q.fetch(8, timeout).unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(
            t.elapsed() >= timeout,
            "fetch gave up after {:?} < {timeout:?}: a busy loop",
            t.elapsed()
        );
    }
    server.launch();
    let mut pending_acks = held;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "missing after the restart: {:?}",
            want.difference(&acked).collect::<Vec<_>>()
        );
        let mut batch = std::mem::take(&mut pending_acks);
        match q.fetch(16, Duration::from_millis(300)) {
            Ok(got) => batch.extend(got),
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
        for d in batch {
            let p = String::from_utf8(d.payload().to_vec()).unwrap();
            match q.ack(d) {
                Ok(()) => assert!(acked.insert(p.clone()), "{p} acked twice"),
                Err(e) if e.error().is_retryable() => pending_acks.push(e.into_parts().0),
                Err(e) => panic!("ack {p}: {e}"),
            }
        }
    }
    assert_eq!(acked, want);
    assert!(q.fetch(1, Duration::from_millis(300)).unwrap().is_empty());
}

fn main() {
    common::url_or_skip("prefork-redis adapter tests");
    if let Ok(role) = std::env::var(ROLE) {
        let (role, queue) = role.split_once(':').unwrap();
        assert_eq!(role, "master");
        role_master(queue);
        std::process::exit(0);
    }
    run(&[
        Case::new(
            "malformed_entries_are_dead_lettered",
            malformed_entries_are_dead_lettered,
        ),
        Case::new(
            "poison_jobs_are_dead_lettered_after_max_deliveries",
            poison_jobs_are_dead_lettered_after_max_deliveries,
        ),
        Case::new(
            "delayed_binary_payloads_survive",
            delayed_binary_payloads_survive,
        ),
        Case::new(
            "consumer_names_are_unique_per_handle",
            consumer_names_are_unique_per_handle,
        ),
        Case::new("take_over_is_per_host", take_over_is_per_host),
        Case::new("two_masters_share_the_work", two_masters_share_the_work),
        Case::new("passwords_never_show", passwords_never_show),
        Case::new(
            "restart_of_redis_loses_nothing",
            restart_of_redis_loses_nothing,
        ),
    ]);
}
