//! The end-to-end bench harness: real job pools (a `prefork-master` master
//! and N forked `prefork-jobs` workers) on a real broker, against that
//! broker's raw operations done in a loop by one process without prefork,
//! in the same run (interleaved rounds, medians: quote the ratios).
//!
//! Per broker URL and mode it measures:
//! - **throughput**: no-op jobs/s of a pool draining a published backlog
//!   (fork and start included, a few ms), for each worker count; the
//!   baseline is one process doing publish + fetch + ack per job with the
//!   broker's own operations (spool: `prefork-spool` directly; redis:
//!   `XADD`/`XREADGROUP`/`XACK` with the `redis` crate; beanstalkd:
//!   `put`/`reserve`/`delete` over a `TcpStream`; the loops are shared with
//!   the per-broker benches in `prefork_benches`);
//! - **latency**: enqueue-to-start p50/p99 under a steady publish rate, for
//!   each worker count, against one process blocked in the adapter's
//!   `fetch` (no prefork).
//!
//! Not criterion: a pool is a process tree, so each measurement starts this
//! binary again in a child role (`E2E_CHILD`) and times it from here.
//!
//! ```text
//! cargo bench -p prefork-benches --bench e2e -- [--broker URL]... [--mode pull|dispatch]
//!     [--workers 2,8] [--jobs 4000] [--rounds 3] [--rate 400] [--latency-jobs 400] [--prefetch 1]
//! ```
//! or the same through `E2E_BROKER` (comma-separated), `E2E_MODE`,
//! `E2E_WORKERS`, `E2E_JOBS`, `E2E_ROUNDS`, `E2E_RATE`, `E2E_LATENCY_JOBS`,
//! `E2E_PREFETCH`. Brokers: `spool:///dir` (a fresh temp dir by default;
//! `Durability::Buffered`), `redis://...`, `beanstalk://...`. Without
//! `--broker`: the spool, plus `PREFORK_REDIS_URL` and
//! `PREFORK_BEANSTALKD_URL` when set (a line says which are skipped).
//!
//! A no-op job here appends one byte to a per-worker `O_APPEND` file (how
//! the harness sees the backlog drained on every broker alike: about a µs
//! against the broker's tens of µs per job).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefork_benches::{raw_beanstalkd, raw_redis};
use prefork_broker::{Broker, Connect};
use prefork_jobs::{Enqueuer, Envelope, JobContext, JobError, JobWorker, Registry};
use prefork_spool::{Durability, Options, Spool};

/// How long an idle worker or the raw consumer blocks in one fetch. Long,
/// because prefork-beanstalkd blocks server-side in whole seconds only and
/// polls (every 20 ms) through the last, partial second of a timeout: with
/// 30 s, a measurement never falls in that second. Pools are stopped with
/// TERM (quick: workers die at once; nothing is held by then), so the long
/// wait costs nothing at the end.
const POLL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pull,
}

