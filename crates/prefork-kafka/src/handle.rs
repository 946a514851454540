//! [`Kafka`], the handle: a producer, a lazily subscribed group consumer,
//! the buffers of fetched and delayed messages, and the settling of
//! deliveries through the offset tracker.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefork_broker::{
    Broker, BrokerError, DeadLetter, Delivery, DeliveryId, ErrorKind, QueueStats, SettleError,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{self, Group, GroupState, MAX_MESSAGE, Reports, ms};
use crate::tracker::{Received, Tp};
use crate::{Config, DEAD_SUFFIX, RETRY_SUFFIX, dead, valid_queue};

mod stats;

/// Header: the attempt number of a retried message.
pub(crate) const H_ATTEMPT: &str = "prefork-attempt";
/// Header: not to be handed out before this time (Unix milliseconds).
pub(crate) const H_NOT_BEFORE: &str = "prefork-not-before";
/// Header: the job's stable id, carried by retried and re-driven copies.
pub(crate) const H_ID: &str = "prefork-id";
/// Header of a dead letter: why.
pub(crate) const H_REASON: &str = "prefork-reason";
/// Header of a re-drive marker in the dead-letter topic: the id of the
/// dead letter that was re-driven.
pub(crate) const H_REDRIVEN: &str = "prefork-redriven";
/// Header of a deletion marker in the dead-letter topic: the id of the
/// dead letter that was deleted.
pub(crate) const H_DELETED: &str = "prefork-deleted";

/// How many messages beyond the wanted ones [`Broker::take_over`] may
/// buffer while it reads a dead holder's partitions looking for them.
const TAKE_OVER_SCAN: usize = 10_000;

/// A fetched message this handle keeps until it is handed out.
#[derive(Debug)]
struct Msg {
    tp: Tp,
    offset: i64,
    generation: u64,
    retry_topic: bool,
    id: String,
    attempt: u32,
    not_before: Option<u64>,
    payload: Vec<u8>,
}

/// A handle on one queue: the topic named after it, its retry topic
/// (`NAME.retry`: retries and delayed publishes) and its dead-letter topic
/// (`NAME.dead`). The [`Broker`] implementation.
///
/// The producer is created at open; the group consumer at the first fetch
/// (or [`take_over`](Broker::take_over)), so a handle that only publishes
/// never joins the group. Everything runs on the calling thread apart from
/// librdkafka's own threads; nothing of it may cross a fork. See the
/// README for how each operation maps to Kafka.
pub struct Kafka {
    config: Config,
    queue: String,
    retry_topic: String,
    dead_topic: String,
    producer: BaseProducer<Reports>,
    consumer: Option<BaseConsumer<Group>>,
    state: Arc<Mutex<GroupState>>,
    /// Fetched, due, not handed out (released ones go back in front).
    ready: VecDeque<Msg>,
    /// Fetched, not due yet (a delayed publish or retry), by due time.
    delayed: Vec<Msg>,
    /// Handed out and not settled: (partition, offset, generation).
    out: BTreeSet<(Tp, i64, u64)>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("queue", &self.queue)
            .field("group", &self.config.group)
            .field("subscribed", &self.consumer.is_some())
            .field("ready", &self.ready.len())
            .field("delayed", &self.delayed.len())
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The Unix time in milliseconds at which a job delayed by `delay` from
/// now is due, rounded up (a delay is never shortened by rounding).
fn due_at(delay: Duration) -> u64 {
    let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
    now_ms()
        .saturating_add(micros.div_ceil(1000))
        .saturating_add(1)
}

fn header<'a>(h: Option<&'a rdkafka::message::BorrowedHeaders>, key: &str) -> Option<&'a [u8]> {
    h?.iter().find(|x| x.key == key).and_then(|x| x.value)
}

fn header_str(h: Option<&rdkafka::message::BorrowedHeaders>, key: &str) -> Option<String> {
    header(h, key)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

fn header_num(h: Option<&rdkafka::message::BorrowedHeaders>, key: &str) -> Option<u64> {
    header_str(h, key)?.parse().ok()
}

/// Headers from key/value text pairs.
pub(crate) fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        })
    })
}

