//! A pre-forking master/worker supervisor.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backoff;
mod config;
mod master;
mod memory;
mod report;
mod supervisor;
mod worker;

pub use config::{Builder, ConfigError, MAX_WORKERS, MIN_MEMORY, MIN_TIMEOUT};
pub use master::Master;
pub use report::{Cause, ExitStatus, Phase, Report, Shutdown, WorkerExit, WorkerInfo};
pub use worker::{BoxError, Context, FnWorker, Worker, from_fn};
