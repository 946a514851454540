//! The dispatch-mode hand-off: what the master adds to each job it routes
//! (feeder sends `Job` → master routes → worker; worker sends `Finished` →
//! master → feeder, plus the `Want` credit), against a bare socketpair
//! ping-pong between two processes, in the same run (interleaved rounds,
//! medians: quote the ratios).
//!
//! - **hand-off**: no-op jobs through a real `Master::run_dispatch` pool
//!   with 1 worker, whose feeder makes jobs in memory (no broker) and
//!   whose worker reports each job done at once (`Context::next_job` +
//!   `Context::finish_job`): one job at a time, so µs per job is the latency
//!   of the whole loop;
//! - the same with `prefork-jobs`' `DispatchWorker` running a `noop`
//!   handler from a JSON envelope (what the job layer adds on the worker);
//! - the same hand-off with 2 workers (jobs/s when the loop is pipelined);
//! - the 1- and 2-worker hand-offs again with `dispatch_lookahead` = the
//!   worker count (the default 0 asks the feeder for a job only once a
//!   worker is idle; with it the next job waits in the master), for a
//!   before/after in the same run;
//! - **baseline**: a 1-byte round trip over a `socketpair` between two
//!   processes (`UnixStream`), the least any process-to-process hand-off
//!   costs.
//!
//! The figure to read is the added µs per job: hand-off µs per job minus
//! the baseline's µs per round trip (goal: under 10 µs).
//!
//! Not criterion: a pool is a process tree, so each measurement starts this
//! binary again in a child role (`DISPATCH_CHILD`) whose feeder times the
//! jobs and writes the result to a file. Options: `--jobs N` (per
//! measurement, default 20000), `--rounds N` (default 5); options of
//! criterion and libtest that `cargo bench` passes are ignored.
//!
//! ```text
//! cargo bench -p prefork-benches --bench dispatch -- [--jobs 20000] [--rounds 5]
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prefork_jobs::{DispatchWorker, Envelope, JobContext, JobError, Registry};
use prefork_master::{BoxError, Context, Feeder, Job, Master, Settle};

/// Jobs run before the clock starts (the workers' first jobs, page faults).
const WARMUP: u64 = 1000;

/// A feeder that needs no broker: it makes `WARMUP + jobs` jobs in memory
/// (the same payload each time), counts the reports, and writes the time
/// per job of the last `jobs` to `out` once they are all reported.
struct Memory {
    payload: Vec<u8>,
    jobs: u64,
    made: u64,
    settled: u64,
    started: Option<Instant>,
    out: PathBuf,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory").field("made", &self.made).finish()
    }
}

impl Feeder for Memory {
    fn fetch(&mut self, max: usize, wait: Duration, _: &mut Context) -> Result<Vec<Job>, BoxError> {
        let left = (WARMUP + self.jobs).saturating_sub(self.made);
        if left == 0 {
            std::thread::sleep(wait);
            return Ok(Vec::new());
        }
        let n = (max as u64).min(left);
        let jobs = (0..n)
            .map(|i| Job::new((self.made + i).to_string(), self.payload.clone(), 1))
            .collect();
        self.made += n;
        Ok(jobs)
    }

    fn settle(&mut self, settle: Settle, _: &mut Context) -> Result<(), BoxError> {
        if !matches!(&settle, Settle::Finished { report, .. } if report.is_empty()) {
            return Err(format!("a no-op job was not done: {settle:?}").into());
        }
        self.settled += 1;
        if self.settled == WARMUP {
            self.started = Some(Instant::now());
        }
        if self.settled == WARMUP + self.jobs
            && let Some(t) = self.started
        {
            let ns = t.elapsed().as_nanos() as f64 / self.jobs as f64;
            std::fs::write(&self.out, format!("{ns}"))?;
        }
        Ok(())
    }
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
}

