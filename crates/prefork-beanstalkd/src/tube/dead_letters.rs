//! A tube's dead letters: listing the records of `<tube>.dead`,
//! re-driving or deleting one; and the tube's counts (`stats-tube`).

use std::time::Duration;

use prefork_broker::{BrokerError, DeadLetter, DeliveryId, ErrorKind, QueueStats};

use super::Beanstalkd;
use crate::dead;
use crate::proto::{Response, ServerError, cmd, yaml_field};

/// How many reserves one listing of dead letters pipelines at a time.
pub(super) const LIST_CHUNK: usize = 64;

impl Beanstalkd {
    /// The body of [`Broker::dead_letters`](prefork_broker::Broker::dead_letters).
    pub(super) fn list_dead_letters(
        &mut self,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (tube, dead_tube) = (self.tube.clone(), self.dead_tube.clone());
        // Watch only the dead tube, reserve records (oldest first: same
        // priority, so by id), watch the tube again, release the records.
        let set_up = self.exchange("dead_letters (watch)", 2, Duration::ZERO, |w| {
            cmd::line(w, format_args!("watch {dead_tube}"));
            cmd::line(w, format_args!("ignore {tube}"));
        })?;
        if !matches!(set_up[..], [Response::Watching(_), Response::Watching(_)]) {
            self.conn = None;
            return Err(BrokerError::new(
                ErrorKind::Corrupt,
                format!("dead_letters: unexpected replies {set_up:?}"),
            ));
        }
        let mut records = Vec::new();
        let listing = (|| {
            while records.len() < limit {
                let n = (limit - records.len()).min(LIST_CHUNK);
                let replies = self.exchange("dead_letters (reserve)", n, Duration::ZERO, |w| {
                    for _ in 0..n {
                        cmd::line(w, format_args!("reserve-with-timeout 0"));
                    }
                })?;
                let before = records.len();
                for r in replies {
                    match r {
                        Response::Reserved { id, body } => records.push((id, body)),
                        Response::TimedOut | Response::DeadlineSoon => {}
                        other => return Err(self.unexpected("dead_letters (reserve)", other)),
                    }
                }
                if records.len() - before < n {
                    break;
                }
            }
            Ok(())
        })();
        let pri = self.config.priority;
        let restore = self.exchange(
            "dead_letters (restore)",
            2 + records.len(),
            Duration::ZERO,
            |w| {
                cmd::line(w, format_args!("watch {tube}"));
                cmd::line(w, format_args!("ignore {dead_tube}"));
                for (id, _) in &records {
                    cmd::line(w, format_args!("release {id} {pri} 0"));
                }
            },
        );
        listing?;
        restore?;
        Ok(records
            .into_iter()
            .map(|(id, body)| {
                let dl_id = DeliveryId::new(id.to_string());
                match dead::decode(&body) {
                    Some(rec) => DeadLetter::new(dl_id, rec.payload, rec.reason)
                        .with_attempt(rec.attempt)
                        .with_meta("job-id", rec.job_id.to_string())
                        .with_meta("tube", dead_tube.clone()),
                    None => DeadLetter::new(
                        dl_id,
                        body,
                        "(a job put into the dead tube directly: no reason recorded)",
                    )
                    .with_meta("tube", dead_tube.clone()),
                }
            })
            .collect())
    }

