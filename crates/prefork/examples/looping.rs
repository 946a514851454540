//! A plain looping worker (Raemon's first shape): a data set loaded once by
//! the master and shared copy-on-write by every worker, one unit of work
//! per iteration, every hook, structured logs, log reopening on USR1, and
//! the settings an operator cares about.
//!
//! ```text
//! cargo run -p prefork --example looping
//! kill -TTIN  <master>   # one worker more          kill -TTOU <master>  # one less
//! kill -HUP   <master>   # replace them one by one  kill -USR1 <master>  # reopen logs
//! kill -WINCH <master>   # stop the workers, keep the master
//! kill -QUIT  <master>   # graceful stop            kill -TERM <master>  # quick stop
//! ```

use std::time::Duration;

use prefork::{BoxError, Context, Master, Worker};

/// The worker: a reference table (preloaded) and per-worker counters.
struct Scorer {
    /// Built once in the master before `run`; every worker reads the same
    /// physical pages until one of them writes to them.
    table: Vec<u64>,
    scored: u64,
}

impl Worker for Scorer {
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        // Open connections, files, threads here: this runs in the worker.
        tracing::info!(worker = ctx.worker_index(), "connected");
        Ok(())
    }

    fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        // One unit of work. Say what it is, so a hang is logged with it.
        let item = ctx.iterations();
        ctx.set_activity(format!("item {item}"));
        let i = (item as usize * 7919) % self.table.len();
        self.scored = self.scored.wrapping_add(self.table[i]);
        std::thread::sleep(Duration::from_millis(500));
        ctx.clear_activity();
        Ok(())
    }

    fn reopen_logs(&mut self, ctx: &mut Context) {
        tracing::info!(worker = ctx.worker_index(), "reopening logs");
    }

    fn stop(&mut self, ctx: &mut Context) {
        tracing::info!(
            worker = ctx.worker_index(),
            scored = self.scored,
            "stopping"
        );
    }
}

fn main() -> Result<prefork::Report, Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Preloading: 8 MiB built once, shared by every worker.
    let table: Vec<u64> = (0..1u64 << 20).map(|i| i * i).collect();
    let master = Master::builder()
        .name("scorer")
        .workers(3)
        .timeout(Duration::from_secs(10))
        .graceful_timeout(Duration::from_secs(5))
        .max_memory(256 << 20)
        .max_iterations(1_000)
        .max_age(Duration::from_secs(3600))
        .before_fork(|w| tracing::debug!(worker = %w.role, "forking"))
        .after_fork(|ctx| tracing::debug!(worker = ctx.worker_index(), "forked"))
        .after_worker_ready(|ctx| tracing::info!(worker = ctx.worker_index(), "ready"))
        .after_worker_exit(|exit| tracing::info!(%exit, "worker exited"))
        .reopen_logs(|| tracing::info!("master: reopening logs"))
        .build()?;
    Ok(master.run(Scorer { table, scored: 0 })?)
}
