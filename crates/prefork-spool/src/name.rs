//! File names: where the state of a job lives (the content never changes).
//!
//! | directory | name | meaning |
//! |---|---|---|
//! | `tmp/` | `{id}` | being written; invisible to consumers |
//! | `ready/` | `{due:016x}.{id}.{attempt}` | visible once the wall clock reaches `due` (µs since the epoch) |
//! | `claimed/` | `{id}.{attempt}.{expiry:016x}.{pid}.{start}.{host:016x}` | held by process `pid` (started at tick `start`, on host `host`) until `expiry` |
//! | `dead/` | `{id}.{attempt}` (+ `{id}.reason`) | dead-lettered |
//!
//! A job id is `{published:016x}-{pid:08x}-{seq:08x}`: publish time in µs,
//! publisher pid, and a per-process counter. Fixed-width lowercase hex
//! makes names sort by time; `ready/` sorts by due time, then id.
//!
//! Claims written before claims recorded their holder's start time and host
//! read `{id}.{attempt}.{expiry:016x}.{pid}`; they are still parsed (their
//! holder's `start` and `host` are 0, unknown) and only their lease decides
//! when they come back.

use std::fmt;

use crate::holder::Holder;

/// A job's id: unique across processes, sorts by publish time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct JobId {
    pub(crate) published_us: u64,
    pub(crate) pid: u32,
    pub(crate) seq: u32,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x}-{:08x}-{:08x}",
            self.published_us, self.pid, self.seq
        )
    }
}

impl JobId {
    /// Parses the text form written by `Display`.
    pub(crate) fn parse(s: &str) -> Option<JobId> {
        let b = s.as_bytes();
        if b.len() != 34 || b[16] != b'-' || b[25] != b'-' {
            return None;
        }
        Some(JobId {
            published_us: hex_u64(&s[..16])?,
            pid: u32::try_from(hex_u64(&s[17..25])?).ok()?,
            seq: u32::try_from(hex_u64(&s[26..])?).ok()?,
        })
    }
}

/// A name in `ready/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    pub(crate) due_us: u64,
    pub(crate) id: JobId,
    pub(crate) attempt: u32,
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{}.{}", self.due_us, self.id, self.attempt)
    }
}

impl Ready {
    pub(crate) fn parse(s: &str) -> Option<Ready> {
        let mut parts = s.split('.');
        let due = parts.next()?;
        let id = JobId::parse(parts.next()?)?;
        let attempt = attempt(parts.next()?)?;
        if parts.next().is_some() || due.len() != 16 {
            return None;
        }
        Some(Ready {
            due_us: hex_u64(due)?,
            id,
            attempt,
        })
    }
}

/// A name in `claimed/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claimed {
    pub(crate) id: JobId,
    pub(crate) attempt: u32,
    pub(crate) expiry_us: u64,
    pub(crate) holder: Holder,
}

impl fmt::Display for Claimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Holder { pid, start, host } = self.holder;
        write!(
            f,
            "{}.{}.{:016x}.{pid}",
            self.id, self.attempt, self.expiry_us
        )?;
        if start != 0 || host != 0 {
            write!(f, ".{start}.{host:016x}")?;
        }
        Ok(())
    }
}

impl Claimed {
    pub(crate) fn parse(s: &str) -> Option<Claimed> {
        let mut parts = s.split('.');
        let id = JobId::parse(parts.next()?)?;
        let attempt = attempt(parts.next()?)?;
        let expiry = parts.next()?;
        let pid = u32::try_from(decimal(parts.next()?)?).ok()?;
        let (start, host) = match (parts.next(), parts.next()) {
            (None, _) => (0, 0),
            (Some(start), Some(host)) if host.len() == 16 => {
                match (decimal(start)?, hex_u64(host)?) {
                    (0, 0) => return None, // written in the short form
                    recorded => recorded,
                }
            }
            _ => return None,
        };
        if parts.next().is_some() || expiry.len() != 16 {
            return None;
        }
        Some(Claimed {
            id,
            attempt,
            expiry_us: hex_u64(expiry)?,
            holder: Holder { pid, start, host },
        })
    }
}

/// A name in `dead/`: the job itself, or the file holding its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dead {
    Job { id: JobId, attempt: u32 },
    Reason { id: JobId },
}