impl Kafka {
    pub(crate) fn open(config: Config, queue: &str) -> Result<Kafka, BrokerError> {
        if !valid_queue(queue) {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "queue name {queue:?} is not a Kafka topic name (1-243 bytes of A-Za-z0-9._-)"
                ),
            ));
        }
        let retry_topic = format!("{queue}{RETRY_SUFFIX}");
        let dead_topic = format!("{queue}{DEAD_SUFFIX}");
        if config.create_topics {
            client::create_topics(
                &config,
                &[
                    (queue, config.partitions),
                    (&retry_topic, config.partitions),
                    (&dead_topic, 1),
                ],
            )?;
        }
        let producer: BaseProducer<Reports> = client::base(&config)
            .set("message.max.bytes", (MAX_MESSAGE + (1 << 20)).to_string())
            .set("linger.ms", "0")
            .set("acks", "all")
            .set("message.timeout.ms", ms(config.op_timeout).to_string())
            .create_with_context(Reports::default())
            .map_err(|e| client::error("create the Kafka producer", e))?;
        Ok(Kafka {
            queue: queue.to_owned(),
            retry_topic,
            dead_topic,
            producer,
            consumer: None,
            state: Arc::default(),
            ready: VecDeque::new(),
            delayed: Vec::new(),
            out: BTreeSet::new(),
            config,
        })
    }

    /// The configuration this handle was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this handle is a member of the group (it fetched).
    pub fn is_subscribed(&self) -> bool {
        self.consumer.is_some()
    }

    /// The partitions (topic, partition) this handle is assigned now, as
    /// of its last fetch; empty before it joined the group.
    pub fn assigned_partitions(&self) -> Vec<(String, i32)> {
        let st = self.lock();
        st.generation
            .keys()
            .filter(|tp| st.tracker.get(tp).is_some())
            .cloned()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The group consumer, subscribed at the first call.
    fn consumer(&mut self) -> Result<&BaseConsumer<Group>, BrokerError> {
        if self.consumer.is_none() {
            let c = &self.config;
            let session = c.session_timeout.max(Duration::from_millis(100));
            let poll = c.max_poll_interval.max(session);
            let state = Arc::new(Mutex::new(GroupState::default()));
            let mut settings = client::base(c);
            settings
                .set("group.id", &c.group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                // Eager rebalancing: the Group context's rebalance hook
                // relies on it (see client::Group).
                .set("partition.assignment.strategy", "range")
                .set("session.timeout.ms", ms(session).to_string())
                .set("heartbeat.interval.ms", ms(session / 3).to_string())
                .set("max.poll.interval.ms", ms(poll).to_string())
                .set("fetch.wait.max.ms", "100");
            let consumer: BaseConsumer<Group> = client::fetch_sizes(&mut settings)
                .create_with_context(Group {
                    state: Arc::clone(&state),
                    closing: std::sync::atomic::AtomicBool::new(false),
                })
                .map_err(|e| client::error("create the Kafka consumer", e))?;
            consumer
                .subscribe(&[&self.queue, &self.retry_topic])
                .map_err(|e| client::error(format!("subscribe to {:?}", self.queue), e))?;
            self.state = state;
            self.consumer = Some(consumer);
        }
        Ok(self.consumer.as_ref().expect("just created"))
    }

    /// Drops buffered messages of partitions taken away; their deliveries
    /// still out will report the claim lost.
    fn forget_revoked(&mut self) {
        let revoked = std::mem::take(&mut self.lock().revoked);
        if revoked.is_empty() {
            return;
        }
        self.ready.retain(|m| !revoked.contains(&m.tp));
        self.delayed.retain(|m| !revoked.contains(&m.tp));
    }

    /// Polls the consumer once, waiting up to `wait`; buffers what came.
    fn poll_once(&mut self, wait: Duration) -> Result<bool, BrokerError> {
        let retry_topic = self.retry_topic.clone();
        let consumer = self.consumer()?;
        let got = consumer.poll(wait);
        let msg = match got {
            None => None,
            Some(Ok(m)) => {
                let h = m.headers();
                let tp = (m.topic().to_owned(), m.partition());
                let retry = m.topic() == retry_topic;
                let id = header_str(h, H_ID).unwrap_or_else(|| {
                    if retry {
                        format!("retry/{}:{}", m.partition(), m.offset())
                    } else {
                        format!("{}:{}", m.partition(), m.offset())
                    }
                });
                Some(Msg {
                    tp,
                    offset: m.offset(),
                    generation: 0,
                    retry_topic: retry,
                    id,
                    attempt: header_num(h, H_ATTEMPT)
                        .map_or(1, |a| u32::try_from(a).unwrap_or(u32::MAX)),
                    not_before: header_num(h, H_NOT_BEFORE),
                    payload: m.payload().unwrap_or_default().to_vec(),
                })
            }
            Some(Err(KafkaError::PartitionEOF(_))) => None,
            Some(Err(e)) => {
                self.forget_revoked();
                return Err(client::error(format!("fetch from {:?}", self.queue), e));
            }
        };
        self.forget_revoked();
        let Some(mut msg) = msg else {
            return Ok(false);
        };
        {
            let mut st = self.lock();
            let Some(generation) = st.generation.get(&msg.tp).copied() else {
                return Ok(true);
            };
            msg.generation = generation;
            if st.tracker.get(&msg.tp).is_none()
                || st.tracker.part(&msg.tp).received(msg.offset) == Received::Seen
            {
                return Ok(true);
            }
        }
        match msg.not_before {
            Some(t) if t > now_ms() => {
                let i = self
                    .delayed
                    .partition_point(|d| d.not_before <= msg.not_before);
                self.delayed.insert(i, msg);
            }
            _ => self.ready.push_back(msg),
        }
        Ok(true)
    }

    /// Moves delayed messages that are due to the ready buffer; returns how
    /// long until the next one is due.
    fn promote_due(&mut self) -> Option<Duration> {
        let now = now_ms();
        let due = self
            .delayed
            .partition_point(|d| d.not_before.is_none_or(|t| t <= now));
        self.ready.extend(self.delayed.drain(..due));
        self.delayed
            .first()
            .and_then(|d| d.not_before)
            .map(|t| Duration::from_millis(t.saturating_sub(now)))
    }

    fn hand_out(&mut self, m: Msg) -> Delivery {
        self.out.insert((m.tp.clone(), m.offset, m.generation));
        let kind = if m.retry_topic { 'r' } else { 'q' };
        Delivery::new(DeliveryId::new(m.id), m.payload)
            .with_attempt(m.attempt)
            .with_receipt(format!("{kind}:{}:{}:{}", m.tp.1, m.offset, m.generation))
            .with_meta("topic", m.tp.0)
            .with_meta("partition", m.tp.1.to_string())
            .with_meta("offset", m.offset.to_string())
    }

    /// The partition, offset and generation a receipt names.
    fn parse_receipt(&self, receipt: &str) -> Option<(Tp, i64, u64)> {
        let mut it = receipt.split(':');
        let topic = match it.next()? {
            "q" => self.queue.clone(),
            "r" => self.retry_topic.clone(),
            _ => return None,
        };
        let partition = it.next()?.parse().ok()?;
        let offset = it.next()?.parse().ok()?;
        let generation = it.next()?.parse().ok()?;
        it.next()
            .is_none()
            .then_some(((topic, partition), offset, generation))
    }

    /// Checks that this handle still holds `d`'s message.
    fn held(&self, d: &Delivery) -> Result<(Tp, i64, u64), BrokerError> {
        let key = self.parse_receipt(d.receipt()).ok_or_else(|| {
            BrokerError::new(
                ErrorKind::Invalid,
                format!("not a receipt of queue {:?}: {:?}", self.queue, d.receipt()),
            )
        })?;
        let st = self.lock();
        let live = self.out.contains(&key)
            && st.generation.get(&key.0) == Some(&key.2)
            && st.tracker.get(&key.0).is_some_and(|p| p.is_open(key.1));
        if live {
            Ok(key)
        } else {
            Err(BrokerError::new(
                ErrorKind::LeaseLost,
                format!(
                    "{} ({}) is no longer held: its partition was taken away or it was settled; the group delivers it again",
                    d.id(),
                    d.receipt()
                ),
            ))
        }
    }

    /// Marks a held message finished and commits what became safe.
    fn finish(&mut self, key: &(Tp, i64, u64)) -> Result<(), BrokerError> {
        self.out.remove(key);
        self.lock().tracker.part(&key.0).finished(key.1);
        self.commit()
    }

    /// Commits every partition's safe offset that moved, synchronously: one
    /// `OffsetCommit` round trip for all of them.
    ///
    /// Never asynchronously. rdkafka 0.39 reports no result for an
    /// asynchronous commit (its `commit_callback` is not called for
    /// them), so there is no telling when one has landed, and librdkafka
    /// sends each as a request of its own: when jobs finish faster than
    /// the broker answers commits, hundreds queue up, and a SIGKILL loses
    /// every one not answered yet (measured on tansu: a worker killed 11 ms
    /// after its last ack had 415 of its commits unapplied, and they all
    /// ran again). A synchronous commit is on the broker when the ack
    /// returns.
    fn commit(&mut self) -> Result<(), BrokerError> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(());
        };
        let commits = self.lock().tracker.commits();
        if commits.is_empty() {
            return Ok(());
        }
        match consumer.commit(&client::offsets(&commits), CommitMode::Sync) {
            Ok(()) => {
                self.lock().tracker.committed(&commits);
                Ok(())
            }
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(client::error(
                format!("commit offsets of {:?}", self.queue),
                e,
            )),
        }
    }

    /// Sends records and waits until the cluster has them all.
    pub(crate) fn produce(
        &self,
        records: Vec<(&str, &[u8], OwnedHeaders)>,
    ) -> Result<(), BrokerError> {
        let _ = self.producer.context().take_failure();
        for (topic, payload, h) in records {
            let mut record = BaseRecord::<(), [u8]>::to(topic)
                .payload(payload)
                .headers(h);
            let deadline = Instant::now() + self.config.op_timeout;
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if Instant::now() < deadline =>
                    {
                        record = r;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(client::error(format!("publish to {topic:?}"), e)),
                }
            }
        }
        // Not `Producer::flush`: rdkafka's waits in steps of 100 ms. Serve
        // delivery reports until none is outstanding.
        let deadline = Instant::now() + self.config.op_timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(BrokerError::new(
                    ErrorKind::Transient,
                    format!(
                        "publish to {:?}: not confirmed within {:?}",
                        self.queue, self.config.op_timeout
                    ),
                ));
            }
            self.producer.poll(Duration::from_micros(200));
        }
        match self.producer.context().take_failure() {
            Some(e) => Err(client::error(format!("publish to {:?}", self.queue), e)),
            None => Ok(()),
        }
    }

    fn check_size(&self, payload: &[u8]) -> Result<(), BrokerError> {
        if payload.len() > MAX_MESSAGE {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "a {} byte job is over this adapter's limit of {MAX_MESSAGE} bytes",
                    payload.len()
                ),
            ));
        }
        Ok(())
    }

    /// Leaves the group (its partitions go to other members at once),
    /// after committing what is safe. Held deliveries report their claim
    /// lost afterwards; buffered messages are redelivered to the group.
    fn leave(&mut self) {
        if let Some(c) = self.consumer.take() {
            close(c, self.config.session_timeout); // the revocation hook commits what is safe
        }
        self.ready.clear();
        self.delayed.clear();
        self.out.clear();
        self.state = Arc::default();
    }

    /// Commits every partition's safe offset synchronously, whether or not
    /// it is believed committed (an asynchronous commit may have failed).
    fn flush_all(&mut self) -> Result<(), BrokerError> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(());
        };
        let commits = self.lock().tracker.commits_all();
        if commits.is_empty() {
            return Ok(());
        }
        consumer
            .commit(&client::offsets(&commits), CommitMode::Sync)
            .map_err(|e| client::error(format!("commit offsets of {:?}", self.queue), e))?;
        self.lock().tracker.committed(&commits);
        Ok(())
    }

    /// Messages fetched and not handed out.
    fn buffered(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// Whether every one of `tps` is assigned to this handle.
    fn holds_all<'a>(&self, mut tps: impl Iterator<Item = &'a Tp>) -> bool {
        let st = self.lock();
        tps.all(|tp| st.tracker.get(tp).is_some())
    }

    /// When every partition of the queue's two topics is assigned to this
    /// handle: where each of those with something to read ends now (its
    /// high watermark; a partition committed up to its end has nothing to
    /// read and is left out). `None` while some are elsewhere or the
    /// handle has not joined yet.
    fn ends_if_all_assigned(&mut self) -> Result<Option<BTreeMap<Tp, i64>>, BrokerError> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(None);
        };
        if self.lock().tracker.is_empty() {
            return Ok(None);
        }
        let timeout = self.config.op_timeout;
        let mut all = Vec::new();
        for topic in [&self.queue, &self.retry_topic] {
            let md = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| client::error(format!("read the partitions of {topic:?}"), e))?;
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            all.extend((0..n).map(|p| (topic.clone(), i32::try_from(p).unwrap_or(i32::MAX))));
        }
        if !self.holds_all(all.iter()) {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &all {
            tpl.add_partition(topic, *partition);
        }
        let committed = consumer.committed_offsets(tpl, timeout).map_err(|e| {
            client::error(format!("read the committed offsets of {:?}", self.queue), e)
        })?;
        let mut ends = BTreeMap::new();
        for tp in all {
            let (low, high) = consumer
                .fetch_watermarks(&tp.0, tp.1, timeout)
                .map_err(|e| client::error(format!("read where {:?} ends", tp.0), e))?;
            let start = match committed.find_partition(&tp.0, tp.1).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            if start < high {
                ends.insert(tp, high);
            }
        }
        Ok(Some(ends))
    }

    /// Whether this handle has fetched every partition in `ends` up to
    /// its end there.
    fn read_to(&self, ends: &BTreeMap<Tp, i64>) -> bool {
        let st = self.lock();
        ends.iter().all(|(tp, high)| {
            st.tracker
                .get(tp)
                .and_then(|p| p.next())
                .is_some_and(|next| next >= *high)
        })
    }

    pub(crate) fn dead_topic(&self) -> &str {
        &self.dead_topic
    }
}

