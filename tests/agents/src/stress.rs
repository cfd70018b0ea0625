// SPDX-License-Identifier: MIT
//! `hdmabuf-agent stress`: randomized export/import/unexport cycles between two
//! domains, one process in each, for soak tests.
//!
//! The exporter draws each cycle from a seeded generator: a size (one page
//! to `--max-size`, the edges included), read-only or read-write, a
//! pattern, and what happens:
//!
//! * `a` — export, wait until the importer released it, unexport;
//! * `b` — export and unexport at once or after a few milliseconds (the
//!   importer may find it revoked);
//! * `c` — export, export the same dma-buf again with new private data
//!   (same id, an `Update` event for the importer), then as `a`.
//!
//! Each buffer's private data (`stress i=N seed=S act=A`, `act=c2` after
//! the update) tells the importer what to expect; the importer verifies
//! every byte of what it imports. A cycle ends when the exporter's grants
//! have ended; up to `--window` cycles are in flight at once. A last
//! buffer, `stress end`, tells the importer to stop.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use clap::Subcommand;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::{ExportFlags, PrivData};
use hyper_dmabuf_common::xen::DomId;
use serde_json::json;

use hdmabuf::{Failure, Output};
use hdmabuf_agent::rng::Rng;
use hyper_dmabuf_client::testing::{pattern, retry_full, ImportError, Verified};
use hyper_dmabuf_client::{Device, ExportOptions, Udmabuf};

/// `hdmabuf-agent stress ...`.
#[derive(Subcommand)]
pub(crate) enum StressCommand {
    /// Run the cycles, exporting to --domain (run `stress import` there).
    Export {
        /// The importing domain.
        #[arg(long, short)]
        domain: u32,
        /// How many buffers.
        #[arg(long, default_value_t = 200)]
        cycles: u32,
        /// Seed of the plan.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Largest buffer (with K/M/G).
        #[arg(long, default_value = "4M", value_parser = hdmabuf::parse_size)]
        max_size: u64,
        /// Cycles in flight at once.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=4))]
        window: u32,
        /// Give up after this many seconds (exit status 4).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Import and verify what --domain exports, until its end marker.
    Import {
        /// The exporting domain.
        #[arg(long, short)]
        domain: u32,
        /// Give up after this many seconds (exit status 4).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

/// Why a run stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Something other than expected happened.
    Failed(String),
    /// The deadline passed.
    TimedOut(String),
}

impl From<Stop> for Failure {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Failed(m) => Failure::Error(m),
            Stop::TimedOut(m) => Failure::Timeout(m),
        }
    }
}

/// `hdmabuf-agent stress ...`: runs one side and prints its summary.
pub(crate) fn run(command: &StressCommand, device: &str, out: &Output) -> Result<(), Failure> {
    let domain = match command {
        StressCommand::Export { domain, .. } | StressCommand::Import { domain, .. } => *domain,
    };
    let peer = DomId::new(domain).map_err(|e| Failure::Error(format!("--domain {domain}: {e}")))?;
    let dev = Device::open_path(device)?;
    let started = Instant::now();
    let (side, s) = match command {
        StressCommand::Export {
            cycles,
            seed,
            max_size,
            window,
            timeout,
            ..
        } => {
            let plan = plan(*seed, *cycles, *max_size);
            let limit = Duration::from_secs(*timeout);
            (
                "export",
                export(&dev, peer, &plan, *window as usize, limit)?,
            )
        }
        StressCommand::Import { timeout, .. } => {
            ("import", import(&dev, peer, Duration::from_secs(*timeout))?)
        }
    };
    let ms = started.elapsed().as_millis();
    let cycles: u32 = s.acts.iter().sum();
    let [a, b, c] = s.acts;
    let text = if side == "export" {
        format!(
            "stress export to domain {peer}: {cycles} cycles (a shared {a}, b revoked {b}, \
             c updated {c}), {} bytes, {ms} ms",
            s.bytes
        )
    } else {
        format!(
            "stress import from domain {peer}: {cycles} cycles (a shared {a}, b revoked {b}, \
             c updated {c}), {} verified ({} imported again while mapped), {} revoked \
             before import ({} while mapping), {} updates seen, {} bytes, {ms} ms",
            s.verified, s.reimported, s.revoked_first, s.revoked_mid_map, s.updates, s.bytes
        )
    };
    out.line(
        text,
        json!({
            "stress": side,
            "domain": peer.get(),
            "cycles": cycles,
            "shared": a,
            "revoked": b,
            "updated": c,
            "verified": s.verified,
            "reimported": s.reimported,
            "revoked_before_import": s.revoked_first,
            "revoked_while_mapping": s.revoked_mid_map,
            "updates": s.updates,
            "bytes": s.bytes,
            "ms": ms,
        }),
    );
    Ok(())
}

