//! Reading a [`RedisQueue`]: fetching new entries through the consumer
//! group, reclaiming claims idle past the lease, taking over a dead
//! process's claims, and turning entries into deliveries.

use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_broker::{BrokerError, Delivery, DeliveryId, ErrorKind};
use redis::Value;

use super::RedisQueue;
use super::connection::evalsha;
use crate::entry::{self, Job, Malformed};
use crate::scripts::Script;

impl RedisQueue {
    pub(super) fn fetch_inner(
        &mut self,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let mut first = true;
        loop {
            let now = Instant::now();
            if now >= self.next_reclaim {
                let got = self.reclaim(max)?;
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            let promote = now >= self.next_promote;
            let remaining = deadline.saturating_duration_since(now);
            let block = if first {
                None
            } else {
                let until_timers = self
                    .next_promote
                    .min(self.next_reclaim)
                    .saturating_duration_since(now);
                Some(
                    remaining
                        .min(self.options.block)
                        .min(until_timers)
                        .max(Duration::from_millis(1)),
                )
            };
            let got = self.read(max, promote, block)?;
            if !got.is_empty() {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            first = false;
        }
    }

    /// One `XREADGROUP` (blocking when `block` is given), preceded in the
    /// same round trip by the promote script when `promote`.
    pub(super) fn read(
        &mut self,
        max: usize,
        promote: bool,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let keys = self.keys.clone();
        let (group, consumer) = (self.options.group.clone(), self.consumer.clone());
        let limit = max.max(64);
        let replies: Vec<Value> = self.call("fetch", |c, shas| {
            let mut p = redis::pipe();
            if promote {
                p.cmd("EVALSHA")
                    .arg(&shas[Script::Promote as usize])
                    .arg(4)
                    .arg(&keys.stream)
                    .arg(&keys.delayed)
                    .arg(&keys.dead)
                    .arg(&keys.dead_index)
                    .arg(limit);
            }
            p.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(max);
            if let Some(b) = block {
                p.arg("BLOCK").arg(b.as_millis().max(1) as u64);
            }
            p.arg("STREAMS").arg(&keys.stream).arg(">");
            p.query(c)
        })?;
        let mut replies = replies.into_iter();
        if promote {
            let next = replies.next().as_ref().and_then(entry::int).unwrap_or(-1);
            let wait = match next {
                0 => Duration::ZERO,
                n if n > 0 => Duration::from_millis(n as u64).min(self.options.block),
                _ => self.options.block,
            };
            self.next_promote = Instant::now() + wait;
        }
        let mut jobs = Vec::new();
        if let Some(Value::Array(streams)) = replies.next() {
            for s in streams {
                let Value::Array(mut pair) = s else { continue };
                if pair.len() != 2 {
                    continue;
                }
                if let Value::Array(entries) = pair.swap_remove(1) {
                    for e in entries {
                        jobs.push(split_entry(e).map(|(id, fields)| (id, fields, 1)));
                    }
                }
            }
        }
        Ok(self.deliveries_from(jobs))
    }

    /// Claims entries other consumers held idle past the lease, and this
    /// consumer's own stale claims (settles that failed) once idle as long,
    /// at most `max`.
    pub(super) fn reclaim(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let keys = [self.keys.stream.clone()];
        let mut args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            (self.options.lease.as_millis().max(1) as u64)
                .to_string()
                .into_bytes(),
            self.reclaim_cursor.clone().into_bytes(),
            max.to_string().into_bytes(),
        ];
        args.extend(self.stale.iter().map(|r| r.as_bytes().to_vec()));
        let reply = self.call("reclaim", |c, shas| {
            evalsha(c, shas, Script::Reclaim, &keys, &args)
        })?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::new(
                ErrorKind::Corrupt,
                format!("reclaim: unexpected reply {reply:?}"),
            ));
        };
        let mut items = items.into_iter();
        let cursor = items
            .next()
            .as_ref()
            .and_then(entry::text)
            .unwrap_or_else(|| "-".to_owned());
        let wrapped = cursor == "-";
        self.reclaim_cursor = cursor;
        if let Some(Value::Array(waiting)) = items.next() {
            let reclaimed = self.stale.len().saturating_sub(waiting.len());
            self.stale = waiting.iter().filter_map(entry::text).collect();
            if reclaimed > 0 {
                tracing::info!(queue = %self.name, consumer = %self.consumer, count = reclaimed, "took back own claims whose settle had failed");
            }
        }
        let jobs: Vec<_> = items.map(reclaimed_entry).collect();
        // Look again at once when the scan has not reached the end of the
        // pending list, otherwise after the interval.
        if wrapped || jobs.is_empty() {
            self.next_reclaim = Instant::now() + self.options.reclaim_interval();
        }
        if !jobs.is_empty() {
            tracing::info!(queue = %self.name, consumer = %self.consumer, count = jobs.len(), "reclaimed jobs idle past the lease");
        }
        Ok(self.deliveries_from(jobs))
    }

    /// Turns entries into deliveries; dead-letters malformed entries and
    /// poison jobs (delivered too often) on the way.
    pub(super) fn deliveries_from(&mut self, raw: Vec<RawEntry>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let (id, fields, deliveries) = match r {
                Ok(x) => x,
                Err(m) => {
                    tracing::warn!(queue = %self.name, reason = %m.reason, "unreadable reply item skipped");
                    continue;
                }
            };
            match entry::decode(id, &fields) {
                Err(m) => {
                    tracing::warn!(queue = %self.name, entry = %m.entry, reason = %m.reason, "dead-lettering a malformed entry");
                    let (entry_id, dump, reason) = (m.entry.clone(), m.dump, m.reason);
                    if let Err(e) = self.dead_letter_entry(&entry_id, &entry_id, &dump, &reason, 1)
                    {
                        tracing::warn!(queue = %self.name, entry = %entry_id, error = %e, "could not dead-letter; it will be reclaimed after the lease");
                    }
                }
                Ok(job) => {
                    let attempt = job.attempt.saturating_add(deliveries.saturating_sub(1));
                    if let Some(max) = self.options.max_deliveries
                        && deliveries > max
                    {
                        let reason = format!(
                            "delivered {deliveries} times without being settled (its holders died or stalled past the lease); limit {max}"
                        );
                        tracing::warn!(queue = %self.name, job = %job.job, deliveries, "dead-lettering a poison job");
                        if let Err(e) = self.dead_letter_entry(
                            &job.entry,
                            &job.job,
                            &job.payload,
                            &reason,
                            attempt,
                        ) {
                            tracing::warn!(queue = %self.name, job = %job.job, error = %e, "could not dead-letter a poison job");
                        }
                        continue;
                    }
                    out.push(delivery(job, attempt, deliveries));
                }
            }
        }
        out
    }

    /// The body of [`Broker::fetch`](prefork_broker::Broker::fetch).
    pub(super) fn fetch_deliveries(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.fetch_inner(max, deadline) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    // Wait for the next connection attempt (or the
                    // deadline): never a busy loop while Redis is away.
                    let wake = self
                        .next_attempt
                        .unwrap_or_else(|| Instant::now() + Duration::from_millis(50))
                        .min(deadline);
                    let now = Instant::now();
                    if wake > now {
                        sleep(wake - now);
                    }
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The body of [`Broker::take_over`](prefork_broker::Broker::take_over).
    pub(super) fn take_over_claims(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        const MOST: usize = 10_000;
        let keys = [self.keys.stream.clone()];
        let mut args: Vec<Vec<u8>> = vec![
            self.options.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            format!("{}:{holder_pid}:", self.host).into_bytes(),
            MOST.to_string().into_bytes(),
        ];
        args.extend(
            ids.iter()
                .map(DeliveryId::as_str)
                .filter(|id| is_entry_id(id))
                .map(|id| id.as_bytes().to_vec()),
        );
        let reply = self.call("take_over", |c, shas| {
            evalsha(c, shas, Script::TakeOver, &keys, &args)
        })?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::new(
                ErrorKind::Corrupt,
                format!("take_over: unexpected reply {reply:?}"),
            ));
        };
        let jobs: Vec<RawEntry> = items.into_iter().map(reclaimed_entry).collect();
        if !jobs.is_empty() {
            tracing::info!(queue = %self.name, consumer = %self.consumer, holder_pid, count = jobs.len(), "took over the claims of a dead process");
        }
        Ok(self.deliveries_from(jobs))
    }
}

