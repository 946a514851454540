//! The frame codec: the messages, [`encode`], and the incremental [`Decoder`].
//!
//! Layout of one frame (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version ([`VERSION`]) |
//! | 1 | 1 | kind |
//! | 2 | 4 | body length `n` (u32) |
//! | 6 | `n` | body |
//!
//! The README of the crate has the body of every kind.

use std::fmt;

/// Version byte written at the start of every frame, and the only one accepted.
pub const VERSION: u8 = 1;

/// Largest frame body accepted by default, in bytes; [`Decoder::with_max_frame`]
/// changes it.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Size of the frame header: version, kind, body length.
pub const HEADER_LEN: usize = 6;

const KIND_READY: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_JOB: u8 = 3;
const KIND_FINISHED: u8 = 4;
// 5 was `Failed`, folded into `Finished`.
const KIND_STATS: u8 = 6;
const KIND_CONTROL: u8 = 7;
const KIND_WANT: u8 = 8;
const KIND_RELEASE: u8 = 9;
const KIND_LOST: u8 = 10;
const KIND_DEADLINE: u8 = 11;
const KIND_ORPHANED: u8 = 12;

const PROGRESS_IDLE: u8 = 0;
const PROGRESS_BUSY: u8 = 1;

const CONTROL_STOP: u8 = 1;
const CONTROL_REOPEN_LOGS: u8 = 2;

/// Smallest buffer the decoder allocates once it holds any bytes.
const MIN_BUFFER: usize = 4096;
/// An empty decoder buffer larger than this is released instead of kept.
const KEEP_BUFFER: usize = 64 * 1024;
/// Most bytes a single read asks for: the buffer grows with the bytes that
/// arrive, not with the length a header claims.
const MAX_READ: usize = 64 * 1024;

/// One message between the master and a worker.
///
/// Both ends of a channel are the same binary (workers are forks of the
/// master), so there is one version of every kind: a kind, a tag or a body
/// length this version does not know is a [`DecodeError`], not something to
/// skip. `#[non_exhaustive]`: later versions add kinds.
///
/// # Examples
///
/// ```
/// use prefork_heartbeat::{Decoder, Message, Progress, encode};
///
/// let msg = Message::Heartbeat(Progress::Busy { job: "42".into(), since_unix_ms: 1_700_000_000_000 });
/// let mut bytes = Vec::new();
/// encode(&msg, &mut bytes);
///
/// let mut decoder = Decoder::new();
/// decoder.feed(&bytes);
/// assert_eq!(decoder.next_message().unwrap(), Some(msg));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Worker -> master: set up and ready for work.
    Ready {
        /// The worker's process id.
        pid: u32,
    },
    /// Worker -> master: alive, and what it is doing.
    Heartbeat(Progress),
    /// Feeder -> master -> worker: a job to run (dispatch mode).
    Job {
        /// The broker's delivery id, opaque to this crate.
        id: String,
        /// The job's bytes, opaque to this crate.
        payload: Vec<u8>,
        /// The broker's delivery count, from 1.
        attempt: u32,
    },
    /// Worker -> master -> feeder: the worker is done with the job, and
    /// `report` says how it went. The report is opaque here and to the
    /// master: the job layer encodes it in the worker and decodes it in the
    /// feeder (succeeded, retry after a delay, dead-letter, and why).
    Finished {
        /// The delivery id from [`Message::Job`].
        id: String,
        /// The worker's verdict, for the feeder.
        report: Vec<u8>,
    },
    /// Worker -> master: resource usage.
    Stats(Stats),
    /// Master -> worker: a control request, read between iterations.
    Control(Control),
    /// Master -> feeder: send up to `n` more jobs (credits, added to those
    /// not yet used). The master asks for no more jobs than it has idle
    /// workers.
    Want {
        /// How many more jobs the master can hand out now.
        n: u32,
    },
    /// Master -> feeder: give this job back to the broker without counting
    /// an attempt: it was never started (graceful shutdown, or no worker
    /// left to run it).
    Release {
        /// The delivery id from [`Message::Job`].
        id: String,
    },
    /// Master -> feeder: the worker holding this job died (crash, SIGKILL,
    /// hard time limit). Settle it as a failed attempt under the retry
    /// policy.
    Lost {
        /// The delivery id from [`Message::Job`].
        id: String,
        /// What happened, for the log and the dead-letter place.
        reason: String,
    },
    /// Worker -> master: kill this worker if it is still running job `id`
    /// `in_ms` milliseconds from now (a hard time limit); `in_ms == 0`
    /// clears the deadline.
    Deadline {
        /// The job (a delivery id, or any label in pull mode).
        id: String,
        /// Milliseconds from now; 0 clears.
        in_ms: u64,
    },
    /// Master -> feeder or worker: the process `pid` (a worker or the
    /// feeder of this pool) died holding broker claims; take them over now
    /// instead of waiting for their claim timeout (`Broker::take_over`).
    ///
    /// To a pull-mode worker: `ids` are the jobs the dead worker was
    /// running, as far as the master knows; the receiver takes every claim
    /// of `pid` and runs them. To a new feeder: the old feeder `pid` died;
    /// `ids` are the jobs it handed out that still run on workers or finished with a report to follow (their
    /// reports come to the new feeder, which must hold them, not hand them
    /// out again); its other claims are jobs no worker started.
    Orphaned {
        /// The dead process's id.
        pid: u32,
        /// See above.
        ids: Vec<String>,
    },
}

