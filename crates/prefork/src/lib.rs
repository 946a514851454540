#![doc = include_str!("../README.md")]
//!
//! # Where things are
//!
//! Everything a daemon needs is at the top level ([`Master`], [`Worker`],
//! [`Context`], [`Report`], ...), re-exported from [`master`]. The parts
//! below it are reachable as modules for those who need a lower level.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use prefork_master::{
    BoxError, Builder, Cause, ConfigError, Context, ExitStatus, FnWorker, MAX_WORKERS, MIN_MEMORY,
    MIN_TIMEOUT, Master, Phase, Report, Shutdown, Worker, WorkerExit, WorkerInfo, from_fn,
};

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