/// An entry as read (id, fields, delivery count), or why it could not be.
type RawEntry = Result<(String, Vec<Value>, u32), Malformed>;

pub(super) fn delivery(job: Job, attempt: u32, deliveries: u32) -> Delivery {
    let entry = job.entry;
    Delivery::new(DeliveryId::new(job.job), job.payload)
        .with_attempt(attempt)
        .with_receipt(entry.clone())
        .with_meta("entry", entry)
        .with_meta("deliveries", deliveries.to_string())
}

/// `[id, [fields...], deliveries]` (a claimed entry) into its parts.
pub(super) fn reclaimed_entry(item: Value) -> RawEntry {
    let Value::Array(mut v) = item else {
        return Err(Malformed {
            entry: String::new(),
            dump: Vec::new(),
            reason: "reclaim: an item that is not an entry".to_owned(),
        });
    };
    let count = v.get(2).and_then(entry::int).unwrap_or(1).max(1) as u32;
    v.truncate(2);
    split_entry(Value::Array(v)).map(|(id, fields)| (id, fields, count))
}

/// Whether `id` has the shape of a stream entry id (`ms-seq` or `ms`).
pub(super) fn is_entry_id(id: &str) -> bool {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    digits(ms) && digits(seq)
}

/// `[id, [fields...]]` into its parts.
pub(super) fn split_entry(e: Value) -> Result<(String, Vec<Value>), Malformed> {
    let bad = |why: &str| Malformed {
        entry: String::new(),
        dump: Vec::new(),
        reason: why.to_owned(),
    };
    let Value::Array(mut v) = e else {
        return Err(bad("an entry that is not an array"));
    };
    if v.len() != 2 {
        return Err(bad("an entry without id and fields"));
    }
    let fields = match v.pop() {
        Some(Value::Array(f)) => f,
        Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Some(Value::Nil) => Vec::new(),
        _ => return Err(bad("entry fields that are not a list")),
    };
    let id = v
        .pop()
        .as_ref()
        .and_then(entry::text)
        .ok_or_else(|| bad("an entry id that is not text"))?;
    Ok((id, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_into_id_and_fields() {
        let e = Value::Array(vec![
            Value::BulkString(b"1-2".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"p".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]);
        let (id, f) = split_entry(e).unwrap();
        assert_eq!((id.as_str(), f.len()), ("1-2", 2));
        assert!(split_entry(Value::Int(3)).is_err());
    }
}
