//! Reading a tube: reserving jobs (whole-second server waits, polling
//! the rest), turning them into deliveries with `stats-job`, and taking
//! over the jobs of a dead holder's closed connection.

use std::thread::sleep;
use std::time::{Duration, Instant};

use prefork_broker::{BrokerError, Delivery, DeliveryId, ErrorKind};

use super::Beanstalkd;
use crate::config::ceil_secs;
use crate::proto::{Response, ServerError, cmd, yaml_field};

/// The longest single server-side wait of a reserve; longer fetch timeouts
/// loop.
pub(super) const MAX_BLOCK_SECS: u64 = 3600;

/// How long [`Broker::take_over`] waits for a dead holder's connection to
/// be closed by the server (its jobs still show as reserved until then).
pub(super) const TAKE_OVER_PATIENCE: Duration = Duration::from_millis(500);

impl Beanstalkd {
    /// A delivery for a job this connection reserved, from its body and
    /// `stats-job` reply: the attempt is the attempts its body says a
    /// retry used ([`carried`](crate::carried)), plus `reserves` less the
    /// `releases` our [`release`](Broker::release) made (attempt-neutral).
    pub(super) fn delivery(&self, id: u64, body: Vec<u8>, stats: &Response) -> Delivery {
        let default_pri = self.config.priority;
        let (used, payload) = crate::carried::decode(body);
        let (attempt, pri) = match stats {
            Response::Ok(yaml) => {
                let n = |k| yaml_field(yaml, k).and_then(|v| v.parse::<u64>().ok());
                let attempt = n("reserves")
                    .unwrap_or(1)
                    .saturating_sub(n("releases").unwrap_or(0))
                    .max(1);
                let pri = yaml_field(yaml, "pri").and_then(|v| v.parse().ok());
                (attempt, pri.unwrap_or(default_pri))
            }
            _ => (1, default_pri),
        };
        let attempt = attempt.saturating_add(u64::from(used));
        Delivery::new(DeliveryId::new(id.to_string()), payload)
            .with_attempt(u32::try_from(attempt).unwrap_or(u32::MAX))
            .with_receipt(format!("{}:{id}:{pri}", self.generation))
            .with_meta("tube", self.tube.clone())
            .with_meta("pri", pri.to_string())
    }