impl Message {
    /// The kind byte this message is encoded with.
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_heartbeat::Message;
    /// assert_eq!(Message::Ready { pid: 7 }.kind(), 1);
    /// assert_eq!(Message::Want { n: 3 }.kind(), 8);
    /// ```
    pub fn kind(&self) -> u8 {
        match self {
            Message::Ready { .. } => KIND_READY,
            Message::Heartbeat(_) => KIND_HEARTBEAT,
            Message::Job { .. } => KIND_JOB,
            Message::Finished { .. } => KIND_FINISHED,
            Message::Stats(_) => KIND_STATS,
            Message::Control(_) => KIND_CONTROL,
            Message::Want { .. } => KIND_WANT,
            Message::Release { .. } => KIND_RELEASE,
            Message::Lost { .. } => KIND_LOST,
            Message::Deadline { .. } => KIND_DEADLINE,
            Message::Orphaned { .. } => KIND_ORPHANED,
        }
    }
}

/// What a worker is doing, as told in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for work.
    Idle,
    /// Running a job.
    Busy {
        /// The job's delivery id.
        job: String,
        /// When the job started, in milliseconds since the UNIX epoch.
        since_unix_ms: u64,
    },
}

/// A worker's resource usage.
///
/// A plain struct with public fields, built with
/// `Stats { rss_bytes, ..Stats::default() }`. It is not `#[non_exhaustive]`
/// so that callers can build it that way; a field added later is a new major
/// version of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
    /// Proportional set size, in bytes (0 when unknown).
    pub pss_bytes: u64,
    /// Jobs this worker has finished since it started.
    pub jobs_finished: u64,
    /// Iterations of the worker's loop since it started.
    pub iterations: u64,
}

/// A request from the master to a worker.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Finish the current job, then exit.
    Stop,
    /// Reopen log files (after rotation).
    ReopenLogs,
}

