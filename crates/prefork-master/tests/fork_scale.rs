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

/// A thread that is ending does not stop the master from starting: a
/// broker client's I/O thread, closed by the connect-and-close check a
/// command runs before its pool, may still be counted by the kernel for a
/// moment (amiquip's was, every time). Each round leaves a thread that ends
/// a few ms later, then starts a master at once, whose worker asks it to
/// stop. (A thread that goes on running still refuses the start.)
fn a_thread_that_is_ending_does_not_block_the_master() {
    use prefork_master::{BoxError, Context, Master};
    for round in 0..10 {
        drop(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            std::hint::black_box(round)
        }));
        let report = Master::builder()
            .workers(1)
            .name("joined")
            .build()
            .unwrap()
            .run(prefork_master::from_fn(
                |_ctx: &mut Context| -> Result<(), BoxError> {
                    let master = nix::unistd::getppid();
                    nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGQUIT)?;
                    std::thread::sleep(Duration::from_millis(50));
                    Ok(())
                },
            ))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(report.spawned >= 1, "round {round}: {report}");
    }
}

fn main() {
    support::maybe_run_daemon();
    run(&[
        Case::new(
            "two_hundred_workers_start_and_stop_cleanly",
            two_hundred_workers_start_and_stop_cleanly,
        )
        .limit(Duration::from_secs(120)),
        Case::new(
            "a_thread_that_is_ending_does_not_block_the_master",
            a_thread_that_is_ending_does_not_block_the_master,
        ),
    ]);
}
