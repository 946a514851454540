//! What this crate needs from rdkafka, in one place: client settings, the
//! producer's delivery report, the consumer's rebalance hooks, topic
//! creation, and the mapping of rdkafka errors onto [`BrokerError`].

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use prefork_broker::{BrokerError, ErrorKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::Config;
use crate::tracker::{Tp, Tracker};

/// The largest message this crate produces or fetches (the conformance
/// kit sends 16 MiB; headers come on top).
pub(crate) const MAX_MESSAGE: usize = 32 << 20;

/// Settings every client of a [`Config`] shares.
pub(crate) fn base(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("prefork-{}", std::process::id()))
        .set("socket.timeout.ms", ms(config.op_timeout).to_string())
        .set("log_level", "3");
    c
}

/// `settings` with fetches sized for jobs up to [`MAX_MESSAGE`] bytes
/// (librdkafka's defaults would refuse the largest), for every consumer.
pub(crate) fn fetch_sizes(settings: &mut ClientConfig) -> &mut ClientConfig {
    settings
        .set("fetch.max.bytes", (MAX_MESSAGE * 2).to_string())
        .set(
            "max.partition.fetch.bytes",
            (MAX_MESSAGE + (1 << 20)).to_string(),
        )
        .set(
            "receive.message.max.bytes",
            (MAX_MESSAGE * 2 + (1 << 20)).to_string(),
        )
}

/// Whole milliseconds, at least 1.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The producer's context: remembers the first failed delivery since it
/// was last asked.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    /// The first delivery error not reported yet.
    failed: Mutex<Option<KafkaError>>,
}

impl Reports {
    /// The first delivery error since the last call.
    pub(crate) fn take_failure(&self) -> Option<KafkaError> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((e, _)) = result {
            self.failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| e.clone());
        }
    }
}

/// What the consumer's rebalance hooks share with the handle.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    /// The offsets of the partitions this handle is assigned.
    pub(crate) tracker: Tracker,
    /// Per partition, how many times it was assigned to this handle: part
    /// of every receipt, so a delivery from before a partition was taken
    /// away and given back cannot settle its new copy.
    pub(crate) generation: std::collections::BTreeMap<Tp, u64>,
    /// Partitions taken away since the handle last looked.
    pub(crate) revoked: Vec<Tp>,
}

/// The consumer's context: on a revocation it commits what is safe for
/// the partitions going away and forgets them; on an assignment it starts
/// fresh trackers.
#[derive(Debug, Default)]
pub(crate) struct Group {
    /// Shared with the handle.
    pub(crate) state: Arc<Mutex<GroupState>>,
    /// Set when the consumer starts closing: rebalance events are then
    /// ignored (see [`Group::rebalance`]).
    pub(crate) closing: std::sync::atomic::AtomicBool,
}

impl ClientContext for Group {}

