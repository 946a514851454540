//! Fuzz target for the heartbeat frame decoder: arbitrary bytes must never
//! panic or over-allocate, must decode the same whether fed at once or in
//! chunks, and whatever decodes must re-encode to frames that decode to the
//! same messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefork_heartbeat::{DecodeError, Decoder, Message, encode};

/// A small maximum, so that oversized headers are hit often.
const MAX: usize = 64 * 1024;

/// Feeds `data` in chunks whose sizes cycle through `sizes`, decoding after
/// each: the messages and the error, if any.
fn run(data: &[u8], sizes: &[u8]) -> (Vec<Message>, Option<DecodeError>) {
    let mut d = Decoder::with_max_frame(MAX);
    let mut msgs = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .map_or(rest.len(), |&s| usize::from(s).max(1))
            .min(rest.len());
        i += 1;
        d.feed(&rest[..n]);
        rest = &rest[n..];
        loop {
            match d.next_message() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(d.next_message(), Err(e.clone()), "errors are final");
                    return (msgs, Some(e));
                }
            }
        }
        assert!(d.buffered() <= 6 + MAX, "decoder holds more than one frame");
    }
    (msgs, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how many of the next bytes are chunk sizes.
    let (sizes, stream) = match data.split_first() {
        Some((&k, rest)) => rest.split_at(usize::from(k % 8).min(rest.len())),
        None => (&[][..], data),
    };
    let one_shot = run(stream, &[]);
    let chunked = run(stream, sizes);
    assert_eq!(one_shot, chunked, "chunking changed the result");

    let mut again = Vec::new();
    for m in &one_shot.0 {
        encode(m, &mut again);
    }
    let mut d = Decoder::with_max_frame(MAX);
    d.feed(&again);
    for m in &one_shot.0 {
        assert_eq!(d.next_message().as_ref(), Ok(&Some(m.clone())));
    }
    assert_eq!(d.next_message(), Ok(None));
});
