//! [`RabbitMq`]: the handle on one queue, and its [`Broker`] implementation.
//!
//! Every claim is an unacked delivery of the handle's one channel, kept in
//! `held` by its delivery tag until it is settled. A consumer lives only
//! inside one [`Broker::fetch`] (consume with the prefetch set to the
//! fetch's `max`, take what comes, cancel, take what came before the
//! cancel's answer), so the handle never holds a job the caller was not
//! handed: a holder that dies returns only jobs it was running, which is
//! what makes RabbitMQ's delivery count an honest attempt count.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amiquip::{AmqpProperties, AmqpValue, ConsumerMessage, ConsumerOptions, FieldTable};
use crossbeam_channel::RecvTimeoutError;
use prefork_broker::{
    Broker, BrokerError, DeadLetter, Delivery, DeliveryId, ErrorKind, QueueStats, SettleError,
};
use tracing::warn;

use crate::session::{Session, classify, int_value, table};
use crate::{Config, DEAD_SUFFIX, DELAY_INFIX, MAX_QUEUE_NAME};

/// Header carrying the attempt number a copy (retry, release, dead letter)
/// was published with; absent means 1.
const ATTEMPT_HEADER: &str = "x-prefork-attempt";
/// Header carrying a dead letter's reason.
const REASON_HEADER: &str = "x-prefork-reason";
/// The header a quorum queue adds: how many times the message was returned
/// to the queue (its holder's channel closed, or a nack with requeue).
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// The longest reason kept, in bytes (headers must fit one AMQP frame).
const MAX_REASON: usize = 16 << 10;
/// How long a delay queue outlives its last use.
const DELAY_QUEUE_EXPIRY_MS: u64 = 60_000;
/// How often a handle that keeps using a delay queue records it again in
/// `<queue>.delays` (see [`RabbitMq::record_delay`]).
const DELAY_RECORD_REFRESH: Duration = Duration::from_secs(10);
/// The suffix of the queue recording which delay queues are in use.
const DELAYS_SUFFIX: &str = ".delays";
/// The most deliveries [`Broker::take_over`] keeps aside while looking for
/// a dead holder's ones.
const TAKE_OVER_SPARE: usize = 1024;

/// A handle on one RabbitMQ queue: the [`Broker`] of this crate. Open it
/// with [`Config::open`], after the fork, in the process that uses it.
///
/// The queue is a durable quorum queue; its dead letters are kept in the
/// classic durable queue `<queue>.dead` (also the queue's dead-letter
/// target for messages RabbitMQ itself drops); delayed jobs wait in
/// `<queue>.delay.<ms>` queues whose message TTL dead-letters them into the
/// queue, each recorded in `<queue>.delays` while in use, so that
/// [`Broker::stats`] can find them. The handle reconnects on the next call after a connection error;
/// deliveries of the lost connection then settle as
/// [`ErrorKind::LeaseLost`] (RabbitMQ requeued them).
pub struct RabbitMq {
    config: Config,
    queue: String,
    dead: String,
    session: Option<Session>,
    /// Counts sessions; receipts carry it, so a delivery of a lost
    /// connection is never settled on a new one.
    generation: u64,
    /// Unsettled deliveries of the current session, by delivery tag.
    held: HashMap<u64, amiquip::Delivery>,
    /// Deliveries claimed but not handed out yet (what a take-over found
    /// besides the jobs it looked for), handed out first by `fetch`.
    pending: VecDeque<Delivery>,
    /// The prefetch count set on the channel (0: none set yet).
    prefetch: u16,
    /// Counts published messages, for their ids.
    published: u64,
    /// The queue recording the delay queues in use (`<queue>.delays`).
    delays: String,
    /// When this handle last recorded each delay queue (by its ms).
    delays_recorded: HashMap<u64, Instant>,
    /// The process that opened the handle: a forked child that drops an
    /// inherited copy must not touch the connection (its close would wait
    /// forever for an I/O thread the child does not have).
    owner: u32,
}

