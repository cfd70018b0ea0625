// SPDX-License-Identifier: MIT
//! `hdmabuf-agent soak`: one agent per domain, sharing both ways with every
//! connected peer for a long time while peers die, restart their agents
//! or reload their drivers (`make soak`).
//!
//! Two threads, each with its own open file of the device (every open
//! file gets every event):
//!
//! * the **exporter** keeps up to `--window` buffers in flight to peers
//!   picked at random among the connected ones. Each buffer is drawn from
//!   a seeded generator ([`next_export`]): a size from one page to
//!   `--max-size`, read-only or read-write, a pattern seed, and an act —
//!   `share` (unexport after the importer's `Released`), `update` (export
//!   the same dma-buf again with new private data: same id, then as
//!   share), `revoke` (unexport at once or after a few ms, racing the
//!   import) or `hold` (unexport after a random time, imported or not).
//!   A flight ends with its `GrantsEnded`.
//! * the **importer** imports every buffer a peer announces with a soak
//!   tag ([`tag`]: the pattern's seed; for a `share` or `update` the
//!   exporting agent's seed, `k=`), maps it, checks every byte, keeps it
//!   a random time, checks every byte again and releases it.
//!
//! Errors are sorted by [`classify`]. Those the driver documents for a
//! lost peer or a revoked buffer (docs/driver.md, docs/uapi.md) are
//! tolerated and counted, but each must be *confirmed* by an event within
//! [`CONFIRM_WINDOW`]: a `PeerDisconnected` of that peer, or for an import
//! the buffer's `Unexport` (its exporter revoked it, or its exporting
//! process died). A `share` or `update` buffer is never revoked while its
//! exporting agent lives: if its import failed and that agent still
//! announces a buffer after the failed one's `Unexport`, the failure had
//! no cause and fails the run (buffers replayed at open excepted: a
//! previous agent of this domain may have released them). Anything else
//! fails the run: a byte that differs (exit
//! status 3), an errno the driver does not document for the case, an
//! unconfirmed loss, lost events, or a hang: an ioctl, a `Released` or a
//! `GrantsEnded` that takes longer than `--op-timeout` (exit status 4).
//!
//! After `--seconds` both threads stop: the exporter unexports what it
//! still exports and waits for every `GrantsEnded`, the importer checks
//! and releases what it holds. A status line is printed every
//! `--status-every` seconds and a summary at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Args;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType, QueryItem};
use hyper_dmabuf_common::wire::{ExportFlags, PrivData};
use hyper_dmabuf_common::xen::DomId;
use serde_json::{json, Map, Value};

use hdmabuf::{Failure, Output};
use hdmabuf_agent::rng::Rng;
use hyper_dmabuf_client::testing::{pattern, retry_full, ImportError, Verified};
use hyper_dmabuf_client::{Device, Error, ExportOptions, Udmabuf};

/// How long a tolerated error may wait for the event that explains it.
/// The driver posts `PeerDisconnected` as soon as it sees the peer's
/// state change; a minute covers a loaded host.
pub(crate) const CONFIRM_WINDOW: Duration = Duration::from_secs(60);

/// `hdmabuf-agent soak`.
#[derive(Args, Debug, Clone)]
pub(crate) struct SoakArgs {
    /// Run this many seconds, then release everything and exit.
    #[arg(long)]
    seconds: u64,
    /// Seed of this agent's buffers and hold times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share only with these domains (comma separated); by default with
    /// every peer that is or becomes connected.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<u32>,
    /// Largest buffer (with K/M/G).
    #[arg(long, default_value = "4M", value_parser = hdmabuf::parse_size)]
    max_size: u64,
    /// Exports in flight at once, to all peers together.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    window: u32,
    /// Longest an importer keeps a buffer, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    max_hold_ms: u32,
    /// Print a status line every this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    status_every: u64,
    /// Longest one operation may take (an ioctl, the importer's Released,
    /// the GrantsEnded after an unexport) before the run fails as hung.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    op_timeout: u64,
}

// --- the plan --------------------------------------------------------------

/// What the exporter does with one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Unexported once the importer released it.
    Share,
    /// Exported a second time with new private data, then as `Share`.
    Update,
    /// Unexported at once (or after `delay_ms`), racing the import.
    Revoke {
        /// The unexport's delay (0 to 20 ms).
        delay_ms: u32,
    },
    /// Unexported after `ms`, whether imported or not.
    Hold {
        /// How long it stays exported (1 to 3000 ms).
        ms: u32,
    },
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Share => "share",
            Act::Update => "update",
            Act::Revoke { .. } => "revoke",
            Act::Hold { .. } => "hold",
        }
    }
}

/// One buffer of the exporter's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExportPlan {
    /// Size in bytes, whole pages.
    pub(crate) size: u64,
    /// Exported read-write.
    pub(crate) rw: bool,
    /// Seed of its pattern.
    pub(crate) seed: u64,
    /// What happens to it.
    pub(crate) act: Act,
}

/// The next buffer: one page or the largest one an eighth of the time
/// each, else up to 16 pages, up to 256 pages or up to the largest with
/// equal chances (small buffers are many, large ones still common); each
/// act a quarter of the time.
pub(crate) fn next_export(rng: &mut Rng, max_size: u64) -> ExportPlan {
    let max_pages = (max_size / 4096).max(1);
    let pages = match rng.below(8) {
        0 => 1,
        1 => max_pages,
        2 | 3 => 1 + rng.below(16.min(max_pages)),
        4 | 5 => 1 + rng.below(256.min(max_pages)),
        _ => 1 + rng.below(max_pages),
    };
    let act = match rng.below(4) {
        0 => Act::Share,
        1 => Act::Update,
        2 => Act::Revoke {
            delay_ms: if rng.chance(50) {
                0
            } else {
                1 + rng.below(20) as u32
            },
        },
        _ => Act::Hold {
            ms: 1 + rng.below(3000) as u32,
        },
    };
    ExportPlan {
        size: pages * 4096,
        rw: rng.chance(50),
        seed: rng.next_u64() >> 1,
        act,
    }
}

/// How long the importer keeps a buffer: none an eighth of the time, else
/// up to `max_ms`.
pub(crate) fn next_hold_ms(rng: &mut Rng, max_ms: u32) -> u32 {
    if rng.below(8) == 0 {
        0
    } else {
        rng.below(u64::from(max_ms) + 1) as u32
    }
}

