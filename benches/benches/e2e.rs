//! The end-to-end bench harness: real job pools (a `prefork-master` master
//! and N forked `prefork-jobs` workers) on a real broker, against that
//! broker's raw operations done in a loop by one process without prefork,
//! in the same run (interleaved rounds, medians: quote the ratios).
//!
//! Per broker URL and mode (pull: each worker fetches for itself with
//! `JobWorker`; dispatch: one feeder process fetches for idle workers and
//! the master routes, `DispatchFeeder` + `DispatchWorker`) it measures:
//! - **throughput**: no-op jobs/s of a pool draining a published backlog
//!   (fork and start included, a few ms), for each worker count; the
//!   baseline is one process doing publish + fetch + ack per job with the
//!   broker's own operations (spool: `prefork-spool` directly; redis:
//!   `XADD`/`XREADGROUP`/`XACK` with the `redis` crate; beanstalkd:
//!   `put`/`reserve`/`delete` over a `TcpStream`; RabbitMQ, where a
//!   confirmed publish waits for a disk sync: the backlog published first
//!   and drained by amiquip's consumer loop, prefetch 64, one `basic.ack`
//!   per job; the loops are shared with
//!   the per-broker benches in `prefork_benches`);
//! - **latency**: enqueue-to-start p50/p99 under a steady publish rate, for
//!   each worker count, against one process blocked in the adapter's
//!   `fetch` (no prefork).
//!
//! Not criterion: a pool is a process tree, so each measurement starts this
//! binary again in a child role (`E2E_CHILD`) and times it from here.
//!
//! ```text
//! cargo bench -p prefork-benches --bench e2e -- [--broker URL]... [--mode pull,dispatch]
//!     [--workers 2,8] [--jobs 4000] [--rounds 3] [--rate 400] [--latency-jobs 400] [--prefetch 0]
//! ```
//! or the same through `E2E_BROKER` (comma-separated), `E2E_MODE`,
//! `E2E_WORKERS`, `E2E_JOBS`, `E2E_ROUNDS`, `E2E_RATE`, `E2E_LATENCY_JOBS`,
//! `E2E_PREFETCH` (0, the default: the adaptive batch). Brokers: `spool:///dir` (a fresh temp dir by default;
//! `Durability::Buffered`), `redis://...`, `beanstalk://...`, `amqp://...`,
//! `kafka://...` (each measurement's pool a consumer group of its own,
//! timed from its first job: the group join is not the loop). Without
//! `--broker`: the spool, plus `PREFORK_REDIS_URL`,
//! `PREFORK_BEANSTALKD_URL`, `PREFORK_RABBITMQ_URL` and `PREFORK_KAFKA_URL`
//! when set (a line says which are skipped).
//! `--mode` takes one mode or more (comma-separated; default pull;
//! `dispatch` keeps the defaults (the adaptive lookahead),
//! `dispatch-0` sets `dispatch_lookahead(0)`); the
//! raw baseline is measured once per round beside every mode. Options of
//! criterion and libtest (`--bench`, `--save-baseline NAME`, ...), which
//! `cargo bench` passes to every bench, are ignored with a note.
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

use prefork_benches::{raw_beanstalkd, raw_kafka, raw_rabbitmq, raw_redis};
use prefork_broker::{Broker, Connect};
use prefork_jobs::{
    DispatchFeeder, DispatchWorker, Enqueuer, Envelope, JobContext, JobError, JobWorker, Registry,
};
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
    Dispatch,
    /// Dispatch with `dispatch_lookahead(0)`.
    DispatchNoLookahead,
}

