//! Real signals, real `kill(2)` from other processes, real forks: each case
//! runs in a process of its own (see `prefork_tests::harness`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libc::c_int;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use prefork_selfpipe::SignalQueue;
use prefork_tests::harness::{Case, run};

fn main() {
    run(&[
        Case::new(
            "burst_from_another_process_arrives_in_order_of_first_arrival",
            burst_from_another_process_arrives_in_order_of_first_arrival,
        ),
        Case::new(
            "kill_command_deliveries_drain_in_exact_order",
            kill_command_deliveries_drain_in_exact_order,
        ),
        Case::new(
            "full_pipe_never_blocks_and_reports_every_kind",
            full_pipe_never_blocks_and_reports_every_kind,
        ),
        Case::new(
            "works_in_a_mio_loop_with_other_sources",
            works_in_a_mio_loop_with_other_sources,
        ),
        Case::new(
            "drop_restores_previous_dispositions",
            drop_restores_previous_dispositions,
        ),
        Case::new(
            "reset_after_fork_in_child_leaves_parent_queue_alone",
            reset_after_fork_in_child_leaves_parent_queue_alone,
        ),
        Case::new(
            "drop_in_child_leaves_parent_queue_alone",
            drop_in_child_leaves_parent_queue_alone,
        ),
        Case::new(
            "second_owner_of_a_signal_is_refused",
            second_owner_of_a_signal_is_refused,
        ),
        Case::new(
            "drop_while_another_thread_signals_never_writes_into_reused_fds",
            drop_while_another_thread_signals_never_writes_into_reused_fds,
        ),
        Case::new(
            "pipe_is_cloexec_and_nonblocking",
            pipe_is_cloexec_and_nonblocking,
        ),
    ]);
}

const QUEUE: Token = Token(0);
const STREAM: Token = Token(1);

fn raise(sig: c_int) {
    // SAFETY: raise(3) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::raise(sig) }, 0, "raise({sig})");
}

/// The disposition of `sig` right now: (handler address, flags).
fn disposition(sig: c_int) -> (libc::sighandler_t, c_int) {
    // SAFETY: all-zero is a valid sigaction to be overwritten.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `current` is valid to write.
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &raw mut current) };
    assert_eq!(rc, 0, "sigaction query {sig}");
    (current.sa_sigaction, current.sa_flags)
}

fn set_disposition(sig: c_int, handler: libc::sighandler_t, flags: c_int) {
    // SAFETY: all-zero is a valid sigaction (empty mask) that we fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = flags;
    // SAFETY: valid pointer to a sigaction; handlers used here are
    // async-signal-safe (atomics only) or SIG_IGN/SIG_DFL.
    let rc = unsafe { libc::sigaction(sig, &raw const action, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "sigaction set {sig}");
}

/// Forks; runs `body` in the child and `_exit`s with 0, or 101 if it
/// panicked. Returns the child's pid in the parent.
fn fork(body: impl FnOnce()) -> libc::pid_t {
    // SAFETY: each harness case runs in a single-threaded process, and the
    // child ends with `_exit` without returning into the harness.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 101 }) }
        }
        pid => pid,
    }
}

fn wait_success(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "waitpid: {err}"
        );
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: status {status:#x}"
    );
}

