//! Claims: fetching (claiming ready jobs by rename, waiting on inotify),
//! taking back expired claims and claims of dead holders, promoting due
//! delayed jobs, and taking over a dead process's claims at once.

use std::fs;
use std::io;
use std::time::{Duration, Instant};

use prefork_broker::{BrokerError, Delivery, DeliveryId};

use super::{Queue, duration_us, list};
use crate::holder::{Judged, Liveness};
use crate::name::{Claimed, JobId, Ready};
use crate::record;
use crate::wait::Waiter;

/// Longest time between looks for newly delayed jobs written by others.
pub(super) const DELAYED_SCAN_MAX: Duration = Duration::from_secs(1);

impl Queue {
    /// Claims up to `max` ready jobs, doing housekeeping first when due.
    pub(super) fn claim_some(&mut self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        self.refresh_me();
        let now = self.now_us();
        if now >= self.next_reclaim_us {
            self.reclaim(now)?;
        }
        if now >= self.next_promote_us {
            self.promote(now)?;
        }
        let mut out = Vec::new();
        let mut rescanned = false;
        while out.len() < max {
            if self.cursor >= self.cache.len() {
                if rescanned {
                    break;
                }
                self.rescan()?;
                rescanned = true;
                continue;
            }
            let name = std::mem::take(&mut self.cache[self.cursor]);
            self.cursor += 1;
            match Ready::parse(&name) {
                None => self.quarantine(&self.ready, &name, "not a ready-job name"),
                Some(r) if r.due_us > now => {
                    // Not due (a clock step, or put here by hand): leave it
                    // and look again later.
                    self.next_promote_us = self.next_promote_us.min(r.due_us);
                }
                Some(r) => match self.claim(&name, r, now) {
                    Ok(Some(d)) => out.push(d),
                    Ok(None) => {}
                    // Hand out what is claimed already; the error comes
                    // back on the next call if it persists.
                    Err(_) if !out.is_empty() => break,
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(out)
    }

    /// Lists `ready/` into the cache, oldest first.
    pub(super) fn rescan(&mut self) -> Result<(), BrokerError> {
        self.cache = list(&self.ready)?;
        self.cache.sort_unstable();
        self.cursor = 0;
        Ok(())
    }

    /// Tries to claim `ready/name`; `None` when another process was first
    /// or the file was quarantined.
    pub(super) fn claim(
        &self,
        name: &str,
        r: Ready,
        now: u64,
    ) -> Result<Option<Delivery>, BrokerError> {
        let c = Claimed {
            id: r.id,
            attempt: r.attempt,
            expiry_us: now.saturating_add(self.lease_us()),
            holder: self.me,
        };
        match fs::rename(self.ready.join(name), self.claimed.join(c.to_string())) {
            Ok(()) => self.deliver(&c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BrokerError::io("claim", e)),
        }
    }

    /// Reads the job this handle just claimed as `c`; `None` when the file
    /// was quarantined (or taken back meanwhile).
    pub(super) fn deliver(&self, c: &Claimed) -> Result<Option<Delivery>, BrokerError> {
        let receipt = c.to_string();
        let path = self.claimed.join(&receipt);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BrokerError::io(format_args!("read {}", path.display()), e)),
        };
        match record::decode(bytes) {
            Ok(payload) => Ok(Some(
                Delivery::new(DeliveryId::new(c.id.to_string()), payload)
                    .with_attempt(c.attempt)
                    .with_receipt(receipt),
            )),
            Err(why) => {
                self.quarantine(&self.claimed, &receipt, &why.to_string());
                Ok(None)
            }
        }
    }

    /// Hands out again jobs whose lease expired or whose holder is gone.
    pub(super) fn reclaim(&mut self, now: u64) -> Result<(), BrokerError> {
        let mut next = now.saturating_add(self.reclaim_interval_us());
        let mut judged = Judged::default();
        for name in list(&self.claimed)? {
            let Some(c) = Claimed::parse(&name) else {
                self.quarantine(&self.claimed, &name, "not a claimed-job name");
                continue;
            };
            let orphan = self.options.reclaim_dead_owners
                && judged.liveness(c.holder, &self.me) == Liveness::Dead;
            if c.expiry_us > now && !orphan {
                next = next.min(c.expiry_us);
                continue;
            }
            let back = Ready {
                due_us: now,
                id: c.id,
                attempt: c.attempt.saturating_add(1),
            };
            match fs::rename(self.claimed.join(&name), self.ready.join(back.to_string())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BrokerError::io("reclaim", e)),
            }
        }
        self.next_reclaim_us = next;
        Ok(())
    }

