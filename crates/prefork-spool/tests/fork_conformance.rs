//! The broker conformance kit run against the spool, plus spool-specific
//! multi-process tests: several consumer processes acking every job exactly
//! once, and SIGKILLs of publishers and consumers at arbitrary instants.
//!
//! A `harness = false` target: every case runs in a process of its own
//! (`prefork_tests::harness`), and the cases start this binary again as
//! helpers (publishers, consumers) and SIGKILL them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_broker::{Broker, BrokerError, Delivery, DeliveryId, SettleError};
use prefork_conformance::Kit;
use prefork_spool::{Durability, Options, Queue, Spool};
use prefork_tests::harness::{Case, run};

/// Where the kit's queues live: one directory per (unique) queue name, so
/// helper processes find it from the name alone.
fn kit_root() -> PathBuf {
    std::env::temp_dir().join("prefork-spool-conformance")
}

/// Removes the kit's queue directories (`kit-PID-...`, named by the
/// kit) whose creating process is gone: a run that was killed leaves them,
/// and a run going on beside this one (another checkout, say) keeps its own.
fn sweep_dead_kit_queues() {
    let Ok(entries) = std::fs::read_dir(kit_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("kit-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn open_for_kit(queue: &str) -> Result<Queue, BrokerError> {
    let options = Options::default().lease(Duration::from_secs(1));
    Spool::with_options(kit_root().join(queue), options)?.queue("q")
}

fn kit() -> Kit {
    Kit::new(open_for_kit).lease(Duration::from_secs(1))
}

// ----- a broken adapter, to show the kit fails it ----------------------------

/// A spool queue whose ack does nothing.
#[derive(Debug)]
struct ForgetfulAck(Queue);

impl Broker for ForgetfulAck {
    fn queue(&self) -> &str {
        self.0.queue()
    }
    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        self.0.publish(payload, delay)
    }
    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        self.0.fetch(max, timeout)
    }
    fn ack(&mut self, _delivery: Delivery) -> Result<(), SettleError> {
        Ok(())
    }
    fn retry(&mut self, d: Delivery, delay: Duration) -> Result<(), SettleError> {
        self.0.retry(d, delay)
    }
    fn release(&mut self, d: Delivery) -> Result<(), SettleError> {
        self.0.release(d)
    }
    fn dead_letter(&mut self, d: Delivery, reason: &str) -> Result<(), SettleError> {
        self.0.dead_letter(d, reason)
    }
    fn touch(&mut self, d: &mut Delivery) -> Result<(), BrokerError> {
        self.0.touch(d)
    }
    fn dead_letters(
        &mut self,
        limit: usize,
    ) -> Result<Vec<prefork_broker::DeadLetter>, BrokerError> {
        self.0.dead_letters(limit)
    }
    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.0.redrive(id)
    }
    fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.0.delete_dead(id)
    }
    fn stats(&mut self) -> Result<prefork_broker::QueueStats, BrokerError> {
        Broker::stats(&mut self.0)
    }
}

fn broken_kit() -> Kit {
    Kit::new(|q: &str| open_for_kit(q).map(ForgetfulAck)).lease(Duration::from_secs(1))
}

/// Runs the kit's `ack_removes` against an adapter whose ack does nothing
/// (a hidden case, in a process of its own) and checks that it fails.
fn kit_fails_an_adapter_whose_ack_does_nothing() {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("PREFORK_TEST_CASE", "broken_ack_removes")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !out.success(),
        "the kit passed a broker whose ack does nothing"
    );
}

// ----- spool-specific multi-process tests ------------------------------------

const ROLE: &str = "SPOOL_TEST_ROLE";
const DIR: &str = "SPOOL_TEST_DIR";

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("prefork-spool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spool(dir: &std::path::Path, lease: Duration) -> Queue {
    Spool::with_options(
        dir,
        Options::default()
            .lease(lease)
            .durability(Durability::Buffered),
    )
    .unwrap()
    .queue("jobs")
    .unwrap()
}

