//! `RedisQueue`: the `Broker` implementation over one stream and its
//! consumer group, with reconnection.

use std::collections::HashSet;
use std::fmt;
use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_broker::{
    Broker, BrokerError, DeadLetter, Delivery, DeliveryId, ErrorKind, SettleError,
};
use redis::{ConnectionLike, RedisError, Value};

use crate::backoff::{Backoff, Rng};
use crate::conn::{Conn, Sent};
use crate::entry::{self, Job, Malformed};
use crate::options::Options;
use crate::scripts::{self, Script};

/// The keys of one queue.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) stream: String,
    pub(crate) delayed: String,
    pub(crate) dead: String,
    pub(crate) dead_index: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, queue: &str) -> Keys {
        // The braces are a cluster hash tag: a queue's keys share a slot.
        let k = |s: &str| format!("{prefix}:{{{queue}}}:{s}");
        Keys {
            stream: k("jobs"),
            delayed: k("delayed"),
            dead: k("dead"),
            dead_index: k("dead-index"),
        }
    }
}

/// A handle on one queue: a Redis stream read through a consumer group,
/// under a consumer name of its own. It implements [`Broker`]; open it with
/// [`Redis::queue`](crate::Redis::queue).
///
/// The connection is re-established on demand after it is lost, with
/// exponential backoff; the consumer name stays, so jobs held before the
/// loss can still be settled after it (when the server kept its data).
/// Acks that could not be confirmed are sent again after the reconnect;
/// claims whose other settles failed are taken back once idle for the
/// lease.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use prefork_broker::Broker;
///
/// let redis = prefork_redis::Redis::new("redis://127.0.0.1:6379/")?;
/// let mut q = redis.queue("emails")?;
/// q.publish(b"{\"to\":\"a@example.com\"}", Duration::ZERO)?;
/// for d in q.fetch(16, Duration::from_secs(1))? {
///     q.ack(d)?;
/// }
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
pub struct RedisQueue {
    name: String,
    keys: Keys,
    options: Options,
    consumer: String,
    client: redis::Client,
    url: String,
    conn: Option<Conn>,
    shas: Vec<String>,
    reload_scripts: bool,
    host: String,
    /// Acks to send (again) after a reconnect: deferred acks whose reply
    /// never came, and acks that failed for want of a connection.
    resend: Vec<String>,
    /// Receipts acked by a resend, so a caller that retries the ack with
    /// the handed-back delivery is told it is done, not that it was lost.
    acked_again: HashSet<String>,
    /// This consumer's own claims whose settle failed: claimed again by
    /// the next reclaim once idle for the lease.
    stale: HashSet<String>,
    backoff: Backoff,
    next_attempt: Option<Instant>,
    rng: Rng,
    nonce: u64,
    next_promote: Instant,
    next_reclaim: Instant,
    reclaim_cursor: String,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("url", &self.url)
            .field("queue", &self.name)
            .field("group", &self.options.group)
            .field("consumer", &self.consumer)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// An entry as read (id, fields, delivery count), or why it could not be.
type RawEntry = Result<(String, Vec<Value>, u32), Malformed>;

/// What a failed Redis call means for the connection.
fn classify(e: &RedisError) -> (ErrorKind, bool) {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    if matches!(e.kind(), K::AuthenticationFailed | K::InvalidClientConfig)
        || e.code() == Some("NOPERM")
    {
        return (ErrorKind::Other, true);
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
    {
        return (ErrorKind::Transient, true);
    }
    match e.kind() {
        K::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown) => {
            (ErrorKind::Transient, false)
        }
        K::Server(S::ReadOnly) => (ErrorKind::Transient, true),
        K::Server(_) if matches!(e.code(), Some("OOM" | "BUSY")) => (ErrorKind::Transient, false),
        K::Io => (ErrorKind::Transient, true),
        K::Parse | K::UnexpectedReturnType => (ErrorKind::Corrupt, true),
        _ => (ErrorKind::Other, false),
    }
}

fn is_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code) || e.to_string().contains(code)
}

fn lost(what: &str, d: &Delivery) -> BrokerError {
    BrokerError::new(
        ErrorKind::LeaseLost,
        format!(
            "{what} {}: this consumer no longer holds entry {}",
            d.id(),
            d.receipt()
        ),
    )
}

