//! The connection of a [`RedisQueue`]: connecting with backoff, running
//! commands and scripts on it (reloading scripts and recreating the group
//! when Redis lost them), and what a failed call means for it.

use std::time::Instant;

use prefork_broker::{BrokerError, ErrorKind};
use redis::{ConnectionLike, RedisError, Value};

use super::RedisQueue;
use crate::conn::Conn;
use crate::scripts::{self, Script};

impl RedisQueue {
    pub(super) fn error(&mut self, context: &str, e: &RedisError) -> BrokerError {
        let (kind, drop) = classify(e);
        if drop && let Some(conn) = self.conn.take() {
            tracing::warn!(url = %self.url, queue = %self.name, error = %e, "redis connection lost during {context}");
            let (read, unanswered) = conn.into_unanswered();
            self.deferred_replies(read);
            let again: Vec<String> = unanswered.into_iter().flatten().map(|(r, _)| r).collect();
            if !again.is_empty() {
                tracing::info!(queue = %self.name, count = again.len(), "acks whose reply never came will be sent again after the reconnect");
                self.resend.extend(again);
            }
            self.schedule_retry();
        }
        BrokerError::new(kind, format!("{context} on {}: {e}", self.url))
    }

    pub(super) fn schedule_retry(&mut self) {
        let r = self.rng.next();
        self.next_attempt = Some(Instant::now() + self.backoff.failed(r));
    }

    /// Connects now unless the backoff says to wait.
    pub(super) fn connect(&mut self) -> Result<(), BrokerError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if let Some(at) = self.next_attempt {
            let now = Instant::now();
            if now < at {
                return Err(BrokerError::new(
                    ErrorKind::Transient,
                    format!("{} unreachable; next attempt in {:?}", self.url, at - now),
                ));
            }
        }
        match self.try_connect() {
            Ok(conn) => {
                if self.next_attempt.is_some() {
                    tracing::info!(url = %self.url, queue = %self.name, consumer = %self.consumer, "redis reconnected");
                }
                self.conn = Some(conn);
                self.next_attempt = None;
                self.backoff.reset();
                if !self.resend.is_empty() {
                    let again = std::mem::take(&mut self.resend);
                    self.send_acks(again.into_iter().map(|r| (r, true)).collect());
                }
                Ok(())
            }
            Err(e) => {
                self.schedule_retry();
                // DEBUG: the caller gets the error; a pool's worker or
                // feeder says once that the broker is away (prefork-jobs'
                // outage report), not once a retry.
                tracing::debug!(url = %self.url, queue = %self.name, error = %e, "cannot connect to redis");
                let (kind, _) = classify(&e);
                let kind = if kind == ErrorKind::Corrupt {
                    ErrorKind::Transient
                } else {
                    kind
                };
                Err(BrokerError::new(
                    kind,
                    format!("connect to {}: {e}", self.url),
                ))
            }
        }
    }

    pub(super) fn try_connect(&mut self) -> Result<Conn, RedisError> {
        let t = self.options.io_timeout;
        let mut conn = self.client.get_connection_with_timeout(t)?;
        conn.set_write_timeout(Some(t))?;
        conn.set_read_timeout(Some(t + self.options.block))?;
        self.shas = load_scripts(&mut conn)?;
        ensure_group(&mut conn, &self.keys.stream, &self.options.group)?;
        if let Some(idle) = self.options.reap_idle_consumers {
            let r: Result<Value, _> = redis::cmd("EVAL")
                .arg(scripts::REAP_CONSUMERS)
                .arg(1)
                .arg(&self.keys.stream)
                .arg(&self.options.group)
                .arg(idle.as_millis() as u64)
                .arg(100)
                .query(&mut conn);
            if let Err(e) = r {
                tracing::debug!(error = %e, "reaping idle consumers failed");
            }
        }
        Ok(Conn::new(conn))
    }

    /// Runs `f` on the connection, connecting first; reloads scripts after
    /// `NOSCRIPT` and recreates the group after `NOGROUP`, then runs it once
    /// more. Handles the deferred ack replies read on the way.
    pub(super) fn call<T>(
        &mut self,
        context: &str,
        f: impl Fn(&mut Conn, &[String]) -> Result<T, RedisError>,
    ) -> Result<T, BrokerError> {
        let r = self.call_inner(context, f);
        self.pump();
        r
    }

    pub(super) fn call_inner<T>(
        &mut self,
        context: &str,
        f: impl Fn(&mut Conn, &[String]) -> Result<T, RedisError>,
    ) -> Result<T, BrokerError> {
        self.connect()?;
        let conn = self.conn.as_mut().expect("connected");
        if self.reload_scripts {
            match load_scripts(conn) {
                Ok(shas) => {
                    self.shas = shas;
                    self.reload_scripts = false;
                }
                Err(e) => return Err(self.error(context, &e)),
            }
        }
        let conn = self.conn.as_mut().expect("connected");
        let first = f(conn, &self.shas);
        let e = match first {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let fixed = if is_code(&e, "NOSCRIPT") {
            load_scripts(conn).map(|shas| self.shas = shas)
        } else if is_code(&e, "NOGROUP") {
            ensure_group(conn, &self.keys.stream, &self.options.group)
        } else {
            return Err(self.error(context, &e));
        };
        match fixed.and_then(|()| f(self.conn.as_mut().expect("connected"), &self.shas)) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.error(context, &e)),
        }
    }

    /// A settling script call: one retry after reconnecting, when the
    /// connection was lost and the backoff allows an attempt at once.
    pub(super) fn settle_call(
        &mut self,
        context: &str,
        script: Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<Value, BrokerError> {
        let run = |c: &mut Conn, shas: &[String]| evalsha(c, shas, script, keys, args);
        match self.call(context, run) {
            Err(e) if e.is_retryable() && self.conn.is_none() => {
                self.next_attempt = None; // one immediate attempt
                self.call(context, run)
            }
            other => other,
        }
    }
}

