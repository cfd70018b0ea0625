// SPDX-License-Identifier: MIT
//! `hdmabuf-agent kcheck`: imports a buffer, checks it holds its test
//! pattern, and has the driver read it the way a kernel importer (a GPU or
//! display driver) would — attach, map into an sg table, vmap — through
//! the test file `/sys/kernel/debug/hyper_dmabuf/check`, which reports the
//! page and segment counts and the wrapping sum of the buffer's 64-bit
//! words. We compare them with what we see through our own mapping.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, BorrowedFd};

use clap::Args;
use hdmabuf::{Failure, Output};
use hyper_dmabuf_client::testing::Verified;
use hyper_dmabuf_client::{Device, Mapping};
use hyper_dmabuf_common::id::HyperDmabufId;
use serde_json::json;

/// `hdmabuf-agent kcheck`.
#[derive(Args)]
pub(crate) struct KcheckArgs {
    /// The buffer id, as printed by `hdmabuf export` or `hdmabuf watch`.
    id: HyperDmabufId,
    /// The seed of the test pattern the buffer holds.
    #[arg(long)]
    verify: u64,
}

/// Imports the buffer read-only, verifies every byte, runs the driver's
/// check on it, and releases it.
pub(crate) fn run(args: &KcheckArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let imported = Device::open_path(device)?.import(&args.id, false)?;
    let size = imported.size;
    let buffer = Verified::new(imported.fd, size, false, args.verify)?;
    out.line(
        format!(
            "imported {}: verified {size} bytes (seed {})",
            args.id, args.verify
        ),
        json!({ "imported": args.id.to_string(), "verified": size, "seed": args.verify }),
    );
    let report = check(buffer.fd(), buffer.mapping())?;
    out.line(
        format!("kernel importer view: {report}"),
        json!({ "kernel_check": report }),
    );
    Ok(())
}

/// The driver's debugfs test file.
const CHECK_PATH: &str = "/sys/kernel/debug/hyper_dmabuf/check";

/// The wrapping sum of the little-endian 64-bit words of `bytes`.
fn word_sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .fold(0u64, u64::wrapping_add)
}

/// The same over a whole mapping, read a chunk at a time (chunks are
/// whole words, so the sums add up).
fn mapped_word_sum(map: &Mapping) -> u64 {
    let mut sum = 0u64;
    map.read_chunks(|_, piece| {
        sum = sum.wrapping_add(word_sum(piece));
        ControlFlow::<()>::Continue(())
    });
    sum
}

/// Parses `pages=N segments=M mapped=B sum=0xS`.
fn parse(report: &str) -> Option<(u64, u64, u64, u64)> {
    let mut fields = [None; 4];
    for word in report.split_whitespace() {
        let (key, value) = word.split_once('=')?;
        let slot = match key {
            "pages" => 0,
            "segments" => 1,
            "mapped" => 2,
            "sum" => 3,
            _ => continue,
        };
        fields[slot] = if let Some(hex) = value.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else {
            value.parse().ok()
        };
    }
    Some((fields[0]?, fields[1]?, fields[2]?, fields[3]?))
}

/// Runs the driver's check on `fd` and compares it with `map`, the
/// buffer as mapped here. Returns the driver's report.
fn check(fd: BorrowedFd<'_>, map: &Mapping) -> Result<String, String> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CHECK_PATH)
        .map_err(|e| format!("{CHECK_PATH}: {e} (is debugfs mounted, the module loaded?)"))?;
    file.write_all(fd.as_raw_fd().to_string().as_bytes())
        .map_err(|e| format!("the driver could not map the buffer as a kernel importer: {e}"))?;
    let mut report = String::new();
    file.read_to_string(&mut report)
        .map_err(|e| format!("reading {CHECK_PATH}: {e}"))?;
    let report = report.trim().to_string();
    let (pages, segments, mapped, sum) =
        parse(&report).ok_or_else(|| format!("unexpected report from the driver: {report}"))?;
    let expect_pages = map.len() as u64 / 4096;
    let ours = mapped_word_sum(map);
    if pages != expect_pages || mapped != map.len() as u64 || segments == 0 || segments > pages {
        return Err(format!(
            "kernel importer view disagrees: {report} for a {}-byte buffer",
            map.len()
        ));
    }
    if sum != ours {
        return Err(format!(
            "kernel importer read other bytes: sum {sum:#018x}, user space sees {ours:#018x}"
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_driver_report() {
        assert_eq!(
            parse("pages=2 segments=2 mapped=8192 sum=0x00000000000000ff"),
            Some((2, 2, 8192, 255))
        );
        assert_eq!(parse("error=-22"), None);
        assert_eq!(parse("pages=x segments=1 mapped=1 sum=0x1"), None);
    }

    #[test]
    fn sums_words_wrapping() {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        bytes[8..].copy_from_slice(&2u64.to_le_bytes());
        assert_eq!(word_sum(&bytes), 1);
    }
}
