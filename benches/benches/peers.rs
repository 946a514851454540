//! The peers bench: prefork against Sidekiq and Celery on the same
//! redis-server, in the same run, on the same jobs; one table of ratios.
//!
//! What it measures, for each system: N no-op jobs (default 20,000), each
//! doing one redis `INCR` on a counter key, are enqueued first, all of them
//! before any worker starts (Sidekiq: one `Sidekiq::Client.push_bulk`;
//! Celery: an `apply_async` loop on one producer, it has no bulk publish;
//! prefork: one `Enqueuer::enqueue_batch`), and that enqueue is timed
//! (**enqueue jobs/s**). Then the workers start: Sidekiq `-c 2`, Celery
//! `--pool prefork -c 2`, and prefork with 2 workers and its defaults, in
//! pull mode (`JobWorker`) and in dispatch mode (`DispatchFeeder` +
//! `DispatchWorker`). The job whose `INCR` returns 1 stores the wall-clock
//! time (µs) at `peers:count:t_first`, the one whose `INCR` returns N at
//! `peers:count:t_last`; **jobs/s** = (N - 1) / (t_last - t_first), so
//! start-up is excluded and no job pays for per-job timing. Rounds (3 by
//! default) are interleaved (every system once, then again) on a flushed
//! db 15 of the server; the table shows medians and the ratio to Sidekiq's
//! jobs/s. Only ratios within one run mean anything on a shared VM.
//!
//! With `PREFORK_RABBITMQ_URL` set (the xtask starts a rabbitmq-server
//! too) each round also runs Celery and prefork (both modes) with
//! RabbitMQ as the broker, Celery's home broker: the same jobs (the
//! counter stays on redis), a fresh queue for each measurement, and a
//! second table of ratios to Celery on RabbitMQ.
//!
//! Each round also runs `redis-benchmark -c 2 INCR` on the same server
//! when it is on `PATH`: two clients, each waiting for one round trip at a
//! time, the rate two workers doing one `INCR` a job and nothing else would
//! reach. The table shows it as a last row, and each system's share of it:
//! no job runner with two workers doing these jobs one at a time can pass
//! it.
//!
//! How to run it: `cargo xtask bench peers [--jobs N] [--rounds N]` installs
//! the peers when missing (Debian's `ruby-sidekiq`; Celery 5 with pip into
//! `target/peers-venv`), starts a redis-server and runs this bench, which
//! prints the table and writes it as markdown to `target/peers.md`. Run
//! directly, `cargo bench -p prefork-benches --bench peers -- [--jobs N]
//! [--rounds N]` needs `PREFORK_REDIS_URL` (`cargo xtask brokers start`)
//! and skips, with a note, a peer it cannot find (Sidekiq: `sidekiq` and
//! `ruby -e 'require "sidekiq"'`; Celery: `PEERS_PYTHON`, else
//! `target/peers-venv/bin/python`, importing `celery` and `redis`). The
//! environment variables `PEERS_JOBS`, `PEERS_ROUNDS` stand for the flags;
//! `PEERS_OUT` names the markdown file; `PEERS_REQUIRE=1` (set by the
//! xtask) makes a missing peer an error.
//!
//! The Ruby and Python sides live in `benches/peers/`. Each measurement
//! starts a process tree (this binary again in a child role, `PEERS_CHILD`,
//! for prefork) in a process group of its own, and stops it with TERM to
//! the group (KILL after 5 s).

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefork::{
    DispatchFeeder, DispatchWorker, Enqueuer, JobContext, JobError, JobWorker, Registry,
};

/// The counter every job increments; `KEY:t_first` and `KEY:t_last` hold
/// the time stamps.
const KEY: &str = "peers:count";

/// prefork's queue name (Sidekiq uses `default`, Celery `celery`).
const QUEUE: &str = "peers";

/// The db index the bench owns and flushes between measurements.
const DB: u32 = 15;

/// Workers (threads for Sidekiq, pool processes for Celery) per system.
const WORKERS: usize = 2;

/// A measurement fails when the counter does not move for this long.
const STALL: Duration = Duration::from_secs(60);

