//! The pool's settings ([`Settings`]) and where they come from: defaults,
//! a TOML file, `PREFORK_*` environment variables and command-line flags,
//! each layer over the one before ([`load`]). Every problem of every layer
//! is collected, with where it was found, before anything runs
//! ([`Problems`]); `docs/config.md` documents each setting.
//!
//! The master's own settings are checked by the master's
//! [`Builder::build`](prefork::Builder::build), not again here: a refusal
//! is traced back to the setting that caused it (see `master_problems`).

mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use value::Value;
pub use value::{Bytes, LogFormat};

use crate::Mode;

/// Every setting of a pool started by `prefork run` (or `work`), with the
/// defaults of the table in `docs/config.md`.
///
/// The fields are grouped as the file's sections are: top-level keys,
/// then `[shutdown]`, `[recycle]`, `[restart]`, `[retry]`,
/// `[time_limits]` and `[logging]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `name`: process titles (`NAME master`, `NAME worker[N]`) and logs.
    pub name: String,
    /// `workers`: how many worker processes.
    pub workers: usize,
    /// `mode`: pull or dispatch.
    pub mode: Mode,
    /// `broker`: the broker URL; `None` is the embedded spool under
    /// `$TMPDIR/prefork-spool`.
    pub broker: Option<String>,
    /// `queue`: the one queue the pool works on.
    pub queue: String,
    /// `lease`: the broker's claim timeout (`None`: the adapter's default).
    pub lease: Option<Duration>,
    /// `prefetch`: a fixed number of jobs a pull-mode worker claims per
    /// fetch (`None`: adaptive).
    pub prefetch: Option<usize>,
    /// `lookahead`: dispatch mode's jobs asked for beyond the idle workers
    /// (`None`: adaptive).
    pub lookahead: Option<usize>,
    /// `poll_interval`: the longest a pull-mode fetch waits for a job.
    pub poll_interval: Duration,
    /// `touch_every`: how often the dispatch feeder renews its claims.
    pub touch_every: Duration,
    /// `timeout`: the liveness (heartbeat) timeout of a worker.
    pub timeout: Duration,
    /// `heartbeat_interval`: how often an idle worker reports (`None`: a
    /// quarter of the timeout).
    pub heartbeat_interval: Option<Duration>,
    /// `keep_fds`: when set, a worker closes every descriptor but stdio,
    /// its channel and these (`None`: it closes only the master's own).
    pub keep_fds: Option<Vec<i32>>,
    /// `[shutdown]`.
    pub shutdown: Shutdown,
    /// `[recycle]`.
    pub recycle: Recycle,
    /// `[restart]`.
    pub restart: Restart,
    /// `[retry]`.
    pub retry: Retry,
    /// `[time_limits]`.
    pub time_limits: TimeLimits,
    /// `[logging]`.
    pub logging: Logging,
}

/// `[shutdown]`: how the pool stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Shutdown {
    /// `graceful_timeout`: how long a worker asked to stop may finish.
    pub graceful_timeout: Duration,
    /// `kill_grace`: SIGTERM to SIGKILL in a quick stop.
    pub kill_grace: Duration,
    /// `stop_timeout`: the service manager's stop budget, if any.
    pub stop_timeout: Option<Duration>,
    /// `term_is_graceful`: TERM stops gracefully, like QUIT.
    pub term_is_graceful: bool,
}

/// `[recycle]`: when a worker is replaced by a fresh one.
#[derive(Debug, Clone, PartialEq)]
pub struct Recycle {
    /// `max_iterations`: after about this many iterations (one job, or
    /// one fetch that found none).
    pub max_iterations: Option<u64>,
    /// `max_age`: after about this long.
    pub max_age: Option<Duration>,
    /// `max_memory`: once its PSS exceeds this.
    pub max_memory: Option<Bytes>,
    /// `memory_check_interval`: how often a worker measures its memory.
    pub memory_check_interval: Duration,
    /// `jitter`: the largest fraction the limits are lowered by.
    pub jitter: f64,
}