impl Broker for Kafka {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        self.publish_batch(&[payload], delay)
    }

    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
        for p in payloads {
            self.check_size(p)?;
        }
        let (topic, not_before) = if delay.is_zero() {
            (self.queue.as_str(), None)
        } else {
            (self.retry_topic.as_str(), Some(due_at(delay).to_string()))
        };
        let records = payloads
            .iter()
            .map(|p| {
                let h = match &not_before {
                    Some(t) => headers(&[(H_NOT_BEFORE, t)]),
                    None => OwnedHeaders::new(),
                };
                (topic, *p, h)
            })
            .collect();
        self.produce(records)
    }

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let next_due = self.promote_due();
            if !self.ready.is_empty() {
                // Take what else is already fetched, without waiting.
                while self.ready.len() < max && self.poll_once(Duration::ZERO)? {}
                self.promote_due();
                let n = max.min(self.ready.len());
                let batch: Vec<Msg> = self.ready.drain(..n).collect();
                return Ok(batch.into_iter().map(|m| self.hand_out(m)).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left
                .min(Duration::from_millis(100))
                .min(next_due.unwrap_or(Duration::MAX));
            let got = self.poll_once(wait)?;
            if !got && left.is_zero() {
                return Ok(Vec::new());
            }
        }
    }

    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let key = match self.held(&delivery) {
            Ok(k) => k,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        if let Err(e) = self.finish(&key) {
            // Not committed: hold it again, so the caller may retry the ack.
            self.lock().tracker.part(&key.0).reopen(key.1);
            self.out.insert(key);
            return Err(SettleError::new(delivery, e));
        }
        Ok(())
    }

    fn ack_deferred(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let key = match self.held(&delivery) {
            Ok(k) => k,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        if let Err(e) = self.finish(&key) {
            // Finished here; the next commit carries it (or it runs again).
            tracing::warn!(error = %e, id = %delivery.id(), "deferred commit failed; retried with the next one");
        }
        Ok(())
    }

    fn ack_batch_deferred(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        let mut failed = Vec::new();
        let mut keys = Vec::new();
        for d in deliveries {
            match self.held(&d) {
                Ok(k) => keys.push(k),
                Err(e) => failed.push(SettleError::new(d, e)),
            }
        }
        {
            let mut st = self.lock();
            for k in &keys {
                st.tracker.part(&k.0).finished(k.1);
            }
        }
        for k in &keys {
            self.out.remove(k);
        }
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "deferred commit failed; retried with the next one");
        }
        failed
    }

    fn flush(&mut self) -> Result<(), BrokerError> {
        // Every deferred ack was committed synchronously; what is left is
        // a commit that failed (it moved no recorded offset).
        self.commit()
    }

    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: BTreeSet<&str> = ids.iter().map(DeliveryId::as_str).collect();
        // The group gives a dead member's partitions to the others once its
        // session times out, and each new owner reads them from the
        // committed offset: the dead holder's jobs come by themselves.
        // Wait for them here (up to take_over_wait), so the caller holds
        // them for the reports of the workers still running them instead
        // of running them again. The wait ends early once every wanted job
        // is here, or once every partition of the queue is this handle's
        // and has been read to where it ended when that was so (a wanted
        // job not met by then had been committed: nothing to take over).
        let started = Instant::now();
        let deadline = started + self.config.take_over_wait;
        let scan_cap = self.buffered() + 2 * wanted.len() + TAKE_OVER_SCAN;
        let found = |k: &Kafka| {
            k.ready
                .iter()
                .chain(k.delayed.iter())
                .filter(|m| wanted.contains(m.id.as_str()))
                .count()
        };
        let mut ends: Option<BTreeMap<Tp, i64>> = None;
        let mut why = "no wait";
        while Instant::now() < deadline {
            if found(self) >= wanted.len() {
                why = "all found";
                break;
            }
            if self.buffered() >= scan_cap {
                why = "scanned as far as allowed";
                break;
            }
            if ends.as_ref().is_some_and(|e| !self.holds_all(e.keys())) {
                ends = None; // a rebalance moved partitions meanwhile
            }
            if ends.is_none() {
                ends = self.ends_if_all_assigned()?;
            }
            if ends.as_ref().is_some_and(|e| self.read_to(e)) {
                why = "read every partition to its end";
                break;
            }
            why = "waited as long as allowed";
            self.poll_once(Duration::from_millis(50))?;
        }
        let mut got = Vec::new();
        let mut keep = VecDeque::new();
        for m in std::mem::take(&mut self.ready)
            .into_iter()
            .chain(std::mem::take(&mut self.delayed))
        {
            if wanted.contains(m.id.as_str()) {
                got.push(m);
            } else if m.not_before.is_some_and(|t| t > now_ms()) {
                self.delayed.push(m);
            } else {
                keep.push_back(m);
            }
        }
        self.ready = keep;
        self.delayed.sort_by_key(|m| m.not_before);
        tracing::info!(holder_pid, taken = got.len(), asked = ids.len(), waited = ?started.elapsed(), why,
            queue = %self.queue, "took over a dead holder's jobs");
        Ok(got.into_iter().map(|m| self.hand_out(m)).collect())
    }

    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        let key = match self.held(&delivery) {
            Ok(k) => k,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        let attempt = delivery.attempt().saturating_add(1).to_string();
        let not_before = due_at(delay).to_string();
        let h = headers(&[
            (H_ID, delivery.id().as_str()),
            (H_ATTEMPT, &attempt),
            (H_NOT_BEFORE, &not_before),
        ]);
        if let Err(e) = self.produce(vec![(self.retry_topic.as_str(), delivery.payload(), h)]) {
            return Err(SettleError::new(delivery, e));
        }
        if let Err(e) = self.finish(&key) {
            // The copy is out; the original stays finished locally and is
            // committed with the next commit (a crash first runs it twice).
            tracing::warn!(error = %e, id = %delivery.id(), "commit after a retry failed; retried with the next one");
        }
        Ok(())
    }

    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let key = match self.held(&delivery) {
            Ok(k) => k,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        self.out.remove(&key);
        let retry_topic = key.0.0 == self.retry_topic;
        let attempt = delivery.attempt();
        let id = delivery.id().as_str().to_owned();
        let mut d = delivery;
        self.ready.push_front(Msg {
            tp: key.0,
            offset: key.1,
            generation: key.2,
            retry_topic,
            id,
            attempt,
            not_before: None,
            payload: d.take_payload(),
        });
        if self.out.is_empty() {
            // Nothing else handed out: a worker shutting down. Leave the
            // group now, so the partitions (and the released jobs, never
            // committed) go to another member without a session timeout.
            self.leave();
        }
        Ok(())
    }

    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        let key = match self.held(&delivery) {
            Ok(k) => k,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        let attempt = delivery.attempt().to_string();
        let h = headers(&[
            (H_ID, delivery.id().as_str()),
            (H_ATTEMPT, &attempt),
            (H_REASON, reason),
        ]);
        if let Err(e) = self.produce(vec![(self.dead_topic.as_str(), delivery.payload(), h)]) {
            return Err(SettleError::new(delivery, e));
        }
        if let Err(e) = self.finish(&key) {
            tracing::warn!(error = %e, id = %delivery.id(), "commit after a dead letter failed; retried with the next one");
        }
        Ok(())
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        // A claim is the partition: it lasts while this member is in the
        // group. No poll here: serving a rebalance in the middle of a job
        // would give its partition away.
        self.held(delivery).map(|_| ())
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut all = dead::read(self)?;
        all.truncate(limit);
        Ok(all)
    }

    fn stats(&mut self) -> Result<QueueStats, BrokerError> {
        self.queue_stats()
    }

    /// Kafka deletes no single message: a marker naming the dead letter
    /// goes to the dead-letter topic, and listings leave out what a marker
    /// names (as for a re-drive).
    fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        if !dead::read(self)?.iter().any(|d| d.id() == id) {
            return Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in {:?}", self.dead_topic),
            ));
        }
        self.produce(vec![(
            self.dead_topic.as_str(),
            &[][..],
            headers(&[(H_DELETED, id.as_str())]),
        )])
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let all = dead::read(self)?;
        let d = all.into_iter().find(|d| d.id() == id).ok_or_else(|| {
            BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in {:?}", self.dead_topic),
            )
        })?;
        let job_id = d.meta("job").unwrap_or(id.as_str()).to_owned();
        self.produce(vec![
            (
                self.queue.as_str(),
                d.payload(),
                headers(&[(H_ID, &job_id)]),
            ),
            (
                self.dead_topic.as_str(),
                &[][..],
                headers(&[(H_REDRIVEN, id.as_str())]),
            ),
        ])
    }
}

