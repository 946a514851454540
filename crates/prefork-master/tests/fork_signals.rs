//! The signal table, driven with real signals against a real daemon (this
//! test binary started again as `testd`). Forks: runs under
//! `prefork_tests::harness`, one process per case.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use prefork_tests::harness::{Case, run};
use support::{Daemon, exists, marks, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn ttin_and_ttou_change_the_worker_count() {
    let d = Daemon::start(&[("TESTD_WORKERS", "2")], 2);
    d.signal(Signal::SIGTTIN);
    d.wait_ready(3);
    d.signal(Signal::SIGTTIN);
    d.wait_ready(4);
    let before = d.workers();
    // One at a time: the kernel merges a standard signal sent again before
    // the first one was delivered.
    for n in [3, 2, 1] {
        d.signal(Signal::SIGTTOU);
        let after = d.wait_ready(n);
        assert!(after.is_subset(&before), "scaling down must not fork");
    }
    d.quit();
}

/// Waits until every worker is in the middle of an iteration (its marks
/// file ends with "begin"); returns the marks files.
fn wait_mid_iteration(d: &Daemon, workers: &BTreeSet<i32>) -> Vec<std::path::PathBuf> {
    let files: Vec<_> = workers
        .iter()
        .map(|p| d.dir.join(format!("marks.{p}")))
        .collect();
    let ok = wait_until(WAIT, || {
        files
            .iter()
            .all(|f| marks(f).last().is_some_and(|l| l.starts_with("begin")))
    });
    assert!(ok, "workers never seen mid-iteration\n{}", d.log());
    files
}

fn quit_lets_the_current_iteration_finish() {
    let mut d = Daemon::start(&[("TESTD_WORKERS", "2"), ("TESTD_ITER_MS", "700")], 2);
    let workers = d.workers();
    let files = wait_mid_iteration(&d, &workers);
    d.signal(Signal::SIGQUIT);
    assert_eq!(d.wait_exit(WAIT), Some(0), "{}", d.log());
    for f in &files {
        let m = marks(f);
        let last = m.last().expect("marks");
        assert!(
            last.starts_with("end"),
            "QUIT interrupted an iteration: {m:?}"
        );
        // And the worker did not start another one after QUIT.
        assert!(m.len() <= 4, "{m:?}");
    }
    assert!(
        d.file("exits").lines().all(|l| l.contains("Requested")),
        "{}",
        d.file("exits")
    );
    for w in workers {
        assert!(!exists(w));
    }
    d.cleanup();
}

fn term_stops_the_workers_at_once() {
    let mut d = Daemon::start(&[("TESTD_WORKERS", "2"), ("TESTD_ITER_MS", "60000")], 2);
    let workers = d.workers();
    let files = wait_mid_iteration(&d, &workers);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT), Some(0), "{}", d.log());
    for f in &files {
        let m = marks(f);
        assert_eq!(
            m.last().map(String::as_str),
            Some("begin 0"),
            "TERM let an iteration finish"
        );
    }
    assert!(d.log().contains("stopping (quick)"), "{}", d.log());
    d.cleanup();
}

fn int_is_a_quick_shutdown_too() {
    let mut d = Daemon::start(&[("TESTD_WORKERS", "1"), ("TESTD_ITER_MS", "60000")], 1);
    let workers = d.workers();
    let files = wait_mid_iteration(&d, &workers);
    d.signal(Signal::SIGINT);
    assert_eq!(d.wait_exit(WAIT), Some(0), "{}", d.log());
    assert_eq!(marks(&files[0]).last().map(String::as_str), Some("begin 0"));
    d.cleanup();
}

fn term_can_be_made_graceful() {
    let mut d = Daemon::start(
        &[
            ("TESTD_WORKERS", "1"),
            ("TESTD_ITER_MS", "700"),
            ("TESTD_TERM_GRACEFUL", "1"),
        ],
        1,
    );
    let workers = d.workers();
    let files = wait_mid_iteration(&d, &workers);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT), Some(0), "{}", d.log());
    assert!(marks(&files[0]).last().unwrap().starts_with("end"));
    d.cleanup();
}

fn hup_replaces_every_worker_with_no_moment_at_zero() {
    let n = 3;
    let d = Daemon::start(&[("TESTD_WORKERS", "3"), ("TESTD_ITER_MS", "10")], n);
    let old = d.workers();
    d.signal(Signal::SIGHUP);
    let mut fewest = usize::MAX;
    let ok = wait_until(WAIT, || {
        let ready = d.ready_workers();
        fewest = fewest.min(ready.len());
        ready.len() == n && ready.is_disjoint(&old) && d.workers().len() == n
    });
    assert!(ok, "HUP did not replace every worker\n{}", d.log());
    assert!(
        fewest >= n,
        "at one moment only {fewest} workers were ready"
    );
    let phases = d.file("phases");
    assert!(phases.contains("reloading\nrunning"), "{phases}");
    d.quit();
}

fn winch_stops_every_worker_but_keeps_the_master() {
    let d = Daemon::start(&[("TESTD_WORKERS", "2")], 2);
    d.signal(Signal::SIGWINCH);
    assert!(wait_until(WAIT, || d.workers().is_empty()), "{}", d.log());
    assert!(exists(d.pid()), "the master must stay");
    assert!(d.file("phases").contains("paused"));
    d.signal(Signal::SIGTTIN);
    d.wait_ready(1);
    d.quit();
}

fn usr1_reopens_the_logs_of_every_worker() {
    let d = Daemon::start(&[("TESTD_WORKERS", "2")], 2);
    let workers = d.workers();
    d.signal(Signal::SIGUSR1);
    let ok = wait_until(WAIT, || {
        let got: BTreeSet<i32> = d
            .file("reopened")
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        got == workers
    });
    assert!(ok, "reopened: {:?}\n{}", d.file("reopened"), d.log());
    assert_eq!(d.workers(), workers, "USR1 must not restart workers");
    d.quit();
}

fn usr2_is_ignored_for_now() {
    let d = Daemon::start(&[("TESTD_WORKERS", "1")], 1);
    let workers = d.workers();
    d.signal(Signal::SIGUSR2);
    assert!(wait_until(WAIT, || d.log().contains("USR2")));
    assert_eq!(d.workers(), workers);
    d.quit();
}

fn main() {
    support::maybe_run_daemon();
    run(&[
        Case::new(
            "ttin_and_ttou_change_the_worker_count",
            ttin_and_ttou_change_the_worker_count,
        ),
        Case::new(
            "quit_lets_the_current_iteration_finish",
            quit_lets_the_current_iteration_finish,
        ),
        Case::new(
            "term_stops_the_workers_at_once",
            term_stops_the_workers_at_once,
        ),
        Case::new("int_is_a_quick_shutdown_too", int_is_a_quick_shutdown_too),
        Case::new("term_can_be_made_graceful", term_can_be_made_graceful),
        Case::new(
            "hup_replaces_every_worker_with_no_moment_at_zero",
            hup_replaces_every_worker_with_no_moment_at_zero,
        ),
        Case::new(
            "winch_stops_every_worker_but_keeps_the_master",
            winch_stops_every_worker_but_keeps_the_master,
        ),
        Case::new(
            "usr1_reopens_the_logs_of_every_worker",
            usr1_reopens_the_logs_of_every_worker,
        ),
        Case::new("usr2_is_ignored_for_now", usr2_is_ignored_for_now),
    ]);
}
