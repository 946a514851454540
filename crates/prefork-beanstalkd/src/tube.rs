//! [`Beanstalkd`]: a handle on one tube, the [`Broker`] implementation.
//! The type and its trait impl live here; each idea has a module of its
//! own: [`connection`], [`reading`] (reserve, take-over), [`settling`]
//! (ack, retry, release, dead letter, touch), [`publishing`] and
//! [`dead_letters`] (listing, re-driving and deleting them; the counts).

mod connection;
mod dead_letters;
mod publishing;
mod reading;
mod settling;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use prefork_broker::{
    Broker, BrokerError, DeadLetter, Delivery, DeliveryId, ErrorKind, QueueStats, SettleError,
};

use crate::config::ceil_secs;
use crate::conn::Conn;
use crate::proto::valid_tube;
use crate::{Config, DEAD_SUFFIX};

/// A handle on one beanstalkd tube: the [`Broker`] implementation.
///
/// It owns one TCP connection, opened by [`Config::open`] and reopened
/// on the next call after a connection failure (jobs held on the old
/// connection go back to ready at once, and settling them reports
/// [`ErrorKind::LeaseLost`]). Dropping it closes the socket without writing
/// anything. See the README for how each operation maps to beanstalk
/// commands.
pub struct Beanstalkd {
    config: Config,
    addrs: Vec<SocketAddr>,
    tube: String,
    dead_tube: String,
    conn: Option<Conn>,
    /// Counts connections; receipts name the one their claim lives on.
    generation: u64,
    /// The largest payload taken: the server's `max-job-size` less
    /// [`HEADROOM`](crate::HEADROOM), so a retried copy's or dead letter's
    /// header fits.
    max_job_size: usize,
    /// The server's `max-job-size`: the largest body it stores.
    server_max: usize,
    /// The server's `id` (random per server process) and whether it keeps a
    /// binlog, from the last handshake.
    server: Option<(String, bool)>,
}

impl fmt::Debug for Beanstalkd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Beanstalkd")
            .field("server", &self.config.address())
            .field("tube", &self.tube)
            .field("connected", &self.conn.is_some())
            .field("generation", &self.generation)
            .field("max_job_size", &self.max_job_size)
            .finish()
    }
}

impl Beanstalkd {
    /// Opens a handle on `tube` as `config` says (the body of
    /// [`Config::open`]).
    pub(crate) fn open(config: &Config, tube: &str) -> Result<Beanstalkd, BrokerError> {
        let dead_tube = format!("{tube}{DEAD_SUFFIX}");
        if !valid_tube(tube) || !valid_tube(&dead_tube) {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "tube name {tube:?} is not one beanstalkd accepts (1-195 bytes of A-Za-z0-9-+/;.$_(), not starting with '-')"
                ),
            ));
        }
        let addrs = config.resolve()?;
        let mut b = Beanstalkd {
            config: config.clone(),
            addrs,
            tube: tube.to_owned(),
            dead_tube,
            conn: None,
            generation: 0,
            max_job_size: 0,
            server_max: 0,
            server: None,
        };
        b.conn()?;
        Ok(b)
    }

    /// The tube this handle works on.
    pub fn tube(&self) -> &str {
        &self.tube
    }

    /// The tube holding this tube's dead letters (`<tube>.dead`).
    pub fn dead_tube(&self) -> &str {
        &self.dead_tube
    }

    /// The largest payload [`publish`](Broker::publish) takes (bytes): the
    /// server's `max-job-size`, read when the connection opened, less
    /// [`HEADROOM`](crate::HEADROOM) for the header a retried copy or a
    /// dead letter carries.
    pub fn max_job_size(&self) -> usize {
        self.max_job_size
    }

    /// The configuration this handle was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Broker for Beanstalkd {
    fn queue(&self) -> &str {
        &self.tube
    }

    fn publish(&mut self, payload: &[u8], delay: Duration) -> Result<(), BrokerError> {
        let pri = self.config.priority;
        self.put("publish", payload, pri, ceil_secs(delay))
            .map(drop)
    }

    fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BrokerError> {
        self.fetch_jobs(max, timeout)
    }

    fn ack(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.ack_job(delivery)
    }

    fn publish_batch(&mut self, payloads: &[&[u8]], delay: Duration) -> Result<(), BrokerError> {
        let pri = self.config.priority;
        self.put_many("publish_batch", payloads, pri, ceil_secs(delay))
            .map(drop)
    }

    /// A plain, confirmed [`ack`](Broker::ack). beanstalkd reads one
    /// command a turn per connection and drops what it has not read when
    /// the client hangs up: deletes pipelined ahead of their replies are
    /// lost if the worker dies a moment later (48 of 50 were, in a test
    /// here), and those jobs run again. So a deferred ack would widen
    /// at-least-once's window from the job in hand to every ack not yet
    /// answered.
    fn ack_deferred(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.ack(delivery)
    }

    fn take_over(
        &mut self,
        holder_pid: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.take_over_jobs(holder_pid, ids)
    }

    fn retry(&mut self, delivery: Delivery, delay: Duration) -> Result<(), SettleError> {
        self.retry_job(delivery, delay)
    }

    fn release(&mut self, delivery: Delivery) -> Result<(), SettleError> {
        self.release_job(delivery)
    }

    fn dead_letter(&mut self, delivery: Delivery, reason: &str) -> Result<(), SettleError> {
        self.dead_letter_job(delivery, reason)
    }

    fn touch(&mut self, delivery: &mut Delivery) -> Result<(), BrokerError> {
        self.touch_job(delivery)
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.list_dead_letters(limit)
    }

    fn redrive(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.redrive_dead_letter(id)
    }

    fn delete_dead(&mut self, id: &DeliveryId) -> Result<(), BrokerError> {
        self.delete_dead_letter(id)
    }

    /// `stats-tube` of the tube and of `<tube>.dead`: ready, delayed and
    /// claimed are the tube's `current-jobs-ready`, `-delayed` and
    /// `-reserved`; dead is every job of `<tube>.dead` (a listing in
    /// progress holds them reserved for a moment); the tube's buried jobs
    /// (buried by the server when out of memory, or a job too big for a
    /// dead-letter header) are the extra count `buried`.
    fn stats(&mut self) -> Result<QueueStats, BrokerError> {
        self.tube_stats()
    }
}
