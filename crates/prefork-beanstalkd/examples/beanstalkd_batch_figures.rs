//! Measures what pipelining buys against a live beanstalkd: 1000 jobs
//! published one by one vs with `publish_batch`, and drained with
//! fetch + `ack` vs fetch + `ack_deferred` + `flush`, in the same run,
//! interleaved, median of several rounds. (`ack_deferred` is a confirmed
//! `ack` on beanstalkd, see the README: the two drain arms now do the same
//! work, and their ratio shows the run's noise.)
//!
//! ```text
//! PREFORK_BEANSTALKD_URL=beanstalk://127.0.0.1:11300 \
//!     cargo run --release -p prefork-beanstalkd --example beanstalkd_batch_figures [JOBS] [ROUNDS]
//! ```

use std::time::{Duration, Instant};

use prefork_beanstalkd::Config;
use prefork_broker::{Broker, BrokerError};

fn main() -> Result<(), BrokerError> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let config = Config::from_env()?.expect("set PREFORK_BEANSTALKD_URL");
    let tube = format!("figures-{}", std::process::id());
    let mut b = config.open(&tube)?;
    let payloads: Vec<Vec<u8>> = (0..jobs)
        .map(|i| format!("job-{i:06}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();

    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Alternate the order so neither arm always runs first.
        let first_single = round % 2 == 0;
        for single in [first_single, !first_single] {
            let start = Instant::now();
            if single {
                for p in &refs {
                    b.publish(p, Duration::ZERO)?;
                }
            } else {
                b.publish_batch(&refs, Duration::ZERO)?;
            }
            t[usize::from(!single)].push(start.elapsed());
            // Drain, alternating the ack style (fetch batches of 64).
            let deferred = (round + usize::from(single)) % 2 == 0;
            let start = Instant::now();
            let mut left = jobs;
            while left > 0 {
                for d in b.fetch(64.min(left), Duration::from_secs(1))? {
                    left -= 1;
                    if deferred {
                        b.ack_deferred(d).map_err(|e| e.into_error())?;
                    } else {
                        b.ack(d).map_err(|e| e.into_error())?;
                    }
                }
            }
            b.flush()?;
            t[2 + usize::from(deferred)].push(start.elapsed());
        }
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let rate = |d: Duration| jobs as f64 / d.as_secs_f64();
    let [mut one, mut batch, mut ack, mut deferred] = t;
    let (one, batch, ack, deferred) = (
        med(&mut one),
        med(&mut batch),
        med(&mut ack),
        med(&mut deferred),
    );
    println!("{jobs} jobs, median of {rounds} interleaved rounds, tube {tube}");
    println!(
        "publish one by one        {:>9.1?} {:>9.0} jobs/s",
        one,
        rate(one)
    );
    println!(
        "publish_batch             {:>9.1?} {:>9.0} jobs/s  x{:.1}",
        batch,
        rate(batch),
        rate(batch) / rate(one)
    );
    println!(
        "fetch(64) + ack           {:>9.1?} {:>9.0} jobs/s",
        ack,
        rate(ack)
    );
    println!(
        "fetch(64) + ack_deferred  {:>9.1?} {:>9.0} jobs/s  x{:.1}",
        deferred,
        rate(deferred),
        rate(deferred) / rate(ack)
    );
    Ok(())
}
