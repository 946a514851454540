//! [`Channel`]: one end of the master<->worker socket, with buffered,
//! non-blocking I/O of frames.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, getsockopt, recv, send, socketpair, sockopt,
};

use crate::frame::{DecodeError, Decoder, HEADER_LEN, Message, encode};

/// An output buffer larger than this is released once it has been written.
const KEEP_OUTPUT: usize = 64 * 1024;

/// Why a [`Channel`] operation failed.
#[non_exhaustive]
#[derive(Debug)]
pub enum ChannelError {
    /// The peer is gone: end of file, `ECONNRESET` or `EPIPE`. Returned by
    /// [`Channel::recv`] only after every complete message received before
    /// the end was returned. Final.
    Closed,
    /// The peer sent bytes that are not a valid frame stream. Final.
    Decode(DecodeError),
    /// The message's body is larger than the channel's maximum frame
    /// ([`Channel::max_frame`]), so the peer would refuse it. Nothing was
    /// queued; the channel is still usable.
    TooLarge {
        /// Size of the encoded body, in bytes.
        len: usize,
        /// The channel's maximum.
        max: usize,
    },
    /// Another I/O error from the socket.
    Io(io::Error),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Closed => f.write_str("peer closed the channel"),
            ChannelError::Decode(e) => write!(f, "bad frame from peer: {e}"),
            ChannelError::TooLarge { len, max } => {
                write!(
                    f,
                    "message body of {len} bytes exceeds the frame maximum of {max}"
                )
            }
            ChannelError::Io(e) => write!(f, "channel I/O error: {e}"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Decode(e) => Some(e),
            ChannelError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ChannelError {
    fn from(e: io::Error) -> Self {
        ChannelError::Io(e)
    }
}

impl From<DecodeError> for ChannelError {
    fn from(e: DecodeError) -> Self {
        ChannelError::Decode(e)
    }
}

/// One end of the channel: a non-blocking `SOCK_STREAM` UNIX socket
/// (close-on-exec) with buffered input and output.
///
/// The master keeps one per worker in its `mio::Poll` (the channel is a
/// [`mio::event::Source`]); the worker, which has nothing else to wait on,
/// can use the blocking helpers [`send_blocking`](Channel::send_blocking) and
/// [`recv_timeout`](Channel::recv_timeout).
///
/// Writes use `send(2)` with `MSG_NOSIGNAL`: a dead peer yields
/// [`ChannelError::Closed`], never `SIGPIPE`, whatever the process's signal
/// dispositions.
///
/// # With mio
///
/// mio is edge-triggered. Register the channel for `READABLE` (plus
/// `WRITABLE` while [`has_pending_output`](Channel::has_pending_output)),
/// then on each event call [`recv`](Channel::recv) until it returns
/// `Ok(None)` or an error, and [`flush`](Channel::flush) if output is
/// pending. `recv` returns `Ok(None)` only after the socket said `EAGAIN`,
/// so no edge is missed.
///
/// # Examples
///
/// ```
/// use prefork_heartbeat::{Channel, ChannelError, Message, Progress};
///
/// let (mut master, mut worker) = Channel::pair()?;
/// worker.send(&Message::Heartbeat(Progress::Idle))?;
/// assert_eq!(master.recv()?, Some(Message::Heartbeat(Progress::Idle)));
/// assert_eq!(master.recv()?, None); // nothing more, for now
///
/// drop(worker);
/// assert!(matches!(master.recv(), Err(ChannelError::Closed)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    out: Vec<u8>,
    written: usize,
    decoder: Decoder,
    /// The largest body [`send`](Channel::send) writes.
    max_send: usize,
    eof: bool,
}

impl Channel {
    /// Creates a connected pair with `socketpair(AF_UNIX, SOCK_STREAM)`, both
    /// ends non-blocking and close-on-exec.
    ///
    /// # Errors
    ///
    /// The error of `socketpair(2)` (e.g. `EMFILE`).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel::wrap(a), Channel::wrap(b)))
    }

