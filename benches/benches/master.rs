//! The master, end to end, each figure next to a baseline measured in the
//! same run (the machine is noisy: quote the ratios):
//!
//! 1. SIGKILL of a worker -> its replacement ready, vs. a bare fork whose
//!    child signals readiness on a pipe;
//! 2. QUIT -> master exited, with 64 idle workers, vs. SIGTERM + reap of 64
//!    bare children;
//! 3. master CPU while supervising 500 idle workers for 10 s (goal: under
//!    1% of a core), vs. a bare process blocked in `read`;
//! 4. total PSS of the master and 8 workers sharing a 256 MiB preloaded
//!    buffer, vs. one copy (goal: under 1.1x).
//!
//! A custom harness (`harness = false`): the daemons are this binary
//! started again with `PREFORK_BENCH_DAEMON` set, driven with real signals.
//! `PREFORK_BENCH_QUICK=1` shortens every measurement (smoke runs).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use prefork_master::{BoxError, Context, Master, Worker};

const DAEMON_ENV: &str = "PREFORK_BENCH_DAEMON";
const MIB: usize = 1 << 20;

fn main() {
    if let Ok(mode) = std::env::var(DAEMON_ENV) {
        daemon(&mode);
    }
    let quick = std::env::var_os("PREFORK_BENCH_QUICK").is_some();
    println!("master benchmarks{}", if quick { " (quick)" } else { "" });
    kill_to_ready(if quick { 10 } else { 100 });
    quit_to_exit(if quick { 2 } else { 10 });
    idle_cpu(
        if quick { 100 } else { 500 },
        Duration::from_secs(if quick { 2 } else { 10 }),
    );
    shared_pss(if quick { 32 } else { 256 });
}

// ------------------------------------------------------------------ daemon

/// A worker that idles; it touches the preloaded buffer in `start` so that
/// every page of it is mapped (shared) in every worker.
struct Idle {
    preloaded: Vec<u8>,
    iteration: Duration,
}

impl Worker for Idle {
    fn start(&mut self, _ctx: &mut Context) -> Result<(), BoxError> {
        let mut sum = 0u64;
        for page in self.preloaded.chunks(4096) {
            sum = sum.wrapping_add(u64::from(page[0]));
        }
        std::hint::black_box(sum);
        Ok(())
    }

    fn execute(&mut self, _ctx: &mut Context) -> Result<(), BoxError> {
        std::thread::sleep(self.iteration);
        Ok(())
    }
}

