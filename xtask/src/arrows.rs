//! The dependency arrows between the workspace's own crates: which of them
//! each crate may depend on, as ARCHITECTURE.md's "Dependency arrows"
//! table draws them, checked against the dependencies every manifest
//! declares (`cargo metadata --no-deps`, so no network and no build).
//!
//! Normal and build dependencies count, optional ones too (a feature can
//! turn them on); dev-dependencies do not (tests may use any crate). The
//! tidy check of tables keeps [`ARROWS`] and the ARCHITECTURE.md table
//! equal, so to change an arrow, change both.

use std::path::Path;

use crate::workspace::Workspace;

/// Which workspace crates a crate may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// Only these (none when empty).
    Only(&'static [&'static str]),
    /// Any: for the unpublished packages that test or measure everything.
    Any,
}

/// The intended arrows, one row per workspace member (in ARCHITECTURE.md's
/// order). A member without a row is a violation, so a new crate gets its
/// arrows written down when it arrives.
pub(crate) const ARROWS: &[(&str, Allowed)] = &[
    ("prefork-selfpipe", Allowed::Only(&[])),
    ("prefork-proc", Allowed::Only(&[])),
    ("prefork-heartbeat", Allowed::Only(&[])),
    ("prefork-broker", Allowed::Only(&[])),
    (
        "prefork-master",
        Allowed::Only(&["prefork-selfpipe", "prefork-proc", "prefork-heartbeat"]),
    ),
    ("prefork-spool", Allowed::Only(&["prefork-broker"])),
    ("prefork-redis", Allowed::Only(&["prefork-broker"])),
    ("prefork-beanstalkd", Allowed::Only(&["prefork-broker"])),
    ("prefork-rabbitmq", Allowed::Only(&["prefork-broker"])),
    ("prefork-kafka", Allowed::Only(&["prefork-broker"])),
    ("prefork-conformance", Allowed::Only(&["prefork-broker"])),
    (
        "prefork-jobs",
        Allowed::Only(&["prefork-master", "prefork-broker"]),
    ),
    (
        "prefork",
        Allowed::Only(&[
            "prefork-selfpipe",
            "prefork-proc",
            "prefork-heartbeat",
            "prefork-broker",
            "prefork-master",
            "prefork-jobs",
            "prefork-spool",
            "prefork-redis",
            "prefork-beanstalkd",
            "prefork-rabbitmq",
        ]),
    ),
    ("prefork-cli", Allowed::Only(&["prefork"])),
    ("prefork-tests", Allowed::Any),
    ("prefork-benches", Allowed::Any),
    ("xtask", Allowed::Only(&[])),
];

/// The row of `krate`, if it has one.
pub(crate) fn allowed(krate: &str) -> Option<Allowed> {
    ARROWS.iter().find(|(k, _)| *k == krate).map(|(_, a)| *a)
}

/// Every arrow of `ws` that [`ARROWS`] does not allow, and every member
/// without a row, one message each naming the crate and the arrow
/// (manifests shown relative to `root`).
pub(crate) fn violations(ws: &Workspace, root: &Path) -> Vec<String> {
    let members: Vec<&str> = ws.packages.iter().map(|p| p.name.as_str()).collect();
    let mut bad = Vec::new();
    for p in &ws.packages {
        let Some(rule) = allowed(&p.name) else {
            bad.push(format!(
                "{} has no row in ARCHITECTURE.md's dependency arrows (and xtask's ARROWS): say which workspace crates it may depend on",
                p.name
            ));
            continue;
        };
        let Allowed::Only(only) = rule else {
            continue;
        };
        let mut arrows: Vec<&str> = p
            .deps
            .iter()
            .filter(|d| !d.dev && members.contains(&d.name.as_str()))
            .map(|d| d.name.as_str())
            .collect();
        arrows.sort_unstable();
        arrows.dedup();
        for dep in arrows.into_iter().filter(|d| !only.contains(d)) {
            let may = if only.is_empty() {
                "no workspace crate".to_string()
            } else {
                only.join(", ")
            };
            bad.push(format!(
                "forbidden arrow {} -> {dep} (declared in {}/Cargo.toml; {} may depend on {may}, see ARCHITECTURE.md's dependency arrows)",
                p.name,
                p.dir.strip_prefix(root).unwrap_or(&p.dir).display(),
                p.name
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::run::workspace_root;
    use crate::workspace::{Dep, Package};

    fn package(name: &str, deps: &[(&str, bool)]) -> Package {
        Package {
            name: name.into(),
            dir: PathBuf::from("crates").join(name),
            targets: Vec::new(),
            deps: deps
                .iter()
                .map(|(n, dev)| Dep {
                    name: (*n).into(),
                    dev: *dev,
                })
                .collect(),
        }
    }

    /// The architecture invariant itself, on the real workspace: fast
    /// (`cargo metadata --no-deps` only) and offline.
    #[test]
    fn every_workspace_crate_depends_only_on_its_allowed_crates() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let ws = Workspace::load(&cargo, &workspace_root()).expect("cargo metadata");
        assert!(ws.package("prefork-broker").is_some(), "read the workspace");
        let bad = violations(&ws, &workspace_root());
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    #[test]
    fn a_forbidden_arrow_names_the_crate_and_the_arrow() {
        let ws = Workspace {
            packages: vec![
                package("prefork-broker", &[]),
                package(
                    "prefork-master",
                    &[
                        ("prefork-proc", false),
                        ("prefork-broker", false),
                        ("prefork-spool", true),
                        ("nix", false),
                    ],
                ),
                package("prefork-proc", &[]),
                package("prefork-spool", &[("prefork-broker", false)]),
                package("prefork-nats", &[("prefork-broker", false)]),
            ],
        };
        let bad = violations(&ws, Path::new("/nowhere"));
        assert_eq!(bad.len(), 2, "{bad:#?}");
        assert!(
            bad[0].starts_with("forbidden arrow prefork-master -> prefork-broker (declared in crates/prefork-master/Cargo.toml;"),
            "{}",
            bad[0]
        );
        assert!(bad[0].contains(
            "prefork-master may depend on prefork-selfpipe, prefork-proc, prefork-heartbeat"
        ));
        assert!(bad[1].starts_with("prefork-nats has no row"), "{}", bad[1]);
    }

    #[test]
    fn a_leaf_crate_may_depend_on_no_workspace_crate() {
        let ws = Workspace {
            packages: vec![
                package("prefork-broker", &[("prefork-proc", false)]),
                package("prefork-proc", &[]),
            ],
        };
        let bad = violations(&ws, Path::new("/nowhere"));
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].contains("prefork-broker -> prefork-proc")
                && bad[0].contains("may depend on no workspace crate"),
            "{}",
            bad[0]
        );
    }

    #[test]
    fn every_allowed_arrow_points_at_a_crate_with_a_row() {
        let mut names: Vec<&str> = ARROWS.iter().map(|(k, _)| *k).collect();
        for (krate, rule) in ARROWS {
            if let Allowed::Only(only) = rule {
                for dep in *only {
                    assert!(names.contains(dep), "{krate} -> {dep}: no row for {dep}");
                    assert_ne!(krate, dep);
                }
            }
        }
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "two rows for one crate");
    }
}
