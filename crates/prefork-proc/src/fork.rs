//! [`fork`], which refuses in a process with more than one thread, its
//! unchecked escape hatch, and [`thread_count`].

use std::fmt;
use std::io;

use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

use crate::process::Child;
use crate::sys;

/// What [`fork`] returns in each of the two processes.
#[derive(Debug)]
pub enum Fork {
    /// In the parent: the new child.
    Parent(Child),
    /// In the child. See [`fork`] for what the child may and must do.
    Child,
}

/// Forks the process, refusing to do so if it has more than one thread.
///
/// Before fork(2), every signal is blocked in the calling thread. In the
/// parent the previous mask is restored once the child's pidfd is open
/// (so no SIGCHLD handler can reap the child in between). **In the child
/// every signal stays blocked** until it calls
/// [`child::reset_signals`](crate::child::reset_signals) (or unblocks them
/// itself): no handler installed by the parent (a self-pipe handler writing
/// into the *master's* pipe, say) can run in the child before the child has
/// set up its own. Signals sent to the child meanwhile stay pending.
///
/// # The post-fork contract
///
/// In the child:
///
/// - The child has exactly one thread, and since the parent had only this
///   one, no lock (the allocator's, stdout's, the environment's, a
///   `Mutex` of yours) can be held by a thread that no longer exists. So
///   the child may allocate, print and take locks: it is not limited to
///   async-signal-safe functions as the child of a multi-threaded process
///   is (see [`fork_unchecked`]).
/// - **The child must not drop what the parent owns.** Everything the
///   parent had, the child has a copy of, and some values stand for a
///   shared outside thing: a broker or database connection whose `Drop`
///   says goodbye on the shared socket, a temporary directory removed on
///   drop, a lock file, the [`Child`] of a sibling (terminating it would
///   kill the sibling). Leave the parent's values alone, forget them
///   (`std::mem::forget`), or end the child with `libc::_exit` rather than
///   by returning through the parent's stack frames. The same goes for a
///   panic: unwinding from the child through the parent's frames runs the
///   parent's destructors, so catch it (`std::panic::catch_unwind`) and
///   `_exit`.
/// - The child inherits a copy of every fd of the parent: close the ones it
///   must not hold with [`child::close_fds_except`](crate::child::close_fds_except).
/// - Buffered output is duplicated: flush `stdout` (and any `BufWriter`)
///   before forking, or both processes will write what was buffered.
/// - The child does not die with its parent unless it asks to:
///   [`child::die_with_parent`](crate::child::die_with_parent).
///
/// In the parent: the returned [`Child`] is not reaped, waited for or
/// killed when dropped; reap it with [`reap`](crate::reap) or
/// [`Child::wait`].
///
/// Async-signal-safe in practice: [`thread_count`] reads `/proc/self/stat`
/// with open, read and close, without allocating; the refusal error
/// allocates.
///
/// # Examples
///
/// ```
/// use prefork_proc::{ExitStatus, Fork, fork};
///
/// match fork() {
///     Ok(Fork::Parent(child)) => {
///         assert_eq!(child.wait()?, ExitStatus::Exited(7));
///     }
///     Ok(Fork::Child) => {
///         // Work, then leave without running the parent's destructors.
///         // SAFETY: _exit is always safe to call.
///         unsafe { libc::_exit(7) }
///     }
///     // E.g. when this example runs on a test runner's thread.
///     Err(refused) => eprintln!("{refused}"),
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// - the process has more than one thread: an error of kind
///   [`Other`](io::ErrorKind::Other) wrapping a [`ForkRefused`] that
///   names the thread count (reach it with `err.get_ref()` and
///   `downcast_ref`);
/// - [`thread_count`] failed (no `/proc`): its error (use
///   [`fork_unchecked`] if you know the process has one thread);
/// - fork(2) failed (`EAGAIN`: process limit, `ENOMEM`).
pub fn fork() -> io::Result<Fork> {
    let threads = thread_count()?;
    if threads > 1 {
        return Err(io::Error::other(ForkRefused { threads }));
    }
    // SAFETY: the process has one thread (this one), and only this thread
    // could start another, so it still has one at fork(2): the child gets a
    // complete, consistent copy of the process (see fork_unchecked).
    unsafe { fork_unchecked() }
}

