//! `Child::terminate`: escalation to SIGKILL for a child that ignores the
//! first signal, a clean stop for one that honours it, with and without
//! pidfds. Each case runs in a process of its own
//! (prefork_tests::harness).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, signal};
use prefork_proc::{Child, ExitStatus, Fork, child, fork};
use prefork_tests::harness::{Case, run};

use common::{child_main, deny_syscalls, pause_forever};

fn main() {
    run(&[
        Case::new("escalates_when_term_is_ignored", || {
            escalates_when_term_is_ignored(true)
        }),
        Case::new("escalates_when_term_is_ignored_without_pidfd", || {
            escalates_when_term_is_ignored(false)
        }),
        Case::new("stops_a_child_that_honours_term", || {
            stops_a_child_that_honours_term(true)
        }),
        Case::new("stops_a_child_that_honours_term_without_pidfd", || {
            stops_a_child_that_honours_term(false)
        }),
        Case::new("default_term_action", default_term_action),
        Case::new(
            "reaps_a_child_that_already_exited",
            reaps_a_child_that_already_exited,
        ),
        Case::new("already_reaped_is_an_error", already_reaped_is_an_error),
    ]);
}

/// Simulates a kernel without pidfds (before 5.3) for this process.
fn without_pidfds() {
    deny_syscalls(
        &[libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal],
        libc::ENOSYS,
    );
}

/// Forks a child that runs `setup` (after resetting its signals), tells the
/// parent it is ready, and waits for signals forever.
fn ready_child(setup: fn()) -> Child {
    let (mut ready_r, mut ready_w) = std::io::pipe().unwrap();
    match fork().unwrap() {
        Fork::Parent(child) => {
            let mut byte = [0u8];
            ready_r.read_exact(&mut byte).unwrap();
            child
        }
        Fork::Child => child_main(|| {
            child::reset_signals().unwrap();
            setup();
            ready_w.write_all(b"r").unwrap();
            pause_forever()
        }),
    }
}

fn escalates_when_term_is_ignored(pidfd: bool) {
    if !pidfd {
        without_pidfds();
    }
    let child = ready_child(|| {
        // SAFETY: ignoring installs no code.
        unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.unwrap();
    });
    assert_eq!(child.pidfd().is_some(), pidfd);
    let status = child
        .terminate(libc::SIGTERM, Duration::from_millis(100))
        .unwrap();
    assert_eq!(
        status,
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false
        }
    );
    assert!(prefork_proc::reap().unwrap().is_empty());
}

extern "C" fn exit_on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

fn stops_a_child_that_honours_term(pidfd: bool) {
    if !pidfd {
        without_pidfds();
    }
    let child = ready_child(|| {
        // SAFETY: the handler only calls _exit (async-signal-safe).
        unsafe { signal(Signal::SIGTERM, SigHandler::Handler(exit_on_term)) }.unwrap();
    });
    assert_eq!(child.pidfd().is_some(), pidfd);
    // A generous grace period: the child answers long before it ends.
    let status = child
        .terminate(libc::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
}

fn default_term_action() {
    let child = ready_child(|| {});
    let status = child
        .terminate(libc::SIGQUIT, Duration::from_secs(30))
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGQUIT));
}

fn reaps_a_child_that_already_exited() {
    let child = match fork().unwrap() {
        Fork::Parent(child) => child,
        Fork::Child => child_main(|| {}),
    };
    let status = child
        .terminate(libc::SIGTERM, Duration::from_secs(30))
        .unwrap();
    // Either it exited before the signal, or the signal (default action)
    // caught it first: never a SIGKILL, and always reaped.
    assert_ne!(status.signal(), Some(libc::SIGKILL));
    assert!(prefork_proc::reap().unwrap().is_empty());
}

fn already_reaped_is_an_error() {
    let child = match fork().unwrap() {
        Fork::Parent(child) => child,
        Fork::Child => child_main(|| {}),
    };
    assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0));
    let err = child
        .terminate(libc::SIGTERM, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECHILD));
}