/// What a soak buffer's private data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// The seed of its pattern.
    pub(crate) seed: u64,
    /// The re-export of an `update`.
    pub(crate) updated: bool,
    /// A `share` or `update`: its exporter, the agent of this `--seed`,
    /// unexports it only after the importer's `Released`, or when it ends
    /// or dies; so an import of it fails only if that agent is gone.
    pub(crate) kept_by: Option<u64>,
}

/// The private data of a soak buffer: `soak s=SEED[ k=AGENT][ u]`.
pub(crate) fn tag(t: Tag) -> String {
    let mut text = format!("soak s={}", t.seed);
    if let Some(agent) = t.kept_by {
        text.push_str(&format!(" k={agent}"));
    }
    if t.updated {
        text.push_str(" u");
    }
    text
}

/// Parses [`tag`]'s private data; `None` for anything else (another
/// tool's buffer, or junk from the peer).
pub(crate) fn parse_tag(text: &str) -> Option<Tag> {
    fn number(digits: &str) -> Option<u64> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
    let rest = text.strip_prefix("soak s=")?;
    let (rest, updated) = match rest.strip_suffix(" u") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (seed, kept_by) = match rest.split_once(" k=") {
        Some((seed, agent)) => (seed, Some(number(agent)?)),
        None => (rest, None),
    };
    Some(Tag {
        seed: number(seed)?,
        updated,
        kept_by,
    })
}

// --- errors ----------------------------------------------------------------

/// The operations whose errors the agent sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// EXPORT of a new buffer.
    Export,
    /// EXPORT of the same dma-buf again (an update).
    Update,
    /// IMPORT.
    Import,
    /// UNEXPORT.
    Unexport,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Export => "export",
            Op::Update => "update",
            Op::Import => "import",
            Op::Unexport => "unexport",
        }
    }
}

/// What an errno means for the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Busy for a moment (a full ring, a release in progress): try again.
    Retry,
    /// What docs/driver.md says a process sees when its peer dies or its
    /// driver goes away (and, for an import, when the buffer was revoked);
    /// tolerated once an event confirms it.
    PeerLoss,
    /// Not documented for this operation in a soak: a failure.
    Unexpected,
}

/// Sorts `errno` of `op`.
///
/// EXPORT to a peer that dies: `ENOTCONN` (no connection any more) or
/// `ETIMEDOUT` (it never answered, the export was withdrawn). IMPORT of a
/// buffer of a dead peer or a revoked one: `ENOENT` (gone before the
/// import), `EIO` (its grants ended under the map). UNEXPORT of a buffer
/// whose peer died: `ENOENT` (the connection's teardown ended it).
/// `EAGAIN`: the ring is full, or for an import the buffer's last user is
/// releasing it.
pub(crate) fn classify(op: Op, errno: i32) -> Class {
    match (op, errno) {
        (Op::Export | Op::Update | Op::Import, libc::EAGAIN) => Class::Retry,
        (Op::Export | Op::Update, libc::ENOTCONN | libc::ETIMEDOUT) => Class::PeerLoss,
        (Op::Import, libc::ENOENT | libc::EIO) => Class::PeerLoss,
        (Op::Unexport, libc::ENOENT) => Class::PeerLoss,
        _ => Class::Unexpected,
    }
}

/// The errno's name, for counters and messages.
fn errno_name(errno: i32) -> String {
    match errno {
        libc::EAGAIN => "EAGAIN".into(),
        libc::ENOTCONN => "ENOTCONN".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EIO => "EIO".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EPERM => "EPERM".into(),
        other => format!("errno{other}"),
    }
}

/// A tolerated error waiting for the event that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suspect {
    /// The peer that should have gone.
    pub(crate) peer: u32,
    /// For an import: the buffer whose `Unexport` also explains it.
    pub(crate) hid: Option<HyperDmabufId>,
    /// When the explanation is overdue.
    pub(crate) until: Instant,
    /// The error, for the failure message.
    pub(crate) what: String,
}

/// Tolerated errors not yet explained by an event.
#[derive(Debug, Default)]
pub(crate) struct Pending(Vec<Suspect>);

impl Pending {
    /// Adds one.
    pub(crate) fn push(&mut self, s: Suspect) {
        self.0.push(s);
    }

    /// `peer` disconnected: that explains every error about it.
    pub(crate) fn on_disconnect(&mut self, peer: u32) {
        self.0.retain(|s| s.peer != peer);
    }

    /// `hid` was revoked: that explains a failed import of it.
    pub(crate) fn on_unexport(&mut self, hid: &HyperDmabufId) {
        self.0.retain(|s| !s.hid.is_some_and(|h| h.matches(hid)));
    }

    /// The first one not explained by `now`.
    pub(crate) fn overdue(&self, now: Instant) -> Option<&Suspect> {
        self.0.iter().find(|s| now >= s.until)
    }

    /// Nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The earliest deadline.
    fn next_until(&self) -> Option<Instant> {
        self.0.iter().map(|s| s.until).min()
    }
}

// --- shared state ----------------------------------------------------------

/// Why an agent thread stopped the run.
#[derive(Debug)]
enum Stop {
    /// Bytes differed from the pattern.
    Mismatch(String),
    /// An operation took longer than `--op-timeout`.
    Hung(String),
    /// Anything else unexpected.
    Failed(String),
}

/// What the threads share.
struct Ctx {
    args: SoakArgs,
    started: Instant,
    stop: AtomicBool,
    /// Counters by name, printed in the summary.
    counts: Mutex<BTreeMap<String, u64>>,
    /// Per thread: the ioctl it is in and since when (the watchdog's
    /// input: an ioctl that never returns cannot report itself).
    busy: [Mutex<Option<(Instant, String)>>; 2],
}