    /// Moves delayed jobs that are due into `ready/`.
    pub(super) fn promote(&mut self, now: u64) -> Result<(), BrokerError> {
        let mut next = now.saturating_add(duration_us(DELAYED_SCAN_MAX));
        for name in list(&self.delayed)? {
            let Some(r) = Ready::parse(&name) else {
                self.quarantine(&self.delayed, &name, "not a delayed-job name");
                continue;
            };
            if r.due_us > now {
                next = next.min(r.due_us);
                continue;
            }
            match fs::rename(self.delayed.join(&name), self.ready.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BrokerError::io("promote a delayed job", e)),
            }
        }
        self.next_promote_us = next;
        Ok(())
    }

    pub(super) fn waiter(&mut self) -> &Waiter {
        let ready = &self.ready;
        self.waiter.get_or_insert_with(|| Waiter::new(ready))
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
        let deadline = Instant::now() + timeout;
        if !timeout.is_zero() {
            // Watch before looking, so nothing that arrives after the look
            // is missed.
            self.waiter();
        }
        loop {
            if let Some(w) = &self.waiter {
                w.clear();
            }
            let got = self.claim_some(max)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            // Sleep until something arrives, housekeeping is due, or time is up.
            let now = self.now_us();
            let next = self.next_reclaim_us.min(self.next_promote_us);
            let until_next = Duration::from_micros(next.saturating_sub(now));
            // The cache is exhausted: list again after waking.
            self.cursor = self.cache.len();
            self.waiter().wait(left.min(until_next));
        }
    }

    /// The body of [`Broker::take_over`](prefork_broker::Broker::take_over).
    pub(super) fn take_over_claims(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.refresh_me();
        let now = self.now_us();
        let mut missed: Vec<JobId> = ids
            .iter()
            .filter_map(|i| JobId::parse(i.as_str()))
            .collect();
        let mut out = Vec::new();
        let mut judged = Judged::default();
        for name in list(&self.claimed)? {
            let Some(c) = Claimed::parse(&name) else {
                continue; // quarantined by the next reclaim
            };
            let recorded = c.holder.host != 0;
            if c.holder.pid != holder_pid
                || (recorded && c.holder.host != self.me.host)
                || (!recorded && !missed.contains(&c.id))
                || judged.liveness(c.holder, &self.me) == Liveness::Alive
            {
                continue;
            }
            let taken = Claimed {
                attempt: c.attempt.saturating_add(1),
                expiry_us: now.saturating_add(self.lease_us()),
                holder: self.me,
                ..c
            };
            match fs::rename(
                self.claimed.join(&name),
                self.claimed.join(taken.to_string()),
            ) {
                Ok(()) => {}
                // Given back meanwhile: looked for in ready/ below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missed.push(c.id);
                    continue;
                }
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(BrokerError::io("take over a claim", e)),
            }
            missed.retain(|id| *id != c.id);
            match self.deliver(&taken) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => {}
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        if !missed.is_empty() {
            for name in list(&self.ready)? {
                let Some(r) = Ready::parse(&name).filter(|r| missed.contains(&r.id)) else {
                    continue;
                };
                match self.claim(&name, r, now) {
                    Ok(Some(d)) => out.push(d),
                    Ok(None) => {}
                    Err(_) if !out.is_empty() => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }
}
