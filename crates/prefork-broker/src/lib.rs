//! The broker adapter trait of prefork and the types it trades in. The
//! test kit every adapter passes is the `prefork-conformance` crate.
//!
//! The README below is the crate's guide; its example is compiled as a
//! doctest.
//!
//! | item | what |
//! |---|---|
//! | [`Broker`] | a handle on one named queue: fetch, ack, retry, release, dead-letter, touch, publish, count, list, re-drive and delete dead letters |
//! | [`Delivery`], [`DeliveryId`], [`DeadLetter`] | what a broker hands out |
//! | [`QueueStats`] | how many jobs a queue holds in each state |
//! | [`BrokerError`], [`ErrorKind`], [`SettleError`] | errors that say whether retrying helps; settling errors hand the delivery back |
//! | [`Connect`] | opens handles, after the fork, in the process that uses them |
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod delivery;
mod error;
mod stats;

use std::time::Duration;

pub use delivery::{DeadLetter, Delivery, DeliveryId};
pub use error::{BrokerError, ErrorKind, SettleError};
pub use stats::QueueStats;

/// A handle on one named queue of a broker: the one trait every prefork
/// broker adapter implements.
///
/// A handle is opened for one queue (a Beanstalkd tube, a Redis stream, a
/// RabbitMQ queue, a Kafka topic, a spool directory) and every method acts
/// on that queue; to work with several queues, open several handles. This
/// keeps per-queue set-up (Beanstalkd `use`/`watch`, a Kafka subscription, a
/// Redis consumer group) in the adapter's constructor, where it belongs.
///
/// # The contract
///
/// - **At-least-once.** A fetched job stays claimed by this handle until it
///   is settled by exactly one of [`ack`](Broker::ack),
///   [`retry`](Broker::retry), [`release`](Broker::release) or
///   [`dead_letter`](Broker::dead_letter). If the holder dies first
///   (SIGKILL, OOM, connection lost), or does not settle or
///   [`touch`](Broker::touch) it within the adapter's claim timeout (lease,
///   visibility timeout, TTR), the broker delivers it again. Nothing is
///   lost; a job may run more than once.
/// - **Exclusive claims.** While a claim is live, no other handle, in this
///   process or another, is handed the same job.
/// - **Settling consumes.** The settling methods take the [`Delivery`] by
///   value; on failure a [`SettleError`] hands it back with the cause. An
///   error of kind [`ErrorKind::LeaseLost`] means the claim was already gone
///   (the job has been or will be delivered again): retrying the call cannot
///   help, and the job is not lost.
/// - **Errors say whether retrying helps** ([`BrokerError::is_retryable`]).
///   After a retryable error the same call may succeed later, on this handle
///   or on a fresh one from the [`Connect`]or.
/// - **Blocking, bounded.** Every method blocks the calling thread, and
///   [`fetch`](Broker::fetch) never for much longer than its timeout. The
///   supervisor (`prefork-master`) never calls a broker; a worker or a feeder
///   process does.
///
/// The trait is object safe: the job layer holds a `Box<dyn Broker + Send>`
/// chosen at run time from configuration.
///
/// # How to implement it
///
/// 1. Open the connection and do the per-queue set-up in your constructor
///    (or in your [`Connect::open`]). Make the claim timeout configurable, so
///    tests see a killed holder's job come back quickly.
/// 2. [`fetch`](Broker::fetch): wait up to `timeout` for at least one ready
///    job, claim up to `max`, and return them; return an empty `Vec` on
///    timeout. Put the job's stable id in [`Delivery::new`], what you need to
///    settle it in [`Delivery::with_receipt`], the attempt number in
///    [`Delivery::with_attempt`], and anything an operator may want to see in
///    [`Delivery::with_meta`].
/// 3. Settle using the receipt. When the broker says the claim is gone,
///    return [`ErrorKind::LeaseLost`] and hand the delivery back in a
///    [`SettleError`].
/// 4. Brokers without a native feature build it from what they have: a
///    delayed retry as a republish to a delay queue plus an ack (RabbitMQ,
///    Kafka), dead letters as a separate queue, topic or list, the attempt
///    count in a header carried by the republished message.
/// 5. Run the conformance kit (the `prefork-conformance` crate, a
///    dev-dependency) against a live broker from a `harness = false` test;
///    every adapter passes all of it.
///
/// # Examples
///
/// A toy, single-process broker (no durability, claims never expire)
/// showing the shape of an implementation:
///
/// ```
/// use std::collections::VecDeque;
/// use std::time::Duration;
/// use prefork_broker::{Broker, BrokerError, DeadLetter, Delivery, DeliveryId, ErrorKind, QueueStats, SettleError};
///
/// #[derive(Default)]
/// struct Toy { next: u64, ready: VecDeque<(u64, Vec<u8>, u32)>, held: Vec<u64>, dead: Vec<DeadLetter> }
///
/// impl Broker for Toy {
///     fn queue(&self) -> &str { "toy" }
///     fn publish(&mut self, payload: &[u8], _delay: Duration) -> Result<(), BrokerError> {
///         self.next += 1;
///         self.ready.push_back((self.next, payload.to_vec(), 1));
///         Ok(())
///     }
///     fn fetch(&mut self, max: usize, _timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
///         let n = max.min(self.ready.len());
///         Ok(self.ready.drain(..n).map(|(id, payload, attempt)| {
///             self.held.push(id);
///             Delivery::new(DeliveryId::new(id.to_string()), payload).with_attempt(attempt)
///         }).collect())
///     }
///     fn ack(&mut self, d: Delivery) -> Result<(), SettleError> {
///         let id: u64 = d.receipt().parse().unwrap();
///         match self.held.iter().position(|h| *h == id) {
///             Some(i) => { self.held.swap_remove(i); Ok(()) }
///             None => Err(SettleError::new(d, BrokerError::new(ErrorKind::LeaseLost, "not held"))),
///         }
///     }
///     fn retry(&mut self, d: Delivery, _delay: Duration) -> Result<(), SettleError> {
///         let (id, attempt) = (d.receipt().parse().unwrap(), d.attempt() + 1);
///         let payload = d.payload().to_vec();
///         self.ack(d)?;
///         self.ready.push_back((id, payload, attempt));
///         Ok(())
///     }
///     fn release(&mut self, d: Delivery) -> Result<(), SettleError> {
///         let (id, attempt, payload) = (d.receipt().parse().unwrap(), d.attempt(), d.payload().to_vec());
///         self.ack(d)?;
///         self.ready.push_front((id, payload, attempt));
///         Ok(())
///     }
///     fn dead_letter(&mut self, d: Delivery, reason: &str) -> Result<(), SettleError> {
///         let dead = DeadLetter::new(d.id().clone(), d.payload().to_vec(), reason).with_attempt(d.attempt());
///         self.ack(d)?;
///         self.dead.push(dead);
///         Ok(())
///     }
///     fn touch(&mut self, _d: &mut Delivery) -> Result<(), BrokerError> { Ok(()) }
///     fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
///         Ok(self.dead.iter().take(limit).cloned().collect())
///     }
///     fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
///         let dead = self.take_dead(id)?;
///         self.ready.push_back((id.as_str().parse().unwrap(), dead.payload().to_vec(), 1));
///         Ok(())
///     }
///     fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
///         self.take_dead(id).map(drop)
///     }
///     fn stats(&mut self) -> Result<QueueStats, BrokerError> {
///         Ok(QueueStats::new(self.ready.len() as u64, self.dead.len() as u64)
///             .with_delayed(0)
///             .with_claimed(self.held.len() as u64))
///     }
/// }
///
/// impl Toy {
///     fn take_dead(&mut self, id: &DeliveryId) -> Result<DeadLetter, BrokerError> {
///         let i = self.dead.iter().position(|d| d.id() == id)
///             .ok_or_else(|| BrokerError::new(ErrorKind::NotFound, format!("no dead letter {id}")))?;
///         Ok(self.dead.remove(i))
///     }
/// }
///
/// let mut b = Toy::default();
/// b.publish(b"a", Duration::ZERO)?;
/// let d = b.fetch_one(Duration::from_secs(1))?.expect("a job");
/// b.retry(d, Duration::ZERO)?;
/// let d = b.fetch_one(Duration::from_secs(1))?.expect("the job again");
/// assert_eq!(d.attempt(), 2);
/// b.dead_letter(d, "gave up")?;
/// assert_eq!((b.stats()?.ready, b.stats()?.dead), (0, 1));
/// let id = b.dead_letters(10)?[0].id().clone();
/// b.redrive(&id)?;
/// let d = b.fetch_one(Duration::ZERO)?.expect("redriven");
/// assert_eq!(b.stats()?.claimed, Some(1));
/// b.dead_letter(d, "gave up again")?;
/// b.delete_dead(&id)?;
/// assert_eq!(b.stats()?, QueueStats::new(0, 0).with_delayed(0).with_claimed(0));
/// # Ok::<(), BrokerError>(())
/// ```
pub trait Broker {
    /// The name of the queue this handle is open on.
    fn queue(&self) -> &str;

