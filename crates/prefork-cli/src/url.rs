//! Broker URLs: `spool:///absolute/dir`, `spool:relative/dir` or a bare
//! directory path (the embedded broker; the default is
//! `$TMPDIR/prefork-spool`), `redis://[[user]:password@]host[:port][/db]`
//! (feature `redis`) and `beanstalk://host[:port]` (feature `beanstalkd`).
//!
//! Parsing never connects. Handles are opened through [`Connect`], after the
//! fork, in the worker that uses them; [`BrokerUrl::check`] is the one
//! exception, a connect-and-close done before the pool starts so that a
//! wrong address fails the command at once instead of crash-looping workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use prefork_broker::{Broker, BrokerError, Connect};

/// A parsed broker URL: which broker, and how to reach it.
///
/// `Display` and `Debug` show the URL with any password replaced by `***`;
/// every error this type returns names the broker that way.
///
/// # Examples
///
/// ```
/// use prefork_cli::BrokerUrl;
///
/// let spool = BrokerUrl::parse("spool:///var/lib/jobs")?;
/// assert_eq!(spool.spool_dir(), Some(std::path::Path::new("/var/lib/jobs")));
/// # #[cfg(feature = "redis")] {
/// let redis = BrokerUrl::parse("redis://:hunter2@127.0.0.1:6379/2")?;
/// assert_eq!(redis.to_string(), "redis://:***@127.0.0.1:6379/2");
/// assert_eq!(redis.spool_dir(), None);
/// # }
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BrokerUrl {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Spool(PathBuf, prefork_spool::Options),
    #[cfg(feature = "redis")]
    Redis(Box<prefork_redis::Redis>),
    #[cfg(feature = "beanstalkd")]
    Beanstalkd(prefork_beanstalkd::Config),
}

/// The schemes this build understands, for error messages.
fn schemes() -> String {
    let mut s = vec!["spool://"];
    if cfg!(feature = "redis") {
        s.push("redis://");
    }
    if cfg!(feature = "beanstalkd") {
        s.push("beanstalk://");
    }
    s.join(", ")
}

