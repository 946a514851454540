//! Both modes end to end on real brokers: thousands of jobs through a real
//! pool (a master and forked workers, in a child process) on Redis,
//! beanstalkd and RabbitMQ, with workers SIGKILLed at random moments and
//! the master SIGKILLed once and replaced: every job runs, and the duplicates are
//! bounded by the kills. In dispatch mode the feeder (the one process
//! holding a broker connection) is SIGKILLed a few times as well; the
//! embedded spool runs the dispatch case too. The scale-out cases
//! (`three_hosts_on_{redis,rabbitmq}_{pull,dispatch}`) run three pools as
//! three "hosts", each in a PID and UTS namespace of its own on this
//! machine's loopback, on one queue; a rabbitmq-server of a case's own is
//! SIGKILLed and restarted under a running pool in
//! `rabbitmq_restart_loses_no_job_{pull,dispatch}`. The bound and its reasoning
//! are in `prefork_tests::e2e::KillReport::bound`. Other spool versions:
//! `crates/prefork-jobs/tests/fork_{pull,dispatch}.rs`; all drive their
//! pools with `prefork_tests::e2e`.
//!
//! The Kafka cases run the same on tansu (`PREFORK_KAFKA_URL`).
//!
//! The servers come from `PREFORK_REDIS_URL` / `PREFORK_BEANSTALKD_URL` /
//! `PREFORK_RABBITMQ_URL` / `PREFORK_KAFKA_URL`
//! (`cargo xtask ci`, or `cargo xtask brokers start`); without them a case
//! fails under CI and prints why it skips elsewhere. Each run uses a queue
//! of its own.
//! (harness = false: every case runs in a process of its own.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prefork_broker::{Broker, Connect};
use prefork_jobs::{
    DispatchFeeder, DispatchWorker, Enqueuer, Envelope, JobContext, JobError, JobWorker, Registry,
    RetryPolicy,
};
use prefork_tests::e2e::{self, KillPlan};
use prefork_tests::harness::{Case, run};
use prefork_tests::rabbitmq::PrivateRabbit;

const JOBS: u64 = 3000;
const WORKERS: usize = 4;

/// The Redis lease: how long a dead worker's job waits before another
/// consumer reclaims it. Short, so the run ends soon after the last kill;
/// long enough that a live no-op job (which never touches) is not
/// reclaimed on a loaded machine.
const REDIS_LEASE: Duration = Duration::from_secs(2);

/// The beanstalkd time-to-run of the test's jobs (its lease).
const BEANSTALKD_TTR: Duration = Duration::from_secs(5);

/// The Kafka session timeout: how long a killed member keeps its
/// partitions.
const KAFKA_SESSION: Duration = Duration::from_secs(3);

/// How long a new dispatch feeder on Kafka waits for the dead one's jobs:
/// on tansu 0.6 the partitions of a feeder killed while it led the group
/// reach the next one 7-8 s later (a 2 s join window, the dead leader's
/// session expiring, a second 2 s join window). The pool's heartbeat
/// timeout is 8 s longer.
const KAFKA_TAKE_OVER: Duration = Duration::from_secs(12);

/// Feeder kills in each dispatch-mode run.
const FEEDER_KILLS: u64 = 3;

