//! Figures for the batch methods of the spool, as same-run ratios: 1,000
//! jobs published one by one vs with one `publish_batch`, and 1,000 jobs
//! drained with `fetch(64)` + `ack` vs `fetch(64)` + `ack_deferred` +
//! `flush`, with and without fsync. The arms run interleaved (one of each
//! per round) and the medians are compared, so a change of load on a shared
//! machine hits both alike.
//!
//! `cargo run --release -p prefork-spool --example batch_figures [ROUNDS]`

use std::time::{Duration, Instant};

use prefork_broker::Broker;
use prefork_spool::{Durability, Options, Queue, Spool};

const JOBS: usize = 1000;
const PAYLOAD: &[u8] = &[b'x'; 64];

fn queue(root: &std::path::Path, durability: Durability) -> Queue {
    Spool::with_options(root, Options::default().durability(durability))
        .expect("spool")
        .queue(&format!("{durability:?}"))
        .expect("queue")
}

/// Fetches and acks until the queue is empty (untimed clean-up).
fn drain(q: &mut Queue) {
    loop {
        let batch = q.fetch(256, Duration::ZERO).expect("fetch");
        if batch.is_empty() {
            return;
        }
        assert!(q.ack_batch(batch).is_empty());
    }
}

fn publish_one_by_one(q: &mut Queue) {
    for _ in 0..JOBS {
        q.publish(PAYLOAD, Duration::ZERO).expect("publish");
    }
}

fn publish_batch(q: &mut Queue) {
    q.publish_batch(&[PAYLOAD; JOBS], Duration::ZERO)
        .expect("publish_batch");
}

fn consume(q: &mut Queue, deferred: bool) {
    let mut n = 0;
    while n < JOBS {
        for d in q.fetch(64, Duration::ZERO).expect("fetch") {
            n += 1;
            if deferred {
                q.ack_deferred(d).expect("ack_deferred");
            } else {
                q.ack(d).expect("ack");
            }
        }
    }
    q.flush().expect("flush");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn jobs_per_s(d: Duration) -> f64 {
    JOBS as f64 / d.as_secs_f64()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |r| r.parse().expect("ROUNDS"));
    let root = std::env::temp_dir().join(format!("spool-batch-figures-{}", std::process::id()));
    println!(
        "{JOBS} jobs of {} bytes, median of {rounds} interleaved rounds",
        PAYLOAD.len()
    );
    println!("| durability | arm | jobs/s | ratio |");
    println!("|---|---|---|---|");
    for durability in [Durability::Buffered, Durability::Fsync] {
        let mut q = queue(&root, durability);
        let (mut single, mut batch, mut acked, mut deferred) = (vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            // Each pair of arms runs in both orders, alternately.
            for first in [round % 2 == 0, round % 2 == 1] {
                if first {
                    let t = Instant::now();
                    publish_one_by_one(&mut q);
                    single.push(t.elapsed());
                } else {
                    let t = Instant::now();
                    publish_batch(&mut q);
                    batch.push(t.elapsed());
                }
                drain(&mut q);
            }
            for plain in [round % 2 == 0, round % 2 == 1] {
                publish_batch(&mut q);
                let t = Instant::now();
                consume(&mut q, !plain);
                if plain { &mut acked } else { &mut deferred }.push(t.elapsed());
            }
        }
        let (single, batch) = (median(single), median(batch));
        let (acked, deferred) = (median(acked), median(deferred));
        let d = format!("{durability:?}");
        for (arm, t, base) in [
            ("publish x1000", single, single),
            ("publish_batch(1000)", batch, single),
            ("fetch(64) + ack", acked, acked),
            ("fetch(64) + ack_deferred + flush", deferred, acked),
        ] {
            println!(
                "| {d} | {arm} | {:.0} | {:.2}x |",
                jobs_per_s(t),
                base.as_secs_f64() / t.as_secs_f64()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
