#![doc = include_str!("../README.md")]
//!
//! # The API at a glance
//!
//! - [`Master::builder`] → [`Builder`]: settings and hooks; [`Builder::build`]
//!   refuses impossible settings with a [`ConfigError`] naming the setting.
//! - [`Master::run`] takes the [`Worker`] and returns a [`Report`] once the
//!   master has stopped ([`Report`] is a `Termination`: return it from `main`).
//! - [`Worker`]: `start` once per worker process, `execute` in a loop,
//!   `reopen_logs` on USR1, `stop` before exit. [`from_fn`] makes one of a
//!   closure.
//! - [`Context`]: the worker's slot, [`Context::shutting_down`],
//!   [`Context::alive`] for long iterations, [`Context::set_activity`] for
//!   the logs.
//! - Hooks: `before_fork`, `after_worker_exit` (with a [`WorkerExit`]),
//!   `reopen_logs`, `on_phase` (with a [`Phase`]) run in the master;
//!   `after_fork` and `after_worker_ready` run in the worker.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backoff;
mod child;
mod config;
pub mod control;
mod feeder;
mod master;
mod memory;
mod report;
mod router;
mod supervisor;
mod worker;

pub use config::{Builder, ConfigError, MAX_WORKERS, MIN_MEMORY, MIN_TIMEOUT};
pub use feeder::{Feeder, Job, Settle};
pub use master::{MAX_JOB_BYTES, Master};
pub use report::{Cause, ExitStatus, Phase, Report, Role, Shutdown, WorkerExit, WorkerInfo};
pub use worker::{BoxError, Context, FnWorker, MAX_REPORT, Orphans, Worker, from_fn};
