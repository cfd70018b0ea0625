// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile backend attack`: the attacks on a guest's frontend
//! (issue 13, point 4).
//!
//! Each case starts from a freshly probed frontend (Initialising) and a
//! backend directory holding only the toolstack's nodes, attacks, checks
//! what it can see itself (the answers, the frontend's state), then
//! closes as a well-behaved backend would, has the referee probe the
//! frontend again and checks that the frontend left nothing behind that
//! this domain can still reach: no frontend node, no grant it can map,
//! no port it can bind. The referee in the victim judges the rest between
//! `begin` and `end` (see `referee.rs`).

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hdmabuf_agent::rng::Rng;
use hdmabuf_agent::xendev::{EventChannel, ForeignMap, Gntdev};
use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::limits::MAX_IMPORTS_PER_PEER;
use hyper_dmabuf_common::pgdir::{self, DirPage};
use hyper_dmabuf_common::ring::HEADER_SIZE;
use hyper_dmabuf_common::wire::{
    self, inline_capacity, Export, ExportFlags, MapEpoch, Message, PageRefs, PrivData, Request,
    Response, Slot, VERSION_2, VERSION_3,
};
use hyper_dmabuf_common::xen::{GrantRef, Status};
use hyper_dmabuf_xenbus_proto::schema::{self, BackendConfig};
use hyper_dmabuf_xenbus_proto::XenbusState;

use super::session::{answer_to, poll_until, BackDevice, Offer, Session, ANSWER};
use crate::cases::{put_page, two_level_root, TWO_LEAVES};
use crate::ffi::{self, Granted};
use crate::limits::scaled;
use crate::malformed;
use crate::xs::{mailbox, Xs};

/// What the referee must see for a case: the counters' moves and the
/// lines about this domain (each printed, or counted in
/// `log_lines_suppressed` once the peer's budget is spent).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    /// Requests the victim refuses as malformed (`protocol_errors`).
    pub(crate) protocol_errors: u64,
    /// Rings the victim closes (`ring_errors`).
    pub(crate) ring_errors: u64,
    /// Warning lines: one per fault.
    pub(crate) warnings: u32,
    /// Information lines: one per connection and one per disconnection.
    pub(crate) infos: u32,
}

impl Expect {
    /// `warnings` faults over `connections` connections, nothing counted.
    const fn lines(warnings: u32, connections: u32) -> Expect {
        Expect {
            protocol_errors: 0,
            ring_errors: 0,
            warnings,
            infos: 2 * connections,
        }
    }
    /// One connection, no fault.
    const QUIET: Expect = Expect::lines(0, 1);
    /// The handshake refused: one line, never connected.
    const REFUSED_HANDSHAKE: Expect = Expect::lines(1, 0);
    /// One connection that the victim closed for a broken ring.
    const BROKEN_RING: Expect = Expect {
        ring_errors: 1,
        ..Expect::lines(1, 1)
    };

    /// One connection on which `n` requests were refused.
    const fn refused(n: u32) -> Expect {
        Expect {
            protocol_errors: n as u64,
            ..Expect::lines(n, 1)
        }
    }
}

/// How [`Ctx::pump`] treats the frontend's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer each with OK at once (a well-behaved backend's answer to
    /// EXPORT, MAPPED, RELEASE), noting the exports.
    AnswerOk,
    /// Keep them in the inbox for the case.
    Hold,
}

/// Everything a case works with.
pub(crate) struct Ctx<'g> {
    xs: Xs,
    dev: BackDevice,
    gntdev: &'g Gntdev,
    gntalloc: &'g File,
    rng: Rng,
    /// A domain other than the victim (the well-behaved peer), to grant
    /// pages to that the victim may not map.
    bystander: u16,
    seq: u32,
    session: Option<Session<'g>>,
    /// What the current session was validated against.
    offered: BackendConfig,
    /// Requests of the frontend taken and not answered.
    inbox: VecDeque<Slot>,
    /// Responses to our requests, taken and not yet read.
    responses: VecDeque<Slot>,
    mode: Mode,
    /// When [`Ctx::pump`] last read the frontend's state.
    looked: Instant,
    /// Every grant reference of the victim we learned in this case: none
    /// may still map once the case is over.
    known_refs: BTreeSet<u32>,
    /// Every port the victim offered in this case: none may still bind.
    ports: Vec<u32>,
    /// How many grant references to try in a full scan.
    scan_limit: u32,
}

