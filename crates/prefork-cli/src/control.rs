//! `prefork status|scale|stop|reload`: the clients of a running master's
//! control socket (`prefork_master::control`), and where `prefork work`
//! puts that socket.
//!
//! The default socket of a master named `NAME` (`prefork work` names its
//! master `prefork`) is [`default_socket`]: `$XDG_RUNTIME_DIR/prefork/NAME.sock`,
//! else `/run/prefork/NAME.sock` for root, else
//! `$TMPDIR/prefork-UID/NAME.sock`. `--control-socket PATH` (`work`) and
//! `--socket PATH` (the clients), or `$PREFORK_CONTROL_SOCKET` for both,
//! name another.
//!
//! ```
//! use prefork_cli::control::default_socket_in;
//! let p = default_socket_in(Some("/run/user/1000".as_ref()), 1000, "prefork".as_ref(), "prefork");
//! assert_eq!(p, std::path::Path::new("/run/user/1000/prefork/prefork.sock"));
//! let p = default_socket_in(None, 0, "/tmp".as_ref(), "prefork");
//! assert_eq!(p, std::path::Path::new("/run/prefork/prefork.sock"));
//! ```

use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use prefork::master::control::{ProcessStatus, Reply, Request, Status, request};

/// The value of `--control-socket` that turns the socket off.
pub const OFF: &str = "none";

/// `--socket PATH`: which master the client talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArg {
    /// The master's control socket (default: `prefork work`'s, see
    /// `prefork work --help`).
    #[arg(long = "socket", env = "PREFORK_CONTROL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// The path given, or the default socket of `prefork work`'s master.
    pub fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| default_socket(crate::MASTER_NAME))
    }
}

/// The default control socket of the master named `name`, for this
/// process's user and environment (see the module doc).
pub fn default_socket(name: &str) -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty());
    default_socket_in(
        runtime.as_deref().map(Path::new),
        nix::unistd::geteuid().as_raw(),
        &std::env::temp_dir(),
        name,
    )
}

/// [`default_socket`] for a given `$XDG_RUNTIME_DIR`, effective uid and
/// temporary directory.
pub fn default_socket_in(runtime: Option<&Path>, uid: u32, tmp: &Path, name: &str) -> PathBuf {
    let dir = match runtime {
        Some(dir) => dir.join("prefork"),
        None if uid == 0 => PathBuf::from("/run/prefork"),
        None => tmp.join(format!("prefork-{uid}")),
    };
    dir.join(format!("{name}.sock"))
}

/// The socket `prefork work` listens on: `None` with `--control-socket
/// none`; the default one otherwise, whose directory is created (mode
/// 0700) when missing and must belong to this user and be closed to
/// others.
///
/// # Errors
///
/// When the default directory cannot be created, or belongs to someone
/// else or is open to others (another user could replace the socket).
pub fn socket_for_work(given: Option<&str>) -> anyhow::Result<Option<PathBuf>> {
    match given {
        Some(OFF) => Ok(None),
        Some(path) => Ok(Some(PathBuf::from(path))),
        None => {
            let path = default_socket(crate::MASTER_NAME);
            let dir = path.parent().expect("a socket file in a directory");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| {
                    format!("creating the control socket's directory {}", dir.display())
                })?;
            let meta = std::fs::metadata(dir)?;
            let me = nix::unistd::geteuid().as_raw();
            if meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
                bail!(
                    "{} belongs to uid {} or others may write to it (mode {:o}): not a safe place for the control socket; \
                     give --control-socket PATH",
                    dir.display(),
                    meta.uid(),
                    meta.permissions().mode() & 0o777
                );
            }
            Ok(Some(path))
        }
    }
}

/// `--control-group GROUP`: a group name or a numeric gid.
///
/// # Errors
///
/// When no such group exists.
pub fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => bail!("no group named {group:?}"),
        Err(e) => bail!("cannot look up the group {group:?}: {e}"),
    }
}