impl RedisQueue {
    pub(crate) fn open(
        client: redis::Client,
        url: String,
        name: &str,
        options: Options,
    ) -> Result<RedisQueue, BrokerError> {
        if name.is_empty()
            || name.len() > 200
            || name.contains(['{', '}'])
            || name.chars().any(char::is_control)
        {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "queue name {name:?}: want 1 to 200 characters, no braces or control characters"
                ),
            ));
        }
        let mut rng = Rng::new();
        let host = hostname();
        let consumer = match &options.consumer {
            Some(c) => c.clone(),
            None => format!("{host}:{}:{:08x}", std::process::id(), rng.next() as u32),
        };
        let now = Instant::now();
        let mut q = RedisQueue {
            name: name.to_owned(),
            keys: Keys::new(&options.prefix, name),
            backoff: Backoff::new(options.backoff.0, options.backoff.1),
            options,
            consumer,
            client,
            url,
            conn: None,
            shas: Vec::new(),
            reload_scripts: false,
            host,
            resend: Vec::new(),
            acked_again: HashSet::new(),
            stale: HashSet::new(),
            next_attempt: None,
            rng,
            nonce: 0,
            next_promote: now,
            next_reclaim: now,
            reclaim_cursor: "-".to_owned(),
        };
        q.connect()?;
        Ok(q)
    }

    /// This handle's consumer name in the group (`hostname:pid:random`
    /// unless [`Options::consumer`] set one).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The consumer group this handle reads through.
    pub fn group(&self) -> &str {
        &self.options.group
    }

    /// The stream holding the queue's ready jobs (`PREFIX:{queue}:jobs`).
    pub fn stream_key(&self) -> &str {
        &self.keys.stream
    }

    /// The server's URL with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the handle has a live connection right now (it reconnects on
    /// the next call otherwise).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Publishes many jobs in one round trip (pipelined `XADD`s, or
    /// delayed entries when `delay` is not zero). Same semantics as
    /// [`Broker::publish`] for each; on an error, some of them may have been
    /// added.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let mut q = prefork_redis::Redis::new("redis://127.0.0.1:6379/")?.queue("thumbs")?;
    /// q.publish_batch(&[b"img-1", b"img-2", b"img-3"], Duration::ZERO)?;
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    pub fn publish_batch(
        &mut self,
        payloads: &[&[u8]],
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let delay_us = delay_micros(delay)?;
        let members: Vec<Vec<u8>> = if delay_us > 0 {
            payloads
                .iter()
                .map(|p| {
                    let mut m = self.next_nonce().into_bytes();
                    m.extend_from_slice(b":1::");
                    m.extend_from_slice(p);
                    m
                })
                .collect()
        } else {
            Vec::new()
        };
        let (stream, delayed) = (self.keys.stream.clone(), self.keys.delayed.clone());
        let _: Vec<Value> = self.call("publish", |c, shas| {
            let mut pipe = redis::pipe();
            if delay_us == 0 {
                for p in payloads {
                    pipe.cmd("XADD").arg(&stream).arg("*").arg("p").arg(*p);
                }
            } else {
                for m in &members {
                    pipe.cmd("EVALSHA")
                        .arg(&shas[Script::Delay as usize])
                        .arg(1)
                        .arg(&delayed)
                        .arg(delay_us)
                        .arg(m.as_slice());
                }
            }
            pipe.query(c)
        })?;
        if delay_us > 0 {
            self.next_promote = self.next_promote.min(Instant::now() + delay);
        }
        Ok(())
    }

    /// Acks many deliveries in one round trip (one script call); returns
    /// those that could not be acked, each with its reason, or an empty
    /// `Vec`. Same semantics as [`Broker::ack`] for each.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use prefork_broker::Broker;
    ///
    /// let mut q = prefork_redis::Redis::new("redis://127.0.0.1:6379/")?.queue("thumbs")?;
    /// let batch = q.fetch(64, Duration::from_secs(1))?;
    /// // ... run them ...
    /// for failed in q.ack_batch(batch) {
    ///     eprintln!("not acked: {failed}");
    /// }
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    #[must_use = "the deliveries that were not acked are handed back"]
    pub fn ack_batch(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        if deliveries.is_empty() {
            return Vec::new();
        }
        // The caller's own ack supersedes one queued for after a reconnect.
        if !self.resend.is_empty() {
            let mine: HashSet<&str> = deliveries.iter().map(Delivery::receipt).collect();
            self.resend.retain(|r| !mine.contains(r.as_str()));
        }
        let mut args = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
        ];
        args.extend(deliveries.iter().map(|d| d.receipt().as_bytes().to_vec()));
        let keys = [self.keys.stream.clone()];
        let res = self.settle_call("ack", Script::Ack, &keys, &args);
        match res {
            Err(e) => {
                if e.is_retryable() && self.conn.is_none() {
                    // Redis is away: ack them after the reconnect as well
                    // (the caller may also try again with what it gets back).
                    self.resend
                        .extend(deliveries.iter().map(|d| d.receipt().to_owned()));
                } else {
                    self.stale
                        .extend(deliveries.iter().map(|d| d.receipt().to_owned()));
                }
                let mut out = Vec::with_capacity(deliveries.len());
                for d in deliveries {
                    out.push(SettleError::new(
                        d,
                        BrokerError::new(e.kind(), e.message().to_owned()),
                    ));
                }
                out
            }
            Ok(Value::Array(flags)) if flags.len() == deliveries.len() => deliveries
                .into_iter()
                .zip(flags)
                .filter(|(d, f)| {
                    let acked = entry::int(f) == Some(1) || self.acked_again.remove(d.receipt());
                    self.stale.remove(d.receipt());
                    !acked
                })
                .map(|(d, _)| {
                    let e = lost("ack", &d);
                    SettleError::new(d, e)
                })
                .collect(),
            Ok(other) => deliveries
                .into_iter()
                .map(|d| {
                    SettleError::new(
                        d,
                        BrokerError::new(
                            ErrorKind::Corrupt,
                            format!("ack: unexpected reply {other:?}"),
                        ),
                    )
                })
                .collect(),
        }
    }

    /// Sends one ack script call for `sent` without reading its reply (see
    /// [`Broker::ack_deferred`]); when it cannot be sent, queues the
    /// receipts for after the reconnect. Connects first when it may.
    fn send_acks(&mut self, sent: Sent) {
        if sent.is_empty() {
            return;
        }
        if self.conn.is_none() {
            let _ = self.connect(); // resends what was queued, on success
        }
        let Some(conn) = self.conn.as_mut() else {
            self.resend.extend(sent.into_iter().map(|(r, _)| r));
            return;
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.shas[Script::Ack as usize])
            .arg(1)
            .arg(&self.keys.stream)
            .arg(&self.options.group)
            .arg(&self.consumer);
        for (r, _) in &sent {
            cmd.arg(r);
        }
        if let Err(e) = conn.send_deferred(&cmd.get_packed_command(), sent) {
            let _ = self.error("deferred ack", &e);
        }
    }

    /// Settles the replies of deferred acks read so far: lost claims are
    /// logged, server errors queue the acks again.
    fn deferred_replies(&mut self, replies: Vec<(Sent, Value)>) {
        for (sent, v) in replies {
            match v {
                Value::Array(flags) if flags.len() == sent.len() => {
                    for ((receipt, again), f) in sent.into_iter().zip(flags) {
                        self.stale.remove(&receipt);
                        match (entry::int(&f) == Some(1), again) {
                            (true, true) => {
                                if self.acked_again.len() >= 4096 {
                                    self.acked_again.clear();
                                }
                                self.acked_again.insert(receipt);
                            }
                            (true, false) => {}
                            (false, true) => {
                                tracing::debug!(queue = %self.name, entry = %receipt, "ack sent again: already gone (acked before the connection was lost, or reclaimed)");
                            }
                            (false, false) => {
                                tracing::warn!(queue = %self.name, entry = %receipt, "deferred ack: claim lost before the ack; the job will run again");
                            }
                        }
                    }
                }
                other => {
                    if let Value::ServerError(e) = &other
                        && e.code() == "NOSCRIPT"
                    {
                        self.reload_scripts = true;
                    }
                    tracing::warn!(queue = %self.name, reply = ?other, count = sent.len(), "deferred ack refused; sending it again later");
                    self.resend.extend(sent.into_iter().map(|(r, _)| r));
                }
            }
        }
    }

    /// Handles the deferred replies the last command read ahead of its own.
    fn pump(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            let replies = c.take_read();
            if !replies.is_empty() {
                self.deferred_replies(replies);
            }
        }
    }

    // ----- connection ------------------------------------------------------

    fn error(&mut self, context: &str, e: &RedisError) -> BrokerError {
        let (kind, drop) = classify(e);
        if drop && let Some(conn) = self.conn.take() {
            tracing::warn!(url = %self.url, queue = %self.name, error = %e, "redis connection lost during {context}");
            let (read, unanswered) = conn.into_unanswered();
            self.deferred_replies(read);
            let again: Vec<String> = unanswered.into_iter().flatten().map(|(r, _)| r).collect();
            if !again.is_empty() {
                tracing::info!(queue = %self.name, count = again.len(), "acks whose reply never came will be sent again after the reconnect");
                self.resend.extend(again);
            }
            self.schedule_retry();
        }
        BrokerError::new(kind, format!("{context} on {}: {e}", self.url))
    }

    fn schedule_retry(&mut self) {
        let r = self.rng.next();
        self.next_attempt = Some(Instant::now() + self.backoff.failed(r));
    }

    /// Connects now unless the backoff says to wait.
    fn connect(&mut self) -> Result<(), BrokerError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if let Some(at) = self.next_attempt {
            let now = Instant::now();
            if now < at {
                return Err(BrokerError::new(
                    ErrorKind::Transient,
                    format!("{} unreachable; next attempt in {:?}", self.url, at - now),
                ));
            }
        }
        match self.try_connect() {
            Ok(conn) => {
                if self.next_attempt.is_some() {
                    tracing::info!(url = %self.url, queue = %self.name, consumer = %self.consumer, "redis reconnected");
                }
                self.conn = Some(conn);
                self.next_attempt = None;
                self.backoff.reset();
                if !self.resend.is_empty() {
                    let again = std::mem::take(&mut self.resend);
                    self.send_acks(again.into_iter().map(|r| (r, true)).collect());
                }
                Ok(())
            }
            Err(e) => {
                self.schedule_retry();
                tracing::warn!(url = %self.url, queue = %self.name, error = %e, "cannot connect to redis");
                let (kind, _) = classify(&e);
                let kind = if kind == ErrorKind::Corrupt {
                    ErrorKind::Transient
                } else {
                    kind
                };
                Err(BrokerError::new(
                    kind,
                    format!("connect to {}: {e}", self.url),
                ))
            }
        }
    }

    fn try_connect(&mut self) -> Result<Conn, RedisError> {
        let t = self.options.io_timeout;
        let mut conn = self.client.get_connection_with_timeout(t)?;
        conn.set_write_timeout(Some(t))?;
        conn.set_read_timeout(Some(t + self.options.block))?;
        self.shas = load_scripts(&mut conn)?;
        ensure_group(&mut conn, &self.keys.stream, &self.options.group)?;
        if let Some(idle) = self.options.reap_idle_consumers {
            let r: Result<Value, _> = redis::cmd("EVAL")
                .arg(scripts::REAP_CONSUMERS)
                .arg(1)
                .arg(&self.keys.stream)
                .arg(&self.options.group)
                .arg(idle.as_millis() as u64)
                .arg(100)
                .query(&mut conn);
            if let Err(e) = r {
                tracing::debug!(error = %e, "reaping idle consumers failed");
            }
        }
        Ok(Conn::new(conn))
    }

    /// Runs `f` on the connection, connecting first; reloads scripts after
    /// `NOSCRIPT` and recreates the group after `NOGROUP`, then runs it once
    /// more. Handles the deferred ack replies read on the way.
    fn call<T>(
        &mut self,
        context: &str,
        f: impl Fn(&mut Conn, &[String]) -> Result<T, RedisError>,
    ) -> Result<T, BrokerError> {
        let r = self.call_inner(context, f);
        self.pump();
        r
    }

    fn call_inner<T>(
        &mut self,
        context: &str,
        f: impl Fn(&mut Conn, &[String]) -> Result<T, RedisError>,
    ) -> Result<T, BrokerError> {
        self.connect()?;
        let conn = self.conn.as_mut().expect("connected");
        if self.reload_scripts {
            match load_scripts(conn) {
                Ok(shas) => {
                    self.shas = shas;
                    self.reload_scripts = false;
                }
                Err(e) => return Err(self.error(context, &e)),
            }
        }
        let conn = self.conn.as_mut().expect("connected");
        let first = f(conn, &self.shas);
        let e = match first {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let fixed = if is_code(&e, "NOSCRIPT") {
            load_scripts(conn).map(|shas| self.shas = shas)
        } else if is_code(&e, "NOGROUP") {
            ensure_group(conn, &self.keys.stream, &self.options.group)
        } else {
            return Err(self.error(context, &e));
        };
        match fixed.and_then(|()| f(self.conn.as_mut().expect("connected"), &self.shas)) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.error(context, &e)),
        }
    }

    /// A settling script call: one retry after reconnecting, when the
    /// connection was lost and the backoff allows an attempt at once.
    fn settle_call(
        &mut self,
        context: &str,
        script: Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<Value, BrokerError> {
        let run = |c: &mut Conn, shas: &[String]| evalsha(c, shas, script, keys, args);
        match self.call(context, run) {
            Err(e) if e.is_retryable() && self.conn.is_none() => {
                self.next_attempt = None; // one immediate attempt
                self.call(context, run)
            }
            other => other,
        }
    }

    /// A settle that did not reach Redis: the claim stays this consumer's,
    /// so it is marked stale (taken back by the next reclaim once idle for
    /// the lease, unless settled before) and the delivery handed back.
    fn failed_settle(&mut self, delivery: Delivery, e: BrokerError) -> SettleError {
        self.stale.insert(delivery.receipt().to_owned());
        SettleError::new(delivery, e)
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{:x}.{:x}", self.rng.next() & 0xffff_ffff, self.nonce)
    }

    // ----- fetching --------------------------------------------------------

    fn fetch_inner(&mut self, max: usize, deadline: Instant) -> Result<Vec<Delivery>, BrokerError> {
        let mut first = true;
        loop {
            let now = Instant::now();
            if now >= self.next_reclaim {
                let got = self.reclaim(max)?;
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            let promote = now >= self.next_promote;
            let remaining = deadline.saturating_duration_since(now);
            let block = if first {
                None
            } else {
                let until_timers = self
                    .next_promote
                    .min(self.next_reclaim)
                    .saturating_duration_since(now);
                Some(
                    remaining
                        .min(self.options.block)
                        .min(until_timers)
                        .max(Duration::from_millis(1)),
                )
            };
            let got = self.read(max, promote, block)?;
            if !got.is_empty() {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            first = false;
        }
    }

    /// One `XREADGROUP` (blocking when `block` is given), preceded in the
    /// same round trip by the promote script when `promote`.
    fn read(
        &mut self,
        max: usize,
        promote: bool,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let keys = self.keys.clone();
        let (group, consumer) = (self.options.group.clone(), self.consumer.clone());
        let limit = max.max(64);
        let replies: Vec<Value> = self.call("fetch", |c, shas| {
            let mut p = redis::pipe();
            if promote {
                p.cmd("EVALSHA")
                    .arg(&shas[Script::Promote as usize])
                    .arg(4)
                    .arg(&keys.stream)
                    .arg(&keys.delayed)
                    .arg(&keys.dead)
                    .arg(&keys.dead_index)
                    .arg(limit);
            }
            p.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(max);
            if let Some(b) = block {
                p.arg("BLOCK").arg(b.as_millis().max(1) as u64);
            }
            p.arg("STREAMS").arg(&keys.stream).arg(">");
            p.query(c)
        })?;
        let mut replies = replies.into_iter();
        if promote {
            let next = replies.next().as_ref().and_then(entry::int).unwrap_or(-1);
            let wait = match next {
                0 => Duration::ZERO,
                n if n > 0 => Duration::from_millis(n as u64).min(self.options.block),
                _ => self.options.block,
            };
            self.next_promote = Instant::now() + wait;
        }
        let mut jobs = Vec::new();
        if let Some(Value::Array(streams)) = replies.next() {
            for s in streams {
                let Value::Array(mut pair) = s else { continue };
                if pair.len() != 2 {
                    continue;
                }
                if let Value::Array(entries) = pair.swap_remove(1) {
                    for e in entries {
                        jobs.push(split_entry(e).map(|(id, fields)| (id, fields, 1)));
                    }
                }
            }
        }
        Ok(self.deliveries_from(jobs))
    }

    /// Claims entries other consumers held idle past the lease, and this
    /// consumer's own stale claims (settles that failed) once idle as long,
    /// at most `max`.
    fn reclaim(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let keys = [self.keys.stream.clone()];
        let mut args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            (self.options.lease.as_millis().max(1) as u64)
                .to_string()
                .into_bytes(),
            self.reclaim_cursor.clone().into_bytes(),
            max.to_string().into_bytes(),
        ];
        args.extend(self.stale.iter().map(|r| r.as_bytes().to_vec()));
        let reply = self.call("reclaim", |c, shas| {
            evalsha(c, shas, Script::Reclaim, &keys, &args)
        })?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::new(
                ErrorKind::Corrupt,
                format!("reclaim: unexpected reply {reply:?}"),
            ));
        };
        let mut items = items.into_iter();
        let cursor = items
            .next()
            .as_ref()
            .and_then(entry::text)
            .unwrap_or_else(|| "-".to_owned());
        let wrapped = cursor == "-";
        self.reclaim_cursor = cursor;
        if let Some(Value::Array(waiting)) = items.next() {
            let reclaimed = self.stale.len().saturating_sub(waiting.len());
            self.stale = waiting.iter().filter_map(entry::text).collect();
            if reclaimed > 0 {
                tracing::info!(queue = %self.name, consumer = %self.consumer, count = reclaimed, "took back own claims whose settle had failed");
            }
        }
        let jobs: Vec<_> = items.map(reclaimed_entry).collect();
        // Look again at once when the scan has not reached the end of the
        // pending list, otherwise after the interval.
        if wrapped || jobs.is_empty() {
            self.next_reclaim = Instant::now() + self.options.reclaim_interval();
        }
        if !jobs.is_empty() {
            tracing::info!(queue = %self.name, consumer = %self.consumer, count = jobs.len(), "reclaimed jobs idle past the lease");
        }
        Ok(self.deliveries_from(jobs))
    }

    /// Turns entries into deliveries; dead-letters malformed entries and
    /// poison jobs (delivered too often) on the way.
    fn deliveries_from(&mut self, raw: Vec<RawEntry>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let (id, fields, deliveries) = match r {
                Ok(x) => x,
                Err(m) => {
                    tracing::warn!(queue = %self.name, reason = %m.reason, "unreadable reply item skipped");
                    continue;
                }
            };
            match entry::decode(id, &fields) {
                Err(m) => {
                    tracing::warn!(queue = %self.name, entry = %m.entry, reason = %m.reason, "dead-lettering a malformed entry");
                    let (entry_id, dump, reason) = (m.entry.clone(), m.dump, m.reason);
                    if let Err(e) = self.dead_letter_entry(&entry_id, &entry_id, &dump, &reason, 1)
                    {
                        tracing::warn!(queue = %self.name, entry = %entry_id, error = %e, "could not dead-letter; it will be reclaimed after the lease");
                    }
                }
                Ok(job) => {
                    let attempt = job.attempt.saturating_add(deliveries.saturating_sub(1));
                    if let Some(max) = self.options.max_deliveries
                        && deliveries > max
                    {
                        let reason = format!(
                            "delivered {deliveries} times without being settled (its holders died or stalled past the lease); limit {max}"
                        );
                        tracing::warn!(queue = %self.name, job = %job.job, deliveries, "dead-lettering a poison job");
                        if let Err(e) = self.dead_letter_entry(
                            &job.entry,
                            &job.job,
                            &job.payload,
                            &reason,
                            attempt,
                        ) {
                            tracing::warn!(queue = %self.name, job = %job.job, error = %e, "could not dead-letter a poison job");
                        }
                        continue;
                    }
                    out.push(delivery(job, attempt, deliveries));
                }
            }
        }
        out
    }

    fn dead_letter_entry(
        &mut self,
        entry: &str,
        job: &str,
        payload: &[u8],
        reason: &str,
        attempt: u32,
    ) -> Result<bool, BrokerError> {
        let keys = [
            self.keys.stream.clone(),
            self.keys.dead.clone(),
            self.keys.dead_index.clone(),
        ];
        let args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            entry.as_bytes().to_vec(),
            job.as_bytes().to_vec(),
            payload.to_vec(),
            reason.as_bytes().to_vec(),
            attempt.to_string().into_bytes(),
        ];
        let v = self.settle_call("dead_letter", Script::Dead, &keys, &args)?;
        Ok(entry::int(&v) == Some(1))
    }

    fn requeue(
        &mut self,
        what: &str,
        d: &Delivery,
        delay: Duration,
        attempt: u32,
    ) -> Result<bool, BrokerError> {
        let delay_us = delay_micros(delay)?;
        let nonce = self.next_nonce();
        let keys = [self.keys.stream.clone(), self.keys.delayed.clone()];
        let args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            d.receipt().as_bytes().to_vec(),
            delay_us.to_string().into_bytes(),
            nonce.into_bytes(),
            d.payload().to_vec(),
            attempt.to_string().into_bytes(),
            d.id().as_str().as_bytes().to_vec(),
        ];
        let v = self.settle_call(what, Script::Requeue, &keys, &args)?;
        if delay_us > 0 {
            // Our own delayed job: look for it when it is due.
            let due = Instant::now() + delay;
            self.next_promote = self.next_promote.min(due);
        }
        Ok(entry::int(&v) == Some(1))
    }
}