/// Child role `pool`: a dispatch pool of `DISPATCH_WORKERS` workers fed
/// `DISPATCH_JOBS` jobs by [`Memory`]; worker kind `DISPATCH_WORKER`
/// (`bare` or `jobs`). Runs until stopped.
fn pool_main() {
    // `KIND` or `KIND:LOOKAHEAD` (the master's default lookahead otherwise).
    let spec = env("DISPATCH_WORKER");
    let (kind, lookahead) = match spec.split_once(':') {
        Some((k, n)) => (k.to_owned(), Some(n.parse::<usize>().unwrap())),
        None => (spec, None),
    };
    let payload = match kind.as_str() {
        "jobs" => Envelope::new("bench", "noop", serde_json::Value::Null).to_bytes(),
        _ => Vec::new(),
    };
    let feeder = Memory {
        payload,
        jobs: env("DISPATCH_JOBS").parse().unwrap(),
        made: 0,
        settled: 0,
        started: None,
        out: PathBuf::from(env("DISPATCH_OUT")),
    };
    let mut builder = Master::builder()
        .name("dispatch-bench")
        .workers(env("DISPATCH_WORKERS").parse().unwrap());
    if let Some(n) = lookahead {
        builder = builder.dispatch_lookahead(n);
    }
    let master = builder.build().unwrap();
    let report = if kind == "jobs" {
        let mut r = Registry::new();
        r.register("noop", |_: &mut JobContext<'_>, _: serde_json::Value| {
            Ok::<(), JobError>(())
        });
        master.run_dispatch(feeder, DispatchWorker::new(r))
    } else {
        master.run_dispatch(
            feeder,
            prefork_master::from_fn(|ctx| {
                if let Some(job) = ctx.next_job(Duration::from_millis(200)) {
                    ctx.finish_job(&job.delivery, b"");
                }
                Ok(())
            }),
        )
    }
    .unwrap();
    std::process::exit(if report.success() { 0 } else { 1 });
}