fn daemon(mode: &str) -> ! {
    let workers: usize = std::env::var("BENCH_WORKERS").unwrap().parse().unwrap();
    let preload_mib: usize = std::env::var("BENCH_PRELOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let iteration = Duration::from_millis(
        std::env::var("BENCH_ITER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    // Filled with a non-zero byte: every page is really allocated.
    let preloaded = vec![1u8; preload_mib * MIB];
    let master = Master::builder()
        .name("bench")
        .workers(workers)
        // Heartbeats every 2 s: the idle-CPU window sees several rounds.
        .timeout(Duration::from_secs(8))
        .graceful_timeout(Duration::from_secs(10))
        // A killed worker was not an early death: no backoff in the way.
        .healthy_after(Duration::from_millis(1))
        .after_worker_ready(|_ctx: &mut Context| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ready {}", std::process::id());
            let _ = out.flush();
        })
        .build()
        .expect("settings");
    let _ = mode;
    let report = master
        .run(Idle {
            preloaded,
            iteration,
        })
        .expect("run");
    std::process::exit(if report.success() { 0 } else { 1 })
}

struct Daemon {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Daemon {
    fn start(workers: usize, preload_mib: usize, iter_ms: u64) -> (Daemon, Vec<i32>) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("BENCH_ITER_MS", iter_ms.to_string())
            .env(DAEMON_ENV, "1")
            .env("BENCH_WORKERS", workers.to_string())
            .env("BENCH_PRELOAD_MIB", preload_mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the bench daemon");
        let lines = BufReader::new(child.stdout.take().unwrap());
        let mut d = Daemon { child, lines };
        let pids = (0..workers).map(|_| d.next_ready()).collect();
        (d, pids)
    }

    fn next_ready(&mut self) -> i32 {
        let mut line = String::new();
        assert!(self.lines.read_line(&mut line).unwrap() > 0, "daemon ended");
        line.trim().strip_prefix("ready ").unwrap().parse().unwrap()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn quit(mut self) -> Duration {
        let t = Instant::now();
        signal(self.pid(), libc::SIGQUIT);
        let status = self.child.wait().unwrap();
        let took = t.elapsed();
        assert!(status.success(), "{status}");
        took
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we own (a child or grandchild of ours).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

// ------------------------------------------------------------------ helpers

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Forks a bare child that writes one byte to a pipe, then (if `linger`)
/// waits until the returned writer is dropped or it gets SIGTERM.
fn bare_child(linger: bool) -> (i32, std::io::PipeReader, Option<std::io::PipeWriter>) {
    let (mut ready_r, ready_w) = std::io::pipe().unwrap();
    let (hold_r, hold_w) = std::io::pipe().unwrap();
    match prefork_proc::fork().expect("fork") {
        prefork_proc::Fork::Child => {
            drop(ready_r);
            drop(hold_w);
            let mut ready_w = ready_w;
            let _ = ready_w.write_all(b"r");
            // fork() leaves every signal blocked in the child: unblock,
            // so that SIGTERM ends it.
            let _ = prefork_proc::child::reset_signals();
            if linger {
                let mut hold_r = hold_r;
                let _ = hold_r.read(&mut [0u8; 1]);
            }
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        prefork_proc::Fork::Parent(child) => {
            drop(ready_w);
            drop(hold_r);
            let mut b = [0u8; 1];
            ready_r.read_exact(&mut b).unwrap();
            (child.pid(), ready_r, Some(hold_w))
        }
    }
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid on our own child, with a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
}

/// Nanoseconds of CPU a process has used (`/proc/PID/schedstat`).
fn cpu_ns(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn voluntary_switches(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `(rss, pss)` in bytes from `/proc/PID/smaps_rollup`.
fn rss_pss(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("Rss:"), field("Pss:"))
}

// ------------------------------------------------------------------ benches

fn kill_to_ready(samples: usize) {
    let (mut d, mut pids) = Daemon::start(4, 0, 100);
    let mut ours = Vec::new();
    for i in 0..samples {
        let victim = pids.remove(i % pids.len());
        let t = Instant::now();
        signal(victim, libc::SIGKILL);
        let new = d.next_ready();
        ours.push(t.elapsed());
        pids.push(new);
    }
    d.quit();
    let mut base = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let (pid, _r, _hold) = bare_child(false);
        base.push(t.elapsed());
        reap(pid);
    }
    let (a, b) = (median(ours), median(base));
    println!(
        "kill->ready: median {a:?} (baseline bare fork+ready {b:?}): {:.1}x baseline, {samples} samples",
        ratio(a, b)
    );
}

fn quit_to_exit(samples: usize) {
    let n = 64;
    let mut ours = Vec::new();
    for _ in 0..samples {
        let (d, _) = Daemon::start(n, 0, 10);
        ours.push(d.quit());
    }
    let mut base = Vec::new();
    for _ in 0..samples {
        let children: Vec<_> = (0..n).map(|_| bare_child(true)).collect();
        let t = Instant::now();
        for (pid, _, _) in &children {
            signal(*pid, libc::SIGTERM);
        }
        for (pid, _, _) in &children {
            reap(*pid);
        }
        base.push(t.elapsed());
    }
    let (a, b) = (median(ours), median(base));
    println!(
        "QUIT->exit, {n} idle workers (10 ms iterations, each finished first): median {a:?} (baseline TERM+reap of {n} bare children {b:?}): {:.1}x baseline",
        ratio(a, b)
    );
}

fn idle_cpu(n: usize, window: Duration) {
    let (d, _) = Daemon::start(n, 0, 100);
    let (base_pid, _r, hold) = bare_child(true);
    std::thread::sleep(Duration::from_secs(1)); // let start-up settle
    let (m0, b0, s0) = (
        cpu_ns(d.pid()),
        cpu_ns(base_pid),
        voluntary_switches(d.pid()),
    );
    let t = Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    let (m1, b1, s1) = (
        cpu_ns(d.pid()),
        cpu_ns(base_pid),
        voluntary_switches(d.pid()),
    );
    drop(hold);
    reap(base_pid);
    d.quit();
    let pct = |ns: u64| ns as f64 / 1e9 / secs * 100.0;
    println!(
        "idle CPU, {n} workers (heartbeat every 2 s) over {secs:.1} s: master {:.3}% of a core ({:.0} wake-ups/s); baseline process blocked in read {:.3}%",
        pct(m1 - m0),
        (s1 - s0) as f64 / secs,
        pct(b1 - b0)
    );
}

fn shared_pss(mib: usize) {
    let n = 8;
    let (d, pids) = Daemon::start(n, mib, 100);
    let (mut rss, mut pss) = rss_pss(d.pid());
    for p in &pids {
        let (r, s) = rss_pss(*p);
        rss += r;
        pss += s;
    }
    // The baseline: one process holding one copy (the master before the
    // fork holds exactly that plus its own small footprint).
    let one = (mib * MIB) as f64;
    d.quit();
    println!(
        "PSS, master + {n} workers sharing a {mib} MiB preloaded buffer: {:.1} MiB = {:.3}x one copy (RSS would say {:.2}x)",
        pss as f64 / MIB as f64,
        pss as f64 / one,
        rss as f64 / one
    );
}
