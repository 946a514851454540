//! `child::die_with_parent`: a grandchild dies when its parent is
//! SIGKILLed, and the getppid() check catches a parent that died first.
//! Each case runs in a process of its own (prefork_tests::harness); the
//! test process makes itself a child subreaper, so orphaned grandchildren
//! come back to it to be reaped.

mod common;

use std::time::Duration;

use nix::sys::prctl::set_child_subreaper;
use prefork_proc::{Child, ExitStatus, Fork, child, fork};
use prefork_tests::harness::{Case, run};

use common::{child_main, eventually, pause_forever, recv_pid, send_pid};

fn main() {
    run(&[
        Case::new("dies_when_parent_is_killed", dies_when_parent_is_killed),
        Case::new("sees_parent_already_gone", sees_parent_already_gone),
    ]);
}

/// Waits for a child with a deadline: a missing signal fails the test
/// instead of hanging it.
fn wait_with_deadline(child: &Child) -> ExitStatus {
    let mut status = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "process {} still alive",
        child.pid()
    );
    status.unwrap()
}

fn dies_when_parent_is_killed() {
    set_child_subreaper(true).unwrap();
    let (mut from_b, mut to_test) = std::io::pipe().unwrap();
    // The test forks A; A forks B; B asks to die with A (SIGUSR1, so its
    // status proves which signal ended it) and reports its pid once set.
    let a = match fork().unwrap() {
        Fork::Parent(a) => a,
        Fork::Child => child_main(|| {
            let a = std::process::id() as libc::pid_t;
            match fork().unwrap() {
                Fork::Parent(b) => {
                    std::mem::forget(b);
                    pause_forever()
                }
                Fork::Child => child_main(|| {
                    child::reset_signals().unwrap();
                    child::die_with_parent(libc::SIGUSR1, a).unwrap();
                    assert_eq!(
                        nix::sys::prctl::get_pdeathsig().unwrap(),
                        Some(nix::sys::signal::Signal::SIGUSR1)
                    );
                    send_pid(&mut to_test, std::process::id() as libc::pid_t);
                    pause_forever()
                }),
            }
        }),
    };
    let b = Child::from_pid(recv_pid(&mut from_b));
    a.signal(libc::SIGKILL).unwrap();
    assert_eq!(
        a.wait().unwrap(),
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false
        }
    );
    // B was reparented to us (the subreaper) and killed by its death signal.
    assert_eq!(
        wait_with_deadline(&b),
        ExitStatus::Signaled {
            signal: libc::SIGUSR1,
            core_dumped: false
        }
    );
    assert!(prefork_proc::reap().unwrap().is_empty());
}

fn sees_parent_already_gone() {
    set_child_subreaper(true).unwrap();
    let (mut from_b, mut to_test) = std::io::pipe().unwrap();
    // A forks B and exits at once; B, orphaned, must learn that
    // PR_SET_PDEATHSIG came too late.
    let a = match fork().unwrap() {
        Fork::Parent(a) => a,
        Fork::Child => child_main(|| {
            let a = std::process::id() as libc::pid_t;
            match fork().unwrap() {
                Fork::Parent(b) => std::mem::forget(b),
                Fork::Child => child_main(|| {
                    send_pid(&mut to_test, std::process::id() as libc::pid_t);
                    assert!(eventually(Duration::from_secs(10), || {
                        nix::unistd::getppid().as_raw() != a
                    }));
                    let err = child::die_with_parent(libc::SIGUSR1, a).unwrap_err();
                    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
                }),
            }
        }),
    };
    let b = Child::from_pid(recv_pid(&mut from_b));
    assert_eq!(a.wait().unwrap(), ExitStatus::Exited(0));
    assert_eq!(wait_with_deadline(&b), ExitStatus::Exited(0));
    assert!(prefork_proc::reap().unwrap().is_empty());
}
