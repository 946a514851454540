//! Broker errors: what went wrong, and whether trying again can help.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use crate::Delivery;

/// What kind of failure a [`BrokerError`] is; callers branch on it.
///
/// The one question most callers ask is [`BrokerError::is_retryable`]:
/// can the same call succeed if made again later (possibly on a handle
/// opened afresh)?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A transient failure: the connection dropped, a timeout, the broker
    /// is overloaded or out of space. The same call may succeed later, on
    /// this handle or on a new one. Retryable.
    Transient,
    /// This handle no longer holds the delivery: its claim expired (lease,
    /// visibility timeout, TTR), its connection closed, or its partition was
    /// revoked. The broker has delivered, or will deliver, the job again, so
    /// the job is not lost; do not retry the operation. Not retryable.
    LeaseLost,
    /// The thing named does not exist (a dead letter's id given to
    /// [`Broker::redrive`](crate::Broker::redrive), a queue that must exist
    /// beforehand). Not retryable.
    NotFound,
    /// The request is invalid and always will be: a queue name the broker
    /// refuses, a payload over the broker's size limit, a delay beyond its
    /// maximum. Not retryable.
    Invalid,
    /// The broker or adapter cannot do this at all. Not retryable.
    Unsupported,
    /// Stored data or a broker reply is corrupt or not understood. Not
    /// retryable.
    Corrupt,
    /// Any other permanent failure (permission denied, bad credentials).
    /// Not retryable.
    Other,
}

impl ErrorKind {
    /// Whether an operation that failed this way can succeed if tried again.
    pub const fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }

    /// A short lowercase name for the kind, as used in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::LeaseLost => "lease lost",
            ErrorKind::NotFound => "not found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Other => "error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every [`Broker`](crate::Broker) operation returns: a kind to
/// branch on, a message for people, and the underlying cause if any.
///
/// # Examples
///
/// ```
/// use prefork_broker::{BrokerError, ErrorKind};
///
/// let e = BrokerError::new(ErrorKind::Transient, "connection reset");
/// assert!(e.is_retryable());
/// assert_eq!(e.to_string(), "transient: connection reset");
///
/// let e = BrokerError::io("fetch", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
/// assert_eq!(e.kind(), ErrorKind::Other);
/// ```
#[derive(Debug)]
pub struct BrokerError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl BrokerError {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BrokerError {
        BrokerError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error with an underlying cause, returned by
    /// [`Error::source`](std::error::Error::source).
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> BrokerError {
        self.source = Some(source.into());
        self
    }

