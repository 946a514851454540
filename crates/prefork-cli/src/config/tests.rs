//! The settings' parsing and checks: every kind of problem, several at
//! once with their lines, the layers' order, and the docs against the
//! schema.

use super::*;

fn load_text(text: &str, env: &[(&str, &str)], flags: &[Override]) -> Result<Loaded, Problems> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "prefork-config-test-{}-{n}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let out = load(Some(&path), env, flags);
    std::fs::remove_file(&path).unwrap();
    out
}

fn problems(text: &str) -> Vec<Problem> {
    load_text(text, &[], &[]).unwrap_err().list
}

/// The one problem of `text`: its line, column, path and message.
fn one(text: &str) -> (usize, usize, Option<String>, String) {
    let list = problems(text);
    assert_eq!(list.len(), 1, "{list:#?}");
    let p = list.into_iter().next().unwrap();
    let Origin::File { line, column } = p.origin else {
        panic!("not in the file: {p:?}");
    };
    (line, column, p.path, p.message)
}

fn flag(path: &'static str, flag: &'static str, value: &str) -> Override {
    Override {
        path,
        value: value.to_owned(),
        flag,
    }
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let l = load_text("", &[], &[]).unwrap();
    assert_eq!(l.settings, Settings::default());
    assert_eq!(l.settings.workers, 4);
    assert_eq!(l.origin("workers"), &Origin::Default);
    let spool = std::env::temp_dir().join("prefork-spool");
    assert!(
        l.to_toml().contains(&format!(
            "# broker: not set: spool://{}  # default\n",
            spool.display()
        )),
        "{}",
        l.to_toml()
    );
}

/// The master-owned defaults here are the master's own: a builder from
/// the defaults equals the master's default builder with the two values
/// `work` always chose (4 workers, a 30 s timeout).
#[test]
fn defaults_of_master_settings_are_the_masters() {
    let ours = format!("{:?}", master_builder(&Settings::default()));
    let theirs = format!(
        "{:?}",
        prefork::Master::builder()
            .workers(4)
            .timeout(Duration::from_secs(30))
    );
    assert_eq!(ours, theirs);
}

#[test]
fn every_setting_is_read_from_the_file() {
    let l = load_text(
        r#"
name = "thumbs"
workers = 8
mode = "dispatch"
broker = "spool:///tmp/prefork-config-test"
queue = "images"
lease = "45s"
lookahead = 16
touch_every = "2s"
timeout = "1m"
heartbeat_interval = "10s"
keep_fds = [3, 4]
[shutdown]
graceful_timeout = "20s"
kill_grace = "3s"
stop_timeout = "30s"
term_is_graceful = true
[recycle]
max_iterations = 10000
max_age = "1h"
max_memory = "512MiB"
memory_check_interval = "5s"
jitter = 0.2
[restart]
backoff_initial = "250ms"
backoff_max = "1m"
healthy_after = "20s"
crash_limit = 3
[retry]
max_attempts = 7
base = "500ms"
max_delay = "2m"
jitter = 0.25
[time_limits]
soft = "10s"
hard = "1.5m"
[logging]
level = "warn,prefork_jobs=debug"
format = "json"
"#,
        &[],
        &[],
    )
    .unwrap();
    let s = &l.settings;
    assert_eq!(s.name, "thumbs");
    assert_eq!((s.workers, s.mode), (8, Mode::Dispatch));
    assert_eq!(s.queue, "images");
    assert_eq!(s.lease, Some(Duration::from_secs(45)));
    assert_eq!(s.lookahead, Some(16));
    assert_eq!(s.keep_fds, Some(vec![3, 4]));
    assert_eq!(s.shutdown.stop_timeout, Some(Duration::from_secs(30)));
    assert!(s.shutdown.term_is_graceful);
    assert_eq!(s.recycle.max_memory, Some(Bytes(512 << 20)));
    assert_eq!(s.recycle.max_iterations, Some(10_000));
    assert_eq!(s.restart.backoff_initial, Duration::from_millis(250));
    assert_eq!(s.retry.max_attempts, 7);
    assert_eq!(s.time_limits.hard, Some(Duration::from_secs(90)));
    assert_eq!(s.logging.format, LogFormat::Json);
    assert_eq!(
        l.origin("workers"),
        &Origin::File {
            line: 3,
            column: 11
        }
    );
    // Every key of the schema was in this file.
    for key in KEYS
        .iter()
        .filter(|k| !["prefetch", "poll_interval"].contains(k))
    {
        assert!(
            matches!(l.origin(key), Origin::File { .. }),
            "{key} not read"
        );
    }
}

