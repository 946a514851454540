//! The offset tracker: which offsets of each partition this handle holds
//! unfinished, and the one offset it may commit.
//!
//! Kafka remembers one number per partition and consumer group: the offset
//! of the next message to hand out after a restart. Several workers (or a
//! feeder's several jobs) finish the messages of one partition out of
//! order, so committing "the last offset acked" would skip every message
//! below it that is still running: a crash would lose them. The tracker
//! commits only the lowest offset not yet finished (or one past the last
//! received when all are finished), so a crash at any moment redelivers
//! every unfinished message, and at most re-runs finished ones above it.
//!
//! Offsets need not be contiguous (compacted topics, transaction markers
//! leave gaps): the tracker knows only the offsets it was handed, in the
//! order the partition hands them out (increasing).

use std::collections::{BTreeMap, BTreeSet};

/// The unfinished offsets of one partition since it was assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PartitionTracker {
    /// Received and not finished yet (held by a worker, buffered, or
    /// delayed).
    open: BTreeSet<i64>,
    /// One past the highest offset received; `None` before the first.
    next: Option<i64>,
    /// The last offset committed (or known committed); `None` before the
    /// first commit.
    committed: Option<i64>,
}

/// What [`PartitionTracker::received`] says about an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// A new offset, now held open.
    New,
    /// An offset at or below one already received (a seek back or a
    /// refetch): not handed out again.
    Seen,
}

impl PartitionTracker {
    /// Records that the message at `offset` was fetched: it is open until
    /// [`finished`](PartitionTracker::finished).
    pub(crate) fn received(&mut self, offset: i64) -> Received {
        if self.next.is_some_and(|n| offset < n) {
            return Received::Seen;
        }
        self.open.insert(offset);
        self.next = Some(offset + 1);
        Received::New
    }

    /// Records that the message at `offset` is settled; `false` when it
    /// was not open (settled already, or never received here).
    pub(crate) fn finished(&mut self, offset: i64) -> bool {
        self.open.remove(&offset)
    }

    /// Holds `offset` open again (a settle that could not be committed).
    pub(crate) fn reopen(&mut self, offset: i64) {
        if self.next.is_some_and(|n| offset < n) {
            self.open.insert(offset);
        }
    }

    /// Whether `offset` is held open.
    pub(crate) fn is_open(&self, offset: i64) -> bool {
        self.open.contains(&offset)
    }

    /// The offset to commit (the next message a restarted group must hand
    /// out): the lowest open offset, or one past the highest received when
    /// none is open; `None` before anything was received.
    pub(crate) fn safe_point(&self) -> Option<i64> {
        self.open.first().copied().or(self.next)
    }

    /// The offset to commit when it is ahead of the last commit.
    pub(crate) fn to_commit(&self) -> Option<i64> {
        self.safe_point()
            .filter(|p| self.committed.is_none_or(|c| *p > c))
    }

    /// Records a successful commit of `offset`.
    pub(crate) fn committed(&mut self, offset: i64) {
        if self.committed.is_none_or(|c| offset > c) {
            self.committed = Some(offset);
        }
    }

    /// One past the highest offset received since the partition was
    /// assigned; `None` before the first.
    pub(crate) fn next(&self) -> Option<i64> {
        self.next
    }

    /// How many offsets are open.
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }
}

/// A topic and partition.
pub(crate) type Tp = (String, i32);

/// The trackers of every partition this handle is assigned.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    /// Per partition.
    parts: BTreeMap<Tp, PartitionTracker>,
}

impl Tracker {
    /// The tracker of `tp`, created on first use.
    pub(crate) fn part(&mut self, tp: &Tp) -> &mut PartitionTracker {
        self.parts.entry(tp.clone()).or_default()
    }

    /// The tracker of `tp`, if the partition is tracked.
    pub(crate) fn get(&self, tp: &Tp) -> Option<&PartitionTracker> {
        self.parts.get(tp)
    }

    /// Forgets `tp` (its partition was taken away): settling its open
    /// offsets later reports the claim lost.
    pub(crate) fn remove(&mut self, tp: &Tp) -> Option<PartitionTracker> {
        self.parts.remove(tp)
    }

