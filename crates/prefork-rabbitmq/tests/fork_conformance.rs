//! The broker conformance kit against a live rabbitmq-server, plus the
//! adapter's own cases that need the real server: attempt counting, dead
//! letters and re-drive, a holder SIGKILLed mid-settle, clear errors for
//! bad input, and a connection cut under a handle (it reconnects).
//!
//! A `harness = false` target: every case runs in a process of its own
//! (`prefork_tests::harness`); the kit's cases and ours start this binary
//! again as helpers and SIGKILL them.
//!
//! The server comes from `PREFORK_RABBITMQ_URL` (set by `cargo xtask`).
//! Without it the run fails under CI (`CI` or `PREFORK_REQUIRE_BROKERS=1`)
//! and is skipped, saying why, elsewhere.

use std::io::{BufRead, BufReader, Lines};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_broker::{Broker, Delivery, DeliveryId, ErrorKind};
use prefork_conformance::Kit;
use prefork_rabbitmq::{Config, RabbitMq, URL_ENV};
use prefork_tests::harness::{Case, run};

/// The queue a helper case works on.
const QUEUE_VAR: &str = "RABBITMQ_TEST_QUEUE";

fn config() -> Config {
    Config::from_env()
        .expect("PREFORK_RABBITMQ_URL")
        .expect("PREFORK_RABBITMQ_URL is set (checked in main)")
}

fn open(queue: &str) -> RabbitMq {
    config()
        .open(queue)
        .unwrap_or_else(|e| panic!("open {queue}: {e}"))
}

fn kit() -> Kit {
    // RabbitMQ claims do not expire while the holder's connection lives;
    // the kit's lease only sizes its waits.
    Kit::new(|q: &str| config().open(q)).lease(Duration::from_secs(1))
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

fn fetch_one(b: &mut RabbitMq, within: Duration) -> Delivery {
    let deadline = Instant::now() + within;
    loop {
        if let Some(d) = b.fetch_one(Duration::from_millis(300)).expect("fetch") {
            return d;
        }
        assert!(Instant::now() < deadline, "no job came within {within:?}");
    }
}

fn assert_empty(b: &mut RabbitMq) {
    if let Some(d) = b.fetch_one(Duration::from_millis(300)).expect("fetch") {
        panic!("expected an empty queue, got {d:?}");
    }
}

/// This test binary started again as the hidden case `case`, on `queue`,
/// its stdout piped; killed and reaped on drop.
struct Helper {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Helper {
    fn spawn(case: &str, queue: &str) -> Helper {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("PREFORK_TEST_CASE", case)
            .env(QUEUE_VAR, queue)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a helper");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Helper { child, lines }
    }

    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("the helper said nothing")
            .expect("read the helper")
    }

    fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines.by_ref().map_while(Result::ok).collect()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Hidden helper: fetches one job, says `held ID`, waits to be killed.
fn helper_hold() {
    let mut b = open(&std::env::var(QUEUE_VAR).unwrap());
    let d = fetch_one(&mut b, Duration::from_secs(10));
    say(&format!("held {}", d.id()));
    std::mem::forget(d);
    sleep(Duration::from_secs(60));
}

/// Hidden helper: acks every job it gets, saying `acked ID` right after
/// each ack returns, until killed.
fn helper_ack_loop() {
    let mut b = open(&std::env::var(QUEUE_VAR).unwrap());
    loop {
        let d = fetch_one(&mut b, Duration::from_secs(30));
        let id = d.id().clone();
        b.ack(d).unwrap();
        say(&format!("acked {id}"));
    }
}

/// Hidden helper: moves jobs around (publish, release, retry, dead
/// letter) until killed, saying `published` after each publish.
fn helper_settle_loop() {
    let mut b = open(&std::env::var(QUEUE_VAR).unwrap());
    loop {
        b.publish(b"moved around", Duration::ZERO).unwrap();
        say("published");
        let d = fetch_one(&mut b, Duration::from_secs(5));
        b.release(d).unwrap();
        let d = fetch_one(&mut b, Duration::from_secs(5));
        b.retry(d, Duration::ZERO).unwrap();
        let d = fetch_one(&mut b, Duration::from_secs(5));
        b.dead_letter(d, "killed mid-settle").unwrap();
    }
}

/// Attempts: a retry counts one (the copy's header), a release counts
/// none, a holder killed with the job counts one (the quorum queue's
/// `x-delivery-count`); a delayed retry stays hidden for its delay; the
/// id and payload never change.
fn attempts_count_retries_and_kills_not_releases() {
    let q = unique_queue("attempts");
    let mut b = open(&q);
    b.publish(b"flaky", Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    let id = d.id().clone();
    assert_eq!(d.attempt(), 1);
    b.retry(d, Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.id(), d.attempt()), (&id, 2), "a retry counts an attempt");
    b.release(d).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.id(), d.attempt()), (&id, 2), "a release counts none");
    let delay = Duration::from_millis(700);
    let retried = Instant::now();
    b.retry(d, delay).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(10));
    assert!(
        retried.elapsed() >= delay,
        "visible after {:?}",
        retried.elapsed()
    );
    assert_eq!((d.id(), d.attempt()), (&id, 3));
    b.release(d).unwrap();
    drop(b);
    let mut holder = Helper::spawn("helper_hold", &q);
    assert_eq!(holder.line(), format!("held {id}"));
    holder.kill();
    let mut b = open(&q);
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.id(), d.attempt(), d.payload()), (&id, 4, &b"flaky"[..]));
    assert_eq!(d.meta("redelivered"), Some("true"));
    b.ack(d).unwrap();
    assert_empty(&mut b);
}