type CaseFn = fn(&mut Ctx<'_>) -> Result<Expect, String>;

/// A value of `len` decimal digits: longer than any node's syntax allows
/// and than the frontend's read buffer.
fn overlong(len: usize) -> String {
    "1".repeat(len)
}

/// The cases, in the order they run.
pub(crate) const CASES: &[(&str, CaseFn)] = &[
    // --- the backend's nodes, before any connection -------------------------
    ("xs-versions-text", |c| {
        xs_bad(c, schema::NODE_VERSIONS, Some("abc"))
    }),
    ("xs-versions-empty", |c| {
        xs_bad(c, schema::NODE_VERSIONS, Some(""))
    }),
    ("xs-versions-missing", |c| {
        xs_bad(c, schema::NODE_VERSIONS, None)
    }),
    ("xs-versions-no-common", |c| {
        xs_bad(c, schema::NODE_VERSIONS, Some("4,5"))
    }),
    ("xs-versions-not-increasing", |c| {
        xs_bad(c, schema::NODE_VERSIONS, Some("1,1"))
    }),
    ("xs-versions-too-many", |c| {
        xs_bad(c, schema::NODE_VERSIONS, Some("1,2,3,4,5,6,7,8,9"))
    }),
    ("xs-versions-overlong", |c| {
        xs_bad(c, schema::NODE_VERSIONS, Some(&overlong(3000)))
    }),
    ("xs-ring-order-5", |c| {
        xs_bad(c, schema::NODE_MAX_RING_PAGE_ORDER, Some("5"))
    }),
    ("xs-ring-order-negative", |c| {
        xs_bad(c, schema::NODE_MAX_RING_PAGE_ORDER, Some("-1"))
    }),
    ("xs-ring-order-overflow", |c| {
        xs_bad(c, schema::NODE_MAX_RING_PAGE_ORDER, Some("4294967296"))
    }),
    ("xs-ring-order-leading-zero", |c| {
        xs_bad(c, schema::NODE_MAX_RING_PAGE_ORDER, Some("02"))
    }),
    ("xs-buffer-size-zero", |c| {
        xs_bad(c, schema::NODE_MAX_BUFFER_SIZE, Some("0"))
    }),
    ("xs-buffer-size-negative", |c| {
        xs_bad(c, schema::NODE_MAX_BUFFER_SIZE, Some("-4096"))
    }),
    ("xs-buffer-size-overflow", |c| {
        xs_bad(
            c,
            schema::NODE_MAX_BUFFER_SIZE,
            Some("18446744073709551616"),
        )
    }),
    ("xs-buffer-size-text", |c| {
        xs_bad(c, schema::NODE_MAX_BUFFER_SIZE, Some("1G"))
    }),
    ("xs-feature-rw-2", |c| {
        xs_bad(c, schema::NODE_FEATURE_RW, Some("2"))
    }),
    ("xs-feature-rw-missing", |c| {
        xs_bad(c, schema::NODE_FEATURE_RW, None)
    }),
    ("xs-buffer-size-max", xs_buffer_size_max),
    ("xs-ring-order-zero", xs_ring_order_zero),
    // --- the backend's state ----------------------------------------------------
    ("state-connected-before-initwait", state_connected_early),
    ("state-initialised-from-backend", |c| state_early(c, "3")),
    ("state-zero", |c| state_early(c, "0")),
    ("state-reconfiguring-while-connected", |c| {
        state_jump(c, &["7"])
    }),
    ("state-reconfigured-while-connected", |c| {
        state_jump(c, &["8"])
    }),
    ("state-out-of-range", |c| state_jump(c, &["9"])),
    ("state-garbage-repeated", |c| {
        let garbage: Vec<String> = (0..20).map(|i| format!("x{i}")).collect();
        let garbage: Vec<&str> = garbage.iter().map(String::as_str).collect();
        state_jump(c, &garbage)
    }),
    ("state-cycles", state_cycles),
    ("state-closing-then-initwait", state_closing_then_initwait),
    ("nodes-change-under-the-frontend", nodes_change),
    // --- the rings -----------------------------------------------------------------
    ("response-unsolicited", response_unsolicited),
    ("response-duplicate", |c| {
        bad_answer(c, |s, export| {
            let ok = answer_to(export, Status::Ok);
            s.forge_responses(0, &[ok, ok])
        })
    }),
    ("response-wrong-id", |c| {
        bad_answer(c, |s, export| {
            let mut a = answer_to(export, Status::Ok);
            a[0] ^= 0x40;
            s.answer(&[a])
        })
    }),
    ("response-wrong-op", |c| {
        bad_answer(c, |s, export| {
            let mut a = answer_to(export, Status::Ok);
            a[4] = 0x03;
            s.answer(&[a])
        })
    }),
    ("response-bad-status", |c| {
        bad_answer(c, |s, export| {
            s.answer(&[answer_to(export, Status::Ok)].map(|mut a| {
                a[8..12].copy_from_slice(&(-12345i32).to_le_bytes());
                a
            }))
        })
    }),
    ("response-reserved-nonzero", |c| {
        bad_answer(c, |s, export| {
            let mut a = answer_to(export, Status::Ok);
            a[200] = 1;
            s.answer(&[a])
        })
    }),
    ("response-index-beyond-ring", |c| {
        bad_answer(c, |s, _| s.force_rsp_prod(1000))
    }),
    ("requests-overflow", |c| {
        bad_index(c, |s| s.force_req_prod(s.size() + 1))
    }),
    ("requests-index-behind", |c| {
        bad_index(c, |s| s.force_req_prod(u32::MAX - 3))
    }),
    ("event-storm", event_storm),
    ("old-rings-kept-mapped", old_rings_kept),
    // --- requests the frontend must refuse --------------------------------
    ("unknown-op", |c| refused_all(c, malformed::unknown_ops)),
    ("reserved-nonzero", |c| {
        refused_all(c, malformed::reserved_nonzero)
    }),
    ("bad-values", |c| refused_all(c, malformed::bad_values)),
    ("unknown-ids", unknown_ids),
    ("writable-refused", writable_refused),
    ("dir-count-size-disagree", |c| {
        dir_case(c, 2, "EIO", malformed::dir_size_disagrees)
    }),
    ("dir-nr-entries-wrong", |c| {
        dir_case(c, 2, "EIO", malformed::dir_nr_entries_wrong)
    }),
    ("dir-bad-magic", |c| {
        dir_case(c, 2, "EIO", malformed::dir_bad_magic)
    }),
    ("dir-out-of-range-gref", |c| {
        dir_case(c, 2, "EIO", malformed::dir_gref_out_of_range)
    }),
    ("dir-foreign-gref", dir_foreign_gref),
    ("dir-data-not-owned", |c| {
        dir_case(c, 2, "EIO", malformed::dir_gref_not_granted)
    }),
    ("dir-loop", dir_loop),
    ("dir-leaf-twice", dir_leaf_twice),
    ("dir-good-control", |c| dir_case(c, 2, "0", |_, _| {})),
    ("flood-requests", flood_requests),
    ("flood-exports", flood_exports),
    // --- a hostile importer of the victim's exports --------------------
    ("importer-control", importer_control),
    ("importer-maps-before-announce", maps_before_announce),
    ("importer-lies-unexport-ok", lies_unexport_ok),
    ("importer-never-releases-then-removal", never_releases),
    ("importer-mapped-without-mapping", mapped_without_mapping),
    ("importer-release-stale-and-unknown", release_stale),
    ("importer-answers-out-of-order", answers_out_of_order),
    ("importer-maps-another-buffer", maps_another_buffer),
    ("no-grant-left", no_grant_left),
];

impl<'g> Ctx<'g> {
    /// A context for device `dev`.
    pub(crate) fn new(
        xs: Xs,
        dev: BackDevice,
        gntdev: &'g Gntdev,
        gntalloc: &'g File,
        seed: u64,
        bystander: u16,
        scan_limit: u32,
    ) -> Self {
        Ctx {
            xs,
            dev,
            gntdev,
            gntalloc,
            rng: Rng::new(seed),
            bystander,
            seq: 0,
            session: None,
            offered: Offer::default().config,
            inbox: VecDeque::new(),
            responses: VecDeque::new(),
            mode: Mode::AnswerOk,
            looked: Instant::now(),
            known_refs: BTreeSet::new(),
            ports: Vec::new(),
            scan_limit,
        }
    }

    fn hid(&mut self) -> HyperDmabufId {
        let key: [u8; KEY_LEN] = std::array::from_fn(|_| self.rng.below(256) as u8);
        HyperDmabufId::new(self.rng.next_u64() | 1, key).expect("odd numbers are not zero")
    }

    fn session(&mut self) -> Result<&mut Session<'g>, String> {
        self.session
            .as_mut()
            .ok_or_else(|| "no connection (the frontend closed it?)".to_string())
    }

    fn request(&mut self, message: Message) -> Result<Slot, String> {
        Ok(self.session()?.request(message))
    }

    fn export_slot(
        &mut self,
        hid: HyperDmabufId,
        size: u64,
        dir_gref: u32,
    ) -> Result<Slot, String> {
        self.request(Message::Export(Export {
            hid,
            size,
            pages: PageRefs::Directory(GrantRef::new(dir_gref).map_err(|e| format!("{e:?}"))?),
            flags: ExportFlags::default(),
            priv_data: PrivData::new(b"hostile backend").expect("short"),
            fence: None,
        }))
    }

    // --- xenstore and state ---------------------------------------------------------

    /// Publishes `offer`, switches to InitWait and waits for the
    /// frontend's answer: Initialised, or Closing for a refusal.
    fn offer(&mut self, offer: &Offer) -> Result<XenbusState, String> {
        self.dev.publish(&mut self.xs, offer)?;
        self.offered = offer.config;
        self.dev.set_state(&mut self.xs, XenbusState::InitWait)?;
        self.dev.await_front(
            &mut self.xs,
            &[
                XenbusState::Initialised,
                XenbusState::Closing,
                XenbusState::Closed,
            ],
        )
    }

    /// The frontend is Initialised: maps its rings, binds its port and
    /// switches to Connected; waits for it to connect.
    fn attach(&mut self) -> Result<(), String> {
        let session = Session::open(&mut self.xs, self.gntdev, &self.dev, &self.offered)?;
        self.known_refs.extend(session.ring_refs());
        self.ports.push(session.remote_port());
        self.session = Some(session);
        self.dev.set_state(&mut self.xs, XenbusState::Connected)?;
        self.dev
            .await_front(&mut self.xs, &[XenbusState::Connected])
            .map(drop)
    }

    /// Says InitWait again (the offer still published) and connects the
    /// frontend that answers it.
    fn reattach(&mut self) -> Result<(), String> {
        self.dev.set_state(&mut self.xs, XenbusState::InitWait)?;
        self.dev
            .await_front(&mut self.xs, &[XenbusState::Initialised])?;
        self.attach()
    }

    /// A connection over `offer`.
    fn connect(&mut self, offer: &Offer) -> Result<(), String> {
        match self.offer(offer)? {
            XenbusState::Initialised => self.attach(),
            other => Err(format!(
                "the frontend went {} instead of Initialised",
                other.name()
            )),
        }
    }

    /// Waits for the frontend to close (Closing, or Closed already).
    fn await_closing(&mut self) -> Result<(), String> {
        self.dev
            .await_front(&mut self.xs, &[XenbusState::Closing, XenbusState::Closed])
            .map(drop)
    }

    /// Closes as the backend driver does: unmaps, unbinds, says Closing,
    /// waits for the frontend to be Closed.
    fn close(&mut self) -> Result<(), String> {
        self.session = None;
        self.dev.set_state(&mut self.xs, XenbusState::Closing)?;
        self.dev
            .await_front(
                &mut self.xs,
                &[XenbusState::Closed, XenbusState::Initialising],
            )
            .map(drop)
    }

    /// Brings the device back to where every case starts: no session, the
    /// frontend probed again (Initialising), our directory holding only
    /// the toolstack's nodes, and nothing of the victim left that we can
    /// reach.
    fn reset(&mut self) -> Result<(), String> {
        self.session = None;
        self.inbox.clear();
        self.responses.clear();
        self.mode = Mode::AnswerOk;
        let front = self.dev.front_state(&mut self.xs)?;
        if !matches!(
            front,
            XenbusState::Initialising | XenbusState::Closed | XenbusState::Unknown
        ) {
            self.close()?;
        }
        self.dev.set_state(&mut self.xs, XenbusState::Closed)?;
        self.referee("reprobe")?;
        self.dev
            .await_front(&mut self.xs, &[XenbusState::Initialising])?;
        self.dev.clear(&mut self.xs)?;
        self.check_released()
    }

    /// Nothing the victim gave this domain in the case is left: its
    /// frontend nodes are gone, none of the grant references we learned
    /// still maps (the grant layer ends a deferred one within a second or
    /// two of our unmap), none of its ports still binds.
    fn check_released(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        let nodes = self.dev.front_leftovers(&mut self.xs)?;
        if !nodes.is_empty() {
            problems.push(format!("frontend nodes left: {}", nodes.join(", ")));
        }
        let refs: Vec<u32> = std::mem::take(&mut self.known_refs).into_iter().collect();
        let (gntdev, front) = (self.gntdev, self.dev.front_id);
        let mut mapped = Vec::new();
        poll_until(Duration::from_secs(5), Duration::from_millis(200), || {
            mapped = refs
                .iter()
                .copied()
                .filter(|&r| gntdev.map_refs(front, &[r], false).is_ok())
                .collect();
            Ok(mapped.is_empty())
        })?;
        if !mapped.is_empty() {
            problems.push(format!(
                "grants of domain {front} still map here after the teardown: {mapped:?}"
            ));
        }
        for port in std::mem::take(&mut self.ports) {
            if EventChannel::connect(front, port).is_ok() {
                problems.push(format!("port {port} of domain {front} still binds"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Every reference below the scan limit that the victim grants to
    /// this domain now (all but `except`), each left mapped in the result.
    fn scan(&self, except: &[u32]) -> Vec<ForeignMap<'g>> {
        let candidates: Vec<u32> = (8..self.scan_limit)
            .filter(|r| !except.contains(r))
            .collect();
        self.map_each(&candidates)
    }

    /// The references of `refs` that map, each left mapped in the result.
    fn map_each(&self, refs: &[u32]) -> Vec<ForeignMap<'g>> {
        refs.iter()
            .filter_map(|&r| self.gntdev.map_refs(self.dev.front_id, &[r], false).ok())
            .collect()
    }

    /// Maps references below the scan limit (but `except`) nearest the
    /// ones we learned first, as an attacker guesses (Linux hands out the
    /// most recently freed references first), until `enough` map. Each
    /// attempt costs a hypercall: a full scan takes seconds on an emulated
    /// CPU shared with another VM, longer than an exporter waits for its
    /// answer. Returns the mappings and the references not tried.
    fn scan_nearest(&self, except: &[u32], enough: usize) -> (Vec<ForeignMap<'g>>, Vec<u32>) {
        let distance = |r: u32| {
            self.known_refs
                .iter()
                .map(|&k| k.abs_diff(r))
                .min()
                .unwrap_or(r)
        };
        let mut candidates: Vec<u32> = (8..self.scan_limit)
            .filter(|r| !except.contains(r))
            .collect();
        candidates.sort_by_key(|&r| (distance(r), r));
        let mut found = Vec::new();
        let mut tried = 0;
        for &r in &candidates {
            if found.len() >= enough {
                break;
            }
            tried += 1;
            if let Ok(m) = self.gntdev.map_refs(self.dev.front_id, &[r], false) {
                found.push(m);
            }
        }
        candidates.drain(..tried);
        (found, candidates)
    }

    // --- the rings ---------------------------------------------------------------------

    /// Takes what the frontend published; answers its requests with OK
    /// in [`Mode::AnswerOk`]; closes as a backend does if it closed.
    fn pump(&mut self) -> Result<(), String> {
        if let Some(s) = self.session.as_mut() {
            s.take_requests(&mut self.inbox)?;
            s.take_responses(&mut self.responses)?;
            if self.mode == Mode::AnswerOk && !self.inbox.is_empty() {
                let answers: Vec<Slot> = self
                    .inbox
                    .drain(..)
                    .inspect(|r| {
                        if let Some(e) = decode_export(r) {
                            self.known_refs
                                .extend(e.pages.named().iter().map(|g| g.get()));
                        }
                    })
                    .map(|r| answer_to(&r, Status::Ok))
                    .collect();
                s.answer(&answers)?;
            }
        }
        // The state at most every 100 ms: a flood pumps per answer.
        if self.session.is_some() && self.looked.elapsed() >= Duration::from_millis(100) {
            self.looked = Instant::now();
            let front = self.dev.front_state(&mut self.xs)?;
            if matches!(front, XenbusState::Closing | XenbusState::Closed) {
                self.session = None;
                self.dev.set_state(&mut self.xs, XenbusState::Closing)?;
            }
        }
        Ok(())
    }

    /// Waits up to `ms` for an event (or just sleeps without a session).
    fn idle(&mut self, ms: u64) -> Result<(), String> {
        match &self.session {
            Some(s) => s.wait(ms).map(drop),
            None => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
        }
    }

    /// Runs [`Ctx::pump`] until `take` finds what it wants in the context.
    fn pump_until<T>(
        &mut self,
        what: &str,
        mut take: impl FnMut(&mut Self) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + scaled(ANSWER);
        loop {
            self.pump()?;
            if let Some(t) = take(self) {
                return Ok(t);
            }
            if self.session.is_none() {
                return Err(format!("the connection closed while waiting for {what}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("no {what} within {} s", scaled(ANSWER).as_secs()));
            }
            self.idle(50)?;
        }
    }

    /// Sends `slots` in windows of the ring's size and returns the
    /// status of each answer, checking that each echoes its request's id
    /// and op (read field by field: an unknown op's answer must echo it
    /// too).
    fn ask_all(&mut self, slots: &[Slot]) -> Result<Vec<Status>, String> {
        let window = self.session()?.size() as usize;
        let mut statuses = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(window) {
            self.session()?.send(chunk)?;
            for sent in chunk {
                let got = self.pump_until("a response", |c| c.responses.pop_front())?;
                let (id, op) = (wire::request_id(sent), wire::request_op(sent));
                if wire::request_id(&got) != id || wire::request_op(&got) != op {
                    return Err(format!(
                        "the answer to request {id} op {op:#x} names request {} op {:#x}",
                        wire::request_id(&got),
                        wire::request_op(&got)
                    ));
                }
                let raw = i32::from_le_bytes([got[8], got[9], got[10], got[11]]);
                statuses.push(
                    Status::from_wire(raw)
                        .map_err(|e| format!("the victim answered a bad status: {e:?}"))?,
                );
            }
        }
        Ok(statuses)
    }

    /// Sends one request and returns its answer's status.
    fn ask(&mut self, slot: Slot) -> Result<Status, String> {
        Ok(self.ask_all(&[slot])?[0])
    }

    /// Sends `message` and checks its answer is `want`.
    fn expect(&mut self, what: &str, message: Message, want: Status) -> Result<(), String> {
        let slot = self.request(message)?;
        expect_status(what, self.ask(slot)?, want)
    }

    /// Takes the frontend's next request that `want` accepts (held).
    fn take_request(&mut self, what: &str, want: impl Fn(&Slot) -> bool) -> Result<Slot, String> {
        self.pump_until(what, |c| {
            let at = c.inbox.iter().position(&want)?;
            c.inbox.remove(at)
        })
    }

    /// Answers held requests (any bytes, in this order).
    fn reply(&mut self, answers: &[Slot]) -> Result<(), String> {
        self.session()?.answer(answers)
    }

    // --- the referee --------------------------------------------------------------------

    /// Sends a command to the referee in the victim and waits (up to
    /// `limit`) for its verdict, pumping the rings meanwhile.
    fn referee_within(&mut self, command: &str, limit: Duration) -> Result<(), String> {
        self.seq += 1;
        let (cmd, ack) = mailbox(self.dev.front_id);
        self.xs.watch(&ack)?;
        self.xs.write(&cmd, &format!("{} {command}", self.seq))?;
        let prefix = format!("{} ", self.seq);
        let deadline = Instant::now() + limit;
        loop {
            self.pump()?;
            let answer = self.xs.read(&ack)?;
            if let Some(verdict) = answer.as_deref().and_then(|a| a.strip_prefix(&prefix)) {
                return if verdict == "ok" {
                    Ok(())
                } else {
                    Err(format!("referee: {command}: {verdict}"))
                };
            }
            if Instant::now() >= deadline {
                return Err(format!("the referee did not answer {command:?}"));
            }
            if self.session.is_some() {
                self.idle(20)?;
            } else {
                self.xs.settle(Duration::from_millis(50))?;
            }
        }
    }

    fn referee(&mut self, command: &str) -> Result<(), String> {
        self.referee_within(command, scaled(Duration::from_secs(60)))
    }

    // --- the victim's exports --------------------------------------------------------
    //
    // The referee exports through the commands of `referee/importer.rs`:
    // `export NAME PAGES SEED` (private data `hostile-importer NAME`),
    // `exported NAME ERRNO [ID]`, `unexport NAME`, `busy NAME 0|1`, `gauges
    // PINNED DRAINING` and `hold NAME PINNED DRAINING` (how far
    // `dmabufs_pinned` and `grants_draining` are above their values at
    // `begin`: the victim exports to no one else), `drop NAME` (its own
    // descriptors closed, fresh memory dirtied) and `ended NAME`.

    /// Has the referee start exporting `PAGES` pages of pattern `seed` to
    /// us as `name`; its EXPORT request is held for the case.
    fn victim_exports(&mut self, name: &str, seed: u64) -> Result<(), String> {
        self.mode = Mode::Hold;
        self.referee(&format!("export {name} {PAGES} {seed}"))
    }

    /// Takes the EXPORT request of `name` (held).
    fn announced(&mut self, name: &str) -> Result<(Slot, Export), String> {
        let tag = format!("hostile-importer {name}");
        let slot = self.take_request(&format!("the EXPORT of {name}"), |s| {
            decode_export(s).is_some_and(|e| e.priv_data.as_bytes() == tag.as_bytes())
        })?;
        let export = decode_export(&slot).expect("checked by take_request");
        self.known_refs
            .extend(export.pages.named().iter().map(|g| g.get()));
        Ok((slot, export))
    }

    /// A victim export announced and accepted.
    fn accepted(&mut self, name: &str, seed: u64) -> Result<Export, String> {
        self.victim_exports(name, seed)?;
        let (slot, export) = self.announced(name)?;
        self.reply(&[answer_to(&slot, Status::Ok)])?;
        self.referee(&format!("exported {name} 0"))?;
        Ok(export)
    }

    /// The data grant references of a victim export: carried inline
    /// (version 2), or from its directory (mapped read-only, read once,
    /// unmapped).
    fn data_refs(&mut self, export: &Export) -> Result<Vec<u32>, String> {
        let root = match export.pages {
            PageRefs::Directory(root) => root,
            PageRefs::Inline(refs) => {
                let refs: Vec<u32> = refs.as_slice().iter().map(|g| g.get()).collect();
                self.known_refs.extend(&refs);
                return Ok(refs);
            }
        };
        let root = self
            .gntdev
            .map_refs(self.dev.front_id, &[root.get()], false)
            .map_err(|e| format!("mapping the directory of {}: {e}", export.hid))?;
        // Mapped read-only, so read through a copy of its words.
        let words: Vec<AtomicU32> = root
            .mapping()
            .read_words()
            .into_iter()
            .map(AtomicU32::new)
            .collect();
        let words = words.as_slice();
        let layout = pgdir::read_root_header(words, export.size, u64::MAX)
            .map_err(|e| format!("the victim's directory: {e:?}"))?;
        let mut data = vec![GrantRef::FIRST; layout.root_entries()];
        pgdir::read_root_entries(words, &layout, &mut data)
            .map_err(|e| format!("the victim's directory: {e:?}"))?;
        if layout.nr_leaves() != 0 {
            return Err("the cases use one-level directories only".into());
        }
        let refs: Vec<u32> = data.iter().map(|g| g.get()).collect();
        self.known_refs.extend(&refs);
        Ok(refs)
    }

    /// Maps the data pages of a victim export read-only, and checks they
    /// hold its pattern.
    fn map_data(&mut self, export: &Export, seed: u64) -> Result<ForeignMap<'g>, String> {
        let refs = self.data_refs(export)?;
        let data = self
            .gntdev
            .map_refs(self.dev.front_id, &refs, false)
            .map_err(|e| format!("mapping the data of {}: {e}", export.hid))?;
        check_pattern(&data, seed, "as mapped")?;
        Ok(data)
    }

    /// With `data` (the pages of `name`) still mapped here: the victim
    /// keeps the buffer pinned and its data grants draining, through the
    /// drop of its own references (the bytes we read stay its pattern:
    /// no page was let go and reused); once we unmap, the grants end.
    fn pinned_until_unmapped(
        &mut self,
        name: &str,
        data: ForeignMap<'g>,
        seed: u64,
    ) -> Result<(), String> {
        let n = data.refs().len();
        self.referee(&format!("gauges 1 {n}"))?;
        self.referee(&format!("hold {name} 1 {n}"))?;
        self.referee(&format!("drop {name}"))?;
        check_pattern(&data, seed, "after the exporter dropped it")?;
        drop(data);
        self.referee(&format!("ended {name}"))?;
        self.referee("gauges 0 0")
    }

    /// Takes the UNEXPORT of `hid` (held).
    fn unexport_of(&mut self, hid: HyperDmabufId) -> Result<Slot, String> {
        self.take_request(&format!("the UNEXPORT of {hid}"), |s| {
            Request::decode(s, u64::MAX, VERSION_3)
                .is_ok_and(|r| r.message == Message::Unexport(hid))
        })
    }

    /// The victim unexports `tag`; returns its UNEXPORT request (held).
    fn victim_unexports(&mut self, tag: &str, hid: HyperDmabufId) -> Result<Slot, String> {
        self.referee(&format!("unexport {tag}"))?;
        self.unexport_of(hid)
    }

    /// Tells the victim we map (`Mapped`) or released (`Release`) `hid`.
    fn importer_says(&mut self, message: Message) -> Result<(), String> {
        let what = format!("{:?} {}", message.op(), message.hid());
        self.expect(&what, message, Status::Ok)
    }
}

/// An EXPORT request's announcement, if `slot` is one.
fn decode_export(slot: &Slot) -> Option<Export> {
    match Request::decode(slot, u64::MAX, VERSION_3).ok()?.message {
        Message::Export(e) => Some(e),
        _ => None,
    }
}

/// Pages of each buffer the victim exports to us (one-level directory).
const PAGES: usize = 16;

/// `data` holds the pattern of `seed` from its first byte.
fn check_pattern(data: &ForeignMap<'_>, seed: u64, when: &str) -> Result<(), String> {
    match pattern::first_mismatch_in(seed, data.mapping()) {
        None => Ok(()),
        Some(at) => Err(format!(
            "{when}: the victim's buffer differs from its pattern at byte {at}"
        )),
    }
}

/// The importer's answer to UNEXPORT: still mapped, as mapping `epoch`.
fn busy(unexport: &Slot, epoch: u32) -> Slot {
    Response {
        req_id: wire::request_id(unexport),
        op: wire::request_op(unexport),
        status: Status::Busy,
        map_epoch: Some(MapEpoch::new(epoch).expect("callers pass epochs of at least 1")),
    }
    .encode()
}

fn epoch(n: u32) -> MapEpoch {
    MapEpoch::new(n).expect("callers pass epochs of at least 1")
}

fn expect_status(what: &str, got: Status, want: Status) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: answered {got:?}, expected {want:?}"))
    }
}

/// Runs every case (or those named in `only`); returns the failures.
pub(crate) fn run(ctx: &mut Ctx<'_>, only: &[String], go: &str) -> Result<(), String> {
    if let Some(unknown) = only.iter().find(|o| !CASES.iter().any(|(n, _)| n == o)) {
        return Err(format!("no case {unknown}"));
    }
    // The device is ours: the kernel backend that published its nodes
    // before the unbind is gone; clean up after it and let the victim
    // load its driver.
    ctx.dev.clear(&mut ctx.xs)?;
    ctx.dev.set_state(&mut ctx.xs, XenbusState::Closed)?;
    ctx.xs.write(go, "1")?;
    // The victim boots its driver and its referee now.
    ctx.referee_within("hello", scaled(Duration::from_secs(300)))?;
    let mut failures = Vec::new();
    let mut ran = 0;
    let started = Instant::now();
    for &(name, case) in CASES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        ran += 1;
        let t0 = Instant::now();
        let outcome = ctx
            .reset()
            .and_then(|()| ctx.referee(&format!("begin {name}")))
            .and_then(|()| case(ctx))
            .and_then(|e| {
                ctx.reset()?;
                ctx.referee(&format!(
                    "end {name} {} {} {} {}",
                    e.protocol_errors, e.ring_errors, e.warnings, e.infos
                ))
            });
        match outcome {
            Ok(()) => println!(
                "hostile-backend case {name}: ok ({} ms)",
                t0.elapsed().as_millis()
            ),
            Err(e) => {
                println!("hostile-backend case {name}: FAILED: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    let last = ctx.reset();
    ctx.referee("done")?;
    println!(
        "hostile-backend: {ran} cases in {} s, {} failed",
        started.elapsed().as_secs(),
        failures.len()
    );
    last?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

// --- the backend's nodes ------------------------------------------------------------

/// Offers the default nodes with `node` replaced by `value` (removed for
/// `None`): the frontend must refuse the handshake with one line.
fn xs_bad(ctx: &mut Ctx<'_>, node: &'static str, value: Option<&str>) -> Result<Expect, String> {
    match ctx.offer(&Offer::with(node, value))? {
        XenbusState::Closing | XenbusState::Closed => Ok(Expect::REFUSED_HANDSHAKE),
        other => Err(format!(
            "{node} = {value:?}: the frontend went {} instead of Closing",
            other.name()
        )),
    }
}

fn xs_buffer_size_max(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // The largest value the syntax allows: the frontend keeps its own
    // ceiling (1 GiB by default), so a buffer above it is refused.
    let offer = Offer {
        config: BackendConfig {
            max_buffer_size: u64::MAX,
            ..Offer::default().config
        },
        overrides: Vec::new(),
    };
    ctx.connect(&offer)?;
    let hid = ctx.hid();
    let slot = ctx.export_slot(hid, 2 << 30, 8)?;
    expect_status("EXPORT of 2 GiB", ctx.ask(slot)?, Status::TooLarge)?;
    let slot = ctx.export_slot(hid, 512 << 20, 8)?;
    expect_status("EXPORT of 512 MiB", ctx.ask(slot)?, Status::Ok)?;
    ctx.expect("UNEXPORT", Message::Unexport(hid), Status::Ok)?;
    Ok(Expect::refused(1))
}

fn xs_ring_order_zero(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let offer = Offer {
        config: BackendConfig {
            max_ring_page_order: 0,
            ..Offer::default().config
        },
        overrides: Vec::new(),
    };
    ctx.connect(&offer)?;
    let s = ctx.session()?;
    if s.rings.ring_page_order() != 0 || s.size() != 8 {
        return Err(format!(
            "the frontend chose order {} ({} slots) under a maximum of 0",
            s.rings.ring_page_order(),
            s.size()
        ));
    }
    // Two full one-page rings of requests.
    let mut slots = Vec::new();
    for _ in 0..16 {
        let hid = ctx.hid();
        slots.push(ctx.request(Message::Unexport(hid))?);
    }
    for status in ctx.ask_all(&slots)? {
        expect_status("UNEXPORT of an unknown id", status, Status::NoSuchBuffer)?;
    }
    Ok(Expect::QUIET)
}

// --- the backend's state ----------------------------------------------------------

fn state_connected_early(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // Connected before InitWait, with nothing published: the frontend
    // ignores it (a backend still finishing with an earlier instance)...
    ctx.dev.set_state(&mut ctx.xs, XenbusState::Connected)?;
    std::thread::sleep(Duration::from_millis(1500));
    let front = ctx.dev.front_state(&mut ctx.xs)?;
    if front != XenbusState::Initialising {
        return Err(format!(
            "the frontend went {} when the backend said Connected first",
            front.name()
        ));
    }
    let left = ctx.dev.front_leftovers(&mut ctx.xs)?;
    if !left.is_empty() {
        return Err(format!("the frontend published {left:?} before InitWait"));
    }
    // ...and connects normally once the backend does it right.
    ctx.connect(&Offer::default())?;
    Ok(Expect::QUIET)
}

/// Writes `state` while the frontend waits for InitWait: it must close
/// with one line.
fn state_early(ctx: &mut Ctx<'_>, state: &str) -> Result<Expect, String> {
    ctx.xs
        .write(&ctx.dev.back_node(schema::NODE_STATE), state)?;
    ctx.await_closing()?;
    Ok(Expect::REFUSED_HANDSHAKE)
}

/// Writes each of `states` in turn once connected: the frontend must
/// close with one line.
fn state_jump(ctx: &mut Ctx<'_>, states: &[&str]) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    let path = ctx.dev.back_node(schema::NODE_STATE);
    for state in states {
        ctx.xs.write(&path, state)?;
    }
    ctx.await_closing()?;
    Ok(Expect::lines(1, 1))
}

/// Cycles a connection through Initialising and Closed: each time the
/// frontend tears down (its nodes, grants and port gone) and connects
/// again on InitWait.
fn state_cycles(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    const CYCLES: u32 = 3;
    ctx.connect(&Offer::default())?;
    for _ in 0..CYCLES {
        for state in [XenbusState::Initialising, XenbusState::Closed] {
            ctx.session = None;
            ctx.dev.set_state(&mut ctx.xs, state)?;
            ctx.dev
                .await_front(&mut ctx.xs, &[XenbusState::Initialising])?;
            ctx.check_released()
                .map_err(|e| format!("after {}: {e}", state.name()))?;
            ctx.reattach()?;
            ctx.expect_alive()?;
        }
    }
    Ok(Expect::lines(0, 1 + 2 * CYCLES))
}

fn state_closing_then_initwait(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // An orderly close, then the backend comes back: the frontend (not
    // failed) connects again.
    ctx.connect(&Offer::default())?;
    ctx.close()?;
    ctx.dev.set_state(&mut ctx.xs, XenbusState::Closed)?;
    ctx.check_released()?;
    ctx.reattach()?;
    ctx.expect_alive()?;
    Ok(Expect::lines(0, 2))
}

impl Ctx<'_> {
    /// The connection serves: a request for an unknown id is answered.
    fn expect_alive(&mut self) -> Result<(), String> {
        let hid = self.hid();
        self.expect(
            "UNEXPORT of an unknown id",
            Message::Unexport(hid),
            Status::NoSuchBuffer,
        )
    }
}

fn nodes_change(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // The frontend reads the backend nodes once, in one transaction:
    // whatever they become afterwards, it keeps what it read.
    let offer = Offer {
        config: BackendConfig {
            max_buffer_size: 4 << 20,
            ..Offer::default().config
        },
        overrides: Vec::new(),
    };
    match ctx.offer(&offer)? {
        XenbusState::Initialised => {}
        other => return Err(format!("the frontend went {}", other.name())),
    }
    let garbage = [
        (schema::NODE_VERSIONS, Some("9")),
        (schema::NODE_MAX_BUFFER_SIZE, Some("0")),
        (schema::NODE_MAX_RING_PAGE_ORDER, Some("7")),
        (schema::NODE_FEATURE_RW, None),
    ];
    let rewrite = |ctx: &mut Ctx<'_>| -> Result<(), String> {
        for (node, value) in garbage {
            let path = ctx.dev.back_node(node);
            match value {
                Some(v) => ctx.xs.write(&path, v)?,
                None => ctx.xs.remove(&path)?,
            }
        }
        Ok(())
    };
    rewrite(ctx)?;
    ctx.attach()?;
    rewrite(ctx)?;
    // The 4 MiB it read holds: 2 MiB accepted, 8 MiB refused.
    let hid = ctx.hid();
    let slot = ctx.export_slot(hid, 2 << 20, 8)?;
    expect_status("EXPORT of 2 MiB", ctx.ask(slot)?, Status::Ok)?;
    let other = ctx.hid();
    let slot = ctx.export_slot(other, 8 << 20, 8)?;
    expect_status("EXPORT of 8 MiB", ctx.ask(slot)?, Status::TooLarge)?;
    ctx.expect("UNEXPORT", Message::Unexport(hid), Status::Ok)?;
    Ok(Expect::refused(1))
}

// --- the rings --------------------------------------------------------------------------

fn response_unsolicited(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    // A response on the frontend's ring, to a request it never made.
    ctx.session()?.force_rsp_prod(1)?;
    ctx.await_closing()?;
    Ok(Expect::BROKEN_RING)
}

/// The victim exports to us and `spoil` answers its EXPORT wrongly: the
/// frontend must close the ring, the export fail with `ENOTCONN` once the
/// connection is gone, and its grants end (we mapped none).
fn bad_answer(
    ctx: &mut Ctx<'_>,
    spoil: fn(&mut Session<'_>, &Slot) -> Result<(), String>,
) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    ctx.victim_exports("spoilt", 1)?;
    let (slot, _) = ctx.announced("spoilt")?;
    spoil(ctx.session()?, &slot)?;
    ctx.await_closing()?;
    ctx.close()?;
    ctx.referee("exported spoilt ENOTCONN")?;
    ctx.referee("gauges 0 0")?;
    Ok(Expect::BROKEN_RING)
}

fn bad_index(
    ctx: &mut Ctx<'_>,
    force: fn(&Session<'_>) -> Result<(), String>,
) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    force(ctx.session()?)?;
    ctx.await_closing()?;
    Ok(Expect::BROKEN_RING)
}

fn event_storm(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    for _ in 0..20_000 {
        ctx.session()?.notify()?;
    }
    // Still served, both ways.
    ctx.expect_alive()?;
    ctx.share_once("after-storm", 3)?;
    Ok(Expect::QUIET)
}

impl Ctx<'_> {
    /// The victim exports `name` to us, we accept it, read it, say we
    /// map and release it, and it ends when unexported: a well-behaved
    /// importer's round.
    fn share_once(&mut self, name: &str, seed: u64) -> Result<(), String> {
        let export = self.accepted(name, seed)?;
        let data = self.map_data(&export, seed)?;
        self.importer_says(Message::Mapped {
            hid: export.hid,
            epoch: MapEpoch::FIRST,
        })?;
        self.referee(&format!("busy {name} 1"))?;
        drop(data);
        self.importer_says(Message::Release {
            hid: export.hid,
            epoch: MapEpoch::FIRST,
        })?;
        self.referee(&format!("busy {name} 0"))?;
        let unexport = self.victim_unexports(name, export.hid)?;
        self.reply(&[answer_to(&unexport, Status::Ok)])?;
        self.referee(&format!("ended {name}"))?;
        self.referee("gauges 0 0")
    }
}

/// A backend that says it let go of the rings but keeps them mapped,
/// scribbles on them after the frontend moved to new rings, and reads
/// them: the frontend must keep the old pages out of use until we unmap
/// (the grant layer defers their end) and run on its new rings.
fn old_rings_kept(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    const MARK: u32 = 0x6b6f_7374;
    let marked = |m: &ForeignMap<'_>| {
        m.mapping().atomic_words()[HEADER_SIZE / 4..]
            .iter()
            .position(|w| w.load(Ordering::Relaxed) != MARK)
    };
    ctx.connect(&Offer::default())?;
    let old = ctx.session()?.keep_rings();
    ctx.close()?;
    for m in &old {
        for w in &m.mapping().atomic_words()[HEADER_SIZE / 4..] {
            w.store(MARK, Ordering::Relaxed);
        }
    }
    ctx.dev.set_state(&mut ctx.xs, XenbusState::Closed)?;
    ctx.reattach()?;
    let new_refs = ctx.session()?.ring_refs();
    if old
        .iter()
        .flat_map(|m| m.refs())
        .any(|r| new_refs.contains(r))
    {
        return Err("the frontend reused a ring reference we still map".into());
    }
    ctx.expect_alive()?;
    ctx.share_once("after-old-rings", 4)?;
    for (name, m) in ["ring-ref", "back-ring-ref"].iter().zip(&old) {
        if let Some(at) = marked(m) {
            return Err(format!(
                "the old {name} page changed at word {} while we still mapped it: reused",
                at + HEADER_SIZE / 4
            ));
        }
    }
    Ok(Expect::lines(0, 2))
}

// --- requests the frontend must refuse ------------------------------------------

/// Sends each request `make` spoils (`malformed.rs`) on one connection
/// and checks its answer: each is refused, with a line.
fn refused_all(ctx: &mut Ctx<'_>, make: malformed::Make) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    let hid = ctx.hid();
    let session = ctx.session()?;
    let checks = make(hid, &mut || session.req_id());
    let slots: Vec<Slot> = checks.iter().map(|c| c.1).collect();
    for ((what, _, want), got) in checks.iter().zip(ctx.ask_all(&slots)?) {
        expect_status(what, got, *want)?;
    }
    Ok(Expect::refused(checks.len() as u32))
}

fn unknown_ids(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    let hid = ctx.hid();
    for message in [
        Message::Unexport(hid),
        Message::Update {
            hid,
            priv_data: PrivData::EMPTY,
            fence: None,
        },
        Message::Mapped {
            hid,
            epoch: MapEpoch::FIRST,
        },
        Message::Release {
            hid,
            epoch: MapEpoch::FIRST,
        },
    ] {
        let what = format!("{:?} of an unknown id", message.op());
        ctx.expect(&what, message, Status::NoSuchBuffer)?;
    }
    // A real announcement, then its number with another key.
    let slot = ctx.export_slot(hid, 4096, 8)?;
    expect_status("EXPORT", ctx.ask(slot)?, Status::Ok)?;
    let mut key = *hid.key();
    key[0] ^= 0xff;
    let forged = HyperDmabufId::new(hid.number(), key).expect("a real id's number");
    ctx.expect(
        "UNEXPORT with another key",
        Message::Unexport(forged),
        Status::NoSuchBuffer,
    )?;
    ctx.expect(
        "UPDATE with another key",
        Message::Update {
            hid: forged,
            priv_data: PrivData::EMPTY,
            fence: None,
        },
        Status::NoSuchBuffer,
    )?;
    let slot = ctx.export_slot(forged, 4096, 8)?;
    expect_status("EXPORT of a taken number", ctx.ask(slot)?, Status::Exists)?;
    ctx.referee(&format!("import {forged} ENOENT"))?;
    ctx.expect("UNEXPORT", Message::Unexport(hid), Status::Ok)?;
    ctx.expect(
        "UNEXPORT replayed",
        Message::Unexport(hid),
        Status::NoSuchBuffer,
    )?;
    ctx.expect(
        "UPDATE after UNEXPORT",
        Message::Update {
            hid,
            priv_data: PrivData::EMPTY,
            fence: None,
        },
        Status::NoSuchBuffer,
    )?;
    ctx.referee(&format!("import {hid} ENOENT"))?;
    Ok(Expect::QUIET)
}

fn writable_refused(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // Read-only device: a read-write announcement is refused (a normal
    // answer, not a malformed request).
    let offer = Offer {
        config: BackendConfig {
            feature_rw: false,
            ..Offer::default().config
        },
        overrides: Vec::new(),
    };
    ctx.connect(&offer)?;
    let hid = ctx.hid();
    let mut slot = ctx.export_slot(hid, 4096, 8)?;
    slot[48..52].copy_from_slice(&ExportFlags::WRITABLE.bits().to_le_bytes());
    expect_status(
        "read-write EXPORT",
        ctx.ask(slot)?,
        Status::PermissionDenied,
    )?;
    Ok(Expect::QUIET)
}

impl<'g> Ctx<'g> {
    /// `count` fresh pages granted to the victim (read-only).
    fn grant(&self, count: u32) -> Result<Granted<'g>, String> {
        ffi::grant_pages(self.gntalloc, self.dev.front_id, count, false)
            .map_err(|e| format!("gntalloc: {e}"))
    }

    /// Announces a buffer of `size` bytes whose root page `root` holds,
    /// has the victim import it expecting `errno`, and withdraws it.
    fn announce_and_import(&mut self, size: u64, root: u32, errno: &str) -> Result<(), String> {
        let hid = self.hid();
        let slot = self.export_slot(hid, size, root)?;
        expect_status("EXPORT", self.ask(slot)?, Status::Ok)?;
        self.referee(&format!("import {hid} {errno}"))?;
        self.expect("UNEXPORT", Message::Unexport(hid), Status::Ok)
    }
}

/// The victim imports a buffer of `pages` pages whose one-level
/// directory `mutate` spoils (given a reference this domain granted and
/// ended: inside the grant table, naming no page); the import must give
/// `errno`, with one line unless it succeeds.
fn dir_case(
    ctx: &mut Ctx<'_>,
    pages: u32,
    errno: &str,
    mutate: impl FnOnce(&mut DirPage, u32),
) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    let (root, _data, size) =
        malformed::spoilt_buffer(ctx.gntalloc, ctx.dev.front_id, pages, mutate)?;
    ctx.announce_and_import(size, root.grefs()[0], errno)?;
    Ok(Expect::lines(u32::from(errno != "0"), 1))
}

