//! `fork` and `fork_unchecked`: the thread check, the signal mask around
//! fork(2), and the pidfd of the new child. Each case runs in a process of
//! its own (prefork_tests::harness).

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, signal};
use prefork_proc::{ExitStatus, Fork, ForkRefused, child, fork, fork_unchecked, thread_count};
use prefork_tests::harness::{Case, run};

use common::{child_main, eventually};

fn main() {
    run(&[
        Case::new("refuses_with_a_second_thread", refuses_with_a_second_thread),
        Case::new("unchecked_forks_with_threads", unchecked_forks_with_threads),
        Case::new(
            "child_starts_fully_blocked_parent_mask_restored",
            child_starts_fully_blocked_parent_mask_restored,
        ),
        Case::new(
            "parent_handler_never_runs_in_child",
            parent_handler_never_runs_in_child,
        ),
        Case::new(
            "pidfd_readable_when_child_exits",
            pidfd_readable_when_child_exits,
        ),
    ]);
}

/// A thread that waits for its channel; returns its sender and handle.
fn park_a_thread() -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (release, wait) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let _ = wait.recv();
    });
    (release, handle)
}

fn refuses_with_a_second_thread() {
    assert_eq!(thread_count().unwrap(), 1);
    let (release, handle) = park_a_thread();
    assert_eq!(thread_count().unwrap(), 2);

    let err = fork().expect_err("fork must refuse with two threads");
    assert_eq!(err.kind(), std::io::ErrorKind::Other);
    assert!(err.to_string().contains("2 threads"), "{err}");
    let refused = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<ForkRefused>())
        .expect("a ForkRefused inside");
    assert_eq!(refused.threads(), 2);
    // Nothing was forked.
    assert!(prefork_proc::reap().unwrap().is_empty());

    // Once the thread is gone, fork works again.
    release.send(()).unwrap();
    handle.join().unwrap();
    assert!(eventually(Duration::from_secs(5), || thread_count()
        .unwrap()
        == 1));
    match fork().unwrap() {
        Fork::Parent(child) => assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0)),
        Fork::Child => child_main(|| {}),
    }
}

fn unchecked_forks_with_threads() {
    let (release, handle) = park_a_thread();
    assert_eq!(thread_count().unwrap(), 2);
    // SAFETY: the child only calls _exit (async-signal-safe).
    match unsafe { fork_unchecked() }.unwrap() {
        Fork::Parent(child) => assert_eq!(child.wait().unwrap(), ExitStatus::Exited(5)),
        // SAFETY: _exit is always safe to call.
        Fork::Child => unsafe { libc::_exit(5) },
    }
    release.send(()).unwrap();
    handle.join().unwrap();
}

/// Every signal number the process can block (glibc hides 32 and 33).
fn blockable() -> impl Iterator<Item = libc::c_int> {
    (1..=libc::SIGRTMAX())
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP && !(32..=33).contains(&s))
}

/// The calling thread's signal mask, as a raw sigset.
fn current_mask() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is valid storage; sigprocmask with a NULL
    // new set only reads the mask into it.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        assert_eq!(
            libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask),
            0
        );
        mask
    }
}

fn is_member(set: &libc::sigset_t, signal: libc::c_int) -> bool {
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigismember(set, signal) == 1 }
}

fn child_starts_fully_blocked_parent_mask_restored() {
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&usr1), None).unwrap();

    match fork().unwrap() {
        Fork::Parent(child) => {
            assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0));
            let mask = current_mask();
            for s in blockable() {
                assert_eq!(is_member(&mask, s), s == libc::SIGUSR1, "signal {s}");
            }
        }
        Fork::Child => child_main(|| {
            let mask = current_mask();
            for s in blockable() {
                assert!(is_member(&mask, s), "signal {s} not blocked in the child");
            }
            child::reset_signals().unwrap();
            let mask = current_mask();
            for s in blockable() {
                assert!(!is_member(&mask, s), "signal {s} still blocked");
            }
        }),
    }
}

static HANDLER_RAN: AtomicBool = AtomicBool::new(false);

extern "C" fn note_usr2(_: libc::c_int) {
    HANDLER_RAN.store(true, Ordering::SeqCst);
}

fn parent_handler_never_runs_in_child() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe { signal(Signal::SIGUSR2, SigHandler::Handler(note_usr2)) }.unwrap();
    let (mut ready_r, mut ready_w) = std::io::pipe().unwrap();
    let (mut go_r, mut go_w) = std::io::pipe().unwrap();

    match fork().unwrap() {
        Fork::Parent(child) => {
            let mut byte = [0u8];
            ready_r.read_exact(&mut byte).unwrap();
            // The parent's handler is still installed in the child, but
            // SIGUSR2 is blocked there: it stays pending.
            child.signal(libc::SIGUSR2).unwrap();
            go_w.write_all(b"g").unwrap();
            // reset_signals() then delivers it with the default action.
            assert_eq!(
                child.wait().unwrap(),
                ExitStatus::Signaled {
                    signal: libc::SIGUSR2,
                    core_dumped: false
                }
            );
            assert!(!HANDLER_RAN.load(Ordering::SeqCst));
        }
        Fork::Child => child_main(|| {
            ready_w.write_all(b"r").unwrap();
            let mut byte = [0u8];
            go_r.read_exact(&mut byte).unwrap();
            assert!(eventually(Duration::from_secs(10), || {
                // SAFETY: all-zero storage for sigpending to fill.
                let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
                // SAFETY: `pending` is valid, writable storage.
                assert_eq!(unsafe { libc::sigpending(&mut pending) }, 0);
                is_member(&pending, libc::SIGUSR2)
            }));
            assert!(!HANDLER_RAN.load(Ordering::SeqCst), "parent's handler ran");
            child::reset_signals().unwrap();
            // Not reached: SIGUSR2's default action ends the process.
            assert!(!HANDLER_RAN.load(Ordering::SeqCst), "parent's handler ran");
        }),
    }
}

fn pidfd_readable_when_child_exits() {
    let (mut go_r, mut go_w) = std::io::pipe().unwrap();
    match fork().unwrap() {
        Fork::Parent(child) => {
            let pidfd = child.pidfd().expect("Linux >= 5.3 gives a pidfd");
            let readable = |timeout: PollTimeout| {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, timeout).unwrap() == 1
            };
            assert!(
                !readable(PollTimeout::ZERO),
                "readable while the child runs"
            );
            go_w.write_all(b"g").unwrap();
            assert!(readable(PollTimeout::try_from(10_000).unwrap()));
            assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0));
        }
        Fork::Child => child_main(|| {
            let mut byte = [0u8];
            go_r.read_exact(&mut byte).unwrap();
        }),
    }
}
