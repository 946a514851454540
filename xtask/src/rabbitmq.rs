//! rabbitmq-server on loopback without systemd: the launcher, readiness
//! check and stop of the `rabbitmq` entry of `brokers::SPECS`.
//!
//! Debian's `rabbitmq-server` on `PATH` is a wrapper that switches to the
//! `rabbitmq` user and logs under the system log dir; we run the package's
//! inner script instead, with everything in the server's own directory:
//! node `rabbit@localhost`, AMQP on 127.0.0.1:PORT, Erlang distribution
//! and an epmd of its own on further free loopback ports (so it never
//! meets another engineer's epmd on 4369, and stopping ours stops only
//! ours), a random Erlang cookie passed to the server and to `rabbitmqctl`
//! alike, no plugins. Ready is what `rabbitmqctl wait PIDFILE` says (a ping
//! answers before the AMQP port is open); stop is `rabbitmqctl shutdown`,
//! then `epmd -kill` for the epmd the node started.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::brokers::{Hooks, Launch, free_port};

/// The readiness check and stop of rabbitmq-server.
pub(crate) const HOOKS: Hooks = Hooks { ready, stop };

/// The file in the server's directory holding the environment its
/// `rabbitmqctl` and `epmd` calls need (`KEY=VALUE` lines).
const ENV_FILE: &str = "rabbitmq.env";

/// The package's inner `rabbitmq-server` script (not the wrapper on PATH).
fn inner_script() -> Result<PathBuf> {
    let listed = Command::new("dpkg")
        .args(["-L", "rabbitmq-server"])
        .output()
        .context("dpkg -L rabbitmq-server")?;
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|l| l.starts_with("/usr/lib/rabbitmq/lib/") && l.ends_with("/sbin/rabbitmq-server"))
        .map(PathBuf::from)
        .context("dpkg -L rabbitmq-server lists no inner sbin/rabbitmq-server script")
}

/// Builds the command that runs rabbitmq-server in the foreground, writing
/// its config, plugin list and environment file into `l.dir`.
pub(crate) fn launch(l: &Launch<'_>) -> Result<Command> {
    let dir = l.dir;
    let (dist_port, epmd_port) = (free_port()?, free_port()?);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let cookie = format!("PREFORK{:X}{:X}", std::process::id(), nanos);
    std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
    std::fs::write(
        dir.join("rabbitmq.conf"),
        format!(
            "listeners.tcp.default = 127.0.0.1:{}\nloopback_users.guest = true\n",
            l.port
        ),
    )?;
    let erl_args = format!("-setcookie {cookie} -kernel inet_dist_use_interface {{127,0,0,1}}");
    let d = |name: &str| dir.join(name).display().to_string();
    let env: Vec<(&str, String)> = vec![
        ("HOME", dir.display().to_string()),
        ("RABBITMQ_NODENAME", "rabbit@localhost".into()),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT", l.port.to_string()),
        ("RABBITMQ_DIST_PORT", dist_port.to_string()),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ("ERL_EPMD_PORT", epmd_port.to_string()),
        ("RABBITMQ_MNESIA_BASE", d("mnesia")),
        ("RABBITMQ_LOG_BASE", d("logs")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
        ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
        ("RABBITMQ_PID_FILE", d("pid")),
        ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", erl_args.clone()),
        ("RABBITMQ_CTL_ERL_ARGS", erl_args),
    ];
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dir.join(ENV_FILE), text)?;
    let mut cmd = Command::new(inner_script()?);
    cmd.envs(env);
    Ok(cmd)
}

/// A command run with the server's environment, quiet.
fn with_env(dir: &Path, program: &str) -> Result<Command> {
    let text = std::fs::read_to_string(dir.join(ENV_FILE))
        .with_context(|| format!("no {ENV_FILE} in {}", dir.display()))?;
    let mut cmd = Command::new(program);
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd)
}

/// Whether the node in `dir` is up: `rabbitmqctl wait` on its pid file
/// (waits up to 10 s itself).
fn ready(dir: &Path) -> bool {
    let Ok(mut cmd) = with_env(dir, "rabbitmqctl") else {
        return false;
    };
    cmd.arg("wait")
        .arg(dir.join("pid"))
        .args(["--timeout", "10"])
        .status()
        .is_ok_and(|s| s.success())
}

/// `rabbitmqctl shutdown` (which returns once the node stopped), then
/// `epmd -kill` for the epmd it started.
fn stop(dir: &Path) -> Result<()> {
    let shutdown = with_env(dir, "rabbitmqctl")?.arg("shutdown").status()?;
    let epmd = with_env(dir, "epmd")?.arg("-kill").status()?;
    if !shutdown.success() {
        bail!("rabbitmqctl shutdown failed ({shutdown})");
    }
    if !epmd.success() {
        bail!("epmd -kill failed ({epmd})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launcher_keeps_everything_in_its_dir_and_on_loopback() {
        let dir = std::env::temp_dir().join(format!("xtask-rabbitmq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = Path::new("rabbitmq-server");
        // Without the package the script is not found: that is the only
        // failure allowed here, and the files are written before it.
        let launched = launch(&Launch {
            program,
            port: 5999,
            dir: &dir,
        });
        let env = std::fs::read_to_string(dir.join(ENV_FILE)).unwrap();
        let conf = std::fs::read_to_string(dir.join("rabbitmq.conf")).unwrap();
        assert!(
            conf.contains("listeners.tcp.default = 127.0.0.1:5999"),
            "{conf}"
        );
        for want in [
            "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
            "ERL_EPMD_ADDRESS=127.0.0.1",
            "inet_dist_use_interface {127,0,0,1}",
            "-setcookie PREFORK",
        ] {
            assert!(env.contains(want), "{want} not in {env}");
        }
        for line in env.lines().filter(|l| l.contains('/')) {
            if let Some((_, v)) = line.split_once('=')
                && v.starts_with('/')
            {
                assert!(
                    v.starts_with(dir.to_str().unwrap()),
                    "{line} outside the dir"
                );
            }
        }
        if let Ok(cmd) = launched {
            assert!(
                cmd.get_program()
                    .to_string_lossy()
                    .ends_with("/sbin/rabbitmq-server")
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
