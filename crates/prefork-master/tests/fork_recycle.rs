//! Recycling by iteration count, memory (PSS) and age: each worker is
//! replaced gracefully, one at a time, its replacement ready first. Real
//! processes. Forks: runs under `prefork_tests::harness`, one process per
//! case.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use prefork_tests::harness::{Case, run};
use support::{Daemon, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// Watches the daemon until `replaced` workers were recycled; checks the
/// ready count never fell below `n` and that every exit was requested.
fn watch_recycling(d: &Daemon, n: usize, replaced: usize) {
    let first = d.workers();
    let mut fewest = usize::MAX;
    let mut seen = BTreeSet::new();
    let ok = wait_until(WAIT, || {
        let ready = d.ready_workers();
        fewest = fewest.min(ready.len());
        seen.extend(ready);
        d.file("exits").lines().count() >= replaced
    });
    assert!(ok, "fewer than {replaced} recycled\n{}", d.log());
    assert!(
        fewest >= n,
        "only {fewest} ready workers at one moment\n{}",
        d.log()
    );
    assert!(seen.len() > first.len(), "no replacement seen");
    let exits = d.file("exits");
    assert!(
        exits
            .lines()
            .all(|l| l.contains("Requested") && l.contains("code 0")),
        "{exits}"
    );
}

fn workers_are_recycled_after_n_iterations() {
    let d = Daemon::start(
        &[
            ("TESTD_WORKERS", "2"),
            ("TESTD_ITER_MS", "5"),
            ("TESTD_MAX_ITERATIONS", "20"),
        ],
        2,
    );
    watch_recycling(&d, 2, 4);
    assert!(d.log().contains("iteration limit"));
    d.quit();
}

fn workers_are_recycled_after_their_maximum_age() {
    let d = Daemon::start(&[("TESTD_WORKERS", "2"), ("TESTD_MAX_AGE_MS", "300")], 2);
    watch_recycling(&d, 2, 3);
    assert!(d.log().contains("maximum age"));
    d.quit();
}

fn a_worker_over_its_memory_limit_is_recycled() {
    let d = Daemon::start(
        &[
            ("TESTD_WORKERS", "2"),
            ("TESTD_MODE", "alloc"),
            ("TESTD_MAX_MEMORY", &(24u64 << 20).to_string()),
        ],
        2,
    );
    watch_recycling(&d, 2, 1);
    assert!(d.log().contains("memory limit"), "{}", d.log());
    // Only the worker that grew goes: the others stay well below the limit.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.file("exits").lines().count(), 1, "{}", d.file("exits"));
    d.quit();
}

fn main() {
    support::maybe_run_daemon();
    run(&[
        Case::new(
            "workers_are_recycled_after_n_iterations",
            workers_are_recycled_after_n_iterations,
        ),
        Case::new(
            "workers_are_recycled_after_their_maximum_age",
            workers_are_recycled_after_their_maximum_age,
        ),
        Case::new(
            "a_worker_over_its_memory_limit_is_recycled",
            a_worker_over_its_memory_limit_is_recycled,
        ),
    ]);
}
