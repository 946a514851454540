//! A durable job queue in a directory: no server, shared safely by several
//! processes, and a SIGKILL of any of them at any instant loses no job and
//! corrupts nothing. It implements [`prefork_broker::Broker`] and is the
//! embedded broker of prefork's quick start.
//!
//! The README below is the crate's guide (its example is a doctest); the
//! on-disk format is described in [`Queue`].
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod holder;
mod name;
mod options;
mod queue;
mod record;
mod spool;
mod wait;

pub use options::{Clock, Durability, Options, SystemClock};
pub use queue::{Queue, Stats};
pub use spool::Spool;
