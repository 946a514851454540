//! No-op fetch/ack throughput of the adapter beside a raw amiquip consumer
//! doing the same work on the same server, in the same run (the figures in
//! the README).
//!
//! ```text
//! cargo run --release -p prefork-rabbitmq --example rabbitmq_figures -- [JOBS] [ROUNDS]
//! ```
//!
//! Needs `PREFORK_RABBITMQ_URL` (`cargo xtask brokers start rabbitmq`).
//! Each round publishes JOBS jobs to a fresh quorum queue and drains it in
//! one process, three ways, interleaved: the adapter with `fetch(64)` and
//! one `ack_batch` per batch (what the dispatch feeder does), the adapter
//! with `fetch(64)` and one `ack` per job (what a pull worker does), and a
//! raw amiquip consumer with prefetch 64 acking each delivery (the usual
//! AMQP consumer loop, acks not waited for). Prints jobs/s per round and
//! the medians.

use std::time::{Duration, Instant};

use amiquip::{Connection, ConsumerMessage, ConsumerOptions};
use prefork_broker::Broker;
use prefork_rabbitmq::{Config, RabbitMq};

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(20_000, |a| a.parse().expect("JOBS"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let url = std::env::var(prefork_rabbitmq::URL_ENV).expect("PREFORK_RABBITMQ_URL");
    let config = Config::from_url(&url).expect("URL");
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for (way, rate) in rates.iter_mut().enumerate() {
            let queue = format!("figures-{}-{round}-{way}", std::process::id());
            let mut b = fill(&config, &queue, jobs);
            let t = Instant::now();
            match way {
                0 => drain(&mut b, jobs, true),
                1 => drain(&mut b, jobs, false),
                _ => raw(&url, &queue, jobs),
            }
            let r = jobs as f64 / t.elapsed().as_secs_f64();
            println!("round {round} {:<28} {r:>9.0} jobs/s", name(way));
            rate.push(r);
            drop(b);
        }
    }
    let raw = median(&mut rates[2]);
    for (way, r) in rates.iter_mut().enumerate() {
        let m = median(r);
        println!(
            "median {:<28} {m:>9.0} jobs/s  {:.2}x raw",
            name(way),
            m / raw
        );
    }
}

fn name(way: usize) -> &'static str {
    [
        "adapter fetch(64)+ack_batch",
        "adapter fetch(64)+ack each",
        "raw amiquip prefetch 64",
    ][way]
}

fn fill(config: &Config, queue: &str, jobs: usize) -> RabbitMq {
    let mut b = config.open(queue).expect("open");
    let payload = b"{\"job\":\"noop\",\"args\":null}".to_vec();
    let chunk: Vec<&[u8]> = vec![payload.as_slice(); 1000];
    let mut left = jobs;
    while left > 0 {
        let n = left.min(chunk.len());
        b.publish_batch(&chunk[..n], Duration::ZERO)
            .expect("publish");
        left -= n;
    }
    b
}

fn drain(b: &mut RabbitMq, jobs: usize, batched: bool) {
    let mut done = 0;
    while done < jobs {
        let batch = b.fetch(64, Duration::from_secs(5)).expect("fetch");
        assert!(!batch.is_empty(), "jobs missing");
        done += batch.len();
        if batched {
            assert!(b.ack_batch(batch).is_empty());
        } else {
            for d in batch {
                b.ack(d).expect("ack");
            }
        }
    }
}

fn raw(url: &str, queue: &str, jobs: usize) {
    let mut conn = Connection::insecure_open(url).expect("connect");
    let ch = conn.open_channel(None).expect("channel");
    ch.qos(0, 64, false).expect("qos");
    let consumer = ch
        .basic_consume(queue, ConsumerOptions::default())
        .expect("consume");
    let mut done = 0;
    for m in consumer.receiver().iter() {
        let ConsumerMessage::Delivery(d) = m else {
            panic!("consumer ended: {m:?}")
        };
        consumer.ack(d).expect("ack");
        done += 1;
        if done == jobs {
            break;
        }
    }
    consumer.cancel().expect("cancel");
    drop(consumer);
    ch.close().expect("close");
    conn.close().expect("close");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