/// The systems compared, in the order of each round and of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    /// Sidekiq `-c 2`.
    Sidekiq,
    /// Celery `--pool prefork -c 2`.
    Celery,
    /// prefork pull mode: 2 workers, each a `JobWorker`.
    Pull,
    /// prefork dispatch mode: a `DispatchFeeder` and 2 `DispatchWorker`s.
    Dispatch,
    /// Celery `--pool prefork -c 2` with RabbitMQ as its broker.
    CeleryRabbit,
    /// prefork pull mode on RabbitMQ.
    PullRabbit,
    /// prefork dispatch mode on RabbitMQ.
    DispatchRabbit,
}

impl System {
    /// Every system, Sidekiq first (the baseline of the ratios), then
    /// those on RabbitMQ, Celery first (their baseline).
    const ALL: [System; 7] = [
        System::Sidekiq,
        System::Celery,
        System::Pull,
        System::Dispatch,
        System::CeleryRabbit,
        System::PullRabbit,
        System::DispatchRabbit,
    ];

    /// Whether its broker is RabbitMQ.
    fn on_rabbitmq(self) -> bool {
        matches!(
            self,
            System::CeleryRabbit | System::PullRabbit | System::DispatchRabbit
        )
    }

    /// Whether it is Celery (on either broker).
    fn is_celery(self) -> bool {
        matches!(self, System::Celery | System::CeleryRabbit)
    }

    /// The prefork mode of a prefork system.
    fn prefork_mode(self) -> Option<&'static str> {
        match self {
            System::Pull | System::PullRabbit => Some("pull"),
            System::Dispatch | System::DispatchRabbit => Some("dispatch"),
            _ => None,
        }
    }

    /// The row name, with the peer's version when known.
    fn label(self, version: Option<&str>) -> String {
        let v = version.map_or(String::new(), |v| format!(" {v}"));
        match self {
            System::Sidekiq => format!("Sidekiq{v} -c {WORKERS}"),
            System::Celery => format!("Celery{v} prefork -c {WORKERS}"),
            System::Pull => format!("prefork pull, {WORKERS} workers, defaults"),
            System::Dispatch => format!("prefork dispatch, {WORKERS} workers, defaults"),
            System::CeleryRabbit => format!("Celery{v} prefork -c {WORKERS}, RabbitMQ"),
            System::PullRabbit => format!("prefork pull, {WORKERS} workers, RabbitMQ"),
            System::DispatchRabbit => format!("prefork dispatch, {WORKERS} workers, RabbitMQ"),
        }
    }
}

/// The bench's options.
#[derive(Debug, Clone)]
struct Args {
    /// Jobs per measurement (at least 2).
    jobs: u64,
    /// Interleaved rounds.
    rounds: usize,
}

/// Reads `--jobs N`, `--rounds N` (or `PEERS_JOBS`, `PEERS_ROUNDS`).
/// Other options, which `cargo bench` passes to every bench, are ignored
/// with a note; `--list` exits at once.
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        jobs: 20_000,
        rounds: 3,
    };
    let mut kv: Vec<(String, String)> = Vec::new();
    for (var, key) in [("PEERS_JOBS", "jobs"), ("PEERS_ROUNDS", "rounds")] {
        if let Ok(v) = std::env::var(var) {
            kv.push((key.into(), v));
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
            "--jobs" | "--rounds" => {
                let v = match inline {
                    Some(v) => v,
                    None => argv.next().ok_or(format!("{flag} needs a value"))?,
                };
                kv.push((flag[2..].to_owned(), v));
            }
            "--bench" => {} // what `cargo bench` always passes
            f if f.starts_with('-') => {
                println!("peers: ignoring {f} (not an option of this bench)")
            }
            _ => {} // a filter or an option's value: not used here
        }
    }
    for (k, v) in kv {
        let n: u64 = v
            .parse()
            .map_err(|_| format!("--{k}: want a number, got {v:?}"))?;
        match k.as_str() {
            "jobs" if n >= 2 => args.jobs = n,
            "rounds" if n >= 1 => args.rounds = n as usize,
            _ => return Err(format!("--{k}: {n} is too small")),
        }
    }
    Ok(args)
}