    /// Adds a job with `payload` to the queue, to become visible after
    /// `delay` (`Duration::ZERO`: at once).
    ///
    /// Returns once the broker has accepted the job (as durably as the
    /// adapter's documented settings make it). Adapters round `delay` up to
    /// their broker's granularity, never down.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for a payload or delay the broker cannot take;
    /// [`ErrorKind::Transient`] for a connection or capacity problem (the job
    /// may or may not have been added: publishing again may duplicate it).
    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError>;

    /// Claims up to `max` ready jobs, waiting up to `timeout` for the first
    /// one; returns an empty `Vec` when none came in time.
    ///
    /// It returns as soon as at least one job is claimed (it does not wait to
    /// fill the batch), never returns more than `max`, and returns an empty
    /// `Vec` at once when `max` is 0. It may return empty before the timeout
    /// (callers loop), and adapters may round the timeout up to their
    /// broker's granularity (Beanstalkd: whole seconds).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Transient`] for connection problems. A job the adapter
    /// cannot decode is dead-lettered or quarantined by the adapter, not
    /// returned as an error that blocks the jobs behind it.
    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError>;

    /// Claims one job, waiting up to `timeout`; `None` when none came in
    /// time. The default calls [`fetch`](Broker::fetch) with `max` 1.
    ///
    /// # Errors
    ///
    /// As [`fetch`](Broker::fetch).
    fn fetch_one(&mut self, timeout: Duration) -> Result<Option<Delivery>, BrokerError> {
        Ok(self.fetch(1, timeout)?.pop())
    }

