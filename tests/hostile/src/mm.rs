// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile mm`: every mm operation a process can do to the
//! mapping of an imported buffer, run by an unprivileged process, with the
//! result `docs/uapi.md` ("What a process can do with an imported
//! buffer's mapping") promises: the right bytes, or a clean refusal.
//!
//! The tool imports the buffer once per case (as root, through the
//! client library), forks a process that drops to `--nobody` keeping
//! only the dma-buf fd, and runs the case there: mmap, mprotect, munmap,
//! mremap, madvise, fork, exec, vmsplice, write(2), /proc/self/mem. Bytes
//! are compared with a model of the buffer: the exporter's pattern
//! (`hdmabuf export --seed`), and, with `--rw`, pages the cases wrote
//! with the pattern of `--write-seed`, each case on pages no case wrote
//! before. An access that must fault is made by a probe process sharing
//! the case's memory; its wait status says how it ended. The root parent
//! checks the importer's gauges after every case (`dmabufs_live`,
//! `pages_mapped`, `unmaps_pending` back to where they were, `pages_leaked`
//! unchanged). With `--rw` a last step writes the write pattern into every
//! page no case wrote, so that the exporter then finds that pattern in
//! every page (`hdmabuf export --expect-seed`) only if every write reached
//! its pages.
//!
//! Three cases need a partner and run only when named: `vmsplice-hold`
//! (the exporter unexports while a pipe holds pages of the released
//! buffer; see tests/vm/scenarios/mm.sh), `peer-death` (the scenario
//! destroys the exporter's domain while the buffer is mapped) and
//! `unload` (this domain's module is asked to unload while it is mapped).

mod sys;

use crate::limits::scaled;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use hyper_dmabuf_client::testing::{pattern, retry_full, wait_readable};
use hyper_dmabuf_client::{Device, ExportOptions, Udmabuf};
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType, QueryItem, DEVICE_PATH};
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_common::xen::DomId;
use libc::{EACCES, EFAULT, EINVAL, EIO, ENODEV, SIGSEGV};
use rustix::fs::{memfd_create, MemfdFlags};

use crate::ioctl::errno_name;
use crate::referee::stats;
use sys::{Area, Ended, Errno, PAGE};

/// `hdmabuf-hostile mm`'s arguments.
#[derive(clap::Args)]
pub(crate) struct MmArgs {
    /// The buffer to import, as `hdmabuf export` printed it.
    #[arg(long)]
    id: HyperDmabufId,
    /// Import read-write (the export must allow it) and write through the
    /// mappings.
    #[arg(long)]
    rw: bool,
    /// The seed of the exporter's pattern (`hdmabuf export --seed`).
    #[arg(long)]
    seed: u64,
    /// With --rw: the seed of the pattern the cases write; at the end
    /// every page holds it (`hdmabuf export --expect-seed`).
    #[arg(long, requires = "rw")]
    write_seed: Option<u64>,
    /// The unprivileged uid and gid the cases run as.
    #[arg(long, default_value_t = 65534)]
    nobody: u32,
    /// Cases to run, in this order (default: every case that needs no
    /// partner). `vmsplice-hold`, `peer-death` and `unload` run only when
    /// named.
    cases: Vec<String>,
}

/// How long released state may take to go after a case.
const SETTLE: Duration = Duration::from_secs(30);
/// How long a case process may run.
const CASE_LIMIT: Duration = Duration::from_secs(180);
/// How long a step of the exporter or of the scenario may take.
const PARTNER_LIMIT: Duration = Duration::from_secs(240);
/// Closing the last reference of a released buffer must not wait for
/// page references held elsewhere: it returns within this.
const CLOSE_PROMPT: Duration = Duration::from_secs(5);
/// Pages `vmsplice-hold` leaves in a pipe (a pipe's default capacity).
const HOLD_PAGES: usize = 16;

type Outcome = Result<(), String>;

// --- the model of the buffer -----------------------------------------------------

/// What every page of the buffer should hold.
struct Model {
    seed: u64,
    write_seed: u64,
    /// The exporter's pattern.
    exporter: Vec<u8>,
    /// The pattern the cases write (empty when read-only).
    written: Vec<u8>,
    /// What the buffer holds now.
    now: Vec<u8>,
    /// Pages some case wrote.
    dirty: Vec<bool>,
}

impl Model {
    fn new(len: usize, seed: u64, write_seed: Option<u64>) -> Self {
        let mut exporter = vec![0u8; len];
        pattern::fill(seed, &mut exporter);
        let written = write_seed.map_or_else(Vec::new, |w| {
            let mut b = vec![0u8; len];
            pattern::fill(w, &mut b);
            b
        });
        Model {
            seed,
            write_seed: write_seed.unwrap_or(0),
            now: exporter.clone(),
            exporter,
            written,
            dirty: vec![false; len / PAGE],
        }
    }

    fn pages(&self) -> usize {
        self.dirty.len()
    }

    /// Pages `[first, first + n)` as they should be now.
    fn expected(&self, first: usize, n: usize) -> &[u8] {
        &self.now[first * PAGE..(first + n) * PAGE]
    }

    /// The write pattern's bytes of `page`.
    fn write_page(&self, page: usize) -> &[u8] {
        &self.written[page * PAGE..(page + 1) * PAGE]
    }

    /// Pages `[from, to)` were written with the write pattern.
    fn wrote(&mut self, from: usize, to: usize) {
        let (a, b) = (from * PAGE, to * PAGE);
        self.now[a..b].copy_from_slice(&self.written[a..b]);
        self.dirty[from..to].fill(true);
    }

    /// A page of `range` no case wrote yet (the first of the range if all
    /// were).
    fn fresh(&self, range: std::ops::Range<usize>) -> usize {
        range
            .clone()
            .find(|&p| !self.dirty[p])
            .unwrap_or(range.start)
    }

    /// Why `seen`, read where `page` is mapped, is not what it should be.
    fn describe(&self, page: usize, seen: &[u8]) -> String {
        let at = page * PAGE..(page + 1) * PAGE;
        let expected = if self.dirty[page] {
            format!("the written pattern (seed {})", self.write_seed)
        } else {
            format!("the exporter's pattern (seed {})", self.seed)
        };
        let holds = if seen == &self.exporter[at.clone()] {
            format!("the exporter's pattern (seed {})", self.seed)
        } else if !self.written.is_empty() && seen == &self.written[at] {
            format!("the written pattern (seed {})", self.write_seed)
        } else {
            format!("other bytes (first 8: {:02x?})", &seen[..8])
        };
        format!("page {page} holds {holds}, expected {expected}")
    }
}

// --- parent and case process: line messages -----------------------------------------

/// One end of the two pipes between the parent and a case process. The
/// case process reports `wrote FROM TO` (pages it wrote), `note TEXT`,
/// `fail TEXT` and `at STAGE` (a stage the parent acts on); the parent
/// answers stages with a word.
struct Link {
    rx: BufReader<File>,
    tx: File,
}

impl Link {
    /// (the parent's end, the case process's end).
    fn pair() -> Result<(Link, Link), String> {
        let (down_r, down_w) = sys::pipe().map_err(|e| format!("pipe: {}", errno_name(e)))?;
        let (up_r, up_w) = sys::pipe().map_err(|e| format!("pipe: {}", errno_name(e)))?;
        Ok((
            Link {
                rx: BufReader::new(up_r),
                tx: down_w,
            },
            Link {
                rx: BufReader::new(down_r),
                tx: up_w,
            },
        ))
    }

