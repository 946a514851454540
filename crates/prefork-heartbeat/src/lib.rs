//! The master<->worker channel of prefork: a versioned frame codec over a
//! `socketpair`, and a deadline monitor that says which worker is late.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod channel;
mod frame;
mod monitor;

pub use channel::{Channel, ChannelError};
pub use frame::{
    Control, DEFAULT_MAX_FRAME, DecodeError, Decoder, HEADER_LEN, Message, Progress, Stats,
    VERSION, encode,
};
pub use monitor::{Clock, ManualClock, Monitor, SystemClock};
