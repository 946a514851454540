//! Per-worker state (`Registry::with_state`) in real pools of both modes on
//! a real spool: opened once in each worker process after the fork (never
//! in the master or the feeder), the same value for every job that worker
//! runs, dropped when the worker stops.
//! (harness = false: every case runs in a process of its own.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use prefork_jobs::{DispatchFeeder, DispatchWorker, Enqueuer, JobContext, JobWorker, Registry};
use prefork_spool::{Durability, Options, Spool};
use prefork_tests::e2e::{self, quit, wait_until};
use prefork_tests::harness::{Case, run};

const QUEUE: &str = "jobs";
const JOBS: u64 = 200;
const WORKERS: usize = 2;

fn spool(dir: &Path) -> Spool {
    Spool::with_options(dir, Options::default().durability(Durability::Buffered)).unwrap()
}

fn log_file(dir: &Path) -> PathBuf {
    dir.join("state.log")
}

/// What a real handler would hold per worker (a connection): it records
/// the process that opened it, and how many jobs used it.
struct Conn {
    opened_in: u32,
    jobs: u64,
    log: PathBuf,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = e2e::append_line(&self.log, &format!("drop {} {}", self.opened_in, self.jobs));
    }
}

/// One handler, `count`, logging `job <opened_in> <running_in> <jobs before>`.
fn registry(dir: &Path) -> Registry<Conn> {
    let log = log_file(dir);
    let mut r = Registry::with_state(move |_ctx| {
        let pid = std::process::id();
        e2e::append_line(&log, &format!("open {pid}"))?;
        Ok(Conn {
            opened_in: pid,
            jobs: 0,
            log: log.clone(),
        })
    });
    r.register("count", |ctx: &mut JobContext<'_, Conn>, (): ()| {
        let conn = ctx.state();
        let line = format!(
            "job {} {} {}",
            conn.opened_in,
            std::process::id(),
            conn.jobs
        );
        conn.jobs += 1;
        Ok(e2e::append_line(&conn.log, &line)?)
    });
    r
}

/// The hidden case a spawned copy of this binary runs: a pool of $POOL_MODE
/// (`pull` or `dispatch`) on the spool in $POOL_DIR, until QUIT.
fn pool() {
    let dir = PathBuf::from(std::env::var("POOL_DIR").unwrap());
    let master = prefork_master::Master::builder()
        .name("state-test")
        .workers(WORKERS)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let report = match std::env::var("POOL_MODE").unwrap().as_str() {
        "pull" => master.run(
            JobWorker::new(registry(&dir), spool(&dir), QUEUE)
                .poll_interval(Duration::from_millis(50)),
        ),
        _ => master.run_dispatch(
            DispatchFeeder::new(registry(&dir), spool(&dir), QUEUE),
            DispatchWorker::new(registry(&dir)),
        ),
    }
    .unwrap();
    assert!(report.success(), "{report:?}");
}

fn start_pool(dir: &Path, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("PREFORK_TEST_CASE", "pool")
        .env("POOL_DIR", dir)
        .env("POOL_MODE", mode)
        .spawn()
        .unwrap()
}

/// Runs `JOBS` jobs on a pool of `mode` and checks what the state log says.
fn state_is_per_worker(mode: &str) {
    let dir = std::env::temp_dir().join(format!("prefork-state-{mode}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    for _ in 0..JOBS {
        enq.enqueue("count", &()).unwrap();
    }
    let pool = start_pool(&dir, mode);
    let master = pool.id();
    let log = || std::fs::read_to_string(log_file(&dir)).unwrap_or_default();
    wait_until("every job to run", Duration::from_secs(30), || {
        log().lines().filter(|l| l.starts_with("job ")).count() as u64 == JOBS
    });
    quit(pool);

    let (mut opened, mut ran, mut dropped) = (Vec::new(), HashMap::new(), HashMap::new());
    for line in log().lines() {
        let f: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect();
        match line.split(' ').next() {
            Some("open") => opened.push(f[0]),
            Some("job") => {
                assert_eq!(
                    f[0], f[1],
                    "a job saw a state opened in another process: {line}"
                );
                let seen: &mut Vec<u64> = ran.entry(f[1]).or_default();
                seen.push(f[2]);
            }
            Some("drop") => assert!(
                dropped.insert(f[0], f[1]).is_none(),
                "dropped twice: {line}"
            ),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    // Once per worker process, after the fork: never in the master (nor,
    // in dispatch mode, in the feeder: one opening per worker).
    assert_eq!(opened.len(), WORKERS, "{opened:?}");
    assert!(!opened.contains(&u64::from(master)), "opened in the master");
    let mut distinct = opened.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        WORKERS,
        "one opening per worker: {opened:?}"
    );
    for (pid, seen) in &ran {
        assert!(
            opened.contains(pid),
            "jobs ran in {pid}, which opened no state"
        );
        // Reused: the same state counted every job this worker ran.
        let expect: Vec<u64> = (0..seen.len() as u64).collect();
        assert_eq!(seen, &expect, "worker {pid} did not reuse its state");
        // Dropped at the worker's (graceful) exit, after its last job.
        assert_eq!(dropped.get(pid), Some(&(seen.len() as u64)), "worker {pid}");
    }
    assert!(
        ran.values().any(|seen| seen.len() > 1),
        "no worker ran two jobs: {ran:?}"
    );
    assert_eq!(
        dropped.len(),
        WORKERS,
        "every opened state dropped: {dropped:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn main() {
    run(&[
        Case::new("pull_state_is_per_worker", || state_is_per_worker("pull")),
        Case::new("dispatch_state_is_per_worker", || {
            state_is_per_worker("dispatch")
        }),
        Case::new("pool", pool).hidden(),
    ]);
}