/// What happens to one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Imported, released, then unexported.
    Share,
    /// Unexported at once (or after `delay_ms`).
    Revoke,
    /// Exported twice (an update), then as `Share`.
    Update,
}

impl Act {
    fn letter(self) -> &'static str {
        match self {
            Act::Share => "a",
            Act::Revoke => "b",
            Act::Update => "c",
        }
    }

    fn slot(self) -> usize {
        match self {
            Act::Share => 0,
            Act::Revoke => 1,
            Act::Update => 2,
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
    /// For `Revoke`: the unexport's `delay_ms` (0 to 20).
    pub(crate) delay_ms: u32,
}

/// The cycles for `seed`: sizes from one page to `max_size` rounded down
/// to pages (every tenth cycle one of the two edges), each act about a
/// third of the time, half the revocations delayed by 1 to 20 ms.
pub(crate) fn plan(seed: u64, cycles: u32, max_size: u64) -> Vec<Cycle> {
    let max_pages = (max_size / 4096).max(1);
    let mut rng = Rng::new(seed);
    (0..cycles)
        .map(|index| {
            let r = rng.next_u64();
            let pages = match index % 10 {
                3 => 1,
                7 => max_pages,
                _ => 1 + rng.next_u64() % max_pages,
            };
            let act = match r % 3 {
                0 => Act::Share,
                1 => Act::Revoke,
                _ => Act::Update,
            };
            let delay_ms = if act == Act::Revoke && (r >> 9) & 1 == 1 {
                1 + ((r >> 10) % 20) as u32
            } else {
                0
            };
            Cycle {
                index,
                size: pages * 4096,
                rw: (r >> 8) & 1 == 1,
                seed: rng.next_u64() >> 16,
                act,
                delay_ms,
            }
        })
        .collect()
}

/// What a buffer's private data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// `stress end`: the last buffer.
    End,
    /// `stress i=N seed=S act=A`.
    Cycle {
        /// The cycle number.
        index: u32,
        /// Seed of the pattern.
        seed: u64,
        /// What the exporter does with it.
        act: Act,
        /// `act=c2`: the private data of the re-export.
        updated: bool,
    },
}

/// The private data of a cycle's buffer (`updated`: of its re-export).
pub(crate) fn tag(c: &Cycle, updated: bool) -> String {
    let act = if updated { "c2" } else { c.act.letter() };
    format!("stress i={} seed={} act={act}", c.index, c.seed)
}

/// Parses private data made by [`tag`] (or `stress end`); `None` for
/// anything else.
pub(crate) fn parse_tag(text: &str) -> Option<Tag> {
    let rest = text.strip_prefix("stress ")?;
    if rest == "end" {
        return Some(Tag::End);
    }
    let (mut index, mut seed, mut act) = (None, None, None);
    for word in rest.split(' ') {
        let (slot, value) = word.split_once('=')?;
        let fresh = match slot {
            "i" => index.replace(value.parse::<u32>().ok()?).is_none(),
            "seed" => seed.replace(value.parse::<u64>().ok()?).is_none(),
            "act" => {
                let parsed = match value {
                    "a" => (Act::Share, false),
                    "b" => (Act::Revoke, false),
                    "c" => (Act::Update, false),
                    "c2" => (Act::Update, true),
                    _ => return None,
                };
                act.replace(parsed).is_none()
            }
            _ => return None,
        };
        if !fresh {
            return None;
        }
    }
    let (act, updated) = act?;
    Some(Tag::Cycle {
        index: index?,
        seed: seed?,
        act,
        updated,
    })
}

/// Counts of a run.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Cycles per act (a, b, c).
    pub(crate) acts: [u32; 3],
    /// Buffers imported and verified.
    pub(crate) verified: u32,
    /// Of those, imported again while mapped, their mode checked.
    pub(crate) reimported: u32,
    /// Imports refused because the buffer was already revoked.
    pub(crate) revoked_first: u32,
    /// Of those, revoked while we mapped it (`EIO`).
    pub(crate) revoked_mid_map: u32,
    /// Importer: `Update` events checked.
    pub(crate) updates: u32,
    /// Bytes shared (exporter) or imported and verified (importer).
    pub(crate) bytes: u64,
}

