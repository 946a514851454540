//! `reap` and `Child::try_wait`: exit codes and signals decoded, never
//! confused; stopped children left alone; nothing left behind. Each case
//! runs in a process of its own (prefork_tests::harness).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::resource::{Resource, setrlimit};
use prefork_proc::{ExitStatus, Fork, Reaped, child, fork, is_gone, reap};
use prefork_tests::harness::{Case, run};

use common::{child_main, eventually, pause_forever, proc_state};

fn main() {
    run(&[
        Case::new("decodes_exits_and_signals", decodes_exits_and_signals),
        Case::new(
            "reaps_nothing_without_children",
            reaps_nothing_without_children,
        ),
        Case::new(
            "leaves_running_and_stopped_children",
            leaves_running_and_stopped_children,
        ),
        Case::new(
            "reaped_child_is_gone_for_its_handle",
            reaped_child_is_gone_for_its_handle,
        ),
    ]);
}

/// How each test child ends.
#[derive(Clone, Copy)]
enum End {
    Exit(i32),
    Raise(libc::c_int),
}

fn decodes_exits_and_signals() {
    let rt = libc::SIGRTMIN() + 1;
    let ends = [
        End::Exit(0),
        End::Exit(3),
        End::Exit(255),
        End::Exit(libc::SIGKILL), // an exit code of 9 is not SIGKILL
        End::Raise(libc::SIGKILL),
        End::Raise(libc::SIGSEGV),
        End::Raise(libc::SIGTERM),
        End::Raise(rt), // real-time: nix's WaitStatus cannot represent it
    ];
    let mut expected = BTreeMap::new();
    let mut children = Vec::new();
    for end in ends {
        match fork().unwrap() {
            Fork::Parent(child) => {
                let status = match end {
                    End::Exit(code) => ExitStatus::Exited(code),
                    End::Raise(signal) => ExitStatus::Signaled {
                        signal,
                        core_dumped: false,
                    },
                };
                expected.insert(child.pid(), status);
                children.push(child);
            }
            Fork::Child => {
                // No core file: core_dumped must then be false for SIGSEGV
                // (whether a core is written depends on RLIMIT_CORE).
                setrlimit(Resource::RLIMIT_CORE, 0, 0).unwrap();
                child::reset_signals().unwrap();
                match end {
                    // SAFETY: _exit is always safe to call.
                    End::Exit(code) => unsafe { libc::_exit(code) },
                    End::Raise(signal) => {
                        // SAFETY: raise has no memory preconditions.
                        unsafe { libc::raise(signal) };
                        child_main(|| panic!("survived signal {signal}"))
                    }
                }
            }
        }
    }
    // Every child has ended once its pidfd is readable.
    for child in &children {
        let pidfd = child.pidfd().unwrap();
        let mut fds = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(10_000).unwrap()).unwrap();
    }
    let reaped: BTreeMap<_, _> = reap()
        .unwrap()
        .into_iter()
        .map(|r| (r.pid, r.status))
        .collect();
    assert_eq!(reaped, expected);
    let segv = expected
        .values()
        .find(|s| s.signal() == Some(libc::SIGSEGV))
        .unwrap();
    assert_eq!(segv.to_string(), "killed by SIGSEGV");
    assert!(reap().unwrap().is_empty());
}

fn reaps_nothing_without_children() {
    assert_eq!(reap().unwrap(), Vec::<Reaped>::new());
    assert_eq!(prefork_proc::reap_one().unwrap(), None);
}

fn leaves_running_and_stopped_children() {
    let child = match fork().unwrap() {
        Fork::Parent(child) => child,
        Fork::Child => child_main(|| {
            child::reset_signals().unwrap();
            pause_forever()
        }),
    };
    assert!(reap().unwrap().is_empty(), "a running child was reaped");
    assert_eq!(child.try_wait().unwrap(), None);

    child.signal(libc::SIGSTOP).unwrap();
    assert!(eventually(Duration::from_secs(10), || proc_state(
        child.pid()
    ) == Some('T')));
    assert!(reap().unwrap().is_empty(), "a stopped child was reaped");
    assert_eq!(child.try_wait().unwrap(), None);

    child.signal(libc::SIGKILL).unwrap();
    let kill = ExitStatus::Signaled {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    assert_eq!(child.wait().unwrap(), kill);
    assert!(reap().unwrap().is_empty());
}

fn reaped_child_is_gone_for_its_handle() {
    let child = match fork().unwrap() {
        Fork::Parent(child) => child,
        Fork::Child => child_main(|| {}),
    };
    assert!(eventually(Duration::from_secs(10), || proc_state(
        child.pid()
    ) == Some('Z')));
    // A zombie still exists: signalling it is harmless.
    child.signal(0).unwrap();
    assert_eq!(
        reap().unwrap(),
        vec![Reaped {
            pid: child.pid(),
            status: ExitStatus::Exited(0)
        }]
    );
    // Once reaped, its pid may be reused: the pidfd keeps the handle from
    // reaching whoever gets it.
    let err = child.signal(libc::SIGKILL).unwrap_err();
    assert!(is_gone(&err), "{err}");
    let err = child.try_wait().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECHILD));
}
