//! The master's control socket end to end: a real `prefork work` pool on
//! the embedded spool, driven by `prefork status|scale|stop|reload` and by
//! raw clients, with the process tree read from `/proc`.
//! (harness = false: these spawn process trees.)

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prefork_tests::e2e;
use prefork_tests::harness::{Case, run};
use serde_json::Value;

/// A pool under test: its master process, spool, socket and log.
struct Pool {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// The directory is this pool's (removed with it) rather than shared.
    owns_dir: bool,
}

impl Pool {
    /// Starts `prefork work` with `workers` workers in `mode` and `extra`
    /// arguments, and waits until its socket says it runs.
    fn start(name: &str, workers: usize, mode: &str, extra: &[&str]) -> Pool {
        let dir = std::env::temp_dir().join(format!("pf-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Others may reach the socket's directory (the other-user case).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("control.sock");
        let mut pool = Pool::spawn(&dir, &socket, workers, mode, extra);
        pool.owns_dir = true;
        pool.wait_running(workers);
        pool
    }

    fn spawn(dir: &Path, socket: &Path, workers: usize, mode: &str, extra: &[&str]) -> Pool {
        static POOLS: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!(
            "pool-{}.log",
            POOLS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_prefork"))
            .arg("--broker")
            .arg(format!("spool://{}", dir.join("spool").display()))
            .args(["work", "--workers", &workers.to_string(), "--mode", mode])
            .arg("--control-socket")
            .arg(socket)
            .args(extra)
            .env_remove("PREFORK_CONTROL_SOCKET")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Pool {
            child,
            dir: dir.to_owned(),
            socket: socket.to_owned(),
            log,
            owns_dir: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("spool://{}", self.dir.join("spool").display())
    }

    /// `prefork ARGS --socket SOCKET`, run to its end.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_prefork"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Its stdout, after checking it succeeded.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "prefork {args:?}: {}\nlog: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// The worker pids `status` lists, in slot order.
    fn worker_pids(&self) -> Vec<i32> {
        pids(&self.status())
    }

    /// Waits until the master runs `n` ready workers (none starting or
    /// stopping) and `/proc` shows them as its children.
    fn wait_running(&self, n: usize) {
        let t0 = Instant::now();
        loop {
            let out = self.cli(&["status", "--json"]);
            if out.status.success() {
                let s: Value = serde_json::from_slice(&out.stdout).unwrap();
                let workers = s["workers"].as_array().unwrap();
                let settled = s["phase"] == "running"
                    && workers.len() == n
                    && workers
                        .iter()
                        .all(|w| w["state"] == "idle" || w["state"] == "busy");
                let mut listed = pids(&s);
                listed.extend(s["feeder"]["pid"].as_i64().map(|p| p as i32));
                listed.sort();
                let mut children = e2e::children_of(self.pid());
                children.sort();
                if settled && listed == children {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the pool never ran {n} workers: {}\nlog: {}",
                String::from_utf8_lossy(&out.stdout),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn enqueue(&self, job: &str, args: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_prefork"))
            .args(["--broker", &self.url(), "enqueue", job, args])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Enqueues an `append` job that writes `start`, sleeps `sleep_ms`,
    /// then writes `end` to a file, and waits until it has started.
    /// Returns the file.
    fn run_append(&self, sleep_ms: u64) -> PathBuf {
        let file = self.dir.join("ran.txt");
        let args = serde_json::json!({
            "path": file, "line": "end", "start_line": "start", "sleep_ms": sleep_ms
        });
        self.enqueue("append", &args.to_string());
        e2e::wait_until("the job to start", Duration::from_secs(10), || {
            std::fs::read_to_string(&file)
                .unwrap_or_default()
                .contains("start")
        });
        file
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the master to exit (successfully) within `limit`.
    fn wait_exit(&mut self, limit: Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}: {}", self.log_text());
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "the master did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the pool gracefully through its socket and waits for it.
    fn stop(mut self) {
        self.ok(&["stop", "--graceful"]);
        self.wait_exit(Duration::from_secs(30));
        assert!(!self.socket.exists(), "the socket file is removed at exit");
    }
}

/// A case that fails still stops its pool (quick stop, then the reap).
impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
        // Kept when the case fails: its log says why.
        if self.owns_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn pids(status: &Value) -> Vec<i32> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect()
}

/// Sends raw bytes to the socket and reads the reply to its end (the
/// master closes the connection after its reply).
fn raw(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The master may answer (and close) before it has read everything.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// `status` lists every worker with the pid `/proc` shows as the master's
/// child, as a table and as JSON; the socket is 0600 and names its owner.
fn status_shows_the_workers_and_the_socket_is_0600() {
    let pool = Pool::start("status", 3, "pull", &[]);
    let meta = std::fs::metadata(&pool.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let s = pool.status();
    assert_eq!(s["pid"].as_u64(), Some(u64::from(pool.pid())));
    assert_eq!(
        (s["mode"].as_str(), s["target"].as_u64()),
        (Some("pull"), Some(3))
    );
    assert_eq!(s["name"], "prefork");
    let mut listed = pids(&s);
    let slots: Vec<u64> = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, [0, 1, 2]);
    for w in s["workers"].as_array().unwrap() {
        assert_eq!(w["state"], "idle", "{s}");
        assert!(w["pss_bytes"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(w["restarts"], 0);
    }
    listed.sort();
    let mut children = e2e::children_of(pool.pid());
    children.sort();
    assert_eq!(listed, children);
    let table = pool.ok(&["status"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with(&format!("prefork master (pid {}): running", pool.pid())),
        "{table}"
    );
    for (slot, pid) in pids(&s).iter().enumerate() {
        let row: Vec<&str> = lines[2 + slot].split_whitespace().collect();
        assert_eq!(
            row[..3],
            [slot.to_string(), pid.to_string(), "idle".into()],
            "{table}"
        );
    }
    assert_eq!(lines.len(), 5, "{table}");
    pool.stop();
}

/// In dispatch mode `status` names the feeder and the job a worker runs
/// (its delivery id, and for how long), and counts the jobs finished.
fn status_in_dispatch_mode_names_the_feeder_and_the_running_job() {
    let pool = Pool::start("dispatch", 2, "dispatch", &[]);
    let s = pool.status();
    let feeder = s["feeder"]["pid"].as_i64().unwrap() as i32;
    assert!(e2e::children_of(pool.pid()).contains(&feeder));
    pool.enqueue("noop", "null");
    pool.enqueue("sleep", r#"{"ms": 4000}"#);
    let mut busy = Value::Null;
    e2e::wait_until("a busy worker", Duration::from_secs(10), || {
        let s = pool.status();
        busy = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["state"] == "busy" && w["job"]["for_ms"].as_u64() > Some(300))
            .cloned()
            .unwrap_or(Value::Null);
        !busy.is_null()
    });
    let id = busy["job"]["id"].as_str().unwrap();
    assert!(!id.is_empty(), "{busy}");
    let table = pool.ok(&["status"]);
    assert!(table.contains(&format!("delivery {id}")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("feeder")), "{table}");
    e2e::wait_until("2 jobs finished", Duration::from_secs(20), || {
        let s = pool.status();
        let done: u64 = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["jobs_finished"].as_u64().unwrap())
            .sum();
        done == 2
    });
    pool.stop();
}

/// `scale N` adds workers and takes them away: the master's children
/// follow, and `status` with them.
fn scale_up_and_down_changes_the_process_tree() {
    let pool = Pool::start("scale", 2, "pull", &[]);
    let before = pool.worker_pids();
    assert_eq!(pool.ok(&["scale", "5"]), "scaling to 5 workers\n");
    pool.wait_running(5);
    let after = pool.worker_pids();
    assert_eq!(after[..2], before[..], "the first two stay");
    assert_eq!(e2e::children_of(pool.pid()).len(), 5);
    pool.ok(&["scale", "1"]);
    pool.wait_running(1);
    assert_eq!(pool.worker_pids(), before[..1]);
    for gone in &after[1..] {
        e2e::wait_until(
            "a scaled-down worker to exit",
            Duration::from_secs(10),
            || !e2e::alive(*gone),
        );
    }
    let out = pool.cli(&["scale", "5000"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 4096 workers"), "{err}");
    pool.stop();
}

/// `stop --graceful` lets the running job finish before the master exits;
/// `stop` (quick) does not wait for it.
fn stop_graceful_lets_the_running_job_finish() {
    let mut pool = Pool::start("stop", 1, "pull", &[]);
    let file = pool.run_append(1500);
    assert_eq!(pool.ok(&["stop", "--graceful"]), "stopping (graceful)\n");
    pool.wait_exit(Duration::from_secs(20));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "start\nend\n");
    let log = pool.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("stop requested"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("control socket") && line.contains("graceful"),
        "{line}"
    );

    let mut pool = Pool::start("stop-quick", 1, "pull", &[]);
    let file = pool.run_append(20000);
    let t0 = Instant::now();
    let said = pool.ok(&["stop", "--wait", "10"]);
    assert!(said.starts_with("stopped (quick) in"), "{said}");
    pool.wait_exit(Duration::from_secs(10));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "start\n");
}

/// `reload` replaces every worker: new pids in every slot, the old ones
/// gone.
fn reload_replaces_every_worker() {
    let pool = Pool::start("reload", 3, "pull", &[]);
    let before = pool.worker_pids();
    pool.ok(&["reload"]);
    e2e::wait_until("every worker replaced", Duration::from_secs(20), || {
        let s = pool.status();
        let now = pids(&s);
        s["phase"] == "running" && now.len() == 3 && now.iter().all(|p| !before.contains(p))
    });
    pool.wait_running(3);
    for old in &before {
        e2e::wait_until("an old worker to exit", Duration::from_secs(10), || {
            !e2e::alive(*old)
        });
    }
    pool.stop();
}

/// Creates a user for the case and removes it (and its group) on drop.
struct TempUser(String);

impl TempUser {
    fn create() -> Option<TempUser> {
        let name = format!("pfctl{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg(&name).output();
        match Command::new("useradd")
            .args(["--no-create-home", "--user-group", &name])
            .output()
        {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "useradd: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Some(TempUser(name))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("useradd: {e}"),
        }
    }

    /// `prefork ARGS` run as this user (`runuser`).
    fn prefork(&self, bin: &Path, args: &[&str], socket: &Path) -> Output {
        Command::new("runuser")
            .args(["-u", &self.0, "--"])
            .arg(bin)
            .args(args)
            .arg("--socket")
            .arg(socket)
            .output()
            .unwrap()
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

/// Another user is kept out by the socket's mode, and, where the mode
/// lets them in, by the master's credentials check (an error reply and a
/// WARN line); the master carries on. A member of `--control-group` may
/// act.
fn another_user_is_refused_and_the_master_keeps_running() {
    let Some(user) = TempUser::create() else {
        println!("skipped: useradd is not installed");
        return;
    };
    let pool = Pool::start("user", 1, "pull", &[]);
    // The binary where the other user may run it.
    let bin = pool.dir.join("prefork");
    std::fs::copy(env!("CARGO_BIN_EXE_prefork"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = user.prefork(&bin, &["status"], &pool.socket);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied on"), "{err}");
    // Open the file's mode: the credentials check still refuses.
    std::fs::set_permissions(&pool.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["status"][..], &["stop"], &["scale", "3"], &["reload"]] {
        let out = user.prefork(&bin, args, &pool.socket);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the master refused: permission denied: uid"),
            "{args:?}: {err}"
        );
    }
    e2e::wait_until("the WARN line", Duration::from_secs(5), || {
        pool.log_text().contains("WARN")
            && pool.log_text().contains("control socket: refused a client")
    });
    pool.wait_running(1);
    assert_eq!(pool.status()["target"], 1);
    pool.stop();
    // A member of the control group may act.
    let group = Pool::start("group", 1, "pull", &["--control-group", &user.0]);
    let meta = std::fs::metadata(&group.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let bin = group.dir.join("prefork");
    std::fs::copy(env!("CARGO_BIN_EXE_prefork"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = user.prefork(&bin, &["status", "--json"], &group.socket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["workers"].as_array().unwrap().len(), 1);
    group.stop();
    drop(user);
}

/// A malformed request, an oversized one, a silent client and one too
/// many clients each get an error reply, and the master answers the next
/// request as before.
fn malformed_and_oversized_requests_get_an_error() {
    let pool = Pool::start("bad", 1, "pull", &[]);
    let reply = raw(&pool.socket, b"this is not json\n");
    assert!(
        reply.starts_with(r#"{"ok":false,"error":"malformed request"#),
        "{reply}"
    );
    assert_eq!(
        reply.lines().count(),
        1,
        "one line, then the connection closes"
    );
    let reply = raw(&pool.socket, br#"{"request":"explode"}"#);
    assert!(reply.contains("unknown variant"), "{reply}");
    let reply = raw(&pool.socket, &vec![b'x'; 70 * 1024]);
    assert!(reply.contains("request too large"), "{reply}");
    let reply = raw(&pool.socket, br#"{"request":"status"}"#);
    assert!(reply.starts_with(r#"{"ok":true,"status":"#), "{reply}");
    // One request per connection: what follows the first line is dropped.
    let reply = raw(
        &pool.socket,
        b"{\"request\":\"status\"}\n{\"request\":\"stop\"}\n",
    );
    assert_eq!(reply.lines().count(), 1, "{reply}");
    assert!(reply.starts_with(r#"{"ok":true,"status":"#), "{reply}");
    // A silent client blocks nobody, and is sent away at its deadline.
    let mut silent = UnixStream::connect(&pool.socket).unwrap();
    pool.status();
    let t0 = Instant::now();
    let mut reply = String::new();
    silent.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("no request within"), "{reply}");
    assert!(t0.elapsed() < Duration::from_secs(7));
    // 32 clients at once at most: of 40 silent ones, 8 or more (more while
    // the master has yet to see earlier clients leave) are sent away at
    // once, and so is one more.
    let idle: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&pool.socket).unwrap())
        .collect();
    let out = pool.cli(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the master refused: too many control connections"),
        "{err}"
    );
    let sent_away = idle
        .iter()
        .filter(|s| {
            let mut s: &UnixStream = s;
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 256];
            matches!(s.read(&mut buf), Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("too many"))
        })
        .count();
    assert!((8..=40).contains(&sent_away), "{sent_away}");
    drop(idle);
    e2e::wait_until(
        "the idle clients to be dropped",
        Duration::from_secs(5),
        || raw(&pool.socket, br#"{"request":"status"}"#).starts_with(r#"{"ok":true"#),
    );
    pool.wait_running(1);
    pool.stop();
}

/// A second master on the same socket path is refused while the first
/// lives; once the first is SIGKILLed its stale socket file is replaced.
/// With no master at all, the clients say so.
fn a_second_master_on_the_same_socket_is_refused_while_the_first_lives() {
    let first = Pool::start("second", 1, "pull", &[]);
    let mut second = Pool::spawn(&first.dir, &first.socket, 1, "pull", &[]);
    let status = second.child.wait().unwrap();
    assert!(
        first.socket.exists(),
        "the refused master leaves the live one's socket"
    );
    assert!(!status.success());
    let log = second.log_text();
    assert!(
        log.contains("another master listens on the control socket"),
        "{log}"
    );
    first.wait_running(1);
    // SIGKILL the first master (its workers follow: parent-death signal):
    // its socket file stays behind.
    let (dir, socket) = (first.dir.clone(), first.socket.clone());
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(socket.exists());
    let out = Command::new(env!("CARGO_BIN_EXE_prefork"))
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no master listens on"), "{err}");
    let third = Pool::spawn(&dir, &socket, 1, "pull", &[]);
    third.wait_running(1);
    assert!(
        third
            .log_text()
            .contains("replacing the control socket a dead master left")
    );
    third.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_prefork"))
        .args(["status", "--socket", "/nonexistent/prefork.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no master listens on /nonexistent/prefork.sock")
    );
}

fn main() {
    run(&[
        Case::new(
            "status_shows_the_workers_and_the_socket_is_0600",
            status_shows_the_workers_and_the_socket_is_0600,
        ),
        Case::new(
            "status_in_dispatch_mode_names_the_feeder_and_the_running_job",
            status_in_dispatch_mode_names_the_feeder_and_the_running_job,
        ),
        Case::new(
            "scale_up_and_down_changes_the_process_tree",
            scale_up_and_down_changes_the_process_tree,
        ),
        Case::new(
            "stop_graceful_lets_the_running_job_finish",
            stop_graceful_lets_the_running_job_finish,
        ),
        Case::new("reload_replaces_every_worker", reload_replaces_every_worker),
        Case::new(
            "another_user_is_refused_and_the_master_keeps_running",
            another_user_is_refused_and_the_master_keeps_running,
        ),
        Case::new(
            "malformed_and_oversized_requests_get_an_error",
            malformed_and_oversized_requests_get_an_error,
        ),
        Case::new(
            "a_second_master_on_the_same_socket_is_refused_while_the_first_lives",
            a_second_master_on_the_same_socket_is_refused_while_the_first_lives,
        ),
    ]);
}
