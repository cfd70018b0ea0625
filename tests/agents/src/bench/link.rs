// SPDX-License-Identifier: MIT
//! A small user-space channel between two domains, in the manner of
//! libxenvchan: pages one side grants (`gntalloc`) and the other maps
//! (`gntdev`), a byte stream each way in them, one event channel. It is
//! what a user of gntdev-dmabuf has to build to carry grant references,
//! and what a user without zero copy moves the bytes themselves through,
//! so the benchmark uses it for both anchors, and for its own
//! coordination.
//!
//! Each way is a *lane*: a data ring the writer copies bytes into, and a
//! ring of the protocol core (`hyper_dmabuf_common::ring`, Xen's
//! `io/ring.h`) that keeps its account. The writer is the lane's
//! requester: after copying a span of bytes (as many as are free and
//! contiguous) it announces it in a request, whose first four bytes are
//! its length; the reader, the responder, answers each span once it has
//! read it all, and the answer frees the span's bytes for the writer. The
//! spans follow each other in the data ring from its start, wrapping at
//! its end, and never cross it.
//!
//! Layout of the granted region (`3 + DOWN_PAGES` pages):
//!
//! ```text
//! page 0    the down lane's ring (written to by the offering side)
//! page 1    the up lane's ring (written to by the joining side)
//! page 2    the up lane's data, 2048 bytes
//! page 3..  the down lane's data, DOWN_PAGES pages
//! ```
//!
//! Either side signals the event channel after each publication (a
//! span, or the answers to those it read) and, when it cannot progress,
//! waits for a signal and looks again.
//!
//! The offering side publishes `"PORT REF0 REF1 ..."` at the joining
//! domain's `data/hdmabuf-bench` node in xenstore.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::msg::Msg;
use hdmabuf_agent::xendev::{EventChannel, Gntalloc, Gntdev, GrantRange, PAGE};
use hdmabuf_xl::xsclient::XsClient;
use hyper_dmabuf_client::Mapping;
use hyper_dmabuf_common::ring::{self, Requester, Responder};
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::wire::{Slot, SLOT_SIZE};
use hyper_dmabuf_xenbus_proto::store::{Perm, PermKind, Store, Txn};

/// Pages of the data ring towards the joining side (1 MiB): bulk data
/// goes that way.
const DOWN_PAGES: usize = 256;
/// Pages of the region.
const PAGES: usize = 3 + DOWN_PAGES;
/// How long any wait for the peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(120);
/// The xenstore node, under the joining domain's home.
const NODE: &str = "data/hdmabuf-bench";

/// One lane's place in the region: its ring (one page) and its data.
#[derive(Clone, Copy)]
struct Lane {
    ring: usize,
    data: usize,
    cap: u32,
}

const DOWN: Lane = Lane {
    ring: 0,
    data: 3 * PAGE,
    cap: (DOWN_PAGES * PAGE) as u32,
};
const UP: Lane = Lane {
    ring: PAGE,
    data: 2 * PAGE,
    cap: 2048,
};

// The two rings, the up data and the down data do not overlap and fill
// the region; the data rings wrap cleanly (power-of-two capacities, so
// that the free-running byte counts wrap with them). A ring page holds 8
// spans, more than the benchmark has in flight (a message is a header
// and a payload, split in two at most where the data ring wraps, and at
// most two frames are unanswered); a writer with no free slot waits as
// one with no free bytes does.
const _: () = assert!(DOWN.ring + PAGE == UP.ring && UP.ring + PAGE == UP.data);
const _: () = assert!(UP.data + UP.cap as usize <= DOWN.data && DOWN.data == 3 * PAGE);
const _: () = assert!(DOWN.data + DOWN.cap as usize == PAGES * PAGE);
const _: () = assert!(UP.cap.is_power_of_two() && DOWN.cap.is_power_of_two());
const _: () = assert!(ring::slots_for_len(PAGE) >= 8);

/// The granted region, reached only through the protocol core's
/// [`SharedMem`]: words through atomics, bytes copied in and out.
struct SharedPages(Mapping);

