//! `RedisQueue`: the `Broker` implementation over one stream and its
//! consumer group, with reconnection. The type and its trait impl live
//! here; each idea lives in a module of its own: [`connection`]
//! (connecting, running commands), [`reading`] (fetch, reclaim, take-over),
//! [`settling`] (ack, retry, release, dead letter, touch), [`publishing`]
//! and [`dead_letters`] (listing, re-driving and deleting them; the
//! counts).

mod connection;
mod dead_letters;
mod publishing;
mod reading;
mod settling;

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use prefork_broker::{
    Broker, BrokerError, DeadLetter, Delivery, DeliveryId, ErrorKind, QueueStats, SettleError,
};

use crate::backoff::{Backoff, Rng};
use crate::conn::Conn;
use crate::options::Options;
use connection::hostname;

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
}

impl Broker for RedisQueue {
    fn queue(&self) -> &str {
        &self.name
    }

    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        self.publish_one(payload, delay)
    }

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        self.fetch_deliveries(max, timeout)
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
        self.flush_acks()
    }

    /// One script call: claims every entry pending to a consumer named
    /// `HOST:holder_pid:*` (this handle's host), and the given ids that such
    /// a consumer holds, then deletes those consumers once empty.
    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.take_over_claims(holder_pid, ids)
    }

    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        self.retry_delivery(delivery, delay)
    }

    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.release_delivery(delivery)
    }

    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        self.dead_letter_delivery(delivery, reason)
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        self.touch_delivery(delivery)
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.list_dead_letters(limit)
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.redrive_dead_letter(id)
    }

    fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.delete_dead_letter(id)
    }

    /// One script call, an atomic snapshot: ready is the stream's `XLEN`
    /// less the group's `XPENDING` count (acks delete their entry), claimed
    /// that pending count (a dead consumer's entries included until they
    /// are reclaimed), delayed the `ZCARD` of the delayed set (due entries
    /// not yet moved into the stream included), dead the `XLEN` of the dead
    /// letters' stream.
    fn stats(&mut self) -> Result<QueueStats, BrokerError> {
        self.queue_stats()
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
}
