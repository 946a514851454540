//! The `prefork` binary end to end: the demo drains a real batch through a
//! real pool, enqueue / dead list / redrive work on a spool, `work` and
//! `enqueue` run on real Redis and beanstalkd servers (from
//! `PREFORK_REDIS_URL` / `PREFORK_BEANSTALKD_URL`: a failure under CI when
//! unset, a printed skip elsewhere), and a bad or unreachable broker is one
//! clear error.
//! (harness = false: these spawn process trees.)

use std::process::Command;
use std::time::Duration;

use prefork_tests::e2e;
use prefork_tests::harness::{Case, run};

fn prefork() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefork"))
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("prefork-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `prefork demo --mode MODE` on 400 jobs: the exact counts the job mix
/// implies, the dead letters' reasons, and durations that fit together
/// (no job waited longer than the enqueue phase plus the run; no handler
/// ran longer than the run).
fn demo_in(mode: &str) {
    let out = prefork()
        .args([
            "demo",
            "--jobs",
            "400",
            "--workers",
            "3",
            "--quiet",
            "--mode",
            mode,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| -> &str {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {stdout}"))
    };
    let field = |name: &str| -> u64 {
        line(name)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    // The number after `word` on the line `name` (e.g. "p99" on "waited").
    let after = |name: &str, word: &str| -> f64 {
        let l = line(name);
        let mut words = l.split(|c: char| c.is_whitespace() || c == ',' || c == '(');
        words
            .find(|w| *w == word)
            .unwrap_or_else(|| panic!("{word} in {l}"));
        words.find(|w| !w.is_empty()).unwrap().parse().unwrap()
    };
    assert!(
        line("mode").starts_with(&format!("mode      {mode}, 3 workers")),
        "{stdout}"
    );
    // 400 jobs: per 200, 1 malformed + 1 unknown + 1 bad args are dead, 19 flaky jobs retry once.
    assert_eq!(field("jobs"), 400);
    assert_eq!(field("dead"), 6);
    assert_eq!(field("done"), 394);
    assert_eq!(field("retried"), 38); // job 113 of each 200 is bad arguments, not flaky
    assert!(stdout.contains("unknown job \"no_such_job\""), "{stdout}");
    assert!(stdout.contains("malformed envelope"), "{stdout}");
    assert!(stdout.contains("bad arguments"), "{stdout}");
    let enqueue_ms = after("jobs", "in") * 1e3;
    let run_ms = after("run", "run") * 1e3;
    let rate = after("rate", "rate");
    assert!(run_ms > 0.0, "{stdout}");
    // The rate is the finished jobs over the run, as labelled (the figures
    // are rounded for print: 1% and one unit of slack).
    assert!(
        (rate - 400.0 / (run_ms / 1e3)).abs() <= rate * 0.01 + 1.0,
        "{stdout}"
    );
    // A wait is enqueue to start: within the enqueue phase plus the run
    // (ms timestamps, the printed figures rounded: a few ms of slack).
    let wait_p99 = after("waited", "p99");
    assert!(wait_p99 <= enqueue_ms + run_ms + 15.0, "{stdout}");
    assert!(after("waited", "p50") <= wait_p99, "{stdout}");
    assert!(after("handler", "p99") <= run_ms + 15.0, "{stdout}");
}

fn demo_drains_the_batch_and_summarizes() {
    demo_in("pull");
}

/// Dispatch mode runs the same mix to the same exact counts.
fn demo_in_dispatch_mode_gives_the_same_counts() {
    demo_in("dispatch");
}

fn enqueue_dead_list_and_redrive() {
    let dir = tmp("dead");
    let broker = format!("spool://{}", dir.display());
    let ok = |args: &[&str]| {
        let out = prefork()
            .arg("--broker")
            .arg(&broker)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&["enqueue", "fail", "\"always\"", "--count", "2"]);
    ok(&["enqueue", "noop"]);
    assert!(ok(&["stats"]).contains("ready 3"));
    // A pool with retries 1 ms apart: the two `fail` jobs end dead after 5 attempts.
    let mut pool = prefork()
        .arg("--broker")
        .arg(&broker)
        .args(["work", "--workers", "2", "--retry-base-ms", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ok(&["stats"]).contains("dead 2")
        || !ok(&["stats"]).contains("ready 0\ndelayed 0\nclaimed 0")
    {
        assert!(std::time::Instant::now() < deadline, "{}", ok(&["stats"]));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pool.id() as i32),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .unwrap();
    assert!(pool.wait().unwrap().success());
    let list = ok(&["dead", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.lines()
            .all(|l| l.contains("failed on attempt 5 of 5: always")),
        "{list}"
    );
    let id = list
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    ok(&["dead", "redrive", &id]);
    assert!(ok(&["stats"]).contains("ready 1"));
    assert!(ok(&["dead", "redrive", "--all"]).contains("re-drove 1"));
    assert!(ok(&["stats"]).contains("ready 2\ndelayed 0\nclaimed 0\ndead 0"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `prefork enqueue` then `prefork work --mode MODE` on the broker at
/// `$env`: every job runs once, and QUIT stops the pool cleanly.
fn pool_on_real_broker(env: &str, mode: &str) {
    let Some(url) = e2e::broker_url(env) else {
        return;
    };
    let queue = e2e::unique_name("cli");
    let dir = tmp(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.log");
    let base = |cmd: &mut Command| {
        cmd.args(["--broker", &url, "--queue", &queue]);
    };
    let args = serde_json::json!({"path": out, "line": "ran"}).to_string();
    let mut enqueue = prefork();
    base(&mut enqueue);
    let done = enqueue
        .args(["enqueue", "append", &args, "--count", "100"])
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&done.stdout).lines().count(), 100);
    let mut work = prefork();
    base(&mut work);
    let pool = work
        .args(["work", "--workers", "2", "--mode", mode])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ran = || e2e::counts(&out).get("ran").copied().unwrap_or(0);
    e2e::wait_until("the 100 jobs to run", Duration::from_secs(30), || {
        ran() >= 100
    });
    e2e::quit(pool);
    assert_eq!(ran(), 100, "no job ran twice");
    std::fs::remove_dir_all(dir).unwrap();
}

fn pool_on_redis() {
    pool_on_real_broker("PREFORK_REDIS_URL", "pull");
}

fn pool_on_beanstalkd() {
    pool_on_real_broker("PREFORK_BEANSTALKD_URL", "pull");
}

fn dispatch_pool_on_redis() {
    pool_on_real_broker("PREFORK_REDIS_URL", "dispatch");
}

fn dispatch_pool_on_beanstalkd() {
    pool_on_real_broker("PREFORK_BEANSTALKD_URL", "dispatch");
}

/// Nothing listens on 127.0.0.1:1: `work` and `enqueue` fail at once,
/// exit non-zero, and name the broker with the password hidden; an unknown
/// scheme and `stats` on a server broker are refused as clearly.
fn bad_or_unreachable_broker_is_a_clear_error() {
    let fails = |broker: &str, args: &[&str]| -> String {
        let out = prefork()
            .args(["--broker", broker])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{broker} {args:?} succeeded: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
        stderr
    };
    for (broker, shown) in [
        (
            "redis://:s3cret@127.0.0.1:1/0",
            "broker redis://:***@127.0.0.1:1/0",
        ),
        ("beanstalk://127.0.0.1:1", "broker beanstalk://127.0.0.1:1"),
    ] {
        for args in [&["work", "--workers", "2"][..], &["enqueue", "noop"]] {
            let e = fails(broker, args);
            assert!(e.contains(shown), "{args:?}: {e}");
        }
        let e = fails(broker, &["stats"]);
        assert!(e.contains("spool only"), "{e}");
    }
    let e = fails("amqp://guest:s3cret@127.0.0.1/", &["enqueue", "noop"]);
    assert!(e.contains("not built into this binary"), "{e}");
    let e = fails("redis://:s3cret@127.0.0.1:99999/0", &["enqueue", "noop"]);
    assert!(e.contains("redis URL"), "{e}");
}

fn main() {
    run(&[
        Case::new("pool_on_redis", pool_on_redis),
        Case::new("pool_on_beanstalkd", pool_on_beanstalkd),
        Case::new("dispatch_pool_on_redis", dispatch_pool_on_redis),
        Case::new("dispatch_pool_on_beanstalkd", dispatch_pool_on_beanstalkd),
        Case::new(
            "bad_or_unreachable_broker_is_a_clear_error",
            bad_or_unreachable_broker_is_a_clear_error,
        ),
        Case::new(
            "demo_drains_the_batch_and_summarizes",
            demo_drains_the_batch_and_summarizes,
        ),
        Case::new(
            "demo_in_dispatch_mode_gives_the_same_counts",
            demo_in_dispatch_mode_gives_the_same_counts,
        ),
        Case::new(
            "enqueue_dead_list_and_redrive",
            enqueue_dead_list_and_redrive,
        ),
    ]);
}
