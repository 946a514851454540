//! Broker servers on loopback for the adapter crates' tests.
//!
//! Each adapter crate (`crates/prefork-redis`, ...) is tested against a real
//! server. For every adapter crate present, this module installs the server
//! when it is missing (`apt-get`, or the spec's own `obtain` hook for a
//! server Debian does not package: tansu for Kafka, see `kafka.rs`), starts it on `127.0.0.1` on a free port
//! with its data in a directory of its own, waits until it answers, and
//! hands its URL to the tests in an environment variable
//! (`PREFORK_REDIS_URL`, ...). Servers are stopped by pid: under `ci` when
//! the run ends, also when a step fails (the [`Brokers`] guard stops them
//! when dropped); started with `cargo xtask brokers start`, they run
//! detached (`setsid`) until `cargo xtask brokers stop`, with their pids and
//! data under `target/brokers/` and the exports in `target/brokers.env`.
//!
//! To support another broker, add a [`Spec`] to [`SPECS`].

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::run::{apt_install, which};

/// How to tell that a server is ready.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Probe {
    /// Send these bytes on a fresh connection; the reply must start with
    /// the second ones.
    Exchange(&'static [u8], &'static [u8]),
    /// A check of its own, given the port (a binary protocol's handshake).
    Custom(fn(u16) -> bool),
}

/// Everything a [`Spec`]'s launcher needs to build its command.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    /// The server binary, as found on `PATH`.
    pub(crate) program: &'a Path,
    /// The loopback port to listen on.
    pub(crate) port: u16,
    /// A directory of the server's own for data, config and logs.
    pub(crate) dir: &'a Path,
}

/// One kind of broker server.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Short name, used on the command line and in file names.
    pub(crate) name: &'static str,
    /// The adapter crate (under `crates/`) whose presence means tests need
    /// this server.
    pub(crate) adapter: &'static str,
    /// The server binary.
    pub(crate) program: &'static str,
    /// Debian packages that provide it.
    pub(crate) apt: &'static [&'static str],
    /// The environment variable that carries its URL to the tests.
    pub(crate) env_var: &'static str,
    /// Its URL for a port.
    pub(crate) url: fn(u16) -> String,
    /// Builds the command that runs the server in the foreground (the
    /// launcher may write config files into `dir`).
    pub(crate) launch: fn(&Launch<'_>) -> Result<Command>,
    /// How to tell it is ready.
    pub(crate) probe: Probe,
    /// How long it may take to become ready.
    pub(crate) ready_within: Duration,
    /// A server-specific readiness check and stop, when the probe and
    /// SIGTERM are not enough (RabbitMQ).
    pub(crate) hooks: Option<&'static Hooks>,
    /// Obtains the server binary when Debian packages none (instead of
    /// `apt`), returning its path; given the workspace root, to cache it
    /// under `target/`.
    pub(crate) obtain: Option<fn(&Path) -> Result<PathBuf>>,
    /// Debian packages the adapter crate itself needs to build (a C
    /// library's build tools), installed before clippy and the tests.
    pub(crate) build_apt: &'static [&'static str],
}

/// What a server needs beyond a [`Probe`] and SIGTERM; each gets the
/// server's directory.
#[derive(Debug)]
pub(crate) struct Hooks {
    /// Whether the server is ready, used instead of the probe while it
    /// starts (may block for a few seconds).
    pub(crate) ready: fn(&Path) -> bool,
    /// A graceful stop, run before the SIGTERM that stops the others.
    pub(crate) stop: fn(&Path) -> Result<()>,
}

