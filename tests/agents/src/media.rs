// SPDX-License-Identifier: MIT
//! Buffers of real drivers (issue 14), rather than udmabufs of our own.
//!
//! `hdmabuf-agent export-from` exports a buffer another driver made,
//! filled with the test pattern; the importer checks its bytes as for any
//! other export (`hdmabuf import --verify`):
//!
//! * `vgem`: a GEM buffer of the kernel's virtual GEM driver, exported
//!   with PRIME, as a GPU driver's buffers are;
//! * `vivid`: a V4L2 capture buffer of the kernel's virtual camera, with
//!   a frame captured into it, exported with `VIDIOC_EXPBUF`.
//!
//! `hdmabuf-agent import-to vivid` imports a buffer and hands it to vivid
//! (`V4L2_MEMORY_DMABUF`): as a frame to show (output), or to capture
//! into (capture: a real device writing into another domain's pages).

mod card;
mod stream;
mod v4l2;
pub(crate) mod vgem;
mod vivid;
mod vkms;

use std::ops::ControlFlow;

use clap::Subcommand;
use hdmabuf::{check_pattern, follow_export, ExportArgs, Failure, Output};
use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_client::{
    CpuAccess, Device, DmaBuf, DomId, ExportOptions, HyperDmabufId, Mapping, PrivData,
};
use serde_json::json;

pub(crate) use stream::{camera, display, CameraArgs, DisplayArgs};
pub(crate) use v4l2::Direction;

/// What `export-from` takes besides the driver.
#[derive(clap::Args)]
pub(crate) struct FromArgs {
    #[command(flatten)]
    export: ExportArgs,
    /// After an importer released it, print the digest of the buffer's
    /// bytes (to compare with the digest a writing importer printed).
    #[arg(long)]
    digest: bool,
}

/// Which driver makes the buffer.
#[derive(Subcommand)]
pub(crate) enum Producer {
    /// A vgem GEM buffer (a "dumb" buffer of 1024 32-bit pixels a line),
    /// exported with PRIME; the options of `hdmabuf export`.
    Vgem(FromArgs),
    /// A vivid capture buffer holding a frame of its webcam (XR24, the
    /// largest of its sizes that fits in --size), exported with
    /// VIDIOC_EXPBUF; the options of `hdmabuf export`.
    Vivid {
        /// vivid's instance (0 allocates with vmalloc, 1 with
        /// dma-contig, as the scenarios load it).
        #[arg(long, default_value_t = 0)]
        instance: u32,
        #[command(flatten)]
        from: FromArgs,
    },
}

/// Which driver takes the buffer.
#[derive(Subcommand)]
pub(crate) enum Consumer {
    /// Queue the buffer to vivid: as a frame its output shows, or as the
    /// buffer its camera captures a frame into (then imported
    /// read-write). Prints the frame's number and, for a capture, the
    /// digest of the buffer's bytes afterwards.
    Vivid {
        /// The buffer's id.
        id: HyperDmabufId,
        /// vivid's instance.
        #[arg(long, default_value_t = 0)]
        instance: u32,
        /// Which of vivid's queues.
        #[arg(long, value_enum)]
        queue: Direction,
        /// Check that the buffer holds the pattern of this seed before
        /// it is queued (and, for a capture, that vivid changed it).
        #[arg(long)]
        verify: Option<u64>,
    },
}

pub(crate) fn export_from(producer: &Producer, device: &str, out: &Output) -> Result<(), Failure> {
    match producer {
        Producer::Vgem(from) => {
            let gpu = vgem::Vgem::open()?;
            let buffer = gpu.buffer(from.export.size)?;
            export(from, "vgem", buffer, device, out)
        }
        Producer::Vivid { instance, from } => {
            let captured = vivid::capture_and_export(*instance, from.export.size)?;
            let format = captured.format;
            out.line(
                format!(
                    "vivid {instance} captured frame {} ({}x{} XR24) into its buffer",
                    captured.sequence, format.width, format.height
                ),
                json!({ "captured": captured.sequence, "width": format.width,
                        "height": format.height, "instance": instance }),
            );
            export(from, "vivid", captured.buffer, device, out)
        }
    }
}

