// SPDX-License-Identifier: MIT
//! `hdmabuf-agent bench`: hyper_dmabuf against what a user would otherwise use,
//! measured side by side between two domains (`make bench`, see
//! docs/performance.md).
//!
//! `bench export` runs in the exporting domain and drives; `bench import`
//! runs in the importing one (a PVH guest: gntdev-dmabuf maps grants into
//! a dma-buf only there) and does what it is told. They talk over a
//! [`Link`], the small user-space channel a gntdev-dmabuf user would need
//! anyway. For every buffer size, each repetition runs the four paths one
//! after the other, so that slow phases of the emulated platform hit them
//! alike:
//!
//! * `ours`: EXPORT; the importer wakes on the NewExport event, IMPORTs,
//!   mmaps and reads the first byte; IMPORT again while mapped (cached);
//!   UNEXPORT until the GrantsEnded event (the importer drops the buffer
//!   on the Unexport event).
//! * `gntdev`: IMP_TO_REFS; the references over the link; EXP_FROM_REFS
//!   (refused on x86: then gntdev's MAP_GRANT_REF + mmap, the same grant
//!   map without the dma-buf); to end it, a message to the importer,
//!   which closes its dma-buf and answers; IMP_RELEASE.
//! * `floor`: gntalloc grants as many pages; the importer maps them in one
//!   batch (gntdev MAP_GRANT_REF + mmap) and reads the first byte.
//! * `copy`: the bytes themselves through the link's shared pages into a
//!   buffer of the importer.
//!
//! The exporter times everything on its own clock: an end-to-end figure is
//! from its first call until the importer's answer arrives, less half the
//! link's median round trip (measured first), so the two domains' clocks
//! never meet. The importer's own durations come back in its answers.
//! Every result is a `bench| {json}` line on stdout with its raw samples;
//! `hdmabuf-bench` on the host makes the table, the JSON and the plot.

use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use clap::Subcommand;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_common::xen::DomId;
use serde_json::json;

use hdmabuf::{parse_size, Failure};
use hdmabuf_agent::xendev::{Gntalloc, Gntdev, GrantRange, PAGE};
use link::Link;
use msg::Msg;

mod link;
mod msg;
use hyper_dmabuf_client::{Device, ExportOptions, Mapping, Udmabuf};

/// `hdmabuf-agent bench ...`.
#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Drive the benchmark, exporting to --domain (run `bench import` there).
    Export {
        /// The importing domain.
        #[arg(long, short)]
        domain: u16,
        /// Buffer sizes (with K/M/G).
        #[arg(long, value_delimiter = ',', value_parser = parse_size,
              default_value = "4K,1M,8M,32M,256M")]
        sizes: Vec<u64>,
        /// Repetitions of each case at 4 KiB; fewer for larger buffers
        /// (never under 5).
        #[arg(long, default_value_t = 15)]
        reps: u32,
        /// Frames of each swapchain run.
        #[arg(long, default_value_t = 40)]
        frames: u32,
        /// Largest buffer of the swapchain runs (3 of them are shared).
        #[arg(long, default_value = "32M", value_parser = parse_size)]
        swapchain_max: u64,
    },
    /// Answer the exporter running in --domain.
    Import {
        /// The exporting domain.
        #[arg(long, short, default_value_t = 0)]
        domain: u16,
    },
}

/// Frames run before the swapchain's timed ones.
const WARMUP_FRAMES: u32 = 4;
/// Frames in flight: one shown, one queued, one being drawn.
const SWAP_BUFFERS: usize = 3;
const SWAP_WINDOW: u32 = 2;
/// Longest wait for the importer's balloon to refill between cases.
const BALLOON_SETTLE: Duration = Duration::from_secs(10);
/// Longest wait for a driver event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Cached re-imports (and no-op calls) timed per repetition.
const REIMPORT_REPEAT: usize = 5;

fn fail(what: impl std::fmt::Display) -> Failure {
    Failure::Error(what.to_string())
}

pub(crate) fn run(command: &BenchCommand, device: &str) -> Result<(), Failure> {
    match command {
        BenchCommand::Export {
            domain,
            sizes,
            reps,
            frames,
            swapchain_max,
        } => {
            let mut bench = Exporter::new(device, *domain)?;
            bench.run(sizes, *reps, *frames, *swapchain_max)
        }
        BenchCommand::Import { domain } => Importer::new(device, *domain)?.serve(),
    }
}

