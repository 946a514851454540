#![doc = include_str!("../README.md")]
//!
//! # Where things are
//!
//! Everything a daemon needs is at the top level ([`Master`], [`Worker`],
//! [`Context`], [`Report`], ...), re-exported from [`master`], and so is
//! what a job worker needs ([`Registry`], [`JobWorker`] for pull mode,
//! [`DispatchFeeder`] and [`DispatchWorker`] for dispatch mode, ...),
//! re-exported from [`jobs`]. The parts below them are reachable as modules
//! for those who need a lower level ([`broker`] for adapters).
//!
//! A broker is one URL away: [`broker_url`] turns `spool:///dir`,
//! `redis://...` or `beanstalk://...` into a [`BrokerUrl`], a
//! [`Connect`](broker::Connect) that each worker opens after the fork. The
//! adapters themselves are the modules [`spool`], [`redis`] and
//! [`beanstalkd`], one cargo feature each:
//!
//! | feature | module | default |
//! |---|---|---|
//! | `spool` | [`spool`]: the embedded broker, a directory | on |
//! | `redis` | [`redis`]: Redis Streams (links the `redis` client crate) | off |
//! | `beanstalkd` | [`beanstalkd`]: beanstalkd, with its own small client | off |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod url;

pub use url::{BrokerUrl, broker_url};

pub use prefork_master::{
    BoxError, Builder, Cause, ConfigError, Context, ExitStatus, FnWorker, MAX_WORKERS, MIN_MEMORY,
    MIN_TIMEOUT, Master, Phase, Report, Shutdown, Worker, WorkerExit, WorkerInfo, from_fn,
};
pub use prefork_master::{Feeder, Settle};

pub use prefork_jobs::{
    DispatchFeeder, DispatchWorker, Enqueuer, Envelope, JobContext, JobError, JobEvent, JobWorker,
    Outcome, Registry, RetryPolicy, TimeLimits, enqueue,
};

/// The job layer: [`prefork_jobs`], re-exported whole.
pub mod jobs {
    pub use prefork_jobs::*;
}

/// The broker adapter trait and its types: [`prefork_broker`], re-exported
/// whole. The adapters are the modules [`spool`], [`redis`] and
/// [`beanstalkd`], behind the features of the same names.
pub mod broker {
    pub use prefork_broker::*;
}

/// The embedded broker, a durable queue in a directory: [`prefork_spool`],
/// re-exported whole (feature `spool`, on by default).
#[cfg(feature = "spool")]
pub mod spool {
    pub use prefork_spool::*;
}

/// The Redis Streams adapter: [`prefork_redis`], re-exported whole
/// (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use prefork_redis::*;
}

/// The beanstalkd adapter: [`prefork_beanstalkd`], re-exported whole
/// (feature `beanstalkd`).
#[cfg(feature = "beanstalkd")]
pub mod beanstalkd {
    pub use prefork_beanstalkd::*;
}

/// The RabbitMQ adapter: [`prefork_rabbitmq`], re-exported whole (feature
/// `rabbitmq`).
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq {
    pub use prefork_rabbitmq::*;
}

/// The Kafka adapter: [`prefork_kafka`], re-exported whole (feature
/// `kafka`).
#[cfg(feature = "kafka")]
pub mod kafka {
    pub use prefork_kafka::*;
}

/// The supervisor: [`prefork_master`], re-exported whole.
pub mod master {
    pub use prefork_master::*;
}

/// The master/worker channel: [`prefork_heartbeat`], re-exported whole.
pub mod heartbeat {
    pub use prefork_heartbeat::*;
}

/// Fork, reap and child set-up: [`prefork_proc`], re-exported whole.
pub mod proc {
    pub use prefork_proc::*;
}

/// The self-pipe signal queue: [`prefork_selfpipe`], re-exported whole.
pub mod selfpipe {
    pub use prefork_selfpipe::*;
}

/// The repository's README, whose examples are compiled as doctests of
/// this crate so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct RepositoryReadme;