/// Fills `buffer` with the pattern, exports it and follows the export
/// as `hdmabuf export` does.
fn export(
    from: &FromArgs,
    producer: &str,
    buffer: DmaBuf,
    device: &str,
    out: &Output,
) -> Result<(), Failure> {
    let args = &from.export;
    let domain = DomId::new(args.domain)
        .map_err(|e| Failure::Error(format!("--domain {}: {e}", args.domain)))?;
    let priv_data = PrivData::new(args.r#priv.as_bytes())
        .map_err(|e| Failure::Error(format!("--priv: {e}")))?;
    let map = buffer.map(true)?;
    let access = CpuAccess::begin(&buffer, true)?;
    pattern::fill_mapping(args.seed, &map);
    access.end()?;
    let dev = Device::open_path(device)?;
    let options = ExportOptions::new()
        .writable(args.rw)
        .private_data(priv_data);
    let hid = dev.export(&buffer, domain, &options)?;
    let (size, seed) = (buffer.size(), args.seed);
    out.line(
        format!("exported {hid} ({size} bytes of {producer}, seed {seed}) to domain {domain}"),
        json!({ "exported": hid.to_string(), "producer": producer, "size": size,
                "seed": seed, "domain": domain.get(), "rw": args.rw }),
    );
    let released = follow_export(&dev, out, &hid, args.hold, args.once)?;
    if (args.expect_seed.is_some() || from.digest) && !released {
        return Err(Failure::Error(
            "the buffer was never released by an importer".into(),
        ));
    }
    let access = CpuAccess::begin(&buffer, false)?;
    if let Some(expect) = args.expect_seed {
        check_pattern(out, expect, &map)?;
    }
    if from.digest {
        print_digest(out, &map);
    }
    access.end()?;
    Ok(())
}

pub(crate) fn import_to(consumer: &Consumer, device: &str, out: &Output) -> Result<(), Failure> {
    let Consumer::Vivid {
        id,
        instance,
        queue,
        verify,
    } = consumer;
    let capture = *queue == Direction::Capture;
    let dev = Device::open_path(device)?;
    let imported = dev.import(id, capture)?;
    if capture && !imported.writable {
        return Err(Failure::Error(format!(
            "{id} is read-only here: vivid would capture into it anyway"
        )));
    }
    let map = imported.map()?;
    if let Some(seed) = verify {
        let access = CpuAccess::begin(&imported, false)?;
        check_pattern(out, *seed, &map)?;
        access.end()?;
    }
    let queued = vivid::queue_one(*instance, *queue, &imported, imported.size)?;
    let (format, frame) = (queued.format, queued.frame);
    let shape = format!("{}x{} XR24", format.width, format.height);
    if !capture {
        out.line(
            format!(
                "vivid {instance} showed {id} as frame {} ({shape})",
                frame.sequence
            ),
            json!({ "shown": frame.sequence, "width": format.width, "height": format.height }),
        );
        return Ok(());
    }
    let access = CpuAccess::begin(&imported, false)?;
    if let Some(seed) = verify {
        // vivid's frame, not the exporter's pattern, is in the buffer now.
        match pattern::first_mismatch_in(*seed, &map) {
            Some(at) if at < frame.bytesused as usize => {}
            _ => {
                return Err(Failure::Mismatch(format!(
                    "vivid's frame {} is not in {id}: its first {} bytes still hold the pattern",
                    frame.sequence, frame.bytesused
                )))
            }
        }
    }
    out.line(
        format!(
            "vivid {instance} captured frame {} ({shape}) into {id}",
            frame.sequence
        ),
        json!({ "captured": frame.sequence, "bytes": frame.bytesused,
                "width": format.width, "height": format.height }),
    );
    print_digest(out, &map);
    access.end()?;
    Ok(())
}

/// Prints the digest of every byte of `map` (FNV-1a, 64 bits: a test's
/// check that two domains see the same bytes, not a cryptographic one).
fn print_digest(out: &Output, map: &Mapping) {
    let mut hash = FNV_BASIS;
    map.read_chunks::<()>(|_, piece| {
        hash = piece.iter().fold(hash, |h, &byte| fnv(h, u64::from(byte)));
        ControlFlow::Continue(())
    });
    out.line(
        format!("digest {hash:016x} of {} bytes", map.len()),
        json!({ "digest": format!("{hash:016x}"), "bytes": map.len() }),
    );
}

/// FNV-1a's (64 bits) starting value.
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of FNV-1a (64 bits): `value` (a byte, or a pixel) into `hash`.
fn fnv(hash: u64, value: u64) -> u64 {
    (hash ^ value).wrapping_mul(0x0000_0100_0000_01b3)
}
