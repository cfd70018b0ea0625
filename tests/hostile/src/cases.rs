// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile peer`: the attacks (issue 8, point 1).
//!
//! Each case starts from a fresh frontend instance (the backend in
//! InitWait), attacks, checks what it can see itself (the status in each
//! response, the backend's state), then tears the instance down; the
//! referee in the backend's domain checks the rest between `begin` and
//! `end` (see `referee.rs`): the counters moved exactly as expected, the
//! right number of warning lines naming this domain appeared, and nothing
//! imported from this domain is left behind.

mod flood;
mod importer;
mod renumber;

use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hdmabuf_agent::rng::Rng;
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::limits::{MAX_IMPORTS_PER_PEER, XEN_PAGE_SIZE};
use hyper_dmabuf_common::pgdir::{self, DirPage, Layout, LEAF_ENTRIES, ROOT_ENTRIES};
use hyper_dmabuf_common::wire::{
    self as wire, Export, ExportFlags, FenceId, FenceResult, MapEpoch, Message, PageRefs, PrivData,
    Request, Response, Slot,
};
use hyper_dmabuf_common::xen::{GrantRef, Status};
use hyper_dmabuf_xenbus_proto::schema;
use hyper_dmabuf_xenbus_proto::XenbusState;

use crate::ffi::{self, Granted};
use crate::limits::scaled;
use crate::malformed;
use crate::peer::{Conn, Device, Rings, ANSWER};
use crate::xs::{mailbox, Xs};

/// What the referee must see for a case.
///
/// Every line the victim's driver logs about this domain is charged to
/// this domain's budget (`common::logbudget`); past it a line is only
/// counted (`log_lines_suppressed`). So the referee checks the lines the
/// case *caused*: those printed plus those suppressed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Expect {
    /// Requests the victim refuses as malformed (`protocol_errors`).
    pub(crate) protocol_errors: u64,
    /// Rings the victim closes (`ring_errors`).
    pub(crate) ring_errors: u64,
    /// Fewest warning lines about this domain the driver logs.
    pub(crate) min_lines: u32,
    /// Most warning lines about this domain the driver logs.
    pub(crate) max_lines: u32,
    /// Lines of level info it logs about this domain (one per connection
    /// and one per disconnection); `None`: not counted (the case unloads
    /// the module, whose counter goes with it).
    pub(crate) info_lines: Option<u64>,
    /// Warning lines of Linux's own about this domain (not charged).
    pub(crate) linux_lines: u32,
    /// Reconnections made, and in how many milliseconds (for the
    /// referee's report line).
    pub(crate) reconnects: Option<(u32, u64)>,
}

impl Expect {
    /// Exactly one warning line, nothing counted, no connection
    /// (xenstore attacks).
    const ONE_LINE: Expect = Expect {
        protocol_errors: 0,
        ring_errors: 0,
        min_lines: 1,
        max_lines: 1,
        info_lines: Some(0),
        linux_lines: 0,
        reconnects: None,
    };
    /// A connection whose ring we break: counted once, one line.
    const BROKEN_RING: Expect = Expect {
        protocol_errors: 0,
        ring_errors: 1,
        min_lines: 1,
        max_lines: 1,
        info_lines: Some(2),
        linux_lines: 0,
        reconnects: None,
    };
    /// A connection and no warning.
    const QUIET: Expect = Expect {
        protocol_errors: 0,
        ring_errors: 0,
        min_lines: 0,
        max_lines: 0,
        info_lines: Some(2),
        linux_lines: 0,
        reconnects: None,
    };

    /// A connection and `n` refused requests, each logged.
    fn refused(n: u64) -> Expect {
        Expect {
            protocol_errors: n,
            min_lines: n as u32,
            max_lines: n as u32,
            ..Expect::QUIET
        }
    }
}

/// Everything a case works with.
pub(crate) struct Ctx<'g> {
    pub(crate) xs: Xs,
    pub(crate) dev: Device,
    pub(crate) gntalloc: &'g File,
    pub(crate) rng: Rng,
    /// A domain other than the backend (the well-behaved peer), to grant
    /// pages to that the backend may not map.
    pub(crate) bystander: u16,
    /// How many times `reconnect-flood` reconnects.
    pub(crate) reconnects: u32,
    next_req: u32,
    seq: u32,
}

