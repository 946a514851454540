//! Broker URLs: the one switch from a URL's scheme to the adapter that
//! parses it. Each adapter owns its URL forms and how a password in them is
//! hidden; this module only picks the adapter.
//!
//! Parsing never connects and never touches the disk: handles are opened
//! through [`Connect`], after the fork, in the process that uses them.
//! [`BrokerUrl::check`] is the one call made before a pool starts, a
//! connect-and-close so that a wrong address fails at once instead of in
//! every worker.

// With no adapter feature there is no broker to name: every URL is refused
// and the code past the switch cannot run.
#![cfg_attr(
    not(any(feature = "spool", feature = "redis", feature = "beanstalkd")),
    allow(unreachable_code, unused_variables, unused_mut)
)]

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use prefork_broker::{Broker, BrokerError, Connect, ErrorKind};

/// Parses a broker URL into the [`Connect`] of the adapter its scheme names.
/// Does not connect, resolve or touch the disk.
///
/// | URL | adapter | feature |
/// |---|---|---|
/// | `spool:///abs/dir`, `spool:rel/dir` or a path with no scheme | [`prefork_spool::Spool::from_url`] | `spool` (default) |
/// | `redis://[[user]:password@]host[:port][/db]` or `redis+unix:///path?db=N` | [`prefork_redis::Redis::new`] | `redis` |
/// | `beanstalk://host[:port]` (or `beanstalkd://`) | [`prefork_beanstalkd::Config::from_url`] | `beanstalkd` |
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "spool")] {
/// use prefork::broker::Connect;
///
/// let dir = std::env::temp_dir().join(format!("prefork-url-doc-{}", std::process::id()));
/// let url = prefork::broker_url(&format!("spool://{}", dir.display()))?;
/// assert_eq!(url.broker_name(), "spool");
/// let mut q = url.open("emails")?; // a Box<dyn Broker + Send>: what a worker does after the fork
/// q.publish(b"hello", std::time::Duration::ZERO)?;
/// # drop(q); std::fs::remove_dir_all(&dir).unwrap();
/// # }
/// # #[cfg(feature = "redis")] {
/// let redis = prefork::broker_url("redis://:hunter2@127.0.0.1:6379/2")?; // no connection yet
/// assert_eq!(redis.to_string(), "redis://:***@127.0.0.1:6379/2");
/// # }
/// # Ok::<(), prefork::broker::BrokerError>(())
/// ```
///
/// # Errors
///
/// [`ErrorKind::Invalid`] for an empty URL, a scheme this build has no
/// adapter for (the message lists those it has, and never repeats the
/// URL), or a URL its adapter refuses (the adapter's message, password
/// hidden).
pub fn broker_url(url: &str) -> Result<BrokerUrl, BrokerError> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    let kind = match scheme {
        #[cfg(feature = "spool")]
        _ if url.starts_with("spool:") => Kind::Spool(prefork_spool::Spool::from_url(url)?),
        #[cfg(feature = "redis")]
        Some("redis" | "redis+unix") => Kind::Redis(Box::new(prefork_redis::Redis::new(url)?)),
        #[cfg(feature = "beanstalkd")]
        Some("beanstalk" | "beanstalkd") => {
            Kind::Beanstalkd(prefork_beanstalkd::Config::from_url(url)?)
        }
        #[cfg(feature = "rabbitmq")]
        Some("amqp") => Kind::RabbitMq(prefork_rabbitmq::Config::from_url(url)?),
        #[cfg(feature = "kafka")]
        Some("kafka") => Kind::Kafka(prefork_kafka::Config::from_url(url)?),
        _ if url.is_empty() => return Err(invalid("empty broker URL".to_owned())),
        Some(scheme) => {
            return Err(invalid(format!(
                "broker scheme {scheme:?} is not built into this binary (it has {}; \
                 redis://, beanstalk://, amqp:// and kafka:// come with prefork's cargo features \
                 `redis`, `beanstalkd`, `rabbitmq` and `kafka`)",
                schemes()
            )));
        }
        #[cfg(feature = "spool")]
        None => Kind::Spool(prefork_spool::Spool::from_url(url)?),
        #[cfg(not(feature = "spool"))]
        None => {
            return Err(invalid(format!(
                "broker URL without a scheme (it has {}; a bare path is a spool with the feature `spool`)",
                schemes()
            )));
        }
    };
    Ok(BrokerUrl { kind })
}

