// SPDX-License-Identifier: GPL-2.0

//! The control device's C parts: the file being opened, an open file's
//! wait queue, a debugfs `seq_file`.

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::str::CStr;

use crate::bindings;

// --- the control device -----------------------------------------------------------

/// The file being opened, for the length of `hdm_rs_open`.
pub(crate) struct Opening<'a>(NonNull<bindings::file>, PhantomData<&'a bindings::file>);

impl Opening<'_> {
    /// # Safety
    ///
    /// `file` is the argument of a running `hdm_rs_open`, and the value
    /// does not outlive that call.
    pub(crate) unsafe fn from_raw(file: *mut bindings::file) -> Option<Self> {
        NonNull::new(file).map(|f| Opening(f, PhantomData))
    }

    /// Whether the opener had capability `cap` in the initial user
    /// namespace (`file_ns_capable`: the credentials it opened with).
    pub(crate) fn opener_capable(&self, cap: u32) -> bool {
        let Ok(cap) = i32::try_from(cap) else {
            return false;
        };
        // SAFETY: the file is being opened (invariant of `from_raw`), so
        // its credentials are set and live; any capability number is
        // checked by the callee.
        unsafe { bindings::hdm_file_capable(self.0.as_ptr(), cap) }
    }
}

/// The C part of one open file of the control device (its wait queue).
///
/// # Invariants
///
/// Valid from `hdm_rs_open` until `hdm_rs_release` returns; the Rust file
/// context holding it is dropped by then.
pub(crate) struct FileWaker(NonNull<bindings::hdm_file>);

// SAFETY: waking a wait queue is valid from any thread.
unsafe impl Send for FileWaker {}
// SAFETY: as above.
unsafe impl Sync for FileWaker {}

impl FileWaker {
    /// # Safety
    ///
    /// `hf` is the argument of a running `hdm_rs_open`, and the value is
    /// dropped before `hdm_rs_release` returns for that file.
    pub(crate) unsafe fn from_raw(hf: *mut bindings::hdm_file) -> Option<Self> {
        NonNull::new(hf).map(FileWaker)
    }

    /// Wakes readers and pollers.
    pub(crate) fn wake(&self) {
        // SAFETY: the file's C part is live (invariant).
        unsafe { bindings::hdm_file_wake(self.0.as_ptr()) }
    }
}

/// A debugfs `seq_file` being shown.
pub(crate) struct SeqFile(NonNull<bindings::seq_file>);

impl SeqFile {
    /// # Safety
    ///
    /// `m` is the `seq_file` of a running show callback and the value
    /// does not outlive it.
    pub(crate) unsafe fn from_raw(m: *mut bindings::seq_file) -> Option<Self> {
        NonNull::new(m).map(SeqFile)
    }

    /// Appends text.
    pub(crate) fn puts(&self, s: &CStr) {
        // SAFETY: live seq_file (invariant); `s` is NUL-terminated.
        unsafe { bindings::hdm_seq_puts(self.0.as_ptr(), s.as_char_ptr()) }
    }
}
