// SPDX-License-Identifier: MIT
//! Camera to display across domains (`make demo`, issue 14): a guest's
//! vivid captures 1280x720 XR24 frames into a ring of its own buffers and
//! exports each frame to dom0 (`hdmabuf-agent camera`); dom0 shows each on
//! vkms's plane, reads the composed frame back through the writeback
//! connector and compares it pixel for pixel with the buffer it imported
//! and with the fingerprint the guest sent with the frame
//! (`hdmabuf-agent display`).
//!
//! The conversation, all of it through the driver:
//!
//! * The guest exports ring buffer *i* with the private data
//!   `frame=K w=1280 h=720 pitch=5120 fp=HEX` (a [`FrameNote`]): a first
//!   export of *i* is a `NewExport` for dom0, every later one an `Update`
//!   of the same id.
//! * dom0 imports each id once, keeps it (and its framebuffer) for the
//!   rest of the stream, and imports it again on every frame: the cached
//!   re-import, a system call.
//! * dom0 exports one page of its own to the guest and updates its private
//!   data to `shown=K` once frame *K* is written back and verified: the
//!   guest times capture to scan-out on its own clock, and queues the
//!   buffer of frame *K-1*, which *K* replaced on the plane, back to the
//!   camera. `shown=done` ends the stream: dom0 has let go of everything.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::Args;
use hdmabuf::{wait_for, Failure, Output};
use hyper_dmabuf_client::{
    CpuAccess, Device, DmaBuf, DomId, EventType, ExportOptions, HyperDmabufId, Imported, Mapping,
    PrivData, Udmabuf,
};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use serde_json::json;

use super::v4l2::{Direction, Memory, Video, XR24};
use super::vkms::{Display, Shown};
use super::{fnv, FNV_BASIS};

/// What the guest says of a frame, in the private data of its export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameNote {
    /// The frame's number in the stream, from 0.
    pub(crate) frame: u32,
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// Bytes a line.
    pub(crate) pitch: u32,
    /// [`fingerprint`] of the frame.
    pub(crate) fingerprint: u64,
}

impl FrameNote {
    fn to_text(self) -> String {
        format!(
            "frame={} w={} h={} pitch={} fp={:016x}",
            self.frame, self.width, self.height, self.pitch, self.fingerprint
        )
    }

    /// The note in `text`, if it is one.
    fn parse(text: &str) -> Option<Self> {
        let mut fields = HashMap::new();
        for field in text.split(' ') {
            let (key, value) = field.split_once('=')?;
            fields.insert(key, value);
        }
        let number = |key: &str| fields.get(key)?.parse().ok();
        Some(FrameNote {
            frame: number("frame")?,
            width: number("w")?,
            height: number("h")?,
            pitch: number("pitch")?,
            fingerprint: u64::from_str_radix(fields.get("fp")?, 16).ok()?,
        })
    }
}

/// What dom0 says in its acknowledgement page's private data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// Nothing shown yet.
    None,
    /// Frame `K` is on the plane, written back and verified.
    Shown(u32),
    /// The stream is over; dom0 holds none of the buffers.
    Done,
}

