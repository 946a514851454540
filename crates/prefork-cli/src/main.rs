//! `prefork`: run a job worker pool, enqueue jobs, list, re-drive and
//! delete dead letters, show queue counts, and `prefork demo`, the quick
//! start.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use prefork::broker::{Broker, DeliveryId};
use prefork::{DispatchFeeder, DispatchWorker, Enqueuer, JobWorker, TimeLimits};
use prefork_cli::{Mode, control, demo, events, examples, operator};

/// Pre-forking job workers on a broker (the embedded spool by default).
#[derive(Debug, Parser)]
#[command(name = "prefork", version, about)]
struct Cli {
    /// Broker URL: spool:///dir (default: $TMPDIR/prefork-spool),
    /// redis://[:password@]host:port[/db], beanstalk://host:port,
    /// amqp://user:password@host:port/vhost.
    #[arg(long, global = true, env = "PREFORK_BROKER")]
    broker: Option<String>,
    /// Queue name.
    #[arg(long, global = true, default_value = "default")]
    queue: String,
    /// Claim timeout, in seconds: how long a fetched job that is neither
    /// settled nor renewed stays with its holder before the broker hands
    /// it out again. Redis: the lease (min-idle time of reclaims, default
    /// 30); spool: the claim lease (default 60; a dead holder's claims come
    /// back at once anyway); beanstalkd: the TTR of the jobs this command
    /// puts (default 60; a dead holder's jobs come back at once anyway).
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_secs)]
    lease: Option<Duration>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enqueue a batch of example jobs, run a pool until the queue drains,
    /// print a summary.
    Demo {
        /// Jobs to enqueue.
        #[arg(long, default_value_t = 2000)]
        jobs: u64,
        /// Worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Pull (each worker fetches) or dispatch (one feeder fetches, the
        /// master routes each job to an idle worker).
        #[arg(long, value_enum, default_value_t = Mode::Pull)]
        mode: Mode,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a pool of the example job handlers until QUIT (graceful) or
    /// TERM/INT (quick).
    Work {
        /// Worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Pull: each worker owns a broker connection and fetches for
        /// itself. Dispatch: one feeder process owns the connection and
        /// fetches only for idle workers; the master hands each job to an
        /// idle worker and settles a killed worker's job at once.
        #[arg(long, value_enum, default_value_t = Mode::Pull)]
        mode: Mode,
        /// Jobs claimed per fetch, fixed (pull mode; default: an adaptive
        /// batch of about 10 ms of work; the dispatch feeder fetches as
        /// many as there are idle workers).
        #[arg(long)]
        prefetch: Option<usize>,
        /// Liveness timeout of a worker, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// First retry delay, in ms (doubling, capped at 64x).
        #[arg(long, default_value_t = 1000)]
        retry_base_ms: u64,
        /// Soft time limit of every job, in ms.
        #[arg(long)]
        soft_limit_ms: Option<u64>,
        /// Hard time limit of every job, in ms (the worker is killed).
        #[arg(long)]
        hard_limit_ms: Option<u64>,
        /// Append one line per settled job to this file (see `events`).
        #[arg(long)]
        events: Option<PathBuf>,
        /// The master's control socket, for `status`, `scale`, `stop` and
        /// `reload` (mode 0600; `none`: no socket). Default:
        /// $XDG_RUNTIME_DIR/prefork/prefork.sock, /run/prefork/prefork.sock
        /// for root, else $TMPDIR/prefork-UID/prefork.sock.
        #[arg(long, env = "PREFORK_CONTROL_SOCKET", value_name = "PATH")]
        control_socket: Option<String>,
        /// A group (name or gid) whose members may use the control socket
        /// too (mode 0660).
        #[arg(long, value_name = "GROUP")]
        control_group: Option<String>,
    },
    /// Show a running master's phase and workers (pid, state, job, jobs
    /// finished, restarts, memory), through its control socket.
    Status {
        /// Print the master's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: control::SocketArg,
    },
    /// Set a running master's number of workers (as TTIN/TTOU do one at a time).
    Scale {
        /// The number of workers wanted (0 pauses the pool).
        workers: usize,
        #[command(flatten)]
        socket: control::SocketArg,
    },
    /// Stop a running master: quick (as TERM) or --graceful (as QUIT).
    Stop {
        /// Let every worker finish its job first (QUIT).
        #[arg(long)]
        graceful: bool,
        /// Wait up to SECS for the master to exit.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        wait: Option<Duration>,
        #[command(flatten)]
        socket: control::SocketArg,
    },
    /// Replace every worker of a running master, one at a time (as HUP).
    Reload {
        #[command(flatten)]
        socket: control::SocketArg,
    },
    /// Enqueue a job: `prefork enqueue sleep '{"ms": 100}'`; prints each
    /// job's id (which `dead redrive` and `dead delete` also take).
    Enqueue {
        /// The job name.
        job: String,
        /// Its arguments, as JSON: inline, `@FILE` to read them from a
        /// file, or `-` to read them from stdin (for arguments too large
        /// for a command line).
        #[arg(default_value = "null")]
        args: String,
        /// Enqueue this many copies.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Delay, in ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Dead letters: list, re-drive or delete.
    Dead {
        #[command(subcommand)]
        action: DeadCmd,
    },
    /// Count the queue's jobs in each state: ready, delayed, claimed (in
    /// flight) and dead ("unknown" where the broker cannot tell).
    Stats {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `--job` and `--reason`.
#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only dead letters of this job name (exact).
    #[arg(long = "job", value_name = "NAME")]
    job: Option<String>,
    /// Only dead letters whose reason contains this text.
    #[arg(long, value_name = "SUBSTRING")]
    reason: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> operator::Filter {
        operator::Filter {
            job: self.job,
            reason: self.reason,
        }
    }
}

/// What `dead redrive` and `dead delete` act on, and how.
#[derive(Debug, clap::Args)]
struct Targets {
    /// Dead letters to act on: the id in the first column of `dead list`,
    /// the job id `enqueue` printed, or the delivery id of the logs.
    #[arg(required_unless_present = "all")]
    ids: Vec<String>,
    /// All dead letters (that pass --job and --reason).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// All or nothing: when an id names no dead letter, do nothing (and
    /// say which); stop at the first error.
    #[arg(long)]
    atomic: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Debug, Subcommand)]
enum DeadCmd {
    /// List dead letters: id, job id and name, attempt, reason, payload.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Put dead letters back in the queue; reports on every id.
    Redrive {
        #[command(flatten)]
        targets: Targets,
    },
    /// Delete dead letters for good; reports on every id.
    Delete {
        #[command(flatten)]
        targets: Targets,
    },
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("want a positive number of seconds, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prefork: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours on a terminal only: not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The control socket's clients need no broker.
    let said = match &cli.command {
        Cmd::Status { json, socket } => Some(control::status(&socket.path(), *json)?),
        Cmd::Scale { workers, socket } => Some(control::scale(&socket.path(), *workers)?),
        Cmd::Stop {
            graceful,
            wait,
            socket,
        } => Some(control::stop(&socket.path(), *graceful, *wait)?),
        Cmd::Reload { socket } => Some(control::reload(&socket.path())?),
        _ => None,
    };
    if let Some(text) = said {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let url = match &cli.broker {
        Some(u) => prefork::broker_url(u)?,
        None => {
            let dir = std::env::temp_dir().join("prefork-spool");
            prefork::broker_url(&format!("spool://{}", dir.display()))?
        }
    };
    let url = match cli.lease {
        Some(lease) => url.with_lease(lease),
        None => url,
    };
    match cli.command {
        Cmd::Demo {
            jobs,
            workers,
            mode,
            quiet,
        } => {
            let opts = demo::DemoOptions {
                jobs,
                workers,
                mode,
                dir: match cli.broker {
                    Some(_) => Some(
                        url.spool()
                            .context("the demo runs on the embedded spool only (spool://DIR)")?
                            .root()
                            .to_owned(),
                    ),
                    None => None,
                },
                exe: std::env::current_exe().context("finding the prefork binary")?,
                progress: !quiet,
            };
            eprintln!(
                "prefork demo: {jobs} jobs, {workers} workers, {mode} mode, embedded spool broker"
            );
            let summary = demo::run(&opts)?;
            print!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Work {
            workers,
            mode,
            prefetch,
            timeout,
            retry_base_ms,
            soft_limit_ms,
            hard_limit_ms,
            events,
            control_socket,
            control_group,
        } => {
            init_logs();
            let registry = || {
                let mut jobs = examples::registry(Duration::from_millis(retry_base_ms));
                let mut limits = TimeLimits::none();
                limits.soft = soft_limit_ms.map(Duration::from_millis);
                limits.hard = hard_limit_ms.map(Duration::from_millis);
                jobs.default_time_limits(limits);
                jobs
            };
            // Fail now, with the broker's name, rather than in every forked
            // worker; the workers (or the feeder) open their own handles
            // after the fork.
            url.check(&cli.queue)?;
            let mut master = prefork::Master::builder()
                .name(prefork_cli::MASTER_NAME)
                .workers(workers)
                .timeout(Duration::from_secs(timeout));
            if let Some(path) = control::socket_for_work(control_socket.as_deref())? {
                master = master.control_socket(path);
            }
            if let Some(group) = &control_group {
                master = master.control_group(control::group_id(group)?);
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
            let report = match mode {
                Mode::Pull => {
                    let mut worker = JobWorker::new(registry(), url.clone(), &cli.queue);
                    if let Some(n) = prefetch {
                        worker = worker.prefetch(n);
                    }
                    if let Some(path) = events {
                        worker = worker.on_outcome(events::writer(path));
                    }
                    master.run(worker)?
                }
                Mode::Dispatch => {
                    // The feeder reads the registry for the retry policy of
                    // jobs lost with their worker; the workers run it.
                    let feeder = DispatchFeeder::new(registry(), url.clone(), &cli.queue);
                    let mut worker = DispatchWorker::new(registry());
                    if let Some(path) = events {
                        worker = worker.on_outcome(events::writer(path));
                    }
                    master.run_dispatch(feeder, worker)?
                }
            };
            Ok(report.exit_code())
        }
        Cmd::Enqueue {
            job,
            args,
            count,
            delay_ms,
        } => {
            let args = operator::read_args(&args, std::io::stdin().lock())?;
            let mut enq = Enqueuer::new(url.open_queue(&cli.queue)?);
            if delay_ms == 0 {
                // One broker round trip per batch where the broker can.
                let mut left = count;
                while left > 0 {
                    let n = left.min(1000);
                    let chunk = vec![args.clone(); n as usize];
                    for id in enq.enqueue_batch(&job, &chunk)? {
                        println!("{id}");
                    }
                    left -= n;
                }
            } else {
                for _ in 0..count {
                    let id = enq.enqueue_in(&job, &args, Duration::from_millis(delay_ms))?;
                    println!("{id}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dead { action } => {
            let mut q = url.open_queue(&cli.queue)?;
            match action {
                DeadCmd::List {
                    limit,
                    json,
                    filter,
                } => {
                    let filter = filter.filter();
                    let listed = if filter == operator::Filter::default() {
                        q.dead_letters(limit)?
                    } else {
                        q.dead_letters(usize::MAX)?
                    };
                    for d in listed.iter().filter(|d| filter.matches(d)).take(limit) {
                        if json {
                            println!("{}", operator::dead_json(d));
                        } else {
                            println!("{}", operator::dead_line(d));
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                DeadCmd::Redrive { targets } => act(&mut *q, operator::Action::Redrive, targets),
                DeadCmd::Delete { targets } => act(&mut *q, operator::Action::Delete, targets),
            }
        }
        Cmd::Status { .. } | Cmd::Scale { .. } | Cmd::Stop { .. } | Cmd::Reload { .. } => {
            unreachable!("answered above")
        }
        Cmd::Stats { json } => {
            let s = url.open_queue(&cli.queue)?.stats()?;
            if json {
                println!("{}", operator::stats_json(&cli.queue, &s));
            } else {
                println!("{s}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `dead redrive` or `dead delete`: resolves the ids against the dead
/// letters listed, acts on each, prints the report; fails unless every id
/// was done.
fn act(q: &mut dyn Broker, action: operator::Action, t: Targets) -> anyhow::Result<ExitCode> {
    let filter = t.filter.filter();
    if !t.all && filter != operator::Filter::default() {
        anyhow::bail!("--job and --reason select dead letters for --all; with ids, give no filter");
    }
    let dead = q.dead_letters(usize::MAX)?;
    let targets: Vec<(String, Vec<DeliveryId>)> = if t.all {
        dead.iter()
            .filter(|d| filter.matches(d))
            .map(|d| (d.id().to_string(), vec![d.id().clone()]))
            .collect()
    } else {
        operator::resolve(&t.ids, &dead)
    };
    let reports = operator::apply(q, action, &targets, t.atomic);
    if t.json {
        println!("{}", operator::report_json(action, &reports));
    } else {
        print!("{}", operator::report_text(action, &reports, t.atomic));
    }
    Ok(if operator::all_done(&reports) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