/// Dead letters keep their reason, attempt and id; a re-driven one comes
/// back with the same id as attempt 1; a message RabbitMQ itself
/// dead-letters (a consumer that rejects it without requeue) lands in the
/// same place, listed with a reason that says so.
fn dead_letters_keep_reason_attempt_and_id() {
    let q = unique_queue("dead");
    let mut b = open(&q);
    b.publish(b"poison", Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    b.retry(d, Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    let id = d.id().clone();
    b.dead_letter(d, "bad \u{2713}\nreason").unwrap();
    assert_empty(&mut b);
    let dead = b.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (
            dead[0].id(),
            dead[0].attempt(),
            dead[0].reason(),
            dead[0].payload()
        ),
        (&id, 2, "bad \u{2713}\nreason", &b"poison"[..])
    );
    // Listing twice lists the same: listing puts them back.
    assert_eq!(b.dead_letters(10).unwrap().len(), 1);
    b.redrive(&id).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    assert_eq!((d.id(), d.attempt(), d.payload()), (&id, 1, &b"poison"[..]));
    b.ack(d).unwrap();
    assert!(b.dead_letters(10).unwrap().is_empty());
    let e = b.redrive(&id).expect_err("already re-driven");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // A plain AMQP consumer rejecting a message without requeue: RabbitMQ
    // routes it through the queue's dead-letter target.
    b.publish(b"rejected elsewhere", Duration::ZERO).unwrap();
    let url = std::env::var(URL_ENV).unwrap();
    let mut conn = amiquip::Connection::insecure_open(&url).unwrap();
    let ch = conn.open_channel(None).unwrap();
    let got = ch.basic_get(q.as_str(), false).unwrap().expect("a message");
    got.reject(&ch, false).unwrap();
    ch.close().unwrap();
    conn.close().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let dead = loop {
        let dead = b.dead_letters(10).unwrap();
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].payload(), b"rejected elsewhere");
    assert!(
        dead[0].reason().contains("by RabbitMQ"),
        "{}",
        dead[0].reason()
    );
}

/// (ready messages, consumers) of `queue`, from a passive declare on a
/// connection of its own.
fn queue_counts(queue: &str) -> (u32, u32) {
    let url = std::env::var(URL_ENV).unwrap();
    let mut conn = amiquip::Connection::insecure_open(&url).unwrap();
    let ch = conn.open_channel(None).unwrap();
    let q = ch.queue_declare_passive(queue).unwrap();
    let counts = (
        q.declared_message_count().unwrap(),
        q.declared_consumer_count().unwrap(),
    );
    ch.close().unwrap();
    conn.close().unwrap();
    counts
}

