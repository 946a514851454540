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
use std::time::{Duration, Instant};

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

/// One bare round trip: a byte there and back.
fn bare_round_trip(sock: &mut UnixStream) {
    let mut byte = [7_u8; 1];
    sock.write_all(&byte).unwrap();
    sock.read_exact(&mut byte).unwrap();
    black_box(byte[0]);
}

/// One heartbeat round trip: encode and send, the peer decodes and answers,
/// decode the answer.
fn heartbeat_round_trip(ch: &mut Channel, msg: &Message) {
    ch.send(black_box(msg)).unwrap();
    loop {
        if let Some(reply) = ch.recv_timeout(PATIENCE).unwrap() {
            black_box(reply);
            return;
        }
    }
}

/// The ratio again, robust to load that changes during the run: batches of
/// both round trips alternate, and the median of the per-batch ratios is
/// printed with the median times.
fn interleaved(bare: &mut UnixStream, ch: &mut Channel, msg: &Message) {
    const BATCHES: usize = 51;
    const BATCH: u32 = 200;
    let mut ratios = Vec::with_capacity(BATCHES);
    let mut bare_us = Vec::with_capacity(BATCHES);
    let mut frame_us = Vec::with_capacity(BATCHES);
    let per_trip = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH);
    for i in 0..BATCHES {
        let (mut b, mut h) = (0.0, 0.0);
        for first_bare in [i % 2 == 0, i % 2 != 0] {
            let t = Instant::now();
            if first_bare {
                (0..BATCH).for_each(|_| bare_round_trip(bare));
                b = per_trip(t);
            } else {
                (0..BATCH).for_each(|_| heartbeat_round_trip(ch, msg));
                h = per_trip(t);
            }
        }
        ratios.push(h / b);
        bare_us.push(b);
        frame_us.push(h);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "interleaved, median of {BATCHES} batches of {BATCH}: bare {:.2} us, heartbeat {:.2} us, ratio {:.2}",
        median(&mut bare_us),
        median(&mut frame_us),
        median(&mut ratios)
    );
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
        b.iter(|| bare_round_trip(&mut bare));
    });
    let msg = heartbeat();
    g.bench_function("heartbeat_frame", |b| {
        b.iter(|| heartbeat_round_trip(&mut chan, &msg));
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
    interleaved(&mut bare, &mut chan, &msg);

    // End of file tells both peers to exit.
    drop(bare);
    drop(chan);
    reap(bare_pid);
    reap(chan_pid);
    c.final_summary();
}
