//! Architecture invariants and tidy rules, checked mechanically.
//!
//! The rules are tables at the top of this file: to add one, add a row.
//! Dependency rules read `cargo tree -p CRATE -e normal` (what a user who
//! takes that crate alone links); rules about crates that do not exist yet
//! are skipped. The arrows between workspace crates are `arrows.rs`, the
//! rules about what docs say `tidy.rs`; both also run as plain tests of
//! this crate. Every violation is listed before the step fails.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::run::Ctx;
use crate::workspace::{self, Package};
use crate::{arrows, tidy};

/// Broker client libraries: only adapter crates may link them.
const BROKER_CLIENTS: &[&str] = &[
    "redis",
    "beanstalkc",
    "rdkafka",
    "amiquip",
    "lapin",
    "kafka",
];

/// Crates that do network or OS I/O (or run an async runtime).
const IO_CRATES: &[&str] = &[
    "mio",
    "nix",
    "socket2",
    "tokio",
    "async-io",
    "async-std",
    "redis",
    "beanstalkc",
    "rdkafka",
    "amiquip",
    "lapin",
    "kafka",
];

/// A rule about one crate's normal (non-dev, non-build) dependencies.
#[derive(Debug)]
struct DepRule {
    /// The crate the rule is about.
    krate: &'static str,
    /// When set, its direct dependencies must all be in this list.
    only_direct: Option<&'static [&'static str]>,
    /// None of these may appear anywhere in its dependency tree.
    never: &'static [&'static str],
    /// Why, printed with a violation.
    why: &'static str,
}

/// The dependency invariants of the architecture (see ARCHITECTURE.md).
const DEP_RULES: &[DepRule] = &[
    DepRule {
        krate: "prefork-selfpipe",
        only_direct: Some(&["libc", "mio"]),
        never: &[],
        why: "the self-pipe is a tiny low-level crate anyone can take alone",
    },
    DepRule {
        krate: "prefork-proc",
        only_direct: Some(&["nix", "libc"]),
        never: &[],
        why: "fork and reap primitives stay a thin layer over the syscalls",
    },
    DepRule {
        krate: "prefork-heartbeat",
        only_direct: Some(&["nix", "mio", "libc"]),
        never: &[],
        why: "the master<->worker channel needs nothing but sockets and polling",
    },
    DepRule {
        krate: "prefork-broker",
        only_direct: None,
        never: IO_CRATES,
        why: "the adapter trait is pure: I/O belongs to the adapter crates",
    },
    DepRule {
        krate: "prefork-master",
        only_direct: None,
        never: BROKER_CLIENTS,
        why: "the supervisor never holds a broker client (principle 1)",
    },
];

/// The only workspace members allowed to contain `unsafe` code; every
/// other member's lib and bin roots carry `#![forbid(unsafe_code)]`.
const UNSAFE_ALLOWED: &[(&str, &str)] = &[
    ("prefork-selfpipe", "signal handlers and raw pipe fds"),
    ("prefork-proc", "fork, exec set-up and process-wide state"),
    (
        "prefork-benches",
        "baselines call raw libc (bare fork, socketpair ping-pong)",
    ),
];

/// Checks every invariant and tidy rule, printing each violation.
///
/// # Errors
/// When any rule is violated (all are listed first), or a tool fails.
pub(crate) fn check(ctx: &mut Ctx) -> Result<()> {
    let mut bad = arrows::violations(&ctx.ws, &ctx.root);
    println!(
        "arrows: {} workspace crates, {} violation(s)",
        ctx.ws.packages.len(),
        bad.len()
    );
    deps(ctx, &mut bad)?;
    no_unsafe(ctx, &mut bad)?;
    tidy(ctx, &mut bad)?;
    if bad.is_empty() {
        println!("all invariants hold");
        return Ok(());
    }
    for v in &bad {
        println!("  violation: {v}");
    }
    bail!("{} invariant violation(s), listed above", bad.len())
}

