// SPDX-License-Identifier: MIT
//! `hdmabuf-agent export-from`: export a buffer that a real driver made
//! (issue 14), rather than a udmabuf of our own: the importer on the other
//! side checks its bytes as for any other export (`hdmabuf import
//! --verify`).
//!
//! * `vgem`: a GEM buffer of the kernel's virtual GEM driver, exported
//!   with PRIME, as a GPU driver's buffers are.

mod vgem;

use clap::Subcommand;
use hdmabuf::{check_pattern, follow_export, ExportArgs, Failure, Output};
use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_client::{CpuAccess, Device, DmaBuf, DomId, ExportOptions, PrivData};
use serde_json::json;

/// Which driver makes the buffer.
#[derive(Subcommand)]
pub(crate) enum Producer {
    /// A vgem GEM buffer (a "dumb" buffer of 1024 32-bit pixels a line),
    /// exported with PRIME; the options of `hdmabuf export`.
    Vgem(ExportArgs),
}

pub(crate) fn run(producer: &Producer, device: &str, out: &Output) -> Result<(), Failure> {
    match producer {
        Producer::Vgem(args) => {
            let gpu = vgem::Vgem::open()?;
            let buffer = gpu.buffer(args.size)?;
            export(args, "vgem", buffer, device, out)
        }
    }
}

/// Fills `buffer` with the pattern, exports it and follows the export
/// as `hdmabuf export` does.
fn export(
    args: &ExportArgs,
    producer: &str,
    buffer: DmaBuf,
    device: &str,
    out: &Output,
) -> Result<(), Failure> {
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
    if let Some(expect) = args.expect_seed {
        if !released {
            return Err(Failure::Error(
                "the buffer was never released by an importer".into(),
            ));
        }
        let access = CpuAccess::begin(&buffer, false)?;
        check_pattern(out, expect, &map)?;
        access.end()?;
    }
    Ok(())
}
