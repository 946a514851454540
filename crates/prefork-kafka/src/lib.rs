//! The Kafka adapter of prefork: a [`prefork_broker::Broker`] over one
//! topic read through a consumer group, with rdkafka's sync clients
//! created after the fork, in the process that uses them.
//!
//! | item | what |
//! |---|---|
//! | [`Config`] | bootstrap servers, group, partitions, timeouts; opens handles ([`Config::open`], or as a [`Connect`]) |
//! | [`Kafka`] | a handle on one queue (a topic with its retry and dead-letter topics): the [`Broker`] implementation |
//! | [`redact_url`] | a `kafka://` URL with any password hidden, for logs |
//!
//! The README below is the crate's guide; its example is compiled as a
//! doctest (not run: it needs a server).
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod dead;
mod handle;
mod tracker;

use std::time::Duration;

use prefork_broker::{Broker, BrokerError, Connect, ErrorKind};

pub use handle::Kafka;

/// The environment variable holding the broker URL that tests and benches
/// use (`kafka://127.0.0.1:PORT`), set by `cargo xtask`.
pub const URL_ENV: &str = "PREFORK_KAFKA_URL";
/// Kafka's default port.
pub const DEFAULT_PORT: u16 = 9092;
/// The consumer group of a [`Config`] whose URL names none.
pub const DEFAULT_GROUP: &str = "prefork";
/// The suffix of the topic that holds a queue's retries and delayed jobs.
pub const RETRY_SUFFIX: &str = ".retry";
/// The suffix of the topic that holds a queue's dead letters.
pub const DEAD_SUFFIX: &str = ".dead";

/// How to reach a Kafka cluster and how to consume from it: the configured,
/// cheap-to-clone form of the adapter. Keep it in the supervisor and
/// [`open`](Config::open) handles after the fork, in the process that uses
/// them (librdkafka starts threads: it must never cross a fork).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | bootstrap servers | from the URL, port 9092 | `host:port[,host:port...]` |
/// | [`group`](Config::group) | `prefork` | the consumer group every handle of the pool joins |
/// | [`partitions`](Config::partitions) | 4 | partitions of the queue and retry topics the adapter creates (the most handles that consume at once) |
/// | [`session_timeout`](Config::session_timeout) | 10 s | a member that stops heartbeating (killed) loses its partitions after this: the claim timeout |
/// | [`max_poll_interval`](Config::max_poll_interval) | 300 s | a member that does not fetch for this long leaves the group: the longest a job may run |
/// | [`op_timeout`](Config::op_timeout) | 10 s | produce, commit, topic creation and metadata requests |
/// | [`create_topics`](Config::create_topics) | on | create the three topics of a queue at open when missing |
/// | [`take_over_wait`](Config::take_over_wait) | 0 | how long [`Broker::take_over`] waits for a dead holder's jobs |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_kafka::Config;
///
/// let c = Config::from_url("kafka://127.0.0.1:9092/?group=mailers&partitions=8")?
///     .session_timeout(Duration::from_secs(6));
/// assert_eq!(c.group_name(), "mailers");
/// assert_eq!(c.bootstrap_servers(), "127.0.0.1:9092");
/// assert!(Config::from_url("redis://127.0.0.1").is_err());
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    brokers: String,
    group: String,
    partitions: i32,
    session_timeout: Duration,
    max_poll_interval: Duration,
    op_timeout: Duration,
    create_topics: bool,
    take_over_wait: Duration,
}

impl Config {
    /// A configuration for the cluster reached through `bootstrap`
    /// (`host:port[,host:port...]`), with the defaults.
    pub fn new(bootstrap: impl Into<String>) -> Config {
        Config {
            brokers: bootstrap.into(),
            group: DEFAULT_GROUP.to_owned(),
            partitions: 4,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            op_timeout: Duration::from_secs(10),
            create_topics: true,
            take_over_wait: Duration::ZERO,
        }
    }

