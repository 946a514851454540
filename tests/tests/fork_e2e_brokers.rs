//! Pull mode end to end on real brokers: thousands of jobs through a real
//! pool (a master and forked workers, in a child process) on Redis and on
//! beanstalkd, with workers SIGKILLed at random moments and the master
//! SIGKILLed once and replaced: every job runs, and the duplicates are
//! bounded by the kills. The spool version is
//! `crates/prefork-jobs/tests/fork_pull.rs`; both drive their pools with
//! `prefork_tests::e2e`.
//!
//! The servers come from `PREFORK_REDIS_URL` / `PREFORK_BEANSTALKD_URL`
//! (`cargo xtask ci`, or `cargo xtask brokers start`); without them a case
//! fails under CI and prints why it skips elsewhere. Each run uses a queue
//! of its own.
//! (harness = false: every case runs in a process of its own.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use prefork_broker::{Broker, Connect};
use prefork_jobs::{Enqueuer, Envelope, JobContext, JobError, JobWorker, Registry, RetryPolicy};
use prefork_tests::e2e::{self, KillPlan};
use prefork_tests::harness::{Case, run};

const JOBS: u64 = 3000;
const WORKERS: usize = 4;

/// The Redis lease: how long a dead worker's job waits before another
/// consumer reclaims it. Short, so the run ends soon after the last kill;
/// long enough that a live no-op job (which never touches) is not
/// reclaimed on a loaded machine.
const REDIS_LEASE: Duration = Duration::from_secs(2);

fn connect(broker: &str, url: &str) -> Box<dyn Connect> {
    match broker {
        "redis" => Box::new(
            prefork_redis::Redis::with_options(
                url,
                prefork_redis::Options::default().lease(REDIS_LEASE),
            )
            .unwrap(),
        ),
        "beanstalkd" => Box::new(prefork_beanstalkd::Config::from_url(url).unwrap()),
        other => panic!("unknown broker {other}"),
    }
}

/// The hidden case a spawned copy of this binary runs: a pool on
/// `$POOL_BROKER` at `$POOL_URL`, queue `$POOL_QUEUE`, whose `append` job
/// appends its argument to `$POOL_OUT`; until QUIT.
fn pool() {
    let var = |k: &str| std::env::var(k).unwrap();
    let out = PathBuf::from(var("POOL_OUT"));
    let mut jobs = Registry::new();
    jobs.default_retry(
        RetryPolicy::new(50)
            .base(Duration::from_millis(5))
            .max_delay(Duration::from_millis(50)),
    );
    jobs.register("append", move |_: &mut JobContext<'_>, n: u64| {
        e2e::append_line(&out, &n.to_string()).map_err(JobError::from)
    });
    let url = var("POOL_URL");
    let broker = var("POOL_BROKER");
    // Box<dyn Connect> is not itself a Connect: forward through a closure.
    let connect = connect(&broker, &url);
    let worker = JobWorker::new(jobs, move |q: &str| connect.open(q), &var("POOL_QUEUE"))
        .poll_interval(Duration::from_millis(50));
    let report = prefork_master::Master::builder()
        .name("e2e-brokers")
        .workers(var("POOL_WORKERS").parse().unwrap())
        .timeout(Duration::from_secs(10))
        .healthy_after(Duration::from_millis(20))
        .backoff_initial(Duration::from_millis(5))
        .crash_limit(10_000)
        .build()
        .unwrap()
        .run(worker)
        .unwrap();
    assert!(report.success(), "{report:?}");
}

fn start_pool(broker: &str, url: &str, queue: &str, out: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("PREFORK_TEST_CASE", "pool")
        .env("POOL_BROKER", broker)
        .env("POOL_URL", url)
        .env("POOL_QUEUE", queue)
        .env("POOL_OUT", out)
        .env("POOL_WORKERS", WORKERS.to_string())
        .spawn()
        .unwrap()
}

/// Enqueues `0..JOBS` as `append` jobs on a fresh queue, runs pools with
/// kills until every id is in the out file, and checks the counts.
fn kills_lose_no_job(broker: &str, env: &str) {
    let Some(url) = e2e::broker_url(env) else {
        return;
    };
    let queue = e2e::unique_name(&format!("e2e-{broker}"));
    let dir = std::env::temp_dir().join(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("runs.log");
    let mut enq = Enqueuer::new(connect(broker, &url).open(&queue).unwrap());
    for n in 0..JOBS {
        enq.enqueue("append", &n).unwrap();
    }
    let report = e2e::run_with_kills(
        &KillPlan::new(JOBS, WORKERS),
        || start_pool(broker, &url, &queue, &out),
        || e2e::counts(&out).len() as u64,
        || e2e::counts(&out).len() as u64 == JOBS,
    );
    let seen = e2e::counts(&out);
    let duplicates = report.check(&seen, JOBS);
    // What is still claimable now is a job whose holder was killed after
    // its handler ran but before the ack: it must be one that ran, and it
    // counts against the same bound as the duplicates.
    let mut leftovers = 0;
    while let Some(d) = enq.broker().fetch_one(Duration::ZERO).unwrap() {
        let n = Envelope::from_bytes(d.payload())
            .unwrap()
            .args
            .as_u64()
            .unwrap();
        assert!(
            seen.contains_key(&n.to_string()),
            "job {n} was left but never ran"
        );
        enq.broker().ack(d).unwrap();
        leftovers += 1;
    }
    assert!(
        duplicates + leftovers <= report.worker_kills + WORKERS as u64,
        "{duplicates} duplicates + {leftovers} left for {report:?}"
    );
    assert!(enq.broker().dead_letters(10).unwrap().is_empty());
    eprintln!(
        "{broker}: {JOBS} jobs, {} worker kills + 1 master kill, {duplicates} duplicates, {leftovers} left claimable",
        report.worker_kills
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn redis_kills_lose_no_job() {
    kills_lose_no_job("redis", "PREFORK_REDIS_URL");
}

fn beanstalkd_kills_lose_no_job() {
    kills_lose_no_job("beanstalkd", "PREFORK_BEANSTALKD_URL");
}

fn main() {
    run(&[
        Case::new("redis_kills_lose_no_job", redis_kills_lose_no_job)
            .limit(Duration::from_secs(150)),
        Case::new("beanstalkd_kills_lose_no_job", beanstalkd_kills_lose_no_job)
            .limit(Duration::from_secs(150)),
        Case::new("pool", pool)
            .limit(Duration::from_secs(150))
            .hidden(),
    ]);
}
