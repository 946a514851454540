//! `Conn`: one Redis connection that can send a command without reading its
//! reply (a deferred ack), and reads such replies ahead of the reply of the
//! next command sent on it, so a deferred ack costs no round trip of its own.
//!
//! The protocol: [`Conn::send_deferred`] writes a command and records what it
//! carried in `unread`. Any later command sent through the connection (it is a
//! [`ConnectionLike`], so `cmd.query(&mut conn)` and pipelines work) is
//! written first, then the `unread` replies are read (in order: Redis
//! answers one connection's commands in the order they came) into `read`,
//! then the command's own replies. The owner takes `read` after each call
//! ([`Conn::take_read`]) and, when the connection is dropped, what was never
//! answered ([`Conn::into_unanswered`]), to send again after a reconnect.

use std::collections::VecDeque;

use redis::{Connection, ConnectionLike, RedisError, RedisResult, Value};

/// The receipts a deferred ack carried, each with whether it was sent
/// again (after a reconnect or a failed ack) rather than for the first time.
pub(crate) type Sent = Vec<(String, bool)>;

/// A connection with deferred replies; see the module docs.
pub(crate) struct Conn {
    inner: Connection,
    unread: VecDeque<Sent>,
    read: Vec<(Sent, Value)>,
}

impl Conn {
    pub(crate) fn new(inner: Connection) -> Conn {
        Conn {
            inner,
            unread: VecDeque::new(),
            read: Vec::new(),
        }
    }

    /// Writes `packed` and returns without reading its reply. On an error the
    /// command counts as unanswered (it may or may not have reached Redis).
    pub(crate) fn send_deferred(&mut self, packed: &[u8], sent: Sent) -> RedisResult<()> {
        self.unread.push_back(sent);
        self.inner.send_packed_command(packed)
    }

    /// Reads every deferred reply still due (blocking until they came).
    pub(crate) fn drain(&mut self) -> RedisResult<()> {
        while !self.unread.is_empty() {
            let v = self.recv()?;
            let sent = self.unread.pop_front().expect("an unread reply");
            self.read.push((sent, v));
        }
        Ok(())
    }

    /// The deferred replies read so far, with what each command carried.
    pub(crate) fn take_read(&mut self) -> Vec<(Sent, Value)> {
        std::mem::take(&mut self.read)
    }

    /// The replies read and the commands never answered, when the
    /// connection is given up.
    pub(crate) fn into_unanswered(self) -> (Vec<(Sent, Value)>, Vec<Sent>) {
        (self.read, self.unread.into())
    }

    /// One reply, skipping RESP3 push messages (they are not replies).
    fn recv(&mut self) -> RedisResult<Value> {
        loop {
            match self.inner.recv_response()? {
                Value::Push { .. } => continue,
                v => return Ok(v),
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.inner.send_packed_command(cmd)?;
        self.drain()?;
        self.recv()
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.inner.send_packed_command(cmd)?;
        self.drain()?;
        let mut out = Vec::with_capacity(count);
        let mut first_err: Option<RedisError> = None;
        for i in 0..offset + count {
            match self.recv() {
                Ok(v) if i >= offset => out.push(v),
                Ok(_) => {}
                Err(e) => {
                    let broken = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                    first_err.get_or_insert(e);
                    if broken {
                        break; // nothing more will come
                    }
                }
            }
        }
        first_err.map_or(Ok(out), Err)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.inner.is_open()
    }
}