    /// The body of [`Broker::redrive`](prefork_broker::Broker::redrive).
    pub(super) fn redrive_dead_letter(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let rid = self.dead_record(id, "redrive")?;
        let not_found = |why: &str| {
            BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in tube: {why}"),
            )
        };
        // Claim the record exclusively, so two re-drives cannot both move it.
        let body = match self.exchange1("redrive (reserve-job)", Duration::ZERO, |w| {
            cmd::line(w, format_args!("reserve-job {rid}"))
        })? {
            Response::Reserved { body, .. } => body,
            Response::NotFound => return Err(not_found("taken by another client")),
            Response::Error(ServerError::UnknownCommand) => {
                return Err(BrokerError::new(
                    ErrorKind::Unsupported,
                    "redrive needs beanstalkd 1.12 or later (reserve-job)",
                ));
            }
            other => return Err(self.unexpected("redrive (reserve-job)", other)),
        };
        let payload = dead::decode(&body).map_or(body, |r| r.payload);
        let pri = self.config.priority;
        if let Err(e) = self.put("redrive (put)", &payload, pri, 0) {
            // Give the record back (best effort: closing the connection
            // would too).
            let _ = self.exchange1("redrive (release)", Duration::ZERO, |w| {
                cmd::line(w, format_args!("release {rid} {pri} 0"))
            });
            return Err(e);
        }
        match self.exchange1("redrive (delete)", Duration::ZERO, |w| {
            cmd::line(w, format_args!("delete {rid}"))
        })? {
            Response::Deleted => Ok(()),
            other => Err(self.unexpected("redrive (delete)", other)),
        }
    }

    /// The body of [`Broker::delete_dead`](prefork_broker::Broker::delete_dead):
    /// `stats-job` (the job must be in `<tube>.dead`), then `delete`, which
    /// beanstalkd does for a ready job of any client in one step (a record
    /// reserved by a listing in progress answers `NOT_FOUND`).
    pub(super) fn delete_dead_letter(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let rid = self.dead_record(id, "delete_dead")?;
        match self.exchange1("delete_dead (delete)", Duration::ZERO, |w| {
            cmd::line(w, format_args!("delete {rid}"))
        })? {
            Response::Deleted => Ok(()),
            Response::NotFound => Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in tube: taken by another client"),
            )),
            other => Err(self.unexpected("delete_dead (delete)", other)),
        }
    }

    /// The beanstalkd job id of dead letter `id`, checked with `stats-job`
    /// to be a job of `<tube>.dead`.
    fn dead_record(&mut self, id: &DeliveryId, what: &str) -> Result<u64, BrokerError> {
        let not_found = |why: &str| {
            BrokerError::new(
                ErrorKind::NotFound,
                format!("no dead letter {id} in tube: {why}"),
            )
        };
        let Ok(rid) = id.as_str().parse::<u64>() else {
            return Err(not_found("not a beanstalkd job id"));
        };
        let context = format!("{what} (stats-job)");
        match self.exchange1(&context, Duration::ZERO, |w| {
            cmd::line(w, format_args!("stats-job {rid}"))
        })? {
            Response::Ok(yaml) => {
                let tube = yaml_field(&yaml, "tube").map(|t| t.trim_matches('"'));
                if tube != Some(self.dead_tube.as_str()) {
                    return Err(not_found(&format!(
                        "job {rid} is in tube {tube:?}, not {:?}",
                        self.dead_tube
                    )));
                }
                Ok(rid)
            }
            Response::NotFound => Err(not_found("no such job")),
            other => Err(self.unexpected(&context, other)),
        }
    }

    /// The body of [`Broker::stats`](prefork_broker::Broker::stats):
    /// `stats-tube` of the tube and of `<tube>.dead`, pipelined (a tube
    /// beanstalkd does not know, because nothing is in it and no one
    /// watches it, counts zero).
    pub(super) fn tube_stats(&mut self) -> Result<QueueStats, BrokerError> {
        let (tube, dead_tube) = (self.tube.clone(), self.dead_tube.clone());
        let replies = self.exchange("stats (stats-tube)", 2, Duration::ZERO, |w| {
            cmd::line(w, format_args!("stats-tube {tube}"));
            cmd::line(w, format_args!("stats-tube {dead_tube}"));
        })?;
        let mut counts = Vec::with_capacity(2);
        for r in replies {
            counts.push(match r {
                Response::Ok(yaml) => {
                    let n = |k: &str| -> Result<u64, BrokerError> {
                        yaml_field(&yaml, k)
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| {
                                BrokerError::new(
                                    ErrorKind::Corrupt,
                                    format!("stats-tube: no number {k:?} in the reply"),
                                )
                            })
                    };
                    [
                        n("current-jobs-ready")?,
                        n("current-jobs-delayed")?,
                        n("current-jobs-reserved")?,
                        n("current-jobs-buried")?,
                    ]
                }
                Response::NotFound => [0; 4],
                other => return Err(self.unexpected("stats (stats-tube)", other)),
            });
        }
        let ([ready, delayed, reserved, buried], dead) = (counts[0], counts[1]);
        Ok(QueueStats::new(ready, dead.iter().sum())
            .with_delayed(delayed)
            .with_claimed(reserved)
            .with_extra("buried", buried))
    }
}
