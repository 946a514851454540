//! `Delivery`, `DeliveryId` and `DeadLetter`: what a broker hands out.

use std::fmt;

/// The stable identity of a job in a broker: a Beanstalkd job id, a Redis
/// stream entry id, a Kafka `partition:offset`, a spool file's job id.
///
/// It stays the same across redeliveries where the broker allows it, so
/// it is what logs, the master's "which job does each worker hold" table
/// and [`Broker::redrive`](crate::Broker::redrive) use. It is not the
/// handle an adapter settles a delivery with: that is the
/// [receipt](Delivery::receipt).
///
/// # Examples
///
/// ```
/// use prefork_broker::DeliveryId;
///
/// let id = DeliveryId::new("1526919030474-55");
/// assert_eq!(id.as_str(), "1526919030474-55");
/// assert_eq!(id.to_string(), "1526919030474-55");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId(Box<str>);

impl DeliveryId {
    /// An id made of `id`.
    pub fn new(id: impl Into<Box<str>>) -> DeliveryId {
        DeliveryId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DeliveryId {
    fn from(s: &str) -> DeliveryId {
        DeliveryId::new(s)
    }
}

impl From<String> for DeliveryId {
    fn from(s: String) -> DeliveryId {
        DeliveryId::new(s)
    }
}

/// A job fetched from a broker and held by this handle until it is settled
/// with exactly one of [`ack`](crate::Broker::ack),
/// [`retry`](crate::Broker::retry), [`release`](crate::Broker::release) or
/// [`dead_letter`](crate::Broker::dead_letter), which consume it.
///
/// It carries:
/// - the payload, opaque bytes;
/// - the [id](DeliveryId), stable across redeliveries;
/// - the attempt number, 1 for a first delivery (see [`Delivery::attempt`]);
/// - the receipt, the adapter's private handle for settling this particular
///   delivery (a Beanstalkd job id, a RabbitMQ delivery tag, a spool claim
///   file name); it may change when the claim is renewed by
///   [`touch`](crate::Broker::touch);
/// - the broker's own metadata as key/value text (a Kafka partition and
///   offset, a RabbitMQ `redelivered` flag), for logs and diagnostics.
///
/// Dropping a `Delivery` without settling it does not lose the job: the
/// broker delivers it again once the claim expires or the connection closes.
///
/// # Examples
///
/// ```
/// use prefork_broker::{Delivery, DeliveryId};
///
/// // What an adapter does when it hands a job out:
/// let d = Delivery::new(DeliveryId::new("42"), b"hello".to_vec())
///     .with_attempt(2)
///     .with_receipt("42")
///     .with_meta("tube", "default");
/// assert_eq!(d.payload(), b"hello");
/// assert_eq!(d.attempt(), 2);
/// assert_eq!(d.meta("tube"), Some("default"));
/// assert_eq!(d.meta("missing"), None);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    id: DeliveryId,
    receipt: String,
    payload: Vec<u8>,
    attempt: u32,
    metadata: Vec<(&'static str, String)>,
}

impl Delivery {
    /// A first delivery (attempt 1) of `payload` with id `id`; the receipt
    /// starts as the id's text.
    pub fn new(id: DeliveryId, payload: Vec<u8>) -> Delivery {
        Delivery {
            receipt: id.as_str().to_owned(),
            id,
            payload,
            attempt: 1,
            metadata: Vec::new(),
        }
    }

    /// The same delivery with attempt number `attempt` (0 is taken as 1).
    pub fn with_attempt(mut self, attempt: u32) -> Delivery {
        self.attempt = attempt.max(1);
        self
    }

    /// The same delivery with another receipt (for adapters).
    pub fn with_receipt(mut self, receipt: impl Into<String>) -> Delivery {
        self.receipt = receipt.into();
        self
    }

    /// The same delivery with one more metadata entry (for adapters).
    pub fn with_meta(mut self, key: &'static str, value: impl Into<String>) -> Delivery {
        self.metadata.push((key, value.into()));
        self
    }

    /// The job's stable id.
    pub fn id(&self) -> &DeliveryId {
        &self.id
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the payload out, leaving the delivery with an empty one (for a
    /// worker that parses it in place and still has to settle the delivery).
    pub fn take_payload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.payload)
    }

    /// The attempt number: 1 for the first delivery, 2 for the next, and so
    /// on.
    ///
    /// Every [`retry`](crate::Broker::retry) counts one; a
    /// [`release`](crate::Broker::release) counts none. A redelivery after
    /// the holder died counts one when the broker can tell (spool, Redis
    /// streams, Beanstalkd; RabbitMQ only knows "redelivered", reported as at
    /// least 2); an adapter that cannot tell (Kafka) says so in its docs.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The adapter's handle for settling this delivery (for adapters).
    pub fn receipt(&self) -> &str {
        &self.receipt
    }

    /// Replaces the receipt, e.g. after renewing a claim (for adapters).
    pub fn set_receipt(&mut self, receipt: impl Into<String>) {
        self.receipt = receipt.into();
    }

    /// The first metadata value under `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All metadata entries, in the order the adapter added them.
    pub fn metadata(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.metadata.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

impl fmt::Debug for Delivery {
    /// Shows the payload's length, not its bytes (it may be large or secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("receipt", &self.receipt)
            .field("payload_len", &self.payload.len())
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// A job kept in a queue's dead-letter place, as listed by
/// [`Broker::dead_letters`](crate::Broker::dead_letters).
///
/// # Examples
///
/// ```
/// use prefork_broker::{DeadLetter, DeliveryId};
///
/// let d = DeadLetter::new(DeliveryId::new("9"), b"{}".to_vec(), "unknown job \"resize\"").with_attempt(3);
/// assert_eq!(d.reason(), "unknown job \"resize\"");
/// assert_eq!(d.attempt(), 3);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter {
    id: DeliveryId,
    payload: Vec<u8>,
    reason: String,
    attempt: u32,
    metadata: Vec<(&'static str, String)>,
}

impl DeadLetter {
    /// A dead letter with its id (what [`Broker::redrive`](crate::Broker::redrive)
    /// takes), payload and reason; attempt 1.
    pub fn new(id: DeliveryId, payload: Vec<u8>, reason: impl Into<String>) -> DeadLetter {
        DeadLetter {
            id,
            payload,
            reason: reason.into(),
            attempt: 1,
            metadata: Vec::new(),
        }
    }

    /// The same dead letter with the number of the attempt that was
    /// dead-lettered (0 is taken as 1).
    pub fn with_attempt(mut self, attempt: u32) -> DeadLetter {
        self.attempt = attempt.max(1);
        self
    }

    /// The same dead letter with one more metadata entry (for adapters).
    pub fn with_meta(mut self, key: &'static str, value: impl Into<String>) -> DeadLetter {
        self.metadata.push((key, value.into()));
        self
    }

    /// The id to pass to [`Broker::redrive`](crate::Broker::redrive).
    pub fn id(&self) -> &DeliveryId {
        &self.id
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Why the job was dead-lettered, as given to
    /// [`Broker::dead_letter`](crate::Broker::dead_letter).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The attempt number of the delivery that was dead-lettered.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The first metadata value under `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All metadata entries.
    pub fn metadata(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.metadata.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("reason", &self.reason)
            .field("attempt", &self.attempt)
            .field("payload_len", &self.payload.len())
            .field("metadata", &self.metadata)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_is_at_least_one() {
        let d = Delivery::new("x".into(), Vec::new()).with_attempt(0);
        assert_eq!(d.attempt(), 1);
    }

    #[test]
    fn receipt_starts_as_the_id_and_can_change() {
        let mut d = Delivery::new("17".into(), Vec::new());
        assert_eq!(d.receipt(), "17");
        d.set_receipt("claimed/17.1.ff");
        assert_eq!((d.id().as_str(), d.receipt()), ("17", "claimed/17.1.ff"));
    }

    #[test]
    fn debug_hides_the_payload() {
        let d = Delivery::new("x".into(), b"secret".to_vec());
        let s = format!("{d:?}");
        assert!(s.contains("payload_len: 6") && !s.contains("secret"), "{s}");
    }

    #[test]
    fn take_payload_leaves_the_rest() {
        let mut d = Delivery::new("x".into(), b"abc".to_vec()).with_meta("k", "v");
        assert_eq!(d.take_payload(), b"abc");
        assert!(d.payload().is_empty());
        assert_eq!(d.metadata().collect::<Vec<_>>(), [("k", "v")]);
    }
}