fn kill(pid: libc::pid_t, sig: c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// `Poll::poll`, retried when a signal interrupts it (epoll_wait is never
/// restarted by SA_RESTART).
fn poll(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) {
    loop {
        match poll.poll(events, timeout) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

fn burst_from_another_process_arrives_in_order_of_first_arrival() {
    let order = [libc::SIGWINCH, libc::SIGUSR2, libc::SIGHUP, libc::SIGUSR1];
    let mut queue = SignalQueue::new(&[libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP, libc::SIGWINCH])
        .expect("queue");
    let (mut ack_rx, mut ack_tx) = std::io::pipe().expect("ack pipe");
    let parent = std::process::id().cast_signed();

    // The child sends a burst of each kind (kinds deliberately not in signal
    // number order, which is the kernel's order for pending signals), and
    // waits for the parent to have seen a kind before bursting the next.
    let child = fork(move || {
        for sig in order {
            for _ in 0..500 {
                kill(parent, sig);
            }
            let mut byte = [0u8];
            ack_rx.read_exact(&mut byte).expect("ack");
        }
    });

    let mut poller = Poll::new().expect("poll");
    poller
        .registry()
        .register(&mut queue, QUEUE, Interest::READABLE)
        .expect("register");
    let mut events = Events::with_capacity(4);
    let mut all = Vec::new();
    let mut first_seen = Vec::new();
    while first_seen.len() < order.len() {
        poll(&mut poller, &mut events, None);
        for sig in queue.drain().expect("drain") {
            all.push(sig);
            if !first_seen.contains(&sig) {
                first_seen.push(sig);
                ack_tx.write_all(&[1]).expect("ack");
            }
        }
    }
    wait_success(child);
    all.extend(queue.drain().expect("drain"));

    assert_eq!(first_seen, order);
    assert!(
        all.iter().all(|s| order.contains(s)),
        "foreign signal in {all:?}"
    );
    // Each burst's first delivery comes before any of the next kind's.
    for pair in order.windows(2) {
        let first_of = |s| all.iter().position(|&x| x == s).expect("seen");
        assert!(first_of(pair[0]) < first_of(pair[1]), "{all:?}");
    }
}

fn kill_command_deliveries_drain_in_exact_order() {
    let mut queue = SignalQueue::new(&[
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGWINCH,
        libc::SIGTERM,
    ])
    .expect("queue");
    let sent = [
        ("WINCH", libc::SIGWINCH),
        ("USR2", libc::SIGUSR2),
        ("WINCH", libc::SIGWINCH),
        ("HUP", libc::SIGHUP),
        ("USR1", libc::SIGUSR1),
        ("TERM", libc::SIGTERM),
        ("USR2", libc::SIGUSR2),
    ];
    let pid = std::process::id().to_string();
    for (name, _) in sent {
        // A separate process calls kill(2). The signal is pending on us
        // before it exits, so our handler has run by the time waitpid
        // returns: each delivery completes before the next is sent.
        let status = Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .expect("spawn kill");
        assert!(status.success(), "kill -s {name}");
    }
    let expected: Vec<c_int> = sent.iter().map(|&(_, s)| s).collect();
    assert_eq!(queue.drain().expect("drain"), expected);
    assert_eq!(queue.drain().expect("drain"), Vec::<c_int>::new());
}

fn full_pipe_never_blocks_and_reports_every_kind() {
    let mut queue = SignalQueue::new(&[libc::SIGUSR1, libc::SIGUSR2]).expect("queue");
    // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
    let capacity = unsafe { libc::fcntl(queue.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let capacity = usize::try_from(capacity).expect("F_GETPIPE_SZ");

    // Fill the pipe with USR1 and overflow it; every USR2 is dropped.
    for _ in 0..capacity + 30_000 {
        raise(libc::SIGUSR1);
    }
    for _ in 0..30_000 {
        raise(libc::SIGUSR2);
    }

    let drained = queue.drain().expect("drain");
    assert_eq!(
        drained.len(),
        capacity + 2,
        "every byte, then one per dropped kind"
    );
    assert!(drained[..capacity].iter().all(|&s| s == libc::SIGUSR1));
    assert_eq!(&drained[capacity..], &[libc::SIGUSR1, libc::SIGUSR2]);

    // The overflow leaves nothing behind and the queue keeps working.
    assert_eq!(queue.drain().expect("drain"), Vec::<c_int>::new());
    raise(libc::SIGUSR2);
    raise(libc::SIGUSR1);
    assert_eq!(
        queue.drain().expect("drain"),
        vec![libc::SIGUSR2, libc::SIGUSR1]
    );
}

fn works_in_a_mio_loop_with_other_sources() {
    let mut queue = SignalQueue::new(&[libc::SIGUSR1, libc::SIGUSR2]).expect("queue");
    let (mut ours, mut theirs) = UnixStream::pair().expect("socketpair");
    let mut poller = Poll::new().expect("poll");
    poller
        .registry()
        .register(&mut queue, QUEUE, Interest::READABLE)
        .expect("register queue");
    poller
        .registry()
        .register(&mut ours, STREAM, Interest::READABLE)
        .expect("register stream");

    let parent = std::process::id().cast_signed();
    let child = fork(move || {
        theirs.write_all(b"ping").expect("write");
        kill(parent, libc::SIGUSR1);
    });

    let mut events = Events::with_capacity(8);
    let mut signals = Vec::new();
    let mut data = Vec::new();
    while signals.is_empty() || data.len() < 4 {
        poll(&mut poller, &mut events, None);
        for event in &events {
            match event.token() {
                QUEUE => signals.extend(queue.drain().expect("drain")),
                STREAM => {
                    let mut buf = [0u8; 16];
                    loop {
                        match ours.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => data.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                }
                other => panic!("unexpected token {other:?}"),
            }
        }
    }
    wait_success(child);
    assert_eq!(signals, vec![libc::SIGUSR1]);
    assert_eq!(data, b"ping");

    // After a drain the queue wakes the (edge-triggered) poll again on the
    // next signal, and only then.
    raise(libc::SIGUSR2);
    poll(&mut poller, &mut events, Some(Duration::from_secs(10)));
    let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
    assert!(tokens.contains(&QUEUE), "{tokens:?}");
    assert_eq!(queue.drain().expect("drain"), vec![libc::SIGUSR2]);
    poll(&mut poller, &mut events, Some(Duration::ZERO));
    assert!(
        events.iter().all(|e| e.token() != QUEUE),
        "woken with nothing pending"
    );
}

static CUSTOM_RAN: AtomicBool = AtomicBool::new(false);

extern "C" fn custom_handler(_: c_int) {
    CUSTOM_RAN.store(true, Ordering::SeqCst);
}

fn drop_restores_previous_dispositions() {
    let custom = custom_handler as extern "C" fn(c_int) as libc::sighandler_t;
    set_disposition(libc::SIGUSR1, custom, libc::SA_NODEFER);
    set_disposition(libc::SIGUSR2, libc::SIG_IGN, 0);
    assert_eq!(disposition(libc::SIGHUP).0, libc::SIG_DFL);

    let mut queue = SignalQueue::new(&[libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP]).expect("queue");
    let (handler, flags) = disposition(libc::SIGUSR1);
    assert_ne!(handler, custom);
    assert_ne!(handler, libc::SIG_DFL);
    assert_ne!(flags & libc::SA_RESTART, 0, "SA_RESTART");
    assert_eq!(disposition(libc::SIGUSR2).0, handler);
    assert_eq!(disposition(libc::SIGHUP).0, handler);

    // While the queue lives, it gets the signals, not the old handlers.
    raise(libc::SIGUSR1);
    raise(libc::SIGUSR2);
    raise(libc::SIGHUP);
    assert_eq!(
        queue.drain().expect("drain"),
        vec![libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP]
    );
    assert!(!CUSTOM_RAN.load(Ordering::SeqCst));

    drop(queue);
    let (handler, flags) = disposition(libc::SIGUSR1);
    assert_eq!(handler, custom);
    assert_ne!(flags & libc::SA_NODEFER, 0, "old flags restored");
    assert_eq!(disposition(libc::SIGUSR2).0, libc::SIG_IGN);
    assert_eq!(disposition(libc::SIGHUP).0, libc::SIG_DFL);

    // And the old dispositions act again.
    raise(libc::SIGUSR1);
    assert!(CUSTOM_RAN.load(Ordering::SeqCst));
    raise(libc::SIGUSR2); // ignored: we are still alive
}

/// The parent's queue survives whatever `give_back` does to the child's copy.
fn child_gives_back_queue(give_back: fn(SignalQueue)) {
    let mut queue = SignalQueue::new(&[libc::SIGUSR1, libc::SIGUSR2]).expect("queue");
    let ours = disposition(libc::SIGUSR1).0;
    raise(libc::SIGUSR1); // pending in the parent's pipe across the fork

    // SAFETY: single-threaded process (harness case); the child `_exit`s.
    let child = match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let body = move || {
                assert_eq!(disposition(libc::SIGUSR1).0, ours, "inherited");
                give_back(queue);
                assert_eq!(disposition(libc::SIGUSR1).0, libc::SIG_DFL);
                assert_eq!(disposition(libc::SIGUSR2).0, libc::SIG_DFL);
                // The registration is forgotten: the child may queue the
                // same signal, into a pipe of its own.
                let mut mine = SignalQueue::new(&[libc::SIGUSR1]).expect("child queue");
                raise(libc::SIGUSR1);
                assert_eq!(mine.drain().expect("drain"), vec![libc::SIGUSR1]);
            };
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 101 }) }
        }
        pid => pid,
    };
    wait_success(child);

    assert_eq!(
        disposition(libc::SIGUSR1).0,
        ours,
        "parent keeps its handler"
    );
    // Exactly the byte from before the fork: the child neither read it nor
    // wrote into our pipe.
    assert_eq!(queue.drain().expect("drain"), vec![libc::SIGUSR1]);
    raise(libc::SIGUSR2);
    assert_eq!(queue.drain().expect("drain"), vec![libc::SIGUSR2]);
}

fn reset_after_fork_in_child_leaves_parent_queue_alone() {
    child_gives_back_queue(SignalQueue::reset_after_fork);
}

fn drop_in_child_leaves_parent_queue_alone() {
    child_gives_back_queue(drop);
}

fn second_owner_of_a_signal_is_refused() {
    let mut first = SignalQueue::new(&[libc::SIGUSR1, libc::SIGUSR2]).expect("first");
    let err = SignalQueue::new(&[libc::SIGHUP, libc::SIGUSR2]).expect_err("second owner");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);

    // The failed attempt left nothing behind: SIGHUP is back to default and
    // free, and the first queue still owns and receives SIGUSR2.
    assert_eq!(disposition(libc::SIGHUP).0, libc::SIG_DFL);
    drop(SignalQueue::new(&[libc::SIGHUP]).expect("SIGHUP is free"));
    raise(libc::SIGUSR2);
    assert_eq!(first.drain().expect("drain"), vec![libc::SIGUSR2]);

    drop(first);
    let mut again = SignalQueue::new(&[libc::SIGUSR2]).expect("free after drop");
    raise(libc::SIGUSR2);
    assert_eq!(again.drain().expect("drain"), vec![libc::SIGUSR2]);
}

