//! Publishing to a [`RedisQueue`]: `XADD` for a job due now, the delayed
//! set for a later one.

use std::time::{Duration, Instant};

use prefork_broker::{BrokerError, ErrorKind};
use redis::Value;

use super::RedisQueue;
use super::connection::evalsha;
use crate::scripts::Script;

impl RedisQueue {
    /// Publishes many jobs in one round trip (pipelined `XADD`s, or
    /// delayed entries when `delay` is not zero). Same semantics as
    /// [`Broker::publish`](prefork_broker::Broker::publish) for each; on an
    /// error, some of them may have been added.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let mut q = prefork_redis::Redis::new("redis://127.0.0.1:6379/")?.queue("thumbs")?;
    /// q.publish_batch(&[b"img-1", b"img-2", b"img-3"], Duration::ZERO)?;
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`](prefork_broker::Broker::publish).
    pub fn publish_batch(
        &mut self,
        payloads: &[&[u8]],
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let delay_us = delay_micros(delay)?;
        let members: Vec<Vec<u8>> = if delay_us > 0 {
            payloads
                .iter()
                .map(|p| {
                    let mut m = self.next_nonce().into_bytes();
                    m.extend_from_slice(b":1::");
                    m.extend_from_slice(p);
                    m
                })
                .collect()
        } else {
            Vec::new()
        };
        let (stream, delayed) = (self.keys.stream.clone(), self.keys.delayed.clone());
        let _: Vec<Value> = self.call("publish", |c, shas| {
            let mut pipe = redis::pipe();
            if delay_us == 0 {
                for p in payloads {
                    pipe.cmd("XADD").arg(&stream).arg("*").arg("p").arg(*p);
                }
            } else {
                for m in &members {
                    pipe.cmd("EVALSHA")
                        .arg(&shas[Script::Delay as usize])
                        .arg(1)
                        .arg(&delayed)
                        .arg(delay_us)
                        .arg(m.as_slice());
                }
            }
            pipe.query(c)
        })?;
        if delay_us > 0 {
            self.next_promote = self.next_promote.min(Instant::now() + delay);
        }
        Ok(())
    }

    pub(super) fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{:x}.{:x}", self.rng.next() & 0xffff_ffff, self.nonce)
    }

    /// The body of [`Broker::publish`](prefork_broker::Broker::publish).
    pub(super) fn publish_one(
        &mut self,
        payload: &[u8],
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if delay.is_zero() {
            let stream = self.keys.stream.clone();
            let _: Value = self.call("publish", |c, _| {
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("p")
                    .arg(payload)
                    .query(c)
            })?;
            return Ok(());
        }
        let delay_us = delay_micros(delay)?;
        let mut member = self.next_nonce().into_bytes();
        member.extend_from_slice(b":1::");
        member.extend_from_slice(payload);
        let keys = [self.keys.delayed.clone()];
        let args = vec![delay_us.to_string().into_bytes(), member];
        let _ = self.call("publish", |c, shas| {
            evalsha(c, shas, Script::Delay, &keys, &args)
        })?;
        self.next_promote = self.next_promote.min(Instant::now() + delay);
        Ok(())
    }
}

pub(super) fn delay_micros(delay: Duration) -> Result<u64, BrokerError> {
    // Scores are doubles: keep due times well inside 2^53 microseconds.
    const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    if delay > MAX {
        return Err(BrokerError::new(
            ErrorKind::Invalid,
            format!("delay {delay:?} is over 100 years"),
        ));
    }
    // Round up to the microsecond, never down.
    Ok(delay.as_nanos().div_ceil(1000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_and_are_bounded() {
        assert_eq!(delay_micros(Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(delay_micros(Duration::from_millis(3)).unwrap(), 3000);
        let e = delay_micros(Duration::from_secs(200 * 365 * 24 * 3600)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
}
