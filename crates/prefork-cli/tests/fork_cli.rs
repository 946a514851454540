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

/// The `prefork` binary; its pools (`work`) open no control socket, so
/// that they run beside other pools (`fork_control` tests the socket).
fn prefork() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prefork"));
    c.env("PREFORK_CONTROL_SOCKET", "none");
    c
}

/// Asserts a `prefork` command succeeded, showing its stderr if not.
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    if let Some(url) = e2e::broker_url(env) {
        pool_on(&url, mode);
    }
}

/// [`pool_on_real_broker`] on the broker at `url`.
fn pool_on(url: &str, mode: &str) {
    let queue = e2e::unique_name("cli");
    let dir = tmp(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.log");
    let base = |cmd: &mut Command| {
        cmd.args(["--broker", url, "--queue", &queue]);
    };
    let args = serde_json::json!({"path": out, "line": "ran"}).to_string();
    let mut enqueue = prefork();
    base(&mut enqueue);
    let done = enqueue
        .args(["enqueue", "append", &args, "--count", "100"])
        .output()
        .unwrap();
    succeeded(&done);
    assert_eq!(String::from_utf8_lossy(&done.stdout).lines().count(), 100);
    let mut work = prefork();
    base(&mut work);
    let log = dir.join("pool.log");
    let pool = work
        .args(["work", "--workers", "2", "--mode", mode])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ran = || e2e::counts(&out).get("ran").copied().unwrap_or(0);
    e2e::wait_until("the 100 jobs to run", Duration::from_secs(30), || {
        ran() >= 100
    });
    e2e::quit(pool);
    assert_eq!(ran(), 100, "no job ran twice");
    // Each worker's exit line counts the jobs it finished.
    let log = std::fs::read_to_string(&log).unwrap();
    let finished: u64 = log
        .lines()
        .filter(|l| l.contains("worker exited"))
        .map(|l| field_u64(l, "jobs_finished"))
        .sum();
    assert_eq!(finished, 100, "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The number after `name=` in a log line (0 when absent).
fn field_u64(line: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key.as_str()))
        .map_or(0, |v| {
            v.trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap()
        })
}

/// The queue's dead letters through `prefork dead list`.
fn dead_list(url: &str, queue: &str) -> Vec<String> {
    let out = prefork()
        .args(["--broker", url, "--queue", queue, "dead", "list"])
        .output()
        .unwrap();
    succeeded(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Graceful QUIT in `mode` while 7 workers run 300 ms jobs: every job
/// finished before the stop is settled (not run again by the next pool),
/// and every other one is given back: a second pool brings the count to
/// exactly 60. (Dispatch mode used to drop a worker's last report when it
/// saw the exit first, and ran those jobs again.)
fn graceful_quit_runs_no_job_twice(mode: &str) {
    let Some(url) = e2e::broker_url("PREFORK_REDIS_URL") else {
        return;
    };
    let queue = e2e::unique_name("quit");
    let dir = tmp(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.log");
    let args = serde_json::json!({"path": out, "line": "ran", "sleep_ms": 300}).to_string();
    let enq = prefork()
        .args(["--broker", &url, "--queue", &queue])
        .args(["enqueue", "append", &args, "--count", "60"])
        .output()
        .unwrap();
    succeeded(&enq);
    let start = || {
        prefork()
            .args(["--broker", &url, "--queue", &queue])
            .args(["work", "--workers", "7", "--mode", mode])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let ran = || e2e::counts(&out).get("ran").copied().unwrap_or(0);
    let first = start();
    std::thread::sleep(Duration::from_millis(1300));
    e2e::quit(first);
    let after_quit = ran();
    assert!(
        after_quit > 0 && after_quit < 60,
        "{after_quit} ran before the stop"
    );
    let second = start();
    e2e::wait_until("the other jobs to run", Duration::from_secs(30), || {
        ran() >= 60
    });
    // Time for a job settled wrongly to come round again.
    std::thread::sleep(Duration::from_millis(700));
    e2e::quit(second);
    assert_eq!(ran(), 60, "{after_quit} ran before the stop");
    std::fs::remove_dir_all(dir).unwrap();
}

fn graceful_quit_runs_no_job_twice_pull() {
    graceful_quit_runs_no_job_twice("pull");
}

fn graceful_quit_runs_no_job_twice_dispatch() {
    graceful_quit_runs_no_job_twice("dispatch");
}

/// 12 jobs that overrun `--hard-limit-ms 300` among 50 quick ones, 4
/// workers: each slow job is killed, retried, and dead-lettered with the
/// limit in its reason; the quick ones all run; the pool never gives up
/// (a time-limit kill is the job's failure, not a crash of the slot).
fn hard_limit_kills_are_job_failures(mode: &str, url: &str) {
    let queue = e2e::unique_name("limit");
    let dir = tmp(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.log");
    let run = |args: &[&str]| {
        let o = prefork()
            .args(["--broker", url, "--queue", &queue])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let quick = serde_json::json!({"path": out, "line": "quick"}).to_string();
    for i in 0..62 {
        if i % 5 == 2 && i < 60 {
            run(&["enqueue", "sleep", r#"{"ms": 5000}"#]);
        } else {
            run(&["enqueue", "append", &quick]);
        }
    }
    let log = dir.join("pool.log");
    let mut pool = prefork()
        .args(["--broker", url, "--queue", &queue])
        .args(["work", "--workers", "4", "--mode", mode])
        .args(["--hard-limit-ms", "300", "--retry-base-ms", "1"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let quick_ran = || e2e::counts(&out).get("quick").copied().unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while dead_list(url, &queue).len() < 12 || quick_ran() < 50 {
        if let Some(status) = pool.try_wait().unwrap() {
            panic!(
                "the pool exited ({status}) with {} dead and {} quick jobs run:
{}",
                dead_list(url, &queue).len(),
                quick_ran(),
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} dead, {} quick run",
            dead_list(url, &queue).len(),
            quick_ran()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    e2e::quit(pool);
    assert_eq!(quick_ran(), 50);
    let dead = dead_list(url, &queue);
    assert_eq!(dead.len(), 12, "{dead:?}");
    for d in &dead {
        assert!(d.contains("hard time limit of 300 ms"), "{d}");
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("exceeded its hard time limit"), "{log}");
    assert!(!log.contains("giving up"), "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn hard_limit_kills_are_job_failures_pull() {
    let dir = tmp("limit-spool");
    hard_limit_kills_are_job_failures("pull", &format!("spool://{}", dir.display()));
    let _ = std::fs::remove_dir_all(dir);
}

fn hard_limit_kills_are_job_failures_dispatch() {
    if let Some(url) = e2e::broker_url("PREFORK_REDIS_URL") {
        hard_limit_kills_are_job_failures("dispatch", &url);
    }
}

/// The broker URLs of the servers this run has, with their names, plus a
/// fresh spool.
fn brokers_under_test(name: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (broker, var) in [
        ("redis", "PREFORK_REDIS_URL"),
        ("beanstalkd", "PREFORK_BEANSTALKD_URL"),
    ] {
        if let Some(url) = e2e::broker_url(var) {
            out.push((broker, url));
        }
    }
    let spool = tmp(&format!("{name}-spool"));
    out.push(("spool", format!("spool://{}", spool.display())));
    out
}

/// The master's children that are workers (not the feeder).
fn workers_of(master: u32) -> Vec<i32> {
    e2e::children_of(master)
        .into_iter()
        .filter(|p| !e2e::cmdline(*p).contains("feeder"))
        .collect()
}

/// A job whose worker is SIGKILLed runs again at once, not after its
/// claim timeout (the default 30-60 s, left as it is): in pull mode the
/// dead worker's replacement takes its claims over; in dispatch mode the
/// feeder hears of the death at once. On every broker, both modes.
fn killed_worker_s_job_runs_again_at_once(mode: &str) {
    for (broker, url) in brokers_under_test(&format!("kill-{mode}")) {
        let queue = e2e::unique_name("killed");
        let dir = tmp(&queue);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.log");
        let args = serde_json::json!({
            "path": out, "start_line": "start", "line": "end", "sleep_ms": 2000
        })
        .to_string();
        let enq = prefork()
            .args([
                "--broker", &url, "--queue", &queue, "enqueue", "append", &args,
            ])
            .output()
            .unwrap();
        succeeded(&enq);
        let log = dir.join("pool.log");
        let pool = prefork()
            .args(["--broker", &url, "--queue", &queue])
            .args(["work", "--workers", "2", "--mode", mode])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let seen = |line: &str| e2e::counts(&out).get(line).copied().unwrap_or(0);
        e2e::wait_until("the job to start", Duration::from_secs(20), || {
            seen("start") == 1
        });
        for w in workers_of(pool.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(w),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Well inside the claim timeout (30 s on Redis, 60 s on the spool
        // and beanstalkd): only a take-over brings it back this soon.
        let back = std::time::Instant::now() + Duration::from_secs(10);
        while seen("start") < 2 {
            assert!(
                std::time::Instant::now() < back,
                "{broker}, {mode} mode: the killed worker's job did not run again within 10 s:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        e2e::wait_until("the job to finish", Duration::from_secs(20), || {
            seen("end") == 1
        });
        std::thread::sleep(Duration::from_millis(500));
        e2e::quit(pool);
        assert_eq!(
            (seen("start"), seen("end")),
            (2, 1),
            "{broker}, {mode} mode"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

fn killed_worker_s_job_runs_again_at_once_pull() {
    killed_worker_s_job_runs_again_at_once("pull");
}

fn killed_worker_s_job_runs_again_at_once_dispatch() {
    killed_worker_s_job_runs_again_at_once("dispatch");
}

/// Dispatch mode: SIGKILLing the feeder while workers run jobs makes no
/// finished job run again and leaves no job claimed: the next feeder takes
/// the dead one's claims over and settles the reports of the jobs that
/// were running (before, it ignored them and those jobs ran again once
/// their claims expired). A 3 s claim timeout, waited out at the end, lets
/// a job left claimed come back within the test.
fn feeder_kill_runs_no_finished_job_again() {
    for (broker, url) in brokers_under_test("feeder-kill") {
        let queue = e2e::unique_name("fkill");
        let dir = tmp(&queue);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.log");
        let args = serde_json::json!({"path": out, "line": "ran", "sleep_ms": 400}).to_string();
        let with_broker = |cmd: &mut Command| {
            cmd.args(["--broker", &url, "--queue", &queue, "--lease", "3"]);
        };
        let mut enq = prefork();
        with_broker(&mut enq);
        let enq = enq
            .args(["enqueue", "append", &args, "--count", "24"])
            .output()
            .unwrap();
        succeeded(&enq);
        let log = dir.join("pool.log");
        let mut pool = prefork();
        with_broker(&mut pool);
        let pool = pool
            .args(["work", "--workers", "4", "--mode", "dispatch"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let ran = || e2e::counts(&out).get("ran").copied().unwrap_or(0);
        let mut kills = 0;
        for mark in [4, 12] {
            e2e::wait_until("jobs to run", Duration::from_secs(30), || ran() >= mark);
            // Mid-job: the workers are 0-400 ms into their jobs.
            std::thread::sleep(Duration::from_millis(150));
            let feeder = e2e::children_of(pool.id())
                .into_iter()
                .find(|p| e2e::cmdline(*p).contains("feeder"))
                .expect("the feeder process");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(feeder),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            kills += 1;
        }
        e2e::wait_until("every job to run", Duration::from_secs(60), || ran() >= 24);
        // Past the claim timeout: a job left claimed by a dead feeder
        // would be handed out again by now.
        std::thread::sleep(Duration::from_secs(5));
        e2e::quit(pool);
        assert_eq!(
            ran(),
            24,
            "{broker}: {kills} feeder kills made finished jobs run again:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// `demo --jobs 0` starts a pool and stops it cleanly, every time (the
/// QUIT used to come before the master's handler was installed, 4 runs
/// in 5).
fn demo_of_no_jobs_stops_cleanly() {
    for mode in ["pull", "dispatch"] {
        for _ in 0..5 {
            let out = prefork()
                .args([
                    "demo",
                    "--jobs",
                    "0",
                    "--workers",
                    "2",
                    "--quiet",
                    "--mode",
                    mode,
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mode}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
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

/// The Kafka URL with a consumer group of the run's own.
#[cfg(feature = "kafka")]
fn kafka_url() -> Option<String> {
    e2e::broker_url("PREFORK_KAFKA_URL")
        .map(|url| format!("{url}/?group={}", e2e::unique_name("cli-group")))
}

#[cfg(feature = "kafka")]
fn pool_on_kafka() {
    if let Some(url) = kafka_url() {
        pool_on(&url, "pull");
    }
}

#[cfg(feature = "kafka")]
fn dispatch_pool_on_kafka() {
    if let Some(url) = kafka_url() {
        pool_on(&url, "dispatch");
    }
}

fn pool_on_rabbitmq() {
    pool_on_real_broker("PREFORK_RABBITMQ_URL", "pull");
}

fn dispatch_pool_on_rabbitmq() {
    pool_on_real_broker("PREFORK_RABBITMQ_URL", "dispatch");
}

/// Nothing listens on 127.0.0.1:1: `work`, `enqueue`, `stats` and the
/// `dead` commands fail at once, exit non-zero, and name the broker with
/// the password hidden; an unknown scheme is refused as clearly.
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
        for args in [
            &["work", "--workers", "2"][..],
            &["enqueue", "noop"],
            &["stats"],
            &["dead", "list"],
            &["dead", "redrive", "--all"],
            &["dead", "delete", "1"],
        ] {
            let e = fails(broker, args);
            assert!(e.contains(shown), "{args:?}: {e}");
        }
    }
    let e = fails("nats://guest:s3cret@127.0.0.1/", &["enqueue", "noop"]);
    assert!(e.contains("not built into this binary"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let e = fails("amqp://guest:s3cret@127.0.0.1:1/%2f", &["enqueue", "noop"]);
    assert!(e.contains("amqp://guest:***@127.0.0.1:1"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let e = fails("redis://:s3cret@127.0.0.1:99999/0", &["enqueue", "noop"]);
    assert!(e.contains("redis URL"), "{e}");
}

fn main() {
    #[allow(unused_mut)] // extended when built with kafka
    let mut cases = vec![
        Case::new("pool_on_redis", pool_on_redis),
        Case::new("pool_on_beanstalkd", pool_on_beanstalkd),
        Case::new("dispatch_pool_on_redis", dispatch_pool_on_redis),
        Case::new("dispatch_pool_on_beanstalkd", dispatch_pool_on_beanstalkd),
        Case::new("pool_on_rabbitmq", pool_on_rabbitmq),
        Case::new("dispatch_pool_on_rabbitmq", dispatch_pool_on_rabbitmq),
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
            "killed_worker_s_job_runs_again_at_once_pull",
            killed_worker_s_job_runs_again_at_once_pull,
        )
        .limit(Duration::from_secs(120)),
        Case::new(
            "killed_worker_s_job_runs_again_at_once_dispatch",
            killed_worker_s_job_runs_again_at_once_dispatch,
        )
        .limit(Duration::from_secs(120)),
        Case::new(
            "feeder_kill_runs_no_finished_job_again",
            feeder_kill_runs_no_finished_job_again,
        )
        .limit(Duration::from_secs(180)),
        Case::new(
            "demo_of_no_jobs_stops_cleanly",
            demo_of_no_jobs_stops_cleanly,
        ),
        Case::new(
            "graceful_quit_runs_no_job_twice_pull",
            graceful_quit_runs_no_job_twice_pull,
        ),
        Case::new(
            "graceful_quit_runs_no_job_twice_dispatch",
            graceful_quit_runs_no_job_twice_dispatch,
        ),
        Case::new(
            "hard_limit_kills_are_job_failures_pull",
            hard_limit_kills_are_job_failures_pull,
        )
        .limit(Duration::from_secs(120)),
        Case::new(
            "hard_limit_kills_are_job_failures_dispatch",
            hard_limit_kills_are_job_failures_dispatch,
        )
        .limit(Duration::from_secs(120)),
        Case::new(
            "enqueue_dead_list_and_redrive",
            enqueue_dead_list_and_redrive,
        ),
    ];
    #[cfg(feature = "kafka")]
    cases.extend([
        Case::new("pool_on_kafka", pool_on_kafka).limit(Duration::from_secs(120)),
        Case::new("dispatch_pool_on_kafka", dispatch_pool_on_kafka).limit(Duration::from_secs(120)),
    ]);
    run(&cases);
}
