// SPDX-License-Identifier: MIT
//! `hdmabuf-agent scale`: what one more buffer costs as the buffers and
//! the peers grow (`make bench`'s scale records, docs/performance.md).
//!
//! dom0 runs `drive`, every guest `serve`. They talk through the driver
//! itself: each side exports one page to the other whose private data is
//! the conversation. dom0's says `scale fill K` (or `scale end`); the
//! guest then keeps exactly K one-page buffers exported to dom0 and
//! answers with its own page's private data, `scale filled K` (to `scale
//! end`: `scale ended`, and each side unexports its page, dom0 first). Each side
//! reads the other's page (`HDMABUF_QUERY_PRIV`) whenever an event comes
//! (its `Update`, among others) or a second passed: nothing depends on an
//! event that a reader's full queue may drop, and a waiting side takes no
//! CPU from the one measured.
//!
//! For each point (P guests with N buffers each, the others with none),
//! dom0 also keeps N one-page buffers exported to each of those P guests,
//! and then measures, `--samples` times each: importing one of the
//! guests' ten oldest buffers (the IMPORT call: the lookups, the grant
//! map, the dma-buf; the same buffers at every point), exporting one more one-page buffer to a guest (the call,
//! with its ring round trip) and unexporting it (the call). Kernel memory
//! per live buffer comes from `/proc/slabinfo` (every cache's active
//! objects times their size) before and after the guests grow dom0's
//! imports and dom0 grows its exports, around the driver's calls only.
//! Each point is a `bench| {json}` line with the raw samples.
//!
//! Both sides check what they can: every guest ends a fill with exactly
//! the buffers asked for, dom0 lists exactly P·N buffers from the guests
//! at each point, and every import maps. A failure fails the run.

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use clap::Subcommand;
use hdmabuf::{Failure, Output};
use hyper_dmabuf_client::{
    Device, DomId, ExportOptions, HyperDmabufId, ListEntry, PrivData, Udmabuf,
};
use hyper_dmabuf_common::uapi::KIND_IMPORTED;
use serde_json::json;

use hdmabuf_agent::rng::Rng;

use crate::bench::{percentile, thread_cpu_ns};

/// How long any wait for the other side may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a side waits for an event before it looks at the other's
/// page anyway.
const LOOK: Duration = Duration::from_secs(1);
/// How long an import of a buffer being let go waits before it tries
/// again.
const RETRY: Duration = Duration::from_millis(1);
/// One page: every buffer of the experiment is one.
const PAGE: u64 = 4096;
/// The buffers of each guest the imports pick from: its oldest, there at
/// every point.
const SAMPLED: usize = 10;
/// Local dma-bufs made ahead of a timed batch of exports: their making
/// is not the driver's cost, and their fds stay below the usual limit.
const BATCH: usize = 256;

