//! [`Config`]: the server address (from a `beanstalk://` URL), TTR,
//! priority and timeouts; opens [`Beanstalkd`] handles.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use prefork_broker::{Broker, BrokerError, Connect, ErrorKind};

use crate::{Beanstalkd, DEFAULT_PORT, URL_ENV};

/// How to reach a beanstalkd server and how to put jobs there: the
/// configured, cheap-to-clone form of the adapter. Keep it in the
/// supervisor and [`open`](Config::open) handles after the fork, in the
/// process that uses them.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | address | from the URL, port 11300 | resolved and validated at [`open`](Config::open) |
/// | [`ttr`](Config::ttr) | 60 s | time-to-run of published jobs: the claim timeout (lease); [`Broker::touch`] renews it |
/// | [`priority`](Config::priority) | 1024 | priority of published jobs (0 is most urgent) |
/// | [`connect_timeout`](Config::connect_timeout) | 5 s | TCP connect |
/// | [`io_timeout`](Config::io_timeout) | 10 s | any reply, on top of the server-side wait of a reserve |
/// | [`precise_waits`](Config::precise_waits) | off | off: a fetch's sub-second wait is rounded up to a whole second and the server pushes the job; on: it is polled |
/// | [`poll_interval`](Config::poll_interval) | 20 ms | with precise waits, sub-second fetch waits poll at this interval |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prefork_beanstalkd::Config;
///
/// let c = Config::from_url("beanstalk://127.0.0.1:11300")?
///     .ttr(Duration::from_secs(30))
///     .priority(10);
/// assert_eq!(c.ttr_secs(), 30);
/// assert!(Config::from_url("redis://127.0.0.1").is_err());
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) ttr: u32,
    pub(crate) priority: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) precise_waits: bool,
}

impl Config {
    /// A configuration for the server at `host:port`, with the defaults.
    pub fn new(host: impl Into<String>, port: u16) -> Config {
        Config {
            host: host.into(),
            port,
            ttr: 60,
            priority: 1024,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
            precise_waits: false,
        }
    }

    /// Parses `beanstalk://host[:port][/]` (also `beanstalkd://`); the port
    /// defaults to 11300; IPv6 hosts go in brackets. Nothing is resolved
    /// here.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for another scheme, an empty host, a bad port,
    /// a user or password (beanstalkd has no authentication) or anything
    /// after the address. The message shows the URL through [`redact_url`].
    pub fn from_url(url: &str) -> Result<Config, BrokerError> {
        let bad = |why: &str| {
            BrokerError::new(
                ErrorKind::Invalid,
                format!("beanstalkd URL {:?}: {why}", redact_url(url)),
            )
        };
        let rest = url
            .strip_prefix("beanstalk://")
            .or_else(|| url.strip_prefix("beanstalkd://"))
            .ok_or_else(|| bad("expected beanstalk://host[:port]"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(bad(
                "beanstalkd has no authentication: drop the user:password@ part",
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("junk after the host"))?,
                ),
            };
            (host, port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            if host.contains(':') {
                return Err(bad("IPv6 hosts go in brackets"));
            }
            (host, port)
        };
        if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
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
        Ok(Config::new(host, port))
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

    /// Sets the time-to-run of published jobs (the claim timeout), rounded
    /// up to whole seconds, at least 1 (beanstalkd's granularity).
    pub fn ttr(mut self, ttr: Duration) -> Config {
        self.ttr = u32::try_from(ceil_secs(ttr)).unwrap_or(u32::MAX).max(1);
        self
    }

    /// The time-to-run in seconds.
    pub fn ttr_secs(&self) -> u32 {
        self.ttr
    }

    /// Sets the priority of published jobs (0 is the most urgent).
    pub fn priority(mut self, priority: u32) -> Config {
        self.priority = priority;
        self
    }

    /// Sets the TCP connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Config {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets how long any reply may take (on top of the server-side wait of
    /// a reserve); a reply later than this breaks the connection, which is
    /// reopened on the next call.
    pub fn io_timeout(mut self, timeout: Duration) -> Config {
        self.io_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets how often a fetch polls while waiting out a sub-second rest of
    /// its timeout, with [`precise_waits`](Config::precise_waits) on.
    pub fn poll_interval(mut self, interval: Duration) -> Config {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Chooses how a fetch waits out the part of its timeout that is not a
    /// whole number of seconds (beanstalkd's `reserve-with-timeout` takes
    /// whole seconds only).
    ///
    /// Off (the default): the wait is rounded up to the next whole second
    /// and the server pushes a job the moment one is ready, so a job waits
    /// no time in the tube; an empty fetch may return up to a second after
    /// its timeout (the [`Broker::fetch`] contract allows rounding up to the
    /// broker's granularity). A worker that fetches with a 200 ms timeout to
    /// check for shutdown thus sees the stop request up to a second later.
    ///
    /// On: the rest is polled with `reserve-with-timeout 0` every
    /// [`poll_interval`](Config::poll_interval): timeouts are kept to the
    /// millisecond, at the cost of up to one poll interval of latency for a
    /// job that arrives during the polled part, and a command per interval.
    pub fn precise_waits(mut self, on: bool) -> Config {
        self.precise_waits = on;
        self
    }

    /// The server address as `host:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the address, connects, and opens a handle on `tube`
    /// (`use`, `watch`, `ignore default`), reading the server's
    /// `max-job-size`. Its dead letters live in tube `<tube>.dead`.
    ///
    /// Call it in the process that uses the handle (after the fork).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for a tube name beanstalkd refuses (1 to 195
    /// bytes of letters, digits and `-+/;.$_()`, not starting with `-`);
    /// an error naming the host when it does not resolve;
    /// [`ErrorKind::Transient`] when the server cannot be reached.
    pub fn open(&self, tube: &str) -> Result<Beanstalkd, BrokerError> {
        Beanstalkd::open(self, tube)
    }

    pub(crate) fn resolve(&self) -> Result<Vec<SocketAddr>, BrokerError> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| BrokerError::io(format!("resolve beanstalkd host {:?}", self.host), e))?
            .collect();
        if addrs.is_empty() {
            return Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("beanstalkd host {:?} resolves to no address", self.host),
            ));
        }
        Ok(addrs)
    }
}