#[derive(Debug, Clone)]
struct Args {
    brokers: Vec<String>,
    mode: Mode,
    workers: Vec<usize>,
    jobs: u64,
    rounds: usize,
    rate: u64,
    latency_jobs: u64,
    prefetch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut kv: Vec<(String, String)> = Vec::new();
    for (env, key) in [
        ("E2E_BROKER", "broker"),
        ("E2E_MODE", "mode"),
        ("E2E_WORKERS", "workers"),
        ("E2E_JOBS", "jobs"),
        ("E2E_ROUNDS", "rounds"),
        ("E2E_RATE", "rate"),
        ("E2E_LATENCY_JOBS", "latency-jobs"),
        ("E2E_PREFETCH", "prefetch"),
    ] {
        if let Ok(v) = std::env::var(env) {
            for part in v.split(',').filter(|p| !p.is_empty() && key == "broker") {
                kv.push((key.into(), part.into()));
            }
            if key != "broker" {
                kv.push((key.into(), v));
            }
        }
    }
    let mut argv = std::env::args().skip(1);
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--bench" | "--nocapture" => {}
            "--list" => std::process::exit(0),
            flag if flag.starts_with("--") => {
                let v = argv.next().ok_or(format!("{flag} needs a value"))?;
                kv.push((flag[2..].to_owned(), v));
            }
            _ => {} // a filter from `cargo bench NAME`: not used here
        }
    }
    let mut args = Args {
        brokers: Vec::new(),
        mode: Mode::Pull,
        workers: vec![2, 8],
        jobs: 4000,
        rounds: 3,
        rate: 400,
        latency_jobs: 400,
        prefetch: 1,
    };
    let num = |k: &str, v: &str| -> Result<u64, String> {
        v.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("--{k}: want a positive number, got {v:?}"))
    };
    for (k, v) in kv {
        match k.as_str() {
            "broker" => args.brokers.push(v),
            "mode" => {
                args.mode = match v.as_str() {
                    "pull" => Mode::Pull,
                    "dispatch" => {
                        return Err("--mode dispatch is not built yet: prefork-master has no \
                                    dispatch mode to measure (pull is the only mode)"
                            .into());
                    }
                    _ => return Err(format!("--mode: pull or dispatch, not {v:?}")),
                }
            }
            "workers" => {
                args.workers = v
                    .split(',')
                    .map(|w| num("workers", w).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "jobs" => args.jobs = num(&k, &v)?,
            "rounds" => args.rounds = num(&k, &v)? as usize,
            "rate" => args.rate = num(&k, &v)?,
            "latency-jobs" => args.latency_jobs = num(&k, &v)?,
            "prefetch" => args.prefetch = num(&k, &v)? as usize,
            _ => return Err(format!("unknown option --{k}")),
        }
    }
    if args.brokers.is_empty() {
        args.brokers.push("spool:".into()); // a fresh temp dir
        for var in ["PREFORK_REDIS_URL", "PREFORK_BEANSTALKD_URL"] {
            match std::env::var(var) {
                Ok(url) if !url.is_empty() => args.brokers.push(url),
                _ => println!(
                    "e2e: {var} is not set: skipping that broker (cargo xtask brokers start)"
                ),
            }
        }
    }
    Ok(args)
}

/// A broker under test.
#[derive(Debug, Clone)]
enum Target {
    Spool(PathBuf),
    Redis(String),
    Beanstalkd(String),
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        if let Some(rest) = url.strip_prefix("spool:") {
            let dir = rest.strip_prefix("//").unwrap_or(rest);
            Ok(Target::Spool(if dir.is_empty() {
                std::env::temp_dir().join(format!("prefork-e2e-bench-{}", std::process::id()))
            } else {
                PathBuf::from(dir)
            }))
        } else if url.starts_with("redis://") || url.starts_with("redis+unix://") {
            Ok(Target::Redis(url.to_owned()))
        } else if url.starts_with("beanstalk://") || url.starts_with("beanstalkd://") {
            Ok(Target::Beanstalkd(url.to_owned()))
        } else {
            Err(format!(
                "broker {url:?}: want spool:///dir, redis://... or beanstalk://..."
            ))
        }
    }

    fn url(&self) -> String {
        match self {
            Target::Spool(d) => format!("spool://{}", d.display()),
            Target::Redis(u) | Target::Beanstalkd(u) => u.clone(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Target::Spool(_) => "spool",
            Target::Redis(_) => "redis",
            Target::Beanstalkd(_) => "beanstalkd",
        }
    }

    fn raw_name(&self) -> &'static str {
        match self {
            Target::Spool(_) => "raw spool publish+fetch_one+ack",
            Target::Redis(_) => "raw XADD+XREADGROUP+XACK",
            Target::Beanstalkd(_) => "raw put+reserve+delete",
        }
    }

    fn spool(dir: &Path) -> Spool {
        Spool::with_options(dir, Options::default().durability(Durability::Buffered)).unwrap()
    }

    fn connect(&self) -> Box<dyn Connect> {
        match self {
            Target::Spool(d) => Box::new(Target::spool(d)),
            Target::Redis(u) => Box::new(prefork_redis::Redis::new(u).unwrap()),
            Target::Beanstalkd(u) => Box::new(prefork_beanstalkd::Config::from_url(u).unwrap()),
        }
    }

    /// The baseline: publish + fetch + ack of one job, `jobs` times, by one
    /// process with the broker's own operations. Jobs/s.
    fn raw_loop(&self, queue: &str, jobs: u64) -> f64 {
        let t;
        match self {
            Target::Spool(d) => {
                let mut q = Target::spool(d).queue(queue).unwrap();
                t = Instant::now();
                for _ in 0..jobs {
                    q.publish(prefork_benches::PAYLOAD, Duration::ZERO).unwrap();
                    let d = q.fetch_one(Duration::ZERO).unwrap().unwrap();
                    q.ack(d).unwrap();
                }
            }
            Target::Redis(u) => {
                let mut raw = raw_redis::Raw::new(u, queue);
                t = Instant::now();
                for _ in 0..jobs {
                    raw.publish_fetch_ack(1);
                }
                raw.cleanup();
            }
            Target::Beanstalkd(u) => {
                let address = prefork_beanstalkd::Config::from_url(u).unwrap().address();
                let mut raw = raw_beanstalkd::Raw::new(&address, queue);
                t = Instant::now();
                for _ in 0..jobs {
                    raw.one_job();
                }
            }
        }
        jobs as f64 / t.elapsed().as_secs_f64()
    }
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

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
}

