//! Memory measurement from `/proc/<pid>/smaps_rollup`: RSS counts every
//! page a process maps, including the ones it shares copy-on-write with the
//! master; PSS divides each shared page among its sharers, so it is the
//! measure for "how much does this worker cost".

use std::io;

/// `(rss, pss)` in bytes of the calling process.
pub(crate) fn own_rss_pss() -> io::Result<(u64, u64)> {
    rollup("/proc/self/smaps_rollup")
}

/// `(rss, pss)` in bytes of process `pid` (the master reads its
/// children's for the control socket's `status`).
pub(crate) fn rss_pss_of(pid: i32) -> io::Result<(u64, u64)> {
    rollup(&format!("/proc/{pid}/smaps_rollup"))
}

fn rollup(path: &str) -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    parse_rollup(&text).ok_or_else(|| io::ErrorKind::InvalidData.into())
}

/// Reads `Rss:` and `Pss:` (in kB) from the text of an `smaps_rollup` file.
pub(crate) fn parse_rollup(text: &str) -> Option<(u64, u64)> {
    let mut rss = None;
    let mut pss = None;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let slot = match parts.next() {
            Some("Rss:") => &mut rss,
            Some("Pss:") => &mut pss,
            _ => continue,
        };
        let kb: u64 = parts.next()?.parse().ok()?;
        if parts.next() != Some("kB") {
            return None;
        }
        *slot = Some(kb.checked_mul(1024)?);
    }
    Some((rss?, pss?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rollup_format() {
        let text = "55d0c6a8e000-7ffd5a7f2000 ---p 00000000 00:00 0   [rollup]\n\
                    Rss:                4312 kB\n\
                    Pss:                1180 kB\n\
                    Pss_Anon:            512 kB\n\
                    Shared_Clean:       3200 kB\n";
        assert_eq!(parse_rollup(text), Some((4312 * 1024, 1180 * 1024)));
        assert_eq!(parse_rollup("Rss: 12 kB\n"), None);
        assert_eq!(parse_rollup("Rss: x kB\nPss: 1 kB\n"), None);
        assert_eq!(parse_rollup("Rss: 1 MB\nPss: 1 kB\n"), None);
    }

    #[test]
    fn measures_this_process() {
        let (rss, pss) = own_rss_pss().unwrap();
        assert!(rss > 0 && pss > 0 && pss <= rss, "rss {rss} pss {pss}");
        let (rss, pss) = rss_pss_of(std::process::id() as i32).unwrap();
        assert!(rss > 0 && pss > 0 && pss <= rss, "rss {rss} pss {pss}");
        assert!(rss_pss_of(i32::MAX).is_err());
    }
}
