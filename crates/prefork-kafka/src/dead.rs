//! Reading a queue's dead-letter topic: every dead letter, less those a
//! re-drive or deletion marker names, oldest first.
//!
//! Kafka cannot delete one message, so [`redrive`](prefork_broker::Broker::redrive)
//! and [`delete_dead`](prefork_broker::Broker::delete_dead) append a marker
//! naming the dead letter they put back or deleted; a listing reads
//! the whole topic (one partition) from its start to its end with a
//! consumer outside any group (it commits nothing) and leaves out what a
//! marker names. Listing costs time in proportion to everything ever
//! dead-lettered on the queue: keep the topic's retention in line.

use std::collections::BTreeSet;
use std::time::Instant;

use prefork_broker::{BrokerError, DeadLetter, DeliveryId, ErrorKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::client;
use crate::handle::{H_ATTEMPT, H_DELETED, H_ID, H_REASON, H_REDRIVEN, Kafka};

fn text(h: Option<&rdkafka::message::BorrowedHeaders>, key: &str) -> Option<String> {
    h?.iter()
        .find(|x| x.key == key)
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every live dead letter of `k`'s queue, oldest first. Ids are
/// `partition:offset` in the dead-letter topic; the job's own id is the
/// `job` metadata entry.
pub(crate) fn read(k: &Kafka) -> Result<Vec<DeadLetter>, BrokerError> {
    let topic = k.dead_topic();
    let config = k.config();
    // librdkafka wants a group id even for a consumer that only assigns
    // partitions; this one never joins it nor commits.
    let consumer: BaseConsumer = client::fetch_sizes(
        client::base(config)
            .set("group.id", format!("{}.dead-reader", config.group_name()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false"),
    )
    .create()
    .map_err(|e| client::error("create a Kafka reader", e))?;
    let meta = consumer
        .fetch_metadata(Some(topic), config.op_timeout)
        .map_err(|e| client::error(format!("metadata of {topic:?}"), e))?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, config.op_timeout)
            .map_err(|e| client::error(format!("offsets of {topic:?}"), e))?;
        if high > low {
            ends.push((p, high));
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|e| client::error("assign", e))?;
        }
    }
    let mut letters = Vec::new();
    let mut redriven = BTreeSet::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| client::error(format!("read {topic:?}"), e))?;
    let deadline = Instant::now() + config.op_timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(BrokerError::new(
                ErrorKind::Transient,
                format!("reading {topic:?} took longer than {:?}", config.op_timeout),
            ));
        }
        let m = match consumer.poll(std::time::Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => continue,
            Some(Err(e)) => return Err(client::error(format!("read {topic:?}"), e)),
            Some(Ok(m)) => m,
        };
        let (p, o) = (m.partition(), m.offset());
        ends.retain(|(ep, end)| !(*ep == p && o + 1 >= *end));
        let h = m.headers();
        if let Some(id) = text(h, H_REDRIVEN).or_else(|| text(h, H_DELETED)) {
            redriven.insert(id);
            continue;
        }
        let id = format!("{p}:{o}");
        let attempt = text(h, H_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(1);
        let mut d = DeadLetter::new(
            DeliveryId::new(id),
            m.payload().unwrap_or_default().to_vec(),
            text(h, H_REASON).unwrap_or_default(),
        )
        .with_attempt(attempt)
        .with_meta("partition", p.to_string())
        .with_meta("offset", o.to_string());
        if let Some(job) = text(h, H_ID) {
            d = d.with_meta("job", job);
        }
        letters.push(d);
    }
    letters.retain(|d| !redriven.contains(d.id().as_str()));
    Ok(letters)
}