#[test]
fn a_syntax_error_is_reported_at_its_line() {
    let (line, column, path, message) = one("workers = 2\n\n[retry\nbase = \"1s\"\n");
    assert_eq!((line, column, path), (3, 7, None));
    assert!(message.contains("not valid TOML"), "{message}");
    let list = problems("workers = 2\nmode = \n\nqueue = 'a' 'b'\n");
    let lines: Vec<_> = list.iter().map(|p| p.origin.clone()).collect();
    assert!(
        matches!(
            lines[..],
            [
                Origin::File { line: 2, .. },
                Origin::File { line: 4, .. },
                ..
            ]
        ),
        "{list:#?}"
    );
}

#[test]
fn a_duplicate_key_is_a_syntax_error() {
    let (line, _, _, message) = one("workers = 2\nworkers = 3\n");
    assert_eq!(line, 2);
    assert!(message.contains("duplicate"), "{message}");
}

#[test]
fn an_unknown_key_names_the_nearest_known_one() {
    let (line, column, _, message) = one("\n\nwrokers = 2\n");
    assert_eq!((line, column), (3, 1));
    assert_eq!(message, "unknown key `wrokers`: did you mean `workers`?");
    // The right name in the wrong section.
    let (_, _, _, message) = one("graceful_timeout = \"10s\"\n");
    assert!(
        message.contains("did you mean `shutdown.graceful_timeout`?"),
        "{message}"
    );
    let (line, _, _, message) = one("[retry]\nbase = \"1s\"\nzzz = 1\n");
    assert_eq!(line, 3);
    assert!(
        message.contains("`[retry]` has max_attempts, base"),
        "{message}"
    );
    let (_, _, _, message) = one("[nonsense]\nx = 1\n");
    assert_eq!(message, "unknown key `nonsense`");
}

#[test]
fn names_a_later_version_reads_are_refused_with_a_reason() {
    for (text, says) in [
        ("queues = [\"a\", \"b\"]", "several queues"),
        ("user = \"jobs\"", "start prefork as that user"),
        ("group = \"jobs\"", "with that group"),
        ("[metrics]\nport = 9000", "metrics"),
        ("[control]\nsocket = \"/run/p.sock\"", "control socket"),
        ("[recycle]\nmax_jobs = 10", "use `recycle.max_iterations`"),
    ] {
        let (_, _, _, message) = one(text);
        assert!(
            message.contains("not supported by this version"),
            "{message}"
        );
        assert!(message.contains(says), "{text}: {message}");
    }
}

#[test]
fn a_value_of_the_wrong_type_says_what_was_expected() {
    for (text, column, expected) in [
        (
            "workers = \"4\"",
            11,
            "expected a whole number, found string \"4\"",
        ),
        ("timeout = 30", 11, "expected a duration with a unit"),
        (
            "mode = 1",
            8,
            "expected \"pull\" or \"dispatch\", found integer 1",
        ),
        (
            "[shutdown]\nterm_is_graceful = \"yes\"",
            20,
            "expected true or false",
        ),
        ("keep_fds = 3", 12, "expected a list of file descriptors"),
        ("[recycle]\nmax_memory = 1.5", 14, "expected a size"),
        ("[retry]\njitter = \"half\"", 10, "expected a number"),
        (
            "retry = 3",
            1,
            "expected a table (`[retry]`), found integer",
        ),
    ] {
        let (_, col, _, message) = one(text);
        assert!(message.starts_with("wrong type"), "{text}: {message}");
        assert!(message.contains(expected), "{text}: {message}");
        assert_eq!(col, column, "{text}");
    }
}

#[test]
fn an_unreadable_value_says_why() {
    for (text, says) in [
        (
            "timeout = \"30\"",
            "invalid value \"30\": expected a duration",
        ),
        ("timeout = \"30 seconds\"", "invalid value"),
        ("[recycle]\nmax_memory = \"12XB\"", "invalid value \"12XB\""),
        (
            "mode = \"pul\"",
            "invalid value \"pul\": expected \"pull\" or \"dispatch\"",
        ),
        (
            "[logging]\nformat = \"xml\"",
            "expected \"text\" or \"json\"",
        ),
        ("[logging]\nlevel = \"info,=[\"", "not a log filter"),
    ] {
        let (_, _, _, message) = one(text);
        assert!(message.contains(says), "{text}: {message}");
    }
}

