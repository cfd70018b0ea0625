// SPDX-License-Identifier: MIT
//! `hdmabuf-agent fences`: fences that cross domains (protocol version 3,
//! docs/protocol.md section 15), with vgem's fence ioctls as the
//! exporting domain's writer.
//!
//! `send` (the exporter) makes a vgem buffer and exports it. Each round it
//! writes the round's pattern, attaches a vgem write fence (a writer still
//! busy) and announces the frame with `HDMABUF_IOCTL_UPDATE`; once the
//! receiver says it saw the fence pending, it signals the vgem fence and
//! times how long the receiver takes to say it saw the signal. A ping
//! round trip of two UPDATEs is timed next to it.
//!
//! `receive` (the importer) imports the buffer. Each round, on the frame's
//! event, it checks that the imported dma-buf waits: a sync_file from
//! `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` and `poll` on the dma-buf are not
//! ready. After telling the sender, it waits for the sync_file (within a
//! bound), checks it signalled without error, reads the round's pattern
//! (its CPU access waits for the fence too) and says so. In round 2 it
//! imports the buffer anew first: a new dma-buf starts with the pending
//! fence. With `--timeout-round`, a last round's fence is never signalled
//! by the sender: the receiver's sync_file must end with `ETIMEDOUT`
//! after the driver's `fence_timeout_ms`, well before vgem's own 10 s.
//!
//! The receiver answers through a small buffer of its own exported to the
//! sender: each answer is an UPDATE of it (`armed N`, `seen N`, `pong N`,
//! `timedout N`).

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdmabuf::{Failure, Output};
use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_client::{
    CpuAccess, Device, DomId, EventType, ExportOptions, HyperDmabufId, Imported, PrivData, Udmabuf,
};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::ioctl::{ioctl, opcode, Opcode, Updater};
use serde_json::json;

use crate::bench::percentile;
use crate::media::vgem::Vgem;

/// How long any wait for the peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the sender's signal the receiver's fence may take to
/// signal: a few ring round trips on a loaded host, far below vgem's own
/// 10 s.
const SIGNAL_BOUND: Duration = Duration::from_secs(3);
/// The private data of the sender's buffer, and of the receiver's
/// answers' buffer.
const FRAMES_TAG: &str = "fences";
const ANSWERS_TAG: &str = "fences-answers";

/// `ETIMEDOUT`, what a fence the peer never signals ends with.
const ETIMEDOUT: i32 = 110;

/// `struct dma_buf_export_sync_file` (`uapi/linux/dma-buf.h`).
#[repr(C)]
struct ExportSyncFile {
    flags: u32,
    fd: i32,
}
/// `DMA_BUF_SYNC_READ`: the fences a reader waits for.
const SYNC_READ: u32 = 1;
const EXPORT_SYNC_FILE: Opcode = opcode::read_write::<ExportSyncFile>(b'b', 2);

/// `struct sync_file_info` (`uapi/linux/sync_file.h`), without its array.
#[repr(C)]
struct SyncFileInfo {
    name: [u8; 32],
    status: i32,
    flags: u32,
    num_fences: u32,
    pad: u32,
    sync_fence_info: u64,
}
const SYNC_FILE_INFO: Opcode = opcode::read_write::<SyncFileInfo>(b'>', 4);

/// Shared by both sides.
#[derive(Args)]
pub(crate) struct FencesArgs {
    /// The other domain.
    #[arg(long, short)]
    domain: u32,
    /// Rounds whose fence the sender signals.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// A last round whose fence the sender never signals: the receiver's
    /// ends with ETIMEDOUT (load the receiver's module with a
    /// `fence_timeout_ms` below vgem's 10 s).
    #[arg(long)]
    timeout_round: bool,
}

/// `hdmabuf-agent fences`.
#[derive(Subcommand)]
pub(crate) enum FencesCommand {
    /// Export a vgem buffer and fence its frames.
    Send {
        #[command(flatten)]
        args: FencesArgs,
        /// Bytes of the buffer.
        #[arg(long, default_value_t = 1 << 20)]
        size: u64,
        /// Print the timings as `bench|` lines for `make bench`
        /// (metric `fence_signal`, anchor `update_rtt`).
        #[arg(long)]
        bench: bool,
    },
    /// Import it and check that its readers wait for the sender's fences.
    Receive(FencesArgs),
}

/// Runs `command`.
pub(crate) fn run(command: &FencesCommand, device: &str, out: &Output) -> Result<(), Failure> {
    let dev = Device::open_path(device)?;
    match command {
        FencesCommand::Send { args, size, bench } => send(&dev, args, *size, *bench, out),
        FencesCommand::Receive(args) => receive(&dev, args, out),
    }
}

fn data(text: &str) -> Result<PrivData, Failure> {
    Ok(PrivData::new(text.as_bytes())?)
}