type CaseFn = fn(&mut Ctx<'_>) -> Result<Expect, String>;

/// How long the referee may take to judge a command.
const REFEREE_ANSWER: Duration = Duration::from_secs(60);

/// The cases, in the order they run.
pub(crate) const CASES: &[(&str, CaseFn)] = &[
    ("importer-early-map", importer::early_map),
    ("importer-refuse-export", importer::refuse_export),
    ("importer-silent-export", importer::silent_export),
    ("importer-lies", importer::lies),
    ("unknown-op", |c| refused_all(c, malformed::unknown_ops)),
    ("reserved-nonzero", |c| {
        refused_all(c, malformed::reserved_nonzero)
    }),
    ("bad-values", |c| refused_all(c, malformed::bad_values)),
    ("stale-ids", stale_ids),
    ("replay-after-unexport", replay_after_unexport),
    ("fences", fences),
    ("dir-count-size-disagree", dir_count_size_disagree),
    ("dir-nr-entries-wrong", dir_nr_entries_wrong),
    ("dir-bad-magic", dir_bad_magic),
    ("dir-out-of-range-gref", dir_out_of_range_gref),
    ("dir-foreign-gref", dir_foreign_gref),
    ("dir-data-not-owned", dir_data_not_owned),
    ("dir-loop", dir_loop),
    ("dir-leaf-twice", dir_leaf_twice),
    ("dir-good-control", dir_good_control),
    ("answer-wrong-id", |c| bad_answer(c, |a| a[0] ^= 0x40)),
    ("answer-wrong-op", |c| bad_answer(c, |a| a[4] = 0x01)),
    ("answer-bad-status", |c| {
        bad_answer(c, |a| a[8..12].copy_from_slice(&(-12345i32).to_le_bytes()))
    }),
    ("answer-reserved-nonzero", |c| bad_answer(c, |a| a[200] = 1)),
    ("ring-overflow", ring_overflow),
    ("ring-index-behind", ring_index_behind),
    ("unsolicited-response", unsolicited_response),
    ("flood-requests", flood_requests),
    ("flood-notifications", flood_notifications),
    ("flood-exports", flood_exports),
    ("xs-version-leading-zero", |c| {
        xs_bad_node(c, schema::NODE_VERSION, "01")
    }),
    ("xs-version-unsupported", |c| {
        xs_bad_node(c, schema::NODE_VERSION, "4")
    }),
    ("xs-ring-order-too-big", |c| {
        xs_bad_node(c, schema::NODE_RING_PAGE_ORDER, "5")
    }),
    ("xs-ring-ref-reserved", |c| xs_bad_node(c, "ring-ref0", "7")),
    ("xs-ring-ref-overflow", |c| {
        xs_bad_node(c, "ring-ref0", "4294967296")
    }),
    ("xs-ring-ref-missing", |c| xs_bad_node(c, "ring-ref0", "")),
    ("xs-ring-ref-not-granted", xs_ring_ref_not_granted),
    ("xs-ring-refs-duplicate", xs_duplicate_refs),
    ("xs-event-channel-zero", |c| {
        xs_bad_node(c, schema::NODE_EVENT_CHANNEL, "0")
    }),
    ("xs-event-channel-text", |c| {
        xs_bad_node(c, schema::NODE_EVENT_CHANNEL, "15 ")
    }),
    ("xs-event-channel-not-ours", |c| {
        xs_bad_node(c, schema::NODE_EVENT_CHANNEL, "4000")
    }),
    ("state-initwait-from-front", |c| state_jump(c, "2", false)),
    ("state-reconfigured-while-connected", |c| {
        state_jump(c, "8", true)
    }),
    ("state-garbage", |c| state_jump(c, "abc", true)),
    ("state-zero", |c| state_jump(c, "0", false)),
    ("state-garbage-repeated", state_garbage_repeated),
    // Counts the victim's gauges of imports, which the well-behaved
    // peer's sharing moves too: once it is done.
    ("renumber", renumber::renumber),
    // Spends this domain's budget of log lines: after every case that
    // expects a line.
    ("reconnect-flood", flood::reconnect_flood),
    ("refill-flood", flood::refill_flood),
    // Unbinds every device of the victim and unloads its module: last.
    ("importer-unload", importer::unload),
];

/// Cases that need the other peers of the victim done sharing (the
/// referee waits for them): the victim's gauges of imports are counted
/// for all peers, the reconnections' lines are counted with the victim's
/// count of every peer's suppressed lines, the latency measurement wants
/// the well-behaved peer idle, the unload takes its device away.
const QUIET: &[&str] = &[
    "renumber",
    "reconnect-flood",
    "refill-flood",
    "importer-unload",
];

/// How long the referee may wait for the other peers before a `QUIET`
/// case (the referee's own limit is 400 s).
const QUIET_WITHIN: Duration = Duration::from_secs(420);

impl<'g> Ctx<'g> {
    /// A context for device `dev`.
    pub(crate) fn new(xs: Xs, dev: Device, gntalloc: &'g File, seed: u64, bystander: u16) -> Self {
        Ctx {
            xs,
            dev,
            gntalloc,
            rng: Rng::new(seed),
            bystander,
            reconnects: 1000,
            next_req: 1,
            seq: 0,
        }
    }

    fn req_id(&mut self) -> u32 {
        self.next_req = self.next_req.wrapping_add(1);
        self.next_req
    }

    fn hid(&mut self) -> HyperDmabufId {
        random_hid(&mut self.rng)
    }

    fn request(&mut self, message: Message) -> Slot {
        Request {
            req_id: self.req_id(),
            message,
        }
        .encode()
    }

    fn export(&mut self, hid: HyperDmabufId, size: u64, dir_gref: u32) -> Slot {
        let export = Export {
            hid,
            size,
            pages: PageRefs::Directory(
                GrantRef::new(dir_gref).expect("callers pass references of at least 8"),
            ),
            flags: ExportFlags::default(),
            priv_data: PrivData::new(b"hostile").expect("short"),
            fence: None,
        };
        self.request(Message::Export(export))
    }

    /// Connects a fresh instance with well-formed nodes.
    fn connect<'r>(&mut self, rings: &'r Rings<'g>) -> Result<Conn<'r>, String> {
        let negotiated = self.dev.negotiate(&mut self.xs)?;
        let nodes = rings.nodes(&negotiated)?;
        rings.connect(&mut self.xs, &self.dev, &nodes)
    }

    fn rings(&self) -> Result<Rings<'g>, String> {
        Rings::new(self.gntalloc, &self.dev)
    }

    /// Sends a command to the referee and waits for its answer, serving
    /// the ring meanwhile (an import makes the victim send MAPPED).
    fn referee(&mut self, command: &str, mut conn: Option<&mut Conn<'_>>) -> Result<(), String> {
        let seq = self.post(command)?;
        self.await_referee(seq, command, scaled(REFEREE_ANSWER), |_, _| {
            match conn.as_deref_mut() {
                Some(c) => c.serve().map(drop),
                None => Ok(()),
            }
        })
    }

    /// Sends a command to the referee without waiting; returns its number.
    fn post(&mut self, command: &str) -> Result<u32, String> {
        self.seq += 1;
        let (cmd, ack) = mailbox(self.dev.own);
        self.xs.watch(&ack)?;
        self.xs.write(&cmd, &format!("{} {command}", self.seq))?;
        Ok(self.seq)
    }

    /// The referee's verdict on command `seq`, if it has given one.
    fn verdict(&mut self, seq: u32) -> Result<Option<Result<(), String>>, String> {
        let (_, ack) = mailbox(self.dev.own);
        let prefix = format!("{seq} ");
        Ok(self.xs.read(&ack)?.and_then(|answer| {
            answer.strip_prefix(&prefix).map(|verdict| {
                if verdict == "ok" {
                    Ok(())
                } else {
                    Err(format!("referee: {verdict}"))
                }
            })
        }))
    }

    /// Waits at most `limit` for the verdict on command `seq`, running
    /// `meanwhile` between looks.
    fn await_referee(
        &mut self,
        seq: u32,
        command: &str,
        limit: Duration,
        mut meanwhile: impl FnMut(&mut Xs, &Device) -> Result<(), String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            meanwhile(&mut self.xs, &self.dev)?;
            if let Some(verdict) = self.verdict(seq)? {
                return verdict;
            }
            if Instant::now() >= deadline {
                return Err(format!("the referee did not answer {command:?}"));
            }
            self.xs.settle(Duration::from_millis(50))?;
        }
    }

    /// Tells the referee the run is over.
    pub(crate) fn finish(&mut self) -> Result<(), String> {
        self.referee("done", None)
    }

    /// Waits for the backend to close the device, as it must after a
    /// fatal error of ours.
    fn await_closing(&mut self) -> Result<(), String> {
        let path = format!("{}/{}", self.dev.back, schema::NODE_STATE);
        let closing = XenbusState::Closing.as_u32().to_string();
        let closed = XenbusState::Closed.as_u32().to_string();
        self.xs
            .wait_for(&path, scaled(ANSWER), |v| {
                v == Some(closing.as_str()) || v == Some(closed.as_str())
            })
            .map(drop)
            .map_err(|e| format!("the backend did not close: {e}"))
    }
}