/// Child role `pool`: a master with `E2E_WORKERS` workers on `E2E_URL`,
/// queue `E2E_QUEUE`, running `noop` (one byte to `E2E_OUT/done`) and
/// `stamp` (its enqueue-to-start latency to `E2E_OUT/latency`), until QUIT.
fn pool_main() {
    let target = Target::parse(&env("E2E_URL")).unwrap();
    let out = PathBuf::from(env("E2E_OUT"));
    let mut r = Registry::new();
    let done = out.join("done");
    // Opened in each worker on its first job (after the fork): one write
    // per job, no open.
    let file: OnceLock<File> = OnceLock::new();
    r.register("noop", move |_: &mut JobContext<'_>, ()| {
        let mut f = file.get_or_init(|| {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&done)
                .unwrap()
        });
        f.write_all(b"x")?;
        Ok::<(), JobError>(())
    });
    let lat = out.join("latency");
    r.register("stamp", move |_: &mut JobContext<'_>, t: u64| {
        append(&lat, &format!("{}\n", now_us().saturating_sub(t)));
        Ok::<(), JobError>(())
    });
    let connect = target.connect();
    let worker = JobWorker::new(r, move |q: &str| connect.open(q), &env("E2E_QUEUE"))
        .prefetch(env("E2E_PREFETCH").parse().unwrap())
        .poll_interval(POLL);
    let report = prefork_master::Master::builder()
        .name("e2e-bench")
        .workers(env("E2E_WORKERS").parse().unwrap())
        .build()
        .unwrap()
        .run(worker)
        .unwrap();
    std::process::exit(if report.success() { 0 } else { 1 });
}

/// Child role `consumer`: one process blocked in the adapter's fetch,
/// recording the latency of `stamp` jobs, until `E2E_COUNT` are seen.
fn consumer_main() {
    let target = Target::parse(&env("E2E_URL")).unwrap();
    let out = PathBuf::from(env("E2E_OUT")).join("latency");
    let mut q = target.connect().open(&env("E2E_QUEUE")).unwrap();
    let count: u64 = env("E2E_COUNT").parse().unwrap();
    let mut seen = 0;
    while seen < count {
        if let Some(d) = q.fetch_one(POLL).unwrap() {
            let t = now_us();
            let e = Envelope::from_bytes(d.payload()).unwrap();
            let sent: u64 = serde_json::from_value(e.args.clone()).unwrap();
            append(&out, &format!("{}\n", t.saturating_sub(sent)));
            q.ack(d).unwrap();
            seen += 1;
        }
    }
}

/// One measurement's scratch: a unique queue and an output directory.
struct Run {
    target: Target,
    queue: String,
    out: PathBuf,
}