/// `hdmabuf-agent scale`.
#[derive(Subcommand)]
pub(crate) enum ScaleCommand {
    /// Drive the experiment from dom0 (run `scale serve` in each guest).
    Drive {
        /// The guests' domain ids, in the order they join.
        #[arg(long, value_delimiter = ',', required = true)]
        guests: Vec<u32>,
        /// Buffers per peer of the buffer sweep (with one guest).
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
        live: Vec<u64>,
        /// Guests of the peer sweep.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        peers: Vec<usize>,
        /// Buffers per peer of the peer sweep.
        #[arg(long, default_value_t = 100)]
        peers_live: u64,
        /// Timed calls of each kind per point, each time it runs.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// Answer dom0's `scale drive`.
    Serve {
        /// The driving domain.
        #[arg(long, short, default_value_t = 0)]
        domain: u32,
    },
}

/// Runs `command`.
pub(crate) fn run(command: &ScaleCommand, device: &str, out: &Output) -> Result<(), Failure> {
    let dev = Device::open_path(device)?;
    match command {
        ScaleCommand::Drive {
            guests,
            live,
            peers,
            peers_live,
            samples,
        } => {
            let guests = guests
                .iter()
                .map(|&g| DomId::new(g))
                .collect::<Result<Vec<_>, _>>()?;
            let plan = points(live, peers, *peers_live, guests.len());
            Driver::new(&dev, guests)?.run(&plan, *samples, out)
        }
        ScaleCommand::Serve { domain } => serve(&dev, DomId::new(*domain)?, out),
    }
}

fn fail(what: impl std::fmt::Display) -> Failure {
    Failure::Error(what.to_string())
}

fn tag(text: &str) -> Result<PrivData, Failure> {
    Ok(PrivData::new(text.as_bytes())?)
}

fn text(data: &PrivData) -> &str {
    std::str::from_utf8(data.as_bytes()).unwrap_or("")
}

/// The points in the order they run, as (peers, buffers per peer):
/// the buffer sweep's up to `peers_live`, the peer sweep, the rest of
/// the buffer sweep, so that the fills never undo much; then all of it
/// again backwards. Every point but the last of the way out runs twice,
/// as far before that one as after it: a drift of the machine over the
/// run (this emulated platform's cost of a call moves by up to 1.5x
/// within minutes) weighs on both ends of a sweep alike, and the report
/// pools each point's runs. Peers beyond `guests` are left out.
fn points(live: &[u64], peers: &[usize], peers_live: u64, guests: usize) -> Vec<(usize, u64)> {
    let mut plan: Vec<(usize, u64)> = Vec::new();
    let mut add = |p: usize, n: u64| {
        if p >= 1 && p <= guests && !plan.contains(&(p, n)) {
            plan.push((p, n));
        }
    };
    for &n in live.iter().filter(|&&n| n <= peers_live) {
        add(1, n);
    }
    for &p in peers {
        add(p, peers_live);
    }
    for &n in live.iter().filter(|&&n| n > peers_live) {
        add(1, n);
    }
    let back: Vec<(usize, u64)> = plan.iter().rev().skip(1).copied().collect();
    plan.extend(back);
    plan
}

/// Bytes in every slab cache's active objects (`/proc/slabinfo`), once
/// every cache is shrunk: SLUB counts the free objects of a CPU's slabs
/// as active, and the experiment frees many between its points.
fn slab_bytes() -> Result<u64, Failure> {
    if let Ok(caches) = fs::read_dir("/sys/kernel/slab") {
        for cache in caches.flatten() {
            // Caches that refuse it keep their figure as it is.
            let _ = fs::write(cache.path().join("shrink"), "1");
        }
    }
    let info =
        fs::read_to_string("/proc/slabinfo").map_err(|e| fail(format!("/proc/slabinfo: {e}")))?;
    Ok(info
        .lines()
        .skip(2)
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1);
            let active: u64 = f.next()?.parse().ok()?;
            let _total = f.next()?;
            let size: u64 = f.next()?.parse().ok()?;
            Some(active * size)
        })
        .sum())
}

/// What the other side's page `hid` says once `done` takes it: looked at
/// after the queued events are read (so that one coming later wakes the
/// next wait) and then at each event or [`LOOK`].
fn wait_said(
    dev: &Device,
    hid: &HyperDmabufId,
    mut done: impl FnMut(&str) -> bool,
) -> Result<String, Failure> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        while dev.try_next_event()?.is_some() {}
        let said = text(&dev.private_data(hid)?).to_owned();
        if done(&said) {
            return Ok(said);
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "{hid}: still `{said}` after {PEER_TIMEOUT:?}"
            )));
        }
        dev.wait_event(Some(LOOK))?;
    }
}

/// The other side's control page: the buffer it announced whose private
/// data begins with `scale `. Looked for among the buffers listed, since
/// it may have been announced before this file was opened, and again at
/// each event.
fn control_of(dev: &Device, peer: DomId) -> Result<HyperDmabufId, Failure> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    while Instant::now() < deadline {
        for entry in dev.list()? {
            if entry.kind == KIND_IMPORTED
                && entry.peer == peer
                // One revoked meanwhile is not it.
                && dev
                    .private_data(&entry.hid)
                    .is_ok_and(|data| text(&data).starts_with("scale "))
            {
                return Ok(entry.hid);
            }
        }
        dev.wait_event(Some(LOOK))?;
    }
    Err(fail(format!("dom{peer} announced no control page")))
}

/// One-page buffers exported to `peer`, grown or shrunk to a count.
struct Pages {
    peer: DomId,
    hids: Vec<HyperDmabufId>,
}