/// What a failed Redis call means for the connection.
pub(super) fn classify(e: &RedisError) -> (ErrorKind, bool) {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    if matches!(e.kind(), K::AuthenticationFailed | K::InvalidClientConfig)
        || e.code() == Some("NOPERM")
    {
        return (ErrorKind::Other, true);
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
    {
        return (ErrorKind::Transient, true);
    }
    match e.kind() {
        K::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown) => {
            (ErrorKind::Transient, false)
        }
        K::Server(S::ReadOnly) => (ErrorKind::Transient, true),
        K::Server(_) if matches!(e.code(), Some("OOM" | "BUSY")) => (ErrorKind::Transient, false),
        K::Io => (ErrorKind::Transient, true),
        K::Parse | K::UnexpectedReturnType => (ErrorKind::Corrupt, true),
        _ => (ErrorKind::Other, false),
    }
}

pub(super) fn is_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code) || e.to_string().contains(code)
}

pub(super) fn evalsha(
    c: &mut impl ConnectionLike,
    shas: &[String],
    script: Script,
    keys: &[String],
    args: &[Vec<u8>],
) -> Result<Value, RedisError> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&shas[script as usize]).arg(keys.len());
    for k in keys {
        cmd.arg(k);
    }
    for a in args {
        cmd.arg(a.as_slice());
    }
    cmd.query(c)
}

pub(super) fn load_scripts(c: &mut impl ConnectionLike) -> Result<Vec<String>, RedisError> {
    let mut p = redis::pipe();
    for s in scripts::ALL {
        p.cmd("SCRIPT").arg("LOAD").arg(s);
    }
    p.query(c)
}

pub(super) fn ensure_group(
    c: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<(), RedisError> {
    let r: Result<Value, RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(c);
    match r {
        Err(e) if !is_code(&e, "BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
