//! Settling a claim: ack (unlink), retry, release, dead letter and touch,
//! each one rename of the claimed file.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use prefork_broker::{BrokerError, Delivery, ErrorKind, SettleError};

use super::{Queue, duration_us};
use crate::name::{Claimed, Dead, Ready};

impl Queue {
    /// Renames the claimed file of `d` to `to`; a missing file means the
    /// lease was lost.
    pub(super) fn settle(&self, d: Delivery, to: &Path, what: &str) -> Result<(), SettleError> {
        let from = match claimed_name(&d) {
            Ok(c) => self.claimed.join(c.to_string()),
            Err(e) => return Err(SettleError::new(d, e)),
        };
        match fs::rename(from, to) {
            Ok(()) => Ok(()),
            Err(e) => Err(SettleError::new(d, lost_or(what, e))),
        }
    }

    /// The body of [`Broker::ack`](prefork_broker::Broker::ack).
    pub(super) fn ack_job(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let path = match claimed_name(&delivery) {
            Ok(c) => self.claimed.join(c.to_string()),
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        fs::remove_file(path).map_err(|e| SettleError::new(delivery, lost_or("ack", e)))
    }

    /// The body of [`Broker::retry`](prefork_broker::Broker::retry).
    pub(super) fn retry_job(
        &mut self,
        delivery: Delivery,
        delay: Duration,
    ) -> Result<(), SettleError> {
        let c = match claimed_name(&delivery) {
            Ok(c) => c,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        let delay_us = duration_us(delay);
        let r = Ready {
            due_us: self.now_us().saturating_add(delay_us),
            id: c.id,
            attempt: c.attempt.saturating_add(1),
        };
        let dir = if delay_us == 0 {
            &self.ready
        } else {
            &self.delayed
        };
        self.settle(delivery, &dir.join(r.to_string()), "retry")?;
        if delay_us > 0 {
            self.next_promote_us = self.next_promote_us.min(r.due_us);
        }
        Ok(())
    }

    /// The body of [`Broker::release`](prefork_broker::Broker::release).
    pub(super) fn release_job(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        let c = match claimed_name(&delivery) {
            Ok(c) => c,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        // Due at its publish time: back at the front of the queue.
        let r = Ready {
            due_us: c.id.published_us.min(self.now_us()),
            id: c.id,
            attempt: c.attempt,
        };
        self.settle(delivery, &self.ready.join(r.to_string()), "release")?;
        // List again on the next fetch, so the released job goes first.
        self.cursor = self.cache.len();
        Ok(())
    }

    /// The body of [`Broker::dead_letter`](prefork_broker::Broker::dead_letter).
    pub(super) fn dead_letter_job(
        &mut self,
        delivery: Delivery,
        reason: &str,
    ) -> Result<(), SettleError> {
        let c = match claimed_name(&delivery) {
            Ok(c) => c,
            Err(e) => return Err(SettleError::new(delivery, e)),
        };
        let reason_name = Dead::Reason { id: c.id }.to_string();
        let reason_path = self.dead.join(&reason_name);
        let written = self
            .write_tmp(&reason_name, &[reason.as_bytes()])
            .and_then(|tmp| {
                fs::rename(&tmp, &reason_path).map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    BrokerError::io("store the dead-letter reason", e)
                })
            });
        if let Err(e) = written {
            return Err(SettleError::new(delivery, e));
        }
        let to = self.dead.join(
            Dead::Job {
                id: c.id,
                attempt: c.attempt,
            }
            .to_string(),
        );
        if let Err(e) = self.settle(delivery, &to, "dead-letter") {
            let _ = fs::remove_file(&reason_path);
            return Err(e);
        }
        // The job is dead-lettered now; a failed fsync (EIO) would only put
        // its durability in doubt, and the delivery is gone: best effort.
        let _ = self.sync_dir(&self.dead);
        Ok(())
    }

    /// The body of [`Broker::touch`](prefork_broker::Broker::touch).
    pub(super) fn touch_job(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        let c = claimed_name(delivery)?;
        self.refresh_me();
        let renewed = Claimed {
            expiry_us: self.now_us().saturating_add(self.lease_us()),
            holder: self.me,
            ..c
        };
        let receipt = renewed.to_string();
        fs::rename(
            self.claimed.join(c.to_string()),
            self.claimed.join(&receipt),
        )
        .map_err(|e| lost_or("touch", e))?;
        delivery.set_receipt(receipt);
        Ok(())
    }
}

/// The claim a delivery's receipt names.
pub(super) fn claimed_name(d: &Delivery) -> Result<Claimed, BrokerError> {
    Claimed::parse(d.receipt()).ok_or_else(|| {
        BrokerError::new(
            ErrorKind::Invalid,
            format!("receipt {:?} is not a spool claim", d.receipt()),
        )
    })
}

/// A failed rename or unlink of a claimed file: missing means the lease
/// was lost.
pub(super) fn lost_or(what: &str, e: io::Error) -> BrokerError {
    if e.kind() == io::ErrorKind::NotFound {
        BrokerError::new(
            ErrorKind::LeaseLost,
            format!("{what}: the claim expired and the job was handed out again"),
        )
    } else {
        BrokerError::io(what, e)
    }
}
