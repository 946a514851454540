//! Faults: killed, hung, crashing, garbage-spewing workers are replaced; a
//! crash loop makes the master give up; a SIGKILLed master takes its
//! workers with it. Real processes, real signals. Forks: runs under
//! `prefork_tests::harness`, one process per case.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prefork_tests::harness::{Case, run};
use support::{Daemon, exists, is_zombie, reap_orphans, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// Waits until the master has `n` ready workers, none of them in `gone`,
/// and no zombie among its children.
fn wait_replaced(d: &Daemon, n: usize, gone: &[i32]) {
    let ok = wait_until(WAIT, || {
        let ready = d.ready_workers();
        ready.len() == n
            && gone.iter().all(|g| !ready.contains(g))
            && d.workers().iter().all(|p| !is_zombie(*p))
            && d.workers().len() == n
    });
    assert!(ok, "not replaced: {:?}\n{}", d.workers(), d.log());
    for g in gone {
        assert!(!exists(*g), "{g} was not reaped");
    }
}

/// The line of the `exits` file for `pid`.
fn exit_line(d: &Daemon, pid: i32) -> String {
    let mut line = String::new();
    let ok = wait_until(WAIT, || {
        line = d
            .file("exits")
            .lines()
            .find(|l| l.starts_with(&format!("{pid} ")))
            .unwrap_or_default()
            .to_owned();
        !line.is_empty()
    });
    assert!(ok, "no exit recorded for {pid}\n{}", d.log());
    line
}

fn a_sigkilled_worker_is_replaced() {
    let d = Daemon::start(&[("TESTD_WORKERS", "2")], 2);
    let victim = *d.workers().iter().next().unwrap();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_replaced(&d, 2, &[victim]);
    let line = exit_line(&d, victim);
    assert!(
        line.contains("Unexpected") && line.contains("SIGKILL"),
        "{line}"
    );
    d.quit();
}

fn a_hung_worker_is_killed_within_its_timeout() {
    let timeout = Duration::from_millis(1000);
    let d = Daemon::start(
        &[
            ("TESTD_WORKERS", "2"),
            ("TESTD_MODE", "hang"),
            ("TESTD_TIMEOUT_MS", "1000"),
            ("TESTD_ITER_MS", "5"),
        ],
        2,
    );
    // Find the hanging worker as soon as it says so.
    let mut hung = None;
    assert!(wait_until(WAIT, || {
        hung = std::fs::read_dir(&d.dir).unwrap().flatten().find_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("hanging.")?
                .parse::<i32>()
                .ok()
        });
        hung.is_some()
    }));
    let seen = Instant::now();
    let hung = hung.unwrap();
    assert!(wait_until(WAIT, || !exists(hung) || is_zombie(hung)));
    let took = seen.elapsed();
    // The last heartbeat went out at most one heartbeat interval (a
    // quarter of the timeout) before the hang began.
    assert!(
        took >= timeout * 3 / 4 - Duration::from_millis(50),
        "killed too early: {took:?}"
    );
    assert!(
        took <= timeout + Duration::from_millis(500),
        "killed too late: {took:?}"
    );
    let line = exit_line(&d, hung);
    assert!(line.contains("Hung") && line.contains("SIGKILL"), "{line}");
    assert!(
        d.log().contains("missed its heartbeat timeout"),
        "{}",
        d.log()
    );
    wait_replaced(&d, 2, &[hung]);
    d.quit();
}

/// Runs the daemon in `mode` (worker 0 misbehaves once), checks worker 0
/// exits with `status` and is replaced.
fn misbehaving_worker_is_replaced(mode: &str, status: &str, cause: &str) {
    let d = Daemon::start(&[("TESTD_WORKERS", "2"), ("TESTD_MODE", mode)], 2);
    let mut line = String::new();
    assert!(wait_until(WAIT, || {
        line = d.file("exits");
        !line.is_empty()
    }));
    let pid: i32 = line.split_whitespace().next().unwrap().parse().unwrap();
    assert!(line.contains(status), "{mode}: {line}");
    assert!(line.contains(cause), "{mode}: {line}");
    wait_replaced(&d, 2, &[pid]);
    d.quit();
}

fn a_panicking_worker_is_replaced() {
    misbehaving_worker_is_replaced("panic", "exited with code 101", "Unexpected");
}

fn a_segfaulting_worker_is_replaced() {
    misbehaving_worker_is_replaced("segfault", "SIGSEGV", "Unexpected");
}

fn a_worker_that_exits_early_is_replaced() {
    misbehaving_worker_is_replaced("exit", "exited with code 3", "Unexpected");
}

fn a_failing_iteration_ends_the_worker_and_it_is_replaced() {
    misbehaving_worker_is_replaced("error", "exited with code 1", "Unexpected");
}

