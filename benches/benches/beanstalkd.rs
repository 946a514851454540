//! One no-op job through prefork-beanstalkd (publish + fetch + ack) against
//! the bare beanstalk commands for it (`put`, `reserve-with-timeout 0`,
//! `delete`) over a plain `TcpStream`, in the same run, on the same server.
//! Quote the ratio.
//!
//! Needs `PREFORK_BEANSTALKD_URL` (set by `cargo xtask bench`); without it
//! the bench prints why it skips and exits 0.
//!
//! The machine is shared and noisy, so after criterion's group the bench
//! also runs the two arms interleaved (one batch of each per round) and
//! prints the medians and their ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use prefork_beanstalkd::{Beanstalkd, Config, URL_ENV};
use prefork_benches::PAYLOAD;
use prefork_benches::raw_beanstalkd::Raw;
use prefork_broker::Broker;

fn adapter_one_job(b: &mut Beanstalkd) {
    b.publish(PAYLOAD, Duration::ZERO).unwrap();
    let d = b
        .fetch_one(Duration::ZERO)
        .unwrap()
        .expect("the job just put");
    black_box(d.payload());
    b.ack(d).unwrap();
}

fn median_per_job(samples: &mut [Duration], jobs: u32) -> Duration {
    samples.sort();
    samples[samples.len() / 2] / jobs
}

fn main() {
    let Some(config) = Config::from_env().expect("PREFORK_BEANSTALKD_URL") else {
        println!(
            "skipping the beanstalkd bench: {URL_ENV} is not set (run `cargo xtask bench`, or start beanstalkd and set it)"
        );
        return;
    };
    let pid = std::process::id();
    let mut adapter = config.open(&format!("bench-adapter-{pid}")).expect("open");
    let mut raw = Raw::new(&config.address(), &format!("bench-raw-{pid}"));

    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("beanstalkd publish+fetch+ack");
    g.bench_function("prefork-beanstalkd", |bench| {
        bench.iter(|| adapter_one_job(&mut adapter))
    });
    g.bench_function("bare put+reserve+delete", |bench| {
        bench.iter(|| raw.one_job())
    });
    g.finish();
    c.final_summary();

    // Interleaved: a batch of each per round, medians per job.
    let (rounds, batch) = (21, 200u32);
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..batch {
            adapter_one_job(&mut adapter);
        }
        ours.push(t.elapsed());
        let t = Instant::now();
        for _ in 0..batch {
            raw.one_job();
        }
        bare.push(t.elapsed());
    }
    let ours = median_per_job(&mut ours, batch);
    let bare = median_per_job(&mut bare, batch);
    println!(
        "interleaved medians per job: prefork-beanstalkd {ours:?} ({:.0} jobs/s), bare {bare:?} ({:.0} jobs/s), ratio {:.2}",
        1.0 / ours.as_secs_f64(),
        1.0 / bare.as_secs_f64(),
        ours.as_secs_f64() / bare.as_secs_f64()
    );
}