    /// Whether no partition is tracked (none assigned).
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Every partition with an offset to commit, and that offset.
    pub(crate) fn commits(&self) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| p.to_commit().map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Every partition's safe offset, committed already or not.
    pub(crate) fn commits_all(&self) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| p.safe_point().map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Records successful commits.
    pub(crate) fn committed(&mut self, done: &[(Tp, i64)]) {
        for (tp, o) in done {
            if let Some(p) = self.parts.get_mut(tp) {
                p.committed(*o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_stop_at_the_lowest_unfinished_offset() {
        let mut p = PartitionTracker::default();
        assert_eq!(p.safe_point(), None);
        for o in [10, 11, 12, 15] {
            assert_eq!(p.received(o), Received::New);
        }
        assert_eq!(p.received(11), Received::Seen);
        assert!(p.finished(11));
        assert!(p.finished(12));
        assert_eq!(p.to_commit(), Some(10));
        assert!(p.finished(10));
        assert_eq!(p.to_commit(), Some(15), "gaps (13, 14) are skipped");
        p.committed(15);
        assert_eq!(p.to_commit(), None);
        assert!(p.finished(15));
        assert!(!p.finished(15), "finished twice");
        assert_eq!(p.to_commit(), Some(16));
    }

    /// One step of a simulated consumer.
    #[derive(Debug, Clone)]
    enum Step {
        /// The partition hands out its next message, `gap` offsets on.
        Receive { gap: i64 },
        /// The `i`-th open message (modulo) is finished.
        Finish { i: usize },
        /// Whatever may be committed is committed.
        Commit,
        /// The process dies: the group restarts from the last commit.
        Crash,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1i64..4).prop_map(|gap| Step::Receive { gap }),
            3 => any::<usize>().prop_map(|i| Step::Finish { i }),
            2 => Just(Step::Commit),
            1 => Just(Step::Crash),
        ]
    }

    proptest! {
        /// Whatever the order messages are finished in and whenever the
        /// holder crashes, a restart from the committed offset redelivers
        /// every message that was not finished: none is ever skipped.
        #[test]
        fn a_crash_never_skips_an_unfinished_message(steps in prop::collection::vec(step(), 1..200)) {
            // The partition's log: offsets with gaps.
            let mut log: Vec<i64> = Vec::new();
            let mut last = -1;
            // What the simulated group does.
            let mut committed: Option<i64> = None;
            let mut tracker = PartitionTracker::default();
            let mut position = 0usize; // index in the log of the next message to hand out
            let mut finished: BTreeSet<i64> = BTreeSet::new();
            for s in steps {
                match s {
                    Step::Receive { gap } => {
                        if position == log.len() {
                            last += gap;
                            log.push(last);
                        }
                        let o = log[position];
                        position += 1;
                        // A message finished before a crash may come again:
                        // it is then new to the fresh tracker.
                        prop_assert_eq!(tracker.received(o), Received::New);
                        finished.remove(&o);
                    }
                    Step::Finish { i } => {
                        let open: Vec<i64> = tracker.open.iter().copied().collect();
                        if !open.is_empty() {
                            let o = open[i % open.len()];
                            prop_assert!(tracker.finished(o));
                            finished.insert(o);
                        }
                    }
                    Step::Commit => {
                        if let Some(o) = tracker.to_commit() {
                            prop_assert!(committed.is_none_or(|c| o >= c), "commits never go backward");
                            committed = Some(o);
                            tracker.committed(o);
                        }
                    }
                    Step::Crash => {
                        // Every received, unfinished message must be at or
                        // above the committed offset, so it comes again.
                        for o in &log[..position] {
                            if !finished.contains(o) {
                                prop_assert!(committed.is_none_or(|c| *o >= c),
                                    "offset {} unfinished but committed past ({:?})", o, committed);
                            }
                        }
                        tracker = PartitionTracker::default();
                        position = committed.map_or(0, |c| log.iter().position(|o| *o >= c).unwrap_or(log.len()));
                        // Whatever comes again must run again.
                        for o in &log[position..] {
                            finished.remove(o);
                        }
                    }
                }
                // The invariant at every step, not only at crashes.
                if let Some(c) = tracker.safe_point() {
                    for o in &log[..position] {
                        if !finished.contains(o) {
                            prop_assert!(*o >= c);
                        }
                    }
                }
            }
        }
    }
}
