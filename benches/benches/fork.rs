//! Fork + reap of a worker through prefork-proc (`fork`: thread check,
//! signals blocked around fork(2), pidfd; the child `_exit`s; the parent
//! `Child::wait`s) against bare `libc::fork` / `_exit` / `waitpid`, in the
//! same run. Quote the ratio.
//!
//! Also measured: `fork_unchecked` (the same without the thread check) and
//! `thread_count` alone, which together explain the overhead.
//!
//! The machine is shared and noisy, so after criterion's groups the bench
//! also runs the three fork arms interleaved (one of each per round, so a
//! change of load hits all three alike) and prints the medians and ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use prefork_proc::{ExitStatus, Fork};

/// fork(2), `_exit(0)` in the child, waitpid(2) in the parent: the floor.
fn bare_fork_reap() {
    // SAFETY: the child calls only _exit (async-signal-safe).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: _exit is always safe to call.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: `status` is valid, writable storage.
    let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(ret, pid);
    assert_eq!(status, 0);
}

/// The same round trip through prefork-proc. `checked` picks `fork` (with
/// its thread check) or `fork_unchecked`.
fn crate_fork_reap(checked: bool) {
    let forked = if checked {
        prefork_proc::fork()
    } else {
        // SAFETY: the child calls only _exit (async-signal-safe).
        unsafe { prefork_proc::fork_unchecked() }
    };
    match forked.expect("fork") {
        Fork::Parent(child) => assert_eq!(child.wait().unwrap(), ExitStatus::Exited(0)),
        // SAFETY: _exit is always safe to call.
        Fork::Child => unsafe { libc::_exit(0) },
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    // `fork` refuses in a multi-threaded process; criterion runs the
    // benches on the main thread, so this should be 1.
    let threads = prefork_proc::thread_count().expect("thread count");
    let checked = threads == 1;
    if !checked {
        eprintln!("fork bench: {threads} threads, measuring fork_unchecked instead of fork");
    }

    let mut g = c.benchmark_group("fork_reap");
    g.bench_function("baseline_libc_fork_exit_waitpid", |b| {
        b.iter(bare_fork_reap)
    });
    g.bench_function("prefork_proc_fork_exit_wait", |b| {
        b.iter(|| crate_fork_reap(checked))
    });
    g.bench_function("prefork_proc_fork_unchecked_exit_wait", |b| {
        b.iter(|| crate_fork_reap(false))
    });
    g.finish();

    c.bench_function("thread_count", |b| {
        b.iter(|| black_box(prefork_proc::thread_count().unwrap()))
    });
    c.final_summary();

    interleaved(checked, 1000);
}

/// Runs the three arms `rounds` times, interleaved, and prints the median
/// of each and the ratios to the baseline.
fn interleaved(checked: bool, rounds: usize) {
    let arms: [(&str, &dyn Fn()); 3] = [
        ("baseline libc fork/_exit/waitpid", &bare_fork_reap),
        ("prefork_proc::fork + Child::wait", &|| {
            crate_fork_reap(checked)
        }),
        ("prefork_proc::fork_unchecked + Child::wait", &|| {
            crate_fork_reap(false)
        }),
    ];
    let mut times = vec![Vec::with_capacity(rounds); arms.len()];
    for _ in 0..rounds {
        for ((_, arm), samples) in arms.iter().zip(&mut times) {
            let start = Instant::now();
            arm();
            samples.push(start.elapsed());
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|samples| {
            samples.sort_unstable();
            samples[samples.len() / 2]
        })
        .collect();
    println!("\ninterleaved, {rounds} rounds, median per fork+reap:");
    for ((name, _), median) in arms.iter().zip(&medians) {
        println!(
            "  {name:<44} {:>8.1} us  ({:.2}x baseline)",
            median.as_secs_f64() * 1e6,
            median.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
}