    /// Reserves the first job, waiting up to `timeout`: whole seconds
    /// server-side, the rest by polling (see [`wait_plan`]).
    pub(super) fn reserve_first(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u64, Vec<u8>)>, BrokerError> {
        let deadline = Instant::now() + timeout;
        let mut poll_only = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (secs, nap) = wait_plan(
                left,
                poll_only,
                self.config.precise_waits,
                self.config.poll_interval,
            );
            let wait = Duration::from_secs(secs);
            match self.exchange1("reserve", wait, |w| {
                cmd::line(w, format_args!("reserve-with-timeout {secs}"))
            })? {
                Response::Reserved { id, body } => return Ok(Some((id, body))),
                Response::TimedOut => {}
                // A job this connection holds is near its TTR and none is
                // ready: the server answers at once, so poll instead.
                Response::DeadlineSoon => poll_only = true,
                other => return Err(self.unexpected("reserve", other)),
            }
            if deadline.saturating_duration_since(Instant::now()).is_zero() {
                return Ok(None);
            }
            if secs == 0 {
                sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// The body of [`Broker::fetch`](prefork_broker::Broker::fetch).
    pub(super) fn fetch_jobs(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let Some(first) = self.reserve_first(timeout)? else {
            return Ok(Vec::new());
        };
        let mut jobs = vec![first];
        if max > 1 {
            let more = self.exchange("reserve", max - 1, Duration::ZERO, |w| {
                for _ in 1..max {
                    cmd::line(w, format_args!("reserve-with-timeout 0"));
                }
            })?;
            for r in more {
                match r {
                    Response::Reserved { id, body } => jobs.push((id, body)),
                    Response::TimedOut | Response::DeadlineSoon => {}
                    other => return Err(self.unexpected("reserve", other)),
                }
            }
        }
        // The attempt numbers: see `delivery`.
        let stats = self.exchange("stats-job", jobs.len(), Duration::ZERO, |w| {
            for (id, _) in &jobs {
                cmd::line(w, format_args!("stats-job {id}"));
            }
        })?;
        Ok(jobs
            .into_iter()
            .zip(stats)
            .map(|((id, body), stats)| self.delivery(id, body, &stats))
            .collect())
    }

    /// The body of [`Broker::take_over`](prefork_broker::Broker::take_over).
    pub(super) fn take_over_jobs(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        // beanstalkd returns a closed connection's reservations to ready by
        // itself; take those of `ids` at once with `reserve-job`. A job
        // still reserved is waited for a moment (the server may not have
        // seen the connection close yet); delayed and buried ones, and jobs
        // of other tubes, are left alone.
        let mut want: Vec<u64> = ids.iter().filter_map(|i| i.as_str().parse().ok()).collect();
        want.sort_unstable();
        want.dedup();
        let deadline = Instant::now() + TAKE_OVER_PATIENCE;
        let mut taken = Vec::new();
        while !want.is_empty() {
            let stats =
                self.exchange("take_over (stats-job)", want.len(), Duration::ZERO, |w| {
                    for id in &want {
                        cmd::line(w, format_args!("stats-job {id}"));
                    }
                })?;
            let (mut ready, mut held) = (Vec::new(), Vec::new());
            for (id, r) in want.iter().zip(stats) {
                match r {
                    Response::Ok(yaml) => {
                        let tube = yaml_field(&yaml, "tube").map(|t| t.trim_matches('"'));
                        match yaml_field(&yaml, "state") {
                            _ if tube != Some(self.tube.as_str()) => {}
                            Some("ready") => ready.push(*id),
                            Some("reserved") => held.push(*id),
                            _ => {}
                        }
                    }
                    // Deleted: done, nothing to take.
                    Response::NotFound => {}
                    other => return Err(self.unexpected("take_over (stats-job)", other)),
                }
            }
            if !ready.is_empty() {
                let replies = self.exchange(
                    "take_over (reserve-job)",
                    2 * ready.len(),
                    Duration::ZERO,
                    |w| {
                        for id in &ready {
                            cmd::line(w, format_args!("reserve-job {id}"));
                            cmd::line(w, format_args!("stats-job {id}"));
                        }
                    },
                )?;
                let mut replies = replies.into_iter();
                while let (Some(reserved), Some(stats)) = (replies.next(), replies.next()) {
                    match reserved {
                        Response::Reserved { id, body } => {
                            taken.push(self.delivery(id, body, &stats))
                        }
                        // Another handle reserved it first.
                        Response::NotFound => {}
                        Response::Error(ServerError::UnknownCommand) => {
                            return Err(BrokerError::new(
                                ErrorKind::Unsupported,
                                "take_over needs beanstalkd 1.12 or later (reserve-job)",
                            ));
                        }
                        other => return Err(self.unexpected("take_over (reserve-job)", other)),
                    }
                }
            }
            if held.is_empty() || Instant::now() >= deadline {
                if !held.is_empty() {
                    tracing::debug!(tube = %self.tube, holder_pid, still_reserved = ?held, "take_over: jobs still reserved (by another handle, or the dead holder's connection is not closed yet)");
                }
                break;
            }
            sleep(Duration::from_millis(10));
            want = held;
        }
        tracing::info!(tube = %self.tube, holder_pid, taken = taken.len(), asked = ids.len(), "took over a dead holder's jobs");
        Ok(taken)
    }
}

/// How to wait `left` for a job: the whole seconds the server may block
/// (`reserve-with-timeout N`), and how long to nap after an empty poll.
/// While a held job is near its TTR every wait polls with
/// `reserve-with-timeout 0` every `poll`; otherwise a sub-second rest is
/// rounded up to a whole second, or polled when `precise`.
pub(super) fn wait_plan(
    left: Duration,
    poll_only: bool,
    precise: bool,
    poll: Duration,
) -> (u64, Duration) {
    if left.is_zero() {
        (0, Duration::ZERO)
    } else if poll_only || (precise && left < Duration::from_secs(1)) {
        (0, poll.min(left))
    } else if precise {
        (left.as_secs().min(MAX_BLOCK_SECS), Duration::ZERO)
    } else {
        (ceil_secs(left).min(MAX_BLOCK_SECS), Duration::ZERO)
    }
}
