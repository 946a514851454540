//! Unit tests against a scripted fake server on loopback: the gaps of
//! beanstalkc (a `put` answered BURIED, an unresolvable host) and broken
//! or hostile replies, none of which a real beanstalkd produces on demand.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::{self, JoinHandle};

use super::reading::{MAX_BLOCK_SECS, wait_plan};
use super::*;

/// One scripted exchange: the command line the client must send (a prefix
/// is enough) and the bytes to answer.
type Step = (&'static str, Vec<u8>);

/// A fake beanstalkd on 127.0.0.1 serving one connection: it answers the
/// handshake, then plays `script`; returns every command line it received.
fn fake_server(script: Vec<Step>) -> (Config, JoinHandle<Vec<String>>) {
    let (config, server) = fake_servers(vec![script]);
    let one = thread::spawn(move || server.join().unwrap().pop().unwrap());
    (config, one)
}

/// A fake beanstalkd serving one connection per script, one after the
/// other, as [`fake_server`] does (a script starting with `use ` plays its
/// own handshake); an empty reply closes the connection there and then. Returns the command lines of each connection.
fn fake_servers(scripts: Vec<Vec<Step>>) -> (Config, JoinHandle<Vec<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        scripts
            .into_iter()
            .map(|script| serve_one(&listener, script))
            .collect()
    });
    let config = Config::new("127.0.0.1", port)
        .io_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(5))
        .precise_waits(true);
    (config, server)
}

fn serve_one(listener: &TcpListener, script: Vec<Step>) -> Vec<String> {
    let (sock, _) = listener.accept().unwrap();
    let mut out = sock.try_clone().unwrap();
    let mut input = BufReader::new(sock);
    let mut seen = Vec::new();
    let mut handshake: Vec<Step> = vec![
        ("use ", b"USING t\r\n".to_vec()),
        ("watch ", b"WATCHING 2\r\n".to_vec()),
        ("ignore default", b"WATCHING 1\r\n".to_vec()),
        (
            "stats",
            ok_body(b"---\nmax-job-size: 1000\nversion: fake\nid: fake\n"),
        ),
    ];
    // A script may play its own handshake.
    if script.first().is_some_and(|(want, _)| *want == "use ") {
        handshake = script;
    } else {
        handshake.extend(script);
    }
    for (want, reply) in handshake {
        let mut line = String::new();
        if input.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let line = line.trim_end().to_owned();
        if let Some(len) = line.strip_prefix("put ").and_then(|a| a.rsplit(' ').next()) {
            let mut body = vec![0; len.parse::<usize>().unwrap() + 2];
            input.read_exact(&mut body).unwrap();
        }
        assert!(
            line.starts_with(want),
            "fake server: got {line:?}, want {want:?}"
        );
        seen.push(line);
        if reply.is_empty() {
            return seen; // close without answering
        }
        if out.write_all(&reply).is_err() {
            break;
        }
    }
    // Hold the connection until the client goes away.
    let mut rest = Vec::new();
    let _ = input.read_to_end(&mut rest);
    if !rest.is_empty() {
        seen.push(String::from_utf8_lossy(&rest).into_owned());
    }
    seen
}

fn ok_body(yaml: &[u8]) -> Vec<u8> {
    let mut v = format!("OK {}\r\n", yaml.len()).into_bytes();
    v.extend_from_slice(yaml);
    v.extend_from_slice(b"\r\n");
    v
}

fn reserved(id: u64, body: &[u8]) -> Vec<u8> {
    let mut v = format!("RESERVED {id} {}\r\n", body.len()).into_bytes();
    v.extend_from_slice(body);
    v.extend_from_slice(b"\r\n");
    v
}

#[test]
fn put_answered_buried_keeps_the_id_and_kicks_it() {
    let (config, server) = fake_server(vec![
        ("put 1024 0 60 3", b"BURIED 42\r\n".to_vec()),
        ("kick-job 42", b"KICKED\r\n".to_vec()),
    ]);
    let mut b = config.open("t").unwrap();
    b.publish(b"abc", Duration::ZERO).unwrap();
    drop(b);
    let seen = server.join().unwrap();
    assert_eq!(seen.last().unwrap(), "kick-job 42");
}

