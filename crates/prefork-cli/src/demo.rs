//! `prefork demo`: a real pool on the embedded broker processing a real
//! batch, with a progress bar on stderr and a summary on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prefork::Enqueuer;
use prefork::broker::Broker;
use prefork::spool::{Durability, Options, Spool};

use crate::Mode;
use crate::events::{Tail, unix_us};

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How many jobs to enqueue.
    pub jobs: u64,
    /// Worker processes.
    pub workers: usize,
    /// Pull (each worker fetches) or dispatch (one feeder fetches, the
    /// master routes).
    pub mode: Mode,
    /// The spool directory (a fresh one is made and removed when `None`).
    pub dir: Option<PathBuf>,
    /// The `prefork` binary that runs the pool.
    pub exe: PathBuf,
    /// Draw the progress bar.
    pub progress: bool,
}

/// What the demo measured. Every duration says where it starts and ends.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Pull or dispatch.
    pub mode: Mode,
    /// Worker processes.
    pub workers: usize,
    /// Jobs enqueued.
    pub jobs: u64,
    /// From the first enqueue to starting the pool (the whole batch is
    /// enqueued before the pool starts).
    pub enqueue: Duration,
    /// Jobs acknowledged.
    pub done: u64,
    /// Retries (failed attempts given back).
    pub retried: u64,
    /// Jobs in the dead letters.
    pub dead: u64,
    /// From starting the pool (fork and start-up included) to the last
    /// job's report.
    pub run: Duration,
    /// Handler run time (start to finish of one attempt): median and 99th
    /// percentile, over every attempt.
    pub handler: (Duration, Duration),
    /// Enqueue to start of the attempt that finished each job: median and
    /// 99th percentile. It includes the time spent queued behind the
    /// backlog (and, for retried jobs, the backoff).
    pub wait: (Duration, Duration),
    /// Dead-letter reasons, with counts.
    pub reasons: Vec<(String, usize)>,
}

impl Summary {
    /// Finished jobs (done plus dead) per second of [`run`](Summary::run).
    pub fn rate(&self) -> f64 {
        (self.done + self.dead) as f64 / self.run.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "mode      {}, {} workers, embedded spool broker",
            self.mode, self.workers
        )?;
        writeln!(
            f,
            "jobs      {} (enqueued in {:.3} s, before the pool started)",
            self.jobs,
            self.enqueue.as_secs_f64()
        )?;
        writeln!(f, "done      {}", self.done)?;
        writeln!(
            f,
            "retried   {} (failed attempts retried with backoff)",
            self.retried
        )?;
        writeln!(f, "dead      {}", self.dead)?;
        writeln!(
            f,
            "run       {:.3} s (from starting the pool, fork included, to the last job's report)",
            self.run.as_secs_f64()
        )?;
        writeln!(
            f,
            "rate      {:.0} jobs/s (done + dead, over the run)",
            self.rate()
        )?;
        writeln!(
            f,
            "handler   p50 {:.2} ms, p99 {:.2} ms (start to finish of one attempt)",
            ms(self.handler.0),
            ms(self.handler.1)
        )?;
        writeln!(
            f,
            "waited    p50 {:.0} ms, p99 {:.0} ms (enqueue to start; the whole batch was queued first, so most of it is time behind the backlog)",
            ms(self.wait.0),
            ms(self.wait.1)
        )?;
        for (reason, n) in &self.reasons {
            writeln!(f, "  dead x{n}: {reason}")?;
        }
        Ok(())
    }
}