/// The brokers we know how to run.
pub(crate) const SPECS: &[Spec] = &[
    Spec {
        name: "redis",
        adapter: "prefork-redis",
        program: "redis-server",
        apt: &["redis-server"],
        env_var: "PREFORK_REDIS_URL",
        url: |port| format!("redis://127.0.0.1:{port}/"),
        launch: |l| {
            let mut cmd = Command::new(l.program);
            cmd.args(["--bind", "127.0.0.1", "--port"])
                .arg(l.port.to_string())
                .args(["--daemonize", "no", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "yes", "--dir"])
                .arg(l.dir);
            Ok(cmd)
        },
        probe: Probe::Exchange(b"PING\r\n", b"+PONG"),
        ready_within: Duration::from_secs(10),
        hooks: None,
        obtain: None,
        build_apt: &[],
    },
    Spec {
        name: "beanstalkd",
        adapter: "prefork-beanstalkd",
        program: "beanstalkd",
        apt: &["beanstalkd"],
        env_var: "PREFORK_BEANSTALKD_URL",
        url: |port| format!("beanstalk://127.0.0.1:{port}"),
        launch: |l| {
            // `-z`: the conformance kit round-trips a 16 MiB job (and its
            // dead-letter record, a header longer); the default
            // max-job-size is 64 KiB. The binlog's file size (`-s`, 10 MiB)
            // need not grow: beanstalkd 1.12 writes a larger job into a
            // binlog file of its own and replays it after a restart
            // (tried here).
            let mut cmd = Command::new(l.program);
            cmd.args(["-l", "127.0.0.1", "-p"])
                .arg(l.port.to_string())
                .args(["-z", "33554432", "-b"])
                .arg(l.dir);
            Ok(cmd)
        },
        probe: Probe::Exchange(b"stats\r\n", b"OK "),
        ready_within: Duration::from_secs(10),
        hooks: None,
        obtain: None,
        build_apt: &[],
    },
    Spec {
        name: "rabbitmq",
        adapter: "prefork-rabbitmq",
        program: "rabbitmq-server",
        apt: &["rabbitmq-server"],
        env_var: "PREFORK_RABBITMQ_URL",
        url: |port| format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        launch: crate::rabbitmq::launch,
        // AMQP 0-9-1's protocol header; the server answers with
        // connection.start (a method frame on channel 0).
        probe: Probe::Exchange(b"AMQP\x00\x00\x09\x01", b"\x01\x00\x00"),
        ready_within: Duration::from_secs(60),
        hooks: Some(&crate::rabbitmq::HOOKS),
        obtain: None,
        build_apt: &[],
    },
    Spec {
        name: "kafka",
        adapter: "prefork-kafka",
        program: "tansu",
        apt: &[],
        env_var: "PREFORK_KAFKA_URL",
        url: |port| format!("kafka://127.0.0.1:{port}"),
        launch: crate::kafka::launch,
        probe: Probe::Custom(crate::kafka::ready),
        ready_within: Duration::from_secs(10),
        obtain: Some(crate::kafka::obtain),
        hooks: None,
        build_apt: &["cmake", "libcurl4-openssl-dev"],
    },
];

/// The broker called `name`.
///
/// # Errors
/// When there is none, listing those there are.
pub(crate) fn by_name(name: &str) -> Result<&'static Spec> {
    SPECS.iter().find(|s| s.name == name).with_context(|| {
        let known: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
        format!("unknown broker `{name}` (known: {})", known.join(", "))
    })
}

/// The brokers whose adapter crates exist in `root/crates`.
pub(crate) fn needed(root: &Path) -> Vec<&'static Spec> {
    SPECS
        .iter()
        .filter(|s| {
            root.join("crates")
                .join(s.adapter)
                .join("Cargo.toml")
                .is_file()
        })
        .collect()
}

/// How started servers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Children of this process, in its process group, data in a temp dir,
    /// stopped when the [`Brokers`] guard is stopped or dropped.
    Attached,
    /// In sessions of their own (`setsid`), outliving this process, data
    /// under `target/brokers/NAME/`.
    Detached,
}

/// One running server.
#[derive(Debug)]
struct Server {
    /// What it is.
    spec: &'static Spec,
    /// Its process (a child of ours while this process lives).
    child: Child,
    /// Its port on 127.0.0.1.
    port: u16,
    /// Its data directory, removed when it stops.
    dir: PathBuf,
}

/// A guard over started servers: [`Brokers::stop`] stops them and says
/// whether that worked; dropping the guard stops them too (best effort,
/// e.g. while a failed step unwinds).
#[derive(Debug)]
pub(crate) struct Brokers {
    /// The servers, in start order.
    servers: Vec<Server>,
}

impl Brokers {
    /// Installs what is missing, then starts each server and waits until
    /// it is ready. On failure, those already started are stopped.
    ///
    /// # Errors
    /// When a server cannot be installed, started, or does not become
    /// ready in time; the message includes the end of its log.
    pub(crate) fn start(specs: &[&'static Spec], mode: Mode) -> Result<Brokers> {
        install_missing(specs)?;
        let mut started = Brokers {
            servers: Vec::new(),
        };
        for spec in specs {
            started.servers.push(start_one(spec, mode)?);
        }
        Ok(started)
    }

    /// The environment variables that carry the servers' URLs.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        self.servers
            .iter()
            .map(|s| (s.spec.env_var.to_string(), (s.spec.url)(s.port)))
            .collect()
    }

