//! The RabbitMQ adapter of prefork: a [`prefork_broker::Broker`] over one
//! RabbitMQ quorum queue, with manual acks, a prefetch sized to each fetch,
//! delayed retries and dead letters in queues the adapter declares, on the
//! sync `amiquip` client (opened after the fork, in the process that uses
//! it; no async runtime anywhere).
//!
//! | item | what |
//! |---|---|
//! | [`Config`] | server URL, credentials, virtual host, timeouts; opens handles ([`Config::open`], or as a [`Connect`]) |
//! | [`RabbitMq`] | a handle on one queue: the [`Broker`] implementation |
//! | [`redact_url`] | an AMQP URL with its password hidden, for logs and errors |
//!
//! The README below is the crate's guide; its example is compiled as a
//! doctest (not run: it needs a server).
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod handle;
mod session;

use std::fmt;
use std::time::Duration;

use prefork_broker::{Broker, BrokerError, Connect, ErrorKind};

pub use handle::RabbitMq;

/// The environment variable holding the server URL that tests and benches
/// use (`amqp://guest:guest@127.0.0.1:PORT/%2f`), set by `cargo xtask`.
pub const URL_ENV: &str = "PREFORK_RABBITMQ_URL";
/// The AMQP port.
pub const DEFAULT_PORT: u16 = 5672;
/// The suffix of the queue that keeps a queue's dead letters.
pub const DEAD_SUFFIX: &str = ".dead";
/// The infix of a queue's delay queues: `<queue>.delay.<ms>`.
pub const DELAY_INFIX: &str = ".delay.";
/// The longest queue name a handle takes (RabbitMQ's limit is 255 bytes;
/// the derived names need the rest).
pub const MAX_QUEUE_NAME: usize = 200;

/// How to reach a RabbitMQ server: the configured, cheap-to-clone form of
/// the adapter. Keep it in the supervisor and [`open`](Config::open)
/// handles after the fork, in the process that uses them. Its `Debug`
/// output hides the password.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | host, port | from the URL, port 5672 | the server |
/// | user, password | `guest`, `guest` | PLAIN credentials (RabbitMQ lets `guest` in from loopback only) |
/// | vhost | `/` | the virtual host |
/// | [`connect_timeout`](Config::connect_timeout) | 5 s | TCP connect and AMQP handshake |
/// | [`io_timeout`](Config::io_timeout) | 10 s | waiting for a publisher confirm or a consumer's cancel |
/// | [`heartbeat`](Config::heartbeat) | 30 s | AMQP heartbeat (sent by the client's I/O thread, also while a job runs) |
/// | [`take_over_patience`](Config::take_over_patience) | 1 s | how long [`Broker::take_over`] looks for a dead holder's jobs |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_rabbitmq::Config;
///
/// let c = Config::from_url("amqp://app:s3cret@127.0.0.1:5673/jobs")?
///     .io_timeout(Duration::from_secs(5));
/// assert_eq!((c.host(), c.port(), c.vhost()), ("127.0.0.1", 5673, "jobs"));
/// assert!(!format!("{c:?}").contains("s3cret"));
/// assert!(Config::from_url("redis://127.0.0.1").is_err());
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    host: String,
    port: u16,
    user: String,
    pub(crate) password: String,
    vhost: String,
    pub(crate) connect_timeout: Duration,
    io_timeout: Duration,
    pub(crate) heartbeat: u16,
    take_over_patience: Duration,
}

impl Config {
    /// A configuration for the server at `host:port`, user `guest`
    /// (password `guest`), virtual host `/`, with the default timeouts.
    pub fn new(host: impl Into<String>, port: u16) -> Config {
        Config {
            host: host.into(),
            port,
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            heartbeat: 30,
            take_over_patience: Duration::from_secs(1),
        }
    }

