//! Helpers for end-to-end tests of job pools: which broker to test against
//! (and what to do when there is none), the `O_APPEND` file handlers record
//! their runs in, process-tree inspection through `/proc`, and the driver
//! that SIGKILLs workers and the master of a running pool at random moments.
//!
//! It knows nothing of prefork's crates (so that any of them can use it as a
//! dev-dependency): a pool is whatever `start_pool` spawns, a child process
//! that is the master and whose children are the workers.
//!
//! ```no_run
//! use prefork_tests::e2e::{self, KillPlan};
//!
//! let out = std::env::temp_dir().join("runs.log");
//! let start_pool = || std::process::Command::new("my-pool").spawn().unwrap();
//! let jobs = 1000;
//! let report = e2e::run_with_kills(
//!     &KillPlan::new(jobs, 4),
//!     start_pool,
//!     || e2e::counts(&out).len() as u64,
//!     || e2e::counts(&out).len() as u64 == jobs,
//! );
//! report.check(&e2e::counts(&out), jobs);
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Whether broker tests must not skip: `CI` is set, or
/// `PREFORK_REQUIRE_BROKERS=1` (as `cargo xtask` sets).
pub fn brokers_required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("PREFORK_REQUIRE_BROKERS").is_ok_and(|v| v == "1")
}

/// The broker URL in environment variable `var` (e.g. `PREFORK_REDIS_URL`).
///
/// When it is unset: under CI ([`brokers_required`]) this panics, failing
/// the case; elsewhere it prints why the case skips and returns `None`.
///
/// # Panics
///
/// Under CI, when `var` is unset or empty.
pub fn broker_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if brokers_required() => {
            panic!(
                "{var} is not set, and brokers are required here (CI or PREFORK_REQUIRE_BROKERS=1); run `cargo xtask brokers start` and source target/brokers.env"
            )
        }
        _ => {
            eprintln!(
                "skipped: {var} is not set (run `cargo xtask brokers start` and source target/brokers.env)"
            );
            None
        }
    }
}

/// A name unique to this run (pid and clock), for queues on shared
/// servers: `prefix-<pid>-<nanos>`.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Appends `line` and a newline to `path` in one `write` on a file opened
/// with `O_APPEND`, so lines from many processes never interleave.
///
/// # Errors
///
/// When the file cannot be opened or written.
pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

/// How many times each line occurs in `path` (empty when it does not
/// exist yet).
pub fn counts(path: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *m.entry(line.to_owned()).or_insert(0) += 1;
    }
    m
}

/// Pids whose parent is `parent`, from `/proc`.
pub fn children_of(parent: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: parse
        // after the last ')': " S ppid ...".
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid = after.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The command line of `pid` as `/proc` shows it (arguments joined by
/// spaces; a process title set by the process itself shows here), or an
/// empty string when it is gone.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Whether a process `pid` exists (a zombie counts).
pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Polls `f` every 20 ms until it is true.
///
/// # Panics
///
/// When `limit` passes first, naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends QUIT (graceful stop) to a pool's master and waits for it.
///
/// # Panics
///
/// When the signal cannot be sent or the master exits unsuccessfully.
pub fn quit(mut pool: Child) {
    kill(Pid::from_raw(pool.id() as i32), Signal::SIGQUIT).unwrap();
    let status = pool.wait().unwrap();
    assert!(status.success(), "pool exited with {status}");
}

/// A small xorshift generator: random moments and victims, seeded per run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the pid (never zero).
    pub fn seeded() -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()))
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What [`run_with_kills`] does to a pool.
#[derive(Debug, Clone)]
pub struct KillPlan {
    /// Jobs enqueued; the master is killed once past half of them.
    pub jobs: u64,
    /// Worker processes per pool (the master's death takes them with it).
    pub workers: usize,
    /// Workers to SIGKILL, at most.
    pub worker_kills: u64,
    /// Dispatch mode: the text in the feeder's command line (its process
    /// title, e.g. `"feeder"`) that tells it from the workers among the
    /// master's children. `None`: every child is a worker.
    pub feeder_title: Option<String>,
    /// Feeder SIGKILLs to make, at most (needs `feeder_title`), at random
    /// moments like the worker kills.
    pub feeder_kills: u64,
    /// Dispatch mode: the most jobs the master asks for beyond one per
    /// idle worker (`dispatch_lookahead`; the adaptive default goes up to
    /// 8 per worker). 0 in pull mode.
    pub lookahead: u64,
    /// The shortest and longest pause between two looks at the pool.
    pub pause: (Duration, Duration),
    /// How long the whole run may take.
    pub limit: Duration,
}

