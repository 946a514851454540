//! Waiting for a job to arrive in `ready/` without spinning: inotify when
//! the kernel gives us an instance, short sleeps when it does not (the
//! per-user limit on inotify instances is small, 128 by default).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Longest sleep between looks at `ready/` without inotify.
const POLL_SLEEP: Duration = Duration::from_millis(20);

/// Wakes up when something is renamed into a directory, or when
/// a timeout passes.
#[derive(Debug)]
pub(crate) struct Waiter {
    inotify: Option<Inotify>,
}

impl Waiter {
    /// Watches `dir` (close-on-exec, non-blocking), or falls back to
    /// sleeping when inotify is unavailable.
    pub(crate) fn new(dir: &Path) -> Waiter {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .ok()
            .filter(|i| {
                // Every way into ready/ is a rename.
                i.add_watch(dir, AddWatchFlags::IN_MOVED_TO).is_ok()
            });
        Waiter { inotify }
    }

    /// Whether this waiter is woken by the kernel (else it sleeps in steps).
    #[cfg(test)]
    pub(crate) fn is_notified(&self) -> bool {
        self.inotify.is_some()
    }

    /// Blocks until the directory changes or `timeout` passes (possibly
    /// earlier: callers look again either way).
    pub(crate) fn wait(&self, timeout: Duration) {
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(timeout.min(POLL_SLEEP));
            return;
        };
        // Whole milliseconds, rounded up so a short wait is not a busy loop.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128);
        let timeout = PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        if matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            // Drain: events only mean "look again".
            while matches!(inotify.read_events(), Ok(ev) if !ev.is_empty()) {}
        }
    }

    /// Forgets pending events, so the next wait sleeps until a new one.
    pub(crate) fn clear(&self) {
        if let Some(inotify) = &self.inotify {
            while matches!(inotify.read_events(), Ok(ev) if !ev.is_empty()) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_into_the_directory_wakes_the_waiter() {
        let dir = std::env::temp_dir().join(format!("prefork-spool-wait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("in")).unwrap();
        let w = Waiter::new(&dir.join("in"));
        assert!(w.is_notified(), "inotify available on the test machine");
        std::fs::write(dir.join("f"), b"x").unwrap();
        std::fs::rename(dir.join("f"), dir.join("in/f")).unwrap();
        // Returns because of the event; a lost event would hang until the
        // test runner gives up.
        w.wait(Duration::from_secs(3600));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
