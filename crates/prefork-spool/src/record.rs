//! The content of a job file: a 24-byte header (magic, length, checksum)
//! and the payload. Written once in `tmp/`, never modified.
//!
//! The header lets a reader tell a whole file from one cut short or zeroed
//! (after a power loss with [`Durability::Buffered`](crate::Durability)).

use std::fmt;

/// Format magic and version.
const MAGIC: &[u8; 8] = b"PFSPOOL1";
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 24;

/// Why a job file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Corrupt {
    /// Shorter than a header.
    Short(usize),
    /// Not our magic.
    Magic,
    /// Length field and actual length disagree.
    Length { header: u64, actual: u64 },
    /// Checksum mismatch.
    Checksum,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corrupt::Short(n) => write!(f, "{n} bytes, shorter than the {HEADER_LEN}-byte header"),
            Corrupt::Magic => write!(f, "not a spool job file (bad magic)"),
            Corrupt::Length { header, actual } => write!(
                f,
                "truncated or extended: header says {header} payload bytes, file has {actual}"
            ),
            Corrupt::Checksum => write!(f, "payload checksum mismatch"),
        }
    }
}

/// The header a job file with `payload` starts with.
pub(crate) fn header(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[16..].copy_from_slice(&checksum(payload).to_le_bytes());
    h
}

/// Encodes `payload` as a job file's bytes (header, then payload).
pub(crate) fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload));
    out.extend_from_slice(payload);
    out
}

/// Decodes a job file's bytes into the payload, in place (no copy).
pub(crate) fn decode(mut file: Vec<u8>) -> Result<Vec<u8>, Corrupt> {
    if file.len() < HEADER_LEN {
        return Err(Corrupt::Short(file.len()));
    }
    if &file[..8] != MAGIC {
        return Err(Corrupt::Magic);
    }
    let header = u64::from_le_bytes(file[8..16].try_into().expect("8 bytes"));
    let sum = u64::from_le_bytes(file[16..24].try_into().expect("8 bytes"));
    let actual = (file.len() - HEADER_LEN) as u64;
    if header != actual {
        return Err(Corrupt::Length { header, actual });
    }
    if checksum(&file[HEADER_LEN..]) != sum {
        return Err(Corrupt::Checksum);
    }
    file.drain(..HEADER_LEN);
    Ok(file)
}

/// FNV-1a over 64-bit little-endian words, then the tail bytes. Every step
/// is a bijection of the state, so any change confined to one word is
/// always detected; it guards against truncation and zero-fill, not
/// against tampering.
fn checksum(data: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = data.chunks_exact(8);
    for w in words.by_ref() {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(PRIME);
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert_eq!(decode(encode(&payload)), Ok(payload));
        }

        #[test]
        fn any_truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
            let file = encode(&payload);
            let keep = cut.index(file.len());
            prop_assert!(decode(file[..keep].to_vec()).is_err());
        }

        #[test]
        fn any_byte_change_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..512), at in any::<prop::sample::Index>(), flip in 1u8..) {
            let mut file = encode(&payload);
            let i = at.index(file.len());
            file[i] ^= flip;
            prop_assert!(decode(file).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(bytes);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(decode(b"PFS".to_vec()), Err(Corrupt::Short(3)));
        let mut f = encode(b"hello");
        f.truncate(HEADER_LEN + 2);
        assert_eq!(
            decode(f).unwrap_err().to_string(),
            "truncated or extended: header says 5 payload bytes, file has 2"
        );
        assert_eq!(decode(vec![0; 40]), Err(Corrupt::Magic));
    }
}