/// The next event of `peer` about `hid` (any of ours, if `None`) of kind
/// `kind` whose private data is `text`; other events are skipped.
fn wait_for(
    dev: &Device,
    peer: DomId,
    kind: EventType,
    hid: Option<&HyperDmabufId>,
    text: &str,
) -> Result<HyperDmabufId, Failure> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = dev.wait_event(Some(left))? else {
            return Err(Failure::Timeout(format!(
                "no {kind:?} \"{text}\" from {peer}"
            )));
        };
        let about = event.hid.filter(|h| hid.is_none_or(|want| h.matches(want)));
        if event.peer == peer && event.kind == kind && event.priv_data.as_bytes() == text.as_bytes()
        {
            if let Some(h) = about {
                return Ok(h);
            }
        }
    }
}

fn pattern_seed(round: u32) -> u64 {
    0xfe0c_e000 + u64::from(round)
}

fn send(
    dev: &Device,
    args: &FencesArgs,
    size: u64,
    bench: bool,
    out: &Output,
) -> Result<(), Failure> {
    let peer = DomId::new(args.domain)?;
    let vgem = Vgem::open()?;
    let mut buffer = vgem.fenceable(size)?;
    let map = buffer.dmabuf.map(true)?;
    let options = ExportOptions::new().private_data(data(FRAMES_TAG)?);
    let hid = dev.export(&buffer.dmabuf, peer, &options)?;
    let answers = wait_for(dev, peer, EventType::NewExport, None, ANSWERS_TAG)?;
    let answered = |text: String| wait_for(dev, peer, EventType::Update, Some(&answers), &text);
    let (mut signal, mut ping) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        // The writer finished this frame's pixels, and a job of its is
        // still in flight: readers must wait for it.
        let access = CpuAccess::begin(&buffer.dmabuf, true)?;
        pattern::fill_mapping(pattern_seed(round), &map);
        access.end()?;
        let fence = vgem.attach_write_fence(&buffer)?;
        dev.update(&hid, data(&format!("round {round}"))?)?;
        answered(format!("armed {round}"))?;
        let t = Instant::now();
        vgem.signal(fence)?;
        answered(format!("seen {round}"))?;
        signal.push(t.elapsed());
        let t = Instant::now();
        dev.update(&hid, data(&format!("ping {round}"))?)?;
        answered(format!("pong {round}"))?;
        ping.push(t.elapsed());
    }
    if args.timeout_round {
        let round = args.rounds + 1;
        // Never signalled here: vgem ends it by itself after 10 s, long
        // after the receiver's timeout.
        let _fence = vgem.attach_write_fence(&buffer)?;
        dev.update(&hid, data(&format!("round {round}"))?)?;
        answered(format!("timedout {round}"))?;
    }
    if bench {
        for (path, samples) in [("ours", &signal), ("update_rtt", &ping)] {
            let samples: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
            let line = json!({ "path": path, "metric": "fence_signal", "size": size,
                               "samples_ns": samples });
            println!("bench| {line}");
        }
    }
    let (signal_p50, ping_p50) = (percentile(&signal, 0.5), percentile(&ping, 0.5));
    let (signal_p99, ping_p99) = (percentile(&signal, 0.99), percentile(&ping, 0.99));
    out.line(
        format!(
            "{} fenced frames: signal to the importer's answer p50 {signal_p50:?} (p99 \
             {signal_p99:?}); an UPDATE and its answer p50 {ping_p50:?} (p99 {ping_p99:?})",
            args.rounds
        ),
        json!({
            "rounds": args.rounds,
            "signal_answer_p50_ns": signal_p50.as_nanos() as u64,
            "signal_answer_p99_ns": signal_p99.as_nanos() as u64,
            "round_trip_p50_ns": ping_p50.as_nanos() as u64,
            "round_trip_p99_ns": ping_p99.as_nanos() as u64,
        }),
    );
    vgem.close(&mut buffer)?;
    dev.unexport(&hid, Duration::ZERO)?;
    wait_for_grants_ended(dev, &hid)
}

fn wait_for_grants_ended(dev: &Device, hid: &HyperDmabufId) -> Result<(), Failure> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = dev.wait_event(Some(left))? else {
            return Err(Failure::Timeout(format!("{hid}: its grants never ended")));
        };
        if event.kind == EventType::GrantsEnded && event.hid.is_some_and(|h| h.matches(hid)) {
            return Ok(());
        }
    }
}

/// A sync_file of the fences a reader of `dmabuf` waits for.
fn export_sync_file(dmabuf: BorrowedFd<'_>) -> Result<OwnedFd, Failure> {
    let mut record = ExportSyncFile {
        flags: SYNC_READ,
        fd: -1,
    };
    // SAFETY: the command's record is `ExportSyncFile`, numbers only.
    unsafe { ioctl(dmabuf, Updater::<EXPORT_SYNC_FILE, _>::new(&mut record)) }
        .map_err(|e| Failure::Error(format!("DMA_BUF_IOCTL_EXPORT_SYNC_FILE: {e}")))?;
    // SAFETY: the kernel installed a new descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(record.fd) })
}

