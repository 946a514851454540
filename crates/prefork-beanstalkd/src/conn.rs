//! One connection to beanstalkd: a `std::net::TcpStream`, a write buffer
//! that pipelines commands into one `write`, and a read buffer decoded by
//! [`parse_response`](crate::proto::parse_response).
//!
//! Dropping a `Conn` closes its socket and writes nothing (no `quit`): a
//! forked child that drops a copy it inherited leaves the parent's session
//! untouched.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use prefork_broker::{BrokerError, ErrorKind};

use crate::proto::{ProtoError, Response, parse_response};

/// A failure on the connection; after one the connection is out of step and
/// is dropped.
#[derive(Debug)]
pub(crate) enum ConnError {
    Io(io::Error),
    Proto(ProtoError),
}

impl ConnError {
    pub(crate) fn into_broker(self, context: &str) -> BrokerError {
        match self {
            ConnError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => BrokerError::new(
                ErrorKind::Transient,
                format!("{context}: the server closed the connection"),
            )
            .with_source(e),
            ConnError::Io(e) => BrokerError::io(context, e),
            ConnError::Proto(e) => {
                BrokerError::new(ErrorKind::Corrupt, format!("{context}: {e}")).with_source(e)
            }
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> ConnError {
        ConnError::Io(e)
    }
}

pub(crate) struct Conn {
    stream: TcpStream,
    /// Commands queued by callers, sent by [`Conn::flush`].
    pub(crate) out: Vec<u8>,
    input: Vec<u8>,
    /// The largest response body accepted.
    pub(crate) max_body: usize,
    pub(crate) io_timeout: Duration,
    /// The read timeout set on the socket, to set it only when it changes.
    read_timeout: Option<Duration>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.stream.peer_addr().ok())
            .field("buffered", &self.input.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects to the first of `addrs` that answers.
    pub(crate) fn connect(
        addrs: &[SocketAddr],
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        for addr in addrs {
            match TcpStream::connect_timeout(addr, connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_write_timeout(Some(io_timeout))?;
                    return Ok(Conn {
                        stream,
                        out: Vec::with_capacity(256),
                        input: Vec::with_capacity(4096),
                        max_body: 64 * 1024,
                        io_timeout,
                        read_timeout: None,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends every queued command in one write.
    pub(crate) fn flush(&mut self) -> Result<(), ConnError> {
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        Ok(r?)
    }

    /// Reads the next response, waiting up to the I/O timeout plus `extra`
    /// (the time the server itself may block, for a reserve).
    pub(crate) fn recv(&mut self, extra: Duration) -> Result<Response, ConnError> {
        let mut armed = false;
        loop {
            match parse_response(&self.input, self.max_body) {
                Ok(Some((r, used))) => {
                    self.input.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(ConnError::Proto(e)),
            }
            if !armed {
                let timeout = Some(self.io_timeout.saturating_add(extra));
                if self.read_timeout != timeout {
                    self.stream.set_read_timeout(timeout)?;
                    self.read_timeout = timeout;
                }
                armed = true;
            }
            let at = self.input.len();
            self.input.resize(at + 64 * 1024, 0);
            let n = match self.stream.read(&mut self.input[at..]) {
                Ok(n) => n,
                Err(e) => {
                    self.input.truncate(at);
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e.into());
                }
            };
            self.input.truncate(at + n);
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }
}
