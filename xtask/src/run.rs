//! Running steps and commands: timing, echoing, failure messages, the
//! closing summary table and the tally of tests that ran.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::brokers::Brokers;
use crate::workspace::Workspace;

/// What every step needs: where the workspace is, which cargo to call, the
/// environment the test commands get, and the brokers started for them.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The workspace root; every command runs there.
    pub(crate) root: PathBuf,
    /// The cargo binary: `$CARGO` when run through cargo, else `cargo`.
    pub(crate) cargo: OsString,
    /// The workspace's packages and targets, read once.
    pub(crate) ws: Workspace,
    /// Extra environment for test commands (the brokers' URLs).
    pub(crate) env: Vec<(String, String)>,
    /// Brokers started for this run; stopped when the run ends.
    pub(crate) brokers: Option<Brokers>,
    /// Tests counted from the runners' `test result:` lines.
    pub(crate) tally: Tally,
    /// How long each fuzz target runs in the fuzz smoke step, in seconds.
    pub(crate) fuzz_secs: u64,
}

impl Ctx {
    /// Reads the workspace metadata and sets up a context rooted at the
    /// workspace root, whatever the current directory is.
    ///
    /// # Errors
    /// When `cargo metadata` fails or prints something unexpected.
    pub(crate) fn new() -> Result<Ctx> {
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let ws = Workspace::load(&cargo, &root)?;
        Ok(Ctx {
            root,
            cargo,
            ws,
            env: Vec::new(),
            brokers: None,
            tally: Tally::default(),
            fuzz_secs: crate::steps::FUZZ_SMOKE_SECS,
        })
    }

    /// A `cargo` command with `args`, run from the workspace root.
    pub(crate) fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cmd = Command::new(&self.cargo);
        cmd.args(args.into_iter().map(Into::into));
        cmd.current_dir(&self.root);
        cmd
    }

    /// Like [`Ctx::cargo`], with the test environment added: the brokers'
    /// URLs, and `PREFORK_REQUIRE_BROKERS=1`, which tells broker tests
    /// that a missing URL is a failure here, never a reason to skip.
    pub(crate) fn cargo_test_env<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cmd = self.cargo(args);
        cmd.env("PREFORK_REQUIRE_BROKERS", "1");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Stops the brokers this run started, if any, and reports whether they
    /// all stopped.
    ///
    /// # Errors
    /// When a broker would not stop.
    pub(crate) fn stop_brokers(&mut self) -> Result<()> {
        self.env.clear();
        match self.brokers.take() {
            Some(b) => b.stop(),
            None => Ok(()),
        }
    }
}

/// The workspace root: the parent of this package's directory.
pub(crate) fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Counts of tests passed and failed, summed over every runner's
/// `test result:` line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Tests that passed.
    pub(crate) passed: u64,
    /// Tests that failed.
    pub(crate) failed: u64,
}

/// Reads the counts from a libtest (or prefork harness) closing line such as
/// `test result: ok. 3 passed; 0 failed; 0 ignored; ...`.
pub(crate) fn parse_test_result(line: &str) -> Option<Tally> {
    let rest = line.trim_start().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let (mut passed, mut failed) = (None, None);
    for part in counts.split(';').map(str::trim) {
        if let Some(n) = part.strip_suffix(" passed") {
            passed = n.trim().parse().ok();
        } else if let Some(n) = part.strip_suffix(" failed") {
            failed = n.trim().parse().ok();
        }
    }
    Some(Tally {
        passed: passed?,
        failed: failed?,
    })
}

/// Renders a command the way a shell user would type it (environment
/// variables the command sets first, the program by its file name).
pub(crate) fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            out.push_str(&format!(
                "{}={} ",
                k.to_string_lossy(),
                quote(&v.to_string_lossy())
            ));
        }
    }
    let program = Path::new(cmd.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str());
    out.push_str(&program.to_string_lossy());
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(&arg.to_string_lossy()));
    }
    out
}