/// `url` with the password of a `scheme://user:password@host` URL hidden.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl BrokerUrl {
    /// Parses a broker URL (see the module docs for the forms). Does not
    /// connect.
    ///
    /// # Errors
    ///
    /// For a scheme this build does not have (the message lists those it
    /// has), an empty spool path, or a Redis or beanstalkd URL its adapter
    /// refuses (the message shows the URL with the password hidden).
    pub fn parse(url: &str) -> anyhow::Result<BrokerUrl> {
        BrokerUrl::parse_with_lease(url, None)
    }

    /// Parses a broker URL like [`parse`](BrokerUrl::parse), with a claim
    /// timeout other than the adapter's default: how long a job fetched
    /// and neither settled nor touched stays with its holder before the
    /// broker hands it out again.
    ///
    /// | broker | what `lease` sets | default |
    /// |---|---|---|
    /// | spool | the claim lease (a claim whose holder's pid is gone is taken back at once anyway) | 60 s |
    /// | redis | the lease: the min-idle time after which another consumer reclaims a pending entry (`XAUTOCLAIM`), checked every half lease | 30 s |
    /// | beanstalkd | the TTR of jobs this process puts (`enqueue`, and retries); a dead holder's connection closes and its job is ready at once whatever the TTR | 60 s |
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let url = prefork_cli::BrokerUrl::parse_with_lease("spool:///tmp/q", Some(Duration::from_secs(5)))?;
    /// assert_eq!(url.lease(), Duration::from_secs(5));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`parse`](BrokerUrl::parse).
    pub fn parse_with_lease(url: &str, lease: Option<Duration>) -> anyhow::Result<BrokerUrl> {
        let spool_options = || {
            let o = prefork_spool::Options::default();
            match lease {
                Some(l) => o.lease(l),
                None => o,
            }
        };
        let scheme = url.split_once("://").map(|(s, _)| s);
        let kind = match scheme {
            _ if url.starts_with("spool:") => {
                let rest = &url["spool:".len()..];
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    bail!("broker URL {url:?} has no directory");
                }
                Kind::Spool(PathBuf::from(path), spool_options())
            }
            #[cfg(feature = "redis")]
            Some("redis" | "redis+unix") => {
                let mut options = prefork_redis::Options::default();
                if let Some(l) = lease {
                    options = options.lease(l);
                }
                Kind::Redis(Box::new(
                    prefork_redis::Redis::with_options(url, options)
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                ))
            }
            #[cfg(feature = "beanstalkd")]
            Some("beanstalk" | "beanstalkd") => {
                let mut config = prefork_beanstalkd::Config::from_url(url)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(l) = lease {
                    config = config.ttr(l);
                }
                Kind::Beanstalkd(config)
            }
            Some(scheme) => bail!(
                "broker scheme {scheme:?} (in {}) is not built into this binary (it has {}; \
                 redis:// and beanstalk:// come with the cargo features `redis` and `beanstalkd`)",
                redact(url),
                schemes()
            ),
            None if url.is_empty() => bail!("empty broker URL"),
            None => Kind::Spool(PathBuf::from(url), spool_options()),
        };
        Ok(BrokerUrl { kind })
    }

    /// The default broker: the spool in `$TMPDIR/prefork-spool`.
    pub fn default_spool() -> BrokerUrl {
        BrokerUrl {
            kind: Kind::Spool(
                std::env::temp_dir().join("prefork-spool"),
                prefork_spool::Options::default(),
            ),
        }
    }

    /// The claim timeout in effect (see
    /// [`parse_with_lease`](BrokerUrl::parse_with_lease)).
    pub fn lease(&self) -> Duration {
        match &self.kind {
            Kind::Spool(_, o) => o.lease_time(),
            #[cfg(feature = "redis")]
            Kind::Redis(r) => r.options().lease_time(),
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(c) => Duration::from_secs(u64::from(c.ttr_secs())),
        }
    }

    /// The spool directory, when this is the embedded broker.
    pub fn spool_dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Spool(p, _) => Some(p),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The broker's name: `spool`, `redis` or `beanstalkd`.
    pub fn broker_name(&self) -> &'static str {
        match &self.kind {
            Kind::Spool(..) => "spool",
            #[cfg(feature = "redis")]
            Kind::Redis(_) => "redis",
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(_) => "beanstalkd",
        }
    }

    /// Opens the spool at [`spool_dir`](BrokerUrl::spool_dir).
    ///
    /// # Errors
    ///
    /// When this is not a spool URL, or the directory cannot be created.
    pub fn spool(&self) -> anyhow::Result<prefork_spool::Spool> {
        let Some(dir) = self.spool_dir() else {
            bail!("broker {self}: this command works on the embedded spool only (spool://DIR)");
        };
        let options = match &self.kind {
            Kind::Spool(_, o) => o.clone(),
            #[allow(unreachable_patterns)]
            _ => prefork_spool::Options::default(),
        };
        prefork_spool::Spool::with_options(dir, options)
            .with_context(|| format!("opening the spool at {}", dir.display()))
    }

    /// Opens a handle on `queue`, in this process: for `enqueue`, `dead`
    /// and the like, and in each worker (through [`Connect`]).
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached, refuses the credentials or the
    /// queue name; the message names the broker (password hidden).
    pub fn open_queue(&self, queue: &str) -> anyhow::Result<Box<dyn Broker + Send>> {
        Connect::open(self, queue)
            .map_err(|e| anyhow::anyhow!("broker {self}, queue {queue:?}: {e}"))
    }

    /// Connects to the broker, opens `queue` and closes it again: the check
    /// `prefork work` runs before forking, so that a wrong address or
    /// password is one clear error instead of workers failing to start.
    /// Nothing of the connection survives the call (the adapters start no
    /// threads and write nothing on close).
    ///
    /// # Errors
    ///
    /// As [`open_queue`](BrokerUrl::open_queue).
    pub fn check(&self, queue: &str) -> anyhow::Result<()> {
        drop(self.open_queue(queue)?);
        Ok(())
    }
}

