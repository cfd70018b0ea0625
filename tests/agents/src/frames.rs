// SPDX-License-Identifier: MIT
//! `hdmabuf-agent frames`: frames announced faster than the importer takes
//! them (`HDMABUF_IOCTL_UPDATE`, docs/uapi.md).
//!
//! `send` exports a few buffers, then announces `--frames` frames round
//! the ring of buffers as fast as it can, each an UPDATE whose private
//! data is `frame N`. No call may fail or wait: when the ring to the peer
//! is full the kernel keeps each buffer's newest frame and sends it in
//! turn. It prints what each call cost.
//!
//! `receive` checks what the importer hears: every frame after the one
//! before (never an older frame after a newer one), and in the end each
//! buffer's newest frame, read from its events or, if the event queue
//! overflowed, from the buffer's private data (`HDMABUF_QUERY_PRIV`).
//! Then it maps and releases buffer 0, which tells the sender (a
//! `Released` event) that it may unexport: an unexport drops what still
//! waits, by design.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdmabuf::{Failure, Output};
use hyper_dmabuf_client::{
    Device, DomId, EventType, ExportOptions, HyperDmabufId, PrivData, Udmabuf,
};
use serde_json::json;

/// How long any wait for the peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(300);

/// The private data of a buffer's export, naming its place in the ring.
fn buffer_tag(b: usize) -> String {
    format!("frames buffer {b}")
}

/// Shared by both sides.
#[derive(Args)]
pub(crate) struct FramesArgs {
    /// The other domain.
    #[arg(long, short)]
    domain: u32,
    /// Buffers in the ring.
    #[arg(long, default_value_t = 3)]
    buffers: usize,
    /// Frames announced in all.
    #[arg(long, default_value_t = 2000)]
    frames: u64,
}

impl FramesArgs {
    /// The last frame announced in buffer `b`: frames go round the ring.
    fn newest(&self, b: usize) -> Option<u64> {
        let n = self.buffers as u64;
        let b = b as u64;
        (self.frames > b).then(|| b + (self.frames - 1 - b) / n * n)
    }
}

/// `hdmabuf-agent frames`.
#[derive(Subcommand)]
pub(crate) enum FramesCommand {
    /// Export the ring of buffers and announce the frames.
    Send {
        #[command(flatten)]
        args: FramesArgs,
        /// Bytes of each buffer.
        #[arg(long, default_value_t = 65536)]
        size: u64,
    },
    /// Check the frames the sender announces.
    Receive(FramesArgs),
}

/// Runs `command`.
pub(crate) fn run(command: &FramesCommand, device: &str, out: &Output) -> Result<(), Failure> {
    let dev = Device::open_path(device)?;
    match command {
        FramesCommand::Send { args, size } => send(&dev, args, *size, out),
        FramesCommand::Receive(args) => receive(&dev, args, out),
    }
}

fn frame_data(frame: u64) -> Result<PrivData, Failure> {
    Ok(PrivData::new(format!("frame {frame}").as_bytes())?)
}

fn parse_frame(data: &PrivData) -> Option<u64> {
    std::str::from_utf8(data.as_bytes())
        .ok()?
        .strip_prefix("frame ")?
        .parse()
        .ok()
}

fn send(dev: &Device, args: &FramesArgs, size: u64, out: &Output) -> Result<(), Failure> {
    let peer = DomId::new(args.domain)?;
    let mut bufs = Vec::new();
    let mut hids = Vec::new();
    for b in 0..args.buffers {
        let buf = Udmabuf::new(size)?;
        let options = ExportOptions::new().private_data(PrivData::new(buffer_tag(b).as_bytes())?);
        hids.push(dev.export(&buf, peer, &options)?);
        bufs.push(buf);
    }
    let mut costs = Vec::with_capacity(args.frames as usize);
    let started = Instant::now();
    for frame in 0..args.frames {
        let hid = &hids[frame as usize % hids.len()];
        let data = frame_data(frame)?;
        let t = Instant::now();
        dev.update(hid, data)
            .map_err(|e| Failure::Error(format!("frame {frame}: {e}")))?;
        costs.push(t.elapsed());
    }
    let all = started.elapsed();
    costs.sort_unstable();
    let at = |q: f64| costs[((costs.len() - 1) as f64 * q) as usize];
    out.line(
        format!(
            "announced {} frames in {} buffers in {:.1} ms: per call p50 {:?}, p99 {:?}, max {:?}",
            args.frames,
            args.buffers,
            all.as_secs_f64() * 1e3,
            at(0.5),
            at(0.99),
            at(1.0)
        ),
        json!({
            "frames": args.frames,
            "buffers": args.buffers,
            "total_us": all.as_micros() as u64,
            "call_p50_ns": at(0.5).as_nanos() as u64,
            "call_p99_ns": at(0.99).as_nanos() as u64,
            "call_max_ns": at(1.0).as_nanos() as u64,
        }),
    );
    // The receiver maps and releases buffer 0 once it heard every newest
    // frame: only then may we unexport.
    wait_for(dev, &hids[0], EventType::Released)?;
    for hid in &hids {
        dev.unexport(hid, Duration::ZERO)?;
    }
    for hid in &hids {
        wait_for(dev, hid, EventType::GrantsEnded)?;
    }
    Ok(())
}

