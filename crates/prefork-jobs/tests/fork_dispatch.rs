//! Dispatch mode end to end: real pools (a master, its feeder and its
//! workers in a child process) on a real spool, with workers and the master
//! SIGKILLed, a worker killed mid-job, hard time limits and a graceful stop.
//! (harness = false: every case runs in a process of its own.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prefork_broker::Broker;
use prefork_jobs::{
    DispatchFeeder, DispatchWorker, Enqueuer, Envelope, JobContext, JobError, Registry,
    RetryPolicy, TimeLimits,
};
use prefork_spool::{Durability, Options, Spool};
use prefork_tests::e2e::{self, KillPlan, KillReport, quit, wait_until};
use prefork_tests::harness::{Case, run};

const QUEUE: &str = "jobs";

/// A long lease: a job that comes back quickly was released by the master,
/// not by the lease.
fn spool(dir: &Path) -> Spool {
    Spool::with_options(
        dir,
        Options::default()
            .durability(Durability::Buffered)
            .lease(Duration::from_secs(120)),
    )
    .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prefork-dispatch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn out_file(dir: &Path) -> PathBuf {
    dir.join("out.log")
}

fn append(path: &Path, line: &str) -> Result<(), JobError> {
    Ok(e2e::append_line(path, line)?)
}

fn registry(dir: &Path) -> Registry {
    let mut r = Registry::new();
    r.default_retry(
        RetryPolicy::new(50)
            .base(Duration::from_millis(5))
            .max_delay(Duration::from_millis(50)),
    );
    let o = out_file(dir);
    r.register("append", move |_: &mut JobContext<'_>, n: u64| {
        append(&o, &n.to_string())
    });
    let o = out_file(dir);
    r.register("slow", move |ctx: &mut JobContext<'_>, ms: u64| {
        append(&o, &format!("start {} {}", ctx.id(), std::process::id()))?;
        std::thread::sleep(Duration::from_millis(ms));
        append(&o, &format!("end {}", ctx.id()))
    });
    r.register(
        "hang",
        |_: &mut JobContext<'_>, ()| -> Result<(), JobError> {
            std::thread::sleep(Duration::from_secs(600));
            Ok(())
        },
    )
    .retry(RetryPolicy::new(2).base(Duration::from_millis(5)))
    .time_limits(TimeLimits::none().hard(Duration::from_millis(300)));
    r
}

/// The hidden case a spawned copy of this binary runs: a dispatch pool on
/// the spool in $POOL_DIR, until QUIT. Logs go to stderr.
fn pool() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let dir = PathBuf::from(std::env::var("POOL_DIR").unwrap());
    let workers: usize = std::env::var("POOL_WORKERS").unwrap().parse().unwrap();
    let feeder = DispatchFeeder::new(registry(&dir), spool(&dir), QUEUE);
    let report = prefork_master::Master::builder()
        .name("dispatch-test")
        .workers(workers)
        .timeout(Duration::from_secs(10))
        .graceful_timeout(Duration::from_secs(20))
        .healthy_after(Duration::from_millis(20))
        .backoff_initial(Duration::from_millis(5))
        .crash_limit(10_000)
        .build()
        .unwrap()
        .run_dispatch(feeder, DispatchWorker::new(registry(&dir)))
        .unwrap();
    assert!(report.success(), "{report:?}");
}

