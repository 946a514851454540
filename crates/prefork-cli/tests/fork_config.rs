//! The config file end to end: `prefork check-config` on good and bad
//! files (exit codes, every problem with its line), `prefork run --config`
//! running real jobs on the spool and on Redis (from `PREFORK_REDIS_URL`:
//! a failure under CI when unset, a printed skip elsewhere), and the
//! order of the layers (flags > environment > file > defaults) seen in
//! the running pool's process tree and log.
//! (harness = false: these spawn process trees.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use prefork_tests::e2e;
use prefork_tests::harness::{Case, run};

/// `prefork`, with no `PREFORK_*` setting inherited from the caller, and
/// no control socket.
fn prefork() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prefork"));
    for (var, _) in std::env::vars() {
        if var.starts_with("PREFORK_") && !var.ends_with("_URL") && var != "PREFORK_REQUIRE_BROKERS"
        {
            cmd.env_remove(var);
        }
    }
    cmd.env_remove("RUST_LOG");
    // No control socket: pools of other tests may run beside these, and
    // two masters on the default socket refuse each other.
    cmd.env("PREFORK_CONTROL_SOCKET", "none");
    cmd
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prefork-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn succeeded(out: &Output) {
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/prefork.example.toml")
}

/// The example file passes, and its effective settings show each value
/// with where it came from; a variable and a flag override it there.
fn check_config_accepts_the_example() {
    let out = prefork()
        .arg("check-config")
        .arg(example())
        .output()
        .unwrap();
    succeeded(&out);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("workers = 4  # line 7, column 11\n"),
        "{shown}"
    );
    assert!(
        shown.contains("[retry]\nmax_attempts = 5  # line"),
        "{shown}"
    );
    let out = prefork()
        .arg("check-config")
        .arg(example())
        .args(["--queue", "from-flag"])
        .env("PREFORK_WORKERS", "6")
        .env("PREFORK_QUEUE", "from-env")
        .env("PREFORK_WORKRES", "2")
        .output()
        .unwrap();
    succeeded(&out);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("workers = 6  # $PREFORK_WORKERS\n"),
        "{shown}"
    );
    assert!(
        shown.contains("queue = \"from-flag\"  # --queue\n"),
        "{shown}"
    );
    assert!(
        text(&out.stderr)
            .contains("$PREFORK_WORKRES is not a setting (did you mean $PREFORK_WORKERS?)"),
        "{}",
        text(&out.stderr)
    );
    // The output is a config file that checks, with the same values.
    let dir = tmp("echo");
    let again = dir.join("effective.toml");
    std::fs::write(&again, &shown).unwrap();
    let out = prefork().arg("check-config").arg(&again).output().unwrap();
    succeeded(&out);
    assert!(text(&out.stdout).contains("workers = 6  # line"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A bad file: exit status 1, every problem on stderr with the file, line
/// and column, the password hidden; a bad variable names the variable;
/// `run` refuses the same file before it forks anything.
fn check_config_reports_every_problem() {
    let dir = tmp("bad");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "workers = 0\nwrokers = 3\nbroker = \"redis://:s3cret@127.0.0.1:notaport/0\"\n\
         [shutdown]\nkill_grace = 5\n[retry]\nmax_attempts = -1\n",
    )
    .unwrap();
    let out = prefork()
        .arg("check-config")
        .arg(&file)
        .env("PREFORK_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    let f = file.display();
    for line in [
        format!("{f}:1:11: `workers`: must be between 1 and 4096 (got 0)"),
        format!("{f}:2:1: unknown key `wrokers`: did you mean `workers`?"),
        format!("{f}:3:10: `broker`: redis URL redis://:***@127.0.0.1:notaport/0"),
        format!("{f}:5:14: `shutdown.kill_grace`: wrong type: expected a duration"),
        format!("{f}:7:16: `retry.max_attempts`: out of range: must not be negative (got -1)"),
        "$PREFORK_TIMEOUT: `timeout`: invalid value \"soon\"".to_owned(),
        "6 problems in the settings".to_owned(),
    ] {
        assert!(err.contains(&line), "{line}\nnot in:\n{err}");
    }
    assert!(!err.contains("s3cret"), "{err}");
    let out = prefork()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("5 problems in the settings"),
        "{}",
        text(&out.stderr)
    );
    let out = prefork()
        .args(["check-config", "/nonexistent/prefork.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/prefork.toml"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A running pool: stopped quickly (INT) and waited for if a check fails
/// before [`Pool::quit`], so a failing case leaves no pool behind.
struct Pool(Option<Child>);

impl Pool {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Stops it gracefully (QUIT) and checks its exit status.
    fn quit(mut self) {
        e2e::quit(self.0.take().unwrap());
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = child.wait();
        }
    }
}

/// The master's children that are workers (not the feeder).
fn workers_of(master: u32) -> usize {
    e2e::children_of(master)
        .into_iter()
        .filter(|p| !e2e::cmdline(*p).contains("feeder"))
        .count()
}

/// Enqueues `n` `append` jobs through the file's broker and queue, starts
/// `prefork run --config FILE` with `extra` arguments and `env`, waits for
/// every job, and returns the pool with its log file.
fn run_jobs(
    dir: &Path,
    file: &Path,
    n: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Pool, PathBuf) {
    let out = dir.join("out.log");
    let args = serde_json::json!({"path": out, "line": "ran"}).to_string();
    let enq = prefork()
        .arg("--config")
        .arg(file)
        .args(["enqueue", "append", &args, "--count", &n.to_string()])
        .output()
        .unwrap();
    succeeded(&enq);
    let log = dir.join("pool.log");
    let pool = prefork()
        .arg("run")
        .arg("--config")
        .arg(file)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pool = Pool(Some(pool));
    let ran = || e2e::counts(&out).get("ran").copied().unwrap_or(0);
    e2e::wait_until("the jobs to run", Duration::from_secs(30), || ran() >= n);
    (pool, log)
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let file = dir.join("prefork.toml");
    std::fs::write(&file, body).unwrap();
    file
}

/// `run --config` on a spool: the file's broker, queue and worker count
/// (three workers in the process tree), every job run once.
fn run_from_a_file_on_the_spool() {
    let dir = tmp("spool");
    let body = format!(
        "workers = 3\nbroker = \"spool://{}\"\nqueue = \"from-file\"\n[retry]\nbase = \"10ms\"\n",
        dir.join("spool").display()
    );
    let file = write_config(&dir, &body);
    let (pool, log) = run_jobs(&dir, &file, 60, &[], &[]);
    e2e::wait_until("3 workers", Duration::from_secs(10), || {
        workers_of(pool.id()) == 3
    });
    pool.quit();
    let out = prefork()
        .arg("--config")
        .arg(&file)
        .arg("stats")
        .output()
        .unwrap();
    succeeded(&out);
    assert!(
        text(&out.stdout).starts_with("ready 0\ndelayed 0\nclaimed 0\ndead 0"),
        "{}",
        text(&out.stdout)
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("starting the pool workers=3 mode=pull"),
        "{log}"
    );
    assert!(log.contains("queue=from-file"), "{log}");
    assert_eq!(
        e2e::counts(&dir.join("out.log")).get("ran"),
        Some(&60),
        "no job ran twice"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `run --config` on Redis in dispatch mode, with JSON logs: every job
/// runs once, two workers and a feeder in the tree, every log line an
/// object.
fn run_from_a_file_on_redis() {
    let Some(url) = e2e::broker_url("PREFORK_REDIS_URL") else {
        return;
    };
    let dir = tmp("redis");
    let queue = e2e::unique_name("config");
    let body = format!(
        "workers = 2\nmode = \"dispatch\"\nbroker = \"{url}\"\nqueue = \"{queue}\"\nlookahead = 2\n[logging]\nformat = \"json\"\n"
    );
    let file = write_config(&dir, &body);
    let (pool, log) = run_jobs(&dir, &file, 50, &[], &[]);
    e2e::wait_until("2 workers", Duration::from_secs(10), || {
        workers_of(pool.id()) == 2
    });
    assert_eq!(
        e2e::children_of(pool.id()).len(),
        3,
        "two workers and a feeder"
    );
    pool.quit();
    assert_eq!(e2e::counts(&dir.join("out.log")).get("ran"), Some(&50));
    let log = std::fs::read_to_string(log).unwrap();
    let mut started = false;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["message"] == "starting the pool" {
            assert_eq!(v["fields"]["workers"], 2, "{line}");
            assert_eq!(v["fields"]["mode"], "dispatch", "{line}");
            started = true;
        }
    }
    assert!(started, "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The file says 2 workers, `$PREFORK_WORKERS` 3, `--workers` 4: the pool
/// runs 3 without the flag, 4 with it, and 2 with neither; the log says
/// where the count came from only through the count itself.
fn flags_over_env_over_file() {
    let dir = tmp("layers");
    let body = format!(
        "workers = 2\nbroker = \"spool://{}\"\n",
        dir.join("spool").display()
    );
    let file = write_config(&dir, &body);
    for (extra, env, want) in [
        (&[][..], &[][..], 2),
        (&[], &[("PREFORK_WORKERS", "3")][..], 3),
        (&["--workers", "4"][..], &[("PREFORK_WORKERS", "3")][..], 4),
    ] {
        let (pool, log) = run_jobs(&dir, &file, 10, extra, env);
        e2e::wait_until(&format!("{want} workers"), Duration::from_secs(10), || {
            workers_of(pool.id()) == want
        });
        // No more come: the count is the pool's, not a moment of start-up.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(workers_of(pool.id()), want);
        pool.quit();
        let log = std::fs::read_to_string(log).unwrap();
        assert!(
            log.contains(&format!("starting the pool workers={want} ")),
            "{log}"
        );
        let _ = std::fs::remove_file(dir.join("out.log"));
    }
    // An invalid variable names itself and starts nothing.
    let out = prefork()
        .arg("run")
        .arg("--config")
        .arg(&file)
        .env("PREFORK_WORKERS", "many")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("$PREFORK_WORKERS: `workers`: invalid value \"many\""),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `work` is `run`: the same settings, so `--config` applies to it too.
fn work_is_run() {
    let dir = tmp("work");
    let body = format!(
        "workers = 2\nbroker = \"spool://{}\"\n",
        dir.join("spool").display()
    );
    let file = write_config(&dir, &body);
    let out = dir.join("out.log");
    let args = serde_json::json!({"path": out, "line": "ran"}).to_string();
    succeeded(
        &prefork()
            .arg("--config")
            .arg(&file)
            .args(["enqueue", "append", &args])
            .output()
            .unwrap(),
    );
    let pool = Pool(Some(
        prefork()
            .args(["work", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    e2e::wait_until("the job to run", Duration::from_secs(20), || {
        e2e::counts(&out).get("ran") == Some(&1)
    });
    e2e::wait_until("2 workers", Duration::from_secs(10), || {
        workers_of(pool.id()) == 2
    });
    pool.quit();
    std::fs::remove_dir_all(dir).unwrap();
}

fn main() {
    run(&[
        Case::new(
            "check_config_accepts_the_example",
            check_config_accepts_the_example,
        ),
        Case::new(
            "check_config_reports_every_problem",
            check_config_reports_every_problem,
        ),
        Case::new("run_from_a_file_on_the_spool", run_from_a_file_on_the_spool)
            .limit(Duration::from_secs(60)),
        Case::new("run_from_a_file_on_redis", run_from_a_file_on_redis)
            .limit(Duration::from_secs(60)),
        Case::new("flags_over_env_over_file", flags_over_env_over_file)
            .limit(Duration::from_secs(90)),
        Case::new("work_is_run", work_is_run).limit(Duration::from_secs(60)),
    ]);
}
