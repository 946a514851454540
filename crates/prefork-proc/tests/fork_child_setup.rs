//! Child set-up: `close_fds_except` (with close_range, and with the
//! /proc/self/fd fallback), `reset_signals`, `set_title`. Each case runs in
//! a process of its own (prefork_tests::harness).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use prefork_proc::{ExitStatus, Fork, child, fork};
use prefork_tests::harness::{Case, run};

use common::{child_main, deny_syscalls, open_fds};

fn main() {
    run(&[
        Case::new("closes_all_but_kept_fds", || closes_all_but_kept_fds(None)),
        Case::new("closes_all_but_kept_fds_without_close_range", || {
            closes_all_but_kept_fds(Some(libc::ENOSYS))
        }),
        Case::new("closes_all_but_kept_fds_when_close_range_is_denied", || {
            closes_all_but_kept_fds(Some(libc::EPERM))
        }),
        Case::new(
            "reset_signals_gives_a_clean_state",
            reset_signals_gives_a_clean_state,
        ),
        Case::new("title_shows_in_proc", title_shows_in_proc),
        Case::new(
            "long_title_is_cut_to_the_argv_area",
            long_title_is_cut_to_the_argv_area,
        ),
        Case::new("title_refused_with_threads", title_refused_with_threads),
    ]);
}

/// Opens a file and moves it to exactly `at` (leaked: the test ends the
/// process).
fn open_at(at: RawFd) -> RawFd {
    let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
    // SAFETY: dup2 onto a number we chose; nothing else uses it.
    assert_eq!(unsafe { libc::dup2(fd, at) }, at);
    // SAFETY: `fd` is ours and no longer needed.
    unsafe { libc::close(fd) };
    at
}

fn closes_all_but_kept_fds(deny_close_range: Option<i32>) {
    if let Some(errno) = deny_close_range {
        deny_syscalls(&[libc::SYS_close_range], errno);
    }
    // A spread of fds: CLOEXEC or not, low and high numbers, gaps.
    let (pipe_r, pipe_w) = std::io::pipe().unwrap();
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let inherited = open_at(7); // dup2 clears CLOEXEC
    let high = open_at(300);
    let higher = open_at(4000);
    let others: BTreeSet<RawFd> = [pipe_r.as_raw_fd(), pipe_w.as_raw_fd(), sock.as_raw_fd()].into();
    assert!(open_fds().is_superset(&[0, 1, 2, inherited, high, higher].into()));

    match fork().unwrap() {
        Fork::Parent(child) => assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0)),
        Fork::Child => child_main(|| {
            if let Some(errno) = deny_close_range {
                // SAFETY: close_range on an fd range with no open fds.
                let ret = unsafe { libc::syscall(libc::SYS_close_range, 9000, 9001, 0) };
                assert_eq!(ret, -1);
                assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(errno));
            }
            let kept_pipe = pipe_w.as_raw_fd();
            // Duplicates, stdio, negatives and closed fds in the list are ignored.
            let keep = [high, kept_pipe, 2, -1, high, 5000, 0];
            child::close_fds_except(&keep).unwrap();
            let expected: BTreeSet<RawFd> = [0, 1, 2, kept_pipe, high].into();
            assert_eq!(
                open_fds(),
                expected,
                "closed: {others:?}, {inherited}, {higher}"
            );
            // Nothing kept in the list: only stdio stays.
            child::close_fds_except(&[]).unwrap();
            assert_eq!(open_fds(), [0, 1, 2].into());
            std::mem::forget((pipe_r, pipe_w, sock));
        }),
    }
}