/// `url` (`redis://[auth@]host:port[/db]`) with the bench's db instead.
fn bench_db_url(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("redis://").ok_or(format!(
        "PREFORK_REDIS_URL: want redis://host:port, got {url:?}"
    ))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    Ok(format!("redis://{authority}/{DB}"))
}

/// Wall-clock microseconds since the epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A required environment variable of a child role.
fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
}

/// A handler error from a redis error.
fn job_error(e: redis::RedisError) -> JobError {
    JobError::new(e.to_string())
}

/// The prefork job: `incr`, one `INCR` of [`KEY`] on the worker's own
/// connection (the registry's state, opened in each worker after the fork),
/// and a time stamp when the counter reaches 1 or `n`.
fn registry(url: &str, n: u64) -> Registry<redis::Connection> {
    let client = redis::Client::open(url).unwrap();
    let mut r = Registry::with_state(move |_| Ok(client.get_connection()?));
    r.register(
        "incr",
        move |ctx: &mut JobContext<'_, redis::Connection>, ()| {
            let c = ctx.state();
            let v: u64 = redis::cmd("INCR").arg(KEY).query(c).map_err(job_error)?;
            for (at, field) in [(1, "t_first"), (n, "t_last")] {
                if v == at {
                    let () = redis::cmd("SET")
                        .arg(format!("{KEY}:{field}"))
                        .arg(now_us())
                        .query(c)
                        .map_err(job_error)?;
                }
            }
            Ok(())
        },
    );
    r
}

/// Child role `pull` or `dispatch`: a prefork pool of [`WORKERS`] with its
/// defaults on `PEERS_URL`, queue [`QUEUE`], until stopped.
fn pool_main(mode: &str) -> ! {
    let url = env("PEERS_URL");
    let n: u64 = env("PEERS_N").parse().unwrap();
    // The jobs' broker: redis (the counter's server) or RabbitMQ.
    let broker = prefork::broker_url(&env("PEERS_BROKER")).unwrap();
    let queue = env("PEERS_QUEUE");
    let master = prefork::Master::builder()
        .name("peers-bench")
        .workers(WORKERS)
        .build()
        .unwrap();
    let report = if mode == "pull" {
        master.run(JobWorker::new(registry(&url, n), broker, &queue))
    } else {
        master.run_dispatch(
            DispatchFeeder::new(registry(&url, n), broker, &queue),
            DispatchWorker::new(registry(&url, n)),
        )
    }
    .unwrap();
    std::process::exit(if report.success() { 0 } else { 1 });
}

/// What is found on this machine: the peers' commands, where the Ruby
/// and Python files are, and the RabbitMQ server, if any.
#[derive(Debug)]
struct Peers {
    /// `PREFORK_RABBITMQ_URL`, when set.
    amqp: Option<String>,
    /// `benches/peers/`.
    dir: PathBuf,
    /// The venv's python with Celery, when found.
    python: Option<PathBuf>,
    /// Whether Sidekiq is installed.
    sidekiq: bool,
}

/// The cargo target dir: `$CARGO_TARGET_DIR`, else the workspace's
/// `target/`.
fn target_dir() -> PathBuf {
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = benches.parent().unwrap_or(benches);
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace.join(d),
        _ => workspace.join("target"),
    }
}

/// Whether `cmd` runs and exits 0, quietly.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `program` is a file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

