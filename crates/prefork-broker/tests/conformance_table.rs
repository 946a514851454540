//! The conformance kit's documented table of cases lists exactly the cases
//! it runs (`conformance::CASES`): a case added to the kit without its row,
//! or a row left for a removed case, fails here.

#![cfg(feature = "conformance")]

use std::collections::BTreeSet;

#[test]
fn the_case_table_lists_every_case_and_no_other() {
    let source = include_str!("../src/conformance.rs");
    let documented: BTreeSet<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .filter_map(|l| l.split_once("` |").map(|(name, _)| name))
        .collect();
    let cases: BTreeSet<&str> = prefork_broker::conformance::CASES.iter().copied().collect();
    assert_eq!(documented, cases, "the module doc's table and CASES differ");
}
