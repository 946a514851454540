//! A [`RedisQueue`]'s dead letters: listing them and re-driving one.

use prefork_broker::{BrokerError, DeadLetter, DeliveryId, ErrorKind};
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
        if entry::int(&v) == Some(1) {
            Ok(())
        } else {
            Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in queue {}", self.name),
            ))
        }
    }
}
