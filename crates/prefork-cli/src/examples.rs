//! The example job handlers the `prefork work` pool runs.

use std::io::Write;
use std::time::Duration;

use prefork::jobs::{JobContext, JobError, Registry, RetryPolicy};
use serde::Deserialize;

/// Arguments of `sleep`.
#[derive(Debug, Deserialize)]
pub struct Sleep {
    /// How long, in milliseconds.
    pub ms: u64,
}

/// Arguments of `flaky`.
#[derive(Debug, Deserialize)]
pub struct Flaky {
    /// How many attempts fail before one succeeds.
    pub failures: u32,
}

/// Arguments of `append`.
#[derive(Debug, Deserialize)]
pub struct Append {
    /// The file to append to (opened with `O_APPEND`).
    pub path: String,
    /// The line to append.
    pub line: String,
    /// Milliseconds to sleep before appending (default 0).
    #[serde(default)]
    pub sleep_ms: u64,
    /// A line appended when the job starts, before the sleep (none by
    /// default): shows a job that started and did not finish.
    #[serde(default)]
    pub start_line: Option<String>,
}

/// The example handlers, with `retry` as their default retry policy:
///
/// | job | args | does |
/// |---|---|---|
/// | `noop` | none | nothing |
/// | `sleep` | `{"ms": 5}` | sleeps, calling `alive` every 100 ms, stopping early past the soft limit |
/// | `flaky` | `{"failures": 1}` | fails its first `failures` attempts |
/// | `fail` | a string | always fails (retried, then dead) |
/// | `panic` | a string | panics with it (retried, then dead) |
/// | `append` | `{"path": "...", "line": "...", "sleep_ms": 0, "start_line": "..."}` | appends `start_line` (optional), sleeps `sleep_ms` (optional), then appends `line`, to the file with `O_APPEND` |
pub fn registry(retry: RetryPolicy) -> Registry {
    let mut r = Registry::new();
    r.default_retry(retry);
    r.register(
        "noop",
        |_: &mut JobContext<'_>, _: serde_json::Value| Ok(()),
    );
    r.register("sleep", |ctx: &mut JobContext<'_>, a: Sleep| {
        let end = std::time::Instant::now() + Duration::from_millis(a.ms);
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || ctx.over_soft_limit() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
            ctx.alive();
        }
    });
    r.register("flaky", |ctx: &mut JobContext<'_>, a: Flaky| {
        if ctx.attempt() <= a.failures {
            Err(JobError::new(format!(
                "flaky: attempt {} of {} planned failures",
                ctx.attempt(),
                a.failures
            )))
        } else {
            Ok(())
        }
    });
    r.register("fail", |_: &mut JobContext<'_>, msg: String| {
        Err(JobError::new(msg))
    });
    r.register(
        "panic",
        |_: &mut JobContext<'_>, msg: String| -> Result<(), JobError> { panic!("{msg}") },
    );
    r.register("append", |_: &mut JobContext<'_>, a: Append| {
        let append = |line: &str| -> std::io::Result<()> {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&a.path)?
                .write_all(format!("{line}\n").as_bytes())
        };
        if let Some(start) = &a.start_line {
            append(start)?;
        }
        std::thread::sleep(Duration::from_millis(a.sleep_ms));
        append(&a.line)?;
        Ok(())
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefork::jobs::{Envelope, Outcome};

    #[test]
    fn examples_behave_as_documented() {
        let r = registry(RetryPolicy::new(5).base(Duration::from_millis(10)));
        let run = |job: &str, args: serde_json::Value, attempt: u32| {
            r.run(&Envelope::new("q", job, args).to_bytes(), attempt, 0.0)
        };
        assert_eq!(run("noop", serde_json::Value::Null, 1), Outcome::Done);
        assert_eq!(run("sleep", serde_json::json!({"ms": 1}), 1), Outcome::Done);
        assert!(matches!(
            run("flaky", serde_json::json!({"failures": 1}), 1),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            run("flaky", serde_json::json!({"failures": 1}), 2),
            Outcome::Done
        );
        assert!(matches!(
            run("fail", serde_json::json!("no"), 5),
            Outcome::Dead { .. }
        ));
        let path = std::env::temp_dir().join(format!("prefork-cli-append-{}", std::process::id()));
        let args = serde_json::json!({"path": path, "line": "x1"});
        assert_eq!(run("append", args.clone(), 1), Outcome::Done);
        assert_eq!(run("append", args, 1), Outcome::Done);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x1\nx1\n");
        std::fs::remove_file(path).unwrap();
    }
}