#[test]
fn put_buried_and_not_kickable_names_the_job() {
    let (config, server) = fake_server(vec![
        ("put ", b"BURIED 42\r\n".to_vec()),
        ("kick-job 42", b"NOT_FOUND\r\n".to_vec()),
    ]);
    let mut b = config.open("t").unwrap();
    let e = b.publish(b"abc", Duration::ZERO).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert!(e.message().contains("job 42"), "{e}");
    drop(b);
    server.join().unwrap();
}

#[test]
fn unresolvable_host_is_an_error_not_a_panic() {
    let e = Config::from_url("beanstalk://no-such-host.invalid:11300")
        .unwrap()
        .open("jobs")
        .unwrap_err();
    assert!(e.message().contains("no-such-host.invalid"), "{e}");
    assert!(!e.is_retryable() || e.kind() == ErrorKind::Transient);
}

#[test]
fn unreachable_server_is_transient() {
    // Bind then drop: a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Config::new("127.0.0.1", port).open("jobs").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
}

#[test]
fn bad_tube_names_are_refused_before_connecting() {
    // Port 1 on loopback: nothing listens, but validation comes first.
    for bad in ["", "-x", "a b", &"x".repeat(196)] {
        let e = Config::new("127.0.0.1", 1).open(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
    }
}

#[test]
fn ttr_rounds_up_to_whole_seconds() {
    let c = Config::new("h", 1);
    assert_eq!(c.clone().ttr(Duration::from_millis(1)).ttr_secs(), 1);
    assert_eq!(c.clone().ttr(Duration::ZERO).ttr_secs(), 1);
    assert_eq!(c.clone().ttr(Duration::from_millis(1500)).ttr_secs(), 2);
    assert_eq!(c.ttr(Duration::from_secs(30)).ttr_secs(), 30);
}

#[test]
fn wait_plan_blocks_whole_seconds_and_polls_the_rest() {
    let p = Duration::from_millis(20);
    // Precise: whole seconds on the server, the rest polled.
    assert_eq!(
        wait_plan(Duration::from_millis(2500), false, true, p),
        (2, Duration::ZERO)
    );
    assert_eq!(
        wait_plan(Duration::from_millis(999), false, true, p),
        (0, p)
    );
    assert_eq!(
        wait_plan(Duration::from_millis(5), false, true, p),
        (0, Duration::from_millis(5))
    );
    assert_eq!(
        wait_plan(Duration::ZERO, false, true, p),
        (0, Duration::ZERO)
    );
    assert_eq!(wait_plan(Duration::from_secs(9), true, true, p), (0, p));
    assert_eq!(wait_plan(Duration::MAX, false, true, p).0, MAX_BLOCK_SECS);
}

#[test]
fn wait_plan_rounds_up_by_default_and_never_blocks_a_zero_wait() {
    let p = Duration::from_millis(20);
    assert_eq!(
        wait_plan(Duration::from_millis(200), false, false, p),
        (1, Duration::ZERO)
    );
    assert_eq!(
        wait_plan(Duration::from_millis(2500), false, false, p),
        (3, Duration::ZERO)
    );
    assert_eq!(
        wait_plan(Duration::from_secs(2), false, false, p),
        (2, Duration::ZERO)
    );
    assert_eq!(
        wait_plan(Duration::ZERO, false, false, p),
        (0, Duration::ZERO)
    );
    // Near a held job's TTR the server answers at once: poll instead.
    assert_eq!(wait_plan(Duration::from_secs(9), true, false, p), (0, p));
    assert_eq!(wait_plan(Duration::MAX, false, false, p).0, MAX_BLOCK_SECS);
}

#[test]
fn oversized_payload_is_refused_without_sending_it() {
    let (config, server) = fake_server(vec![]);
    let mut b = config.open("t").unwrap();
    assert_eq!(
        b.max_job_size(),
        1000 - crate::HEADROOM,
        "the headroom is kept back"
    );
    let e = b
        .publish(&[0; 1001 - crate::HEADROOM], Duration::ZERO)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.message().contains("max-job-size"), "{e}");
    drop(b);
    assert_eq!(
        server.join().unwrap().len(),
        4,
        "only the handshake was sent"
    );
}