/// An id drawn from `rng` (an odd number, so never zero).
fn random_hid(rng: &mut Rng) -> HyperDmabufId {
    let mut key = [0u8; KEY_LEN];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    HyperDmabufId::new(rng.next_u64() | 1, key).expect("odd numbers are not zero")
}

/// Runs every case (or those named in `only`); returns the failures.
pub(crate) fn run(ctx: &mut Ctx<'_>, only: &[String]) -> Result<(), String> {
    let mut failures = Vec::new();
    let mut ran = 0;
    for &(name, case) in CASES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        ran += 1;
        let t0 = Instant::now();
        let outcome = ctx
            .dev
            .reset(&mut ctx.xs)
            .and_then(|()| {
                if QUIET.contains(&name) {
                    let command = format!("begin {name} quiet");
                    let seq = ctx.post(&command)?;
                    ctx.await_referee(seq, &command, scaled(QUIET_WITHIN), |_, _| Ok(()))
                } else {
                    ctx.referee(&format!("begin {name}"), None)
                }
            })
            .and_then(|()| case(ctx))
            .and_then(|expect| {
                ctx.dev.reset(&mut ctx.xs)?;
                let mut figures = String::new();
                if let Some(n) = expect.info_lines {
                    figures += &format!(" info={n}");
                }
                if expect.linux_lines > 0 {
                    figures += &format!(" linux={}", expect.linux_lines);
                }
                if let Some((cycles, ms)) = expect.reconnects {
                    figures += &format!(" cycles={cycles} ms={ms}");
                }
                ctx.referee(
                    &format!(
                        "end {name} {} {} {} {}{figures}",
                        expect.protocol_errors,
                        expect.ring_errors,
                        expect.min_lines,
                        expect.max_lines
                    ),
                    None,
                )
            });
        match outcome {
            Ok(()) => println!("hostile case {name}: ok ({} ms)", t0.elapsed().as_millis()),
            Err(e) => {
                println!("hostile case {name}: FAILED: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    ctx.dev.reset(&mut ctx.xs)?;
    println!("hostile: {ran} cases, {} failed", failures.len());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn expect_status(what: &str, got: Status, want: Status) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: answered {got:?}, expected {want:?}"))
    }
}

// --- requests the victim must refuse -----------------------------------------------

/// Sends each request `make` spoils (docs in `malformed.rs`) on one
/// connection and checks its answer: each is refused, with a line.
fn refused_all(ctx: &mut Ctx<'_>, make: malformed::Make) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let hid = ctx.hid();
    let checks = make(hid, &mut || ctx.req_id());
    for (what, slot, want) in &checks {
        expect_status(what, conn.ask(slot)?, *want)?;
    }
    Ok(Expect::refused(checks.len() as u64))
}

// --- ids ----------------------------------------------------------------------------------

fn stale_ids(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let hid = ctx.hid();
    let epoch = MapEpoch::FIRST;
    for message in [
        Message::Unexport(hid),
        Message::Update {
            hid,
            priv_data: PrivData::EMPTY,
            fence: None,
        },
        Message::Mapped { hid, epoch },
        Message::Release { hid, epoch },
    ] {
        let slot = ctx.request(message);
        expect_status(
            &format!("{:?} of an unknown id", message.op()),
            conn.ask(&slot)?,
            Status::NoSuchBuffer,
        )?;
    }
    // A real export, then its id with another key, then again.
    let slot = ctx.export(hid, 4096, 8);
    expect_status("EXPORT", conn.ask(&slot)?, Status::Ok)?;
    let mut key = *hid.key();
    key[0] ^= 0xff;
    let forged = HyperDmabufId::new(hid.number(), key).expect("a real id's number");
    let slot = ctx.request(Message::Unexport(forged));
    expect_status(
        "UNEXPORT with another key",
        conn.ask(&slot)?,
        Status::NoSuchBuffer,
    )?;
    let slot = ctx.request(Message::Update {
        hid: forged,
        priv_data: PrivData::EMPTY,
        fence: None,
    });
    expect_status(
        "UPDATE with another key",
        conn.ask(&slot)?,
        Status::NoSuchBuffer,
    )?;
    let slot = ctx.export(forged, 4096, 8);
    expect_status("EXPORT of a taken number", conn.ask(&slot)?, Status::Exists)?;
    let slot = ctx.export(hid, 4096, 8);
    expect_status("EXPORT again", conn.ask(&slot)?, Status::Exists)?;
    // The victim's user space cannot import it with the forged key.
    ctx.referee(&format!("import {forged} ENOENT"), Some(&mut conn))?;
    Ok(Expect::QUIET)
}

/// Fences (protocol version 3) from a hostile exporter: a SIGNAL of a
/// fence never attached, of one attached to another buffer, replayed; a
/// fence id reused; a fence never signalled (the victim ends it itself,
/// when it times out or when this session ends). Each refusal is a
/// status, not a protocol error: the requests are well formed.
fn fences(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let (good, other) = (ctx.hid(), ctx.hid());
    for hid in [good, other] {
        let slot = ctx.export(hid, 4096, 8);
        expect_status("EXPORT", conn.ask(&slot)?, Status::Ok)?;
    }
    let id = |n| FenceId::new(n).expect("not zero");
    let update = |hid, n| Message::Update {
        hid,
        priv_data: PrivData::EMPTY,
        fence: Some(id(n)),
    };
    let signal = |hid, n| Message::Signal {
        hid,
        fence: id(n),
        result: FenceResult::Signalled,
    };
    for (what, message, status) in [
        (
            "SIGNAL of a fence never attached",
            signal(good, 1),
            Status::NoSuchBuffer,
        ),
        ("fenced UPDATE", update(good, 1), Status::Ok),
        (
            "fenced UPDATE reusing its fence",
            update(other, 1),
            Status::Exists,
        ),
        (
            "SIGNAL naming another buffer",
            signal(other, 1),
            Status::NoSuchBuffer,
        ),
        ("SIGNAL", signal(good, 1), Status::Ok),
        ("SIGNAL replayed", signal(good, 1), Status::NoSuchBuffer),
        ("fenced UPDATE never signalled", update(good, 2), Status::Ok),
    ] {
        let slot = ctx.request(message);
        expect_status(what, conn.ask(&slot)?, status)?;
    }
    Ok(Expect::QUIET)
}

fn replay_after_unexport(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let hid = ctx.hid();
    let slot = ctx.export(hid, 4096, 8);
    expect_status("EXPORT", conn.ask(&slot)?, Status::Ok)?;
    let unexport = ctx.request(Message::Unexport(hid));
    expect_status("UNEXPORT", conn.ask(&unexport)?, Status::Ok)?;
    let mut replay = unexport;
    replay[0..4].copy_from_slice(&ctx.req_id().to_le_bytes());
    expect_status(
        "UNEXPORT replayed",
        conn.ask(&replay)?,
        Status::NoSuchBuffer,
    )?;
    let slot = ctx.request(Message::Update {
        hid,
        priv_data: PrivData::EMPTY,
        fence: None,
    });
    expect_status(
        "UPDATE after UNEXPORT",
        conn.ask(&slot)?,
        Status::NoSuchBuffer,
    )?;
    ctx.referee(&format!("import {hid} ENOENT"), Some(&mut conn))?;
    Ok(Expect::QUIET)
}

// --- page directories (the victim's user space imports) -------------------------------

/// Copies a directory page, or a buffer's data, into granted memory
/// (atomic word stores: the victim may map it at any time).
pub(crate) fn put_page(words: &[AtomicU32], bytes: &[u8]) {
    for (w, chunk) in words.iter().zip(bytes.chunks_exact(4)) {
        w.store(
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
            Ordering::Relaxed,
        );
    }
}

pub(crate) fn grefs(list: &[u32]) -> Vec<GrantRef> {
    list.iter()
        .map(|&g| GrantRef::new(g).expect("at least 8"))
        .collect()
}

/// Announces a buffer of `size` bytes whose root page `root` holds, and
/// has the victim import it expecting `errno`.
fn announce_and_import(
    ctx: &mut Ctx<'_>,
    conn: &mut Conn<'_>,
    size: u64,
    root: &Granted<'_>,
    errno: &str,
) -> Result<(), String> {
    let hid = ctx.hid();
    let slot = ctx.export(hid, size, root.grefs()[0]);
    expect_status("EXPORT", conn.ask(&slot)?, Status::Ok)?;
    ctx.referee(&format!("import {hid} {errno}"), Some(conn))?;
    // Withdraw it; the victim answers OK (nothing mapped) or, after a
    // successful import that it already released, OK too.
    let slot = ctx.request(Message::Unexport(hid));
    expect_status("UNEXPORT", conn.ask(&slot)?, Status::Ok)
}

/// One directory page, granted read-only to the backend.
fn dir_page<'g>(ctx: &Ctx<'g>, page: &DirPage) -> Result<Granted<'g>, String> {
    let g = ffi::grant_pages(ctx.gntalloc, ctx.dev.backend_id, 1, false)
        .map_err(|e| format!("gntalloc: {e}"))?;
    put_page(g.words(), page);
    Ok(g)
}

