//! What a job's body carries besides its payload: the attempts a retried
//! job has already used.
//!
//! beanstalkd counts a job's `reserves` and `releases`, which give the
//! attempt of a job that was only ever released (attempt-neutral) or lost
//! with its holder (counted): `reserves - releases`. A retry must count one
//! more, and no single beanstalk command both counts and is atomic, so a
//! retry puts a copy of the job whose body starts with the attempts used,
//! then deletes the original:
//!
//! ```text
//! PFAT1 <attempts used>\n<payload bytes>
//! ```
//!
//! A body without the header has used none. A payload that itself starts
//! with the magic is published behind a header of 0, so no payload is ever
//! read as a header.

use std::borrow::Cow;

/// The magic that starts a header.
const MAGIC: &[u8] = b"PFAT1 ";
/// The longest header (`MAGIC`, a `u32`, `\n`).
pub(crate) const MAX_HEADER: usize = MAGIC.len() + 10 + 1;

/// The body that carries `payload` with `used` attempts behind it: the
/// payload itself when nothing needs saying (no attempt used, and no magic
/// to escape).
pub(crate) fn encode(used: u32, payload: &[u8]) -> Cow<'_, [u8]> {
    if used == 0 && !payload.starts_with(MAGIC) {
        return Cow::Borrowed(payload);
    }
    let mut body = Vec::with_capacity(MAX_HEADER + payload.len());
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(used.to_string().as_bytes());
    body.push(b'\n');
    body.extend_from_slice(payload);
    Cow::Owned(body)
}

/// Splits a body into the attempts it has used and its payload. A body
/// whose header is malformed is all payload, with none used.
pub(crate) fn decode(mut body: Vec<u8>) -> (u32, Vec<u8>) {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return (0, body);
    };
    let digits = rest
        .iter()
        .take(MAX_HEADER - MAGIC.len())
        .position(|&b| b == b'\n');
    let used = digits.and_then(|n| {
        let digits = &rest[..n];
        let all_digits = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
        all_digits
            .then(|| std::str::from_utf8(digits).ok()?.parse::<u32>().ok())
            .flatten()
            .map(|used| (used, MAGIC.len() + n + 1))
    });
    match used {
        Some((used, header)) => {
            body.drain(..header);
            (used, body)
        }
        None => (0, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_plain_payload_is_its_own_body() {
        assert!(matches!(encode(0, b"job"), Cow::Borrowed(b"job")));
        assert_eq!(decode(b"job".to_vec()), (0, b"job".to_vec()));
    }

    #[test]
    fn attempts_used_ride_in_front() {
        let body = encode(3, b"job").into_owned();
        assert_eq!(body, b"PFAT1 3\njob");
        assert_eq!(decode(body), (3, b"job".to_vec()));
    }

    #[test]
    fn a_payload_that_looks_like_a_header_is_escaped() {
        let body = encode(0, b"PFAT1 7\nnot a header").into_owned();
        assert_eq!(decode(body), (0, b"PFAT1 7\nnot a header".to_vec()));
    }

    #[test]
    fn a_malformed_header_is_payload() {
        for body in [
            &b"PFAT1 x\njob"[..],
            b"PFAT1 \njob",
            b"PFAT1 99999999999\njob",
            b"PFAT1 3",
        ] {
            assert_eq!(decode(body.to_vec()), (0, body.to_vec()), "{body:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(used in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let body = encode(used, &payload).into_owned();
            prop_assert!(body.len() <= payload.len() + MAX_HEADER);
            prop_assert_eq!(decode(body), (used, payload));
        }

        #[test]
        fn escaped_magic_round_trips(tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut payload = MAGIC.to_vec();
            payload.extend(tail);
            prop_assert_eq!(decode(encode(0, &payload).into_owned()), (0, payload));
        }
    }
}
