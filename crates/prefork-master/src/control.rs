//! The control socket: a UNIX stream socket on which the master answers
//! operators (`status`, `scale`, `stop`, `reload`), set with
//! [`Builder::control_socket`](crate::Builder::control_socket). This file
//! holds the protocol (the [`Request`] and [`Reply`] types, one line of
//! JSON each way), a blocking client ([`request`]) and, private to the
//! crate, the master's side: one more non-blocking source in the master's
//! `mio` loop, never a thread.
//!
//! # The protocol
//!
//! A client connects, writes one request as one line of JSON (at most
//! [`MAX_REQUEST`] bytes, newline included; the end of its input also ends
//! the line), and reads one line of JSON back: a [`Reply`]. The master
//! then closes the connection. A request that is not valid JSON, names no
//! known request, is too long, or does not arrive within
//! [`REQUEST_TIMEOUT`] gets `{"ok":false,"error":"..."}` and the
//! connection is closed; the master carries on.
//!
//! ```text
//! {"request":"status"}                  -> {"ok":true,"status":{...}}
//! {"request":"scale","workers":8}       -> {"ok":true,"workers":8}
//! {"request":"stop","graceful":true}    -> {"ok":true}      (like QUIT)
//! {"request":"stop","graceful":false}   -> {"ok":true}      (like TERM or INT: quick)
//! {"request":"reload"}                  -> {"ok":true}      (like HUP)
//! ```
//!
//! # Permissions
//!
//! The socket file is created with mode 0600 (under a umask of 0177, so it
//! is never more open, not even for an instant), or 0660 and the control
//! group's when one is set ([`Builder::control_group`](crate::Builder::control_group)).
//! Then, for every connection, the peer's credentials (`SO_PEERCRED`) are
//! checked: its uid must be the socket's owner or root, or it must be in
//! the control group (its primary group, or a supplementary one as
//! `/proc/PID/status` lists them). Anyone else gets an error reply, and a
//! WARN line in the master's log names their pid and uid.
//!
//! # Examples
//!
//! ```no_run
//! use prefork_master::control::{Request, request};
//! let reply = request("/run/user/1000/prefork/prefork.sock".as_ref(), &Request::Status)?;
//! for w in &reply.status.expect("a status").workers {
//!     println!("worker {:?}: pid {:?} {}", w.slot, w.pid, w.state);
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde::{Deserialize, Serialize};

/// The longest request the master reads, newline included: 64 KiB.
pub const MAX_REQUEST: usize = 64 * 1024;

/// How long a client has, from its connection, to send its request and
/// read the reply: 5 s. A slower one gets an error and is disconnected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many clients are served at once; a client beyond them
/// gets an error reply at once.
pub const MAX_CONNECTIONS: usize = 32;

/// A request to the master.
///
/// # Examples
///
/// ```
/// use prefork_master::control::Request;
/// let line = serde_json::to_string(&Request::Scale { workers: 3 }).unwrap();
/// assert_eq!(line, r#"{"request":"scale","workers":3}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// The master's phase and its processes ([`Status`]).
    Status,
    /// Run this many workers (0 to [`MAX_WORKERS`](crate::MAX_WORKERS)),
    /// as TTIN and TTOU do one at a time; 0 pauses, like WINCH.
    Scale {
        /// The number of workers wanted.
        workers: usize,
    },
    /// Stop the pool: graceful like QUIT (every worker finishes its
    /// iteration or job), or quick like TERM and INT (SIGTERM to every
    /// worker; quick even with
    /// [`term_is_graceful`](crate::Builder::term_is_graceful)).
    Stop {
        /// Graceful (QUIT) rather than quick (TERM).
        #[serde(default)]
        graceful: bool,
    },
    /// Replace every worker, one at a time, like HUP.
    Reload,
}

/// The master's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to [`Request::Status`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The number of workers wanted after [`Request::Scale`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

impl Reply {
    pub(crate) fn done() -> Reply {
        Reply {
            ok: true,
            error: None,
            status: None,
            workers: None,
        }
    }

    pub(crate) fn error(why: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(why.into()),
            ..Reply::done()
        }
    }
}

