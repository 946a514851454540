//! What the Redis test binaries share: finding the server, deciding
//! between failing and skipping when there is none, and a private
//! `redis-server` a case can kill and start again.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The server's URL from `PREFORK_REDIS_URL`. Without it: under CI (`CI`
/// set, or `PREFORK_REQUIRE_BROKERS=1`) a failure (exit 1); elsewhere the
/// process prints why it skips and exits 0.
pub(crate) fn url_or_skip(what: &str) -> String {
    if let Ok(url) = std::env::var("PREFORK_REDIS_URL") {
        return url;
    }
    let required = std::env::var_os("CI").is_some()
        || std::env::var("PREFORK_REQUIRE_BROKERS").is_ok_and(|v| v == "1");
    if required {
        eprintln!(
            "{what}: PREFORK_REDIS_URL is not set, and brokers are required here \
             (CI or PREFORK_REQUIRE_BROKERS=1): failing. Run `cargo xtask brokers start`."
        );
        std::process::exit(1);
    }
    println!(
        "{what}: SKIPPED: PREFORK_REDIS_URL is not set (start a server with \
         `cargo xtask brokers start` and source target/brokers.env)"
    );
    std::process::exit(0);
}

/// The URL, for code that runs after `url_or_skip` accepted it.
pub(crate) fn url() -> String {
    std::env::var("PREFORK_REDIS_URL").expect("PREFORK_REDIS_URL")
}

/// A `redis-server` of the case's own, daemonized, stopped by pid on drop.
pub(crate) struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl PrivateRedis {
    pub(crate) fn start(tag: &str, args: &[&str]) -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("prefork-redis-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = PrivateRedis {
            port,
            dir,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        s.launch();
        s
    }

    pub(crate) fn launch(&self) {
        let d = self.dir.display();
        let status = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--daemonize", "yes", "--save", ""])
            .args(["--dir", &d.to_string()])
            .args([
                "--pidfile",
                &format!("{d}/pid"),
                "--logfile",
                &format!("{d}/log"),
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("redis-server (apt-get install redis-server)");
        assert!(status.success(), "redis-server failed to start");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut buf = [0u8; 64];
                // A password-protected server answers NOAUTH: also ready.
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf).is_ok_and(|n| n > 0)
                    && !buf.starts_with(b"-LOADING")
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server not ready");
            sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs the server and waits until it is gone.
    pub(crate) fn kill(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                Instant::now() < deadline,
                "redis-server {pid} survived SIGKILL"
            );
            sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    pub(crate) fn url(&self, auth: &str) -> String {
        format!("redis://{auth}127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