fn invalid(message: String) -> BrokerError {
    BrokerError::new(ErrorKind::Invalid, message)
}

/// The schemes this build understands, for error messages.
fn schemes() -> String {
    let mut s = Vec::new();
    if cfg!(feature = "spool") {
        s.push("spool://");
    }
    if cfg!(feature = "redis") {
        s.push("redis://");
    }
    if cfg!(feature = "beanstalkd") {
        s.push("beanstalk://");
    }
    if cfg!(feature = "rabbitmq") {
        s.push("amqp://");
    }
    if cfg!(feature = "kafka") {
        s.push("kafka://");
    }
    if s.is_empty() {
        return "none".to_owned();
    }
    s.join(", ")
}

/// RabbitMQ's default `consumer_timeout`: how long a delivery may stay
/// unacknowledged before the server closes its channel.
#[cfg(feature = "rabbitmq")]
const RABBITMQ_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A parsed broker URL: which adapter, and its configuration. Made by
/// [`broker_url`] (or [`str::parse`]); cheap to clone and to keep in the
/// master, since it holds no connection.
///
/// It is a [`Connect`]: give it to [`JobWorker`](crate::JobWorker) or
/// [`DispatchFeeder`](crate::DispatchFeeder) and each process opens its own
/// handle after the fork. `Display` and `Debug` show the URL with any
/// password replaced by `***` (each adapter's redactor), and so does every
/// error it returns.
#[derive(Debug, Clone)]
pub struct BrokerUrl {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    #[cfg(feature = "spool")]
    Spool(prefork_spool::Spool),
    #[cfg(feature = "redis")]
    Redis(Box<prefork_redis::Redis>),
    #[cfg(feature = "beanstalkd")]
    Beanstalkd(prefork_beanstalkd::Config),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(prefork_rabbitmq::Config),
    #[cfg(feature = "kafka")]
    Kafka(prefork_kafka::Config),
}

