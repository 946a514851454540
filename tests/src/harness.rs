//! A runner that gives every test case a process of its own.
//!
//! A test target declared with `harness = false` calls [`run`] from `main`.
//! The runner starts the test binary again once per case (with the case's
//! name in an environment variable), so each case runs on the main thread of
//! a fresh, single-threaded process: forking is safe, signal dispositions
//! and the signal mask are the defaults, and nothing one case does (a
//! handler installed, a child left behind) can leak into the next.
//!
//! In the case's process the runner also:
//! - resets every signal disposition to its default (SIGPIPE ignored, as
//!   Rust programs start) and empties the signal mask, since ignored
//!   signals and the mask survive `exec` (think `nohup`);
//! - arms `alarm(2)` with the case's time limit, so a hung case is killed by
//!   SIGALRM instead of hanging CI;
//! - checks, after the case returns, that it left no child process behind
//!   (no zombie, no running child): a case that leaks one fails.
//!
//! Cases report failure by panicking (`assert!` and friends), as usual.
//!
//! ```no_run
//! use prefork_tests::harness::{Case, run};
//!
//! fn forks_and_reaps() {
//!     let status = std::process::Command::new("true").status().unwrap();
//!     assert!(status.success());
//! }
//!
//! fn main() {
//!     run(&[Case::new("forks_and_reaps", forks_and_reaps)]);
//! }
//! ```
//!
//! Arguments: a plain argument filters cases by substring (as libtest does);
//! `--list` prints the case names; other flags (`--nocapture`, ...) are
//! accepted and ignored.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, waitpid};

/// Environment variable that tells a re-executed test binary which case to run.
const CASE_ENV: &str = "PREFORK_TEST_CASE";

/// One test case: a name and a function that panics on failure.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    name: &'static str,
    body: fn(),
    limit: Duration,
    hidden: bool,
}

impl Case {
    /// A case with the default time limit of 60 seconds.
    pub const fn new(name: &'static str, body: fn()) -> Case {
        Case {
            name,
            body,
            limit: Duration::from_secs(60),
            hidden: false,
        }
    }

    /// The same case with another time limit (whole seconds, at least one).
    pub const fn limit(mut self, limit: Duration) -> Case {
        self.limit = limit;
        self
    }

    /// The same case, left out of normal runs: it runs only when asked for
    /// by name through the environment, e.g. by another case that checks it
    /// fails the way it should.
    pub const fn hidden(mut self) -> Case {
        self.hidden = true;
        self
    }
}

/// Runs the cases, each in a process of its own, and exits the process:
/// status 0 when every selected case passed, 1 otherwise.
pub fn run(cases: &[Case]) -> ! {
    if let Ok(name) = std::env::var(CASE_ENV) {
        std::process::exit(run_one(cases, &name));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for case in cases.iter().filter(|c| !c.hidden) {
            println!("{}: test", case.name);
        }
        std::process::exit(0);
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Case> = cases
        .iter()
        .filter(|c| !c.hidden)
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    let exe = std::env::current_exe().expect("current_exe");
    println!("\nrunning {} tests (one process each)", selected.len());
    let mut failed = Vec::new();
    let started = Instant::now();
    for case in &selected {
        let t = Instant::now();
        let status = Command::new(&exe)
            .env(CASE_ENV, case.name)
            .stdin(Stdio::null())
            .status()
            .expect("spawn the test binary again");
        let ok = status.success();
        println!(
            "test {} ... {} ({:.2}s)",
            case.name,
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if !ok {
            eprintln!("    {}: {status}", case.name);
            failed.push(case.name);
        }
    }
    let result = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {} passed; {} failed; finished in {:.2}s",
        selected.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failures: {}", failed.join(", "));
    }
    std::process::exit(if failed.is_empty() { 0 } else { 1 })
}

/// Runs one case in this (fresh) process and returns the exit status.
fn run_one(cases: &[Case], name: &str) -> i32 {
    let Some(case) = cases.iter().find(|c| c.name == name) else {
        eprintln!("no test case named {name:?}");
        return 2;
    };
    // Dispositions set to "ignore" survive exec: a runner started under
    // `nohup` would hand every case an ignored SIGHUP. Start each case from
    // the state of a fresh Rust program instead, whatever launched us.
    if let Err(e) = prefork_proc::child::reset_signals() {
        eprintln!("cannot reset the signal state for case {name}: {e}");
        return 2;
    }
    let secs = case.limit.as_secs().clamp(1, u64::from(u32::MAX));
    nix::unistd::alarm::set(u32::try_from(secs).unwrap_or(u32::MAX));
    (case.body)();
    nix::unistd::alarm::cancel();
    match leftover_children() {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("case {name} left a child behind: {msg}");
            1
        }
    }
}

/// Fails when this process still has a child, running or a zombie.
fn leftover_children() -> Result<(), String> {
    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        Err(Errno::ECHILD) => Ok(()),
        Ok(status) => Err(format!("waitpid(-1) found {status:?}")),
        Err(e) => Err(format!("waitpid(-1) failed: {e}")),
    }
}
