//! [`Spool`]: a directory of queues; opens [`Queue`] handles.

use std::fs;
use std::path::{Path, PathBuf};

use prefork_broker::{Broker, BrokerError, Connect};

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

    /// The spool's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The spool's settings.
    pub fn options(&self) -> &Options {
        &self.options
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