impl std::fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMq")
            .field("server", &self.config.redacted_url())
            .field("queue", &self.queue)
            .field("connected", &self.session.is_some())
            .field("generation", &self.generation)
            .field("held", &self.held.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl RabbitMq {
    pub(crate) fn open(config: Config, queue: &str) -> Result<RabbitMq, BrokerError> {
        if queue.is_empty() || queue.len() > MAX_QUEUE_NAME || queue.starts_with("amq.") {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "queue name {queue:?}: must be 1 to {MAX_QUEUE_NAME} bytes and not start with \"amq.\""
                ),
            ));
        }
        if queue.chars().any(char::is_control) {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!("queue name {queue:?}: control characters"),
            ));
        }
        let mut handle = RabbitMq {
            config,
            queue: queue.to_owned(),
            dead: format!("{queue}{DEAD_SUFFIX}"),
            delays: format!("{queue}{DELAYS_SUFFIX}"),
            delays_recorded: HashMap::new(),
            session: None,
            generation: 0,
            held: HashMap::new(),
            pending: VecDeque::new(),
            prefetch: 0,
            published: 0,
            owner: std::process::id(),
        };
        handle.session()?;
        Ok(handle)
    }

    /// The name of the queue keeping this queue's dead letters.
    pub fn dead_queue(&self) -> &str {
        &self.dead
    }

    /// Gives back the deliveries claimed but not handed out yet (as
    /// [`Broker::release`] does: attempt unchanged) and closes the
    /// connection. Dropping the handle does the same, ignoring errors.
    ///
    /// # Errors
    ///
    /// The first error; jobs not given back return to the queue anyway
    /// when the connection closes (counted as one more delivery).
    pub fn close(mut self) -> Result<(), BrokerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), BrokerError> {
        if std::process::id() != self.owner {
            // Not ours: leave the parent's connection alone.
            std::mem::forget(self.session.take());
            std::mem::forget(std::mem::take(&mut self.held));
            std::mem::forget(std::mem::take(&mut self.pending));
            return Ok(());
        }
        let mut first = None;
        while let Some(d) = self.pending.pop_front() {
            if let Err(e) = self.release(d) {
                first.get_or_insert(e.into_error());
            }
        }
        if let Some(s) = self.session.take() {
            let Session { channel, conn, .. } = s;
            if let Err(e) = channel.close() {
                first.get_or_insert(classify("close the channel", e));
            }
            if let Err(e) = conn.close() {
                first.get_or_insert(classify("close the connection", e));
            }
        }
        self.held.clear();
        first.map_or(Ok(()), Err)
    }

    /// The live session, connecting (and declaring the queues) first when
    /// there is none.
    fn session(&mut self) -> Result<&mut Session, BrokerError> {
        if self.session.is_none() {
            let s = Session::open(&self.config)?;
            s.declare(
                &self.queue,
                table([
                    ("x-queue-type", AmqpValue::LongString("quorum".into())),
                    (
                        "x-dead-letter-exchange",
                        AmqpValue::LongString(String::new()),
                    ),
                    (
                        "x-dead-letter-routing-key",
                        AmqpValue::LongString(self.dead.clone()),
                    ),
                ]),
            )?;
            s.declare(&self.dead, FieldTable::new())?;
            s.declare(&self.delays, FieldTable::new())?;
            self.generation += 1;
            self.held.clear();
            self.pending.clear();
            self.prefetch = 0;
            self.session = Some(s);
        }
        Ok(self.session.as_mut().expect("just connected"))
    }

    /// Forgets the session after an error that may have closed it; its
    /// unacked deliveries are requeued by RabbitMQ.
    fn lose_session(&mut self) {
        if let Some(s) = self.session.take() {
            // Closing a broken connection fails fast; nothing to report.
            let Session { channel, conn, .. } = s;
            drop(channel);
            drop(conn);
        }
        self.held.clear();
        self.pending.clear();
        // The next session's channel has no basic.qos yet.
        self.prefetch = 0;
    }

    /// Runs `op` on the session; an amiquip error drops the session.
    fn with_session<T>(
        &mut self,
        context: &str,
        op: impl FnOnce(&mut Session) -> Result<T, amiquip::Error>,
    ) -> Result<T, BrokerError> {
        let s = self.session()?;
        match op(s) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.lose_session();
                Err(classify(context, e))
            }
        }
    }

    /// A fresh message id: pid, time and a counter.
    fn new_id(&mut self) -> String {
        self.published += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!(
            "{:x}-{:x}-{:x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff_ffff,
            self.published
        )
    }

    /// Publishes `payloads` (each with its message id) to the queue, or to
    /// the delay queue for `delay`, and waits for the confirms.
    fn publish_all(
        &mut self,
        payloads: &[(&[u8], String)],
        attempt: u32,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let (target, record) = if delay.is_zero() {
            (self.queue.clone(), None)
        } else {
            let ms = delay_ms(delay)?;
            let name = format!("{}{DELAY_INFIX}{ms}", self.queue);
            let args = delay_args(ms, &self.queue);
            // Declared before every delayed publish: that also restarts its
            // expiry, so it never expires with jobs in it.
            self.session()?
                .declare(&name, args)
                .inspect_err(|_| self.lose_session())?;
            let due = self
                .delays_recorded
                .get(&ms)
                .is_none_or(|at| at.elapsed() >= DELAY_RECORD_REFRESH);
            (name, due.then_some(ms))
        };
        let io_timeout = self.config.io_timeout;
        let delays = self.delays.clone();
        let s = self.session()?;
        let mut result = Ok(());
        for (p, id) in payloads {
            result = s.publish(&target, p, properties(id, attempt, None));
            if result.is_err() {
                break;
            }
        }
        if let (Ok(()), Some(ms)) = (&result, record) {
            result = s.publish(&delays, ms.to_string().as_bytes(), delay_record(ms));
        }
        let result = result.and_then(|()| s.confirm_all(io_timeout));
        match (&result, record) {
            (Err(_), _) => self.lose_session(),
            (Ok(()), Some(ms)) => {
                self.delays_recorded.insert(ms, Instant::now());
            }
            (Ok(()), None) => {}
        }
        result
    }

    /// How many jobs wait in the delay queues: the delays recorded in
    /// `<queue>.delays` (read on a channel of its own whose close puts the
    /// records back), then a passive `queue.declare` of each one's delay
    /// queue (one that expired since answers 404, which closes the
    /// channel: it counts zero and the next gets a new channel).
    fn delayed_count(&mut self) -> Result<u64, BrokerError> {
        let (queue, delays) = (self.queue.clone(), self.delays.clone());
        self.session()?;
        let conn = &mut self.session.as_mut().expect("connected").conn;
        let result: Result<u64, BrokerError> = (|| {
            let open = |conn: &mut amiquip::Connection| {
                conn.open_channel(None)
                    .map_err(|e| classify("open a channel to count delayed jobs", e))
            };
            let ch = open(conn)?;
            let mut in_use = std::collections::BTreeSet::new();
            let read: Result<(), BrokerError> = (|| {
                while let Some(g) = ch
                    .basic_get(delays.as_str(), false)
                    .map_err(|e| classify("basic.get on the delay records", e))?
                {
                    if let Some(ms) = std::str::from_utf8(&g.delivery.body)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        in_use.insert(ms);
                    }
                }
                Ok(())
            })();
            let closed = ch
                .close()
                .map_err(|e| classify("close the delay-record channel", e));
            read.and(closed)?;
            let mut total = 0;
            let mut ch = None;
            for ms in in_use {
                let c = match ch.take() {
                    Some(c) => c,
                    None => open(conn)?,
                };
                match c.queue_declare_passive(format!("{queue}{DELAY_INFIX}{ms}")) {
                    Ok(q) => {
                        total += u64::from(q.declared_message_count().unwrap_or(0));
                        ch = Some(c);
                    }
                    Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {}
                    Err(e) => return Err(classify("queue.declare (passive) of a delay queue", e)),
                }
            }
            if let Some(c) = ch {
                c.close()
                    .map_err(|e| classify("close the delay-count channel", e))?;
            }
            Ok(total)
        })();
        if result.is_err() {
            self.lose_session();
        }
        result
    }

    /// The delivery tag of `d` when this handle still holds it.
    fn live_tag(&self, d: &Delivery) -> Option<u64> {
        let (generation, tag) = d.receipt().split_once(':')?;
        let (generation, tag) = (generation.parse::<u64>().ok()?, tag.parse::<u64>().ok()?);
        (generation == self.generation && self.session.is_some() && self.held.contains_key(&tag))
            .then_some(tag)
    }

    /// Waits until the server has processed every frame sent so far on the
    /// channel: amiquip hands frames to its I/O thread, so a returned
    /// `basic_ack` is not yet on the wire, and a kill a moment later would
    /// lose it; the answer to a later synchronous method (a `basic.qos`
    /// repeating the current prefetch, which only affects new consumers)
    /// proves it was read.
    fn sync(&mut self) -> Result<(), BrokerError> {
        let prefetch = self.prefetch;
        match self.session.as_ref() {
            Some(s) => {
                if let Err(e) = s.channel.qos(0, prefetch, false) {
                    self.lose_session();
                    return Err(BrokerError::new(
                        ErrorKind::LeaseLost,
                        format!(
                            "confirming acks: {e}; the channel closed, so RabbitMQ requeued what it held"
                        ),
                    ));
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Acks the held delivery `tag` and, with `sync`, waits until the
    /// server has read the ack.
    fn ack_tag(&mut self, tag: u64, sync: bool) -> Result<(), BrokerError> {
        let amq = self.held.remove(&tag).expect("checked by live_tag");
        let channel = &self.session.as_ref().expect("checked by live_tag").channel;
        if let Err(e) = amq.ack(channel) {
            self.lose_session();
            return Err(BrokerError::new(
                ErrorKind::LeaseLost,
                format!("ack: {e}; the channel closed, so RabbitMQ has requeued the job"),
            ));
        }
        if sync { self.sync() } else { Ok(()) }
    }

    /// Publishes a copy of `d` to `target` (the queue, a delay queue or the
    /// dead-letter queue), waits for its confirm, then acks `d`: a kill in
    /// between leaves the job twice, never nowhere.
    fn settle_by_copy(
        &mut self,
        d: Delivery,
        delay: Duration,
        attempt: u32,
        reason: Option<&str>,
    ) -> Result<(), SettleError> {
        let Some(tag) = self.live_tag(&d) else {
            return Err(lost(d));
        };
        let id = d.id().as_str().to_owned();
        let published = match reason {
            None => self.publish_all(&[(d.payload(), id)], attempt, delay),
            Some(reason) => {
                let io_timeout = self.config.io_timeout;
                let dead = self.dead.clone();
                let props = properties(&id, attempt, Some(reason));
                self.session()
                    .and_then(|s| {
                        s.publish(&dead, d.payload(), props)?;
                        s.confirm_all(io_timeout)
                    })
                    .inspect_err(|_| self.lose_session())
            }
        };
        if let Err(e) = published {
            // The session is gone, and with it the claim: RabbitMQ requeued
            // the original (and the copy may have been stored too).
            let why = format!("{e}; RabbitMQ has requeued the job");
            return Err(SettleError::new(
                d,
                BrokerError::new(ErrorKind::LeaseLost, why).with_source(e),
            ));
        }
        self.ack_tag(tag, true).map_err(|e| SettleError::new(d, e))
    }

    /// Turns a message of the queue into a [`Delivery`] this handle holds.
    fn claim(&mut self, mut amq: amiquip::Delivery) -> Delivery {
        let tag = amq.delivery_tag();
        let headers = amq.properties.headers().as_ref();
        let header = |k: &str| headers.and_then(|h| h.get(k)).and_then(int_value);
        let base = header(ATTEMPT_HEADER)
            .unwrap_or(1)
            .clamp(1, i64::from(u32::MAX));
        let returned = header(DELIVERY_COUNT_HEADER).unwrap_or(0).max(0);
        let attempt = u32::try_from(base.saturating_add(returned)).unwrap_or(u32::MAX);
        let id = amq
            .properties
            .message_id()
            .clone()
            .unwrap_or_else(|| format!("{}-{tag}", self.generation));
        let payload = std::mem::take(&mut amq.body);
        let redelivered = if amq.redelivered { "true" } else { "false" };
        self.held.insert(tag, amq);
        Delivery::new(DeliveryId::new(id), payload)
            .with_receipt(format!("{}:{tag}", self.generation))
            .with_attempt(attempt)
            .with_meta("redelivered", redelivered)
    }

    /// Claims up to `max` messages from the broker (not from `pending`).
    fn fetch_from_broker(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let queue = self.queue.clone();
        let got = if timeout.is_zero() {
            // No wait: basic.get is definitive where a consumer might not
            // have been pushed a ready message yet.
            self.with_session("basic.get", |s| {
                let mut got = Vec::new();
                while got.len() < max {
                    match s.channel.basic_get(queue.as_str(), false)? {
                        Some(g) => got.push(g.delivery),
                        None => break,
                    }
                }
                Ok(got)
            })?
        } else {
            let prefetch = u16::try_from(max).unwrap_or(u16::MAX);
            // Connect first: a new session starts with no prefetch set
            // (`self.prefetch` 0), whatever the lost one had.
            self.session()?;
            if self.prefetch != prefetch {
                self.with_session("basic.qos", |s| s.channel.qos(0, prefetch, false))?;
                self.prefetch = prefetch;
            }
            let io_timeout = self.config.io_timeout;
            let s = self.session()?;
            match consume_once(s, &queue, max, timeout, io_timeout) {
                Ok(got) => got,
                Err(e) => {
                    self.lose_session();
                    return Err(e);
                }
            }
        };
        Ok(got.into_iter().map(|amq| self.claim(amq)).collect())
    }

    /// Lists the dead letters (`Scan::List`), or re-drives or deletes one,
    /// through a channel of its own whose close puts back every message it
    /// got and did not ack.
    fn scan_dead(&mut self, limit: usize, scan: Scan<'_>) -> Result<Vec<DeadLetter>, BrokerError> {
        let dead = self.dead.clone();
        let queue = self.queue.clone();
        let io_timeout = self.config.io_timeout;
        self.session()?;
        let s = self.session.as_mut().expect("connected");
        let channel = s
            .conn
            .open_channel(None)
            .map_err(|e| classify("open a channel to read dead letters", e));
        let ch = match channel {
            Ok(ch) => ch,
            Err(e) => {
                self.lose_session();
                return Err(e);
            }
        };
        let mut out = Vec::new();
        let mut found = false;
        let result: Result<(), BrokerError> = (|| {
            while out.len() < limit {
                let Some(g) = ch
                    .basic_get(dead.as_str(), false)
                    .map_err(|e| classify("basic.get on the dead letters", e))?
                else {
                    break;
                };
                let amq = g.delivery;
                let letter = dead_letter_of(&amq);
                match scan {
                    Scan::List => out.push(letter),
                    Scan::Redrive(want) | Scan::Delete(want) if letter.id() == want => {
                        if let Scan::Redrive(_) = scan {
                            s.publish(&queue, &amq.body, properties(want.as_str(), 1, None))?;
                            s.confirm_all(io_timeout)?;
                        }
                        amq.ack(&ch)
                            .map_err(|e| classify("ack the dead letter", e))?;
                        found = true;
                        break;
                    }
                    Scan::Redrive(_) | Scan::Delete(_) => {}
                }
            }
            Ok(())
        })();
        // Closing the scan channel requeues what it got, in order.
        let closed = ch
            .close()
            .map_err(|e| classify("close the dead-letter channel", e));
        if let Err(e) = result.and(closed) {
            self.lose_session();
            return Err(e);
        }
        if let Scan::Redrive(want) | Scan::Delete(want) = scan
            && !found
        {
            return Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {want} in {dead:?}"),
            ));
        }
        Ok(out)
    }

    /// The body of [`Broker::stats`]: a passive `queue.declare` of the
    /// queue and of `<queue>.dead`, whose `declare-ok` carries each one's
    /// count of ready messages.
    fn queue_stats(&mut self) -> Result<QueueStats, BrokerError> {
        let (queue, dead) = (self.queue.clone(), self.dead.clone());
        let counts = self.with_session("queue.declare (passive)", |s| {
            let ready = s.channel.queue_declare_passive(queue.as_str())?;
            let dead = s.channel.queue_declare_passive(dead.as_str())?;
            Ok((
                ready.declared_message_count(),
                dead.declared_message_count(),
            ))
        })?;
        let delayed = self.delayed_count()?;
        match counts {
            (Some(ready), Some(dead)) => {
                Ok(QueueStats::new(ready.into(), dead.into()).with_delayed(delayed))
            }
            _ => Err(BrokerError::new(
                ErrorKind::Corrupt,
                "queue.declare-ok without a message count",
            )),
        }
    }
}

/// What [`RabbitMq::scan_dead`] does with the dead letters it reads.
#[derive(Debug, Clone, Copy)]
enum Scan<'a> {
    /// Lists them.
    List,
    /// Re-drives the one with this id into the queue.
    Redrive(&'a DeliveryId),
    /// Deletes the one with this id.
    Delete(&'a DeliveryId),
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!(queue = %self.queue, error = %e, "closing the RabbitMQ handle");
        }
    }
}

