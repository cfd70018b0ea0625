// SPDX-License-Identifier: MIT
//! The crate's error: what was being done, the system's error, and what
//! the user can do about it.

use std::fmt;
use std::io;

use rustix::io::Errno;

/// A failed operation: what was being done ([`Error::action`]), the
/// system error behind it ([`Error::raw_os_error`], also the
/// [`source`](std::error::Error::source)), and, for the errnos the
/// driver documents, advice for this operation ([`Error::hint`]).
///
/// `Display` prints `action: error`, then the hint on a line of its own:
///
/// ```text
/// importing 1:3f0a…: No such file or directory (os error 2)
///   hint: no buffer with this id was exported to this domain (…)
/// ```
#[derive(Debug)]
pub struct Error {
    action: String,
    source: io::Error,
    hint: Option<&'static str>,
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `source` met while doing `action`, with no advice.
    pub(crate) fn new(action: impl Into<String>, source: io::Error) -> Self {
        Error {
            action: action.into(),
            source,
            hint: None,
        }
    }

    /// `source` met while doing `action`, with the advice `hints` gives
    /// for its errno in that context.
    pub(crate) fn hinted(
        action: impl Into<String>,
        source: io::Error,
        hints: fn(Errno) -> Option<&'static str>,
    ) -> Self {
        let hint = Errno::from_io_error(&source).and_then(hints);
        Error {
            hint,
            ..Error::new(action, source)
        }
    }

    /// The driver answered with a record this crate cannot read (a newer
    /// or broken driver).
    pub(crate) fn invalid_data(action: impl Into<String>, what: impl fmt::Display) -> Self {
        Error::new(
            action,
            io::Error::new(io::ErrorKind::InvalidData, what.to_string()),
        )
    }

    /// The caller asked for something this crate refuses before any
    /// system call.
    pub(crate) fn invalid_input(action: impl Into<String>, what: impl fmt::Display) -> Self {
        Error::new(
            action,
            io::Error::new(io::ErrorKind::InvalidInput, what.to_string()),
        )
    }

    /// What was being done, e.g. `exporting to domain 3`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The errno, if the system gave one (not for a record the driver
    /// filled in a way this crate cannot read, or an input refused
    /// before any system call).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// The kind of the system error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// Advice for the user, for the errnos whose meaning this operation
    /// documents.
    pub fn hint(&self) -> Option<&'static str> {
        self.hint
    }

    /// Whether trying the same operation again soon may succeed: `EAGAIN`,
    /// which the driver returns when the ring to the peer is full or an
    /// import is being released at that moment.
    pub fn should_retry(&self) -> bool {
        self.raw_os_error() == Some(Errno::AGAIN.raw_os_error())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.action, self.source)?;
        if let Some(hint) = self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<Error> for io::Error {
    /// Keeps the kind, and the whole error (action, hint, errno) as the
    /// inner error.
    fn from(e: Error) -> Self {
        io::Error::new(e.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(errno: Errno) -> Option<&'static str> {
        (errno == Errno::NOENT).then_some("load the driver")
    }

    #[test]
    fn the_hint_follows_the_errno() {
        let e = Error::hinted("opening /x", Errno::NOENT.into(), hints);
        assert_eq!(e.hint(), Some("load the driver"));
        assert_eq!(e.raw_os_error(), Some(Errno::NOENT.raw_os_error()));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(text.starts_with("opening /x: "), "{text}");
        assert!(text.ends_with("\n  hint: load the driver"), "{text}");

        let e = Error::hinted("opening /x", Errno::ACCESS.into(), hints);
        assert_eq!(e.hint(), None);
        assert!(!e.to_string().contains("hint"));
    }

    #[test]
    fn refusals_before_a_system_call_have_no_errno() {
        let e = Error::invalid_input("unexporting", "a delay over 10 minutes");
        assert_eq!(e.raw_os_error(), None);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(!e.should_retry());
        assert_eq!(
            e.to_string(),
            "unexporting: a delay over 10 minutes",
            "no hint line"
        );
    }

    #[test]
    fn only_eagain_is_worth_retrying() {
        assert!(Error::new("exporting", Errno::AGAIN.into()).should_retry());
        assert!(!Error::new("exporting", Errno::BUSY.into()).should_retry());
    }

    #[test]
    fn converts_to_io_error_with_its_source() {
        let e: io::Error = Error::new("listing buffers", Errno::PERM.into()).into();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let inner = e.get_ref().expect("wraps the crate's error");
        assert!(inner.to_string().starts_with("listing buffers: "));
        assert!(std::error::Error::source(inner).is_some());
    }
}
