//! Tidy rules about what the docs say: no doc or comment points at a file
//! outside the repository, and the tables that mirror a list in the code
//! list what the code lists (the arrows, the crate table, frame kinds,
//! signals, configuration settings and hooks, CLI flags).
//!
//! Each rule is a function from file texts to [`Finding`]s, so its tests
//! feed it a small bad input; [`check`] runs them all on the repository
//! (for `cargo xtask invariants`, and as a plain test of this crate).
//!
//! What "points at a file" means here: a word of a Markdown file, or of a
//! comment in a Rust file (doc comments included, string literals not),
//! that is a path (it starts with a slash, a tilde and a slash, `./` or
//! `../`) or a file name with an extension of [`FILE_EXTENSIONS`]. URLs
//! are not paths, nor are patterns (`<pid>`, `{name}`, `*`). Such a word is
//! outside the repository when it is:
//!
//! - an absolute path of two components or more not under a system
//!   directory ([`SYSTEM_DIRS`]: `/proc`, `/dev`...), except a path in the
//!   temp dir inside a code block (a value the example creates);
//! - a path in a home directory;
//! - a relative path that climbs out of the repository, or that names
//!   nothing in it;
//! - a file name found nowhere in the repository (notes kept on the
//!   author's machine, a file of another project).
//!
//! Paths under `target/` name build output and are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

use crate::arrows::{ARROWS, Allowed};

/// One thing a tidy rule found: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// The file, relative to the repository root.
    pub(crate) file: String,
    /// The 1-based line.
    pub(crate) line: usize,
    /// What is wrong there.
    pub(crate) what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.what)
    }
}

/// Builds a [`Finding`].
fn finding(file: &str, line: usize, what: String) -> Finding {
    Finding {
        file: file.to_string(),
        line,
        what,
    }
}

/// Extensions that make a word a file name.
const FILE_EXTENSIONS: &[&str] = &[
    "md", "rs", "toml", "txt", "py", "rb", "sh", "json", "yml", "yaml",
];

/// Absolute paths under these are the operating system's, present on
/// every reader's machine: naming them is fine.
const SYSTEM_DIRS: &[&str] = &[
    "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/lib", "/run", "/var",
];

/// Known pointers outside the repository in files this tidy rule's author
/// could not edit (they are being reworked elsewhere): (file, word). The
/// owner of each file fixes it and deletes its row; a row that matches
/// nothing any more is itself reported, so the list cannot go stale.
const WAIVED: &[(&str, &str)] = &[];

/// Runs every tidy rule on the repository at `root`.
///
/// # Errors
/// When a file cannot be read.
pub(crate) fn check(root: &Path, crates: &[&str]) -> Result<Vec<Finding>> {
    let files = repo_files(root)?;
    let mut found = Vec::new();
    let mut used = BTreeSet::new();
    for rel in files
        .iter()
        .filter(|f| f.ends_with(".md") || f.ends_with(".rs"))
    {
        let text = read(root, rel)?;
        for f in outside_pointers(rel, &text, &files) {
            let word = f.what.split('`').nth(1).unwrap_or_default();
            match WAIVED
                .iter()
                .position(|(file, w)| *file == f.file && *w == word)
            {
                Some(i) => {
                    used.insert(i);
                }
                None => found.push(f),
            }
        }
    }
    for (i, (file, word)) in WAIVED.iter().enumerate() {
        if !used.contains(&i) {
            found.push(finding(
                file,
                1,
                format!("no longer points at `{word}`: delete its row from tidy.rs's WAIVED"),
            ));
        }
    }
    let arch = "ARCHITECTURE.md";
    found.extend(arrows_table(arch, &read(root, arch)?));
    found.extend(crate_table("README.md", &read(root, "README.md")?, crates));
    let hb = "crates/prefork-heartbeat";
    if root.join(hb).is_dir() {
        let readme = format!("{hb}/README.md");
        let sources = rust_sources(root, &files, &format!("{hb}/src/"))?;
        found.extend(frame_kinds(&readme, &read(root, &readme)?, &sources));
    }
    let master = "crates/prefork-master";
    if root.join(master).is_dir() {
        let sources = rust_sources(root, &files, &format!("{master}/src/"))?;
        let doc = "docs/signals.md";
        found.extend(signal_table(doc, &read(root, doc)?, &sources));
        let doc = "docs/configuration.md";
        found.extend(builder_tables(doc, &read(root, doc)?, &sources));
    }
    let cli = "crates/prefork-cli";
    if root.join(cli).is_dir() {
        let readme = format!("{cli}/README.md");
        let sources = rust_sources(root, &files, &format!("{cli}/src/"))?;
        found.extend(cli_flags(&readme, &read(root, &readme)?, &sources));
    }
    Ok(found)
}

