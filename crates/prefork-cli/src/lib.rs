//! The library half of the `prefork` command: the example job handlers,
//! the progress events, the demo, the operator commands' logic and the
//! control socket's clients. The binary (`src/main.rs`) is
//! argument parsing over these; broker URLs are the facade's
//! ([`prefork::broker_url`]).
//!
//! ```
//! let url = prefork::broker_url("spool:///tmp/prefork-doc")?;
//! let spool = url.spool().expect("a spool URL");
//! assert_eq!(spool.root(), std::path::Path::new("/tmp/prefork-doc"));
//! # Ok::<(), prefork::broker::BrokerError>(())
//! ```
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod control;
pub mod demo;
pub mod events;
pub mod examples;
pub mod operator;
pub mod pool;

/// The name `prefork work` gives its master: its process titles, logs and
/// default control socket (`NAME.sock`) carry it.
pub const MASTER_NAME: &str = "prefork";

/// How a pool gets its jobs (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Each worker owns a broker connection and fetches for itself
    /// (`prefork::JobWorker`).
    #[default]
    Pull,
    /// One feeder process owns the broker connection and fetches only for
    /// idle workers; the master hands each job to an idle worker
    /// (`prefork::DispatchFeeder` + `prefork::DispatchWorker`).
    Dispatch,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Pull => "pull",
            Mode::Dispatch => "dispatch",
        })
    }
}
