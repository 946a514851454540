//! Shared by the `fork_*` tests: a test daemon (the test binary itself,
//! started again with `PREFORK_TESTD` set, so it can use dev-dependencies)
//! and helpers to drive it with real signals and watch it through `/proc`.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use prefork_master::{BoxError, Context, Master, Worker};

/// Set in the environment of the daemon process.
const DAEMON_ENV: &str = "PREFORK_TESTD";

/// Call first in `main`: when this process is the daemon, runs it and exits.
pub fn maybe_run_daemon() {
    if std::env::var_os(DAEMON_ENV).is_some() {
        daemon_main();
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(env_u64(name, default))
}

fn daemon_main() -> ! {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESTD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = PathBuf::from(std::env::var("TESTD_DIR").expect("TESTD_DIR"));
    let mode = std::env::var("TESTD_MODE").unwrap_or_else(|_| "sleep".into());
    let worker = TestWorker {
        dir: dir.clone(),
        mode,
        iteration: ms("TESTD_ITER_MS", 20),
        marks: None,
        // Preloaded: a buffer built before run() (shared copy-on-write).
        preloaded: vec![7u8; 1 << 16],
    };
    let exits = dir.clone();
    let phases = dir.clone();
    let mut builder = Master::builder()
        .name("testd")
        .workers(env_u64("TESTD_WORKERS", 2) as usize)
        .timeout(ms("TESTD_TIMEOUT_MS", 5000))
        .graceful_timeout(ms("TESTD_GRACEFUL_MS", 5000))
        .kill_grace(ms("TESTD_KILL_GRACE_MS", 1000))
        .backoff_initial(ms("TESTD_BACKOFF_MS", 50))
        .backoff_max(ms("TESTD_BACKOFF_MAX_MS", 400))
        .healthy_after(ms("TESTD_HEALTHY_MS", 2000))
        .crash_limit(env_u64("TESTD_CRASH_LIMIT", 4) as u32)
        .after_worker_ready(move |ctx: &mut Context| {
            let path = ctx_dir().join("ready").join(std::process::id().to_string());
            let _ = ctx;
            File::create(path).expect("ready file");
        })
        .after_worker_exit(move |exit| {
            append(
                &exits.join("exits"),
                &format!("{} {:?} {}\n", exit.pid, exit.cause, exit.status),
            );
        })
        .on_phase(move |phase| append(&phases.join("phases"), &format!("{phase}\n")));
    if let Some(n) = std::env::var("TESTD_MAX_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.max_iterations(n).recycle_jitter(0.0);
    }
    if let Some(b) = std::env::var("TESTD_MAX_MEMORY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder
            .max_memory(b)
            .memory_check_interval(ms("TESTD_MEMORY_CHECK_MS", 50));
    }
    if let Some(age) = std::env::var("TESTD_MAX_AGE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.max_age(Duration::from_millis(age));
    }
    if std::env::var_os("TESTD_CONTROL").is_some() {
        builder = builder.control_socket(dir.join("control.sock"));
    }
    if std::env::var_os("TESTD_TERM_GRACEFUL").is_some() {
        builder = builder.term_is_graceful(true);
    }
    if std::env::var_os("TESTD_THREADED").is_some() {
        // A thread started before run(): the master must refuse to fork.
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(60)));
    }
    let master = match builder.build() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("testd: {e}");
            std::process::exit(2);
        }
    };
    match master.run(worker) {
        Ok(report) => {
            append(&dir.join("report"), &format!("{report}\n"));
            std::process::exit(if report.success() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("testd: {e}");
            std::process::exit(3)
        }
    }
}

fn ctx_dir() -> PathBuf {
    PathBuf::from(std::env::var("TESTD_DIR").expect("TESTD_DIR"))
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

/// Does `once` for the first caller only (across processes: a marker file).
fn first_time(dir: &Path, what: &str) -> bool {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!("once.{what}")))
        .is_ok()
}

struct TestWorker {
    dir: PathBuf,
    mode: String,
    iteration: Duration,
    marks: Option<File>,
    preloaded: Vec<u8>,
}

impl Worker for TestWorker {
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        match self.mode.as_str() {
            "panic_at_start" => panic!("testd: panics in start, as asked"),
            "fail_at_start" => return Err("testd: fails in start, as asked".into()),
            "slow_start_index1" if ctx.worker_index() == 1 => {
                std::thread::sleep(Duration::from_millis(300))
            }
            _ => {}
        }
        self.marks = Some(File::create(
            self.dir.join(format!("marks.{}", std::process::id())),
        )?);
        Ok(())
    }

    fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        let n = ctx.iterations();
        let marks = self.marks.as_mut().expect("opened in start");
        writeln!(marks, "begin {n}")?;
        let first_worker = ctx.worker_index() == 0;
        match self.mode.as_str() {
            "hang" if first_worker && n == 2 && first_time(&self.dir, "hang") => {
                File::create(self.dir.join(format!("hanging.{}", std::process::id())))?;
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            "panic" if first_worker && n == 1 && first_time(&self.dir, "panic") => {
                panic!("testd: panics in execute, as asked")
            }
            "segfault" if first_worker && n == 1 && first_time(&self.dir, "segfault") => {
                nix::sys::signal::raise(Signal::SIGSEGV)?;
            }
            "exit" if first_worker && n == 1 && first_time(&self.dir, "exit") => {
                std::process::exit(3);
            }
            "error" if first_worker && n == 1 && first_time(&self.dir, "error") => {
                return Err("testd: execute fails, as asked".into());
            }
            "garbage" if first_worker && n == 1 && first_time(&self.dir, "garbage") => {
                flood_channel_with_garbage();
            }
            "alloc" if first_worker && first_time(&self.dir, "alloc") => {
                // Grow by 32 MiB of private, touched memory (kept).
                let mut v = vec![0u8; 32 << 20];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                std::mem::forget(v);
            }
            _ => {}
        }
        std::hint::black_box(&self.preloaded);
        std::thread::sleep(self.iteration);
        writeln!(marks, "end {n}")?;
        Ok(())
    }

    fn reopen_logs(&mut self, _ctx: &mut Context) {
        append(
            &self.dir.join("reopened"),
            &format!("{}\n", std::process::id()),
        );
    }
}