fn dir_foreign_gref(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // A page granted to the well-behaved peer, not to the victim.
    let other = ffi::grant_pages(ctx.gntalloc, ctx.bystander, 1, false)
        .map_err(|e| format!("gntalloc: {e}"))?;
    let gref = other.grefs()[0];
    dir_case(ctx, 2, "EIO", |p, _| malformed::set_entry(p, 1, gref))
}

fn dir_loop(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // The root names itself as both leaves.
    ctx.connect(&Offer::default())?;
    let root = ctx.grant(1)?;
    let me = root.grefs()[0];
    put_page(root.words(), &two_level_root(&[me, me])?);
    ctx.announce_and_import(TWO_LEAVES, me, "EIO")?;
    Ok(Expect::lines(1, 1))
}

fn dir_leaf_twice(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // Leaf 0 listed in both places: the second has the wrong index.
    ctx.connect(&Offer::default())?;
    let leaf = ctx.grant(1)?;
    put_page(leaf.words(), &malformed::leaf_zero()?);
    let l = leaf.grefs()[0];
    let root = ctx.grant(1)?;
    put_page(root.words(), &two_level_root(&[l, l])?);
    ctx.announce_and_import(TWO_LEAVES, root.grefs()[0], "EIO")?;
    Ok(Expect::lines(1, 1))
}