impl Peers {
    /// Looks for Sidekiq and Celery.
    fn find() -> Peers {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
        let sidekiq =
            on_path("sidekiq") && succeeds(Command::new("ruby").args(["-e", "require 'sidekiq'"]));
        let python = std::env::var_os("PEERS_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("peers-venv/bin/python"));
        let celery = succeeds(Command::new(&python).args(["-c", "import celery, redis"]));
        Peers {
            amqp: std::env::var("PREFORK_RABBITMQ_URL")
                .ok()
                .filter(|u| !u.is_empty()),
            dir,
            python: celery.then_some(python),
            sidekiq,
        }
    }

    /// Why `system` cannot run here, if it cannot.
    fn missing(&self, system: System) -> Option<String> {
        if system.on_rabbitmq() && self.amqp.is_none() {
            return Some("PREFORK_RABBITMQ_URL is not set (no RabbitMQ to run on)".into());
        }
        match system {
            System::Sidekiq if !self.sidekiq => Some(
                "Sidekiq is not installed (no `sidekiq` command, or `ruby -e 'require \"sidekiq\"'` fails)"
                    .into(),
            ),
            System::Celery | System::CeleryRabbit if self.python.is_none() => Some(format!(
                "Celery is not installed (PEERS_PYTHON, else {}, cannot `import celery, redis`)",
                target_dir().join("peers-venv/bin/python").display()
            )),
            _ => None,
        }
    }
}

/// One system's figures from one round.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Jobs enqueued per second.
    enqueue: f64,
    /// Jobs run per second, first to last.
    run: f64,
}

/// The bench's own connection and settings, shared by the measurements.
struct Bench {
    /// `PREFORK_REDIS_URL` with db [`DB`].
    url: String,
    /// The parent's connection: flush, poll, read the stamps.
    conn: redis::Connection,
    /// The options.
    args: Args,
    /// What is installed.
    peers: Peers,
    /// The peers' versions, as their enqueue scripts print them.
    versions: [Option<String>; System::ALL.len()],
    /// Measurements made: each one on RabbitMQ gets a fresh queue.
    measured: u32,
}

impl Bench {
    /// `FLUSHDB` of the bench's db.
    fn flush(&mut self) -> Result<(), String> {
        redis::cmd("FLUSHDB")
            .query::<()>(&mut self.conn)
            .map_err(|e| format!("FLUSHDB: {e}"))
    }

