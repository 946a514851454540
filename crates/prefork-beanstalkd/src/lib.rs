//! The Beanstalkd adapter of prefork: a [`prefork_broker::Broker`] over one
//! beanstalkd tube, with its own small, typed client for the beanstalk
//! protocol (std `TcpStream`, no threads, nothing written on drop).
//!
//! | item | what |
//! |---|---|
//! | [`Config`] | server address, TTR, priority, timeouts; opens handles ([`Config::open`], or as a [`Connect`](prefork_broker::Connect)) |
//! | [`Beanstalkd`] | a handle on one tube: the [`Broker`](prefork_broker::Broker) implementation |
//! | [`redact_url`] | a URL with any password hidden, as this crate's messages show it |
//! | [`proto`] | the wire protocol: [`proto::parse_response`] and its types |
//!
//! The README below is the crate's guide; its example is compiled as a
//! doctest (not run: it needs a server).
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod carried;
mod config;
mod conn;
mod dead;
pub mod proto;
mod tube;

pub use config::{Config, redact_url};
pub use tube::Beanstalkd;

/// The environment variable holding the server URL that tests and benches
/// use (`beanstalk://127.0.0.1:PORT`), set by `cargo xtask`.
pub const URL_ENV: &str = "PREFORK_BEANSTALKD_URL";
/// beanstalkd's default port.
pub const DEFAULT_PORT: u16 = 11300;
/// The suffix of the tube that keeps a tube's dead letters.
pub const DEAD_SUFFIX: &str = ".dead";
/// Bytes of the server's `max-job-size` kept back from payloads, for the
/// header a retried copy (`PFAT1 <attempts>\n`, at most 17 bytes) or a
/// dead-letter record (`PFDL1 <attempt> <job id> <reason length>\n`, at
/// most 59, with the reason cut to the rest) puts in front of one.
pub const HEADROOM: usize = 64;
const _: () = assert!(carried::MAX_HEADER <= HEADROOM);
