//! Runs every seed of the `beanstalk_response` fuzz target
//! (fuzz/seeds/beanstalk_response/) through the parser, as the fuzzer does,
//! and checks what each seed's name promises: `ok-*` seeds are whole
//! responses (one or several, pipelined) that parse to the last byte,
//! `more-*` seeds are proper prefixes that ask for more bytes, and `err-*`
//! seeds are refused with an error.

use std::path::Path;

use prefork_beanstalkd::proto::parse_response;

/// The body limit the fuzz target uses.
const MAX_BODY: usize = 4096;

/// Parses `data` as a run of pipelined responses: how many parsed, and how
/// the run ended (`Ok(true)` at the end of the bytes, `Ok(false)` on a
/// partial response, `Err` on an error).
fn parse_all(data: &[u8]) -> (usize, Result<bool, String>) {
    let mut rest = data;
    let mut count = 0;
    while !rest.is_empty() {
        match parse_response(rest, MAX_BODY) {
            Ok(Some((_, used))) => {
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
                count += 1;
            }
            Ok(None) => return (count, Ok(false)),
            Err(e) => return (count, Err(e.to_string())),
        }
    }
    (count, Ok(true))
}

#[test]
fn every_seed_parses_as_its_name_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/beanstalk_response");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/beanstalk_response") {
        let path = entry.expect("seed entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).expect("read seed");
        let (count, end) = parse_all(&data);
        if name.starts_with("ok-") {
            assert!(count >= 1, "{name}: nothing parsed");
            assert_eq!(end, Ok(true), "{name}: did not parse to the end");
        } else if name.starts_with("more-") {
            assert_eq!(end, Ok(false), "{name}: a prefix must ask for more");
        } else if name.starts_with("err-") {
            assert!(end.is_err(), "{name}: must be refused, got {end:?}");
        } else {
            panic!("seed {name} has no ok-/more-/err- prefix");
        }
        seen += 1;
    }
    assert!(seen >= 15, "only {seen} seeds in {}", dir.display());
}