impl Ack {
    fn to_text(self) -> String {
        match self {
            Ack::None => "shown=none".into(),
            Ack::Shown(frame) => format!("shown={frame}"),
            Ack::Done => "shown=done".into(),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.strip_prefix("shown=")? {
            "none" => Some(Ack::None),
            "done" => Some(Ack::Done),
            frame => frame.parse().ok().map(Ack::Shown),
        }
    }
}

/// The pixels of a line of XRGB8888, as little-endian words with the X
/// byte cleared: X is no pixel (vivid writes 0 there, vkms's writeback
/// 0xff).
fn pixels(line: &[u8]) -> impl Iterator<Item = u32> + '_ {
    line.chunks_exact(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
}

/// The fingerprint of a `width`×`height` XRGB8888 frame whose line `y`
/// `line` copies into its buffer: FNV-1a over its [`pixels`].
fn fingerprint(width: u32, height: u32, mut line: impl FnMut(u32, &mut [u8])) -> u64 {
    let mut hash = FNV_BASIS;
    let mut row = vec![0u8; width as usize * 4];
    for y in 0..height {
        line(y, &mut row);
        hash = pixels(&row).fold(hash, |h, pixel| fnv(h, u64::from(pixel)));
    }
    hash
}

/// Compares two frames, pixel for pixel, in one pass: the first pixel
/// that differs, as (x, y, ours, theirs) in B, G, R, if any; and the
/// [`fingerprint`] of `ours`, if none does.
fn compare(
    width: u32,
    height: u32,
    mut ours: impl FnMut(u32, &mut [u8]),
    mut theirs: impl FnMut(u32, &mut [u8]),
) -> Result<u64, (u32, u32, [u8; 3], [u8; 3])> {
    let bgr = |p: u32| {
        let [b, g, r, _] = p.to_le_bytes();
        [b, g, r]
    };
    let (mut a, mut b) = (vec![0u8; width as usize * 4], vec![0u8; width as usize * 4]);
    let mut hash = FNV_BASIS;
    for y in 0..height {
        ours(y, &mut a);
        theirs(y, &mut b);
        for (x, (p, q)) in (0u32..).zip(pixels(&a).zip(pixels(&b))) {
            if p != q {
                return Err((x, y, bgr(p), bgr(q)));
            }
            hash = fnv(hash, u64::from(p));
        }
    }
    Ok(hash)
}

/// Line `y` of a frame of `pitch` bytes a line in `map`.
fn line_of(map: &Mapping, pitch: u32) -> impl FnMut(u32, &mut [u8]) + '_ {
    move |y, row| map.read_at(y as usize * pitch as usize, row)
}

/// How long a step of the stream may take (a frame, an answer): the
/// camera runs at 5 frames a second or more and the display at 10.
const STEP_LIMIT: Duration = Duration::from_secs(60);

fn priv_data(text: &str) -> Result<PrivData, Failure> {
    PrivData::new(text.as_bytes())
        .map_err(|e| Failure::Error(format!("private data {text:?}: {e}")))
}

/// `hdmabuf-agent camera`.
#[derive(Args)]
pub(crate) struct CameraArgs {
    /// The domain that displays the frames.
    #[arg(long, short)]
    domain: u32,
    /// Frames to send.
    #[arg(long, default_value_t = 100)]
    frames: u32,
    /// Buffers in the camera's ring.
    #[arg(long, default_value_t = 4)]
    buffers: u32,
    /// vivid's instance (0 allocates with vmalloc).
    #[arg(long, default_value_t = 0)]
    instance: u32,
    /// The id of the display's acknowledgement page (its `NewExport`,
    /// private data `shown=none`, says the display is ready).
    #[arg(long)]
    ack: HyperDmabufId,
}

/// A buffer of the camera's ring.
struct Slot {
    buffer: DmaBuf,
    map: Mapping,
    /// Its export, once it has carried a frame.
    hid: Option<HyperDmabufId>,
}

