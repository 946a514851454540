//! The Beanstalkd adapter of prefork: a [`prefork_broker::Broker`] over one
//! beanstalkd tube, with its own small, typed client for the beanstalk
//! protocol (std `TcpStream`, no threads, nothing written on drop).
//!
//! | item | what |
//! |---|---|
//! | [`Config`] | server address, TTR, priority, timeouts; opens handles ([`Config::open`], or as a [`Connect`]) |
//! | [`Beanstalkd`] | a handle on one tube: the [`Broker`] implementation |
//! | [`proto`] | the wire protocol: [`proto::parse_response`] and its types |
//!
//! The README below is the crate's guide; its example is compiled as a
//! doctest (not run: it needs a server).
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod carried;
mod conn;
mod dead;
pub mod proto;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_broker::{
    Broker, BrokerError, Connect, DeadLetter, Delivery, DeliveryId, ErrorKind, SettleError,
};

use crate::conn::Conn;
use crate::proto::{Response, ServerError, cmd, valid_tube, yaml_field};

/// The environment variable holding the server URL that tests and benches
/// use (`beanstalk://127.0.0.1:PORT`), set by `cargo xtask`.
pub const URL_ENV: &str = "PREFORK_BEANSTALKD_URL";
/// beanstalkd's default port.
pub const DEFAULT_PORT: u16 = 11300;
/// The suffix of the tube that keeps a tube's dead letters.
pub const DEAD_SUFFIX: &str = ".dead";
/// The longest single server-side wait of a reserve; longer fetch timeouts
/// loop.
const MAX_BLOCK_SECS: u64 = 3600;
/// How many reserves one listing of dead letters pipelines at a time.
const LIST_CHUNK: usize = 64;
/// How many commands one pipelined write of a batch holds at most (their
/// replies must fit the socket buffers: beanstalkd stops reading a
/// connection whose replies it cannot write).
const PIPELINE_CHUNK: usize = 512;
/// How many payload bytes one pipelined write of a batch holds at most (one
/// job may exceed it).
const PIPELINE_BYTES: usize = 4 << 20;
/// How long [`Broker::take_over`] waits for a dead holder's connection to
/// be closed by the server (its jobs still show as reserved until then).
const TAKE_OVER_PATIENCE: Duration = Duration::from_millis(500);
/// Bytes of the server's `max-job-size` kept back from payloads, for the
/// header a retried copy (`PFAT1 <attempts>\n`, at most 17 bytes) or a
/// dead-letter record (`PFDL1 <attempt> <job id> <reason length>\n`, at
/// most 59, with the reason cut to the rest) puts in front of one.
pub const HEADROOM: usize = 64;
const _: () = assert!(carried::MAX_HEADER <= HEADROOM);

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
    host: String,
    port: u16,
    ttr: u32,
    priority: u32,
    connect_timeout: Duration,
    io_timeout: Duration,
    poll_interval: Duration,
    precise_waits: bool,
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
    /// [`ErrorKind::Invalid`] for another scheme, an empty host, a bad port
    /// or anything after the address.
    pub fn from_url(url: &str) -> Result<Config, BrokerError> {
        let bad = |why: &str| {
            BrokerError::new(ErrorKind::Invalid, format!("beanstalkd URL {url:?}: {why}"))
        };
        let rest = url
            .strip_prefix("beanstalk://")
            .or_else(|| url.strip_prefix("beanstalkd://"))
            .ok_or_else(|| bad("expected beanstalk://host[:port]"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
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
        let dead_tube = format!("{tube}{DEAD_SUFFIX}");
        if !valid_tube(tube) || !valid_tube(&dead_tube) {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "tube name {tube:?} is not one beanstalkd accepts (1-195 bytes of A-Za-z0-9-+/;.$_(), not starting with '-')"
                ),
            ));
        }
        let addrs = self.resolve()?;
        let mut b = Beanstalkd {
            config: self.clone(),
            addrs,
            tube: tube.to_owned(),
            dead_tube,
            conn: None,
            generation: 0,
            max_job_size: 0,
            server_max: 0,
            server: None,
        };
        b.conn()?;
        Ok(b)
    }

    fn resolve(&self) -> Result<Vec<SocketAddr>, BrokerError> {
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

/// A handle on one beanstalkd tube: the [`Broker`] implementation.
///
/// It owns one TCP connection, opened by [`Config::open`] and reopened
/// on the next call after a connection failure (jobs held on the old
/// connection go back to ready at once, and settling them reports
/// [`ErrorKind::LeaseLost`]). Dropping it closes the socket without writing
/// anything. See the README for how each operation maps to beanstalk
/// commands.
pub struct Beanstalkd {
    config: Config,
    addrs: Vec<SocketAddr>,
    tube: String,
    dead_tube: String,
    conn: Option<Conn>,
    /// Counts connections; receipts name the one their claim lives on.
    generation: u64,
    /// The largest payload taken: the server's `max-job-size` less
    /// [`HEADROOM`], so a retried copy's or dead letter's header fits.
    max_job_size: usize,
    /// The server's `max-job-size`: the largest body it stores.
    server_max: usize,
    /// The server's `id` (random per server process) and whether it keeps a
    /// binlog, from the last handshake.
    server: Option<(String, bool)>,
}

impl fmt::Debug for Beanstalkd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Beanstalkd")
            .field("server", &self.config.address())
            .field("tube", &self.tube)
            .field("connected", &self.conn.is_some())
            .field("generation", &self.generation)
            .field("max_job_size", &self.max_job_size)
            .finish()
    }
}