/// The next event before `deadline`; `None` once it has passed. Lost
/// events and the peer going away end the run.
fn next_event(dev: &Device, peer: DomId, deadline: Instant) -> Result<Option<Event>, Stop> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let Some(event) = dev
            .wait_event(Some(left))
            .map_err(|e| Stop::Failed(e.to_string()))?
        else {
            continue;
        };
        // `lost` counts dropped events about the record's own peer: those
        // of other peers are not this run's business.
        if event.lost > 0 && event.peer == peer {
            return Err(Stop::Failed(format!(
                "{} events about domain {peer} were lost before a {:?} event: this \
                 reader's queue overflowed, so a Released or NewExport may be missing",
                event.lost, event.kind
            )));
        }
        if event.kind == EventType::PeerDisconnected && event.peer == peer {
            return Err(Stop::Failed(format!(
                "domain {peer} disconnected (its driver unloaded or it died)"
            )));
        }
        return Ok(Some(event));
    }
}

/// Where an exported cycle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Exported; waiting for the importer's `Released`.
    AwaitRelease,
    /// Unexported; waiting for `GrantsEnded`.
    AwaitGrantsEnded,
}

/// A cycle in flight.
struct Flight {
    cycle: Cycle,
    hid: HyperDmabufId,
    phase: Phase,
    /// Kept (and exported) until the grants have ended.
    buf: Udmabuf,
}

impl Flight {
    fn fail(&self, what: impl std::fmt::Display) -> Stop {
        let c = &self.cycle;
        Stop::Failed(format!(
            "cycle {} (act {}, {} bytes, id {}): {what}",
            c.index,
            c.act.letter(),
            c.size,
            self.hid
        ))
    }
}

/// Exports `c` and does what its act does right away.
fn start(dev: &Device, peer: DomId, c: &Cycle) -> Result<Flight, Stop> {
    let fail = |what: String| {
        Stop::Failed(format!(
            "cycle {} (act {}, {} bytes): {what}",
            c.index,
            c.act.letter(),
            c.size
        ))
    };
    let buf = Udmabuf::with_contents(c.size, |at, b| pattern::fill_at(c.seed, at, b))
        .map_err(|e| fail(format!("creating the buffer: {e}")))?;
    let first = PrivData::new(tag(c, false).as_bytes()).map_err(|e| fail(e.to_string()))?;
    let options = ExportOptions::new().writable(c.rw);
    let hid = retry_full(|| dev.export(&buf, peer, &options.private_data(first)))
        .map_err(|e| fail(e.to_string()))?;
    let mut flight = Flight {
        cycle: *c,
        hid,
        phase: Phase::AwaitRelease,
        buf,
    };
    match c.act {
        Act::Share => {}
        Act::Revoke => {
            dev.unexport(&hid, Duration::from_millis(c.delay_ms.into()))
                .map_err(|e| flight.fail(e))?;
            flight.phase = Phase::AwaitGrantsEnded;
        }
        Act::Update => {
            let again = PrivData::new(tag(c, true).as_bytes()).map_err(|e| flight.fail(e))?;
            let same = retry_full(|| dev.export(&flight.buf, peer, &options.private_data(again)))
                .map_err(|e| flight.fail(format!("exporting again: {e}")))?;
            if !same.matches(&hid) {
                return Err(flight.fail(format!(
                    "exporting the same dma-buf again gave id {same}, expected the same id"
                )));
            }
        }
    }
    Ok(flight)
}

