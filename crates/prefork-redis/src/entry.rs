//! How a job is laid out in a stream entry, and decoding replies into jobs.
//!
//! An entry has the fields `p` (the payload bytes, required), `a` (the
//! attempt number carried by a retry, default 1) and `j` (the stable job
//! id carried by a retry or redrive, default the entry's own id). Other
//! fields are ignored. An entry without `p`, with an `a` that is not a
//! positive integer, or with a `j` that is not a plain id is malformed: the
//! fetcher dead-letters it with the reason instead of failing.

use redis::Value;

/// A job as read from a stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    /// The stream entry id (the receipt).
    pub(crate) entry: String,
    /// The stable job id.
    pub(crate) job: String,
    pub(crate) payload: Vec<u8>,
    /// The attempt carried in the entry (1 when absent).
    pub(crate) attempt: u32,
}

/// An entry that is not a job: what it held, and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub(crate) entry: String,
    /// The entry's fields as `name=value` lines, kept for the dead letter.
    pub(crate) dump: Vec<u8>,
    pub(crate) reason: String,
}

/// Whether `id` can be a job id: a stream id, or anything made of the
/// characters one uses (digits, `-`), nothing that breaks the delayed
/// member layout (`:`).
pub(crate) fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Decodes one entry from its id and its flat `[field, value, ...]` list.
pub(crate) fn decode(entry: String, fields: &[Value]) -> Result<Job, Malformed> {
    let mut payload = None;
    let mut attempt = None;
    let mut job = None;
    let mut problem = None;
    if !fields.len().is_multiple_of(2) {
        problem = Some(format!("odd number of field items ({})", fields.len()));
    }
    for pair in fields.chunks_exact(2) {
        let (Some(name), Some(value)) = (bytes(&pair[0]), bytes(&pair[1])) else {
            problem.get_or_insert_with(|| "a field that is not a string".to_owned());
            continue;
        };
        match name {
            b"p" => payload = Some(value.to_vec()),
            b"a" => attempt = Some(value),
            b"j" => job = Some(value),
            _ => {}
        }
    }
    let attempt = match attempt {
        None => Ok(1),
        Some(a) => std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|a| *a >= 1)
            .ok_or_else(|| format!("field \"a\" is not a positive integer: {:?}", lossy(a))),
    };
    let job = match job {
        None => Ok(entry.clone()),
        Some(j) => std::str::from_utf8(j)
            .ok()
            .filter(|j| valid_job_id(j))
            .map(str::to_owned)
            .ok_or_else(|| format!("field \"j\" is not a job id: {:?}", lossy(j))),
    };
    let refuse = |reason: String| Malformed {
        dump: dump(fields),
        entry: entry.clone(),
        reason: format!("malformed stream entry {entry}: {reason}"),
    };
    if let Some(p) = problem {
        return Err(refuse(p));
    }
    let Some(payload) = payload else {
        return Err(refuse("no field \"p\" (payload)".to_owned()));
    };
    match (attempt, job) {
        (Ok(attempt), Ok(job)) => Ok(Job {
            entry: entry.clone(),
            job,
            payload,
            attempt,
        }),
        (Err(why), _) | (_, Err(why)) => Err(refuse(why)),
    }
}

/// The bytes of a string reply.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A string reply as text.
pub(crate) fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// An integer reply (or a string holding one).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => bytes(other)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok()),
    }
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(64)]);
    s.into_owned()
}

/// The fields as `name=value` lines, for an operator to look at.
fn dump(fields: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for pair in fields.chunks(2) {
        for (i, v) in pair.iter().enumerate() {
            match bytes(v) {
                Some(b) => out.extend_from_slice(b),
                None => out.extend_from_slice(format!("{v:?}").as_bytes()),
            }
            out.push(if i == 0 { b'=' } else { b'\n' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn a_fresh_entry_is_attempt_one_with_its_own_id() {
        let j = decode("5-0".into(), &[bulk(b"p"), bulk(b"hi")]).unwrap();
        assert_eq!(
            (j.job.as_str(), j.attempt, &j.payload[..]),
            ("5-0", 1, &b"hi"[..])
        );
    }

    #[test]
    fn carried_fields_win() {
        let f = [
            bulk(b"j"),
            bulk(b"1-1"),
            bulk(b"a"),
            bulk(b"3"),
            bulk(b"p"),
            bulk(b""),
            bulk(b"x"),
            bulk(b"y"),
        ];
        let j = decode("9-0".into(), &f).unwrap();
        assert_eq!(
            (j.entry.as_str(), j.job.as_str(), j.attempt),
            ("9-0", "1-1", 3)
        );
        assert!(j.payload.is_empty());
    }

    #[test]
    fn malformed_entries_say_why() {
        let cases: [(&[Value], &str); 5] = [
            (&[bulk(b"x"), bulk(b"1")], "no field \"p\""),
            (
                &[bulk(b"p"), bulk(b"1"), bulk(b"a"), bulk(b"0")],
                "\"a\" is not a positive",
            ),
            (
                &[bulk(b"p"), bulk(b"1"), bulk(b"a"), bulk(b"banana")],
                "banana",
            ),
            (
                &[bulk(b"p"), bulk(b"1"), bulk(b"j"), bulk(b"a:b")],
                "\"j\" is not a job id",
            ),
            (&[bulk(b"p")], "odd number"),
        ];
        for (fields, want) in cases {
            let m = decode("7-0".into(), fields).unwrap_err();
            assert!(m.reason.contains(want), "{} lacks {want}", m.reason);
            assert!(m.reason.contains("7-0"), "{}", m.reason);
            assert_eq!(m.entry, "7-0");
        }
        let m = decode("7-0".into(), &[bulk(b"x"), bulk(b"1")]).unwrap_err();
        assert_eq!(m.dump, b"x=1\n");
    }

    proptest! {
        #[test]
        fn any_fields_decode_or_refuse_without_panicking(
            items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..9)
        ) {
            let fields: Vec<Value> = items.iter().map(|b| bulk(b)).collect();
            match decode("1-0".into(), &fields) {
                Ok(j) => {
                    prop_assert!(j.attempt >= 1);
                    prop_assert!(valid_job_id(&j.job));
                }
                Err(m) => prop_assert!(!m.reason.is_empty()),
            }
        }

        #[test]
        fn payload_and_attempt_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..64), a in 1u32.., n in 0u64..1000) {
            let job = format!("{n}-{n}");
            let f = [bulk(b"p"), bulk(&payload), bulk(a.to_string().as_bytes()), bulk(b"ignored"), bulk(b"a"), bulk(a.to_string().as_bytes()), bulk(b"j"), bulk(job.as_bytes())];
            let j = decode("2-0".into(), &f).unwrap();
            prop_assert_eq!(j.payload, payload);
            prop_assert_eq!(j.attempt, a);
            prop_assert_eq!(j.job, job);
        }
    }
}
