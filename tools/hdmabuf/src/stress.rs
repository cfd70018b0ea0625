//! `hdmabuf stress`: randomized export/import/unexport cycles between two
//! domains, one process in each, for soak tests.
//!
//! The exporter draws each cycle from a seeded generator: a size (one page
//! to `--max-size`, the edges included), read-only or read-write, a
//! pattern, and what happens:
//!
//! * `a` — export, wait until the importer released it, unexport;
//! * `b` — export and unexport at once (the importer may find it revoked);
//! * `c` — export, export the same dma-buf again with new private data
//!   (same id, an UPDATE), then as `a`.
//!
//! Each buffer's private data (`stress i=N seed=S act=A`) tells the
//! importer what to expect; the importer verifies every byte of what it
//! imports. Every cycle ends only when the exporter's grants have ended. A
//! last buffer, `stress end`, tells the importer to stop.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_common::xen::DomId;

use crate::device::{dmabuf_sync, Device};
use crate::{buffer, pattern, sys};

/// What happens to one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Imported, released, then unexported.
    Share,
    /// Unexported at once.
    Revoke,
    /// Exported twice (an update), then as `Share`.
    Update,
}

impl Act {
    fn letter(self) -> char {
        match self {
            Act::Share => 'a',
            Act::Revoke => 'b',
            Act::Update => 'c',
        }
    }

    fn from_letter(c: &str) -> Option<Self> {
        match c {
            "a" => Some(Act::Share),
            "b" => Some(Act::Revoke),
            "c" | "c2" => Some(Act::Update),
            _ => None,
        }
    }
}

/// One cycle of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cycle {
    /// Its number.
    pub(crate) index: u32,
    /// Buffer size in bytes (whole pages).
    pub(crate) size: u64,
    /// Exported read-write.
    pub(crate) rw: bool,
    /// Seed of the buffer's pattern.
    pub(crate) seed: u64,
    /// What happens to it.
    pub(crate) act: Act,
}

/// splitmix64, as the pattern uses: deterministic from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The cycles for `seed`: sizes from one page to `max_size` (every tenth
/// cycle one of the two edges), each act about a third of the time.
pub(crate) fn plan(seed: u64, cycles: u32, max_size: u64) -> Vec<Cycle> {
    let max_pages = (max_size / 4096).max(1);
    let mut rng = Rng(seed);
    (0..cycles)
        .map(|index| {
            let r = rng.next();
            let pages = match index % 10 {
                3 => 1,
                7 => max_pages,
                _ => 1 + rng.next() % max_pages,
            };
            let act = match r % 3 {
                0 => Act::Share,
                1 => Act::Revoke,
                _ => Act::Update,
            };
            Cycle {
                index,
                size: pages * 4096,
                rw: (r >> 8) & 1 == 1,
                seed: rng.next() >> 16,
                act,
            }
        })
        .collect()
}

/// The private data of a cycle's buffer.
pub(crate) fn tag(c: &Cycle, update: bool) -> String {
    let act = if update {
        "c2".to_string()
    } else {
        c.act.letter().to_string()
    };
    format!("stress i={} seed={} act={act}", c.index, c.seed)
}

/// What a buffer's private data says: `Some(None)` for the end marker.
pub(crate) fn parse_tag(text: &str) -> Option<Option<(u32, u64, Act)>> {
    let rest = text.strip_prefix("stress ")?;
    if rest == "end" {
        return Some(None);
    }
    let (mut i, mut seed, mut act) = (None, None, None);
    for word in rest.split(' ') {
        match word.split_once('=')? {
            ("i", v) => i = v.parse().ok(),
            ("seed", v) => seed = v.parse().ok(),
            ("act", v) => act = Act::from_letter(v),
            _ => return None,
        }
    }
    Some(Some((i?, seed?, act?)))
}

/// Counts of a run.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Cycles per act (a, b, c).
    pub(crate) acts: [u32; 3],
    /// Buffers imported and verified.
    pub(crate) verified: u32,
    /// Imports refused because the buffer was already revoked.
    pub(crate) revoked_first: u32,
    /// Bytes shared.
    pub(crate) bytes: u64,
}

fn wait_for(
    dev: &Device,
    hid: &HyperDmabufId,
    kind: EventType,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no {kind:?} for {hid} before the deadline"));
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let Some(event) = dev.next_event(ms).map_err(|e| e.to_string())? else {
            continue;
        };
        lost_is_fatal(&event)?;
        if event.kind == kind && event.hid.as_ref().is_some_and(|h| h.matches(hid)) {
            return Ok(());
        }
    }
}

fn lost_is_fatal(event: &Event) -> Result<(), String> {
    if event.lost > 0 {
        return Err(format!("{} events were lost (reader too slow)", event.lost));
    }
    Ok(())
}