/// The repository's files, relative to `root` with `/` separators, sorted;
/// build output, git's own files and fuzzing scratch left out.
fn repo_files(root: &Path) -> Result<BTreeSet<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel = rel.to_string_lossy().replace('\\', "/");
            let skipped = [
                "target",
                ".git",
                "fuzz/target",
                "fuzz/corpus",
                "fuzz/artifacts",
            ];
            if skipped.contains(&rel.as_str()) || rel.ends_with("/target") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.insert(rel);
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Reads `root/rel`, naming it on failure.
fn read(root: &Path, rel: &str) -> Result<String> {
    crate::invariants::read(&root.join(rel))
}

/// The Rust files under the directory `prefix` (relative, ending in `/`),
/// with their texts.
fn rust_sources(
    root: &Path,
    files: &BTreeSet<String>,
    prefix: &str,
) -> Result<Vec<(String, String)>> {
    files
        .iter()
        .filter(|f| f.starts_with(prefix) && f.ends_with(".rs"))
        .map(|f| Ok((f.clone(), read(root, f)?)))
        .collect()
}

// ----- pointers outside the repository -----------------------------------

/// The words of `file` (relative to the root; its `text`) that point at a
/// file outside the repository, whose files are `files`. In a Rust file
/// only comments are read.
pub(crate) fn outside_pointers(file: &str, text: &str, files: &BTreeSet<String>) -> Vec<Finding> {
    let prose: Vec<(usize, String)> = if file.ends_with(".rs") {
        comments(text)
    } else {
        text.lines().map(String::from).enumerate().collect()
    };
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let package = package_dir(dir, files);
    let mut found = Vec::new();
    let mut in_code = false;
    for (i, line) in &prose {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        for word in words(line) {
            if in_code && word.starts_with("/tmp/") {
                continue;
            }
            if let Some(why) = outside(word, dir, &package, files) {
                found.push(finding(file, i + 1, format!("`{word}` {why}")));
            }
        }
    }
    found
}

