//! Publishing into a tube: pipelined `put`s in bounded chunks, kicking
//! jobs the server stored buried.

use std::time::Duration;

use prefork_broker::{BrokerError, ErrorKind};

use super::Beanstalkd;
use super::connection::server_error;
use crate::proto::{Response, cmd};

/// How many commands one pipelined write of a batch holds at most (their
/// replies must fit the socket buffers: beanstalkd stops reading a
/// connection whose replies it cannot write).
pub(super) const PIPELINE_CHUNK: usize = 512;
/// How many payload bytes one pipelined write of a batch holds at most (one
/// job may exceed it).
pub(super) const PIPELINE_BYTES: usize = 4 << 20;

impl Beanstalkd {
    /// `put` into the tube in use, kicking a job the server stored buried.
    pub(super) fn put(
        &mut self,
        what: &str,
        payload: &[u8],
        pri: u32,
        delay: u64,
    ) -> Result<u64, BrokerError> {
        Ok(self.put_many(what, &[payload], pri, delay)?[0])
    }

    /// Pipelined `put`s of payloads into the tube in use (see
    /// [`put_bodies`](Self::put_bodies)); a payload over
    /// [`max_job_size`](Self::max_job_size) is refused before anything is
    /// sent, and one that starts like a header is escaped
    /// ([`carried`](crate::carried)).
    pub(super) fn put_many(
        &mut self,
        what: &str,
        payloads: &[&[u8]],
        pri: u32,
        delay: u64,
    ) -> Result<Vec<u64>, BrokerError> {
        if let Some((i, p)) = payloads
            .iter()
            .enumerate()
            .find(|(_, p)| p.len() > self.max_job_size)
        {
            let which = if payloads.len() > 1 {
                format!(" (job {} of {}; none was sent)", i + 1, payloads.len())
            } else {
                String::new()
            };
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "{what}: a {}-byte job is over the {} bytes this server takes (its max-job-size, beanstalkd -z, less {} bytes of headroom){which}",
                    p.len(),
                    self.max_job_size,
                    crate::HEADROOM
                ),
            ));
        }
        let bodies: Vec<std::borrow::Cow<'_, [u8]>> = payloads
            .iter()
            .map(|p| crate::carried::encode(0, p))
            .collect();
        let bodies: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
        self.put_bodies(what, &bodies, pri, delay)
    }

    /// Pipelined `put`s of job bodies into the tube in use (a few hundred
    /// per write), kicking the jobs the server stored buried; returns the
    /// job ids.
    pub(super) fn put_bodies(
        &mut self,
        what: &str,
        payloads: &[&[u8]],
        pri: u32,
        delay: u64,
    ) -> Result<Vec<u64>, BrokerError> {
        let ttr = u64::from(self.config.ttr);
        let mut ids = Vec::with_capacity(payloads.len());
        let mut rest = payloads;
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            while n < rest.len()
                && n < PIPELINE_CHUNK
                && (n == 0 || bytes + rest[n].len() <= PIPELINE_BYTES)
            {
                bytes += rest[n].len();
                n += 1;
            }
            let (chunk, after) = rest.split_at(n);
            rest = after;
            let replies = self.exchange(what, chunk.len(), Duration::ZERO, |w| {
                for p in chunk {
                    cmd::put(w, pri, delay, ttr, p);
                }
            })?;
            let mut failed = None;
            let mut buried = Vec::new();
            for r in replies {
                match r {
                    Response::Inserted(id) => ids.push(id),
                    // Out of memory for its queue: the job exists, buried.
                    // Make it ready, keeping its id (beanstalkc loses it).
                    Response::Buried(Some(id)) => {
                        ids.push(id);
                        buried.push(id);
                    }
                    Response::Error(e) => {
                        let added = ids.len();
                        failed.get_or_insert_with(|| {
                            let e = server_error(what, e);
                            if payloads.len() > 1 {
                                BrokerError::new(e.kind(), format!("{} (job {} of {}; the {added} before it were added, later ones may have been)", e.message(), added + 1, payloads.len()))
                            } else {
                                e
                            }
                        });
                    }
                    other => return Err(self.unexpected(what, other)),
                }
            }
            if !buried.is_empty() {
                let kicks = self.exchange(what, buried.len(), Duration::ZERO, |w| {
                    for id in &buried {
                        cmd::line(w, format_args!("kick-job {id}"));
                    }
                })?;
                for (id, r) in buried.iter().zip(kicks) {
                    if r != Response::Kicked(None) {
                        return Err(BrokerError::new(
                            ErrorKind::Transient,
                            format!(
                                "{what}: the server stored job {id} buried (out of memory) and kicking it failed ({r:?}); `kick-job {id}` makes it ready"
                            ),
                        ));
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(ids)
    }
}
