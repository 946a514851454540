//! The channel over a real socketpair, in one process: buffered partial
//! writes and reads, end of file, size limits, and mio readiness.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use prefork_heartbeat::{
    Channel, ChannelError, Control, DecodeError, Message, Progress, Stats, encode,
};

/// A mix of every kind, large enough in total to need many reads.
fn sample() -> Vec<Message> {
    vec![
        Message::Ready { pid: 4242 },
        Message::Heartbeat(Progress::Idle),
        Message::Job {
            id: "delivery-1".into(),
            payload: (0..=255).collect(),
            attempt: 3,
        },
        Message::Heartbeat(Progress::Busy {
            job: "delivery-1".into(),
            since_unix_ms: 1_700_000_000_123,
        }),
        Message::Finished {
            id: "delivery-1".into(),
            report: Vec::new(),
        },
        Message::Finished {
            id: "d2".into(),
            report: b"retry in 1500 ms: handler panicked".to_vec(),
        },
        Message::Stats(Stats {
            rss_bytes: 50 << 20,
            jobs_finished: 17,
            ..Stats::default()
        }),
        Message::Control(Control::ReopenLogs),
    ]
}

/// Receives until `n` messages arrived or `recv` says nothing more for now.
fn recv_all(ch: &mut Channel) -> Vec<Message> {
    let mut got = Vec::new();
    while let Some(m) = ch.recv().expect("recv") {
        got.push(m);
    }
    got
}

#[test]
fn messages_cross_in_order_both_ways() {
    let (mut a, mut b) = Channel::pair().unwrap();
    for m in sample() {
        a.send(&m).unwrap();
    }
    assert!(!a.has_pending_output());
    assert_eq!(recv_all(&mut b), sample());
    b.send(&Message::Control(Control::Stop)).unwrap();
    assert_eq!(
        a.recv_timeout(Duration::from_secs(5)).unwrap(),
        Some(Message::Control(Control::Stop))
    );
}

#[test]
fn frames_written_a_byte_at_a_time_are_reassembled() {
    let (mut ch, raw) = Channel::pair().unwrap();
    let mut raw = UnixStream::from(raw.into_fd());
    let mut bytes = Vec::new();
    for m in sample() {
        encode(&m, &mut bytes);
    }
    let mut got = Vec::new();
    for byte in &bytes {
        raw.write_all(std::slice::from_ref(byte)).unwrap();
        // Each call reads what is there; a message appears only when complete.
        got.extend(recv_all(&mut ch));
    }
    assert_eq!(got, sample());
}

#[test]
fn a_large_job_is_written_in_parts_while_the_socket_is_full() {
    let (mut master, mut worker) = Channel::pair().unwrap();
    // Far beyond the socket buffer (a few hundred KiB at most).
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let job = Message::Job {
        id: "big".into(),
        payload,
        attempt: 1,
    };
    master.send(&job).unwrap();
    master.send(&Message::Control(Control::ReopenLogs)).unwrap();
    assert!(master.has_pending_output(), "the socket took 8 MiB at once");

    let mut got = Vec::new();
    let mut rounds = 0;
    while got.len() < 2 {
        rounds += 1;
        got.extend(recv_all(&mut worker));
        master.flush().unwrap();
    }
    assert!(rounds > 2, "expected many partial writes, got {rounds}");
    assert!(!master.has_pending_output());
    assert_eq!(got, vec![job, Message::Control(Control::ReopenLogs)]);
}

#[test]
fn reads_of_a_trickled_large_frame_in_small_chunks() {
    let (mut ch, raw) = Channel::pair().unwrap();
    let mut raw = UnixStream::from(raw.into_fd());
    let job = Message::Job {
        id: "j".into(),
        payload: vec![0xab; 100_000],
        attempt: 1,
    };
    let mut bytes = Vec::new();
    encode(&job, &mut bytes);
    let mut got = None;
    for chunk in bytes.chunks(997) {
        assert_eq!(got, None);
        raw.write_all(chunk).unwrap();
        got = ch.recv().unwrap();
    }
    assert_eq!(got, Some(job));
}

#[test]
fn eof_is_reported_after_the_last_complete_message() {
    let (mut a, mut b) = Channel::pair().unwrap();
    a.send(&Message::Ready { pid: 1 }).unwrap();
    a.send(&Message::Release { id: "x".into() }).unwrap();
    // Half a frame, then the peer goes away: the half is dropped.
    let mut raw = UnixStream::from(a.into_fd());
    let mut partial = Vec::new();
    encode(&Message::Release { id: "never".into() }, &mut partial);
    raw.write_all(&partial[..partial.len() - 1]).unwrap();
    drop(raw);

    assert_eq!(b.recv().unwrap(), Some(Message::Ready { pid: 1 }));
    assert_eq!(b.recv().unwrap(), Some(Message::Release { id: "x".into() }));
    assert!(matches!(b.recv(), Err(ChannelError::Closed)));
    assert!(matches!(b.recv(), Err(ChannelError::Closed)));
    assert!(matches!(
        b.recv_timeout(Duration::from_secs(5)),
        Err(ChannelError::Closed)
    ));
}

