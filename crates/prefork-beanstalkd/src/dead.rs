//! The dead-letter record: what a dead-lettered job becomes in the
//! `<tube>.dead` tube, since beanstalkd cannot keep a reason with a job.
//!
//! A record is the job's payload behind a one-line header:
//!
//! ```text
//! PFDL1 <attempt> <original job id> <reason length>\n<reason bytes><payload bytes>
//! ```
//!
//! The header is ASCII, so `beanstalk-console` style tools show it; the
//! reason is UTF-8 and may hold newlines (its length is in the header).

/// The magic that starts every record.
const MAGIC: &str = "PFDL1 ";
/// The longest header accepted when decoding.
const MAX_HEADER: usize = 80;

/// A decoded dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) attempt: u32,
    pub(crate) job_id: u64,
    pub(crate) reason: String,
    pub(crate) payload: Vec<u8>,
}

/// The header's length for these values (to size the reason to fit).
pub(crate) fn header_len(attempt: u32, job_id: u64, reason_len: usize) -> usize {
    format!("{MAGIC}{attempt} {job_id} {reason_len}\n").len()
}

/// Encodes a record, cutting the reason (at a char boundary) so the whole
/// record fits in `max` bytes; `None` when even an empty reason does not fit.
pub(crate) fn encode(
    attempt: u32,
    job_id: u64,
    reason: &str,
    payload: &[u8],
    max: usize,
) -> Option<Vec<u8>> {
    let room =
        max.checked_sub(header_len(attempt, job_id, reason.len()) + reason.len() + payload.len());
    let reason = match room {
        Some(_) => reason,
        None => {
            // Shrinking the reason can only shorten the header.
            let room = max.checked_sub(header_len(attempt, job_id, 0) + payload.len())?;
            let mut cut = room.min(reason.len());
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            while header_len(attempt, job_id, cut) + cut + payload.len() > max {
                cut -= 1;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
            }
            &reason[..cut]
        }
    };
    let mut out = format!("{MAGIC}{attempt} {job_id} {}\n", reason.len()).into_bytes();
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// Decodes a record; `None` when `body` is not one (a job put into the dead
/// tube by something else).
pub(crate) fn decode(body: &[u8]) -> Option<Record> {
    let head_end = body.iter().take(MAX_HEADER).position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&body[..head_end]).ok()?;
    let mut fields = head.strip_prefix(MAGIC)?.split(' ');
    let mut num = || -> Option<u64> {
        let f = fields.next()?;
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        f.parse().ok()
    };
    let attempt = u32::try_from(num()?).ok()?;
    let job_id = num()?;
    let reason_len = usize::try_from(num()?).ok()?;
    if fields.next().is_some() {
        return None;
    }
    let rest = &body[head_end + 1..];
    if reason_len > rest.len() {
        return None;
    }
    let (reason, payload) = rest.split_at(reason_len);
    Some(Record {
        attempt,
        job_id,
        reason: String::from_utf8(reason.to_vec()).ok()?,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_longest_header_fits_the_headroom() {
        let longest = header_len(u32::MAX, u64::MAX, u32::MAX as usize);
        assert!(longest <= crate::HEADROOM, "{longest}");
        // So a payload that leaves the headroom free always gets a record,
        // its reason cut to what is left.
        let payload = vec![b'x'; 1000 - crate::HEADROOM];
        let r = encode(u32::MAX, u64::MAX, "a long reason", &payload, 1000).unwrap();
        assert!(r.len() <= 1000);
    }

    proptest! {
        #[test]
        fn records_round_trip(attempt: u32, job_id: u64, reason in ".{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let r = encode(attempt, job_id, &reason, &payload, usize::MAX).unwrap();
            let got = decode(&r).unwrap();
            prop_assert_eq!(got, Record { attempt, job_id, reason, payload });
        }

        /// With a size limit, the record fits, keeps the payload whole and
        /// keeps a prefix of the reason.
        #[test]
        fn reasons_are_cut_to_fit(reason in ".{0,60}", payload in proptest::collection::vec(any::<u8>(), 0..50), max in 0usize..150) {
            match encode(3, 77, &reason, &payload, max) {
                Some(r) => {
                    prop_assert!(r.len() <= max);
                    let got = decode(&r).unwrap();
                    prop_assert_eq!(&got.payload, &payload);
                    prop_assert!(reason.starts_with(&got.reason));
                }
                None => prop_assert!(header_len(3, 77, 0) + payload.len() > max),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&body);
        }
    }

    #[test]
    fn foreign_bodies_are_not_records() {
        for body in [
            &b""[..],
            b"hello",
            b"PFDL1 1 2\nx",
            b"PFDL1 1 2 9\nshort",
            b"PFDL1 x 2 0\n",
            b"PFDL1 1 2 0 extra\n",
            b"PFDL1 1 2 1\n\xff",
        ] {
            assert_eq!(decode(body), None, "{:?}", String::from_utf8_lossy(body));
        }
    }
}