/// What the master knows of itself and its processes, the answer to
/// [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The master's name ([`Builder::name`](crate::Builder::name)).
    pub name: String,
    /// The master's pid.
    pub pid: u32,
    /// Its [`Phase`](crate::Phase), as displayed (`running`,
    /// `stopping (graceful)`...).
    pub phase: String,
    /// Milliseconds since the master started.
    pub uptime_ms: u64,
    /// `pull` (every worker fetches for itself) or `dispatch` (a feeder
    /// fetches, the master hands the jobs out).
    pub mode: String,
    /// The number of workers wanted now.
    pub target: usize,
    /// Processes forked since the start, feeder included.
    pub spawned: u64,
    /// Processes that died without being asked to.
    pub failures: u64,
    /// Dispatch mode: jobs from the feeder waiting in the master for a
    /// worker (the lookahead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    /// Every worker process, by slot; during a reload or a recycling two
    /// processes share a slot for a moment.
    pub workers: Vec<ProcessStatus>,
    /// Dispatch mode: the feeder process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feeder: Option<ProcessStatus>,
}

/// One worker (or the feeder) in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessStatus {
    /// The worker's slot (`None` for the feeder).
    pub slot: Option<usize>,
    /// The number unique to this process for the life of the master.
    pub serial: u64,
    /// Its pid (`None` for the instant between its slot's decision and
    /// the fork).
    pub pid: Option<i32>,
    /// `starting` (not ready yet), `idle`, `busy`, `stopping` (asked to
    /// stop, or SIGTERMed) or `killed` (SIGKILLed, not reaped yet).
    pub state: String,
    /// Milliseconds since the fork.
    pub uptime_ms: u64,
    /// The job it runs, when the master knows one (see [`JobStatus`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobStatus>,
    /// Jobs finished, as of the worker's last stats report (it sends one
    /// with the heartbeat after it finished jobs).
    pub jobs_finished: u64,
    /// How many times this slot's process died without being asked to
    /// and was replaced.
    pub restarts: u32,
    /// Proportional set size in bytes: read by the master from
    /// `/proc/PID/smaps_rollup` for as many processes as 20 ms allow (a
    /// `status` never holds the loop longer), else the figure the worker
    /// last sent with its stats (after it finished jobs, or by the memory
    /// limit's checks); `None` when neither is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pss_bytes: Option<u64>,
}

/// The job a process runs, as far as the master knows it.
///
/// In dispatch mode the master handed the job out, so it knows its
/// delivery `id` and since when it runs. In both modes a worker's
/// heartbeat says what it is busy with ([`Context::set_activity`]; the job
/// layer sets `NAME ID` there once a job has run for a while, on its
/// first keep-alive): that is `activity`, and in pull mode the time
/// comes from it too. A quick job in pull mode finishes before any
/// heartbeat names it: the worker shows as `idle` or `busy` with no job.
///
/// [`Context::set_activity`]: crate::Context::set_activity
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// Dispatch mode: the delivery id the feeder sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What the worker's last heartbeat said it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// For how long it has run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
}

/// Sends `req` to the master listening on `path` and returns its reply,
/// waiting up to [`REQUEST_TIMEOUT`] for it.
///
/// # Errors
///
/// The connection's (`NotFound` or `ConnectionRefused` when no master
/// listens there, `PermissionDenied` when the socket's mode keeps the
/// caller out), a timeout, or `InvalidData` when the answer is not a
/// reply. A reply with `ok: false` is returned as `Ok`.
pub fn request(path: &Path, req: &Request) -> io::Result<Reply> {
    let mut stream = StdStream::connect(path)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    // A master that refuses the connection (too many clients) answers
    // and closes before reading: its reply is still there to read.
    let sent = stream.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        sent?;
        read?;
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the master closed the connection without a reply",
        ));
    }
    serde_json::from_str(&answer).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not a reply from a prefork master ({e}): {}",
                answer.trim_end()
            ),
        )
    })
}

/// What the master's loop does with a request once the socket has read it
/// and checked its sender: answer it (the loop builds the [`Reply`]).
pub(crate) type Incoming = (Token, Request);

/// The first token of the control socket; the loop's other tokens (the
/// self-pipe, the workers' serials) are far below.
const LISTENER: Token = Token(usize::MAX / 2);

/// One client of the control socket.
struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
    /// A request was read and waits for the loop's reply: nothing more is
    /// read meanwhile (one request per connection).
    pending: bool,
    /// A reply is queued: no request is read any more.
    answered: bool,
    /// The reply is written and the write side shut: what the client
    /// still sends is read and dropped until it closes (closing with
    /// unread input would reset the connection, and the client could
    /// miss the end of the reply).
    draining: bool,
}

