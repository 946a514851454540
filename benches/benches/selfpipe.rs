//! One signal through `prefork_selfpipe::SignalQueue` (`raise` + `drain_into`)
//! against, in the same run, a bare pipe round trip (`write` one byte +
//! `read`) and a hand-written minimal self-pipe (a handler that only writes
//! one byte, `raise` + `read`). Quote the ratios. `signal_delivery_only`
//! (`raise` to a handler that does nothing) shows how much of a signal's
//! cost is the kernel's delivery, which no self-pipe can avoid.
//!
//! The process stays single-threaded while signals are raised (criterion
//! measures on the main thread), so `raise` delivers synchronously: the
//! handler has run when `raise` returns.

use std::hint::black_box;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use criterion::Criterion;
use libc::c_int;
use prefork_selfpipe::SignalQueue;

/// A non-blocking, close-on-exec pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1 as c_int; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded; both fds are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_byte(fd: c_int) {
    let byte = 1_u8;
    // SAFETY: `fd` is an open pipe; the buffer is one valid byte.
    let n = unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    assert_eq!(n, 1);
}

fn read_byte(fd: c_int) -> u8 {
    let mut buf = [0_u8; 64];
    // SAFETY: `fd` is an open pipe; the buffer is 64 writable bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 1);
    buf[0]
}

/// A handler that does nothing: the cost of signal delivery alone.
extern "C" fn noop_handler(_: c_int) {}

/// Installs `handler` for `sig` with SA_RESTART.
fn install(sig: c_int, handler: extern "C" fn(c_int)) {
    // SAFETY: all-zero is a valid sigaction (SIG_DFL, empty mask) to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: valid sigaction; the handlers here are async-signal-safe.
    let rc = unsafe { libc::sigaction(sig, &raw const action, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
}

/// Write end for the minimal handler.
static MINIMAL_FD: AtomicI32 = AtomicI32::new(-1);

/// The least a self-pipe handler can do: one write, nothing else.
extern "C" fn minimal_handler(sig: c_int) {
    let byte = u8::try_from(sig).unwrap_or(0);
    // SAFETY: MINIMAL_FD is an open pipe for the whole bench; one valid byte.
    unsafe {
        libc::write(
            MINIMAL_FD.load(Ordering::Relaxed),
            (&raw const byte).cast(),
            1,
        )
    };
}

fn raise(sig: c_int) {
    // SAFETY: raise(3) has no memory-safety preconditions.
    unsafe { libc::raise(sig) };
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("selfpipe");

    let (bare_rx, bare_tx) = pipe();
    group.bench_function("bare_pipe_write_read", |b| {
        b.iter(|| {
            write_byte(bare_tx.as_raw_fd());
            black_box(read_byte(bare_rx.as_raw_fd()))
        });
    });

    install(libc::SIGWINCH, noop_handler);
    group.bench_function("signal_delivery_only", |b| {
        b.iter(|| raise(libc::SIGWINCH));
    });

    let (min_rx, min_tx) = pipe();
    MINIMAL_FD.store(min_tx.as_raw_fd(), Ordering::Relaxed);
    install(libc::SIGUSR2, minimal_handler);
    group.bench_function("minimal_self_pipe", |b| {
        b.iter(|| {
            raise(libc::SIGUSR2);
            black_box(read_byte(min_rx.as_raw_fd()))
        });
    });

    let mut queue = SignalQueue::new(&[libc::SIGUSR1]).expect("queue");
    let mut seen = Vec::with_capacity(64);
    group.bench_function("signal_queue", |b| {
        b.iter(|| {
            raise(libc::SIGUSR1);
            let n = queue.drain_into(&mut seen).expect("drain");
            assert_eq!(n, 1);
            seen.clear();
        });
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