#[test]
fn server_errors_are_clear() {
    let (config, server) = fake_server(vec![
        ("put ", b"JOB_TOO_BIG\r\n".to_vec()),
        ("put ", b"DRAINING\r\n".to_vec()),
        ("put ", b"OUT_OF_MEMORY\r\n".to_vec()),
        ("put ", b"INTERNAL_ERROR\r\n".to_vec()),
    ]);
    let mut b = config.open("t").unwrap();
    let kinds: Vec<(ErrorKind, String)> = (0..4)
        .map(|_| {
            let e = b.publish(b"x", Duration::ZERO).unwrap_err();
            (e.kind(), e.message().to_owned())
        })
        .collect();
    assert_eq!(kinds[0].0, ErrorKind::Invalid);
    assert!(kinds[0].1.contains("JOB_TOO_BIG"));
    assert_eq!(kinds[1].0, ErrorKind::Transient);
    assert!(kinds[1].1.contains("DRAINING"));
    assert_eq!(kinds[2].0, ErrorKind::Transient);
    assert_eq!(kinds[3].0, ErrorKind::Other);
    drop(b);
    server.join().unwrap();
}

#[test]
fn garbage_reply_is_corrupt_and_the_connection_is_dropped() {
    let (config, server) = fake_server(vec![("put ", b"HELLO THERE\r\n".to_vec())]);
    let mut b = config.open("t").unwrap();
    let e = b.publish(b"x", Duration::ZERO).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.message().contains("HELLO THERE"), "{e}");
    assert!(b.conn.is_none(), "an out-of-step connection is closed");
    server.join().unwrap();
}

#[test]
fn hostile_body_length_is_refused_not_allocated() {
    let (config, server) = fake_server(vec![(
        "reserve-with-timeout 0",
        b"RESERVED 1 18446744073709551615\r\n".to_vec(),
    )]);
    let mut b = config.open("t").unwrap();
    let e = b.fetch(1, Duration::ZERO).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.message().contains("limit"), "{e}");
    server.join().unwrap();
}

#[test]
fn server_closing_mid_reply_is_transient() {
    let (config, server) = fake_server(vec![(
        "reserve-with-timeout 0",
        b"RESERVED 1 10\r\nabc".to_vec(),
    )]);
    let mut b = config.open("t").unwrap();
    // The script ends: the fake server reads until we close, so make it
    // close by timing out our read instead.
    b.conn.as_mut().unwrap().io_timeout = Duration::from_millis(200);
    let e = b.fetch(1, Duration::ZERO).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    drop(b);
    server.join().unwrap();
}

#[test]
fn settling_after_reconnect_is_lease_lost_without_asking_the_server() {
    let (config, server) = fake_server(vec![
        ("reserve-with-timeout 0", reserved(5, b"job")),
        (
            "stats-job 5",
            ok_body(b"---\nid: 5\npri: 7\nreserves: 3\nreleases: 1\nkicks: 1\n"),
        ),
        ("put ", b"WHAT\r\n".to_vec()),
    ]);
    let mut b = config.open("t").unwrap();
    let d = b.fetch(1, Duration::ZERO).unwrap().pop().unwrap();
    assert_eq!(d.attempt(), 2, "reserves less releases");
    assert_eq!(d.meta("pri"), Some("7"));
    assert_eq!(d.payload(), b"job");
    // A broken reply drops the connection.
    assert!(b.publish(b"x", Duration::ZERO).is_err());
    let e = b.ack(d).unwrap_err();
    assert_eq!(e.error().kind(), ErrorKind::LeaseLost, "{}", e.error());
    assert_eq!(e.delivery().payload(), b"job");
    server.join().unwrap();
}

#[test]
fn drop_writes_nothing() {
    let (config, server) = fake_server(vec![]);
    let b = config.open("t").unwrap();
    drop(b);
    let seen = server.join().unwrap();
    assert_eq!(
        seen,
        ["use t", "watch t", "ignore default", "stats"],
        "no quit on drop"
    );
}