/// The dependency rules of [`DEP_RULES`].
fn deps(ctx: &Ctx, bad: &mut Vec<String>) -> Result<()> {
    for rule in DEP_RULES {
        if ctx.ws.package(rule.krate).is_none() {
            println!("deps: {} does not exist yet, skipped", rule.krate);
            continue;
        }
        let mut cmd = ctx.cargo([
            "tree", "-p", rule.krate, "-e", "normal", "--prefix", "depth", "--format", "{p}",
        ]);
        let out = cmd
            .output()
            .with_context(|| format!("could not run cargo tree -p {}", rule.krate))?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {} failed: {}",
                rule.krate,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree: Vec<(usize, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(tree_line)
            .collect();
        let direct: Vec<&str> = tree
            .iter()
            .filter(|(d, _)| *d == 1)
            .map(|(_, n)| n.as_str())
            .collect();
        let shown = if direct.is_empty() {
            "(nothing)".to_string()
        } else {
            direct.join(", ")
        };
        println!("deps: {} -> {shown}", rule.krate);
        if let Some(only) = rule.only_direct {
            for dep in direct.iter().filter(|d| !only.contains(d)) {
                bad.push(format!(
                    "{} depends on {dep}; allowed: {} ({})",
                    rule.krate,
                    only.join(", "),
                    rule.why
                ));
            }
        }
        let mut seen: Vec<&str> = tree
            .iter()
            .filter(|(d, n)| *d > 0 && rule.never.contains(&n.as_str()))
            .map(|(_, n)| n.as_str())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for dep in seen {
            bad.push(format!(
                "{} links {dep} (see `cargo tree -p {} -e normal -i {dep}`): {}",
                rule.krate, rule.krate, rule.why
            ));
        }
    }
    Ok(())
}

/// Reads a `cargo tree --prefix depth --format {p}` line, e.g.
/// `1libc v0.2.177`, as its depth and crate name.
fn tree_line(line: &str) -> Option<(usize, String)> {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    let depth = line[..digits].parse().ok()?;
    let name = line[digits..].split_whitespace().next()?;
    Some((depth, name.to_string()))
}

/// `#![forbid(unsafe_code)]` in the lib and bin roots of every member but
/// those of [`UNSAFE_ALLOWED`].
fn no_unsafe(ctx: &Ctx, bad: &mut Vec<String>) -> Result<()> {
    for p in &ctx.ws.packages {
        if let Some((_, why)) = UNSAFE_ALLOWED.iter().find(|(n, _)| *n == p.name) {
            println!("unsafe: allowed in {} ({why})", p.name);
            continue;
        }
        for t in p.targets.iter().filter(|t| t.is("lib") || t.is("bin")) {
            let text = read(&t.src_path)?;
            let forbids = text.lines().any(|l| {
                let l = l.trim();
                l.starts_with("#![forbid(") && l.contains("unsafe_code")
            });
            if !forbids {
                bad.push(format!(
                    "{} lacks #![forbid(unsafe_code)] (unsafe is for prefork-selfpipe and prefork-proc only)",
                    ctx_rel(ctx, &t.src_path)
                ));
            }
        }
    }
    Ok(())
}

/// Tidy: ARCHITECTURE.md exists and names every crate of `crates/`; each of
/// those has a README.md; every Rust file of the workspace and of the fuzz
/// targets starts with a `//!` line (or a crate root with its README as
/// `#![doc = include_str!(..)]`); no test is `#[ignore]`d; every fuzz
/// target has seeds.
fn tidy(ctx: &Ctx, bad: &mut Vec<String>) -> Result<()> {
    let crates_dir = ctx.root.join("crates");
    let arch_path = ctx.root.join("ARCHITECTURE.md");
    let arch = match std::fs::read_to_string(&arch_path) {
        Ok(text) => Some(text),
        Err(_) => {
            bad.push("ARCHITECTURE.md is missing (the codebase map, kept current)".into());
            None
        }
    };
    let in_crates: Vec<&Package> = ctx
        .ws
        .packages
        .iter()
        .filter(|p| p.dir.starts_with(&crates_dir))
        .collect();
    for p in &in_crates {
        if !p.dir.join("README.md").is_file() {
            bad.push(format!("{} has no README.md", ctx_rel(ctx, &p.dir)));
        }
        if let Some(arch) = &arch
            && !mentions(arch, &p.name)
        {
            bad.push(format!("ARCHITECTURE.md does not name {}", p.name));
        }
    }
    let mut dirs: Vec<PathBuf> = ctx.ws.packages.iter().map(|p| p.dir.clone()).collect();
    dirs.push(ctx.root.join("fuzz/fuzz_targets"));
    let ignore_attr = concat!("#[", "ignore");
    let mut files = Vec::new();
    for dir in &dirs {
        rust_files(dir, &mut files)?;
    }
    files.sort();
    files.dedup();
    for file in &files {
        let text = read(file)?;
        if !starts_with_doc(&text) {
            bad.push(format!(
                "{} does not start with a `//!` line saying what it is",
                ctx_rel(ctx, file)
            ));
        }
        if text
            .lines()
            .any(|l| l.trim_start().starts_with(ignore_attr))
        {
            bad.push(format!(
                "{} has an ignored test (tests must run)",
                ctx_rel(ctx, file)
            ));
        }
    }
    if ctx.root.join("fuzz/Cargo.toml").is_file() {
        for target in workspace::fuzz_targets(&ctx.cargo, &ctx.root)? {
            let seeds = ctx.root.join("fuzz/seeds").join(&target);
            let has_seeds = std::fs::read_dir(&seeds).is_ok_and(|mut d| d.next().is_some());
            if !has_seeds {
                bad.push(format!(
                    "fuzz target {target} has no seeds in fuzz/seeds/{target}/"
                ));
            }
        }
    }
    let names: Vec<&str> = in_crates.iter().map(|p| p.name.as_str()).collect();
    let found = tidy::check(&ctx.root, &names)?;
    println!(
        "tidy: {} crates in crates/, {} Rust files checked, {} finding(s) about docs",
        in_crates.len(),
        files.len(),
        found.len()
    );
    bad.extend(found.iter().map(ToString::to_string));
    Ok(())
}

/// Whether a file opens with its doc: a `//!` line, or (for a crate root)
/// `#![doc = include_str!(...)]`, which makes the README the crate doc.
fn starts_with_doc(text: &str) -> bool {
    text.starts_with("//!") || text.starts_with("#![doc")
}

/// Whether `text` names `name` as a whole word (so `prefork` is not found
/// inside `prefork-proc`).
fn mentions(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// Collects the `.rs` files under `dir`, skipping `target` directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a file to a string, naming it on failure.
pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))
}