    /// Marks the job done: the broker forgets it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LeaseLost`] when this handle no longer held the claim
    /// (the job will run again); [`ErrorKind::Transient`] when the broker
    /// could not be told (retry the ack with the handed-back delivery, or let
    /// the claim expire and the job run again).
    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError>;

    /// Publishes every payload, to become visible after `delay`, in as few
    /// round trips as the adapter can (Redis: one pipeline; the provided
    /// method calls [`publish`](Broker::publish) for each, in order).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use prefork_broker::Broker;
    ///
    /// fn put_all(b: &mut dyn Broker, jobs: &[Vec<u8>]) -> Result<(), prefork_broker::BrokerError> {
    ///     let payloads: Vec<&[u8]> = jobs.iter().map(Vec::as_slice).collect();
    ///     b.publish_batch(&payloads, Duration::ZERO)
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`publish`](Broker::publish); on an error some of the payloads
    /// may have been added (those before it, for the provided method).
    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
        for p in payloads {
            self.publish(p, delay)?;
        }
        Ok(())
    }

    /// Acks a delivery without waiting for the broker's answer where the
    /// adapter can: the ack is sent at once (so a crash a moment later
    /// does not undo it) and its reply is read by a later call on this
    /// handle (Redis: ahead of the next command's reply). This is what
    /// keeps a pool at one broker round trip per batch instead of one per
    /// job.
    ///
    /// A deferred ack's failure is the adapter's to handle: a connection
    /// lost before the reply came makes it send the ack again after the
    /// reconnect; a claim found lost is logged (the job runs again, as
    /// with [`ack`](Broker::ack)). [`flush`](Broker::flush) waits for
    /// every reply. The provided method is [`ack`](Broker::ack).
    ///
    /// # Errors
    ///
    /// As [`ack`](Broker::ack), for the errors known at once.
    fn ack_deferred(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.ack(delivery)
    }

    /// [`ack_deferred`](Broker::ack_deferred) for many deliveries, in one
    /// command where the adapter can (Redis: one script call for all, no
    /// round trip of its own); returns those known at once not to be
    /// acked. The provided method calls `ack_deferred` for each.
    #[must_use = "the deliveries that were not acked are handed back"]
    fn ack_batch_deferred(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        deliveries
            .into_iter()
            .filter_map(|d| self.ack_deferred(d).err())
            .collect()
    }

    /// Waits for the replies of every [deferred ack](Broker::ack_deferred)
    /// sent so far (call it before a process exits). The provided method
    /// has nothing to wait for.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Transient`] when the broker could not be reached; the
    /// acks not confirmed are sent again by the next call that connects.
    fn flush(&mut self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Claims for this handle, at once, the jobs still claimed by a process
    /// the caller knows is dead (`holder_pid`, on this host), so that they
    /// run again now instead of after the claim timeout; returns them as
    /// deliveries this handle holds (each a redelivery: its attempt counts
    /// one more where the broker counts redeliveries).
    ///
    /// `ids` are deliveries the caller knows that process held (a
    /// supervisor knows what it handed out); an adapter returns at least
    /// every one of them that is still claimed by the dead process or,
    /// where the broker gave them back on its own when the process's
    /// connection closed, still ready (Beanstalkd: `reserve-job`). Adapters
    /// that can find a process's claims by its pid (Redis: consumer names
    /// carry the pid; the spool: claims record it) take all of them, `ids`
    /// or not. The provided method takes nothing: the claims come back
    /// when they expire.
    ///
    /// Only call it for a process known to be dead (reaped): taking over a
    /// live holder's claims runs its jobs twice.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Transient`] for connection problems.
    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        let _ = (holder_pid, ids);
        Ok(Vec::new())
    }

    /// Acks many deliveries, in one round trip where the adapter can (the
    /// provided method calls [`ack`](Broker::ack) for each); returns those
    /// that could not be acked, each with its reason, or an empty `Vec`.
    /// Each delivery is settled as by [`ack`](Broker::ack).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use prefork_broker::Broker;
    ///
    /// fn run_and_ack(b: &mut dyn Broker) -> Result<(), prefork_broker::BrokerError> {
    ///     let batch = b.fetch(64, Duration::from_secs(1))?;
    ///     // ... run them ...
    ///     for failed in b.ack_batch(batch) {
    ///         eprintln!("not acked: {failed}");
    ///     }
    ///     Ok(())
    /// }
    /// ```
    #[must_use = "the deliveries that were not acked are handed back"]
    fn ack_batch(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        deliveries
            .into_iter()
            .filter_map(|d| self.ack(d).err())
            .collect()
    }

    /// Gives the job back to be delivered again after `delay`, counting one
    /// more attempt ([`Delivery::attempt`] of the next delivery is one more).
    ///
    /// # Errors
    ///
    /// As [`ack`](Broker::ack).
    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError>;

    /// Gives the job back at once, without counting an attempt: for a worker
    /// shutting down gracefully with jobs fetched but not started.
    ///
    /// # Errors
    ///
    /// As [`ack`](Broker::ack).
    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError>;

    /// Moves the job to the queue's dead-letter place with `reason`, where
    /// it is kept (not delivered again) until
    /// [`redrive`](Broker::redrive)n. Reasons are free text (UTF-8, may hold
    /// newlines); adapters may truncate very long ones.
    ///
    /// # Errors
    ///
    /// As [`ack`](Broker::ack).
    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError>;

    /// Renews this handle's claim on a job that is still running, restarting
    /// its claim timeout (Beanstalkd `touch`, Redis `XCLAIM` to itself, a
    /// spool lease renewal). May update the delivery's receipt.
    ///
    /// Adapters whose claims cannot expire while the connection lives
    /// (RabbitMQ without a consumer timeout, Kafka within a session) return
    /// `Ok` after checking what they can.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LeaseLost`] when the claim was already gone.
    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError>;

    /// Lists up to `limit` of the queue's dead letters, oldest first where
    /// the broker keeps an order.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Transient`] for connection problems.
    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Puts the dead letter with id `id` back in the queue, to be delivered
    /// again; what attempt number its next delivery carries is up to the
    /// adapter (documented there).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when there is no such dead letter.
    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError>;

    /// Deletes the dead letter with id `id` (as
    /// [`dead_letters`](Broker::dead_letters) lists it) for good.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when there is no such dead letter (nothing
    /// is deleted); [`ErrorKind::Transient`] for connection problems.
    fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError>;

    /// Counts the queue's jobs in each state with the broker's own counters:
    /// ready, delayed, claimed (fetched and not settled, by any handle) and
    /// dead. A count the broker cannot tell is `None` (each adapter's
    /// README says which and why); the counts are a snapshot (see
    /// [`QueueStats`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Transient`] for connection problems.
    fn stats(&mut self) -> Result<QueueStats, BrokerError>;
}