impl Connect for Config {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Ok(Box::new(Config::open(self, queue)?))
    }
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// `url` with the password of any `user:password@` part replaced by `***`
/// (a bare `user@` becomes `***@`): how this crate's messages show a URL.
/// beanstalkd has no authentication, so [`Config::from_url`] refuses such
/// a URL; the redaction keeps a password typed there by mistake out of the
/// error and the logs.
///
/// # Examples
///
/// ```
/// use prefork_beanstalkd::redact_url;
///
/// assert_eq!(redact_url("beanstalk://10.0.0.1:11300"), "beanstalk://10.0.0.1:11300");
/// assert_eq!(redact_url("beanstalk://ops:s3cret@h:11300"), "beanstalk://ops:***@h:11300");
/// assert_eq!(redact_url("beanstalk://s3cret@h"), "beanstalk://***@h");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return url.to_owned();
    };
    let shown = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{shown}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_validated() {
        let c = Config::from_url("beanstalk://10.0.0.1:1234").unwrap();
        assert_eq!(c.address(), "10.0.0.1:1234");
        assert_eq!(
            Config::from_url("beanstalkd://h/").unwrap().address(),
            "h:11300"
        );
        assert_eq!(
            Config::from_url("beanstalk://[::1]:7").unwrap().address(),
            "[::1]:7"
        );
        assert_eq!(
            Config::from_url("beanstalk://[::1]").unwrap().address(),
            "[::1]:11300"
        );
        for bad in [
            "redis://h",
            "beanstalk://",
            "beanstalk://h:0",
            "beanstalk://h:99999",
            "beanstalk://h:x",
            "beanstalk://::1:5",
            "beanstalk://[::1",
            "beanstalk://[::1]x",
            "beanstalk://h/tube",
            "beanstalk://u@h",
        ] {
            let e = Config::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
            assert!(e.to_string().contains("beanstalkd URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_password_is_refused_and_never_shown() {
        let e = Config::from_url("beanstalk://ops:s3cret@127.0.0.1:11300")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no authentication"), "{e}");
        assert!(e.contains("ops:***@127.0.0.1:11300"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn redaction_hides_only_the_userinfo() {
        let cases = [
            ("beanstalk://h:1", "beanstalk://h:1"),
            ("beanstalk://u:pw@h:1/", "beanstalk://u:***@h:1/"),
            ("beanstalk://:pw@h", "beanstalk://:***@h"),
            ("beanstalk://pw@h", "beanstalk://***@h"),
            ("beanstalk://h/a@b:c", "beanstalk://h/a@b:c"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