fn connect(broker: &str, url: &str) -> Box<dyn Connect> {
    match broker {
        // `url` is the spool's directory; buffered writes, as durability
        // across a machine crash is not what is tested here.
        "spool" => Box::new(
            prefork_spool::Spool::with_options(
                url,
                prefork_spool::Options::default().durability(prefork_spool::Durability::Buffered),
            )
            .unwrap(),
        ),
        "redis" => Box::new(
            prefork_redis::Redis::with_options(
                url,
                prefork_redis::Options::default().lease(REDIS_LEASE),
            )
            .unwrap(),
        ),
        // A short TTR, like the Redis lease above: a reservation nobody
        // settles (its settle failed) comes back within seconds instead of
        // a minute. The feeder touches its jobs every REDIS_LEASE / 4.
        "beanstalkd" => Box::new(
            prefork_beanstalkd::Config::from_url(url)
                .unwrap()
                .ttr(BEANSTALKD_TTR),
        ),
        // Claims do not expire while a holder's connection lives: a dead
        // holder's jobs come back when RabbitMQ sees its connection close.
        "rabbitmq" => Box::new(prefork_rabbitmq::Config::from_url(url).unwrap()),
        // A short session timeout, like the leases above: a killed
        // worker's partitions (and its uncommitted jobs) go to the others
        // within seconds.
        "kafka" => Box::new(
            prefork_kafka::Config::from_url(url)
                .unwrap()
                .session_timeout(KAFKA_SESSION),
        ),
        other => panic!("unknown broker {other}"),
    }
}

/// The test's one job: `append` writes its argument to `out` (after
/// `$POOL_JOB_MS` of work). Retries are
/// quick (a job lost with its worker is a failed attempt in dispatch mode)
/// and many, so that no job reaches the dead letters.
fn registry(out: PathBuf) -> Registry {
    let mut jobs = Registry::new();
    jobs.default_retry(
        RetryPolicy::new(50)
            .base(Duration::from_millis(5))
            .max_delay(Duration::from_millis(50)),
    );
    let o = out.clone();
    // `$POOL_JOB_MS`: how long each `append` job works first (0 if unset),
    // so that claims are held when the kills land.
    let work =
        Duration::from_millis(std::env::var("POOL_JOB_MS").map_or(0, |v| v.parse().unwrap()));
    jobs.register("append", move |_: &mut JobContext<'_>, n: u64| {
        std::thread::sleep(work);
        e2e::append_line(&o, &n.to_string()).map_err(JobError::from)
    });
    // A job whose argument is a big string: appends `big LEN`.
    jobs.register("big", move |_: &mut JobContext<'_>, s: String| {
        e2e::append_line(&out, &format!("big {}", s.len())).map_err(JobError::from)
    });
    jobs
}

/// The hidden case a spawned copy of this binary runs: a pool in
/// `$POOL_MODE` (pull or dispatch) on `$POOL_BROKER` at `$POOL_URL`, queue
/// `$POOL_QUEUE`, whose `append` job appends its argument to `$POOL_OUT`;
/// until QUIT.
fn pool() {
    // The pool's log, at RUST_LOG's level (warnings by default), on stderr:
    // what a failing run shows.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let var = |k: &str| std::env::var(k).unwrap();
    // A "host" of the scale-out cases: this pool runs as the init of a PID
    // and UTS namespace of its own, named by the case.
    if let Ok(name) = std::env::var("POOL_HOSTNAME") {
        nix::unistd::sethostname(&name).unwrap();
    }
    let out = PathBuf::from(var("POOL_OUT"));
    let url = var("POOL_URL");
    let broker = var("POOL_BROKER");
    // Box<dyn Connect> is not itself a Connect: forward through a closure.
    let connect = connect(&broker, &url);
    let connect = move |q: &str| connect.open(q);
    let master = prefork_master::Master::builder()
        .name("e2e-brokers")
        .workers(var("POOL_WORKERS").parse().unwrap())
        // On Kafka a new feeder may wait up to KAFKA_TAKE_OVER for the
        // dead one's partitions without a heartbeat.
        .timeout(if broker == "kafka" {
            KAFKA_TAKE_OVER + Duration::from_secs(8)
        } else {
            Duration::from_secs(10)
        })
        .healthy_after(Duration::from_millis(20))
        .backoff_initial(Duration::from_millis(5))
        .crash_limit(10_000)
        .build()
        .unwrap();
    let report = match var("POOL_MODE").as_str() {
        "pull" => master
            .run(
                JobWorker::new(registry(out), connect, &var("POOL_QUEUE"))
                    .poll_interval(Duration::from_millis(50)),
            )
            .unwrap(),
        "dispatch" => master
            .run_dispatch(
                // Claims renewed well within the Redis lease.
                DispatchFeeder::new(registry(out.clone()), connect, &var("POOL_QUEUE"))
                    .touch_every(REDIS_LEASE / 4),
                DispatchWorker::new(registry(out)),
            )
            .unwrap(),
        other => panic!("unknown mode {other}"),
    };
    assert!(report.success(), "{report:?}");
}