/// A one-level directory over `data`, for `size` bytes, then `mutate`d.
pub(crate) fn root_over(
    size: u64,
    data: &[u32],
    mutate: impl FnOnce(&mut DirPage),
) -> Result<DirPage, String> {
    let layout = Layout::new(size, u64::MAX).map_err(|e| format!("{e:?}"))?;
    let mut page = [0u8; XEN_PAGE_SIZE];
    pgdir::encode_root(&layout, &grefs(data), &mut page).map_err(|e| format!("{e:?}"))?;
    mutate(&mut page);
    Ok(page)
}

/// Byte offsets in a root page (docs/protocol.md, section 12).
pub(crate) const ROOT_SIZE: usize = 8;
pub(crate) const ROOT_NR_ENTRIES: usize = 20;
pub(crate) const ROOT_ENTRY0: usize = 32;

/// Imports a buffer whose one-level directory over `pages` real pages is
/// changed by `mutate`, expecting `errno`. `mutate` also gets a *ghost*
/// reference: one this domain granted and ended, so that it lies inside
/// the grant table but names no page the victim may map. The root is
/// granted first and the ghost last, so neither can take the other's
/// number.
fn dir_case(
    ctx: &mut Ctx<'_>,
    pages: u32,
    errno: &str,
    mutate: impl FnOnce(&mut DirPage, u32),
) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let (root, _data, size) =
        malformed::spoilt_buffer(ctx.gntalloc, ctx.dev.backend_id, pages, mutate)?;
    announce_and_import(ctx, &mut conn, size, &root, errno)?;
    // The victim logs the bad directory or the failed map, once.
    Ok(if errno == "0" {
        Expect::QUIET
    } else {
        Expect {
            min_lines: 1,
            max_lines: 1,
            ..Expect::QUIET
        }
    })
}