/// The exporting side: every cycle of `cycles`, `window` at a time, then
/// the end marker.
pub(crate) fn export(
    dev: &Device,
    peer: DomId,
    cycles: &[Cycle],
    window: usize,
    timeout: Duration,
) -> Result<Summary, Stop> {
    let deadline = Instant::now() + timeout;
    let mut summary = Summary::default();
    let mut flying: Vec<Flight> = Vec::new();
    let mut todo = cycles.iter();
    loop {
        while flying.len() < window.max(1) {
            let Some(c) = todo.next() else { break };
            flying.push(start(dev, peer, c)?);
        }
        if flying.is_empty() {
            break;
        }
        let Some(event) = next_event(dev, peer, deadline)? else {
            let waits: Vec<String> = flying
                .iter()
                .map(|f| {
                    let wanted = match f.phase {
                        Phase::AwaitRelease => "Released (the importer never let go)",
                        Phase::AwaitGrantsEnded => "GrantsEnded",
                    };
                    format!("cycle {} (id {}) waits for {wanted}", f.cycle.index, f.hid)
                })
                .collect();
            return Err(Stop::TimedOut(format!(
                "{} of {} cycles done after {} s; {}",
                summary.acts.iter().sum::<u32>(),
                cycles.len(),
                timeout.as_secs(),
                waits.join("; ")
            )));
        };
        let Some(hid) = event.hid else { continue };
        let Some(at) = flying.iter().position(|f| f.hid.matches(&hid)) else {
            continue;
        };
        let f = &mut flying[at];
        match (event.kind, f.phase) {
            (EventType::Released, Phase::AwaitRelease) => {
                dev.unexport(&f.hid, Duration::ZERO)
                    .map_err(|e| f.fail(e))?;
                f.phase = Phase::AwaitGrantsEnded;
            }
            (EventType::GrantsEnded, Phase::AwaitGrantsEnded) => {
                let done = flying.remove(at);
                summary.acts[done.cycle.act.slot()] += 1;
                summary.bytes += done.cycle.size;
            }
            (EventType::GrantsEnded, Phase::AwaitRelease) => {
                return Err(f.fail(
                    "its grants ended while it was still exported: expected Released \
                     from the importer, then our unexport",
                ));
            }
            _ => {}
        }
    }
    // The end marker: the importer imports it, releases it and stops.
    let end = Udmabuf::new(4096).map_err(|e| Stop::Failed(format!("end marker: {e}")))?;
    let priv_data = PrivData::new(b"stress end").map_err(|e| Stop::Failed(e.to_string()))?;
    let options = ExportOptions::new().private_data(priv_data);
    let hid = retry_full(|| dev.export(&end, peer, &options))
        .map_err(|e| Stop::Failed(format!("end marker: {e}")))?;
    for kind in [EventType::Released, EventType::GrantsEnded] {
        loop {
            let Some(event) = next_event(dev, peer, deadline)? else {
                return Err(Stop::TimedOut(format!(
                    "end marker (id {hid}): no {kind:?} within {} s (is `hdmabuf-agent stress \
                     import --domain` running in domain {peer}?)",
                    timeout.as_secs()
                )));
            };
            if event.kind == kind && event.hid.is_some_and(|h| h.matches(&hid)) {
                break;
            }
        }
        if kind == EventType::Released {
            dev.unexport(&hid, Duration::ZERO)
                .map_err(|e| Stop::Failed(format!("end marker: {e}")))?;
        }
    }
    Ok(summary)
}