#[test]
fn a_value_out_of_range_says_the_range() {
    for (text, path, says) in [
        // Checked here.
        ("prefetch = 0", "prefetch", "must be at least 1 (got 0)"),
        ("workers = -2", "workers", "must not be negative (got -2)"),
        (
            "[restart]\ncrash_limit = 5000000000",
            "restart.crash_limit",
            "at most 4294967295",
        ),
        (
            "keep_fds = [3, -1]",
            "keep_fds",
            "-1 is not a file descriptor",
        ),
        (
            "[retry]\nmax_attempts = 0",
            "retry.max_attempts",
            "must be at least 1",
        ),
        ("[retry]\njitter = 1.5", "retry.jitter", "[0, 1]"),
        ("[retry]\nbase = \"0s\"", "retry.base", "longer than zero"),
        ("queue = \"\"", "queue", "must not be empty"),
        (
            "[time_limits]\nhard = \"0ms\"",
            "time_limits.hard",
            "longer than zero",
        ),
        // Checked by the master's Builder.
        (
            "workers = 0",
            "workers",
            "must be between 1 and 4096 (got 0)",
        ),
        ("workers = 5000", "workers", "must be between 1 and 4096"),
        ("timeout = \"1ms\"", "timeout", "at least 10ms"),
        (
            "[recycle]\nmax_memory = \"10KiB\"",
            "recycle.max_memory",
            "at least 1048576 bytes",
        ),
        ("[recycle]\njitter = 1.0", "recycle.jitter", "[0, 1)"),
        (
            "[recycle]\nmax_iterations = 0",
            "recycle.max_iterations",
            "at least 1",
        ),
        (
            "[restart]\ncrash_limit = 0",
            "restart.crash_limit",
            "at least 1",
        ),
        (
            "[shutdown]\nkill_grace = \"0s\"",
            "shutdown.kill_grace",
            "non-zero",
        ),
        (
            "mode = \"dispatch\"\nlookahead = 5000",
            "lookahead",
            "at most 4096",
        ),
    ] {
        let (_, _, p, message) = one(text);
        assert_eq!(p.as_deref(), Some(path), "{text}: {message}");
        assert!(message.contains(says), "{text}: {message}");
    }
}

#[test]
fn settings_that_do_not_fit_together_are_refused_at_the_one_set() {
    // heartbeat_interval against the default timeout: the interval is blamed.
    let (line, _, path, message) = one("workers = 2\nheartbeat_interval = \"20s\"\n");
    assert_eq!((line, path.as_deref()), (2, Some("heartbeat_interval")));
    assert!(
        message.contains("at most half of the timeout (15s)"),
        "{message}"
    );
    // The master names graceful_timeout; the one set here is stop_timeout.
    let (line, _, path, message) = one("[shutdown]\n\nstop_timeout = \"20s\"\n");
    assert_eq!((line, path.as_deref()), (3, Some("shutdown.stop_timeout")));
    assert!(
        message.contains("must be shorter than stop_timeout (20s)"),
        "{message}"
    );
    // Both set: one problem, not two, at the named one.
    let (_, _, path, _) = one("[shutdown]\ngraceful_timeout = \"30s\"\nstop_timeout = \"20s\"\n");
    assert_eq!(path.as_deref(), Some("shutdown.graceful_timeout"));
    let (_, _, path, message) = one("[restart]\nbackoff_max = \"10ms\"\n");
    assert_eq!(path.as_deref(), Some("restart.backoff_max"));
    assert!(
        message.contains("at least backoff_initial (100ms)"),
        "{message}"
    );
    let (_, _, path, _) = one("[retry]\nbase = \"2s\"\nmax_delay = \"1s\"\n");
    assert_eq!(path.as_deref(), Some("retry.max_delay"));
    let (_, _, path, _) = one("[time_limits]\nsoft = \"2s\"\nhard = \"1s\"\n");
    assert_eq!(path.as_deref(), Some("time_limits.soft"));
}

#[test]
fn settings_of_the_other_mode_are_refused() {
    let (_, _, path, message) = one("mode = \"dispatch\"\nprefetch = 8\n");
    assert_eq!(path.as_deref(), Some("prefetch"));
    assert!(message.contains("applies to pull mode only"), "{message}");
    let (_, _, path, _) = one("lookahead = 8\n");
    assert_eq!(path.as_deref(), Some("lookahead"));
    let (_, _, path, _) = one("touch_every = \"1s\"\n");
    assert_eq!(path.as_deref(), Some("touch_every"));
    let (_, _, path, _) = one("mode = \"dispatch\"\npoll_interval = \"1s\"\n");
    assert_eq!(path.as_deref(), Some("poll_interval"));
}

