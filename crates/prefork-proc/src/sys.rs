//! Raw system calls that neither std nor nix wraps (pidfd_open, pidfd_send_signal,
//! close_range), and an allocation-free reader of `/proc/self/stat`.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_int, c_long, c_uint, pid_t};

/// `pidfd_open(pid, 0)`: a close-on-exec fd that refers to this very process
/// and to no later holder of its pid. Linux >= 5.3. Async-signal-safe.
pub(crate) fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as c_long, 0 as c_long) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned a new fd (always O_CLOEXEC for pidfds)
    // that nothing else in this process refers to, so we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`: like kill(2), but aimed at the
/// process the pidfd refers to. Linux >= 5.1. Async-signal-safe.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: c_int) -> io::Result<()> {
    // SAFETY: a NULL siginfo asks the kernel to fill it in as kill(2) does;
    // the fd is valid for the duration of the borrow; no memory is written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd() as c_long,
            signal as c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as c_long,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `close_range(first, last, 0)`: closes every open fd in `first..=last`.
/// Linux >= 5.9. Async-signal-safe.
///
/// Callers must only close fds that nothing in this process will use again
/// (see `child::close_fds_except`).
pub(crate) fn close_range(first: c_uint, last: c_uint) -> io::Result<()> {
    // SAFETY: close_range takes three integers and touches no memory of ours;
    // which fds may be closed is the caller's contract (see above).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            c_long::from(first),
            c_long::from(last),
            0 as c_long,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for one line of `/proc/self/stat`: 52 numeric fields of at most 20
/// digits plus a 15-byte comm (escaped) fit well within it.
const STAT_BUF: usize = 2048;

/// Reads `/proc/self/stat` into a stack buffer and returns field `n` (1-based,
/// as numbered in proc(5)) as a number. Fields 1 and 2 (pid, comm) are not
/// available: comm may hold spaces and parentheses, so parsing starts after
/// the last `)`.
///
/// Does not allocate: open, read and close only (async-signal-safe).
pub(crate) fn proc_self_stat_fields<const N: usize>(fields: [usize; N]) -> io::Result<[u64; N]> {
    let mut buf = [0u8; STAT_BUF];
    let mut len = 0;
    let mut file = std::fs::File::open("/proc/self/stat")?;
    loop {
        if len == buf.len() {
            return Err(invalid_stat());
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    drop(file);
    let line = &buf[..len];
    let close = line
        .iter()
        .rposition(|&b| b == b')')
        .ok_or_else(invalid_stat)?;
    let rest = &line[close + 1..];
    let mut out = [0u64; N];
    // After ")" come fields 3, 4, ... separated by single spaces.
    for (i, word) in rest
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        let number = i + 3;
        for (slot, want) in out.iter_mut().zip(fields) {
            if want == number {
                *slot = parse_u64(word).ok_or_else(invalid_stat)?;
            }
        }
    }
    if fields.iter().any(|&f| f < 3) {
        return Err(invalid_stat());
    }
    Ok(out)
}

fn parse_u64(word: &[u8]) -> Option<u64> {
    if word.is_empty() {
        return None;
    }
    word.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn invalid_stat() -> io::Error {
    io::Error::from(io::ErrorKind::InvalidData)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_fields() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"140737488346352"), Some(140_737_488_346_352));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }

    #[test]
    fn reads_own_stat() {
        // Field 4 is the parent's pid, field 20 the thread count.
        let [ppid, threads] = proc_self_stat_fields([4, 20]).unwrap();
        assert_eq!(ppid, u64::from(std::os::unix::process::parent_id()));
        assert!(threads >= 1);
        assert!(proc_self_stat_fields([2]).is_err());
    }
}