impl BrokerUrl {
    /// The same broker with another claim timeout: how long a job fetched
    /// and neither settled nor touched stays with its holder before the
    /// broker hands it out again.
    ///
    /// | broker | what `lease` sets | default |
    /// |---|---|---|
    /// | spool | the claim lease (a claim whose holder's pid is gone is taken back at once anyway) | 60 s |
    /// | redis | the lease: the idle time after which another consumer reclaims a pending entry (`XPENDING IDLE` + `XCLAIM`), checked every half lease | 30 s |
    /// | beanstalkd | the TTR of jobs this process puts (enqueues, and retries), rounded up to whole seconds; a dead holder's connection closes and its job is ready at once whatever the TTR | 60 s |
    /// | rabbitmq | nothing: a claim lives as long as its holder's connection (the server requeues a closed connection's jobs at once), up to the server's `consumer_timeout` (30 min by default, set on the server) | 30 min |
    /// | kafka | the max poll interval: how long a live member may go without fetching before the group moves its partitions (a dead member's move after the session timeout) | 300 s |
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "spool")] {
    /// use std::time::Duration;
    ///
    /// let url = prefork::broker_url("spool:///tmp/q")?.with_lease(Duration::from_secs(5));
    /// assert_eq!(url.lease(), Duration::from_secs(5));
    /// # }
    /// # Ok::<(), prefork::broker::BrokerError>(())
    /// ```
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> BrokerUrl {
        match self.kind {
            #[cfg(feature = "spool")]
            Kind::Spool(ref mut s) => s.set_options(s.options().clone().lease(lease)),
            #[cfg(feature = "redis")]
            Kind::Redis(ref mut r) => r.set_options(r.options().clone().lease(lease)),
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(ref mut c) => *c = c.clone().ttr(lease),
            #[cfg(feature = "rabbitmq")]
            Kind::RabbitMq(_) => {
                let _ = lease;
            }
            #[cfg(feature = "kafka")]
            Kind::Kafka(ref mut c) => *c = c.clone().max_poll_interval(lease),
        }
        self
    }

    /// The claim timeout in effect (see [`with_lease`](BrokerUrl::with_lease)).
    pub fn lease(&self) -> Duration {
        match self.kind {
            #[cfg(feature = "spool")]
            Kind::Spool(ref s) => s.options().lease_time(),
            #[cfg(feature = "redis")]
            Kind::Redis(ref r) => r.options().lease_time(),
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(ref c) => Duration::from_secs(u64::from(c.ttr_secs())),
            #[cfg(feature = "rabbitmq")]
            Kind::RabbitMq(_) => RABBITMQ_CONSUMER_TIMEOUT,
            #[cfg(feature = "kafka")]
            Kind::Kafka(ref c) => c.lease_time(),
        }
    }

    /// The broker's name: `spool`, `redis`, `beanstalkd`, `rabbitmq` or
    /// `kafka`.
    pub fn broker_name(&self) -> &'static str {
        match self.kind {
            #[cfg(feature = "spool")]
            Kind::Spool(_) => "spool",
            #[cfg(feature = "redis")]
            Kind::Redis(_) => "redis",
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(_) => "beanstalkd",
            #[cfg(feature = "rabbitmq")]
            Kind::RabbitMq(_) => "rabbitmq",
            #[cfg(feature = "kafka")]
            Kind::Kafka(_) => "kafka",
        }
    }

    /// The spool, when this is the embedded broker (for what only the
    /// spool has: [`Queue::stats`](prefork_spool::Queue::stats), its
    /// directory).
    #[cfg(feature = "spool")]
    pub fn spool(&self) -> Option<&prefork_spool::Spool> {
        match self.kind {
            Kind::Spool(ref s) => Some(s),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Opens a handle on `queue` in this process, as [`Connect::open`]
    /// does, with errors that name the broker (password hidden) and the
    /// queue.
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached, refuses the credentials or the
    /// queue name; the error keeps the adapter's [`ErrorKind`].
    pub fn open_queue(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Connect::open(self, queue).map_err(|e| {
            BrokerError::new(
                e.kind(),
                format!("broker {self}, queue {queue:?}: {}", e.message()),
            )
        })
    }

    /// Connects, opens `queue` and closes it again: the check to run before
    /// forking a pool, so that a wrong address or password is one clear
    /// error instead of workers failing to start. Nothing of the connection
    /// survives the call (the adapters start no threads and write nothing
    /// on close).
    ///
    /// # Errors
    ///
    /// As [`open_queue`](BrokerUrl::open_queue).
    pub fn check(&self, queue: &str) -> Result<(), BrokerError> {
        self.open_queue(queue).map(drop)
    }
}

impl Connect for BrokerUrl {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        match self.kind {
            #[cfg(feature = "spool")]
            Kind::Spool(ref s) => s.open(queue),
            #[cfg(feature = "redis")]
            Kind::Redis(ref r) => r.open(queue),
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(ref c) => Connect::open(c, queue),
            #[cfg(feature = "rabbitmq")]
            Kind::RabbitMq(ref c) => Connect::open(c, queue),
            #[cfg(feature = "kafka")]
            Kind::Kafka(ref c) => Connect::open(c, queue),
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = BrokerError;

    /// As [`broker_url`].
    fn from_str(url: &str) -> Result<BrokerUrl, BrokerError> {
        broker_url(url)
    }
}

impl fmt::Display for BrokerUrl {
    /// The URL in its canonical form, password hidden (a spool URL shows
    /// its directory; a beanstalkd URL its port, default or not).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            #[cfg(feature = "spool")]
            Kind::Spool(ref s) => write!(f, "spool://{}", s.root().display()),
            #[cfg(feature = "redis")]
            Kind::Redis(ref r) => f.write_str(r.url()),
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(ref c) => write!(f, "beanstalk://{}", c.address()),
            #[cfg(feature = "rabbitmq")]
            Kind::RabbitMq(ref c) => f.write_str(&c.redacted_url()),
            #[cfg(feature = "kafka")]
            Kind::Kafka(ref c) => write!(
                f,
                "kafka://{}/?group={}",
                c.bootstrap_servers(),
                c.group_name()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "spool")]
    #[test]
    fn spool_forms() {
        use std::path::{Path, PathBuf};
        let dir = |u: &str| broker_url(u).unwrap().spool().map(|s| s.root().to_owned());
        assert_eq!(dir("spool:///a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(dir("spool:rel"), Some(PathBuf::from("rel")));
        assert_eq!(dir("/x"), Some(PathBuf::from("/x")));
        for bad in ["spool://", "spool:", ""] {
            let e = broker_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
        }
        let u = broker_url("spool:///a").unwrap();
        assert_eq!(
            broker_url(&u.to_string()).unwrap().to_string(),
            u.to_string()
        );
        assert_eq!(u.broker_name(), "spool");
        let parsed: BrokerUrl = "spool:///a".parse().unwrap();
        assert_eq!(parsed.spool().map(|s| s.root()), Some(Path::new("/a")));
    }

    #[test]
    fn lease_reaches_every_adapter() {
        let five = Duration::from_secs(5);
        let mut urls = Vec::new();
        if cfg!(feature = "spool") {
            urls.push("spool:///a");
        }
        if cfg!(feature = "redis") {
            urls.push("redis://127.0.0.1:6379/0");
        }
        if cfg!(feature = "beanstalkd") {
            urls.push("beanstalk://127.0.0.1");
        }
        for u in urls {
            let without = broker_url(u).unwrap();
            assert_ne!(without.lease(), five, "{u}");
            assert_eq!(without.with_lease(five).lease(), five, "{u}");
        }
        // beanstalkd counts TTR in whole seconds: rounded up.
        #[cfg(feature = "beanstalkd")]
        assert_eq!(
            broker_url("beanstalk://h")
                .unwrap()
                .with_lease(Duration::from_millis(1500))
                .lease(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_list_and_without_the_url() {
        let e = broker_url("nats://guest:secret@localhost/").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = e.to_string();
        assert!(e.contains("\"nats\""), "{e}");
        assert!(e.contains("not built into this binary"), "{e}");
        if cfg!(feature = "spool") {
            assert!(e.contains("spool://"), "{e}");
        }
        assert!(!e.contains("secret"), "{e}");
    }

    #[cfg(feature = "rabbitmq")]
    #[test]
    fn rabbitmq_urls() {
        let u = broker_url("amqp://guest:s3cret@127.0.0.1:5672/jobs").unwrap();
        assert_eq!(u.broker_name(), "rabbitmq");
        assert!(
            u.to_string().starts_with("amqp://guest:***@127.0.0.1:5672"),
            "{u}"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
        let e = broker_url("amqp://guest:s3cret@127.0.0.1:notaport/").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_urls() {
        let u = broker_url("kafka://127.0.0.1:9092/?group=mailers").unwrap();
        assert_eq!(u.broker_name(), "kafka");
        assert_eq!(u.to_string(), "kafka://127.0.0.1:9092/?group=mailers");
        let u = u.with_lease(Duration::from_secs(600));
        assert_eq!(u.lease(), Duration::from_secs(600));
        // The adapter refuses credentials; the message hides the password.
        let e = broker_url("kafka://app:s3cret@127.0.0.1:9092/").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_urls() {
        let u = broker_url("redis://:s3cret@127.0.0.1:6379/3").unwrap();
        assert_eq!(u.broker_name(), "redis");
        assert_eq!(u.to_string(), "redis://:***@127.0.0.1:6379/3");
        assert!(!format!("{u:?}").contains("s3cret"));
        #[cfg(feature = "spool")]
        assert!(u.spool().is_none());
        let e = broker_url("redis://:s3cret@127.0.0.1:notaport/0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn unreachable_redis_names_the_broker_without_the_password() {
        // Port 1 on loopback: nothing listens there, the refusal is immediate.
        let u = broker_url("redis://:s3cret@127.0.0.1:1/0").unwrap();
        let e = u.check("q").unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let e = e.to_string();
        assert!(e.contains("broker redis://:***@127.0.0.1:1/0"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[cfg(feature = "beanstalkd")]
    #[test]
    fn beanstalk_urls() {
        let u = broker_url("beanstalk://127.0.0.1:11300").unwrap();
        assert_eq!(u.broker_name(), "beanstalkd");
        assert_eq!(u.to_string(), "beanstalk://127.0.0.1:11300");
        assert_eq!(
            broker_url("beanstalk://h").unwrap().to_string(),
            "beanstalk://h:11300"
        );
        for bad in [
            "beanstalk://",
            "beanstalk://h:0",
            "beanstalk://h:1/tube",
            "beanstalk://u:s3cret@h",
        ] {
            let e = broker_url(bad).unwrap_err().to_string();
            assert!(e.contains("beanstalkd URL"), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[cfg(feature = "beanstalkd")]
    #[test]
    fn unreachable_beanstalkd_names_the_broker_and_the_queue() {
        let u = broker_url("beanstalk://127.0.0.1:1").unwrap();
        let e = u.check("q").unwrap_err().to_string();
        assert!(e.contains("broker beanstalk://127.0.0.1:1"), "{e}");
        assert!(e.contains("queue \"q\""), "{e}");
    }
}