/// The master's end of the control socket: the listener and its clients,
/// all non-blocking and registered in the master's poll.
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's device and inode, so that only our own file is
    /// removed at the end.
    file: (u64, u64),
    owner: u32,
    group: Option<u32>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Creates the socket at `path` (replacing the file a dead master
    /// left, refusing while a live one listens) and registers it.
    pub(crate) fn bind(path: &Path, group: Option<u32>, registry: &Registry) -> io::Result<Server> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match StdStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "another master listens on the control socket {}",
                            path.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing the control socket a dead master left");
                    std::fs::remove_file(path)?;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot check the control socket {}: {e}", path.display()),
                    ));
                }
            },
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket: not replaced",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // The file is created 0600 whatever the process's umask was: no
        // instant in which it is more open. The master is single-threaded,
        // so nothing else creates a file meanwhile.
        use nix::sys::stat::{Mode, umask};
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = std::os::unix::net::UnixListener::bind(path);
        umask(old);
        let std_listener = bound.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create the control socket {}: {e}", path.display()),
            )
        })?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
        std_listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        let mut listener = UnixListener::from_std(std_listener);
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(Server {
            listener,
            path: path.to_owned(),
            file: (meta.dev(), meta.ino()),
            owner: meta.uid(),
            group,
            conns: HashMap::new(),
            next_token: LISTENER.0 + 1,
        })
    }

    /// Whether `token` is one of the control socket's.
    pub(crate) fn owns(token: Token) -> bool {
        token.0 >= LISTENER.0
    }

    /// The earliest client deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.deadline).min()
    }

    /// Handles a readiness event on `token`: accepts new clients, reads
    /// requests, writes replies. Requests read whole and from an allowed
    /// peer are appended to `incoming`, for the loop to answer with
    /// [`reply`](Server::reply).
    pub(crate) fn ready(
        &mut self,
        token: Token,
        now: Instant,
        registry: &Registry,
        incoming: &mut Vec<Incoming>,
    ) {
        if token == LISTENER {
            self.accept(now, registry);
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.draining {
            self.discard(token, registry);
            return;
        }
        if !conn.answered && !conn.pending {
            match read_request(conn) {
                Input::More => {}
                Input::Gone => {
                    self.close(token, registry);
                    return;
                }
                Input::Bad(why) => {
                    tracing::debug!(error = %why, "a bad control request");
                    self.reply(token, &Reply::error(why), registry);
                    return;
                }
                Input::Line(line) => match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => {
                        conn.pending = true;
                        incoming.push((token, req));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "a malformed control request");
                        self.reply(
                            token,
                            &Reply::error(format!("malformed request: {e}")),
                            registry,
                        );
                        return;
                    }
                },
            }
        }
        self.flush(token, registry);
    }

    /// Queues `reply` for the client `token`, writes what the socket
    /// takes, and closes the connection once it is all written.
    pub(crate) fn reply(&mut self, token: Token, reply: &Reply, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut line = serde_json::to_vec(reply).unwrap_or_else(|e| {
            format!(r#"{{"ok":false,"error":"cannot encode the reply: {e}"}}"#).into_bytes()
        });
        line.push(b'\n');
        conn.output = line;
        conn.written = 0;
        conn.pending = false;
        conn.answered = true;
        self.flush(token, registry);
    }

    /// Drops the clients whose deadline passed, telling them why.
    pub(crate) fn expire(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            let answered = self.conns.get(&token).is_some_and(|c| c.answered);
            if answered {
                // Its reply is written, or the client does not read it.
                self.close(token, registry);
            } else {
                tracing::debug!("a control client sent no request in time");
                let why = format!("no request within {REQUEST_TIMEOUT:?}");
                self.reply(token, &Reply::error(why), registry);
                // Whatever did not fit goes with the connection.
                self.close(token, registry);
            }
        }
    }

    /// Removes the socket file, if it still is the one this server made.
    pub(crate) fn remove_file(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot remove the control socket");
        }
    }

    fn accept(&mut self, now: Instant, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the client waits in the backlog
                    // and is tried again on the next event.
                    tracing::warn!(error = %e, "cannot accept a control connection");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "too many control connections: one refused"
                );
                let line = serde_json::to_vec(&Reply::error("too many control connections"))
                    .unwrap_or_default();
                let _ = stream.write(&[line.as_slice(), b"\n"].concat());
                continue;
            }
            let refusal = match nix::sys::socket::getsockopt(
                &stream,
                nix::sys::socket::sockopt::PeerCredentials,
            ) {
                Ok(cred) => self.refusal(cred.pid(), cred.uid(), cred.gid()),
                Err(e) => Some(format!("cannot read the peer's credentials: {e}")),
            };
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                tracing::warn!(error = %e, "cannot watch a control connection");
                continue;
            }
            self.conns.insert(
                token,
                Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    deadline: now + REQUEST_TIMEOUT,
                    pending: false,
                    answered: false,
                    draining: false,
                },
            );
            if let Some(why) = refusal {
                self.reply(token, &Reply::error(why), registry);
            }
        }
    }

    /// Why the peer `pid` (`uid`, primary group `gid`) may not act, if it
    /// may not (logged at WARN).
    fn refusal(&self, pid: i32, uid: u32, gid: u32) -> Option<String> {
        let allowed = uid == 0
            || uid == self.owner
            || self
                .group
                .is_some_and(|g| gid == g || peer_groups(pid).contains(&g));
        if allowed {
            return None;
        }
        tracing::warn!(
            pid,
            uid,
            gid,
            path = %self.path.display(),
            "control socket: refused a client that is neither the owner, root nor in the control group"
        );
        Some(format!(
            "permission denied: uid {uid} is neither the socket's owner (uid {}), root, nor in its control group",
            self.owner
        ))
    }

    /// Reads and drops what a client sends after its reply, closing the
    /// connection at its end (or after 1 MiB: a client that keeps
    /// sending is not owed a clean close).
    fn discard(&mut self, token: Token, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut dropped = 0;
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    dropped += n;
                    if dropped > 1 << 20 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(token, registry);
    }

    /// Writes what is queued for `token`; once the reply is out, shuts the
    /// write side (the client reads the end of the reply) and drains.
    fn flush(&mut self, token: Token, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        while conn.written < conn.output.len() {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => break,
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(token, registry);
                    return;
                }
            }
        }
        if conn.answered && !conn.draining {
            conn.draining = true;
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            self.discard(token, registry);
        }
    }

    fn close(&mut self, token: Token, registry: &Registry) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// What reading a client's socket gave.
