//! Property tests of the frame codec: every message round-trips, any split of
//! the stream decodes the same, and arbitrary bytes never panic the decoder.

use prefork_heartbeat::{
    Control, DEFAULT_MAX_FRAME, DecodeError, Decoder, HEADER_LEN, Message, Progress, Stats,
    VERSION, encode,
};
use proptest::prelude::*;

fn progress() -> impl Strategy<Value = Progress> {
    prop_oneof![
        Just(Progress::Idle),
        (".*", any::<u64>()).prop_map(|(job, since_unix_ms)| Progress::Busy { job, since_unix_ms }),
    ]
}

fn stats() -> impl Strategy<Value = Stats> {
    any::<[u64; 4]>().prop_map(|[rss_bytes, pss_bytes, jobs_finished, iterations]| Stats {
        rss_bytes,
        pss_bytes,
        jobs_finished,
        iterations,
    })
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![Just(Control::Stop), Just(Control::ReopenLogs)]
}

/// Every message kind.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u32>().prop_map(|pid| Message::Ready { pid }),
        progress().prop_map(Message::Heartbeat),
        (
            ".*",
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u32>()
        )
            .prop_map(|(id, payload, attempt)| Message::Job {
                id,
                payload,
                attempt
            }),
        (".*", proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(id, report)| Message::Finished { id, report }),
        any::<u32>().prop_map(|n| Message::Want { n }),
        ".*".prop_map(|id| Message::Release { id }),
        (".*", ".*").prop_map(|(id, reason)| Message::Lost { id, reason }),
        (".*", any::<u64>()).prop_map(|(id, in_ms)| Message::Deadline { id, in_ms }),
        (any::<u32>(), proptest::collection::vec(".*", 0..5))
            .prop_map(|(pid, ids)| Message::Orphaned { pid, ids }),
        stats().prop_map(Message::Stats),
        control().prop_map(Message::Control),
    ]
}

