//! Set-up for a freshly forked child: close inherited fds, reset signals,
//! die with the parent, set the process title.
//!
//! Call these in the child right after [`fork`](crate::fork), typically in
//! this order:
//!
//! ```no_run
//! use prefork_proc::{Fork, child, fork};
//! use std::os::fd::AsRawFd;
//!
//! # fn worker_main(_: std::os::unix::net::UnixStream) -> i32 { 0 }
//! let master = std::process::id() as libc::pid_t; // before forking
//! let (to_master, to_worker) = std::os::unix::net::UnixStream::pair()?;
//! match fork()? {
//!     Fork::Parent(worker) => { /* keep `worker` and `to_worker` */ }
//!     Fork::Child => {
//!         let code = (|| -> std::io::Result<i32> {
//!             child::die_with_parent(libc::SIGKILL, master)?;
//!             child::close_fds_except(&[to_master.as_raw_fd()])?;
//!             child::set_title("prefork worker[0]")?;
//!             child::reset_signals()?; // last: unblocks signals
//!             Ok(worker_main(to_master))
//!         })()
//!         .unwrap_or(1);
//!         // SAFETY: _exit is always safe to call.
//!         unsafe { libc::_exit(code) }
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

use libc::{c_int, c_uint, pid_t};

use crate::sys;

/// Closes every open file descriptor except 0, 1, 2 and those in `keep`.
///
/// Standard input, output and error are always kept: with one of them
/// closed, the next `open` or `socket` takes its number and ordinary
/// printing or logging writes into that file or socket. To silence them,
/// `dup2` `/dev/null` onto them instead. Entries of `keep` that are
/// negative, 0, 1 or 2, repeated or not open are ignored.
///
/// Uses `close_range(2)` (Linux >= 5.9) over the gaps between kept fds;
/// where the kernel lacks it (`ENOSYS`) or a seccomp filter forbids it
/// (`EPERM`), lists `/proc/self/fd` instead.
///
/// Any value in the child that owned a closed fd (an `OwnedFd`, a
/// `TcpStream`, a `mio::Poll`, ...) must not be used or dropped afterwards:
/// dropping it would close whatever new file has taken that number. This is
/// the "do not drop what the parent owns" rule of [`fork`](crate::fork);
/// `std::mem::forget` such values or `_exit`.
///
/// Async-signal-safe on the `close_range` path (no allocation); the
/// `/proc/self/fd` fallback allocates.
///
/// # Examples
///
/// ```no_run
/// # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// use std::os::fd::AsRawFd;
/// // In the child: keep stdio and the inherited listener, nothing else.
/// prefork_proc::child::close_fds_except(&[listener.as_raw_fd()])?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// An unexpected error from close_range(2), or, on the fallback path,
/// `/proc/self/fd` cannot be read.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    match close_gaps(keep) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            close_listed_fds(keep)
        }
        other => other,
    }
}

/// The close_range path: closes `3..first kept`, then each gap between
/// kept fds, then everything above the last. No allocation: the next kept
/// fd is found by scanning `keep` each time.
fn close_gaps(keep: &[RawFd]) -> io::Result<()> {
    let mut next: c_uint = 3;
    loop {
        let kept = keep
            .iter()
            .filter_map(|&fd| c_uint::try_from(fd).ok())
            .filter(|&fd| fd >= next)
            .min();
        match kept {
            Some(fd) => {
                if fd > next {
                    sys::close_range(next, fd - 1)?;
                }
                // `fd` <= i32::MAX, so this cannot overflow.
                next = fd + 1;
            }
            None => return sys::close_range(next, c_uint::MAX),
        }
    }
}

/// The fallback: lists `/proc/self/fd` first (the directory's own fd is
/// among the entries; it is closed when the listing ends), then closes.
fn close_listed_fds(keep: &[RawFd]) -> io::Result<()> {
    let mut open = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let name = entry?.file_name();
        if let Some(fd) = name.to_str().and_then(|s| s.parse::<RawFd>().ok()) {
            open.push(fd);
        }
    }
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: the caller asked for every fd not kept to be closed,
            // and accepted that nothing may use them afterwards. EBADF (the
            // listing's own, already closed fd) is harmless and ignored.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Puts every signal's disposition back to `SIG_DFL`, except `SIGPIPE`,
