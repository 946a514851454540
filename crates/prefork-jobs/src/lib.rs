//! The job layer of prefork: named job handlers with typed arguments, a
//! JSON envelope any language can produce, retries with exponential
//! backoff and jitter, dead letters with the reason, time limits, and a
//! pull-mode [`JobWorker`] for `prefork_master`.
//!
//! | item | what |
//! |---|---|
//! | [`Registry`] | named handlers `fn(&mut JobContext, Args) -> Result<(), JobError>`, per-job [`RetryPolicy`] and [`TimeLimits`] |
//! | [`Registry::with_state`], [`JobContext::state`] | typed per-worker state (a DB pool, a client) opened in each worker after the fork |
//! | [`Envelope`] | the JSON a job travels in (table in the README) |
//! | [`enqueue`], [`Enqueuer`] | put jobs on a queue |
//! | [`RetryPolicy`] | attempts, exponential backoff, cap, jitter (pure) |
//! | [`Registry::prepare`], [`Prepared::run`], [`Outcome`] | what one delivery comes to: ack, retry after a delay, or dead letter |
//! | [`JobWorker`], [`JobEvent`] | pull mode: a `Worker` that fetches, runs and settles |
//! | [`DispatchFeeder`], [`DispatchWorker`] | dispatch mode: one feeder process fetches for idle workers, the master routes |
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod context;
mod dispatch;
mod enqueue;
mod envelope;
mod error;
mod outage;
mod registry;
mod report;
mod retry;
mod run;
mod worker;

pub use context::JobContext;
pub use dispatch::{DispatchFeeder, DispatchWorker};
pub use enqueue::{Enqueuer, enqueue};
pub use envelope::{ENVELOPE_VERSION, Envelope, EnvelopeError, new_id};
pub use error::JobError;
pub use registry::{Outcome, Prepared, Registration, Registry, TimeLimits};
pub use retry::RetryPolicy;
pub use run::JobEvent;
pub use worker::{BATCH_WINDOW, JobWorker, MAX_AUTO_BATCH};