/// One consumer's life: consume with the prefetch already set to `max`,
/// wait up to `timeout` for the first message, take those already here,
/// cancel, and take what came before the cancel was answered (at most
/// `max` in all: the prefetch allows no more unacked).
fn consume_once(
    s: &Session,
    queue: &str,
    max: usize,
    timeout: Duration,
    io_timeout: Duration,
) -> Result<Vec<amiquip::Delivery>, BrokerError> {
    let options = ConsumerOptions {
        no_ack: false,
        ..ConsumerOptions::default()
    };
    let consumer = s
        .channel
        .basic_consume(queue, options)
        .map_err(|e| classify("basic.consume", e))?;
    let rx = consumer.receiver();
    let mut got = Vec::new();
    let closed = |m: ConsumerMessage| {
        BrokerError::new(
            ErrorKind::Transient,
            format!("the consumer of {queue:?} ended: {m:?}"),
        )
    };
    match rx.recv_timeout(timeout) {
        Ok(ConsumerMessage::Delivery(d)) => got.push(d),
        Ok(other) => return Err(closed(other)),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => {
            return Err(BrokerError::new(
                ErrorKind::Transient,
                "the connection closed",
            ));
        }
    }
    while got.len() < max {
        match rx.try_recv() {
            Ok(ConsumerMessage::Delivery(d)) => got.push(d),
            Ok(other) => return Err(closed(other)),
            Err(_) => break,
        }
    }
    consumer.cancel().map_err(|e| classify("basic.cancel", e))?;
    let deadline = Instant::now() + io_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ConsumerMessage::Delivery(d)) => got.push(d),
            Ok(ConsumerMessage::ClientCancelled) => break,
            Ok(other) => return Err(closed(other)),
            Err(_) => {
                return Err(BrokerError::new(
                    ErrorKind::Transient,
                    format!("basic.cancel not answered within {io_timeout:?}"),
                ));
            }
        }
    }
    debug_assert!(got.len() <= max, "prefetch exceeded");
    Ok(got)
}

