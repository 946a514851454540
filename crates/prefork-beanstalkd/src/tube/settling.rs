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

    /// The body of [`Broker::retry`](prefork_broker::Broker::retry): a copy
    /// carrying the attempts used ([`carried`](crate::carried)) is put,
    /// delayed, then the original deleted. Two confirmed commands, so a
    /// handle killed between them leaves both (the original comes back when
    /// its connection closes and runs again, as at-least-once allows),
    /// never neither, and never a job out of circulation.
    pub(super) fn retry_job(
        &mut self,
        delivery: Delivery,
        delay: Duration,
    ) -> Result<(), SettleError> {
        let secs = ceil_secs(delay);
        self.settle(delivery, |b, d, r| {
            let body = crate::carried::encode(d.attempt(), d.payload());
            let copy = b.put_bodies("retry (put)", &[&body], r.pri, secs)?[0];
            let reply = b.exchange1("retry (delete)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("delete {}", r.id))
            })?;
            match reply {
                Response::Deleted => Ok(()),
                Response::NotFound => {
                    // The claim was lost (its TTR ran out): the original is
                    // back in circulation, so the copy goes.
                    let _ = b.exchange1("retry (delete the copy)", Duration::ZERO, |w| {
                        cmd::line(w, format_args!("delete {copy}"))
                    });
                    Err(lease_lost(r.id))
                }
                other => Err(b.unexpected("retry (delete)", other)),
            }
        })
    }

    /// The body of [`Broker::release`](prefork_broker::Broker::release):
    /// `release <id> <pri> 0`, one command, so a kill cannot leave the job
    /// half-released; the attempt does not count it (`releases`).
    pub(super) fn release_job(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.settle(delivery, |b, _, r| {
            match b.exchange1("release", Duration::ZERO, |w| {
                cmd::line(w, format_args!("release {} {} 0", r.id, r.pri))
            })? {
                Response::Released => Ok(()),
                Response::NotFound => Err(lease_lost(r.id)),
                Response::Buried(None) => Err(BrokerError::new(
                    ErrorKind::Transient,
                    format!("release: the server buried job {} (out of memory); `kick-job {}` makes it ready", r.id, r.id),
                )),
                other => Err(b.unexpected("release", other)),
            }
        })
    }

    /// The body of [`Broker::dead_letter`](prefork_broker::Broker::dead_letter):
    /// the record (reason, attempt, job id, payload) is put into
    /// `<tube>.dead`, then the original deleted. A handle killed between
    /// them leaves both (the original comes back when its connection closes
    /// and runs again), never a job out of circulation. Only a job too big
    /// for any header (put by another client: ours keep
    /// [`HEADROOM`](crate::HEADROOM)) is buried in its tube, and the error
    /// says so.
    pub(super) fn dead_letter_job(
        &mut self,
        delivery: Delivery,
        reason: &str,
    ) -> Result<(), SettleError> {
        self.settle(delivery, |b, d, r| {
            let Some(record) = dead::encode(d.attempt(), r.id, reason, d.payload(), b.server_max) else {
                let why = format!(
                    "dead_letter: a {}-byte job leaves no room in max-job-size for a dead-letter header; job {} stays buried in tube {:?} (`kick-job {}` re-drives it)",
                    d.payload().len(), r.id, b.tube, r.id
                );
                return match b.exchange1("dead_letter (bury)", Duration::ZERO, |w| cmd::line(w, format_args!("bury {} {}", r.id, r.pri)))? {
                    Response::Buried(None) => Err(BrokerError::new(ErrorKind::Invalid, why)),
                    Response::NotFound => Err(lease_lost(r.id)),
                    other => Err(b.unexpected("dead_letter (bury)", other)),
                };
            };
            let (dead_tube, tube, pri, ttr) = (b.dead_tube.clone(), b.tube.clone(), b.config.priority, b.config.ttr);
            let replies = b.exchange("dead_letter (put)", 3, Duration::ZERO, |w| {
                cmd::line(w, format_args!("use {dead_tube}"));
                cmd::put(w, pri, 0, u64::from(ttr), &record);
                cmd::line(w, format_args!("use {tube}"));
            })?;
            let record_id = match &replies[..] {
                [Response::Using(_), Response::Inserted(id) | Response::Buried(Some(id)), Response::Using(_)] => *id,
                [_, Response::Error(e), Response::Using(_)] => return Err(server_error("dead_letter (put)", *e)),
                _ => {
                    b.conn = None;
                    return Err(BrokerError::new(ErrorKind::Corrupt, format!("dead_letter: unexpected replies {replies:?}")));
                }
            };
            match b.exchange1("dead_letter (delete)", Duration::ZERO, |w| cmd::line(w, format_args!("delete {}", r.id)))? {
                Response::Deleted => Ok(()),
                Response::NotFound => {
                    // The claim was lost (its TTR ran out): the original is
                    // back in circulation, so the record goes.
                    let _ = b.exchange1("dead_letter (delete the record)", Duration::ZERO, |w| {
                        cmd::line(w, format_args!("delete {record_id}"))
                    });
                    Err(lease_lost(r.id))
                }
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