impl Run {
    fn new(target: &Target, tag: &str) -> Run {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let queue = format!("e2e-{tag}-{}-{n}", std::process::id());
        let out = std::env::temp_dir().join(format!("prefork-e2e-out-{queue}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        Run {
            target: target.clone(),
            queue,
            out,
        }
    }

    fn enqueuer(&self) -> Enqueuer<Box<dyn Broker + Send>> {
        Enqueuer::new(self.target.connect().open(&self.queue).unwrap())
    }

    fn spawn(&self, role: &str, workers: usize, prefetch: usize, count: u64) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .env("E2E_CHILD", role)
            .env("E2E_URL", self.target.url())
            .env("E2E_QUEUE", &self.queue)
            .env("E2E_OUT", &self.out)
            .env("E2E_WORKERS", workers.to_string())
            .env("E2E_PREFETCH", prefetch.to_string())
            .env("E2E_COUNT", count.to_string())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn done(&self) -> u64 {
        std::fs::metadata(self.out.join("done")).map_or(0, |m| m.len())
    }

    fn latencies(&self) -> Vec<u64> {
        std::fs::read_to_string(self.out.join("latency"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

/// Quick stop (TERM): the workers die at once instead of finishing a
/// blocking fetch; by then every job is settled.
fn stop(mut c: Child) {
    let _ = prefork_proc::Child::from_pid(c.id() as libc::pid_t).signal(libc::SIGTERM);
    let _ = c.wait();
}

/// A pool of `workers` drains a backlog of `jobs` no-op jobs. Jobs/s.
fn pool_drain(target: &Target, workers: usize, a: &Args) -> f64 {
    let run = Run::new(target, "drain");
    let mut enq = run.enqueuer();
    for _ in 0..a.jobs {
        enq.enqueue("noop", &()).unwrap();
    }
    drop(enq);
    let t = Instant::now();
    let pool = run.spawn("pool", workers, a.prefetch, 0);
    let limit = t + Duration::from_secs(120);
    while run.done() < a.jobs {
        assert!(Instant::now() < limit, "the pool did not drain in 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = a.jobs as f64 / t.elapsed().as_secs_f64();
    stop(pool);
    rate
}

/// Publishes `stamp` jobs at `a.rate` per second to a pool of `workers`
/// (or to one raw consumer when `workers` is 0); (p50, p99) in µs.
fn latency(target: &Target, workers: usize, a: &Args) -> (f64, f64) {
    let run = Run::new(target, "lat");
    let mut enq = run.enqueuer();
    let consumer = if workers == 0 {
        run.spawn("consumer", 1, 1, a.latency_jobs)
    } else {
        run.spawn("pool", workers, 1, 0)
    };
    std::thread::sleep(Duration::from_millis(300)); // started and blocked in fetch
    let every = Duration::from_secs_f64(1.0 / a.rate as f64);
    let start = Instant::now();
    for i in 0..a.latency_jobs {
        if let Some(wait) = (start + every.mul_f64(i as f64)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        enq.enqueue("stamp", &now_us()).unwrap();
    }
    let limit = Instant::now() + Duration::from_secs(60);
    while (run.latencies().len() as u64) < a.latency_jobs {
        assert!(Instant::now() < limit, "the stamps did not all run in 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    if workers == 0 {
        let mut c = consumer;
        c.wait().unwrap();
    } else {
        stop(consumer);
    }
    let mut v = run.latencies();
    v.sort_unstable();
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    (q(0.5), q(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One broker's figures: printed as they come, and as table rows.
fn bench(target: &Target, a: &Args) -> Vec<String> {
    let mut raw = Vec::new();
    let mut pools = vec![Vec::new(); a.workers.len()];
    for _ in 0..a.rounds {
        let run = Run::new(target, "raw");
        raw.push(target.raw_loop(&run.queue, a.jobs));
        for (i, w) in a.workers.iter().enumerate() {
            pools[i].push(pool_drain(target, *w, a));
        }
    }
    let raw = median(raw);
    println!(
        "\n{} ({}), pull mode, prefetch {}: {} no-op jobs per round, {} rounds, medians",
        target.name(),
        target.url(),
        a.prefetch,
        a.jobs,
        a.rounds
    );
    println!(
        "  {:<40} {raw:>8.0} jobs/s",
        format!("{}, 1 process", target.raw_name())
    );
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for (i, w) in a.workers.iter().enumerate() {
        let r = median(pools[i].clone());
        rates.push(r);
        println!(
            "  {:<40} {r:>8.0} jobs/s  = {:.2}x raw",
            format!("pool, {w} workers"),
            r / raw
        );
    }
    let mut lat_raw = Vec::new();
    let mut lat_pool = vec![Vec::new(); a.workers.len()];
    for _ in 0..a.rounds {
        lat_raw.push(latency(target, 0, a));
        for (i, w) in a.workers.iter().enumerate() {
            lat_pool[i].push(latency(target, *w, a));
        }
    }
    let med = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
        )
    };
    let (r50, r99) = med(&lat_raw);
    println!(
        "  enqueue-to-start at {} jobs/s ({} jobs), medians of {} rounds:",
        a.rate, a.latency_jobs, a.rounds
    );
    println!(
        "  {:<40} p50 {:>8.0} us  p99 {:>8.0} us",
        "1 process blocked in fetch", r50, r99
    );
    for (i, w) in a.workers.iter().enumerate() {
        let (p50, p99) = med(&lat_pool[i]);
        println!(
            "  {:<40} p50 {p50:>8.0} us  p99 {p99:>8.0} us  = {:.2}x / {:.2}x",
            format!("pool, {w} workers"),
            p50 / r50,
            p99 / r99
        );
        rows.push(format!(
            "| {} | {w} | {:.0} | {raw:.0} | **{:.2}x** | {:.2} / {:.2} ms | {:.2} / {:.2} ms |",
            target.name(),
            rates[i],
            rates[i] / raw,
            p50 / 1e3,
            p99 / 1e3,
            r50 / 1e3,
            r99 / 1e3
        ));
    }
    if let Target::Spool(d) = target {
        let _ = std::fs::remove_dir_all(d);
    }
    rows
}

fn main() {
    match std::env::var("E2E_CHILD").as_deref() {
        Ok("pool") => return pool_main(),
        Ok("consumer") => return consumer_main(),
        _ => {}
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("e2e: {e}");
            std::process::exit(2);
        }
    };
    let targets: Vec<Target> = match args.brokers.iter().map(|b| Target::parse(b)).collect() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("e2e: {e}");
            std::process::exit(2);
        }
    };
    assert_eq!(args.mode, Mode::Pull);
    let mut rows = Vec::new();
    for t in &targets {
        rows.extend(bench(t, &args));
    }
    println!(
        "\n| broker | workers | pool jobs/s | raw loop jobs/s | ratio | pool p50 / p99 | 1-process p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