fn dir_count_size_disagree(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    dir_case(ctx, 2, "EIO", malformed::dir_size_disagrees)
}

fn dir_nr_entries_wrong(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    dir_case(ctx, 2, "EIO", malformed::dir_nr_entries_wrong)
}

fn dir_bad_magic(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    dir_case(ctx, 2, "EIO", malformed::dir_bad_magic)
}

fn dir_out_of_range_gref(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    dir_case(ctx, 2, "EIO", malformed::dir_gref_out_of_range)
}

fn dir_foreign_gref(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // A page this domain granted to another domain, not to the victim.
    let other = ffi::grant_pages(ctx.gntalloc, ctx.bystander, 1, false)
        .map_err(|e| format!("gntalloc: {e}"))?;
    let gref = other.grefs()[0];
    dir_case(ctx, 2, "EIO", |p, _| malformed::set_entry(p, 1, gref))
}

fn dir_data_not_owned(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    dir_case(ctx, 2, "EIO", malformed::dir_gref_not_granted)
}

fn dir_good_control(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // The same path with nothing wrong: the import succeeds, which shows
    // the failures above come from the directory alone.
    dir_case(ctx, 2, "0", |_, _| {})
}

/// Size with two leaves (past one level's 1016 pages, past one leaf's 1020).
pub(crate) const TWO_LEAVES: u64 = (LEAF_ENTRIES as u64 + 1) * XEN_PAGE_SIZE as u64;