fn flood_requests(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    // Full rings of requests for unknown ids, every one answered...
    let mut stale = Vec::new();
    for _ in 0..2000 {
        let hid = ctx.hid();
        stale.push(ctx.request(Message::Unexport(hid))?);
    }
    for status in ctx.ask_all(&stale)? {
        expect_status("UNEXPORT of an unknown id", status, Status::NoSuchBuffer)?;
    }
    // ...then full rings of refused ones: one line each, within the
    // peer's budget (the rest counted as suppressed).
    const REFUSED: u32 = 64;
    let mut refused = Vec::new();
    for _ in 0..REFUSED {
        let hid = ctx.hid();
        let mut slot = ctx.request(Message::Unexport(hid))?;
        slot[4] = 0x42;
        refused.push(slot);
    }
    for status in ctx.ask_all(&refused)? {
        expect_status("unknown op in a flood", status, Status::NotSupported)?;
    }
    ctx.expect_alive()?;
    Ok(Expect::refused(REFUSED))
}

fn flood_exports(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    // As many announcements as the victim takes from one peer, then one
    // more: kept until the connection goes (the referee checks none is
    // left). The victim's consumer of the good peer's buffers must lose
    // none of its events meanwhile.
    ctx.connect(&Offer::default())?;
    let mut slots = Vec::with_capacity(MAX_IMPORTS_PER_PEER);
    for _ in 0..MAX_IMPORTS_PER_PEER {
        let hid = ctx.hid();
        slots.push(ctx.export_slot(hid, 4096, 8)?);
    }
    for status in ctx.ask_all(&slots)? {
        expect_status("EXPORT", status, Status::Ok)?;
    }
    let hid = ctx.hid();
    let slot = ctx.export_slot(hid, 4096, 8)?;
    expect_status("EXPORT past the limit", ctx.ask(slot)?, Status::NoSpace)?;
    Ok(Expect::QUIET)
}