impl fmt::Display for Dead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dead::Job { id, attempt } => write!(f, "{id}.{attempt}"),
            Dead::Reason { id } => write!(f, "{id}.reason"),
        }
    }
}

impl Dead {
    pub(crate) fn parse(s: &str) -> Option<Dead> {
        let (id, rest) = s.split_once('.')?;
        let id = JobId::parse(id)?;
        if rest == "reason" {
            return Some(Dead::Reason { id });
        }
        Some(Dead::Job {
            id,
            attempt: attempt(rest)?,
        })
    }
}

/// Lowercase hex of exactly the given text, no sign, no prefix.
fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Canonical decimal: digits only, no leading zero (except "0").
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// An attempt number: canonical decimal, at least 1.
fn attempt(s: &str) -> Option<u32> {
    u32::try_from(decimal(s)?).ok().filter(|a| *a >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job_id() -> impl Strategy<Value = JobId> {
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(published_us, pid, seq)| JobId {
            published_us,
            pid,
            seq,
        })
    }

    proptest! {
        #[test]
        fn ready_round_trips(due_us in any::<u64>(), id in job_id(), attempt in 1u32..) {
            let r = Ready { due_us, id, attempt };
            prop_assert_eq!(Ready::parse(&r.to_string()), Some(r));
        }

        #[test]
        fn claimed_round_trips(id in job_id(), attempt in 1u32.., expiry_us in any::<u64>(), pid in any::<u32>(), start in any::<u64>(), host in any::<u64>()) {
            let c = Claimed { id, attempt, expiry_us, holder: Holder { pid, start, host } };
            prop_assert_eq!(Claimed::parse(&c.to_string()), Some(c));
        }

        #[test]
        fn dead_round_trips(id in job_id(), attempt in 1u32..) {
            for d in [Dead::Job { id, attempt }, Dead::Reason { id }] {
                prop_assert_eq!(Dead::parse(&d.to_string()), Some(d));
            }
        }

        #[test]
        fn ready_names_sort_by_due_then_id(a in (any::<u64>(), job_id()), b in (any::<u64>(), job_id())) {
            let ra = Ready { due_us: a.0, id: a.1, attempt: 1 }.to_string();
            let rb = Ready { due_us: b.0, id: b.1, attempt: 1 }.to_string();
            prop_assert_eq!(ra.cmp(&rb), a.cmp(&b));
        }

        #[test]
        fn parsers_never_panic_and_only_accept_canonical_names(s in "[0-9a-fA-F.x+ -]{0,80}") {
            if let Some(r) = Ready::parse(&s) { prop_assert_eq!(r.to_string(), s.clone()); }
            if let Some(c) = Claimed::parse(&s) { prop_assert_eq!(c.to_string(), s.clone()); }
            if let Some(d) = Dead::parse(&s) { prop_assert_eq!(d.to_string(), s.clone()); }
        }
    }

    #[test]
    fn garbage_is_refused() {
        for s in [
            "",
            ".",
            "..",
            "x",
            "0.0.0",
            "00000000000000000.x.1",
            "+000000000000001",
        ] {
            assert_eq!(Ready::parse(s), None, "{s:?}");
            assert_eq!(Claimed::parse(s), None, "{s:?}");
            assert_eq!(Dead::parse(s), None, "{s:?}");
        }
        let id = "0000000000000001-00000002-00000003";
        assert!(Ready::parse(&format!("0000000000000000.{id}.1")).is_some());
        assert_eq!(
            Ready::parse(&format!("0000000000000000.{id}.0")),
            None,
            "attempt 0"
        );
        assert_eq!(
            Ready::parse(&format!("0000000000000000.{id}.01")),
            None,
            "leading zero"
        );
        assert_eq!(
            Ready::parse(&format!("000000000000000A.{id}.1")),
            None,
            "uppercase"
        );
        assert_eq!(
            Claimed::parse(&format!("{id}.1.0000000000000000.12.x")),
            None
        );
        let legacy = Claimed::parse(&format!("{id}.1.0000000000000000.12")).expect("short form");
        assert_eq!((legacy.holder.start, legacy.holder.host), (0, 0));
        assert!(
            Claimed::parse(&format!("{id}.1.0000000000000000.12.7.000000000000abcd")).is_some()
        );
        assert_eq!(
            Claimed::parse(&format!("{id}.1.0000000000000000.12.0.0000000000000000")),
            None,
            "unrecorded holder in the long form"
        );
    }
}
