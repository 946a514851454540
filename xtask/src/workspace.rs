//! What the workspace holds, read from `cargo metadata --no-deps`: its
//! packages, their targets and the dependencies they declare; and the fuzz
//! targets of the cargo-fuzz project in `fuzz/`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The workspace's packages, as `cargo metadata` describes them.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    /// Every workspace member.
    pub(crate) packages: Vec<Package>,
}

/// One workspace member.
#[derive(Debug, Clone)]
pub(crate) struct Package {
    /// The package name, e.g. `prefork-proc`.
    pub(crate) name: String,
    /// The directory holding its `Cargo.toml`.
    pub(crate) dir: PathBuf,
    /// Its targets (lib, bins, tests, benches, examples).
    pub(crate) targets: Vec<Target>,
    /// The dependencies its manifest declares (any kind, optional or not).
    pub(crate) deps: Vec<Dep>,
}

/// One dependency a package declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dep {
    /// The package depended on (its real name, even when renamed).
    pub(crate) name: String,
    /// Whether it is a dev-dependency (tests, examples and benches only).
    pub(crate) dev: bool,
}

/// One target of a package.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The target name, e.g. `fork_reap`.
    pub(crate) name: String,
    /// Its kinds, e.g. `["lib"]`, `["test"]`, `["bin"]`.
    pub(crate) kinds: Vec<String>,
    /// Whether `cargo test` runs it by default (`test = true`).
    pub(crate) test: bool,
    /// The crate root file.
    pub(crate) src_path: PathBuf,
}

impl Target {
    /// Whether the target is of the given kind.
    pub(crate) fn is(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }

    /// Whether this is a fork-safety test: a test target named `fork_*`,
    /// which runs every case in a process of its own.
    pub(crate) fn is_fork_test(&self) -> bool {
        self.is("test") && self.name.starts_with("fork_")
    }
}

impl Workspace {
    /// Runs `cargo metadata --no-deps` in `root` and reads the members.
    ///
    /// # Errors
    /// When cargo fails or its JSON is not shaped as expected.
    pub(crate) fn load(cargo: &OsStr, root: &Path) -> Result<Workspace> {
        let json = metadata(cargo, &root.join("Cargo.toml"))?;
        let members: Vec<&str> = json["workspace_members"]
            .as_array()
            .context("cargo metadata: no workspace_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut packages = Vec::new();
        for p in json["packages"]
            .as_array()
            .context("cargo metadata: no packages")?
        {
            if !members.contains(&p["id"].as_str().unwrap_or_default()) {
                continue;
            }
            packages.push(package(p)?);
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Workspace { packages })
    }

    /// The member called `name`, if it exists (yet).
    pub(crate) fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// Every test target of every member, with its package.
    pub(crate) fn test_targets(&self) -> impl Iterator<Item = (&Package, &Target)> {
        self.packages
            .iter()
            .flat_map(|p| p.targets.iter().map(move |t| (p, t)))
            .filter(|(_, t)| t.is("test"))
    }
}

/// Runs `cargo metadata --no-deps --format-version 1` on a manifest.
fn metadata(cargo: &OsStr, manifest: &Path) -> Result<Value> {
    let mut cmd = Command::new(cargo);
    cmd.args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--manifest-path",
    ])
    .arg(manifest)
    .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("could not run cargo metadata on {}", manifest.display()))?;
    if !out.status.success() {
        bail!(
            "cargo metadata on {} failed ({})",
            manifest.display(),
            out.status
        );
    }
    serde_json::from_slice(&out.stdout).context("cargo metadata printed invalid JSON")
}

/// Reads one package object of `cargo metadata`.
fn package(p: &Value) -> Result<Package> {
    let name = p["name"].as_str().context("package without a name")?;
    let manifest = PathBuf::from(
        p["manifest_path"]
            .as_str()
            .context("package without a manifest_path")?,
    );
    let dir = manifest
        .parent()
        .context("manifest path has no parent")?
        .to_path_buf();
    let targets = p["targets"]
        .as_array()
        .context("package without targets")?
        .iter()
        .map(|t| Target {
            name: t["name"].as_str().unwrap_or_default().to_string(),
            kinds: t["kind"]
                .as_array()
                .map(|ks| {
                    ks.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            test: t["test"].as_bool().unwrap_or(true),
            src_path: PathBuf::from(t["src_path"].as_str().unwrap_or_default()),
        })
        .collect();
    let deps = p["dependencies"]
        .as_array()
        .context("package without dependencies")?
        .iter()
        .map(|d| Dep {
            name: d["name"].as_str().unwrap_or_default().to_string(),
            dev: d["kind"].as_str() == Some("dev"),
        })
        .collect();
    Ok(Package {
        name: name.to_string(),
        dir,
        targets,
        deps,
    })
}

/// The fuzz targets declared as `[[bin]]` in `fuzz/Cargo.toml`, sorted.
///
/// # Errors
/// When `fuzz/Cargo.toml` is missing or cargo cannot read it.
pub(crate) fn fuzz_targets(cargo: &OsStr, root: &Path) -> Result<Vec<String>> {
    let manifest = root.join("fuzz/Cargo.toml");
    let json = metadata(cargo, &manifest)?;
    let mut names: Vec<String> = json["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    names.sort();
    Ok(names)
}
