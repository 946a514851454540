//! Helpers shared by the fork tests of prefork-proc (each test file uses a
//! different subset).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use libc::c_long;

/// Runs `body` as the whole life of a forked child and `_exit`s: 0 when it
/// returns, 101 when it panics (the message goes to the inherited stderr).
/// Never returns into, or unwinds through, the test's frames.
pub fn child_main(body: impl FnOnce()) -> ! {
    let ok = std::panic::catch_unwind(AssertUnwindSafe(body)).is_ok();
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(if ok { 0 } else { 101 }) }
}

/// Blocks until a signal arrives, forever (a child that waits to be killed).
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// The fds open in this process, read from `/proc/self/fd` (the listing's
/// own fd, closed by the time this returns, is left out).
pub fn open_fds() -> BTreeSet<RawFd> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    listed.into_iter().filter(|&fd| is_open(fd)).collect()
}

/// Whether `fd` is an open file descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the fd table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Writes a pid into a pipe (4 bytes, native endian).
pub fn send_pid(to: &mut std::io::PipeWriter, pid: libc::pid_t) {
    to.write_all(&pid.to_ne_bytes()).expect("write pid");
}

/// Reads a pid written by [`send_pid`].
pub fn recv_pid(from: &mut std::io::PipeReader) -> libc::pid_t {
    let mut buf = [0u8; 4];
    from.read_exact(&mut buf).expect("read pid");
    libc::pid_t::from_ne_bytes(buf)
}

/// Polls `done` every millisecond until it is true or `limit` passes; returns
/// its last answer. A deadline for something that must happen, not a timing
/// assertion.
pub fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Makes the given system calls fail with `errno` in this process and its
/// future children, as on an older kernel (ENOSYS) or under a container's
/// seccomp policy (EPERM). Irreversible: call it only in a test case's own
/// process.
pub fn deny_syscalls(syscalls: &[c_long], errno: i32) {
    // A classic BPF program: load the syscall number, compare it with each
    // denied one, return ERRNO on a match, ALLOW otherwise. (The syscall
    // numbers are this architecture's; the arch field is not checked.)
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = vec![op(LD_W_ABS, 0, 0, 0)]; // seccomp_data.nr is at offset 0
    for &nr in syscalls {
        prog.push(op(JEQ_K, 0, 1, u32::try_from(nr).unwrap()));
        prog.push(op(
            RET_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | u32::try_from(errno).unwrap(),
        ));
    }
    prog.push(op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).unwrap(),
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: NO_NEW_PRIVS takes integers; the filter program is a valid
    // sock_fprog that outlives the call (the kernel copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let ret = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(ret, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

/// The process state letter from `/proc/PID/stat` (`R`, `S`, `T`, `Z`, ...).
pub fn proc_state(pid: libc::pid_t) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}
