//! The library half of the `prefork` command: broker URLs, the example job
//! handlers, the progress events and the demo. The binary (`src/main.rs`)
//! is argument parsing over these.
//!
//! ```
//! let url = prefork_cli::BrokerUrl::parse("spool:///tmp/prefork-doc")?;
//! assert_eq!(url.spool_dir(), Some(std::path::Path::new("/tmp/prefork-doc")));
//! assert_eq!(url.broker_name(), "spool");
//! # Ok::<(), anyhow::Error>(())
//! ```
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod demo;
pub mod events;
pub mod examples;
mod url;

pub use url::BrokerUrl;

/// How a pool gets its jobs (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Each worker owns a broker connection and fetches for itself
    /// (`prefork_jobs::JobWorker`).
    #[default]
    Pull,
    /// One feeder process owns the broker connection and fetches only for
    /// idle workers; the master hands each job to an idle worker
    /// (`prefork_jobs::DispatchFeeder` + `prefork_jobs::DispatchWorker`).
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
