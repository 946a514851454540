//! The project's automation, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`), from any directory of the workspace.
//!
//! ```text
//! cargo xtask ci [--fuzz-time SECS]  everything CI checks, in order, stopping at the first failure:
//!                                    fmt, clippy, [brokers], tests, doctests, fork-tests,
//!                                    bench-build, fuzz, invariants
//! cargo xtask lint                   fmt, clippy, invariants
//! cargo xtask test                   [brokers], tests, doctests, fork-tests
//! cargo xtask fork-tests             the fork-safety tests (test targets named fork_*)
//! cargo xtask invariants             the architecture invariants and tidy rules
//! cargo xtask bench [-- ARGS]        run the criterion benches (ARGS go to criterion)
//! cargo xtask bench peers [ARGS]     install Sidekiq and Celery, start redis-server, run the
//!                                    peers bench (ARGS such as `--jobs N` go to it)
//! cargo xtask fuzz TARGET [--time SECS]   fuzz one target (default 300 s)
//! cargo xtask brokers start [NAME...]    start broker servers detached, write target/brokers.env
//! cargo xtask brokers stop|status
//! ```
//!
//! Every step prints the commands it runs and its time; a run ends with a
//! table of its steps and, when tests ran, a `tests: N passed, M failed`
//! line. The `brokers` step appears only when an adapter crate that needs a
//! server exists (see `brokers.rs`).
#![forbid(unsafe_code)]

mod arrows;
mod brokers;
mod invariants;
mod kafka;
mod peers;
mod rabbitmq;
mod run;
mod steps;
mod tidy;
mod workspace;

use anyhow::{Context, Result, bail};

use crate::run::{Ctx, Step, run_steps};

/// Usage text, printed by `help` and on a bad command line.
const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci [--fuzz-time SECS]        fmt, clippy, tests, fork tests, bench build, fuzz smoke, invariants
  lint                         fmt, clippy, invariants
  test                         unit, doc and integration tests, then the fork tests
  fork-tests                   the fork-safety tests only (test targets named fork_*)
  invariants                   architecture invariants and tidy rules
  bench [-- ARGS]              run the criterion benches (ARGS are passed to them)
  bench peers [ARGS]           prefork against Sidekiq and Celery on one redis-server
                               (installs them; ARGS: --jobs N, --rounds N)
  fuzz TARGET [--time SECS]    fuzz one target (default 300 s)
  brokers start [NAME...]      start broker servers detached (default: those the adapter crates need)
  brokers stop                 stop them
  brokers status               show what runs";

/// Default length of `cargo xtask fuzz TARGET`, in seconds.
const FUZZ_DEFAULT_SECS: u64 = 300;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("\nerror: {e:#}");
        std::process::exit(1);
    }
}

