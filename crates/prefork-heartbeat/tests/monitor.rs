//! The monitor under a fake clock: scenarios a master relies on, and a
//! property test against a naive model.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prefork_heartbeat::{Clock, ManualClock, Monitor};
use proptest::prelude::*;

const S: Duration = Duration::from_secs(1);

#[test]
fn a_worker_that_keeps_beating_is_never_late() {
    let clock = ManualClock::new();
    let mut m = Monitor::new(clock.clone());
    m.insert("w", 10 * S);
    for _ in 0..100 {
        clock.advance(9 * S);
        assert!(m.late().is_empty());
        assert!(m.beat(&"w"));
    }
    clock.advance(10 * S);
    assert_eq!(m.late(), vec!["w"]);
    assert_eq!(m.overdue(&"w"), Some(Duration::ZERO));
}

#[test]
fn late_workers_come_most_overdue_first() {
    let clock = ManualClock::new();
    let mut m = Monitor::new(clock.clone());
    m.insert(1, 30 * S);
    m.insert(2, 10 * S);
    m.insert(3, 20 * S);
    m.insert(4, 60 * S);
    clock.advance(35 * S);
    assert_eq!(m.late(), vec![2, 3, 1]);
    assert_eq!(m.overdue(&2), Some(25 * S));
    assert_eq!(m.overdue(&4), None);
    assert_eq!(m.until_next(), Some(Duration::ZERO));
}

#[test]
fn next_deadline_tells_the_master_how_long_to_sleep() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let mut m = Monitor::new(clock.clone());
    assert_eq!(m.next_deadline(), None);
    assert_eq!(m.until_next(), None);
    m.insert("a", 5 * S);
    m.insert("b", 3 * S);
    assert_eq!(m.next_deadline(), Some(t0 + 3 * S));
    clock.advance(2 * S);
    assert_eq!(m.until_next(), Some(S));
    m.beat(&"b"); // b now due at t0+5s, a too
    assert_eq!(m.next_deadline(), Some(t0 + 5 * S));
    m.remove(&"a");
    m.remove(&"b");
    assert!(m.is_empty());
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn a_longer_timeout_while_busy_counts_from_the_last_beat() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let mut m = Monitor::new(clock.clone());
    m.insert(7, 10 * S);
    clock.advance(4 * S);
    m.beat(&7);
    clock.advance(3 * S);
    assert!(m.set_timeout(&7, 60 * S)); // starts a long job
    assert_eq!(m.deadline(&7), Some(t0 + 64 * S));
    assert_eq!(m.timeout(&7), Some(60 * S));
    clock.advance(50 * S);
    assert!(m.late().is_empty());
    assert!(m.set_timeout(&7, 10 * S)); // back to idle: already past due
    assert_eq!(m.late(), vec![7]);
    assert_eq!(m.overdue(&7), Some(43 * S));
}

#[test]
fn unknown_keys_are_refused() {
    let mut m: Monitor<u32, ManualClock> = Monitor::new(ManualClock::new());
    assert!(!m.beat(&1));
    assert!(!m.set_timeout(&1, S));
    assert!(!m.remove(&1));
    assert_eq!(m.overdue(&1), None);
    assert!(!m.contains(&1));
}

#[test]
fn inserting_again_replaces() {
    let clock = ManualClock::new();
    let mut m = Monitor::new(clock.clone());
    m.insert(1, S);
    clock.advance(5 * S);
    m.insert(1, 10 * S);
    assert_eq!(m.len(), 1);
    assert!(m.late().is_empty());
    assert_eq!(m.until_next(), Some(10 * S));
}

#[test]
fn a_thousand_workers() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let mut m = Monitor::new(clock.clone());
    for w in 0..1000_u32 {
        m.insert(w, Duration::from_millis(1000 + u64::from(w)));
    }
    clock.advance(Duration::from_millis(1500));
    // All beat but the multiples of 100.
    for w in (0..1000).filter(|w| w % 100 != 0) {
        m.beat(&w);
    }
    let late = m.late();
    // Due at 1000..=1500 ms; 500 is due right now, which counts as late.
    assert_eq!(late, vec![0, 100, 200, 300, 400, 500]);
    assert_eq!(m.next_deadline(), Some(t0 + Duration::from_millis(1000)));
    for w in late {
        m.remove(&w);
    }
    assert_eq!(m.next_deadline(), Some(t0 + Duration::from_millis(1600)));
    assert_eq!(m.len(), 994);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16),
    Beat(u8),
    SetTimeout(u8, u16),
    Remove(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0_u8..8, 0_u16..100).prop_map(|(k, t)| Op::Insert(k, t)),
        (0_u8..8).prop_map(Op::Beat),
        (0_u8..8, 0_u16..100).prop_map(|(k, t)| Op::SetTimeout(k, t)),
        (0_u8..8).prop_map(Op::Remove),
        (0_u16..60).prop_map(Op::Advance),
    ]
}

/// The obvious implementation: (last beat, timeout) per key, scanned.
#[derive(Default)]
struct Model {
    entries: HashMap<u8, (Instant, Duration, u64)>,
    seq: u64,
}

proptest! {
    #[test]
    fn monitor_agrees_with_a_naive_model(ops in proptest::collection::vec(op(), 1..80)) {
        let clock = ManualClock::new();
        let mut m = Monitor::new(clock.clone());
        let mut model = Model::default();
        let ms = |x: u16| Duration::from_millis(u64::from(x));
        for op in ops {
            let now = clock.now();
            match op {
                Op::Insert(k, t) => {
                    m.insert(k, ms(t));
                    model.seq += 1;
                    model.entries.insert(k, (now, ms(t), model.seq));
                }
                Op::Beat(k) => {
                    let known = model.entries.contains_key(&k);
                    prop_assert_eq!(m.beat(&k), known);
                    if let Some(e) = model.entries.get_mut(&k) {
                        model.seq += 1;
                        *e = (now, e.1, model.seq);
                    }
                }
                Op::SetTimeout(k, t) => {
                    let known = model.entries.contains_key(&k);
                    prop_assert_eq!(m.set_timeout(&k, ms(t)), known);
                    if let Some(e) = model.entries.get_mut(&k) {
                        model.seq += 1;
                        *e = (e.0, ms(t), model.seq);
                    }
                }
                Op::Remove(k) => {
                    prop_assert_eq!(m.remove(&k), model.entries.remove(&k).is_some());
                }
                Op::Advance(d) => clock.advance(ms(d)),
            }
            let now = clock.now();
            let mut due: Vec<(Instant, u64, u8)> = model
                .entries
                .iter()
                .map(|(&k, &(beat, t, seq))| (beat + t, seq, k))
                .collect();
            due.sort();
            let late: Vec<u8> = due.iter().filter(|d| d.0 <= now).map(|d| d.2).collect();
            prop_assert_eq!(m.late(), late);
            prop_assert_eq!(m.next_deadline(), due.first().map(|d| d.0));
            prop_assert_eq!(m.until_next(), due.first().map(|d| d.0.saturating_duration_since(now)));
            prop_assert_eq!(m.len(), model.entries.len());
            for &(deadline, _, k) in &due {
                let expect = (deadline <= now).then(|| now - deadline);
                prop_assert_eq!(m.overdue(&k), expect);
            }
        }
    }
}
