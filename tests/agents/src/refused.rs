// SPDX-License-Identifier: MIT
//! `hdmabuf-agent refused`: exports a dma-buf the driver must refuse to
//! grant, made by the test module's `/sys/kernel/debug/hyper_dmabuf/refuse`
//! as real exporters can make it (device memory, a size that is not a
//! whole number of pages, a buffer starting inside a page, segments in
//! part of a page), or a buffer
//! imported from another domain, and checks
//! the export fails with the errno docs/uapi.md gives (`EINVAL`). The
//! scenario checks the kernel log's line that says why.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use clap::{Args, ValueEnum};
use hdmabuf::{Failure, Output};
use hyper_dmabuf_client::{Device, DomId, ExportOptions, HyperDmabufId};
use serde_json::json;

/// The test module's file that makes such dma-bufs.
const REFUSE_PATH: &str = "/sys/kernel/debug/hyper_dmabuf/refuse";

/// A kind of dma-buf the driver refuses.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    /// One page of device memory (no struct page), as VRAM mapped for a
    /// peer.
    NotRam,
    /// 4 KiB and 512 bytes.
    PartialPage,
    /// Two pages' worth, starting 512 bytes into a page.
    Offset,
    /// Two pages' size mapped as half a page and a page.
    Ragged,
    /// A buffer another domain exported (--id), imported here: its pages
    /// are that domain's, which only it can grant.
    Imported,
}

/// `hdmabuf-agent refused`.
#[derive(Args)]
pub(crate) struct RefusedArgs {
    /// What kind of dma-buf to export.
    #[arg(value_enum)]
    kind: Kind,
    /// The domain to try to share it with (one the driver is connected
    /// to: the refusal must come from the buffer, not the peer).
    #[arg(long, short)]
    domain: u32,
    /// For `imported`: the id of the buffer to import.
    #[arg(long, required_if_eq("kind", "imported"))]
    id: Option<HyperDmabufId>,
}

/// A new dma-buf of `kind` from the test module.
fn make(kind: Kind) -> Result<OwnedFd, Failure> {
    let name = kind
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    let fail = |e: std::io::Error| Failure::Error(format!("{REFUSE_PATH} ({name}): {e}"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(REFUSE_PATH)
        .map_err(fail)?;
    file.write_all(name.as_bytes()).map_err(fail)?;
    let mut answer = String::new();
    file.read_to_string(&mut answer).map_err(fail)?;
    let fd: i32 = answer
        .trim()
        .strip_prefix("fd=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Failure::Error(format!("{REFUSE_PATH}: {answer:?}")))?;
    // SAFETY: the test module installed `fd` in this process for the
    // dma-buf it made, and nothing else here knows of it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn run(args: &RefusedArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let domain = DomId::new(args.domain)
        .map_err(|e| Failure::Error(format!("--domain {}: {e}", args.domain)))?;
    let dev = Device::open_path(device)?;
    let buffer = match (args.kind, &args.id) {
        (Kind::Imported, Some(id)) => dev.import(id, false)?.into(),
        (Kind::Imported, None) => return Err(Failure::Error("imported: no --id".into())),
        (kind, _) => make(kind)?,
    };
    match dev.export(&buffer, domain, &ExportOptions::new()) {
        Ok(hid) => Err(Failure::Error(format!("the driver exported it as {hid}"))),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            out.line(
                format!("refused with EINVAL: {e}"),
                json!({ "refused": "EINVAL" }),
            );
            Ok(())
        }
        Err(e) => Err(Failure::Error(format!("refused, but not with EINVAL: {e}"))),
    }
}
