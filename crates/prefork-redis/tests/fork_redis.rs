//! Redis adapter cases (filled in below).

mod common;

use prefork_tests::harness::{Case, run};

fn placeholder() {}

fn main() {
    common::url_or_skip("prefork-redis adapter tests");
    run(&[Case::new("placeholder", placeholder)]);
}
