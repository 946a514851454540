//! The master<->worker channel of prefork: a versioned frame codec over a
//! `socketpair`.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod channel;
mod frame;

pub use channel::{Channel, ChannelError};
pub use frame::{
    Control, DEFAULT_MAX_FRAME, DecodeError, Decoder, HEADER_LEN, Message, Progress, Stats,
    VERSION, encode,
};
