//! What the operator commands (`dead list|redrive|delete`, `stats`,
//! `enqueue`) do beyond the broker trait: which ids name a dead letter,
//! filters, per-id reports, their JSON, and where `enqueue` reads its
//! arguments from.
//!
//! # Which id names a dead letter
//!
//! An operator meets a job under several ids: the job id `prefork enqueue`
//! prints (the envelope's), the delivery id the workers' logs show, and the
//! dead letter's own id in the first column of `prefork dead list`. They
//! are the same on the spool, Redis and RabbitMQ except for the envelope's;
//! on beanstalkd a dead letter is a new job of `<tube>.dead`, so its id
//! differs from the delivery id it had. [`resolve`] accepts any of them.
//!
//! ```
//! use prefork::broker::{DeadLetter, DeliveryId};
//! use prefork_cli::operator::{Filter, resolve};
//!
//! let body = br#"{"v":1,"id":"18f-2a-0","job":"resize","args":null}"#.to_vec();
//! let dead = [DeadLetter::new(DeliveryId::new("1700000000000-0"), body, "boom")];
//! // By the dead letter's id or by the job id `prefork enqueue` printed:
//! assert_eq!(resolve(&["18f-2a-0".into()], &dead)[0].1, [DeliveryId::new("1700000000000-0")]);
//! assert!(resolve(&["nope".into()], &dead)[0].1.is_empty());
//! assert!(Filter { job: Some("resize".into()), reason: Some("oo".into()) }.matches(&dead[0]));
//! ```

use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use prefork::Envelope;
use prefork::broker::{Broker, DeadLetter, DeliveryId, QueueStats};
use serde_json::{Value, json};

/// Which dead letters `--job` and `--reason` select.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The job name in the dead letter's envelope (exact).
    pub job: Option<String>,
    /// A substring of the reason.
    pub reason: Option<String>,
}

impl Filter {
    /// Whether `d` passes every filter given (a payload that is not an
    /// envelope has no job name: `--job` never selects it).
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let job_ok = self
            .job
            .as_ref()
            .is_none_or(|want| envelope(d).is_some_and(|e| &e.job == want));
        let reason_ok = self
            .reason
            .as_ref()
            .is_none_or(|want| d.reason().contains(want.as_str()));
        job_ok && reason_ok
    }
}

/// The job envelope a dead letter carries, if its payload is one.
pub fn envelope(d: &DeadLetter) -> Option<Envelope> {
    Envelope::from_bytes(d.payload()).ok()
}

/// Every id that names `d`: its own, the delivery id it had before it died
/// where the adapter records a different one (beanstalkd's `job-id`), and
/// the job id in its envelope.
pub fn ids_of(d: &DeadLetter) -> Vec<String> {
    let mut ids = vec![d.id().as_str().to_owned()];
    if let Some(job_id) = d.meta("job-id") {
        ids.push(job_id.to_owned());
    }
    if let Some(e) = envelope(d) {
        ids.push(e.id);
    }
    ids
}

/// Each id asked for, with the dead letters of `dead` it names (none when
/// it names none; several when copies of one job died more than once).
pub fn resolve(asked: &[String], dead: &[DeadLetter]) -> Vec<(String, Vec<DeliveryId>)> {
    asked
        .iter()
        .map(|a| {
            let found = dead
                .iter()
                .filter(|d| ids_of(d).iter().any(|i| i == a))
                .map(|d| d.id().clone())
                .collect();
            (a.clone(), found)
        })
        .collect()
}

/// What `dead redrive` or `dead delete` does to each dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// [`Broker::redrive`].
    Redrive,
    /// [`Broker::delete_dead`].
    Delete,
}

impl Action {
    /// The word a report uses for a dead letter this action was done to.
    pub fn done(self) -> &'static str {
        match self {
            Action::Redrive => "redriven",
            Action::Delete => "deleted",
        }
    }

    fn run(self, q: &mut dyn Broker, id: &DeliveryId) -> Result<(), prefork::broker::BrokerError> {
        match self {
            Action::Redrive => q.redrive(id),
            Action::Delete => q.delete_dead(id),
        }
    }
}