impl SharedPages {
    /// The word at `offset`; panics (a caller's bug, as the trait allows)
    /// unless it is aligned and inside the region, or, for a store, the
    /// region is mapped read-only (where the store would fault).
    fn word(&self, offset: usize, store: bool) -> &AtomicU32 {
        assert!(
            !store || self.0.is_writable(),
            "a store to a read-only mapping"
        );
        self.0
            .atomic_u32(offset)
            .unwrap_or_else(|| panic!("u32 at {offset} outside a region of {} bytes", self.0.len()))
    }
}

impl SharedMem for SharedPages {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.word(offset, false).load(Ordering::Relaxed)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.word(offset, true).store(value, Ordering::Relaxed)
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.word(offset, false).load(Ordering::Acquire)
    }
    fn store_release_u32(&self, offset: usize, value: u32) {
        self.word(offset, true).store(value, Ordering::Release)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.0.read_at(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.0.write_at(offset, src)
    }
}

/// A lane's ring page, as the shared memory of a `common::ring` ring.
struct RingPage {
    pages: Rc<SharedPages>,
    base: usize,
}

impl RingPage {
    /// The ring page of `lane`.
    fn of(pages: &Rc<SharedPages>, lane: Lane) -> Self {
        RingPage {
            pages: Rc::clone(pages),
            base: lane.ring,
        }
    }

    /// The region's offset of `len` bytes at `offset` in this page.
    fn at(&self, offset: usize, len: usize) -> usize {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= PAGE),
            "{len} bytes at {offset} outside a ring page"
        );
        self.base + offset
    }
}

impl SharedMem for RingPage {
    fn len(&self) -> usize {
        PAGE
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.pages.read_u32(self.at(offset, 4))
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.pages.write_u32(self.at(offset, 4), value)
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.pages.load_acquire_u32(self.at(offset, 4))
    }
    fn store_release_u32(&self, offset: usize, value: u32) {
        self.pages.store_release_u32(self.at(offset, 4), value)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.pages.read_bytes(self.at(offset, dst.len()), dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.pages.write_bytes(self.at(offset, src.len()), src)
    }
    fn full_barrier(&self) {
        self.pages.full_barrier()
    }
}

/// The lane we write: the spans we announced and the peer has not read.
struct Sender {
    ring: Requester<RingPage>,
    lane: Lane,
    /// Bytes written, free-running.
    written: u32,
    /// The spans not answered yet, oldest first, and their total.
    spans: VecDeque<u32>,
    unread: u32,
}

impl Sender {
    fn new(pages: &Rc<SharedPages>, lane: Lane) -> io::Result<Self> {
        Ok(Sender {
            ring: Requester::new(RingPage::of(pages, lane)).map_err(other)?,
            lane,
            written: 0,
            spans: VecDeque::new(),
            unread: 0,
        })
    }

    /// Takes back the bytes of every span the peer has answered.
    fn reclaim(&mut self) -> io::Result<()> {
        let mut answer: Slot = [0; SLOT_SIZE];
        while self.ring.pop(&mut answer).map_err(other)? {
            // The ring refuses an answer to no request.
            let span = self.spans.pop_front().unwrap_or(0);
            self.unread -= span;
        }
        Ok(())
    }

    /// Where the next span goes in the region, and how long it may be:
    /// the free bytes up to the end of the data ring, none while every
    /// slot of the ring holds a span.
    fn room(&self) -> (usize, usize) {
        let at = self.written % self.lane.cap;
        let room = if self.ring.free_slots() == 0 {
            0
        } else {
            (self.lane.cap - self.unread).min(self.lane.cap - at)
        };
        (self.lane.data + at as usize, room as usize)
    }

    /// Announces the `len` bytes just written.
    fn announce(&mut self, len: u32) -> io::Result<()> {
        let mut span: Slot = [0; SLOT_SIZE];
        span[..4].copy_from_slice(&len.to_le_bytes());
        self.ring.push(&span).map_err(other)?;
        self.ring.publish();
        self.written = self.written.wrapping_add(len);
        self.spans.push_back(len);
        self.unread += len;
        Ok(())
    }
}

/// The lane we read: the spans announced to us and not read to the end.
struct Receiver {
    ring: Responder<RingPage>,
    lane: Lane,
    /// Bytes read, free-running.
    read: u32,
    /// What is left to read of each span taken, oldest first, and its
    /// total.
    spans: VecDeque<u32>,
    ready: u32,
}

impl Receiver {
    fn new(pages: &Rc<SharedPages>, lane: Lane) -> io::Result<Self> {
        Ok(Receiver {
            ring: Responder::new(RingPage::of(pages, lane)).map_err(other)?,
            lane,
            read: 0,
            spans: VecDeque::new(),
            ready: 0,
        })
    }

