//! Settling a reserved job: ack (`delete`), retry (`release` with a
//! delay), release (`bury` + `kick-job`), dead letter (into `<tube>.dead`)
//! and touch, each checked against the connection that reserved it.

use std::time::Duration;

use prefork_broker::{BrokerError, Delivery, ErrorKind, SettleError};

use super::Beanstalkd;
use super::connection::server_error;
use crate::config::ceil_secs;
use crate::dead;
use crate::proto::{Response, cmd};

/// Parsed receipt: connection generation, job id, priority.
struct Receipt {
    generation: u64,
    id: u64,
    pri: u32,
}

impl Beanstalkd {
    fn receipt(&self, d: &Delivery) -> Result<Receipt, BrokerError> {
        let bad = || {
            BrokerError::new(
                ErrorKind::Invalid,
                format!("receipt {:?} is not from a beanstalkd handle", d.receipt()),
            )
        };
        let mut parts = d.receipt().split(':');
        let mut next = || parts.next().ok_or_else(bad);
        let r = Receipt {
            generation: next()?.parse().map_err(|_| bad())?,
            id: next()?.parse().map_err(|_| bad())?,
            pri: next()?.parse().map_err(|_| bad())?,
        };
        if r.generation != self.generation || self.conn.is_none() {
            return Err(BrokerError::new(
                ErrorKind::LeaseLost,
                format!(
                    "job {} was reserved on a connection that has since closed",
                    r.id
                ),
            ));
        }
        Ok(r)
    }

    /// Runs a settling operation, handing the delivery back on failure.
    fn settle(
        &mut self,
        d: Delivery,
        op: impl FnOnce(&mut Self, &Delivery, Receipt) -> Result<(), BrokerError>,
    ) -> Result<(), SettleError> {
        let r = match self.receipt(&d) {
            Ok(r) => r,
            Err(e) => return Err(SettleError::new(d, e)),
        };
        op(self, &d, r).map_err(|e| SettleError::new(d, e))
    }

    /// The body of [`Broker::ack`](prefork_broker::Broker::ack).
    pub(super) fn ack_job(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.settle(delivery, |b, _, r| {
            match b.exchange1("ack (delete)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("delete {}", r.id))
            })? {
                Response::Deleted => Ok(()),
                Response::NotFound => Err(lease_lost(r.id)),
                other => Err(b.unexpected("ack (delete)", other)),
            }
        })
    }

    /// The body of [`Broker::retry`](prefork_broker::Broker::retry).
    pub(super) fn retry_job(
        &mut self,
        delivery: Delivery,
        delay: Duration,
    ) -> Result<(), SettleError> {
        let secs = ceil_secs(delay);
        self.settle(delivery, |b, _, r| {
            let reply = b.exchange1("retry (release)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("release {} {} {secs}", r.id, r.pri))
            })?;
            match reply {
                Response::Released => Ok(()),
                Response::NotFound => Err(lease_lost(r.id)),
                Response::Buried(None) => Err(BrokerError::new(
                    ErrorKind::Transient,
                    format!("retry: the server buried job {} (out of memory); `kick-job {}` makes it ready", r.id, r.id),
                )),
                other => Err(b.unexpected("retry (release)", other)),
            }
        })
    }

    /// The body of [`Broker::release`](prefork_broker::Broker::release).
    pub(super) fn release_job(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        // `bury` + `kick-job` instead of `release`: the kick is what tells
        // the next fetch not to count this reservation as an attempt.
        self.settle(delivery, |b, _, r| {
            match b.exchange1("release (bury)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("bury {} {}", r.id, r.pri))
            })? {
                Response::Buried(None) => {}
                Response::NotFound => return Err(lease_lost(r.id)),
                other => return Err(b.unexpected("release (bury)", other)),
            }
            match b.exchange1("release (kick-job)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("kick-job {}", r.id))
            })? {
                // NOT_FOUND: someone kicked it first; it is ready either way.
                Response::Kicked(None) | Response::NotFound => Ok(()),
                other => Err(b.unexpected("release (kick-job)", other)),
            }
        })
    }

    /// The body of [`Broker::dead_letter`](prefork_broker::Broker::dead_letter).
    pub(super) fn dead_letter_job(
        &mut self,
        delivery: Delivery,
        reason: &str,
    ) -> Result<(), SettleError> {
        self.settle(delivery, |b, d, r| {
            // 1. Bury: out of circulation, still ours to move.
            match b.exchange1("dead_letter (bury)", Duration::ZERO, |w| cmd::line(w, format_args!("bury {} {}", r.id, r.pri)))? {
                Response::Buried(None) => {}
                Response::NotFound => return Err(lease_lost(r.id)),
                other => return Err(b.unexpected("dead_letter (bury)", other)),
            }
            // 2. The record with the reason, into <tube>.dead.
            let stays = |why: String| {
                BrokerError::new(
                    ErrorKind::Invalid,
                    format!("dead_letter: {why}; job {} stays buried in tube {:?} (`kick-job {}` re-drives it)", r.id, b.tube, r.id),
                )
            };
            let Some(record) = dead::encode(d.attempt(), r.id, reason, d.payload(), b.max_job_size) else {
                return Err(stays(format!("a {}-byte job leaves no room in max-job-size for the reason", d.payload().len())));
            };
            let (dead_tube, tube, pri, ttr) = (b.dead_tube.clone(), b.tube.clone(), b.config.priority, b.config.ttr);
            let replies = b.exchange("dead_letter (put)", 3, Duration::ZERO, |w| {
                cmd::line(w, format_args!("use {dead_tube}"));
                cmd::put(w, pri, 0, u64::from(ttr), &record);
                cmd::line(w, format_args!("use {tube}"));
            })?;
            match &replies[..] {
                [Response::Using(_), Response::Inserted(_) | Response::Buried(Some(_)), Response::Using(_)] => {}
                [_, Response::Error(e), Response::Using(_)] => {
                    let mut e = server_error("dead_letter (put)", *e);
                    e = BrokerError::new(e.kind(), format!("{}; job {} stays buried in tube {:?}", e.message(), r.id, b.tube));
                    return Err(e);
                }
                _ => {
                    b.conn = None;
                    return Err(BrokerError::new(ErrorKind::Corrupt, format!("dead_letter: unexpected replies {replies:?}")));
                }
            }
            // 3. Delete the original.
            match b.exchange1("dead_letter (delete)", Duration::ZERO, |w| cmd::line(w, format_args!("delete {}", r.id)))? {
                // NOT_FOUND: an operator deleted or kicked it meanwhile.
                Response::Deleted | Response::NotFound => Ok(()),
                other => Err(b.unexpected("dead_letter (delete)", other)),
            }
        })
    }

    /// The body of [`Broker::touch`](prefork_broker::Broker::touch).
    pub(super) fn touch_job(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        let r = self.receipt(delivery)?;
        match self.exchange1("touch", Duration::ZERO, |w| {
            cmd::line(w, format_args!("touch {}", r.id))
        })? {
            Response::Touched => Ok(()),
            Response::NotFound => Err(lease_lost(r.id)),
            other => Err(self.unexpected("touch", other)),
        }
    }
}

pub(super) fn lease_lost(id: u64) -> BrokerError {
    BrokerError::new(
        ErrorKind::LeaseLost,
        format!(
            "job {id} is no longer reserved by this connection (its TTR expired or it was settled)"
        ),
    )
}