impl KillPlan {
    /// `jobs` jobs on pools of `workers`: up to 10 worker kills, no feeder
    /// kill, pauses of 5-35 ms, 90 s in all.
    pub fn new(jobs: u64, workers: usize) -> KillPlan {
        KillPlan {
            jobs,
            workers,
            worker_kills: 10,
            feeder_title: None,
            feeder_kills: 0,
            lookahead: 0,
            pause: (Duration::from_millis(5), Duration::from_millis(35)),
            limit: Duration::from_secs(90),
        }
    }
}

/// What [`run_with_kills`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillReport {
    /// Worker SIGKILLs that landed.
    pub worker_kills: u64,
    /// Feeder SIGKILLs that landed (dispatch mode).
    pub feeder_kills: u64,
    /// Whether the master was SIGKILLed (and a new pool started).
    pub master_killed: bool,
    /// Workers per pool.
    pub workers: usize,
    /// The plan's `lookahead`.
    pub lookahead: u64,
}

impl KillReport {
    /// How many jobs the kills can have made run twice (or left claimed
    /// after they ran):
    ///
    /// - a worker kill: one. The worker had started at most one job (pull
    ///   mode: its replacement takes over the unstarted rest of its batch;
    ///   dispatch: the master hands one at a time), which may have run
    ///   before its ack or report was sent.
    /// - a feeder kill (dispatch): none. The next feeder takes the dead
    ///   one's claims over, settles the reports of the jobs still running,
    ///   and hears again the reports the dead one may not have read.
    /// - the master kill: one per worker, plus the lookahead in dispatch
    ///   mode, with nobody left to take the claims over. In pull mode the
    ///   workers die holding one started job each. In dispatch mode the
    ///   feeder dies holding the jobs running on the workers and those
    ///   finished whose reports it had not settled yet: with a lookahead a
    ///   worker starts its next job while its last report is on its way, so
    ///   the feeder can lag up to `lookahead` reports behind.
    pub fn bound(&self) -> u64 {
        self.worker_kills + self.workers as u64 + self.lookahead
    }

    /// Asserts what at-least-once promises for a run whose handlers append
    /// each job's id (`0..jobs`) to the file `seen` was read from: every
    /// job ran, and the duplicates are within [`bound`](KillReport::bound).
    /// Returns the number of duplicates.
    ///
    /// # Panics
    ///
    /// When a job never ran, a line is not a job id, the master was not
    /// killed, too few worker kills landed, or there are more duplicates
    /// than the kills explain.
    pub fn check(&self, seen: &HashMap<String, usize>, jobs: u64) -> u64 {
        assert!(
            self.master_killed,
            "the run ended before the master was killed"
        );
        assert!(
            self.worker_kills >= 3,
            "only {} worker kills landed",
            self.worker_kills
        );
        for n in 0..jobs {
            assert!(seen.contains_key(&n.to_string()), "job {n} never ran");
        }
        assert_eq!(
            seen.len() as u64,
            jobs,
            "lines that are no job id: {seen:?}"
        );
        let runs: usize = seen.values().sum();
        let duplicates = runs as u64 - jobs;
        assert!(
            duplicates <= self.bound(),
            "{duplicates} duplicates for {} worker kills, {} feeder kills and one master kill ({} workers)",
            self.worker_kills,
            self.feeder_kills,
            self.workers
        );
        duplicates
    }
}

