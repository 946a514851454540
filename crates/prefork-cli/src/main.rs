//! `prefork`: run a job worker pool, enqueue jobs, list, re-drive and
//! delete dead letters, show queue counts, and `prefork demo`, the quick
//! start.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use prefork::Enqueuer;
use prefork::broker::{Broker, DeliveryId};
use prefork_cli::config::{self, Override};
use prefork_cli::{Mode, control, demo, operator, pool};

/// Pre-forking job workers on a broker (the embedded spool by default).
#[derive(Debug, Parser)]
#[command(name = "prefork", version, about)]
struct Cli {
    /// Broker URL: spool:///dir (default: $TMPDIR/prefork-spool),
    /// redis://[:password@]host:port[/db], beanstalk://host:port,
    /// amqp://user:password@host:port/vhost (setting `broker`, also
    /// $PREFORK_BROKER).
    #[arg(long, global = true)]
    broker: Option<String>,
    /// Queue name (setting `queue`, default `default`).
    #[arg(long, global = true)]
    queue: Option<String>,
    /// Claim timeout, in seconds: how long a fetched job that is neither
    /// settled nor renewed stays with its holder before the broker hands
    /// it out again. Redis: the lease (min-idle time of reclaims, default
    /// 30); spool: the claim lease (default 60; a dead holder's claims come
    /// back at once anyway); beanstalkd: the TTR of the jobs this command
    /// puts (default 60; a dead holder's jobs come back at once anyway).
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_secs)]
    lease: Option<Duration>,
    /// A TOML config file (see docs/config.md); PREFORK_* variables and
    /// flags override its settings.
    #[arg(long, global = true, value_name = "FILE", env = "PREFORK_CONFIG")]
    config: Option<PathBuf>,
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
    /// TERM/INT (quick), from --config, PREFORK_* variables and flags.
    #[command(visible_alias = "work")]
    Run(pool::PoolArgs),
    /// Check a config file (default: --config) with the PREFORK_*
    /// variables over it: print every problem and fail, or print the
    /// effective settings. Connects to nothing.
    CheckConfig {
        /// The file.
        file: Option<PathBuf>,
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
    // The settings: defaults < --config < PREFORK_* < flags.
    let mut flags = Vec::new();
    let mut add = |path, flag, value: Option<String>| {
        if let Some(value) = value {
            flags.push(Override { path, value, flag });
        }
    };
    add("broker", "--broker", cli.broker.clone());
    add("queue", "--queue", cli.queue.clone());
    add(
        "lease",
        "--lease",
        cli.lease.map(|d| format!("{}ms", d.as_secs_f64() * 1e3)),
    );
    let mut file = cli.config.clone();
    match &cli.command {
        Cmd::Run(args) => flags.extend(args.overrides()),
        Cmd::CheckConfig { file: Some(f) } => {
            if file.as_ref().is_some_and(|c| c != f) {
                anyhow::bail!("check-config: give the file once (FILE or --config)");
            }
            file = Some(f.clone());
        }
        Cmd::CheckConfig { file: None } if file.is_none() => {
            anyhow::bail!("check-config: which file? (check-config FILE)")
        }
        _ => {}
    }
    let loaded = config::load(file.as_deref(), std::env::vars(), &flags)?;
    let url = loaded.broker_url()?;
    let queue = loaded.settings.queue.clone();
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
                dir: match loaded.settings.broker {
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
        Cmd::Run(args) => Ok(pool::run(&loaded, &args)?.exit_code()),
        Cmd::CheckConfig { .. } => {
            for (var, near) in &loaded.near_misses {
                eprintln!("prefork: warning: ${var} is not a setting (did you mean ${near}?)");
            }
            print!("{}", loaded.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Enqueue {
            job,
            args,
            count,
            delay_ms,
        } => {
            let args = operator::read_args(&args, std::io::stdin().lock())?;
            let mut enq = Enqueuer::new(url.open_queue(&queue)?);
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
            let mut q = url.open_queue(&queue)?;
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
            let s = url.open_queue(&queue)?.stats()?;
            if json {
                println!("{}", operator::stats_json(&queue, &s));
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
