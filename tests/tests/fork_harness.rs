//! Checks the runner itself: a case that passes, and (run in a child) cases
//! that must be reported as failures.
use prefork_tests::harness::{Case, run};
use std::process::Command;

fn passes() {
    assert!(Command::new("true").status().unwrap().success());
}

// The child is left unreaped on purpose: the runner must call this a failure.
#[allow(clippy::zombie_processes)]
fn leaks_a_child() {
    let _child = Command::new("sleep").arg("1").spawn().unwrap();
}

fn panics() {
    panic!("this case fails on purpose");
}

fn runner_reports_failures() {
    let exe = std::env::current_exe().unwrap();
    for (name, expect_ok) in [
        ("inner_passes", true),
        ("inner_leaks", false),
        ("inner_panics", false),
    ] {
        let out = Command::new(&exe)
            .env("PREFORK_TEST_CASE", name)
            .output()
            .unwrap();
        assert_eq!(out.status.success(), expect_ok, "{name}: {out:?}");
    }
}

fn main() {
    run(&[
        Case::new("runner_reports_failures", runner_reports_failures),
        Case::new("inner_passes", passes).hidden(),
        Case::new("inner_leaks", leaks_a_child)
            .limit(std::time::Duration::from_secs(10))
            .hidden(),
        Case::new("inner_panics", panics).hidden(),
    ]);
}