impl Pages {
    fn new(peer: DomId) -> Self {
        Pages {
            peer,
            hids: Vec::new(),
        }
    }

    /// Grows or shrinks to `count`; the slab bytes the driver's calls
    /// added while growing, and how many buffers that was.
    fn resize(&mut self, dev: &Device, count: usize) -> Result<(u64, u64), Failure> {
        while self.hids.len() > count {
            let hid = self.hids.pop().expect("not empty");
            dev.unexport(&hid, Duration::ZERO)?;
        }
        let options = ExportOptions::new().private_data(tag("scale page")?);
        let (mut slab, grown) = (0u64, count.saturating_sub(self.hids.len()) as u64);
        while self.hids.len() < count {
            let n = BATCH.min(count - self.hids.len());
            let bufs = (0..n)
                .map(|_| Udmabuf::new(PAGE))
                .collect::<Result<Vec<_>, _>>()?;
            let before = slab_bytes()?;
            for buf in &bufs {
                self.hids.push(dev.export(buf, self.peer, &options)?);
            }
            slab += slab_bytes()?.saturating_sub(before);
        }
        Ok((slab, grown))
    }
}

/// The guest's side.
fn serve(dev: &Device, driver: DomId, out: &Output) -> Result<(), Failure> {
    let mine = Udmabuf::new(PAGE)?;
    let options = ExportOptions::new().private_data(tag("scale filled 0")?);
    let answer = dev.export(&mine, driver, &options)?;
    let control = control_of(dev, driver)?;
    let mut pages = Pages::new(driver);
    let mut last = String::new();
    loop {
        let said = wait_said(dev, &control, |said| said != last)?;
        if said == "scale end" {
            break;
        }
        let count: usize = said
            .strip_prefix("scale fill ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| fail(format!("dom{driver} said `{said}`")))?;
        pages.resize(dev, count)?;
        dev.update(&answer, tag(&format!("scale filled {count}"))?)?;
        last = said;
    }
    let kept = pages.hids.len();
    pages.resize(dev, 0)?;
    // dom0 unexports its page once it read this, and we ours after that.
    dev.update(&answer, tag("scale ended")?)?;
    let deadline = Instant::now() + PEER_TIMEOUT;
    while dev.private_data(&control).is_ok() {
        if Instant::now() > deadline {
            return Err(fail(format!("dom{driver} kept its page {PEER_TIMEOUT:?}")));
        }
        while dev.try_next_event()?.is_some() {}
        dev.wait_event(Some(LOOK))?;
    }
    dev.unexport(&answer, Duration::ZERO)?;
    out.line(
        format!("scale: served dom{driver}, {kept} pages exported at the end"),
        json!({ "served": driver.get(), "pages": kept }),
    );
    Ok(())
}

/// One point's timed calls, in nanoseconds.
#[derive(Default)]
struct Samples {
    imports: Vec<u64>,
    exports: Vec<u64>,
    unexports: Vec<u64>,
    /// CPU time of the thread in each import call.
    import_cpu: Vec<u64>,
    /// Of the time the calls took, the share dom0's vCPU was ready but
    /// Xen ran another domain (`steal`, `/proc/stat`, in ticks).
    steal: f64,
}

/// dom0's CPU time stolen by Xen and all its CPU time, in ticks
/// (`/proc/stat`'s `cpu` line: its eighth figure, and the sum of all).
fn stolen_ticks() -> Result<(u64, u64), Failure> {
    let stat = fs::read_to_string("/proc/stat").map_err(|e| fail(format!("/proc/stat: {e}")))?;
    let figures: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| fail("/proc/stat has no cpu line"))?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    Ok((figures.get(7).copied().unwrap_or(0), figures.iter().sum()))
}

/// A guest as dom0 drives it.
struct Guest {
    domain: DomId,
    /// Our control page to it, and its to us.
    tell: HyperDmabufId,
    hear: HyperDmabufId,
    /// What we export to it.
    pages: Pages,
    /// How many it exports to us.
    count: u64,
}

/// dom0's side.
struct Driver<'a> {
    dev: &'a Device,
    guests: Vec<Guest>,
    rng: Rng,
    /// Our control pages' dma-bufs, kept while exported.
    _controls: Vec<Udmabuf>,
}