pub(crate) fn two_level_root(root_entries: &[u32]) -> Result<DirPage, String> {
    let layout = Layout::new(TWO_LEAVES, u64::MAX).map_err(|e| format!("{e:?}"))?;
    let mut page = [0u8; XEN_PAGE_SIZE];
    pgdir::encode_root(&layout, &grefs(root_entries), &mut page).map_err(|e| format!("{e:?}"))?;
    Ok(page)
}

fn dir_loop(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // The root names itself as both leaves: a chain that loops back.
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let root = ffi::grant_pages(ctx.gntalloc, ctx.dev.backend_id, 1, false)
        .map_err(|e| format!("gntalloc: {e}"))?;
    let me = root.grefs()[0];
    put_page(root.words(), &two_level_root(&[me, me])?);
    announce_and_import(ctx, &mut conn, TWO_LEAVES, &root, "EIO")?;
    Ok(Expect {
        min_lines: 1,
        max_lines: 1,
        ..Expect::QUIET
    })
}

fn dir_leaf_twice(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // Leaf 0 listed in both positions: the second has the wrong index.
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let leaf = dir_page(ctx, &malformed::leaf_zero()?)?;
    let l = leaf.grefs()[0];
    let root = dir_page(ctx, &two_level_root(&[l, l])?)?;
    announce_and_import(ctx, &mut conn, TWO_LEAVES, &root, "EIO")?;
    Ok(Expect {
        min_lines: 1,
        max_lines: 1,
        ..Expect::QUIET
    })
}