/// Parses the command line and runs the command.
fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    match cmd {
        "ci" => {
            let mut ctx = Ctx::new()?;
            if let Some(secs) = flag_value(rest, "--fuzz-time")? {
                ctx.fuzz_secs = secs;
            }
            let mut steps: Vec<Step> = vec![("fmt", steps::fmt), ("clippy", steps::clippy)];
            steps.extend(test_steps(&ctx));
            steps.extend([
                (
                    "bench-build",
                    steps::bench_build as fn(&mut Ctx) -> Result<()>,
                ),
                ("fuzz", steps::fuzz_smoke),
                ("invariants", invariants::check),
            ]);
            run_steps("ci", &mut ctx, &steps)
        }
        "lint" => {
            no_args(rest)?;
            let mut ctx = Ctx::new()?;
            let steps: [Step; 3] = [
                ("fmt", steps::fmt),
                ("clippy", steps::clippy),
                ("invariants", invariants::check),
            ];
            run_steps("lint", &mut ctx, &steps)
        }
        "test" => {
            no_args(rest)?;
            let mut ctx = Ctx::new()?;
            let steps = test_steps(&ctx);
            run_steps("test", &mut ctx, &steps)
        }
        "fork-tests" => {
            no_args(rest)?;
            let mut ctx = Ctx::new()?;
            let mut steps: Vec<Step> = Vec::new();
            if steps::brokers_needed(&ctx) {
                steps.push(("brokers", steps::start_brokers));
            }
            steps.push(("fork-tests", steps::fork_tests));
            run_steps("fork-tests", &mut ctx, &steps)
        }
        "invariants" => {
            no_args(rest)?;
            let mut ctx = Ctx::new()?;
            run_steps("invariants", &mut ctx, &[("invariants", invariants::check)])
        }
        "bench" => {
            if let Some((peers, args)) = rest.split_first()
                && peers == "peers"
            {
                let mut ctx = Ctx::new()?;
                return peers::bench(&mut ctx, args);
            }
            let extra = match rest.split_first() {
                None => &[][..],
                Some((dashes, extra)) if dashes == "--" => extra,
                Some((other, _)) => bail!("unexpected argument `{other}`\n\n{USAGE}"),
            };
            let mut ctx = Ctx::new()?;
            steps::bench(&mut ctx, extra)
        }
        "fuzz" => {
            let (target, flags) = rest
                .split_first()
                .filter(|(t, _)| !t.starts_with('-'))
                .with_context(|| format!("which fuzz target?\n\n{USAGE}"))?;
            let secs = flag_value(flags, "--time")?.unwrap_or(FUZZ_DEFAULT_SECS);
            let mut ctx = Ctx::new()?;
            steps::fuzz_one(&mut ctx, target, secs)
        }
        "brokers" => {
            let root = run::workspace_root();
            match rest.split_first().map(|(s, r)| (s.as_str(), r)) {
                Some(("start", names)) => brokers::cmd_start(&root, names),
                Some(("stop", [])) => brokers::cmd_stop(),
                Some(("status", [])) => {
                    brokers::cmd_status(&root);
                    Ok(())
                }
                _ => bail!("brokers: start [NAME...] | stop | status\n\n{USAGE}"),
            }
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// The test steps: the brokers when an adapter crate needs one, the
/// libtest tests, the doc tests, the fork tests.
fn test_steps(ctx: &Ctx) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    if steps::brokers_needed(ctx) {
        steps.push(("brokers", steps::start_brokers));
    }
    steps.extend([
        ("tests", steps::tests as fn(&mut Ctx) -> Result<()>),
        ("doctests", steps::doctests),
        ("fork-tests", steps::fork_tests),
    ]);
    steps
}

/// Fails on any argument: for commands that take none.
fn no_args(rest: &[String]) -> Result<()> {
    match rest.first() {
        None => Ok(()),
        Some(a) => bail!("unexpected argument `{a}`\n\n{USAGE}"),
    }
}

/// Reads `--flag N` (or `--flag=N`) from `args`, refusing anything else.
fn flag_value(args: &[String], flag: &str) -> Result<Option<u64>> {
    let mut value = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let text = if a == flag {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .as_str()
        } else if let Some(v) = a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            v
        } else {
            bail!("unexpected argument `{a}`\n\n{USAGE}");
        };
        value = Some(
            text.parse()
                .with_context(|| format!("{flag}: `{text}` is not a number of seconds"))?,
        );
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_flag_values_in_both_spellings() {
        assert_eq!(flag_value(&strings(&[]), "--time").unwrap(), None);
        assert_eq!(
            flag_value(&strings(&["--time", "7"]), "--time").unwrap(),
            Some(7)
        );
        assert_eq!(
            flag_value(&strings(&["--time=9"]), "--time").unwrap(),
            Some(9)
        );
        assert!(flag_value(&strings(&["--time"]), "--time").is_err());
        assert!(flag_value(&strings(&["--time", "x"]), "--time").is_err());
        assert!(flag_value(&strings(&["--other", "1"]), "--time").is_err());
    }
}