/// The exporting side.
pub(crate) fn export(
    dev: &Device,
    peer: DomId,
    cycles: &[Cycle],
    timeout: Duration,
) -> Result<Summary, String> {
    let deadline = Instant::now() + timeout;
    let mut summary = Summary::default();
    for c in cycles {
        let fail =
            |what: String| format!("cycle {} ({:?}, {} bytes): {what}", c.index, c.act, c.size);
        let buf = buffer::create_udmabuf(c.size, |b| pattern::fill(c.seed, b))
            .map_err(|e| fail(format!("creating the buffer: {e}")))?;
        let priv_data = PrivData::new(tag(c, false).as_bytes()).map_err(|e| fail(e.to_string()))?;
        let hid = dev
            .export(buf.dmabuf.as_fd(), peer, c.rw, priv_data)
            .map_err(|e| fail(e.to_string()))?;
        match c.act {
            Act::Revoke => {}
            Act::Share => wait_for(dev, &hid, EventType::Released, deadline).map_err(fail)?,
            Act::Update => {
                let again =
                    PrivData::new(tag(c, true).as_bytes()).map_err(|e| fail(e.to_string()))?;
                let same = dev
                    .export(buf.dmabuf.as_fd(), peer, c.rw, again)
                    .map_err(|e| fail(format!("exporting again: {e}")))?;
                if !same.matches(&hid) {
                    return Err(fail(format!("exported again as {same}, not {hid}")));
                }
                wait_for(dev, &hid, EventType::Released, deadline).map_err(fail)?;
            }
        }
        dev.unexport(&hid, 0).map_err(|e| fail(e.to_string()))?;
        wait_for(dev, &hid, EventType::GrantsEnded, deadline).map_err(fail)?;
        let slot = match c.act {
            Act::Share => 0,
            Act::Revoke => 1,
            Act::Update => 2,
        };
        summary.acts[slot] += 1;
        summary.bytes += c.size;
    }
    // The end marker: the importer imports it, releases it and stops.
    let end = buffer::create_udmabuf(4096, |b| b.fill(0)).map_err(|e| e.to_string())?;
    let priv_data = PrivData::new(b"stress end").map_err(|e| e.to_string())?;
    let hid = dev
        .export(end.dmabuf.as_fd(), peer, false, priv_data)
        .map_err(|e| format!("end marker: {e}"))?;
    wait_for(dev, &hid, EventType::Released, deadline)?;
    dev.unexport(&hid, 0).map_err(|e| e.to_string())?;
    wait_for(dev, &hid, EventType::GrantsEnded, deadline)?;
    Ok(summary)
}

/// Imports `hid` and checks the pattern of `seed`.
fn import_and_verify(
    dev: &Device,
    hid: &HyperDmabufId,
    rw: bool,
    seed: u64,
) -> Result<u64, std::io::Error> {
    let (fd, size) = dev.import(hid, rw).map_err(|e| e.source)?;
    let len = usize::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
    let map = sys::Mapping::new(fd.as_fd(), len, rw)?;
    dmabuf_sync(fd.as_fd(), true, false)?;
    if let Some(at) = pattern::first_mismatch(seed, map.as_slice()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("byte {at} differs from the pattern of seed {seed}"),
        ));
    }
    dmabuf_sync(fd.as_fd(), false, false)?;
    Ok(size)
}

/// The importing side: runs until the end marker.
pub(crate) fn import(dev: &Device, peer: DomId, timeout: Duration) -> Result<Summary, String> {
    let deadline = Instant::now() + timeout;
    let mut summary = Summary::default();
    // A reader opened while a buffer is announced may be told of it twice
    // (the driver's replay for late readers, then the live event).
    let mut seen = std::collections::HashSet::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no end marker before the deadline".into());
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let Some(event) = dev.next_event(ms).map_err(|e| e.to_string())? else {
            continue;
        };
        lost_is_fatal(&event)?;
        if event.kind != EventType::NewExport || event.peer != peer {
            continue;
        }
        let (Some(hid), Ok(text)) = (event.hid, std::str::from_utf8(event.priv_data.as_bytes()))
        else {
            continue;
        };
        let Some(what) = parse_tag(text) else {
            continue;
        };
        if !seen.insert(hid.to_string()) {
            continue;
        }
        let Some((index, seed, act)) = what else {
            let (fd, _) = dev
                .import(&hid, false)
                .map_err(|e| format!("end marker: {e}"))?;
            drop(fd);
            return Ok(summary);
        };
        let rw = event.flags.bits() & 1 == 1 && seed % 2 == 1;
        match import_and_verify(dev, &hid, rw, seed) {
            Ok(size) => {
                summary.verified += 1;
                summary.bytes += size;
            }
            // Revoked before we got to it (or while we mapped it, when
            // the grants ended under the map): what cycle type b allows.
            Err(e)
                if act == Act::Revoke
                    && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EIO)) =>
            {
                summary.revoked_first += 1;
            }
            Err(e) => return Err(format!("cycle {index} ({act:?}, id {hid}): {e}")),
        }
        let slot = match act {
            Act::Share => 0,
            Act::Revoke => 1,
            Act::Update => 2,
        };
        summary.acts[slot] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_deterministic_and_covers_every_case() {
        let a = plan(7, 200, 4 << 20);
        assert_eq!(a, plan(7, 200, 4 << 20));
        assert_ne!(a, plan(8, 200, 4 << 20));
        for act in [Act::Share, Act::Revoke, Act::Update] {
            assert!(a.iter().filter(|c| c.act == act).count() > 40, "{act:?}");
        }
        assert!(a.iter().any(|c| c.size == 4096));
        assert!(a.iter().any(|c| c.size == 4 << 20));
        assert!(a.iter().any(|c| c.rw) && a.iter().any(|c| !c.rw));
        assert!(a.iter().all(|c| c.size % 4096 == 0 && c.size <= 4 << 20));
    }

    #[test]
    fn tags_round_trip_and_junk_is_refused() {
        let c = Cycle {
            index: 12,
            size: 8192,
            rw: true,
            seed: 345,
            act: Act::Update,
        };
        assert_eq!(
            parse_tag(&tag(&c, false)),
            Some(Some((12, 345, Act::Update)))
        );
        assert_eq!(
            parse_tag(&tag(&c, true)),
            Some(Some((12, 345, Act::Update)))
        );
        assert_eq!(parse_tag("stress end"), Some(None));
        for junk in [
            "",
            "stress",
            "stress i=1",
            "stress i=x seed=1 act=a",
            "stress i=1 seed=2 act=z",
            "other",
        ] {
            assert_eq!(parse_tag(junk), None, "{junk:?}");
        }
    }
}
