//! [`Child`]: a forked child as the parent sees it (pid, pidfd, signal,
//! wait, terminate with escalation).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use libc::{c_int, pid_t};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::status::{ExitStatus, wait_raw};
use crate::sys;

/// A child process of this one, as returned to the parent by
/// [`fork`](crate::fork): its pid, and a pidfd when the kernel has
/// `pidfd_open` (Linux >= 5.3).
///
/// The pidfd refers to this very process for as long as it is open, even
/// after the process has been reaped and its pid handed to someone else; so
/// [`signal`](Self::signal) can never hit an unrelated process, and the fd
/// becomes readable when the child exits (register it with `mio`/`poll`).
///
/// **Dropping a `Child` does not reap, wait for or kill the process**: it
/// only closes the pidfd. A pre-forking master reaps all its children at
/// once with [`reap`](crate::reap) when SIGCHLD arrives and keeps `Child`
/// values only to signal them; a child it forgets about becomes a zombie
/// until the next `reap()`.
///
/// The methods that wait ([`try_wait`](Self::try_wait), [`wait`](Self::wait),
/// [`terminate`](Self::terminate)) call `waitpid(pid)` for this child only
/// and fail with `ECHILD` if it has already been reaped elsewhere (by
/// [`reap`](crate::reap), say): reap each child in one place.
#[derive(Debug)]
pub struct Child {
    pid: pid_t,
    pidfd: Option<OwnedFd>,
}

impl Child {
    /// A `Child` for `pid`, which must be a child of this process that has
    /// not been reaped yet (so its pid cannot have been reused). Opens a
    /// pidfd for it when the kernel allows.
    ///
    /// [`fork`](crate::fork) does this for you; use it for a child started
    /// another way (e.g. `std::process::Command`, then `Child::id()`).
    ///
    /// Async-signal-safe (one `pidfd_open` system call).
    pub fn from_pid(pid: pid_t) -> Child {
        Child {
            pid,
            pidfd: sys::pidfd_open(pid).ok(),
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// The child's pidfd, if the kernel provided one: it polls readable
    /// (`POLLIN`) once the child has exited, so an event loop can wait for a
    /// worker's death without SIGCHLD. It stays readable until closed,
    /// even after the child is reaped.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Sends `signal` to the child (0 checks that it still exists).
    ///
    /// With a pidfd this is `pidfd_send_signal(2)`, which can never reach
    /// another process that has taken over the pid; without one it is
    /// `kill(2)`, which is safe too as long as the child has not been reaped
    /// (a zombie keeps its pid). Signalling a child that has exited but is
    /// not reaped yet succeeds and does nothing.
    ///
    /// Async-signal-safe.
    ///
    /// # Errors
    ///
    /// - the process is gone (reaped already): an error whose
    ///   `raw_os_error()` is `Some(libc::ESRCH)`, which a supervisor can
    ///   usually ignore (see [`is_gone`](crate::is_gone));
    /// - `EINVAL` for an invalid signal number, `EPERM` without permission.
    pub fn signal(&self, signal: c_int) -> io::Result<()> {
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
            None => {
                // SAFETY: kill(2) takes two integers and touches no memory.
                if unsafe { libc::kill(self.pid, signal) } == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
        }
    }

    /// Reaps the child if it has ended, without blocking
    /// (`waitpid(pid, WNOHANG)`): `Ok(None)` while it still runs (or is
    /// stopped).
    ///
    /// Async-signal-safe.
    ///
    /// # Errors
    ///
    /// `ECHILD` if the child was already reaped (by [`reap`](crate::reap),
    /// an earlier wait, or `SIGCHLD` set to `SIG_IGN`).
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        Ok(wait_raw(self.pid, libc::WNOHANG)?.map(|(_, status)| status))
    }

    /// Blocks until the child ends, reaps it and returns its status
    /// (`waitpid(pid, 0)`, retried on `EINTR`).
    ///
    /// Async-signal-safe.
    ///
    /// # Errors
    ///
    /// `ECHILD` if the child was already reaped.
    pub fn wait(&self) -> io::Result<ExitStatus> {
        loop {
            if let Some((_, status)) = wait_raw(self.pid, 0)? {
                return Ok(status);
            }
        }
    }

    /// Stops the child with escalation and reaps it: sends `first` (say
    /// `SIGTERM` or `SIGQUIT`), waits up to `grace` for the child to end,
    /// then sends `SIGKILL` and waits for that. Returns how the child ended,
    /// so the caller sees whether the grace period was enough
    /// (`Signaled { signal: SIGKILL, .. }` when it was not, unless the
    /// child had asked to die by `first`).
    ///
    /// Waiting is `poll(2)` on the pidfd, or, without a pidfd, a
    /// `waitpid(WNOHANG)` loop that sleeps 1 ms, then up to 20 ms, between
    /// checks. A child that ends on its own first is simply reaped. A
    /// stopped child (SIGSTOP) does not act on `first` until continued, so
    /// it is killed when the grace period ends.
    ///
    /// This blocks the calling thread for up to `grace`: an event-driven
    /// master instead sends `first` with [`signal`](Self::signal), keeps
    /// a deadline, and sends `SIGKILL` when it passes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use prefork_proc::{Fork, fork};
    ///
    /// if let Fork::Parent(worker) = fork()? {
    ///     let status = worker.terminate(libc::SIGTERM, Duration::from_secs(5))?;
    ///     println!("worker {} {status}", worker.pid());
    /// } else {
    ///     // Worker: ... runs until told to stop.
    ///     # unsafe { libc::_exit(0) }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `ECHILD` if the child was already reaped (its status is gone);
    /// `EINVAL` for an invalid `first`.
    pub fn terminate(&self, first: c_int, grace: Duration) -> io::Result<ExitStatus> {
        self.signal_unless_gone(first)?;
        let deadline = Instant::now().checked_add(grace);
        if let Some(status) = self.wait_until(deadline)? {
            return Ok(status);
        }
        self.signal_unless_gone(libc::SIGKILL)?;
        self.wait()
    }

    /// [`signal`](Self::signal), treating "already gone" as done: the wait
    /// that follows reports what became of the child.
    fn signal_unless_gone(&self, signal: c_int) -> io::Result<()> {
        match self.signal(signal) {
            Err(e) if !crate::is_gone(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Waits for the child to end until `deadline` (`None`: too far away to
    /// represent, i.e. forever). Reaps it and returns its status if it
    /// ended, `Ok(None)` if the deadline passed first.
    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<Option<ExitStatus>> {
        let Some(deadline) = deadline else {
            return self.wait().map(Some);
        };
        let Some(pidfd) = self.pidfd() else {
            return self.poll_wait_until(deadline);
        };
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Round up so we never wake just before the deadline and spin.
            let millis = left.as_micros().div_ceil(1000);
            let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The no-pidfd fallback of [`wait_until`](Self::wait_until).
    fn poll_wait_until(&self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(nap.min(left));
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }
}

/// Whether `err` says that the target process no longer exists (`ESRCH`),
/// as [`Child::signal`] reports for a child that has been reaped.
///
/// # Examples
///
/// ```
/// let err = std::io::Error::from_raw_os_error(libc::ESRCH);
/// assert!(prefork_proc::is_gone(&err));
/// ```
pub fn is_gone(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ESRCH)
}
