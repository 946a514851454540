//! Broker URLs: `spool:///absolute/dir`, `spool:relative/dir`, or a bare
//! directory path; the default is `$TMPDIR/prefork-spool`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// A parsed broker URL. Only the embedded spool broker is built in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    path: PathBuf,
}

impl BrokerUrl {
    /// Parses `spool:///abs/path`, `spool://rel/path`, `spool:path` or a
    /// bare path.
    ///
    /// # Errors
    ///
    /// For another scheme (`redis://...`: not built into this binary) or
    /// an empty path.
    pub fn parse(url: &str) -> anyhow::Result<BrokerUrl> {
        let path = if let Some(rest) = url.strip_prefix("spool:") {
            rest.strip_prefix("//").unwrap_or(rest)
        } else if let Some((scheme, _)) = url.split_once("://") {
            bail!("broker scheme {scheme:?} is not built into this binary (only spool://)");
        } else {
            url
        };
        if path.is_empty() {
            bail!("broker URL {url:?} has no directory");
        }
        Ok(BrokerUrl {
            path: PathBuf::from(path),
        })
    }

    /// The default broker: the spool in `$TMPDIR/prefork-spool`.
    pub fn default_spool() -> BrokerUrl {
        BrokerUrl {
            path: std::env::temp_dir().join("prefork-spool"),
        }
    }

    /// The spool directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the spool.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn open(&self) -> anyhow::Result<prefork_spool::Spool> {
        prefork_spool::Spool::open(&self.path)
            .with_context(|| format!("opening the spool at {}", self.path.display()))
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spool://{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            BrokerUrl::parse("spool:///a/b").unwrap().path(),
            Path::new("/a/b")
        );
        assert_eq!(
            BrokerUrl::parse("spool:rel").unwrap().path(),
            Path::new("rel")
        );
        assert_eq!(BrokerUrl::parse("/x").unwrap().path(), Path::new("/x"));
        assert!(BrokerUrl::parse("redis://localhost").is_err());
        assert!(BrokerUrl::parse("spool://").is_err());
        let u = BrokerUrl::parse("spool:///a").unwrap();
        assert_eq!(BrokerUrl::parse(&u.to_string()).unwrap(), u);
    }
}
