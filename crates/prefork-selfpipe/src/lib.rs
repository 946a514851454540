//! An async-signal-safe signal queue for single-threaded event loops: the
//! self-pipe trick, written down as a protocol.
//!
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod registry;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::c_int;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::registry::Claim;

/// Signals a [`SignalQueue`] refuses with [`io::ErrorKind::InvalidInput`].
///
/// `SIGKILL` and `SIGSTOP` cannot be caught at all. `SIGILL`, `SIGFPE`,
/// `SIGSEGV` and `SIGBUS` are raised by the faulting instruction itself: a
/// handler that only queues the signal and returns would re-run that
/// instruction and fault again forever.
pub const FORBIDDEN: &[c_int] = &[
    libc::SIGKILL,
    libc::SIGSTOP,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGBUS,
];

/// Bytes read from the pipe per `read(2)`.
const READ_CHUNK: usize = 4096;

/// A queue of received signals: installs a handler for each of its signals
/// that writes the signal number to a private pipe, whose read end is this
/// queue's fd.
///
/// Register it with a [`mio::Poll`] (readable interest) or watch
/// [`as_fd`](AsFd::as_fd) with `poll(2)`; when it is readable, call
/// [`drain`](SignalQueue::drain). Dropping the queue (or
/// [`reset_after_fork`](SignalQueue::reset_after_fork) in a child) puts the
/// previous dispositions back.
///
/// # Examples
///
/// ```
/// use prefork_selfpipe::SignalQueue;
///
/// let mut queue = SignalQueue::new(&[libc::SIGWINCH, libc::SIGCONT])?;
/// assert_eq!(queue.signals(), &[libc::SIGWINCH, libc::SIGCONT]);
/// // SAFETY: raise(3) is safe to call; the queue's handler catches SIGWINCH.
/// unsafe { libc::raise(libc::SIGWINCH) };
/// assert_eq!(queue.drain()?, vec![libc::SIGWINCH]);
/// assert!(queue.drain()?.is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SignalQueue {
    /// Registry id; owns the slots of `signals`.
    id: u64,
    /// The signals, in the order given (duplicates removed), each with the
    /// action that was installed before ours.
    installed: Vec<(c_int, libc::sigaction)>,
    /// Just the numbers of `installed`, for [`SignalQueue::signals`].
    signals: Vec<c_int>,
    read: OwnedFd,
    write: OwnedFd,
    /// The process that created the queue (a different pid on drop means
    /// we are in a forked child).
    pid: u32,
    buf: Box<[u8; READ_CHUNK]>,
}

