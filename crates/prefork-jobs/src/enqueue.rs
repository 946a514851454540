//! Putting jobs on a queue: [`enqueue`] and [`Enqueuer`].

use std::time::Duration;

use prefork_broker::{Broker, BrokerError, ErrorKind};
use serde::Serialize;

use crate::envelope::Envelope;

/// Enqueues job `job` with `args` on `broker`'s queue, to run at once;
/// returns the job's id.
///
/// # Examples
///
/// ```
/// use prefork_broker::Broker;
/// let dir = std::env::temp_dir().join(format!("jobs-enqueue-{}", std::process::id()));
/// let mut q = prefork_spool::Spool::open(&dir)?.queue("mail")?;
/// let id = prefork_jobs::enqueue(&mut q, "send", &("a@example.com", 3))?;
/// let d = q.fetch_one(std::time::Duration::ZERO)?.expect("the job");
/// let e = prefork_jobs::Envelope::from_bytes(d.payload()).unwrap();
/// assert_eq!((e.id.as_str(), e.job.as_str(), e.queue.as_str()), (id.as_str(), "send", "mail"));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
///
/// # Errors
///
/// [`ErrorKind::Invalid`] when `args` cannot be serialized to JSON; the
/// broker's error from [`Broker::publish`] otherwise.
pub fn enqueue<B, A>(broker: &mut B, job: &str, args: &A) -> Result<String, BrokerError>
where
    B: Broker + ?Sized,
    A: Serialize + ?Sized,
{
    Enqueuer::new(broker).enqueue(job, args)
}

/// Enqueues jobs on one broker handle, with an optional delay.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let dir = std::env::temp_dir().join(format!("jobs-enqueuer-{}", std::process::id()));
/// let q = prefork_spool::Spool::open(&dir)?.queue("mail")?;
/// let mut jobs = prefork_jobs::Enqueuer::new(q);
/// jobs.enqueue("send", &serde_json::json!({"to": "a@example.com"}))?;
/// jobs.enqueue_in("reminder", &(), Duration::from_secs(3600))?;
/// assert_eq!(jobs.broker().counts()?.delayed, 1);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
#[derive(Debug)]
pub struct Enqueuer<B> {
    broker: B,
}

impl<B: Broker> Enqueuer<B> {
    /// An enqueuer publishing through `broker`.
    pub fn new(broker: B) -> Enqueuer<B> {
        Enqueuer { broker }
    }

    /// The broker handle.
    pub fn broker(&mut self) -> &mut B {
        &mut self.broker
    }

    /// Enqueues `job` with `args` to run at once; returns its id.
    ///
    /// # Errors
    ///
    /// As [`enqueue`].
    pub fn enqueue<A: Serialize + ?Sized>(
        &mut self,
        job: &str,
        args: &A,
    ) -> Result<String, BrokerError> {
        self.enqueue_in(job, args, Duration::ZERO)
    }

    /// Enqueues `job` with `args` to run after `delay`; returns its id.
    ///
    /// # Errors
    ///
    /// As [`enqueue`].
    pub fn enqueue_in<A: Serialize + ?Sized>(
        &mut self,
        job: &str,
        args: &A,
        delay: Duration,
    ) -> Result<String, BrokerError> {
        let args = serde_json::to_value(args).map_err(|e| {
            BrokerError::new(ErrorKind::Invalid, format!("arguments of job {job:?}: {e}"))
        })?;
        let envelope = Envelope::new(self.broker.queue(), job, args);
        self.publish(&envelope, delay)?;
        Ok(envelope.id)
    }

    /// Enqueues one job `job` per element of `args`, to run at once, in as
    /// few broker round trips as the adapter can ([`Broker::publish_batch`]:
    /// one pipeline on Redis); returns the jobs' ids in order.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("jobs-batch-{}", std::process::id()));
    /// let q = prefork_spool::Spool::open(&dir)?.queue("thumbs")?;
    /// let mut jobs = prefork_jobs::Enqueuer::new(q);
    /// let ids = jobs.enqueue_batch("resize", &[(1, 64), (2, 64), (3, 128)])?;
    /// assert_eq!(ids.len(), 3);
    /// assert_eq!(jobs.broker().counts()?.ready, 3);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`enqueue`], checked for every element before anything is
    /// published; on a broker error some of the jobs may have been added.
    pub fn enqueue_batch<A: Serialize>(
        &mut self,
        job: &str,
        args: &[A],
    ) -> Result<Vec<String>, BrokerError> {
        let mut ids = Vec::with_capacity(args.len());
        let mut bodies = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            let value = serde_json::to_value(a).map_err(|e| {
                BrokerError::new(
                    ErrorKind::Invalid,
                    format!("arguments {i} of job {job:?}: {e}"),
                )
            })?;
            let envelope = Envelope::new(self.broker.queue(), job, value);
            bodies.push(envelope.to_bytes());
            ids.push(envelope.id);
        }
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        self.broker.publish_batch(&refs, Duration::ZERO)?;
        Ok(ids)
    }

    /// Publishes a ready-made envelope after `delay`.
    ///
    /// # Errors
    ///
    /// The broker's error from [`Broker::publish`].
    pub fn publish(&mut self, envelope: &Envelope, delay: Duration) -> Result<(), BrokerError> {
        self.broker.publish(&envelope.to_bytes(), delay)
    }
}