/// The guest's side: captures, exports each frame, times it until dom0
/// says it is shown, and reports.
pub(crate) fn camera(args: &CameraArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let display = DomId::new(args.domain)
        .map_err(|e| Failure::Error(format!("--domain {}: {e}", args.domain)))?;
    let dev = Device::open_path(device)?;
    let cam = Video::open_vivid(args.instance, Direction::Capture)?;
    cam.select(0)?;
    let (width, height) = Display::SIZE;
    let format = cam.set_format(width, height, XR24)?;
    if (format.width, format.height) != (width, height) {
        return Err(Failure::Error(format!(
            "vivid gives {}x{}, not {width}x{height}",
            format.width, format.height
        )));
    }
    let count = cam.request(args.buffers, Memory::Mmap)?;
    let mut ring = Vec::new();
    for index in 0..count {
        let buffer = DmaBuf::from_fd(cam.export(index)?)?;
        let map = buffer.map(false)?;
        ring.push(Slot {
            buffer,
            map,
            hid: None,
        });
        cam.queue(index)?;
    }
    cam.stream(true)?;

    let mut captured: HashMap<u32, (u32, Instant)> = HashMap::new();
    let mut latency = Samples::default();
    let (mut next, mut last_shown) = (0u32, None::<(u32, Instant)>);
    let ack_id = Some(args.ack);
    let mut first_capture = None;
    let finished = loop {
        let wants_frame = next < args.frames;
        let timeout = Timespec::try_from(STEP_LIMIT).expect("a small duration");
        let mut fds = [
            PollFd::new(&dev, PollFlags::IN),
            PollFd::new(
                &cam,
                if wants_frame {
                    PollFlags::IN
                } else {
                    PollFlags::empty()
                },
            ),
        ];
        if poll(&mut fds, Some(&timeout)).map_err(|e| Failure::Error(format!("poll: {e}")))? == 0 {
            return Err(Failure::Timeout(format!(
                "camera: nothing for {} s after frame {next} (shown: {:?})",
                STEP_LIMIT.as_secs(),
                last_shown.map(|(frame, _)| frame)
            )));
        }
        let (events_ready, frame_ready) =
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if frame_ready && wants_frame {
            let taken = cam.dequeue(Memory::Mmap, Duration::ZERO)?;
            let at = Instant::now();
            first_capture.get_or_insert(at);
            let slot = &mut ring[taken.index as usize];
            let access = CpuAccess::begin(&slot.buffer, false)?;
            let print = fingerprint(width, height, line_of(&slot.map, format.bytesperline));
            access.end()?;
            let note = FrameNote {
                frame: next,
                width,
                height,
                pitch: format.bytesperline,
                fingerprint: print,
            };
            let note = priv_data(&note.to_text())?;
            // A buffer's first frame exports it; each later one is an
            // UPDATE, which does not look at the dma-buf nor wait.
            match slot.hid {
                Some(hid) => dev.update(&hid, note)?,
                None => {
                    let options = ExportOptions::new().private_data(note);
                    slot.hid = Some(dev.export(&slot.buffer, display, &options)?);
                }
            }
            captured.insert(next, (taken.index, at));
            next += 1;
        }
        if !events_ready {
            continue;
        }
        let mut done = false;
        while let Some(event) = dev.try_next_event()? {
            let ack = Ack::parse(&String::from_utf8_lossy(event.priv_data.as_bytes()));
            match (event.kind, ack) {
                (EventType::Update, Some(ack)) if event.hid.is_some() && event.hid == ack_id => {
                    match ack {
                        Ack::Shown(frame) => {
                            let &(_, at) = captured.get(&frame).ok_or_else(|| {
                                Failure::Error(format!("dom0 showed frame {frame}, never sent"))
                            })?;
                            latency.push(at.elapsed());
                            last_shown = Some((frame, Instant::now()));
                            // Frame K replaced K-1 on the plane: its
                            // buffer goes back to the camera.
                            if let Some((index, _)) =
                                frame.checked_sub(1).and_then(|k| captured.remove(&k))
                            {
                                if next < args.frames {
                                    cam.queue(index)?;
                                }
                            }
                        }
                        Ack::Done => done = true,
                        Ack::None => {}
                    }
                }
                (EventType::PeerDisconnected, _) => {
                    return Err(Failure::Error("the display's domain went away".into()))
                }
                _ => {}
            }
        }
        if done {
            break last_shown.map(|(_, at)| at);
        }
    };
    cam.stream(false)?;
    for hid in ring.iter().filter_map(|slot| slot.hid.as_ref()) {
        dev.unexport(hid, Duration::ZERO)?;
        wait_for(
            &dev,
            &Output { json: out.json },
            hid,
            EventType::GrantsEnded,
            STEP_LIMIT,
        )?;
    }
    if latency.0.len() != args.frames as usize {
        return Err(Failure::Error(format!(
            "dom0 acknowledged {} of {} frames",
            latency.0.len(),
            args.frames
        )));
    }
    report(out, args.frames, first_capture.zip(finished), &mut latency);
    Ok(())
}

