//! Runs every seed of the `frame` fuzz target (fuzz/seeds/frame/) through
//! the decoder. The seeds were written from the wire-format table in the
//! README, independently of the encoder, and their names say what they must
//! do: `ok-*` decode fully and re-encode to the same bytes, `partial-*` wait
//! for more bytes, `err-*` are refused (among them the kinds, tags and
//! layouts of earlier versions: both ends are the same binary).

use std::path::Path;

use prefork_heartbeat::{DecodeError, Decoder, Message, encode};

/// Decodes `bytes` fed in chunks of `chunk` bytes: messages, error, bytes left.
fn decode(bytes: &[u8], chunk: usize) -> (Vec<Message>, Option<DecodeError>, usize) {
    let mut d = Decoder::new();
    let mut msgs = Vec::new();
    for piece in bytes.chunks(chunk) {
        d.feed(piece);
        loop {
            match d.next_message() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => return (msgs, Some(e), d.buffered()),
            }
        }
    }
    let left = d.buffered();
    (msgs, None, left)
}

#[test]
fn every_seed_decodes_as_its_name_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/frame");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/frame") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        let (msgs, err, left) = decode(&bytes, bytes.len().max(1));
        let (msgs1, err1, left1) = decode(&bytes, 1);
        assert_eq!(
            (&msgs1, &err1),
            (&msgs, &err),
            "{name}: byte-by-byte differs"
        );
        if err.is_none() {
            assert_eq!(left1, left, "{name}");
        }
        if name.starts_with("ok-") {
            assert!(err.is_none(), "{name}: {err:?}");
            assert!(
                !msgs.is_empty() && left == 0,
                "{name}: {msgs:?}, {left} left"
            );
            let mut again = Vec::new();
            for m in &msgs {
                encode(m, &mut again);
            }
            assert_eq!(again, bytes, "{name}: re-encoding differs");
        } else if name.starts_with("partial-") {
            assert!(err.is_none() && msgs.is_empty() && left > 0, "{name}");
        } else if name.starts_with("err-") {
            assert!(err.is_some(), "{name}: decoded {msgs:?}");
        } else {
            panic!("{name}: seed names start with ok-, partial- or err-");
        }
        seen += 1;
    }
    assert!(seen >= 20, "only {seen} seeds in {}", dir.display());
}