/// What happened to one id asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (re-driven or deleted).
    Done,
    /// No dead letter has this id.
    NotFound,
    /// Not tried: `--atomic` stopped at an earlier error.
    Skipped,
    /// The broker refused or failed; its message.
    Failed(String),
}

/// One line of a re-drive or delete report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The id as asked for.
    pub asked: String,
    /// The dead letter's own id, when found.
    pub dead_letter: Option<DeliveryId>,
    /// What happened.
    pub outcome: Outcome,
}

/// Runs `action` on every dead letter `targets` name (from [`resolve`]),
/// in order, and reports on each. With `atomic`, nothing is done when any
/// id names no dead letter (each is reported [`Outcome::NotFound`] or
/// [`Outcome::Skipped`]), and the first error stops the run (the rest are
/// `Skipped`); without it, every id is tried.
pub fn apply(
    q: &mut dyn Broker,
    action: Action,
    targets: &[(String, Vec<DeliveryId>)],
    atomic: bool,
) -> Vec<Report> {
    let missing = targets.iter().any(|(_, found)| found.is_empty());
    let mut stop = atomic && missing;
    let mut out = Vec::new();
    for (asked, found) in targets {
        if found.is_empty() {
            out.push(Report {
                asked: asked.clone(),
                dead_letter: None,
                outcome: Outcome::NotFound,
            });
        }
        for id in found {
            let outcome = if stop {
                Outcome::Skipped
            } else {
                match action.run(q, id) {
                    Ok(()) => Outcome::Done,
                    Err(e) if e.kind() == prefork::broker::ErrorKind::NotFound => {
                        stop = atomic;
                        Outcome::NotFound
                    }
                    Err(e) => {
                        stop = atomic;
                        Outcome::Failed(e.to_string())
                    }
                }
            };
            out.push(Report {
                asked: asked.clone(),
                dead_letter: Some(id.clone()),
                outcome,
            });
        }
    }
    out
}