    fn send(&mut self, line: &str) -> Outcome {
        let line = format!("{}\n", line.replace('\n', " / "));
        self.tx
            .write_all(line.as_bytes())
            .map_err(|e| format!("telling the other process: {e}"))
    }

    /// The next line; `None` once every writer is gone.
    fn recv(&mut self, until: Instant) -> Result<Option<String>, String> {
        if self.rx.buffer().is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            let ready = wait_readable(self.rx.get_ref().as_fd(), Some(left))
                .map_err(|e| format!("waiting for the other process: {e}"))?;
            if !ready {
                return Err("timed out".into());
            }
        }
        let mut line = String::new();
        match self.rx.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim_end().to_string())),
            Err(e) => Err(format!("reading the other process: {e}")),
        }
    }

    fn fds(&self) -> [i32; 2] {
        [self.rx.get_ref().as_raw_fd(), self.tx.as_raw_fd()]
    }
}

// --- the case process -------------------------------------------------------------

/// What a case runs with, in its unprivileged process.
struct Child<'a> {
    rw: bool,
    len: usize,
    /// The imported dma-buf; `None` once the case closed it.
    fd: Option<OwnedFd>,
    model: &'a mut Model,
    link: Link,
    /// The pipe `vmsplice-hold` leaves pages in (the parent keeps a read
    /// end, to empty it if the close never returns).
    held: (File, Option<File>),
    /// The case's address space, once made.
    area: Option<Area>,
    /// Leave the mapping and the fd to the process's exit.
    keep: bool,
}

impl Child<'_> {
    fn pages(&self) -> usize {
        self.model.pages()
    }

    /// Where the second mapping slot of the area starts (a move's target).
    fn slot(&self) -> usize {
        self.len.next_multiple_of(sys::PMD_SPAN)
    }

    fn prot(&self) -> i32 {
        if self.rw {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    fn fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, String> {
        self.fd
            .as_ref()
            .map(AsFd::as_fd)
            .ok_or_else(|| "the dma-buf fd is closed".to_string())
    }

    /// The case's area: two slots of the buffer's size, each starting on a
    /// page-table boundary.
    fn area(&mut self) -> Result<Area, String> {
        if self.area.is_none() {
            self.area = Some(Area::new(2 * self.slot())?);
        }
        Ok(self.area.expect("just made"))
    }

    /// The whole buffer mapped shared at the start of the area, with the
    /// import's protection.
    fn whole(&mut self) -> Result<Area, String> {
        let area = self.area()?;
        area.map(0, self.len, self.prot(), libc::MAP_SHARED, self.fd()?, 0)
            .map_err(|e| format!("mmap of the whole buffer: {}", errno_name(e)))?;
        Ok(area)
    }

    /// Pages `[first, first + n)` are mapped at `offset` and hold what the
    /// model says.
    fn check(&self, area: &Area, offset: usize, first: usize, n: usize, what: &str) -> Outcome {
        let mut seen = vec![0u8; n * PAGE];
        area.load(offset, &mut seen)
            .map_err(|e| format!("{what}: reading: {}", errno_name(e)))?;
        let expected = self.model.expected(first, n);
        match seen.iter().zip(expected).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(at) => {
                let page = at / PAGE;
                let bytes = &seen[page * PAGE..(page + 1) * PAGE];
                Err(format!(
                    "{what}: byte {} differs: {}",
                    first * PAGE + at,
                    self.model.describe(first + page, bytes)
                ))
            }
        }
    }

    /// The whole buffer, mapped at the start of the area, is right.
    fn check_whole(&self, area: &Area, what: &str) -> Outcome {
        self.check(area, 0, 0, self.pages(), what)
    }

    /// Records that `page` gets the write pattern (before writing it, so
    /// that the parent knows even if the write kills the process).
    fn claim(&mut self, page: usize) -> Outcome {
        self.model.wrote(page, page + 1);
        self.link.send(&format!("wrote {page} {}", page + 1))
    }

    /// Writes the write pattern into a page of `range` no case wrote,
    /// through its mapping at `offset + (page - first) * PAGE`.
    fn write_fresh(
        &mut self,
        area: &Area,
        offset: usize,
        first: usize,
        range: std::ops::Range<usize>,
    ) -> Outcome {
        let page = self.model.fresh(range);
        self.claim(page)?;
        area.store(offset + (page - first) * PAGE, self.model.write_page(page))
            .map_err(|e| format!("writing page {page}: {}", errno_name(e)))
    }

    /// Touching `offset` (reading, or writing the same byte back) must
    /// kill the probe with SIGSEGV.
    fn expect_segv(&self, area: &Area, offset: usize, write: bool, what: &str) -> Outcome {
        let access = if write { "writing" } else { "reading" };
        match area.probe(offset, write) {
            Ok(Ended::Signal(SIGSEGV)) => Ok(()),
            Ok(Ended::Exit(0)) => Err(format!("{access} {what}: no fault, expected SIGSEGV")),
            Ok(other) => Err(format!("{access} {what}: {other}, expected SIGSEGV")),
            Err(e) => Err(format!("probe of {what}: {}", errno_name(e))),
        }
    }

    fn note(&mut self, text: &str) -> Outcome {
        self.link.send(&format!("note {text}"))
    }

    /// Tells the parent the case reached `stage`; waits for its answer
    /// (`stop`: the parent's part failed, give up).
    fn stage(&mut self, stage: &str) -> Result<String, String> {
        self.link.send(&format!("at {stage}"))?;
        match self.link.recv(Instant::now() + scaled(PARTNER_LIMIT) * 2)? {
            Some(word) if word == "stop" => Err(format!("stopped by the parent at {stage}")),
            Some(word) => Ok(word),
            None => Err(format!("the parent went away at {stage}")),
        }
    }

    /// Unmaps the area and closes the fd, unless the case keeps them.
    fn finish(&mut self) -> Outcome {
        if self.keep {
            return Ok(());
        }
        if let Some(area) = self.area.take() {
            area.unmap(0, 2 * self.slot())
                .map_err(|e| format!("final munmap: {}", errno_name(e)))?;
        }
        match self.fd.take().map(sys::close) {
            Some(Err(e)) => Err(format!("closing the dma-buf fd: {}", errno_name(e))),
            _ => Ok(()),
        }
    }
}

/// `got` must be one of the errnos `want`.
fn expect_err<T>(got: Result<T, Errno>, want: &[Errno], what: &str) -> Outcome {
    let names = want
        .iter()
        .map(|&e| errno_name(e))
        .collect::<Vec<_>>()
        .join(" or ");
    match got {
        Err(e) if want.contains(&e) => Ok(()),
        Err(libc::EXDEV) => Err(format!(
            "{what}: succeeded, moving the mapping out of the case's area, expected {names}"
        )),
        Err(e) => Err(format!("{what}: {}, expected {names}", errno_name(e))),
        Ok(_) => Err(format!("{what}: succeeded, expected {names}")),
    }
}

/// `got` must have succeeded.
fn expect_ok<T>(got: Result<T, Errno>, what: &str) -> Result<T, String> {
    got.map_err(|e| format!("{what}: {}", errno_name(e)))
}

/// The thirds of `n` pages: `(a, b)` with `[0, a)`, `[a, b)`, `[b, n)`.
fn thirds(n: usize) -> (usize, usize) {
    (n / 3, 2 * n / 3)
}

// --- the cases ----------------------------------------------------------------------

fn mmap_private(c: &mut Child<'_>) -> Outcome {
    let area = c.area()?;
    let got = area.map(0, c.len, libc::PROT_READ, libc::MAP_PRIVATE, c.fd()?, 0);
    expect_err(got, &[EINVAL], "mmap MAP_PRIVATE, PROT_READ")?;
    let got = area.map(0, c.len, c.prot(), libc::MAP_PRIVATE, c.fd()?, 0);
    expect_err(got, &[EINVAL], "mmap MAP_PRIVATE, the import's protection")
}