fn pipe_is_cloexec_and_nonblocking() {
    let mut queue = SignalQueue::new(&[libc::SIGUSR1]).expect("queue");
    let fd = queue.as_raw_fd();
    // SAFETY: F_GETFD/F_GETFL only read flags of our open fd.
    let (fd_flags, fl_flags) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFD),
            libc::fcntl(fd, libc::F_GETFL),
        )
    };
    assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    assert_ne!(fl_flags & libc::O_NONBLOCK, 0);
    // Non-blocking in practice: an empty drain returns at once.
    assert_eq!(queue.drain().expect("drain"), Vec::<c_int>::new());
}

/// A plain non-blocking pipe, to take over fd numbers a queue just freed.
fn plain_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1 as c_int; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: pipe2 succeeded; both fds are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Bytes waiting in a non-blocking pipe's read end.
fn pending_bytes(read: &OwnedFd) -> usize {
    let mut buf = [0u8; 64];
    // SAFETY: open fd, 64 writable bytes.
    let n = unsafe { libc::read(read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}

fn drop_while_another_thread_signals_never_writes_into_reused_fds() {
    // SIGUSR1 is ignored between queues, so the sender cannot kill us.
    set_disposition(libc::SIGUSR1, libc::SIG_IGN, 0);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        // raise(3) from this thread runs the handler on this thread, while
        // the main thread creates and drops queues.
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                raise(libc::SIGUSR1);
            }
        })
    };

    let mut received = 0;
    for _ in 0..20_000 {
        let mut queue = SignalQueue::new(&[libc::SIGUSR1]).expect("queue");
        std::thread::yield_now();
        received += queue.drain().expect("drain").len();
        drop(queue);
        // The new pipe takes the lowest free fd numbers: the ones the queue
        // just closed. A handler still holding the old write fd would now
        // write into this pipe.
        let (read, _write) = plain_pipe();
        std::thread::yield_now();
        assert_eq!(pending_bytes(&read), 0, "a handler wrote into a reused fd");
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender thread");
    assert_eq!(disposition(libc::SIGUSR1).0, libc::SIG_IGN);
    // The race was exercised: the handler ran on the other thread while
    // queues lived.
    assert!(received > 0, "no signal reached any queue");
}
