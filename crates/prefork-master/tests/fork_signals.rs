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
    // The master logs `running` once the last old worker is reaped, which
    // may come a moment after the last replacement reported ready.
    let back_to_running = wait_until(WAIT, || d.file("phases").contains("reloading\nrunning"));
    assert!(back_to_running, "phases: {}", d.file("phases"));
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

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn process_titles_say_who_is_who() {
    let d = Daemon::start(&[("TESTD_WORKERS", "2")], 2);
    assert!(
        wait_until(WAIT, || cmdline(d.pid()) == "testd master"),
        "{:?}",
        cmdline(d.pid())
    );
    let mut titles: Vec<String> = Vec::new();
    assert!(
        wait_until(WAIT, || {
            titles = d.workers().iter().map(|p| cmdline(*p)).collect();
            titles.sort();
            titles == ["testd worker[0] running", "testd worker[1] running"]
        }),
        "{titles:?}"
    );
    d.quit();
}

/// What `/proc/PID/fd` of a worker points at, sorted. An fd closed between
/// the listing and its `readlink` (the worker opens files of its own, e.g.
/// `/proc/self/stat` for its stats) is skipped: it was no inherited one.
fn fd_targets(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| match std::fs::read_link(e.path()) {
            Ok(target) => Some(target.to_string_lossy().into_owned()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => panic!("readlink {}: {err}", e.path().display()),
        })
        .collect();
    v.sort();
    v
}

fn a_worker_holds_none_of_the_masters_descriptors() {
    // What this test process holds (e.g. cargo's jobserver pipe, not
    // close-on-exec) is inherited by the daemon; leave that aside.
    let inherited = fd_targets(std::process::id() as i32);
    let d = Daemon::start(&[("TESTD_WORKERS", "3")], 3);
    let master = fd_targets(d.pid());
    assert_eq!(
        sockets(&master),
        3,
        "the master holds one channel per worker: {master:?}"
    );
    assert!(master.iter().any(|t| t.contains("eventpoll")), "{master:?}");
    for w in d.workers() {
        holds_only_its_own(&d, w, &inherited, &master);
    }
    d.quit();
}

/// The control socket's listener and its clients stay in the master: a
/// worker forked while a client is connected holds neither, and a request
/// and a signal reach the same handler (scale and TTIN).
fn a_worker_holds_no_control_socket() {
    use prefork_master::control::{Request, request};
    let inherited = fd_targets(std::process::id() as i32);
    let d = Daemon::start(&[("TESTD_WORKERS", "1"), ("TESTD_CONTROL", "1")], 1);
    let path = d.dir.join("control.sock");
    let _idle = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let reply = request(&path, &Request::Scale { workers: 2 }).unwrap();
    assert_eq!((reply.ok, reply.workers), (true, Some(2)));
    d.wait_ready(2);
    d.signal(Signal::SIGTTIN);
    d.wait_ready(3);
    let status = request(&path, &Request::Status).unwrap().status.unwrap();
    assert_eq!(status.target, 3);
    // Three channels, the listener, the idle client (the master closes
    // the status client's end once it has seen it leave).
    let mut master = Vec::new();
    let five = wait_until(WAIT, || {
        master = fd_targets(d.pid());
        sockets(&master) == 5
    });
    assert!(five, "{master:?}");
    for w in d.workers() {
        holds_only_its_own(&d, w, &inherited, &master);
    }
    d.quit();
    assert!(!path.exists(), "the socket file goes with the master");
}

fn sockets(fds: &[String]) -> usize {
    fds.iter().filter(|t| t.starts_with("socket:")).count()
}

/// Worker `w` holds stdout and stderr (the log), its marks file and its
/// own channel: no epoll, no signal pipe, no sibling's channel, nothing
/// else of the `master`'s (`inherited`: what the test process passed on).
fn holds_only_its_own(d: &Daemon, w: i32, inherited: &[String], master: &[String]) {
    let log = d.dir.join("log").to_string_lossy().into_owned();
    // The test daemon's ready hook writes `ready/PID` and closes it; the
    // ready file can be seen while that file is still open, and the worker
    // reads its own `/proc/PID/stat` now and then (its memory and title
    // upkeep), opening and closing it: look again until neither is open.
    let mut fds: Vec<String> = Vec::new();
    wait_until(WAIT, || {
        fds = fd_targets(w)
            .into_iter()
            .filter(|t| !inherited.contains(t) || t.starts_with("socket:"))
            .collect();
        !fds.iter()
            .any(|t| t.contains("/ready/") || t.starts_with("/proc/"))
    });
    let own = fds
        .iter()
        .find(|t| t.starts_with("socket:"))
        .expect("its channel")
        .clone();
    let marks = d
        .dir
        .join(format!("marks.{w}"))
        .to_string_lossy()
        .into_owned();
    assert_eq!(fds, [log.clone(), log, marks, own.clone()], "worker {w}");
    assert!(
        !master.contains(&own),
        "the worker's end is not the master's"
    );
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
        Case::new(
            "a_worker_holds_no_control_socket",
            a_worker_holds_no_control_socket,
        ),
        Case::new(
            "process_titles_say_who_is_who",
            process_titles_say_who_is_who,
        ),
        Case::new(
            "a_worker_holds_none_of_the_masters_descriptors",
            a_worker_holds_none_of_the_masters_descriptors,
        ),
    ]);
}
