//! `prefork run` (and its older name `work`): a pool of the example job
//! handlers, built from [`Settings`](crate::config::Settings) whichever
//! layer each value came from.

use std::path::PathBuf;

use prefork::jobs::{Registry, RetryPolicy};
use prefork::{DispatchFeeder, DispatchWorker, JobWorker, Report, TimeLimits};

use crate::config::{Loaded, LogFormat, Override, Settings, master_builder};
use crate::{Mode, events, examples};

/// Starts the log subscriber of `[logging]` on stderr (colours on a
/// terminal only).
pub fn init_logs(s: &Settings) {
    // The level was checked when the settings were loaded.
    let filter = tracing_subscriber::EnvFilter::try_new(&s.logging.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match s.logging.format {
        LogFormat::Text => logs.with_ansi(ansi).try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

/// The default retry policy and time limits of `[retry]` and
/// `[time_limits]`, on the example handlers.
pub fn registry(s: &Settings) -> Registry {
    let retry = RetryPolicy::new(s.retry.max_attempts)
        .base(s.retry.base)
        .max_delay(s.retry.max_delay.unwrap_or(s.retry.base * 64))
        .jitter(s.retry.jitter);
    let mut jobs = examples::registry(retry);
    let mut limits = TimeLimits::none();
    limits.soft = s.time_limits.soft;
    limits.hard = s.time_limits.hard;
    jobs.default_time_limits(limits);
    jobs
}

/// Runs the pool until it stops (QUIT, TERM, INT, a control-socket
/// `stop`, or a crash loop) and returns the master's report. From `args`,
/// the flags that are not settings: `--events` (append one line per
/// settled job to that file, what `demo` reads) and the control socket's.
///
/// # Errors
///
/// When the broker cannot be reached (checked once before the fork, with
/// the broker named and any password hidden), or the master cannot start.
pub fn run(loaded: &Loaded, args: &PoolArgs) -> anyhow::Result<Report> {
    let events = args.events.clone();
    let s = &loaded.settings;
    init_logs(s);
    for (var, near) in &loaded.near_misses {
        tracing::warn!(variable = %var, "not a setting, ignored (did you mean {near}?)");
    }
    let url = loaded.broker_url()?;
    // Fail now, with the broker's name, rather than in every forked
    // worker; the workers (or the feeder) open their own handles after
    // the fork.
    url.check(&s.queue)?;
    let mut master = master_builder(s);
    if let Some(path) = crate::control::socket_for_work(args.control_socket.as_deref())? {
        master = master.control_socket(path);
    }
    if let Some(group) = &args.control_group {
        master = master.control_group(crate::control::group_id(group)?);
    }
    if let Some(path) = events.clone() {
        master = master.on_phase(move |phase| {
            if phase == prefork::Phase::Running
                && let Err(e) = events::write_running(&path)
            {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the events file");
            }
        });
    }
    let master = master.build()?;
    tracing::info!(
        workers = s.workers,
        mode = %s.mode,
        broker = %url,
        queue = %s.queue,
        config = %loaded.file.as_ref().map_or("none".into(), |f| f.display().to_string()),
        "starting the pool"
    );
    let report = match s.mode {
        Mode::Pull => {
            let mut worker =
                JobWorker::new(registry(s), url, &s.queue).poll_interval(s.poll_interval);
            if let Some(n) = s.prefetch {
                worker = worker.prefetch(n);
            }
            if let Some(path) = events {
                worker = worker.on_outcome(events::writer(path));
            }
            master.run(worker)?
        }
        Mode::Dispatch => {
            // The feeder reads the registry for the retry policy of jobs
            // lost with their worker; the workers run it.
            let feeder = DispatchFeeder::new(registry(s), url, &s.queue).touch_every(s.touch_every);
            let mut worker = DispatchWorker::new(registry(s));
            if let Some(path) = events {
                worker = worker.on_outcome(events::writer(path));
            }
            master.run_dispatch(feeder, worker)?
        }
    };
    Ok(report)
}

/// The flags of `run` (and `work`): each one given overrides its setting
/// in the file and the environment.
#[derive(Debug, Default, clap::Args)]
pub struct PoolArgs {
    /// Worker processes (setting `workers`, default 4).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Pull: each worker owns a broker connection and fetches for
    /// itself. Dispatch: one feeder process owns the connection and
    /// fetches only for idle workers; the master hands each job to an
    /// idle worker and settles a killed worker's job at once (setting
    /// `mode`, default pull).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Jobs claimed per fetch, fixed (pull mode; default: an adaptive
    /// batch of about 10 ms of work; setting `prefetch`).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Liveness timeout of a worker, in seconds (setting `timeout`,
    /// default 30).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// First retry delay, in ms, doubling (setting `retry.base`, default
    /// 1000; the cap `retry.max_delay` defaults to 64 times it).
    #[arg(long, value_name = "MS")]
    pub retry_base_ms: Option<u64>,
    /// Soft time limit of every job, in ms (setting `time_limits.soft`).
    #[arg(long, value_name = "MS")]
    pub soft_limit_ms: Option<u64>,
    /// Hard time limit of every job, in ms: the worker is killed
    /// (setting `time_limits.hard`).
    #[arg(long, value_name = "MS")]
    pub hard_limit_ms: Option<u64>,
    /// Append one line per settled job to this file (see `events`; no
    /// setting: a flag only).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// The master's control socket, for `status`, `scale`, `stop` and
    /// `reload` (mode 0600; `none`: no socket). Default:
    /// $XDG_RUNTIME_DIR/prefork/prefork.sock, /run/prefork/prefork.sock
    /// for root, else $TMPDIR/prefork-UID/prefork.sock (a flag and its
    /// variable only, not a setting of the file yet).
    #[arg(long, env = "PREFORK_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<String>,
    /// A group (name or gid) whose members may use the control socket
    /// too (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
}

impl PoolArgs {
    /// The flags given, as overrides of their settings.
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        let mut add = |path: &'static str, flag: &'static str, value: Option<String>| {
            if let Some(value) = value {
                out.push(Override { path, value, flag });
            }
        };
        add("workers", "--workers", self.workers.map(|n| n.to_string()));
        add("mode", "--mode", self.mode.map(|m| m.to_string()));
        add(
            "prefetch",
            "--prefetch",
            self.prefetch.map(|n| n.to_string()),
        );
        add(
            "timeout",
            "--timeout",
            self.timeout.map(|n| format!("{n}s")),
        );
        add(
            "retry.base",
            "--retry-base-ms",
            self.retry_base_ms.map(|n| format!("{n}ms")),
        );
        add(
            "time_limits.soft",
            "--soft-limit-ms",
            self.soft_limit_ms.map(|n| format!("{n}ms")),
        );
        add(
            "time_limits.hard",
            "--hard-limit-ms",
            self.hard_limit_ms.map(|n| format!("{n}ms")),
        );
        out
    }
}