/// Parsed receipt: connection generation, job id, priority.
struct Receipt {
    generation: u64,
    id: u64,
    pri: u32,
}

impl Beanstalkd {
    /// The tube this handle works on.
    pub fn tube(&self) -> &str {
        &self.tube
    }

    /// The tube holding this tube's dead letters (`<tube>.dead`).
    pub fn dead_tube(&self) -> &str {
        &self.dead_tube
    }

    /// The largest payload [`publish`](Broker::publish) takes (bytes): the
    /// server's `max-job-size`, read when the connection opened, less
    /// [`HEADROOM`] for the header a retried copy or a dead letter carries.
    pub fn max_job_size(&self) -> usize {
        self.max_job_size
    }

    /// The configuration this handle was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The live connection, opening one (with the per-tube set-up) if the
    /// last one failed.
    fn conn(&mut self) -> Result<&mut Conn, BrokerError> {
        if self.conn.is_none() {
            let c = &self.config;
            let mut conn =
                Conn::connect(&self.addrs, c.connect_timeout, c.io_timeout).map_err(|e| {
                    BrokerError::io(format!("connect to beanstalkd at {}", c.address()), e)
                })?;
            cmd::line(&mut conn.out, format_args!("use {}", self.tube));
            cmd::line(&mut conn.out, format_args!("watch {}", self.tube));
            let ignore = self.tube != "default";
            if ignore {
                cmd::line(&mut conn.out, format_args!("ignore default"));
            }
            cmd::line(&mut conn.out, format_args!("stats"));
            let mut replies = Vec::new();
            let r = conn.flush().and_then(|()| {
                for _ in 0..3 + usize::from(ignore) {
                    replies.push(conn.recv(Duration::ZERO)?);
                }
                Ok(())
            });
            r.map_err(|e| e.into_broker("open a beanstalkd connection"))?;
            let max = match replies.as_slice() {
                [
                    Response::Using(_),
                    Response::Watching(_),
                    ..,
                    Response::Ok(yaml),
                ] => yaml_field(yaml, "max-job-size").and_then(|v| v.parse::<usize>().ok()),
                _ => None,
            };
            let Some(max) = max else {
                return Err(BrokerError::new(
                    ErrorKind::Corrupt,
                    format!("unexpected beanstalkd handshake replies {replies:?}"),
                ));
            };
            self.server_max = max;
            self.max_job_size = max.saturating_sub(HEADROOM);
            // No reply body can be larger than a job the server accepts
            // (stats bodies are a few KiB).
            conn.max_body = max.max(16 * 1024) + 1024;
            if let Some(Response::Ok(yaml)) = replies.last() {
                let id = yaml_field(yaml, "id").unwrap_or_default().to_owned();
                let binlog = yaml_field(yaml, "binlog-current-index").is_some_and(|i| i != "0");
                self.server = Some((id, binlog));
            }
            self.generation += 1;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Queues the commands `write` appends, sends them in one write and
    /// reads `n` replies. Any failure drops the connection (it is out of
    /// step), so its claims go back to the server at once.
    fn exchange(
        &mut self,
        what: &str,
        n: usize,
        wait: Duration,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<Response>, BrokerError> {
        self.conn()?;
        let conn = self.conn.as_mut().expect("connected");
        write(&mut conn.out);
        let mut replies = Vec::with_capacity(n);
        let r = conn.flush().and_then(|()| {
            for _ in 0..n {
                replies.push(conn.recv(wait)?);
            }
            Ok(())
        });
        match r {
            Ok(()) => Ok(replies),
            Err(e) => {
                self.conn = None;
                Err(e.into_broker(what))
            }
        }
    }

    fn exchange1(
        &mut self,
        what: &str,
        wait: Duration,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response, BrokerError> {
        Ok(self
            .exchange(what, 1, wait, write)?
            .pop()
            .expect("one reply"))
    }

    /// The error for a reply that does not belong to the command: server
    /// errors by their meaning; anything else means the client and server
    /// are out of step, so the connection is dropped.
    fn unexpected(&mut self, what: &str, r: Response) -> BrokerError {
        match r {
            Response::Error(e) => server_error(what, e),
            other => {
                self.conn = None;
                BrokerError::new(
                    ErrorKind::Corrupt,
                    format!("{what}: unexpected reply {other:?}"),
                )
            }
        }
    }

    fn receipt(&self, d: &Delivery) -> Result<Receipt, BrokerError> {
        let bad = || {
            BrokerError::new(
                ErrorKind::Invalid,
                format!("receipt {:?} is not from a beanstalkd handle", d.receipt()),
            )
        };
        let mut parts = d.receipt().split(':');
        let mut next = || parts.next().ok_or_else(bad);
        let r = Receipt {
            generation: next()?.parse().map_err(|_| bad())?,
            id: next()?.parse().map_err(|_| bad())?,
            pri: next()?.parse().map_err(|_| bad())?,
        };
        if r.generation != self.generation || self.conn.is_none() {
            return Err(BrokerError::new(
                ErrorKind::LeaseLost,
                format!(
                    "job {} was reserved on a connection that has since closed",
                    r.id
                ),
            ));
        }
        Ok(r)
    }

    /// Runs a settling operation, handing the delivery back on failure.
    fn settle(
        &mut self,
        d: Delivery,
        op: impl FnOnce(&mut Self, &Delivery, Receipt) -> Result<(), BrokerError>,
    ) -> Result<(), SettleError> {
        let r = match self.receipt(&d) {
            Ok(r) => r,
            Err(e) => return Err(SettleError::new(d, e)),
        };
        op(self, &d, r).map_err(|e| SettleError::new(d, e))
    }

    /// `put` into the tube in use, kicking a job the server stored buried.
    fn put(
        &mut self,
        what: &str,
        payload: &[u8],
        pri: u32,
        delay: u64,
    ) -> Result<u64, BrokerError> {
        Ok(self.put_many(what, &[payload], pri, delay)?[0])
    }

    /// Pipelined `put`s of payloads into the tube in use (see
    /// [`put_bodies`](Self::put_bodies)); a payload over
    /// [`max_job_size`](Self::max_job_size) is refused before anything is
    /// sent, and one that starts like a header is escaped ([`carried`]).
    fn put_many(
        &mut self,
        what: &str,
        payloads: &[&[u8]],
        pri: u32,
        delay: u64,
    ) -> Result<Vec<u64>, BrokerError> {
        if let Some((i, p)) = payloads
            .iter()
            .enumerate()
            .find(|(_, p)| p.len() > self.max_job_size)
        {
            let which = if payloads.len() > 1 {
                format!(" (job {} of {}; none was sent)", i + 1, payloads.len())
            } else {
                String::new()
            };
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "{what}: a {}-byte job is over the server's max-job-size of {} bytes (beanstalkd -z){which}",
                    p.len(),
                    self.max_job_size
                ),
            ));
        }
        let bodies: Vec<std::borrow::Cow<'_, [u8]>> =
            payloads.iter().map(|p| carried::encode(0, p)).collect();
        let bodies: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
        self.put_bodies(what, &bodies, pri, delay)
    }

    /// Pipelined `put`s of job bodies into the tube in use (a few hundred
    /// per write), kicking the jobs the server stored buried; returns the
    /// job ids.
    fn put_bodies(
        &mut self,
        what: &str,
        payloads: &[&[u8]],
        pri: u32,
        delay: u64,
    ) -> Result<Vec<u64>, BrokerError> {
        let ttr = u64::from(self.config.ttr);
        let mut ids = Vec::with_capacity(payloads.len());
        let mut rest = payloads;
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            while n < rest.len()
                && n < PIPELINE_CHUNK
                && (n == 0 || bytes + rest[n].len() <= PIPELINE_BYTES)
            {
                bytes += rest[n].len();
                n += 1;
            }
            let (chunk, after) = rest.split_at(n);
            rest = after;
            let replies = self.exchange(what, chunk.len(), Duration::ZERO, |w| {
                for p in chunk {
                    cmd::put(w, pri, delay, ttr, p);
                }
            })?;
            let mut failed = None;
            let mut buried = Vec::new();
            for r in replies {
                match r {
                    Response::Inserted(id) => ids.push(id),
                    // Out of memory for its queue: the job exists, buried.
                    // Make it ready, keeping its id (beanstalkc loses it).
                    Response::Buried(Some(id)) => {
                        ids.push(id);
                        buried.push(id);
                    }
                    Response::Error(e) => {
                        let added = ids.len();
                        failed.get_or_insert_with(|| {
                            let e = server_error(what, e);
                            if payloads.len() > 1 {
                                BrokerError::new(e.kind(), format!("{} (job {} of {}; the {added} before it were added, later ones may have been)", e.message(), added + 1, payloads.len()))
                            } else {
                                e
                            }
                        });
                    }
                    other => return Err(self.unexpected(what, other)),
                }
            }
            if !buried.is_empty() {
                let kicks = self.exchange(what, buried.len(), Duration::ZERO, |w| {
                    for id in &buried {
                        cmd::line(w, format_args!("kick-job {id}"));
                    }
                })?;
                for (id, r) in buried.iter().zip(kicks) {
                    if r != Response::Kicked(None) {
                        return Err(BrokerError::new(
                            ErrorKind::Transient,
                            format!(
                                "{what}: the server stored job {id} buried (out of memory) and kicking it failed ({r:?}); `kick-job {id}` makes it ready"
                            ),
                        ));
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(ids)
    }

    /// A delivery for a job this connection reserved, from its body and
    /// `stats-job` reply: the attempt is the attempts its body says a
    /// retry used ([`carried`]), plus `reserves` less the `releases` our
    /// [`release`](Broker::release) made (attempt-neutral).
    fn delivery(&self, id: u64, body: Vec<u8>, stats: &Response) -> Delivery {
        let default_pri = self.config.priority;
        let (used, payload) = carried::decode(body);
        let (attempt, pri) = match stats {
            Response::Ok(yaml) => {
                let n = |k| yaml_field(yaml, k).and_then(|v| v.parse::<u64>().ok());
                let attempt = n("reserves")
                    .unwrap_or(1)
                    .saturating_sub(n("releases").unwrap_or(0))
                    .max(1);
                let pri = yaml_field(yaml, "pri").and_then(|v| v.parse().ok());
                (attempt, pri.unwrap_or(default_pri))
            }
            _ => (1, default_pri),
        };
        let attempt = attempt.saturating_add(u64::from(used));
        Delivery::new(DeliveryId::new(id.to_string()), payload)
            .with_attempt(u32::try_from(attempt).unwrap_or(u32::MAX))
            .with_receipt(format!("{}:{id}:{pri}", self.generation))
            .with_meta("tube", self.tube.clone())
            .with_meta("pri", pri.to_string())
    }

    /// Reserves the first job, waiting up to `timeout`: whole seconds
    /// server-side, the rest by polling (see [`wait_plan`]).
    fn reserve_first(&mut self, timeout: Duration) -> Result<Option<(u64, Vec<u8>)>, BrokerError> {
        let deadline = Instant::now() + timeout;
        let mut poll_only = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (secs, nap) = wait_plan(
                left,
                poll_only,
                self.config.precise_waits,
                self.config.poll_interval,
            );
            let wait = Duration::from_secs(secs);
            match self.exchange1("reserve", wait, |w| {
                cmd::line(w, format_args!("reserve-with-timeout {secs}"))
            })? {
                Response::Reserved { id, body } => return Ok(Some((id, body))),
                Response::TimedOut => {}
                // A job this connection holds is near its TTR and none is
                // ready: the server answers at once, so poll instead.
                Response::DeadlineSoon => poll_only = true,
                other => return Err(self.unexpected("reserve", other)),
            }
            if deadline.saturating_duration_since(Instant::now()).is_zero() {
                return Ok(None);
            }
            if secs == 0 {
                sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
    }
}

/// How to wait `left` for a job: the whole seconds the server may block
/// (`reserve-with-timeout N`), and how long to nap after an empty poll.
/// While a held job is near its TTR every wait polls with
/// `reserve-with-timeout 0` every `poll`; otherwise a sub-second rest is
/// rounded up to a whole second, or polled when `precise`.
fn wait_plan(left: Duration, poll_only: bool, precise: bool, poll: Duration) -> (u64, Duration) {
    if left.is_zero() {
        (0, Duration::ZERO)
    } else if poll_only || (precise && left < Duration::from_secs(1)) {
        (0, poll.min(left))
    } else if precise {
        (left.as_secs().min(MAX_BLOCK_SECS), Duration::ZERO)
    } else {
        (ceil_secs(left).min(MAX_BLOCK_SECS), Duration::ZERO)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

fn server_error(what: &str, e: ServerError) -> BrokerError {
    let kind = match e {
        ServerError::OutOfMemory | ServerError::Draining => ErrorKind::Transient,
        ServerError::JobTooBig => ErrorKind::Invalid,
        ServerError::InternalError => ErrorKind::Other,
        // Our command was malformed: a bug here, not a passing condition.
        ServerError::BadFormat | ServerError::UnknownCommand | ServerError::ExpectedCrlf => {
            ErrorKind::Other
        }
    };
    BrokerError::new(kind, format!("{what}: the server answered {e}"))
}

fn lease_lost(id: u64) -> BrokerError {
    BrokerError::new(
        ErrorKind::LeaseLost,
        format!(
            "job {id} is no longer reserved by this connection (its TTR expired or it was settled)"
        ),
    )
}

impl Broker for Beanstalkd {
    fn queue(&self) -> &str {
        &self.tube
    }

    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        let pri = self.config.priority;
        self.put("publish", payload, pri, ceil_secs(delay))
            .map(drop)
    }

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let Some(first) = self.reserve_first(timeout)? else {
            return Ok(Vec::new());
        };
        let mut jobs = vec![first];
        if max > 1 {
            let more = self.exchange("reserve", max - 1, Duration::ZERO, |w| {
                for _ in 1..max {
                    cmd::line(w, format_args!("reserve-with-timeout 0"));
                }
            })?;
            for r in more {
                match r {
                    Response::Reserved { id, body } => jobs.push((id, body)),
                    Response::TimedOut | Response::DeadlineSoon => {}
                    other => return Err(self.unexpected("reserve", other)),
                }
            }
        }
        // The attempt numbers: see `delivery`.
        let stats = self.exchange("stats-job", jobs.len(), Duration::ZERO, |w| {
            for (id, _) in &jobs {
                cmd::line(w, format_args!("stats-job {id}"));
            }
        })?;
        Ok(jobs
            .into_iter()
            .zip(stats)
            .map(|((id, body), stats)| self.delivery(id, body, &stats))
            .collect())
    }

    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.settle(delivery, |b, _, r| {
            match b.exchange1("ack (delete)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("delete {}", r.id))
            })? {
                Response::Deleted => Ok(()),
                Response::NotFound => Err(lease_lost(r.id)),
                other => Err(b.unexpected("ack (delete)", other)),
            }
        })
    }

    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
        let pri = self.config.priority;
        self.put_many("publish_batch", payloads, pri, ceil_secs(delay))
            .map(drop)
    }

    /// A plain, confirmed [`ack`](Broker::ack). beanstalkd reads one
    /// command a turn per connection and drops what it has not read when
    /// the client hangs up: deletes pipelined ahead of their replies are
    /// lost if the worker dies a moment later (48 of 50 were, in a test
    /// here), and those jobs run again. So a deferred ack would widen
    /// at-least-once's window from the job in hand to every ack not yet
    /// answered.
    fn ack_deferred(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.ack(delivery)
    }

    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        // beanstalkd returns a closed connection's reservations to ready by
        // itself; take those of `ids` at once with `reserve-job`. A job
        // still reserved is waited for a moment (the server may not have
        // seen the connection close yet); delayed and buried ones, and jobs
        // of other tubes, are left alone.
        let mut want: Vec<u64> = ids.iter().filter_map(|i| i.as_str().parse().ok()).collect();
        want.sort_unstable();
        want.dedup();
        let deadline = Instant::now() + TAKE_OVER_PATIENCE;
        let mut taken = Vec::new();
        while !want.is_empty() {
            let stats =
                self.exchange("take_over (stats-job)", want.len(), Duration::ZERO, |w| {
                    for id in &want {
                        cmd::line(w, format_args!("stats-job {id}"));
                    }
                })?;
            let (mut ready, mut held) = (Vec::new(), Vec::new());
            for (id, r) in want.iter().zip(stats) {
                match r {
                    Response::Ok(yaml) => {
                        let tube = yaml_field(&yaml, "tube").map(|t| t.trim_matches('"'));
                        match yaml_field(&yaml, "state") {
                            _ if tube != Some(self.tube.as_str()) => {}
                            Some("ready") => ready.push(*id),
                            Some("reserved") => held.push(*id),
                            _ => {}
                        }
                    }
                    // Deleted: done, nothing to take.
                    Response::NotFound => {}
                    other => return Err(self.unexpected("take_over (stats-job)", other)),
                }
            }
            if !ready.is_empty() {
                let replies = self.exchange(
                    "take_over (reserve-job)",
                    2 * ready.len(),
                    Duration::ZERO,
                    |w| {
                        for id in &ready {
                            cmd::line(w, format_args!("reserve-job {id}"));
                            cmd::line(w, format_args!("stats-job {id}"));
                        }
                    },
                )?;
                let mut replies = replies.into_iter();
                while let (Some(reserved), Some(stats)) = (replies.next(), replies.next()) {
                    match reserved {
                        Response::Reserved { id, body } => {
                            taken.push(self.delivery(id, body, &stats))
                        }
                        // Another handle reserved it first.
                        Response::NotFound => {}
                        Response::Error(ServerError::UnknownCommand) => {
                            return Err(BrokerError::new(
                                ErrorKind::Unsupported,
                                "take_over needs beanstalkd 1.12 or later (reserve-job)",
                            ));
                        }
                        other => return Err(self.unexpected("take_over (reserve-job)", other)),
                    }
                }
            }
            if held.is_empty() || Instant::now() >= deadline {
                if !held.is_empty() {
                    tracing::debug!(tube = %self.tube, holder_pid, still_reserved = ?held, "take_over: jobs still reserved (by another handle, or the dead holder's connection is not closed yet)");
                }
                break;
            }
            sleep(Duration::from_millis(10));
            want = held;
        }
        tracing::info!(tube = %self.tube, holder_pid, taken = taken.len(), asked = ids.len(), "took over a dead holder's jobs");
        Ok(taken)
    }

    /// A copy carrying the attempts used ([`carried`]) is put, delayed,
    /// then the original deleted: two confirmed commands, so a handle
    /// killed between them leaves both (the original comes back when its
    /// connection closes, and runs again as at-least-once allows), never
    /// neither, and never a job out of circulation.
    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        let secs = ceil_secs(delay);
        self.settle(delivery, |b, d, r| {
            let body = carried::encode(d.attempt(), d.payload());
            let copy = b.put_bodies("retry (put)", &[&body], r.pri, secs)?[0];
            let reply = b.exchange1("retry (delete)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("delete {}", r.id))
            })?;
            match reply {
                Response::Deleted => Ok(()),
                Response::NotFound => {
                    // The claim was lost (its TTR ran out): the original is
                    // back in circulation, so the copy goes.
                    let _ = b.exchange1("retry (delete the copy)", Duration::ZERO, |w| {
                        cmd::line(w, format_args!("delete {copy}"))
                    });
                    Err(lease_lost(r.id))
                }
                other => Err(b.unexpected("retry (delete)", other)),
            }
        })
    }

    /// `release <id> <pri> 0`: one command, so a kill cannot leave the job
    /// half-released; the attempt does not count it (`releases`).
    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.settle(delivery, |b, _, r| {
            match b.exchange1("release", Duration::ZERO, |w| {
                cmd::line(w, format_args!("release {} {} 0", r.id, r.pri))
            })? {
                Response::Released => Ok(()),
                Response::NotFound => Err(lease_lost(r.id)),
                Response::Buried(None) => Err(BrokerError::new(
                    ErrorKind::Transient,
                    format!("release: the server buried job {} (out of memory); `kick-job {}` makes it ready", r.id, r.id),
                )),
                other => Err(b.unexpected("release", other)),
            }
        })
    }

    /// The record (reason, attempt, original id, payload) is put into
    /// `<tube>.dead`, then the original deleted: a handle killed between
    /// them leaves both (the original comes back when its connection
    /// closes and runs again), never a job out of circulation. Only a job
    /// too big for any header (put by another client: ours keep
    /// [`HEADROOM`]) is buried in its tube, and the error says so.
    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        self.settle(delivery, |b, d, r| {
            let Some(record) = dead::encode(d.attempt(), r.id, reason, d.payload(), b.server_max) else {
                let why = format!(
                    "dead_letter: a {}-byte job leaves no room in max-job-size for a dead-letter header; job {} stays buried in tube {:?} (`kick-job {}` re-drives it)",
                    d.payload().len(), r.id, b.tube, r.id
                );
                return match b.exchange1("dead_letter (bury)", Duration::ZERO, |w| cmd::line(w, format_args!("bury {} {}", r.id, r.pri)))? {
                    Response::Buried(None) => Err(BrokerError::new(ErrorKind::Invalid, why)),
                    Response::NotFound => Err(lease_lost(r.id)),
                    other => Err(b.unexpected("dead_letter (bury)", other)),
                };
            };
            let (dead_tube, tube, pri, ttr) = (b.dead_tube.clone(), b.tube.clone(), b.config.priority, b.config.ttr);
            let replies = b.exchange("dead_letter (put)", 3, Duration::ZERO, |w| {
                cmd::line(w, format_args!("use {dead_tube}"));
                cmd::put(w, pri, 0, u64::from(ttr), &record);
                cmd::line(w, format_args!("use {tube}"));
            })?;
            let record_id = match &replies[..] {
                [Response::Using(_), Response::Inserted(id) | Response::Buried(Some(id)), Response::Using(_)] => *id,
                [_, Response::Error(e), Response::Using(_)] => return Err(server_error("dead_letter (put)", *e)),
                _ => {
                    b.conn = None;
                    return Err(BrokerError::new(ErrorKind::Corrupt, format!("dead_letter: unexpected replies {replies:?}")));
                }
            };
            match b.exchange1("dead_letter (delete)", Duration::ZERO, |w| cmd::line(w, format_args!("delete {}", r.id)))? {
                Response::Deleted => Ok(()),
                Response::NotFound => {
                    // The claim was lost (its TTR ran out): the original is
                    // back in circulation, so the record goes.
                    let _ = b.exchange1("dead_letter (delete the record)", Duration::ZERO, |w| {
                        cmd::line(w, format_args!("delete {record_id}"))
                    });
                    Err(lease_lost(r.id))
                }
                other => Err(b.unexpected("dead_letter (delete)", other)),
            }
        })
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        let r = self.receipt(delivery)?;
        match self.exchange1("touch", Duration::ZERO, |w| {
            cmd::line(w, format_args!("touch {}", r.id))
        })? {
            Response::Touched => Ok(()),
            Response::NotFound => Err(lease_lost(r.id)),
            other => Err(self.unexpected("touch", other)),
        }
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (tube, dead_tube) = (self.tube.clone(), self.dead_tube.clone());
        // Watch only the dead tube, reserve records (oldest first: same
        // priority, so by id), watch the tube again, release the records.
        let set_up = self.exchange("dead_letters (watch)", 2, Duration::ZERO, |w| {
            cmd::line(w, format_args!("watch {dead_tube}"));
            cmd::line(w, format_args!("ignore {tube}"));
        })?;
        if !matches!(set_up[..], [Response::Watching(_), Response::Watching(_)]) {
            self.conn = None;
            return Err(BrokerError::new(
                ErrorKind::Corrupt,
                format!("dead_letters: unexpected replies {set_up:?}"),
            ));
        }
        let mut records = Vec::new();
        let listing = (|| {
            while records.len() < limit {
                let n = (limit - records.len()).min(LIST_CHUNK);
                let replies = self.exchange("dead_letters (reserve)", n, Duration::ZERO, |w| {
                    for _ in 0..n {
                        cmd::line(w, format_args!("reserve-with-timeout 0"));
                    }
                })?;
                let before = records.len();
                for r in replies {
                    match r {
                        Response::Reserved { id, body } => records.push((id, body)),
                        Response::TimedOut | Response::DeadlineSoon => {}
                        other => return Err(self.unexpected("dead_letters (reserve)", other)),
                    }
                }
                if records.len() - before < n {
                    break;
                }
            }
            Ok(())
        })();
        let pri = self.config.priority;
        let restore = self.exchange(
            "dead_letters (restore)",
            2 + records.len(),
            Duration::ZERO,
            |w| {
                cmd::line(w, format_args!("watch {tube}"));
                cmd::line(w, format_args!("ignore {dead_tube}"));
                for (id, _) in &records {
                    cmd::line(w, format_args!("release {id} {pri} 0"));
                }
            },
        );
        listing?;
        restore?;
        Ok(records
            .into_iter()
            .map(|(id, body)| {
                let dl_id = DeliveryId::new(id.to_string());
                match dead::decode(&body) {
                    Some(rec) => DeadLetter::new(dl_id, rec.payload, rec.reason)
                        .with_attempt(rec.attempt)
                        .with_meta("job-id", rec.job_id.to_string())
                        .with_meta("tube", dead_tube.clone()),
                    None => DeadLetter::new(
                        dl_id,
                        body,
                        "(a job put into the dead tube directly: no reason recorded)",
                    )
                    .with_meta("tube", dead_tube.clone()),
                }
            })
            .collect())
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let not_found = |why: &str| {
            BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in tube: {why}"),
            )
        };
        let Ok(rid) = id.as_str().parse::<u64>() else {
            return Err(not_found("not a beanstalkd job id"));
        };
        match self.exchange1("redrive (stats-job)", Duration::ZERO, |w| {
            cmd::line(w, format_args!("stats-job {rid}"))
        })? {
            Response::Ok(yaml) => {
                let tube = yaml_field(&yaml, "tube").map(|t| t.trim_matches('"'));
                if tube != Some(self.dead_tube.as_str()) {
                    return Err(not_found(&format!(
                        "job {rid} is in tube {tube:?}, not {:?}",
                        self.dead_tube
                    )));
                }
            }
            Response::NotFound => return Err(not_found("no such job")),
            other => return Err(self.unexpected("redrive (stats-job)", other)),
        }
        // Claim the record exclusively, so two re-drives cannot both move it.
        let body = match self.exchange1("redrive (reserve-job)", Duration::ZERO, |w| {
            cmd::line(w, format_args!("reserve-job {rid}"))
        })? {
            Response::Reserved { body, .. } => body,
            Response::NotFound => return Err(not_found("taken by another client")),
            Response::Error(ServerError::UnknownCommand) => {
                return Err(BrokerError::new(
                    ErrorKind::Unsupported,
                    "redrive needs beanstalkd 1.12 or later (reserve-job)",
                ));
            }
            other => return Err(self.unexpected("redrive (reserve-job)", other)),
        };
        let payload = dead::decode(&body).map_or(body, |r| r.payload);
        let pri = self.config.priority;
        if let Err(e) = self.put("redrive (put)", &payload, pri, 0) {
            // Give the record back (best effort: closing the connection
            // would too).
            let _ = self.exchange1("redrive (release)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("release {rid} {pri} 0"))
            });
            return Err(e);
        }
        match self.exchange1("redrive (delete)", Duration::ZERO, |w| {
            cmd::line(w, format_args!("delete {rid}"))
        })? {
            Response::Deleted => Ok(()),
            other => Err(self.unexpected("redrive (delete)", other)),
        }
    }
}

#[cfg(test)]
mod tests;