/// which is set to `SIG_IGN`, and empties the signal mask.
///
/// That is the signal state in which the Rust runtime starts every program:
/// Rust code expects a write to a closed pipe or socket to fail with
/// `EPIPE`, not to kill the process. (`std::process::Command` resets
/// `SIGPIPE` to `SIG_DFL` itself before `exec`.) So after this call the
/// child's signal state is that of a freshly started Rust program, whatever
/// handlers and ignores the parent had; signals that were blocked since
/// [`fork`](crate::fork) and are pending are delivered now, with the default
/// action (a `SIGTERM` sent to the worker during its set-up ends it here).
///
/// Covers real-time signals too (up to `SIGRTMAX`); the two that glibc
/// reserves for itself and `SIGKILL`/`SIGSTOP` cannot be changed and are
/// skipped. Install the child's own handlers *after* this call, or before
/// it with the mask still blocked and then unblock yourself.
///
/// Async-signal-safe (sigaction, sigprocmask).
///
/// # Examples
///
/// ```no_run
/// // In the child, after the other set-up steps:
/// prefork_proc::child::reset_signals()?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// An unexpected sigaction(2) or sigprocmask(2) error.
pub fn reset_signals() -> io::Result<()> {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let handler = if signal == libc::SIGPIPE {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: an all-zero sigaction is a valid value (no flags, empty
        // mask); setting SIG_DFL or SIG_IGN installs no code of ours.
        let ret = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if ret != 0 {
            let err = io::Error::last_os_error();
            // glibc refuses its reserved real-time signals (32, 33).
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    let empty = nix::sys::signal::SigSet::empty();
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    )?;
    Ok(())
}

/// Asks the kernel to send `signal` to this process when its parent dies
/// (`PR_SET_PDEATHSIG`), then closes the race that this leaves open.
///
/// If the parent died before the `prctl`, the signal will never come: the
/// process has already been handed to init (or a subreaper). So after the
/// `prctl` this checks that `getppid()` is still `expected_parent`, the pid
/// the parent had before forking (take it with `std::process::id()` then;
/// in the child it may already be too late to ask).
///
/// Linux sends the signal when the parent *thread* that forked this
/// process exits; the master of this project has one thread, where that is
/// the same as the process. The setting is cleared in children of this
/// process and by `exec` of a set-user-ID program.
///
/// Async-signal-safe (prctl, getppid; the error does not allocate).
///
/// # Examples
///
/// ```no_run
/// use prefork_proc::{Fork, child, fork};
///
/// let master = std::process::id() as libc::pid_t;
/// if let Fork::Child = fork()? {
///     if child::die_with_parent(libc::SIGKILL, master).is_err() {
///         // SAFETY: _exit is always safe to call.
///         unsafe { libc::_exit(1) }; // the master is already gone
///     }
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// - the parent is already gone (`getppid() != expected_parent`): an error
///   of kind [`NotConnected`](io::ErrorKind::NotConnected); the caller
///   should exit;
/// - `EINVAL` from prctl(2) for an invalid signal number.
pub fn die_with_parent(signal: c_int, expected_parent: pid_t) -> io::Result<()> {
    let signal =
        libc::c_ulong::try_from(signal).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: PR_SET_PDEATHSIG takes an integer argument; no memory is
    // passed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if nix::unistd::getppid().as_raw() != expected_parent {
        return Err(io::ErrorKind::NotConnected.into());
    }
    Ok(())
}

/// Longest comm name the kernel keeps (16 bytes with the NUL).
const COMM_LEN: usize = 15;

/// Sets the process title: what `ps`, `top` and `/proc/PID/cmdline` show.
///
/// Two things are changed:
///
/// - the thread name (`prctl(PR_SET_NAME)`, seen in `/proc/PID/comm`,
///   `ps -o comm`, `top`, `pgrep`, `killall`): the first 15 bytes of the
///   title, cut at a character boundary;
/// - the command line (`/proc/PID/cmdline`, `ps -o args`, `ps aux`): the
///   memory where the kernel laid out the program's arguments (located
///   through `arg_start`/`arg_end` of `/proc/self/stat`) is overwritten
///   with the title and NUL bytes. The title is cut (at a character
///   boundary) to fit that area, which is as long as the original command
///   line: a title longer than the original arguments is truncated. The
///   environment, which follows, is never touched.
///
/// Afterwards `std::env::args()` (which reads that memory) yields the title
/// as the program name followed by as many empty strings as there were
/// other arguments, and glibc's `program_invocation_name` (used in some
/// libc error messages) is the title too: read what you need from the
/// arguments before calling this. A title with a NUL byte ends at it.
///
/// Allowed only in a single-threaded process (as a fresh child of
/// [`fork`](crate::fork) is), because another thread could be reading the
/// arguments while they are overwritten.
///
/// Async-signal-safe in practice: no allocation, only open/read/close of
/// `/proc/self/stat`, prctl and memory writes.
///
/// # Examples
///
/// ```no_run
/// // In a worker: `ps` now lists it as "prefork worker[3]".
/// prefork_proc::child::set_title("prefork worker[3]")?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// - the process has more than one thread (kind `Other`, naming the
///   count; nothing is changed);
/// - `/proc/self/stat` cannot be read or parsed, or the argument area it
///   reports is empty or implausible (`InvalidData`; the name is already
///   set then).
pub fn set_title(title: &str) -> io::Result<()> {
    let title = match title.find('\0') {
        Some(nul) => &title[..nul],
        None => title,
    };
    let threads = crate::thread_count()?;
    if threads > 1 {
        return Err(io::Error::other(format!(
            "set_title: the process has {threads} threads; another could be reading \
             the arguments while they are overwritten"
        )));
    }
    set_comm(title)?;
    set_cmdline(title)
}

/// PR_SET_NAME with the title cut to 15 bytes, without allocating.
fn set_comm(title: &str) -> io::Result<()> {
    let short = floor_char_boundary(title, COMM_LEN);
    let mut buf = [0u8; COMM_LEN + 1];
    buf[..short.len()].copy_from_slice(short.as_bytes());
    let name = CStr::from_bytes_until_nul(&buf).map_err(|_| io::ErrorKind::InvalidInput)?;
    nix::sys::prctl::set_name(name)?;
    Ok(())
}

/// Largest argument area we believe: the kernel's own limit for one
/// execve (`MAX_ARG_STRLEN` * 32 pages is far more than any real use).
const MAX_ARGS_AREA: u64 = 2 << 20;

/// Overwrites the argv strings with `title` and NULs.
fn set_cmdline(title: &str) -> io::Result<()> {
    // Fields 48 and 49 of proc(5): arg_start, arg_end.
    let [start, end] = sys::proc_self_stat_fields([48, 49])?;
    let len = end.saturating_sub(start);
    if start == 0 || len == 0 || len > MAX_ARGS_AREA {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidData)?;
    let start = usize::try_from(start).map_err(|_| io::ErrorKind::InvalidData)?;
    // Keep one NUL at the end, so the kernel reads the area as plain argv
    // strings and does not look into the environment that follows.
    let text = floor_char_boundary(title, len - 1);
    let area = start as *mut u8;
    // SAFETY: the kernel reports [arg_start, arg_end) as the argv strings it
    // copied onto the initial stack at execve; that memory stays mapped and
    // writable for the life of the process. No Rust reference points into
    // it (std reads argv lazily through raw pointers), and we checked that
    // no other thread exists to read it concurrently. We write `len` bytes
    // from `start`, within the area.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), area, text.len());
        std::ptr::write_bytes(area.add(text.len()), 0, len - text.len());
    }
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn floor_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_titles_at_char_boundaries() {
        assert_eq!(
            floor_char_boundary("prefork worker[3]", 15),
            "prefork worker["
        );
        assert_eq!(floor_char_boundary("short", 15), "short");
        // "é" is two bytes: cutting at 2 would split it.
        assert_eq!(floor_char_boundary("aé", 2), "a");
        assert_eq!(floor_char_boundary("", 0), "");
    }
}