/// Runs a pool started by `start_pool` until `finished()`, SIGKILLing one of
/// its workers at random moments (up to `plan.worker_kills`, each once
/// `done()` passes a random mark in the first 90% of the jobs), its feeder
/// likewise (up to `plan.feeder_kills`, dispatch mode) and, once
/// `done()` passes half of `plan.jobs`, the master itself; then it waits for
/// the orphaned workers to die (their parent-death signal) and starts a new
/// pool. Ends with a graceful QUIT of the last pool.
///
/// # Panics
///
/// When the run takes longer than `plan.limit`, the orphans outlive their
/// master by 10 s, or the last pool does not exit cleanly.
pub fn run_with_kills(
    plan: &KillPlan,
    mut start_pool: impl FnMut() -> Child,
    mut done: impl FnMut() -> u64,
    mut finished: impl FnMut() -> bool,
) -> KillReport {
    let mut rng = Rng::seeded();
    let mut report = KillReport {
        worker_kills: 0,
        feeder_kills: 0,
        master_killed: false,
        workers: plan.workers,
        lookahead: plan.lookahead,
    };
    let end = Instant::now() + plan.limit;
    let spread = (plan.pause.1.saturating_sub(plan.pause.0)).as_millis() as u64 + 1;
    // Progress marks (jobs done) at which to kill a worker: random, within
    // the first 90% of the run so that they land before it ends.
    let mut random_marks = |n: u64| {
        let mut marks: Vec<u64> = (0..n)
            .map(|_| rng.below((plan.jobs * 9 / 10).max(1)))
            .collect();
        marks.sort_unstable();
        marks
    };
    let marks = random_marks(plan.worker_kills);
    let feeder_marks = match plan.feeder_title {
        Some(_) => random_marks(plan.feeder_kills),
        None => Vec::new(),
    };
    let is_feeder =
        |pid: i32| matches!(&plan.feeder_title, Some(t) if cmdline(pid).contains(t.as_str()));
    let mut next_kill = 0;
    let mut next_feeder_kill = 0;
    let mut pool = start_pool();
    while !finished() {
        assert!(
            Instant::now() < end,
            "the run took longer than {:?}: {report:?}",
            plan.limit
        );
        std::thread::sleep(plan.pause.0 + Duration::from_millis(rng.below(spread)));
        if !report.master_killed && done() > plan.jobs / 2 {
            let workers = children_of(pool.id());
            kill(Pid::from_raw(pool.id() as i32), Signal::SIGKILL).unwrap();
            pool.wait().unwrap();
            wait_until(
                "the orphaned workers to die",
                Duration::from_secs(10),
                || workers.iter().all(|w| !alive(*w)),
            );
            report.master_killed = true;
            pool = start_pool();
            continue;
        }
        // One worker kill per look at most, once progress passes the next
        // random mark: the kills are spread over the run whatever its speed.
        if next_feeder_kill < feeder_marks.len() && done() >= feeder_marks[next_feeder_kill] {
            if let Some(feeder) = children_of(pool.id()).into_iter().find(|p| is_feeder(*p))
                && kill(Pid::from_raw(feeder), Signal::SIGKILL).is_ok()
            {
                report.feeder_kills += 1;
                next_feeder_kill += 1;
            }
            continue;
        }
        if next_kill < marks.len() && done() >= marks[next_kill] {
            let workers: Vec<i32> = children_of(pool.id())
                .into_iter()
                .filter(|p| !is_feeder(*p))
                .collect();
            if !workers.is_empty() {
                let victim = workers[rng.below(workers.len() as u64) as usize];
                if kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                    report.worker_kills += 1;
                    next_kill += 1;
                }
            }
        }
    }
    quit(pool);
    report
}