fn mmap_write(c: &mut Child<'_>) -> Outcome {
    let area = c.area()?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let got = area.map(0, c.len, rw, libc::MAP_SHARED, c.fd()?, 0);
    if !c.rw {
        return expect_err(got, &[EACCES], "mmap PROT_WRITE of a read-only import");
    }
    expect_ok(got, "mmap PROT_WRITE")?;
    c.write_fresh(&area, 0, 0, 0..c.pages())?;
    c.check_whole(&area, "after a write")
}

fn mmap_offset(c: &mut Child<'_>) -> Outcome {
    let area = c.area()?;
    let (first, n) = (c.pages() / 4, c.pages() / 2);
    let got = area.map(0, n * PAGE, c.prot(), libc::MAP_SHARED, c.fd()?, first);
    expect_ok(got, &format!("mmap of pages {first}..{} only", first + n))?;
    c.check(&area, 0, first, n, "the partial mapping")?;
    if c.rw {
        c.write_fresh(&area, 0, first, first..first + n)?;
        c.check(&area, 0, first, n, "the partial mapping after a write")?;
    }
    let past = area.map(c.slot(), c.len, c.prot(), libc::MAP_SHARED, c.fd()?, 1);
    expect_err(past, &[EINVAL], "mmap of the whole size from page 1")
}

fn mprotect_write(c: &mut Child<'_>) -> Outcome {
    let area = c.area()?;
    let got = area.map(0, c.len, libc::PROT_READ, libc::MAP_SHARED, c.fd()?, 0);
    expect_ok(got, "mmap PROT_READ")?;
    let got = area.protect(0, c.len, libc::PROT_READ | libc::PROT_WRITE);
    if !c.rw {
        expect_err(
            got,
            &[EACCES],
            "mprotect PROT_READ|PROT_WRITE of a read-only import",
        )?;
        c.expect_segv(&area, c.len / 2, true, "the still read-only mapping")?;
    } else {
        expect_ok(got, "mprotect PROT_READ|PROT_WRITE")?;
        c.write_fresh(&area, 0, 0, 0..c.pages())?;
    }
    c.check_whole(&area, "after the mprotect")
}

/// mprotect of the middle third splits the mapping in three; the pieces
/// join again when it is undone. Read-write: the middle becomes read-only.
/// Read-only: the middle becomes inaccessible.
fn mprotect_split(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let p = c.pages();
    let (a, b) = thirds(p);
    let (inner, outer) = if c.rw {
        (libc::PROT_READ, c.prot())
    } else {
        (libc::PROT_NONE, c.prot())
    };
    expect_ok(
        area.protect(a * PAGE, (b - a) * PAGE, inner),
        "mprotect of the middle third",
    )?;
    for page in [a, (a + b) / 2, b - 1] {
        c.expect_segv(
            &area,
            page * PAGE,
            c.rw,
            &format!("page {page} of the protected third"),
        )?;
    }
    if c.rw {
        c.check_whole(&area, "after the split")?;
        c.write_fresh(&area, 0, 0, 0..a)?;
        c.write_fresh(&area, 0, 0, b..p)?;
        c.check_whole(&area, "after writing the outer thirds")?;
    } else {
        c.check(&area, 0, 0, a, "the first third")?;
        c.check(&area, b * PAGE, b, p - b, "the last third")?;
    }
    expect_ok(
        area.protect(a * PAGE, (b - a) * PAGE, outer),
        "mprotect of the middle third back",
    )?;
    if c.rw {
        c.write_fresh(&area, 0, 0, a..b)?;
    }
    c.check_whole(&area, "after joining the thirds again")
}

/// munmap of the head, the tail and a piece of the middle.
fn munmap_parts(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let p = c.pages();
    let eighth = (p / 8).max(1);
    let (mid, mid_end) = (p / 2 - eighth / 2, p / 2 - eighth / 2 + eighth);
    let tail = p - eighth;
    let cuts = [
        (0, eighth, "head"),
        (tail, p, "tail"),
        (mid, mid_end, "middle"),
    ];
    for (from, to, what) in cuts {
        expect_ok(
            area.unmap(from * PAGE, (to - from) * PAGE),
            &format!("munmap of the {what}"),
        )?;
        c.expect_segv(&area, from * PAGE, false, &format!("the unmapped {what}"))?;
        c.expect_segv(
            &area,
            (to - 1) * PAGE,
            false,
            &format!("the unmapped {what}"),
        )?;
    }
    let rest = [(eighth, mid), (mid_end, tail)];
    for (from, to) in rest {
        if c.rw {
            c.write_fresh(&area, 0, 0, from..to)?;
        }
        c.check(
            &area,
            from * PAGE,
            from,
            to - from,
            &format!("pages {from}..{to}"),
        )?;
    }
    Ok(())
}

fn mremap_grow(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let grow = area.remap(0, c.len, c.len + PAGE, 0, None);
    expect_err(grow, &[EFAULT], "mremap one page larger in place")?;
    let grow = area.remap(0, c.len, c.len + PAGE, libc::MREMAP_MAYMOVE, None);
    expect_err(grow, &[EFAULT], "mremap one page larger, MREMAP_MAYMOVE")?;
    c.check_whole(&area, "after the refused growths")
}

fn mremap_shrink(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let keep = c.pages() / 2;
    let at = expect_ok(area.remap(0, c.len, keep * PAGE, 0, None), "mremap to half")?;
    if at != 0 {
        return Err(format!("mremap to half moved the mapping by {at} bytes"));
    }
    c.expect_segv(&area, keep * PAGE, false, "the first page cut off")?;
    c.expect_segv(&area, c.len - PAGE, false, "the last page cut off")?;
    if c.rw {
        c.write_fresh(&area, 0, 0, 0..keep)?;
    }
    c.check(&area, 0, 0, keep, "the half kept")
}

/// The audit's sequence: a same-size move onto a reserved hole, then
/// munmap of the original range, then of the new one.
fn mremap_move_fixed(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let (len, slot) = (c.len, c.slot());
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    let to = match area.remap(0, len, len, flags, Some(slot)) {
        Ok(to) => to,
        Err(e) => {
            // The sequence goes on: a driver that let two mappings share
            // state frees it twice here.
            let _ = area.unmap(0, len);
            return Err(format!(
                "mremap MREMAP_MAYMOVE|MREMAP_FIXED: {}",
                errno_name(e)
            ));
        }
    };
    if to != slot {
        return Err(format!("the move went to offset {to}, not {slot}"));
    }
    c.expect_segv(&area, 0, false, "the old address")?;
    c.expect_segv(&area, len / 2, false, "the old address's middle")?;
    if c.rw {
        c.write_fresh(&area, slot, 0, 0..c.pages())?;
    }
    c.check(&area, slot, 0, c.pages(), "at the new address")?;
    expect_ok(area.unmap(0, len), "munmap of the original range")?;
    c.check(
        &area,
        slot,
        0,
        c.pages(),
        "after munmap of the original range",
    )?;
    expect_ok(area.unmap(slot, len), "munmap of the moved mapping")
}