/// The report as text, one line per dead letter and a last line
/// `re-drove N of M` (or `deleted N of M`); with `atomic` and an id
/// missing, a line saying nothing was done and which ids were missing.
pub fn report_text(action: Action, reports: &[Report], atomic: bool) -> String {
    let mut out = String::new();
    for r in reports {
        let named = match &r.dead_letter {
            Some(id) if id.as_str() != r.asked => format!("{} (dead letter {id})", r.asked),
            _ => r.asked.clone(),
        };
        let line = match &r.outcome {
            Outcome::Done => format!("{} {named}", action.done()),
            Outcome::NotFound => format!(
                "not found {named}: no dead letter of this queue has this id (give an id from the first column of `prefork dead list`, the job id `prefork enqueue` printed, or the delivery id of the logs)"
            ),
            Outcome::Skipped => format!("skipped {named}"),
            Outcome::Failed(why) => format!("error {named}: {why}"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let done = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Done)
        .count();
    let missing: Vec<&str> = reports
        .iter()
        .filter(|r| r.dead_letter.is_none())
        .map(|r| r.asked.as_str())
        .collect();
    if atomic && !missing.is_empty() {
        out.push_str(&format!(
            "--atomic: nothing done, because no dead letter has the id {}\n",
            missing.join(", ")
        ));
    }
    let verb = match action {
        Action::Redrive => "re-drove",
        Action::Delete => "deleted",
    };
    out.push_str(&format!("{verb} {done} of {}\n", reports.len()));
    out
}

/// The report as JSON: `{"action", "done", "results": [{"id", "dead_letter",
/// "result", "error"}]}`, `result` one of `redriven`/`deleted`,
/// `not found`, `skipped`, `error`.
pub fn report_json(action: Action, reports: &[Report]) -> Value {
    let results: Vec<Value> = reports
        .iter()
        .map(|r| {
            let (result, error) = match &r.outcome {
                Outcome::Done => (action.done(), None),
                Outcome::NotFound => ("not found", None),
                Outcome::Skipped => ("skipped", None),
                Outcome::Failed(why) => ("error", Some(why.clone())),
            };
            json!({
                "id": r.asked,
                "dead_letter": r.dead_letter.as_ref().map(DeliveryId::as_str),
                "result": result,
                "error": error,
            })
        })
        .collect();
    json!({
        "action": match action { Action::Redrive => "redrive", Action::Delete => "delete" },
        "done": reports.iter().filter(|r| r.outcome == Outcome::Done).count(),
        "results": results,
    })
}

/// Whether every id was done.
pub fn all_done(reports: &[Report]) -> bool {
    reports.iter().all(|r| r.outcome == Outcome::Done)
}

/// One dead letter as a line of `dead list`: its id, the job id and name
/// of its envelope (`-` when the payload is not one), attempt, reason, and
/// the payload (cut at 200 bytes, with its length).
pub fn dead_line(d: &DeadLetter) -> String {
    let e = envelope(d);
    let payload = String::from_utf8_lossy(d.payload());
    let payload = if d.payload().len() > 200 {
        let mut end = 200;
        while !payload.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &payload[..end], d.payload().len())
    } else {
        payload.into_owned()
    };
    format!(
        "{}\tjob {} {}\tattempt {}\t{}\t{}",
        d.id(),
        e.as_ref().map_or("-", |e| e.id.as_str()),
        e.as_ref().map_or("-", |e| e.job.as_str()),
        d.attempt(),
        d.reason().replace('\n', " "),
        payload.replace('\n', " "),
    )
}

/// One dead letter as JSON: `{"id", "job_id", "job", "attempt", "reason",
/// "payload" (text, lossy UTF-8), "meta": {...}}`.
pub fn dead_json(d: &DeadLetter) -> Value {
    let e = envelope(d);
    let meta: serde_json::Map<String, Value> = d
        .metadata()
        .map(|(k, v)| (k.to_owned(), Value::from(v)))
        .collect();
    json!({
        "id": d.id().as_str(),
        "job_id": e.as_ref().map(|e| e.id.clone()),
        "job": e.as_ref().map(|e| e.job.clone()),
        "attempt": d.attempt(),
        "reason": d.reason(),
        "payload": String::from_utf8_lossy(d.payload()),
        "meta": meta,
    })
}

/// The counts as JSON: `{"queue", "ready", "delayed", "claimed", "dead",
/// "extra": {...}}`, `null` for a count the broker cannot tell.
pub fn stats_json(queue: &str, s: &QueueStats) -> Value {
    let extra: serde_json::Map<String, Value> = s
        .extras
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({
        "queue": queue,
        "ready": s.ready,
        "delayed": s.delayed,
        "claimed": s.claimed,
        "dead": s.dead,
        "extra": extra,
    })
}

/// The JSON arguments of `enqueue`: `spec` itself, or the contents of
/// FILE for `@FILE`, or of `stdin` for `-`.
///
/// # Errors
///
/// When the file or stdin cannot be read, or what was read is not JSON;
/// the message names where the arguments came from.
pub fn read_args(spec: &str, stdin: impl Read) -> anyhow::Result<Value> {
    let (text, from) = if spec == "-" {
        let mut text = String::new();
        let mut stdin = stdin;
        stdin
            .read_to_string(&mut text)
            .context("reading the arguments from stdin")?;
        (text, "stdin".to_owned())
    } else if let Some(path) = spec.strip_prefix('@') {
        let text = std::fs::read_to_string(Path::new(path))
            .with_context(|| format!("reading the arguments from {path:?} (@FILE)"))?;
        (text, format!("file {path:?}"))
    } else {
        return serde_json::from_str(spec).context(
            "the arguments are not JSON (give JSON inline, @FILE to read a file, or - for stdin)",
        );
    };
    serde_json::from_str(&text).with_context(|| format!("the arguments in {from} are not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str, job: &str, job_id: &str, reason: &str) -> DeadLetter {
        let body = format!(r#"{{"v":1,"id":"{job_id}","job":"{job}","args":null}}"#);
        DeadLetter::new(DeliveryId::new(id), body.into_bytes(), reason)
    }

    #[test]
    fn filters_need_every_condition() {
        let d = letter("1", "resize", "j1", "handler panicked");
        let f = |job: Option<&str>, reason: Option<&str>| Filter {
            job: job.map(str::to_owned),
            reason: reason.map(str::to_owned),
        };
        assert!(f(None, None).matches(&d));
        assert!(f(Some("resize"), Some("panic")).matches(&d));
        assert!(!f(Some("resiz"), None).matches(&d), "job names are exact");
        assert!(!f(Some("resize"), Some("timeout")).matches(&d));
        let raw = DeadLetter::new(DeliveryId::new("2"), b"not json".to_vec(), "malformed");
        assert!(!f(Some("resize"), None).matches(&raw));
        assert!(f(None, Some("malformed")).matches(&raw));
    }

    #[test]
    fn ids_resolve_by_any_name() {
        let dead = [
            letter("10", "a", "ja", "x").with_meta("job-id", "7"),
            letter("11", "b", "jb", "x"),
            letter("12", "b", "jb", "x"),
        ];
        let got = resolve(
            &[
                "10".into(),
                "7".into(),
                "ja".into(),
                "jb".into(),
                "zz".into(),
            ],
            &dead,
        );
        let ids = |i: usize| -> Vec<&str> { got[i].1.iter().map(DeliveryId::as_str).collect() };
        assert_eq!(ids(0), ["10"]);
        assert_eq!(ids(1), ["10"], "beanstalkd's delivery id");
        assert_eq!(ids(2), ["10"], "the envelope's job id");
        assert_eq!(ids(3), ["11", "12"], "every copy of a job");
        assert!(ids(4).is_empty());
    }

    #[test]
    fn reports_say_what_happened_to_each_id() {
        let reports = [
            Report {
                asked: "a".into(),
                dead_letter: Some(DeliveryId::new("a")),
                outcome: Outcome::Done,
            },
            Report {
                asked: "bogus".into(),
                dead_letter: None,
                outcome: Outcome::NotFound,
            },
            Report {
                asked: "j".into(),
                dead_letter: Some(DeliveryId::new("c")),
                outcome: Outcome::Failed("connection reset".into()),
            },
        ];
        let text = report_text(Action::Redrive, &reports, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "redriven a");
        assert!(lines[1].starts_with("not found bogus: "), "{text}");
        assert_eq!(lines[2], "error j (dead letter c): connection reset");
        assert_eq!(lines[3], "re-drove 1 of 3");
        assert!(!all_done(&reports));
        let atomic = report_text(Action::Delete, &reports[1..2], true);
        assert!(
            atomic.contains("--atomic: nothing done, because no dead letter has the id bogus"),
            "{atomic}"
        );
        let v = report_json(Action::Delete, &reports);
        assert_eq!(v["done"], 1);
        assert_eq!(v["results"][1]["result"], "not found");
        assert_eq!(v["results"][2]["dead_letter"], "c");
        assert_eq!(v["results"][2]["error"], "connection reset");
    }

    #[test]
    fn arguments_come_inline_from_a_file_or_stdin() {
        assert_eq!(
            read_args(r#"{"ms": 3}"#, &b""[..]).unwrap(),
            json!({"ms": 3})
        );
        assert_eq!(read_args("-", &b"[1, 2]"[..]).unwrap(), json!([1, 2]));
        let path = std::env::temp_dir().join(format!("prefork-cli-args-{}", std::process::id()));
        std::fs::write(&path, r#""from a file""#).unwrap();
        let spec = format!("@{}", path.display());
        assert_eq!(read_args(&spec, &b""[..]).unwrap(), json!("from a file"));
        std::fs::write(&path, "{oops").unwrap();
        let e = format!("{:#}", read_args(&spec, &b""[..]).unwrap_err());
        assert!(e.contains("are not JSON") && e.contains("file"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = format!("{:#}", read_args(&spec, &b""[..]).unwrap_err());
        assert!(e.contains("reading the arguments from"), "{e}");
        let e = format!("{:#}", read_args("{oops", &b""[..]).unwrap_err());
        assert!(e.contains("@FILE") && e.contains("stdin"), "{e}");
    }

    #[test]
    fn long_payloads_are_cut_in_the_listing() {
        let d = DeadLetter::new(DeliveryId::new("1"), vec![b'x'; 1000], "big");
        let line = dead_line(&d);
        assert!(line.ends_with("... (1000 bytes)"), "{line}");
        assert!(line.starts_with("1\tjob - -\tattempt 1\tbig\t"), "{line}");
    }
}
