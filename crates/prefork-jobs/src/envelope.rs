//! The JSON envelope a job travels in, and the ids it carries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// A job as it travels through the broker: a JSON object any language can
/// write (see the table in the crate's README).
///
/// Fields a later version adds are ignored by this one; an envelope whose
/// `v` is not [`ENVELOPE_VERSION`] is refused (dead-lettered) rather than
/// guessed at.
///
/// # Examples
///
/// ```
/// use prefork_jobs::Envelope;
///
/// let e = Envelope::new("emails", "send_welcome", serde_json::json!({"user": 7}));
/// let bytes = e.to_bytes();
/// let back = Envelope::from_bytes(&bytes)?;
/// assert_eq!(back.job, "send_welcome");
/// assert_eq!(back.args["user"], 7);
/// assert_eq!(back.attempt, 1);
/// # Ok::<(), prefork_jobs::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// Format version: [`ENVELOPE_VERSION`].
    pub v: u32,
    /// A unique id chosen by the producer (the job layer's id, distinct
    /// from the broker's delivery id).
    pub id: String,
    /// The registered name of the handler to run.
    pub job: String,
    /// The handler's arguments, deserialized into its argument type.
    #[serde(default)]
    pub args: serde_json::Value,
    /// The queue the job was enqueued on.
    #[serde(default)]
    pub queue: String,
    /// When the job was enqueued, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub enqueued_at: u64,
    /// The attempt number of this payload's first delivery (1 unless a
    /// producer re-publishes a job it already tried). The attempt a handler
    /// sees is `attempt - 1 +` the broker's delivery count.
    #[serde(default = "one")]
    pub attempt: u32,
}

fn one() -> u32 {
    1
}

/// Why a payload is not a usable envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or not an object with the required fields.
    Malformed(String),
    /// A version this crate does not read.
    Version(u32),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::Malformed(why) => write!(f, "malformed envelope: {why}"),
            EnvelopeError::Version(v) => write!(
                f,
                "unsupported envelope version {v} (this worker reads {ENVELOPE_VERSION})"
            ),
        }
    }
}

impl std::error::Error for EnvelopeError {}

impl Envelope {
    /// A new envelope for `job` on `queue` with `args`, a fresh id, the
    /// current time and attempt 1.
    pub fn new(queue: &str, job: &str, args: serde_json::Value) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: new_id(),
            job: job.to_owned(),
            args,
            queue: queue.to_owned(),
            enqueued_at: unix_ms(SystemTime::now()),
            attempt: 1,
        }
    }

    /// The envelope as compact JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// Reads an envelope.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::Malformed`] for anything but a JSON object with at
    /// least `v`, `id` and `job`; [`EnvelopeError::Version`] for another `v`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let e: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if e.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(e.v));
        }
        if e.job.is_empty() {
            return Err(EnvelopeError::Malformed("empty job name".into()));
        }
        Ok(e)
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A job id unique across processes on one machine and across restarts:
/// `{µs since the epoch}-{pid}-{sequence}`, in hex.
pub fn new_id() -> String {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{us:x}-{:x}-{:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minimal_foreign_envelope_reads_with_defaults() {
        let e = Envelope::from_bytes(br#"{"v":1,"id":"x1","job":"resize"}"#).unwrap();
        assert_eq!(e.job, "resize");
        assert_eq!(e.args, serde_json::Value::Null);
        assert_eq!(e.attempt, 1);
        assert_eq!(e.enqueued_at, 0);
    }

    #[test]
    fn the_readme_python_producer_output_reads() {
        // What the README's Python snippet prints (json.dumps default separators).
        let py = br#"{"v": 1, "id": "5b0c7f1e-2f7e-4c1a-9d0e-8a3f3f0b6a11", "job": "send_welcome", "args": {"user": 7}, "queue": "default", "enqueued_at": 1763900000123}"#;
        let e = Envelope::from_bytes(py).unwrap();
        assert_eq!(
            (e.job.as_str(), e.queue.as_str()),
            ("send_welcome", "default")
        );
        assert_eq!(e.args["user"], 7);
        assert_eq!(e.enqueued_at, 1_763_900_000_123);
        assert_eq!(e.attempt, 1);
    }

    #[test]
    fn unknown_fields_are_ignored_and_other_versions_refused() {
        let e = Envelope::from_bytes(br#"{"v":1,"id":"a","job":"j","extra":[1,2]}"#).unwrap();
        assert_eq!(e.id, "a");
        assert_eq!(
            Envelope::from_bytes(br#"{"v":2,"id":"a","job":"j"}"#),
            Err(EnvelopeError::Version(2))
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            &b"not json"[..],
            b"",
            b"[]",
            br#"{"v":1,"job":"j"}"#,
            br#"{"v":1,"id":"a","job":""}"#,
        ] {
            assert!(
                matches!(Envelope::from_bytes(bad), Err(EnvelopeError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn ids_differ() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn round_trip(queue in "[a-z]{1,8}", job in "[a-z_]{1,12}", n in any::<i64>(), s in ".*", attempt in 1u32..100) {
            let mut e = Envelope::new(&queue, &job, serde_json::json!({"n": n, "s": s}));
            e.attempt = attempt;
            prop_assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Envelope::from_bytes(&bytes);
        }
    }
}
