// SPDX-License-Identifier: MIT
//! The system calls of `hdmabuf-hostile mm` that need `unsafe`: an
//! address-space [`Area`] that every mapping, move and access of a case
//! stays inside, probes that touch an address from a process sharing this
//! one's memory, `fork`, and the plain calls around them.
//!
//! Why the [`Area`] makes the operations safe: a case reserves one range
//! of address space (an anonymous `PROT_NONE` mapping) and passes only
//! offsets into it. Mapping the dma-buf with `MAP_FIXED`, `munmap`,
//! `mremap`, `mprotect` and `madvise` can therefore never touch memory a
//! Rust object lives in, and a range a case unmaps or moves away from is
//! reserved again at once (the process is single-threaded: nothing can be
//! allocated there in between). An access inside the area reaches either
//! a mapping the case made or a reservation: at worst the kernel kills
//! the process with `SIGSEGV`, which its parent reports as the case's
//! failure. No Rust reference ever points into the area, so whatever the
//! exporting domain or the kernel writes there breaks no invariant.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An errno.
pub(crate) type Errno = i32;

/// The page size.
pub(crate) const PAGE: usize = 4096;
/// The span of one page-middle-directory entry on x86-64: mappings start
/// on such a boundary so that a case's ranges cross page tables.
pub(crate) const PMD_SPAN: usize = 2 << 20;

fn errno() -> Errno {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `-1`-style result to the errno.
fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// `ssize_t`-style result to the errno.
fn check_len(ret: isize) -> Result<usize, Errno> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret as usize)
    }
}

/// How an access or a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Exited with this status.
    Exit(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exit(0) => write!(f, "no fault"),
            Ended::Exit(code) => write!(f, "exit status {code}"),
            Ended::Signal(sig) => write!(f, "{}", signal_name(*sig)),
        }
    }
}

/// The name of the signals a probe may die of.
pub(crate) fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGABRT => "SIGABRT".into(),
        _ => format!("signal {sig}"),
    }
}

fn decode_status(status: libc::c_int) -> Ended {
    if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Exit(libc::WEXITSTATUS(status))
    }
}

/// A reserved range of this process's address space, aligned to
/// [`PMD_SPAN`].
///
/// # Invariants
///
/// `[base, base + len)` belongs to the case process's `Area` values (a
/// copy names the same range; the range is never given back before the
/// process ends): at every moment each page of it is either a
/// reservation (anonymous, `PROT_NONE`) or a mapping a method made. No
/// Rust object lives in it and no Rust reference points into it.
#[derive(Clone, Copy)]
pub(crate) struct Area {
    base: usize,
    len: usize,
}

