//! [`Spool`]: a directory of queues; opens [`Queue`] handles.

use std::fs;
use std::path::{Component, Path, PathBuf};

use prefork_broker::{Broker, BrokerError, Connect, ErrorKind};

use crate::{Options, Queue};

/// A spool: a directory holding named queues, one subdirectory each.
///
/// Cheap to clone; it holds no file descriptor. Open a [`Queue`] with
/// [`Spool::queue`], or through [`Connect`] (after the fork, in the process
/// that uses it).
///
/// # Examples
///
/// ```
/// use prefork_spool::Spool;
///
/// let dir = std::env::temp_dir().join(format!("spool-ex-{}", std::process::id()));
/// let spool = Spool::open(&dir)?;
/// let q = spool.queue("emails")?;
/// assert_eq!(q.path(), dir.join("emails"));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), prefork_broker::BrokerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    options: Options,
}

impl Spool {
    /// Opens (creating it if needed) the spool at `root` with default
    /// [`Options`].
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, BrokerError> {
        Spool::with_options(root, Options::default())
    }

    /// Opens (creating it if needed) the spool at `root` with `options`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn with_options(root: impl Into<PathBuf>, options: Options) -> Result<Spool, BrokerError> {
        let root = root.into();
        fs::create_dir_all(&root)
            .map_err(|e| BrokerError::io(format_args!("create {}", root.display()), e))?;
        Ok(Spool { root, options })
    }

    /// The spool a URL names, with default [`Options`]: `spool:///abs/dir`,
    /// `spool:rel/dir` (or `spool://rel/dir`), or a bare path. Touches
    /// nothing on disk: the directory is created when a queue is opened. A
    /// spool URL is a path and holds no secret, so it is shown as given.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::path::Path;
    /// use prefork_spool::Spool;
    ///
    /// assert_eq!(Spool::from_url("spool:///var/lib/jobs")?.root(), Path::new("/var/lib/jobs"));
    /// assert_eq!(Spool::from_url("spool:jobs")?.root(), Path::new("jobs"));
    /// assert_eq!(Spool::from_url("/var/spool/q")?.root(), Path::new("/var/spool/q"));
    /// assert!(Spool::from_url("spool://").is_err());
    /// assert!(Spool::from_url("spool:///").is_err()); // not the root directory
    /// assert!(Spool::from_url("redis://127.0.0.1/").is_err());
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for an empty URL or directory, the file
    /// system's root (`spool:///`), or a URL of another scheme.
    pub fn from_url(url: &str) -> Result<Spool, BrokerError> {
        let bad =
            |why: &str| BrokerError::new(ErrorKind::Invalid, format!("spool URL {url:?}: {why}"));
        let path = match url.strip_prefix("spool:") {
            Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
            None if url.contains("://") => {
                return Err(bad("expected spool:///dir, spool:dir or a path"));
            }
            None => url,
        };
        if path.is_empty() {
            return Err(bad("no directory"));
        }
        let root_only = Path::new(path).components().all(|c| {
            matches!(
                c,
                Component::RootDir | Component::CurDir | Component::ParentDir
            )
        }) && path.starts_with('/');
        if root_only {
            return Err(bad(
                "that is the file system's root; name a directory for the spool, e.g. spool:///var/lib/prefork",
            ));
        }
        Ok(Spool {
            root: PathBuf::from(path),
            options: Options::default(),
        })
    }

    /// The spool's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The spool's settings.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Replaces the settings queues are opened with (the directory stays).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use prefork_spool::Spool;
    ///
    /// let mut spool = Spool::from_url("spool:///var/lib/jobs")?;
    /// spool.set_options(spool.options().clone().lease(Duration::from_secs(5)));
    /// assert_eq!(spool.options().lease_time(), Duration::from_secs(5));
    /// # Ok::<(), prefork_broker::BrokerError>(())
    /// ```
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// Opens queue `name`, creating its directories if needed, and removes
    /// half-written files left by publishers that died.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] when `name` is not 1 to 128 characters of
    /// `A-Z a-z 0-9 . _ -` or starts with a dot; an I/O error when the
    /// directories cannot be created.
    pub fn queue(&self, name: &str) -> Result<Queue, BrokerError> {
        Queue::open(self, name)
    }
}

impl Connect for Spool {
    fn open(&self, queue: &str) -> Result<Box<dyn Broker + Send>, BrokerError> {
        Ok(Box::new(self.queue(queue)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let root = |u: &str| Spool::from_url(u).unwrap().root().to_owned();
        assert_eq!(root("spool:///a/b"), PathBuf::from("/a/b"));
        assert_eq!(root("spool://rel"), PathBuf::from("rel"));
        assert_eq!(root("spool:rel"), PathBuf::from("rel"));
        assert_eq!(root("/x"), PathBuf::from("/x"));
        assert_eq!(root("x/y"), PathBuf::from("x/y"));
    }

    #[test]
    fn malformed_urls_are_clear_errors() {
        for (bad, why) in [
            ("", "no directory"),
            ("spool:", "no directory"),
            ("spool://", "no directory"),
            ("spool:///", "the file system's root"),
            ("spool:////", "the file system's root"),
            ("spool:///./..", "the file system's root"),
            ("/", "the file system's root"),
            ("redis://h/0", "expected spool:///dir"),
        ] {
            let e = Spool::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert!(e.to_string().contains("spool URL"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn parsing_touches_nothing_on_disk() {
        let dir = std::env::temp_dir().join(format!("spool-url-{}", std::process::id()));
        let spool = Spool::from_url(&format!("spool://{}", dir.display())).unwrap();
        assert!(!dir.exists());
        spool.queue("q").unwrap();
        assert!(dir.join("q").is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }
}