const _: () = assert!(TWO_LEAVES / XEN_PAGE_SIZE as u64 > ROOT_ENTRIES as u64);

// --- the ring itself -------------------------------------------------------------------

/// Has the victim import a good buffer, so that it sends MAPPED, and
/// answers that request with a response `spoil`ed from the right one:
/// a broken answer is fatal to the ring.
fn bad_answer(ctx: &mut Ctx<'_>, spoil: fn(&mut Slot)) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let data = ffi::grant_pages(ctx.gntalloc, ctx.dev.backend_id, 1, false)
        .map_err(|e| format!("gntalloc: {e}"))?;
    let root = dir_page(ctx, &root_over(XEN_PAGE_SIZE as u64, data.grefs(), |_| {})?)?;
    let hid = ctx.hid();
    let slot = ctx.export(hid, XEN_PAGE_SIZE as u64, root.grefs()[0]);
    expect_status("EXPORT", conn.ask(&slot)?, Status::Ok)?;
    // The import does not wait for MAPPED's answer; the victim releases
    // the buffer at once (RELEASE queued behind MAPPED).
    ctx.referee(&format!("import {hid} 0"), None)?;
    conn.answer_next(|request| {
        let mut answer = Response {
            req_id: wire::request_id(request),
            op: wire::request_op(request),
            status: Status::Ok,
            map_epoch: None,
        }
        .encode();
        spoil(&mut answer);
        answer
    })?;
    ctx.await_closing()?;
    Ok(Expect::BROKEN_RING)
}

fn ring_overflow(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let conn = ctx.connect(&rings)?;
    // More requests than the ring holds.
    conn.force_req_prod(conn.size() + 1)?;
    ctx.await_closing()?;
    Ok(Expect::BROKEN_RING)
}

fn ring_index_behind(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let conn = ctx.connect(&rings)?;
    // A producer index behind what the victim consumed (wrapped back).
    conn.force_req_prod(u32::MAX - 3)?;
    ctx.await_closing()?;
    Ok(Expect::BROKEN_RING)
}

fn unsolicited_response(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let conn = ctx.connect(&rings)?;
    // A response on the victim's own ring, to a request it never sent.
    conn.force_rsp_prod(1)?;
    ctx.await_closing()?;
    Ok(Expect::BROKEN_RING)
}

// --- floods ---------------------------------------------------------------------------------

fn flood_requests(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    // Full rings of requests for unknown ids, answered every one.
    const STALE: u32 = 2000;
    let window = conn.size();
    let mut sent = 0;
    while sent < STALE {
        let burst = window.min(STALE - sent);
        let mut ids = Vec::new();
        for _ in 0..burst {
            let hid = ctx.hid();
            let slot = ctx.request(Message::Unexport(hid));
            ids.push(u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]));
            conn.send(&slot)?;
        }
        for expected in ids {
            let raw = conn.response()?;
            let rsp = Response::decode(&raw).map_err(|e| format!("{e:?}"))?;
            if rsp.req_id != expected || rsp.status != Status::NoSuchBuffer {
                return Err(format!("flood: request {expected} answered {rsp:?}"));
            }
        }
        sent += burst;
    }
    // Then a burst of refused ones, each a line charged to our budget.
    const REFUSED: u64 = 64;
    for _ in 0..REFUSED {
        let hid = ctx.hid();
        let mut slot = ctx.request(Message::Unexport(hid));
        slot[4] = 0x42;
        expect_status(
            "unknown op in a flood",
            conn.ask(&slot)?,
            Status::NotSupported,
        )?;
    }
    still_serves(ctx, &mut conn, "the flood")?;
    Ok(Expect::refused(REFUSED))
}

