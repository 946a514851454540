//! Fork and reap primitives for pre-forking daemons: a fork that refuses
//! in a multi-threaded process, child set-up, reaping with decoded exit
//! statuses, and kill with escalation over pidfds.
//!
//! Linux only. The README follows.
//!
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg(target_os = "linux")]

pub mod child;
mod fork;
mod process;
mod status;
mod sys;

pub use fork::{Fork, ForkRefused, fork, fork_unchecked, thread_count};
pub use process::{Child, is_gone};
pub use status::{ExitStatus, Reaped, reap, reap_one};
