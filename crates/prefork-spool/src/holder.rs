//! Who holds a claim (pid, process start time, host) and whether that
//! process still runs: what lets a fetch hand a dead worker's jobs out at
//! once, and [`take_over`](prefork_broker::Broker::take_over) find a
//! process's claims, without ever taking a live process's claim.
//!
//! A pid alone proves nothing: it is reused after the process is reaped, and
//! in another pid namespace (a container sharing the directory) it names
//! another process. So a claim also records
//!
//! - the **host**: a hash of the UTS host name and the pid namespace
//!   (`/proc/self/ns/pid`); claims of another host are never judged by pid;
//! - the **start time** of the claiming process (field 22 of
//!   `/proc/PID/stat`, clock ticks since boot): a live process with the
//!   recorded pid but another start time is not the holder.
//!
//! A holder on this host is dead when `kill(pid, 0)` fails with `ESRCH`,
//! when the process with that pid is a zombie (killed, not yet reaped), or
//! when it started at another time than the claim records. When `/proc`
//! cannot be read the start time is recorded as 0 (unknown) and only
//! `ESRCH` counts as dead.

use std::fs;
use std::io;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The process that made a claim, as recorded in its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Holder {
    pub(crate) pid: u32,
    /// Clock ticks since boot at which the process started; 0 = unknown.
    pub(crate) start: u64,
    /// [`host_token`] of the claimer; 0 = not recorded (a claim written
    /// before claims recorded hosts).
    pub(crate) host: u64,
}

/// Whether a claim's holder still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    Dead,
    /// Another host, a claim that does not record its host, or a process
    /// we may not look at: only the lease decides.
    Unknown,
}

impl Holder {
    /// This process.
    pub(crate) fn current() -> Holder {
        let pid = std::process::id();
        Holder {
            pid,
            start: stat(pid)
                .ok()
                .filter(|s| s.pid == pid)
                .map_or(0, |s| s.start),
            host: host_token(),
        }
    }

    /// Whether this holder still runs, judged from `me` (this process).
    pub(crate) fn liveness(&self, me: &Holder) -> Liveness {
        if self.host == 0 || self.host != me.host {
            return Liveness::Unknown;
        }
        let known_start = self.start != 0 && me.start != 0;
        if self.pid == me.pid {
            return match known_start {
                true if self.start == me.start => Liveness::Alive,
                // Our pid, but another process: it was reused after that one died.
                true => Liveness::Dead,
                false => Liveness::Alive,
            };
        }
        let Ok(raw) = i32::try_from(self.pid) else {
            return Liveness::Unknown;
        };
        if raw <= 0 {
            return Liveness::Unknown;
        }
        if kill(Pid::from_raw(raw), None) == Err(Errno::ESRCH) {
            return Liveness::Dead;
        }
        match stat(self.pid) {
            Ok(s) if s.pid != self.pid => Liveness::Unknown, // a /proc of another namespace
            Ok(s) if s.zombie => Liveness::Dead,
            Ok(s) if self.start != 0 && s.start != 0 && s.start != self.start => Liveness::Dead,
            Ok(_) => Liveness::Alive,
            // Exited between the kill and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Liveness::Dead,
            Err(_) => Liveness::Unknown,
        }
    }
}

/// The liveness of each holder met in one scan of `claimed/`, judged once
/// per holder (a worker holds many claims).
#[derive(Debug, Default)]
pub(crate) struct Judged(Vec<(Holder, Liveness)>);

impl Judged {
    /// [`Holder::liveness`] of `h`, looked up only the first time.
    pub(crate) fn liveness(&mut self, h: Holder, me: &Holder) -> Liveness {
        if let Some((_, l)) = self.0.iter().find(|(seen, _)| *seen == h) {
            return *l;
        }
        let l = h.liveness(me);
        self.0.push((h, l));
        l
    }
}

/// What the spool reads from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: u32,
    /// Exited, not yet reaped, and no thread left running.
    zombie: bool,
    start: u64,
}

fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc stat"))
}

/// Parses `pid (comm) state ... num_threads(20) ... starttime(22) ...`;
/// `comm` may hold spaces and parentheses, so fields are counted after the
/// last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_once(' ')?.0.parse().ok()?;
    let fields: Vec<&str> = tail.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state).
    let state = *fields.first()?;
    let threads: u64 = fields.get(20 - 3)?.parse().ok()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some(Stat {
        pid,
        zombie: matches!(state, "Z" | "X") && threads <= 1,
        start,
    })
}

/// This host, as claims record it: a hash of the UTS host name and the pid
/// namespace, never 0.
pub(crate) fn host_token() -> u64 {
    let name = nix::sys::utsname::uname()
        .map(|u| u.nodename().as_encoded_bytes().to_vec())
        .unwrap_or_default();
    let ns = fs::read_link("/proc/self/ns/pid")
        .map(|p| p.into_os_string().into_encoded_bytes())
        .unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.iter().chain(&[0]).chain(&ns) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// What the crate's other tests need from here.
#[cfg(test)]
pub(crate) mod tests_support {
    /// The start time of process `pid`.
    pub(crate) fn start_of(pid: u32) -> u64 {
        super::stat(pid).expect("/proc readable").start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line =
            "9575 (a) b (c) Z 9534 9529 3955 0 -1 4227148 224 0 0 0 0 0 0 0 20 0 1 0 30646 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                pid: 9575,
                zombie: true,
                start: 30646
            })
        );
        assert_eq!(parse_stat("12 (x) R 1 2"), None);
    }

    #[test]
    fn this_process_is_alive_and_another_start_time_is_not_it() {
        let me = Holder::current();
        assert_ne!(me.start, 0, "/proc readable on the test machine");
        assert_eq!(me.liveness(&me), Liveness::Alive);
        let earlier = Holder {
            start: me.start - 1,
            ..me
        };
        assert_eq!(earlier.liveness(&me), Liveness::Dead);
        let elsewhere = Holder {
            host: me.host ^ 1,
            ..earlier
        };
        assert_eq!(elsewhere.liveness(&me), Liveness::Unknown);
        let unrecorded = Holder {
            host: 0,
            start: 0,
            ..earlier
        };
        assert_eq!(unrecorded.liveness(&me), Liveness::Unknown);
    }

    #[test]
    fn a_reused_pid_and_a_zombie_are_dead_holders() {
        let me = Holder::current();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited, not reaped: kill(pid, 0) still succeeds.
        while !stat(pid).unwrap().zombie {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let start = stat(pid).unwrap().start;
        let zombie = Holder { pid, start, ..me };
        assert_eq!(zombie.liveness(&me), Liveness::Dead);
        child.wait().unwrap();
        assert_eq!(zombie.liveness(&me), Liveness::Dead, "reaped: ESRCH");
        // pid 1 runs, but is not the process that started at tick `start`.
        let reused = Holder {
            pid: 1,
            start,
            ..me
        };
        assert_eq!(reused.liveness(&me), Liveness::Dead);
        let init = Holder {
            pid: 1,
            start: stat(1).unwrap().start,
            ..me
        };
        assert_eq!(init.liveness(&me), Liveness::Alive);
    }
}
