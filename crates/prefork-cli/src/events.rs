//! Progress events: each worker appends one short line per settled
//! delivery to a file opened with `O_APPEND` (one `write(2)` per line, so
//! lines from several processes never interleave), and the demo tails it.
//!
//! Line format: `{kind} {enqueued_ms} {started_ms} {ran_us} {finished_us}\n`,
//! kind `D` done, `R` retried, `X` dead letter; `enqueued_ms` is when the
//! envelope says the job was enqueued and `started_ms` when this attempt
//! started (ms since the epoch; `0` when unknown), `ran_us` how long the
//! handler ran, `finished_us` when the worker had reported the outcome (µs
//! since the epoch).
//!
//! The master appends one more line, `P {unix_us}`, when the pool is
//! running (every worker slot had a ready worker, and its signal handlers
//! are installed): the demo waits for it before it may stop the pool.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prefork::jobs::{JobEvent, Outcome};

/// Microseconds since the Unix epoch, now.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// An observer for [`prefork::jobs::JobWorker::on_outcome`] (or
/// [`prefork::jobs::DispatchWorker::on_outcome`]) that appends events to
/// `path`. The file is opened in the worker process on its first
/// event (nothing is opened in the master).
pub fn writer(path: PathBuf) -> impl FnMut(&JobEvent) + 'static {
    let mut file: Option<File> = None;
    move |e: &JobEvent| {
        let kind = match e.outcome {
            Outcome::Done => 'D',
            Outcome::Retry { .. } => 'R',
            Outcome::Dead { .. } => 'X',
        };
        let line = format!(
            "{kind} {} {} {} {}\n",
            e.enqueued_at_ms,
            e.started_at_ms,
            e.ran.as_micros(),
            unix_us()
        );
        if file.is_none() {
            file = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .ok();
        }
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Appends the pool-running line (`P {unix_us}`) to `path`; called by the
/// master's [`on_phase`](prefork::master::Builder::on_phase) hook.
///
/// # Errors
///
/// When the file cannot be opened or written.
pub fn write_running(path: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?
        .write_all(format!("P {}\n", unix_us()).as_bytes())
}

/// Counts read so far from an events file.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Deliveries acknowledged.
    pub done: u64,
    /// Deliveries given back for a retry.
    pub retried: u64,
    /// Deliveries sent to the dead letters.
    pub dead: u64,
    /// Enqueue-to-start of the attempt that finished each job (done or
    /// dead), in µs (ms resolution); jobs without an enqueue time are left
    /// out.
    pub waits_us: Vec<u64>,
    /// Handler run time (start to finish) of every attempt, in µs.
    pub runs_us: Vec<u64>,
    /// When the last attempt was reported (µs since the epoch).
    pub last_finish_us: u64,
    /// Whether the master said the pool is running (its `P` line).
    pub running: bool,
}

impl Tally {
    /// Jobs finished for good: done plus dead.
    pub fn finished(&self) -> u64 {
        self.done + self.dead
    }

    /// The `q`-quantile (0..=1) of [`waits_us`](Tally::waits_us),
    /// nearest rank.
    pub fn wait(&self, q: f64) -> Option<Duration> {
        quantile(&self.waits_us, q)
    }

    /// The `q`-quantile (0..=1) of [`runs_us`](Tally::runs_us), nearest
    /// rank.
    pub fn run(&self, q: f64) -> Option<Duration> {
        quantile(&self.runs_us, q)
    }

    fn add_line(&mut self, line: &str) {
        if line.starts_with("P ") {
            self.running = true;
            return;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let [kind, enqueued, started, ran, finished] = fields[..] else {
            return;
        };
        let (Ok(enqueued_ms), Ok(started_ms), Ok(ran_us), Ok(finished_us)) = (
            enqueued.parse::<u64>(),
            started.parse::<u64>(),
            ran.parse::<u64>(),
            finished.parse::<u64>(),
        ) else {
            return;
        };
        match kind {
            "D" => self.done += 1,
            "R" => self.retried += 1,
            "X" => self.dead += 1,
            _ => return,
        }
        self.runs_us.push(ran_us);
        self.last_finish_us = self.last_finish_us.max(finished_us);
        if kind != "R" && enqueued_ms > 0 && started_ms > 0 {
            self.waits_us
                .push(started_ms.saturating_sub(enqueued_ms).saturating_mul(1000));
        }
    }
}

/// The `q`-quantile (0..=1) of `values` (µs), nearest rank.
fn quantile(values: &[u64], q: f64) -> Option<Duration> {
    let mut v = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(Duration::from_micros(v[rank - 1]))
}

/// Reads an events file as it grows.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: Option<File>,
    partial: String,
    /// What has been read so far.
    pub tally: Tally,
}

impl Tail {
    /// A reader of `path` (which may not exist yet).
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_owned(),
            file: None,
            partial: String::new(),
            tally: Tally::default(),
        }
    }

    /// Reads what was appended since the last call.
    pub fn poll(&mut self) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = String::new();
        if f.read_to_string(&mut buf).is_err() {
            return;
        }
        self.partial.push_str(&buf);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            self.tally.add_line(line.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_and_quantiles_taken() {
        let mut t = Tally::default();
        for l in [
            "D 1000 1001 500 1001600",
            "R 1000 1000 10 1000050",
            "X 1000 1002 0 1002100",
            "garbage",
            "D 1 2 3",
            "D 0 1003 100 1003200",
        ] {
            t.add_line(l);
        }
        assert_eq!((t.done, t.retried, t.dead, t.finished()), (2, 1, 1, 3));
        // Waits of finished jobs with an enqueue time: 1 ms and 2 ms.
        assert_eq!(t.wait(0.5), Some(Duration::from_millis(1)));
        assert_eq!(t.wait(1.0), Some(Duration::from_millis(2)));
        // Run times of every attempt: 0, 10, 100, 500 µs.
        assert_eq!(t.run(0.5), Some(Duration::from_micros(10)));
        assert_eq!(t.run(1.0), Some(Duration::from_micros(500)));
        assert_eq!(t.run(0.0), Some(Duration::from_micros(0)));
        assert_eq!(t.last_finish_us, 1_003_200);
    }
}
