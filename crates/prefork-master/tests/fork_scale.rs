//! Many workers: 200 start, all report ready, and stop cleanly on QUIT.
//! Forks: runs under `prefork_tests::harness`, one process per case.

mod support;

use std::time::Duration;

use prefork_tests::harness::{Case, run};
use support::Daemon;

fn two_hundred_workers_start_and_stop_cleanly() {
    let d = Daemon::start(&[("TESTD_WORKERS", "200"), ("TESTD_ITER_MS", "50")], 200);
    assert!(support::wait_until(Duration::from_secs(30), || d
        .file("phases")
        .contains("running")));
    d.quit();
}

fn main() {
    support::maybe_run_daemon();
    run(&[Case::new(
        "two_hundred_workers_start_and_stop_cleanly",
        two_hundred_workers_start_and_stop_cleanly,
    )
    .limit(Duration::from_secs(120))]);
}