// --- a hostile importer ------------------------------------------------------------------

/// A well-behaved importer's round, and a writable mapping of a
/// read-only export refused.
fn importer_control(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    ctx.share_once("control", 21)?;
    let export = ctx.accepted("readonly", 20)?;
    let refs = ctx.data_refs(&export)?;
    if ctx.gntdev.map_refs(ctx.dev.front_id, &refs, true).is_ok() {
        return Err("a read-only export's pages mapped writable".into());
    }
    let unexport = ctx.victim_unexports("readonly", export.hid)?;
    ctx.reply(&[answer_to(&unexport, Status::Ok)])?;
    ctx.referee("ended readonly")?;
    ctx.referee("gauges 0 0")?;
    Ok(Expect::QUIET)
}

/// Grant references are enumerable: while the victim's EXPORT waits on
/// the ring, we map whatever it grants us (all of it: that buffer's
/// pages and directory, none of its grants to the good peer), refuse the
/// export, and keep the pages mapped. The failed export must keep its
/// dma-buf pinned until we unmap.
fn maps_before_announce(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    const SEED: u64 = 22;
    ctx.connect(&Offer::default())?;
    ctx.victim_exports("early", SEED)?;
    // Once the EXPORT is on the ring every grant of its buffer exists; we
    // take it off the ring but read it only after the scan.
    ctx.pump_until("the EXPORT on the ring", |c| {
        (!c.inbox.is_empty()).then_some(())
    })?;
    // Its buffer's grants: the data pages and the root of a one-level
    // directory. Found nearest the rings' references, which the victim
    // granted just before; the rest of the range is scanned once we
    // answered, before the victim's 5 s wait for the answer could end.
    let rings = ctx.session()?.ring_refs();
    // In version 2 the references of a buffer this small come in the
    // EXPORT itself: no directory root among the grants.
    let inline = ctx.session()?.rings.version() >= VERSION_2
        && PAGES <= inline_capacity("hostile-importer early".len(), false);
    let t0 = Instant::now();
    let (mut found, untried) = ctx.scan_nearest(&rings, PAGES + usize::from(!inline));
    let scan_ms = t0.elapsed().as_millis();
    let (slot, export) = ctx.announced("early")?;
    let data = ctx.data_refs(&export)?;
    let mut expected = data.clone();
    expected.extend(export.pages.root().map(|g| g.get()));
    expected.sort_unstable();
    let mut got: Vec<u32> = found.iter().map(|m| m.refs()[0]).collect();
    got.sort_unstable();
    if got != expected {
        return Err(format!(
            "of references 8 to {}, we could map {got:?}; the victim granted us {expected:?}",
            ctx.scan_limit
        ));
    }
    println!(
        "importer-maps-before-announce: {} references mapped before we read the announcement \
         (in {scan_ms} ms, {} of references 8 to {} left untried): \
         the buffer's {} data pages and its root, if it has a directory",
        got.len(),
        untried.len(),
        ctx.scan_limit,
        data.len()
    );
    // The data pages, in the buffer's order, hold its pattern.
    found.retain(|m| {
        export
            .pages
            .root()
            .is_none_or(|root| m.refs()[0] != root.get())
    });
    let check = |found: &[ForeignMap<'_>], when: &str| {
        let bytes: Vec<u8> = data
            .iter()
            .filter_map(|r| found.iter().find(|m| m.refs()[0] == *r))
            .flat_map(|m| m.mapping().to_vec())
            .collect();
        match pattern::first_mismatch(SEED, &bytes) {
            None => Ok(()),
            Some(at) => Err(format!("{when}, the pages differ at byte {at}")),
        }
    };
    check(&found, "mapped before the announcement")?;
    ctx.reply(&[answer_to(&slot, Status::Invalid)])?;
    // None of the references not tried maps: the victim grants us
    // nothing else (its grants to the good peer are not ours to map).
    let others: Vec<u32> = ctx.map_each(&untried).iter().map(|m| m.refs()[0]).collect();
    if !others.is_empty() {
        return Err(format!(
            "the victim grants us references {others:?} besides its rings and the buffer"
        ));
    }
    // The exporter's user space never learns the id of a refused export:
    // the referee is told it, for the GrantsEnded it awaits.
    ctx.referee(&format!("exported early EIO {}", export.hid))?;
    let n = found.len();
    ctx.referee(&format!("gauges 1 {n}"))?;
    ctx.referee(&format!("hold early 1 {n}"))?;
    ctx.referee("drop early")?;
    check(&found, "after the exporter dropped it")?;
    drop(found);
    ctx.referee("ended early")?;
    ctx.referee("gauges 0 0")?;
    Ok(Expect::QUIET)
}