/// Closes a group consumer (it leaves the group), waiting at most
/// `within`, in two steps:
///
/// 1. While librdkafka's group thread still answers: unsubscribe (a
///    `LeaveGroup`) and poll until the revocation it brings, and any
///    queued before it, has been served, so the partitions are given back
///    and their safe offsets committed by the revocation hook.
/// 2. Close: from here the rebalance hook does nothing (see
///    [`Group`]'s `closing`): once the group has terminated, librdkafka
///    drops the operations an assign or unassign sends it without an
///    answer, and the caller would wait for ever (seen on tansu, gdb
///    backtrace in the README).
///
/// Past the bound (a group whose rebalance never completes) the consumer
/// is leaked instead: its threads end with the process, and the group
/// drops the member after its session timeout.
fn close(consumer: BaseConsumer<Group>, within: Duration) {
    let deadline = Instant::now() + within;
    let state = Arc::clone(&consumer.context().state);
    let holds = || {
        !state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tracker
            .is_empty()
    };
    consumer.unsubscribe();
    while holds() && Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    consumer.context().closing.store(true, Ordering::SeqCst);
    if consumer.close_queue().is_ok() {
        while !consumer.closed() && Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(50));
        }
        if consumer.closed() {
            drop(consumer);
            return;
        }
    }
    tracing::warn!("the Kafka consumer did not close in time: left to the session timeout");
    std::mem::forget(consumer);
}

impl Drop for Kafka {
    fn drop(&mut self) {
        // Commit what is safe; closing the consumer leaves the group.
        if self.consumer.is_some()
            && let Err(e) = self.flush_all()
        {
            tracing::warn!(error = %e, queue = %self.queue, "final commit failed: those jobs run again");
        }
        if let Some(c) = self.consumer.take() {
            close(c, self.config.session_timeout);
        }
    }
}