/// Why a byte stream could not be decoded.
///
/// Every error is final for the stream: the decoder that returned it returns
/// it again on every later call, since the frame boundaries can no longer be
/// trusted.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame starts with a version byte this decoder does not speak.
    Version(u8),
    /// The frame announces a body of this many bytes, more than the maximum.
    TooLarge(usize),
    /// The frame's kind is none this version has.
    Kind(u8),
    /// The body does not match its kind (too short, too long, a tag or a
    /// string it cannot hold); the text says how.
    Malformed(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Version(v) => {
                write!(
                    f,
                    "frame version {v} is not supported (this peer speaks {VERSION})"
                )
            }
            DecodeError::TooLarge(n) => write!(f, "frame body of {n} bytes exceeds the maximum"),
            DecodeError::Kind(k) => write!(f, "frame kind {k} is not one this peer knows"),
            DecodeError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends one encoded frame to `out`.
///
/// Encoding never fails. The receiver refuses a body larger than its maximum
/// ([`DEFAULT_MAX_FRAME`] unless configured); [`Channel::send`](crate::Channel::send)
/// checks that before queueing.
///
/// # Examples
///
/// ```
/// use prefork_heartbeat::{Message, encode};
///
/// let mut out = Vec::new();
/// encode(&Message::Ready { pid: 1234 }, &mut out);
/// assert_eq!(out, [1, 1, 4, 0, 0, 0, 0xd2, 0x04, 0, 0]);
/// ```
///
/// # Panics
///
/// If the body, or one string or payload in it, is longer than `u32::MAX`
/// bytes.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[VERSION, msg.kind(), 0, 0, 0, 0]);
    match msg {
        Message::Ready { pid } => out.extend_from_slice(&pid.to_le_bytes()),
        Message::Heartbeat(Progress::Idle) => out.push(PROGRESS_IDLE),
        Message::Heartbeat(Progress::Busy { job, since_unix_ms }) => {
            out.push(PROGRESS_BUSY);
            out.extend_from_slice(&since_unix_ms.to_le_bytes());
            put_bytes(out, job.as_bytes());
        }
        Message::Job {
            id,
            payload,
            attempt,
        } => {
            put_bytes(out, id.as_bytes());
            put_bytes(out, payload);
            out.extend_from_slice(&attempt.to_le_bytes());
        }
        Message::Release { id } => put_bytes(out, id.as_bytes()),
        Message::Finished { id, report } => {
            put_bytes(out, id.as_bytes());
            put_bytes(out, report);
        }
        Message::Want { n } => out.extend_from_slice(&n.to_le_bytes()),
        Message::Lost { id, reason } => {
            put_bytes(out, id.as_bytes());
            put_bytes(out, reason.as_bytes());
        }
        Message::Deadline { id, in_ms } => {
            put_bytes(out, id.as_bytes());
            out.extend_from_slice(&in_ms.to_le_bytes());
        }
        Message::Orphaned { pid, ids } => {
            out.extend_from_slice(&pid.to_le_bytes());
            let n = u32::try_from(ids.len()).expect("more than u32::MAX ids");
            out.extend_from_slice(&n.to_le_bytes());
            for id in ids {
                put_bytes(out, id.as_bytes());
            }
        }
        Message::Stats(s) => {
            for v in [s.rss_bytes, s.pss_bytes, s.jobs_finished, s.iterations] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Message::Control(c) => out.push(match c {
            Control::Stop => CONTROL_STOP,
            Control::ReopenLogs => CONTROL_REOPEN_LOGS,
        }),
    }
    let len = u32::try_from(out.len() - start - HEADER_LEN).expect("frame body exceeds u32::MAX");
    out[start + 2..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// Writes a u32 length and the bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("field exceeds u32::MAX bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads fields off a frame body, checking every length against what is left.
struct Body<'a> {
    rest: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A u32 length, checked against the bytes left before anything is copied.
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Malformed(what))?;
        self.take(len, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Malformed("string is not UTF-8"))
    }
}