/// Locks `m`; a panicked thread already failed the run, its data is
/// still good for the summary.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    fn add(&self, name: &str, n: u64) {
        *lock(&self.counts).entry(name.to_string()).or_insert(0) += n;
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn op_timeout(&self) -> Duration {
        Duration::from_secs(self.args.op_timeout)
    }

    /// Runs `f` as an ioctl of thread `who` the watchdog watches.
    fn watched<T>(&self, who: usize, what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
        *lock(&self.busy[who]) = Some((Instant::now(), what()));
        let r = f();
        *lock(&self.busy[who]) = None;
        r
    }

    fn wanted(&self, peer: u32) -> bool {
        self.args.peers.is_empty() || self.args.peers.contains(&peer)
    }

    /// Counts a tolerated error of `op`.
    fn count_loss(&self, op: Op, errno: i32) {
        self.add(&format!("loss.{}.{}", op.name(), errno_name(errno)), 1);
    }
}

/// The errno of a failed ioctl (0 if the error carries none).
fn errno_of(e: &Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// The next event, at most `wait` from now; lost events fail the run (a
/// `Released` or `GrantsEnded` may be among them).
fn next_event(dev: &Device, wait: Duration) -> Result<Option<Event>, Stop> {
    let event = dev
        .wait_event(Some(wait))
        .map_err(|e| Stop::Failed(e.to_string()))?;
    if let Some(e) = &event {
        if e.lost > 0 {
            return Err(Stop::Failed(format!(
                "{} events of domain {} were lost before a {:?} event: its share of the \
                 reader's queue (512 events, shared fairly among the peers) overflowed",
                e.lost,
                e.peer.get(),
                e.kind
            )));
        }
    }
    Ok(event)
}

/// Connected peers and how often each disconnected (a generation: an
/// error of an operation begun in an older generation is explained).
#[derive(Default)]
struct Peers {
    connected: BTreeSet<u32>,
    generation: HashMap<u32, u64>,
}

impl Peers {
    fn generation(&self, peer: u32) -> u64 {
        self.generation.get(&peer).copied().unwrap_or(0)
    }

    /// Handles a peer event; returns the peer that disconnected, if any.
    fn on_event(&mut self, ctx: &Ctx, e: &Event) -> Option<u32> {
        let peer = u32::from(e.peer.get());
        match e.kind {
            EventType::PeerConnected if ctx.wanted(peer) => {
                self.connected.insert(peer);
                None
            }
            EventType::PeerDisconnected => {
                self.connected.remove(&peer);
                *self.generation.entry(peer).or_insert(0) += 1;
                Some(peer)
            }
            _ => None,
        }
    }
}

// --- the exporter ----------------------------------------------------------

const EXPORTER: usize = 0;
const IMPORTER: usize = 1;

/// Where a flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Exported: waiting for `Released` (share, update) or `due` (hold).
    Exported,
    /// Unexported, or its peer is gone: waiting for `GrantsEnded`.
    Ending,
}

/// An exported buffer.
struct Flight {
    plan: ExportPlan,
    peer: u32,
    hid: HyperDmabufId,
    /// The peer's generation when exported.
    generation: u64,
    phase: Phase,
    /// When the current wait is over (hold) or overdue (the others).
    due: Instant,
    /// Kept, and so exported, until its grants have ended.
    _buf: Udmabuf,
}

impl Flight {
    fn describe(&self) -> String {
        format!(
            "{} of {} bytes ({}) to domain {} id {}",
            self.plan.act.name(),
            self.plan.size,
            if self.plan.rw { "rw" } else { "ro" },
            self.peer,
            self.hid
        )
    }
}

struct Exporter<'a> {
    ctx: &'a Ctx,
    dev: Device,
    rng: Rng,
    peers: Peers,
    flights: Vec<Flight>,
    pending: Pending,
}