impl Area {
    /// Reserves `len` bytes (rounded up to pages) at an address aligned
    /// to [`PMD_SPAN`].
    pub(crate) fn new(len: usize) -> Result<Self, String> {
        let len = len.div_ceil(PAGE) * PAGE;
        let span = len + PMD_SPAN;
        // SAFETY: a fresh anonymous mapping at an address the kernel
        // chooses; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(format!(
                "reserving {span} bytes of address space: errno {}",
                errno()
            ));
        }
        let start = raw as usize;
        let base = start.next_multiple_of(PMD_SPAN);
        // Give back what lies outside the aligned range.
        for (from, n) in [
            (start, base - start),
            (base + len, start + span - base - len),
        ] {
            if n > 0 {
                // SAFETY: both pieces are parts of the reservation just
                // made, outside the range this value keeps.
                unsafe { libc::munmap(from as *mut libc::c_void, n) };
            }
        }
        // INVARIANT: [base, base + len) is reserved and ours.
        Ok(Area { base, len })
    }

    /// The user address of `offset` (for calls that take an address as a
    /// number, such as a `pread` of `/proc/self/mem`).
    pub(crate) fn addr(&self, offset: usize) -> u64 {
        (self.base + offset) as u64
    }

    /// Whether `[offset, offset + len)` lies in the area.
    fn inside(&self, offset: usize, len: usize) -> Result<usize, Errno> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(libc::ERANGE),
        }
    }

    /// Reserves `[offset, offset + len)` again, after what was there went.
    fn reserve(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: the range is inside the area (callers checked it), which
        // holds no Rust object: replacing it affects only the case's own
        // mappings.
        let raw = unsafe {
            libc::mmap(
                (self.base + offset) as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        // Without the reservation a later allocation could land in the
        // area; the case process cannot go on safely.
        if raw == libc::MAP_FAILED {
            std::process::abort();
        }
    }

    /// `mmap(base + offset, len, prot, flags | MAP_FIXED, fd, pgoff *
    /// PAGE)`; `flags` is `MAP_SHARED` or `MAP_PRIVATE`. On failure the
    /// range is reserved again.
    pub(crate) fn map(
        &self,
        offset: usize,
        len: usize,
        prot: i32,
        flags: i32,
        fd: BorrowedFd<'_>,
        pgoff: usize,
    ) -> Result<(), Errno> {
        let at = self.inside(offset, len)?;
        // SAFETY: MAP_FIXED inside the area replaces only a reservation
        // or a mapping of the case (the invariant); no Rust memory.
        let raw = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                prot,
                flags | libc::MAP_FIXED,
                fd.as_raw_fd(),
                (pgoff * PAGE) as libc::off_t,
            )
        };
        if raw == libc::MAP_FAILED {
            let e = errno();
            self.reserve(offset, len);
            return Err(e);
        }
        Ok(())
    }

    /// `munmap` of a range; the range is reserved again afterwards.
    pub(crate) fn unmap(&self, offset: usize, len: usize) -> Result<(), Errno> {
        let at = self.inside(offset, len)?;
        // SAFETY: inside the area: only the case's mappings go.
        check(unsafe { libc::munmap(at as *mut libc::c_void, len) })?;
        self.reserve(offset, len);
        Ok(())
    }

    /// `mprotect` of a range.
    pub(crate) fn protect(&self, offset: usize, len: usize, prot: i32) -> Result<(), Errno> {
        let at = self.inside(offset, len)?;
        // SAFETY: inside the area, which no Rust reference covers.
        check(unsafe { libc::mprotect(at as *mut libc::c_void, len, prot) }).map(drop)
    }

    /// `madvise` of a range.
    pub(crate) fn advise(&self, offset: usize, len: usize, advice: i32) -> Result<(), Errno> {
        let at = self.inside(offset, len)?;
        // SAFETY: inside the area; no advice used here frees memory Rust
        // owns (MADV_REMOVE and MADV_DONTNEED act on the case's mapping).
        check(unsafe { libc::madvise(at as *mut libc::c_void, len, advice) }).map(drop)
    }

    /// `mremap(base + offset, old_len, new_len, flags[, base + to])`; the
    /// new offset. What the call vacated (a shrunk tail, or the old range
    /// after a move) is reserved again. A move out of the area (the kernel
    /// chose the place) is undone with `munmap` and reported as `EXDEV`.
    pub(crate) fn remap(
        &self,
        offset: usize,
        old_len: usize,
        new_len: usize,
        flags: i32,
        to: Option<usize>,
    ) -> Result<usize, Errno> {
        let at = self.inside(offset, old_len)?;
        let target = match to {
            Some(t) => self.inside(t, new_len)?,
            None => 0,
        };
        // SAFETY: the source is inside the area; with MREMAP_FIXED the
        // target is too, and without it the kernel picks a free range.
        // Either way no Rust memory is moved or replaced.
        let raw = unsafe {
            libc::mremap(
                at as *mut libc::c_void,
                old_len,
                new_len,
                flags,
                target as *mut libc::c_void,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(errno());
        }
        let new = raw as usize;
        let moved = new != at;
        if moved && flags & libc::MREMAP_DONTUNMAP == 0 {
            self.reserve(offset, old_len);
        } else if !moved && new_len < old_len {
            self.reserve(offset + new_len, old_len - new_len);
        }
        if new < self.base || new + new_len > self.base + self.len {
            // SAFETY: the kernel just placed this mapping in a free range
            // for us; nothing else lives there.
            unsafe { libc::munmap(raw, new_len) };
            return Err(libc::EXDEV);
        }
        Ok(new - self.base)
    }

    /// Copies `out.len()` bytes from `offset`. Faults (the process dies)
    /// if the range is not readable: callers use it where a case expects
    /// reading to work.
    pub(crate) fn load(&self, offset: usize, out: &mut [u8]) -> Result<(), Errno> {
        let at = self.inside(offset, out.len())?;
        // SAFETY: the source is inside the area (no Rust object there)
        // and `out` is a separate Rust buffer. A source that is not
        // mapped readable faults and the kernel ends this process; it
        // cannot read memory outside the area.
        unsafe { std::ptr::copy_nonoverlapping(at as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `bytes` to `offset`; faults (the process dies) if the range
    /// is not writable.
    pub(crate) fn store(&self, offset: usize, bytes: &[u8]) -> Result<(), Errno> {
        let at = self.inside(offset, bytes.len())?;
        // SAFETY: as for `load`, with the roles swapped: the destination
        // is inside the area, which no Rust reference covers.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
        Ok(())
    }

    /// Reads the byte at `offset` (a volatile read: never optimized
    /// away); faults (the process dies) if it is not readable.
    pub(crate) fn touch(&self, offset: usize) -> Result<u8, Errno> {
        let at = self.inside(offset, 1)?;
        // SAFETY: as for `load`: one byte inside the area.
        Ok(unsafe { std::ptr::read_volatile(at as *const u8) })
    }

    /// Touches the byte at `offset` from a process that shares this one's
    /// memory (`clone(CLONE_VM | CLONE_VFORK)`), so that a fault kills
    /// only that process: how its access ended. A write stores back the
    /// byte it read, so an access that wrongly succeeds changes nothing.
    pub(crate) fn probe(&self, offset: usize, write: bool) -> Result<Ended, Errno> {
        let at = self.inside(offset, 1)?;
        let mut arg = ProbeArg { addr: at, write };
        let mut stack = vec![0u8; 64 * 1024];
        let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
        // SAFETY: the child runs `probe_entry` on `stack` (alive until the
        // parent resumes: CLONE_VFORK suspends it until the child is gone)
        // and reads `arg`, alive as long. It touches one byte inside the
        // area and returns; its exit code or fatal signal is all it does.
        let pid = check(unsafe {
            libc::clone(
                probe_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut arg as *mut ProbeArg).cast(),
            )
        })?;
        drop(stack);
        wait(pid)
    }

    /// `vmsplice` of the ranges `(offset, len)` into the pipe `fd`, without
    /// blocking; the bytes the pipe took.
    pub(crate) fn splice_to(
        &self,
        fd: BorrowedFd<'_>,
        ranges: &[(usize, usize)],
    ) -> Result<usize, Errno> {
        let mut iov = Vec::with_capacity(ranges.len());
        for &(offset, len) in ranges {
            let at = self.inside(offset, len)?;
            iov.push(libc::iovec {
                iov_base: at as *mut libc::c_void,
                iov_len: len,
            });
        }
        // SAFETY: every iovec names a range inside the area; the kernel
        // only takes references to those pages (no gift, no write).
        check_len(unsafe {
            libc::vmsplice(
                fd.as_raw_fd(),
                iov.as_ptr(),
                iov.len(),
                libc::SPLICE_F_NONBLOCK,
            )
        })
    }

    /// `write(fd, base + offset, len)`: the kernel reads the mapping.
    pub(crate) fn write_to(
        &self,
        fd: BorrowedFd<'_>,
        offset: usize,
        len: usize,
    ) -> Result<usize, Errno> {
        let at = self.inside(offset, len)?;
        // SAFETY: the kernel reads `len` bytes inside the area.
        check_len(unsafe { libc::write(fd.as_raw_fd(), at as *const libc::c_void, len) })
    }
}

/// What a probe process touches.
struct ProbeArg {
    addr: usize,
    write: bool,
}

/// The body of a probe process (see [`Area::probe`]).
extern "C" fn probe_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ProbeArg the parent passed, alive while this
    // process runs (the parent is suspended by CLONE_VFORK). The signal
    // calls change only this process's dispositions (no CLONE_SIGHAND):
    // a fault must kill it, not run the handler std installed. The access
    // is to a byte inside the parent's area; a fault ends this process.
    unsafe {
        let arg = &*arg.cast::<ProbeArg>();
        default_fault_signals();
        let p = arg.addr as *mut u8;
        let byte = std::ptr::read_volatile(p);
        if arg.write {
            std::ptr::write_volatile(p, byte);
        }
    }
    0
}

/// Lets SIGSEGV and SIGBUS kill this process, as the kernel's default
/// action does, instead of running the handler std installs (which could
/// print about a stack overflow before it does the same).
pub(crate) fn default_fault_signals() {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: resetting a disposition to SIG_DFL takes no pointer.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// `delete_module(name, O_NONBLOCK)`: what `rmmod` does.
pub(crate) fn delete_module(name: &std::ffi::CStr) -> Result<(), Errno> {
    // SAFETY: `name` is a NUL-terminated string valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Waits for child `pid` to end.
pub(crate) fn wait(pid: libc::pid_t) -> Result<Ended, Errno> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for the call to write.
        match check(unsafe { libc::waitpid(pid, &mut status, libc::__WALL) }) {
            Ok(_) => return Ok(decode_status(status)),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// How child `pid` ended, if it has (does not wait).
pub(crate) fn try_wait(pid: libc::pid_t) -> Result<Option<Ended>, Errno> {
    let mut status = 0;
    // SAFETY: as in `wait`.
    let ret = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    Ok((ret != 0).then(|| decode_status(status)))
}

/// Sends `SIGKILL` to child `pid`.
pub(crate) fn kill(pid: libc::pid_t) {
    // SAFETY: plain system call; `pid` is our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// `fork()`: the child runs `body` and exits with its value; the parent
/// gets the child's pid. Only for single-threaded processes (this tool
/// never starts a thread).
pub(crate) fn fork(body: impl FnOnce() -> i32) -> Result<libc::pid_t, Errno> {
    // SAFETY: the process is single-threaded, so the child's copy of every
    // lock and allocator state is consistent; the child never returns
    // into the caller's frames: it ends with `_exit`.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        let code = body();
        exit_now(code);
    }
    Ok(pid)
}

/// Ends this process at once, with no destructor or buffered output run
/// (a forked case process owns copies of its parent's objects).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointer and does not return.
    unsafe { libc::_exit(code) }
}

/// A pipe: (read end, write end), close-on-exec.
pub(crate) fn pipe() -> Result<(File, File), Errno> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors the kernel writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Makes `fd` non-blocking.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: plain fcntl calls on a borrowed, open descriptor.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Closes every descriptor of this process except 0, 1, 2 and `keep`.
pub(crate) fn close_others(keep: &[RawFd]) -> Result<(), String> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: a forked case process drops its copies of the
            // parent's descriptors; the objects that own them are never
            // dropped (the process ends with `_exit`).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Closes `fd` (consumed) and returns how `close` answered.
pub(crate) fn close(fd: OwnedFd) -> Result<(), Errno> {
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: we own `raw` (taken from the OwnedFd) and close it once.
    check(unsafe { libc::close(raw) }).map(drop)
}

/// Makes this process dumpable again (after `setuid` it is not, and then
/// its `/proc/self` files belong to root), and never writes a core file.
pub(crate) fn dumpable_without_core() -> Result<(), Errno> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `none` is a valid rlimit the call reads.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) })?;
    // SAFETY: plain prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) }).map(drop)
}
