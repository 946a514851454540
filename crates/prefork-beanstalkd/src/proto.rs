//! The beanstalk wire protocol: command encoding and an incremental,
//! bounded response parser.
//!
//! The protocol is line based: a command is one `\r\n`-terminated line,
//! followed for `put` by `<bytes>` of body and `\r\n`; a response is one
//! line, followed for `RESERVED`, `FOUND` and `OK` by a body of the length
//! the line announces and `\r\n`. See beanstalkd's protocol document,
//! <https://github.com/beanstalkd/beanstalkd/blob/master/doc/protocol.txt>.
//!
//! [`parse_response`] is a pure function over a byte buffer: it never
//! panics, never allocates more than the body limit it is given, and says
//! "need more bytes" (`Ok(None)`) for a prefix of a valid response. It is
//! what the client calls after each read and what the fuzz target and the
//! property tests drive.

use std::fmt;

/// The longest response line accepted (without its body). beanstalkd's
/// longest lines are `USING <tube>` with a 200-byte tube name.
pub const MAX_LINE: usize = 512;

/// One response from beanstalkd, decoded.
///
/// Only the responses of the commands this crate sends are modelled; any
/// other line is a [`ProtoError::Unexpected`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// `INSERTED <id>`: a `put` stored the job.
    Inserted(u64),
    /// `BURIED <id>` (a `put` stored the job but buried it, the server being
    /// out of memory) or `BURIED` (a `bury` or `release` buried the job).
    Buried(Option<u64>),
    /// `USING <tube>`.
    Using(String),
    /// `WATCHING <count>`.
    Watching(u64),
    /// `RESERVED <id> <bytes>` and the job's body.
    Reserved {
        /// The job id.
        id: u64,
        /// The job body.
        body: Vec<u8>,
    },
    /// `FOUND <id> <bytes>` and the job's body (a peek).
    Found {
        /// The job id.
        id: u64,
        /// The job body.
        body: Vec<u8>,
    },
    /// `OK <bytes>` and a YAML body (`stats`, `stats-job`, ...).
    Ok(Vec<u8>),
    /// `DEADLINE_SOON`: a job this connection holds is within a second of
    /// its TTR, and no job was ready.
    DeadlineSoon,
    /// `TIMED_OUT`: no job became ready within a `reserve-with-timeout`.
    TimedOut,
    /// `DELETED`.
    Deleted,
    /// `RELEASED`.
    Released,
    /// `TOUCHED`.
    Touched,
    /// `KICKED <count>` (`kick`) or `KICKED` (`kick-job`).
    Kicked(Option<u64>),
    /// `NOT_FOUND`: no such job, or not reserved by this connection.
    NotFound,
    /// `NOT_IGNORED`: the last watched tube cannot be ignored.
    NotIgnored,
    /// One of the server's error lines.
    Error(ServerError),
}

impl fmt::Debug for Response {
    /// Bodies are shown by length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Reserved { id, body } => write!(f, "Reserved({id}, {} bytes)", body.len()),
            Response::Found { id, body } => write!(f, "Found({id}, {} bytes)", body.len()),
            Response::Ok(body) => write!(f, "Ok({} bytes)", body.len()),
            Response::Inserted(id) => write!(f, "Inserted({id})"),
            Response::Buried(id) => write!(f, "Buried({id:?})"),
            Response::Using(t) => write!(f, "Using({t:?})"),
            Response::Watching(n) => write!(f, "Watching({n})"),
            Response::Kicked(n) => write!(f, "Kicked({n:?})"),
            Response::DeadlineSoon => f.write_str("DeadlineSoon"),
            Response::TimedOut => f.write_str("TimedOut"),
            Response::Deleted => f.write_str("Deleted"),
            Response::Released => f.write_str("Released"),
            Response::Touched => f.write_str("Touched"),
            Response::NotFound => f.write_str("NotFound"),
            Response::NotIgnored => f.write_str("NotIgnored"),
            Response::Error(e) => write!(f, "Error({e})"),
        }
    }
}

/// An error line from beanstalkd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerError {
    /// `OUT_OF_MEMORY`.
    OutOfMemory,
    /// `INTERNAL_ERROR`: a bug in the server.
    InternalError,
    /// `BAD_FORMAT`: the command line was malformed.
    BadFormat,
    /// `UNKNOWN_COMMAND`.
    UnknownCommand,
    /// `EXPECTED_CRLF`: a `put` body was not followed by `\r\n`.
    ExpectedCrlf,
    /// `JOB_TOO_BIG`: a `put` body exceeded the server's `max-job-size`.
    JobTooBig,
    /// `DRAINING`: the server is in drain mode and takes no new jobs.
    Draining,
}

