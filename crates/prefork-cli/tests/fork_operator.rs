//! The operator commands of the `prefork` binary on every broker (Redis,
//! beanstalkd and RabbitMQ from `PREFORK_*_URL`, and a fresh spool):
//! `stats` (text and `--json`) as jobs are enqueued and die in a real pool,
//! `dead list` with `--job`, `--reason`, `--limit` and `--json`, `dead
//! delete` by the delivery id a worker logged, `dead redrive` of a good, a
//! bogus and a job id (the report says what happened to each), `--atomic`
//! refusing when an id is missing, `--all` with filters, `enqueue` reading
//! its arguments from `@FILE` (10 MB) and from stdin, and a spool URL that
//! names the file system's root refused.
//! (harness = false: the cases run pools of forked workers.)

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use prefork::broker::Broker;
use prefork_tests::e2e;
use prefork_tests::harness::{Case, run};
use serde_json::Value;

/// `prefork --broker URL --queue QUEUE ARGS...`, run to its end.
fn prefork(url: &str, queue: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prefork"))
        .args(["--broker", url, "--queue", queue])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Its stdout, after checking it succeeded.
fn ok(url: &str, queue: &str, args: &[&str]) -> String {
    let out = prefork(url, queue, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Its stdout, after checking it failed.
fn failed(url: &str, queue: &str, args: &[&str]) -> (String, String) {
    let out = prefork(url, queue, args);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `stats --json`, parsed.
fn stats(url: &str, queue: &str) -> Value {
    serde_json::from_str(&ok(url, queue, &["stats", "--json"])).unwrap()
}

/// Whether `stats` counts `[ready, delayed, claimed, dead]`, where the
/// broker can tell (`null` is not checked: RabbitMQ's claimed).
fn counts_are(s: &Value, [ready, delayed, claimed, dead]: [u64; 4]) -> bool {
    s["ready"] == ready
        && (s["delayed"].is_null() || s["delayed"] == delayed)
        && (s["claimed"].is_null() || s["claimed"] == claimed)
        && s["dead"] == dead
}

/// `dead list --json ARGS`, one object a line, parsed.
fn dead_json(url: &str, queue: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["dead", "list", "--json"];
    all.extend_from_slice(args);
    ok(url, queue, &all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a string"))
        .to_owned()
}

/// Every command on the broker at `$var`.
fn operator_commands(var: &str) {
    let Some(url) = e2e::broker_url(var) else {
        return;
    };
    operator_commands_on(&url);
}

fn operator_commands_on(url: &str) {
    let q = e2e::unique_name("ops");
    assert!(
        counts_are(&stats(url, &q), [0, 0, 0, 0]),
        "{}",
        stats(url, &q)
    );
    let job_ids: BTreeSet<String> = ok(url, &q, &["enqueue", "fail", "\"always\"", "--count", "4"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(job_ids.len(), 4);
    ok(url, &q, &["enqueue", "noop"]);
    ok(url, &q, &["enqueue", "noop", "--delay-ms", "600000"]);
    let s = stats(url, &q);
    assert!(counts_are(&s, [5, 1, 0, 0]), "{s}");
    let text_stats = ok(url, &q, &["stats"]);
    assert!(
        text_stats.starts_with("ready 5\ndelayed ") && text_stats.contains("\ndead 0"),
        "{text_stats}"
    );

    // A pool with retries 1 ms apart: the four `fail` jobs die after 5
    // attempts each; the worker logs name each dead job's delivery id.
    let dir = std::env::temp_dir().join(&q);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("pool.log");
    let pool = Command::new(env!("CARGO_BIN_EXE_prefork"))
        .args(["--broker", url, "--queue", &q])
        .args(["work", "--workers", "2", "--retry-base-ms", "1"])
        // No control socket: this case runs beside other pools.
        .env("PREFORK_CONTROL_SOCKET", "none")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    e2e::wait_until("4 dead letters", Duration::from_secs(40), || {
        counts_are(&stats(url, &q), [0, 1, 0, 4])
    });
    e2e::quit(pool);

    let dead = dead_json(url, &q, &[]);
    assert_eq!(dead.len(), 4, "{dead:?}");
    for d in &dead {
        assert_eq!(d["job"], "fail", "{d}");
        assert!(text(&d["reason"]).contains("always"), "{d}");
        assert!(job_ids.contains(&text(&d["job_id"])), "{d}");
    }
    let listed = |args: &[&str]| {
        let mut all = vec!["dead", "list"];
        all.extend_from_slice(args);
        ok(url, &q, &all).lines().count()
    };
    assert_eq!(listed(&["--job", "fail", "--reason", "always"]), 4);
    assert_eq!(listed(&["--job", "noop"]), 0);
    assert_eq!(listed(&["--reason", "no such reason"]), 0);
    assert_eq!(listed(&["--limit", "1"]), 1);
    assert_eq!(listed(&["--limit", "1", "--job", "fail"]), 1);

    // Delete by the delivery id a worker logged.
    let logged = std::fs::read_to_string(&log).unwrap();
    let delivery = logged
        .lines()
        .find(|l| l.contains("job sent to the dead letters"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("delivery="))
        })
        .unwrap_or_else(|| panic!("no dead letter logged:\n{logged}"))
        .to_owned();
    let report: Value =
        serde_json::from_str(&ok(url, &q, &["dead", "delete", &delivery, "--json"])).unwrap();
    assert_eq!(report["done"], 1, "{report}");
    assert_eq!(report["results"][0]["result"], "deleted", "{report}");
    assert_eq!(report["results"][0]["id"], delivery.as_str());
    assert_eq!(stats(url, &q)["dead"], 3);

    // --atomic refuses when one id is missing, and does nothing.
    let dead = dead_json(url, &q, &[]);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let (out, _) = failed(
        url,
        &q,
        &[
            "dead",
            "redrive",
            &text(&dead[0]["job_id"]),
            "bogus",
            "--atomic",
        ],
    );
    assert!(
        out.contains("--atomic: nothing done, because no dead letter has the id bogus")
            && out.lines().next().unwrap().starts_with("skipped "),
        "{out}"
    );
    assert!(out.contains("re-drove 0 of 2"), "{out}");
    assert_eq!(stats(url, &q)["dead"], 3);

    // Without it: each id is reported, a bogus one does not stop the rest;
    // a job id (as `enqueue` printed) names its dead letter.
    let (first, second) = (text(&dead[0]["id"]), text(&dead[1]["job_id"]));
    let (out, _) = failed(url, &q, &["dead", "redrive", &first, "bogus", &second]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("redriven {first}"), "{out}");
    assert!(lines[1].starts_with("not found bogus: "), "{out}");
    assert!(lines[1].contains("prefork dead list"), "{out}");
    assert!(lines[2].starts_with(&format!("redriven {second}")), "{out}");
    assert_eq!(lines[3], "re-drove 2 of 3", "{out}");
    let s = stats(url, &q);
    assert!(counts_are(&s, [2, 1, 0, 1]), "{s}");

    // --all with filters.
    let none = ok(
        url,
        &q,
        &["dead", "delete", "--all", "--reason", "no such reason"],
    );
    assert_eq!(none, "deleted 0 of 0\n");
    let (_, err) = failed(url, &q, &["dead", "redrive", "--job", "fail", &first]);
    assert!(
        err.contains("--job and --reason select dead letters for --all"),
        "{err}"
    );
    let report: Value = serde_json::from_str(&ok(
        url,
        &q,
        &["dead", "redrive", "--all", "--job", "fail", "--json"],
    ))
    .unwrap();
    assert_eq!(report["done"], 1, "{report}");
    assert_eq!(report["results"][0]["result"], "redriven", "{report}");
    let s = stats(url, &q);
    assert!(counts_are(&s, [3, 1, 0, 0]), "{s}");

    enqueue_args_from_a_file_and_stdin(url, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `enqueue JOB @FILE` with 10 MB of arguments (more than a command line
/// takes) and `enqueue JOB -` from stdin: the jobs carry them intact.
fn enqueue_args_from_a_file_and_stdin(url: &str, dir: &std::path::Path) {
    let q = e2e::unique_name("args");
    let big = "x".repeat(10 << 20);
    let file = dir.join("args.json");
    std::fs::write(&file, serde_json::json!({ "blob": big }).to_string()).unwrap();
    let spec = format!("@{}", file.display());
    let from_file = ok(url, &q, &["enqueue", "noop", &spec]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_prefork"))
        .args(["--broker", url, "--queue", &q, "enqueue", "noop", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"from": "stdin"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let from_stdin = String::from_utf8(out.stdout).unwrap();
    let (_, err) = failed(url, &q, &["enqueue", "noop", "@/no/such/file"]);
    assert!(
        err.contains("reading the arguments from \"/no/such/file\""),
        "{err}"
    );

    let mut b = prefork::broker_url(url).unwrap().open_queue(&q).unwrap();
    let mut got = Vec::new();
    e2e::wait_until("the 2 jobs", Duration::from_secs(20), || {
        got.extend(b.fetch(2, Duration::from_millis(500)).unwrap());
        got.len() >= 2
    });
    assert_eq!(got.len(), 2);
    for d in got {
        let e = prefork::Envelope::from_bytes(d.payload()).unwrap();
        if e.id == from_file.trim() {
            assert!(e.args["blob"] == big.as_str(), "10 MB argument changed");
        } else {
            assert_eq!(e.id, from_stdin.trim());
            assert_eq!(e.args, serde_json::json!({"from": "stdin"}));
        }
        b.ack(d).unwrap();
    }
}

fn operator_commands_on_redis() {
    operator_commands("PREFORK_REDIS_URL");
}

fn operator_commands_on_beanstalkd() {
    operator_commands("PREFORK_BEANSTALKD_URL");
}

fn operator_commands_on_rabbitmq() {
    operator_commands("PREFORK_RABBITMQ_URL");
}

/// The operator commands on Kafka, where counts are not exact (every
/// message past a partition's committed offset counts, finished ones above
/// an unfinished one included; see prefork-kafka's README): `stats --json`
/// answers with every field, the dead letters a pool made are listed with
/// their job and reason, and `dead redrive` and `dead delete` act on them
/// by id, each reporting what it did.
#[cfg(feature = "kafka")]
fn operator_commands_on_kafka() {
    let Some(url) = e2e::broker_url("PREFORK_KAFKA_URL") else {
        return;
    };
    let url = format!("{url}/?group={}", e2e::unique_name("ops-group"));
    let url = url.as_str();
    let q = e2e::unique_name("ops-kafka");
    let s = stats(url, &q);
    for field in ["ready", "delayed", "claimed", "dead"] {
        assert!(s.get(field).is_some(), "no {field} in {s}");
    }
    assert_eq!(s["dead"], 0, "{s}");
    for _ in 0..2 {
        ok(url, &q, &["enqueue", "fail", "\"always\""]);
    }
    let pool = Command::new(env!("CARGO_BIN_EXE_prefork"))
        .args(["--broker", url, "--queue", &q])
        .args(["work", "--workers", "2", "--retry-base-ms", "1"])
        .env("PREFORK_CONTROL_SOCKET", "none")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    e2e::wait_until("2 dead letters", Duration::from_secs(90), || {
        dead_json(url, &q, &[]).len() == 2
    });
    e2e::quit(pool);
    let dead = dead_json(url, &q, &[]);
    for d in &dead {
        assert_eq!(d["job"], "fail", "{d}");
        assert!(text(&d["reason"]).contains("always"), "{d}");
    }
    assert_eq!(stats(url, &q)["dead"], 2);
    let (first, second) = (text(&dead[0]["id"]), text(&dead[1]["id"]));
    let (out, _) = failed(url, &q, &["dead", "redrive", &first, "bogus"]);
    assert!(out.starts_with(&format!("redriven {first}")), "{out}");
    assert!(out.contains("not found bogus: "), "{out}");
    let report: Value =
        serde_json::from_str(&ok(url, &q, &["dead", "delete", &second, "--json"])).unwrap();
    assert_eq!(report["results"][0]["result"], "deleted", "{report}");
    assert!(dead_json(url, &q, &[]).is_empty());
    assert_eq!(stats(url, &q)["dead"], 0);
}

fn operator_commands_on_the_spool() {
    let dir = std::env::temp_dir().join(e2e::unique_name("ops-spool"));
    operator_commands_on(&format!("spool://{}", dir.display()));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--broker spool:///` (and its spellings) is refused before anything is
/// made: it would put queues at the file system's root.
fn spool_at_the_root_is_refused() {
    for url in ["spool:///", "spool:////", "/"] {
        let (_, err) = failed(url, "default", &["stats"]);
        assert!(
            err.contains("the file system's root") && err.contains("spool URL"),
            "{url}: {err}"
        );
    }
    assert!(!std::path::Path::new("/default").exists());
}

fn main() {
    let long = Duration::from_secs(120);
    #[allow(unused_mut)] // extended when built with kafka
    let mut cases = vec![
        Case::new("operator_commands_on_redis", operator_commands_on_redis).limit(long),
        Case::new(
            "operator_commands_on_beanstalkd",
            operator_commands_on_beanstalkd,
        )
        .limit(long),
        Case::new(
            "operator_commands_on_rabbitmq",
            operator_commands_on_rabbitmq,
        )
        .limit(long),
        Case::new(
            "operator_commands_on_the_spool",
            operator_commands_on_the_spool,
        )
        .limit(long),
        Case::new("spool_at_the_root_is_refused", spool_at_the_root_is_refused),
    ];
    #[cfg(feature = "kafka")]
    cases.push(Case::new("operator_commands_on_kafka", operator_commands_on_kafka).limit(long));
    run(&cases);
}
