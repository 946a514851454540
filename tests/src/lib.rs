//! Test support shared by every crate of the workspace, and the home of the
//! cross-crate integration tests (under `tests/`).
//!
//! [`harness`] is the runner for tests that fork, send real signals or
//! SIGKILL processes. libtest runs tests on threads, and a process with
//! threads must not fork (see `prefork-proc`), so such tests are
//! `harness = false` targets whose `main` calls [`harness::run`].
//!
//! [`e2e`] holds what end-to-end job-pool tests share: which broker to
//! test against, the file handlers record their runs in, and the driver that
//! SIGKILLs workers and masters at random moments.
//!
//! [`rabbitmq`] starts a rabbitmq-server of a case's own, for cases that
//! SIGKILL the server and start it again.
#![forbid(unsafe_code)]

pub mod e2e;
pub mod harness;
pub mod rabbitmq;