/// The middle third moved away on its own: three mappings of one buffer.
fn mremap_move_part(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let p = c.pages();
    let (a, b) = thirds(p);
    let (from, n) = (a * PAGE, (b - a) * PAGE);
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    let to = expect_ok(
        area.remap(from, n, n, flags, Some(c.slot())),
        "mremap of the middle third",
    )?;
    c.expect_segv(&area, from, false, "the old place of the middle third")?;
    if c.rw {
        c.write_fresh(&area, 0, 0, 0..a)?;
        c.write_fresh(&area, to, a, a..b)?;
        c.write_fresh(&area, 0, 0, b..p)?;
    }
    c.check(&area, 0, 0, a, "the first third")?;
    c.check(&area, to, a, b - a, "the moved third")?;
    c.check(&area, b * PAGE, b, p - b, "the last third")
}

/// A same-size MREMAP_MAYMOVE without MREMAP_FIXED.
fn mremap_maymove(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let to = expect_ok(
        area.remap(0, c.len, c.len, libc::MREMAP_MAYMOVE, None),
        "mremap MREMAP_MAYMOVE of the same size",
    )?;
    if to == 0 {
        c.note("same size without MREMAP_FIXED: the kernel left it in place")?;
    } else {
        c.expect_segv(&area, 0, false, "the old address")?;
    }
    c.check(&area, to, 0, c.pages(), "after the mremap")
}

fn mremap_dontunmap(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP;
    let got = area.remap(0, c.len, c.len, flags, None);
    expect_err(got, &[EINVAL], "mremap MREMAP_MAYMOVE|MREMAP_DONTUNMAP")?;
    let got = area.remap(0, c.len, c.len, flags | libc::MREMAP_FIXED, Some(c.slot()));
    expect_err(got, &[EINVAL], "the same with MREMAP_FIXED")?;
    c.check_whole(&area, "after the refused mremaps")
}

fn madv_dontneed(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let p = c.pages();
    if c.rw {
        c.write_fresh(&area, 0, 0, 0..p)?;
    }
    expect_ok(area.advise(0, c.len, libc::MADV_DONTNEED), "MADV_DONTNEED")?;
    c.check_whole(&area, "after MADV_DONTNEED of the whole")?;
    let (a, b) = thirds(p);
    expect_ok(
        area.advise(a * PAGE, (b - a) * PAGE, libc::MADV_DONTNEED),
        "MADV_DONTNEED of the middle third",
    )?;
    c.check_whole(&area, "after MADV_DONTNEED of the middle third")
}

fn madv_remove(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    // A read-write mapping reaches vfs_fallocate(), which refuses a file
    // that is not regular (a dma-buf's inode) with ENODEV.
    let want = if c.rw { ENODEV } else { EACCES };
    expect_err(
        area.advise(0, c.len, libc::MADV_REMOVE),
        &[want],
        "MADV_REMOVE",
    )?;
    c.check_whole(&area, "after MADV_REMOVE")
}

fn madv_wipeonfork(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let got = area.advise(0, c.len, libc::MADV_WIPEONFORK);
    expect_err(got, &[EINVAL], "MADV_WIPEONFORK")?;
    c.check_whole(&area, "after MADV_WIPEONFORK")
}

/// Forks; the child touches the first page and must die of SIGSEGV (the
/// mapping was not inherited).
fn fork_expect_segv(c: &Child<'_>, area: &Area, what: &str) -> Outcome {
    let pid = expect_ok(
        sys::fork(|| {
            sys::default_fault_signals();
            let _ = area.touch(0);
            0
        }),
        "fork",
    )?;
    match expect_ok(sys::wait(pid), "waiting for the forked process")? {
        Ended::Signal(SIGSEGV) => c.check_whole(area, &format!("after {what}")),
        other => Err(format!(
            "{what}: the forked process touched the mapping with {other}, expected SIGSEGV \
             (the mapping must not be inherited)"
        )),
    }
}

fn fork_default(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    fork_expect_segv(c, &area, "a fork")
}

/// MADV_DOFORK: the forked process reads (and, read-write, writes) the
/// same buffer; MADV_DONTFORK then stops the inheritance again.
fn fork_dofork(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    expect_ok(area.advise(0, c.len, libc::MADV_DOFORK), "MADV_DOFORK")?;
    let page = c.rw.then(|| c.model.fresh(0..c.model.pages()));
    if let Some(page) = page {
        c.claim(page)?;
    }
    let forked = {
        let c = &mut *c;
        sys::fork(move || {
            sys::default_fault_signals();
            if let Some(page) = page {
                if area.store(page * PAGE, c.model.write_page(page)).is_err() {
                    return 2;
                }
            }
            match c.check_whole(&area, "in the forked process") {
                Ok(()) => 0,
                Err(e) => {
                    let _ = c.link.send(&format!("fail {e}"));
                    3
                }
            }
        })
    };
    let pid = expect_ok(forked, "fork")?;
    match expect_ok(sys::wait(pid), "waiting for the forked process")? {
        Ended::Exit(0) => {}
        other => {
            return Err(format!(
                "after MADV_DOFORK the forked process ended with {other}"
            ))
        }
    }
    c.check_whole(&area, "after the forked process's write")?;
    expect_ok(area.advise(0, c.len, libc::MADV_DONTFORK), "MADV_DONTFORK")?;
    fork_expect_segv(c, &area, "MADV_DONTFORK and a fork")
}

/// fork + exec, with the mapping not inherited and then inherited.
fn fork_exec(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    for advice in [None, Some(libc::MADV_DOFORK)] {
        if let Some(advice) = advice {
            expect_ok(area.advise(0, c.len, advice), "MADV_DOFORK")?;
        }
        let pid = expect_ok(
            sys::fork(|| {
                let e = std::process::Command::new("/bin/true").exec();
                eprintln!("exec /bin/true: {e}");
                127
            }),
            "fork",
        )?;
        match expect_ok(sys::wait(pid), "waiting for /bin/true")? {
            Ended::Exit(0) => {}
            other => return Err(format!("fork + exec of /bin/true ended with {other}")),
        }
    }
    c.check_whole(&area, "after fork + exec")
}

/// vmsplice of the mapping into a pipe (the pages are taken by
/// get_user_pages), then the pipe read back.
fn gup_vmsplice(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let (mut r, w) = expect_ok(sys::pipe(), "pipe")?;
    let p = c.pages();
    for first in (0..p).step_by(HOLD_PAGES) {
        let n = HOLD_PAGES.min(p - first);
        let took = expect_ok(
            area.splice_to(w.as_fd(), &[(first * PAGE, n * PAGE)]),
            "vmsplice",
        )?;
        if took != n * PAGE {
            return Err(format!("vmsplice of {} bytes took {took}", n * PAGE));
        }
        let mut got = vec![0u8; took];
        r.read_exact(&mut got)
            .map_err(|e| format!("reading the pipe: {e}"))?;
        compare(c, &got, first, "the bytes read from the pipe")?;
    }
    Ok(())
}

/// `bytes` must be pages `first..` as the model says.
fn compare(c: &Child<'_>, bytes: &[u8], first: usize, what: &str) -> Outcome {
    let n = bytes.len() / PAGE;
    let expected = c.model.expected(first, n);
    match bytes
        .chunks(PAGE)
        .zip(expected.chunks(PAGE))
        .position(|(a, b)| a != b)
    {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: {}",
            c.model
                .describe(first + i, &bytes[i * PAGE..(i + 1) * PAGE])
        )),
    }
}