impl ConsumerContext for Group {
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %e, partitions = offsets.count(), "offset commit failed: the next commit carries it");
        }
    }

    /// Replaces rdkafka's own, which asks librdkafka for the rebalance
    /// protocol before every assign and unassign. That question, like the
    /// assign and unassign themselves, is an operation sent to librdkafka's
    /// group thread and waited for with no time limit; once the group has
    /// terminated (a closing consumer), such operations are dropped
    /// unanswered, so a revocation event served during the close blocked
    /// the handle for good. Seen on tansu (the conformance kit's
    /// `claims_are_exclusive` and `ack_batch_removes_all` hung in a closing
    /// handle's poll, in `rd_kafka_rebalance_protocol` and then, without
    /// it, in `rd_kafka_assign`; gdb backtraces in the README). This
    /// crate's consumers use the eager protocol (`range` assignment), so
    /// nothing needs asking, and while the consumer closes (after the
    /// handle has unsubscribed and served its revocation) events are
    /// ignored.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::debug!(?err, "rebalance event while the consumer closes: ignored");
            return;
        }
        let done = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                consumer.assign(tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                consumer.unassign()
            }
            other => {
                let code = RDKafkaErrorCode::from(other);
                tracing::warn!(error = %code, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, ?err, "could not apply a rebalance");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let gone: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                // Every safe offset, not only those believed committed: an
                // asynchronous commit may have failed in the rebalance.
                let commits: Vec<(Tp, i64)> = st
                    .tracker
                    .commits_all()
                    .into_iter()
                    .filter(|(tp, _)| gone.contains(tp))
                    .collect();
                if !commits.is_empty() {
                    // The last moment this member may commit for them.
                    match consumer.commit(&offsets(&commits), CommitMode::Sync) {
                        Ok(()) => tracing::debug!(
                            partitions = commits.len(),
                            "committed before a revocation"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "commit before a revocation failed: those jobs run again")
                        }
                    }
                }
                for tp in gone {
                    if let Some(p) = st.tracker.remove(&tp)
                        && p.open_count() > 0
                    {
                        tracing::info!(topic = %tp.0, partition = tp.1, unfinished = p.open_count(),
                            "partition taken away with unfinished jobs: the group delivers them again");
                    }
                    st.revoked.push(tp);
                }
            }
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    let tp = (e.topic().to_owned(), e.partition());
                    st.tracker.remove(&tp);
                    st.tracker.part(&tp);
                    *st.generation.entry(tp).or_default() += 1;
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// A partition list with these offsets.
pub(crate) fn offsets(commits: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        // Only fails for an invalid offset, which a tracker never makes.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// Creates the topics that do not exist yet.
pub(crate) fn create_topics(config: &Config, topics: &[(&str, i32)]) -> Result<(), BrokerError> {
    let admin: AdminClient<DefaultClientContext> = base(config)
        .create()
        .map_err(|e| error("create a Kafka admin client", e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .request_timeout(Some(config.op_timeout))
        .operation_timeout(Some(config.op_timeout));
    let results =
        block_on(admin.create_topics(&new, &opts)).map_err(|e| error("create topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(error(
                    format!("create topic {name:?}"),
                    KafkaError::AdminOp(code),
                ));
            }
        }
    }
    Ok(())
}

/// An rdkafka error as a [`BrokerError`]: a problem with what was asked
/// is [`ErrorKind::Invalid`], anything else (transport, timeouts, a
/// coordinator moving, the broker gone) [`ErrorKind::Transient`].
pub(crate) fn error(context: impl std::fmt::Display, e: KafkaError) -> BrokerError {
    use RDKafkaErrorCode as C;
    let kind = match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidTopic
            | C::InvalidArgument
            | C::InvalidConfig
            | C::InvalidPartitions
            | C::InvalidReplicationFactor
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::InvalidGroupId
            | C::UnsupportedVersion,
        ) => ErrorKind::Invalid,
        _ if matches!(e, KafkaError::ClientCreation(_)) => ErrorKind::Invalid,
        _ => ErrorKind::Transient,
    };
    BrokerError::new(kind, format!("{context}: {e}")).with_source(e)
}

/// Wakes the thread that waits in [`block_on`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread. rdkafka's admin calls
/// return futures completed by rdkafka's own thread; this is all the
/// executor they need (no async runtime).
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_waits_for_another_thread() {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Ready once a thread it starts on the first poll has set the flag.
        struct Later(Arc<AtomicBool>, bool);
        impl Future for Later {
            type Output = u32;
            fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
                if self.0.load(Ordering::SeqCst) {
                    return Poll::Ready(7);
                }
                if !self.1 {
                    self.1 = true;
                    let (flag, waker) = (Arc::clone(&self.0), cx.waker().clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(20));
                        flag.store(true, Ordering::SeqCst);
                        waker.wake();
                    });
                }
                Poll::Pending
            }
        }
        assert_eq!(block_on(Later(Arc::new(AtomicBool::new(false)), false)), 7);
    }

    #[test]
    fn errors_say_whether_retrying_helps() {
        let e = error(
            "x",
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = error(
            "x",
            KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure),
        );
        assert!(e.is_retryable(), "{e}");
    }
}