/// After `what`, the victim still accepts an announcement.
fn still_serves(ctx: &mut Ctx<'_>, conn: &mut Conn<'_>, what: &str) -> Result<(), String> {
    let hid = ctx.hid();
    let slot = ctx.export(hid, 4096, 8);
    expect_status(
        &format!("EXPORT after {what}"),
        conn.ask(&slot)?,
        Status::Ok,
    )
}

fn flood_notifications(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    for _ in 0..20_000 {
        conn.notify()?;
    }
    still_serves(ctx, &mut conn, "20000 empty notifications")?;
    Ok(Expect::QUIET)
}

fn flood_exports(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    // Announcements the victim keeps until the connection goes (the
    // referee checks none is left after the reset): as many as it takes
    // from one peer, then one too many. That is far more than a reader's
    // event queue holds, and the well-behaved peer's consumer in the
    // victim must lose none of its own events meanwhile (each peer has its
    // share of every queue).
    for _ in 0..MAX_IMPORTS_PER_PEER {
        let hid = ctx.hid();
        let slot = ctx.export(hid, 4096, 8);
        expect_status("EXPORT", conn.ask(&slot)?, Status::Ok)?;
    }
    let hid = ctx.hid();
    let slot = ctx.export(hid, 4096, 8);
    expect_status("EXPORT past the limit", conn.ask(&slot)?, Status::NoSpace)?;
    Ok(Expect::QUIET)
}

// --- xenstore ---------------------------------------------------------------------------

/// Publishes well-formed nodes, then overwrites (or, for an empty
/// value, removes) `node`, and switches to Initialised: the backend must
/// close, with one line.
fn xs_bad_node(ctx: &mut Ctx<'_>, node: &str, value: &str) -> Result<Expect, String> {
    xs_bad_node_with(ctx, node, |_| value.to_string(), Expect::ONE_LINE)
}

/// As [`xs_bad_node`], with the value computed from the rings.
fn xs_bad_node_with(
    ctx: &mut Ctx<'_>,
    node: &str,
    value: impl FnOnce(&Rings<'_>) -> String,
    expect: Expect,
) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let value = value(&rings);
    let negotiated = ctx.dev.negotiate(&mut ctx.xs)?;
    let nodes = rings.nodes(&negotiated)?;
    schema::publish_frontend(ctx.xs.store(), &ctx.dev.front, &nodes)
        .map_err(|e| format!("{e:?}"))?;
    let path = ctx.dev.front_node(node);
    if value.is_empty() {
        ctx.xs.remove(&path)?;
    } else {
        ctx.xs.write(&path, &value)?;
    }
    ctx.dev.set_state(&mut ctx.xs, XenbusState::Initialised)?;
    ctx.await_closing()?;
    Ok(expect)
}

fn xs_duplicate_refs(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // Both rings on one page.
    xs_bad_node_with(
        ctx,
        "back-ring-ref0",
        |r| r.ours.grefs()[0].to_string(),
        Expect::ONE_LINE,
    )
}

fn xs_ring_ref_not_granted(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // Linux's xenbus_map_ring_valloc reports its failure itself
    // (xenbus_dev_fatal); the driver's own line follows.
    let two = Expect {
        linux_lines: 1,
        ..Expect::ONE_LINE
    };
    xs_bad_node_with(ctx, "ring-ref0", |_| "65500".to_string(), two)
}

/// Writes `state` raw: after a good handshake if `connected`, else while
/// the backend waits in InitWait. The backend must close, with one line.
fn state_jump(ctx: &mut Ctx<'_>, state: &str, connected: bool) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let _conn = if connected {
        Some(ctx.connect(&rings)?)
    } else {
        None
    };
    let path = ctx.dev.front_node(schema::NODE_STATE);
    ctx.xs.write(&path, state)?;
    ctx.await_closing()?;
    Ok(Expect {
        info_lines: Some(if connected { 2 } else { 0 }),
        ..Expect::ONE_LINE
    })
}

/// Rewrites a malformed state again and again: the backend closes once
/// and says so once, not once per watch event.
fn state_garbage_repeated(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let rings = ctx.rings()?;
    let _conn = ctx.connect(&rings)?;
    let path = ctx.dev.front_node(schema::NODE_STATE);
    for i in 0..50 {
        ctx.xs.write(&path, &format!("x{i}"))?;
    }
    ctx.await_closing()?;
    Ok(Expect {
        info_lines: Some(2),
        ..Expect::ONE_LINE
    })
}