impl<'a> Driver<'a> {
    fn new(dev: &'a Device, domains: Vec<DomId>) -> Result<Self, Failure> {
        let mut controls = Vec::new();
        let mut tells = Vec::new();
        let options = ExportOptions::new().private_data(tag("scale fill 0")?);
        for &domain in &domains {
            let buf = Udmabuf::new(PAGE)?;
            tells.push(dev.export(&buf, domain, &options)?);
            controls.push(buf);
        }
        let mut guests = Vec::new();
        for (&domain, tell) in domains.iter().zip(tells) {
            guests.push(Guest {
                domain,
                tell,
                hear: control_of(dev, domain)?,
                pages: Pages::new(domain),
                count: 0,
            });
        }
        Ok(Driver {
            dev,
            guests,
            rng: Rng::new(0x5ca1e),
            _controls: controls,
        })
    }

    fn run(&mut self, plan: &[(usize, u64)], samples: usize, out: &Output) -> Result<(), Failure> {
        for &(peers, live) in plan {
            let (import_slab, imports_grown) = self.fill(peers, live)?;
            let (mut export_slab, mut exports_grown) = (0, 0);
            for g in self.guests.iter_mut() {
                let (slab, grown) = g.pages.resize(self.dev, g.count as usize)?;
                export_slab += slab;
                exports_grown += grown;
            }
            self.check_listed(peers, live)?;
            let Samples {
                imports,
                exports,
                unexports,
                import_cpu,
                steal,
            } = self.measure(peers, samples)?;
            let per = |slab: u64, n: u64| (n > 0).then(|| slab / n);
            let p50 = |v: &[u64]| percentile(v, 0.5);
            out.line(
                format!(
                    "scale: {peers} peers x {live} buffers: import p50 {} us, export p50 {} us, \
                     unexport p50 {} us",
                    p50(&imports) / 1000,
                    p50(&exports) / 1000,
                    p50(&unexports) / 1000
                ),
                json!({ "peers": peers, "live_buffers": live }),
            );
            println!(
                "bench| {}",
                json!({
                    "metric": "scale",
                    "peers": peers,
                    "live_buffers": live,
                    "import_ns": imports,
                    "export_ns": exports,
                    "unexport_ns": unexports,
                    "import_cpu_ns": import_cpu,
                    "steal_share": steal,
                    "slab_per_import": per(import_slab, imports_grown),
                    "slab_per_export": per(export_slab, exports_grown),
                })
            );
        }
        for g in &mut self.guests {
            g.pages.resize(self.dev, 0)?;
            self.dev.update(&g.tell, tag("scale end")?)?;
        }
        // Each guest reads `scale end` before its page goes.
        for g in &self.guests {
            wait_said(self.dev, &g.hear, |said| said == "scale ended")?;
            self.dev.unexport(&g.tell, Duration::ZERO)?;
        }
        Ok(())
    }

    /// Tells the first `peers` guests to keep `live` buffers exported to
    /// us and the others none, and waits until they all do. The slab
    /// bytes that took, and how many buffers the guests added.
    fn fill(&mut self, peers: usize, live: u64) -> Result<(u64, u64), Failure> {
        let before = slab_bytes()?;
        let mut grown = 0;
        for (i, g) in self.guests.iter_mut().enumerate() {
            let count = if i < peers { live } else { 0 };
            if count != g.count {
                grown += count.saturating_sub(g.count);
                g.count = count;
                self.dev
                    .update(&g.tell, tag(&format!("scale fill {count}"))?)?;
            }
        }
        for g in &self.guests {
            let want = format!("scale filled {}", g.count);
            wait_said(self.dev, &g.hear, |said| said == want)?;
        }
        Ok((slab_bytes()?.saturating_sub(before), grown))
    }

    /// The guests' buffers we may import, by guest, oldest (smallest
    /// number) first.
    fn listed(&self) -> Result<BTreeMap<DomId, Vec<HyperDmabufId>>, Failure> {
        let mut by_guest: BTreeMap<DomId, Vec<HyperDmabufId>> = BTreeMap::new();
        let controls: Vec<HyperDmabufId> = self.guests.iter().map(|g| g.hear).collect();
        for ListEntry {
            hid, peer, kind, ..
        } in self.dev.list()?
        {
            if kind == KIND_IMPORTED && !controls.iter().any(|c| c.matches(&hid)) {
                by_guest.entry(peer).or_default().push(hid);
            }
        }
        for hids in by_guest.values_mut() {
            hids.sort_by_key(HyperDmabufId::number);
        }
        Ok(by_guest)
    }