    /// An error from an I/O failure while doing `context`, classified by
    /// [`io::ErrorKind`]: interruptions, timeouts, dropped connections,
    /// full disks and exhausted descriptor tables are
    /// [`Transient`](ErrorKind::Transient); `NotFound` is
    /// [`NotFound`](ErrorKind::NotFound); `InvalidInput` is
    /// [`Invalid`](ErrorKind::Invalid); `InvalidData` and `UnexpectedEof`
    /// are [`Corrupt`](ErrorKind::Corrupt); the rest are
    /// [`Other`](ErrorKind::Other).
    pub fn io(context: impl fmt::Display, error: io::Error) -> BrokerError {
        use io::ErrorKind as K;
        let kind = match error.kind() {
            K::Interrupted
            | K::WouldBlock
            | K::TimedOut
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
            | K::BrokenPipe
            | K::AddrNotAvailable
            | K::NetworkDown
            | K::NetworkUnreachable
            | K::HostUnreachable
            | K::StorageFull
            | K::QuotaExceeded
            | K::ResourceBusy
            | K::OutOfMemory => ErrorKind::Transient,
            K::NotFound => ErrorKind::NotFound,
            K::InvalidInput | K::InvalidFilename => ErrorKind::Invalid,
            K::InvalidData | K::UnexpectedEof => ErrorKind::Corrupt,
            K::Unsupported => ErrorKind::Unsupported,
            _ => match error.raw_os_error() {
                // EMFILE, ENFILE: descriptors may be freed later.
                Some(24) | Some(23) => ErrorKind::Transient,
                _ => ErrorKind::Other,
            },
        };
        BrokerError::new(kind, format!("{context}: {error}")).with_source(error)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the failed operation can succeed if tried again; see
    /// [`ErrorKind::is_retryable`].
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl StdError for BrokerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The error of an operation that consumes a [`Delivery`] (ack, retry,
/// release, dead-letter): the cause, and the delivery handed back so the
/// caller can try again or settle it another way.
///
/// # Examples
///
/// ```
/// use prefork_broker::{BrokerError, Delivery, DeliveryId, ErrorKind, SettleError};
///
/// let d = Delivery::new(DeliveryId::new("7"), b"job".to_vec());
/// let e = SettleError::new(d, BrokerError::new(ErrorKind::Transient, "timeout"));
/// assert!(e.error().is_retryable());
/// let (delivery, _error) = e.into_parts();
/// assert_eq!(delivery.payload(), b"job");
/// ```
#[derive(Debug)]
pub struct SettleError {
    delivery: Box<Delivery>,
    error: BrokerError,
}

impl SettleError {
    /// Pairs a delivery that could not be settled with the reason.
    pub fn new(delivery: Delivery, error: BrokerError) -> SettleError {
        SettleError {
            delivery: Box::new(delivery),
            error,
        }
    }

    /// Why the operation failed.
    pub fn error(&self) -> &BrokerError {
        &self.error
    }

    /// The delivery that was handed back.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Splits into the delivery and the error.
    pub fn into_parts(self) -> (Delivery, BrokerError) {
        (*self.delivery, self.error)
    }

    /// Drops the delivery and keeps the error.
    pub fn into_error(self) -> BrokerError {
        self.error
    }
}

impl fmt::Display for SettleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delivery {}: {}", self.delivery.id(), self.error)
    }
}

impl StdError for SettleError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.error)
    }
}

impl From<SettleError> for BrokerError {
    fn from(e: SettleError) -> BrokerError {
        e.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_is_retryable() {
        let kinds = [
            ErrorKind::Transient,
            ErrorKind::LeaseLost,
            ErrorKind::NotFound,
            ErrorKind::Invalid,
            ErrorKind::Unsupported,
            ErrorKind::Corrupt,
            ErrorKind::Other,
        ];
        let retryable: Vec<_> = kinds.iter().filter(|k| k.is_retryable()).collect();
        assert_eq!(retryable, [&ErrorKind::Transient]);
    }

    #[test]
    fn io_errors_are_classified() {
        let e = |k| BrokerError::io("x", io::Error::from(k)).kind();
        assert_eq!(e(io::ErrorKind::ConnectionReset), ErrorKind::Transient);
        assert_eq!(e(io::ErrorKind::StorageFull), ErrorKind::Transient);
        assert_eq!(e(io::ErrorKind::NotFound), ErrorKind::NotFound);
        assert_eq!(e(io::ErrorKind::InvalidData), ErrorKind::Corrupt);
        assert_eq!(e(io::ErrorKind::PermissionDenied), ErrorKind::Other);
        let emfile = BrokerError::io("open", io::Error::from_raw_os_error(24));
        assert!(emfile.is_retryable());
        assert!(emfile.source().is_some());
        assert!(emfile.to_string().starts_with("transient: open: "));
    }

    #[test]
    fn settle_error_hands_the_delivery_back() {
        let d = Delivery::new(crate::DeliveryId::new("a"), vec![1, 2]).with_attempt(3);
        let e = SettleError::new(d, BrokerError::new(ErrorKind::LeaseLost, "expired"));
        assert_eq!(e.to_string(), "delivery a: lease lost: expired");
        let (d, err) = e.into_parts();
        assert_eq!((d.payload(), d.attempt()), (&[1u8, 2][..], 3));
        assert_eq!(err.kind(), ErrorKind::LeaseLost);
    }
}