/// The demo's job mix for job `i`: `(job, args)`, or raw bytes for the
/// malformed ones.
fn job_for(i: u64) -> Result<(&'static str, serde_json::Value), &'static [u8]> {
    match i % 200 {
        17 => Err(b"this is not an envelope"),
        71 => Ok(("no_such_job", serde_json::Value::Null)),
        113 => Ok(("sleep", serde_json::json!({"ms": "soon"}))), // bad arguments
        n if n % 10 == 3 => Ok(("flaky", serde_json::json!({"failures": 1}))),
        n if n % 10 < 3 => Ok(("sleep", serde_json::json!({"ms": 1 + n % 3}))),
        _ => Ok(("noop", serde_json::Value::Null)),
    }
}

/// Runs the demo: enqueue, start `prefork work` as a child, show progress
/// until every job is done or dead, stop the pool with QUIT, summarize.
///
/// # Errors
///
/// When the spool cannot be used, the pool cannot be started, or it exits
/// before the queue is drained.
pub fn run(opts: &DemoOptions) -> anyhow::Result<Summary> {
    let fresh = opts.dir.is_none();
    let dir = opts.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("prefork-demo-{}", std::process::id()))
    });
    let result = run_in(opts, &dir);
    // A failed run keeps its directory: the error names the pool's log in it.
    if fresh && result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(opts: &DemoOptions, dir: &Path) -> anyhow::Result<Summary> {
    let spool = Spool::with_options(dir, Options::default().durability(Durability::Buffered))?;
    let queue = "demo";
    let mut enq = Enqueuer::new(spool.queue(queue)?);
    let before = enq.broker().counts()?;
    if before.ready + before.delayed + before.claimed > 0 {
        bail!(
            "queue {queue:?} in {} is not empty; use a fresh directory",
            dir.display()
        );
    }
    let dead_before = before.dead as u64;
    let enqueue_started = Instant::now();
    for i in 0..opts.jobs {
        match job_for(i) {
            Ok((job, args)) => {
                enq.enqueue(job, &args)?;
            }
            Err(raw) => enq.broker().publish(raw, Duration::ZERO)?,
        }
    }
    let events = dir.join(format!("events-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&events);
    let log = std::fs::File::create(dir.join("pool.log"))?;
    let enqueue = enqueue_started.elapsed();
    let started = Instant::now();
    let started_us = unix_us();
    let mut child = Command::new(&opts.exe)
        .args([
            "work",
            "--queue",
            queue,
            "--retry-base-ms",
            "20",
            "--mode",
            &opts.mode.to_string(),
            "--workers",
        ])
        .arg(opts.workers.to_string())
        .arg("--broker")
        .arg(format!("spool://{}", dir.display()))
        .arg("--events")
        .arg(&events)
        // The demo's pool is its own business: it takes no socket another
        // master (`prefork work`) may hold.
        .args(["--control-socket", crate::control::OFF])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", opts.exe.display()))?;
    let pid = Pid::from_raw(child.id() as i32);
    let mut tail = Tail::new(&events);
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let outcome = loop {
        tail.poll();
        // QUIT only once the master said it runs: before, its handlers may
        // not be installed yet, and QUIT would kill it.
        if tail.tally.running && tail.tally.finished() >= opts.jobs {
            break Ok(());
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "the pool exited ({status}) with {} of {} jobs finished; see {}",
                tail.tally.finished(),
                opts.jobs,
                dir.join("pool.log").display()
            ));
        }
        if opts.progress && last_draw.elapsed() >= Duration::from_millis(100) {
            last_draw = Instant::now();
            draw(&tail.tally, opts.jobs, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if opts.progress {
        draw(&tail.tally, opts.jobs, started.elapsed());
        eprintln!();
    }
    let _ = kill(pid, Signal::SIGQUIT);
    let status = child.wait()?;
    outcome?;
    if !status.success() {
        bail!("the pool exited with {status} after a graceful stop");
    }
    let mut q = spool.queue(queue)?;
    let stats = q.counts()?;
    let mut reasons: Vec<(String, usize)> = Vec::new();
    for d in q.dead_letters(usize::MAX)? {
        let short = d
            .reason()
            .split(": ")
            .next()
            .unwrap_or(d.reason())
            .to_owned();
        match reasons.iter_mut().find(|(r, _)| *r == short) {
            Some((_, n)) => *n += 1,
            None => reasons.push((short, 1)),
        }
    }
    let t = &tail.tally;
    if stats.dead as u64 - dead_before != t.dead || stats.ready + stats.delayed + stats.claimed != 0
    {
        bail!("the broker's counts ({stats:?}) disagree with the workers' reports ({t:?})");
    }
    Ok(Summary {
        mode: opts.mode,
        workers: opts.workers,
        jobs: opts.jobs,
        enqueue,
        done: t.done,
        retried: t.retried,
        dead: t.dead,
        run: Duration::from_micros(t.last_finish_us.saturating_sub(started_us)),
        handler: (
            t.run(0.5).unwrap_or_default(),
            t.run(0.99).unwrap_or_default(),
        ),
        wait: (
            t.wait(0.5).unwrap_or_default(),
            t.wait(0.99).unwrap_or_default(),
        ),
        reasons,
    })
}

fn draw(t: &crate::events::Tally, total: u64, elapsed: Duration) {
    const WIDTH: u64 = 30;
    let done = t.finished().min(total);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH) as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{}{}] {done}/{total}  done {}  retried {}  dead {}  {rate:.0} jobs/s ",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        t.done,
        t.retried,
        t.dead
    );
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_has_every_kind() {
        let kinds: Vec<_> = (0..200).map(job_for).collect();
        assert_eq!(kinds.iter().filter(|k| k.is_err()).count(), 1);
        for name in ["no_such_job", "flaky", "sleep", "noop"] {
            assert!(
                kinds.iter().any(|k| matches!(k, Ok((n, _)) if *n == name)),
                "{name}"
            );
        }
    }
}