/// The comments of some Rust source, one entry per line that has one: its
/// 0-based line and its text, without the `//` (and the third `/` or `!`
/// of a doc comment). String, raw string and char literals are skipped,
/// so a `//` inside them is no comment; block comments count too.
fn comments(text: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut line = 0;
    let mut i = 0;
    // Appends to the comment text of `line`.
    let mut note = |line: usize, c: char| match out.last_mut() {
        Some((l, s)) if *l == line => s.push(c),
        _ => out.push((line, c.to_string())),
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            i += 2;
            if matches!(at(i), '/' | '!') {
                i += 1;
            }
            note(line, ' ');
            while i < chars.len() && chars[i] != '\n' {
                note(line, chars[i]);
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 1;
            i += 2;
            while i < chars.len() && depth > 0 {
                match (chars[i], at(i + 1)) {
                    ('*', '/') => (depth, i) = (depth - 1, i + 2),
                    ('/', '*') => (depth, i) = (depth + 1, i + 2),
                    ('\n', _) => (line, i) = (line + 1, i + 1),
                    (ch, _) => {
                        note(line, ch);
                        i += 1;
                    }
                }
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if at(i) == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == 'r' && matches!(at(i + 1), '"' | '#') && raw_prefix(&chars, i, ident) {
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if at(i + 1 + hashes) != '"' {
                i += 1;
                continue;
            }
            i += hashes + 2;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    i += hashes + 1;
                    break;
                }
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
        } else if c == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime.
            i += 1;
            if at(i) == '\\' {
                i += 1;
            }
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` starts a raw string (`r"`, `r#"`, `br"`): it is
/// not the end of an identifier (`bar"` is no raw string), unless that
/// identifier is the byte-string prefix `b`.
fn raw_prefix(chars: &[char], i: usize, ident: impl Fn(char) -> bool) -> bool {
    let before = |k: usize| i.checked_sub(k).map(|j| chars[j]);
    match before(1) {
        None => true,
        Some('b') => !before(2).is_some_and(&ident),
        Some(c) => !ident(c),
    }
}

/// The path-like words of some prose: runs of path characters, with the
/// punctuation that ends a sentence trimmed. URLs and Rust paths are
/// dropped.
fn words(prose: &str) -> impl Iterator<Item = &str> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_.-/~:<>{}*".contains(c);
    prose
        .split(move |c: char| !path_char(c))
        .map(|w| w.trim_end_matches(['.', ':', ',']).trim_start_matches(':'))
        .filter(|w| w.len() > 1 && !w.contains("://") && !w.contains("::"))
}

/// The nearest directory at or above `dir` that holds a `Cargo.toml`.
fn package_dir(dir: &Path, files: &BTreeSet<String>) -> PathBuf {
    let mut d = Some(dir);
    while let Some(here) = d {
        if files.contains(&slashed(&here.join("Cargo.toml"))) {
            return here.to_path_buf();
        }
        d = here.parent();
    }
    PathBuf::new()
}

/// A relative path with `/` separators.
fn slashed(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// Why `word` (in a file of `dir`, package `package`) points outside the
/// repository, or `None` when it does not (or is no path at all).
fn outside(word: &str, dir: &Path, package: &Path, files: &BTreeSet<String>) -> Option<String> {
    if word.starts_with("~/") {
        return Some("is in a home directory, outside the repository".into());
    }
    if let Some(rest) = word.strip_prefix('/') {
        let system = SYSTEM_DIRS
            .iter()
            .any(|d| word == *d || word.starts_with(&format!("{d}/")));
        let components = rest.split('/').filter(|c| !c.is_empty()).count();
        let named = rest.starts_with(|c: char| c.is_ascii_alphabetic()) && components >= 2;
        if system || !named {
            return None;
        }
        return Some("is an absolute path outside the repository".into());
    }
    if word.contains(['<', '>', '{', '}', '*']) {
        return None;
    }
    if word.starts_with("./") || word.starts_with("../") {
        let Some(resolved) = lexical_join(dir, word) else {
            return Some("climbs out of the repository".into());
        };
        let path = slashed(&resolved);
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let exists = files.contains(&path) || files.iter().any(|f| f.starts_with(&prefix));
        return (!exists).then(|| format!("names {path}, which is not in the repository"));
    }
    let (stem, ext) = word.rsplit_once('.')?;
    let name = stem.rsplit('/').next().unwrap_or(stem);
    if !FILE_EXTENSIONS.contains(&ext) || name.is_empty() || word.starts_with("target/") {
        return None;
    }
    let basename = word.rsplit('/').next().unwrap_or(word);
    let here = [dir, package, Path::new("")]
        .iter()
        .any(|base| files.contains(&slashed(&base.join(word))));
    let anywhere = files
        .iter()
        .any(|f| f == basename || f.ends_with(&format!("/{basename}")));
    (!here && !anywhere).then(|| "names a file that is nowhere in the repository".into())
}

/// `dir` joined with the relative `path`, `..` resolved without touching
/// the file system; `None` when it climbs above the root.
fn lexical_join(dir: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p.to_string()),
        }
    }
    Some(parts.iter().collect())
}

// ----- tables that mirror the code ---------------------------------------

/// One row of a Markdown table: its line and its cells, trimmed.
#[derive(Debug)]
struct Row<'a> {
    /// The 1-based line.
    line: usize,
    /// The cells, without the outer pipes.
    cells: Vec<&'a str>,
}

/// The first table whose header line starts with `header`: the header's
/// line and the body rows (the separator skipped).
fn table<'a>(text: &'a str, header: &str) -> Option<(usize, Vec<Row<'a>>)> {
    tables(text, header).into_iter().next()
}

/// Every table whose header line starts with `header`, as [`table`] reads
/// one.
fn tables<'a>(text: &'a str, header: &str) -> Vec<(usize, Vec<Row<'a>>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (at, _) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with(header))
    {
        let rows = lines[at + 1..]
            .iter()
            .enumerate()
            .take_while(|(_, l)| l.starts_with('|'))
            .filter(|(_, l)| !l.starts_with("|---"))
            .map(|(i, l)| Row {
                line: at + i + 2,
                cells: l
                    .trim()
                    .trim_matches('|')
                    .split('|')
                    .map(str::trim)
                    .collect(),
            })
            .collect();
        out.push((at + 1, rows));
    }
    out
}

/// The `code spans` of a cell, in order.
fn ticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// ARCHITECTURE.md's dependency arrows table against [`ARROWS`].
pub(crate) fn arrows_table(file: &str, text: &str) -> Vec<Finding> {
    arrows_table_against(file, text, ARROWS)
}

