//! Progress events: each worker appends one short line per settled
//! delivery to a file opened with `O_APPEND` (one `write(2)` per line, so
//! lines from several processes never interleave), and the demo tails it.
//!
//! Line format: `{kind} {queued_ms} {ran_us}\n`, kind `D` done, `R` retried,
//! `X` dead letter; `queued_ms` is enqueue-to-start in ms.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prefork_jobs::{JobEvent, Outcome};

/// An observer for [`prefork_jobs::JobWorker::on_outcome`] that appends
/// events to `path`. The file is opened in the worker process on its first
/// event (nothing is opened in the master).
pub fn writer(path: PathBuf) -> impl FnMut(&JobEvent) + 'static {
    let mut file: Option<File> = None;
    move |e: &JobEvent| {
        let kind = match e.outcome {
            Outcome::Done => 'D',
            Outcome::Retry { .. } => 'R',
            Outcome::Dead { .. } => 'X',
        };
        let queued = e.started_at_ms.saturating_sub(e.enqueued_at_ms);
        let queued = if e.enqueued_at_ms == 0 { 0 } else { queued };
        let line = format!("{kind} {queued} {}\n", e.ran.as_micros());
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

/// Counts read so far from an events file.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Deliveries acknowledged.
    pub done: u64,
    /// Deliveries given back for a retry.
    pub retried: u64,
    /// Deliveries sent to the dead letters.
    pub dead: u64,
    /// Enqueue-to-finish of finished jobs (done or dead), in µs.
    pub latencies_us: Vec<u64>,
}

impl Tally {
    /// Jobs finished for good: done plus dead.
    pub fn finished(&self) -> u64 {
        self.done + self.dead
    }

    /// The `q`-quantile (0..=1) of the latencies, nearest rank.
    pub fn latency(&self, q: f64) -> Option<Duration> {
        let mut v = self.latencies_us.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(Duration::from_micros(v[rank - 1]))
    }

    fn add_line(&mut self, line: &str) {
        let mut parts = line.split(' ');
        let (Some(kind), Some(queued), Some(ran)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(queued_ms), Ok(ran_us)) = (queued.parse::<u64>(), ran.parse::<u64>()) else {
            return;
        };
        let total = queued_ms * 1000 + ran_us;
        match kind {
            "D" => {
                self.done += 1;
                self.latencies_us.push(total);
            }
            "R" => self.retried += 1,
            "X" => {
                self.dead += 1;
                self.latencies_us.push(total);
            }
            _ => {}
        }
    }
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
        for l in ["D 1 500", "R 0 10", "X 2 0", "garbage", "D 0 100"] {
            t.add_line(l);
        }
        assert_eq!((t.done, t.retried, t.dead, t.finished()), (2, 1, 1, 3));
        assert_eq!(t.latency(0.5), Some(Duration::from_micros(1500)));
        assert_eq!(t.latency(1.0), Some(Duration::from_micros(2000)));
        assert_eq!(t.latency(0.0), Some(Duration::from_micros(100)));
    }
}