/// write(2) from the mapping to a tmpfs file (a memfd) and to a pipe.
fn gup_write(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let memfd =
        memfd_create("mm", MemfdFlags::CLOEXEC).map_err(|e| format!("memfd_create: {e}"))?;
    let mut done = 0;
    while done < c.len {
        done += expect_ok(
            area.write_to(memfd.as_fd(), done, c.len - done),
            "write(2) from the mapping to a memfd",
        )?;
    }
    let mut copy = vec![0u8; c.len];
    File::from(memfd)
        .read_exact_at(&mut copy, 0)
        .map_err(|e| format!("reading the memfd back: {e}"))?;
    compare(c, &copy, 0, "the memfd written from the mapping")?;
    let (mut r, w) = expect_ok(sys::pipe(), "pipe")?;
    let chunk = HOLD_PAGES * PAGE;
    for first in (0..c.len).step_by(chunk) {
        let n = chunk.min(c.len - first);
        let wrote = expect_ok(area.write_to(w.as_fd(), first, n), "write(2) to a pipe")?;
        if wrote != n {
            return Err(format!(
                "write(2) of {n} bytes to an empty pipe wrote {wrote}"
            ));
        }
        let mut got = vec![0u8; n];
        r.read_exact(&mut got)
            .map_err(|e| format!("reading the pipe: {e}"))?;
        compare(c, &got, first / PAGE, "the bytes read from the pipe")?;
    }
    Ok(())
}

fn open_proc_mem(write: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open("/proc/self/mem")
        .map_err(|e| format!("/proc/self/mem: {e}"))
}

fn proc_mem_read(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let mut copy = vec![0u8; c.len];
    open_proc_mem(false)?
        .read_exact_at(&mut copy, area.addr(0))
        .map_err(|e| format!("pread of /proc/self/mem at the mapping: {e}"))?;
    compare(c, &copy, 0, "/proc/self/mem")
}

/// A write through /proc/self/mem: it reaches a read-write mapping; into
/// a read-only one it fails (and changes nothing: it writes the bytes
/// already there).
fn proc_mem_write(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let mem = open_proc_mem(true)?;
    let page = c.model.fresh(0..c.pages());
    let at = area.addr(page * PAGE);
    if c.rw {
        c.claim(page)?;
        mem.write_all_at(c.model.write_page(page), at)
            .map_err(|e| format!("pwrite of /proc/self/mem into the mapping: {e}"))?;
    } else {
        let same = c.model.expected(page, 1).to_vec();
        let got = mem
            .write_at(&same, at)
            .map_err(|e| e.raw_os_error().unwrap_or(0));
        if let Err(e) = got {
            c.note(&format!(
                "pwrite of /proc/self/mem into the read-only mapping: {}",
                errno_name(e)
            ))?;
        }
        expect_err(
            got,
            &[EIO, EFAULT],
            "pwrite of /proc/self/mem into a read-only mapping",
        )?;
    }
    c.check_whole(&area, "after the /proc/self/mem write")
}

/// Exits with the mapping and the fd still held.
fn exit_held(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    c.check(&area, 0, 0, 1, "the first page")?;
    c.keep = true;
    Ok(())
}

/// Pages spread over the buffer, page-table boundaries among them.
fn spread_pages(p: usize) -> Vec<usize> {
    let per_table = sys::PMD_SPAN / PAGE;
    let mut pages = vec![0, 1, p / 4, p / 2 - 1, p / 2, 3 * p / 4, p - 2, p - 1];
    pages.extend([per_table - 1, per_table, 2 * per_table - 1, 2 * per_table]);
    pages.retain(|&q| q < p);
    pages.sort_unstable();
    pages.dedup();
    pages.truncate(HOLD_PAGES);
    pages
}

/// vmsplice pages into a pipe, unmap, close the fd and keep the pipe:
/// the close must return at once; the parent checks the buffer stays
/// mapped (and the exporter that it is not released) until the pipe is
/// read.
fn vmsplice_hold(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let pages = spread_pages(c.pages());
    let ranges: Vec<_> = pages.iter().map(|&q| (q * PAGE, PAGE)).collect();
    let w = c.held.1.take().ok_or("the held pipe's write end is gone")?;
    let took = expect_ok(area.splice_to(w.as_fd(), &ranges), "vmsplice")?;
    drop(w);
    if took != ranges.len() * PAGE {
        return Err(format!(
            "vmsplice took {took} bytes of {}",
            ranges.len() * PAGE
        ));
    }
    expect_ok(area.unmap(0, c.len), "munmap")?;
    let fd = c.fd.take().ok_or("the dma-buf fd is gone")?;
    let started = Instant::now();
    let closed = sys::close(fd);
    let took = started.elapsed();
    expect_ok(closed, "close of the dma-buf fd")?;
    if took > CLOSE_PROMPT {
        return Err(format!(
            "close of the dma-buf fd took {} ms: the release waited for the pipe's pages",
            took.as_millis()
        ));
    }
    c.note(&format!("close returned in {} ms", took.as_millis()))?;
    c.stage("held")?;
    for &q in &pages {
        let mut got = vec![0u8; PAGE];
        c.held
            .0
            .read_exact(&mut got)
            .map_err(|e| format!("reading the pipe: {e}"))?;
        compare(c, &got, q, "the page read from the pipe")?;
    }
    Ok(())
}

fn peer_death(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    c.check_whole(&area, "before the exporter's domain went")?;
    c.stage("mapped")?;
    c.check_whole(&area, "after the exporter's domain went")
}

fn unload(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    c.check_whole(&area, "mapped")?;
    let mut stage = "mapped";
    while c.stage(stage)? == "check" {
        c.check_whole(&area, "while the module was asked to unload")?;
        stage = "checked";
    }
    Ok(())
}

/// Read-write, last: the write pattern into every page no case wrote.
fn writeback(c: &mut Child<'_>) -> Outcome {
    let area = c.whole()?;
    let p = c.pages();
    let mut page = 0;
    while page < p {
        if c.model.dirty[page] {
            page += 1;
            continue;
        }
        let end = (page..p).find(|&q| c.model.dirty[q]).unwrap_or(p);
        c.model.wrote(page, end);
        c.link.send(&format!("wrote {page} {end}"))?;
        let (a, b) = (page * PAGE, end * PAGE);
        area.store(a, &c.model.written[a..b])
            .map_err(|e| format!("writing pages {page}..{end}: {}", errno_name(e)))?;
        page = end;
    }
    c.check_whole(&area, "after writing every page")
}

// --- the parent's side of the partnered cases --------------------------------------

/// The parent's view of a running case.
struct Steer<'r> {
    run: &'r mut Run,
    pid: libc::pid_t,
    link: Link,
    /// The read end of the held pipe.
    held: File,
    notes: Vec<String>,
    fails: Vec<String>,
    ended: Option<Ended>,
}