/// The arrows table of `text` against `arrows`.
fn arrows_table_against(file: &str, text: &str, arrows: &[(&str, Allowed)]) -> Vec<Finding> {
    let Some((header, rows)) = table(text, "| crate | may depend on |") else {
        return vec![finding(
            file,
            1,
            "has no dependency arrows table (`| crate | may depend on |`)".into(),
        )];
    };
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    for row in &rows {
        let (Some(krate), Some(cell)) = (row.cells.first().map(|c| ticked(c)), row.cells.get(1))
        else {
            continue;
        };
        let Some(&krate) = krate.first() else {
            continue;
        };
        seen.insert(krate);
        let documented = if cell.starts_with("any") {
            None
        } else {
            Some(ticked(cell).into_iter().collect::<BTreeSet<_>>())
        };
        let code = arrows
            .iter()
            .find(|(k, _)| *k == krate)
            .map(|(_, a)| match a {
                Allowed::Any => None,
                Allowed::Only(only) => Some(only.iter().copied().collect::<BTreeSet<_>>()),
            });
        match code {
            None => found.push(finding(
                file,
                row.line,
                format!("the arrows table has a row for `{krate}`, which xtask's ARROWS lacks"),
            )),
            Some(code) if code != documented => found.push(finding(
                file,
                row.line,
                format!(
                    "the arrows of `{krate}` differ: the table says {}, xtask's ARROWS {}",
                    show(&documented),
                    show(&code)
                ),
            )),
            Some(_) => {}
        }
    }
    for (krate, _) in arrows.iter().filter(|(k, _)| !seen.contains(k)) {
        found.push(finding(
            file,
            header,
            format!("the arrows table has no row for `{krate}` (in xtask's ARROWS)"),
        ));
    }
    found
}

/// An arrow set for a message.
fn show(arrows: &Option<BTreeSet<&str>>) -> String {
    match arrows {
        None => "any".into(),
        Some(s) if s.is_empty() => "none".into(),
        Some(s) => s.iter().copied().collect::<Vec<_>>().join(", "),
    }
}

/// The README's crate table against the crates in `crates/`.
pub(crate) fn crate_table(file: &str, text: &str, crates: &[&str]) -> Vec<Finding> {
    let Some((header, rows)) = table(text, "| crate |") else {
        return vec![finding(file, 1, "has no crate table (`| crate |`)".into())];
    };
    let mut found = Vec::new();
    let mut listed = BTreeSet::new();
    for row in &rows {
        let Some(&name) = row
            .cells
            .first()
            .and_then(|c| ticked(c).first().copied())
            .as_ref()
        else {
            continue;
        };
        listed.insert(name);
        if !crates.contains(&name) {
            found.push(finding(
                file,
                row.line,
                format!("the crate table lists `{name}`, which is not a crate in crates/"),
            ));
        }
    }
    for name in crates.iter().filter(|c| !listed.contains(*c)) {
        found.push(finding(
            file,
            header,
            format!("the crate table has no row for `{name}` (crates/{name})"),
        ));
    }
    found
}

/// The heartbeat README's frame kind table against the `KIND_*` constants
/// of its sources and the `Message` variants they encode.
pub(crate) fn frame_kinds(file: &str, text: &str, sources: &[(String, String)]) -> Vec<Finding> {
    let mut consts: BTreeMap<&str, (u8, &str, usize)> = BTreeMap::new();
    let mut variant_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (src, code) in sources {
        for (i, line) in code.lines().enumerate() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("const KIND_")
                && let Some((name, value)) = rest.split_once(": u8 = ")
                && let Ok(n) = value.trim_end_matches(';').parse()
            {
                consts.insert(name, (n, src.as_str(), i + 1));
            }
            if let Some(rest) = l.strip_prefix("Message::")
                && let Some((pattern, kind)) = rest.split_once("=> KIND_")
            {
                let variant = pattern
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .next()
                    .unwrap_or_default();
                variant_of.insert(kind.trim_end_matches(','), variant);
            }
        }
    }
    let mut code: BTreeMap<u8, (&str, &str, usize)> = BTreeMap::new();
    for (name, (n, src, line)) in &consts {
        if let Some(variant) = variant_of.get(name) {
            code.insert(*n, (variant, src, *line));
        }
    }
    if code.is_empty() {
        return vec![finding(
            file,
            1,
            "found no `const KIND_*: u8` encoded by a `Message::* => KIND_*` arm in the crate's sources: update the frame kind check in xtask's tidy.rs".into(),
        )];
    }
    let Some((header, rows)) = table(text, "| kind | message |") else {
        return vec![finding(
            file,
            1,
            "has no frame kind table (`| kind | message |`)".into(),
        )];
    };
    let mut found = Vec::new();
    let mut listed = BTreeSet::new();
    for row in &rows {
        let Some(Ok(n)) = row.cells.first().map(|c| c.parse::<u8>()) else {
            continue;
        };
        let documented = row
            .cells
            .get(1)
            .and_then(|c| ticked(c).first().copied())
            .map(|m| {
                m.split(|c: char| !c.is_ascii_alphanumeric())
                    .next()
                    .unwrap_or(m)
            })
            .unwrap_or_default();
        listed.insert(n);
        match code.get(&n) {
            None => found.push(finding(
                file,
                row.line,
                format!("the frame table lists kind {n} (`{documented}`), which the code does not define"),
            )),
            Some((variant, src, line)) if *variant != documented => found.push(finding(
                file,
                row.line,
                format!("the frame table calls kind {n} `{documented}`; the code ({src}:{line}) encodes `Message::{variant}` with it"),
            )),
            Some(_) => {}
        }
    }
    for (n, (variant, src, line)) in code.iter().filter(|(n, _)| !listed.contains(*n)) {
        found.push(finding(
            file,
            header,
            format!("the frame table has no row for kind {n} (`Message::{variant}`, {src}:{line})"),
        ));
    }
    found
}