/// `[restart]`: crash-loop backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// `backoff_initial`: the first restart delay after an early death.
    pub backoff_initial: Duration,
    /// `backoff_max`: the longest restart delay.
    pub backoff_max: Duration,
    /// `healthy_after`: a worker living this long did not die early.
    pub healthy_after: Duration,
    /// `crash_limit`: early deaths in a row of every slot before the
    /// master gives up.
    pub crash_limit: u32,
}

/// `[retry]`: the default retry policy of every job.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// `max_attempts`: attempts before a job is dead.
    pub max_attempts: u32,
    /// `base`: the delay after the first failure (doubling).
    pub base: Duration,
    /// `max_delay`: the longest delay (`None`: 64 times `base`).
    pub max_delay: Option<Duration>,
    /// `jitter`: the largest random fraction taken off each delay.
    pub jitter: f64,
}

/// `[time_limits]`: the default time limits of every job.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeLimits {
    /// `soft`: advisory; the handler sees it.
    pub soft: Option<Duration>,
    /// `hard`: the worker is killed.
    pub hard: Option<Duration>,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    /// `level`: a `tracing` filter (`info`, `warn,prefork_jobs=debug`).
    /// Default: `$RUST_LOG` when set, else `info`.
    pub level: String,
    /// `format`: `text` or `json`, one object a line.
    pub format: LogFormat,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            name: "prefork".to_owned(),
            workers: 4,
            mode: Mode::Pull,
            broker: None,
            queue: "default".to_owned(),
            lease: None,
            prefetch: None,
            lookahead: None,
            poll_interval: Duration::from_millis(200),
            touch_every: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            heartbeat_interval: None,
            keep_fds: None,
            shutdown: Shutdown {
                graceful_timeout: Duration::from_secs(30),
                kill_grace: Duration::from_secs(2),
                stop_timeout: None,
                term_is_graceful: false,
            },
            recycle: Recycle {
                max_iterations: None,
                max_age: None,
                max_memory: None,
                memory_check_interval: Duration::from_secs(10),
                jitter: 0.1,
            },
            restart: Restart {
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(30),
                healthy_after: Duration::from_secs(10),
                crash_limit: 8,
            },
            retry: Retry {
                max_attempts: 5,
                base: Duration::from_secs(1),
                max_delay: None,
                jitter: 0.5,
            },
            time_limits: TimeLimits {
                soft: None,
                hard: None,
            },
            logging: Logging {
                level: std::env::var("RUST_LOG")
                    .ok()
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(|| "info".to_owned()),
                format: LogFormat::Text,
            },
        }
    }
}

/// Checks of one value on its own: `Err(why)` when out of range.
type Check<T> = fn(&T) -> Result<(), String>;

fn at_least_one<T: PartialOrd + From<u8> + fmt::Display>(v: &T) -> Result<(), String> {
    if *v < T::from(1) {
        return Err(format!("must be at least 1 (got {v})"));
    }
    Ok(())
}

fn positive(d: &Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(())
}

fn unit_fraction(f: &f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(f) {
        return Err(format!("must be a fraction in [0, 1] (got {f})"));
    }
    Ok(())
}

fn not_empty(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(())
}

fn no_check<T>(_: &T) -> Result<(), String> {
    Ok(())
}