/// Durations of one step, for their percentiles.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, took: Duration) {
        self.0.push(took);
    }

    /// The `percent`th percentile (100: the largest) in milliseconds; 0
    /// without samples.
    fn ms(&mut self, percent: usize) -> f64 {
        self.0.sort_unstable();
        let at = (self.0.len() * percent / 100).min(self.0.len().saturating_sub(1));
        self.0.get(at).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

/// Prints frames a second and the latency percentiles.
fn report(out: &Output, frames: u32, span: Option<(Instant, Instant)>, latency: &mut Samples) {
    let (p50, p95, max) = (latency.ms(50), latency.ms(95), latency.ms(100));
    let seconds = span.map_or(0.0, |(first, last)| {
        last.duration_since(first).as_secs_f64()
    });
    let rate = if seconds > 0.0 {
        f64::from(frames) / seconds
    } else {
        0.0
    };
    out.line(
        format!(
            "{frames} frames in {seconds:.1} s ({rate:.1} frames/s); capture to verified \
             scan-out: p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms"
        ),
        json!({ "frames": frames, "seconds": seconds, "frames_per_second": rate,
                "latency_ms": { "p50": p50, "p95": p95, "max": max } }),
    );
}

/// `hdmabuf-agent display`.
#[derive(Args)]
pub(crate) struct DisplayArgs {
    /// The camera's domain.
    #[arg(long)]
    from: u32,
    /// Frames to show.
    #[arg(long, default_value_t = 100)]
    frames: u32,
}

/// A buffer of the camera's ring as dom0 holds it for the whole stream.
struct Held {
    /// Keeps the import (and the pages vkms reads).
    imported: Imported,
    map: Mapping,
    shown: Shown,
}

/// dom0's side: shows each frame, verifies its writeback, acknowledges.
pub(crate) fn display(args: &DisplayArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let camera =
        DomId::new(args.from).map_err(|e| Failure::Error(format!("--from {}: {e}", args.from)))?;
    let dev = Device::open_path(device)?;
    let mut screen = Display::open()?;
    let acks = Udmabuf::new(4096)?;
    let ack = |state: Ack| -> Result<HyperDmabufId, Failure> {
        let options = ExportOptions::new().private_data(priv_data(&state.to_text())?);
        Ok(dev.export(&acks, camera, &options)?)
    };
    let ack_id = ack(Ack::None)?;
    let mut held: HashMap<HyperDmabufId, Held> = HashMap::new();
    let mut shown = 0u32;
    let (mut reimport, mut commit, mut verify) =
        (Samples::default(), Samples::default(), Samples::default());
    while shown < args.frames {
        let event = dev.wait_event(Some(STEP_LIMIT))?.ok_or_else(|| {
            Failure::Timeout(format!(
                "display: no frame for {} s after {shown}",
                STEP_LIMIT.as_secs()
            ))
        })?;
        let note = FrameNote::parse(&String::from_utf8_lossy(event.priv_data.as_bytes()));
        let (Some(hid), Some(note), EventType::NewExport | EventType::Update) =
            (event.hid, note, event.kind)
        else {
            if event.kind == EventType::PeerDisconnected {
                return Err(Failure::Error("the camera's domain went away".into()));
            }
            continue;
        };
        if (note.width, note.height) != Display::SIZE {
            return Err(Failure::Error(format!(
                "frame {} is {}x{}",
                note.frame, note.width, note.height
            )));
        }
        // Every frame imports again; a buffer held already is the cached
        // re-import (the same pages, no new mapping).
        let started = Instant::now();
        let imported = dev.import(&hid, false)?;
        let took = started.elapsed();
        // The pitch is the peer's word: the lines must lie in the buffer.
        let lines = u64::from(note.pitch) * u64::from(note.height);
        if note.pitch < note.width * 4 || lines > imported.size {
            return Err(Failure::Error(format!(
                "frame {}: {} lines of {} bytes do not fit its buffer of {} bytes",
                note.frame, note.height, note.pitch, imported.size
            )));
        }
        let frame = match held.get(&hid) {
            Some(frame) => {
                reimport.push(took);
                drop(imported);
                frame
            }
            None => {
                let map = imported.map()?;
                let shown = screen.framebuffer(imported.as_fd(), note.pitch)?;
                held.entry(hid).or_insert(Held {
                    imported,
                    map,
                    shown,
                })
            }
        };
        let (started, lost) = (Instant::now(), screen.lost_writebacks());
        screen.show(Some(&frame.shown))?;
        commit.push(started.elapsed());
        if screen.lost_writebacks() > lost {
            out.line(
                format!(
                    "frame {}: vkms lost {} writeback(s); committed again",
                    note.frame,
                    screen.lost_writebacks() - lost
                ),
                json!({ "frame": note.frame, "lost_writebacks": screen.lost_writebacks() - lost }),
            );
        }
        let started = Instant::now();
        let access = CpuAccess::begin(&frame.imported, false)?;
        let (width, height) = Display::SIZE;
        let verdict = screen.written_back(|wb, wb_pitch| {
            let wb_line = |y: u32, row: &mut [u8]| {
                let at = y as usize * wb_pitch as usize;
                row.copy_from_slice(&wb[at..at + row.len()]);
            };
            compare(width, height, wb_line, line_of(&frame.map, note.pitch))
        })?;
        access.end()?;
        verify.push(started.elapsed());
        match verdict {
            Err((x, y, wb, camera)) => {
                return Err(Failure::Mismatch(format!(
                    "frame {}: vkms wrote back B,G,R {wb:?} at ({x}, {y}), the camera's buffer has {camera:?}",
                    note.frame
                )))
            }
            Ok(print) if print != note.fingerprint => {
                return Err(Failure::Mismatch(format!(
                    "frame {}: the written-back frame's fingerprint is {print:016x}, the camera sent {:016x}",
                    note.frame, note.fingerprint
                )))
            }
            Ok(_) => {}
        }
        ack(Ack::Shown(note.frame))?;
        shown += 1;
    }
    screen.show(None)?;
    for (_, frame) in held.drain() {
        screen.forget(frame.shown)?;
    }
    ack(Ack::Done)?;
    dev.unexport(&ack_id, Duration::ZERO)?;
    wait_for(
        &dev,
        &Output { json: out.json },
        &ack_id,
        EventType::GrantsEnded,
        STEP_LIMIT,
    )?;
    let (reimport_ms, commit_ms, commit_max, verify_ms) = (
        reimport.ms(50),
        commit.ms(50),
        commit.ms(100),
        verify.ms(50),
    );
    let lost = screen.lost_writebacks();
    out.line(
        format!(
            "showed {shown} frames on vkms, each written back and equal to the camera's, pixel \
             for pixel; medians: cached re-import {reimport_ms:.2} ms, commit to written back \
             {commit_ms:.0} ms (max {commit_max:.0}), verification {verify_ms:.0} ms; \
             writebacks vkms lost and were committed again: {lost}"
        ),
        json!({ "shown": shown, "reimport_ms": reimport_ms, "commit_ms": commit_ms,
                "commit_max_ms": commit_max, "verify_ms": verify_ms,
                "lost_writebacks": lost }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_and_acks_read_back() {
        let note = FrameNote {
            frame: 41,
            width: 1280,
            height: 720,
            pitch: 5120,
            fingerprint: 0x0123_4567_89ab_cdef,
        };
        let text = note.to_text();
        assert!(text.len() <= 192, "fits in the private data");
        assert_eq!(FrameNote::parse(&text), Some(note));
        assert_eq!(FrameNote::parse("shown=3"), None);
        assert_eq!(FrameNote::parse("frame=1 w=2"), None);
        for ack in [Ack::None, Ack::Shown(7), Ack::Done] {
            assert_eq!(Ack::parse(&ack.to_text()), Some(ack));
        }
        assert_eq!(Ack::parse(&note.to_text()), None);
    }

    #[test]
    fn the_x_byte_is_no_pixel() {
        let frame = |x: u8| {
            move |y: u32, row: &mut [u8]| {
                for (i, b) in row.iter_mut().enumerate() {
                    *b = if i % 4 == 3 { x } else { (i as u32 + y) as u8 };
                }
            }
        };
        let print = fingerprint(4, 3, frame(0));
        assert_eq!(print, fingerprint(4, 3, frame(0xff)));
        assert_eq!(compare(4, 3, frame(0xff), frame(0)), Ok(print));
        let other = frame(0);
        let changed = move |y: u32, row: &mut [u8]| {
            other(y, row);
            if y == 2 {
                row[5] ^= 1;
            }
        };
        assert_eq!(
            compare(4, 3, frame(0), changed).map_err(|(x, y, _, _)| (x, y)),
            Err((1, 2))
        );
        assert_ne!(fingerprint(4, 3, changed), print);
    }
}