/// The signal table of docs/signals.md against the master's `SIGNALS`
/// list: a row whose first cell is just a signal (`` `QUIT` ``) is one the
/// master handles; rows such as `` `KILL` (to a worker) `` describe what
/// happens without a handler and are not compared.
pub(crate) fn signal_table(file: &str, text: &str, sources: &[(String, String)]) -> Vec<Finding> {
    let mut code: BTreeMap<String, (&str, usize)> = BTreeMap::new();
    for (src, body) in sources {
        let mut inside = false;
        for (i, line) in body.lines().enumerate() {
            let l = line.trim();
            if l.contains("const SIGNALS:") {
                inside = true;
            } else if inside && l.starts_with("];") {
                break;
            }
            if let Some(rest) = l.strip_prefix("libc::SIG").filter(|_| inside) {
                code.insert(
                    rest.trim_end_matches(',').to_string(),
                    (src.as_str(), i + 1),
                );
            }
        }
    }
    if code.is_empty() {
        return vec![finding(
            file,
            1,
            "found no `const SIGNALS` of `libc::SIG*` in the master's sources: update the signal table check in xtask's tidy.rs".into(),
        )];
    }
    let Some((header, rows)) = table(text, "| signal |") else {
        return vec![finding(
            file,
            1,
            "has no signal table (`| signal |`)".into(),
        )];
    };
    let mut found = Vec::new();
    let mut listed = BTreeSet::new();
    for row in &rows {
        let Some(cell) = row.cells.first() else {
            continue;
        };
        let spans = ticked(cell);
        if spans.len() != 1 || *cell != format!("`{}`", spans[0]) {
            continue;
        }
        listed.insert(spans[0]);
        if !code.contains_key(spans[0]) {
            found.push(finding(
                file,
                row.line,
                format!(
                    "the signal table lists `{}`, which the master's SIGNALS does not handle",
                    spans[0]
                ),
            ));
        }
    }
    for (name, (src, line)) in code.iter().filter(|(n, _)| !listed.contains(n.as_str())) {
        found.push(finding(
            file,
            header,
            format!("the signal table has no row for `{name}` (handled: {src}:{line})"),
        ));
    }
    found
}

/// The setting and hook tables of docs/configuration.md against the
/// master's `Builder` methods (`pub fn NAME(mut self, ...) -> Builder`):
/// each method has a row whose first cell names it (`` `close_other_fds(keep)` ``
/// names `close_other_fds`), and each row names a method.
pub(crate) fn builder_tables(file: &str, text: &str, sources: &[(String, String)]) -> Vec<Finding> {
    let mut code: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    for (src, body) in sources {
        for (i, line) in body.lines().enumerate() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("pub fn ")
                && let Some((name, args)) = rest.split_once('(')
                && args.starts_with("mut self")
                && l.ends_with("-> Builder {")
            {
                code.insert(name, (src.as_str(), i + 1));
            }
        }
    }
    if code.is_empty() {
        return vec![finding(
            file,
            1,
            "found no `pub fn NAME(mut self, ..) -> Builder` in the master's sources: update the configuration check in xtask's tidy.rs".into(),
        )];
    }
    let mut found = Vec::new();
    let mut listed = BTreeSet::new();
    let mut first_header = None;
    for header in ["| setting |", "| hook |"] {
        for (at, rows) in tables(text, header) {
            first_header.get_or_insert(at);
            for row in &rows {
                let Some(span) = row.cells.first().and_then(|c| ticked(c).first().copied()) else {
                    continue;
                };
                let name = span.split('(').next().unwrap_or(span);
                listed.insert(name);
                if !code.contains_key(name) {
                    found.push(finding(
                        file,
                        row.line,
                        format!("`{name}` is not a method of the master's Builder"),
                    ));
                }
            }
        }
    }
    for (name, (src, line)) in code.iter().filter(|(n, _)| !listed.contains(*n)) {
        found.push(finding(
            file,
            first_header.unwrap_or(1),
            format!("no setting or hook row for `Builder::{name}` ({src}:{line})"),
        ));
    }
    found
}