impl<'g> Ctx<'g> {
    /// A victim export `name` of pattern `seed`, accepted; its data
    /// mapped here if `map`; MAPPED of `claim` if any; then unexported by
    /// the victim: its UNEXPORT request (held), and our mapping.
    fn claimed_then_unexported(
        &mut self,
        name: &str,
        seed: u64,
        map: bool,
        claim: Option<u32>,
    ) -> Result<(Export, Option<ForeignMap<'g>>, Slot), String> {
        self.connect(&Offer::default())?;
        let export = self.accepted(name, seed)?;
        let data = if map {
            Some(self.map_data(&export, seed)?)
        } else {
            None
        };
        if let Some(n) = claim {
            self.importer_says(Message::Mapped {
                hid: export.hid,
                epoch: epoch(n),
            })?;
            self.referee(&format!("busy {name} 1"))?;
        }
        let unexport = self.victim_unexports(name, export.hid)?;
        Ok((export, data, unexport))
    }
}

/// The mapping of a case that mapped.
fn mapped(data: Option<ForeignMap<'_>>) -> Result<ForeignMap<'_>, String> {
    data.ok_or_else(|| "nothing mapped".to_string())
}

/// We map a buffer without saying so and answer its UNEXPORT "not
/// mapped": the exporter ends the export, and must keep the dma-buf
/// pinned until we unmap.
fn lies_unexport_ok(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let (_, data, unexport) = ctx.claimed_then_unexported("liar", 23, true, None)?;
    ctx.reply(&[answer_to(&unexport, Status::Ok)])?;
    ctx.pinned_until_unmapped("liar", mapped(data)?, 23)?;
    Ok(Expect::QUIET)
}

/// We map and say so, answer the UNEXPORT Busy and never release; then
/// the victim's device is removed (we close as asked, keeping the
/// mapping): the grants must stay pinned until we unmap.
fn never_releases(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let (_, data, unexport) = ctx.claimed_then_unexported("holder", 24, true, Some(1))?;
    ctx.reply(&[busy(&unexport, 1)])?;
    ctx.referee("hold holder 1 0")?;
    ctx.referee("remove")?;
    ctx.pinned_until_unmapped("holder", mapped(data)?, 24)?;
    Ok(Expect::QUIET)
}

/// MAPPED of a mapping we never made, then the honest end of it.
fn mapped_without_mapping(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let (export, _, unexport) = ctx.claimed_then_unexported("claimed", 25, false, Some(1))?;
    ctx.reply(&[busy(&unexport, 1)])?;
    ctx.referee("hold claimed 1 0")?;
    ctx.importer_says(Message::Release {
        hid: export.hid,
        epoch: MapEpoch::FIRST,
    })?;
    ctx.referee("ended claimed")?;
    ctx.referee("gauges 0 0")?;
    Ok(Expect::QUIET)
}

/// RELEASE of a stale epoch (ignored), of an unknown id (ENOENT), then of
/// a later epoch while we still map: the export ends, the dma-buf stays
/// pinned until we unmap.
fn release_stale(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let (export, data, unexport) = ctx.claimed_then_unexported("stale", 26, true, Some(2))?;
    ctx.reply(&[busy(&unexport, 2)])?;
    ctx.importer_says(Message::Release {
        hid: export.hid,
        epoch: epoch(1),
    })?;
    ctx.referee("hold stale 1 0")?;
    let unknown = ctx.hid();
    ctx.expect(
        "RELEASE of an unknown id",
        Message::Release {
            hid: unknown,
            epoch: epoch(2),
        },
        Status::NoSuchBuffer,
    )?;
    ctx.importer_says(Message::Release {
        hid: export.hid,
        epoch: epoch(3),
    })?;
    ctx.pinned_until_unmapped("stale", mapped(data)?, 26)?;
    Ok(Expect::QUIET)
}

/// Three EXPORTs answered last first; a RELEASE that overtakes our Busy
/// answer to the UNEXPORT it belongs to (docs/protocol.md, section 11).
fn answers_out_of_order(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    let names = ["order1", "order2", "order3"];
    for (seed, name) in (31..).zip(names) {
        ctx.victim_exports(name, seed)?;
    }
    let mut announced = Vec::new();
    for name in names {
        announced.push(ctx.announced(name)?);
    }
    let answers: Vec<Slot> = announced
        .iter()
        .rev()
        .map(|(slot, _)| answer_to(slot, Status::Ok))
        .collect();
    ctx.reply(&answers)?;
    for name in names {
        ctx.referee(&format!("exported {name} 0"))?;
    }
    let first = announced[0].1;
    let data = ctx.map_data(&first, 31)?;
    ctx.importer_says(Message::Mapped {
        hid: first.hid,
        epoch: MapEpoch::FIRST,
    })?;
    let unexport = ctx.victim_unexports("order1", first.hid)?;
    drop(data);
    ctx.importer_says(Message::Release {
        hid: first.hid,
        epoch: MapEpoch::FIRST,
    })?;
    ctx.referee("hold order1 3 0")?;
    ctx.reply(&[busy(&unexport, 1)])?;
    ctx.referee("ended order1")?;
    for (name, (_, export)) in names.iter().zip(&announced).skip(1) {
        let unexport = ctx.victim_unexports(name, export.hid)?;
        ctx.reply(&[answer_to(&unexport, Status::Ok)])?;
        ctx.referee(&format!("ended {name}"))?;
    }
    ctx.referee("gauges 0 0")?;
    Ok(Expect::QUIET)
}

/// We map buffer B but tell the victim we map A: ids and epochs prove
/// nothing, so B must stay pinned after its UNEXPORT was answered "not
/// mapped", while A ends as we say.
fn maps_another_buffer(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    let a = ctx.accepted("bufa", 41)?;
    let b = ctx.accepted("bufb", 42)?;
    let data = ctx.map_data(&b, 42)?;
    ctx.importer_says(Message::Mapped {
        hid: a.hid,
        epoch: MapEpoch::FIRST,
    })?;
    ctx.referee("busy bufa 1")?;
    ctx.referee("busy bufb 0")?;
    let unexport = ctx.victim_unexports("bufb", b.hid)?;
    ctx.reply(&[answer_to(&unexport, Status::Ok)])?;
    let n = data.refs().len();
    ctx.referee(&format!("hold bufb 2 {n}"))?;
    let unexport = ctx.victim_unexports("bufa", a.hid)?;
    ctx.reply(&[busy(&unexport, 1)])?;
    ctx.importer_says(Message::Release {
        hid: a.hid,
        epoch: MapEpoch::FIRST,
    })?;
    ctx.referee("ended bufa")?;
    ctx.pinned_until_unmapped("bufb", data, 42)?;
    Ok(Expect::QUIET)
}

/// Connected and idle: of every grant reference in the scanned range,
/// only the rings' map (the victim's grants to the good peer do not).
fn no_grant_left(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    ctx.connect(&Offer::default())?;
    let rings = ctx.session()?.ring_refs();
    let found: Vec<u32> = ctx.scan(&rings).iter().map(|m| m.refs()[0]).collect();
    if !found.is_empty() {
        return Err(format!(
            "the victim grants us references {found:?} besides its rings"
        ));
    }
    let mapped = rings
        .iter()
        .filter(|&&r| ctx.gntdev.map_refs(ctx.dev.front_id, &[r], false).is_ok())
        .count();
    if mapped != rings.len() {
        return Err(format!(
            "only {mapped} of the {} ring references map",
            rings.len()
        ));
    }
    Ok(Expect::QUIET)
}