    /// Every guest's buffers, and no more, are there to import.
    fn check_listed(&self, peers: usize, live: u64) -> Result<(), Failure> {
        let listed = self.listed()?;
        for g in &self.guests {
            let n = listed.get(&g.domain).map_or(0, Vec::len) as u64;
            if n != g.count {
                return Err(fail(format!(
                    "{peers} peers x {live}: dom{} has {n} buffers listed, not {}",
                    g.domain, g.count
                )));
            }
        }
        Ok(())
    }

    /// `samples` timed imports (of the guests' buffers), exports and
    /// unexports (of one more page to them), each active guest's in a run
    /// of its own: turning from one guest to the next every call made
    /// Xen run the guests on dom0's emulated CPU (a third of dom0's time
    /// stolen from 2 peers on, against 3-6% with one), which is the
    /// platform's cost, not the driver's.
    fn measure(&mut self, peers: usize, samples: usize) -> Result<Samples, Failure> {
        let listed = self.listed()?;
        let mut s = Samples::default();
        let (steal0, all0) = stolen_ticks()?;
        let options = ExportOptions::new().private_data(tag("scale sample")?);
        for i in 0..samples {
            let g = &self.guests[i * peers / samples];
            let theirs = listed
                .get(&g.domain)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| fail(format!("dom{} exports nothing", g.domain)))?;
            // Among the same few at every point: what a call costs with
            // more buffers around, not the cost of pages not seen lately.
            let hid = self.rng.pick(&theirs[..theirs.len().min(SAMPLED)]);
            let (imported, took, cpu) = import_timed(self.dev, &hid)?;
            s.imports.push(took);
            s.import_cpu.push(cpu);
            if imported.size != PAGE {
                return Err(fail(format!(
                    "{hid}: {} bytes, not one page",
                    imported.size
                )));
            }
            drop(imported);
            let buf = Udmabuf::new(PAGE)?;
            let t = Instant::now();
            let hid = self.dev.export(&buf, g.domain, &options)?;
            s.exports.push(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            self.dev.unexport(&hid, Duration::ZERO)?;
            s.unexports.push(t.elapsed().as_nanos() as u64);
        }
        let (steal1, all1) = stolen_ticks()?;
        s.steal = (steal1 - steal0) as f64 / (all1 - all0).max(1) as f64;
        Ok(s)
    }
}

/// Imports `hid` and times the call. The same buffer imported a moment
/// ago may still be letting its last mapping go (`EAGAIN`): then the call
/// is made again, and timed again.
fn import_timed(
    dev: &Device,
    hid: &HyperDmabufId,
) -> Result<(hyper_dmabuf_client::Imported, u64, u64), Failure> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        let (t, cpu) = (Instant::now(), thread_cpu_ns());
        match dev.import(hid, false) {
            Ok(imported) => {
                let took = t.elapsed().as_nanos() as u64;
                return Ok((imported, took, thread_cpu_ns() - cpu));
            }
            Err(e) if e.should_retry() && Instant::now() < deadline => thread::sleep(RETRY),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_sweeps_buffers_peers_the_rest_and_back() {
        let plan = points(&[10, 100, 1000, 10000], &[1, 2, 4, 8], 100, 8);
        assert_eq!(
            plan,
            [
                (1, 10),
                (1, 100),
                (2, 100),
                (4, 100),
                (8, 100),
                (1, 1000),
                (1, 10000),
                (1, 1000),
                (8, 100),
                (4, 100),
                (2, 100),
                (1, 100),
                (1, 10)
            ]
        );
        // Fewer guests than asked: the points past them are left out.
        assert_eq!(
            points(&[10, 1000], &[1, 2, 4], 10, 2),
            [(1, 10), (2, 10), (1, 1000), (2, 10), (1, 10)]
        );
        // One point: nothing to drift from.
        assert_eq!(points(&[10], &[1], 10, 1), [(1, 10)]);
    }
}