/// The properties of a message we publish: its id, the attempt (left out
/// when 1), the dead-letter reason.
fn properties(id: &str, attempt: u32, reason: Option<&str>) -> AmqpProperties {
    let mut headers = FieldTable::new();
    if attempt > 1 {
        headers.insert(
            ATTEMPT_HEADER.into(),
            AmqpValue::LongLongInt(i64::from(attempt)),
        );
    }
    if let Some(r) = reason {
        let mut end = r.len().min(MAX_REASON);
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        headers.insert(
            REASON_HEADER.into(),
            AmqpValue::LongString(r[..end].to_owned()),
        );
    }
    let props = AmqpProperties::default().with_message_id(id.to_owned());
    if headers.is_empty() {
        props
    } else {
        props.with_headers(headers)
    }
}

fn dead_letter_of(amq: &amiquip::Delivery) -> DeadLetter {
    let headers = amq.properties.headers().as_ref();
    let reason = match headers.and_then(|h| h.get(REASON_HEADER)) {
        Some(AmqpValue::LongString(s)) => s.clone(),
        // Dropped by RabbitMQ itself (through the queue's dead-letter
        // target), not by a handle.
        _ => "dead-lettered by RabbitMQ (see its x-death header)".to_owned(),
    };
    let attempt = headers
        .and_then(|h| h.get(ATTEMPT_HEADER))
        .and_then(int_value)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(1);
    let id = amq
        .properties
        .message_id()
        .clone()
        .unwrap_or_else(|| format!("dead-{}", amq.delivery_tag()));
    DeadLetter::new(DeliveryId::new(id), amq.body.clone(), reason)
        .with_attempt(attempt)
        .with_meta(
            "redelivered",
            if amq.redelivered { "true" } else { "false" },
        )
}

