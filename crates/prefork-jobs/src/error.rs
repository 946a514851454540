//! Why a job failed: [`JobError`], what a handler returns, and the
//! failures the registry tells apart when it runs a handler.

use std::fmt;
use std::time::Duration;

/// Why a job failed, as its handler says; decides whether it is retried.
///
/// Any `std::error::Error` converts into a retryable `JobError`, so `?`
/// works in handlers.
///
/// # Examples
///
/// ```
/// use prefork_jobs::JobError;
/// use std::time::Duration;
///
/// let e = JobError::new("smtp server busy");          // retried by the policy
/// assert!(e.is_retryable());
/// let e = JobError::fatal("no such user");             // dead letter at once
/// assert!(!e.is_retryable());
/// let e = JobError::retry_after("rate limited", Duration::from_secs(30));
/// assert_eq!(e.delay(), Some(Duration::from_secs(30)));
/// let e: JobError = "7x".parse::<u32>().unwrap_err().into();
/// assert!(e.to_string().contains("invalid digit"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retry: bool,
    delay: Option<Duration>,
}

impl JobError {
    /// A failure the retry policy may retry.
    pub fn new(message: impl Into<String>) -> JobError {
        JobError {
            message: message.into(),
            retry: true,
            delay: None,
        }
    }

    /// A failure no retry can fix: the job goes to the dead letters now.
    pub fn fatal(message: impl Into<String>) -> JobError {
        JobError {
            message: message.into(),
            retry: false,
            delay: None,
        }
    }

    /// A retryable failure that asks for this delay instead of the policy's
    /// (attempts are still counted against the policy's maximum).
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> JobError {
        JobError {
            message: message.into(),
            retry: true,
            delay: Some(delay),
        }
    }

    /// Whether the retry policy may run the job again.
    pub fn is_retryable(&self) -> bool {
        self.retry
    }

    /// The delay asked for by [`retry_after`](JobError::retry_after).
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> JobError {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        JobError::new(message)
    }
}

/// How a handler call failed: its arguments did not deserialize (a dead
/// letter at once), or the handler returned an error.
pub(crate) enum Failure {
    Args(String),
    Job(JobError),
}
