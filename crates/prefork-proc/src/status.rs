//! Decoded wait statuses and the `waitpid(-1, WNOHANG)` reaping loop.

use std::fmt;
use std::io;

use libc::{c_int, pid_t};

/// The core-dump bit of a wait status (`WCOREFLAG` in C).
const CORE_FLAG: c_int = 0x80;

/// How a child process ended, decoded from a wait(2) status.
///
/// An exit code and a signal number are different things that both happen
/// to be small integers; this type never lets one pass for the other (a
/// shell's `$?` of 137 is *not* an exit code of 137 here, it is
/// `Signaled { signal: SIGKILL, .. }`).
///
/// # Examples
///
/// ```
/// use prefork_proc::ExitStatus;
///
/// let status = ExitStatus::Signaled { signal: libc::SIGSEGV, core_dumped: true };
/// assert_eq!(status.to_string(), "killed by SIGSEGV (core dumped)");
/// assert_eq!(ExitStatus::from_raw(status.into_raw()), Some(status));
/// assert!(!status.success());
/// assert_eq!(ExitStatus::Exited(3).to_string(), "exited with code 3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// The process called `exit`/`_exit` (or returned from `main`) with this
    /// code, `0..=255` (the kernel keeps only the low 8 bits).
    Exited(i32),
    /// The process was killed by a signal.
    Signaled {
        /// The signal number (`libc::SIGKILL`, ...), `1..=64` on Linux.
        signal: c_int,
        /// Whether the kernel wrote a core dump (depends on the signal, on
        /// `RLIMIT_CORE` and on `/proc/sys/kernel/core_pattern`).
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Decodes a raw wait(2) status.
    ///
    /// Returns `None` for statuses that do not mean the process ended: a
    /// stop (`WIFSTOPPED`) or a continue (`WIFCONTINUED`), which the wait
    /// calls of this crate never ask for.
    ///
    /// Async-signal-safe (pure arithmetic).
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_proc::ExitStatus;
    ///
    /// assert_eq!(ExitStatus::from_raw(3 << 8), Some(ExitStatus::Exited(3)));
    /// assert_eq!(
    ///     ExitStatus::from_raw(libc::SIGKILL),
    ///     Some(ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false })
    /// );
    /// assert_eq!(ExitStatus::from_raw(0xffff), None); // "continued"
    /// ```
    pub const fn from_raw(raw: c_int) -> Option<ExitStatus> {
        if libc::WIFEXITED(raw) {
            Some(ExitStatus::Exited(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Some(ExitStatus::Signaled {
                signal: libc::WTERMSIG(raw),
                core_dumped: libc::WCOREDUMP(raw),
            })
        } else {
            None
        }
    }

    /// Encodes this status the way the kernel does (the inverse of
    /// [`from_raw`](Self::from_raw)). An exit code keeps its low 8 bits and a
    /// signal number its low 7, as in the kernel.
    ///
    /// Async-signal-safe (pure arithmetic).
    pub const fn into_raw(self) -> c_int {
        match self {
            ExitStatus::Exited(code) => libc::W_EXITCODE(code & 0xff, 0),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => (signal & 0x7f) | if core_dumped { CORE_FLAG } else { 0 },
        }
    }

    /// `true` for `Exited(0)` only.
    pub const fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited(0))
    }

    /// The exit code, if the process exited.
    pub const fn code(&self) -> Option<i32> {
        match *self {
            ExitStatus::Exited(code) => Some(code),
            ExitStatus::Signaled { .. } => None,
        }
    }

    /// The signal that killed the process, if one did.
    pub const fn signal(&self) -> Option<c_int> {
        match *self {
            ExitStatus::Exited(_) => None,
            ExitStatus::Signaled { signal, .. } => Some(signal),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                f.write_str("killed by ")?;
                write_signal_name(f, signal)?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Writes `SIGTERM`, `SIGRTMIN+3` or `signal 99`.
fn write_signal_name(f: &mut fmt::Formatter<'_>, signal: c_int) -> fmt::Result {
    if let Ok(known) = nix::sys::signal::Signal::try_from(signal) {
        return f.write_str(known.as_str());
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&signal) {
        write!(f, "SIGRTMIN+{}", signal - min)
    } else {
        write!(f, "signal {signal}")
    }
}

/// One child collected by [`reap`]: its pid and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reaped {
    /// The child's pid (free for reuse by the kernel from now on).
    pub pid: pid_t,
    /// How it ended.
    pub status: ExitStatus,
}

/// Reaps every child that has ended, without blocking.
///
/// Calls `waitpid(-1, &status, WNOHANG)` until it reports that no ended
/// child is left (a return of 0, or `ECHILD` when there are no children at
/// all), and returns each reaped child with its decoded status, in the
/// order the kernel reported them. Children that are merely stopped or
/// continued are left alone (`WUNTRACED`/`WCONTINUED` are not passed). An
/// empty vector means nothing was waiting to be reaped.
///
/// This collects *every* ended child of the process, including ones started
/// with `std::process::Command` whose `std::process::Child::wait` will then
/// fail with `ECHILD`; a pre-forking master that owns all its children is
/// the intended caller. After a child is reaped its pid may be reused: use
/// [`Child::signal`](crate::Child::signal) (pidfd-based) rather than
/// `kill(pid)` for it afterwards.
///
/// Not async-signal-safe (it allocates the vector); [`reap_one`] is.
///
/// # Examples
///
/// ```
/// // Nothing to reap in a process without ended children.
/// let reaped = prefork_proc::reap()?;
/// assert!(reaped.is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// Only an unexpected waitpid(2) error (not `ECHILD`, and `EINTR` is
/// retried); children reaped before it are then still lost to the caller,
/// which cannot happen with the documented errors of waitpid(2).
pub fn reap() -> io::Result<Vec<Reaped>> {
    let mut reaped = Vec::new();
    while let Some(one) = reap_one()? {
        reaped.push(one);
    }
    Ok(reaped)
}

/// Reaps at most one ended child, without blocking: one
/// `waitpid(-1, WNOHANG)` (retried on `EINTR`).
///
/// Returns `Ok(None)` when no child has ended (or there are no children).
/// Async-signal-safe: no allocation, only waitpid(2).
///
/// # Errors
///
/// An unexpected waitpid(2) error (neither `ECHILD` nor `EINTR`).
pub fn reap_one() -> io::Result<Option<Reaped>> {
    match wait_raw(-1, libc::WNOHANG) {
        Ok(found) => Ok(found.map(|(pid, status)| Reaped { pid, status })),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        Err(e) => Err(e),
    }
}

/// waitpid(2) with a raw status decoded by [`ExitStatus::from_raw`].
///
/// Uses libc directly rather than nix: nix's `WaitStatus` cannot represent a
/// child killed by a real-time signal and reports an error for it, *after*
/// the child has been reaped, which would lose that child's status.
///
/// Returns `Ok(None)` when waitpid returns 0 (WNOHANG and nothing ended).
/// Retries on `EINTR`. Stop/continue reports (only possible if the caller
/// passes WUNTRACED/WCONTINUED, which this crate never does) are skipped.
pub(crate) fn wait_raw(pid: pid_t, flags: c_int) -> io::Result<Option<(pid_t, ExitStatus)>> {
    loop {
        let mut raw: c_int = 0;
        // SAFETY: `raw` is a valid, writable c_int for the kernel to fill.
        let ret = unsafe { libc::waitpid(pid, &mut raw, flags) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            return Ok(None);
        }
        if let Some(status) = ExitStatus::from_raw(raw) {
            return Ok(Some((ret, status)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the kernel stores for `exit(code)` (see `W_EXITCODE`), written
    /// out independently of the code under test.
    fn kernel_exit(code: i32) -> c_int {
        (code & 0xff) << 8
    }

    /// What the kernel stores for death by `signal` (`do_exit(signal | 0x80?)`).
    fn kernel_signal(signal: c_int, core: bool) -> c_int {
        signal | if core { 0x80 } else { 0 }
    }

    proptest! {
        #[test]
        fn exit_codes_decode_as_exit_codes(code in 0i32..=255) {
            let status = ExitStatus::from_raw(kernel_exit(code));
            prop_assert_eq!(status, Some(ExitStatus::Exited(code)));
            prop_assert_eq!(status.unwrap().signal(), None);
            prop_assert_eq!(status.unwrap().into_raw(), kernel_exit(code));
            prop_assert_eq!(status.unwrap().success(), code == 0);
            prop_assert_eq!(status.unwrap().to_string(), format!("exited with code {code}"));
        }

        #[test]
        fn signals_decode_as_signals(signal in 1 as c_int..=64, core: bool) {
            let raw = kernel_signal(signal, core);
            let status = ExitStatus::from_raw(raw);
            prop_assert_eq!(status, Some(ExitStatus::Signaled { signal, core_dumped: core }));
            let status = status.unwrap();
            prop_assert_eq!(status.code(), None);
            prop_assert!(!status.success());
            prop_assert_eq!(status.into_raw(), raw);
            prop_assert!(status.to_string().starts_with("killed by "));
            prop_assert_eq!(status.to_string().ends_with(" (core dumped)"), core);
        }

        #[test]
        fn stops_are_neither_exits_nor_deaths(signal in 1 as c_int..=64) {
            // What the kernel reports to WUNTRACED for a stop by `signal`.
            prop_assert_eq!(ExitStatus::from_raw((signal << 8) | 0x7f), None);
        }
    }

    #[test]
    fn every_16_bit_status_is_one_kind_at_most() {
        // Exhaustive over every status the kernel can report (16 bits).
        for raw in 0..=0xffff {
            let Some(status) = ExitStatus::from_raw(raw) else {
                continue;
            };
            assert_ne!(
                status.code().is_some(),
                status.signal().is_some(),
                "{raw:#x}"
            );
            assert_eq!(
                ExitStatus::from_raw(status.into_raw()),
                Some(status),
                "{raw:#x}"
            );
            if let Some(signal) = status.signal() {
                assert!((1..0x7f).contains(&signal), "{raw:#x}");
            }
        }
    }

    #[test]
    fn stopped_and_continued_are_not_ends() {
        for signal in [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
            assert_eq!(ExitStatus::from_raw((signal << 8) | 0x7f), None);
        }
        assert_eq!(ExitStatus::from_raw(0xffff), None);
    }

    #[test]
    fn display_names_signals() {
        let killed = |signal, core_dumped| ExitStatus::Signaled {
            signal,
            core_dumped,
        };
        assert_eq!(
            killed(libc::SIGKILL, false).to_string(),
            "killed by SIGKILL"
        );
        assert_eq!(
            killed(libc::SIGSEGV, true).to_string(),
            "killed by SIGSEGV (core dumped)"
        );
        let rt = libc::SIGRTMIN() + 2;
        assert_eq!(killed(rt, false).to_string(), "killed by SIGRTMIN+2");
        assert_eq!(killed(99, false).to_string(), "killed by signal 99");
        assert_eq!(ExitStatus::Exited(0).to_string(), "exited with code 0");
    }

    #[test]
    fn nothing_to_reap_is_empty_not_an_error() {
        // This libtest process has no children (cargo runs it directly).
        assert_eq!(reap_one().unwrap(), None);
    }
}