/// `path` relative to the workspace root, for messages.
fn ctx_rel(ctx: &Ctx, path: &Path) -> String {
    path.strip_prefix(&ctx.root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_as_whole_words_only() {
        let text = "| `prefork-proc` | fork |\nthe prefork-selfpipe crate";
        assert!(mentions(text, "prefork-proc"));
        assert!(mentions(text, "prefork-selfpipe"));
        assert!(!mentions(text, "prefork"));
        assert!(!mentions(text, "prefork-pro"));
        assert!(mentions("see prefork.", "prefork"));
    }

    #[test]
    fn files_open_with_a_doc_line_or_the_readme() {
        assert!(starts_with_doc("//! What this is.\nuse std::io;\n"));
        assert!(starts_with_doc(
            "#![doc = include_str!(\"../README.md\")]\n//!\n"
        ));
        assert!(!starts_with_doc("use std::io;\n//! late\n"));
        assert!(!starts_with_doc("\n//! after a blank line\n"));
        assert!(!starts_with_doc("// a plain comment\n"));
    }

    #[test]
    fn reads_cargo_tree_depth_lines() {
        assert_eq!(tree_line("1libc v0.2.177"), Some((1, "libc".into())));
        assert_eq!(
            tree_line("0prefork-proc v0.1.0 (/work/main/crates/prefork-proc)"),
            Some((0, "prefork-proc".into()))
        );
        assert_eq!(
            tree_line("12signal-hook-registry v1.4.6 (*)"),
            Some((12, "signal-hook-registry".into()))
        );
        assert_eq!(tree_line(""), None);
        assert_eq!(tree_line("libc v0.2.177"), None);
    }

    #[test]
    fn every_rule_names_a_distinct_crate() {
        let mut names: Vec<&str> = DEP_RULES.iter().map(|r| r.krate).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "two rules for one crate");
        for client in BROKER_CLIENTS {
            assert!(IO_CRATES.contains(client), "{client} is I/O too");
        }
    }
}
