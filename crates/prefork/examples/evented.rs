//! An evented worker (Raemon's second shape): each worker runs its own
//! tokio runtime, created in `start`, after the fork (never in the master,
//! which must stay single-threaded to fork safely). The TCP listener is
//! bound once, by the master, before `run`: every worker inherits it and
//! accepts on it, as Unicorn's workers do.
//!
//! ```text
//! cargo run -p prefork --example evented        # listens on 127.0.0.1:7878
//! printf 'hi\n' | nc -q1 127.0.0.1 7878          # echoed back by some worker
//! kill -QUIT <master>
//! ```
//!
//! The runtime runs the server while `execute` drives it in slices of
//! 100 ms; between two slices the worker runtime reads the master's
//! requests and sends the heartbeat.

use std::net::TcpListener;
use std::time::Duration;

use prefork::{BoxError, Context, Master, Worker};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

struct Echo {
    /// Bound in the master, inherited by every worker.
    listener: Option<TcpListener>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Worker for Echo {
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let std_listener = self.listener.take().ok_or("no listener")?;
        std_listener.set_nonblocking(true)?;
        let index = ctx.worker_index();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let (read, mut write) = stream.into_split();
                        let mut lines = BufReader::new(read).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let reply = format!("worker {index} echoes {line} to {peer}\n");
                            if write.write_all(reply.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            Ok::<(), std::io::Error>(())
        })?;
        self.runtime = Some(runtime);
        Ok(())
    }

    fn execute(&mut self, _ctx: &mut Context) -> Result<(), BoxError> {
        // Drive the runtime (and every task on it) for one slice.
        let runtime = self.runtime.as_ref().ok_or("no runtime")?;
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) {
        // Let in-flight connections finish their current line, briefly.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

fn main() -> Result<prefork::Report, Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let addr = std::env::var("ECHO_ADDR").unwrap_or_else(|_| "127.0.0.1:7878".into());
    let listener = TcpListener::bind(&addr)?;
    tracing::info!(%addr, "listening");
    let master = Master::builder()
        .name("echo")
        .workers(2)
        .timeout(Duration::from_secs(5))
        .term_is_graceful(true)
        .build()?;
    Ok(master.run(Echo {
        listener: Some(listener),
        runtime: None,
    })?)
}