impl SignalQueue {
    /// Installs handlers (with `SA_RESTART`) for `signals`, each writing its
    /// number to this queue's pipe.
    ///
    /// The pipe is created with `pipe2(O_CLOEXEC | O_NONBLOCK)`; both ends
    /// are close-on-exec and non-blocking. A signal listed twice is queued
    /// once. Not async-signal-safe (it allocates); call it from normal code.
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_selfpipe::SignalQueue;
    ///
    /// let queue = SignalQueue::new(&[libc::SIGTTIN, libc::SIGTTOU])?;
    /// // A second owner for SIGTTIN is refused while `queue` lives.
    /// let err = SignalQueue::new(&[libc::SIGTTIN]).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    /// drop(queue);
    /// let _again = SignalQueue::new(&[libc::SIGTTIN])?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::InvalidInput`]: a signal is out of range (not in
    ///   `1..=SIGRTMAX`) or in [`FORBIDDEN`] (cannot or must not be caught);
    ///   also what `sigaction(2)` answers for the signals glibc keeps for
    ///   itself (32 and 33).
    /// - [`io::ErrorKind::AlreadyExists`]: a signal is owned by another live
    ///   `SignalQueue` in this process.
    /// - any error of `pipe2(2)` or `sigaction(2)`.
    ///
    /// On error nothing is left installed or claimed.
    pub fn new(signals: &[c_int]) -> io::Result<SignalQueue> {
        for &sig in signals {
            check_signal(sig)?;
        }
        let (read, write) = pipe()?;
        let mut queue = SignalQueue {
            id: registry::next_id(),
            installed: Vec::with_capacity(signals.len()),
            signals: Vec::with_capacity(signals.len()),
            read,
            write,
            pid: std::process::id(),
            buf: Box::new([0; READ_CHUNK]),
        };
        for &sig in signals {
            match registry::claim(sig, queue.id) {
                Claim::Claimed => {}
                Claim::AlreadyOurs => continue,
                Claim::Taken => {
                    // Dropping `queue` undoes what was installed so far.
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("signal {sig} is already owned by another SignalQueue"),
                    ));
                }
            }
            registry::arm(sig, queue.write.as_raw_fd());
            match install(sig) {
                Ok(previous) => {
                    queue.installed.push((sig, previous));
                    queue.signals.push(sig);
                }
                Err(e) => {
                    registry::release(sig, false);
                    return Err(e);
                }
            }
        }
        Ok(queue)
    }

    /// Reads everything pending and returns the signals in arrival order
    /// (empty when none). Never blocks.
    ///
    /// Each delivery of a signal appears once, in the order the handlers
    /// ran, except after the pipe overflowed: then each signal that had a
    /// delivery dropped is appended once more at the end (see the crate
    /// docs, "When the pipe is full"). Treat every entry as "this signal
    /// arrived at least once since the last drain".
    ///
    /// Not async-signal-safe (it allocates); use [`drain_into`] with a
    /// reused vector to avoid the allocation.
    ///
    /// [`drain_into`]: SignalQueue::drain_into
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_selfpipe::SignalQueue;
    ///
    /// let mut queue = SignalQueue::new(&[libc::SIGUSR1, libc::SIGUSR2])?;
    /// for sig in [libc::SIGUSR2, libc::SIGUSR1, libc::SIGUSR2] {
    ///     // SAFETY: raise(3) is safe to call; the queue catches both signals.
    ///     unsafe { libc::raise(sig) };
    /// }
    /// assert_eq!(queue.drain()?, vec![libc::SIGUSR2, libc::SIGUSR1, libc::SIGUSR2]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// An error of `read(2)` other than `EAGAIN`/`EINTR` (none is expected
    /// on a healthy pipe).
    pub fn drain(&mut self) -> io::Result<Vec<c_int>> {
        let mut out = Vec::new();
        self.drain_into(&mut out)?;
        Ok(out)
    }

    /// Like [`drain`](SignalQueue::drain), but appends to `out` and returns
    /// how many signals it appended. Never blocks, never allocates unless
    /// `out` must grow.
    ///
    /// It stops reading at the first short read: the pipe was empty at that
    /// moment, and any later signal makes the fd readable again (so an
    /// edge-triggered poller such as `mio` wakes again).
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_selfpipe::SignalQueue;
    ///
    /// let mut queue = SignalQueue::new(&[libc::SIGPROF])?;
    /// let mut seen = Vec::new();
    /// // SAFETY: raise(3) is safe to call; the queue catches SIGPROF.
    /// unsafe { libc::raise(libc::SIGPROF) };
    /// assert_eq!(queue.drain_into(&mut seen)?, 1);
    /// assert_eq!(queue.drain_into(&mut seen)?, 0);
    /// assert_eq!(seen, vec![libc::SIGPROF]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`drain`](SignalQueue::drain). Signals read before the error are
    /// kept in `out`.
    pub fn drain_into(&mut self, out: &mut Vec<c_int>) -> io::Result<usize> {
        let start = out.len();
        loop {
            // SAFETY: `read` is our open read end; the buffer is
            // `READ_CHUNK` writable bytes owned by `self`.
            let n = unsafe {
                libc::read(
                    self.read.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    READ_CHUNK,
                )
            };
            match usize::try_from(n) {
                Ok(n) => {
                    out.extend(self.buf[..n].iter().map(|&b| c_int::from(b)));
                    if n < READ_CHUNK {
                        break;
                    }
                }
                Err(_) => {
                    let err = io::Error::last_os_error();
                    match err.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => break,
                        _ => return Err(err),
                    }
                }
            }
        }
        // Flags are taken after the pipe is read: a handler sets its flag
        // before retrying its write, so a flag missed here comes with a byte
        // that wakes the reader again.
        for &sig in &self.signals {
            if registry::take_dropped(sig) {
                out.push(sig);
            }
        }
        Ok(out.len() - start)
    }

    /// The signals this queue owns, in the order given to
    /// [`new`](SignalQueue::new) (duplicates removed).
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_selfpipe::SignalQueue;
    ///
    /// let queue = SignalQueue::new(&[libc::SIGXCPU, libc::SIGXCPU, libc::SIGURG])?;
    /// assert_eq!(queue.signals(), &[libc::SIGXCPU, libc::SIGURG]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn signals(&self) -> &[c_int] {
        &self.signals
    }

    /// In a freshly forked child: restores the previous dispositions,
    /// forgets the queue's registration and closes the child's copies of the
    /// pipe. The parent's queue is untouched: it keeps its handlers, its
    /// pipe and anything pending in it.
    ///
    /// This is what [`Drop`] does (drop detects that it runs in another
    /// process than the one that created the queue); the name is there so
    /// the fork protocol reads plainly at the call site. Call it right after
    /// `fork` returns in the child, before closing inherited fds and before
    /// creating a new queue for the same signals. Not async-signal-safe in
    /// general (it frees memory), but fine in a child forked from a
    /// single-threaded parent, which is the only kind of fork this project
    /// does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use prefork_selfpipe::SignalQueue;
    ///
    /// let queue = SignalQueue::new(&[libc::SIGCHLD, libc::SIGTERM])?;
    /// // SAFETY: the example's process is single-threaded.
    /// match unsafe { libc::fork() } {
    ///     -1 => return Err(std::io::Error::last_os_error()),
    ///     0 => {
    ///         queue.reset_after_fork();
    ///         // ... the child's own work, with its own queue if it wants one ...
    ///         // SAFETY: ending the child without running the parent's destructors.
    ///         unsafe { libc::_exit(0) }
    ///     }
    ///     _child => { /* the parent keeps using `queue` */ }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reset_after_fork(self) {
        drop(self);
    }

    /// Restores the previous dispositions and frees the slots.
    fn uninstall(&mut self) {
        let after_fork = std::process::id() != self.pid;
        for (sig, previous) in self.installed.drain(..) {
            // Errors are ignored: the signal was valid when installed, so
            // sigaction cannot fail for it now.
            restore(sig, &previous);
            registry::release(sig, after_fork);
        }
    }
}

