//! Test support shared by every crate of the workspace, and the home of the
//! cross-crate integration tests (under `tests/`).
//!
//! The one thing here is [`harness`]: the runner for tests that fork, send
//! real signals or SIGKILL processes. libtest runs tests on threads, and a
//! process with threads must not fork (see `prefork-proc`), so such tests
//! are `harness = false` targets whose `main` calls [`harness::run`].
#![forbid(unsafe_code)]

pub mod harness;
