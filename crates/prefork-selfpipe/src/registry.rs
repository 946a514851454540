//! The process-wide table the signal handler reads: one slot per signal number.
//!
//! A signal handler cannot take a lock, allocate or look anything up in a
//! `HashMap`, so everything it needs sits in a fixed `static` array of
//! atomics indexed by the signal number. [`on_signal`] is the only code that
//! runs inside a handler: a few atomic operations and at most two `write(2)`
//! calls, all async-signal-safe.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst};

use libc::c_int;

/// Length of the table: signal numbers 1..=64 are the Linux range (`_NSIG` is 65).
pub(crate) const TABLE_LEN: usize = 65;

/// What the handler of one signal needs, and who owns the signal.
pub(crate) struct Slot {
    /// Id of the `SignalQueue` that owns this signal; 0 when free.
    owner: AtomicU64,
    /// Write end of the owner's pipe, or -1 when the signal has no owner.
    fd: AtomicI32,
    /// Set by the handler when its byte could not be written (pipe full).
    dropped: AtomicBool,
    /// Handlers of this signal running right now (on any thread).
    inflight: AtomicUsize,
}

static TABLE: [Slot; TABLE_LEN] = [const {
    Slot {
        owner: AtomicU64::new(0),
        fd: AtomicI32::new(-1),
        dropped: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
    }
}; TABLE_LEN];

/// Source of queue ids (0 means "free", so ids start at 1).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a new queue. Async-signal-safe (one atomic add), not that
/// it matters.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, SeqCst)
}

/// The slot of `sig`; `sig` must already be validated.
fn slot(sig: c_int) -> &'static Slot {
    let index = usize::try_from(sig).expect("validated signal number");
    &TABLE[index]
}

/// What [`claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The signal was free and now belongs to the caller.
    Claimed,
    /// The signal already belonged to the caller (listed twice).
    AlreadyOurs,
    /// Another live queue owns the signal.
    Taken,
}

/// Makes queue `id` the owner of `sig` if nobody else is. On success the
/// handler does not write anything yet: call [`arm`] next.
pub(crate) fn claim(sig: c_int, id: u64) -> Claim {
    match slot(sig).owner.compare_exchange(0, id, SeqCst, SeqCst) {
        Ok(_) => Claim::Claimed,
        Err(current) if current == id => Claim::AlreadyOurs,
        Err(_) => Claim::Taken,
    }
}

/// Points the handler of `sig` (claimed by the caller) at `write_fd`.
pub(crate) fn arm(sig: c_int, write_fd: c_int) {
    let s = slot(sig);
    s.dropped.store(false, SeqCst);
    s.fd.store(write_fd, SeqCst);
}

/// Stops the handler of `sig` from writing, waits until no handler that may
/// still hold the old fd is running (unless `after_fork`), and frees the slot.
///
/// After this returns, no handler will ever write to the fd that was armed,
/// so the caller may close it. `after_fork` must be true when the calling
/// process is not the one that armed the slot: then the in-flight count was
/// copied from a parent whose other threads do not exist here, so it is
/// reset instead of awaited.
pub(crate) fn release(sig: c_int, after_fork: bool) {
    let s = slot(sig);
    s.fd.store(-1, SeqCst);
    if after_fork {
        s.inflight.store(0, SeqCst);
    } else {
        // A handler that loaded the old fd incremented `inflight` before the
        // load, so it is visible here until its write is done. Handlers run
        // to completion in a bounded number of instructions; this waits only
        // for ones running on other threads.
        while s.inflight.load(SeqCst) != 0 {
            std::thread::yield_now();
        }
    }
    s.dropped.store(false, SeqCst);
    s.owner.store(0, SeqCst);
}

/// Takes the "a byte of `sig` was dropped" flag, clearing it.
pub(crate) fn take_dropped(sig: c_int) -> bool {
    let s = slot(sig);
    // The plain load keeps the common case (nothing dropped) free of a
    // locked read-modify-write.
    s.dropped.load(SeqCst) && s.dropped.swap(false, SeqCst)
}

/// The signal handler installed for every queued signal.
///
/// Async-signal-safe: it touches only atomics, `errno` and `write(2)`.
/// It writes the signal number as one byte to the owner's pipe. When the
/// pipe is full the byte is dropped (the fd is non-blocking, so the write
/// fails with `EAGAIN` and never blocks), the slot's `dropped` flag is set,
/// and the write is tried once more: see the crate docs for why that retry
/// closes the race with a reader on another thread.
pub(crate) extern "C" fn on_signal(sig: c_int) {
    let Some(s) = usize::try_from(sig).ok().and_then(|i| TABLE.get(i)) else {
        return;
    };
    s.inflight.fetch_add(1, SeqCst);
    let fd = s.fd.load(SeqCst);
    if fd >= 0 {
        // SAFETY: `__errno_location` returns this thread's errno, valid for
        // the life of the thread; reading it is async-signal-safe.
        let saved = unsafe { *libc::__errno_location() };
        let byte = u8::try_from(sig).unwrap_or(0);
        if !write_byte(fd, byte) {
            s.dropped.store(true, SeqCst);
            write_byte(fd, byte);
        }
        // SAFETY: as above; restoring errno keeps the interrupted code's
        // view of errno intact, as a handler must.
        unsafe { *libc::__errno_location() = saved };
    }
    s.inflight.fetch_sub(1, SeqCst);
}

/// One non-blocking `write(2)` of one byte; true when it was written.
fn write_byte(fd: c_int, byte: u8) -> bool {
    // SAFETY: `fd` is the write end of a pipe that stays open while the slot
    // holds it (see `release`); the buffer is one valid byte on our stack.
    unsafe { libc::write(fd, (&raw const byte).cast(), 1) == 1 }
}

/// The handler's address as stored in `sigaction::sa_sigaction`.
pub(crate) fn handler_address() -> libc::sighandler_t {
    on_signal as extern "C" fn(c_int) as libc::sighandler_t
}