fn delivery(job: Job, attempt: u32, deliveries: u32) -> Delivery {
    let entry = job.entry;
    Delivery::new(DeliveryId::new(job.job), job.payload)
        .with_attempt(attempt)
        .with_receipt(entry.clone())
        .with_meta("entry", entry)
        .with_meta("deliveries", deliveries.to_string())
}

/// `[id, [fields...], deliveries]` (a claimed entry) into its parts.
fn reclaimed_entry(item: Value) -> RawEntry {
    let Value::Array(mut v) = item else {
        return Err(Malformed {
            entry: String::new(),
            dump: Vec::new(),
            reason: "reclaim: an item that is not an entry".to_owned(),
        });
    };
    let count = v.get(2).and_then(entry::int).unwrap_or(1).max(1) as u32;
    v.truncate(2);
    split_entry(Value::Array(v)).map(|(id, fields)| (id, fields, count))
}

/// Whether `id` has the shape of a stream entry id (`ms-seq` or `ms`).
fn is_entry_id(id: &str) -> bool {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    digits(ms) && digits(seq)
}

/// `[id, [fields...]]` into its parts.
fn split_entry(e: Value) -> Result<(String, Vec<Value>), Malformed> {
    let bad = |why: &str| Malformed {
        entry: String::new(),
        dump: Vec::new(),
        reason: why.to_owned(),
    };
    let Value::Array(mut v) = e else {
        return Err(bad("an entry that is not an array"));
    };
    if v.len() != 2 {
        return Err(bad("an entry without id and fields"));
    }
    let fields = match v.pop() {
        Some(Value::Array(f)) => f,
        Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Some(Value::Nil) => Vec::new(),
        _ => return Err(bad("entry fields that are not a list")),
    };
    let id = v
        .pop()
        .as_ref()
        .and_then(entry::text)
        .ok_or_else(|| bad("an entry id that is not text"))?;
    Ok((id, fields))
}