macro_rules! forward_broker {
    ($($ty:ty),*) => {$(
        impl<B: Broker + ?Sized> Broker for $ty {
            fn queue(&self) -> &str { (**self).queue() }
            fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
                (**self).publish(payload, delay)
            }
            fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
                (**self).fetch(max, timeout)
            }
            fn fetch_one(&mut self, timeout: Duration) -> Result<Option<Delivery>, BrokerError> {
                (**self).fetch_one(timeout)
            }
            fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
                (**self).ack(delivery)
            }
            fn ack_batch(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
                (**self).ack_batch(deliveries)
            }
            fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
                (**self).publish_batch(payloads, delay)
            }
            fn ack_deferred(&mut self, delivery: Delivery) -> Result<(), SettleError> {
                (**self).ack_deferred(delivery)
            }
            fn ack_batch_deferred(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
                (**self).ack_batch_deferred(deliveries)
            }
            fn flush(&mut self) -> Result<(), BrokerError> {
                (**self).flush()
            }
            fn take_over(&mut self, holder_pid: u32, ids: &[DeliveryId]) -> Result<Vec<Delivery>, BrokerError> {
                (**self).take_over(holder_pid, ids)
            }
            fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
                (**self).retry(delivery, delay)
            }
            fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
                (**self).release(delivery)
            }
            fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
                (**self).dead_letter(delivery, reason)
            }
            fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
                (**self).touch(delivery)
            }
            fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
                (**self).dead_letters(limit)
            }
            fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
                (**self).redrive(id)
            }
            fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
                (**self).delete_dead(id)
            }
            fn stats(&mut self) -> Result<QueueStats, BrokerError> {
                (**self).stats()
            }
        }
    )*};
}

