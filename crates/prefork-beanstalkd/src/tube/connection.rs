//! The connection of a [`Beanstalkd`] handle: opening it with the tube's
//! set-up, pipelined exchanges of commands and replies, and what a reply
//! that does not belong means.

use std::time::Duration;

use prefork_broker::{BrokerError, ErrorKind};

use super::Beanstalkd;
use crate::conn::Conn;
use crate::proto::{Response, ServerError, cmd, yaml_field};

impl Beanstalkd {
    /// The live connection, opening one (with the per-tube set-up) if the
    /// last one failed.
    pub(super) fn conn(&mut self) -> Result<&mut Conn, BrokerError> {
        if self.conn.is_none() {
            let c = &self.config;
            let mut conn =
                Conn::connect(&self.addrs, c.connect_timeout, c.io_timeout).map_err(|e| {
                    BrokerError::io(format!("connect to beanstalkd at {}", c.address()), e)
                })?;
            cmd::line(&mut conn.out, format_args!("use {}", self.tube));
            cmd::line(&mut conn.out, format_args!("watch {}", self.tube));
            let ignore = self.tube != "default";
            if ignore {
                cmd::line(&mut conn.out, format_args!("ignore default"));
            }
            cmd::line(&mut conn.out, format_args!("stats"));
            let mut replies = Vec::new();
            let r = conn.flush().and_then(|()| {
                for _ in 0..3 + usize::from(ignore) {
                    replies.push(conn.recv(Duration::ZERO)?);
                }
                Ok(())
            });
            r.map_err(|e| e.into_broker("open a beanstalkd connection"))?;
            let max = match replies.as_slice() {
                [
                    Response::Using(_),
                    Response::Watching(_),
                    ..,
                    Response::Ok(yaml),
                ] => yaml_field(yaml, "max-job-size").and_then(|v| v.parse::<usize>().ok()),
                _ => None,
            };
            let Some(max) = max else {
                return Err(BrokerError::new(
                    ErrorKind::Corrupt,
                    format!("unexpected beanstalkd handshake replies {replies:?}"),
                ));
            };
            self.server_max = max;
            self.max_job_size = max.saturating_sub(crate::HEADROOM);
            // No reply body can be larger than a job the server accepts
            // (stats bodies are a few KiB).
            conn.max_body = max.max(16 * 1024) + 1024;
            if let Some(Response::Ok(yaml)) = replies.last() {
                let id = yaml_field(yaml, "id").unwrap_or_default().to_owned();
                let binlog = yaml_field(yaml, "binlog-current-index").is_some_and(|i| i != "0");
                self.server = Some((id, binlog));
            }
            self.generation += 1;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Queues the commands `write` appends, sends them in one write and
    /// reads `n` replies. Any failure drops the connection (it is out of
    /// step), so its claims go back to the server at once.
    pub(super) fn exchange(
        &mut self,
        what: &str,
        n: usize,
        wait: Duration,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<Response>, BrokerError> {
        self.conn()?;
        let conn = self.conn.as_mut().expect("connected");
        write(&mut conn.out);
        let mut replies = Vec::with_capacity(n);
        let r = conn.flush().and_then(|()| {
            for _ in 0..n {
                replies.push(conn.recv(wait)?);
            }
            Ok(())
        });
        match r {
            Ok(()) => Ok(replies),
            Err(e) => {
                self.conn = None;
                Err(e.into_broker(what))
            }
        }
    }

    pub(super) fn exchange1(
        &mut self,
        what: &str,
        wait: Duration,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response, BrokerError> {
        Ok(self
            .exchange(what, 1, wait, write)?
            .pop()
            .expect("one reply"))
    }

    /// The error for a reply that does not belong to the command: server
    /// errors by their meaning; anything else means the client and server
    /// are out of step, so the connection is dropped.
    pub(super) fn unexpected(&mut self, what: &str, r: Response) -> BrokerError {
        match r {
            Response::Error(e) => server_error(what, e),
            other => {
                self.conn = None;
                BrokerError::new(
                    ErrorKind::Corrupt,
                    format!("{what}: unexpected reply {other:?}"),
                )
            }
        }
    }
}

pub(super) fn server_error(what: &str, e: ServerError) -> BrokerError {
    let kind = match e {
        ServerError::OutOfMemory | ServerError::Draining => ErrorKind::Transient,
        ServerError::JobTooBig => ErrorKind::Invalid,
        ServerError::InternalError => ErrorKind::Other,
        // Our command was malformed: a bug here, not a passing condition.
        ServerError::BadFormat | ServerError::UnknownCommand | ServerError::ExpectedCrlf => {
            ErrorKind::Other
        }
    };
    BrokerError::new(kind, format!("{what}: the server answered {e}"))
}
