//! The daemon of the README: four workers greeting once a second.
//!
//! `cargo run -p prefork --example hello`, then `kill -TTIN`, `-HUP`,
//! `-QUIT` the master.

use prefork::{BoxError, Context, Master, Worker};
use std::time::Duration;

struct Greeter {
    greeting: String,
} // built before run(): shared by every worker

impl Worker for Greeter {
    fn start(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        println!("worker {} starting", ctx.worker_index()); // open connections here
        Ok(())
    }
    fn execute(&mut self, ctx: &mut Context) -> Result<(), BoxError> {
        println!("{} from worker {}", self.greeting, ctx.worker_index());
        std::thread::sleep(Duration::from_secs(1)); // one iteration of the loop
        Ok(())
    }
}

fn main() -> Result<prefork::Report, Box<dyn std::error::Error>> {
    let master = Master::builder()
        .workers(4)
        .timeout(Duration::from_secs(10))
        .build()?;
    Ok(master.run(Greeter {
        greeting: "hello".into(),
    })?) // exit status 0 after QUIT/TERM
}