impl Exporter<'_> {
    fn run(&mut self) -> Result<(), Stop> {
        let mut unexported_all = false;
        loop {
            let stopping = self.ctx.stopping();
            if !stopping {
                // A failed export adds no flight: read the events first
                // (the peer's PeerDisconnected is likely among them), or
                // this loop would export to a dead peer for ever.
                while self.flights.len() < self.ctx.args.window as usize
                    && !self.peers.connected.is_empty()
                {
                    if !self.start()? {
                        break;
                    }
                }
            } else if !unexported_all {
                // The end: nothing new; what is still exported goes now.
                for at in 0..self.flights.len() {
                    if self.flights[at].phase == Phase::Exported {
                        self.unexport(at)?;
                    }
                }
                unexported_all = true;
            }
            if stopping && self.flights.is_empty() && self.pending.is_empty() {
                return Ok(());
            }
            self.deadlines()?;
            let now = Instant::now();
            let wait = poll_wait(
                now,
                self.flights
                    .iter()
                    .map(|f| f.due)
                    .chain(self.pending.next_until()),
            );
            if let Some(e) = next_event(&self.dev, wait)? {
                self.on_event(&e)?;
            }
        }
    }

    /// Exports one buffer to a random peer and starts its act; false if
    /// the export failed (tolerated: its peer is going).
    fn start(&mut self) -> Result<bool, Stop> {
        let peers: Vec<u32> = self.peers.connected.iter().copied().collect();
        let peer = self.rng.pick(&peers);
        let plan = next_export(&mut self.rng, self.ctx.args.max_size);
        let domid = DomId::new(peer).map_err(|e| Stop::Failed(format!("domain {peer}: {e}")))?;
        let buf = Udmabuf::with_contents(plan.size, |at, b| pattern::fill_at(plan.seed, at, b))
            .map_err(|e| Stop::Failed(format!("a buffer of {} bytes: {e}", plan.size)))?;
        let generation = self.peers.generation(peer);
        let kept_by = matches!(plan.act, Act::Share | Act::Update).then_some(self.ctx.args.seed);
        let mut t = Tag {
            seed: plan.seed,
            updated: false,
            kept_by,
        };
        let first = PrivData::new(tag(t).as_bytes()).map_err(|e| Stop::Failed(e.to_string()))?;
        let what = || format!("export of {} bytes to domain {peer}", plan.size);
        let options = ExportOptions::new().writable(plan.rw);
        let r = self.ioctl(Op::Export, what, || {
            self.dev.export(&buf, domid, &options.private_data(first))
        });
        let hid = match r {
            Ok(hid) => hid,
            Err(errno) => {
                self.tolerate(Op::Export, errno, peer, generation, None, what())?;
                return Ok(false);
            }
        };
        self.ctx.add("exported", 1);
        self.ctx.add(&format!("exported.{}", plan.act.name()), 1);
        self.ctx.add("bytes_exported", plan.size);
        let now = Instant::now();
        let mut f = Flight {
            plan,
            peer,
            hid,
            generation,
            phase: Phase::Exported,
            due: now + self.ctx.op_timeout(),
            _buf: buf,
        };
        match plan.act {
            Act::Share => {}
            Act::Hold { ms } => f.due = now + Duration::from_millis(ms.into()),
            Act::Update => {
                t.updated = true;
                let again =
                    PrivData::new(tag(t).as_bytes()).map_err(|e| Stop::Failed(e.to_string()))?;
                let what = || format!("re-export of {}", f.describe());
                let r = self.ioctl(Op::Update, what, || {
                    self.dev
                        .export(&f._buf, domid, &options.private_data(again))
                });
                match r {
                    Ok(same) if same.matches(&hid) => self.ctx.add("updates_sent", 1),
                    Ok(other) => {
                        return Err(Stop::Failed(format!(
                            "{}: exporting the same dma-buf again gave id {other}",
                            f.describe()
                        )))
                    }
                    Err(errno) => {
                        self.tolerate(Op::Update, errno, peer, generation, None, what())?;
                    }
                }
            }
            Act::Revoke { .. } => {}
        }
        self.flights.push(f);
        if let Act::Revoke { .. } = plan.act {
            let at = self.flights.len() - 1;
            self.unexport(at)?;
        }
        Ok(true)
    }

    /// Runs an ioctl under the watchdog, again while it says `EAGAIN` (up
    /// to `--op-timeout`); the errno of a failure.
    fn ioctl<T>(
        &self,
        op: Op,
        what: impl Fn() -> String,
        mut f: impl FnMut() -> Result<T, Error>,
    ) -> Result<T, i32> {
        let until = Instant::now() + self.ctx.op_timeout();
        self.ctx.watched(EXPORTER, &what, || loop {
            match retry_full(&mut f) {
                Ok(v) => return Ok(v),
                Err(e) if classify(op, errno_of(&e)) == Class::Retry && Instant::now() < until => {
                    self.ctx.add(&format!("retried.{}", op.name()), 1);
                }
                Err(e) => return Err(errno_of(&e)),
            }
        })
    }

    /// An error of `op` about `peer`: counted and, if the peer's loss
    /// explains it, tolerated once an event confirms that.
    fn tolerate(
        &mut self,
        op: Op,
        errno: i32,
        peer: u32,
        generation: u64,
        hid: Option<HyperDmabufId>,
        what: String,
    ) -> Result<(), Stop> {
        let text = format!(
            "{what}: {} ({})",
            errno_name(errno),
            std::io::Error::from_raw_os_error(errno)
        );
        if classify(op, errno) != Class::PeerLoss {
            return Err(Stop::Failed(format!(
                "{text}: not an error the driver documents here"
            )));
        }
        self.ctx.count_loss(op, errno);
        if self.peers.generation(peer) == generation {
            self.pending.push(Suspect {
                peer,
                hid,
                until: Instant::now() + CONFIRM_WINDOW,
                what: text,
            });
        }
        Ok(())
    }

    /// Unexports flight `at` (its act's delay for a revoke).
    fn unexport(&mut self, at: usize) -> Result<(), Stop> {
        let f = &self.flights[at];
        let delay = match f.plan.act {
            Act::Revoke { delay_ms } => delay_ms,
            _ => 0,
        };
        let (hid, peer, generation) = (f.hid, f.peer, f.generation);
        let what = || format!("unexport of {}", self.flights[at].describe());
        let r = self.ioctl(Op::Unexport, what, || {
            self.dev.unexport(&hid, Duration::from_millis(delay.into()))
        });
        let text = what();
        let f = &mut self.flights[at];
        f.phase = Phase::Ending;
        f.due = Instant::now() + self.ctx.op_timeout() + Duration::from_millis(delay.into());
        if let Err(errno) = r {
            self.tolerate(Op::Unexport, errno, peer, generation, None, text)?;
        }
        Ok(())
    }

    /// Fails on a flight or a tolerated error past its time; unexports a
    /// held buffer whose time is up.
    fn deadlines(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        if let Some(s) = self.pending.overdue(now) {
            return Err(Stop::Failed(format!(
                "{}, but domain {} stayed connected for {} s after it",
                s.what,
                s.peer,
                CONFIRM_WINDOW.as_secs()
            )));
        }
        for at in 0..self.flights.len() {
            let f = &self.flights[at];
            if now < f.due {
                continue;
            }
            match (f.phase, f.plan.act) {
                (Phase::Exported, Act::Hold { .. }) => self.unexport(at)?,
                (Phase::Exported, _) => {
                    return Err(Stop::Hung(format!(
                        "{}: no Released from the importer within {} s",
                        f.describe(),
                        self.ctx.args.op_timeout
                    )))
                }
                (Phase::Ending, _) => {
                    return Err(Stop::Hung(format!(
                        "{}: no GrantsEnded within {} s of its unexport or its peer's loss",
                        f.describe(),
                        self.ctx.args.op_timeout
                    )))
                }
            }
        }
        Ok(())
    }

    /// Whether the driver still has our export `hid` (a connection's
    /// exports leave with it, before its `PeerDisconnected` is posted).
    fn still_exported(&self, hid: &HyperDmabufId) -> Result<bool, Stop> {
        match self.dev.query(hid, QueryItem::Type) {
            Ok(_) => Ok(true),
            Err(e) if errno_of(&e) == libc::ENOENT => Ok(false),
            Err(e) => Err(Stop::Failed(format!("asking the driver about {hid}: {e}"))),
        }
    }

    fn on_event(&mut self, e: &Event) -> Result<(), Stop> {
        if let Some(gone) = self.peers.on_event(self.ctx, e) {
            self.ctx.add("peer_disconnects_seen_by_exporter", 1);
            self.pending.on_disconnect(gone);
            // The connection's buffers end without our unexport: Xen drops
            // a dead domain's mappings, a closing one's drain. But this
            // event may be read after the peer came back and took new
            // exports of ours (one event is read per turn, exports go on
            // between): those live on, and the driver still knows them.
            let due = Instant::now() + self.ctx.op_timeout();
            for at in 0..self.flights.len() {
                let f = &self.flights[at];
                if f.peer != gone || f.phase != Phase::Exported {
                    continue;
                }
                if self.still_exported(&f.hid)? {
                    self.ctx.add("flights_outliving_an_old_disconnect", 1);
                    continue;
                }
                let f = &mut self.flights[at];
                f.phase = Phase::Ending;
                f.due = due;
                self.ctx.add("flights_ended_by_peer_loss", 1);
            }
            return Ok(());
        }
        let Some(hid) = e.hid else { return Ok(()) };
        let Some(at) = self.flights.iter().position(|f| f.hid.matches(&hid)) else {
            return Ok(());
        };
        match (e.kind, self.flights[at].phase, self.flights[at].plan.act) {
            (EventType::Released, Phase::Exported, Act::Share | Act::Update) => {
                self.ctx.add("released_by_peer", 1);
                self.unexport(at)?;
            }
            (EventType::GrantsEnded, phase, _) => {
                let f = self.flights.remove(at);
                if phase == Phase::Exported {
                    // Only the peer's loss ends an export we did not
                    // unexport; its PeerDisconnected must follow.
                    self.pending.push(Suspect {
                        peer: f.peer,
                        hid: None,
                        until: Instant::now() + CONFIRM_WINDOW,
                        what: format!(
                            "{}: its grants ended while it was still exported",
                            f.describe()
                        ),
                    });
                }
                self.ctx.add("grants_ended", 1);
            }
            _ => {}
        }
        Ok(())
    }
}