impl Steer<'_> {
    /// Acts on a line of the case process; returns a stage it reached.
    fn handle(&mut self, line: &str) -> Option<String> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "wrote" => {
                let mut it = rest.split(' ').filter_map(|n| n.parse().ok());
                if let (Some(a), Some(b)) = (it.next(), it.next()) {
                    self.run.model.wrote(a, b);
                }
            }
            "note" => self.notes.push(rest.to_string()),
            "fail" => self.fails.push(rest.to_string()),
            "at" => return Some(rest.to_string()),
            _ => {}
        }
        None
    }

    /// Waits until the case process reaches `stage`.
    fn until(&mut self, stage: &str, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        loop {
            match self.link.recv(deadline) {
                Ok(Some(line)) => {
                    if self.handle(&line).as_deref() == Some(stage) {
                        return Ok(());
                    }
                }
                Ok(None) => return Err(format!("the case process ended before {stage}")),
                Err(e) => {
                    return Err(format!(
                        "the case process did not reach {stage} within {} s: {e}",
                        limit.as_secs()
                    ))
                }
            }
        }
    }

    fn send(&mut self, word: &str) -> Outcome {
        self.link.send(word)
    }

    /// Reads the case process's lines to the end and waits for it. If it
    /// hangs, empties the held pipe (a close may wait for its pages), then
    /// kills it; `Err` if it still does not end (the run cannot go on).
    fn reap(&mut self) -> Result<Ended, String> {
        if let Some(ended) = self.ended {
            return Ok(ended);
        }
        let mut deadline = Instant::now() + scaled(CASE_LIMIT);
        let mut rescued = false;
        loop {
            match self.link.recv(deadline) {
                Ok(Some(line)) => {
                    self.handle(&line);
                }
                Ok(None) => break,
                Err(_) if !rescued => {
                    self.fails.push(format!(
                        "the case process was still running after {} s; emptying its pipe",
                        scaled(CASE_LIMIT).as_secs()
                    ));
                    drain(&mut self.held);
                    rescued = true;
                    deadline = Instant::now() + scaled(SETTLE);
                }
                Err(_) => {
                    sys::kill(self.pid);
                    break;
                }
            }
        }
        let deadline = Instant::now() + scaled(SETTLE);
        loop {
            match sys::try_wait(self.pid) {
                Ok(Some(ended)) => {
                    self.ended = Some(ended);
                    return Ok(ended);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => return Err("a case process does not end even when killed".into()),
                Err(e) => return Err(format!("waitpid: {}", errno_name(e))),
            }
        }
    }
}

