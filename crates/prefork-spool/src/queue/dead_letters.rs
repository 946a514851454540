//! Dead letters: listing them, re-driving one into `ready/`, deleting one.

use std::fs;
use std::io;

use prefork_broker::{BrokerError, DeadLetter, DeliveryId, ErrorKind};

use super::{Queue, list};
use crate::name::{Dead, JobId, Ready};
use crate::record;

impl Queue {
    /// The body of [`Broker::dead_letters`](prefork_broker::Broker::dead_letters).
    pub(super) fn list_dead_letters(
        &mut self,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut jobs: Vec<(JobId, u32, String)> = list(&self.dead)?
            .into_iter()
            .filter_map(|n| match Dead::parse(&n) {
                Some(Dead::Job { id, attempt }) => Some((id, attempt, n)),
                _ => None,
            })
            .collect();
        jobs.sort_unstable();
        let mut out = Vec::new();
        for (id, attempt, name) in jobs {
            if out.len() >= limit {
                break;
            }
            let bytes = match fs::read(self.dead.join(&name)) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // re-driven meanwhile
                Err(e) => return Err(BrokerError::io("read a dead letter", e)),
            };
            let payload = match record::decode(bytes) {
                Ok(p) => p,
                Err(why) => {
                    self.quarantine(&self.dead, &name, &why.to_string());
                    continue;
                }
            };
            let reason = fs::read(self.dead.join(Dead::Reason { id }.to_string()))
                .map(|r| String::from_utf8_lossy(&r).into_owned())
                .unwrap_or_else(|_| String::from("(no reason recorded)"));
            out.push(
                DeadLetter::new(DeliveryId::new(id.to_string()), payload, reason)
                    .with_attempt(attempt),
            );
        }
        Ok(out)
    }

    /// The body of [`Broker::redrive`](prefork_broker::Broker::redrive).
    pub(super) fn redrive_dead_letter(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let (job, name) = self.find_dead(id)?;
        let r = Ready {
            due_us: self.now_us(),
            id: job,
            attempt: 1,
        };
        match fs::rename(self.dead.join(&name), self.ready.join(r.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_dead_letter(id)),
            Err(e) => return Err(BrokerError::io("redrive", e)),
        }
        let _ = fs::remove_file(self.dead.join(Dead::Reason { id: job }.to_string()));
        Ok(())
    }

    /// The body of [`Broker::delete_dead`](prefork_broker::Broker::delete_dead):
    /// one `unlink(2)` of the dead letter, then its reason's.
    pub(super) fn delete_dead_letter(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        let (job, name) = self.find_dead(id)?;
        match fs::remove_file(self.dead.join(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_dead_letter(id)),
            Err(e) => return Err(BrokerError::io("delete a dead letter", e)),
        }
        let _ = fs::remove_file(self.dead.join(Dead::Reason { id: job }.to_string()));
        Ok(())
    }

    /// The job id and file name in `dead/` of the dead letter `id`.
    fn find_dead(&self, id: &DeliveryId) -> Result<(JobId, String), BrokerError> {
        let job = JobId::parse(id.as_str()).ok_or_else(|| no_dead_letter(id))?;
        list(&self.dead)?
            .into_iter()
            .find_map(|n| match Dead::parse(&n) {
                Some(Dead::Job { id, .. }) if id == job => Some((job, n)),
                _ => None,
            })
            .ok_or_else(|| no_dead_letter(id))
    }
}

fn no_dead_letter(id: &DeliveryId) -> BrokerError {
    BrokerError::new(ErrorKind::NotFound, format!("no dead letter {id}"))
}