/// The schema: each setting's dotted path, its field, the checks of its
/// value alone and whether the master's `Builder` owns it (and checks it).
/// One list gives parsing, environment names, printing and resets.
macro_rules! schema {
    ($( $path:literal => $($field:ident).+ : $ty:ty, $check:expr, $owner:ident; )*) => {
        /// Every setting's dotted path, in the order of `docs/config.md`.
        pub const KEYS: &[&str] = &[$($path),*];

        fn master_owned(path: &str) -> bool {
            match path {
                $( $path => Owner::$owner == Owner::Master, )*
                _ => false,
            }
        }

        /// Parses `raw` as the value of `path` and stores it.
        fn set(s: &mut Settings, path: &str, raw: Raw<'_>) -> Result<(), String> {
            match path {
                $( $path => {
                    let v: $ty = match raw {
                        Raw::Toml(t) => Value::from_toml(t)?,
                        Raw::Text(t) => Value::from_text(t)?,
                    };
                    let check: Check<$ty> = $check;
                    check(&v)?;
                    s.$($field).+ = v;
                    Ok(())
                } )*
                _ => Err(format!("`{path}` is not a setting")),
            }
        }

        /// `path`'s value as TOML, or `None` when not set.
        fn show(s: &Settings, path: &str) -> Option<String> {
            match path {
                $( $path => s.$($field).+.show(), )*
                _ => None,
            }
        }

        /// Puts `path` back to its default.
        fn reset(s: &mut Settings, path: &str) {
            let d = Settings::default();
            match path {
                $( $path => s.$($field).+ = d.$($field).+, )*
                _ => {}
            }
        }
    };
}

#[derive(PartialEq, Eq)]
enum Owner {
    Master,
    Cli,
}

schema! {
    "name" => name: String, |s| not_empty(s), Master;
    "workers" => workers: usize, no_check, Master;
    "mode" => mode: Mode, no_check, Cli;
    "broker" => broker: Option<String>, no_check, Cli;
    "queue" => queue: String, |s| not_empty(s), Cli;
    "lease" => lease: Option<Duration>, |d| d.as_ref().map_or(Ok(()), positive), Cli;
    "prefetch" => prefetch: Option<usize>, |n| n.as_ref().map_or(Ok(()), at_least_one), Cli;
    "lookahead" => lookahead: Option<usize>, no_check, Master;
    "poll_interval" => poll_interval: Duration, |d| if *d < Duration::from_millis(1) { Err("must be at least 1ms".to_owned()) } else { Ok(()) }, Cli;
    "touch_every" => touch_every: Duration, positive, Cli;
    "timeout" => timeout: Duration, no_check, Master;
    "heartbeat_interval" => heartbeat_interval: Option<Duration>, no_check, Master;
    "keep_fds" => keep_fds: Option<Vec<i32>>, no_check, Master;
    "shutdown.graceful_timeout" => shutdown.graceful_timeout: Duration, no_check, Master;
    "shutdown.kill_grace" => shutdown.kill_grace: Duration, no_check, Master;
    "shutdown.stop_timeout" => shutdown.stop_timeout: Option<Duration>, no_check, Master;
    "shutdown.term_is_graceful" => shutdown.term_is_graceful: bool, no_check, Master;
    "recycle.max_iterations" => recycle.max_iterations: Option<u64>, no_check, Master;
    "recycle.max_age" => recycle.max_age: Option<Duration>, no_check, Master;
    "recycle.max_memory" => recycle.max_memory: Option<Bytes>, no_check, Master;
    "recycle.memory_check_interval" => recycle.memory_check_interval: Duration, no_check, Master;
    "recycle.jitter" => recycle.jitter: f64, no_check, Master;
    "restart.backoff_initial" => restart.backoff_initial: Duration, no_check, Master;
    "restart.backoff_max" => restart.backoff_max: Duration, no_check, Master;
    "restart.healthy_after" => restart.healthy_after: Duration, no_check, Master;
    "restart.crash_limit" => restart.crash_limit: u32, no_check, Master;
    "retry.max_attempts" => retry.max_attempts: u32, at_least_one, Cli;
    "retry.base" => retry.base: Duration, positive, Cli;
    "retry.max_delay" => retry.max_delay: Option<Duration>, no_check, Cli;
    "retry.jitter" => retry.jitter: f64, unit_fraction, Cli;
    "time_limits.soft" => time_limits.soft: Option<Duration>, |d| d.as_ref().map_or(Ok(()), positive), Cli;
    "time_limits.hard" => time_limits.hard: Option<Duration>, |d| d.as_ref().map_or(Ok(()), positive), Cli;
    "logging.level" => logging.level: String, |s| check_level(s), Cli;
    "logging.format" => logging.format: LogFormat, no_check, Cli;
}