/// A holder SIGKILLed in the middle of settlements leaves no job stuck or
/// lost: every job it published is, once its connection is gone, ready in
/// the queue or in the dead letters (at most one twice: a copy published
/// before its original was acked).
fn a_kill_mid_settle_leaves_no_job_stuck() {
    let q = unique_queue("killsettle");
    let dead = format!("{q}.dead");
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut published = 0u32;
    for trial in 0..15 {
        let mut h = Helper::spawn("helper_settle_loop", &q);
        assert_eq!(h.line(), "published");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        sleep(Duration::from_millis(30 + seed % 70));
        published += 1 + h.kill().len() as u32;
        // RabbitMQ requeues a closed connection's deliveries at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        let total = loop {
            let (ready, consumers) = queue_counts(&q);
            let (dead, _) = queue_counts(&dead);
            if (consumers == 0 && ready + dead >= published) || Instant::now() > deadline {
                break ready + dead;
            }
            sleep(Duration::from_millis(20));
        };
        assert!(
            (published..=published + trial + 1).contains(&total),
            "trial {trial}: {total} jobs in the queue and its dead letters for {published} published"
        );
        published = total;
    }
}

/// An ack that returned is not undone by a SIGKILL right after it (the
/// client's I/O thread could still hold it: `ack` waits until the server
/// has read it): no job the killed holder said it acked comes back.
fn an_ack_that_returned_survives_a_kill() {
    let q = unique_queue("ackkill");
    let mut b = open(&q);
    let jobs: Vec<Vec<u8>> = (0..200).map(|i| format!("a-{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = jobs.iter().map(Vec::as_slice).collect();
    b.publish_batch(&refs, Duration::ZERO).unwrap();
    let mut acked = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let mut h = Helper::spawn("helper_ack_loop", &q);
        acked.insert(h.line());
        for line in h.kill() {
            acked.insert(line);
        }
    }
    let mut left = 0;
    while let Some(d) = b.fetch_one(Duration::from_millis(500)).unwrap() {
        assert!(
            !acked.contains(&format!("acked {}", d.id())),
            "{d:?} was acked before the kill and came back"
        );
        left += 1;
        b.ack(d).unwrap();
    }
    // A kill between an ack and its line hides at most one job per kill.
    let accounted = left + acked.len();
    assert!(
        (jobs.len() - 5..=jobs.len()).contains(&accounted),
        "{} acked, {left} left of {}",
        acked.len(),
        jobs.len()
    );
}

/// amiquip's close, run by a forked child dropping an inherited
/// connection, waits forever for an I/O thread the child does not have
/// (measured: the README). The handle remembers who opened it: a child's
/// drop leaves the connection alone, and the parent's session and claim
/// survive it. (The parent has the client's threads at the fork, which is
/// what `fork_unchecked` is for; the child only drops and exits.)
fn fork_child_dropping_inherited_handle_leaves_it_alone() {
    let q = unique_queue("fork");
    let mut parent = open(&q);
    parent
        .publish(b"held by the parent", Duration::ZERO)
        .unwrap();
    let held = fetch_one(&mut parent, Duration::from_secs(5));
    // SAFETY: the child runs only the drop (a pid check, forgetting the
    // session) and `_exit`, under an alarm; no lock the client's threads
    // may hold is taken on that path but the allocator's, which glibc
    // resets in the child.
    match unsafe { prefork_proc::fork_unchecked() }.expect("fork") {
        prefork_proc::Fork::Child => {
            // The fork blocked every signal around fork(2); unblock them so
            // the alarm can end a child that hangs.
            // SAFETY: sigemptyset, sigprocmask and alarm are
            // async-signal-safe; `set` is a local sigset_t they initialise.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                libc::alarm(5);
            }
            drop(held);
            drop(parent);
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        prefork_proc::Fork::Parent(child) => {
            let status = child.wait().expect("wait for the child");
            assert!(
                status.success(),
                "the child's drop did not return: {status:?}"
            );
            parent.ack(held).expect("ack the job held across the fork");
            parent.publish(b"after", Duration::ZERO).unwrap();
            let d = fetch_one(&mut parent, Duration::from_secs(5));
            assert_eq!(d.payload(), b"after");
            parent.ack(d).unwrap();
            assert_empty(&mut parent);
        }
    }
}

/// Bad input gets clear errors: a bad queue name, wrong credentials, a
/// port nobody listens on (retryable), a queue of that name declared with
/// other settings.
fn bad_input_gets_clear_errors() {
    for name in ["", "amq.reserved", &"x".repeat(201), "tab\there"] {
        let e = config().open(name).expect_err(name);
        assert_eq!(e.kind(), ErrorKind::Invalid, "{name:?}: {e}");
    }
    let wrong = config().credentials("guest", "not-the-password");
    let e = wrong.open("anything").expect_err("wrong password");
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Config::new("127.0.0.1", port)
        .open("anything")
        .expect_err("nobody listens");
    assert!(e.is_retryable(), "{e}");
    // A classic queue where the adapter wants a quorum one.
    let q = unique_queue("classic");
    let url = std::env::var(URL_ENV).unwrap();
    let mut conn = amiquip::Connection::insecure_open(&url).unwrap();
    let ch = conn.open_channel(None).unwrap();
    ch.queue_declare(
        q.as_str(),
        amiquip::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let e = config().open(&q).expect_err("a classic queue");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.to_string().contains("PRECONDITION_FAILED"), "{e}");
    ch.queue_delete(q.as_str(), Default::default()).unwrap();
    ch.close().unwrap();
    conn.close().unwrap();
    let e = open(&unique_queue("delay"))
        .publish(b"x", Duration::from_secs(60 * 86_400))
        .expect_err("a delay over the TTL limit");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
}

/// A loopback TCP proxy to the server whose connections can be cut, to
/// make the broker go away under a handle and come back.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)) else {
                    continue;
                };
                for s in [&client, &server] {
                    c.lock().unwrap().push(s.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, open, conns }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::restore`].
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The broker going away under a handle gives retryable errors (and
/// `LeaseLost` for what it held, which RabbitMQ requeued); once it is back,
/// the next call reconnects and nothing was lost.
fn reconnects_after_the_connection_is_lost() {
    let q = unique_queue("reconnect");
    let server = config();
    let proxy = Proxy::start(server.port());
    let via_proxy = Config::new("127.0.0.1", proxy.port)
        .credentials("guest", "guest")
        .vhost_name(server.vhost())
        .connect_timeout(Duration::from_secs(2))
        .io_timeout(Duration::from_secs(2));
    let mut b = via_proxy.open(&q).unwrap();
    b.publish(b"survives", Duration::ZERO).unwrap();
    let d = fetch_one(&mut b, Duration::from_secs(5));
    proxy.cut();
    sleep(Duration::from_millis(100));
    let e = b
        .publish(b"while away", Duration::ZERO)
        .expect_err("server away");
    assert!(e.is_retryable(), "{e}");
    let e = b
        .fetch(1, Duration::from_millis(100))
        .expect_err("server away");
    assert!(e.is_retryable(), "{e}");
    let e = b.ack(d).expect_err("the claim went with the connection");
    assert_eq!(e.error().kind(), ErrorKind::LeaseLost, "{e}");
    proxy.restore();
    // More jobs ready than a fetch asks for: the new connection's channel
    // must get the prefetch again (it once kept the lost one's in mind,
    // sent none, and a fetch of 1 was pushed every ready job).
    let mut other = open(&q);
    for i in 0..4u8 {
        other.publish(&[b'm', i], Duration::ZERO).unwrap();
    }
    let d = fetch_one(&mut b, Duration::from_secs(10));
    assert_eq!((d.payload(), d.attempt()), (&b"survives"[..], 2));
    b.ack(d).unwrap();
    let got = b.fetch(2, Duration::from_secs(5)).unwrap();
    let taken = got.len();
    assert!((1..=2).contains(&taken), "fetch(2) returned {taken}");
    assert!(b.ack_batch(got).is_empty());
    b.publish(b"after", Duration::ZERO).unwrap();
    let mut rest = Vec::new();
    while rest.len() < 5 - taken {
        let d = fetch_one(&mut other, Duration::from_secs(5));
        rest.push(d.payload().to_vec());
        other.ack(d).unwrap();
    }
    assert!(rest.contains(&b"after".to_vec()), "{rest:?}");
    assert_empty(&mut b);
}

/// Closing a handle gives back the deliveries it claimed but never handed
/// out (what a take-over found besides the dead holder's jobs) without
/// counting an attempt.
fn close_gives_back_unstarted_deliveries() {
    let q = unique_queue("close");
    let mut b = open(&q);
    for i in 0..3u8 {
        b.publish(&[b'j', i], Duration::ZERO).unwrap();
    }
    // Ask to take over an id nobody holds: the handle claims what it sees
    // while looking, and keeps it aside.
    let got = b
        .take_over(1, &[DeliveryId::new("no-such-id")])
        .expect("take over");
    assert!(got.is_empty(), "{got:?}");
    b.close().expect("close");
    let mut other = open(&q);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let d = fetch_one(&mut other, Duration::from_secs(5));
        assert_eq!(d.attempt(), 1, "{d:?}");
        seen.push(d.payload().to_vec());
        other.ack(d).unwrap();
    }
    seen.sort();
    assert_eq!(seen, [b"j\x00", b"j\x01", b"j\x02"]);
    assert_empty(&mut other);
}

fn main() {
    kit().serve_role();
    if std::env::var_os(URL_ENV).is_none() {
        let required = std::env::var_os("CI").is_some()
            || std::env::var("PREFORK_REQUIRE_BROKERS").is_ok_and(|v| v == "1");
        if required {
            eprintln!(
                "error: {URL_ENV} is not set, and CI requires the RabbitMQ tests to run (start one with `cargo xtask brokers start`)"
            );
            std::process::exit(1);
        }
        println!(
            "skipping prefork-rabbitmq fork_conformance: {URL_ENV} is not set (run under `cargo xtask ci`, or `cargo xtask brokers start rabbitmq` and source target/brokers.env)"
        );
        return;
    }
    let mut cases: Vec<Case> = prefork_conformance::cases!(Case::new, kit()).to_vec();
    cases.extend([
        Case::new(
            "attempts_count_retries_and_kills_not_releases",
            attempts_count_retries_and_kills_not_releases,
        ),
        Case::new(
            "dead_letters_keep_reason_attempt_and_id",
            dead_letters_keep_reason_attempt_and_id,
        ),
        Case::new(
            "a_kill_mid_settle_leaves_no_job_stuck",
            a_kill_mid_settle_leaves_no_job_stuck,
        )
        .limit(Duration::from_secs(120)),
        Case::new("bad_input_gets_clear_errors", bad_input_gets_clear_errors),
        Case::new(
            "fork_child_dropping_inherited_handle_leaves_it_alone",
            fork_child_dropping_inherited_handle_leaves_it_alone,
        ),
        Case::new(
            "an_ack_that_returned_survives_a_kill",
            an_ack_that_returned_survives_a_kill,
        ),
        Case::new(
            "reconnects_after_the_connection_is_lost",
            reconnects_after_the_connection_is_lost,
        ),
        Case::new(
            "close_gives_back_unstarted_deliveries",
            close_gives_back_unstarted_deliveries,
        ),
        Case::new("helper_hold", helper_hold).hidden(),
        Case::new("helper_settle_loop", helper_settle_loop).hidden(),
        Case::new("helper_ack_loop", helper_ack_loop).hidden(),
    ]);
    run(&cases);
}