/// Decodes the body of one complete frame, which must hold its kind's
/// fields and nothing more.
fn decode_body(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
    let mut b = Body { rest: body };
    let msg = match kind {
        KIND_READY => Message::Ready {
            pid: b.u32("ready: truncated pid")?,
        },
        KIND_HEARTBEAT => match b.u8("heartbeat: missing progress")? {
            PROGRESS_IDLE => Message::Heartbeat(Progress::Idle),
            PROGRESS_BUSY => {
                let since_unix_ms = b.u64("heartbeat: truncated start time")?;
                let job = b.string("heartbeat: truncated job id")?;
                Message::Heartbeat(Progress::Busy { job, since_unix_ms })
            }
            _ => return Err(DecodeError::Malformed("heartbeat: unknown progress tag")),
        },
        KIND_JOB => Message::Job {
            id: b.string("job: truncated id")?,
            payload: b.bytes("job: truncated payload")?.to_vec(),
            attempt: b.u32("job: truncated attempt")?,
        },
        KIND_FINISHED => Message::Finished {
            id: b.string("finished: truncated id")?,
            report: b.bytes("finished: truncated report")?.to_vec(),
        },
        KIND_STATS => Message::Stats(Stats {
            rss_bytes: b.u64("stats: truncated")?,
            pss_bytes: b.u64("stats: truncated")?,
            jobs_finished: b.u64("stats: truncated")?,
            iterations: b.u64("stats: truncated")?,
        }),
        KIND_CONTROL => match b.u8("control: missing request")? {
            CONTROL_STOP => Message::Control(Control::Stop),
            CONTROL_REOPEN_LOGS => Message::Control(Control::ReopenLogs),
            _ => return Err(DecodeError::Malformed("control: unknown request")),
        },
        KIND_WANT => Message::Want {
            n: b.u32("want: truncated count")?,
        },
        KIND_RELEASE => Message::Release {
            id: b.string("release: truncated id")?,
        },
        KIND_LOST => Message::Lost {
            id: b.string("lost: truncated id")?,
            reason: b.string("lost: truncated reason")?,
        },
        KIND_DEADLINE => Message::Deadline {
            id: b.string("deadline: truncated id")?,
            in_ms: b.u64("deadline: truncated time")?,
        },
        KIND_ORPHANED => {
            let pid = b.u32("orphaned: truncated pid")?;
            let n = b.u32("orphaned: truncated count")? as usize;
            // Each id takes at least its 4-byte length: a count the body
            // cannot hold is garbage, not an allocation.
            if n > b.rest.len() / 4 {
                return Err(DecodeError::Malformed(
                    "orphaned: more ids than the frame holds",
                ));
            }
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(b.string("orphaned: truncated id")?);
            }
            Message::Orphaned { pid, ids }
        }
        other => return Err(DecodeError::Kind(other)),
    };
    if !b.rest.is_empty() {
        return Err(DecodeError::Malformed(
            "trailing bytes after the last field",
        ));
    }
    Ok(msg)
}