/// Decodes everything `decoder` holds: the messages, then the error if any.
fn drain(decoder: &mut Decoder) -> (Vec<Message>, Option<DecodeError>) {
    let mut out = Vec::new();
    loop {
        match decoder.next_message() {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Feeds `bytes` in chunks of the given sizes (cycled), decoding after each.
fn decode_chunked(
    bytes: &[u8],
    sizes: &[usize],
    max: usize,
) -> (Vec<Message>, Option<DecodeError>) {
    let mut d = Decoder::with_max_frame(max);
    let mut msgs = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        d.feed(&rest[..n]);
        rest = &rest[n..];
        let (m, e) = drain(&mut d);
        msgs.extend(m);
        if e.is_some() {
            return (msgs, e);
        }
    }
    (msgs, None)
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message()) {
        let mut bytes = Vec::new();
        encode(&msg, &mut bytes);
        prop_assert_eq!(bytes[0], VERSION);
        prop_assert_eq!(bytes[1], msg.kind());
        let mut d = Decoder::new();
        d.feed(&bytes);
        prop_assert_eq!(d.next_message(), Ok(Some(msg)));
        prop_assert_eq!(d.next_message(), Ok(None));
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same(
        msgs in proptest::collection::vec(message(), 1..12),
        sizes in proptest::collection::vec(1_usize..20, 1..10),
    ) {
        let mut bytes = Vec::new();
        for m in &msgs {
            encode(m, &mut bytes);
        }
        prop_assert_eq!(decode_chunked(&bytes, &sizes, DEFAULT_MAX_FRAME), (msgs, None));
    }

    #[test]
    fn a_truncated_frame_is_incomplete_not_an_error(msg in message(), cut in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        encode(&msg, &mut bytes);
        let cut = cut.index(bytes.len()); // strictly shorter than the frame
        let mut d = Decoder::new();
        d.feed(&bytes[..cut]);
        prop_assert_eq!(d.next_message(), Ok(None));
        d.feed(&bytes[cut..]);
        prop_assert_eq!(d.next_message(), Ok(Some(msg)));
    }

    #[test]
    fn trailing_body_bytes_are_an_error(
        msg in message(),
        extra in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        // Both ends are the same binary: a body longer than its kind's
        // fields is garbage, not a newer peer's extra field.
        let mut bytes = Vec::new();
        encode(&msg, &mut bytes);
        bytes.extend_from_slice(&extra);
        let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[2..6].copy_from_slice(&len.to_le_bytes());
        let mut d = Decoder::new();
        d.feed(&bytes);
        prop_assert!(matches!(d.next_message(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn a_kind_this_version_lacks_is_an_error(
        kind in prop_oneof![Just(0_u8), Just(5_u8), 13_u8..=255],
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut frame = vec![VERSION, kind];
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        frame.extend_from_slice(&body);
        let mut d = Decoder::new();
        d.feed(&frame);
        prop_assert_eq!(d.next_message(), Err(DecodeError::Kind(kind)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_does_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        sizes in proptest::collection::vec(1_usize..16, 1..8),
        max in 0_usize..256,
    ) {
        let one_shot = decode_chunked(&bytes, &[usize::MAX], max);
        let chunked = decode_chunked(&bytes, &sizes, max);
        prop_assert_eq!(&one_shot, &chunked);
        // Whatever decoded re-encodes to frames that decode to the same messages.
        let mut again = Vec::new();
        for m in &one_shot.0 {
            encode(m, &mut again);
        }
        let mut d = Decoder::new();
        d.feed(&again);
        prop_assert_eq!(drain(&mut d), (one_shot.0, None));
    }

    #[test]
    fn frames_that_start_valid_then_turn_to_garbage_never_panic(
        msgs in proptest::collection::vec(message(), 0..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = Vec::new();
        for m in &msgs {
            encode(m, &mut bytes);
        }
        bytes.push(VERSION); // a frame header follows, then garbage
        bytes.extend_from_slice(&garbage);
        let (got, _) = decode_chunked(&bytes, &[usize::MAX], 1 << 16);
        prop_assert!(got.len() >= msgs.len());
        prop_assert_eq!(&got[..msgs.len()], &msgs[..]);
    }

    #[test]
    fn an_oversized_header_is_refused_without_its_body(len in 1025_u32.., kind in any::<u8>()) {
        let mut d = Decoder::with_max_frame(1024);
        let mut header = vec![VERSION, kind];
        header.extend_from_slice(&len.to_le_bytes());
        d.feed(&header);
        prop_assert_eq!(d.next_message(), Err(DecodeError::TooLarge(len as usize)));
        // Final: nothing fed afterwards revives the stream.
        let mut ok = Vec::new();
        encode(&Message::Ready { pid: 1 }, &mut ok);
        d.feed(&ok);
        prop_assert_eq!(d.next_message(), Err(DecodeError::TooLarge(len as usize)));
    }

    #[test]
    fn any_other_version_is_an_error(version in any::<u8>().prop_filter("not ours", |v| *v != VERSION)) {
        let mut d = Decoder::new();
        d.feed(&[version]);
        prop_assert_eq!(d.next_message(), Err(DecodeError::Version(version)));
    }
}

#[test]
fn malformed_bodies_are_errors() {
    let cases: &[(u8, &[u8])] = &[
        (1, &[1, 2, 3]),                   // pid needs 4 bytes
        (2, &[]),                          // no progress tag
        (2, &[1, 0, 0]),                   // busy without its start time
        (3, &[5, 0, 0, 0, b'a']),          // id says 5 bytes, 1 present
        (3, &[1, 0, 0, 0, b'a']),          // no payload length
        (4, &[2, 0, 0, 0, 0xff, 0xfe]),    // id not UTF-8
        (4, &[0, 0, 0, 0, 9, 0, 0, 0, 1]), // report says 9 bytes, 1 present
        (6, &[0; 31]),                     // stats need 32 bytes
        (7, &[]),                          // no control request
        (3, &[0, 0, 0, 0, 0, 0, 0, 0, 1]), // half an attempt
        (3, &[0, 0, 0, 0, 0, 0, 0, 0]),    // no attempt at all
        (7, &[9]),                         // control request 9
        (2, &[5, 1, 2, 3]),                // progress tag 5
        (8, &[1, 0]),                      // want needs 4 bytes
        (9, &[]),                          // release without an id
        (10, &[0, 0, 0, 0]),               // lost without a reason
        (11, &[0, 0, 0, 0, 1, 2, 3]),      // deadline needs 8 bytes
    ];
    for &(kind, body) in cases {
        let mut frame = vec![VERSION, kind];
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        frame.extend_from_slice(body);
        let mut d = Decoder::new();
        d.feed(&frame);
        assert!(
            matches!(d.next_message(), Err(DecodeError::Malformed(_))),
            "kind {kind} body {body:?}"
        );
    }
}

#[test]
fn a_body_exactly_at_the_maximum_is_accepted() {
    let msg = Message::Job {
        id: String::new(),
        payload: vec![1; 100],
        attempt: 1,
    };
    let mut bytes = Vec::new();
    encode(&msg, &mut bytes);
    let body = bytes.len() - HEADER_LEN;
    let mut d = Decoder::with_max_frame(body);
    d.feed(&bytes);
    assert_eq!(d.next_message(), Ok(Some(msg.clone())));
    let mut d = Decoder::with_max_frame(body - 1);
    d.feed(&bytes);
    assert_eq!(d.next_message(), Err(DecodeError::TooLarge(body)));
}
