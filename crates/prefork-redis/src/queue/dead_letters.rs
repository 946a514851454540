//! A [`RedisQueue`]'s dead letters: listing them, re-driving or deleting
//! one; and the queue's counts.

use prefork_broker::{BrokerError, DeadLetter, DeliveryId, ErrorKind, QueueStats};
use redis::Value;

use super::RedisQueue;
use super::connection::evalsha;
use super::reading::split_entry;
use crate::entry;
use crate::scripts::Script;

impl RedisQueue {
    /// The body of [`Broker::dead_letters`](prefork_broker::Broker::dead_letters).
    pub(super) fn list_dead_letters(
        &mut self,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let dead = self.keys.dead.clone();
        // COUNT is a signed 64-bit integer to Redis: `usize::MAX` (every
        // one) is refused as out of range.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let v: Value = self.call("dead_letters", |c, _| {
            redis::cmd("XRANGE")
                .arg(&dead)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query(c)
        })?;
        let Value::Array(entries) = v else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let Ok((id, fields)) = split_entry(e) else {
                continue;
            };
            let (mut job, mut payload, mut reason, mut attempt, mut at) =
                (None, Vec::new(), String::new(), 1, None);
            for pair in fields.chunks_exact(2) {
                let Some(value) = entry::bytes(&pair[1]) else {
                    continue;
                };
                match entry::bytes(&pair[0]) {
                    Some(b"j") => job = entry::text(&pair[1]),
                    Some(b"p") => payload = value.to_vec(),
                    Some(b"r") => reason = String::from_utf8_lossy(value).into_owned(),
                    Some(b"a") => {
                        attempt = entry::int(&pair[1]).unwrap_or(1).clamp(1, u32::MAX as i64) as u32
                    }
                    Some(b"t") => at = entry::text(&pair[1]),
                    _ => {}
                }
            }
            let mut d = DeadLetter::new(
                DeliveryId::new(job.unwrap_or_else(|| id.clone())),
                payload,
                reason,
            )
            .with_attempt(attempt)
            .with_meta("dead_entry", id);
            if let Some(t) = at {
                d = d.with_meta("dead_at_unix", t);
            }
            out.push(d);
        }
        Ok(out)
    }

    /// The body of [`Broker::redrive`](prefork_broker::Broker::redrive).
    pub(super) fn redrive_dead_letter(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let keys = [
            self.keys.stream.clone(),
            self.keys.dead.clone(),
            self.keys.dead_index.clone(),
        ];
        let args = vec![id.as_str().as_bytes().to_vec()];
        let v = self.call("redrive", |c, shas| {
            evalsha(c, shas, Script::Redrive, &keys, &args)
        })?;
        self.found(&v, id)
    }

    /// The body of [`Broker::delete_dead`](prefork_broker::Broker::delete_dead):
    /// the `DELETE_DEAD` script (`HGET` the index, `HDEL`, `XDEL`).
    pub(super) fn delete_dead_letter(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let keys = [self.keys.dead.clone(), self.keys.dead_index.clone()];
        let args = vec![id.as_str().as_bytes().to_vec()];
        let v = self.call("delete_dead", |c, shas| {
            evalsha(c, shas, Script::DeleteDead, &keys, &args)
        })?;
        self.found(&v, id)
    }

    /// What a script acting on one dead letter returned: 1 when it found
    /// `id`, else [`ErrorKind::NotFound`].
    fn found(&self, v: &Value, id: &DeliveryId) -> Result<(), BrokerError> {
        if entry::int(v) == Some(1) {
            Ok(())
        } else {
            Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in queue {}", self.name),
            ))
        }
    }

    /// The body of [`Broker::stats`](prefork_broker::Broker::stats): the
    /// `STATS` script, one atomic snapshot of `XLEN`, `XPENDING`, `ZCARD`
    /// and the dead letters' `XLEN`.
    pub(super) fn queue_stats(&mut self) -> Result<QueueStats, BrokerError> {
        let keys = [
            self.keys.stream.clone(),
            self.keys.delayed.clone(),
            self.keys.dead.clone(),
        ];
        let args = vec![self.options.group.as_bytes().to_vec()];
        let v = self.call("stats", |c, shas| {
            evalsha(c, shas, Script::Stats, &keys, &args)
        })?;
        let counts: Option<Vec<u64>> = match &v {
            Value::Array(items) if items.len() == 4 => items
                .iter()
                .map(|i| entry::int(i).and_then(|n| u64::try_from(n).ok()))
                .collect(),
            _ => None,
        };
        let Some([len, pending, delayed, dead]) = counts.and_then(|c| <[u64; 4]>::try_from(c).ok())
        else {
            return Err(BrokerError::new(
                ErrorKind::Corrupt,
                format!("stats of queue {}: unexpected reply {v:?}", self.name),
            ));
        };
        Ok(QueueStats::new(len.saturating_sub(pending), dead)
            .with_delayed(delayed)
            .with_claimed(pending))
    }
}