/// Sends `req` to the master on `path`; an error reply or no master is an
/// error that says what to do.
///
/// # Errors
///
/// When no master listens on `path`, the caller may not use it, or the
/// master refused the request.
pub fn call(path: &Path, req: &Request) -> anyhow::Result<Reply> {
    let reply = request(path, req).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no master listens on {} ({e}): start one with `prefork work`, or name its socket with --socket or PREFORK_CONTROL_SOCKET",
            path.display()
        ),
        io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: the control socket is for the master's user, root and its control group",
            path.display()
        ),
        _ => anyhow::anyhow!("talking to the master on {}: {e}", path.display()),
    })?;
    if !reply.ok {
        bail!(
            "the master refused: {}",
            reply.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(reply)
}

/// `prefork status [--json]`: the master's status as a table, or its
/// JSON as the master sent it.
///
/// # Errors
///
/// As [`call`].
pub fn status(path: &Path, json: bool) -> anyhow::Result<String> {
    let reply = call(path, &Request::Status)?;
    let status = reply.status.context("the master's reply has no status")?;
    Ok(if json {
        format!("{}\n", serde_json::to_string(&status)?)
    } else {
        status_table(&status)
    })
}

/// `prefork scale N`.
///
/// # Errors
///
/// As [`call`].
pub fn scale(path: &Path, workers: usize) -> anyhow::Result<String> {
    let reply = call(path, &Request::Scale { workers })?;
    Ok(format!(
        "scaling to {} workers\n",
        reply.workers.unwrap_or(workers)
    ))
}

/// `prefork stop [--graceful] [--wait]`: asks the master to stop and,
/// with `wait`, waits until its socket is gone (the master has exited).
///
/// # Errors
///
/// As [`call`], or the master still listens after `wait`.
pub fn stop(path: &Path, graceful: bool, wait: Option<Duration>) -> anyhow::Result<String> {
    call(path, &Request::Stop { graceful })?;
    let kind = if graceful { "graceful" } else { "quick" };
    let Some(limit) = wait else {
        return Ok(format!("stopping ({kind})\n"));
    };
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(path).is_ok() {
        if t0.elapsed() > limit {
            bail!(
                "the master still listens on {} after {limit:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("stopped ({kind}) in {:.1?}\n", t0.elapsed()))
}

/// `prefork reload`.
///
/// # Errors
///
/// As [`call`].
pub fn reload(path: &Path) -> anyhow::Result<String> {
    call(path, &Request::Reload)?;
    Ok("reloading: every worker is replaced, one at a time\n".to_owned())
}

/// The human form of a [`Status`]: a summary line, then one row per
/// process.
pub fn status_table(s: &Status) -> String {
    let mut out = format!(
        "{} master (pid {}): {}, up {}, {} mode, {} workers wanted ({} forked, {} failed)",
        s.name,
        s.pid,
        s.phase,
        duration(s.uptime_ms),
        s.mode,
        s.target,
        s.spawned,
        s.failures
    );
    if let Some(q) = s.queued {
        let _ = write!(out, ", {q} jobs queued in the master");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<7} {:>8} {:<9} {:>8} {:>7} {:>8} {:>10}  JOB",
        "SLOT", "PID", "STATE", "UP", "JOBS", "RESTARTS", "PSS"
    );
    for p in s.workers.iter().chain(s.feeder.as_ref()) {
        out.push_str(&row(p));
    }
    out
}

fn row(p: &ProcessStatus) -> String {
    let slot = p
        .slot
        .map_or_else(|| "feeder".to_owned(), |i| i.to_string());
    let pid = p.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string());
    let pss = p.pss_bytes.map_or_else(|| "-".to_owned(), mib);
    let job = match &p.job {
        None => "-".to_owned(),
        Some(j) => {
            let mut what = match (&j.activity, &j.id) {
                (Some(a), Some(id)) => format!("{a} (delivery {id})"),
                (Some(a), None) => a.clone(),
                (None, Some(id)) => format!("delivery {id}"),
                (None, None) => "?".to_owned(),
            };
            if let Some(ms) = j.for_ms {
                let _ = write!(what, ", for {}", duration(ms));
            }
            what
        }
    };
    format!(
        "{:<7} {:>8} {:<9} {:>8} {:>7} {:>8} {:>10}  {job}\n",
        slot,
        pid,
        p.state,
        duration(p.uptime_ms),
        p.jobs_finished,
        p.restarts,
        pss
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_340), "12.3s");
        assert_eq!(duration(245_000), "4m05s");
        assert_eq!(duration(7_380_000), "2h03m");
    }

    #[test]
    fn the_default_socket_follows_the_environment() {
        let tmp = Path::new("/tmp");
        assert_eq!(
            default_socket_in(None, 1000, tmp, "app"),
            Path::new("/tmp/prefork-1000/app.sock")
        );
        assert_eq!(
            default_socket_in(Some(Path::new("/run/user/7")), 0, tmp, "app"),
            Path::new("/run/user/7/prefork/app.sock")
        );
    }

    #[test]
    fn the_table_has_a_row_per_process() {
        let json = r#"{"name":"prefork","pid":10,"phase":"running","uptime_ms":5000,"mode":"dispatch",
            "target":1,"spawned":2,"failures":0,"queued":3,
            "workers":[{"slot":0,"serial":1,"pid":11,"state":"busy","uptime_ms":4000,
              "job":{"id":"17-3","activity":"sleep 42","for_ms":1500},"jobs_finished":7,"restarts":1,"pss_bytes":2097152}],
            "feeder":{"slot":null,"serial":2,"pid":12,"state":"idle","uptime_ms":4000,"jobs_finished":0,"restarts":0}}"#;
        let s: Status = serde_json::from_str(json).unwrap();
        let table = status_table(&s);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("prefork master (pid 10): running, up 5.0s, dispatch mode"),
            "{table}"
        );
        assert!(lines[0].ends_with("3 jobs queued in the master"), "{table}");
        let w: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &w[..8],
            ["0", "11", "busy", "4.0s", "7", "1", "2.0", "MiB"],
            "{table}"
        );
        assert!(
            lines[2].ends_with("sleep 42 (delivery 17-3), for 1.5s"),
            "{table}"
        );
        assert!(lines[3].starts_with("feeder"), "{table}");
        assert!(lines[3].ends_with("  -"), "{table}");
    }
}