fn a_worker_sending_garbage_is_killed_and_replaced() {
    misbehaving_worker_is_replaced("garbage", "SIGKILL", "Protocol");
}

fn workers_that_always_fail_at_start_make_the_master_give_up(mode: &str) {
    let mut d = Daemon::spawn(&[
        ("TESTD_WORKERS", "2"),
        ("TESTD_MODE", mode),
        ("TESTD_CRASH_LIMIT", "3"),
        ("TESTD_BACKOFF_MS", "20"),
        ("TESTD_BACKOFF_MAX_MS", "80"),
    ]);
    assert_eq!(d.wait_exit(WAIT), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("giving up"), "{log}");
    assert!(log.contains("restart after backoff"), "{log}");
    // Each of the 2 slots failed 3 times in a row (one may have tried
    // again while the other reached its 3rd).
    let exits = d.file("exits");
    let failures = exits.lines().filter(|l| l.contains("Unexpected")).count();
    assert!((6..=10).contains(&failures), "{exits}");
    assert!(d.file("report").contains("crash loop"));
    d.cleanup();
}

fn a_crash_loop_in_start_makes_the_master_give_up() {
    workers_that_always_fail_at_start_make_the_master_give_up("fail_at_start");
}

fn a_panic_loop_in_start_makes_the_master_give_up() {
    workers_that_always_fail_at_start_make_the_master_give_up("panic_at_start");
}

fn a_sigkilled_master_leaves_no_worker_behind() {
    let mut d = Daemon::start(&[("TESTD_WORKERS", "3"), ("TESTD_ITER_MS", "10")], 3);
    let workers = d.workers();
    d.signal(Signal::SIGKILL);
    d.child.wait().unwrap();
    // The orphans are reparented to this process (a subreaper): they must
    // die on their own, and are reaped here.
    let mut reaped = 0;
    let ok = wait_until(WAIT, || {
        reaped += reap_orphans();
        workers.iter().all(|w| !exists(*w))
    });
    assert!(
        ok,
        "workers outlived their master: {workers:?}\n{}",
        d.log()
    );
    assert_eq!(reaped, workers.len());
    d.cleanup();
}

fn a_bad_setting_is_refused_at_start() {
    let mut d = Daemon::spawn(&[("TESTD_TIMEOUT_MS", "0")]);
    assert_eq!(d.wait_exit(WAIT), Some(2));
    assert!(d.log().contains("invalid setting `timeout`"), "{}", d.log());
    assert!(d.workers().is_empty());
    d.cleanup();
}

fn a_multi_threaded_master_refuses_to_run() {
    let mut d = Daemon::spawn(&[("TESTD_THREADED", "1")]);
    assert_eq!(d.wait_exit(WAIT), Some(3));
    assert!(d.log().contains("single-threaded"), "{}", d.log());
    assert!(d.workers().is_empty());
    d.cleanup();
}

fn main() {
    support::maybe_run_daemon();
    run(&[
        Case::new(
            "a_sigkilled_worker_is_replaced",
            a_sigkilled_worker_is_replaced,
        ),
        Case::new(
            "a_hung_worker_is_killed_within_its_timeout",
            a_hung_worker_is_killed_within_its_timeout,
        ),
        Case::new(
            "a_panicking_worker_is_replaced",
            a_panicking_worker_is_replaced,
        ),
        Case::new(
            "a_segfaulting_worker_is_replaced",
            a_segfaulting_worker_is_replaced,
        ),
        Case::new(
            "a_worker_that_exits_early_is_replaced",
            a_worker_that_exits_early_is_replaced,
        ),
        Case::new(
            "a_failing_iteration_ends_the_worker_and_it_is_replaced",
            a_failing_iteration_ends_the_worker_and_it_is_replaced,
        ),
        Case::new(
            "a_worker_sending_garbage_is_killed_and_replaced",
            a_worker_sending_garbage_is_killed_and_replaced,
        ),
        Case::new(
            "a_crash_loop_in_start_makes_the_master_give_up",
            a_crash_loop_in_start_makes_the_master_give_up,
        ),
        Case::new(
            "a_panic_loop_in_start_makes_the_master_give_up",
            a_panic_loop_in_start_makes_the_master_give_up,
        ),
        Case::new(
            "a_sigkilled_master_leaves_no_worker_behind",
            a_sigkilled_master_leaves_no_worker_behind,
        ),
        Case::new(
            "a_bad_setting_is_refused_at_start",
            a_bad_setting_is_refused_at_start,
        ),
        Case::new(
            "a_multi_threaded_master_refuses_to_run",
            a_multi_threaded_master_refuses_to_run,
        ),
    ]);
}
