//! The Redis adapter of prefork: [`prefork_broker::Broker`] over a Redis
//! stream read through a consumer group, with delayed jobs and retries in a
//! sorted set, dead letters in a second stream, and reclaim of jobs whose
//! holder died (`XPENDING IDLE` + `XCLAIM` after a lease, or at once with
//! `take_over`).
//!
//! | item | what |
//! |---|---|
//! | [`Redis`] | a server URL and [`Options`]; opens [`RedisQueue`]s (a [`Connect`]) |
//! | [`RedisQueue`] | a handle on one queue: the [`Broker`] implementation |
//! | [`Options`] | group, consumer, lease, block time, poison limit, timeouts, backoff |
//! | [`redact_url`] | a Redis URL with its password hidden, as every message shows it |
//!
//! The README below is the crate's guide (design, guarantees, figures); its
//! examples are compiled as doctests (`no_run`: they need a server).
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backoff;
mod conn;
mod entry;
mod options;
mod queue;
mod redact;
mod scripts;

use std::fmt;

use prefork_broker::{Broker, BrokerError, Connect, ErrorKind};

pub use options::Options;
pub use queue::RedisQueue;
pub use redact::redact_url;

/// A Redis server and how to use it: opens [`RedisQueue`] handles.
///
/// Cheap to clone and to keep in a supervisor: it holds no connection.
/// Each handle opens its own connection, in the process that uses it
/// (after the fork). `Debug`, [`url`](Redis::url) and every error message
/// show the URL with its password replaced by `***`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use prefork_broker::{Broker, Connect};
/// use prefork_redis::{Options, Redis};
///
/// let redis = Redis::with_options(
///     "redis://:secret@127.0.0.1:6379/0",
///     Options::default().lease(Duration::from_secs(60)),
/// )?;
/// assert_eq!(redis.url(), "redis://:***@127.0.0.1:6379/0");
/// let mut q = redis.open("emails")?; // a Box<dyn Broker + Send>
/// q.publish(b"hello", Duration::ZERO)?;
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    url: String,
    options: Options,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("options", &self.options)
            .finish()
    }
}

impl Redis {
    /// The server at `url` (`redis://[[user]:password@]host[:port][/db]`,
    /// or `redis+unix:///path?db=N&pass=...`), with default [`Options`].
    /// Does not connect.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] when the URL does not parse (the message
    /// shows it with the password hidden).
    pub fn new(url: &str) -> Result<Redis, BrokerError> {
        Redis::with_options(url, Options::default())
    }

    /// The server at `url`, used as `options` say. Does not connect.
    ///
    /// # Errors
    ///
    /// As [`Redis::new`].
    pub fn with_options(url: &str, options: Options) -> Result<Redis, BrokerError> {
        let shown = redact_url(url);
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::new(ErrorKind::Invalid, format!("redis URL {shown}: {e}")))?;
        Ok(Redis {
            client,
            url: shown,
            options,
        })
    }

    /// The URL with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The options handles are opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Replaces the options handles are opened with (the URL stays).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use prefork_redis::Redis;
    ///
    /// let mut redis = Redis::new("redis://127.0.0.1:6379/0")?; // does not connect
    /// let longer = redis.options().clone().lease(Duration::from_secs(90));
    /// redis.set_options(longer);
    /// assert_eq!(redis.options().lease_time(), Duration::from_secs(90));
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// Opens a handle on queue `name`: connects, loads the scripts, creates
    /// the consumer group (and the stream) if missing, and picks a consumer
    /// name of its own.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for an empty name, one with braces or control
    /// characters, or over 200 bytes; [`ErrorKind::Transient`] when the
    /// server cannot be reached; [`ErrorKind::Other`] when it refuses the
    /// credentials.
    pub fn queue(&self, name: &str) -> Result<RedisQueue, BrokerError> {
        RedisQueue::open(
            self.client.clone(),
            self.url.clone(),
            name,
            self.options.clone(),
        )
    }
}

impl Connect for Redis {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Ok(Box::new(self.queue(queue)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_without_connecting() {
        // Port 1 on loopback: nothing listens; parsing must not notice.
        let r = Redis::new("redis://:s3cret@127.0.0.1:1/3").unwrap();
        assert_eq!(r.url(), "redis://:***@127.0.0.1:1/3");
        assert!(!format!("{r:?}").contains("s3cret"));
        assert!(Redis::new("redis+unix:///tmp/none.sock?db=1").is_ok());
    }

    #[test]
    fn malformed_urls_are_clear_errors_without_the_password() {
        for bad in [
            "redis://:s3cret@127.0.0.1:notaport/0",
            "redis://:s3cret@127.0.0.1:6379/notadb",
            "http://:s3cret@127.0.0.1/",
            "",
        ] {
            let e = Redis::new(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("redis URL"), "{bad}: {msg}");
            assert!(!msg.contains("s3cret"), "{bad}: {msg}");
        }
    }
}
