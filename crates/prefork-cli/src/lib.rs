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
