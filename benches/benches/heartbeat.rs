//! Heartbeat round trip between two processes (encode, send, the peer
//! decodes and answers, decode) against a bare 1-byte socketpair ping-pong
//! between two processes, in the same run. Quote the ratio.
//!
//! Both echo peers are forked at the start of `main`, while the process has
//! one thread and before criterion exists; they are plain loops that exit
//! when their socket reaches end of file.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use criterion::Criterion;
use prefork_heartbeat::{Channel, Decoder, Message, Progress, encode};

/// How long a peer waits for the next message before looking again.
const PATIENCE: Duration = Duration::from_secs(3600);

/// The message both sides exchange: a busy worker's heartbeat.
fn heartbeat() -> Message {
    Message::Heartbeat(Progress::Busy {
        job: "1700000000000-0".into(),
        since_unix_ms: 1_700_000_000_000,
    })
}

/// Answers every byte with the same byte until end of file.
fn bare_echo(mut sock: UnixStream) {
    let mut b = [0_u8; 1];
    while sock.read(&mut b).is_ok_and(|n| n == 1) {
        if sock.write_all(&b).is_err() {
            break;
        }
    }
}

/// Answers every message with the message it decoded, until the channel closes.
fn heartbeat_echo(mut ch: Channel) {
    loop {
        match ch.recv_timeout(PATIENCE) {
            Ok(Some(msg)) => {
                if ch.send_blocking(&msg).is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
}

/// Forks; returns the child's pid in the parent, `None` in the child.
fn fork() -> Option<libc::pid_t> {
    // SAFETY: called at the start of main, when this process has one thread.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    (pid > 0).then_some(pid)
}

/// Ends a forked child.
fn exit_child() -> ! {
    // SAFETY: ends the child without running the parent's exit handlers.
    unsafe { libc::_exit(0) }
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
}

fn main() {
    let (mut bare, bare_peer) = UnixStream::pair().expect("socketpair");
    let (mut chan, chan_peer) = Channel::pair().expect("socketpair");

    // Each echo peer keeps only its own socket.
    let Some(bare_pid) = fork() else {
        drop((bare, chan, chan_peer));
        bare_echo(bare_peer);
        exit_child()
    };
    drop(bare_peer);
    let Some(chan_pid) = fork() else {
        drop((bare, chan));
        heartbeat_echo(chan_peer);
        exit_child()
    };
    drop(chan_peer);

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("heartbeat_round_trip");
    g.bench_function("bare_1byte_pingpong", |b| {
        let mut byte = [0_u8; 1];
        b.iter(|| {
            bare.write_all(&[7]).unwrap();
            bare.read_exact(&mut byte).unwrap();
            black_box(byte[0]);
        });
    });
    let msg = heartbeat();
    g.bench_function("heartbeat_frame", |b| {
        b.iter(|| {
            chan.send(black_box(&msg)).unwrap();
            loop {
                if let Some(reply) = chan.recv_timeout(PATIENCE).unwrap() {
                    black_box(reply);
                    break;
                }
            }
        });
    });
    // Where the time goes: the codec alone, in one process.
    g.bench_function("encode_decode_only", |b| {
        let mut buf = Vec::with_capacity(64);
        let mut dec = Decoder::new();
        b.iter(|| {
            buf.clear();
            encode(black_box(&msg), &mut buf);
            dec.feed(&buf);
            black_box(dec.next_message().unwrap());
        });
    });
    g.finish();

    // End of file tells both peers to exit.
    drop(bare);
    drop(chan);
    reap(bare_pid);
    reap(chan_pid);
    c.final_summary();
}
