//! One AMQP connection with its one channel (publisher confirms on), and
//! the mapping of amiquip's errors onto [`BrokerError`] kinds.

use std::time::{Duration, Instant};

use std::net::{TcpStream, ToSocketAddrs};

use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Confirm, ConfirmSmoother, Connection,
    ConnectionOptions, ConnectionTuning, FieldTable, Publish, QueueDeclareOptions,
};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use prefork_broker::{BrokerError, ErrorKind};

use crate::Config;

/// A live connection and its channel. Field order matters: the channel is
/// closed before the connection.
pub(crate) struct Session {
    pub(crate) channel: Channel,
    confirms: Receiver<Confirm>,
    smoother: ConfirmSmoother,
    /// Publishes made so far on the channel (their confirm tags are 1..=n).
    published: u64,
    /// Every publish up to this tag has been confirmed.
    confirmed: u64,
    /// Whether the server refused (nacked) a publish not yet reported.
    refused: bool,
    pub(crate) conn: Connection,
}

impl Session {
    /// Connects, opens the channel and turns publisher confirms on.
    pub(crate) fn open(config: &Config) -> Result<Session, BrokerError> {
        let mut conn = connect(config)?;
        let channel = conn
            .open_channel(None)
            .map_err(|e| classify("open a channel", e))?;
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| classify("listen for publisher confirms", e))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| classify("enable publisher confirms", e))?;
        Ok(Session {
            channel,
            confirms,
            smoother: ConfirmSmoother::new(),
            published: 0,
            confirmed: 0,
            refused: false,
            conn,
        })
    }

    /// Declares a durable queue with `arguments` (idempotent when it exists
    /// with the same ones).
    pub(crate) fn declare(&self, name: &str, arguments: FieldTable) -> Result<(), BrokerError> {
        let options = QueueDeclareOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments,
        };
        self.channel
            .queue_declare(name, options)
            .map(drop)
            .map_err(|e| classify(&format!("declare queue {name:?}"), e))
    }

    /// Publishes a persistent message to `queue` through the default
    /// exchange, without waiting for its confirm ([`Session::confirm_all`]
    /// does).
    pub(crate) fn publish(
        &mut self,
        queue: &str,
        payload: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), BrokerError> {
        let properties = properties.with_delivery_mode(2);
        self.channel
            .basic_publish("", Publish::with_properties(payload, queue, properties))
            .map_err(|e| classify(&format!("publish to {queue:?}"), e))?;
        self.published += 1;
        Ok(())
    }

    /// Waits until the server confirmed every publish made so far.
    ///
    /// # Errors
    ///
    /// Transient when a publish was refused (nacked) or no confirm came
    /// within `timeout`.
    pub(crate) fn confirm_all(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = Instant::now() + timeout;
        while self.confirmed < self.published {
            let left = deadline.saturating_duration_since(Instant::now());
            let c = match self.confirms.recv_timeout(left) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BrokerError::new(
                        ErrorKind::Transient,
                        format!(
                            "no publisher confirm within {timeout:?} ({} of {} confirmed)",
                            self.confirmed, self.published
                        ),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BrokerError::new(
                        ErrorKind::Transient,
                        "the connection closed before the publish was confirmed",
                    ));
                }
            };
            for c in self.smoother.process(c) {
                match c {
                    Confirm::Ack(p) => self.confirmed = self.confirmed.max(p.delivery_tag),
                    Confirm::Nack(p) => {
                        self.confirmed = self.confirmed.max(p.delivery_tag);
                        self.refused = true;
                    }
                }
            }
        }
        if std::mem::take(&mut self.refused) {
            return Err(BrokerError::new(
                ErrorKind::Transient,
                "the server refused a publish (nack): it may be out of memory or disk",
            ));
        }
        Ok(())
    }
}

/// Opens the AMQP connection over a TCP stream of our own: amiquip's URL
/// opener leaves Nagle's algorithm on, and an ack followed by the
/// synchronous call that proves it was read then waits out the server's
/// delayed ACK (measured: 111 acks/s one at a time, instead of thousands).
fn connect(config: &Config) -> Result<Connection, BrokerError> {
    let server = config.redacted_url();
    let addr = (config.host(), config.port())
        .to_socket_addrs()
        .map_err(|e| BrokerError::io(format!("resolve {server}"), e))?
        .next()
        .ok_or_else(|| {
            BrokerError::new(
                ErrorKind::Transient,
                format!("{server}: the host has no address"),
            )
        })?;
    let tcp = TcpStream::connect_timeout(&addr, config.connect_timeout)
        .map_err(|e| BrokerError::io(format!("connect to {server}"), e))?;
    tcp.set_nodelay(true)
        .map_err(|e| BrokerError::io("set TCP_NODELAY", e))?;
    let stream = mio06::net::TcpStream::from_stream(tcp)
        .map_err(|e| BrokerError::io("make the socket non-blocking", e))?;
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: config.user().to_owned(),
            password: config.password.clone(),
        })
        .virtual_host(config.vhost())
        .heartbeat(config.heartbeat)
        .connection_timeout(Some(config.connect_timeout));
    Connection::insecure_open_stream(stream, options, ConnectionTuning::default())
        .map_err(|e| classify(&format!("open AMQP on {server}"), e))
}

/// A `FieldTable` from `(key, value)` pairs.
pub(crate) fn table<const N: usize>(entries: [(&str, AmqpValue); N]) -> FieldTable {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// An integer header value of any AMQP integer type.
pub(crate) fn int_value(v: &AmqpValue) -> Option<i64> {
    Some(match v {
        AmqpValue::ShortShortInt(n) => i64::from(*n),
        AmqpValue::ShortShortUInt(n) => i64::from(*n),
        AmqpValue::ShortInt(n) => i64::from(*n),
        AmqpValue::ShortUInt(n) => i64::from(*n),
        AmqpValue::LongInt(n) => i64::from(*n),
        AmqpValue::LongUInt(n) => i64::from(*n),
        AmqpValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// The [`BrokerError`] for an amiquip error while doing `context`.
pub(crate) fn classify(context: &str, e: amiquip::Error) -> BrokerError {
    use amiquip::Error as E;
    let kind = match &e {
        E::ServerClosedChannel { code, .. } | E::ServerClosedConnection { code, .. } => {
            match code {
                404 => ErrorKind::NotFound,
                // PRECONDITION_FAILED (a queue declared with other
                // arguments), a frame or command the server refuses.
                406 | 501 | 502 | 503 | 505 | 530 | 540 => ErrorKind::Invalid,
                // ACCESS_REFUSED, NOT_ALLOWED (a vhost we may not use).
                403 => ErrorKind::Other,
                // CONNECTION_FORCED (a shutdown), RESOURCE_ERROR, and the
                // rest: the server went away or is busy.
                _ => ErrorKind::Transient,
            }
        }
        E::InvalidCredentials | E::SaslSecureNotSupported | E::UnsupportedAuthMechanism { .. } => {
            ErrorKind::Other
        }
        E::UrlParseError { .. }
        | E::InvalidUrlScheme { .. }
        | E::UrlMissingDomain { .. }
        | E::ExtraUrlPathSegments { .. }
        | E::UrlUnsupportedParameter { .. }
        | E::SpecifyUrlPort { .. } => ErrorKind::Invalid,
        E::MalformedFrame | E::FrameUnexpected | E::ReceivedFrameWithBogusChannelId { .. } => {
            ErrorKind::Corrupt
        }
        _ => ErrorKind::Transient,
    };
    BrokerError::new(kind, format!("{context}: {e}")).with_source(e)
}