    /// An integer key, 0 when absent.
    fn get(&mut self, key: &str) -> Result<u64, String> {
        redis::cmd("GET")
            .arg(key)
            .query::<Option<u64>>(&mut self.conn)
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("GET {key}: {e}"))
    }

    /// The broker `system`'s jobs go through, and the queue name of the
    /// current measurement there (prefork's and Celery's alike).
    fn broker(&self, system: System) -> (String, String) {
        match (&self.peers.amqp, system.on_rabbitmq()) {
            (Some(amqp), true) => (
                amqp.clone(),
                format!("peers-{}-{}", std::process::id(), self.measured),
            ),
            _ if system.is_celery() => (self.url.clone(), "celery".into()),
            _ => (self.url.clone(), QUEUE.into()),
        }
    }

    /// The environment every peer process of `system` gets.
    fn peer_env(&self, system: System, cmd: &mut Command) {
        let (broker, queue) = self.broker(system);
        cmd.current_dir(&self.peers.dir)
            .env("REDIS_URL", &self.url)
            .env("PEERS_BROKER", &broker)
            .env("PEERS_QUEUE", &queue)
            .env("PEERS_URL", &self.url)
            .env("PEERS_KEY", KEY)
            .env("PEERS_N", self.args.jobs.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("C_FORCE_ROOT", "1");
    }

    /// Enqueues the round's jobs for `system`; returns the seconds the
    /// enqueue took, and the peer's version when it printed one.
    fn enqueue(&mut self, system: System) -> Result<(f64, Option<String>), String> {
        let n = self.args.jobs;
        let mut cmd = match system {
            System::Sidekiq => {
                let mut c = Command::new("ruby");
                c.arg("sidekiq_enqueue.rb");
                c
            }
            System::Celery | System::CeleryRabbit => {
                let mut c = Command::new(self.peers.python.as_ref().expect("checked"));
                c.arg("celery_enqueue.py");
                c
            }
            System::Pull | System::Dispatch | System::PullRabbit | System::DispatchRabbit => {
                let (broker, queue) = self.broker(system);
                let broker = prefork::broker_url(&broker).map_err(|e| e.to_string())?;
                let mut jobs = Enqueuer::new(broker.open_queue(&queue).map_err(|e| e.to_string())?);
                let args = vec![(); n as usize];
                let t = Instant::now();
                jobs.enqueue_batch("incr", &args)
                    .map_err(|e| format!("enqueue_batch: {e}"))?;
                return Ok((t.elapsed().as_secs_f64(), None));
            }
        };
        self.peer_env(system, &mut cmd);
        cmd.arg(n.to_string()).stdin(Stdio::null());
        let out = cmd
            .output()
            .map_err(|e| format!("could not start the enqueue script: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("enqueue_secs="));
        let (Some(line), true) = (line, out.status.success()) else {
            return Err(format!(
                "the enqueue script failed ({}):\n{}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        };
        let mut secs = None;
        let mut version = None;
        for word in line.split_whitespace() {
            if let Some(s) = word.strip_prefix("enqueue_secs=") {
                secs = s.parse().ok();
            } else if let Some(v) = word.strip_prefix("version=") {
                version = Some(v.to_owned());
            }
        }
        let secs = secs.ok_or(format!("the enqueue script printed {line:?}"))?;
        Ok((secs, version))
    }

    /// Starts `system`'s workers in a process group of their own, their
    /// output going to `log`.
    fn spawn(&self, system: System, log: &Path) -> Result<Child, String> {
        let mut cmd = match system {
            System::Sidekiq => {
                let mut c = Command::new("sidekiq");
                c.arg("-r")
                    .arg(self.peers.dir.join("sidekiq_jobs.rb"))
                    .args(["-c", &WORKERS.to_string(), "-q", "default"]);
                c
            }
            System::Celery | System::CeleryRabbit => {
                let mut c = Command::new(self.peers.python.as_ref().expect("checked"));
                c.args(["-m", "celery", "-A", "tasks", "worker", "--pool", "prefork"])
                    .args(["-c", &WORKERS.to_string(), "-l", "warning"]);
                c
            }
            System::Pull | System::Dispatch | System::PullRabbit | System::DispatchRabbit => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.env(
                    "PEERS_CHILD",
                    system.prefork_mode().expect("a prefork system"),
                );
                c
            }
        };
        self.peer_env(system, &mut cmd);
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not start the workers: {e}"))
    }

    /// One measurement of `system`: flush, enqueue, start the workers,
    /// wait for the counter to reach N, read the stamps, stop the workers.
    fn measure(&mut self, system: System) -> Result<Sample, String> {
        let n = self.args.jobs;
        self.measured += 1;
        self.flush()?;
        let (secs, version) = self.enqueue(system)?;
        if version.is_some() {
            self.versions[system as usize] = version;
        }
        let log = std::env::temp_dir().join(format!(
            "prefork-peers-{}-{system:?}.log",
            std::process::id()
        ));
        let mut child = self.spawn(system, &log)?;
        let waited = self.wait_for(n, &mut child);
        stop(&mut child);
        let extra = self.get(KEY).unwrap_or(0).saturating_sub(n);
        let stamps = waited.and_then(|()| Ok((self.get(&stamp(1))?, self.get(&stamp(2))?)));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        let (first, last) =
            stamps.map_err(|e| format!("{e}\nits output ends:\n{}", tail(&text)))?;
        if extra > 0 {
            println!("peers: note: {extra} jobs of {system:?} ran more than once");
        }
        if first == 0 || last <= first {
            return Err(format!("bad stamps: t_first {first}, t_last {last}"));
        }
        Ok(Sample {
            enqueue: n as f64 / secs,
            run: (n - 1) as f64 / ((last - first) as f64 / 1e6),
        })
    }

    /// Polls the counter until it reaches `n`; fails when it stalls for
    /// [`STALL`] or the workers exit.
    fn wait_for(&mut self, n: u64, child: &mut Child) -> Result<(), String> {
        let mut seen = 0;
        let mut moved = Instant::now();
        loop {
            let v = self.get(KEY)?;
            if v >= n {
                return Ok(());
            }
            if v != seen {
                seen = v;
                moved = Instant::now();
            } else if moved.elapsed() > STALL {
                return Err(format!("stalled at {v} of {n} jobs for {STALL:?}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the workers exited ({status}) at {v} of {n} jobs"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The key of the first (1) or last (2) stamp.
fn stamp(which: u8) -> String {
    format!("{KEY}:{}", if which == 1 { "t_first" } else { "t_last" })
}

/// The last lines of a log.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Sends `signal` to the process group of `child` (its leader).
fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

/// Stops a measurement's process tree: TERM to its group, KILL after 5 s
/// (and to any straggler of the group once the leader is gone).
fn stop(child: &mut Child) {
    signal_group(child, "TERM");
    let limit = Instant::now() + Duration::from_secs(5);
    while Instant::now() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(child, "KILL");
    let _ = child.wait();
}

/// The median of some figures.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `n` with thousands separators, no decimals.
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A short description of the machine and the run, for the markdown file.
fn machine_note(bench: &mut Bench) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut bench.conn)
        .unwrap_or_default();
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    format!(
        "{date}, {cores} cores, redis-server {redis_version} on loopback; {} jobs a measurement, \
         median of {} interleaved rounds",
        thousands(bench.args.jobs as f64),
        bench.args.rounds
    )
}

/// The physical bound of the job shape, measured beside the systems in
/// each round: `redis-benchmark -c 2 -n N INCR` on the same server, two
/// clients each waiting for one round trip at a time, which is what two
/// workers doing one `INCR` a job (and nothing else) would reach. `None`
/// when `redis-benchmark` is not on `PATH` or its output does not parse.
fn incr_bound(url: &str, n: u64) -> Option<f64> {
    let authority = url.strip_prefix("redis://")?.split(['/', '?']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let out = Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-c", "2", "-n"])
        .arg(n.to_string())
        .args(["-q", "--csv", "INCR", "peers:bound"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    // `--csv`: a header line, then "INCR peers:bound","<rps>",...
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(',').nth(1))
        .find_map(|v| v.trim_matches('"').parse::<f64>().ok())
}

/// A markdown table of `rows` (medians of enqueue and run jobs/s) with
/// each row's run rate as a ratio to `base`'s, headed `vs {name}`.
fn ratio_table(
    bench: &Bench,
    medians: &[Option<(f64, f64)>],
    rows: &[System],
    base: System,
    name: &str,
) -> String {
    let base = medians[base as usize];
    let mut table = format!(
        "| system | enqueue jobs/s | jobs/s (median of {}) | vs {name} |\n|---|---|---|---|\n",
        bench.args.rounds
    );
    for &s in rows {
        let label = s.label(bench.versions[s as usize].as_deref());
        let Some((enq, run)) = medians[s as usize] else {
            let _ = writeln!(table, "| {label} | failed | failed | - |");
            continue;
        };
        let ratio = base.map_or("-".to_owned(), |(_, b)| format!("{:.2}x", run / b));
        let _ = writeln!(
            table,
            "| {label} | {} | {} | {ratio} |",
            thousands(enq),
            thousands(run)
        );
    }
    table
}

/// Prints why the bench cannot run, then exits: 1 when the xtask asked
/// for everything (`PEERS_REQUIRE=1`), else 0 (a skip).
fn skip(why: &str) -> ! {
    let required = std::env::var("PEERS_REQUIRE").is_ok_and(|v| v == "1");
    eprintln!(
        "peers: {why}; `cargo xtask bench peers` installs the peers and starts a redis-server"
    );
    std::process::exit(if required { 1 } else { 0 });
}

fn main() {
    if let Ok(mode) = std::env::var("PEERS_CHILD") {
        pool_main(&mode);
    }
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("peers: {e}");
        std::process::exit(2);
    });
    let url = match std::env::var("PREFORK_REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => skip("PREFORK_REDIS_URL is not set: nothing to run"),
    };
    let url = bench_db_url(&url).unwrap_or_else(|e| skip(&e));
    let conn = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| skip(&format!("cannot reach {url}: {e}")));
    let peers = Peers::find();
    let mut systems = Vec::new();
    for s in System::ALL {
        match peers.missing(s) {
            Some(why) => {
                if std::env::var("PEERS_REQUIRE").is_ok_and(|v| v == "1") {
                    skip(&why);
                }
                println!("peers: {why}: skipping {s:?}; `cargo xtask bench peers` installs it");
            }
            None => systems.push(s),
        }
    }
    let mut bench = Bench {
        url,
        conn,
        args,
        peers,
        versions: Default::default(),
        measured: 0,
    };
    println!(
        "peers: {} jobs a measurement, {} rounds, on {}",
        bench.args.jobs, bench.args.rounds, bench.url
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); System::ALL.len()];
    let mut bounds = Vec::new();
    for round in 1..=bench.args.rounds {
        if let Some(rps) = incr_bound(&bench.url, bench.args.jobs) {
            println!(
                "round {round}/{}: {:<40} run {:>7} INCR/s",
                bench.args.rounds,
                "redis-benchmark -c 2 INCR (the bound)",
                thousands(rps)
            );
            bounds.push(rps);
        }
        for &s in &systems {
            match bench.measure(s) {
                Ok(sample) => {
                    println!(
                        "round {round}/{}: {:<40} enqueue {:>9} jobs/s, run {:>7} jobs/s",
                        bench.args.rounds,
                        s.label(bench.versions[s as usize].as_deref()),
                        thousands(sample.enqueue),
                        thousands(sample.run)
                    );
                    samples[s as usize].push(sample);
                }
                Err(e) => println!("round {round}: {s:?} failed: {e}"),
            }
        }
    }
    let _ = bench.flush();
    let medians: Vec<Option<(f64, f64)>> = samples
        .iter()
        .map(|v| {
            (!v.is_empty()).then(|| {
                (
                    median(v.iter().map(|s| s.enqueue).collect()),
                    median(v.iter().map(|s| s.run).collect()),
                )
            })
        })
        .collect();
    let base = medians[System::Sidekiq as usize];
    let on_redis: Vec<System> = systems
        .iter()
        .copied()
        .filter(|s| !s.on_rabbitmq())
        .collect();
    let on_rabbit: Vec<System> = systems
        .iter()
        .copied()
        .filter(|s| s.on_rabbitmq())
        .collect();
    let mut table = ratio_table(&bench, &medians, &on_redis, System::Sidekiq, "Sidekiq");
    let enqueue_ratios: Vec<String> = base.map_or(Vec::new(), |(b, _)| {
        on_redis
            .iter()
            .filter_map(|&s| Some(format!("{s:?} {:.2}x", medians[s as usize]?.0 / b)))
            .collect()
    });
    if !bounds.is_empty() {
        let bound = median(bounds);
        let ratio = base.map_or("-".to_owned(), |(_, b)| format!("{:.2}x", bound / b));
        let _ = writeln!(
            table,
            "| redis-benchmark -c 2 INCR: the bound (2 clients, one round trip at a time, nothing else) | - | {} | {ratio} |",
            thousands(bound)
        );
        let shares: Vec<String> = on_redis
            .iter()
            .filter_map(|&s| {
                let (_, run) = medians[s as usize]?;
                Some(format!("{s:?} {:.0}%", 100.0 * run / bound))
            })
            .collect();
        let _ = writeln!(table, "\nshare of the bound: {}", shares.join(", "));
    }
    if !on_rabbit.is_empty() {
        table.push_str("\nOn RabbitMQ (Celery's home broker; the counter stays on redis):\n\n");
        table.push_str(&ratio_table(
            &bench,
            &medians,
            &on_rabbit,
            System::CeleryRabbit,
            "Celery on RabbitMQ",
        ));
    }
    let note = machine_note(&mut bench);
    println!("\n{note}\n\n{table}");
    if !enqueue_ratios.is_empty() {
        println!(
            "enqueue vs Sidekiq's push_bulk: {}",
            enqueue_ratios.join(", ")
        );
    }
    let out = std::env::var_os("PEERS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("peers.md"));
    let md = format!(
        "# peers bench\n\n{note}.\n\n{table}\nenqueue vs Sidekiq's push_bulk: {}\n",
        enqueue_ratios.join(", ")
    );
    match std::fs::write(&out, md) {
        Ok(()) => println!("peers: wrote {}", out.display()),
        Err(e) => println!("peers: could not write {}: {e}", out.display()),
    }
}