/// The importing side: runs until the end marker.
pub(crate) fn import(dev: &Device, peer: DomId, timeout: Duration) -> Result<Summary, Stop> {
    let deadline = Instant::now() + timeout;
    let mut summary = Summary::default();
    // A reader opened while a buffer is announced may be told of it twice
    // (the driver's replay for late readers, then the live event).
    let mut seen = HashSet::new();
    // Act-c buffers first announced with `act=c`: each must be followed by
    // an Update with `act=c2` before the end marker (the exporter sends
    // the update before it unexports, and one ring carries both in order).
    let mut awaiting_update: HashMap<HyperDmabufId, u32> = HashMap::new();
    let mut last = None;
    loop {
        let Some(event) = next_event(dev, peer, deadline)? else {
            return Err(Stop::TimedOut(format!(
                "no end marker from domain {peer} within {} s ({} cycles seen{}; is \
                 `hdmabuf-agent stress export --domain` running there?)",
                timeout.as_secs(),
                summary.acts.iter().sum::<u32>(),
                last.map_or(String::new(), |i: u32| format!(", the last cycle {i}")),
            )));
        };
        if event.peer != peer {
            continue;
        }
        let Some(hid) = event.hid else { continue };
        let what = std::str::from_utf8(event.priv_data.as_bytes())
            .ok()
            .and_then(parse_tag);
        match event.kind {
            EventType::NewExport => {}
            EventType::Update => {
                if let Some(index) = awaiting_update.remove(&hid) {
                    match what {
                        Some(Tag::Cycle {
                            index: i,
                            act: Act::Update,
                            updated: true,
                            ..
                        }) if i == index => summary.updates += 1,
                        _ => {
                            return Err(Stop::Failed(format!(
                                "cycle {index} (act c, id {hid}): the Update carries {:?}, \
                                 expected \"stress i={index} seed=... act=c2\"",
                                String::from_utf8_lossy(event.priv_data.as_bytes())
                            )))
                        }
                    }
                }
                continue;
            }
            _ => continue,
        }
        let Some(what) = what else { continue };
        if !seen.insert(hid) {
            continue;
        }
        let Tag::Cycle {
            index,
            seed,
            act,
            updated,
        } = what
        else {
            if let Some((h, index)) = awaiting_update.iter().next() {
                return Err(Stop::Failed(format!(
                    "cycle {index} (act c, id {h}): no Update event (the re-export with \
                     act=c2) before the end marker"
                )));
            }
            let marker = dev
                .import(&hid, false)
                .map_err(|e| Stop::Failed(format!("end marker (id {hid}): {e}")))?;
            drop(marker);
            return Ok(summary);
        };
        last = Some(index);
        if act == Act::Update && !updated {
            awaiting_update.insert(hid, index);
        }
        let export_rw = event.flags.contains(ExportFlags::WRITABLE);
        let rw = export_rw && seed % 2 == 1;
        let fail = |what: String| {
            Stop::Failed(format!(
                "cycle {index} (act {}, {} bytes, {}, id {hid}): {what}",
                act.letter(),
                event.size,
                if export_rw { "rw" } else { "ro" },
            ))
        };
        match Verified::import(dev, &hid, rw, seed, event.size) {
            Ok(v) => {
                summary.verified += 1;
                summary.bytes += v.size;
                if act != Act::Revoke {
                    check_reimport_mode(dev, &hid, rw).map_err(fail)?;
                    summary.reimported += 1;
                }
            }
            // Revoked before we got to it (ENOENT), or while we mapped it
            // (the exporter ended its grants under the map: EIO): what
            // act b allows.
            Err(ImportError::Import(e))
                if act == Act::Revoke
                    && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EIO)) =>
            {
                summary.revoked_first += 1;
                if e.raw_os_error() == Some(libc::EIO) {
                    summary.revoked_mid_map += 1;
                }
            }
            Err(ImportError::Import(e)) => {
                let expected = if act == Act::Revoke {
                    "success, ENOENT or EIO"
                } else {
                    "success (it stays exported until we release it)"
                };
                return Err(fail(format!("import failed, expected {expected}: {e}")));
            }
            Err(ImportError::Other(what)) => return Err(fail(what)),
        }
        summary.acts[act.slot()] += 1;
    }
}