/// The properties of a record in `<queue>.delays` saying the delay queue
/// of `ms` is in use: it expires when that queue can hold no job recorded
/// by it any more. A handle records a queue again at least every
/// [`DELAY_RECORD_REFRESH`] while it publishes there, and the queue lives
/// `ms` + [`DELAY_QUEUE_EXPIRY_MS`] after its last publish, its jobs `ms`:
/// so the record outlives every job of the queue.
fn delay_record(ms: u64) -> AmqpProperties {
    let ttl = ms + DELAY_QUEUE_EXPIRY_MS + DELAY_RECORD_REFRESH.as_millis() as u64;
    AmqpProperties::default().with_expiration(ttl.to_string())
}

/// The arguments of a delay queue: messages expire after `ms` into the
/// default exchange with the queue's name as routing key, i.e. into the
/// queue; the delay queue itself goes when unused for a minute more.
fn delay_args(ms: u64, queue: &str) -> FieldTable {
    table([
        ("x-message-ttl", AmqpValue::LongLongInt(ms as i64)),
        (
            "x-expires",
            AmqpValue::LongLongInt((ms + DELAY_QUEUE_EXPIRY_MS) as i64),
        ),
        (
            "x-dead-letter-exchange",
            AmqpValue::LongString(String::new()),
        ),
        (
            "x-dead-letter-routing-key",
            AmqpValue::LongString(queue.to_owned()),
        ),
    ])
}