fn start_pool(dir: &Path, workers: usize) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pool.log"))
        .unwrap();
    Command::new(std::env::current_exe().unwrap())
        .env("PREFORK_TEST_CASE", "pool")
        .env("POOL_DIR", dir)
        .env("POOL_WORKERS", workers.to_string())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn counts(dir: &Path) -> HashMap<String, usize> {
    e2e::counts(&out_file(dir))
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(out_file(dir))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn drained(dir: &Path) -> bool {
    let s = spool(dir).queue(QUEUE).unwrap().counts().unwrap();
    s.ready + s.delayed + s.claimed == 0
}

/// Thousands of jobs; workers (and sometimes the feeder) SIGKILLed at
/// random moments, the master SIGKILLed once and a new one started: every
/// job ran. A worker kill duplicates at most its one job; a feeder or
/// master kill at most one job per worker (the broker takes back the
/// feeder's claims while their workers still run them).
fn sigkills_lose_no_job() {
    const JOBS: u64 = 3000;
    const WORKERS: usize = 4;
    let dir = tmp("kills");
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    for n in 0..JOBS {
        enq.enqueue("append", &n).unwrap();
    }
    let plan = KillPlan {
        worker_kills: 30,
        // The adaptive lookahead's cap (prefork-master's router).
        lookahead: 8 * WORKERS as u64,
        ..KillPlan::new(JOBS, WORKERS)
    };
    let report = e2e::run_with_kills(
        &plan,
        || start_pool(&dir, WORKERS),
        || counts(&dir).len() as u64,
        || drained(&dir),
    );
    // Any of the kills may have hit the feeder: bound the duplicates by
    // WORKERS for each.
    let bound = KillReport {
        workers: WORKERS + WORKERS * report.worker_kills as usize,
        ..report
    };
    let duplicates = bound.check(&counts(&dir), JOBS);
    assert_eq!(spool(&dir).queue(QUEUE).unwrap().counts().unwrap().dead, 0);
    eprintln!(
        "{JOBS} jobs, {} kills + 1 master kill, {duplicates} duplicates",
        report.worker_kills
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A worker SIGKILLed in the middle of a job: the master tells the feeder
/// at once, the job runs again on another worker long before the 120 s
/// lease would have given it back, and the log names the job and the
/// signal.
fn killed_worker_releases_its_job_at_once() {
    let dir = tmp("release");
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    let id = enq.enqueue("slow", &1500_u64).unwrap();
    let pool = start_pool(&dir, 2);
    wait_until("the job to start", Duration::from_secs(20), || {
        lines(&dir).iter().any(|l| l.starts_with("start "))
    });
    let first = lines(&dir)
        .into_iter()
        .find(|l| l.starts_with("start "))
        .unwrap();
    let pid: i32 = first.rsplit(' ').next().unwrap().parse().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_until("the job to run again", Duration::from_secs(15), || {
        lines(&dir).iter().any(|l| l == &format!("end {id}"))
    });
    quit(pool);
    let starts: Vec<String> = lines(&dir)
        .into_iter()
        .filter(|l| l.starts_with("start "))
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(
        !starts[1].ends_with(&format!(" {pid}")),
        "ran again by another worker"
    );
    let log = std::fs::read_to_string(dir.join("pool.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("released to the feeder"))
        .unwrap_or_else(|| panic!("no release line in\n{log}"));
    assert!(
        line.contains("SIGKILL") || line.contains("signal 9"),
        "{line}"
    );
    assert!(line.contains(&format!("pid {pid}")), "{line}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The hard limit: the master kills the worker at the job's deadline, the
/// feeder retries it with backoff, then dead-letters it once its attempts
/// are spent, naming the time limit; the other jobs all run.
fn hard_time_limit_in_dispatch_mode() {
    let dir = tmp("limits");
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    let hang = enq.enqueue("hang", &()).unwrap();
    for n in 0..20u64 {
        enq.enqueue("append", &n).unwrap();
    }
    let pool = start_pool(&dir, 2);
    wait_until("the queue to drain", Duration::from_secs(30), || {
        drained(&dir)
    });
    quit(pool);
    let dead = enq.broker().dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(Envelope::from_bytes(dead[0].payload()).unwrap().id, hang);
    let reason = dead[0].reason();
    assert!(
        reason.contains("attempt 2 of 2") && reason.contains("hard time limit"),
        "{reason}"
    );
    assert_eq!(counts(&dir).len(), 20);
    let log = std::fs::read_to_string(dir.join("pool.log")).unwrap();
    assert!(log.contains("exceeded its hard time limit"), "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// QUIT: the jobs in hand finish, nothing stays claimed, no job ran twice,
/// and every job either ran or is back in ready/ for the next pool.
fn graceful_quit_returns_unstarted_jobs() {
    let dir = tmp("graceful");
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    for _ in 0..100u64 {
        enq.enqueue("slow", &20_u64).unwrap();
    }
    let pool = start_pool(&dir, 3);
    wait_until("some jobs to run", Duration::from_secs(30), || {
        lines(&dir).iter().filter(|l| l.starts_with("end ")).count() >= 10
    });
    quit(pool);
    let s = enq.broker().counts().unwrap();
    assert_eq!(s.claimed, 0, "nothing stays claimed: {s:?}");
    assert_eq!(s.dead, 0);
    let all = lines(&dir);
    let starts = all.iter().filter(|l| l.starts_with("start ")).count();
    let ends = all.iter().filter(|l| l.starts_with("end ")).count();
    assert_eq!(starts, ends, "every started job finished");
    assert_eq!(
        ends + s.ready,
        100,
        "every job ran once or is back in ready/"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn main() {
    run(&[
        Case::new("sigkills_lose_no_job", sigkills_lose_no_job).limit(Duration::from_secs(120)),
        Case::new(
            "killed_worker_releases_its_job_at_once",
            killed_worker_releases_its_job_at_once,
        ),
        Case::new(
            "hard_time_limit_in_dispatch_mode",
            hard_time_limit_in_dispatch_mode,
        ),
        Case::new(
            "graceful_quit_returns_unstarted_jobs",
            graceful_quit_returns_unstarted_jobs,
        ),
        Case::new("pool", pool)
            .limit(Duration::from_secs(120))
            .hidden(),
    ]);
}
