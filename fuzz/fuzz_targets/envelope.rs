//! Fuzz target for the job envelope decoder and the registry's look-up of a
//! payload: arbitrary bytes must never panic either, an envelope that
//! decodes must survive a re-encode unchanged, and a payload the registry
//! refuses must come back as a dead letter with a reason, never as a retry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefork_jobs::{Envelope, JobContext, JobError, Outcome, Registry};
use serde::Deserialize;

/// Typed arguments, so that argument mismatches are reached too.
#[derive(Deserialize)]
struct Resize {
    _width: u32,
    _height: u32,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_bytes(data) {
        let again =
            Envelope::from_bytes(&envelope.to_bytes()).expect("re-encoded envelope decodes");
        assert_eq!(again, envelope, "re-encoding changed the envelope");
    }

    let mut registry = Registry::new();
    registry.register(
        "resize",
        |_: &mut JobContext<'_>, _: Resize| -> Result<(), JobError> { Ok(()) },
    );
    registry.register(
        "noop",
        |_: &mut JobContext<'_>, (): ()| -> Result<(), JobError> { Ok(()) },
    );
    let attempt = data.first().map_or(1, |&b| u32::from(b % 4) + 1);
    match registry.prepare(data, attempt) {
        Ok(_) => {}
        Err(Outcome::Dead { reason }) => {
            assert!(!reason.is_empty(), "a dead letter needs a reason")
        }
        Err(other) => panic!("prepare refused a payload with {other:?}, not a dead letter"),
    }
});