    /// Wraps one end of a stream socket, e.g. the fd a worker inherited. Sets
    /// it non-blocking and close-on-exec.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `fd` is not a `SOCK_STREAM` socket; the error of
    /// `getsockopt(2)` or `fcntl(2)` otherwise.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Channel> {
        if getsockopt(&fd, sockopt::SockType)? != SockType::Stream {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "channel fd is not a SOCK_STREAM socket",
            ));
        }
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let fd_flags = FdFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFD)?);
        fcntl(&fd, FcntlArg::F_SETFD(fd_flags | FdFlag::FD_CLOEXEC))?;
        Ok(Channel::wrap(fd))
    }

    fn wrap(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            out: Vec::new(),
            written: 0,
            decoder: Decoder::new(),
            max_send: crate::DEFAULT_MAX_FRAME,
            eof: false,
        }
    }

    /// Gives the socket back. Output still queued and input not yet decoded
    /// are dropped.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// The largest message body this end accepts, in bytes
    /// ([`DEFAULT_MAX_FRAME`](crate::DEFAULT_MAX_FRAME) unless changed).
    pub fn max_frame(&self) -> usize {
        self.decoder.max_frame()
    }

    /// The largest message body this end sends, in bytes (as
    /// [`max_frame`](Channel::max_frame) unless changed with
    /// [`set_max_send_frame`](Channel::set_max_send_frame)).
    pub fn max_send_frame(&self) -> usize {
        self.max_send
    }

    /// Changes the largest message body this end sends and accepts. The
    /// peer's limits should match.
    pub fn set_max_frame(&mut self, max: usize) {
        self.decoder.set_max_frame(max);
        self.max_send = max;
    }

    /// Changes only the largest body this end sends, for a channel whose
    /// two directions carry different messages (a supervisor sends jobs of
    /// many megabytes and reads small reports back).
    pub fn set_max_send_frame(&mut self, max: usize) {
        self.max_send = max;
    }

    /// Queues the frame and tries to write it now; never blocks. What the
    /// socket does not take now stays queued for [`flush`](Channel::flush).
    ///
    /// # Errors
    ///
    /// [`ChannelError::TooLarge`] (nothing queued) if the body exceeds
    /// [`max_send_frame`](Channel::max_send_frame); otherwise as [`flush`](Channel::flush)
    /// (the frame stays queued).
    pub fn send(&mut self, msg: &Message) -> Result<(), ChannelError> {
        self.queue(msg)?;
        self.flush().map(drop)
    }

    /// Queues the frame without writing it: a later [`send`](Channel::send)
    /// or [`flush`](Channel::flush) writes everything queued with one
    /// system call where the socket takes it, which is how a sender of
    /// several frames in a row (a master's turn, a feeder's batch) pays one
    /// write for all of them.
    ///
    /// # Errors
    ///
    /// [`ChannelError::TooLarge`] (nothing queued) if the body exceeds
    /// [`max_send_frame`](Channel::max_send_frame).
    ///
    /// # Examples
    ///
    /// ```
    /// use prefork_heartbeat::{Channel, Message};
    ///
    /// let (mut a, mut b) = Channel::pair()?;
    /// a.queue(&Message::Want { n: 1 })?;
    /// a.queue(&Message::Want { n: 2 })?;
    /// assert!(a.has_pending_output());
    /// assert!(b.recv()?.is_none(), "nothing written yet");
    /// assert!(a.flush()?);
    /// assert_eq!(b.recv()?, Some(Message::Want { n: 1 }));
    /// assert_eq!(b.recv()?, Some(Message::Want { n: 2 }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue(&mut self, msg: &Message) -> Result<(), ChannelError> {
        let start = self.out.len();
        encode(msg, &mut self.out);
        let len = self.out.len() - start - HEADER_LEN;
        if len > self.max_send {
            self.out.truncate(start);
            return Err(ChannelError::TooLarge {
                len,
                max: self.max_send,
            });
        }
        Ok(())
    }

    /// Writes what is queued, as far as the socket takes it; never blocks.
    ///
    /// Returns `Ok(true)` when the queue is empty, `Ok(false)` when the
    /// socket is full (wait for it to be writable and call again).
    ///
    /// # Errors
    ///
    /// [`ChannelError::Closed`] if the peer is gone (`EPIPE`, `ECONNRESET`);
    /// [`ChannelError::Io`] for other errors of `send(2)`.
    pub fn flush(&mut self) -> Result<bool, ChannelError> {
        while self.written < self.out.len() {
            let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
            match send(self.fd.as_raw_fd(), &self.out[self.written..], flags) {
                Ok(0) => return Err(ChannelError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(ChannelError::Io(e.into())),
            }
        }
        self.written = 0;
        if self.out.capacity() > KEEP_OUTPUT {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Ok(true)
    }

    /// Whether queued output is waiting for the socket.
    pub fn has_pending_output(&self) -> bool {
        self.written < self.out.len()
    }

    /// Reads what the socket has (non-blocking) and returns the next complete
    /// message; `Ok(None)` when there is none yet and the socket said
    /// `EAGAIN`.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Closed`] once the peer is gone (end of file,
    /// `ECONNRESET`), after every complete message received before that was
    /// returned; an incomplete last frame is dropped.
    /// [`ChannelError::Decode`] if the peer sent an invalid stream.
    /// [`ChannelError::Io`] for other errors of `recv(2)`.
    /// `Closed` and `Decode` are final: later calls return them again.
    pub fn recv(&mut self) -> Result<Option<Message>, ChannelError> {
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(Some(msg));
            }
            if self.eof {
                return Err(ChannelError::Closed);
            }
            let want = self.decoder.read_hint();
            let spare = self.decoder.spare(want);
            match recv(self.fd.as_raw_fd(), spare, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::ECONNRESET) => self.eof = true,
                Ok(n) => self.decoder.commit(n),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(ChannelError::Io(e.into())),
            }
        }
    }

    /// Waits up to `timeout` for the next complete message.
    ///
    /// Returns `Ok(None)` when the time is up, and also early when a signal
    /// interrupts the wait (`EINTR`), so that a worker can check its
    /// shutdown flag: callers loop. Queued output is not flushed meanwhile.
    ///
    /// # Errors
    ///
    /// As [`recv`](Channel::recv); [`ChannelError::Io`] if `poll(2)` fails.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Message>, ChannelError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            // What is already buffered needs no system call.
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(Some(msg));
            }
            if self.eof {
                return Err(ChannelError::Closed);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match wait(self.fd.as_fd(), PollFlags::POLLIN, left)? {
                Wait::Ready => {
                    if let Some(msg) = self.recv()? {
                        return Ok(Some(msg));
                    }
                }
                Wait::Interrupted => return Ok(None),
                Wait::TimedOut => return self.recv(),
            }
        }
    }

    /// Queues the frame and waits until all queued output is written.
    ///
    /// # Errors
    ///
    /// As [`send`](Channel::send); [`ChannelError::Io`] if `poll(2)` fails.
    pub fn send_blocking(&mut self, msg: &Message) -> Result<(), ChannelError> {
        self.send(msg)?;
        while !self.flush_timeout(Duration::MAX)? {}
        Ok(())
    }

    /// Writes queued output, waiting up to `timeout` for the socket to take
    /// it. Returns `Ok(true)` when the queue is empty, `Ok(false)` when time
    /// ran out or a signal interrupted the wait.
    ///
    /// # Errors
    ///
    /// As [`flush`](Channel::flush); [`ChannelError::Io`] if `poll(2)` fails.
    pub fn flush_timeout(&mut self, timeout: Duration) -> Result<bool, ChannelError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.flush()? {
                return Ok(true);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match wait(self.fd.as_fd(), PollFlags::POLLOUT, left)? {
                Wait::Ready => {}
                Wait::Interrupted => return Ok(false),
                Wait::TimedOut => return self.flush(),
            }
        }
    }
}

/// What [`wait`] saw.
enum Wait {
    Ready,
    TimedOut,
    Interrupted,
}

/// `poll(2)` on one fd; `None` waits without limit. Timeouts are rounded up
/// to whole milliseconds, so a wait never ends early.
fn wait(fd: BorrowedFd<'_>, events: PollFlags, timeout: Option<Duration>) -> io::Result<Wait> {
    let ms = match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    };
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::NONE);
    let mut fds = [PollFd::new(fd, events)];
    match poll(&mut fds, timeout) {
        Ok(0) => Ok(Wait::TimedOut),
        // POLLHUP and POLLERR count as ready: the next read or write reports them.
        Ok(_) => Ok(Wait::Ready),
        Err(Errno::EINTR) => Ok(Wait::Interrupted),
        Err(e) => Err(e.into()),
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl mio::event::Source for Channel {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}
