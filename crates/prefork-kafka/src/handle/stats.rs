//! [`Broker::stats`](prefork_broker::Broker::stats) on Kafka: counts from
//! the group's committed offsets, the partitions' high watermarks and what
//! this handle holds.
//!
//! Kafka keeps one committed offset per partition and group, nothing per
//! message, so:
//! - **ready**: the queue topic's messages past the committed offset that
//!   nobody is known to hold: on a partition this handle is assigned, the
//!   ones it has not read yet plus those it buffered and did not hand out;
//!   on any other partition, everything past the committed offset
//!   (including what another member holds, which this handle cannot see);
//! - **delayed**: the same for the retry topic (retries and delayed
//!   publishes; one not read yet counts as delayed even when it is due);
//! - **claimed**: what this handle handed out and has not settled, when it
//!   is assigned every partition with something past its committed offset;
//!   unknown otherwise (another member may hold some);
//! - **dead**: the dead letters as [`dead_letters`](prefork_broker::Broker::dead_letters)
//!   lists them (a read of the whole dead-letter topic).

use prefork_broker::{BrokerError, QueueStats};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::Kafka;
use crate::client;
use crate::dead;
use crate::tracker::Tp;

impl Kafka {
    /// The counts described in the module's documentation.
    pub(super) fn queue_stats(&self) -> Result<QueueStats, BrokerError> {
        let timeout = self.config.op_timeout;
        // A consumer with the group's id reads its committed offsets
        // without joining it; the handle's own one when it has one.
        let own;
        let consumer: &dyn ConsumerLike = match self.consumer.as_ref() {
            Some(c) => c,
            None => {
                own = client::base(&self.config)
                    .set("group.id", self.config.group_name())
                    .set("enable.auto.commit", "false")
                    .create::<BaseConsumer>()
                    .map_err(|e| client::error("create a Kafka reader", e))?;
                &own
            }
        };
        let mut parts: Vec<Tp> = Vec::new();
        for topic in [&self.queue, &self.retry_topic] {
            let md = consumer
                .metadata(topic, timeout)
                .map_err(|e| client::error(format!("read the partitions of {topic:?}"), e))?;
            parts.extend((0..md).map(|p| (topic.clone(), p)));
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in &parts {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer.committed(tpl, timeout).map_err(|e| {
            client::error(format!("read the committed offsets of {:?}", self.queue), e)
        })?;
        let (mut ready, mut delayed) = (0_u64, 0_u64);
        let mut others_may_hold = false;
        let st = self.lock();
        for tp in &parts {
            let (low, high) = consumer
                .watermarks(&tp.0, tp.1, timeout)
                .map_err(|e| client::error(format!("read where {:?} ends", tp.0), e))?;
            let start = match committed.find_partition(&tp.0, tp.1).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => low,
            };
            let waiting = match st.tracker.get(tp) {
                // Assigned here: what is not read yet, plus what is
                // buffered (counted below).
                Some(p) => high.saturating_sub(p.next().unwrap_or(start).max(start)),
                None => {
                    others_may_hold |= high > start;
                    high.saturating_sub(start)
                }
            };
            let waiting = u64::try_from(waiting).unwrap_or(0);
            if tp.0 == self.queue {
                ready += waiting;
            } else {
                delayed += waiting;
            }
        }
        drop(st);
        ready += self.ready.len() as u64;
        delayed += self.delayed.len() as u64;
        let dead = dead::read(self)?.len() as u64;
        let stats = QueueStats::new(ready, dead).with_delayed(delayed);
        Ok(if others_may_hold {
            stats
        } else {
            stats.with_claimed(self.out.len() as u64)
        })
    }
}

/// What the counts need of a consumer, for the group consumer and a
/// group-less reader alike.
trait ConsumerLike {
    /// How many partitions `topic` has.
    fn metadata(
        &self,
        topic: &str,
        timeout: std::time::Duration,
    ) -> Result<i32, rdkafka::error::KafkaError>;
    /// The group's committed offsets of `tpl`.
    fn committed(
        &self,
        tpl: TopicPartitionList,
        timeout: std::time::Duration,
    ) -> Result<TopicPartitionList, rdkafka::error::KafkaError>;
    /// A partition's low and high watermarks.
    fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: std::time::Duration,
    ) -> Result<(i64, i64), rdkafka::error::KafkaError>;
}

impl<C: rdkafka::consumer::ConsumerContext> ConsumerLike for BaseConsumer<C> {
    fn metadata(
        &self,
        topic: &str,
        timeout: std::time::Duration,
    ) -> Result<i32, rdkafka::error::KafkaError> {
        let md = self.fetch_metadata(Some(topic), timeout)?;
        Ok(md.topics().first().map_or(0, |t| {
            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)
        }))
    }

    fn committed(
        &self,
        tpl: TopicPartitionList,
        timeout: std::time::Duration,
    ) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
        self.committed_offsets(tpl, timeout)
    }

    fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: std::time::Duration,
    ) -> Result<(i64, i64), rdkafka::error::KafkaError> {
        self.fetch_watermarks(topic, partition, timeout)
    }
}