// --- the importer ----------------------------------------------------------

/// A buffer the importer holds.
struct Held {
    v: Verified,
    peer: u32,
    hid: HyperDmabufId,
    until: Instant,
}

struct Importer<'a> {
    ctx: &'a Ctx,
    dev: Device,
    rng: Rng,
    peers: Peers,
    held: Vec<Held>,
    /// Buffers already imported (a late reader may be told of one twice),
    /// with the seed of their pattern.
    seen: HashMap<HyperDmabufId, u64>,
    /// Buffers revoked by their exporter.
    revoked: HashSet<HyperDmabufId>,
    pending: Pending,
    /// Kept buffers ([`Tag::kept_by`]) whose import failed, waiting for
    /// their `Unexport`: (peer, exporting agent, the failure).
    kept_failed: HashMap<HyperDmabufId, (u32, u64, String)>,
    /// Exporting agents (peer, agent) that unexported a kept buffer we
    /// failed to import and never released: they must have ended, so a
    /// later `NewExport` of theirs means the import failed for nothing.
    ended: HashMap<(u32, u64), String>,
    /// Buffers announced when this reader opened the device: a previous
    /// agent of this domain may have imported and released them, and the
    /// exporter's unexport that follows is not a sign of its end.
    replayed: HashSet<HyperDmabufId>,
}