impl Mode {
    fn parse(v: &str) -> Result<Mode, String> {
        match v {
            "pull" => Ok(Mode::Pull),
            "dispatch" => Ok(Mode::Dispatch),
            "dispatch-0" => Ok(Mode::DispatchNoLookahead),
            _ => Err(format!("--mode: pull, dispatch or dispatch-0, not {v:?}")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Pull => "pull",
            Mode::Dispatch => "dispatch",
            Mode::DispatchNoLookahead => "dispatch-0",
        }
    }
}

/// Options of criterion and libtest that take a value: `cargo bench --
/// ARGS` passes ARGS to every bench, this one included; they are skipped
/// with their value.
const FOREIGN_WITH_VALUE: &[&str] = &[
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--profile-time",
    "--plotting-backend",
    "--output-format",
    "--color",
    "--format",
    "--logfile",
    "--skip",
    "--test-threads",
];

/// This harness's own options (all take a value).
const OWN: &[&str] = &[
    "broker",
    "mode",
    "workers",
    "jobs",
    "rounds",
    "rate",
    "latency-jobs",
    "prefetch",
];

#[derive(Debug, Clone)]
struct Args {
    brokers: Vec<String>,
    modes: Vec<Mode>,
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
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        match flag.as_str() {
            "--list" => std::process::exit(0),
            f if f.starts_with("--") && OWN.contains(&&f[2..]) => {
                let v = match inline {
                    Some(v) => v,
                    None => argv.next().ok_or(format!("{f} needs a value"))?,
                };
                kv.push((f[2..].to_owned(), v));
            }
            f if FOREIGN_WITH_VALUE.contains(&f) => {
                if inline.is_none() {
                    argv.next();
                }
                println!("e2e: ignoring {f} (a criterion/libtest option)");
            }
            "--bench" => {} // what `cargo bench` always passes
            f if f.starts_with('-') => {
                println!("e2e: ignoring {f} (not an option of this harness)")
            }
            _ => {} // a filter from `cargo bench NAME`: not used here
        }
    }
    let mut args = Args {
        brokers: Vec::new(),
        modes: vec![Mode::Pull],
        workers: vec![2, 8],
        jobs: 4000,
        rounds: 3,
        rate: 400,
        latency_jobs: 400,
        prefetch: 0,
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
                args.modes = v.split(',').map(Mode::parse).collect::<Result<_, _>>()?;
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
        for var in [
            "PREFORK_REDIS_URL",
            "PREFORK_BEANSTALKD_URL",
            "PREFORK_RABBITMQ_URL",
            "PREFORK_KAFKA_URL",
        ] {
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

/// The raw RabbitMQ consumer's prefetch (what the adapter's fetch asks
/// for at most in one go).
const RABBITMQ_RAW_PREFETCH: u16 = 64;

/// Kafka's [`Connect`] for the harness: every handle of one queue in a
/// consumer group named after it, so each measurement's pool is a group of
/// its own.
struct KafkaGroupPerQueue(prefork_kafka::Config);

impl Connect for KafkaGroupPerQueue {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, prefork_broker::BrokerError> {
        Connect::open(&self.0.clone().group(format!("e2e-{queue}")), queue)
    }
}

/// A broker under test.
#[derive(Debug, Clone)]
enum Target {
    Spool(PathBuf),
    Redis(String),
    Beanstalkd(String),
    RabbitMq(String),
    Kafka(String),
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
        } else if url.starts_with("amqp://") {
            Ok(Target::RabbitMq(url.to_owned()))
        } else if url.starts_with("kafka://") {
            Ok(Target::Kafka(url.to_owned()))
        } else {
            Err(format!(
                "broker {:?}: want spool:///dir, redis://..., beanstalk://..., amqp://... or kafka://...",
                prefork_rabbitmq::redact_url(url)
            ))
        }
    }

    fn url(&self) -> String {
        match self {
            Target::Spool(d) => format!("spool://{}", d.display()),
            Target::Redis(u) | Target::Beanstalkd(u) | Target::RabbitMq(u) | Target::Kafka(u) => {
                u.clone()
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Target::Spool(_) => "spool",
            Target::Redis(_) => "redis",
            Target::Beanstalkd(_) => "beanstalkd",
            Target::RabbitMq(_) => "rabbitmq",
            Target::Kafka(_) => "kafka",
        }
    }

    fn raw_name(&self) -> &'static str {
        match self {
            Target::Spool(_) => "raw spool publish+fetch_one+ack",
            Target::Redis(_) => "raw XADD+XREADGROUP+XACK",
            Target::Beanstalkd(_) => "raw put+reserve+delete",
            Target::RabbitMq(_) => "raw consumer (prefetch 64, ack each)",
            Target::Kafka(_) => "raw group consumer (sync commit each)",
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
            Target::RabbitMq(u) => Box::new(prefork_rabbitmq::Config::from_url(u).unwrap()),
            Target::Kafka(u) => Box::new(KafkaGroupPerQueue(
                prefork_kafka::Config::from_url(u).unwrap(),
            )),
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
            // Not publish + fetch + ack per job: a confirmed publish to a
            // quorum queue waits for its fsync (about 1 ms here), which
            // would make the baseline the disk. The backlog is published
            // first, untimed, as the pools' is, and the raw client drains
            // it with the usual consumer loop.
            Target::RabbitMq(u) => {
                let mut raw = raw_rabbitmq::Raw::new(u, queue);
                raw.fill(jobs as usize);
                t = Instant::now();
                raw.drain(jobs as usize, RABBITMQ_RAW_PREFETCH);
            }
            // Kafka: the backlog produced first, untimed; the clock starts
            // at the first message a group consumer gets (the group join,
            // about 2 s on tansu, is not the loop).
            Target::Kafka(u) => {
                let config = prefork_kafka::Config::from_url(u).unwrap();
                let mut raw = raw_kafka::Raw::new(config.bootstrap_servers(), queue);
                raw.fill(jobs as usize);
                return raw.drain(jobs as usize);
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

/// The pool's handlers: `noop` (one byte to `out/done`) and `stamp` (its
/// enqueue-to-start latency to `out/latency`).
fn registry(out: &Path) -> Registry {
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
    r
}

/// Child role `pool`: a master with `E2E_WORKERS` workers on `E2E_URL`,
/// queue `E2E_QUEUE`, in mode `E2E_MODE`, running [`registry`]'s
/// handlers, until stopped.
fn pool_main() {
    let target = Target::parse(&env("E2E_URL")).unwrap();
    let out = PathBuf::from(env("E2E_OUT"));
    let connect = target.connect();
    let connect = move |q: &str| connect.open(q);
    let workers: usize = env("E2E_WORKERS").parse().unwrap();
    let mode = Mode::parse(&env("E2E_MODE")).unwrap();
    let mut master = prefork_master::Master::builder()
        .name("e2e-bench")
        .workers(workers);
    if mode == Mode::DispatchNoLookahead {
        master = master.dispatch_lookahead(0);
    }
    let master = master.build().unwrap();
    let report = match mode {
        Mode::Pull => {
            let mut worker =
                JobWorker::new(registry(&out), connect, &env("E2E_QUEUE")).poll_interval(POLL);
            // 0: the adaptive batch (the default).
            let prefetch: usize = env("E2E_PREFETCH").parse().unwrap();
            if prefetch > 0 {
                worker = worker.prefetch(prefetch);
            }
            master.run(worker)
        }
        Mode::Dispatch | Mode::DispatchNoLookahead => master.run_dispatch(
            DispatchFeeder::new(registry(&out), connect, &env("E2E_QUEUE")),
            DispatchWorker::new(registry(&out)),
        ),
    }
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

    fn spawn(&self, role: &str, mode: Mode, workers: usize, prefetch: usize, count: u64) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .env("E2E_CHILD", role)
            .env("E2E_MODE", mode.name())
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

/// A pool of `workers` in `mode` drains a backlog of `jobs` no-op jobs.
/// Jobs/s.
fn pool_drain(target: &Target, mode: Mode, workers: usize, a: &Args) -> f64 {
    let run = Run::new(target, "drain");
    let mut enq = run.enqueuer();
    for _ in 0..a.jobs {
        enq.enqueue("noop", &()).unwrap();
    }
    drop(enq);
    let mut t = Instant::now();
    let pool = run.spawn("pool", mode, workers, a.prefetch, 0);
    let limit = t + Duration::from_secs(120);
    // Kafka: timed from the first job done, since joining the group (about
    // 2 s on tansu, more with several members) is no part of the loop.
    let mut counted = a.jobs;
    if matches!(target, Target::Kafka(_)) {
        while run.done() == 0 {
            assert!(Instant::now() < limit, "the pool ran no job in 120 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        t = Instant::now();
        counted -= run.done();
    }
    while run.done() < a.jobs {
        assert!(Instant::now() < limit, "the pool did not drain in 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = counted as f64 / t.elapsed().as_secs_f64();
    stop(pool);
    rate
}

/// Publishes `stamp` jobs at `a.rate` per second to a pool of `workers` in
/// `mode` (or to one raw consumer when `workers` is 0); (p50, p99) in µs.
fn latency(target: &Target, mode: Mode, workers: usize, a: &Args) -> (f64, f64) {
    let run = Run::new(target, "lat");
    let mut enq = run.enqueuer();
    let consumer = if workers == 0 {
        run.spawn("consumer", mode, 1, 1, a.latency_jobs)
    } else {
        run.spawn("pool", mode, workers, 1, 0)
    };
    // Started and blocked in fetch; on Kafka, also through the group's
    // joins and rebalances (the first stamp would wait for them).
    std::thread::sleep(if matches!(target, Target::Kafka(_)) {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(300)
    });
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

/// One broker's figures, for every mode: printed as they come, and as
/// table rows. Each round measures the raw loop, then every mode and
/// worker count, so the baseline sits beside every figure.
fn bench(target: &Target, a: &Args) -> Vec<String> {
    let cells: Vec<(Mode, usize)> = a
        .modes
        .iter()
        .flat_map(|m| a.workers.iter().map(move |w| (*m, *w)))
        .collect();
    let mut raw = Vec::new();
    let mut pools = vec![Vec::new(); cells.len()];
    for _ in 0..a.rounds {
        let run = Run::new(target, "raw");
        raw.push(target.raw_loop(&run.queue, a.jobs));
        for (i, (m, w)) in cells.iter().enumerate() {
            pools[i].push(pool_drain(target, *m, *w, a));
        }
    }
    let raw = median(raw);
    println!(
        "\n{} ({}), prefetch {} (pull mode): {} no-op jobs per round, {} rounds, medians",
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
    let mut rates = Vec::new();
    for (i, (m, w)) in cells.iter().enumerate() {
        let r = median(pools[i].clone());
        rates.push(r);
        println!(
            "  {:<40} {r:>8.0} jobs/s  = {:.2}x raw",
            format!("{} pool, {w} workers", m.name()),
            r / raw
        );
    }
    let mut lat_raw = Vec::new();
    let mut lat_pool = vec![Vec::new(); cells.len()];
    for _ in 0..a.rounds {
        lat_raw.push(latency(target, Mode::Pull, 0, a));
        for (i, (m, w)) in cells.iter().enumerate() {
            lat_pool[i].push(latency(target, *m, *w, a));
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
    let mut rows = Vec::new();
    for (i, (m, w)) in cells.iter().enumerate() {
        let (p50, p99) = med(&lat_pool[i]);
        println!(
            "  {:<40} p50 {p50:>8.0} us  p99 {p99:>8.0} us  = {:.2}x / {:.2}x",
            format!("{} pool, {w} workers", m.name()),
            p50 / r50,
            p99 / r99
        );
        rows.push(format!(
            "| {} | {} | {w} | {:.0} | {raw:.0} | **{:.2}x** | {:.2} / {:.2} ms | {:.2} / {:.2} ms |",
            target.name(),
            m.name(),
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
    let mut rows = Vec::new();
    for t in &targets {
        rows.extend(bench(t, &args));
    }
    println!(
        "\n| broker | mode | workers | pool jobs/s | raw loop jobs/s | ratio | pool p50 / p99 | 1-process p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
