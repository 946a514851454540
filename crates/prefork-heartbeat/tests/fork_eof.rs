//! The channel between real processes: a worker SIGKILLed at any moment is
//! seen by the master as end of file, after the messages it sent before
//! dying. Each case runs in a fresh single-threaded process (harness = false,
//! see prefork-tests), because these cases fork.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, raise};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use prefork_heartbeat::{Channel, ChannelError, Control, Message, Progress, encode};
use prefork_tests::harness::{Case, run};

const WAIT: Duration = Duration::from_secs(10);

/// Forks a worker that runs `body` with its end of a new channel, then exits
/// (status 0, or 101 if `body` panicked). Returns its pid and the master's end.
fn spawn(body: fn(Channel)) -> (Pid, Channel) {
    let (master, worker) = Channel::pair().expect("socketpair");
    // SAFETY: the harness runs each case on the main thread of a process of
    // its own, with no other thread, so the child may run Rust code freely.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(master);
            let code = match catch_unwind(AssertUnwindSafe(|| body(worker))) {
                Ok(()) => 0,
                Err(_) => 101,
            };
            // SAFETY: `_exit` ends the process at once without running the
            // parent's atexit handlers or flushing its buffers, as a child must.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(worker);
            (child, master)
        }
    }
}

/// Waits until the master's end closes (the test is over or the parent died).
fn idle_until_parent_goes(mut ch: Channel) {
    while ch.recv_timeout(WAIT).is_ok() {}
}

fn assert_killed(pid: Pid) {
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Signaled(pid, Signal::SIGKILL, false)
    );
}

fn sigkill_of_an_idle_worker_is_eof() {
    let (pid, mut master) = spawn(|mut ch| {
        ch.send_blocking(&Message::Ready {
            pid: std::process::id(),
        })
        .unwrap();
        idle_until_parent_goes(ch);
    });
    let ready = master.recv_timeout(WAIT).expect("recv");
    assert_eq!(
        ready,
        Some(Message::Ready {
            pid: pid.as_raw().unsigned_abs()
        })
    );
    kill(pid, Signal::SIGKILL).unwrap();
    assert!(matches!(
        master.recv_timeout(WAIT),
        Err(ChannelError::Closed)
    ));
    assert_killed(pid);
}

fn messages_sent_before_sigkill_arrive_before_eof() {
    let (pid, mut master) = spawn(|mut ch| {
        ch.send_blocking(&Message::Ready { pid: 1 }).unwrap();
        ch.send_blocking(&Message::Heartbeat(Progress::Busy {
            job: "j1".into(),
            since_unix_ms: 5,
        }))
        .unwrap();
        ch.send_blocking(&Message::Release { id: "j1".into() })
            .unwrap();
        // Dies with the master's control request unread in its socket, the
        // case where the kernel reports ECONNRESET rather than a plain EOF.
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            ch.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000_u16)).unwrap();
        raise(Signal::SIGKILL).unwrap();
    });
    master.send(&Message::Control(Control::Stop)).unwrap();
    assert_killed(pid); // dead and reaped before the master reads anything
    let mut got = Vec::new();
    let end = loop {
        match master.recv_timeout(WAIT) {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("timed out after {got:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(end, ChannelError::Closed), "{end:?}");
    assert_eq!(
        got,
        vec![
            Message::Ready { pid: 1 },
            Message::Heartbeat(Progress::Busy {
                job: "j1".into(),
                since_unix_ms: 5
            }),
            Message::Release { id: "j1".into() },
        ]
    );
}

fn sigkill_in_the_middle_of_a_frame_is_eof() {
    let (pid, mut master) = spawn(|ch| {
        let mut bytes = Vec::new();
        encode(&Message::Release { id: "x".into() }, &mut bytes);
        encode(&Message::Release { id: "half".into() }, &mut bytes);
        let fd = ch.into_fd();
        let cut = bytes.len() - 3;
        assert_eq!(nix::unistd::write(&fd, &bytes[..cut]).unwrap(), cut);
        raise(Signal::SIGKILL).unwrap();
    });
    assert_eq!(
        master.recv_timeout(WAIT).unwrap(),
        Some(Message::Release { id: "x".into() })
    );
    assert!(matches!(
        master.recv_timeout(WAIT),
        Err(ChannelError::Closed)
    ));
    assert_killed(pid);
}

fn sending_to_a_killed_worker_is_an_error_not_sigpipe() {
    // The default disposition kills the process on SIGPIPE: only MSG_NOSIGNAL
    // lets this case survive. (Rust's runtime ignores SIGPIPE; a worker that
    // resets its signals after fork does not.)
    // SAFETY: restoring the default disposition installs no handler.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) }
        .unwrap();
    let (pid, mut master) = spawn(idle_until_parent_goes);
    kill(pid, Signal::SIGKILL).unwrap();
    assert_killed(pid);
    let result = master.send(&Message::Job {
        id: "lost".into(),
        payload: vec![0; 16],
        attempt: 1,
    });
    assert!(matches!(result, Err(ChannelError::Closed)), "{result:?}");
}

fn mio_wakes_the_master_when_a_worker_is_killed() {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4);
    let (pid, mut master) = spawn(idle_until_parent_goes);
    poll.registry()
        .register(&mut master, Token(1), Interest::READABLE)
        .unwrap();
    kill(pid, Signal::SIGKILL).unwrap();
    poll.poll(&mut events, Some(WAIT)).unwrap();
    let ev = events.iter().next().expect("an event before the timeout");
    assert_eq!(ev.token(), Token(1));
    assert!(matches!(master.recv(), Err(ChannelError::Closed)));
    assert_killed(pid);
}

fn a_worker_sees_the_master_die() {
    // The mirror image: the worker learns its master is gone.
    let (pid, master) = spawn(|mut ch| {
        ch.send_blocking(&Message::Ready { pid: 0 }).unwrap();
        match ch.recv_timeout(WAIT) {
            Err(ChannelError::Closed) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    });
    let mut master = master;
    assert!(master.recv_timeout(WAIT).unwrap().is_some());
    drop(master);
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
}

fn main() {
    run(&[
        Case::new(
            "sigkill_of_an_idle_worker_is_eof",
            sigkill_of_an_idle_worker_is_eof,
        ),
        Case::new(
            "messages_sent_before_sigkill_arrive_before_eof",
            messages_sent_before_sigkill_arrive_before_eof,
        ),
        Case::new(
            "sigkill_in_the_middle_of_a_frame_is_eof",
            sigkill_in_the_middle_of_a_frame_is_eof,
        ),
        Case::new(
            "sending_to_a_killed_worker_is_an_error_not_sigpipe",
            sending_to_a_killed_worker_is_an_error_not_sigpipe,
        ),
        Case::new(
            "mio_wakes_the_master_when_a_worker_is_killed",
            mio_wakes_the_master_when_a_worker_is_killed,
        ),
        Case::new("a_worker_sees_the_master_die", a_worker_sees_the_master_die),
    ]);
}