    /// Parses `amqp://[user[:password]@]host[:port][/vhost]`: the port
    /// defaults to 5672, the user and password to `guest`, the virtual
    /// host to `/` (an empty path and `/%2f` are both `/`); user, password
    /// and vhost are percent-decoded; IPv6 hosts go in brackets. Nothing is
    /// resolved here.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`] for `amqps://` (this build has no TLS);
    /// [`ErrorKind::Invalid`] for another scheme, an empty host, a bad port,
    /// a query string, a bad percent escape. The message shows the URL with
    /// its password hidden.
    pub fn from_url(url: &str) -> Result<Config, BrokerError> {
        let bad = |why: &str| {
            BrokerError::new(
                ErrorKind::Invalid,
                format!("RabbitMQ URL {:?}: {why}", redact_url(url)),
            )
        };
        if url.starts_with("amqps://") {
            return Err(BrokerError::new(
                ErrorKind::Unsupported,
                format!(
                    "RabbitMQ URL {:?}: amqps (TLS) is not supported by this build",
                    redact_url(url)
                ),
            ));
        }
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| bad("expected amqp://[user:password@]host[:port][/vhost]"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("query strings and fragments are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).map_err(&bad)?;
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        let mut config = Config::new(host, port);
        if let Some(info) = userinfo {
            let (user, password) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            config.user =
                percent_decode(user).ok_or_else(|| bad("bad percent escape in the user"))?;
            if config.user.is_empty() {
                return Err(bad("empty user"));
            }
            if let Some(p) = password {
                config.password =
                    percent_decode(p).ok_or_else(|| bad("bad percent escape in the password"))?;
            }
        }
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            if path.contains('/') {
                return Err(bad("the vhost is one path segment (write '/' as %2f)"));
            }
            config.vhost =
                percent_decode(path).ok_or_else(|| bad("bad percent escape in the vhost"))?;
        }
        Ok(config)
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

    /// Sets the user and password.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Config {
        self.user = user.into();
        self.password = password.into();
        self
    }

    /// Sets the virtual host.
    pub fn vhost_name(mut self, vhost: impl Into<String>) -> Config {
        self.vhost = vhost.into();
        self
    }

    /// Sets the TCP connect and handshake timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Config {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long a call waits for the server's answer (a publisher
    /// confirm, a consumer's cancel) before it fails as transient.
    pub fn io_timeout(mut self, timeout: Duration) -> Config {
        self.io_timeout = timeout;
        self
    }

    /// Sets the AMQP heartbeat in seconds (0: none). The client's I/O
    /// thread sends it, so a long job does not starve it.
    pub fn heartbeat(mut self, secs: u16) -> Config {
        self.heartbeat = secs;
        self
    }

    /// Sets how long [`Broker::take_over`] looks for the jobs of a dead
    /// holder (RabbitMQ requeues them when the holder's connection closes).
    pub fn take_over_patience(mut self, patience: Duration) -> Config {
        self.take_over_patience = patience;
        self
    }

    /// The server's host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The URL of this configuration with the password hidden.
    pub fn redacted_url(&self) -> String {
        format!(
            "amqp://{}:***@{}/{}",
            percent_encode(&self.user),
            self.host_port(),
            percent_encode(&self.vhost)
        )
    }

    /// Opens a handle on `queue`, declaring it (a durable quorum queue) and
    /// its dead-letter queue `<queue>.dead` when they do not exist.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for a queue name RabbitMQ refuses (empty,
    /// longer than [`MAX_QUEUE_NAME`], starting with `amq.`) or an existing
    /// queue of that name with other settings (say, a classic queue);
    /// [`ErrorKind::Transient`] when the server cannot be reached;
    /// [`ErrorKind::Other`] for refused credentials.
    pub fn open(&self, queue: &str) -> Result<RabbitMq, BrokerError> {
        RabbitMq::open(self.clone(), queue)
    }

    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"***")
            .field("vhost", &self.vhost)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("take_over_patience", &self.take_over_patience)
            .finish()
    }
}

impl Connect for Config {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Ok(Box::new(Config::open(self, queue)?))
    }
}

/// `url` with the password of its user info replaced by `***`, for logs,
/// errors and status output; anything that is not an `amqp://` or
/// `amqps://` URL with a password comes back unchanged.
///
/// # Examples
///
/// ```
/// use prefork_rabbitmq::redact_url;
///
/// assert_eq!(redact_url("amqp://app:s3cret@mq:5672/jobs"), "amqp://app:***@mq:5672/jobs");
/// assert_eq!(redact_url("amqp://mq/jobs"), "amqp://mq/jobs");
/// assert_eq!(redact_url("amqp://a:p@ss@mq/"), "amqp://a:***@mq/");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!("{scheme}://{}:***{}", &authority[..colon], &rest[at..])
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed '['")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the host")?),
        };
        (host, port)
    } else {
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if host.contains(':') {
            return Err("IPv6 hosts go in brackets");
        }
        (host, port)
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err("bad host");
    }
    Ok((host, port))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults() {
        let c = Config::from_url("amqp://127.0.0.1").unwrap();
        assert_eq!(
            (c.host(), c.port(), c.user(), c.vhost()),
            ("127.0.0.1", 5672, "guest", "/")
        );
        let c = Config::from_url("amqp://guest:guest@127.0.0.1:5673/%2f").unwrap();
        assert_eq!((c.port(), c.vhost()), (5673, "/"));
        let c = Config::from_url("amqp://u%40x:p%3Aw@[::1]:1/v%20h").unwrap();
        assert_eq!(
            (c.host(), c.user(), c.password.as_str(), c.vhost()),
            ("::1", "u@x", "p:w", "v h")
        );
        let c = Config::from_url("amqp://app@mq/").unwrap();
        assert_eq!(
            (c.user(), c.password.as_str(), c.vhost()),
            ("app", "guest", "/")
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_password_hidden() {
        for (url, kind) in [
            ("redis://127.0.0.1", ErrorKind::Invalid),
            ("amqps://u:secretpw@mq", ErrorKind::Unsupported),
            ("amqp://u:secretpw@", ErrorKind::Invalid),
            ("amqp://u:secretpw@mq:0", ErrorKind::Invalid),
            ("amqp://u:secretpw@mq:99999", ErrorKind::Invalid),
            ("amqp://u:secretpw@mq/a/b", ErrorKind::Invalid),
            ("amqp://u:secretpw@mq/%zz", ErrorKind::Invalid),
            ("amqp://u:secretpw@mq/?heartbeat=1", ErrorKind::Invalid),
            ("amqp://u:secretpw@::1/", ErrorKind::Invalid),
        ] {
            let e = Config::from_url(url).expect_err(url);
            assert_eq!(e.kind(), kind, "{url}: {e}");
            assert!(!e.to_string().contains("secretpw"), "{e}");
        }
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(redact_url("amqp://u:pw@h:1/v"), "amqp://u:***@h:1/v");
        assert_eq!(redact_url("amqp://u@h/v"), "amqp://u@h/v");
        assert_eq!(redact_url("amqp://h/v@x"), "amqp://h/v@x");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("amqps://u:pw@h"), "amqps://u:***@h");
        let c = Config::from_url("amqp://u:pw@h/v").unwrap();
        assert_eq!(c.redacted_url(), "amqp://u:***@h:5672/v");
        assert!(!format!("{c:?}").contains("pw\""));
    }
}