/// The CLI README's "Commands" section against the long flags that the
/// CLI's sources declare with clap's `#[arg(long ...)]` (a field `max_jobs`
/// is `--max-jobs`, `long = "name"` is `--name`).
pub(crate) fn cli_flags(file: &str, text: &str, sources: &[(String, String)]) -> Vec<Finding> {
    let mut code: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (src, body) in sources {
        let mut pending: Option<Option<String>> = None;
        for (i, line) in body.lines().enumerate() {
            let l = line.trim();
            if l.starts_with("#[arg(") {
                if let Some(explicit) = long_of(l) {
                    pending = Some(explicit);
                }
                continue;
            }
            if l.starts_with("///") || l.starts_with("#[") || l.is_empty() {
                continue;
            }
            if let Some(explicit) = pending.take() {
                let field = l
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("pub ");
                let name = explicit.unwrap_or_else(|| field.trim().replace('_', "-"));
                code.entry(name).or_insert((src.clone(), i + 1));
            }
        }
    }
    if code.is_empty() {
        return vec![finding(
            file,
            1,
            "found no `#[arg(long ...)]` in the CLI's sources: update the CLI flag check in xtask's tidy.rs".into(),
        )];
    }
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| *l == "## Commands") else {
        return vec![finding(file, 1, "has no `## Commands` section".into())];
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut documented: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate().take(end).skip(start) {
        for (at, _) in line.match_indices("--") {
            let flag: &str = line[at + 2..]
                .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
                .next()
                .unwrap_or_default();
            let follows_word = line[..at].ends_with(|c: char| c.is_ascii_alphanumeric());
            if flag.starts_with(|c: char| c.is_ascii_lowercase()) && !follows_word {
                documented.entry(flag).or_insert(i + 1);
            }
        }
    }
    let builtin = ["help", "version"];
    let mut found = Vec::new();
    for (flag, (src, line)) in &code {
        if !documented.contains_key(flag.as_str()) {
            found.push(finding(
                file,
                start + 1,
                format!("the Commands section does not mention `--{flag}` ({src}:{line})"),
            ));
        }
    }
    for (flag, line) in &documented {
        if !code.contains_key(*flag) && !builtin.contains(flag) {
            found.push(finding(
                file,
                *line,
                format!("`--{flag}` is not a flag the CLI declares"),
            ));
        }
    }
    found
}

