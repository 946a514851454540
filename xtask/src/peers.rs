//! `cargo xtask bench peers`: installs the peers prefork is compared with
//! (Sidekiq from Debian's `ruby-sidekiq`, Celery 5 with pip into a venv
//! under the target dir), starts one redis-server and one rabbitmq-server,
//! and runs the `peers` bench of `prefork-benches` against them (see
//! `benches/benches/peers.rs`).
//!
//! Installs are cached: a peer that already loads is not installed again.
//! Everything installed is printed first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::brokers::{self, Brokers, Mode};
use crate::run::{Ctx, apt_install, run, which};

/// The pip requirements of the Celery peer, relative to the workspace root.
const REQUIREMENTS: &str = "benches/peers/requirements.txt";

/// Runs the peers bench: installs what is missing, starts redis-server
/// and rabbitmq-server (Celery's home broker, for the bench's second
/// table), runs `cargo bench -p prefork-benches --bench peers -- ARGS`,
/// stops the servers. `args` (e.g. `--jobs 5000 --rounds 1`) go to the bench.
///
/// # Errors
/// When a peer cannot be installed, a server cannot start, or the
/// bench fails.
pub(crate) fn bench(ctx: &mut Ctx, args: &[String]) -> Result<()> {
    let target = target_dir(&ctx.root);
    ensure_sidekiq()?;
    let python = ensure_celery(&ctx.root, &target)?;
    let servers = [brokers::by_name("redis")?, brokers::by_name("rabbitmq")?];
    let started = Brokers::start(&servers, Mode::Attached)?;
    ctx.env = started.env();
    ctx.brokers = Some(started);
    let mut argv: Vec<String> = ["bench", "-p", "prefork-benches", "--bench", "peers", "--"]
        .map(String::from)
        .to_vec();
    argv.extend(args.iter().cloned());
    let mut cmd = ctx.cargo_test_env(argv);
    cmd.env("PEERS_PYTHON", &python)
        .env("PEERS_OUT", target.join("peers.md"))
        .env("PEERS_REQUIRE", "1");
    let r = run(&mut cmd);
    let stopped = ctx.stop_brokers();
    r.and(stopped)
}

/// The cargo target dir: `$CARGO_TARGET_DIR`, else `root/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

/// The first line `cmd` prints, when it exits 0.
fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_owned)
}

/// Sidekiq's version, when `ruby` can load it and the `sidekiq` command
/// is on the PATH.
fn sidekiq_version() -> Option<String> {
    which("sidekiq")?;
    first_line(Command::new("ruby").args(["-e", "require 'sidekiq'; puts Sidekiq::VERSION"]))
}

/// Makes sure Sidekiq is installed, with `apt-get install ruby-sidekiq`
/// when it is not (Sidekiq 6.4 on Debian 12).
///
/// # Errors
/// When apt-get fails or Sidekiq still does not load after it.
fn ensure_sidekiq() -> Result<()> {
    if let Some(v) = sidekiq_version() {
        println!("peers: sidekiq {v} is installed");
        return Ok(());
    }
    println!("peers: sidekiq is missing: installing Debian's ruby-sidekiq");
    apt_install(&["ruby-sidekiq"])?;
    match sidekiq_version() {
        Some(v) => {
            println!("peers: installed sidekiq {v}");
            Ok(())
        }
        None => bail!("ruby-sidekiq is installed but `ruby -e 'require \"sidekiq\"'` fails"),
    }
}

/// Celery's version in the venv's `python`, when it is Celery 5 and the
/// `redis` client loads too.
fn celery_version(python: &Path) -> Option<String> {
    if !python.is_file() {
        return None;
    }
    first_line(Command::new(python).args([
        "-c",
        "import celery, redis, sys; print(celery.__version__); sys.exit(celery.VERSION[0] != 5)",
    ]))
}

/// Makes sure the venv `target/peers-venv` has Celery 5 with redis
/// support (`benches/peers/requirements.txt`), creating it with
/// `python3 -m venv` (installing Debian's `python3-venv` when that fails)
/// and filling it with pip. Returns its `python`.
///
/// # Errors
/// When python3 is missing, the venv cannot be made, or pip fails.
fn ensure_celery(root: &Path, target: &Path) -> Result<PathBuf> {
    let venv = target.join("peers-venv");
    let python = venv.join("bin/python");
    if let Some(v) = celery_version(&python) {
        println!("peers: celery {v} is installed in {}", venv.display());
        return Ok(python);
    }
    println!(
        "peers: celery 5 is missing: installing it into {} with pip",
        venv.display()
    );
    if !python.is_file() {
        if which("python3").is_none() {
            println!("peers: no python3: installing Debian's python3 and python3-venv");
            apt_install(&["python3", "python3-venv"])?;
        }
        let mut make = Command::new("python3");
        make.args(["-m", "venv"]).arg(&venv);
        if run(&mut make).is_err() {
            println!("peers: `python3 -m venv` failed: installing Debian's python3-venv");
            let _ = std::fs::remove_dir_all(&venv);
            apt_install(&["python3-venv"])?;
            run(&mut make)?;
        }
    }
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(root.join(REQUIREMENTS)))
    .context("pip could not install Celery into the venv")?;
    match celery_version(&python) {
        Some(v) => {
            println!("peers: installed celery {v}");
            Ok(python)
        }
        None => bail!(
            "pip installed {REQUIREMENTS} but `{} -c 'import celery, redis'` fails or finds no Celery 5",
            python.display()
        ),
    }
}