/// The sections of the file: the part of a path before its dot.
const SECTIONS: &[&str] = &[
    "shutdown",
    "recycle",
    "restart",
    "retry",
    "time_limits",
    "logging",
];

/// Names that a later version will read, refused with a reason rather than
/// as unknown keys.
const NOT_YET: &[(&str, &str)] = &[
    (
        "queues",
        "several queues per pool are not supported yet: give the one queue as `queue = \"NAME\"`",
    ),
    (
        "user",
        "switching the workers' user is not supported yet: start prefork as that user",
    ),
    (
        "group",
        "switching the workers' group is not supported yet: start prefork with that group",
    ),
    ("metrics", "a metrics endpoint is not supported yet"),
    (
        "control",
        "the control socket is not set in the file yet: use `--control-socket PATH` (or $PREFORK_CONTROL_SOCKET) and `--control-group GROUP`",
    ),
    (
        "recycle.max_jobs",
        "the master counts iterations, not jobs: use `recycle.max_iterations` (an iteration is one job, or one fetch that found none)",
    ),
];

/// The settings that apply in one mode only, and that mode.
const ONE_MODE: &[(&str, Mode)] = &[
    ("prefetch", Mode::Pull),
    ("poll_interval", Mode::Pull),
    ("lookahead", Mode::Dispatch),
    ("touch_every", Mode::Dispatch),
];

/// The master's `Builder` setting names and the paths that set them.
const MASTER_NAMES: &[(&str, &str)] = &[
    ("name", "name"),
    ("workers", "workers"),
    ("dispatch_lookahead", "lookahead"),
    ("timeout", "timeout"),
    ("heartbeat_interval", "heartbeat_interval"),
    ("close_other_fds", "keep_fds"),
    ("graceful_timeout", "shutdown.graceful_timeout"),
    ("kill_grace", "shutdown.kill_grace"),
    ("stop_timeout", "shutdown.stop_timeout"),
    ("term_is_graceful", "shutdown.term_is_graceful"),
    ("max_iterations", "recycle.max_iterations"),
    ("max_age", "recycle.max_age"),
    ("max_memory", "recycle.max_memory"),
    ("memory_check_interval", "recycle.memory_check_interval"),
    ("recycle_jitter", "recycle.jitter"),
    ("backoff_initial", "restart.backoff_initial"),
    ("backoff_max", "restart.backoff_max"),
    ("healthy_after", "restart.healthy_after"),
    ("crash_limit", "restart.crash_limit"),
];

fn check_level(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| {
            format!("not a log filter ({e}); e.g. \"info\" or \"warn,prefork_jobs=debug\"")
        })
}

/// A value before it is parsed: from the file, or text from the
/// environment or a flag.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Toml(&'a DeValue<'a>),
    Text(&'a str),
}

/// The environment variable that sets `path`: `PREFORK_` and the path in
/// upper case with `_` for `.` (`shutdown.kill_grace` is
/// `PREFORK_SHUTDOWN_KILL_GRACE`).
pub fn env_name(path: &str) -> String {
    format!("PREFORK_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The config file, at this 1-based line and column.
    File {
        /// The line.
        line: usize,
        /// The column (in characters).
        column: usize,
    },
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { line, column } => write!(f, "line {line}, column {column}"),
            Origin::Env(var) => write!(f, "${var}"),
            Origin::Flag(flag) => f.write_str(flag),
        }
    }
}