/// Quotes a word for display when a shell would need it.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Echoes and runs a command, failing with the command line and its exit
/// status when it does not succeed.
///
/// # Errors
/// When the command cannot be started or exits unsuccessfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Echoes and runs a test command, passing its standard output through
/// while counting the tests from its `test result:` lines into `tally`.
///
/// # Errors
/// When the command cannot be started or exits unsuccessfully.
pub(crate) fn run_tests(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut reader = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        out.write_all(&buf)?;
        out.flush()?;
        if let Some(t) = parse_test_result(&String::from_utf8_lossy(&buf)) {
            tally.passed += t.passed;
            tally.failed += t.failed;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Whether `cargo <sub> --version` works, i.e. the subcommand is installed.
pub(crate) fn cargo_has(ctx: &Ctx, sub: &str) -> bool {
    ctx.cargo([sub, "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds `program` on `PATH` (and in the sbin directories, which a
/// non-root `PATH` may lack).
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Installs Debian packages with `apt-get` (non-interactive, after an
/// `apt-get update`), through `sudo -n` when not root. Does nothing for an
/// empty list.
///
/// # Errors
/// When there is no apt-get or it fails.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    let mut packages = packages.to_vec();
    if packages.is_empty() {
        return Ok(());
    }
    packages.sort_unstable();
    packages.dedup();
    println!("installing {}", packages.join(" "));
    if which("apt-get").is_none() {
        bail!(
            "{} missing and there is no apt-get: install it by hand",
            packages.join(", ")
        );
    }
    let sudo = !nix::unistd::geteuid().is_root() && which("sudo").is_some();
    let apt = |args: &[&str]| {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", "--preserve-env=DEBIAN_FRONTEND", "apt-get"]);
            c
        } else {
            Command::new("apt-get")
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&packages);
    run(&mut install)
}

/// One step of a run: a name and the function that does it.
pub(crate) type Step = (&'static str, fn(&mut Ctx) -> Result<()>);

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It succeeded.
    Ok,
    /// It failed; the run stopped there.
    Failed,
    /// It did not run because an earlier step failed.
    NotRun,
}

/// Runs `steps` in order, stopping at the first failure; prints each
/// step's banner and time, then a summary table; stops the brokers the
/// steps started, also when a step fails.
///
/// # Errors
/// The first failed step's error, naming the step.
pub(crate) fn run_steps(title: &str, ctx: &mut Ctx, steps: &[Step]) -> Result<()> {
    let started = Instant::now();
    let mut results: Vec<(&str, Outcome, Duration)> = Vec::new();
    let mut error = None;
    for (i, (name, f)) in steps.iter().enumerate() {
        if error.is_some() {
            results.push((name, Outcome::NotRun, Duration::ZERO));
            continue;
        }
        println!("\n==> [{}/{}] {title}: {name}", i + 1, steps.len());
        let t = Instant::now();
        let r = f(ctx);
        let took = t.elapsed();
        match r {
            Ok(()) => {
                println!("<== {name}: ok in {}", fmt_duration(took));
                results.push((name, Outcome::Ok, took));
            }
            Err(e) => {
                println!("<== {name}: FAILED after {}", fmt_duration(took));
                results.push((name, Outcome::Failed, took));
                error = Some(e.context(format!("step `{name}` of `cargo xtask {title}` failed")));
            }
        }
    }
    if let Err(e) = ctx.stop_brokers() {
        eprintln!("warning: {e:#}");
        if error.is_none() {
            error = Some(e.context("stopping the brokers failed"));
        }
    }
    println!("\n{title} summary:");
    println!("  {:<14} {:<8} {:>9}", "step", "result", "time");
    for (name, outcome, took) in &results {
        let (word, time) = match outcome {
            Outcome::Ok => ("ok", fmt_duration(*took)),
            Outcome::Failed => ("FAILED", fmt_duration(*took)),
            Outcome::NotRun => ("not run", "-".to_string()),
        };
        println!("  {name:<14} {word:<8} {time:>9}");
    }
    println!(
        "  {:<14} {:<8} {:>9}",
        "total",
        "",
        fmt_duration(started.elapsed())
    );
    if error.is_none() && ctx.tally != Tally::default() {
        println!(
            "tests: {} passed, {} failed",
            ctx.tally.passed, ctx.tally.failed
        );
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Formats a duration as `4.2s` or `3m07s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_and_harness_result_lines() {
        let libtest = "test result: ok. 12 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(
            parse_test_result(libtest),
            Some(Tally {
                passed: 12,
                failed: 1
            })
        );
        let harness = "test result: FAILED. 3 passed; 2 failed; finished in 1.20s";
        assert_eq!(
            parse_test_result(harness),
            Some(Tally {
                passed: 3,
                failed: 2
            })
        );
        assert_eq!(parse_test_result("test foo ... ok"), None);
        assert_eq!(parse_test_result("running 3 tests"), None);
    }

    #[test]
    fn displays_commands_as_typed() {
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.env("RUSTC_BOOTSTRAP", "1")
            .args(["clippy", "--", "-D", "warnings", "it's"]);
        assert_eq!(
            display(&cmd),
            r"RUSTC_BOOTSTRAP=1 cargo clippy -- -D warnings 'it'\''s'"
        );
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_duration(Duration::from_millis(4210)), "4.2s");
        assert_eq!(fmt_duration(Duration::from_secs(187)), "3m07s");
    }
}