impl Importer<'_> {
    fn run(&mut self) -> Result<(), Stop> {
        // What the driver queued at our open (the replay), first.
        while let Some(e) = next_event(&self.dev, Duration::ZERO)? {
            if let (EventType::NewExport, Some(hid)) = (e.kind, e.hid) {
                self.replayed.insert(hid);
            }
            self.on_event(&e)?;
        }
        loop {
            let now = Instant::now();
            let stopping = self.ctx.stopping();
            let mut at = 0;
            while at < self.held.len() {
                if stopping || now >= self.held[at].until {
                    let h = self.held.swap_remove(at);
                    self.release(h)?;
                } else {
                    at += 1;
                }
            }
            if let Some(s) = self.pending.overdue(now) {
                return Err(Stop::Failed(format!(
                    "{}, but neither did domain {} disconnect nor was the buffer unexported \
                     within {} s",
                    s.what,
                    s.peer,
                    CONFIRM_WINDOW.as_secs()
                )));
            }
            if stopping && self.pending.is_empty() {
                return Ok(());
            }
            let wait = poll_wait(
                now,
                self.held
                    .iter()
                    .map(|h| h.until)
                    .chain(self.pending.next_until()),
            );
            if let Some(e) = next_event(&self.dev, wait)? {
                self.on_event(&e)?;
            }
        }
    }

    /// Checks every byte again (the exporter never writes after it
    /// exported, and a dead exporter's frames stay until we let go), then
    /// releases.
    fn release(&mut self, h: Held) -> Result<(), Stop> {
        let what = || {
            format!(
                "re-reading {} bytes of domain {} id {}",
                h.v.size, h.peer, h.hid
            )
        };
        self.ctx
            .watched(IMPORTER, what, || h.v.check())
            .map_err(|m| Stop::Mismatch(format!("{} at release: {m}", what())))?;
        self.ctx.add("reverified", 1);
        self.ctx.add("bytes_verified", h.v.size);
        let hid = h.hid;
        self.ctx
            .watched(IMPORTER, || format!("releasing id {hid}"), move || drop(h));
        Ok(())
    }

    fn on_event(&mut self, e: &Event) -> Result<(), Stop> {
        if let Some(gone) = self.peers.on_event(self.ctx, e) {
            self.ctx.add("peer_disconnects_seen", 1);
            self.pending.on_disconnect(gone);
            self.kept_failed.retain(|_, k| k.0 != gone);
            self.ended.retain(|k, _| k.0 != gone);
            return Ok(());
        }
        let peer = u32::from(e.peer.get());
        let Some(hid) = e.hid else { return Ok(()) };
        let text = std::str::from_utf8(e.priv_data.as_bytes()).ok();
        match e.kind {
            EventType::Unexport => {
                self.revoked.insert(hid);
                self.pending.on_unexport(&hid);
                if let Some((peer, agent, what)) = self.kept_failed.remove(&hid) {
                    self.ended.insert((peer, agent), what);
                }
                Ok(())
            }
            EventType::Update => {
                let Some(&seed) = self.seen.get(&hid) else {
                    return Ok(());
                };
                match text.and_then(parse_tag) {
                    Some(Tag {
                        seed: s,
                        updated: true,
                        ..
                    }) if s == seed => {
                        self.ctx.add("updates_seen", 1);
                        Ok(())
                    }
                    _ => Err(Stop::Failed(format!(
                        "domain {peer} id {hid}: an Update with private data {:?}, expected \
                         \"{}\"",
                        String::from_utf8_lossy(e.priv_data.as_bytes()),
                        tag(Tag {
                            seed,
                            updated: true,
                            kept_by: None
                        })
                    ))),
                }
            }
            EventType::NewExport if !self.ctx.stopping() && self.ctx.wanted(peer) => {
                let Some(t) = text.and_then(parse_tag) else {
                    return Ok(());
                };
                if let Some(what) = t.kept_by.and_then(|a| self.ended.get(&(peer, a))) {
                    return Err(Stop::Failed(format!(
                        "{what}; its exporter unexported it unreleased, as if it had ended, \
                         but then exported id {hid}: the import failed with no revoke or \
                         peer loss to explain it"
                    )));
                }
                if self.seen.insert(hid, t.seed).is_some() {
                    return Ok(());
                }
                self.import(e, hid, t)
            }
            _ => Ok(()),
        }
    }

    fn import(&mut self, e: &Event, hid: HyperDmabufId, t: Tag) -> Result<(), Stop> {
        let seed = t.seed;
        let peer = u32::from(e.peer.get());
        let generation = self.peers.generation(peer);
        let writable = e.flags.contains(ExportFlags::WRITABLE);
        let rw = writable && self.rng.chance(50);
        let what = format!(
            "import of {} bytes ({}) from domain {peer} id {hid}",
            e.size,
            if rw { "rw" } else { "ro" }
        );
        let until = Instant::now() + self.ctx.op_timeout();
        let r = loop {
            let r = self.ctx.watched(
                IMPORTER,
                || what.clone(),
                || Verified::import(&self.dev, &hid, rw, seed, e.size),
            );
            match r {
                Err(ImportError::Import(err))
                    if classify(Op::Import, errno_of(&err)) == Class::Retry
                        && Instant::now() < until =>
                {
                    self.ctx.add("retried.import", 1);
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        match r {
            Ok(v) => {
                self.ctx.add("imported", 1);
                self.ctx.add("verified", 1);
                self.ctx.add("bytes_verified", v.size);
                let ms = next_hold_ms(&mut self.rng, self.ctx.args.max_hold_ms);
                let h = Held {
                    v,
                    peer,
                    hid,
                    until: Instant::now() + Duration::from_millis(ms.into()),
                };
                self.held.push(h);
                Ok(())
            }
            Err(ImportError::Other(m)) => Err(Stop::Mismatch(format!("{what}: {m}"))),
            Err(ImportError::Import(err)) => {
                let errno = errno_of(&err);
                if classify(Op::Import, errno) != Class::PeerLoss {
                    return Err(Stop::Failed(format!(
                        "{what}: {err}: not an error the driver documents here"
                    )));
                }
                self.ctx.count_loss(Op::Import, errno);
                let explained =
                    self.revoked.contains(&hid) || self.peers.generation(peer) != generation;
                let what = format!("{what}: {}", errno_name(errno));
                if let Some(agent) = t.kept_by.filter(|_| !self.replayed.contains(&hid)) {
                    // A kept buffer: only its exporter's end (or the
                    // peer's loss) explains it.
                    self.ctx
                        .add(&format!("loss.import.{}.kept", errno_name(errno)), 1);
                    if self.peers.generation(peer) == generation {
                        if self.revoked.contains(&hid) {
                            self.ended.insert((peer, agent), what.clone());
                        } else {
                            self.kept_failed.insert(hid, (peer, agent, what.clone()));
                        }
                    }
                }
                if !explained {
                    self.pending.push(Suspect {
                        peer,
                        hid: Some(hid),
                        until: Instant::now() + CONFIRM_WINDOW,
                        what,
                    });
                }
                Ok(())
            }
        }
    }
}

// --- the run ---------------------------------------------------------------

/// The counters the status line and the summary show, in order.
const SHOWN: [&str; 8] = [
    "exported",
    "grants_ended",
    "imported",
    "reverified",
    "bytes_verified",
    "updates_seen",
    "peer_disconnects_seen",
    "flights_ended_by_peer_loss",
];

/// `hdmabuf-agent soak`: runs the agent and prints its summary.
pub(crate) fn run(args: &SoakArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let args = args.clone();
    let mut seeds = Rng::new(args.seed);
    let (export_seed, import_seed) = (seeds.next_u64(), seeds.next_u64());
    let ex_dev = Device::open_path(device)?;
    let im_dev = Device::open_path(device)?;
    let seconds = args.seconds;
    let status_every = Duration::from_secs(args.status_every);
    let op_timeout = Duration::from_secs(args.op_timeout);
    let ctx = Arc::new(Ctx {
        args,
        started: Instant::now(),
        stop: AtomicBool::new(false),
        counts: Mutex::new(BTreeMap::new()),
        busy: [Mutex::new(None), Mutex::new(None)],
    });
    out.line(
        format!(
            "soak: {seconds} s, seed {}, peers {}, up to {} bytes, {} in flight",
            ctx.args.seed,
            if ctx.args.peers.is_empty() {
                "all".to_string()
            } else {
                format!("{:?}", ctx.args.peers)
            },
            ctx.args.max_size,
            ctx.args.window
        ),
        json!({ "soak": "start", "seconds": seconds, "seed": ctx.args.seed }),
    );
    let c = Arc::clone(&ctx);
    let exporter = std::thread::spawn(move || {
        Exporter {
            ctx: &c,
            dev: ex_dev,
            rng: Rng::new(export_seed),
            peers: Peers::default(),
            flights: Vec::new(),
            pending: Pending::default(),
        }
        .run()
    });
    let c = Arc::clone(&ctx);
    let importer = std::thread::spawn(move || {
        Importer {
            ctx: &c,
            dev: im_dev,
            rng: Rng::new(import_seed),
            peers: Peers::default(),
            held: Vec::new(),
            seen: HashMap::new(),
            revoked: HashSet::new(),
            pending: Pending::default(),
            kept_failed: HashMap::new(),
            ended: HashMap::new(),
            replayed: HashSet::new(),
        }
        .run()
    });
    let end = ctx.started + Duration::from_secs(seconds);
    let mut next_status = ctx.started + status_every;
    let mut failure = None;
    // Once stopped, a thread waits at most `--op-timeout` for a flight's
    // end or CONFIRM_WINDOW for an event: past both (and a margin) it is
    // looping without end, which fails the run as a hang, not silently.
    let drain = op_timeout.max(CONFIRM_WINDOW) + Duration::from_secs(30);
    let mut stopped_at = None;
    while !(exporter.is_finished() && importer.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now >= end || exporter.is_finished() || importer.is_finished() {
            // The end, or one side failed: the other side stops too, and
            // releases what it holds.
            ctx.stop.store(true, Ordering::Relaxed);
            let since = *stopped_at.get_or_insert(now);
            if now.duration_since(since) > drain {
                for (name, done) in [
                    ("exporter", exporter.is_finished()),
                    ("importer", importer.is_finished()),
                ] {
                    if !done {
                        eprintln!(
                            "hdmabuf-agent: soak: HUNG: the {name} has not stopped {} s after the end",
                            drain.as_secs()
                        );
                    }
                }
                print_summary(&ctx, out, "hung");
                std::process::exit(4);
            }
        }
        for (who, name) in [(EXPORTER, "exporter"), (IMPORTER, "importer")] {
            if let Some((since, what)) = lock(&ctx.busy[who]).as_ref() {
                if now.duration_since(*since) > op_timeout {
                    // A stuck ioctl cannot be interrupted: report and go.
                    eprintln!(
                        "hdmabuf-agent: soak: HUNG: the {name}'s {what} has not returned after {} s",
                        op_timeout.as_secs()
                    );
                    print_summary(&ctx, out, "hung");
                    std::process::exit(4);
                }
            }
        }
        if now >= next_status {
            next_status += status_every;
            out.line(
                format!("soak: {}", status_text(&ctx)),
                json!({ "soak": "status", "counts": counts_json(&ctx) }),
            );
        }
    }
    for (name, handle) in [("exporter", exporter), ("importer", importer)] {
        let result = handle
            .join()
            .unwrap_or_else(|_| Err(Stop::Failed(format!("the {name} thread panicked"))));
        if let Err(stop) = result {
            failure.get_or_insert(stop);
        }
    }
    match failure {
        None => {
            print_summary(&ctx, out, "pass");
            Ok(())
        }
        Some(stop) => {
            print_summary(&ctx, out, "fail");
            Err(match stop {
                Stop::Mismatch(m) => Failure::Mismatch(format!("soak: {m}")),
                Stop::Hung(m) => Failure::Timeout(format!("soak: {m}")),
                Stop::Failed(m) => Failure::Error(format!("soak: {m}")),
            })
        }
    }
}

fn status_text(ctx: &Ctx) -> String {
    let counts = lock(&ctx.counts);
    let shown = SHOWN
        .iter()
        .map(|k| format!("{k}={}", counts.get(*k).copied().unwrap_or(0)));
    let losses = counts
        .iter()
        .filter(|(k, _)| k.starts_with("loss."))
        .map(|(k, v)| format!("{k}={v}"));
    format!(
        "t={}s {}",
        ctx.started.elapsed().as_secs(),
        shown.chain(losses).collect::<Vec<_>>().join(" ")
    )
}

fn counts_json(ctx: &Ctx) -> Value {
    let counts = lock(&ctx.counts);
    Value::Object(
        counts
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

/// The last line: `soak summary: RESULT seconds=... seed=... name=value...`
/// (every counter), which the scenario adds up over the domains.
fn print_summary(ctx: &Ctx, out: &Output, result: &str) {
    let counts = lock(&ctx.counts);
    let all = counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    drop(counts);
    out.line(
        format!(
            "soak summary: {result} seconds={} seed={} {all}",
            ctx.started.elapsed().as_secs(),
            ctx.args.seed
        ),
        json!({
            "soak": "summary",
            "result": result,
            "seconds": ctx.started.elapsed().as_secs(),
            "seed": ctx.args.seed,
            "counts": counts_json(ctx),
        }),
    );
}

/// How long to wait for events before the earliest of `due` (at most
/// 250 ms, so that the stop flag and deadlines are looked at often).
fn poll_wait(now: Instant, due: impl Iterator<Item = Instant>) -> Duration {
    const TICK: Duration = Duration::from_millis(250);
    due.min()
        .map_or(TICK, |next| next.saturating_duration_since(now).min(TICK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_deterministic_and_covers_every_case() {
        let draw = |seed, max| {
            let mut rng = Rng::new(seed);
            (0..400)
                .map(|_| next_export(&mut rng, max))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 4 << 20), draw(7, 4 << 20));
        assert_ne!(draw(7, 4 << 20), draw(8, 4 << 20));
        for seed in 0..32 {
            let p = draw(seed, 4 << 20);
            for act in ["share", "update", "revoke", "hold"] {
                let n = p.iter().filter(|e| e.act.name() == act).count();
                assert!((60..=140).contains(&n), "seed {seed}: {act} {n} times");
            }
            assert!(p.iter().any(|e| e.size == 4096));
            assert!(p.iter().any(|e| e.size == 4 << 20));
            assert!(p.iter().any(|e| e.size > 1 << 20 && e.size < 4 << 20));
            assert!(p.iter().any(|e| e.rw) && p.iter().any(|e| !e.rw));
            let delays = || {
                p.iter().filter_map(|e| match e.act {
                    Act::Revoke { delay_ms } => Some(delay_ms),
                    _ => None,
                })
            };
            assert!(delays().any(|d| d == 0) && delays().any(|d| d > 0));
            for e in &p {
                assert!(e.size % 4096 == 0 && (4096..=4 << 20).contains(&e.size));
                match e.act {
                    Act::Revoke { delay_ms } => assert!(delay_ms <= 20),
                    Act::Hold { ms } => assert!((1..=3000).contains(&ms)),
                    _ => {}
                }
                let t = Tag {
                    seed: e.seed,
                    updated: true,
                    kept_by: Some(u64::MAX),
                };
                assert!(PrivData::new(tag(t).as_bytes()).is_ok());
            }
        }
        // A largest size below a page still gives whole pages.
        let mut rng = Rng::new(1);
        assert!((0..50).all(|_| next_export(&mut rng, 100).size == 4096));
    }

    #[test]
    fn hold_times_stay_in_range_and_include_zero() {
        let mut rng = Rng::new(3);
        let holds: Vec<u32> = (0..500).map(|_| next_hold_ms(&mut rng, 2000)).collect();
        assert!(holds.iter().all(|&h| h <= 2000));
        assert!(holds.contains(&0));
        assert!(holds.iter().any(|&h| h > 1000));
        let mut rng = Rng::new(3);
        assert!((0..100).all(|_| next_hold_ms(&mut rng, 0) == 0));
    }

    #[test]
    fn tags_round_trip_and_junk_is_refused() {
        for seed in [0, 1, 42, u64::MAX >> 1, u64::MAX] {
            for updated in [false, true] {
                for kept_by in [None, Some(0), Some(70), Some(u64::MAX)] {
                    let t = Tag {
                        seed,
                        updated,
                        kept_by,
                    };
                    assert_eq!(parse_tag(&tag(t)), Some(t), "{}", tag(t));
                }
            }
        }
        assert_eq!(
            tag(Tag {
                seed: 5,
                updated: false,
                kept_by: None
            }),
            "soak s=5"
        );
        assert_eq!(
            tag(Tag {
                seed: 5,
                updated: true,
                kept_by: Some(71)
            }),
            "soak s=5 k=71 u"
        );
        for junk in [
            "",
            "soak",
            "soak s=",
            "soak s= u",
            "soak s=1 ",
            "soak s=1 u ",
            "soak s=1 x",
            "soak s=1 k=",
            "soak s=1 k= u",
            "soak s=1 k=x",
            "soak s=1 k=2 k=3",
            "soak s=1 u k=2",
            "soak s= k=2",
            "soak s=-1",
            "soak s=+1",
            "soak s=18446744073709551616",
            "soak  s=1",
            "Soak s=1",
            "stress i=1 seed=2 act=a",
        ] {
            assert_eq!(parse_tag(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn errnos_are_sorted_as_the_driver_documents_them() {
        use Class::*;
        let table = [
            (Op::Export, libc::EAGAIN, Retry),
            (Op::Export, libc::ENOTCONN, PeerLoss),
            (Op::Export, libc::ETIMEDOUT, PeerLoss),
            (Op::Export, libc::EINVAL, Unexpected),
            (Op::Export, libc::ENOSPC, Unexpected),
            (Op::Export, libc::ENOENT, Unexpected),
            (Op::Export, libc::EIO, Unexpected),
            (Op::Update, libc::ENOTCONN, PeerLoss),
            (Op::Update, libc::EAGAIN, Retry),
            (Op::Update, libc::EINVAL, Unexpected),
            (Op::Import, libc::ENOENT, PeerLoss),
            (Op::Import, libc::EIO, PeerLoss),
            (Op::Import, libc::EAGAIN, Retry),
            (Op::Import, libc::EBUSY, Unexpected),
            (Op::Import, libc::EPERM, Unexpected),
            (Op::Import, libc::ENOTCONN, Unexpected),
            (Op::Import, libc::EINVAL, Unexpected),
            (Op::Unexport, libc::ENOENT, PeerLoss),
            (Op::Unexport, libc::EAGAIN, Unexpected),
            (Op::Unexport, libc::EIO, Unexpected),
            (Op::Unexport, libc::ENOTCONN, Unexpected),
        ];
        for (op, errno, class) in table {
            assert_eq!(classify(op, errno), class, "{op:?} {}", errno_name(errno));
        }
        for op in [Op::Export, Op::Update, Op::Import, Op::Unexport] {
            assert_eq!(classify(op, 0), Unexpected);
            assert_eq!(classify(op, libc::EFAULT), Unexpected);
        }
    }

    fn hid(n: u8) -> HyperDmabufId {
        let mut raw = [0u8; HyperDmabufId::WIRE_SIZE];
        raw[0] = n;
        HyperDmabufId::decode(&raw).expect("a valid id")
    }

    #[test]
    fn tolerated_errors_need_an_explaining_event() {
        let t0 = Instant::now();
        let suspect = |peer, h: Option<u8>, secs| Suspect {
            peer,
            hid: h.map(hid),
            until: t0 + Duration::from_secs(secs),
            what: format!("{peer}"),
        };
        let mut p = Pending::default();
        assert!(p.is_empty() && p.overdue(t0 + Duration::from_secs(999)).is_none());
        p.push(suspect(5, None, 10));
        p.push(suspect(6, Some(1), 20));
        p.push(suspect(6, None, 30));
        assert!(p.overdue(t0).is_none());
        assert_eq!(
            p.overdue(t0 + Duration::from_secs(10)).map(|s| s.peer),
            Some(5)
        );
        // Another peer's death or another buffer's unexport explains nothing.
        p.on_disconnect(7);
        p.on_unexport(&hid(2));
        assert_eq!(
            p.overdue(t0 + Duration::from_secs(10)).map(|s| s.peer),
            Some(5)
        );
        p.on_disconnect(5);
        assert!(p.overdue(t0 + Duration::from_secs(19)).is_none());
        // The unexport explains the import, not the export to that peer.
        p.on_unexport(&hid(1));
        assert!(p.overdue(t0 + Duration::from_secs(29)).is_none());
        assert!(p.overdue(t0 + Duration::from_secs(30)).is_some());
        p.on_disconnect(6);
        assert!(p.is_empty());
    }

    #[test]
    fn command_lines() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let argv = ["hdmabuf-agent", "soak"].iter().chain(args);
            crate::Cli::try_parse_from(argv).map(|cli| cli.command)
        };
        let Ok(crate::Command::Soak(a)) = parse(&[
            "--seconds",
            "60",
            "--seed",
            "9",
            "--peers",
            "0,5",
            "--max-size",
            "2M",
        ]) else {
            panic!("a full command line");
        };
        assert_eq!((a.seconds, a.seed, a.max_size), (60, 9, 2 << 20));
        assert_eq!(a.peers, [0, 5]);
        assert_eq!((a.window, a.op_timeout, a.status_every), (4, 120, 30));
        for bad in [
            &[][..],
            &["--seconds", "x"],
            &["--seconds", "1", "--window", "0"],
            &["--seconds", "1", "--window", "17"],
            &["--seconds", "1", "--op-timeout", "0"],
            &["--seconds", "1", "--peers", "a"],
        ] {
            assert_eq!(parse(bad).err().map(|e| e.exit_code()), Some(2), "{bad:?}");
        }
    }
}