#[test]
fn a_bad_broker_url_is_refused_with_the_password_hidden() {
    for url in [
        "redis://:hunter2@127.0.0.1:notaport/0",
        "nats://me:hunter2@127.0.0.1/",
        "amqp://me:hunter2@127.0.0.1:99999/%2f",
    ] {
        let (_, column, path, message) = one(&format!("broker = \"{url}\"\n"));
        assert_eq!((column, path.as_deref()), (10, Some("broker")));
        assert!(!message.contains("hunter2"), "{message}");
        assert!(!problems(&format!("broker = \"{url}\"")).is_empty());
    }
    let (_, _, path, message) = one("broker = \"amqp://127.0.0.1:5672/%2f\"\nlease = \"10s\"\n");
    assert_eq!(path.as_deref(), Some("lease"));
    assert!(
        message.contains("RabbitMQ has no claim timeout"),
        "{message}"
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = "\
workers = 0
wrokers = 3
mode = \"pul\"
timeout = 30
[shutdown]
kill_grac = \"1s\"
[retry]
max_attempts = 0
[logging]
format = \"xml\"
";
    let err = load_text(text, &[], &[]).unwrap_err();
    let lines: Vec<usize> = err
        .list
        .iter()
        .map(|p| match p.origin {
            Origin::File { line, .. } => line,
            _ => panic!("{p:?}"),
        })
        .collect();
    assert_eq!(lines, [1, 2, 3, 4, 6, 8, 10], "{err}");
    let shown = err.to_string();
    assert!(shown.ends_with("7 problems in the settings"), "{shown}");
    assert!(
        shown.contains(
            ".toml:6:1: unknown key `shutdown.kill_grac`: did you mean `shutdown.kill_grace`?"
        ),
        "{shown}"
    );
}

#[test]
fn a_missing_file_is_one_clear_problem() {
    let err = load(Some(Path::new("/nonexistent/prefork.toml")), [], &[]).unwrap_err();
    assert_eq!(err.list.len(), 1);
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/prefork.toml"),
        "{err}"
    );
}

#[test]
fn layers_apply_in_order_defaults_file_env_flags() {
    let text = "workers = 2\nqueue = \"from-file\"\n[retry]\nbase = \"3s\"\n";
    let env = [
        ("PREFORK_WORKERS", "6"),
        ("PREFORK_QUEUE", "from-env"),
        ("PREFORK_SHUTDOWN_KILL_GRACE", "4s"),
    ];
    let flags = [flag("workers", "--workers", "9")];
    let l = load_text(text, &env, &flags).unwrap();
    assert_eq!(l.settings.workers, 9);
    assert_eq!(l.origin("workers"), &Origin::Flag("--workers".into()));
    assert_eq!(l.settings.queue, "from-env");
    assert_eq!(l.origin("queue"), &Origin::Env("PREFORK_QUEUE".into()));
    assert_eq!(l.settings.shutdown.kill_grace, Duration::from_secs(4));
    assert_eq!(l.settings.retry.base, Duration::from_secs(3));
    assert_eq!(l.origin("retry.base"), &Origin::File { line: 4, column: 8 });
    assert_eq!(l.settings.timeout, Duration::from_secs(30));
    let l = load_text(text, &env, &[]).unwrap();
    assert_eq!(l.settings.workers, 6);
    let l = load_text(text, &[], &[]).unwrap();
    assert_eq!(l.settings.workers, 2);
}

#[test]
fn env_names_are_the_dotted_path_in_upper_case() {
    assert_eq!(env_name("workers"), "PREFORK_WORKERS");
    assert_eq!(env_name("broker"), "PREFORK_BROKER");
    assert_eq!(
        env_name("shutdown.kill_grace"),
        "PREFORK_SHUTDOWN_KILL_GRACE"
    );
    let env = [
        ("PREFORK_RECYCLE_MAX_MEMORY", "1GiB"),
        ("PREFORK_KEEP_FDS", "3, 5"),
        ("PREFORK_SHUTDOWN_TERM_IS_GRACEFUL", "true"),
        ("PREFORK_LOGGING_FORMAT", "json"),
    ];
    let s = load_text("", &env, &[]).unwrap().settings;
    assert_eq!(s.recycle.max_memory, Some(Bytes(1 << 30)));
    assert_eq!(s.keep_fds, Some(vec![3, 5]));
    assert!(s.shutdown.term_is_graceful);
    assert_eq!(s.logging.format, LogFormat::Json);
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let env = [
        ("PREFORK_WORKERS", "eight"),
        ("PREFORK_TIMEOUT", "5"),
        ("PREFORK_BROKER", "nats://u:pw@h/"),
    ];
    let err = load_text("workers = 2\n", &env, &[]).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("$PREFORK_TIMEOUT: `timeout`: invalid value \"5\""),
        "{shown}"
    );
    assert!(
        shown.contains("$PREFORK_WORKERS: `workers`: invalid value \"eight\""),
        "{shown}"
    );
    assert!(shown.contains("$PREFORK_BROKER: `broker`: "), "{shown}");
    assert!(!shown.contains("pw@"), "{shown}");
    // A value the master refuses is blamed on the variable that set it.
    let err = load_text("workers = 2\n", &[("PREFORK_WORKERS", "0")], &[]).unwrap_err();
    assert_eq!(err.list[0].origin, Origin::Env("PREFORK_WORKERS".into()));
}

