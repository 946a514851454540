//! The README's table of cases lists exactly the cases the kit runs
//! ([`prefork_conformance::CASES`], which a unit test checks against
//! `cases!`): a case added to the kit without its row, or a row left for a
//! removed case, fails here, naming the file and line.

use std::collections::BTreeMap;

/// The README, as it is compiled into the crate docs.
const README: &str = include_str!("../README.md");
/// Its path, for messages.
const README_PATH: &str = "crates/prefork-conformance/README.md";

/// The case names in the first column of `text`'s table rows (`` | `name` | ``),
/// each with its 1-based line number.
fn documented(text: &str) -> BTreeMap<&str, usize> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let name = l.strip_prefix("| `")?.split_once("` |")?.0;
            Some((name, i + 1))
        })
        .collect()
}

/// What differs between the table in `text` (at `path`) and `cases`: one
/// message per missing or extra row, each naming the file and a line.
fn mismatches(path: &str, text: &str, cases: &[&str]) -> Vec<String> {
    let rows = documented(text);
    let table_line = text
        .lines()
        .position(|l| l.starts_with("| case |"))
        .map_or(1, |i| i + 1);
    let mut bad = Vec::new();
    for case in cases.iter().filter(|c| !rows.contains_key(*c)) {
        bad.push(format!(
            "{path}:{table_line}: the case table has no row for `{case}` (in CASES)"
        ));
    }
    for (name, line) in rows.iter().filter(|(n, _)| !cases.contains(n)) {
        bad.push(format!(
            "{path}:{line}: the case table lists `{name}`, which is not in CASES"
        ));
    }
    bad
}

#[test]
fn the_case_table_lists_every_case_and_no_other() {
    let bad = mismatches(README_PATH, README, prefork_conformance::CASES);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn a_missing_or_extra_row_is_named_with_its_line() {
    let text = "# kit\n\n| case | what |\n|---|---|\n| `a` | x |\n| `gone` | y |\n";
    let bad = mismatches("K.md", text, &["a", "new"]);
    assert_eq!(
        bad,
        [
            "K.md:3: the case table has no row for `new` (in CASES)",
            "K.md:6: the case table lists `gone`, which is not in CASES",
        ]
    );
    assert!(mismatches("K.md", text, &["a", "gone"]).is_empty());
}
