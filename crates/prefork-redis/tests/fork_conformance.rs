//! The broker conformance kit, every case, against the Redis server named by
//! `PREFORK_REDIS_URL` (a missing URL fails under CI, skips elsewhere).
//!
//! A `harness = false` target: each case runs in a process of its own
//! (`prefork_tests::harness`), and the kit starts this binary again as
//! helpers that it SIGKILLs.

mod common;

use std::time::Duration;

use prefork_broker::BrokerError;
use prefork_conformance::Kit;
use prefork_redis::{Options, Redis, RedisQueue};
use prefork_tests::harness::{Case, run};

const LEASE: Duration = Duration::from_secs(1);

fn open_for_kit(queue: &str) -> Result<RedisQueue, BrokerError> {
    let options = Options::default()
        .prefix("prefork-kit")
        .lease(LEASE)
        .block(Duration::from_millis(200));
    Redis::with_options(&common::url(), options)?.queue(queue)
}

fn kit() -> Kit {
    Kit::new(open_for_kit).lease(LEASE)
}

fn main() {
    common::url_or_skip("prefork-redis conformance");
    kit().serve_role();
    run(&prefork_conformance::cases!(Case::new, kit()));
}