/// Reads what a pipe holds, without blocking.
fn drain(pipe: &mut File) {
    if sys::set_nonblocking(pipe.as_fd()).is_ok() {
        let mut buf = vec![0u8; HOLD_PAGES * PAGE];
        while matches!(pipe.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The exporter is told to unexport by a marker buffer exported to it
/// (`mm-hold ID`); it imports the marker once it has checked it saw no
/// release, and only then is the pipe read.
fn vmsplice_hold_parent(s: &mut Steer<'_>) -> Outcome {
    if let Err(e) = s.until("held", scaled(SETTLE)) {
        // The close may be waiting for the pipe's pages: let them go.
        drain(&mut s.held);
        return Err(e);
    }
    let held = s.run.imported().while_held();
    s.run.wait_gauges(
        held,
        scaled(SETTLE),
        "the pipe holds pages of the closed buffer",
    )?;
    s.notes
        .push(format!("while the pipe held pages: {}", gauges()?));
    let exporter = s.run.exporter()?;
    let dev = s.run.dev()?;
    let marker = Udmabuf::with_contents(PAGE as u64, |_, b| b.fill(0x6d))
        .map_err(|e| format!("udmabuf: {e}"))?;
    let priv_data = PrivData::new(format!("mm-hold {}", s.run.args.id).as_bytes())
        .map_err(|e| format!("private data: {e}"))?;
    let options = ExportOptions::new().private_data(priv_data);
    let marker_id =
        retry_full(|| dev.export(&marker, exporter, &options)).map_err(|e| e.to_string())?;
    s.notes
        .push(format!("marker {marker_id} exported to domain {exporter}"));
    let outcome = (|| {
        let id = s.run.args.id;
        s.run.wait_event("the exporter's unexport", |e| {
            e.kind == EventType::Unexport && e.hid.is_some_and(|h| h.matches(&id))
        })?;
        s.run.wait_gauges(
            held,
            scaled(SETTLE),
            "unexported while the pipe holds pages",
        )?;
        s.run
            .wait_event("the exporter's import of the marker", |e| {
                e.kind == EventType::Released && e.hid.is_some_and(|h| h.matches(&marker_id))
            })?;
        s.run
            .wait_gauges(held, scaled(SETTLE), "before the pipe is read")
    })();
    let told = s.send("go");
    s.reap()?;
    let unexported = s
        .run
        .dev()?
        .unexport(&marker_id, Duration::ZERO)
        .map_err(|e| e.to_string());
    outcome.and(told).and(unexported)
}

fn peer_death_parent(s: &mut Steer<'_>) -> Outcome {
    s.until("mapped", scaled(SETTLE))?;
    let (id, exporter) = (s.run.args.id, s.run.exporter()?);
    println!("mm case peer-death: mapped; waiting for domain {exporter} to go");
    s.run.wait_event("the exporter's death", |e| {
        (e.kind == EventType::Unexport && e.hid.is_some_and(|h| h.matches(&id)))
            || (e.kind == EventType::PeerDisconnected && e.peer == exporter)
    })?;
    s.send("go")
}

/// While the mapping is held: unloading is refused, with the devices bound
/// and with them unbound, and the mapping keeps its bytes; once it is
/// gone, the module unloads.
fn unload_parent(s: &mut Steer<'_>) -> Outcome {
    /// Unloading must be refused `when`, and the mapping keep its bytes.
    fn refused(s: &mut Steer<'_>, when: &str) -> Outcome {
        match sys::delete_module(c"hyper_dmabuf") {
            Err(libc::EWOULDBLOCK) => {}
            Ok(()) => return Err(format!("the module unloaded {when}")),
            Err(e) => {
                return Err(format!(
                    "unloading {when}: {}, expected EWOULDBLOCK",
                    errno_name(e)
                ))
            }
        }
        s.send("check")?;
        s.until("checked", scaled(SETTLE))
    }
    s.until("mapped", scaled(SETTLE))?;
    s.run.dev = None;
    refused(s, "while an import is mapped")?;
    let unbound = unbind_devices()?;
    s.notes.push(format!("unbound {}", unbound.join(", ")));
    refused(s, "with its devices unbound and an import mapped")?;
    s.send("finish")?;
    s.reap()?;
    let deadline = Instant::now() + scaled(SETTLE);
    loop {
        match sys::delete_module(c"hyper_dmabuf") {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "unloading after munmap and close: {} for {} s",
                    errno_name(e),
                    scaled(SETTLE).as_secs()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Unbinds every hyper_dmabuf device of this domain (frontends and
/// backends); their names.
fn unbind_devices() -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for dir in [
        "/sys/bus/xen/drivers/hyper_dmabuf",
        "/sys/bus/xen-backend/drivers/hyper_dmabuf",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
            if name.starts_with("hyper_dmabuf-") {
                std::fs::write(format!("{dir}/unbind"), &name)
                    .map_err(|e| format!("unbinding {name}: {e}"))?;
                names.push(name);
            }
        }
    }
    Ok(names)
}

// --- the table ------------------------------------------------------------------------

/// When a case runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// By default.
    Plain,
    /// Only when named: it needs the exporter or the scenario.
    Partnered,
    /// Only when named; the module is gone afterwards (no counters).
    Unload,
    /// Read-write only, always last.
    Writeback,
}

struct Case {
    name: &'static str,
    kind: Kind,
    child: fn(&mut Child<'_>) -> Outcome,
    parent: Option<fn(&mut Steer<'_>) -> Outcome>,
}

const fn plain(name: &'static str, child: fn(&mut Child<'_>) -> Outcome) -> Case {
    Case {
        name,
        kind: Kind::Plain,
        child,
        parent: None,
    }
}

const fn partnered(
    name: &'static str,
    kind: Kind,
    child: fn(&mut Child<'_>) -> Outcome,
    parent: fn(&mut Steer<'_>) -> Outcome,
) -> Case {
    Case {
        name,
        kind,
        child,
        parent: Some(parent),
    }
}

const CASES: &[Case] = &[
    plain("mmap-private", mmap_private),
    plain("mmap-write", mmap_write),
    plain("mmap-offset", mmap_offset),
    plain("mprotect-write", mprotect_write),
    plain("mprotect-split", mprotect_split),
    plain("munmap-parts", munmap_parts),
    plain("mremap-grow", mremap_grow),
    plain("mremap-shrink", mremap_shrink),
    plain("mremap-move-fixed", mremap_move_fixed),
    plain("mremap-move-part", mremap_move_part),
    plain("mremap-maymove", mremap_maymove),
    plain("mremap-dontunmap", mremap_dontunmap),
    plain("madv-dontneed", madv_dontneed),
    plain("madv-remove", madv_remove),
    plain("madv-wipeonfork", madv_wipeonfork),
    plain("fork-default", fork_default),
    plain("fork-dofork", fork_dofork),
    plain("fork-exec", fork_exec),
    plain("gup-vmsplice", gup_vmsplice),
    plain("gup-write", gup_write),
    plain("proc-mem-read", proc_mem_read),
    plain("proc-mem-write", proc_mem_write),
    plain("exit-held", exit_held),
    partnered(
        "vmsplice-hold",
        Kind::Partnered,
        vmsplice_hold,
        vmsplice_hold_parent,
    ),
    partnered("peer-death", Kind::Partnered, peer_death, peer_death_parent),
    partnered("unload", Kind::Unload, unload, unload_parent),
    Case {
        name: "writeback",
        kind: Kind::Writeback,
        child: writeback,
        parent: None,
    },
];

/// The cases to run: the named ones in their order, or every plain one;
/// with --rw the writeback last.
fn select(names: &[String], rw: bool) -> Result<Vec<&'static Case>, String> {
    let mut picked: Vec<&Case> = if names.is_empty() {
        CASES.iter().filter(|c| c.kind == Kind::Plain).collect()
    } else {
        names
            .iter()
            .map(|n| {
                CASES.iter().find(|c| c.name == n).ok_or_else(|| {
                    let all: Vec<_> = CASES.iter().map(|c| c.name).collect();
                    format!("no case {n:?}; the cases: {}", all.join(" "))
                })
            })
            .collect::<Result<_, _>>()?
    };
    picked.retain(|c| c.kind != Kind::Writeback);
    if rw {
        picked.push(
            CASES
                .iter()
                .find(|c| c.kind == Kind::Writeback)
                .expect("in the table"),
        );
    } else if names.iter().any(|n| n == "writeback") {
        return Err("writeback needs --rw".into());
    }
    Ok(picked)
}

// --- the parent -----------------------------------------------------------------------

/// The importer's gauges a case moves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Gauges {
    /// `None`: not checked.
    dmabufs: Option<i64>,
    pages: i64,
    pending: i64,
    leaked: i64,
}

impl Gauges {
    /// While a closed buffer's pages are held by a pipe: still mapped,
    /// one unmap pending.
    fn while_held(self) -> Gauges {
        Gauges {
            dmabufs: None,
            pending: 1,
            ..self
        }
    }
}

impl std::fmt::Display for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(d) = self.dmabufs {
            write!(f, "dmabufs_live {d}, ")?;
        }
        write!(
            f,
            "pages_mapped {}, unmaps_pending {}, pages_leaked {}",
            self.pages, self.pending, self.leaked
        )
    }
}

struct Run {
    args: MmArgs,
    dev: Option<Device>,
    model: Model,
    len: usize,
    base: Gauges,
    /// Whether the driver has the `unmaps_pending` gauge.
    has_pending: bool,
}

fn gauges() -> Result<Gauges, String> {
    let stats = stats()?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    Ok(Gauges {
        dmabufs: Some(get("dmabufs_live")),
        pages: get("pages_mapped"),
        pending: get("unmaps_pending"),
        leaked: get("pages_leaked"),
    })
}

impl Run {
    fn dev(&self) -> Result<&Device, String> {
        self.dev
            .as_ref()
            .ok_or_else(|| "the device was closed".to_string())
    }

    /// The gauges while one import of the buffer is alive.
    fn imported(&self) -> Gauges {
        Gauges {
            dmabufs: self.base.dmabufs.map(|d| d + 1),
            pages: self.base.pages + self.model.pages() as i64,
            ..self.base
        }
    }

    fn exporter(&self) -> Result<DomId, String> {
        let raw = self
            .dev()?
            .query(&self.args.id, QueryItem::Exporter)
            .map_err(|e| e.to_string())?;
        DomId::new(raw as u32).map_err(|e| format!("exporter {raw}: {e}"))
    }

    /// Waits until the gauges read `want`.
    fn wait_gauges(&self, want: Gauges, limit: Duration, when: &str) -> Outcome {
        let deadline = Instant::now() + limit;
        loop {
            let mut now = gauges()?;
            if want.dmabufs.is_none() {
                now.dmabufs = None;
            }
            if !self.has_pending {
                now.pending = want.pending;
            }
            if now == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{when}: counters {now}, expected {want} (after {} s)",
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for an event `want` accepts.
    fn wait_event(&self, what: &str, want: impl Fn(&Event) -> bool) -> Outcome {
        let deadline = Instant::now() + scaled(PARTNER_LIMIT);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .dev()?
                .wait_event(Some(left))
                .map_err(|e| e.to_string())?
            {
                Some(event) if want(&event) => return Ok(()),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "no event for {what} within {} s",
                        scaled(PARTNER_LIMIT).as_secs()
                    ))
                }
            }
        }
    }

    /// Drops the events queued so far.
    fn drain_events(&self) -> Outcome {
        while self
            .dev()?
            .try_next_event()
            .map_err(|e| e.to_string())?
            .is_some()
        {}
        Ok(())
    }

    fn import(&self) -> Result<OwnedFd, String> {
        let dev = self.dev()?;
        let deadline = Instant::now() + scaled(SETTLE);
        loop {
            match dev.import(&self.args.id, self.args.rw) {
                Ok(imported) => return Ok(imported.fd),
                // Its previous import is still being released.
                Err(e) if e.should_retry() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Runs one case; `Err` only if the run cannot go on.
    fn case(&mut self, case: &Case) -> Result<bool, String> {
        let mut fails = Vec::new();
        if let Err(e) = self.wait_gauges(self.base, scaled(SETTLE), "before the case") {
            fails.push(e);
        }
        if case.parent.is_some() {
            self.drain_events()?;
        }
        let fd = match self.import() {
            Ok(fd) => fd,
            Err(e) => {
                fails.push(format!("import: {e}"));
                return Ok(report(case.name, &[], &fails));
            }
        };
        if let Err(e) = self.wait_gauges(self.imported(), scaled(SETTLE), "imported") {
            fails.push(e);
        }
        let (link, theirs) = Link::pair()?;
        let (held_r, held_w) = sys::pipe().map_err(|e| format!("pipe: {}", errno_name(e)))?;
        // The parent's read end of the held pipe (the case process closes
        // its copy of this one).
        let rescue = held_r.try_clone().map_err(|e| format!("dup: {e}"))?;
        let keep = [
            fd.as_raw_fd(),
            theirs.fds()[0],
            theirs.fds()[1],
            held_r.as_raw_fd(),
            held_w.as_raw_fd(),
        ];
        let (rw, len, nobody) = (self.args.rw, self.len, self.args.nobody);
        let model = &mut self.model;
        let forked = sys::fork(move || {
            let mut c = Child {
                rw,
                len,
                fd: Some(fd),
                model,
                link: theirs,
                held: (held_r, Some(held_w)),
                area: None,
                keep: false,
            };
            let outcome = sys::close_others(&keep)
                .and_then(|()| {
                    crate::ffi::become_user(nobody, nobody)
                        .map_err(|e| format!("setuid({nobody}): {e}"))
                })
                .and_then(|()| {
                    sys::dumpable_without_core().map_err(|e| format!("prctl: {}", errno_name(e)))
                })
                .and_then(|()| (case.child)(&mut c))
                .and_then(|()| c.finish());
            match outcome {
                Ok(()) => 0,
                Err(e) => {
                    let _ = c.link.send(&format!("fail {e}"));
                    1
                }
            }
        });
        // The closure is dropped in the parent, with the dma-buf fd and
        // the case process's ends of the pipes: it holds the only ones.
        let pid = forked.map_err(|e| format!("fork: {}", errno_name(e)))?;
        let mut steer = Steer {
            run: self,
            pid,
            link,
            held: rescue,
            notes: Vec::new(),
            fails,
            ended: None,
        };
        if let Some(parent) = case.parent {
            if let Err(e) = parent(&mut steer) {
                steer.fails.push(e);
                let _ = steer.send("stop");
            }
        }
        let ended = steer.reap()?;
        let (notes, mut fails) = (steer.notes, steer.fails);
        match ended {
            Ended::Exit(0) | Ended::Exit(1) => {}
            other => fails.push(format!("the case process ended with {other}")),
        }
        if case.kind != Kind::Unload {
            if let Err(e) = self.wait_gauges(self.base, scaled(SETTLE), "after the case") {
                fails.push(e);
            }
        }
        Ok(report(case.name, &notes, &fails))
    }
}

/// Prints the case's line; whether it passed.
fn report(name: &str, notes: &[String], fails: &[String]) -> bool {
    if fails.is_empty() {
        let extra = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        println!("mm case {name}: ok{extra}");
        true
    } else {
        println!("mm case {name}: FAIL {}", fails.join("; "));
        false
    }
}

/// `hdmabuf-hostile mm`.
pub(crate) fn run(args: MmArgs) -> Result<(), String> {
    if args.rw && args.write_seed.is_none() {
        return Err("--rw needs --write-seed".into());
    }
    let cases = select(&args.cases, args.rw)?;
    let dev = Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())?;
    let has_pending = stats()?.contains_key("unmaps_pending");
    let base = gauges()?;
    let size = dev
        .import(&args.id, args.rw)
        .map_err(|e| e.to_string())?
        .size;
    let len = usize::try_from(size).map_err(|_| format!("{size} bytes"))?;
    if len < HOLD_PAGES * PAGE || len % PAGE != 0 {
        return Err(format!(
            "the buffer has {size} bytes: the cases need whole pages, at least {HOLD_PAGES}"
        ));
    }
    let mut run = Run {
        model: Model::new(len, args.seed, args.write_seed),
        args,
        dev: Some(dev),
        len,
        base,
        has_pending,
    };
    println!(
        "mm: {} bytes ({} pages) of {}, {}, cases as uid {}; counters at the start: {base}",
        len,
        len / PAGE,
        run.args.id,
        if run.args.rw {
            "read-write"
        } else {
            "read-only"
        },
        run.args.nobody
    );
    let mut failed = Vec::new();
    if !has_pending {
        println!("mm: FAIL the driver has no unmaps_pending gauge");
        failed.push("unmaps_pending");
    }
    for case in cases {
        if !run.case(case)? {
            failed.push(case.name);
        }
    }
    if failed.is_empty() {
        println!("mm: every case passed");
        Ok(())
    } else {
        Err(format!("mm: failed: {}", failed.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cases: &[&Case]) -> Vec<&'static str> {
        cases.iter().map(|c| c.name).collect()
    }

    #[test]
    fn the_default_cases_need_no_partner_and_writeback_ends_read_write_runs() {
        let ro = select(&[], false).unwrap();
        assert!(ro.iter().all(|c| c.kind == Kind::Plain));
        let rw = select(&[], true).unwrap();
        assert_eq!(rw.len(), ro.len() + 1);
        assert_eq!(rw.last().unwrap().name, "writeback");
        let named: Vec<String> = ["writeback", "vmsplice-hold"].map(String::from).into();
        assert_eq!(
            names(&select(&named, true).unwrap()),
            ["vmsplice-hold", "writeback"]
        );
        assert!(select(&named, false).is_err());
        assert!(select(&["no-such".to_string()], false).is_err());
    }

    #[test]
    fn held_pages_are_distinct_and_cross_page_tables() {
        for p in [16, 300, 768, 1024, 4096] {
            let pages = spread_pages(p);
            assert!(
                pages.len() <= HOLD_PAGES && pages.len() >= 8,
                "{p}: {pages:?}"
            );
            assert!(pages.windows(2).all(|w| w[0] < w[1]) && pages[pages.len() - 1] < p);
            if p > 512 {
                assert!(
                    pages.contains(&511) && pages.contains(&512),
                    "{p}: {pages:?}"
                );
            }
        }
    }

    #[test]
    fn the_model_tracks_written_pages() {
        let mut m = Model::new(8 * PAGE, 3, Some(4));
        assert_eq!(m.fresh(2..5), 2);
        m.wrote(2, 4);
        assert_eq!(m.fresh(2..5), 4);
        assert_eq!(m.fresh(2..4), 2, "all written: the first");
        assert_eq!(m.expected(2, 1), m.write_page(2));
        let seen = m.exporter[2 * PAGE..3 * PAGE].to_vec();
        assert!(m.describe(2, &seen).contains(
            "holds the exporter's pattern (seed 3), expected the written pattern (seed 4)"
        ));
    }

    #[test]
    fn probes_tell_access_from_faults() {
        let memfd = memfd_create("probe", MemfdFlags::CLOEXEC).unwrap();
        File::from(memfd.try_clone().unwrap())
            .set_len(4 * PAGE as u64)
            .unwrap();
        let area = Area::new(8 * PAGE).unwrap();
        area.map(
            0,
            4 * PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            memfd.as_fd(),
            0,
        )
        .unwrap();
        assert_eq!(area.probe(PAGE, false), Ok(Ended::Exit(0)));
        assert_eq!(area.probe(PAGE, true), Ok(Ended::Signal(SIGSEGV)));
        assert_eq!(
            area.probe(5 * PAGE, false),
            Ok(Ended::Signal(SIGSEGV)),
            "reserved"
        );
        area.unmap(0, PAGE).unwrap();
        assert_eq!(area.probe(0, false), Ok(Ended::Signal(SIGSEGV)), "unmapped");
        assert_eq!(area.probe(8 * PAGE, false), Err(libc::ERANGE), "outside");
        let moved = area.remap(
            PAGE,
            3 * PAGE,
            3 * PAGE,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            Some(4 * PAGE),
        );
        assert_eq!(moved, Ok(4 * PAGE));
        assert_eq!(
            area.probe(PAGE, false),
            Ok(Ended::Signal(SIGSEGV)),
            "moved away"
        );
        assert_eq!(area.probe(4 * PAGE, false), Ok(Ended::Exit(0)));
    }

    #[test]
    fn a_forked_process_really_touches_what_it_did_not_inherit() {
        let memfd = memfd_create("fork", MemfdFlags::CLOEXEC).unwrap();
        File::from(memfd.try_clone().unwrap())
            .set_len(PAGE as u64)
            .unwrap();
        let area = Area::new(PAGE).unwrap();
        area.map(0, PAGE, libc::PROT_READ, libc::MAP_SHARED, memfd.as_fd(), 0)
            .unwrap();
        let touch = || {
            let pid = sys::fork(|| {
                sys::default_fault_signals();
                let _ = area.touch(0);
                0
            });
            sys::wait(pid.unwrap()).unwrap()
        };
        assert_eq!(touch(), Ended::Exit(0));
        area.advise(0, PAGE, libc::MADV_DONTFORK).unwrap();
        assert_eq!(touch(), Ended::Signal(SIGSEGV));
    }
}