/// A delay in milliseconds, rounded up to two significant digits (so a
/// queue's retries share a bounded number of delay queues), never down.
fn delay_ms(delay: Duration) -> Result<u64, BrokerError> {
    let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let mut step = 1;
    while ms / step >= 100 {
        step *= 10;
    }
    let ms = ms.div_ceil(step) * step;
    if ms > u64::from(u32::MAX) {
        return Err(BrokerError::new(
            ErrorKind::Invalid,
            format!("delay {delay:?} is over RabbitMQ's longest message TTL (about 49 days)"),
        ));
    }
    Ok(ms)
}

fn lost(d: Delivery) -> SettleError {
    SettleError::new(
        d,
        BrokerError::new(
            ErrorKind::LeaseLost,
            "this handle no longer holds the delivery (its channel closed, so RabbitMQ requeued it)",
        ),
    )
}

impl Broker for RabbitMq {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        let id = self.new_id();
        self.publish_all(&[(payload, id)], 1, delay)
    }

    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let with_ids: Vec<(&[u8], String)> = payloads.iter().map(|p| (*p, self.new_id())).collect();
        self.publish_all(&with_ids, 1, delay)
    }

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if !self.pending.is_empty() {
            let n = max.min(self.pending.len());
            return Ok(self.pending.drain(..n).collect());
        }
        self.fetch_from_broker(max, timeout)
    }

    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let Some(tag) = self.live_tag(&delivery) else {
            return Err(lost(delivery));
        };
        self.ack_tag(tag, true)
            .map_err(|e| SettleError::new(delivery, e))
    }

    /// The acks, then one round trip that proves the server read them all.
    fn ack_batch(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        let mut failed = Vec::new();
        let mut acked = Vec::new();
        for d in deliveries {
            match self.live_tag(&d) {
                None => failed.push(lost(d)),
                Some(tag) => match self.ack_tag(tag, false) {
                    Ok(()) => acked.push(d),
                    Err(e) => failed.push(SettleError::new(d, e)),
                },
            }
        }
        if !acked.is_empty()
            && let Err(e) = self.sync()
        {
            let why = e.message().to_owned();
            failed.extend(
                acked.into_iter().map(|d| {
                    SettleError::new(d, BrokerError::new(ErrorKind::LeaseLost, why.clone()))
                }),
            );
        }
        failed
    }

    /// As [`ack`](Broker::ack): the ack is only known to be sent once the
    /// server answered a later call (see the README), so there is nothing
    /// cheaper to defer to.
    fn ack_deferred(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.ack(delivery)
    }

    /// As [`ack_batch`](Broker::ack_batch): one round trip for the batch.
    fn ack_batch_deferred(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        self.ack_batch(deliveries)
    }

    fn flush(&mut self) -> Result<(), BrokerError> {
        self.sync()
    }

    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        let attempt = delivery.attempt().saturating_add(1);
        self.settle_by_copy(delivery, delay, attempt, None)
    }

    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let attempt = delivery.attempt();
        self.settle_by_copy(delivery, Duration::ZERO, attempt, None)
    }

    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        let attempt = delivery.attempt();
        self.settle_by_copy(delivery, Duration::ZERO, attempt, Some(reason))
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        match self.live_tag(delivery) {
            Some(_) => Ok(()),
            None => Err(lost(delivery.clone()).into_error()),
        }
    }

    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        let _ = holder_pid; // RabbitMQ knows claims by connection, not by pid
        let mut want: HashSet<&DeliveryId> = ids.iter().collect();
        let mut found = Vec::new();
        let deadline = Instant::now() + self.config.take_over_patience;
        while !want.is_empty() && self.pending.len() < TAKE_OVER_SPARE {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let batch = self.fetch_from_broker(want.len(), left.min(Duration::from_millis(100)))?;
            for d in batch {
                if want.remove(d.id()) {
                    found.push(d);
                } else {
                    self.pending.push_back(d);
                }
            }
        }
        Ok(found)
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.scan_dead(limit, Scan::List)
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.scan_dead(usize::MAX, Scan::Redrive(id)).map(drop)
    }

    /// As [`redrive`](Broker::redrive), but the dead letter found is only
    /// acked: gone for good.
    fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.scan_dead(usize::MAX, Scan::Delete(id)).map(drop)
    }

    /// A passive `queue.declare` of the queue and of `<queue>.dead`: ready
    /// and dead are their message counts (messages not delivered to any
    /// consumer). Delayed is the sum of the same counts of the delay queues
    /// recorded in `<queue>.delays` (AMQP cannot list queues: every delayed
    /// publish records its delay queue there, in a record that expires
    /// after the queue can hold none of its jobs). Claimed is unknown
    /// (`None`): AMQP 0-9-1 gives no count of unacked messages (only the
    /// management plugin's HTTP API does, and this crate speaks AMQP only).
    fn stats(&mut self) -> Result<QueueStats, BrokerError> {
        self.queue_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_two_significant_digits() {
        let ms = |d| delay_ms(Duration::from_micros(d)).unwrap();
        assert_eq!(ms(1), 1);
        assert_eq!(ms(1_000), 1);
        assert_eq!(ms(1_001), 2);
        assert_eq!(ms(99_000), 99);
        assert_eq!(ms(101_000), 110);
        assert_eq!(ms(1_234_000), 1_300);
        assert_eq!(ms(60_000_000), 60_000);
        assert!(delay_ms(Duration::from_secs(50 * 86_400)).is_err());
        for us in [1u64, 999, 5_555, 123_456, 98_765_432] {
            assert!(ms(us) * 1000 >= us, "{us} rounded down");
        }
    }

    #[test]
    fn properties_carry_the_attempt_and_a_cut_reason() {
        let p = properties("id", 1, None);
        assert_eq!(p.message_id().as_deref(), Some("id"));
        assert!(p.headers().is_none());
        let long = "\u{2713}".repeat(MAX_REASON);
        let p = properties("id", 3, Some(&long));
        let h = p.headers().as_ref().unwrap();
        assert_eq!(h.get(ATTEMPT_HEADER).and_then(int_value), Some(3));
        let Some(AmqpValue::LongString(r)) = h.get(REASON_HEADER) else {
            panic!("no reason")
        };
        assert!(r.len() <= MAX_REASON && long.starts_with(r.as_str()));
    }
}
