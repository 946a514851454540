//! The steps that `ci`, `lint`, `test` and friends are made of; each one
//! echoes the commands it runs and fails on the first that fails.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::brokers::{self, Brokers, Mode};
use crate::run::{Ctx, apt_install, cargo_has, run, run_tests, which};
use crate::workspace;

/// Default length of each fuzz target's smoke run under `ci`, in seconds.
pub(crate) const FUZZ_SMOKE_SECS: u64 = 20;

/// Step 1: formatting, `cargo fmt --all --check`, and the same for the
/// fuzz targets (outside the workspace).
///
/// # Errors
/// When rustfmt is missing and cannot be installed, or a file is not
/// formatted.
pub(crate) fn fmt(ctx: &mut Ctx) -> Result<()> {
    ensure_component(ctx, "fmt", "rustfmt")?;
    run(&mut ctx.cargo(["fmt", "--all", "--check"]))
        .context("some files are not formatted: run `cargo fmt --all`")?;
    if ctx.root.join("fuzz/Cargo.toml").is_file() {
        run(&mut ctx.cargo(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"])).context(
            "some fuzz targets are not formatted: run `cargo fmt --manifest-path fuzz/Cargo.toml`",
        )?;
    }
    Ok(())
}

/// Step 2: clippy on every target of every member, warnings denied (after
/// installing the Debian packages adapter crates need to build, e.g.
/// cmake for rdkafka's bundled librdkafka).
///
/// # Errors
/// When clippy is missing and cannot be installed, or reports anything.
pub(crate) fn clippy(ctx: &mut Ctx) -> Result<()> {
    ensure_component(ctx, "clippy", "clippy")?;
    brokers::install_build_deps(&ctx.root)?;
    run(&mut ctx.cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Makes sure `cargo <sub>` works, adding the rustup component when it
/// does not and rustup is there.
fn ensure_component(ctx: &Ctx, sub: &str, component: &str) -> Result<()> {
    if cargo_has(ctx, sub) {
        return Ok(());
    }
    if which("rustup").is_none() {
        bail!(
            "`cargo {sub}` is not installed and there is no rustup to add the `{component}` component"
        );
    }
    run(Command::new("rustup").args(["component", "add", component]))
}

/// Starts the brokers that the present adapter crates need, on loopback,
/// and puts their URLs into the test environment (installing first what
/// the adapter crates need to build, for `test` runs that skip clippy). They stay up until the
/// run ends (see [`Ctx::stop_brokers`]).
///
/// # Errors
/// When a broker cannot be installed or started: under CI a missing broker
/// is a failure, never a skip.
pub(crate) fn start_brokers(ctx: &mut Ctx) -> Result<()> {
    brokers::install_build_deps(&ctx.root)?;
    let needed = brokers::needed(&ctx.root);
    if needed.is_empty() {
        println!("no adapter crate needs a broker server");
        return Ok(());
    }
    let started = Brokers::start(&needed, Mode::Attached)?;
    ctx.env = started.env();
    for (k, v) in &ctx.env {
        println!("{k}={v}");
    }
    ctx.brokers = Some(started);
    Ok(())
}

/// Whether any adapter crate present needs a broker (so `ci` and `test`
/// include the `brokers` step).
pub(crate) fn brokers_needed(ctx: &Ctx) -> bool {
    !brokers::needed(&ctx.root).is_empty()
}

/// Step 3: the libtest tests: unit tests of libs and bins, examples, and
/// every integration test target except the fork tests (which run in
/// step 4). The fork tests are left out by naming the other test targets
/// one by one; everything builds in the `test` profile with the features
/// of the whole workspace, so step 4 reuses it all.
///
/// # Errors
/// When a test fails or does not build.
pub(crate) fn tests(ctx: &mut Ctx) -> Result<()> {
    let names = ctx
        .ws
        .test_targets()
        .filter(|(_, t)| t.test && !t.is_fork_test())
        .map(|(_, t)| t.name.as_str());
    let args = cargo_test_args(&["--lib", "--bins", "--examples"], names);
    let mut cmd = ctx.cargo_test_env(args);
    run_tests(&mut cmd, &mut ctx.tally)
}

/// `test --workspace --no-fail-fast`, then `extra`, then `--test NAME` once
/// for each distinct name: a name shared by two packages (`fork_signals`)
/// is given once, and cargo runs every workspace target of that name.
fn cargo_test_args<'a>(extra: &[&str], names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    names.dedup();
    let mut args: Vec<String> = ["test", "--workspace", "--no-fail-fast"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    for name in names {
        args.push("--test".into());
        args.push(name.into());
    }
    args
}

/// Step 3, second half: the doc tests of every library.
///
/// # Errors
/// When a doc test fails or does not build.
pub(crate) fn doctests(ctx: &mut Ctx) -> Result<()> {
    let mut cmd = ctx.cargo_test_env(["test", "--workspace", "--no-fail-fast", "--doc"]);
    run_tests(&mut cmd, &mut ctx.tally)
}

/// Step 4: the fork-safety tests, every test target named `fork_*`. They
/// are `harness = false` binaries that run each case in a fresh process.
/// One cargo invocation over the workspace runs them all (so the features
/// match step 3 and nothing is built twice); `--no-fail-fast` lets every
/// target report before the step fails.
///
/// # Errors
/// When a fork test fails, or there is none to run.
pub(crate) fn fork_tests(ctx: &mut Ctx) -> Result<()> {
    let mut targets: Vec<(&str, &str)> = ctx
        .ws
        .test_targets()
        .filter(|(_, t)| t.is_fork_test())
        .map(|(p, t)| (p.name.as_str(), t.name.as_str()))
        .collect();
    targets.sort_unstable();
    if targets.is_empty() {
        bail!("no fork test target found (test targets named `fork_*`)");
    }
    println!("fork test targets:");
    for (package, name) in &targets {
        println!("  {package}: {name}");
    }
    let args = cargo_test_args(&[], targets.iter().map(|(_, t)| *t));
    let mut cmd = ctx.cargo_test_env(args);
    run_tests(&mut cmd, &mut ctx.tally)
}

/// Step 5: compile every bench (bench profile), without running them.
///
/// # Errors
/// When a bench does not build.
pub(crate) fn bench_build(ctx: &mut Ctx) -> Result<()> {
    run(&mut ctx.cargo(["bench", "--workspace", "--no-run"]))
}

/// `cargo xtask bench`: runs the criterion benches (each configured short
/// by its author), passing `extra` to them. Only bench targets run
/// (`--bench '*'`), not the libtest bench harness of libs and bins, which
/// would refuse criterion's flags.
///
/// # Errors
/// When a broker cannot start or a bench fails.
pub(crate) fn bench(ctx: &mut Ctx, extra: &[String]) -> Result<()> {
    let has_benches = ctx
        .ws
        .packages
        .iter()
        .any(|p| p.targets.iter().any(|t| t.is("bench")));
    if !has_benches {
        println!("no bench target in the workspace");
        return Ok(());
    }
    start_brokers(ctx)?;
    let mut args: Vec<String> = ["bench", "--workspace", "--bench", "*"]
        .map(String::from)
        .to_vec();
    if !extra.is_empty() {
        args.push("--".into());
        args.extend(extra.iter().cloned());
    }
    let r = run(&mut ctx.cargo_test_env(args));
    let stopped = ctx.stop_brokers();
    r.and(stopped)
}

/// Step 6: build every fuzz target once, then fuzz each for a short while
/// (`ctx`'s fuzz time), installing cargo-fuzz first when it is missing.
///
/// # Errors
/// When cargo-fuzz cannot be installed, a target does not build, or
/// libFuzzer finds a crash.
pub(crate) fn fuzz_smoke(ctx: &mut Ctx) -> Result<()> {
    let targets = workspace::fuzz_targets(&ctx.cargo, &ctx.root)?;
    if targets.is_empty() {
        println!("fuzz/Cargo.toml declares no fuzz target");
        return Ok(());
    }
    ensure_fuzz_tools(ctx)?;
    run(&mut fuzz_cmd(ctx, &["build"]))?;
    for target in &targets {
        fuzz_run(ctx, target, ctx.fuzz_secs)?;
    }
    Ok(())
}

/// `cargo xtask fuzz TARGET --time N`: fuzzes one target for `secs`.
///
/// # Errors
/// When the target does not exist or does not build, or libFuzzer finds a
/// crash.
pub(crate) fn fuzz_one(ctx: &mut Ctx, target: &str, secs: u64) -> Result<()> {
    let targets = workspace::fuzz_targets(&ctx.cargo, &ctx.root)?;
    if !targets.iter().any(|t| t == target) {
        bail!(
            "no fuzz target `{target}` in fuzz/Cargo.toml (there are: {})",
            targets.join(", ")
        );
    }
    ensure_fuzz_tools(ctx)?;
    fuzz_run(ctx, target, secs)
}

/// Fuzzes `target` for `secs` seconds. New inputs go to the scratch corpus
/// `fuzz/corpus/TARGET` (ignored by git); the seeds in `fuzz/seeds/TARGET`
/// are a second, read-only corpus directory, so libFuzzer never writes
/// into them.
fn fuzz_run(ctx: &Ctx, target: &str, secs: u64) -> Result<()> {
    let corpus = ctx.root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("could not create {}", corpus.display()))?;
    let mut args = vec![
        "run".to_string(),
        target.to_string(),
        rel(&ctx.root, &corpus),
    ];
    let seeds = ctx.root.join("fuzz/seeds").join(target);
    if seeds.is_dir() {
        args.push(rel(&ctx.root, &seeds));
    } else {
        println!("note: no seed directory {}", seeds.display());
    }
    args.push("--".into());
    args.push(format!("-max_total_time={secs}"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&mut fuzz_cmd(ctx, &argv))
}

/// A `cargo fuzz` command on the `fuzz/` project. cargo-fuzz needs nightly
/// flags (sanitizers); `RUSTC_BOOTSTRAP=1` lets the stable toolchain
/// accept them.
fn fuzz_cmd(ctx: &Ctx, args: &[&str]) -> Command {
    let (sub, rest) = args
        .split_first()
        .map_or(("build", &[][..]), |(s, r)| (*s, r));
    let mut cmd = ctx.cargo(["fuzz", sub, "--fuzz-dir", "fuzz"]);
    cmd.args(rest);
    cmd.env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Installs what fuzzing needs when it is missing: a C++ compiler (for
/// libFuzzer, which libfuzzer-sys builds) and cargo-fuzz (with
/// `cargo install --locked`).
fn ensure_fuzz_tools(ctx: &Ctx) -> Result<()> {
    if which("c++").is_none() {
        println!("no C++ compiler (libFuzzer needs one): installing g++");
        apt_install(&["g++"])?;
    }
    if cargo_has(ctx, "fuzz") {
        return Ok(());
    }
    println!("cargo-fuzz is missing: installing it");
    run(&mut ctx.cargo(["install", "cargo-fuzz", "--locked"]))
}

/// `path` relative to `root` when it is inside it, for shorter echoes.
fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_targets_are_named_once_each() {
        let args = cargo_test_args(&["--lib"], ["fork_b", "fork_a", "fork_b"].into_iter());
        assert_eq!(
            args,
            [
                "test",
                "--workspace",
                "--no-fail-fast",
                "--lib",
                "--test",
                "fork_a",
                "--test",
                "fork_b"
            ]
        );
    }
}