forward_broker!(Box<B>, &mut B);

/// Opens [`Broker`] handles on named queues: the configured form of a
/// broker, cheap to clone and to keep in the supervisor, which never calls
/// it.
///
/// Call [`open`](Connect::open) after the fork, in the process that uses the
/// handle (a worker, a feeder): client libraries that start threads or hold
/// sockets must not cross a fork (ARCHITECTURE.md: a child never drops what
/// its parent owns).
///
/// Any `Fn(&str) -> Result<B, BrokerError>` is a `Connect`.
///
/// # Examples
///
/// ```
/// use prefork_broker::{Broker, BrokerError, Connect};
///
/// fn open_all(c: &dyn Connect, queues: &[&str]) -> Result<Vec<Box<dyn Broker + Send>>, BrokerError> {
///     queues.iter().map(|q| c.open(q)).collect()
/// }
/// ```
pub trait Connect: Send + Sync {
    /// Opens a handle on `queue`, creating the queue if the broker needs
    /// that and the adapter is configured to.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for a queue name the broker refuses;
    /// [`ErrorKind::Transient`] when the broker cannot be reached.
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError>;
}

impl<F, B> Connect for F
where
    F: Fn(&str) -> Result<B, BrokerError> + Send + Sync,
    B: Broker + Send + 'static,
{
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Ok(Box::new(self(queue)?))
    }
}