fn helper(role: &str, dir: &std::path::Path, arg: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, format!("{role}:{arg}"))
        .env(DIR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The helper roles of the spool-specific cases; returns when this process
/// is not such a helper.
fn serve_spool_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let (role, arg) = role.split_once(':').unwrap();
    let mut out = std::io::stdout().lock();
    match role {
        // Publishes jobs arg.. upward, saying each one after publish returned.
        "publish" => {
            let (from, to) = arg.split_once('-').unwrap();
            let mut q = spool(&dir, Duration::from_secs(60));
            for i in from.parse::<u32>().unwrap()..to.parse().unwrap() {
                q.publish(format!("job-{i}").as_bytes(), Duration::ZERO)
                    .unwrap();
                writeln!(out, "published job-{i}").unwrap();
                out.flush().unwrap();
            }
        }
        // Fetches and acks until the queue stays empty for arg ms, saying
        // "acking" before each ack and "acked" after it returned.
        "consume" => {
            let quiet = Duration::from_millis(arg.parse().unwrap());
            let mut q = spool(&dir, Duration::from_secs(60));
            let mut last = Instant::now();
            while last.elapsed() < quiet {
                for d in q.fetch(3, Duration::from_millis(100)).unwrap() {
                    last = Instant::now();
                    let p = String::from_utf8(d.payload().to_vec()).unwrap();
                    writeln!(out, "acking {p}").unwrap();
                    out.flush().unwrap();
                    q.ack(d).unwrap();
                    writeln!(out, "acked {p}").unwrap();
                    out.flush().unwrap();
                }
            }
        }
        // Fetches one job, says "held", and waits to be killed.
        "hold" => {
            let mut q = spool(&dir, Duration::from_secs(60));
            let d = q
                .fetch_one(Duration::from_secs(10))
                .unwrap()
                .expect("a job");
            writeln!(out, "held {}", d.id()).unwrap();
            out.flush().unwrap();
            sleep(Duration::from_secs(30));
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Full lines a helper wrote, after it exited or was killed.
fn lines(child: &mut Child) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let text: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    child.wait().unwrap();
    text
}

/// One publisher and four consumer processes run at once with a long
/// lease: every job is acked exactly once.
fn several_processes_ack_each_job_once() {
    let dir = TempDir::new("consumers");
    let n = 400;
    let mut publisher = helper("publish", &dir.0, &format!("0-{n}"));
    let mut consumers: Vec<Child> = (0..4).map(|_| helper("consume", &dir.0, "1500")).collect();
    let published: BTreeSet<String> = lines(&mut publisher)
        .iter()
        .map(|l| l.strip_prefix("published ").unwrap().to_owned())
        .collect();
    assert!(publisher.wait().unwrap().success());
    assert_eq!(published.len(), n);
    let mut acks: BTreeMap<String, usize> = BTreeMap::new();
    for c in &mut consumers {
        for l in lines(c) {
            if let Some(p) = l.strip_prefix("acked ") {
                *acks.entry(p.to_owned()).or_default() += 1;
            }
        }
        assert!(c.wait().unwrap().success());
    }
    // Consumers may have gone quiet before the publisher finished; drain.
    let mut q = spool(&dir.0, Duration::from_secs(60));
    while let Some(d) = q.fetch_one(Duration::from_millis(200)).unwrap() {
        *acks
            .entry(String::from_utf8(d.payload().to_vec()).unwrap())
            .or_default() += 1;
        q.ack(d).unwrap();
    }
    let twice: Vec<_> = acks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "acked more than once: {twice:?}");
    assert_eq!(acks.keys().cloned().collect::<BTreeSet<_>>(), published);
    let s = q.counts().unwrap();
    assert_eq!((s.ready, s.claimed, s.quarantined), (0, 0, 0), "{s:?}");
}

/// Publishers and consumers are SIGKILLed at arbitrary instants, over and
/// over; afterwards every job a publisher reported is found (reported acked,
/// or drained now; a consumer killed right after an ack may leave that one
/// job unreported), no file is corrupt, and no temp file is left.
fn sigkill_at_any_instant_loses_nothing() {
    let dir = TempDir::new("sigkill");
    let mut published = BTreeSet::new();
    let mut acked = BTreeSet::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    // A consumer killed between its ack and its "acked" line leaves one job
    // that was acked but not reported: at most one per consumer process.
    let mut unreported = Vec::new();
    for round in 0..12u32 {
        let base = round * 1000;
        let mut kids = vec![
            helper("publish", &dir.0, &format!("{base}-{}", base + 1000)),
            helper("consume", &dir.0, "60000"),
            helper("consume", &dir.0, "60000"),
        ];
        sleep(Duration::from_millis(5 + next(40)));
        for k in &mut kids {
            k.kill().unwrap();
            sleep(Duration::from_micros(next(3000)));
        }
        for k in &mut kids {
            let mut acking = None;
            for l in lines(k) {
                if let Some(p) = l.strip_prefix("published ") {
                    published.insert(p.to_owned());
                } else if let Some(p) = l.strip_prefix("acking ") {
                    acking = Some(p.to_owned());
                } else if let Some(p) = l.strip_prefix("acked ") {
                    acked.insert(p.to_owned());
                    acking = None;
                }
            }
            unreported.extend(acking);
        }
    }
    assert!(!published.is_empty());
    // Killed consumers' claims come back at once (their pids are gone).
    let mut q = spool(&dir.0, Duration::from_secs(1));
    while let Some(d) = q.fetch_one(Duration::from_secs(2)).unwrap() {
        acked.insert(String::from_utf8(d.payload().to_vec()).unwrap());
        q.ack(d).unwrap();
    }
    let lost: Vec<_> = published
        .difference(&acked)
        .filter(|p| !unreported.contains(p))
        .collect();
    assert!(
        lost.is_empty(),
        "{} jobs lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let s = q.counts().unwrap();
    assert_eq!(
        (s.ready, s.delayed, s.claimed, s.quarantined),
        (0, 0, 0, 0),
        "{s:?}"
    );
    drop(q);
    let _fresh = spool(&dir.0, Duration::from_secs(1)); // sweeps dead publishers' temp files
    let tmp: Vec<_> = std::fs::read_dir(dir.0.join("jobs/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}

/// A holder SIGKILLed and not yet reaped (a zombie, which `kill(pid, 0)`
/// still finds) loses its claim to the next fetch at once, though the lease
/// is 60 s: its pid, start time and host are in the claim's name.
fn a_killed_holders_job_comes_back_before_it_is_reaped() {
    let dir = TempDir::new("zombie");
    let mut q = spool(&dir.0, Duration::from_secs(60));
    q.publish(b"orphan", Duration::ZERO).unwrap();
    let mut holder = helper("hold", &dir.0, "");
    let mut first = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("held "), "{first:?}");
    holder.kill().unwrap(); // SIGKILL; not waited for
    let since = Instant::now();
    let d = q
        .fetch_one(Duration::from_secs(5))
        .unwrap()
        .expect("the dead holder's job, long before the lease ends");
    assert_eq!((d.payload(), d.attempt()), (&b"orphan"[..], 2));
    assert!(
        since.elapsed() < Duration::from_secs(2),
        "{:?}",
        since.elapsed()
    );
    q.ack(d).unwrap();
    holder.wait().unwrap();
}

fn main() {
    kit().serve_role(); // also serves broken_kit()'s helpers: same roles
    serve_spool_role();
    if std::env::var_os("PREFORK_TEST_CASE").is_none() {
        // The runner itself (not a case, not a helper): sweep what earlier
        // runs left, and only that (another run may be going on beside).
        sweep_dead_kit_queues();
    }
    let mut cases: Vec<Case> = prefork_conformance::cases!(Case::new, kit()).to_vec();
    cases.extend([
        Case::new("broken_ack_removes", || broken_kit().ack_removes()).hidden(),
        Case::new(
            "kit_fails_an_adapter_whose_ack_does_nothing",
            kit_fails_an_adapter_whose_ack_does_nothing,
        ),
        Case::new(
            "several_processes_ack_each_job_once",
            several_processes_ack_each_job_once,
        ),
        Case::new(
            "sigkill_at_any_instant_loses_nothing",
            sigkill_at_any_instant_loses_nothing,
        ),
        Case::new(
            "a_killed_holders_job_comes_back_before_it_is_reaped",
            a_killed_holders_job_comes_back_before_it_is_reaped,
        ),
    ]);
    run(&cases);
}