/// One thing wrong with the settings, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a place in the file, a variable or a flag.
    pub origin: Origin,
    /// The setting concerned, when there is one (a syntax error has none).
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Every problem found, in the order of the file, then the environment,
/// then the flags. `Display` writes one line each: `FILE:LINE:COLUMN:
/// MESSAGE`, `$VAR: MESSAGE` or `--flag: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    /// The file, when there was one (for the file's lines).
    pub file: Option<PathBuf>,
    /// The problems.
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.list {
            match (&p.origin, &self.file) {
                (Origin::File { line, column }, Some(file)) => {
                    write!(f, "{}:{line}:{column}: ", file.display())?
                }
                (Origin::Default, _) => {}
                (o, _) => write!(f, "{o}: ")?,
            }
            match &p.path {
                Some(path) => writeln!(f, "`{path}`: {}", p.message)?,
                None => writeln!(f, "{}", p.message)?,
            }
        }
        write!(
            f,
            "{} problem{} in the settings",
            self.list.len(),
            if self.list.len() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Problems {}

/// A flag's value, given to [`load`] as the text its setting would have
/// in the environment (`--timeout 30` is `timeout` = `30s`).
#[derive(Debug, Clone)]
pub struct Override {
    /// The setting's dotted path.
    pub path: &'static str,
    /// Its value, in the environment's syntax.
    pub value: String,
    /// The flag, for messages (`--timeout`).
    pub flag: &'static str,
}

/// Settings that passed every check, with where each value came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// The file they were read from, if any.
    pub file: Option<PathBuf>,
    origins: BTreeMap<&'static str, Origin>,
    /// Environment variables named like settings that are not (with the
    /// setting meant), for a warning.
    pub near_misses: Vec<(String, String)>,
}

impl Loaded {
    /// Where `path`'s value came from.
    pub fn origin(&self, path: &str) -> &Origin {
        self.origins.get(path).unwrap_or(&Origin::Default)
    }

    /// The broker URL: the one set, or the embedded spool under
    /// `$TMPDIR/prefork-spool`, with the lease applied.
    ///
    /// # Errors
    ///
    /// None for settings that passed [`load`]'s checks.
    pub fn broker_url(&self) -> Result<prefork::BrokerUrl, prefork::broker::BrokerError> {
        broker_url(&self.settings)
    }

    /// The effective settings as a TOML document, each value commented
    /// with where it came from; unset optional settings are comments. The
    /// broker URL's password is shown as `***`.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "# The effective settings: defaults < {} < PREFORK_* variables < flags.\n",
            self.file
                .as_ref()
                .map_or("(no file)".to_owned(), |f| f.display().to_string())
        );
        let mut section = "";
        for path in KEYS {
            let (sec, key) = path.split_once('.').unwrap_or(("", path));
            if sec != section {
                section = sec;
                out.push_str(&format!("\n[{sec}]\n"));
            }
            let origin = self.origin(path);
            let value = if *path == "broker" {
                self.settings
                    .broker
                    .as_ref()
                    .map(|_| match self.broker_url() {
                        Ok(url) => toml::Value::String(url.to_string()).to_string(),
                        Err(_) => "\"(unreadable)\"".to_owned(),
                    })
            } else {
                show(&self.settings, path)
            };
            let other_mode = ONE_MODE
                .iter()
                .find(|(p, _)| p == path)
                .filter(|(_, mode)| *mode != self.settings.mode);
            match (value, other_mode) {
                (Some(v), None) => out.push_str(&format!("{key} = {v}  # {origin}\n")),
                (None, None) if *path == "broker" => out.push_str(&format!(
                    "# {key}: not set: {}  # {origin}\n",
                    self.broker_url()
                        .map_or_else(|e| e.to_string(), |url| url.to_string())
                )),
                (None, None) => out.push_str(&format!("# {key}: not set  # {origin}\n")),
                (_, Some((_, mode))) => {
                    out.push_str(&format!("# {key}: {mode} mode only\n"));
                }
            }
        }
        out
    }
}