/// [`fork`] without the thread check: the escape hatch.
///
/// Signals are blocked around fork(2) as in [`fork`], and the child's mask
/// stays fully blocked the same way. The parent gets a [`Child`] with a
/// pidfd as with [`fork`].
///
/// Async-signal-safe (sigprocmask, fork, pidfd_open) if the process has no
/// `pthread_atfork` handlers that are not.
///
/// # Examples
///
/// ```no_run
/// use prefork_proc::{Fork, fork_unchecked};
///
/// // A logger thread holds a lock now and then; the child only execs.
/// // SAFETY: the child calls only async-signal-safe functions (execv,
/// // _exit) with arguments prepared before the fork.
/// let path = c"/bin/true";
/// let argv = [path.as_ptr(), std::ptr::null()];
/// match unsafe { fork_unchecked() }? {
///     Fork::Parent(child) => println!("{}", child.wait()?),
///     Fork::Child => unsafe {
///         libc::sigprocmask(libc::SIG_SETMASK, &std::mem::zeroed(), std::ptr::null_mut());
///         libc::execv(path.as_ptr(), argv.as_ptr());
///         libc::_exit(127);
///     },
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// fork(2) failed (`EAGAIN`: process limit, `ENOMEM`).
///
/// # Safety
///
/// fork(2) copies only the calling thread. If the process has other
/// threads, whatever they were doing is frozen in the child mid-way: a lock
/// one of them held (the allocator's, stdout's, the environment's, a
/// logger's, a `Mutex` or `OnceLock` being initialised) stays held forever
/// in the child, and data it was changing stays half-changed. So the caller
/// must ensure that, until it calls `execve` or `_exit`, the child does only
/// what cannot touch such state, that is in general only
/// [async-signal-safe] functions (no allocation, no `println!`, no `std`
/// locks), unless the caller knows no other thread holds or is changing
/// anything the child will use.
///
/// Reasons to use it: the process has threads that are known to hold no
/// locks (or the child only `exec`s), or `/proc` is not mounted so
/// [`thread_count`] cannot answer. The rest of the post-fork contract of
/// [`fork`] (do not drop what the parent owns, fds, buffered output)
/// applies too.
///
/// [async-signal-safe]: https://man7.org/linux/man-pages/man7/signal-safety.7.html
pub unsafe fn fork_unchecked() -> io::Result<Fork> {
    let mut previous = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )?;
    // SAFETY: fork(2) itself is always sound to call; what the child may do
    // afterwards is the caller's contract, stated in `# Safety` above.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child keeps every signal blocked (documented contract).
        return Ok(Fork::Child);
    }
    let result = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        // Opened while signals are still blocked: nothing in this process
        // can reap the child before its pidfd exists, so the pid is its own.
        Ok(Fork::Parent(Child::from_pid(pid)))
    };
    // Cannot fail: the mask is one pthread_sigmask just returned.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    result
}

/// The number of threads of this process, from `/proc/self/stat` (field
/// `num_threads`).
///
/// A thread that has just been joined may still be counted for a moment:
/// the kernel finishes removing it slightly after `join` returns.
///
/// Does not allocate; async-signal-safe in practice (open, read, close).
///
/// # Examples
///
/// ```
/// assert!(prefork_proc::thread_count()? >= 1);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// `/proc/self/stat` cannot be opened or read (no `/proc`), or does not
/// parse (`InvalidData`).
pub fn thread_count() -> io::Result<usize> {
    let [threads] = sys::proc_self_stat_fields([20])?;
    usize::try_from(threads).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Why [`fork`] refused: the process has more than one thread. Carried
/// inside the [`io::Error`] that [`fork`] returns.
///
/// # Examples
///
/// ```
/// use prefork_proc::ForkRefused;
///
/// fn threads_in_the_way(err: &std::io::Error) -> Option<usize> {
///     let refused = err.get_ref()?.downcast_ref::<ForkRefused>()?;
///     Some(refused.threads())
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkRefused {
    threads: usize,
}

impl ForkRefused {
    /// How many threads the process had when [`fork`] checked.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl fmt::Display for ForkRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to fork: the process has {} threads, and a child of a \
             multi-threaded process can deadlock on locks the other threads held \
             (fork before starting threads, or see prefork_proc::fork_unchecked)",
            self.threads
        )
    }
}

impl std::error::Error for ForkRefused {}