/// Writes garbage to every socket this process holds (the only one is the
/// channel to the master).
fn flood_channel_with_garbage() {
    for entry in fs::read_dir("/proc/self/fd").expect("fd list").flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let target = fs::read_link(entry.path()).unwrap_or_default();
        if fd > 2 && target.to_string_lossy().starts_with("socket:") {
            // SAFETY: the fd is open (just listed) and stays open while
            // borrowed: nothing else in this single-threaded process closes it.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            for _ in 0..64 {
                let _ = nix::unistd::write(fd, &[0xEEu8; 512]);
            }
        }
    }
}

// ---------------------------------------------------------------- the test side

/// A running test daemon, its directory, and its log.
pub struct Daemon {
    pub child: std::process::Child,
    pub dir: PathBuf,
}

pub fn pid_of(child: &std::process::Child) -> i32 {
    child.id() as i32
}

/// Makes the calling (test case) process a subreaper: any worker orphaned
/// by its master is reparented here, so the harness sees it as a leftover.
pub fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

impl Daemon {
    /// Starts the daemon with `env` (TESTD_* settings) and waits until
    /// `ready` workers reported ready.
    pub fn start(env: &[(&str, &str)], ready: usize) -> Daemon {
        let d = Daemon::spawn(env);
        d.wait_ready(ready);
        d
    }

    pub fn spawn(env: &[(&str, &str)]) -> Daemon {
        become_subreaper();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "prefork-testd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("ready")).expect("temp dir");
        let log = File::create(dir.join("log")).expect("log file");
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.env_remove("PREFORK_TEST_CASE")
            .env(DAEMON_ENV, "1")
            .env("TESTD_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the test daemon");
        Daemon { child, dir }
    }

    pub fn pid(&self) -> i32 {
        pid_of(&self.child)
    }

    /// The daemon's log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Sends a real signal to the master.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal the master");
    }

    /// The master's children (its workers, alive or zombie).
    pub fn workers(&self) -> BTreeSet<i32> {
        children(self.pid())
    }

    /// Workers that are running (not zombies) and reported ready.
    ///
    /// The children, their liveness and the ready files are read at
    /// different instants. Liveness is read first and the ready files after
    /// (a ready file is never removed), and a sample is kept only when the
    /// set of children did not change meanwhile, so the count is never
    /// lower than the true count at the moment liveness was read: a
    /// replacement becoming ready and an old worker leaving between two
    /// reads cannot fake a moment with fewer ready workers.
    pub fn ready_workers(&self) -> BTreeSet<i32> {
        loop {
            let before = self.workers();
            let alive: BTreeSet<i32> = before.iter().copied().filter(|p| !is_zombie(*p)).collect();
            let ready: BTreeSet<i32> = fs::read_dir(self.dir.join("ready"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if self.workers() == before {
                return alive.intersection(&ready).copied().collect();
            }
        }
    }

    /// Waits (up to 30 s) until exactly `n` workers are ready and no other
    /// child exists; returns them.
    pub fn wait_ready(&self, n: usize) -> BTreeSet<i32> {
        let mut last = BTreeSet::new();
        let ok = wait_until(Duration::from_secs(30), || {
            last = self.ready_workers();
            last.len() == n && self.workers().len() == n
        });
        assert!(
            ok,
            "expected {n} ready workers, have {:?} (children {:?})\n{}",
            last,
            self.workers(),
            self.log()
        );
        last
    }

    /// Waits for the daemon to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the daemon did not exit within {limit:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Shuts the daemon down with QUIT and checks it exits 0, leaving no
    /// child behind.
    pub fn quit(mut self) {
        let workers = self.workers();
        self.signal(Signal::SIGQUIT);
        let code = self.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(0), "exit code after QUIT\n{}", self.log());
        for w in workers {
            assert!(!exists(w), "worker {w} outlived its master");
        }
        self.cleanup();
    }

    pub fn cleanup(self) {
        reap_orphans();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A case that fails (panics) before `quit` or `cleanup` must not leave
/// its daemon running past the test: the master is SIGKILLed, and its
/// workers follow it (their parent-death signal).
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Children of `pid`, from `/proc/PID/task/PID/children`.
pub fn children(pid: i32) -> BTreeSet<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The state letter of `/proc/PID/stat` (R, S, Z, ...), if the process exists.
pub fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

pub fn is_zombie(pid: i32) -> bool {
    state(pid) == Some('Z')
}

pub fn exists(pid: i32) -> bool {
    state(pid).is_some()
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reaps children reparented to this (subreaper) process; returns how many.
pub fn reap_orphans() -> usize {
    let mut n = 0;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

/// Lines of a marks file: ("begin" | "end", n).
pub fn marks(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn fd_of(f: &File) -> i32 {
    f.as_raw_fd()
}