/// Incremental decoder for a byte stream (`SOCK_STREAM`): feed bytes, take
/// messages.
///
/// Bytes may arrive in any chunks: a frame split over many
/// [`feed`](Decoder::feed) calls decodes the same as one fed at once.
/// Memory is bounded: a frame header announcing more than the maximum body
/// size is refused before any of its body is buffered, and the buffer grows
/// only as bytes arrive.
///
/// # Examples
///
/// ```
/// use prefork_heartbeat::{Decoder, Message, encode};
///
/// let mut bytes = Vec::new();
/// encode(&Message::Release { id: "7".into() }, &mut bytes);
///
/// let mut decoder = Decoder::new();
/// for byte in &bytes {
///     assert_eq!(decoder.next_message().unwrap(), None);
///     decoder.feed(std::slice::from_ref(byte));
/// }
/// assert_eq!(decoder.next_message().unwrap(), Some(Message::Release { id: "7".into() }));
/// assert_eq!(decoder.next_message().unwrap(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Always initialised; the bytes held are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
    error: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder that accepts bodies up to [`DEFAULT_MAX_FRAME`] bytes.
    /// Allocates nothing until bytes arrive.
    pub fn new() -> Self {
        Decoder::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A decoder that accepts bodies up to `max` bytes.
    pub fn with_max_frame(max: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
            error: None,
        }
    }

    /// The largest body accepted, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Changes the largest body accepted, for frames not yet decoded.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max = max;
    }

    /// Number of bytes held: fed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Adds bytes from the stream.
    ///
    /// After an error the bytes are dropped: they would never be decoded.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Returns the next complete message, `Ok(None)` if the bytes held do not
    /// yet make one.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Version`] as soon as a frame's first byte is not
    /// [`VERSION`], [`DecodeError::TooLarge`] as soon as its header announces a
    /// body above the maximum, [`DecodeError::Malformed`] when a complete body
    /// does not fit its kind. An error is final: later calls return it again.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let held = &self.buf[self.start..self.end];
        let Some(&version) = held.first() else {
            return Ok(None);
        };
        if version != VERSION {
            return Err(self.fail(DecodeError::Version(version)));
        }
        if held.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = held[1];
        let len = u32::from_le_bytes([held[2], held[3], held[4], held[5]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max {
            return Err(self.fail(DecodeError::TooLarge(len)));
        }
        if held.len() - HEADER_LEN < len {
            return Ok(None);
        }
        let decoded = decode_body(kind, &held[HEADER_LEN..HEADER_LEN + len]);
        self.start += HEADER_LEN + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BUFFER {
                self.buf = Vec::new();
            }
        }
        decoded.map(Some).map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.error = Some(e.clone());
        e
    }

    /// How many bytes a read should ask for: the rest of the frame being
    /// received when its header is known and valid (at most [`MAX_READ`]),
    /// else a small chunk.
    pub(crate) fn read_hint(&self) -> usize {
        let held = &self.buf[self.start..self.end];
        if held.len() >= HEADER_LEN && held[0] == VERSION {
            let len = u32::from_le_bytes([held[2], held[3], held[4], held[5]]);
            if let Ok(len) = usize::try_from(len)
                && len <= self.max
            {
                let rest = (HEADER_LEN + len).saturating_sub(held.len());
                return rest.clamp(MIN_BUFFER, MAX_READ);
            }
        }
        MIN_BUFFER
    }

    /// Free space of at least `want` bytes after the bytes held, for a read
    /// to fill; [`commit`](Decoder::commit) then counts what it wrote.
    pub(crate) fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.buf.len() - self.end < want && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            let need = (self.end + want).max(MIN_BUFFER);
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes written into [`spare`](Decoder::spare) as held.
    pub(crate) fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_refused_before_the_body_arrives() {
        let mut d = Decoder::with_max_frame(10);
        d.feed(&[VERSION, KIND_JOB, 11, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(DecodeError::TooLarge(11)));
        assert_eq!(d.next_message(), Err(DecodeError::TooLarge(11)));
    }

    #[test]
    fn version_is_checked_on_the_first_byte() {
        let mut d = Decoder::new();
        d.feed(&[2]);
        assert_eq!(d.next_message(), Err(DecodeError::Version(2)));
    }

    #[test]
    fn buffer_grows_with_the_bytes_not_the_announced_length() {
        let mut d = Decoder::new();
        d.feed(&[VERSION, KIND_JOB, 0, 0, 0, 1]); // 16 MiB announced
        assert_eq!(d.next_message(), Ok(None));
        assert!(d.buf.len() <= MIN_BUFFER);
    }

    #[test]
    fn large_buffer_is_released_when_empty() {
        let msg = Message::Job {
            id: "a".into(),
            payload: vec![7; 200_000],
            attempt: 1,
        };
        let mut bytes = Vec::new();
        encode(&msg, &mut bytes);
        let mut d = Decoder::new();
        d.feed(&bytes);
        assert_eq!(d.next_message(), Ok(Some(msg)));
        assert_eq!(d.buf.capacity(), 0);
    }

    #[test]
    fn reads_grow_the_buffer_with_the_data_not_the_claimed_length() {
        let mut d = Decoder::new();
        d.feed(&[VERSION, KIND_JOB, 0, 0, 1, 0]); // 65536-byte body
        assert_eq!(d.read_hint(), 65536);
        d.feed(&[0; 1000]);
        assert_eq!(d.read_hint(), 65536 + HEADER_LEN - 1006);

        let mut d = Decoder::new();
        d.feed(&[VERSION, KIND_JOB, 0, 0, 0, 1]); // 16 MiB claimed
        assert_eq!(d.read_hint(), MAX_READ);
        let spare = d.spare(d.read_hint()).len();
        assert!(spare >= MAX_READ);
        assert!(d.buf.len() <= HEADER_LEN + MAX_READ);
    }
}
