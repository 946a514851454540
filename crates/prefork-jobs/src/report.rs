//! A dispatch worker's verdict on its way to the feeder: an [`Outcome`]
//! as the bytes of `prefork_master::Context::finish_job`, which the master
//! relays unread. This module is the only place that writes or reads them.
//!
//! | outcome | bytes |
//! |---|---|
//! | `Done` | none (the common case costs nothing) |
//! | `Retry { delay, reason }` | `1`, delay in ms (`u64` LE), reason (UTF-8) |
//! | `Dead { reason }` | `2`, reason (UTF-8) |
//!
//! A reason is cut (on a character boundary) so that the report fits
//! [`MAX_REPORT`]; both ends are the same binary, so a report that does not
//! decode is a bug, and the feeder says so and retries the job.

use std::time::Duration;

use prefork_master::MAX_REPORT;

use crate::registry::Outcome;

const RETRY: u8 = 1;
const DEAD: u8 = 2;

/// The bytes that carry `outcome`.
pub(crate) fn encode(outcome: &Outcome) -> Vec<u8> {
    let (head, reason): (Vec<u8>, &str) = match outcome {
        Outcome::Done => return Vec::new(),
        Outcome::Retry { delay, reason } => {
            let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            let mut head = vec![RETRY];
            head.extend_from_slice(&ms.to_le_bytes());
            (head, reason)
        }
        Outcome::Dead { reason } => (vec![DEAD], reason),
    };
    let room = MAX_REPORT - head.len();
    let mut cut = reason.len().min(room);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = head;
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    out
}

/// The outcome `report` carries, or why it carries none.
pub(crate) fn decode(report: &[u8]) -> Result<Outcome, &'static str> {
    let Some((&tag, rest)) = report.split_first() else {
        return Ok(Outcome::Done);
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "the reason is not UTF-8")
    };
    match tag {
        RETRY => {
            let (ms, reason) = rest
                .split_first_chunk::<8>()
                .ok_or("a retry report without its delay")?;
            Ok(Outcome::Retry {
                delay: Duration::from_millis(u64::from_le_bytes(*ms)),
                reason: text(reason)?,
            })
        }
        DEAD => Ok(Outcome::Dead {
            reason: text(rest)?,
        }),
        _ => Err("an unknown verdict tag"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Done),
            (any::<u32>(), ".{0,64}").prop_map(|(ms, reason)| Outcome::Retry {
                delay: Duration::from_millis(u64::from(ms)),
                reason
            }),
            ".{0,64}".prop_map(|reason| Outcome::Dead { reason }),
        ]
    }

    proptest! {
        #[test]
        fn outcomes_round_trip(o in outcome()) {
            prop_assert_eq!(decode(&encode(&o)), Ok(o));
        }

        #[test]
        fn no_bytes_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn success_costs_no_byte() {
        assert!(encode(&Outcome::Done).is_empty());
    }

    #[test]
    fn a_long_reason_is_cut_to_fit_on_a_char_boundary() {
        let reason = "é".repeat(MAX_REPORT);
        let report = encode(&Outcome::Dead { reason });
        assert!(report.len() <= MAX_REPORT);
        let Ok(Outcome::Dead { reason }) = decode(&report) else {
            panic!("{report:?}");
        };
        assert!(reason.chars().all(|c| c == 'é') && !reason.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_verdict() {
        assert!(decode(&[9]).is_err());
        assert!(decode(&[RETRY, 1, 2]).is_err());
        assert!(decode(&[DEAD, 0xff]).is_err());
    }
}