    /// Stops every server (SIGTERM, then SIGKILL after a grace period) and
    /// removes its data.
    ///
    /// # Errors
    /// When a server could not be signalled or reaped.
    pub(crate) fn stop(mut self) -> Result<()> {
        let mut first_error = None;
        for mut server in self.servers.drain(..).rev() {
            let name = server.spec.name;
            match stop_child(server.spec, &mut server.child, &server.dir) {
                Ok(()) => println!("stopped {name} (pid {})", server.child.id()),
                Err(e) => {
                    first_error.get_or_insert(e.context(format!("could not stop {name}")));
                }
            }
            let _ = std::fs::remove_dir_all(&server.dir);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Lets the servers run on after this process exits, returning what is
    /// needed to stop them later: (spec, pid, port, data dir).
    fn detach(mut self) -> Vec<(&'static Spec, u32, u16, PathBuf)> {
        self.servers
            .drain(..)
            .map(|s| (s.spec, s.child.id(), s.port, s.dir))
            .collect()
    }
}

impl Drop for Brokers {
    fn drop(&mut self) {
        for server in self.servers.iter_mut().rev() {
            let _ = stop_child(server.spec, &mut server.child, &server.dir);
            let _ = std::fs::remove_dir_all(&server.dir);
        }
    }
}

/// Installs the Debian packages of the servers not found on `PATH`, and
/// obtains those that are not packaged.
fn install_missing(specs: &[&Spec]) -> Result<()> {
    let packages: Vec<&str> = specs
        .iter()
        .filter(|s| s.obtain.is_none() && which(s.program).is_none())
        .flat_map(|s| s.apt.iter().copied())
        .collect();
    apt_install(&packages)?;
    for spec in specs {
        program_path(spec)?;
    }
    Ok(())
}

/// The server binary: obtained (and cached) by the spec's own hook, or
/// found on `PATH`.
fn program_path(spec: &Spec) -> Result<PathBuf> {
    match spec.obtain {
        Some(obtain) => obtain(&crate::run::workspace_root())
            .with_context(|| format!("could not obtain {}", spec.program)),
        None => which(spec.program)
            .with_context(|| format!("{} is not on PATH (after installing)", spec.program)),
    }
}

/// Installs the Debian packages that the present adapter crates need to
/// build (those not installed yet).
///
/// # Errors
/// When apt-get fails.
pub(crate) fn install_build_deps(root: &Path) -> Result<()> {
    let missing: Vec<&str> = needed(root)
        .iter()
        .flat_map(|s| s.build_apt.iter().copied())
        .filter(|p| !dpkg_installed(p))
        .collect();
    apt_install(&missing)
}

/// Whether the Debian package `name` is installed.
fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Starts one server on a free port and waits until it is ready. A server
/// that exits at once (say, its port was taken in between) is tried again
/// on another port, twice.
fn start_one(spec: &'static Spec, mode: Mode) -> Result<Server> {
    let program = program_path(spec)?;
    let mut last_error = None;
    for _attempt in 0..3 {
        let port = free_port()?;
        let dir = data_dir(spec, mode)?;
        match launch(spec, mode, &program, port, &dir) {
            Ok(server) => {
                println!(
                    "started {} on 127.0.0.1:{port} (pid {}, data in {})",
                    spec.name,
                    server.child.id(),
                    dir.display()
                );
                return Ok(server);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                last_error = Some(e);
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
        .context(format!("could not start {}", spec.name)))
}

/// Spawns the server and waits for it; kills it again if it does not
/// become ready.
fn launch(
    spec: &'static Spec,
    mode: Mode,
    program: &Path,
    port: u16,
    dir: &Path,
) -> Result<Server> {
    let inner = (spec.launch)(&Launch { program, port, dir })?;
    let mut cmd = match mode {
        Mode::Attached => inner,
        Mode::Detached => {
            // setsid(1) execs the server directly (our child is never a
            // process group leader), so the pid we record is the server's.
            let mut c = Command::new("setsid");
            c.arg(inner.get_program()).args(inner.get_args());
            c.envs(inner.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
            c
        }
    };
    let log_path = dir.join("log");
    let log = File::create(&log_path)
        .with_context(|| format!("could not create {}", log_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(dir);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not run {}", program.display()))?;
    if let Err(e) = wait_ready(spec, &mut child, port, dir, &log_path) {
        let _ = stop_child(spec, &mut child, dir);
        return Err(e);
    }
    Ok(Server {
        spec,
        child,
        port,
        dir: dir.to_path_buf(),
    })
}

/// Polls the server until its probe succeeds, it exits, or time runs out.
fn wait_ready(spec: &Spec, child: &mut Child, port: u16, dir: &Path, log: &Path) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited before it was ready ({status}); its log:\n{}",
                spec.name,
                log_tail(log)
            );
        }
        let ready = match spec.hooks {
            Some(h) => (h.ready)(dir),
            None => probe(spec.probe, port),
        };
        if ready {
            return Ok(());
        }
        if started.elapsed() > spec.ready_within {
            bail!(
                "{} was not ready after {:?}; its log:\n{}",
                spec.name,
                spec.ready_within,
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server on `port` answers its probe.
fn probe(probe: Probe, port: u16) -> bool {
    let (send, expect) = match probe {
        Probe::Exchange(send, expect) => (send, expect),
        Probe::Custom(check) => return check(port),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(send).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < expect.len() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(expect)
}

/// A port that was free on 127.0.0.1 a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// A fresh data directory for a server: in the temp dir when attached,
/// under `target/brokers/` when detached.
fn data_dir(spec: &Spec, mode: Mode) -> Result<PathBuf> {
    let dir = match mode {
        Mode::Attached => std::env::temp_dir().join(format!(
            "prefork-xtask-{}-{}",
            std::process::id(),
            spec.name
        )),
        Mode::Detached => state_dir().join(spec.name),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    Ok(dir)
}

/// The last lines of a server's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail.join("\n")
    }
}

/// The spec's graceful stop if it has one, then SIGTERM, up to 5 s to
/// exit, then SIGKILL; reaps the child.
fn stop_child(spec: &Spec, child: &mut Child, dir: &Path) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    graceful_stop(spec, dir);
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Where detached servers keep their state: `target/brokers/`.
fn state_dir() -> PathBuf {
    crate::run::workspace_root().join("target/brokers")
}

/// The file that the exports of detached servers are written to.
fn env_file() -> PathBuf {
    crate::run::workspace_root().join("target/brokers.env")
}

/// A detached server as recorded in `target/brokers/NAME.pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    /// Its process id.
    pid: u32,
    /// Its port on 127.0.0.1.
    port: u16,
    /// Its data directory.
    dir: PathBuf,
}

impl Record {
    /// The file's text: `pid port dir` on one line.
    fn render(&self) -> String {
        format!("{} {} {}\n", self.pid, self.port, self.dir.display())
    }

    /// Reads the file's text back.
    fn parse(text: &str) -> Option<Record> {
        let mut parts = text.trim_end().splitn(3, ' ');
        Some(Record {
            pid: parts.next()?.parse().ok()?,
            port: parts.next()?.parse().ok()?,
            dir: PathBuf::from(parts.next()?),
        })
    }
}

/// The record of a detached server, if one exists.
fn record(spec: &Spec) -> Option<Record> {
    let text = std::fs::read_to_string(state_dir().join(format!("{}.pid", spec.name))).ok()?;
    Record::parse(&text)
}

/// Whether `pid` is alive and still runs `spec`'s program (not a process
/// that reused the pid).
fn alive(spec: &Spec, pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(spec.program)
}

/// `cargo xtask brokers start [NAME...]`: starts the named brokers (by
/// default those the present adapter crates need) detached, records them,
/// and prints and writes their exports.
///
/// # Errors
/// When a broker cannot be installed or started.
pub(crate) fn cmd_start(root: &Path, names: &[String]) -> Result<()> {
    let specs: Vec<&'static Spec> = if names.is_empty() {
        needed(root)
    } else {
        names.iter().map(|n| by_name(n)).collect::<Result<_>>()?
    };
    if specs.is_empty() {
        let known: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
        println!(
            "no adapter crate needs a broker yet; name some to start them anyway: {}",
            known.join(", ")
        );
        return Ok(());
    }
    std::fs::create_dir_all(state_dir())?;
    let mut to_start = Vec::new();
    for spec in specs {
        match record(spec) {
            Some(r) if alive(spec, r.pid) => {
                println!(
                    "{} is already running (pid {}, port {})",
                    spec.name, r.pid, r.port
                );
            }
            _ => to_start.push(spec),
        }
    }
    let started = Brokers::start(&to_start, Mode::Detached)?;
    for (spec, pid, port, dir) in started.detach() {
        let r = Record { pid, port, dir };
        std::fs::write(state_dir().join(format!("{}.pid", spec.name)), r.render())?;
    }
    let exports = write_env_file()?;
    print!("{exports}");
    println!("# written to {}", env_file().display());
    Ok(())
}

/// Rewrites `target/brokers.env` from the records of live servers and
/// returns its text.
fn write_env_file() -> Result<String> {
    let mut text = String::new();
    for spec in SPECS {
        if let Some(r) = record(spec).filter(|r| alive(spec, r.pid)) {
            text.push_str(&format!("export {}={}\n", spec.env_var, (spec.url)(r.port)));
        }
    }
    std::fs::write(env_file(), &text)
        .with_context(|| format!("could not write {}", env_file().display()))?;
    Ok(text)
}

/// `cargo xtask brokers stop`: stops what `brokers start` started.
///
/// # Errors
/// When a server will not die.
pub(crate) fn cmd_stop() -> Result<()> {
    let mut stopped = 0;
    for spec in SPECS {
        let path = state_dir().join(format!("{}.pid", spec.name));
        let Some(r) = record(spec) else { continue };
        if alive(spec, r.pid) {
            stop_pid(spec, r.pid, &r.dir)?;
            println!("stopped {} (pid {})", spec.name, r.pid);
            stopped += 1;
        } else {
            println!("{} (pid {}) was not running", spec.name, r.pid);
        }
        let _ = std::fs::remove_dir_all(&r.dir);
        std::fs::remove_file(&path)?;
    }
    let _ = std::fs::remove_file(env_file());
    if stopped == 0 {
        println!("no broker was running");
    }
    Ok(())
}

/// Runs the spec's graceful stop, if any; a failure is reported and left
/// to the SIGTERM that follows.
fn graceful_stop(spec: &Spec, dir: &Path) {
    if let Some(h) = spec.hooks
        && let Err(e) = (h.stop)(dir)
    {
        eprintln!(
            "{}: graceful stop failed, sending SIGTERM: {e:#}",
            spec.name
        );
    }
}

/// Stops a detached server (not our child): the spec's graceful stop,
/// then SIGTERM, up to 5 s, SIGKILL.
fn stop_pid(spec: &Spec, pid: u32, dir: &Path) -> Result<()> {
    graceful_stop(spec, dir);
    if !alive(spec, pid) {
        return Ok(());
    }
    let p = Pid::from_raw(i32::try_from(pid)?);
    kill(p, Signal::SIGTERM).with_context(|| format!("kill -TERM {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(spec, pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(p, Signal::SIGKILL).with_context(|| format!("kill -KILL {pid}"))?;
    Ok(())
}

/// `cargo xtask brokers status`: what runs, and whether it answers.
pub(crate) fn cmd_status(root: &Path) {
    for spec in SPECS {
        let need = if needed(root).iter().any(|s| s.name == spec.name) {
            "needed"
        } else {
            "not needed yet"
        };
        match record(spec) {
            Some(r) if alive(spec, r.pid) => {
                let answers = if probe(spec.probe, r.port) {
                    "answers"
                } else {
                    "does NOT answer"
                };
                println!(
                    "{:<11} running, pid {}, {} {answers} ({need})",
                    spec.name,
                    r.pid,
                    (spec.url)(r.port)
                );
            }
            Some(r) => println!("{:<11} dead (pid {} recorded) ({need})", spec.name, r.pid),
            None => println!("{:<11} not started ({need})", spec.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            pid: 4242,
            port: 6379,
            dir: PathBuf::from("/tmp/a dir/redis"),
        };
        assert_eq!(Record::parse(&r.render()), Some(r));
        assert_eq!(Record::parse("garbage"), None);
    }

    #[test]
    fn every_spec_is_distinct_and_named_after_its_adapter() {
        for (i, a) in SPECS.iter().enumerate() {
            assert!(by_name(a.name).is_ok());
            assert!(a.adapter.starts_with("prefork-"), "{}", a.adapter);
            assert!(a.env_var.starts_with("PREFORK_"), "{}", a.env_var);
            for b in &SPECS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.env_var, b.env_var);
            }
        }
        assert!(by_name("nope").is_err());
    }

    #[test]
    fn probe_fails_on_a_closed_port() {
        let port = free_port().unwrap();
        assert!(!probe(Probe::Exchange(b"PING\r\n", b"+PONG"), port));
    }

    #[test]
    fn probe_checks_the_reply() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for reply in [&b"+PONG\r\n"[..], b"-ERR\r\n"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 6];
                s.read_exact(&mut buf).unwrap();
                s.write_all(reply).unwrap();
            }
        });
        assert!(probe(Probe::Exchange(b"PING\r\n", b"+PONG"), port));
        assert!(!probe(Probe::Exchange(b"PING\r\n", b"+PONG"), port));
        server.join().unwrap();
    }
}