#[test]
fn a_bad_flag_value_names_the_flag() {
    let err = load_text("", &[], &[flag("workers", "--workers", "0")]).unwrap_err();
    assert_eq!(err.list[0].origin, Origin::Flag("--workers".into()));
    assert!(
        err.to_string()
            .starts_with("--workers: `workers`: must be between 1"),
        "{err}"
    );
}

#[test]
fn a_near_miss_in_the_environment_is_noted_not_refused() {
    let l = load_text(
        "",
        &[("PREFORK_WORKRES", "3"), ("PREFORK_REDIS_URL", "redis://x")],
        &[],
    )
    .unwrap();
    assert_eq!(
        l.near_misses,
        [("PREFORK_WORKRES".to_owned(), "PREFORK_WORKERS".to_owned())]
    );
    assert_eq!(l.settings.workers, 4);
}

#[test]
fn the_effective_settings_read_back_as_the_same_settings() {
    let text = "workers = 3\nbroker = \"redis://:hunter2@127.0.0.1:6379/0\"\n[recycle]\nmax_memory = 3000000\nmax_age = \"90m\"\n[retry]\nbase = \"1.5ms\"\n";
    let l = load_text(text, &[("PREFORK_WORKERS", "5")], &[]).unwrap();
    let shown = l.to_toml();
    assert!(
        shown.contains("workers = 5  # $PREFORK_WORKERS\n"),
        "{shown}"
    );
    assert!(
        shown.contains("max_age = \"90m\"  # line 5, column 11\n"),
        "{shown}"
    );
    assert!(
        shown.contains("# stop_timeout: not set  # default\n"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    let again = load_text(&shown, &[], &[]).unwrap();
    let mut want = l.settings.clone();
    want.broker = Some("redis://:***@127.0.0.1:6379/0".to_owned());
    assert_eq!(again.settings, want);
}

#[test]
fn durations_and_sizes_read_as_documented() {
    for (text, want) in [
        ("250ms", Duration::from_millis(250)),
        ("1.5s", Duration::from_millis(1500)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("0.5ms", Duration::from_micros(500)),
    ] {
        let d = Duration::from_text(text).unwrap();
        assert_eq!(d, want, "{text}");
        assert_eq!(Duration::from_text(&value::show_duration(d)).unwrap(), d);
    }
    for bad in ["30", "s", "1.2.3s", "-1s", "5d", ""] {
        assert!(Duration::from_text(bad).is_err(), "{bad}");
    }
    for (text, want) in [
        ("512MiB", 512 << 20),
        ("2GB", 2_000_000_000),
        ("1024", 1024),
        ("4 KiB", 4096),
    ] {
        let b = Bytes::from_text(text).unwrap();
        assert_eq!(b, Bytes(want), "{text}");
        assert_eq!(
            Bytes::from_text(b.show().unwrap().trim_matches('"')).unwrap(),
            b
        );
    }
    assert!(Bytes::from_text("99999999999GiB").is_err());
}

fn docs(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// docs/config.md has a row for each setting, naming its variable, and
/// no row for a setting that does not exist.
#[test]
fn docs_config_md_documents_every_setting() {
    let text = docs("config.md");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| `")).collect();
    for key in KEYS {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/config.md has no row for `{key}`"));
        assert!(row.contains(&format!("`{}`", env_name(key))), "{row}");
    }
    for row in &rows {
        let name = row.trim_start_matches("| `").split('`').next().unwrap();
        assert!(
            KEYS.contains(&name),
            "docs/config.md documents `{name}`, which is not a setting"
        );
    }
}

/// The example file shipped in docs/ is valid, and sets every setting.
#[test]
fn the_example_config_is_valid_and_complete() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/prefork.example.toml");
    let l = load(Some(&path), [], &[]).unwrap_or_else(|e| panic!("{e}"));
    let text = docs("prefork.example.toml");
    for key in KEYS {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.lines().any(|l| l
                .trim_start_matches("# ")
                .starts_with(&format!("{leaf} = "))),
            "the example does not show `{key}`"
        );
    }
    assert_eq!(l.settings.workers, 4);
}