impl Connect for BrokerUrl {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        match &self.kind {
            Kind::Spool(dir, options) => {
                prefork_spool::Spool::with_options(dir, options.clone())?.open(queue)
            }
            #[cfg(feature = "redis")]
            Kind::Redis(r) => r.open(queue),
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(c) => Connect::open(c, queue),
        }
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Spool(p, _) => write!(f, "spool://{}", p.display()),
            #[cfg(feature = "redis")]
            Kind::Redis(r) => f.write_str(r.url()),
            #[cfg(feature = "beanstalkd")]
            Kind::Beanstalkd(c) => write!(f, "beanstalk://{}", c.address()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_forms() {
        let dir = |u: &str| BrokerUrl::parse(u).unwrap().spool_dir().map(Path::to_owned);
        assert_eq!(dir("spool:///a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(dir("spool:rel"), Some(PathBuf::from("rel")));
        assert_eq!(dir("/x"), Some(PathBuf::from("/x")));
        assert!(BrokerUrl::parse("spool://").is_err());
        assert!(BrokerUrl::parse("").is_err());
        let u = BrokerUrl::parse("spool:///a").unwrap();
        assert_eq!(
            BrokerUrl::parse(&u.to_string()).unwrap().to_string(),
            u.to_string()
        );
        assert_eq!(u.broker_name(), "spool");
    }

    #[test]
    fn lease_reaches_every_adapter() {
        let five = Some(Duration::from_secs(5));
        let mut urls = vec!["spool:///a"];
        if cfg!(feature = "redis") {
            urls.push("redis://127.0.0.1:6379/0");
        }
        if cfg!(feature = "beanstalkd") {
            urls.push("beanstalk://127.0.0.1");
        }
        for u in urls {
            let with = BrokerUrl::parse_with_lease(u, five).unwrap();
            assert_eq!(with.lease(), Duration::from_secs(5), "{u}");
            let without = BrokerUrl::parse(u).unwrap();
            assert_ne!(without.lease(), Duration::from_secs(5), "{u}");
        }
        // beanstalkd counts TTR in whole seconds: rounded up.
        #[cfg(feature = "beanstalkd")]
        assert_eq!(
            BrokerUrl::parse_with_lease("beanstalk://h", Some(Duration::from_millis(1500)))
                .unwrap()
                .lease(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_list() {
        let e = BrokerUrl::parse("amqp://guest:secret@localhost/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"amqp\""), "{e}");
        assert!(e.contains("spool://"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("guest:***@localhost"), "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact("x://h/p@q:r"), "x://h/p@q:r");
        assert_eq!(redact("/plain/path"), "/plain/path");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_urls() {
        let u = BrokerUrl::parse("redis://:s3cret@127.0.0.1:6379/3").unwrap();
        assert_eq!(u.broker_name(), "redis");
        assert_eq!(u.to_string(), "redis://:***@127.0.0.1:6379/3");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(u.spool_dir().is_none());
        assert!(u.spool().unwrap_err().to_string().contains("spool only"));
        let e = BrokerUrl::parse("redis://:s3cret@127.0.0.1:notaport/0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn unreachable_redis_names_the_broker_without_the_password() {
        // Port 1 on loopback: nothing listens there, the refusal is immediate.
        let u = BrokerUrl::parse("redis://:s3cret@127.0.0.1:1/0").unwrap();
        let e = format!("{:#}", u.check("q").unwrap_err());
        assert!(e.contains("broker redis://:***@127.0.0.1:1/0"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[cfg(feature = "beanstalkd")]
    #[test]
    fn beanstalk_urls() {
        let u = BrokerUrl::parse("beanstalk://127.0.0.1:11300").unwrap();
        assert_eq!(u.broker_name(), "beanstalkd");
        assert_eq!(u.to_string(), "beanstalk://127.0.0.1:11300");
        assert_eq!(
            BrokerUrl::parse("beanstalk://h").unwrap().to_string(),
            "beanstalk://h:11300"
        );
        for bad in ["beanstalk://", "beanstalk://h:0", "beanstalk://h:1/tube"] {
            let e = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("beanstalkd URL"), "{bad}: {e}");
        }
    }

    #[cfg(feature = "beanstalkd")]
    #[test]
    fn unreachable_beanstalkd_names_the_broker() {
        let u = BrokerUrl::parse("beanstalk://127.0.0.1:1").unwrap();
        let e = format!("{:#}", u.check("q").unwrap_err());
        assert!(e.contains("broker beanstalk://127.0.0.1:1"), "{e}");
        assert!(e.contains("queue \"q\""), "{e}");
    }
}