fn start_pool(mode: &str, broker: &str, url: &str, queue: &str, out: &Path) -> Child {
    pool_command(
        Command::new(std::env::current_exe().unwrap()),
        mode,
        broker,
        url,
        queue,
        out,
    )
    .spawn()
    .unwrap()
}

/// `cmd` set up to run the hidden `pool` case.
fn pool_command(
    mut cmd: Command,
    mode: &str,
    broker: &str,
    url: &str,
    queue: &str,
    out: &Path,
) -> Command {
    cmd.env("PREFORK_TEST_CASE", "pool")
        .env("POOL_MODE", mode)
        .env("POOL_BROKER", broker)
        .env("POOL_URL", url)
        .env("POOL_QUEUE", queue)
        .env("POOL_OUT", out)
        .env("POOL_WORKERS", WORKERS.to_string());
    cmd
}

/// Enqueues `0..JOBS` as `append` jobs on a fresh queue, runs pools in
/// `mode` with kills until every id is in the out file, and checks the
/// counts. `url` is `None` for the spool (a fresh directory).
fn kills_lose_no_job(mode: &str, broker: &str, url: Option<String>) {
    let queue = e2e::unique_name(&format!("e2e-{broker}-{mode}"));
    let dir = std::env::temp_dir().join(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let url = url.unwrap_or_else(|| dir.join("spool").display().to_string());
    let out = dir.join("runs.log");
    let mut enq = Enqueuer::new(connect(broker, &url).open(&queue).unwrap());
    for n in 0..JOBS {
        enq.enqueue("append", &n).unwrap();
    }
    let mut plan = KillPlan::new(JOBS, WORKERS);
    if mode == "dispatch" {
        // The feeder's process title (prefork-master sets it).
        plan.feeder_title = Some("feeder".into());
        plan.feeder_kills = FEEDER_KILLS;
        // The adaptive lookahead's cap (prefork-master's router).
        plan.lookahead = 8 * WORKERS as u64;
    }
    let report = e2e::run_with_kills(
        &plan,
        || start_pool(mode, broker, &url, &queue, &out),
        || e2e::counts(&out).len() as u64,
        || e2e::counts(&out).len() as u64 == JOBS,
    );
    let seen = e2e::counts(&out);
    let duplicates = report.check(&seen, JOBS);
    if mode == "dispatch" {
        assert!(
            report.feeder_kills >= 1,
            "no feeder kill landed: {report:?}"
        );
    }
    // What is still claimable now is a job whose holder was killed after
    // its handler ran but before the ack (or settle): it must be one that
    // ran, and it counts against the same bound as the duplicates.
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
        duplicates + leftovers <= report.bound(),
        "{duplicates} duplicates + {leftovers} left for {report:?} (bound {})",
        report.bound()
    );
    assert!(enq.broker().dead_letters(10).unwrap().is_empty());
    eprintln!(
        "{broker}, {mode} mode: {JOBS} jobs, {} worker kills + {} feeder kills + 1 master kill, {duplicates} duplicates, {leftovers} left claimable (bound {})",
        report.worker_kills,
        report.feeder_kills,
        report.bound()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Jobs of 100 KiB and 16 MiB among small ones go through a pool in
/// `mode` on Redis, each once, and the pool stays up (one over 64 KiB used
/// to kill the dispatch feeder over and over). In dispatch mode a job over
/// what the channels carry ([`prefork_master::MAX_JOB_BYTES`]) is
/// dead-lettered with the reason, and nothing else is disturbed.
fn big_jobs_on_redis(mode: &str) {
    let Some(url) = e2e::broker_url("PREFORK_REDIS_URL") else {
        return;
    };
    let queue = e2e::unique_name(&format!("e2e-big-{mode}"));
    let dir = std::env::temp_dir().join(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("runs.log");
    let mut enq = Enqueuer::new(connect("redis", &url).open(&queue).unwrap());
    let sizes = [100 << 10, 16 << 20, 70 << 10];
    for (i, size) in sizes.iter().enumerate() {
        enq.enqueue("big", &"x".repeat(*size)).unwrap();
        for n in 0..10 {
            enq.enqueue("append", &(i as u64 * 10 + n)).unwrap();
        }
    }
    let too_big = prefork_master::MAX_JOB_BYTES + 1;
    if mode == "dispatch" {
        enq.enqueue("big", &"y".repeat(too_big)).unwrap();
    }
    let pool = start_pool(mode, "redis", &url, &queue, &out);
    let wanted = sizes.len() * 11;
    e2e::wait_until("every job to run", Duration::from_secs(60), || {
        e2e::counts(&out).values().sum::<usize>() >= wanted
    });
    if mode == "dispatch" {
        e2e::wait_until(
            "the oversized job's dead letter",
            Duration::from_secs(30),
            || !enq.broker().dead_letters(10).unwrap().is_empty(),
        );
    }
    e2e::quit(pool);
    let seen = e2e::counts(&out);
    for size in sizes {
        assert_eq!(seen.get(&format!("big {size}")), Some(&1), "{seen:?}");
    }
    for n in 0..30u64 {
        assert_eq!(seen.get(&n.to_string()), Some(&1), "job {n}: {seen:?}");
    }
    assert_eq!(seen.values().sum::<usize>(), wanted, "{seen:?}");
    let dead = enq.broker().dead_letters(10).unwrap();
    if mode == "dispatch" {
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0]
                .reason()
                .contains("larger than dispatch mode carries"),
            "{}",
            dead[0].reason()
        );
        assert!(dead[0].payload().len() > too_big);
    } else {
        assert!(dead.is_empty(), "{dead:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn big_jobs_on_redis_pull() {
    big_jobs_on_redis("pull");
}

fn big_jobs_on_redis_dispatch() {
    big_jobs_on_redis("dispatch");
}

fn redis_kills_lose_no_job() {
    if let Some(url) = e2e::broker_url("PREFORK_REDIS_URL") {
        kills_lose_no_job("pull", "redis", Some(url));
    }
}

fn beanstalkd_kills_lose_no_job() {
    if let Some(url) = e2e::broker_url("PREFORK_BEANSTALKD_URL") {
        kills_lose_no_job("pull", "beanstalkd", Some(url));
    }
}

fn redis_dispatch_kills_lose_no_job() {
    if let Some(url) = e2e::broker_url("PREFORK_REDIS_URL") {
        kills_lose_no_job("dispatch", "redis", Some(url));
    }
}

fn beanstalkd_dispatch_kills_lose_no_job() {
    if let Some(url) = e2e::broker_url("PREFORK_BEANSTALKD_URL") {
        kills_lose_no_job("dispatch", "beanstalkd", Some(url));
    }
}

fn rabbitmq_kills_lose_no_job() {
    if let Some(url) = e2e::broker_url("PREFORK_RABBITMQ_URL") {
        kills_lose_no_job("pull", "rabbitmq", Some(url));
    }
}

fn rabbitmq_dispatch_kills_lose_no_job() {
    if let Some(url) = e2e::broker_url("PREFORK_RABBITMQ_URL") {
        kills_lose_no_job("dispatch", "rabbitmq", Some(url));
    }
}

/// A rabbitmq-server SIGKILLed mid-run and started again (a server of the
/// case's own, on the same data directory): the pool in `mode` rides the
/// outage out (its handles reconnect), every job runs, nothing is left
/// claimed or dead, and the jobs run twice are at most those the pool held
/// when the server died (their acks were lost with it, or failed while it
/// was down: RabbitMQ requeues every unacked delivery of a lost
/// connection).
fn rabbitmq_restart_loses_no_job(mode: &str) {
    let Some(mut server) = PrivateRabbit::start(mode) else {
        return;
    };
    let url = server.url();
    let queue = e2e::unique_name(&format!("e2e-rabbit-restart-{mode}"));
    let dir = std::env::temp_dir().join(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("runs.log");
    // Declare the queue, and have the server write its registration out
    // (an orderly restart) before anything else: RabbitMQ 3.10 saves the
    // registry of its quorum queues' Raft members (a DETS table) every
    // few minutes, and one declared since the last save comes back
    // without its messages, stuck, after a SIGKILL (seen here: Raft log
    // index 0, basic.consume never answered). Queues of a running system
    // are older than that; see prefork-rabbitmq's README.
    drop(connect("rabbitmq", &url).open(&queue).unwrap());
    server.shutdown();
    server.restart();
    let mut enq = Enqueuer::new(connect("rabbitmq", &url).open(&queue).unwrap());
    let args: Vec<u64> = (0..JOBS).collect();
    enq.enqueue_batch("append", &args).unwrap();
    drop(enq);
    let log = dir.join("pool.log");
    let mut pool = pool_command(
        Command::new(std::env::current_exe().unwrap()),
        mode,
        "rabbitmq",
        &url,
        &queue,
        &out,
    )
    .env("RUST_LOG", "info")
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let ran = || e2e::counts(&out).len() as u64;
    e2e::wait_until("a third of the jobs", Duration::from_secs(60), || {
        ran() >= JOBS / 3
    });
    server.kill();
    let at_kill = ran();
    // Down long enough for every process to notice.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        pool.try_wait().unwrap().is_none(),
        "the pool exited while the server was down"
    );
    server.restart();
    e2e::wait_until(
        "every job after the restart",
        Duration::from_secs(120),
        || ran() == JOBS,
    );
    e2e::quit(pool);
    let seen = e2e::counts(&out);
    let duplicates: u64 = seen.values().map(|&n| n as u64 - 1).sum();
    // What the pool can hold at once: pull mode, a batch of up to 64 per
    // worker (prefork-jobs' adaptive batch cap); dispatch mode, one
    // running job per worker, the lookahead (8 per worker), and the
    // feeder's one fetch of up to 64 not handed out yet.
    let held = match mode {
        "pull" => 64 * WORKERS as u64,
        _ => 9 * WORKERS as u64 + 64,
    };
    let mut enq = Enqueuer::new(connect("rabbitmq", &url).open(&queue).unwrap());
    let leftovers = std::iter::from_fn(|| enq.broker().fetch_one(Duration::ZERO).unwrap()).count();
    assert_eq!(leftovers, 0, "jobs left in the queue after every job ran");
    assert!(enq.broker().dead_letters(10).unwrap().is_empty());
    assert!(
        duplicates <= held,
        "{duplicates} jobs ran twice; the pool can hold {held}"
    );
    // The outage is told once per process that fetches (each worker in
    // pull mode, the feeder in dispatch mode), when it starts and when it
    // ends: not once a retry (about 900 lines for this outage before).
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = |what: &str| text.lines().filter(|l| l.contains(what)).count();
    let (away, back) = (lines("broker unavailable"), lines("broker available again"));
    let fetchers = if mode == "pull" { WORKERS } else { 1 };
    assert!(
        (1..=fetchers).contains(&away) && back == away,
        "{away} outage WARNs and {back} ends for {fetchers} fetching processes:\n{text}"
    );
    eprintln!(
        "rabbitmq restart, {mode} mode: {JOBS} jobs, server SIGKILLed after {at_kill} had run, {duplicates} ran twice (the pool holds at most {held}); the outage logged {away} WARN and {back} INFO lines"
    );
    drop(enq);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The "hosts" of the scale-out cases.
const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];

/// A pool started as a separate "host": the init of a PID and UTS
/// namespace of its own (`unshare --pid --uts --fork --mount-proc`), so its
/// pids are 1, 2, 3... like every other host's, and its host name is
/// `host`; all on this machine's loopback.
struct Host {
    name: &'static str,
    /// The `unshare` process (in this namespace).
    unshare: Child,
    /// Where the pool logs (its stderr, at INFO).
    log: PathBuf,
}

impl Host {
    fn start(
        name: &'static str,
        mode: &str,
        broker: &str,
        url: &str,
        queue: &str,
        out: &Path,
    ) -> Host {
        let log = out.with_file_name(format!("{name}.log"));
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--uts", "--fork", "--mount-proc", "--"])
            .arg(std::env::current_exe().unwrap())
            .env("POOL_HOSTNAME", name)
            .env("POOL_JOB_MS", "5");
        let unshare = pool_command(cmd, mode, broker, url, queue, out)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("unshare (util-linux)");
        Host { name, unshare, log }
    }

    /// The lines of its log that say a job's claim was lost.
    fn claims_lost(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("claim lost") || l.contains("LeaseLost"))
            .map(str::to_owned)
            .collect()
    }

    /// The pool's master: `unshare`'s child, pid 1 in its namespace.
    fn master(&self) -> i32 {
        let mut found = Vec::new();
        e2e::wait_until("the host's master", Duration::from_secs(10), || {
            found = e2e::children_of(self.unshare.id());
            !found.is_empty()
        });
        found[0]
    }

    /// The master's children whose title has `role` ("worker", "feeder"),
    /// by pid here and in the host's namespace.
    fn children(&self, role: &str) -> Vec<(i32, i32)> {
        e2e::children_of(self.master() as u32)
            .into_iter()
            .filter(|&p| e2e::cmdline(p).contains(role))
            .filter_map(|p| Some((p, ns_pid(p)?)))
            .collect()
    }
}

/// `pid`'s pid in its own (innermost) PID namespace, from `NSpid` in
/// `/proc/PID/status`.
fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Scale-out past one machine, on loopback: three pools as three "hosts"
/// ([`Host`]) share one queue on `broker`. Three times a worker of one
/// host is SIGKILLed whose pid inside its host is a live worker's in the
/// others (checked: a take-over by pid alone would take a live host's
/// claims), then one host's master is SIGKILLed, its whole namespace with
/// it. Every
/// job runs; the duplicates stay within the kills (one per worker kill,
/// and what the dead host held: one running job per worker, plus the
/// lookahead in dispatch mode), which they would not if a host took over
/// the claims of another host's live worker of the same pid (that job
/// would run twice while its holder still ran it, for every kill).
fn hosts_share_a_queue(mode: &str, broker: &str, url: &str) {
    let queue = e2e::unique_name(&format!("e2e-hosts-{broker}-{mode}"));
    let dir = std::env::temp_dir().join(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("runs.log");
    let mut enq = Enqueuer::new(connect(broker, url).open(&queue).unwrap());
    let args: Vec<u64> = (0..JOBS).collect();
    enq.enqueue_batch("append", &args).unwrap();
    let mut hosts: Vec<Host> = HOSTS
        .iter()
        .map(|h| Host::start(h, mode, broker, url, &queue, &out))
        .collect();
    let ran = || e2e::counts(&out).len() as u64;
    // Three times, one host's (a, c, a) claim holder is SIGKILLed whose
    // pid inside its host is also a live holder's in another host: in pull
    // mode a worker (its replacement takes the dead pid's claims over), in
    // dispatch mode the feeder (the only process holding claims; the next
    // feeder takes over). Each must take only its own host's claims.
    let role = if mode == "pull" { "worker" } else { "feeder" };
    let mut shared = Vec::new();
    for (round, victim) in [0, 2, 0].into_iter().enumerate() {
        let mark = JOBS * (round as u64 + 1) / 8;
        e2e::wait_until("the next kill's mark", Duration::from_secs(60), || {
            ran() >= mark
        });
        let per_host: Vec<Vec<(i32, i32)>> = hosts.iter().map(|h| h.children(role)).collect();
        let live_elsewhere = |ns: i32| {
            (0..hosts.len()).any(|h| h != victim && per_host[h].iter().any(|&(_, n)| n == ns))
        };
        let Some(&(pid, ns)) = per_host[victim].iter().find(|&&(_, ns)| live_elsewhere(ns)) else {
            panic!(
                "no {role} pid of {} is live in another host: {per_host:?}",
                hosts[victim].name
            );
        };
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        eprintln!(
            "{}: SIGKILLed {role} pid {ns} (here {pid}); another host's {role} of pid {ns} runs on",
            hosts[victim].name
        );
        shared.push(ns);
    }
    e2e::wait_until("half of the jobs", Duration::from_secs(60), || {
        ran() >= JOBS / 2
    });
    let mut dead = hosts.remove(1);
    kill(Pid::from_raw(dead.master()), Signal::SIGKILL).unwrap();
    let status = dead.unshare.wait().unwrap();
    eprintln!("{}: master SIGKILLed ({status})", dead.name);
    e2e::wait_until(
        "every job, on the hosts left",
        Duration::from_secs(120),
        || ran() == JOBS,
    );
    for host in &mut hosts {
        kill(Pid::from_raw(host.master()), Signal::SIGQUIT).unwrap();
        let status = host.unshare.wait().unwrap();
        assert!(status.success(), "{} exited with {status}", host.name);
    }
    // The claims of a live host were never taken: no holder on the hosts
    // that lived found one of its jobs gone (the dead host's claims were
    // taken back once idle for the lease, or at once by RabbitMQ: nobody
    // held them any more).
    for host in &hosts {
        let lost = host.claims_lost();
        assert!(
            lost.is_empty(),
            "{} lost claims it held, to another host:\n{}",
            host.name,
            lost.join("\n")
        );
    }
    let seen = e2e::counts(&out);
    let duplicates: u64 = seen.values().map(|&n| n as u64 - 1).sum();
    let lookahead = if mode == "dispatch" {
        8 * WORKERS as u64
    } else {
        0
    };
    let bound = HOSTS.len() as u64 + WORKERS as u64 + lookahead;
    let leftovers = std::iter::from_fn(|| enq.broker().fetch_one(Duration::ZERO).unwrap()).count();
    assert_eq!(leftovers, 0, "jobs left in the queue after every job ran");
    assert!(enq.broker().dead_letters(10).unwrap().is_empty());
    assert!(
        duplicates <= bound,
        "{duplicates} jobs ran twice; the kills explain {bound}"
    );
    eprintln!(
        "{broker}, {mode} mode, {} hosts: {JOBS} jobs, 3 {role} kills (pids {shared:?}, each live in another host) + 1 host's master, {duplicates} ran twice (bound {bound}), no claim of a live host lost",
        HOSTS.len(),
    );
    drop(enq);
    std::fs::remove_dir_all(dir).unwrap();
}

fn hosts_on_redis(mode: &str) {
    if let Some(url) = e2e::broker_url("PREFORK_REDIS_URL") {
        hosts_share_a_queue(mode, "redis", &url);
    }
}

fn hosts_on_rabbitmq(mode: &str) {
    if let Some(url) = e2e::broker_url("PREFORK_RABBITMQ_URL") {
        hosts_share_a_queue(mode, "rabbitmq", &url);
    }
}

/// The Kafka URL with a consumer group of the run's own (a dead member of
/// an earlier run must not hold up this one's rebalances).
fn kafka_url() -> Option<String> {
    e2e::broker_url("PREFORK_KAFKA_URL")
        .map(|url| format!("{url}/?group={}", e2e::unique_name("e2e-group")))
}

fn kafka_kills_lose_no_job() {
    if let Some(url) = kafka_url() {
        kills_lose_no_job("pull", "kafka", Some(url));
    }
}

fn kafka_dispatch_kills_lose_no_job() {
    // The new feeder waits for the dead one's partitions, so it holds the
    // jobs still running for their reports instead of running them again.
    if let Some(url) = kafka_url() {
        let url = format!("{url}&take_over_wait_ms={}", KAFKA_TAKE_OVER.as_millis());
        kills_lose_no_job("dispatch", "kafka", Some(url));
    }
}

fn spool_dispatch_kills_lose_no_job() {
    kills_lose_no_job("dispatch", "spool", None);
}

fn main() {
    run(&[
        Case::new("redis_kills_lose_no_job", redis_kills_lose_no_job)
            .limit(Duration::from_secs(150)),
        Case::new("beanstalkd_kills_lose_no_job", beanstalkd_kills_lose_no_job)
            .limit(Duration::from_secs(150)),
        Case::new(
            "redis_dispatch_kills_lose_no_job",
            redis_dispatch_kills_lose_no_job,
        )
        .limit(Duration::from_secs(150)),
        Case::new(
            "beanstalkd_dispatch_kills_lose_no_job",
            beanstalkd_dispatch_kills_lose_no_job,
        )
        .limit(Duration::from_secs(150)),
        Case::new("rabbitmq_kills_lose_no_job", rabbitmq_kills_lose_no_job)
            .limit(Duration::from_secs(150)),
        Case::new(
            "rabbitmq_dispatch_kills_lose_no_job",
            rabbitmq_dispatch_kills_lose_no_job,
        )
        .limit(Duration::from_secs(150)),
        Case::new(
            "spool_dispatch_kills_lose_no_job",
            spool_dispatch_kills_lose_no_job,
        )
        .limit(Duration::from_secs(150)),
        Case::new("rabbitmq_restart_loses_no_job_pull", || {
            rabbitmq_restart_loses_no_job("pull")
        })
        .limit(Duration::from_secs(300)),
        Case::new("rabbitmq_restart_loses_no_job_dispatch", || {
            rabbitmq_restart_loses_no_job("dispatch")
        })
        .limit(Duration::from_secs(300)),
        Case::new("three_hosts_on_redis_pull", || hosts_on_redis("pull"))
            .limit(Duration::from_secs(200)),
        Case::new("three_hosts_on_redis_dispatch", || {
            hosts_on_redis("dispatch")
        })
        .limit(Duration::from_secs(200)),
        Case::new("three_hosts_on_rabbitmq_pull", || hosts_on_rabbitmq("pull"))
            .limit(Duration::from_secs(200)),
        Case::new("three_hosts_on_rabbitmq_dispatch", || {
            hosts_on_rabbitmq("dispatch")
        })
        .limit(Duration::from_secs(200)),
        Case::new("kafka_kills_lose_no_job", kafka_kills_lose_no_job)
            .limit(Duration::from_secs(240)),
        Case::new(
            "kafka_dispatch_kills_lose_no_job",
            kafka_dispatch_kills_lose_no_job,
        )
        .limit(Duration::from_secs(240)),
        Case::new("big_jobs_on_redis_pull", big_jobs_on_redis_pull),
        Case::new("big_jobs_on_redis_dispatch", big_jobs_on_redis_dispatch),
        Case::new("pool", pool)
            .limit(Duration::from_secs(150))
            .hidden(),
    ]);
}