/// A sync_file's status: 1 signalled, 0 not yet, negative the error it
/// ended with.
fn sync_file_status(fence: &OwnedFd) -> Result<i32, Failure> {
    let mut info = SyncFileInfo {
        name: [0; 32],
        status: 0,
        flags: 0,
        num_fences: 0,
        pad: 0,
        sync_fence_info: 0,
    };
    // SAFETY: the command's record is `SyncFileInfo`; with `num_fences`
    // zero the kernel follows no pointer in it.
    unsafe { ioctl(fence.as_fd(), Updater::<SYNC_FILE_INFO, _>::new(&mut info)) }
        .map_err(|e| Failure::Error(format!("SYNC_IOC_FILE_INFO: {e}")))?;
    Ok(info.status)
}

/// Whether `fd` turns readable within `limit`.
fn readable(fd: BorrowedFd<'_>, limit: Duration) -> Result<bool, Failure> {
    let timeout = Timespec::try_from(limit).map_err(|e| Failure::Error(e.to_string()))?;
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    Ok(poll(&mut fds, Some(&timeout))? > 0)
}

/// Checks that readers of `imported` wait now: its sync_file and the
/// dma-buf itself are not ready. Returns the sync_file.
fn check_waits(imported: &Imported, round: u32) -> Result<OwnedFd, Failure> {
    let fence = export_sync_file(imported.fd.as_fd())?;
    let status = sync_file_status(&fence)?;
    if status != 0 || readable(fence.as_fd(), Duration::ZERO)? {
        return Err(Failure::Mismatch(format!(
            "round {round}: the imported buffer's fence is not pending (status {status}) \
             before the sender signalled"
        )));
    }
    if readable(imported.fd.as_fd(), Duration::ZERO)? {
        return Err(Failure::Mismatch(format!(
            "round {round}: poll on the imported dma-buf is ready before the sender signalled"
        )));
    }
    Ok(fence)
}

fn receive(dev: &Device, args: &FencesArgs, out: &Output) -> Result<(), Failure> {
    let sender = DomId::new(args.domain)?;
    let answers_buf = Udmabuf::new(4096)?;
    let options = ExportOptions::new().private_data(data(ANSWERS_TAG)?);
    let answers = dev.export(&answers_buf, sender, &options)?;
    let answer = |text: String| dev.update(&answers, data(&text)?).map_err(Failure::from);
    let hid = wait_for(dev, sender, EventType::NewExport, None, FRAMES_TAG)?;
    let heard = |text: String| wait_for(dev, sender, EventType::Update, Some(&hid), &text);
    let mut imported = dev.import(&hid, false)?;
    let mut waited = Vec::new();
    for round in 1..=args.rounds {
        heard(format!("round {round}"))?;
        if round == 2 {
            // A new dma-buf of the buffer starts with the pending fence.
            drop(imported);
            imported = dev.import(&hid, false)?;
        }
        let fence = check_waits(&imported, round)?;
        answer(format!("armed {round}"))?;
        let t = Instant::now();
        if !readable(fence.as_fd(), SIGNAL_BOUND)? {
            return Err(Failure::Timeout(format!(
                "round {round}: the fence did not signal within {SIGNAL_BOUND:?} of the sender's"
            )));
        }
        waited.push(t.elapsed());
        let status = sync_file_status(&fence)?;
        if status != 1 {
            return Err(Failure::Mismatch(format!(
                "round {round}: the fence ended with status {status}, not signalled"
            )));
        }
        let map = imported.map()?;
        let access = CpuAccess::begin(&imported.fd, false)?;
        let mismatch = pattern::first_mismatch_in(pattern_seed(round), &map);
        access.end()?;
        if let Some(at) = mismatch {
            return Err(Failure::Mismatch(format!(
                "round {round}: byte {at} is not the frame's once its fence signalled"
            )));
        }
        answer(format!("seen {round}"))?;
        heard(format!("ping {round}"))?;
        answer(format!("pong {round}"))?;
    }
    if args.timeout_round {
        let round = args.rounds + 1;
        heard(format!("round {round}"))?;
        let fence = check_waits(&imported, round)?;
        let t = Instant::now();
        if !readable(fence.as_fd(), Duration::from_secs(9))? {
            return Err(Failure::Timeout(format!(
                "round {round}: a fence never signalled did not time out within 9 s"
            )));
        }
        let status = sync_file_status(&fence)?;
        if status != -ETIMEDOUT {
            return Err(Failure::Mismatch(format!(
                "round {round}: a fence never signalled ended with status {status}, not \
                 -ETIMEDOUT"
            )));
        }
        out.line(
            format!(
                "round {round}: the fence nobody signalled ended ETIMEDOUT after {:?}",
                t.elapsed()
            ),
            json!({ "timed_out_after_ns": t.elapsed().as_nanos() as u64 }),
        );
        answer(format!("timedout {round}"))?;
    }
    let waited_p50 = percentile(&waited, 0.5);
    out.line(
        format!(
            "{} fenced frames: each waited for the sender's fence, signalled within \
             {SIGNAL_BOUND:?} (p50 {waited_p50:?} from the answer), held its frame",
            args.rounds
        ),
        json!({ "rounds": args.rounds, "waited_p50_ns": waited_p50.as_nanos() as u64 }),
    );
    drop(imported);
    dev.unexport(&answers, Duration::ZERO)?;
    wait_for_grants_ended(dev, &answers)
}