    /// Parses `kafka://host[:port][,host[:port]...][/][?group=NAME&partitions=N]`;
    /// ports default to 9092. Nothing is resolved here.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for another scheme, an empty host, a bad
    /// port, an unknown or bad query parameter, or a path; credentials in
    /// the URL are [`ErrorKind::Unsupported`] (this adapter speaks
    /// plaintext Kafka only). Messages show the URL redacted.
    pub fn from_url(url: &str) -> Result<Config, BrokerError> {
        let shown = redact_url(url);
        let bad =
            |why: &str| BrokerError::new(ErrorKind::Invalid, format!("Kafka URL {shown:?}: {why}"));
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("expected kafka://host[:port][/?group=NAME]"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('/') {
            return Err(bad(
                "no path is allowed (the queue is the topic, named when a handle is opened)",
            ));
        }
        if authority.contains('@') {
            return Err(BrokerError::new(
                ErrorKind::Unsupported,
                format!(
                    "Kafka URL {shown:?}: credentials (SASL) are not supported by this adapter"
                ),
            ));
        }
        let mut servers = Vec::new();
        for hp in authority.split(',') {
            let (host, port) = match hp.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hp, None),
            };
            if host.is_empty() || host.contains(['#', ' ', '[', ']']) {
                return Err(bad("bad host"));
            }
            let port = match port {
                None => DEFAULT_PORT,
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("bad port"))?,
            };
            servers.push(format!("{host}:{port}"));
        }
        let mut c = Config::new(servers.join(","));
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "group" if !v.is_empty() && v.len() <= 255 => c.group = v.to_owned(),
                "group" => return Err(bad("group must be 1 to 255 bytes")),
                "partitions" => {
                    c.partitions = v
                        .parse::<i32>()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| bad("partitions must be 1 to 10000"))?;
                }
                "session_timeout_ms" => {
                    c.session_timeout = Duration::from_millis(
                        parse_ms(v).ok_or_else(|| bad("bad session_timeout_ms"))?,
                    )
                }
                "max_poll_interval_ms" => {
                    c.max_poll_interval = Duration::from_millis(
                        parse_ms(v).ok_or_else(|| bad("bad max_poll_interval_ms"))?,
                    )
                }
                "take_over_wait_ms" => {
                    c.take_over_wait = Duration::from_millis(
                        v.parse::<u64>()
                            .ok()
                            .filter(|n| *n <= 86_400_000)
                            .ok_or_else(|| bad("bad take_over_wait_ms"))?,
                    )
                }
                other => {
                    return Err(bad(&format!(
                        "unknown parameter {other:?} (known: group, partitions, session_timeout_ms, max_poll_interval_ms, take_over_wait_ms)"
                    )));
                }
            }
        }
        Ok(c)
    }

    /// The configuration named by [`URL_ENV`]; `Ok(None)` when it is unset.
    ///
    /// # Errors
    ///
    /// As [`Config::from_url`].
    pub fn from_env() -> Result<Option<Config>, BrokerError> {
        match std::env::var(URL_ENV) {
            Ok(url) => Config::from_url(&url).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The consumer group every handle joins.
    pub fn group(mut self, group: impl Into<String>) -> Config {
        self.group = group.into();
        self
    }

    /// Partitions of the queue and retry topics this adapter creates (at
    /// least 1). Existing topics are left as they are.
    pub fn partitions(mut self, partitions: u16) -> Config {
        self.partitions = i32::from(partitions.max(1));
        self
    }

    /// How long a member that stopped heartbeating (a killed process) keeps
    /// its partitions: the claim timeout of everything it held.
    pub fn session_timeout(mut self, timeout: Duration) -> Config {
        self.session_timeout = timeout;
        self
    }

    /// How long a member may go without fetching before librdkafka makes it
    /// leave the group (its jobs then run again elsewhere); the longest a
    /// job may run. Raised to the session timeout if below it.
    pub fn max_poll_interval(mut self, interval: Duration) -> Config {
        self.max_poll_interval = interval;
        self
    }

    /// The limit on produce, commit, topic creation and metadata requests.
    pub fn op_timeout(mut self, timeout: Duration) -> Config {
        self.op_timeout = timeout;
        self
    }

    /// Whether [`open`](Config::open) creates the queue's topics when they
    /// are missing (on by default).
    pub fn create_topics(mut self, on: bool) -> Config {
        self.create_topics = on;
        self
    }

    /// How long [`Broker::take_over`] waits for a dead holder's jobs to
    /// reach this handle (default 0: it returns those already fetched; URL
    /// parameter `take_over_wait_ms`). Kafka hands a dead member's
    /// partitions to the group by itself after its session timeout, to
    /// whichever member the assignment picks, so waiting only helps when
    /// this handle is the group's one member: a dispatch-mode feeder, whose
    /// replacement then holds the jobs still running on workers for their
    /// reports instead of running them again. The wait ends as soon as
    /// every job asked for is here, or every partition of the queue is
    /// this handle's and has been read to its end. Keep it under the
    /// supervisor's heartbeat timeout (the process is killed otherwise)
    /// and above the session timeout plus a rebalance.
    pub fn take_over_wait(mut self, wait: Duration) -> Config {
        self.take_over_wait = wait;
        self
    }

    /// The bootstrap servers, `host:port[,host:port...]`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.brokers
    }

    /// The consumer group.
    pub fn group_name(&self) -> &str {
        &self.group
    }

    /// Opens a handle on `queue`: its topic `queue`, the retry topic
    /// `queue.retry` and the dead-letter topic `queue.dead`, created when
    /// missing (see [`create_topics`](Config::create_topics)). The handle
    /// joins the group at its first fetch, so a handle that only publishes
    /// never takes partitions from the consumers.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for a name Kafka refuses (1 to 243 bytes of
    /// `A-Za-z0-9._-`, leaving room for the suffixes);
    /// [`ErrorKind::Transient`] when the cluster cannot be reached.
    pub fn open(&self, queue: &str) -> Result<Kafka, BrokerError> {
        Kafka::open(self.clone(), queue)
    }
}

