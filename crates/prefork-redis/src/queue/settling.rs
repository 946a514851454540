//! Settling a [`RedisQueue`]'s deliveries: acks (batched and deferred,
//! and sent again after a reconnect), retries, releases, dead letters and
//! touches, each an owner-checked script.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use prefork_broker::{BrokerError, Delivery, ErrorKind, SettleError};
use redis::Value;

use super::RedisQueue;
use super::publishing::delay_micros;
use crate::conn::{Conn, Sent};
use crate::entry;
use crate::scripts::Script;

impl RedisQueue {
    /// Acks many deliveries in one round trip (one script call); returns
    /// those that could not be acked, each with its reason, or an empty
    /// `Vec`. Same semantics as [`Broker::ack`](prefork_broker::Broker::ack) for each.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use prefork_broker::Broker;
    ///
    /// let mut q = prefork_redis::Redis::new("redis://127.0.0.1:6379/")?.queue("thumbs")?;
    /// let batch = q.fetch(64, Duration::from_secs(1))?;
    /// // ... run them ...
    /// for failed in q.ack_batch(batch) {
    ///     eprintln!("not acked: {failed}");
    /// }
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    #[must_use = "the deliveries that were not acked are handed back"]
    pub fn ack_batch(&mut self, deliveries: Vec<Delivery>) -> Vec<SettleError> {
        if deliveries.is_empty() {
            return Vec::new();
        }
        // The caller's own ack supersedes one queued for after a reconnect.
        if !self.resend.is_empty() {
            let mine: HashSet<&str> = deliveries.iter().map(Delivery::receipt).collect();
            self.resend.retain(|r| !mine.contains(r.as_str()));
        }
        let mut args = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
        ];
        args.extend(deliveries.iter().map(|d| d.receipt().as_bytes().to_vec()));
        let keys = [self.keys.stream.clone()];
        let res = self.settle_call("ack", Script::Ack, &keys, &args);
        match res {
            Err(e) => {
                if e.is_retryable() && self.conn.is_none() {
                    // Redis is away: ack them after the reconnect as well
                    // (the caller may also try again with what it gets back).
                    self.resend
                        .extend(deliveries.iter().map(|d| d.receipt().to_owned()));
                } else {
                    self.stale
                        .extend(deliveries.iter().map(|d| d.receipt().to_owned()));
                }
                let mut out = Vec::with_capacity(deliveries.len());
                for d in deliveries {
                    out.push(SettleError::new(
                        d,
                        BrokerError::new(e.kind(), e.message().to_owned()),
                    ));
                }
                out
            }
            Ok(Value::Array(flags)) if flags.len() == deliveries.len() => deliveries
                .into_iter()
                .zip(flags)
                .filter(|(d, f)| {
                    let acked = entry::int(f) == Some(1) || self.acked_again.remove(d.receipt());
                    self.stale.remove(d.receipt());
                    !acked
                })
                .map(|(d, _)| {
                    let e = lost("ack", &d);
                    SettleError::new(d, e)
                })
                .collect(),
            Ok(other) => deliveries
                .into_iter()
                .map(|d| {
                    SettleError::new(
                        d,
                        BrokerError::new(
                            ErrorKind::Corrupt,
                            format!("ack: unexpected reply {other:?}"),
                        ),
                    )
                })
                .collect(),
        }
    }

    /// Sends one ack script call for `sent` without reading its reply (see
    /// [`Broker::ack_deferred`](prefork_broker::Broker::ack_deferred)); when
    /// it cannot be sent, queues the receipts for after the reconnect.
    /// Connects first when it may.
    pub(super) fn send_acks(&mut self, sent: Sent) {
        if sent.is_empty() {
            return;
        }
        if self.conn.is_none() {
            let _ = self.connect(); // resends what was queued, on success
        }
        let Some(conn) = self.conn.as_mut() else {
            self.resend.extend(sent.into_iter().map(|(r, _)| r));
            return;
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.shas[Script::Ack as usize])
            .arg(1)
            .arg(&self.keys.stream)
            .arg(&self.options.group)
            .arg(&self.consumer);
        for (r, _) in &sent {
            cmd.arg(r);
        }
        if let Err(e) = conn.send_deferred(&cmd.get_packed_command(), sent) {
            let _ = self.error("deferred ack", &e);
        }
    }

    /// Settles the replies of deferred acks read so far: lost claims are
    /// logged, server errors queue the acks again.
    pub(super) fn deferred_replies(&mut self, replies: Vec<(Sent, Value)>) {
        for (sent, v) in replies {
            match v {
                Value::Array(flags) if flags.len() == sent.len() => {
                    for ((receipt, again), f) in sent.into_iter().zip(flags) {
                        self.stale.remove(&receipt);
                        match (entry::int(&f) == Some(1), again) {
                            (true, true) => {
                                if self.acked_again.len() >= 4096 {
                                    self.acked_again.clear();
                                }
                                self.acked_again.insert(receipt);
                            }
                            (true, false) => {}
                            (false, true) => {
                                tracing::debug!(queue = %self.name, entry = %receipt, "ack sent again: already gone (acked before the connection was lost, or reclaimed)");
                            }
                            (false, false) => {
                                tracing::warn!(queue = %self.name, entry = %receipt, "deferred ack: claim lost before the ack; the job will run again");
                            }
                        }
                    }
                }
                other => {
                    if let Value::ServerError(e) = &other
                        && e.code() == "NOSCRIPT"
                    {
                        self.reload_scripts = true;
                    }
                    tracing::warn!(queue = %self.name, reply = ?other, count = sent.len(), "deferred ack refused; sending it again later");
                    self.resend.extend(sent.into_iter().map(|(r, _)| r));
                }
            }
        }
    }

    /// Handles the deferred replies the last command read ahead of its own.
    pub(super) fn pump(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            let replies = c.take_read();
            if !replies.is_empty() {
                self.deferred_replies(replies);
            }
        }
    }

    /// A settle that did not reach Redis: the claim stays this consumer's,
    /// so it is marked stale (taken back by the next reclaim once idle for
    /// the lease, unless settled before) and the delivery handed back.
    pub(super) fn failed_settle(&mut self, delivery: Delivery, e: BrokerError) -> SettleError {
        self.stale.insert(delivery.receipt().to_owned());
        SettleError::new(delivery, e)
    }

    pub(super) fn dead_letter_entry(
        &mut self,
        entry: &str,
        job: &str,
        payload: &[u8],
        reason: &str,
        attempt: u32,
    ) -> Result<bool, BrokerError> {
        let keys = [
            self.keys.stream.clone(),
            self.keys.dead.clone(),
            self.keys.dead_index.clone(),
        ];
        let args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            entry.as_bytes().to_vec(),
            job.as_bytes().to_vec(),
            payload.to_vec(),
            reason.as_bytes().to_vec(),
            attempt.to_string().into_bytes(),
        ];
        let v = self.settle_call("dead_letter", Script::Dead, &keys, &args)?;
        Ok(entry::int(&v) == Some(1))
    }

    pub(super) fn requeue(
        &mut self,
        what: &str,
        d: &Delivery,
        delay: Duration,
        attempt: u32,
    ) -> Result<bool, BrokerError> {
        let delay_us = delay_micros(delay)?;
        let nonce = self.next_nonce();
        let keys = [self.keys.stream.clone(), self.keys.delayed.clone()];
        let args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            d.receipt().as_bytes().to_vec(),
            delay_us.to_string().into_bytes(),
            nonce.into_bytes(),
            d.payload().to_vec(),
            attempt.to_string().into_bytes(),
            d.id().as_str().as_bytes().to_vec(),
        ];
        let v = self.settle_call(what, Script::Requeue, &keys, &args)?;
        if delay_us > 0 {
            // Our own delayed job: look for it when it is due.
            let due = Instant::now() + delay;
            self.next_promote = self.next_promote.min(due);
        }
        Ok(entry::int(&v) == Some(1))
    }

    /// The body of [`Broker::flush`](prefork_broker::Broker::flush).
    pub(super) fn flush_acks(&mut self) -> Result<(), BrokerError> {
        let mut failed = None;
        for _ in 0..3 {
            self.connect()?; // sends the queued acks first
            let drained = self.conn.as_mut().map_or(Ok(()), Conn::drain);
            if let Err(e) = drained {
                // The connection went with the replies: what they were for
                // is queued again; reconnect once at once and resend it.
                let e = self.error("flush", &e);
                if !e.is_retryable() {
                    return Err(e);
                }
                self.next_attempt = None;
                failed = Some(e);
                continue;
            }
            self.pump();
            if self.resend.is_empty() {
                return Ok(());
            }
            if self.reload_scripts {
                let _: Value = self.call("flush", |c, _| redis::cmd("PING").query(c))?;
            }
            let again = std::mem::take(&mut self.resend);
            self.send_acks(again.into_iter().map(|r| (r, true)).collect());
        }
        Err(failed.unwrap_or_else(|| {
            BrokerError::new(
                ErrorKind::Transient,
                format!(
                    "flush: {} acks not confirmed by {}; they are sent again by the next call",
                    self.resend.len(),
                    self.url
                ),
            )
        }))
    }

    /// The body of [`Broker::retry`](prefork_broker::Broker::retry).
    pub(super) fn retry_delivery(
        &mut self,
        delivery: Delivery,
        delay: Duration,
    ) -> Result<(), SettleError> {
        let attempt = delivery.attempt().saturating_add(1);
        match self.requeue("retry", &delivery, delay, attempt) {
            Ok(true) => {
                self.stale.remove(delivery.receipt());
                Ok(())
            }
            Ok(false) => {
                let e = lost("retry", &delivery);
                Err(SettleError::new(delivery, e))
            }
            Err(e) => Err(self.failed_settle(delivery, e)),
        }
    }

    /// The body of [`Broker::release`](prefork_broker::Broker::release).
    pub(super) fn release_delivery(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let attempt = delivery.attempt();
        match self.requeue("release", &delivery, Duration::ZERO, attempt) {
            Ok(true) => {
                self.stale.remove(delivery.receipt());
                Ok(())
            }
            Ok(false) => {
                let e = lost("release", &delivery);
                Err(SettleError::new(delivery, e))
            }
            Err(e) => Err(self.failed_settle(delivery, e)),
        }
    }

    /// The body of [`Broker::dead_letter`](prefork_broker::Broker::dead_letter).
    pub(super) fn dead_letter_delivery(
        &mut self,
        delivery: Delivery,
        reason: &str,
    ) -> Result<(), SettleError> {
        let r = self.dead_letter_entry(
            delivery.receipt(),
            delivery.id().as_str(),
            delivery.payload(),
            reason,
            delivery.attempt(),
        );
        match r {
            Ok(true) => {
                self.stale.remove(delivery.receipt());
                Ok(())
            }
            Ok(false) => {
                let e = lost("dead_letter", &delivery);
                Err(SettleError::new(delivery, e))
            }
            Err(e) => Err(self.failed_settle(delivery, e)),
        }
    }

    /// The body of [`Broker::touch`](prefork_broker::Broker::touch).
    pub(super) fn touch_delivery(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        let keys = [self.keys.stream.clone()];
        let args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            delivery.receipt().as_bytes().to_vec(),
        ];
        let v = self.settle_call("touch", Script::Touch, &keys, &args)?;
        if entry::int(&v) == Some(1) {
            Ok(())
        } else {
            Err(lost("touch", delivery))
        }
    }
}

pub(super) fn lost(what: &str, d: &Delivery) -> BrokerError {
    BrokerError::new(
        ErrorKind::LeaseLost,
        format!(
            "{what} {}: this consumer no longer holds entry {}",
            d.id(),
            d.receipt()
        ),
    )
}
