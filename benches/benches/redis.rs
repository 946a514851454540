//! One no-op job through prefork-redis (publish + fetch + ack) against the
//! raw commands any Redis Streams consumer needs for it (`XADD`,
//! `XREADGROUP`, `XACK`), sent one at a time with the same `redis` client to
//! the same server in the same run. Quote the ratios.
//!
//! Also measured: batches of 16 (16 publishes, one `fetch(16)`, one
//! `ack_batch` of 16) against 16 `XADD`s, one `XREADGROUP COUNT 16` and one
//! `XACK` of 16 ids, and the same with the 16 jobs published in one
//! pipelined `publish_batch`.
//!
//! Needs a server: `PREFORK_REDIS_URL` (e.g. from `cargo xtask brokers
//! start`); without it the bench prints a skip line and exits 0. After
//! criterion's groups it also runs the arms interleaved (one of each per
//! round, so a change of load hits all alike) and prints medians and ratios.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use prefork_benches::PAYLOAD;
use prefork_benches::interleaved;
use prefork_benches::raw_redis::Raw;
use prefork_broker::Broker;
use prefork_redis::{Options, Redis, RedisQueue};

fn adapter(q: &mut RedisQueue, n: usize) {
    for _ in 0..n {
        q.publish(PAYLOAD, Duration::ZERO).unwrap();
    }
    fetch_ack(q, n);
}

/// The batch as a producer that has many jobs at once would publish it:
/// one pipelined round trip.
fn adapter_pipelined(q: &mut RedisQueue, n: usize) {
    let payloads = vec![PAYLOAD; n];
    q.publish_batch(&payloads, Duration::ZERO).unwrap();
    fetch_ack(q, n);
}

fn fetch_ack(q: &mut RedisQueue, n: usize) {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.extend(q.fetch(n - got.len(), Duration::from_secs(1)).unwrap());
    }
    black_box(&got);
    if n == 1 {
        q.ack(got.pop().unwrap()).unwrap();
    } else {
        let failed = q.ack_batch(got);
        assert!(failed.is_empty(), "{failed:?}");
    }
}

fn main() {
    let Ok(url) = std::env::var("PREFORK_REDIS_URL") else {
        println!("redis bench: SKIPPED: PREFORK_REDIS_URL is not set (cargo xtask brokers start)");
        return;
    };
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let redis = Redis::with_options(&url, Options::default().prefix("prefork-bench")).unwrap();
    let name = |tag: &str| format!("{tag}-{}", std::process::id());
    let mut q1 = redis.queue(&name("one")).unwrap();
    let mut q16 = redis.queue(&name("batch")).unwrap();
    let mut q16p = redis.queue(&name("pipelined")).unwrap();
    let mut raw1 = Raw::new(&url, "one");
    let mut raw16 = Raw::new(&url, "batch");

    let mut g = c.benchmark_group("redis_job");
    g.bench_function("baseline_raw_xadd_xreadgroup_xack", |b| {
        b.iter(|| raw1.publish_fetch_ack(1))
    });
    g.bench_function("redis_publish_fetch_ack", |b| {
        b.iter(|| adapter(&mut q1, 1))
    });
    g.finish();

    let mut g = c.benchmark_group("redis_job_batch16");
    g.bench_function("baseline_raw_xadd16_xreadgroup16_xack16", |b| {
        b.iter(|| raw16.publish_fetch_ack(16))
    });
    g.bench_function("redis_publish16_fetch16_ack_batch16", |b| {
        b.iter(|| adapter(&mut q16, 16))
    });
    g.bench_function("redis_publish_batch16_fetch16_ack_batch16", |b| {
        b.iter(|| adapter_pipelined(&mut q16p, 16))
    });
    g.finish();

    interleaved(
        "one job",
        &mut [
            ("raw XADD+XREADGROUP+XACK", 1, &mut || {
                raw1.publish_fetch_ack(1)
            }),
            ("prefork-redis publish+fetch+ack", 1, &mut || {
                adapter(&mut q1, 1)
            }),
        ],
        2000,
    );
    interleaved(
        "batch of 16, per job",
        &mut [
            ("raw 16 XADD+XREADGROUP+XACK", 16, &mut || {
                raw16.publish_fetch_ack(16)
            }),
            ("prefork-redis 16 publish+fetch+ack", 16, &mut || {
                adapter(&mut q16, 16)
            }),
            ("prefork-redis publish_batch16+fetch+ack", 16, &mut || {
                adapter_pipelined(&mut q16p, 16)
            }),
        ],
        300,
    );
    raw1.cleanup();
    raw16.cleanup();
    c.final_summary();
}
