//! The child side of a fork: what a new worker (or feeder) process does
//! between `fork` returning and its exit. Set-up first (the master's signal
//! handlers and descriptors go, the parent-death signal is armed), then the
//! worker's loop ([`run_worker`]) or the feeder's
//! ([`run_feeder`](crate::feeder::run_feeder)), then `exit` without running
//! a destructor of anything the master owned.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use prefork_heartbeat::Channel;
use prefork_selfpipe::SignalQueue;

use crate::config::{CloseFds, Hooks, Settings};
use crate::feeder::{Feeder, run_feeder};
use crate::report::Role;
use crate::supervisor::Serial;
use crate::worker::{Context, ContextSettings, Worker};

/// Exit status of a worker that panicked (as Rust's own runtime uses).
pub(crate) const PANIC_STATUS: i32 = 101;

/// What the forked process was given: who it is, its end of the channel,
/// and the master's signal queue (reset here, never read).
pub(crate) struct Birth {
    pub(crate) serial: Serial,
    pub(crate) role: Role,
    pub(crate) iteration_limit: Option<u64>,
    pub(crate) channel: Channel,
    pub(crate) master_pid: u32,
    pub(crate) queue: Option<SignalQueue>,
}

/// Sets the new process up and runs it: `feeder` when this is the feeder's
/// slot, the `worker` otherwise. `master_fds` holds the master's
/// descriptors (its poll, the other workers' channels and pidfds): dropped,
/// which closes them, or forgotten when `close_fds_except` sweeps every
/// descriptor anyway. Never returns.
pub(crate) fn become_child<W: Worker, F: Feeder, M>(
    birth: Birth,
    master_fds: M,
    settings: &Settings,
    hooks: &mut Hooks,
    worker: &mut W,
    feeder: Option<&mut F>,
) -> ! {
    let Birth {
        serial,
        role,
        iteration_limit,
        channel,
        master_pid,
        queue,
    } = birth;
    // Signals first: the master's handlers must not run here. They are
    // all blocked until reset_signals.
    if let Some(q) = queue {
        q.reset_after_fork();
    }
    let code = match &settings.close_fds {
        CloseFds::MasterOnly => {
            drop(master_fds);
            Ok(())
        }
        CloseFds::AllExcept(keep) => {
            // Closed below in one sweep: forget them, not to close their
            // numbers twice.
            std::mem::forget(master_fds);
            let mut keep = keep.clone();
            keep.push(channel.as_raw_fd());
            prefork_proc::child::close_fds_except(&keep)
        }
    }
    .and_then(|()| prefork_proc::child::reset_signals())
    .and_then(|()| prefork_proc::child::die_with_parent(libc::SIGTERM, master_pid as libc::pid_t));
    if let Err(e) = code {
        tracing::error!(error = %e, worker = %role, "worker set-up failed");
        exit_worker(1);
    }
    let mut ctx = Context::new(
        channel,
        ContextSettings {
            role,
            serial,
            name: settings.name.clone(),
            beat_every: settings.heartbeat_interval,
            memory_every: settings.max_memory.map(|_| settings.memory_check_interval),
            iteration_limit,
        },
    );
    let code = match feeder {
        Some(feeder) => run_feeder(feeder, &mut ctx, settings.timeout),
        None => run_worker(worker, &mut ctx, hooks, settings.timeout),
    };
    // `ctx` is not dropped: its channel closes when the process exits, so
    // the master never sees EOF from a worker that still lives.
    exit_worker(code)
}

/// Ends a worker process: flushes stdio, then `exit` (which runs no Rust
/// destructor: nothing the master owned is dropped).
fn exit_worker(code: i32) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    std::process::exit(code)
}

/// The worker's life after set-up: hooks, `start`, ready, then one
/// `execute` per iteration until it is told to stop (a job handed out
/// before the stop runs first), then `stop`. Returns its exit status.
fn run_worker<W: Worker>(
    worker: &mut W,
    ctx: &mut Context,
    hooks: &mut Hooks,
    timeout: Duration,
) -> i32 {
    let _ = ctx.set_state("starting");
    let index = ctx.worker_index();
    let _span = tracing::info_span!("worker", index, pid = std::process::id()).entered();
    if let Some(hook) = hooks.after_fork.as_mut()
        && catch_unwind(AssertUnwindSafe(|| hook(ctx))).is_err()
    {
        tracing::error!("after_fork hook panicked");
        return PANIC_STATUS;
    }
    match catch_unwind(AssertUnwindSafe(|| worker.start(ctx))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "worker start failed");
            return 1;
        }
        Err(_) => {
            tracing::error!("worker start panicked");
            return PANIC_STATUS;
        }
    }
    if !ctx.send_ready(timeout) {
        return 1;
    }
    if let Some(hook) = hooks.after_worker_ready.as_mut()
        && catch_unwind(AssertUnwindSafe(|| hook(ctx))).is_err()
    {
        tracing::error!("after_worker_ready hook panicked");
        return PANIC_STATUS;
    }
    let _ = ctx.set_state("running");
    let mut status = 0;
    loop {
        ctx.poll_master();
        if ctx.take_reopen() && catch_unwind(AssertUnwindSafe(|| worker.reopen_logs(ctx))).is_err()
        {
            tracing::error!("reopen_logs panicked");
            return PANIC_STATUS;
        }
        // A job handed out before the stop request runs first.
        if ctx.is_stopping() && !ctx.has_pending_job() {
            break;
        }
        ctx.before_iteration();
        match catch_unwind(AssertUnwindSafe(|| worker.execute(ctx))) {
            Ok(Ok(())) => ctx.after_iteration(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, iterations = ctx.iterations(), "worker iteration failed");
                status = 1;
                break;
            }
            Err(_) => {
                tracing::error!(iterations = ctx.iterations(), "worker iteration panicked");
                return PANIC_STATUS;
            }
        }
    }
    let _ = ctx.set_state("stopping");
    if catch_unwind(AssertUnwindSafe(|| worker.stop(ctx))).is_err() {
        tracing::error!("worker stop panicked");
        return PANIC_STATUS;
    }
    ctx.report_final();
    tracing::debug!(iterations = ctx.iterations(), "worker exits");
    status
}