/// A buffer imported again while it is mapped is the same dma-buf, as it
/// is mapped whatever is asked now (read-only here): the driver says so,
/// and the descriptor agrees.
fn check_reimport_mode(dev: &Device, hid: &HyperDmabufId, mapped_rw: bool) -> Result<(), String> {
    let again = dev
        .import(hid, false)
        .map_err(|e| format!("imported again while mapped: {e}"))?;
    let mode = rustix::fs::fcntl_getfl(&again.fd).map_err(|e| format!("F_GETFL: {e}"))?;
    let rdwr = mode & rustix::fs::OFlags::RWMODE == rustix::fs::OFlags::RDWR;
    if again.writable != mapped_rw || rdwr != mapped_rw {
        return Err(format!(
            "imported again read-only while mapped {}: the driver says {}, the descriptor is {}",
            if mapped_rw { "read-write" } else { "read-only" },
            if again.writable {
                "read-write"
            } else {
                "read-only"
            },
            if rdwr { "O_RDWR" } else { "not O_RDWR" },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_deterministic_and_covers_every_case() {
        let a = plan(7, 200, 4 << 20);
        assert_eq!(a, plan(7, 200, 4 << 20));
        assert_ne!(a, plan(8, 200, 4 << 20));
        for seed in 0..64 {
            let p = plan(seed, 200, 4 << 20);
            assert_eq!(p.len(), 200);
            for act in [Act::Share, Act::Revoke, Act::Update] {
                assert!(p.iter().filter(|c| c.act == act).count() > 40, "{act:?}");
            }
            assert!(p.iter().any(|c| c.size == 4096), "seed {seed}");
            assert!(p.iter().any(|c| c.size == 4 << 20), "seed {seed}");
            assert!(p.iter().any(|c| c.size != 4096 && c.size != 4 << 20));
            assert!(p.iter().any(|c| c.rw) && p.iter().any(|c| !c.rw));
            let revokes = || p.iter().filter(|c| c.act == Act::Revoke);
            assert!(revokes().any(|c| c.delay_ms == 0));
            assert!(revokes().any(|c| c.delay_ms > 0));
            for (i, c) in p.iter().enumerate() {
                assert_eq!(c.index as usize, i);
                assert!(c.size % 4096 == 0 && (4096..=4 << 20).contains(&c.size));
                assert!(c.delay_ms <= 20);
                assert!(c.act == Act::Revoke || c.delay_ms == 0);
            }
        }
    }

    #[test]
    fn command_lines() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let argv = ["hdmabuf-agent", "stress"].iter().chain(args);
            crate::Cli::try_parse_from(argv).map(|cli| cli.command)
        };
        let Ok(crate::Command::Stress {
            command:
                StressCommand::Export {
                    domain: 5,
                    cycles: 200,
                    seed: 1,
                    max_size: 4194304,
                    window: 3,
                    timeout: 600,
                },
        }) = parse(&["export", "--domain", "5"])
        else {
            panic!("export defaults");
        };
        let Ok(crate::Command::Stress {
            command:
                StressCommand::Import {
                    domain: 0,
                    timeout: 9,
                },
        }) = parse(&["import", "-d", "0", "--timeout", "9"])
        else {
            panic!("import");
        };
        for bad in [
            &["export"][..],
            &["export", "-d", "1", "--window", "0"],
            &["export", "-d", "1", "--window", "5"],
            &["export", "-d", "1", "--max-size", "0"],
            &["export", "-d", "1", "--cycles", "-1"],
            &["import"],
        ] {
            let e = parse(bad).err().unwrap();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn odd_max_sizes_stay_whole_pages() {
        for max in [1, 4095, 4096, 4097, 3 * 4096 + 5] {
            let p = plan(3, 50, max);
            let top = (max / 4096).max(1) * 4096;
            assert!(p.iter().all(|c| c.size % 4096 == 0 && c.size <= top));
            assert!(p.iter().any(|c| c.size == top));
        }
    }

    #[test]
    fn tags_round_trip() {
        for c in plan(11, 200, 1 << 20) {
            let text = tag(&c, false);
            assert!(PrivData::new(text.as_bytes()).is_ok(), "{text}");
            let expect = Tag::Cycle {
                index: c.index,
                seed: c.seed,
                act: c.act,
                updated: false,
            };
            assert_eq!(parse_tag(&text), Some(expect), "{text}");
        }
        let c = Cycle {
            index: 12,
            size: 8192,
            rw: true,
            seed: u64::MAX,
            act: Act::Update,
            delay_ms: 0,
        };
        assert_eq!(
            tag(&c, true),
            format!("stress i=12 seed={} act=c2", u64::MAX)
        );
        assert_eq!(
            parse_tag(&tag(&c, true)),
            Some(Tag::Cycle {
                index: 12,
                seed: u64::MAX,
                act: Act::Update,
                updated: true
            })
        );
        assert_eq!(parse_tag("stress end"), Some(Tag::End));
        // The order of the fields does not matter.
        assert!(parse_tag("stress act=a seed=1 i=2").is_some());
    }

    #[test]
    fn malformed_private_data_is_refused() {
        for junk in [
            "",
            "stress",
            "stress ",
            "stress end ",
            "stress  end",
            "Stress end",
            "stress i=1",
            "stress i=1 seed=2",
            "stress i=x seed=1 act=a",
            "stress i=-1 seed=1 act=a",
            "stress i=4294967296 seed=1 act=a",
            "stress i=1 seed=18446744073709551616 act=a",
            "stress i=1 seed=2 act=z",
            "stress i=1 seed=2 act=",
            "stress i=1 seed=2 act=a extra=3",
            "stress i=1 seed=2 act=a i=3",
            "stress i=1 seed=2 act=a act=b",
            "stress i=1 seed=2  act=a",
            "stress i=1 seed=2 act=a ",
            "stress i==1 seed=2 act=a",
            "stress i=1seed=2 act=a",
            "stress i=1\0 seed=2 act=a",
            "stress i=1 seed=2 act=é",
            "other",
        ] {
            assert_eq!(parse_tag(junk), None, "{junk:?}");
        }
        // Whatever the bytes, no panic.
        let mut rng = Rng::new(5);
        for _ in 0..2000 {
            let len = (rng.next_u64() % 40) as usize;
            let mut text = String::from("stress ");
            for _ in 0..len {
                let pool = b"i=seedact0123456789abc2 end=";
                text.push(pool[(rng.next_u64() % pool.len() as u64) as usize] as char);
            }
            let _ = parse_tag(&text);
        }
    }
}