/// The `q` quantile of `v` (nearest rank); the default (zero) for none.
pub(crate) fn percentile<T: Copy + Ord + Default>(v: &[T], q: f64) -> T {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(((s.len().saturating_sub(1)) as f64 * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// CPU time the calling thread has used, user and kernel, in
/// nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// An ioctl the device does not know (`_IO(0xB9, 0x7f)`), answered
/// `ENOTTY` after the system call and the driver's dispatch: the cost of
/// any call on the device, which a cached import can at best approach.
fn noop_ioctl(dev: &Device) {
    use rustix::ioctl::{opcode, NoArg};
    const NOOP: rustix::ioctl::Opcode = opcode::none(hyper_dmabuf_common::uapi::IOCTL_MAGIC, 0x7f);
    // SAFETY: `_IO` carries no argument: the kernel reads and writes
    // nothing of ours.
    let answer = unsafe { rustix::ioctl::ioctl(dev, NoArg::<NOOP>::new()) };
    black_box(answer.is_err());
}

/// Reads the first byte of `map`, as a consumer's first access would.
fn touch(map: &Mapping) {
    let mut first = [0u8];
    map.read_at(0, &mut first);
    black_box(first[0]);
}

/// The first bytes of a frame, where the exporter draws its number.
fn frame_head(frame: &[u8]) -> [u8; 4] {
    frame[..4].try_into().expect("frames are pages")
}

/// The same, read from the mapping of a frame.
fn mapped_frame_head(map: &Mapping) -> [u8; 4] {
    let mut head = [0u8; 4];
    map.read_at(0, &mut head);
    head
}

/// Nanoseconds since `t`.
fn ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn words(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn unwords(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn refs_bytes(refs: &[u32]) -> Vec<u8> {
    refs.iter().flat_map(|r| r.to_le_bytes()).collect()
}

fn pages_of(size: u64) -> usize {
    (size as usize).div_ceil(PAGE)
}

/// The repetitions for a size: fewer for the big ones, whose figures
/// vary less and cost seconds each under emulation.
fn reps_for(size: u64, reps: u32) -> u32 {
    let scaled = match size {
        s if s <= 1 << 20 => reps,
        s if s <= 8 << 20 => reps * 2 / 3,
        s if s <= 32 << 20 => reps / 2,
        _ => reps / 3,
    };
    scaled.max(5)
}

/// The samples of one figure, printed as one `bench|` record.
struct Series {
    path: &'static str,
    metric: &'static str,
    size: u64,
    samples: Vec<u64>,
}

fn print_series(series: &Series) {
    println!(
        "bench| {}",
        json!({
            "path": series.path,
            "metric": series.metric,
            "size": series.size,
            "samples_ns": series.samples,
        })
    );
}

/// Figure `i` of an importer's answer; a short answer is an error, not a
/// panic.
fn figure(v: &[u64], i: usize) -> Result<u64, String> {
    v.get(i).copied().ok_or_else(|| {
        format!(
            "the importer answered {} figures, expected at least {}",
            v.len(),
            i + 1
        )
    })
}

/// Collects the series of one size.
#[derive(Default)]
struct Results {
    series: Vec<Series>,
}

impl Results {
    fn add(&mut self, path: &'static str, metric: &'static str, size: u64, ns: u64) {
        match self
            .series
            .iter_mut()
            .find(|s| s.path == path && s.metric == metric && s.size == size)
        {
            Some(s) => s.samples.push(ns),
            None => self.series.push(Series {
                path,
                metric,
                size,
                samples: vec![ns],
            }),
        }
    }

    /// Records the three figures every importer's answer starts with:
    /// its map time, the CPU time of the map, and its CPU time end to end.
    fn add_importer(&mut self, path: &'static str, size: u64, v: &[u64]) -> Result<(), String> {
        self.add(path, "import", size, figure(v, 0)?);
        self.add(path, "import_cpu", size, figure(v, 1)?);
        self.add(path, "end_to_end_cpu_importer", size, figure(v, 2)?);
        Ok(())
    }

    fn print(&self) {
        self.series.iter().for_each(print_series);
    }
}

/// A path that failed at some size: reported once, not retried.
fn print_failure(path: &str, size: u64, why: &str) {
    println!(
        "bench| {}",
        json!({ "path": path, "size": size, "failed": why })
    );
    eprintln!("bench: {path} at {size} bytes failed: {why}");
}

/// The exporting side.
struct Exporter {
    dev: Device,
    peer: DomId,
    link: Link,
    gntdev: Gntdev,
    gntalloc: Gntalloc,
    /// Half the link's median round trip, taken off end-to-end figures.
    one_way_ns: u64,
    /// Whether the gntdev path's stand-in was reported.
    noted_stand_in: bool,
}

/// What the importer answered to a case.
enum Answer {
    Ack(Vec<u64>),
    Failed(String),
}

impl Exporter {
    fn new(device: &str, peer: u16) -> Result<Self, Failure> {
        let dev = Device::open_path(device)?;
        let link = Link::offer(peer).map_err(|e| fail(format!("offering the link: {e}")))?;
        Ok(Exporter {
            dev,
            peer: DomId::new(u32::from(peer)).map_err(fail)?,
            link,
            gntdev: Gntdev::open()?,
            gntalloc: Gntalloc::open()?,
            one_way_ns: 0,
            noted_stand_in: false,
        })
    }

    fn peer16(&self) -> u16 {
        self.peer.get()
    }

    fn answer(&mut self) -> Result<Answer, Failure> {
        let (h, payload) = self.link.recv()?;
        match h.kind {
            Msg::Ack => Ok(Answer::Ack(unwords(&payload))),
            Msg::Failed => Ok(Answer::Failed(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            k => Err(fail(format!("unexpected message {k:?} from the importer"))),
        }
    }

    /// Asks the importer to let go of the case's buffers and waits until
    /// it has.
    fn release_remote(&mut self) -> Result<(), String> {
        self.link
            .send(Msg::Release, 0, 0, &[])
            .map_err(|e| e.to_string())?;
        self.expect(Msg::Released).map_err(failure_text)
    }

    fn expect(&mut self, kind: Msg) -> Result<(), Failure> {
        let (h, payload) = self.link.recv()?;
        match h.kind {
            k if k == kind => Ok(()),
            Msg::Failed => Err(fail(format!(
                "the importer failed: {}",
                String::from_utf8_lossy(&payload)
            ))),
            k => Err(fail(format!("expected message {kind:?}, got {k:?}"))),
        }
    }

    /// Tells the importer which case comes and waits until it is ready.
    fn start(&mut self, case: Msg, size: u64) -> Result<(), Failure> {
        self.link.send(case, 0, size, &[])?;
        self.expect(Msg::Ready)
    }

    fn run(&mut self, sizes: &[u64], reps: u32, frames: u32, swap_max: u64) -> Result<(), Failure> {
        self.measure_link()?;
        for &size in sizes {
            self.cases(size, reps_for(size, reps))?;
        }
        for &size in sizes.iter().filter(|&&s| s <= swap_max) {
            self.swapchains(size, frames)?;
        }
        self.link.send(Msg::Done, 0, 0, &[])?;
        Ok(())
    }

    /// The link's round trip, and from it the one-way latency.
    fn measure_link(&mut self) -> Result<(), Failure> {
        let mut rtt = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            self.link.send(Msg::Ping, 0, 0, &[])?;
            self.expect(Msg::Pong)?;
            rtt.push(ns(t));
        }
        let mut sorted = rtt.clone();
        sorted.sort_unstable();
        self.one_way_ns = sorted[sorted.len() / 2] / 2;
        print_series(&Series {
            path: "link",
            metric: "round_trip",
            size: 0,
            samples: rtt,
        });
        Ok(())
    }

    /// End-to-end time of a case that started at `t0` and whose answer
    /// just arrived.
    fn end_to_end(&self, t0: Instant) -> u64 {
        ns(t0).saturating_sub(self.one_way_ns)
    }

    fn cases(&mut self, size: u64, reps: u32) -> Result<(), Failure> {
        eprintln!("bench: {size} bytes, {reps} repetitions");
        let buf = Udmabuf::new(size)?;
        buf.map(true)?.write_at(0, &[0x5a]);
        let source = buf.map(false)?;
        let mut results = Results::default();
        let mut broken: Vec<&'static str> = Vec::new();
        type Case = fn(&mut Exporter, &Udmabuf, &Mapping, &mut Results) -> Result<(), String>;
        let anchors: [(&'static str, Case); 3] = [
            ("gntdev", Exporter::gntdev),
            ("floor", Exporter::floor),
            ("copy", Exporter::copy),
        ];
        for rep in 0..reps as usize {
            // Each path goes first in turn: what one case leaves behind
            // (a balloon refilling, a cold cache) weighs on all alike.
            for slot in 0..=anchors.len() {
                let turn = (slot + rep) % (anchors.len() + 1);
                let Some(&(path, case)) = anchors.get(turn) else {
                    self.ours(&buf, &mut results)?;
                    continue;
                };
                if broken.contains(&path) {
                    continue;
                }
                if let Err(why) = case(self, &buf, &source, &mut results) {
                    print_failure(path, size, &why);
                    broken.push(path);
                }
            }
        }
        results.print();
        Ok(())
    }

    fn ours(&mut self, buf: &Udmabuf, r: &mut Results) -> Result<(), Failure> {
        let size = buf.size;
        self.start(Msg::CaseOurs, size)?;
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let hid = self.dev.export(buf, self.peer, &ExportOptions::new())?;
        r.add("ours", "export", size, ns(t0));
        r.add("ours", "export_cpu", size, thread_cpu_ns() - c0);
        let Answer::Ack(v) = self.answer()? else {
            return Err(fail("the importer could not import our buffer"));
        };
        r.add("ours", "end_to_end", size, self.end_to_end(t0));
        r.add(
            "ours",
            "end_to_end_cpu_exporter",
            size,
            thread_cpu_ns() - c0,
        );
        r.add_importer("ours", size, &v)?;
        let Answer::Ack(v) = self.answer()? else {
            return Err(fail("the importer could not import our buffer again"));
        };
        r.add("ours", "reimport", size, figure(&v, 0)?);
        r.add("ours", "noop_ioctl", size, figure(&v, 1)?);
        let t = Instant::now();
        self.dev.unexport(&hid, Duration::ZERO)?;
        self.wait_event(&hid, EventType::GrantsEnded)?;
        r.add("ours", "unexport", size, ns(t));
        Ok(())
    }

    fn wait_event(&self, hid: &HyperDmabufId, kind: EventType) -> Result<Event, Failure> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.dev.wait_event(Some(left))? else {
                return Err(Failure::Timeout(format!("no {kind:?} event for {hid}")));
            };
            if event.kind == kind && event.hid.as_ref().is_some_and(|h| h.matches(hid)) {
                return Ok(event);
            }
        }
    }

    /// Sends references as the importer's next message: it gets an ABORT
    /// instead when we could not make them.
    fn send_refs(&mut self, refs: Result<Vec<u32>, String>) -> Result<Vec<u32>, String> {
        match &refs {
            Ok(refs) => self
                .link
                .send(Msg::Refs, 0, 0, &refs_bytes(refs))
                .map_err(|e| e.to_string())?,
            Err(_) => {
                self.link
                    .send(Msg::Abort, 0, 0, &[])
                    .map_err(|e| e.to_string())?;
                // The importer answers the abort with FAILED.
                self.answer().map_err(failure_text)?;
            }
        }
        refs
    }

    fn gntdev(&mut self, buf: &Udmabuf, _: &Mapping, r: &mut Results) -> Result<(), String> {
        let size = buf.size;
        imp_to_refs_fits(pages_of(size))?;
        self.start(Msg::CaseGntdev, size).map_err(failure_text)?;
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let refs = self
            .gntdev
            .dmabuf_to_refs(buf.dmabuf.as_fd(), pages_of(size), self.peer16())
            .map_err(|e| format!("IOCTL_GNTDEV_DMABUF_IMP_TO_REFS: {e}"));
        let export_ns = ns(t0);
        let export_cpu = thread_cpu_ns() - c0;
        self.send_refs(refs)?;
        let v = match self.answer().map_err(failure_text)? {
            Answer::Ack(v) => v,
            Answer::Failed(why) => {
                let _ = self.gntdev.release_dmabuf(buf.dmabuf.as_fd());
                return Err(why);
            }
        };
        let stand_in_errno = figure(&v, 3)?;
        if stand_in_errno != 0 && !self.noted_stand_in {
            self.noted_stand_in = true;
            println!(
                "bench| {}",
                json!({ "path": "gntdev", "note": format!(
                    "IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS refused in the importer ({}); \
                     it maps the references with gntdev MAP_GRANT_REF + mmap instead",
                    std::io::Error::from_raw_os_error(stand_in_errno as i32)) })
            );
        }
        r.add("gntdev", "end_to_end", size, self.end_to_end(t0));
        r.add(
            "gntdev",
            "end_to_end_cpu_exporter",
            size,
            thread_cpu_ns() - c0,
        );
        r.add("gntdev", "export", size, export_ns);
        r.add("gntdev", "export_cpu", size, export_cpu);
        r.add_importer("gntdev", size, &v)?;
        let t = Instant::now();
        self.release_remote()?;
        self.gntdev
            .release_dmabuf(buf.dmabuf.as_fd())
            .map_err(|e| format!("IOCTL_GNTDEV_DMABUF_IMP_RELEASE: {e}"))?;
        r.add("gntdev", "unexport", size, ns(t));
        Ok(())
    }

    fn floor(&mut self, buf: &Udmabuf, _: &Mapping, r: &mut Results) -> Result<(), String> {
        let size = buf.size;
        let pages = pages_of(size);
        self.start(Msg::CaseFloor, size).map_err(failure_text)?;
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let granted = self
            .gntalloc
            .grant(self.peer16(), pages, false)
            .map_err(|e| format!("IOCTL_GNTALLOC_ALLOC_GREF: {e}"));
        let export_ns = ns(t0);
        let export_cpu = thread_cpu_ns() - c0;
        let index = granted.as_ref().map(|g| g.0).ok();
        let sent = self.send_refs(granted.map(|g| g.1));
        let answer = sent.and_then(|_| self.answer().map_err(failure_text));
        let v = match answer {
            Ok(Answer::Ack(v)) => v,
            Ok(Answer::Failed(why)) | Err(why) => {
                if let Some(index) = index {
                    let _ = self.gntalloc.release(index, pages);
                }
                return Err(why);
            }
        };
        let index = index.expect("granted");
        // No protocol around it: the grant and the map, without carrying
        // the references.
        r.add("floor", "end_to_end", size, export_ns + figure(&v, 0)?);
        r.add(
            "floor",
            "end_to_end_cpu_exporter",
            size,
            thread_cpu_ns() - c0,
        );
        r.add("floor", "export", size, export_ns);
        r.add("floor", "export_cpu", size, export_cpu);
        r.add_importer("floor", size, &v)?;
        let t = Instant::now();
        self.release_remote()?;
        self.gntalloc
            .release(index, pages)
            .map_err(|e| format!("IOCTL_GNTALLOC_DEALLOC_GREF: {e}"))?;
        r.add("floor", "unexport", size, ns(t));
        Ok(())
    }

    fn copy(&mut self, buf: &Udmabuf, source: &Mapping, r: &mut Results) -> Result<(), String> {
        let size = buf.size;
        self.start(Msg::CaseCopy, size).map_err(failure_text)?;
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        // SAFETY: nobody writes these pages meanwhile: this process wrote
        // them before the cases began, and the buffer is exported only in
        // the `ours` case, read-only.
        let bytes = unsafe { source.as_slice() };
        self.link
            .send(Msg::Data, 0, 0, bytes)
            .map_err(|e| e.to_string())?;
        let v = match self.answer().map_err(failure_text)? {
            Answer::Ack(v) => v,
            Answer::Failed(why) => return Err(why),
        };
        r.add("copy", "end_to_end", size, self.end_to_end(t0));
        r.add(
            "copy",
            "end_to_end_cpu_exporter",
            size,
            thread_cpu_ns() - c0,
        );
        r.add("copy", "end_to_end_cpu_importer", size, figure(&v, 2)?);
        Ok(())
    }

    /// Three buffers cycled between the domains: each exported (or
    /// granted) once, then per frame the exporter draws a frame number
    /// into the next buffer and notifies, the importer reads it from its
    /// mapping and answers. Up to two frames are in flight.
    fn swapchains(&mut self, size: u64, frames: u32) -> Result<(), Failure> {
        eprintln!("bench: swapchains of {size}-byte buffers, {frames} frames");
        let mut bufs = Vec::new();
        let mut maps = Vec::new();
        for _ in 0..SWAP_BUFFERS {
            let b = Udmabuf::new(size)?;
            maps.push(b.map(true)?);
            bufs.push(b);
        }
        let mut results = Results::default();
        self.swap_ours(&bufs, &mut maps, frames, &mut results)?;
        if let Err(why) = self.swap_gntdev(&bufs, &mut maps, frames, &mut results) {
            print_failure("gntdev", size, &format!("swapchain: {why}"));
        }
        if let Err(why) = self.swap_copy(&bufs, &mut maps, frames, &mut results) {
            print_failure("copy", size, &format!("swapchain: {why}"));
        }
        results.print();
        Ok(())
    }

    /// Runs the frames: `present(self, frame, buffer)` hands the drawn
    /// buffer over; the importer's answers pace it. Records the time
    /// between successive answers.
    fn frames(
        &mut self,
        path: &'static str,
        size: u64,
        maps: &mut [Mapping],
        frames: u32,
        r: &mut Results,
        mut present: impl FnMut(&mut Self, u32, usize) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let total = frames + WARMUP_FRAMES;
        let mut answered = 0u32;
        let mut last: Option<Instant> = None;
        let mut await_answer = |me: &mut Self, answered: &mut u32| -> Result<(), Failure> {
            match me.answer()? {
                Answer::Ack(v) if v.first() == Some(&u64::from(*answered)) => {}
                Answer::Ack(v) => return Err(fail(format!("frame {answered} answered as {v:?}"))),
                Answer::Failed(why) => return Err(fail(why)),
            }
            if *answered >= WARMUP_FRAMES {
                if let Some(t) = last {
                    r.add(path, "frame", size, ns(t));
                }
            }
            last = Some(Instant::now());
            *answered += 1;
            Ok(())
        };
        for frame in 0..total {
            while frame - answered >= SWAP_WINDOW {
                await_answer(self, &mut answered)?;
            }
            let b = frame as usize % SWAP_BUFFERS;
            maps[b].write_at(0, &frame.to_le_bytes());
            present(self, frame, b)?;
        }
        while answered < total {
            await_answer(self, &mut answered)?;
        }
        Ok(())
    }

    fn swap_ours(
        &mut self,
        bufs: &[Udmabuf],
        maps: &mut [Mapping],
        frames: u32,
        r: &mut Results,
    ) -> Result<(), Failure> {
        let size = bufs[0].size;
        self.start(Msg::SwapOurs, size)?;
        let mut hids = Vec::new();
        for (b, buf) in bufs.iter().enumerate() {
            let tag = PrivData::new(format!("swap {b}").as_bytes()).map_err(fail)?;
            let options = ExportOptions::new().private_data(tag);
            hids.push(self.dev.export(buf, self.peer, &options)?);
        }
        self.expect(Msg::Ready)?;
        self.frames("ours", size, maps, frames, r, |me, frame, b| {
            // HDMABUF_IOCTL_UPDATE: the importer gets an Update event with
            // the new private data; the call does not wait for it.
            let tag = PrivData::new(format!("frame {frame} {b}").as_bytes()).map_err(fail)?;
            me.dev.update(&hids[b], tag)?;
            Ok(())
        })?;
        for hid in &hids {
            self.dev.unexport(hid, Duration::ZERO)?;
        }
        for hid in &hids {
            self.wait_event(hid, EventType::GrantsEnded)?;
        }
        Ok(())
    }

    fn swap_gntdev(
        &mut self,
        bufs: &[Udmabuf],
        maps: &mut [Mapping],
        frames: u32,
        r: &mut Results,
    ) -> Result<(), String> {
        let size = bufs[0].size;
        imp_to_refs_fits(pages_of(size))?;
        self.start(Msg::SwapGntdev, size).map_err(failure_text)?;
        let mut granted = 0;
        let mut outcome = Ok(());
        for buf in bufs {
            let refs = self
                .gntdev
                .dmabuf_to_refs(buf.dmabuf.as_fd(), pages_of(size), self.peer16())
                .map_err(|e| format!("IOCTL_GNTDEV_DMABUF_IMP_TO_REFS: {e}"));
            let ok = refs.is_ok();
            if let Err(e) = self.send_refs(refs) {
                outcome = Err(e);
                break;
            }
            granted += ok as usize;
        }
        if outcome.is_ok() {
            outcome = self.expect(Msg::Ready).map_err(failure_text);
        }
        if outcome.is_ok() {
            outcome = self
                .frames("gntdev", size, maps, frames, r, |me, frame, b| {
                    Ok(me.link.send(Msg::Frame, b as u32, u64::from(frame), &[])?)
                })
                .map_err(failure_text);
            self.release_remote()?;
        }
        for buf in &bufs[..granted] {
            let _ = self.gntdev.release_dmabuf(buf.dmabuf.as_fd());
        }
        outcome
    }

    fn swap_copy(
        &mut self,
        bufs: &[Udmabuf],
        maps: &mut [Mapping],
        frames: u32,
        r: &mut Results,
    ) -> Result<(), String> {
        let size = bufs[0].size;
        self.start(Msg::SwapCopy, size).map_err(failure_text)?;
        // The frames closure gets `maps` mutably; the copy reads the
        // drawn frame through a second, read-only mapping.
        let sources = bufs
            .iter()
            .map(|b| b.map(false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        self.frames("copy", size, maps, frames, r, |me, frame, b| {
            // SAFETY: the frame was drawn before this call and the next
            // is drawn after it returns, by this thread; the buffers are
            // not exported in this case.
            let bytes = unsafe { sources[b].as_slice() };
            Ok(me
                .link
                .send(Msg::Frame, b as u32, u64::from(frame), bytes)?)
        })
        .map_err(failure_text)?;
        self.release_remote()
    }
}

/// Whether IMP_TO_REFS can grant `pages` pages. Linux 6.12 passes its
/// count to `gnttab_alloc_grant_references(u16 count, ...)`: 65,536 pages
/// (256 MiB) wrap to 0, which takes one entry off the grant free list
/// without counting it, and the next grant allocation of the domain
/// oopses in `get_free_entries` (seen in dom0 here). gntdev's own limit
/// (64 Ki grants) does not catch it, so we must not ask.
fn imp_to_refs_fits(pages: usize) -> Result<(), String> {
    if pages > usize::from(u16::MAX) {
        return Err(format!(
            "not attempted: IOCTL_GNTDEV_DMABUF_IMP_TO_REFS of {pages} pages passes the count to \
             gnttab_alloc_grant_references(u16), which wraps to {} and corrupts the grant free list",
            pages % (1 << 16)
        ));
    }
    Ok(())
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Error(m) | Failure::Mismatch(m) | Failure::Timeout(m) => m,
    }
}

/// The importing side.
struct Importer {
    dev: Device,
    peer: u16,
    link: Link,
    gntdev: Gntdev,
    /// The errno of IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS once it was refused:
    /// the gntdev path then maps the references with gntdev's own
    /// MAP_GRANT_REF + mmap, the same grant map minus the dma-buf.
    exp_from_refs_refused: Option<i32>,
    /// [`balloon_deficit_kb`] when nothing was mapped yet.
    balloon_baseline: Option<u64>,
}

/// How far this domain's memory is below its balloon target, in KiB.
fn balloon_deficit_kb() -> Option<u64> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/devices/system/xen_memory/xen_memory0/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(read("target_kb")?.saturating_sub(read("info/current_kb")?))
}

/// What a case handler tells the exporter when it cannot go on.
type CaseResult = Result<(), String>;

impl Importer {
    fn new(device: &str, peer: u16) -> Result<Self, Failure> {
        let dev = Device::open_path(device)?;
        let link = Link::join(peer).map_err(|e| fail(format!("joining the link: {e}")))?;
        Ok(Importer {
            dev,
            peer,
            link,
            gntdev: Gntdev::open()?,
            exp_from_refs_refused: None,
            balloon_baseline: balloon_deficit_kb(),
        })
    }

    fn serve(&mut self) -> Result<(), Failure> {
        loop {
            let (h, _) = self.link.recv()?;
            let size = h.value;
            let outcome = match h.kind {
                Msg::Ping => {
                    self.link.send(Msg::Pong, 0, 0, &[])?;
                    continue;
                }
                Msg::Done => return Ok(()),
                Msg::CaseOurs => self.ours(),
                Msg::CaseGntdev => self.gntdev(),
                Msg::CaseFloor => self.floor(),
                Msg::CaseCopy => self.copy(size),
                Msg::SwapOurs => self.swap_ours(),
                Msg::SwapGntdev => self.swap_gntdev(),
                Msg::SwapCopy => self.swap_copy(size),
                k => return Err(fail(format!("unexpected message {k:?} from the exporter"))),
            };
            if let Err(why) = outcome {
                eprintln!("bench: {why}");
                self.link.send(Msg::Failed, 0, 0, why.as_bytes())?;
            }
        }
    }

    fn ack(&mut self, values: &[u64]) -> CaseResult {
        self.link
            .send(Msg::Ack, 0, 0, &words(values))
            .map_err(|e| e.to_string())
    }

    fn ready(&mut self) -> CaseResult {
        self.link
            .send(Msg::Ready, 0, 0, &[])
            .map_err(|e| e.to_string())
    }

    /// [`Importer::ready`] once the balloon has refilled. Without
    /// CONFIG_XEN_UNPOPULATED_ALLOC, the pages grants are mapped into are
    /// ballooned out of the guest at allocation (a hypercall per 512
    /// pages, each page scrubbed), and given back to it by the balloon
    /// worker after release, in the background, in its own time: a case
    /// could find the pages of the one before it still ballooned and skip
    /// that cost. Waiting until the balloon is back where it was when the
    /// importer started makes every first import pay it.
    fn ready_settled(&mut self, case: &str) -> CaseResult {
        let started = Instant::now();
        let before = balloon_deficit_kb();
        let mut now = before;
        while now
            .zip(self.balloon_baseline)
            .is_some_and(|(d, base)| d > base)
            && started.elapsed() < BALLOON_SETTLE
        {
            std::thread::sleep(Duration::from_millis(50));
            now = balloon_deficit_kb();
        }
        // For the profile (docs/performance.md).
        eprintln!(
            "bench: {case}: balloon {} kB short, {} kB after {} ms",
            before.unwrap_or(0),
            now.unwrap_or(0),
            started.elapsed().as_millis()
        );
        self.ready()
    }

    /// The next message, which must be `kind` (an ABORT ends the case).
    fn expect(&mut self, kind: Msg) -> Result<Vec<u8>, String> {
        let (h, payload) = self.link.recv().map_err(|e| e.to_string())?;
        match h.kind {
            k if k == kind => Ok(payload),
            Msg::Abort => Err("the exporter gave up this case".into()),
            k => Err(format!("expected message {kind:?}, got {k:?}")),
        }
    }

    fn event(&self, want: impl Fn(&Event) -> bool) -> Result<Event, String> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.dev.wait_event(Some(left)) {
                Ok(Some(e)) if want(&e) => return Ok(e),
                Ok(Some(_)) => {}
                Ok(None) => return Err("no event from the driver in time".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn ours(&mut self) -> CaseResult {
        self.ready_settled("ours")?;
        let c0 = thread_cpu_ns();
        let event = self.event(|e| e.kind == EventType::NewExport)?;
        let hid = event.hid.ok_or("a NewExport without an id")?;
        let c1 = thread_cpu_ns();
        let t = Instant::now();
        let imported = self.dev.import(&hid, false).map_err(|e| e.to_string())?;
        let import_ns = ns(t);
        let import_cpu = thread_cpu_ns() - c1;
        let map = imported.map().map_err(|e| e.to_string())?;
        touch(&map);
        self.ack(&[import_ns, import_cpu, thread_cpu_ns() - c0])?;
        // The cached import (the buffer is still mapped) and, in turn
        // with it, what any call on the device costs: its floor. Each is
        // timed REPEAT times and its median kept; the first call after
        // the importer woke costs several times a warm one, whatever it
        // is, and the no-op goes first so as to pay it.
        let (mut reimports, mut noops) = (Vec::new(), Vec::new());
        for _ in 0..REIMPORT_REPEAT {
            let t = Instant::now();
            noop_ioctl(&self.dev);
            noops.push(ns(t));
            let t = Instant::now();
            let again = self.dev.import(&hid, false).map_err(|e| e.to_string())?;
            reimports.push(ns(t));
            drop(again);
        }
        println!(
            "reimport: {:?} us, no-op ioctl before each: {:?} us",
            reimports.iter().map(|x| x / 1000).collect::<Vec<_>>(),
            noops.iter().map(|x| x / 1000).collect::<Vec<_>>()
        );
        let (reimport_ns, noop_ns) = (percentile(&reimports, 0.5), percentile(&noops, 0.5));
        self.ack(&[reimport_ns, noop_ns])?;
        self.event(|e| {
            e.kind == EventType::Unexport && e.hid.as_ref().is_some_and(|h| h.matches(&hid))
        })?;
        drop(map);
        drop(imported);
        Ok(())
    }

    fn recv_refs(&mut self) -> Result<Vec<u32>, String> {
        let payload = self.expect(Msg::Refs)?;
        Ok(payload
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    fn gntdev(&mut self) -> CaseResult {
        self.ready_settled("gntdev")?;
        let c0 = thread_cpu_ns();
        let refs = self.recv_refs()?;
        if self.exp_from_refs_refused.is_none() {
            let c1 = thread_cpu_ns();
            let t = Instant::now();
            match self.gntdev.dmabuf_from_refs(self.peer, &refs) {
                Ok(dmabuf) => {
                    let import_ns = ns(t);
                    let import_cpu = thread_cpu_ns() - c1;
                    // No CPU access to compare: gntdev's dma-buf has no
                    // mmap or vmap.
                    self.ack(&[import_ns, import_cpu, thread_cpu_ns() - c0, 0])?;
                    self.expect(Msg::Release)?;
                    drop(dmabuf);
                    return self
                        .link
                        .send(Msg::Released, 0, 0, &[])
                        .map_err(|e| e.to_string());
                }
                // Xen refuses GNTMAP_device_map, which gntdev-dmabuf asks
                // for on x86, in a translated (PVH/HVM) domain.
                Err(e) => self.exp_from_refs_refused = Some(e.raw_os_error().unwrap_or(0)),
            }
        }
        // The stand-in: the same gntdev grant map without the dma-buf.
        let errno = self.exp_from_refs_refused.unwrap_or(0) as u64;
        let (map_ns, map_cpu, held) = self.map_refs(&refs)?;
        self.ack(&[map_ns, map_cpu, thread_cpu_ns() - c0, errno])?;
        self.expect(Msg::Release)?;
        self.unmap_refs(held)?;
        self.link
            .send(Msg::Released, 0, 0, &[])
            .map_err(|e| e.to_string())
    }

    /// Maps a peer's grants in one batch (gntdev MAP_GRANT_REF + mmap)
    /// and reads the first byte; returns the time and CPU time it took.
    fn map_refs(&mut self, refs: &[u32]) -> Result<(u64, u64, (GrantRange, Mapping)), String> {
        let c = thread_cpu_ns();
        let t = Instant::now();
        let range = self
            .gntdev
            .prepare(self.peer, refs)
            .map_err(|e| format!("IOCTL_GNTDEV_MAP_GRANT_REF: {e}"))?;
        let map = match self.gntdev.map(&range, false) {
            Ok(map) => map,
            Err(e) => {
                let _ = self.gntdev.unprepare(range);
                return Err(format!("mmap of {} grants: {e}", refs.len()));
            }
        };
        touch(&map);
        Ok((ns(t), thread_cpu_ns() - c, (range, map)))
    }

    fn unmap_refs(&mut self, (range, map): (GrantRange, Mapping)) -> CaseResult {
        drop(map);
        self.gntdev
            .unprepare(range)
            .map_err(|e| format!("IOCTL_GNTDEV_UNMAP_GRANT_REF: {e}"))
    }

    fn floor(&mut self) -> CaseResult {
        self.ready_settled("floor")?;
        let c0 = thread_cpu_ns();
        let refs = self.recv_refs()?;
        let (map_ns, map_cpu, held) = self.map_refs(&refs)?;
        self.ack(&[map_ns, map_cpu, thread_cpu_ns() - c0])?;
        self.expect(Msg::Release)?;
        self.unmap_refs(held)?;
        self.link
            .send(Msg::Released, 0, 0, &[])
            .map_err(|e| e.to_string())
    }

    fn copy(&mut self, size: u64) -> CaseResult {
        // A destination a user would have ready: allocated and touched.
        let mut dst = vec![1u8; size as usize];
        self.ready()?;
        let c0 = thread_cpu_ns();
        let h = self.link.recv_header().map_err(|e| e.to_string())?;
        if h.kind != Msg::Data || h.len != size {
            return Err(format!("expected {size} bytes of data, got {h:?}"));
        }
        self.link
            .recv_payload(&mut dst)
            .map_err(|e| e.to_string())?;
        black_box(dst[0]);
        self.ack(&[0, 0, thread_cpu_ns() - c0])
    }

    /// Answers one frame after checking the number drawn into its
    /// buffer, whose first bytes are `head`.
    fn present(&mut self, frame: u64, head: [u8; 4]) -> CaseResult {
        let drawn = u32::from_le_bytes(head);
        if u64::from(drawn) != frame {
            return Err(format!("frame {frame} shows {drawn}"));
        }
        self.ack(&[frame])
    }

    fn swap_ours(&mut self) -> CaseResult {
        self.ready()?;
        let mut held: Vec<(HyperDmabufId, OwnedFd, Mapping)> = Vec::new();
        while held.len() < SWAP_BUFFERS {
            let e = self.event(|e| e.kind == EventType::NewExport)?;
            let hid = e.hid.ok_or("a NewExport without an id")?;
            let imported = self.dev.import(&hid, false).map_err(|e| e.to_string())?;
            let map = imported.map().map_err(|e| e.to_string())?;
            held.push((hid, imported.fd, map));
        }
        self.ready()?;
        while !held.is_empty() {
            let e = self.event(|e| matches!(e.kind, EventType::Update | EventType::Unexport))?;
            let hid = e.hid.ok_or("an event without an id")?;
            let Some(i) = held.iter().position(|(h, _, _)| h.matches(&hid)) else {
                continue;
            };
            if e.kind == EventType::Unexport {
                held.swap_remove(i);
                continue;
            }
            let tag = String::from_utf8_lossy(e.priv_data.as_bytes()).into_owned();
            let frame = tag
                .split(' ')
                .nth(1)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| format!("update tagged {tag:?}"))?;
            self.present(frame, mapped_frame_head(&held[i].2))?;
        }
        Ok(())
    }

    fn swap_gntdev(&mut self) -> CaseResult {
        self.ready()?;
        let mut held = Vec::new();
        let mut outcome = Ok(());
        for _ in 0..SWAP_BUFFERS {
            match self.recv_refs().and_then(|refs| self.map_refs(&refs)) {
                Ok((_, _, m)) => held.push(m),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            self.ready()?;
            outcome = loop {
                let (h, _) = match self.link.recv() {
                    Ok(m) => m,
                    Err(e) => break Err(e.to_string()),
                };
                match h.kind {
                    Msg::Frame => {
                        let Some((_, map)) = held.get(h.arg as usize) else {
                            break Err(format!("frame for buffer {}", h.arg));
                        };
                        if let Err(e) = self.present(h.value, mapped_frame_head(map)) {
                            break Err(e);
                        }
                    }
                    Msg::Release => break Ok(()),
                    k => break Err(format!("unexpected message {k:?}")),
                }
            };
        }
        for m in held {
            let _ = self.unmap_refs(m);
        }
        outcome?;
        self.link
            .send(Msg::Released, 0, 0, &[])
            .map_err(|e| e.to_string())
    }

    fn swap_copy(&mut self, size: u64) -> CaseResult {
        let mut frames: Vec<Vec<u8>> = (0..SWAP_BUFFERS)
            .map(|_| vec![1u8; size as usize])
            .collect();
        self.ready()?;
        loop {
            let h = self.link.recv_header().map_err(|e| e.to_string())?;
            match h.kind {
                Msg::Frame if (h.arg as usize) < SWAP_BUFFERS && h.len == size => {
                    let b = h.arg as usize;
                    self.link
                        .recv_payload(&mut frames[b])
                        .map_err(|e| e.to_string())?;
                    let frame = std::mem::take(&mut frames[b]);
                    let presented = self.present(h.value, frame_head(&frame));
                    frames[b] = frame;
                    presented?;
                }
                Msg::Release => break,
                _ => return Err(format!("unexpected {h:?}")),
            }
        }
        self.link
            .send(Msg::Released, 0, 0, &[])
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile::<u64>(&[], 0.5), 0);
        let d = [Duration::from_millis(3), Duration::from_millis(1)];
        assert_eq!(percentile(&d, 0.0), Duration::from_millis(1));
    }

    #[test]
    fn fewer_repetitions_for_big_buffers_never_under_five() {
        assert_eq!(reps_for(4096, 15), 15);
        assert_eq!(reps_for(8 << 20, 15), 10);
        assert_eq!(reps_for(32 << 20, 15), 7);
        assert_eq!(reps_for(256 << 20, 15), 5);
        assert_eq!(reps_for(256 << 20, 3), 5);
    }

    #[test]
    fn answers_round_trip() {
        let v = [0, 1, u64::MAX];
        assert_eq!(unwords(&words(&v)), v);
        assert_eq!(refs_bytes(&[1, 0x0102_0304]), [1, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(pages_of(4096), 1);
        assert_eq!(pages_of(4097), 2);
        assert!(imp_to_refs_fits(65535).is_ok());
        assert!(imp_to_refs_fits(pages_of(256 << 20)).is_err());
    }

    #[test]
    fn command_lines() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "hdmabuf-agent",
            "bench",
            "export",
            "--domain",
            "3",
            "--sizes",
            "4K,8M",
            "--reps",
            "7",
        ])
        .unwrap();
        let crate::Command::Bench {
            command:
                BenchCommand::Export {
                    domain,
                    sizes,
                    reps,
                    frames,
                    swapchain_max,
                },
        } = cli.command
        else {
            panic!("not bench export");
        };
        assert_eq!((domain, reps, frames, swapchain_max), (3, 7, 40, 32 << 20));
        assert_eq!(sizes, [4096, 8 << 20]);
        assert!(crate::Cli::try_parse_from(["hdmabuf-agent", "bench", "import"]).is_ok());
    }
}