#[test]
fn sending_to_a_closed_peer_is_closed_not_sigpipe() {
    let (mut a, b) = Channel::pair().unwrap();
    drop(b);
    assert!(matches!(
        a.send(&Message::Heartbeat(Progress::Idle)),
        Err(ChannelError::Closed)
    ));
}

#[test]
fn a_body_above_the_maximum_is_refused_before_queueing() {
    let (mut a, mut b) = Channel::pair().unwrap();
    a.set_max_frame(64);
    let err = a
        .send(&Message::Job {
            id: "j".into(),
            payload: vec![0; 100],
            attempt: 1,
        })
        .unwrap_err();
    assert!(matches!(err, ChannelError::TooLarge { len: 113, max: 64 }));
    assert!(!a.has_pending_output());
    // The channel is still usable.
    a.send(&Message::Ready { pid: 3 }).unwrap();
    assert_eq!(b.recv().unwrap(), Some(Message::Ready { pid: 3 }));
}

#[test]
fn a_receiver_refuses_an_oversized_frame_from_its_peer() {
    let (mut a, mut b) = Channel::pair().unwrap();
    b.set_max_frame(10);
    a.send(&Message::Release {
        id: "longer than ten bytes".into(),
    })
    .unwrap();
    assert!(matches!(
        b.recv(),
        Err(ChannelError::Decode(DecodeError::TooLarge(25)))
    ));
}

#[test]
fn garbage_from_the_peer_is_a_decode_error() {
    let (mut ch, raw) = Channel::pair().unwrap();
    let mut raw = UnixStream::from(raw.into_fd());
    raw.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    assert!(matches!(
        ch.recv(),
        Err(ChannelError::Decode(DecodeError::Version(b'G')))
    ));
}

#[test]
fn recv_timeout_times_out_with_nothing_to_read() {
    let (mut a, _b) = Channel::pair().unwrap();
    assert_eq!(a.recv_timeout(Duration::ZERO).unwrap(), None);
    assert_eq!(a.recv_timeout(Duration::from_millis(1)).unwrap(), None);
}

#[test]
fn from_fd_takes_a_blocking_stream_socket_and_makes_it_non_blocking() {
    let (x, y) = UnixStream::pair().unwrap();
    let mut ch = Channel::from_fd(x.into()).unwrap();
    // Non-blocking: an empty socket answers at once.
    assert_eq!(ch.recv().unwrap(), None);
    let flags = nix::fcntl::fcntl(&ch, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(flags & libc::FD_CLOEXEC, 0);
    let mut y = y;
    let mut bytes = Vec::new();
    encode(&Message::Ready { pid: 9 }, &mut bytes);
    y.write_all(&bytes).unwrap();
    assert_eq!(ch.recv().unwrap(), Some(Message::Ready { pid: 9 }));
    ch.send(&Message::Control(Control::Stop)).unwrap();
    let mut back = [0_u8; 7];
    y.read_exact(&mut back).unwrap();
    assert_eq!(back, [1, 7, 1, 0, 0, 0, 1]);
}

#[test]
fn from_fd_refuses_a_datagram_socket() {
    let (x, _y) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let err = Channel::from_fd(x.into()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn mio_reports_readable_and_the_peer_closing() {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(8);
    let (mut master, mut worker) = Channel::pair().unwrap();
    poll.registry()
        .register(&mut master, Token(7), Interest::READABLE)
        .unwrap();

    worker.send(&Message::Heartbeat(Progress::Idle)).unwrap();
    poll.poll(&mut events, Some(Duration::from_secs(5)))
        .unwrap();
    let ev = events.iter().next().expect("an event");
    assert_eq!(ev.token(), Token(7));
    assert!(ev.is_readable());
    assert_eq!(
        recv_all(&mut master),
        vec![Message::Heartbeat(Progress::Idle)]
    );

    drop(worker);
    poll.poll(&mut events, Some(Duration::from_secs(5)))
        .unwrap();
    let ev = events.iter().next().expect("an event");
    assert!(ev.is_read_closed());
    assert!(matches!(master.recv(), Err(ChannelError::Closed)));
    poll.registry().deregister(&mut master).unwrap();
}
