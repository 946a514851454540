//! Runs every seed of the `envelope` fuzz target (fuzz/seeds/envelope/)
//! through the envelope decoder and the registry, and checks what each
//! seed's name promises: `ok-*` payloads are envelopes the registry accepts,
//! `dead-*` payloads are refused as dead letters with a reason.

use std::path::Path;

use prefork_jobs::{Envelope, JobContext, JobError, Outcome, Registry};
use serde::Deserialize;

/// The typed arguments the fuzz target registers.
#[derive(Deserialize)]
struct Resize {
    _width: u32,
    _height: u32,
}

#[test]
fn every_seed_is_accepted_or_dead_lettered_as_its_name_says() {
    let mut registry = Registry::new();
    registry.register(
        "resize",
        |_: &mut JobContext<'_>, _: Resize| -> Result<(), JobError> { Ok(()) },
    );
    registry.register(
        "noop",
        |_: &mut JobContext<'_>, (): ()| -> Result<(), JobError> { Ok(()) },
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/envelope");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/envelope") {
        let path = entry.expect("seed entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).expect("read seed");
        let prepared = registry.prepare(&data, 1);
        if name.starts_with("ok-") {
            let envelope = Envelope::from_bytes(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                Envelope::from_bytes(&envelope.to_bytes()).as_ref(),
                Ok(&envelope),
                "{name}"
            );
            assert!(prepared.is_ok(), "{name}: refused");
        } else if name.starts_with("dead-") {
            match prepared {
                Err(Outcome::Dead { reason }) => assert!(!reason.is_empty(), "{name}: no reason"),
                Err(other) => panic!("{name}: {other:?}, not a dead letter"),
                Ok(_) => panic!("{name}: accepted"),
            }
        } else {
            panic!("seed {name} has no ok-/dead- prefix");
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} seeds in {}", dir.display());
}