/// For an `#[arg(...)]` line: `None` when it declares no long flag,
/// `Some(None)` for a bare `long`, `Some(Some(name))` for `long = "name"`.
fn long_of(attr: &str) -> Option<Option<String>> {
    let inner = attr.trim_start_matches("#[arg(").trim_end_matches(")]");
    inner.split(',').map(str::trim).find_map(|part| {
        if part == "long" {
            Some(None)
        } else {
            let value = part.strip_prefix("long")?.trim_start().strip_prefix('=')?;
            Some(Some(value.trim().trim_matches('"').to_string()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::workspace_root;

    fn files(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn lines_of(found: &[Finding]) -> Vec<String> {
        found.iter().map(ToString::to_string).collect()
    }

    /// Every tidy rule holds on the repository itself.
    #[test]
    fn the_repository_is_tidy() {
        let root = workspace_root();
        let crates: Vec<String> = std::fs::read_dir(root.join("crates"))
            .expect("crates/")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("Cargo.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let crates: Vec<&str> = crates.iter().map(String::as_str).collect();
        let found = check(&root, &crates).expect("read the repository");
        assert!(found.is_empty(), "{}", lines_of(&found).join("\n"));
    }

    #[test]
    fn pointers_outside_the_repository_are_found_with_their_line() {
        let repo = files(&[
            "README.md",
            "Cargo.toml",
            "crates/a/Cargo.toml",
            "crates/a/README.md",
            "crates/a/src/lib.rs",
            "crates/a/src/frame.rs",
            "docs/signals.md",
        ]);
        let md = "See [the brief](../../../shared/DESIGN.md), ../../docs/signals.md,\n\
                  /work/main/notes.txt, ~/todo.md, FACTS.md and frame.rs.\n\
                  Fine: /proc/self/fd, https://example.com/x.md, spool:///tmp/q, 20k jobs/s,\n\
                  target/brokers.env, src/lib.rs, ../a/README.md, ../../docs/gone.md.\n";
        let found = outside_pointers("crates/a/README.md", md, &repo);
        assert_eq!(
            lines_of(&found),
            [
                "crates/a/README.md:1: `../../../shared/DESIGN.md` climbs out of the repository",
                "crates/a/README.md:2: `/work/main/notes.txt` is an absolute path outside the repository",
                "crates/a/README.md:2: `~/todo.md` is in a home directory, outside the repository",
                "crates/a/README.md:2: `FACTS.md` names a file that is nowhere in the repository",
                "crates/a/README.md:4: `../../docs/gone.md` names docs/gone.md, which is not in the repository",
            ]
        );
    }

    #[test]
    fn only_the_comments_of_rust_files_are_read() {
        let repo = files(&["Cargo.toml", "src/lib.rs"]);
        let rs = "//! Made after DESIGN.md.\n\
                  let dir = \"/tmp/x\"; // scratch in /tmp/scratch\n\
                  let url = \"https://a//b\";\n\
                  /// see `/home/me/notes.md`\n";
        let found = outside_pointers("src/lib.rs", rs, &repo);
        assert_eq!(
            lines_of(&found),
            [
                "src/lib.rs:1: `DESIGN.md` names a file that is nowhere in the repository",
                "src/lib.rs:2: `/tmp/scratch` is an absolute path outside the repository",
                "src/lib.rs:4: `/home/me/notes.md` is an absolute path outside the repository",
            ]
        );
    }

    #[test]
    fn comments_are_told_from_literals() {
        let src = concat!(
            "let a = \"// no\"; // yes 1\n",
            "let b = r#\"a \" // no\n// still no\"#; /* yes 2 */\n",
            "let c = '\"'; let d = b\"//\"; fn f<'a>(x: &'a str) {} //! yes 3\n",
            "let e = \"multi\n// no\n\"; /// yes 4\n",
            "let g = br\"//\"; let h = '\\''; // yes 5\n",
        );
        let got: Vec<(usize, String)> = comments(src)
            .into_iter()
            .map(|(l, t)| (l, t.trim().to_string()))
            .collect();
        let want: Vec<(usize, String)> = [
            (0, "yes 1"),
            (2, "yes 2"),
            (3, "yes 3"),
            (6, "yes 4"),
            (7, "yes 5"),
        ]
        .iter()
        .map(|(l, t)| (*l, t.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn temp_paths_are_fine_in_code_blocks_only() {
        let repo = files(&["Cargo.toml", "src/lib.rs"]);
        let rs = "//! ```\n//! let dir = Path::new(\"/tmp/doc\");\n//! ```\n//! Results are in /tmp/run/out.txt.\n";
        assert_eq!(
            lines_of(&outside_pointers("src/lib.rs", rs, &repo)),
            ["src/lib.rs:4: `/tmp/run/out.txt` is an absolute path outside the repository"]
        );
    }

    #[test]
    fn the_arrows_table_must_match_the_code() {
        let arrows: &[(&str, Allowed)] = &[
            ("a", Allowed::Only(&[])),
            ("b", Allowed::Only(&["a"])),
            ("t", Allowed::Any),
            ("c", Allowed::Only(&["a"])),
        ];
        let text = "# x\n\n| crate | may depend on |\n|---|---|\n| `a` | none |\n\
                    | `b` | `a`, `c` |\n| `t` | any (tests) |\n| `z` | none |\n";
        assert_eq!(
            lines_of(&arrows_table_against("A.md", text, arrows)),
            [
                "A.md:6: the arrows of `b` differ: the table says a, c, xtask's ARROWS a",
                "A.md:8: the arrows table has a row for `z`, which xtask's ARROWS lacks",
                "A.md:3: the arrows table has no row for `c` (in xtask's ARROWS)",
            ]
        );
        assert_eq!(
            lines_of(&arrows_table_against("A.md", "no table\n", arrows)),
            ["A.md:1: has no dependency arrows table (`| crate | may depend on |`)"]
        );
    }

    #[test]
    fn the_crate_table_must_list_every_crate() {
        let text =
            "| crate | what |\n|---|---|\n| [`a`](crates/a) | x |\n| [`old`](crates/old) | y |\n";
        assert_eq!(
            lines_of(&crate_table("README.md", text, &["a", "new"])),
            [
                "README.md:4: the crate table lists `old`, which is not a crate in crates/",
                "README.md:1: the crate table has no row for `new` (crates/new)",
            ]
        );
    }

    #[test]
    fn the_frame_table_must_match_the_kinds() {
        let code = "const KIND_READY: u8 = 1;\nconst KIND_JOB: u8 = 3;\nconst KIND_GONE: u8 = 4;\n\
                    fn kind(&self) -> u8 { match self {\n\
                    Message::Ready { .. } => KIND_READY,\nMessage::Job { .. } => KIND_JOB,\n\
                    Message::Stats(_) => KIND_GONE,\n} }\n";
        let sources = vec![("src/frame.rs".to_string(), code.to_string())];
        let text = "| kind | message | body |\n|---|---|---|\n| 1 | `Ready { pid }` | x |\n\
                    | 2 | `Beat` | x |\n| 4 | `Done { id }` | x |\n| other | `Unknown` | x |\n";
        assert_eq!(
            lines_of(&frame_kinds("H.md", text, &sources)),
            [
                "H.md:4: the frame table lists kind 2 (`Beat`), which the code does not define",
                "H.md:5: the frame table calls kind 4 `Done`; the code (src/frame.rs:3) encodes `Message::Stats` with it",
                "H.md:1: the frame table has no row for kind 3 (`Message::Job`, src/frame.rs:2)",
            ]
        );
        assert_eq!(
            frame_kinds("H.md", text, &[]).len(),
            1,
            "no kinds found is a finding"
        );
    }

    #[test]
    fn the_signal_table_must_list_every_handled_signal() {
        let code = "use libc::c_int;\npub(crate) const SIGNALS: &[c_int] = &[\n    libc::SIGQUIT,\n    libc::SIGHUP,\n];\nfn f() { libc::SIGKILL; }\n";
        let sources = vec![("src/master.rs".to_string(), code.to_string())];
        let text = "| signal | master |\n|---|---|\n| `QUIT` | stop |\n| `USR2` | x |\n| `KILL` (to a worker) | y |\n";
        assert_eq!(
            lines_of(&signal_table("S.md", text, &sources)),
            [
                "S.md:4: the signal table lists `USR2`, which the master's SIGNALS does not handle",
                "S.md:1: the signal table has no row for `HUP` (handled: src/master.rs:4)",
            ]
        );
    }

    #[test]
    fn the_configuration_tables_must_list_every_builder_method() {
        let code = "impl Builder {\n    pub fn workers(mut self, n: usize) -> Builder {\n    }\n\
                    pub fn on_phase(mut self, hook: impl FnMut(Phase) + 'static) -> Builder {\n    }\n\
                    pub fn build(self) -> Result<Master, ConfigError> {\n    }\n\
                    pub fn max_age(mut self, age: Duration) -> Builder {\n}\n}\n";
        let sources = vec![("src/config.rs".to_string(), code.to_string())];
        let text = "# c\n\n| setting | default |\n|---|---|\n| `workers` | 1 |\n| `gone` | 2 |\n\n\
                    | hook | runs in |\n|---|---|\n| `on_phase(f)` | master |\n";
        assert_eq!(
            lines_of(&builder_tables("C.md", text, &sources)),
            [
                "C.md:6: `gone` is not a method of the master's Builder",
                "C.md:3: no setting or hook row for `Builder::max_age` (src/config.rs:8)",
            ]
        );
    }

    #[test]
    fn the_commands_section_must_list_every_flag() {
        let code = "struct Cli {\n    /// Where.\n    #[arg(long, global = true)]\n    broker: String,\n\
                    #[arg(default_value = \"x\")]\n    job: String,\n    #[arg(long = \"max\")]\n    \
                    /// Most.\n    limit: u64,\n    #[arg(long)]\n    delay_ms: u64,\n}\n";
        let sources = vec![("src/main.rs".to_string(), code.to_string())];
        let text = "# cli\n\nRun `cargo run -- --release`.\n\n## Commands\n\n```sh\n\
                    prefork enqueue JOB [--delay-ms MS] [--count N]\n```\n\n\
                    Global: `--broker URL`, `--help`; a-b--c is no flag.\n\n## Non-goals\n\n--later\n";
        assert_eq!(
            lines_of(&cli_flags("C.md", text, &sources)),
            [
                "C.md:5: the Commands section does not mention `--max` (src/main.rs:9)",
                "C.md:8: `--count` is not a flag the CLI declares",
            ]
        );
    }

    #[test]
    fn long_flags_are_read_from_arg_attributes() {
        assert_eq!(long_of("#[arg(long)]"), Some(None));
        assert_eq!(long_of("#[arg(long, default_value_t = 4)]"), Some(None));
        assert_eq!(long_of("#[arg(long = \"x-y\")]"), Some(Some("x-y".into())));
        assert_eq!(long_of("#[arg(default_value = \"null\")]"), None);
        assert_eq!(long_of("#[arg(longer)]"), None);
    }
}