fn wait_for(dev: &Device, hid: &HyperDmabufId, kind: EventType) -> Result<(), Failure> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = dev.wait_event(Some(left))? else {
            return Err(Failure::Timeout(format!("no {kind:?} event for {hid}")));
        };
        if event.kind == kind && event.hid.is_some_and(|h| h.matches(hid)) {
            return Ok(());
        }
    }
}

/// What the receiver knows of one buffer.
struct Heard {
    hid: HyperDmabufId,
    /// The newest frame it heard of.
    newest: Option<u64>,
}

fn receive(dev: &Device, args: &FramesArgs, out: &Output) -> Result<(), Failure> {
    let sender = DomId::new(args.domain)?;
    let deadline = Instant::now() + PEER_TIMEOUT;
    let mut ring: HashMap<usize, Heard> = HashMap::new();
    let mut last: Option<u64> = None;
    let (mut updates, mut lost, mut queried) = (0u64, 0u64, 0u64);
    let all_newest = |ring: &HashMap<usize, Heard>| {
        ring.len() == args.buffers && ring.iter().all(|(b, h)| h.newest == args.newest(*b))
    };
    while !all_newest(&ring) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let got: Vec<_> = (0..args.buffers)
                .map(|b| ring.get(&b).and_then(|h| h.newest))
                .collect();
            return Err(Failure::Timeout(format!(
                "newest frames {got:?}, expected {:?}",
                (0..args.buffers)
                    .map(|b| args.newest(b))
                    .collect::<Vec<_>>()
            )));
        }
        let Some(event) = dev.wait_event(Some(left.min(Duration::from_secs(1))))? else {
            // Quiet for a second: whatever was lost, the buffers' private
            // data holds each one's newest frame.
            for h in ring.values_mut() {
                let newest = parse_frame(&dev.private_data(&h.hid)?);
                if newest.is_some() {
                    queried += 1;
                    h.newest = h.newest.max(newest);
                }
            }
            continue;
        };
        if event.peer != sender {
            continue;
        }
        lost += u64::from(event.lost);
        let Some(hid) = event.hid else {
            continue;
        };
        match event.kind {
            EventType::NewExport => {
                // Announced now, or before this reader opened the device:
                // then the event carries its private data as it is, the
                // newest frame.
                let tag = String::from_utf8_lossy(event.priv_data.as_bytes()).into_owned();
                let newest = parse_frame(&event.priv_data);
                let place = (0..args.buffers).find(|b| buffer_tag(*b) == tag);
                let place = place.or(newest.map(|f| f as usize % args.buffers));
                if let Some(b) = place {
                    ring.insert(b, Heard { hid, newest });
                }
            }
            EventType::Update => {
                let Some((b, h)) = ring.iter_mut().find(|(_, h)| h.hid.matches(&hid)) else {
                    continue;
                };
                let frame = parse_frame(&event.priv_data).ok_or_else(|| {
                    Failure::Mismatch(format!("update of buffer {b} with {:?}", event.priv_data))
                })?;
                if frame as usize % args.buffers != *b {
                    return Err(Failure::Mismatch(format!("frame {frame} in buffer {b}")));
                }
                if last.is_some_and(|l| frame <= l) {
                    return Err(Failure::Mismatch(format!(
                        "frame {frame} heard after frame {}",
                        last.unwrap_or_default()
                    )));
                }
                last = Some(frame);
                // A read of its private data may have been newer.
                h.newest = h.newest.max(Some(frame));
                updates += 1;
            }
            _ => {}
        }
    }
    out.line(
        format!(
            "heard {updates} of {} frames in order, each buffer's newest among them \
             ({lost} events lost, {queried} private data read)",
            args.frames
        ),
        json!({ "frames": args.frames, "heard": updates, "lost": lost, "queried": queried }),
    );
    // Tell the sender: map buffer 0, then let it go.
    let first = ring.get(&0).map(|h| h.hid).ok_or("no buffer 0")?;
    drop(dev.import(&first, false)?);
    Ok(())
}