enum Input {
    /// No whole line yet.
    More,
    /// The client left without a request.
    Gone,
    /// A request line (without its newline).
    Line(Vec<u8>),
    /// Too long.
    Bad(String),
}

/// Reads what `conn` has (the poll is edge-triggered: until it would
/// block), up to a whole line or [`MAX_REQUEST`] bytes.
fn read_request(conn: &mut Conn) -> Input {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = conn.input.iter().position(|&b| b == b'\n') {
            conn.input.truncate(end);
            return Input::Line(std::mem::take(&mut conn.input));
        }
        if conn.input.len() >= MAX_REQUEST {
            return Input::Bad(format!(
                "request too large: more than {MAX_REQUEST} bytes without a newline"
            ));
        }
        match conn.stream.read(&mut buf) {
            Ok(0) if conn.input.is_empty() => return Input::Gone,
            Ok(0) => return Input::Line(std::mem::take(&mut conn.input)),
            Ok(n) => conn.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Input::Gone,
        }
    }
}

/// The supplementary groups of process `pid`, from `/proc/PID/status`
/// (empty when it cannot be read: the process left).
fn peer_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|text| parse_groups(&text))
        .unwrap_or_default()
}

/// The `Groups:` line of a `/proc/PID/status` text.
fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_tagged_json_object() {
        let parse = |s: &str| serde_json::from_str::<Request>(s).map_err(|e| e.to_string());
        assert_eq!(parse(r#"{"request":"status"}"#), Ok(Request::Status));
        assert_eq!(parse(r#"{"request":"reload"}"#), Ok(Request::Reload));
        assert_eq!(
            parse(r#"{"request":"scale","workers":0}"#),
            Ok(Request::Scale { workers: 0 })
        );
        assert_eq!(
            parse(r#"{"request":"stop"}"#),
            Ok(Request::Stop { graceful: false })
        );
        assert_eq!(
            parse(r#"{"request":"stop","graceful":true}"#),
            Ok(Request::Stop { graceful: true })
        );
        assert!(parse(r#"{"request":"scale"}"#).is_err());
        assert!(parse(r#"{"request":"scale","workers":-1}"#).is_err());
        assert!(parse(r#"{"request":"explode"}"#).is_err());
        assert!(parse(r#"{"request":"scale","workers":1,"extra":1}"#).is_err());
        assert!(parse("status").is_err());
    }

    #[test]
    fn replies_leave_out_what_they_do_not_carry() {
        let line = serde_json::to_string(&Reply::done()).unwrap();
        assert_eq!(line, r#"{"ok":true}"#);
        let line = serde_json::to_string(&Reply::error("no")).unwrap();
        assert_eq!(line, r#"{"ok":false,"error":"no"}"#);
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Reply::error("no"));
    }

    #[test]
    fn reads_the_supplementary_groups() {
        let text = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 1000 \nNSpgid:\t1\n";
        assert_eq!(parse_groups(text), vec![4, 24, 1000]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name:\tx\n"), Vec::<u32>::new());
        let own = peer_groups(std::process::id() as i32);
        let expected = nix::unistd::getgroups().unwrap();
        assert_eq!(own.len(), expected.len(), "{own:?}");
    }
}