fn delay_micros(delay: Duration) -> Result<u64, BrokerError> {
    // Scores are doubles: keep due times well inside 2^53 microseconds.
    const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    if delay > MAX {
        return Err(BrokerError::new(
            ErrorKind::Invalid,
            format!("delay {delay:?} is over 100 years"),
        ));
    }
    // Round up to the microsecond, never down.
    Ok(delay.as_nanos().div_ceil(1000) as u64)
}

fn evalsha(
    c: &mut impl ConnectionLike,
    shas: &[String],
    script: Script,
    keys: &[String],
    args: &[Vec<u8>],
) -> Result<Value, RedisError> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&shas[script as usize]).arg(keys.len());
    for k in keys {
        cmd.arg(k);
    }
    for a in args {
        cmd.arg(a.as_slice());
    }
    cmd.query(c)
}

fn load_scripts(c: &mut impl ConnectionLike) -> Result<Vec<String>, RedisError> {
    let mut p = redis::pipe();
    for s in scripts::ALL {
        p.cmd("SCRIPT").arg("LOAD").arg(s);
    }
    p.query(c)
}

fn ensure_group(c: &mut impl ConnectionLike, stream: &str, group: &str) -> Result<(), RedisError> {
    let r: Result<Value, RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(c);
    match r {
        Err(e) if !is_code(&e, "BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Broker for RedisQueue {
    fn queue(&self) -> &str {
        &self.name
    }

    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        if delay.is_zero() {
            let stream = self.keys.stream.clone();
            let _: Value = self.call("publish", |c, _| {
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("p")
                    .arg(payload)
                    .query(c)
            })?;
            return Ok(());
        }
        let delay_us = delay_micros(delay)?;
        let mut member = self.next_nonce().into_bytes();
        member.extend_from_slice(b":1::");
        member.extend_from_slice(payload);
        let keys = [self.keys.delayed.clone()];
        let args = vec![delay_us.to_string().into_bytes(), member];
        let _ = self.call("publish", |c, shas| {
            evalsha(c, shas, Script::Delay, &keys, &args)
        })?;
        self.next_promote = self.next_promote.min(Instant::now() + delay);
        Ok(())
    }

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.fetch_inner(max, deadline) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    // Wait for the next connection attempt (or the
                    // deadline): never a busy loop while Redis is away.
                    let wake = self
                        .next_attempt
                        .unwrap_or_else(|| Instant::now() + Duration::from_millis(50))
                        .min(deadline);
                    let now = Instant::now();
                    if wake > now {
                        sleep(wake - now);
                    }
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        match RedisQueue::ack_batch(self, vec![delivery]).pop() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// One script call for the whole batch (the inherent
    /// [`RedisQueue::ack_batch`]).
    fn ack_batch(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        RedisQueue::ack_batch(self, deliveries)
    }

    /// One pipeline for the whole batch (the inherent
    /// [`RedisQueue::publish_batch`]).
    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
        RedisQueue::publish_batch(self, payloads, delay)
    }

    /// Writes the ack script call at once and reads its reply ahead of the
    /// next command's on this connection. While Redis is unreachable the
    /// ack is queued and sent after the reconnect, as are acks whose reply
    /// never came; so this never fails.
    fn ack_deferred(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.send_acks(vec![(delivery.receipt().to_owned(), false)]);
        Ok(())
    }

    /// One ack script call for all of them, written at once, its reply
    /// read ahead of the next command's (as [`ack_deferred`]); never fails.
    ///
    /// [`ack_deferred`]: Broker::ack_deferred
    fn ack_batch_deferred(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        self.send_acks(
            deliveries
                .iter()
                .map(|d| (d.receipt().to_owned(), false))
                .collect(),
        );
        Vec::new()
    }

    fn flush(&mut self) -> Result<(), BrokerError> {
        let mut failed = None;
        for _ in 0..3 {
            self.connect()?; // sends the queued acks first
            let drained = self.conn.as_mut().map_or(Ok(()), Conn::drain);
            if let Err(e) = drained {
                // The connection went with the replies: what they were for
                // is queued again; reconnect once at once and resend it.
                let e = self.error("flush", &e);
                if !e.is_retryable() {
                    return Err(e);
                }
                self.next_attempt = None;
                failed = Some(e);
                continue;
            }
            self.pump();
            if self.resend.is_empty() {
                return Ok(());
            }
            if self.reload_scripts {
                let _: Value = self.call("flush", |c, _| redis::cmd("PING").query(c))?;
            }
            let again = std::mem::take(&mut self.resend);
            self.send_acks(again.into_iter().map(|r| (r, true)).collect());
        }
        Err(failed.unwrap_or_else(|| {
            BrokerError::new(
                ErrorKind::Transient,
                format!(
                    "flush: {} acks not confirmed by {}; they are sent again by the next call",
                    self.resend.len(),
                    self.url
                ),
            )
        }))
    }

    /// One script call: claims every entry pending to a consumer named
    /// `HOST:holder_pid:*` (this handle's host), and the given ids that such
    /// a consumer holds, then deletes those consumers once empty.
    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        const MOST: usize = 10_000;
        let keys = [self.keys.stream.clone()];
        let mut args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            format!("{}:{holder_pid}:", self.host).into_bytes(),
            MOST.to_string().into_bytes(),
        ];
        args.extend(
            ids.iter()
                .map(DeliveryId::as_str)
                .filter(|id| is_entry_id(id))
                .map(|id| id.as_bytes().to_vec()),
        );
        let reply = self.call("take_over", |c, shas| {
            evalsha(c, shas, Script::TakeOver, &keys, &args)
        })?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::new(
                ErrorKind::Corrupt,
                format!("take_over: unexpected reply {reply:?}"),
            ));
        };
        let jobs: Vec<RawEntry> = items.into_iter().map(reclaimed_entry).collect();
        if !jobs.is_empty() {
            tracing::info!(queue = %self.name, consumer = %self.consumer, holder_pid, count = jobs.len(), "took over the claims of a dead process");
        }
        Ok(self.deliveries_from(jobs))
    }

    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        let attempt = delivery.attempt().saturating_add(1);
        match self.requeue("retry", &delivery, delay, attempt) {
            Ok(true) => {
                self.stale.remove(delivery.receipt());
                Ok(())
            }
            Ok(false) => {
                let e = lost("retry", &delivery);
                Err(SettleError::new(delivery, e))
            }
            Err(e) => Err(self.failed_settle(delivery, e)),
        }
    }

    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let attempt = delivery.attempt();
        match self.requeue("release", &delivery, Duration::ZERO, attempt) {
            Ok(true) => {
                self.stale.remove(delivery.receipt());
                Ok(())
            }
            Ok(false) => {
                let e = lost("release", &delivery);
                Err(SettleError::new(delivery, e))
            }
            Err(e) => Err(self.failed_settle(delivery, e)),
        }
    }

    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        let r = self.dead_letter_entry(
            delivery.receipt(),
            delivery.id().as_str(),
            delivery.payload(),
            reason,
            delivery.attempt(),
        );
        match r {
            Ok(true) => {
                self.stale.remove(delivery.receipt());
                Ok(())
            }
            Ok(false) => {
                let e = lost("dead_letter", &delivery);
                Err(SettleError::new(delivery, e))
            }
            Err(e) => Err(self.failed_settle(delivery, e)),
        }
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        let keys = [self.keys.stream.clone()];
        let args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            delivery.receipt().as_bytes().to_vec(),
        ];
        let v = self.settle_call("touch", Script::Touch, &keys, &args)?;
        if entry::int(&v) == Some(1) {
            Ok(())
        } else {
            Err(lost("touch", delivery))
        }
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let dead = self.keys.dead.clone();
        let v: Value = self.call("dead_letters", |c, _| {
            redis::cmd("XRANGE")
                .arg(&dead)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query(c)
        })?;
        let Value::Array(entries) = v else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let Ok((id, fields)) = split_entry(e) else {
                continue;
            };
            let (mut job, mut payload, mut reason, mut attempt, mut at) =
                (None, Vec::new(), String::new(), 1, None);
            for pair in fields.chunks_exact(2) {
                let Some(value) = entry::bytes(&pair[1]) else {
                    continue;
                };
                match entry::bytes(&pair[0]) {
                    Some(b"j") => job = entry::text(&pair[1]),
                    Some(b"p") => payload = value.to_vec(),
                    Some(b"r") => reason = String::from_utf8_lossy(value).into_owned(),
                    Some(b"a") => {
                        attempt = entry::int(&pair[1]).unwrap_or(1).clamp(1, u32::MAX as i64) as u32
                    }
                    Some(b"t") => at = entry::text(&pair[1]),
                    _ => {}
                }
            }
            let mut d = DeadLetter::new(
                DeliveryId::new(job.unwrap_or_else(|| id.clone())),
                payload,
                reason,
            )
            .with_attempt(attempt)
            .with_meta("dead_entry", id);
            if let Some(t) = at {
                d = d.with_meta("dead_at_unix", t);
            }
            out.push(d);
        }
        Ok(out)
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let keys = [
            self.keys.stream.clone(),
            self.keys.dead.clone(),
            self.keys.dead_index.clone(),
        ];
        let args = vec![id.as_str().as_bytes().to_vec()];
        let v = self.call("redrive", |c, shas| {
            evalsha(c, shas, Script::Redrive, &keys, &args)
        })?;
        if entry::int(&v) == Some(1) {
            Ok(())
        } else {
            Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in queue {}", self.name),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let k = Keys::new("prefork", "mail");
        assert_eq!(k.stream, "prefork:{mail}:jobs");
        assert_eq!(k.delayed, "prefork:{mail}:delayed");
        assert_eq!(k.dead, "prefork:{mail}:dead");
        assert_eq!(k.dead_index, "prefork:{mail}:dead-index");
    }

    #[test]
    fn delays_round_up_and_are_bounded() {
        assert_eq!(delay_micros(Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(delay_micros(Duration::from_millis(3)).unwrap(), 3000);
        let e = delay_micros(Duration::from_secs(200 * 365 * 24 * 3600)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }

    #[test]
    fn entries_split_into_id_and_fields() {
        let e = Value::Array(vec![
            Value::BulkString(b"1-2".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"p".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]);
        let (id, f) = split_entry(e).unwrap();
        assert_eq!((id.as_str(), f.len()), ("1-2", 2));
        assert!(split_entry(Value::Int(3)).is_err());
    }
}