/// CPU time (user + system) `pid` has used, in µs (from `/proc`, clock
/// ticks: 10 ms resolution), 0 when it is gone.
fn cpu_us(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (in parentheses): state is field 3,
    // utime 14 and stime 15.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1e6 / hz
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What one pool measurement gave: wall µs per job (the feeder's clock
/// over the timed jobs), and CPU µs per job of the master and of the whole
/// pool (master, feeder, workers; start-up and warm-up jobs included).
#[derive(Debug, Clone, Copy)]
struct Handoff {
    wall: f64,
    master_cpu: f64,
    pool_cpu: f64,
}

/// One measurement through a dispatch pool of `workers` workers of `kind`.
fn handoff(kind: &str, workers: usize, jobs: u64) -> Handoff {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out =
        std::env::temp_dir().join(format!("prefork-dispatch-bench-{}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let pool = Command::new(std::env::current_exe().unwrap())
        .env("DISPATCH_CHILD", "pool")
        .env("DISPATCH_WORKER", kind)
        .env("DISPATCH_WORKERS", workers.to_string())
        .env("DISPATCH_JOBS", jobs.to_string())
        .env("DISPATCH_OUT", &out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (ns, master_cpu, pool_cpu) = wait_for(&out, pool);
    let all = (WARMUP + jobs) as f64;
    Handoff {
        wall: ns / 1e3,
        master_cpu: master_cpu / all,
        pool_cpu: pool_cpu / all,
    }
}

/// Waits for the pool's feeder to write its figure, reads the CPU time of
/// the master and of the whole pool, stops the pool (TERM).
fn wait_for(out: &Path, mut pool: Child) -> (f64, f64, f64) {
    let limit = Instant::now() + Duration::from_secs(120);
    let ns = loop {
        if let Ok(s) = std::fs::read_to_string(out)
            && let Ok(ns) = s.parse::<f64>()
        {
            break ns;
        }
        assert!(
            pool.try_wait().unwrap().is_none(),
            "the pool exited before its feeder wrote a figure"
        );
        assert!(Instant::now() < limit, "no figure in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    let master = pool.id() as i32;
    let master_cpu = cpu_us(master);
    let pool_cpu = master_cpu + children(master).into_iter().map(cpu_us).sum::<f64>();
    let _ = prefork_proc::Child::from_pid(pool.id() as libc::pid_t).signal(libc::SIGTERM);
    let _ = pool.wait();
    let _ = std::fs::remove_file(out);
    (ns, master_cpu, pool_cpu)
}

/// Wall µs per 1-byte round trip over a socketpair between this process
/// and a forked echo process, and CPU µs per round trip of both.
fn pingpong(trips: u64) -> (f64, f64) {
    let (mut here, peer) = UnixStream::pair().expect("socketpair");
    // SAFETY: this process has one thread (the harness starts none; pools
    // are separate processes), so the child may run any code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(here);
        let mut peer = peer;
        let mut b = [0_u8; 1];
        while peer.read(&mut b).is_ok_and(|n| n == 1) {
            if peer.write_all(&b).is_err() {
                break;
            }
        }
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) }
    }
    drop(peer);
    let mut trip = || {
        let mut b = [7_u8; 1];
        here.write_all(&b).unwrap();
        here.read_exact(&mut b).unwrap();
    };
    for _ in 0..WARMUP {
        trip();
    }
    let cpu0 = cpu_us(std::process::id() as i32) + cpu_us(pid);
    let t = Instant::now();
    for _ in 0..trips {
        trip();
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / trips as f64;
    let cpu = (cpu_us(std::process::id() as i32) + cpu_us(pid) - cpu0) / trips as f64;
    drop(here);
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    (us, cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `(jobs, rounds)` from the command line; anything else is ignored.
fn parse_args() -> (u64, usize) {
    let (mut jobs, mut rounds) = (20_000_u64, 5_usize);
    let mut argv = std::env::args().skip(1);
    while let Some(a) = argv.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        match flag.as_str() {
            "--jobs" | "--rounds" => {
                let v = inline.or_else(|| argv.next()).unwrap_or_default();
                let Some(n) = v.parse::<u64>().ok().filter(|n| *n > 0) else {
                    eprintln!("dispatch: {flag}: want a positive number, got {v:?}");
                    std::process::exit(2);
                };
                if flag == "--jobs" {
                    jobs = n;
                } else {
                    rounds = n as usize;
                }
            }
            "--list" => std::process::exit(0),
            "--bench" => {}
            f if f.starts_with('-') => {
                println!("dispatch: ignoring {f} (not an option of this harness)");
            }
            _ => {} // a filter from `cargo bench NAME`
        }
    }
    (jobs, rounds)
}

fn main() {
    if std::env::var("DISPATCH_CHILD").as_deref() == Ok("pool") {
        return pool_main();
    }
    let (jobs, rounds) = parse_args();
    let rows: [(&str, &str, usize); 5] = [
        ("hand-off, 1 worker (bare next_job + finish_job)", "bare", 1),
        ("same, dispatch_lookahead(1)", "bare:1", 1),
        (
            "hand-off, 1 worker (DispatchWorker, noop handler)",
            "jobs",
            1,
        ),
        ("hand-off, 2 workers (bare)", "bare", 2),
        ("hand-off, 2 workers, dispatch_lookahead(2)", "bare:2", 2),
    ];
    let mut base = Vec::new();
    let mut base_cpu = Vec::new();
    let mut figures: Vec<Vec<Handoff>> = vec![Vec::new(); rows.len()];
    for _ in 0..rounds {
        let (wall, cpu) = pingpong(jobs);
        base.push(wall);
        base_cpu.push(cpu);
        for (i, (_, kind, workers)) in rows.iter().enumerate() {
            figures[i].push(handoff(kind, *workers, jobs));
        }
    }
    let base = median(base);
    let base_cpu = median(base_cpu);
    println!(
        "\ndispatch hand-off: {jobs} no-op jobs per measurement after {WARMUP} warm-up jobs, {rounds} interleaved rounds, medians"
    );
    println!("  wall time (what a job waits; on a loaded machine mostly waiting for a core):");
    println!(
        "  {:<52} {base:>7.2} us/trip  {:>8.0} trips/s",
        "socketpair 1-byte ping-pong, 2 processes",
        1e6 / base
    );
    for (i, (name, _, _)) in rows.iter().enumerate() {
        let us = median(figures[i].iter().map(|h| h.wall).collect());
        println!(
            "  {name:<52} {us:>7.2} us/job   {:>8.0} jobs/s  = {:.2}x the ping-pong, +{:.2} us a job",
            1e6 / us,
            us / base,
            us - base
        );
    }
    println!("  CPU time (user + system, 10 ms ticks; the pools' include start-up and warm-up):");
    println!(
        "  {:<52} {base_cpu:>7.2} us/trip (both processes)",
        "socketpair 1-byte ping-pong, 2 processes"
    );
    for (i, (name, _, _)) in rows.iter().enumerate() {
        let master = median(figures[i].iter().map(|h| h.master_cpu).collect());
        let pool = median(figures[i].iter().map(|h| h.pool_cpu).collect());
        println!(
            "  {name:<52} master {master:>6.2} us/job, whole pool {pool:>6.2} us/job = {:.2}x the ping-pong",
            pool / base_cpu
        );
    }
}
