//! `prefork demo`: a real pool on the embedded broker processing a real
//! batch, with a progress bar on stderr and a summary on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prefork_broker::Broker;
use prefork_jobs::Enqueuer;

use crate::events::Tail;

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How many jobs to enqueue.
    pub jobs: u64,
    /// Worker processes.
    pub workers: usize,
    /// The spool directory (a fresh one is made and removed when `None`).
    pub dir: Option<PathBuf>,
    /// The `prefork` binary that runs the pool.
    pub exe: PathBuf,
    /// Draw the progress bar.
    pub progress: bool,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Jobs enqueued.
    pub jobs: u64,
    /// Jobs acknowledged.
    pub done: u64,
    /// Retries (failed attempts given back).
    pub retried: u64,
    /// Jobs in the dead letters.
    pub dead: u64,
    /// From the pool's start to the last job's end.
    pub elapsed: Duration,
    /// Enqueue-to-finish latency, median.
    pub p50: Duration,
    /// Enqueue-to-finish latency, 99th percentile.
    pub p99: Duration,
    /// Dead-letter reasons, with counts.
    pub reasons: Vec<(String, usize)>,
}

impl Summary {
    /// Finished jobs per second.
    pub fn rate(&self) -> f64 {
        (self.done + self.dead) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "jobs      {}", self.jobs)?;
        writeln!(f, "done      {}", self.done)?;
        writeln!(
            f,
            "retried   {} (failed attempts retried with backoff)",
            self.retried
        )?;
        writeln!(f, "dead      {}", self.dead)?;
        writeln!(f, "time      {:.2} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "rate      {:.0} jobs/s", self.rate())?;
        writeln!(
            f,
            "latency   p50 {:.1} ms, p99 {:.1} ms (enqueue to finish; all jobs enqueued up front)",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
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
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(opts: &DemoOptions, dir: &Path) -> anyhow::Result<Summary> {
    let spool = prefork_spool::Spool::with_options(
        dir,
        prefork_spool::Options::default().durability(prefork_spool::Durability::Buffered),
    )?;
    let queue = "demo";
    let mut enq = Enqueuer::new(spool.queue(queue)?);
    let before = enq.broker().stats()?;
    if before.ready + before.delayed + before.claimed > 0 {
        bail!(
            "queue {queue:?} in {} is not empty; use a fresh directory",
            dir.display()
        );
    }
    let dead_before = before.dead as u64;
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
    let started = Instant::now();
    let mut child = Command::new(&opts.exe)
        .args([
            "work",
            "--queue",
            queue,
            "--retry-base-ms",
            "20",
            "--workers",
        ])
        .arg(opts.workers.to_string())
        .arg("--broker")
        .arg(format!("spool://{}", dir.display()))
        .arg("--events")
        .arg(&events)
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
        if tail.tally.finished() >= opts.jobs {
            break Ok(started.elapsed());
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
    let elapsed = outcome?;
    if !status.success() {
        bail!("the pool exited with {status} after a graceful stop");
    }
    let mut q = spool.queue(queue)?;
    let stats = q.stats()?;
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
        jobs: opts.jobs,
        done: t.done,
        retried: t.retried,
        dead: t.dead,
        elapsed,
        p50: t.latency(0.5).unwrap_or_default(),
        p99: t.latency(0.99).unwrap_or_default(),
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
