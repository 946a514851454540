//! Fetch + ack of 1000 jobs in batches of 16, three ways: `ack` each,
//! `ack_batch` per batch, `ack_deferred` each (then one `flush`); prints
//! jobs/s (median of interleaved rounds) and the commands Redis ran per job
//! (`INFO commandstats` deltas: those the client sent, and all of them,
//! counting the ones inside scripts).
//!
//! ```text
//! cargo run --release -p prefork-redis --example ack_modes -- [URL] [ROUNDS]
//! ```
//!
//! The URL defaults to `PREFORK_REDIS_URL`. Use a server nobody else is
//! using: the command counts are server-wide.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prefork_broker::Broker;
use prefork_redis::{Options, Redis};

const JOBS: usize = 1000;
const BATCH: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Each,
    Batch,
    Deferred,
}

/// `cmdstat_NAME` → calls, from `INFO commandstats`.
fn commandstats(c: &mut redis::Connection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// One round: publishes the jobs, then times fetch + ack of all of them.
/// Returns (jobs/s, client commands a job, all commands a job).
fn round(redis: &Redis, admin: &mut redis::Connection, mode: Mode, n: usize) -> (f64, f64, f64) {
    let queue = format!("ack-modes-{mode:?}-{n}-{}", std::process::id());
    let mut q = redis.queue(&queue).unwrap();
    let payloads: Vec<Vec<u8>> = (0..JOBS).map(|i| format!("job-{i}").into_bytes()).collect();
    for chunk in payloads.chunks(100) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        q.publish_batch(&refs, Duration::ZERO).unwrap();
    }
    let before = commandstats(admin);
    let t = Instant::now();
    let mut done = 0;
    while done < JOBS {
        let batch = q.fetch(BATCH, Duration::from_secs(1)).unwrap();
        done += batch.len();
        match mode {
            Mode::Each => {
                for d in batch {
                    q.ack(d).unwrap();
                }
            }
            Mode::Batch => assert!(q.ack_batch(batch).is_empty()),
            Mode::Deferred => {
                for d in batch {
                    q.ack_deferred(d).unwrap();
                }
            }
        }
    }
    q.flush().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let after = commandstats(admin);
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    let all: u64 = after.keys().map(|k| delta(k)).sum::<u64>() - delta("info");
    let client = delta("evalsha") + delta("xreadgroup");
    let _: redis::Value = redis::cmd("DEL").arg(q.stream_key()).query(admin).unwrap();
    (
        JOBS as f64 / secs,
        client as f64 / JOBS as f64,
        all as f64 / JOBS as f64,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .or_else(|| std::env::var("PREFORK_REDIS_URL").ok())
        .expect("a redis URL (argument or PREFORK_REDIS_URL)");
    let rounds: usize = args.next().map_or(7, |r| r.parse().unwrap());
    let redis = Redis::with_options(&url, Options::default().prefix("prefork-bench")).unwrap();
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let modes = [Mode::Each, Mode::Batch, Mode::Deferred];
    let mut results: BTreeMap<usize, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for n in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            results
                .entry(i)
                .or_default()
                .push(round(&redis, &mut admin, *mode, n));
        }
    }
    let each = median(results[&0].iter().map(|r| r.0).collect());
    println!("{JOBS} jobs, fetch({BATCH}), median of {rounds} interleaved rounds");
    println!("| ack | jobs/s | vs ack each | client commands / job | all commands / job |");
    println!("|---|---|---|---|---|");
    for (i, mode) in modes.iter().enumerate() {
        let r = &results[&i];
        let rate = median(r.iter().map(|x| x.0).collect());
        println!(
            "| {mode:?} | {rate:.0} | {:.2}x | {:.3} | {:.3} |",
            rate / each,
            median(r.iter().map(|x| x.1).collect()),
            median(r.iter().map(|x| x.2).collect()),
        );
    }
}
