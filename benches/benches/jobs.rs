//! The job layer end to end on the embedded spool broker: no-op jobs per
//! second through a real pull-mode pool (a master and N forked workers)
//! against the raw broker operations in one process, and enqueue-to-start
//! latency under a steady rate against a raw consumer blocked in `fetch`.
//! All in the same run, interleaved, medians of several rounds; the
//! figures that matter are the ratios.
//!
//! Not criterion: a pool is a process tree, so each measurement starts
//! this binary again in a mode (`JOBS_BENCH_MODE`) and times it from here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefork_broker::Broker;
use prefork_jobs::{Enqueuer, JobContext, JobError, JobWorker, Registry};
use prefork_spool::{Durability, Options, Spool};

const QUEUE: &str = "bench";
const JOBS: u64 = 4000;
const ROUNDS: usize = 3;
const RATE_PER_S: u64 = 400;
const LATENCY_JOBS: u64 = 400;

fn spool(dir: &Path) -> Spool {
    Spool::with_options(dir, Options::default().durability(Durability::Buffered)).unwrap()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

fn fresh(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prefork-jobs-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Mode `pool`: a master with N workers running `noop` and `stamp`.
fn pool_main(dir: &Path) {
    let workers: usize = std::env::var("JOBS_BENCH_WORKERS")
        .unwrap()
        .parse()
        .unwrap();
    let prefetch: usize = std::env::var("JOBS_BENCH_PREFETCH")
        .unwrap()
        .parse()
        .unwrap();
    let mut r = Registry::new();
    r.register("noop", |_: &mut JobContext<'_>, ()| Ok::<(), JobError>(()));
    let out = dir.join("latency.log");
    r.register("stamp", move |_: &mut JobContext<'_>, t: u64| {
        append(&out, &format!("{}\n", now_us().saturating_sub(t)));
        Ok::<(), JobError>(())
    });
    let worker = JobWorker::new(r, spool(dir), QUEUE)
        .prefetch(prefetch)
        .poll_interval(Duration::from_millis(100));
    let report = prefork_master::Master::builder()
        .name("jobs-bench")
        .workers(workers)
        .build()
        .unwrap()
        .run(worker)
        .unwrap();
    std::process::exit(if report.success() { 0 } else { 1 });
}

/// Mode `raw`: one process fetching and acking, recording publish-to-fetch
/// latency of `stamp` jobs, until QUIT... or until `LATENCY_JOBS` seen.
fn raw_consumer_main(dir: &Path) {
    let mut q = spool(dir).queue(QUEUE).unwrap();
    let out = dir.join("latency.log");
    let mut seen = 0;
    while seen < LATENCY_JOBS {
        if let Some(d) = q.fetch_one(Duration::from_millis(100)).unwrap() {
            let e = prefork_jobs::Envelope::from_bytes(d.payload()).unwrap();
            let t: u64 = serde_json::from_value(e.args.clone()).unwrap();
            append(&out, &format!("{}\n", now_us().saturating_sub(t)));
            q.ack(d).unwrap();
            seen += 1;
        }
    }
    std::process::exit(0);
}

fn spawn(mode: &str, dir: &Path, workers: usize, prefetch: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("JOBS_BENCH_MODE", mode)
        .env("JOBS_BENCH_DIR", dir)
        .env("JOBS_BENCH_WORKERS", workers.to_string())
        .env("JOBS_BENCH_PREFETCH", prefetch.to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn quit(mut c: Child) {
    let _ = prefork_proc::Child::from_pid(c.id() as libc::pid_t).signal(libc::SIGQUIT);
    let _ = c.wait();
}

fn backlog(q: &prefork_spool::Queue) -> usize {
    let s = q.stats().unwrap();
    s.ready + s.delayed + s.claimed
}

/// Raw broker: publish + fetch_one + ack per job, one process.
fn raw_round_trip() -> f64 {
    let dir = fresh("raw");
    let mut q = spool(&dir).queue(QUEUE).unwrap();
    let payload = prefork_jobs::Envelope::new(QUEUE, "noop", serde_json::Value::Null).to_bytes();
    let t = Instant::now();
    for _ in 0..JOBS {
        q.publish(&payload, Duration::ZERO).unwrap();
        let d = q.fetch_one(Duration::ZERO).unwrap().unwrap();
        q.ack(d).unwrap();
    }
    let rate = JOBS as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir).unwrap();
    rate
}

/// Raw broker: drain a published backlog with fetch_one + ack, one process.
fn raw_drain() -> f64 {
    let dir = fresh("drain");
    let mut q = spool(&dir).queue(QUEUE).unwrap();
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    for _ in 0..JOBS {
        enq.enqueue("noop", &()).unwrap();
    }
    let t = Instant::now();
    while let Some(d) = q.fetch_one(Duration::ZERO).unwrap() {
        q.ack(d).unwrap();
    }
    let rate = JOBS as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir).unwrap();
    rate
}

/// The pool drains a published backlog of no-op jobs (fork and start
/// included, a few ms).
fn pool_drain(workers: usize, prefetch: usize) -> f64 {
    let dir = fresh("pool");
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    for _ in 0..JOBS {
        enq.enqueue("noop", &()).unwrap();
    }
    let q = spool(&dir).queue(QUEUE).unwrap();
    let t = Instant::now();
    let pool = spawn("pool", &dir, workers, prefetch);
    while backlog(&q) > 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = JOBS as f64 / t.elapsed().as_secs_f64();
    quit(pool);
    std::fs::remove_dir_all(dir).unwrap();
    rate
}

/// Publishes `stamp` jobs at a steady rate to a consumer in `mode`;
/// returns (p50, p99) enqueue-to-start in µs.
fn latency(mode: &str, workers: usize) -> (u64, u64) {
    let dir = fresh("lat");
    let mut enq = Enqueuer::new(spool(&dir).queue(QUEUE).unwrap());
    let consumer = spawn(mode, &dir, workers, 1);
    std::thread::sleep(Duration::from_millis(300)); // let it start and block in fetch
    let every = Duration::from_micros(1_000_000 / RATE_PER_S);
    let start = Instant::now();
    for i in 0..LATENCY_JOBS {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        enq.enqueue("stamp", &now_us()).unwrap();
    }
    let q = spool(&dir).queue(QUEUE).unwrap();
    while backlog(&q) > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    if mode == "pool" {
        quit(consumer);
    } else {
        let mut c = consumer;
        c.wait().unwrap();
    }
    let mut v: Vec<u64> = std::fs::read_to_string(dir.join("latency.log"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    v.sort_unstable();
    std::fs::remove_dir_all(dir).unwrap();
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (q(0.5), q(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Ok(mode) = std::env::var("JOBS_BENCH_MODE") {
        let dir = PathBuf::from(std::env::var("JOBS_BENCH_DIR").unwrap());
        match mode.as_str() {
            "pool" => pool_main(&dir),
            _ => raw_consumer_main(&dir),
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let configs = [(1usize, 1usize), (2, 1), (4, 1), (2, 16)];
    let mut raw_rt = Vec::new();
    let mut raw_dr = Vec::new();
    let mut pools: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..ROUNDS {
        raw_rt.push(raw_round_trip());
        raw_dr.push(raw_drain());
        for (i, (w, p)) in configs.iter().enumerate() {
            pools[i].push(pool_drain(*w, *p));
        }
    }
    let (rt, dr) = (median(raw_rt), median(raw_dr));
    println!("jobs: {JOBS} no-op jobs per round, {ROUNDS} rounds, medians (spool, Buffered)");
    println!("  raw spool publish+fetch+ack, 1 process      {rt:>8.0} jobs/s");
    println!("  raw spool fetch+ack of a backlog, 1 process {dr:>8.0} jobs/s");
    for (i, (w, p)) in configs.iter().enumerate() {
        let r = median(pools[i].clone());
        println!(
            "  pool {w} worker(s), prefetch {p:>2}              {r:>8.0} jobs/s  = {:.2}x raw drain, {:.2}x raw round trip",
            r / dr,
            r / rt
        );
    }
    let mut raw_l = Vec::new();
    let mut pool_l = Vec::new();
    for _ in 0..ROUNDS {
        raw_l.push(latency("raw", 1));
        pool_l.push(latency("pool", 2));
    }
    let med = |v: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| {
        median(v.iter().map(|x| f(x) as f64).collect())
    };
    let (r50, r99) = (med(&raw_l, |x| x.0), med(&raw_l, |x| x.1));
    let (p50, p99) = (med(&pool_l, |x| x.0), med(&pool_l, |x| x.1));
    println!(
        "latency: enqueue-to-start at {RATE_PER_S} jobs/s, {LATENCY_JOBS} jobs, medians of {ROUNDS} rounds"
    );
    println!("  raw consumer blocked in fetch   p50 {r50:>7.0} us  p99 {r99:>7.0} us");
    println!(
        "  pool, 2 workers                 p50 {p50:>7.0} us  p99 {p99:>7.0} us  = {:.2}x / {:.2}x raw",
        p50 / r50,
        p99 / r99
    );
}