    /// Takes every span announced so far; returns where the bytes to read
    /// next are in the region and how many of them are contiguous.
    fn take(&mut self) -> io::Result<(usize, usize)> {
        let mut span: Slot = [0; SLOT_SIZE];
        while self.ring.pop(&mut span).map_err(other)? {
            let len = u32::from_le_bytes([span[0], span[1], span[2], span[3]]);
            if len == 0 || len > self.lane.cap - self.ready {
                return Err(other(format!(
                    "the peer announced a span of {len} bytes, with {} unread in a ring of {}",
                    self.ready, self.lane.cap
                )));
            }
            self.spans.push_back(len);
            self.ready += len;
        }
        let at = self.read % self.lane.cap;
        let contiguous = self.ready.min(self.lane.cap - at);
        Ok((self.lane.data + at as usize, contiguous as usize))
    }

    /// Notes `len` bytes read, and answers every span read to its end;
    /// returns whether it answered any (and so published).
    fn consumed(&mut self, mut len: u32) -> io::Result<bool> {
        self.read = self.read.wrapping_add(len);
        self.ready -= len;
        let mut answered = false;
        while len > 0 {
            let Some(left) = self.spans.front_mut() else {
                break;
            };
            let n = len.min(*left);
            *left -= n;
            len -= n;
            if *left == 0 {
                self.spans.pop_front();
                self.ring.push(&[0; SLOT_SIZE]).map_err(other)?;
                answered = true;
            }
        }
        if answered {
            self.ring.publish();
        }
        Ok(answered)
    }
}

/// How the region is held; dropped after the mapping (field order).
enum Backing {
    Granted {
        dev: Gntalloc,
        index: u64,
    },
    Mapped {
        dev: Gntdev,
        range: Option<GrantRange>,
    },
}

impl Drop for Backing {
    fn drop(&mut self) {
        match self {
            Backing::Granted { dev, index } => {
                let _ = dev.release(*index, PAGES);
            }
            Backing::Mapped { dev, range } => {
                if let Some(range) = range.take() {
                    let _ = dev.unprepare(range);
                }
            }
        }
    }
}

/// A message header: a kind, two arguments and the length of the payload
/// that follows it in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Msg,
    pub(crate) arg: u32,
    pub(crate) value: u64,
    pub(crate) len: u64,
}

impl Header {
    const SIZE: usize = 24;

    fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&u32::from(self.kind).to_le_bytes());
        b[4..8].copy_from_slice(&self.arg.to_le_bytes());
        b[8..16].copy_from_slice(&self.value.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// The header in `b`; a kind no [`Msg`] has is an error.
    fn decode(b: &[u8; Self::SIZE]) -> io::Result<Self> {
        let word = |r: std::ops::Range<usize>| {
            let mut v = [0u8; 8];
            v[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(v)
        };
        let kind = Msg::try_from(word(0..4) as u32)
            .map_err(|code| other(format!("a message of unknown kind {code}")))?;
        Ok(Header {
            kind,
            arg: word(4..8) as u32,
            value: word(8..16),
            len: word(16..24),
        })
    }
}

/// One end of the channel.
pub(crate) struct Link {
    tx: Sender,
    rx: Receiver,
    pages: Rc<SharedPages>,
    // Declared after every holder of the pages (held for its Drop): the
    // region is unmapped before the grants are given up.
    _backing: Backing,
    events: EventChannel,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Link {
    /// Grants the region to `peer`, listens on an event channel and
    /// publishes both for it; returns once the peer has joined.
    pub(crate) fn offer(peer: u16) -> io::Result<Self> {
        let dev = Gntalloc::open()?;
        let (index, refs) = dev.grant(peer, PAGES, true)?;
        let map = dev.map(index, PAGES);
        // From here on the grants are given up when `backing` is dropped.
        let backing = Backing::Granted { dev, index };
        let pages = Rc::new(SharedPages(map?));
        // Before the peer can see the pages.
        for lane in [DOWN, UP] {
            ring::init_shared(&RingPage::of(&pages, lane)).map_err(other)?;
        }
        let events = EventChannel::listen(peer)?;
        let mut value = events.port().to_string();
        for r in &refs {
            value.push_str(&format!(" {r}"));
        }
        let path = format!("/local/domain/{peer}/{NODE}");
        let mut xs = XsClient::open()?;
        xs.write(Txn::NONE, &path, value.as_bytes())
            .map_err(other)?;
        let perms = [
            Perm {
                domid: 0,
                kind: PermKind::None,
            },
            Perm {
                domid: peer,
                kind: PermKind::Read,
            },
        ];
        xs.set_perms(Txn::NONE, &path, &perms).map_err(other)?;
        let mut link = Link {
            tx: Sender::new(&pages, DOWN)?,
            rx: Receiver::new(&pages, UP)?,
            pages,
            _backing: backing,
            events,
        };
        let hello = link.recv()?.0;
        if hello.kind != Msg::Hello {
            return Err(other(format!("the peer greeted with {hello:?}")));
        }
        let _ = xs.remove(Txn::NONE, &path);
        Ok(link)
    }

    /// Finds what `peer` offers at this domain's node, maps it and binds
    /// the event channel.
    pub(crate) fn join(peer: u16) -> io::Result<Self> {
        let mut xs = XsClient::open()?;
        let started = Instant::now();
        let value = loop {
            if let Some(v) = xs.read_value(NODE).map_err(other)? {
                break v;
            }
            if started.elapsed() > PEER_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing offered at {NODE}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut words = value.split_ascii_whitespace().map(str::parse::<u32>);
        let port = words
            .next()
            .ok_or_else(|| other("empty offer"))?
            .map_err(other)?;
        let refs = words.collect::<Result<Vec<u32>, _>>().map_err(other)?;
        if refs.len() != PAGES {
            return Err(other(format!("offer of {} pages", refs.len())));
        }
        let dev = Gntdev::open()?;
        let range = dev.prepare(peer, &refs)?;
        let map = dev.map(&range, true);
        // From here on the range is given back when `backing` is dropped.
        let backing = Backing::Mapped {
            dev,
            range: Some(range),
        };
        let pages = Rc::new(SharedPages(map?));
        let events = EventChannel::connect(peer, port)?;
        let mut link = Link {
            tx: Sender::new(&pages, UP)?,
            rx: Receiver::new(&pages, DOWN)?,
            pages,
            _backing: backing,
            events,
        };
        link.send(Msg::Hello, 0, 0, &[])?;
        Ok(link)
    }

    /// Writes all of `src` into the outgoing lane.
    fn write_all(&mut self, src: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < src.len() {
            self.tx.reclaim()?;
            let (at, room) = self.tx.room();
            if room == 0 {
                self.events.wait(PEER_TIMEOUT)?;
                continue;
            }
            let n = room.min(src.len() - done);
            self.pages.write_bytes(at, &src[done..done + n]);
            self.tx.announce(n as u32)?;
            self.events.notify()?;
            done += n;
        }
        Ok(())
    }

    /// Fills all of `dst` from the incoming lane.
    fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < dst.len() {
            let (at, ready) = self.rx.take()?;
            if ready == 0 {
                self.events.wait(PEER_TIMEOUT)?;
                continue;
            }
            let n = ready.min(dst.len() - done);
            self.pages.read_bytes(at, &mut dst[done..done + n]);
            if self.rx.consumed(n as u32)? {
                self.events.notify()?;
            }
            done += n;
        }
        Ok(())
    }

    /// Sends a message with `payload`.
    pub(crate) fn send(
        &mut self,
        kind: Msg,
        arg: u32,
        value: u64,
        payload: &[u8],
    ) -> io::Result<()> {
        let header = Header {
            kind,
            arg,
            value,
            len: payload.len() as u64,
        };
        self.write_all(&header.encode())?;
        self.write_all(payload)
    }

    /// Receives the next message's header; its payload must be read next
    /// with [`Link::recv_payload`].
    pub(crate) fn recv_header(&mut self) -> io::Result<Header> {
        let mut raw = [0u8; Header::SIZE];
        self.read_exact(&mut raw)?;
        Header::decode(&raw)
    }

    /// Reads a payload announced by a header into `dst` (its length).
    pub(crate) fn recv_payload(&mut self, dst: &mut [u8]) -> io::Result<()> {
        self.read_exact(dst)
    }

    /// Receives a whole message with a small payload.
    pub(crate) fn recv(&mut self) -> io::Result<(Header, Vec<u8>)> {
        let header = self.recv_header()?;
        if header.len > (64 << 20) {
            return Err(other(format!("a payload of {} bytes", header.len)));
        }
        let mut payload = vec![0u8; header.len as usize];
        self.read_exact(&mut payload)?;
        Ok((header, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{memfd_create, MemfdFlags};

    /// A region of plain memory (a memfd) in place of granted pages, its
    /// rings initialised as the offering side does.
    fn region() -> Rc<SharedPages> {
        let fd = memfd_create("link", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, (PAGES * PAGE) as u64).unwrap();
        // SAFETY: the memfd was sized above and only this test has it.
        let map = unsafe { Mapping::new(&fd, PAGES * PAGE, true) }.unwrap();
        let pages = Rc::new(SharedPages(map));
        for lane in [DOWN, UP] {
            ring::init_shared(&RingPage::of(&pages, lane)).unwrap();
        }
        pages
    }

    #[test]
    fn bytes_flow_in_order_through_a_wrapping_lane() {
        let pages = region();
        let mut tx = Sender::new(&pages, UP).unwrap();
        let mut rx = Receiver::new(&pages, UP).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        for step in 1usize.. {
            if got.len() == data.len() {
                break;
            }
            // The writer: 1 to 700 bytes, as far as there is room.
            tx.reclaim().unwrap();
            let (at, room) = tx.room();
            let n = room.min(1 + step * 37 % 700).min(data.len() - sent);
            if n > 0 {
                pages.write_bytes(at, &data[sent..sent + n]);
                tx.announce(n as u32).unwrap();
                sent += n;
            }
            // The reader: 1 to 900 bytes of what is there, parts of spans
            // included.
            let (at, ready) = rx.take().unwrap();
            let n = ready.min(1 + step * 53 % 900);
            if n > 0 {
                let mut bytes = vec![0; n];
                pages.read_bytes(at, &mut bytes);
                rx.consumed(n as u32).unwrap();
                got.extend(bytes);
            }
        }
        assert!(got == data, "the bytes arrive as written");
        assert!(tx.written > 40 * UP.cap, "the lane wrapped");
    }

    #[test]
    fn no_room_while_every_slot_holds_a_span() {
        let pages = region();
        let mut tx = Sender::new(&pages, UP).unwrap();
        let mut rx = Receiver::new(&pages, UP).unwrap();
        let slots = ring::slots_for_len(PAGE);
        for _ in 0..slots {
            assert!(tx.room().1 > 0);
            tx.announce(1).unwrap();
        }
        assert_eq!(tx.room().1, 0, "bytes are free, slots are not");
        assert_eq!(rx.take().unwrap().1, slots as usize);
        assert!(rx.consumed(slots).unwrap());
        tx.reclaim().unwrap();
        assert_eq!(tx.room().1, (UP.cap - slots) as usize);
    }

    #[test]
    fn a_span_the_lane_cannot_hold_is_refused() {
        for len in [0, UP.cap + 1] {
            let pages = region();
            let mut tx = Sender::new(&pages, UP).unwrap();
            let mut rx = Receiver::new(&pages, UP).unwrap();
            tx.announce(len).unwrap();
            assert!(rx.take().is_err(), "{len}");
        }
    }

    #[test]
    fn headers_round_trip() {
        let h = Header {
            kind: Msg::SwapGntdev,
            arg: u32::MAX,
            value: 1 << 40,
            len: 268_435_456,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }
}