/// The disposition of `signal`: SIG_DFL, SIG_IGN or a handler address.
fn disposition(signal: libc::c_int) -> libc::sighandler_t {
    // SAFETY: all-zero sigaction is valid storage; a NULL new action only
    // queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

extern "C" fn handler(_: libc::c_int) {}

fn reset_signals_gives_a_clean_state() {
    // A master's signal state: handlers, ignores, a blocked set.
    let handle = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::SA_RESTART,
        SigSet::all(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for s in [
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGTTIN,
    ] {
        // SAFETY: the handler does nothing (async-signal-safe).
        unsafe { sigaction(s, &handle) }.unwrap();
    }
    for s in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGWINCH] {
        // SAFETY: ignoring installs no code.
        unsafe { sigaction(s, &ignore) }.unwrap();
    }
    // SAFETY: as above.
    unsafe { sigaction(Signal::SIGPIPE, &default) }.unwrap();
    let rt = libc::SIGRTMIN() + 3;
    // SAFETY: all-zero sigaction plus a handler that does nothing.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as libc::sighandler_t;
        assert_eq!(libc::sigaction(rt, &action, std::ptr::null_mut()), 0);
    }
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGHUP);
    blocked.add(Signal::SIGUSR2);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&blocked), None).unwrap();

    match fork().unwrap() {
        Fork::Parent(child) => assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0)),
        Fork::Child => child_main(|| {
            assert_ne!(disposition(libc::SIGTERM), libc::SIG_DFL, "inherited");
            child::reset_signals().unwrap();
            for s in 1..=libc::SIGRTMAX() {
                if [libc::SIGKILL, libc::SIGSTOP, 32, 33].contains(&s) {
                    continue;
                }
                let expected = if s == libc::SIGPIPE {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                };
                assert_eq!(disposition(s), expected, "signal {s}");
            }
            let mask = SigSet::thread_get_mask().unwrap();
            assert_eq!(mask.iter().count(), 0, "mask not empty: {mask:?}");
            // SAFETY: all-zero sigset_t storage for sigprocmask to fill.
            let mut raw: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: query only.
            unsafe { libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut raw) };
            for s in 1..=libc::SIGRTMAX() {
                // SAFETY: `raw` is a valid sigset_t.
                let member = unsafe { libc::sigismember(&raw, s) };
                assert_eq!(member, 0, "signal {s} blocked");
            }
        }),
    }
}

/// `/proc/PID/cmdline` as raw bytes.
fn cmdline(pid: libc::pid_t) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()
}

/// Runs `in_child` in a forked child, then, while the child waits, `check`
/// with its pid in the parent; the child then exits 0.
fn with_titled_child(in_child: fn(), check: impl FnOnce(libc::pid_t)) {
    let (mut ready_r, mut ready_w) = std::io::pipe().unwrap();
    let (mut go_r, mut go_w) = std::io::pipe().unwrap();
    match fork().unwrap() {
        Fork::Parent(child) => {
            let mut byte = [0u8];
            ready_r.read_exact(&mut byte).unwrap();
            check(child.pid());
            go_w.write_all(b"g").unwrap();
            assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0));
        }
        Fork::Child => child_main(|| {
            in_child();
            ready_w.write_all(b"r").unwrap();
            let mut byte = [0u8];
            go_r.read_exact(&mut byte).unwrap();
        }),
    }
}

fn title_shows_in_proc() {
    let me = std::process::id() as libc::pid_t;
    let original = cmdline(me);
    assert!(original.len() > "prefork worker[3]".len());
    let environ = std::fs::read("/proc/self/environ").unwrap();
    with_titled_child(
        || {
            let argc = std::env::args_os().count();
            child::set_title("prefork worker[3]").unwrap();
            // std reads the (now overwritten) argument area.
            let args: Vec<String> = std::env::args().collect();
            assert_eq!(args.len(), argc);
            assert_eq!(args[0], "prefork worker[3]");
            assert!(args[1..].iter().all(String::is_empty), "{args:?}");
        },
        |pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            assert_eq!(comm, "prefork worker[\n");
            let line = cmdline(pid);
            let mut words = line.split(|&b| b == 0).filter(|w| !w.is_empty());
            assert_eq!(words.next(), Some(&b"prefork worker[3]"[..]));
            assert_eq!(words.next(), None, "{:?}", String::from_utf8_lossy(&line));
            // The environment after the arguments is untouched.
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            assert_eq!(env, environ);
        },
    );
    // The parent's own title did not change.
    assert_eq!(cmdline(me), original);
}

fn long_title_is_cut_to_the_argv_area() {
    let area = cmdline(std::process::id() as libc::pid_t).len();
    let environ = std::fs::read("/proc/self/environ").unwrap();
    with_titled_child(
        || {
            // 'é' is 2 bytes: the cut must not split one.
            let title = "é".repeat(10_000);
            child::set_title(&title).unwrap();
        },
        |pid| {
            let line = cmdline(pid);
            let text = line.split(|&b| b == 0).next().unwrap();
            let text = std::str::from_utf8(text).expect("cut at a char boundary");
            assert!(text.chars().all(|c| c == 'é'));
            // The area keeps one NUL at its end.
            assert!(
                text.len() == area - 1 || text.len() == area - 2,
                "{} of {area}",
                text.len()
            );
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            assert_eq!(comm, format!("{}\n", "é".repeat(7)));
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            assert_eq!(env, environ);
        },
    );
}

fn title_refused_with_threads() {
    let me = std::process::id() as libc::pid_t;
    let before = cmdline(me);
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = wait.recv();
    });
    let err = child::set_title("nope").unwrap_err();
    assert!(err.to_string().contains("2 threads"), "{err}");
    assert_eq!(cmdline(me), before);
    release.send(()).unwrap();
    thread.join().unwrap();
}