fn broker_url(s: &Settings) -> Result<prefork::BrokerUrl, prefork::broker::BrokerError> {
    let url = match &s.broker {
        Some(u) => prefork::broker_url(u)?,
        None => {
            let dir = std::env::temp_dir().join("prefork-spool");
            prefork::broker_url(&format!("spool://{}", dir.display()))?
        }
    };
    Ok(match s.lease {
        Some(lease) => url.with_lease(lease),
        None => url,
    })
}

/// Reads the settings: the defaults, then `file` (if any), then the
/// `PREFORK_*` variables of `env`, then `flags`; then checks them all.
///
/// # Errors
///
/// [`Problems`] with every problem found: a file that cannot be read or
/// is not TOML (each syntax error), unknown keys (with the nearest known
/// one), values of the wrong type or out of range, settings that do not
/// fit together, an invalid broker URL (password hidden).
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[Override],
) -> Result<Loaded, Problems> {
    let mut s = Settings::default();
    let mut origins: BTreeMap<&'static str, Origin> = BTreeMap::new();
    let mut problems = Vec::new();
    // Whether every layer could be read whole (no syntax error): only then
    // are the settings checked against each other.
    let mut whole = true;
    if let Some(file) = file {
        match std::fs::read_to_string(file) {
            Ok(text) => whole = read_toml(&text, &mut s, &mut origins, &mut problems),
            Err(e) => {
                whole = false;
                problems.push(Problem {
                    origin: Origin::Default,
                    path: None,
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
    }
    let mut near_misses = Vec::new();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PREFORK_"))
        .collect();
    env.sort();
    for (var, value) in env {
        match KEYS.iter().find(|p| env_name(p) == var) {
            Some(path) => apply_text(
                &mut s,
                path,
                &value,
                Origin::Env(var),
                &mut origins,
                &mut problems,
            ),
            None => {
                let names: Vec<String> = KEYS.iter().map(|p| env_name(p)).collect();
                if let Some(near) = nearest(&var, names.iter().map(String::as_str)) {
                    near_misses.push((var, near.to_owned()));
                }
            }
        }
    }
    for o in flags {
        let origin = Origin::Flag(o.flag.to_owned());
        apply_text(
            &mut s,
            o.path,
            &o.value,
            origin,
            &mut origins,
            &mut problems,
        );
    }
    // Problems between settings, only among values that were read.
    let failed: Vec<String> = problems.iter().filter_map(|p| p.path.clone()).collect();
    if whole {
        problems.extend(cross_problems(&s, &origins, &failed));
    }
    let file = file.map(Path::to_path_buf);
    if !problems.is_empty() {
        problems.sort_by_key(|p| match &p.origin {
            Origin::Default => (0, 0, 0, String::new()),
            Origin::File { line, column } => (1, *line, *column, String::new()),
            Origin::Env(v) => (2, 0, 0, v.clone()),
            Origin::Flag(f) => (3, 0, 0, f.clone()),
        });
        return Err(Problems {
            file,
            list: problems,
        });
    }
    Ok(Loaded {
        settings: s,
        file,
        origins,
        near_misses,
    })
}

fn apply_text(
    s: &mut Settings,
    path: &'static str,
    text: &str,
    origin: Origin,
    origins: &mut BTreeMap<&'static str, Origin>,
    problems: &mut Vec<Problem>,
) {
    match set(s, path, Raw::Text(text)) {
        Ok(()) => {
            origins.insert(path, origin);
        }
        Err(message) => problems.push(Problem {
            origin,
            path: Some(path.to_owned()),
            message,
        }),
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Reads the file's settings into `s`; false when it is not valid TOML.
fn read_toml(
    text: &str,
    s: &mut Settings,
    origins: &mut BTreeMap<&'static str, Origin>,
    problems: &mut Vec<Problem>,
) -> bool {
    let at = |offset: usize| {
        let (line, column) = line_column(text, offset);
        Origin::File { line, column }
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    let syntax = !errors.is_empty();
    for e in errors {
        problems.push(Problem {
            origin: at(e.span().map_or(0, |r| r.start)),
            path: None,
            message: format!("not valid TOML: {}", e.message()),
        });
    }
    if syntax {
        // What the parser recovered may be partial: its keys are not
        // reported as wrong on top of the syntax errors.
        return false;
    }
    let root = doc.get_ref();
    let mut tables = vec![(root, None)];
    for sec in SECTIONS {
        let Some((key, value)) = root.get_key_value(*sec) else {
            continue;
        };
        match value.get_ref() {
            DeValue::Table(t) => tables.push((t, Some(*sec))),
            other => problems.push(Problem {
                origin: at(key.span().start),
                path: Some(sec.to_string()),
                message: format!(
                    "wrong type: expected a table (`[{sec}]`), found {}",
                    other.type_str()
                ),
            }),
        }
    }
    for (table, section) in tables {
        for (key, value) in table.iter() {
            let path = match section {
                Some(sec) => format!("{sec}.{}", key.get_ref()),
                None => key.get_ref().to_string(),
            };
            if section.is_none() && SECTIONS.contains(&path.as_str()) {
                continue; // read below, as a table
            }
            let known = KEYS.iter().find(|k| **k == path);
            match known {
                Some(path) => match set(s, path, Raw::Toml(value.get_ref())) {
                    Ok(()) => {
                        origins.insert(path, at(value.span().start));
                    }
                    Err(message) => problems.push(Problem {
                        origin: at(value.span().start),
                        path: Some(path.to_string()),
                        message,
                    }),
                },
                None => problems.push(Problem {
                    origin: at(key.span().start),
                    path: None,
                    message: unknown_key(&path),
                }),
            }
        }
    }
    true
}

fn unknown_key(path: &str) -> String {
    if let Some((_, why)) = NOT_YET.iter().find(|(k, _)| *k == path) {
        return format!("`{path}` is not supported by this version: {why}");
    }
    let mut message = format!("unknown key `{path}`");
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let by_path = nearest(path, KEYS.iter().copied());
    let by_leaf = KEYS
        .iter()
        .find(|k| k.rsplit('.').next() == Some(leaf) && **k != path);
    if let Some(near) = by_path.or(by_leaf.copied()) {
        message.push_str(&format!(": did you mean `{near}`?"));
    } else if let Some(sec) = SECTIONS
        .iter()
        .find(|sec| path.starts_with(&format!("{sec}.")))
    {
        let keys: Vec<&str> = KEYS
            .iter()
            .filter_map(|k| k.strip_prefix(&format!("{sec}.")))
            .collect();
        message.push_str(&format!(" (`[{sec}]` has {})", keys.join(", ")));
    }
    message
}

/// The candidate closest to `word` by edit distance, if close enough to be
/// a typo (at most a third of its length, and at most 3).
fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The master's builder with these settings.
pub fn master_builder(s: &Settings) -> prefork::Builder {
    let mut b = prefork::Master::builder()
        .name(s.name.clone())
        .workers(s.workers)
        .timeout(s.timeout)
        .graceful_timeout(s.shutdown.graceful_timeout)
        .kill_grace(s.shutdown.kill_grace)
        .term_is_graceful(s.shutdown.term_is_graceful)
        .memory_check_interval(s.recycle.memory_check_interval)
        .recycle_jitter(s.recycle.jitter)
        .backoff_initial(s.restart.backoff_initial)
        .backoff_max(s.restart.backoff_max)
        .healthy_after(s.restart.healthy_after)
        .crash_limit(s.restart.crash_limit);
    if let Some(n) = s.lookahead {
        b = b.dispatch_lookahead(n);
    }
    if let Some(d) = s.heartbeat_interval {
        b = b.heartbeat_interval(d);
    }
    if let Some(keep) = &s.keep_fds {
        b = b.close_other_fds(keep.iter().copied());
    }
    if let Some(d) = s.shutdown.stop_timeout {
        b = b.stop_timeout(d);
    }
    if let Some(n) = s.recycle.max_iterations {
        b = b.max_iterations(n);
    }
    if let Some(d) = s.recycle.max_age {
        b = b.max_age(d);
    }
    if let Some(Bytes(n)) = s.recycle.max_memory {
        b = b.max_memory(n);
    }
    b
}

/// The problems between settings: the master's refusals (each traced to
/// the setting that caused it), the broker URL, and the rules of this
/// command. `failed` are the paths whose own value was refused already.
fn cross_problems(
    s: &Settings,
    origins: &BTreeMap<&'static str, Origin>,
    failed: &[String],
) -> Vec<Problem> {
    let origin = |path: &str| origins.get(path).cloned().unwrap_or(Origin::Default);
    let problem = |path: &str, message: String| Problem {
        origin: origin(path),
        path: Some(path.to_owned()),
        message,
    };
    let mut out = master_problems(s, origins);
    if !failed.iter().any(|p| p == "broker") {
        match broker_url(s) {
            Err(e) => out.push(problem("broker", e.message().to_owned())),
            Ok(url) => {
                if s.lease.is_some() && url.broker_name() == "rabbitmq" {
                    out.push(problem(
                        "lease",
                        "RabbitMQ has no claim timeout to set: a claim lasts as long as its holder's connection (up to the server's consumer_timeout); remove `lease`".to_owned(),
                    ));
                }
            }
        }
    }
    for (path, wanted) in ONE_MODE {
        if origins.contains_key(path) && *wanted != s.mode {
            out.push(problem(
                path,
                format!(
                    "applies to {wanted} mode only, and `mode` is {}; remove it or set `mode = \"{wanted}\"`",
                    s.mode
                ),
            ));
        }
    }
    if let Some(max) = s.retry.max_delay
        && max < s.retry.base
    {
        out.push(problem(
            "retry.max_delay",
            format!(
                "must be at least `retry.base` ({}) (got {})",
                value::show_duration(s.retry.base),
                value::show_duration(max)
            ),
        ));
    }
    if let (Some(soft), Some(hard)) = (s.time_limits.soft, s.time_limits.hard)
        && soft >= hard
    {
        out.push(problem(
            "time_limits.soft",
            format!(
                "must be shorter than `time_limits.hard` ({}), or the handler is killed before it is warned",
                value::show_duration(hard)
            ),
        ));
    }
    out
}

/// Every refusal of the master's `Builder`: build, trace the refused
/// setting to the one set that causes it, put that back to its default,
/// and build again, until the builder accepts.
fn master_problems(s: &Settings, origins: &BTreeMap<&'static str, Origin>) -> Vec<Problem> {
    let mut s = s.clone();
    let mut out = Vec::new();
    let set_here: Vec<&'static str> = KEYS
        .iter()
        .copied()
        .filter(|p| master_owned(p) && origins.contains_key(p))
        .collect();
    for _ in 0..=KEYS.len() {
        let Err(e) = master_builder(&s).build() else {
            break;
        };
        let named = MASTER_NAMES
            .iter()
            .find(|(name, _)| *name == e.setting())
            .map_or(e.setting(), |(_, path)| path);
        // The settings whose default would make this refusal go away.
        let causes: Vec<&'static str> = set_here
            .iter()
            .copied()
            .filter(|p| {
                let mut t = s.clone();
                reset(&mut t, p);
                master_builder(&t)
                    .build()
                    .map_or_else(|f| f.setting() != e.setting(), |_| true)
            })
            .collect();
        let blamed = if set_here.contains(&named) {
            named
        } else {
            causes.first().copied().unwrap_or(named)
        };
        out.push(Problem {
            origin: origins.get(blamed).cloned().unwrap_or(Origin::Default),
            path: Some(blamed.to_owned()),
            message: e.reason().to_owned(),
        });
        reset(&mut s, blamed);
        for c in causes {
            reset(&mut s, c);
        }
        if !set_here.contains(&blamed) {
            break; // a default refused: nothing more to put back
        }
    }
    out
}

#[cfg(test)]
mod tests;
