//! A rabbitmq-server of a test's own, for cases that SIGKILL the server and
//! start it again (the shared one from `cargo xtask brokers start` serves
//! every other case and must stay up).
//!
//! The recipe is the xtask's (`xtask/src/rabbitmq.rs`, where the reasons
//! are written down): Debian's inner `sbin/rabbitmq-server` script rather
//! than the wrapper on `PATH`, node `rabbit@localhost`, AMQP, Erlang
//! distribution and an epmd of its own on free loopback ports, a random
//! cookie, no plugins, everything under one temporary directory, ready
//! when `rabbitmqctl wait PIDFILE` says so. A restart reuses the directory
//! and the ports, so durable queues and their messages come back.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A private rabbitmq-server: started by [`PrivateRabbit::start`], SIGKILLed
/// by [`kill`](PrivateRabbit::kill), started again by
/// [`restart`](PrivateRabbit::restart), shut down (with its epmd) and its
/// directory removed on drop.
#[derive(Debug)]
pub struct PrivateRabbit {
    dir: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    script: PathBuf,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (the kernel's pick; free when returned).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PrivateRabbit {
    /// Starts a server in a fresh directory named after `tag` and waits
    /// until it accepts AMQP connections. `None` (with a note on stderr)
    /// when the rabbitmq-server package is not installed and brokers are
    /// not required ([`crate::e2e::brokers_required`]).
    ///
    /// # Panics
    ///
    /// When the package is missing under CI, or the server does not start.
    pub fn start(tag: &str) -> Option<PrivateRabbit> {
        let Some(script) = inner_script() else {
            assert!(
                !crate::e2e::brokers_required(),
                "rabbitmq-server is not installed (cargo xtask brokers start rabbitmq installs it)"
            );
            eprintln!("skipped: rabbitmq-server is not installed");
            return None;
        };
        let dir = std::env::temp_dir().join(crate::e2e::unique_name(&format!("rabbit-{tag}")));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let cookie = format!("PREFORKTEST{:X}{nanos:X}", std::process::id());
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users.guest = true\n"),
        )
        .unwrap();
        let erl_args = format!("-setcookie {cookie} -kernel inet_dist_use_interface {{127,0,0,1}}");
        let d = |name: &str| dir.join(name).display().to_string();
        let env = [
            ("HOME", dir.display().to_string()),
            ("RABBITMQ_NODENAME", "rabbit@localhost".into()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", free_port().to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("ERL_EPMD_PORT", free_port().to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("logs")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_PID_FILE", d("pid")),
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", erl_args.clone()),
            ("RABBITMQ_CTL_ERL_ARGS", erl_args),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let mut server = PrivateRabbit {
            dir,
            port,
            env: env.to_vec(),
            script,
            child: None,
        };
        server.launch();
        Some(server)
    }

    /// Its AMQP URL (user guest, vhost `/`).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILLs the server's Erlang VM (no shutdown of any kind: what a
    /// crash or an OOM kill does) and waits until it is gone.
    ///
    /// # Panics
    ///
    /// When it is not running.
    pub fn kill(&mut self) {
        let pid = self.vm_pid().expect("the server's pid file");
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let mut child = self.child.take().expect("a running server");
        // The script waits for the VM, so it ends when the VM does.
        child.wait().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < end, "the VM {pid} outlived its SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server the orderly way (`rabbitmqctl shutdown`), which
    /// writes out everything it keeps in memory, and waits until it is gone.
    ///
    /// # Panics
    ///
    /// When it is not running or does not stop.
    pub fn shutdown(&mut self) {
        let mut child = self.child.take().expect("a running server");
        assert!(
            self.ctl(&["shutdown"]).status().is_ok_and(|s| s.success()),
            "rabbitmqctl shutdown failed"
        );
        child.wait().unwrap();
    }

    /// Starts the server again on the same directory and ports, and waits
    /// until it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        let _ = std::fs::remove_file(self.dir.join("pid"));
        self.launch();
    }

    fn vm_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .unwrap();
        let child = Command::new(&self.script)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        let since = Instant::now();
        // `rabbitmqctl wait` waits for the pid file and then for the app.
        while !self
            .ctl(&["wait", &self.dir.join("pid").display().to_string()])
            .args(["--timeout", "30"])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                since.elapsed() < Duration::from_secs(90),
                "rabbitmq-server did not start; see {}",
                self.dir.join("server.out").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `rabbitmqctl` (or `epmd`, by `program`) with the server's env, quiet.
    fn tool(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn ctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.tool("rabbitmqctl");
        cmd.args(args);
        cmd
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let stopped = self.ctl(&["shutdown"]).status().is_ok_and(|s| s.success());
            if !stopped && let Some(pid) = self.vm_pid() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
        let _ = self.tool("epmd").arg("-kill").status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The package's inner `rabbitmq-server` script, from `dpkg -L`.
fn inner_script() -> Option<PathBuf> {
    let listed = Command::new("dpkg")
        .args(["-L", "rabbitmq-server"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|l| l.starts_with("/usr/lib/rabbitmq/lib/") && l.ends_with("/sbin/rabbitmq-server"))
        .map(PathBuf::from)
}