fn parse_ms(v: &str) -> Option<u64> {
    v.parse::<u64>()
        .ok()
        .filter(|n| (1..=86_400_000).contains(n))
}

impl Connect for Config {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Ok(Box::new(Config::open(self, queue)?))
    }
}

/// `url` with any password hidden (`kafka://user:***@host`, a bare
/// userinfo becomes `***@`), for logs and error messages. This adapter
/// refuses credentials, but a URL naming some must still never be logged
/// as it is.
///
/// # Examples
///
/// ```
/// use prefork_kafka::redact_url;
///
/// assert_eq!(redact_url("kafka://app:s3cret@10.0.0.1:9092/?group=g"), "kafka://app:***@10.0.0.1:9092/?group=g");
/// assert_eq!(redact_url("kafka://127.0.0.1:9092"), "kafka://127.0.0.1:9092");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!("{scheme}{shown}{}", &rest[at..])
}

/// Whether Kafka accepts `name` (and its suffixed topics) as a topic name.
fn valid_queue(name: &str) -> bool {
    !name.is_empty()
        && name.len() + RETRY_SUFFIX.len().max(DEAD_SUFFIX.len()) <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let c = Config::from_url("kafka://127.0.0.1:9092/?group=g1").unwrap();
        assert_eq!(
            (c.bootstrap_servers(), c.group_name()),
            ("127.0.0.1:9092", "g1")
        );
        let c = Config::from_url("kafka://a,b:9093").unwrap();
        assert_eq!(c.bootstrap_servers(), "a:9092,b:9093");
        assert_eq!(c.group_name(), DEFAULT_GROUP);
        let c = Config::from_url(
            "kafka://h/?partitions=2&session_timeout_ms=3000&max_poll_interval_ms=60000&take_over_wait_ms=8000",
        )
        .unwrap();
        assert_eq!(c.take_over_wait, Duration::from_secs(8));
        assert_eq!(c.partitions, 2);
        assert_eq!(c.session_timeout, Duration::from_secs(3));
        assert_eq!(c.max_poll_interval, Duration::from_secs(60));
    }

    #[test]
    fn bad_urls_get_clear_errors() {
        for (url, says) in [
            ("redis://h", "expected kafka://"),
            ("kafka://", "bad host"),
            ("kafka://h:0", "bad port"),
            ("kafka://h:99999", "bad port"),
            ("kafka://h/topic", "no path"),
            ("kafka://h/?group=", "group must be"),
            ("kafka://h/?partitions=0", "partitions must be"),
            ("kafka://h/?take_over_wait_ms=soon", "bad take_over_wait_ms"),
            ("kafka://h/?colour=blue", "unknown parameter \"colour\""),
        ] {
            let e = Config::from_url(url).expect_err(url);
            assert_eq!(e.kind(), ErrorKind::Invalid, "{url}: {e}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
        let e = Config::from_url("kafka://u:hunter2@h:9092").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn redaction_hides_passwords_only() {
        for (url, want) in [
            ("kafka://u:p@h:1/?group=g", "kafka://u:***@h:1/?group=g"),
            ("kafka://tok@h", "kafka://***@h"),
            ("kafka://@h", "kafka://@h"),
            ("kafka://h:1/?group=a@b", "kafka://h:1/?group=a@b"),
            ("kafka://u:p:q@h", "kafka://u:***@h"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(valid_queue("emails"));
        assert!(valid_queue("kit-1-abc-0"));
        for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(244)] {
            assert!(!valid_queue(bad), "{bad:?}");
        }
    }
}