impl Drop for SignalQueue {
    /// Restores the previous disposition of each signal (unless someone
    /// replaced our handler since: then theirs is left in place), makes sure
    /// no handler can write to the pipe any more, then closes the pipe.
    /// Correct in a forked child too (see
    /// [`reset_after_fork`](SignalQueue::reset_after_fork)).
    fn drop(&mut self) {
        self.uninstall();
    }
}

impl fmt::Debug for SignalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalQueue")
            .field("signals", &self.signals)
            .field("read", &self.read.as_raw_fd())
            .field("write", &self.write.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl AsFd for SignalQueue {
    /// The read end of the pipe (non-blocking, close-on-exec): readable when
    /// a signal is pending. Use it with `poll(2)`/`epoll(7)`, then call
    /// [`drain`](SignalQueue::drain).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

impl AsRawFd for SignalQueue {
    /// The read end of the pipe, as [`AsFd::as_fd`].
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

impl mio::event::Source for SignalQueue {
    /// Registers the read end; ask for [`Interest::READABLE`].
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.read.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        SourceFd(&self.read.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.read.as_raw_fd()).deregister(registry)
    }
}

/// Checks that `sig` may be queued (see [`SignalQueue::new`]'s errors).
fn check_signal(sig: c_int) -> io::Result<()> {
    let in_range = sig >= 1
        && sig <= libc::SIGRTMAX()
        && usize::try_from(sig).is_ok_and(|i| i < registry::TABLE_LEN);
    if !in_range {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("signal {sig} is out of range"),
        ));
    }
    if FORBIDDEN.contains(&sig) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("signal {sig} cannot be queued (uncatchable or a fault signal)"),
        ));
    }
    Ok(())
}

/// `pipe2(O_CLOEXEC | O_NONBLOCK)`: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as c_int; 2];
    // SAFETY: `fds` is room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Installs our handler for `sig` with `SA_RESTART`; returns the previous action.
fn install(sig: c_int) -> io::Result<libc::sigaction> {
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, no flags,
    // empty mask) that we then fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = registry::handler_address();
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: as above; it is overwritten by sigaction on success.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&raw mut action.sa_mask) };
    // SAFETY: both pointers are to valid sigaction values; the handler is an
    // `extern "C" fn(c_int)` that is async-signal-safe (see registry.rs).
    if unsafe { libc::sigaction(sig, &raw const action, &raw mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(previous)
}

/// Puts `previous` back for `sig` if our handler is still the one installed.
fn restore(sig: c_int, previous: &libc::sigaction) {
    // SAFETY: see `install`.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `current` is valid to write.
    if unsafe { libc::sigaction(sig, std::ptr::null(), &raw mut current) } != 0 {
        return;
    }
    let ours = current.sa_sigaction == registry::handler_address()
        && current.sa_flags & libc::SA_SIGINFO == 0;
    if ours {
        // SAFETY: `previous` is the action sigaction gave us for this signal.
        unsafe { libc::sigaction(sig, previous, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forbidden_and_out_of_range_signals_are_invalid_input() {
        for sig in FORBIDDEN.iter().copied().chain([0, -1, 65, 1000]) {
            let err = SignalQueue::new(&[sig]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "signal {sig}");
        }
    }

    #[test]
    fn a_bad_signal_anywhere_in_the_list_installs_nothing() {
        // Validation happens before anything is claimed: SIGHUP stays free.
        let err = SignalQueue::new(&[libc::SIGHUP, libc::SIGKILL]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(registry::claim(libc::SIGHUP, u64::MAX), Claim::Claimed);
        registry::release(libc::SIGHUP, false);
    }

    proptest! {
        #[test]
        fn check_signal_accepts_exactly_the_catchable_range(sig in any::<c_int>()) {
            let ok = (1..=libc::SIGRTMAX()).contains(&sig) && !FORBIDDEN.contains(&sig);
            prop_assert_eq!(check_signal(sig).is_ok(), ok);
        }
    }
}