impl ServerError {
    /// The error line as the server sends it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServerError::OutOfMemory => "OUT_OF_MEMORY",
            ServerError::InternalError => "INTERNAL_ERROR",
            ServerError::BadFormat => "BAD_FORMAT",
            ServerError::UnknownCommand => "UNKNOWN_COMMAND",
            ServerError::ExpectedCrlf => "EXPECTED_CRLF",
            ServerError::JobTooBig => "JOB_TOO_BIG",
            ServerError::Draining => "DRAINING",
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes from the server are not a valid response. After one of these
/// the connection is out of step and must be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// No `\r\n` within [`MAX_LINE`] bytes.
    LineTooLong,
    /// A line that is not a response this client knows (shown escaped,
    /// cut to 64 bytes).
    Unexpected(String),
    /// A body length above the limit the caller allowed.
    BodyTooLarge {
        /// The length the server announced.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The body was not followed by `\r\n`.
    MissingBodyCrlf,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::LineTooLong => write!(f, "response line longer than {MAX_LINE} bytes"),
            ProtoError::Unexpected(l) => write!(f, "unexpected response line \"{l}\""),
            ProtoError::BodyTooLarge { len, max } => {
                write!(
                    f,
                    "response announces a {len}-byte body, over the {max}-byte limit"
                )
            }
            ProtoError::MissingBodyCrlf => f.write_str("response body not followed by CRLF"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Decodes the first response in `buf`, allowing bodies of at most
/// `max_body` bytes.
///
/// Returns `Ok(Some((response, consumed)))` when `buf` starts with a whole
/// response of `consumed` bytes, `Ok(None)` when `buf` is a proper prefix of
/// one (read more and call again with the longer buffer), and an error when
/// it can never become one. It never panics, and it never allocates a body
/// before all of it is in `buf`.
///
/// # Examples
///
/// ```
/// use prefork_beanstalkd::proto::{parse_response, Response};
///
/// let wire = b"RESERVED 7 5\r\nhello\r\nDELETED\r\n";
/// assert_eq!(parse_response(&wire[..10], 1024), Ok(None));
/// let (r, used) = parse_response(wire, 1024)?.unwrap();
/// assert_eq!(r, Response::Reserved { id: 7, body: b"hello".to_vec() });
/// assert_eq!(parse_response(&wire[used..], 1024)?, Some((Response::Deleted, 9)));
/// # Ok::<(), prefork_beanstalkd::proto::ProtoError>(())
/// ```
///
/// # Errors
///
/// A [`ProtoError`] for a line that is too long or unknown, a body over
/// `max_body`, or a body without its `\r\n`.
pub fn parse_response(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<(Response, usize)>, ProtoError> {
    let search = &buf[..buf.len().min(MAX_LINE + 2)];
    let Some(end) = search.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_LINE + 2 {
            Err(ProtoError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..end];
    let after = end + 2;
    let unexpected = || ProtoError::Unexpected(escape(line));
    let text = std::str::from_utf8(line).map_err(|_| unexpected())?;
    let mut words = text.split(' ');
    let word = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let num = |s: &str| -> Result<u64, ProtoError> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unexpected());
        }
        s.parse().map_err(|_| unexpected())
    };
    let simple = |r: Response| -> Result<Option<(Response, usize)>, ProtoError> {
        if args.is_empty() {
            Ok(Some((r, after)))
        } else {
            Err(unexpected())
        }
    };
    match (word, args.len()) {
        ("INSERTED", 1) => Ok(Some((Response::Inserted(num(args[0])?), after))),
        ("BURIED", 1) => Ok(Some((Response::Buried(Some(num(args[0])?)), after))),
        ("BURIED", 0) => Ok(Some((Response::Buried(None), after))),
        ("USING", 1) if !args[0].is_empty() => {
            Ok(Some((Response::Using(args[0].to_owned()), after)))
        }
        ("WATCHING", 1) => Ok(Some((Response::Watching(num(args[0])?), after))),
        ("KICKED", 1) => Ok(Some((Response::Kicked(Some(num(args[0])?)), after))),
        ("KICKED", 0) => Ok(Some((Response::Kicked(None), after))),
        ("RESERVED" | "FOUND", 2) | ("OK", 1) => {
            let (id, len) = if word == "OK" {
                (0, num(args[0])?)
            } else {
                (num(args[0])?, num(args[1])?)
            };
            if len > max_body as u64 {
                return Err(ProtoError::BodyTooLarge { len, max: max_body });
            }
            let len = len as usize; // <= max_body: fits
            let total = after + len + 2;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[after + len..total] != b"\r\n" {
                return Err(ProtoError::MissingBodyCrlf);
            }
            let body = buf[after..after + len].to_vec();
            let r = match word {
                "RESERVED" => Response::Reserved { id, body },
                "FOUND" => Response::Found { id, body },
                _ => Response::Ok(body),
            };
            Ok(Some((r, total)))
        }
        ("DEADLINE_SOON", _) => simple(Response::DeadlineSoon),
        ("TIMED_OUT", _) => simple(Response::TimedOut),
        ("DELETED", _) => simple(Response::Deleted),
        ("RELEASED", _) => simple(Response::Released),
        ("TOUCHED", _) => simple(Response::Touched),
        ("NOT_FOUND", _) => simple(Response::NotFound),
        ("NOT_IGNORED", _) => simple(Response::NotIgnored),
        ("OUT_OF_MEMORY", _) => simple(Response::Error(ServerError::OutOfMemory)),
        ("INTERNAL_ERROR", _) => simple(Response::Error(ServerError::InternalError)),
        ("BAD_FORMAT", _) => simple(Response::Error(ServerError::BadFormat)),
        ("UNKNOWN_COMMAND", _) => simple(Response::Error(ServerError::UnknownCommand)),
        ("EXPECTED_CRLF", _) => simple(Response::Error(ServerError::ExpectedCrlf)),
        ("JOB_TOO_BIG", _) => simple(Response::Error(ServerError::JobTooBig)),
        ("DRAINING", _) => simple(Response::Error(ServerError::Draining)),
        _ => Err(unexpected()),
    }
}

/// A line shown in an error: printable ASCII kept, the rest escaped, cut to
/// 64 bytes.
fn escape(line: &[u8]) -> String {
    line.iter()
        .take(64)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Reads `key: value` from a YAML body of `stats`/`stats-job` (flat, one
/// scalar per line, as beanstalkd writes it).
pub(crate) fn yaml_field<'a>(yaml: &'a [u8], key: &str) -> Option<&'a str> {
    std::str::from_utf8(yaml).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Whether `name` is a tube name beanstalkd accepts: 1 to 200 bytes of
/// letters, digits and `-+/;.$_()`, not starting with `-`.
pub(crate) fn valid_tube(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-+/;.$_()".contains(&b))
}

/// Command encoders: each appends one command to `out`.
pub(crate) mod cmd {
    use std::io::Write;

    pub(crate) fn put(out: &mut Vec<u8>, pri: u32, delay: u64, ttr: u64, body: &[u8]) {
        let _ = write!(out, "put {pri} {delay} {ttr} {}\r\n", body.len());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }

    pub(crate) fn line(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
        let _ = out.write_fmt(args);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The wire form of a response, as beanstalkd writes it.
    pub(crate) fn encode(r: &Response) -> Vec<u8> {
        let mut out = Vec::new();
        let body = |out: &mut Vec<u8>, head: String, b: &[u8]| {
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        };
        match r {
            Response::Reserved { id, body: b } => {
                body(&mut out, format!("RESERVED {id} {}\r\n", b.len()), b)
            }
            Response::Found { id, body: b } => {
                body(&mut out, format!("FOUND {id} {}\r\n", b.len()), b)
            }
            Response::Ok(b) => body(&mut out, format!("OK {}\r\n", b.len()), b),
            other => {
                let line = match other {
                    Response::Inserted(id) => format!("INSERTED {id}"),
                    Response::Buried(Some(id)) => format!("BURIED {id}"),
                    Response::Buried(None) => "BURIED".into(),
                    Response::Using(t) => format!("USING {t}"),
                    Response::Watching(n) => format!("WATCHING {n}"),
                    Response::Kicked(Some(n)) => format!("KICKED {n}"),
                    Response::Kicked(None) => "KICKED".into(),
                    Response::DeadlineSoon => "DEADLINE_SOON".into(),
                    Response::TimedOut => "TIMED_OUT".into(),
                    Response::Deleted => "DELETED".into(),
                    Response::Released => "RELEASED".into(),
                    Response::Touched => "TOUCHED".into(),
                    Response::NotFound => "NOT_FOUND".into(),
                    Response::NotIgnored => "NOT_IGNORED".into(),
                    Response::Error(e) => e.as_str().into(),
                    _ => unreachable!(),
                };
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    fn any_response() -> impl Strategy<Value = Response> {
        let body = proptest::collection::vec(any::<u8>(), 0..300);
        let errors = prop_oneof![
            Just(ServerError::OutOfMemory),
            Just(ServerError::InternalError),
            Just(ServerError::BadFormat),
            Just(ServerError::UnknownCommand),
            Just(ServerError::ExpectedCrlf),
            Just(ServerError::JobTooBig),
            Just(ServerError::Draining),
        ];
        prop_oneof![
            any::<u64>().prop_map(Response::Inserted),
            any::<Option<u64>>().prop_map(Response::Buried),
            "[a-z0-9.()$_+;/-]{1,200}".prop_map(Response::Using),
            any::<u64>().prop_map(Response::Watching),
            any::<Option<u64>>().prop_map(Response::Kicked),
            (any::<u64>(), body.clone()).prop_map(|(id, body)| Response::Reserved { id, body }),
            (any::<u64>(), body.clone()).prop_map(|(id, body)| Response::Found { id, body }),
            body.prop_map(Response::Ok),
            Just(Response::DeadlineSoon),
            Just(Response::TimedOut),
            Just(Response::Deleted),
            Just(Response::Released),
            Just(Response::Touched),
            Just(Response::NotFound),
            Just(Response::NotIgnored),
            errors.prop_map(Response::Error),
        ]
    }

    proptest! {
        /// Every response round-trips, and every proper prefix asks for more.
        #[test]
        fn responses_round_trip(r in any_response(), tail in proptest::collection::vec(any::<u8>(), 0..20)) {
            let wire = encode(&r);
            for cut in 0..wire.len() {
                prop_assert_eq!(parse_response(&wire[..cut], 1024), Ok(None), "cut at {}", cut);
            }
            let mut with_tail = wire.clone();
            with_tail.extend_from_slice(&tail);
            prop_assert_eq!(parse_response(&with_tail, 1024), Ok(Some((r, wire.len()))));
        }

        /// Several responses in one buffer come out in order.
        #[test]
        fn pipelined_responses_split(rs in proptest::collection::vec(any_response(), 1..8)) {
            let wire: Vec<u8> = rs.iter().flat_map(encode).collect();
            let mut at = 0;
            for r in &rs {
                let (got, used) = parse_response(&wire[at..], 1024).unwrap().unwrap();
                prop_assert_eq!(&got, r);
                at += used;
            }
            prop_assert_eq!(at, wire.len());
        }

        /// Arbitrary bytes never panic, and a success never claims more
        /// bytes than there are.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(Some((_, used))) = parse_response(&bytes, 256) {
                prop_assert!(used <= bytes.len());
            }
        }

        /// Bodies above the limit are refused from the line alone, before
        /// any of the body arrives.
        #[test]
        fn large_bodies_refused_early(len in 101u64..u64::MAX) {
            let line = format!("RESERVED 1 {len}\r\n");
            prop_assert_eq!(
                parse_response(line.as_bytes(), 100),
                Err(ProtoError::BodyTooLarge { len, max: 100 })
            );
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            &b"RESERVED 1\r\n"[..],
            b"RESERVED x 1\r\nx\r\n",
            b"RESERVED 1 -1\r\n",
            b"INSERTED\r\n",
            b"INSERTED 99999999999999999999999\r\n",
            b"DELETED now\r\n",
            b"HELLO\r\n",
            b"\r\n",
            b"\xff\xfe\r\n",
            b"OK 2\r\nabXX",
        ] {
            assert!(
                parse_response(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'A'; MAX_LINE + 2];
        assert_eq!(parse_response(&long, 100), Err(ProtoError::LineTooLong));
        let e = parse_response(b"HELLO \x07\r\n", 10).unwrap_err();
        assert_eq!(e.to_string(), "unexpected response line \"HELLO \\x07\"");
    }

    #[test]
    fn yaml_fields_and_tube_names() {
        let y = b"---\nid: 5\ntube: \"default\"\nreserves: 3\nkicks: 0\n";
        assert_eq!(yaml_field(y, "reserves"), Some("3"));
        assert_eq!(yaml_field(y, "kicks"), Some("0"));
        assert_eq!(yaml_field(y, "missing"), None);
        assert!(valid_tube("jobs.dead"));
        assert!(valid_tube("a-b+c/d;e$f_g(h)"));
        assert!(!valid_tube("-jobs"));
        assert!(!valid_tube(""));
        assert!(!valid_tube("has space"));
        assert!(!valid_tube(&"x".repeat(201)));
    }
}
