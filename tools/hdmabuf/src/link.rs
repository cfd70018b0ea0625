//! A small user-space channel between two domains, in the manner of
//! libxenvchan: pages one side grants (`gntalloc`) and the other maps
//! (`gntdev`), two byte rings in them, one event channel. It is what a
//! user of gntdev-dmabuf has to build to carry grant references, and what
//! a user without zero copy moves the bytes themselves through, so the
//! benchmark uses it for both anchors, and for its own coordination.
//!
//! Layout of the granted region (`1 + DOWN_PAGES` pages):
//!
//! ```text
//! page 0    0  down.prod  (written by the offering side)
//!           4  down.cons  (written by the joining side)
//!          64  up.prod    (joining side)
//!          68  up.cons    (offering side)
//!        2048  up ring data, 2048 bytes
//! page 1..     down ring data, DOWN_PAGES pages
//! ```
//!
//! Indexes count bytes and wrap at 2^32; a ring holds `cap - (prod -
//! cons)` free bytes. The writer fills bytes, then publishes `prod`
//! (release); the reader reads `prod` (acquire), copies, then publishes
//! `cons`. Either side signals the event channel after each publication
//! and, when it cannot progress, waits for a signal and looks again.
//!
//! The offering side publishes `"PORT REF0 REF1 ..."` at the joining
//! domain's `data/hdmabuf-bench` node in xenstore.

use crate::sys::Mapping;
use crate::xendev::{EventChannel, Gntalloc, Gntdev, GrantRange, PAGE};
use crate::xsclient::XsClient;
use hyper_dmabuf_xenbus_proto::store::{Perm, PermKind, Store, Txn};
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pages of the ring towards the joining side (1 MiB): bulk data goes
/// that way.
pub(crate) const DOWN_PAGES: usize = 256;
/// How long any wait for the peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(120);
/// The xenstore node, under the joining domain's home.
const NODE: &str = "data/hdmabuf-bench";

/// One ring's place in the region.
#[derive(Clone, Copy)]
struct Ring {
    prod: usize,
    cons: usize,
    data: usize,
    cap: u32,
}

const DOWN: Ring = Ring {
    prod: 0,
    cons: 4,
    data: PAGE,
    cap: (DOWN_PAGES * PAGE) as u32,
};
const UP: Ring = Ring {
    prod: 64,
    cons: 68,
    data: 2048,
    cap: 2048,
};

// The indexes and the up ring share page 0 without overlap; the down ring
// fills the other pages; both wrap cleanly (power-of-two capacities).
const _: () = assert!(DOWN.cons + 4 <= UP.prod && UP.cons + 4 <= UP.data);
const _: () = assert!(UP.data + UP.cap as usize == PAGE && DOWN.data == PAGE);
const _: () = assert!(DOWN.data + DOWN.cap as usize == (1 + DOWN_PAGES) * PAGE);
const _: () = assert!(UP.cap.is_power_of_two() && DOWN.cap.is_power_of_two());

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
                let _ = dev.release(*index, 1 + DOWN_PAGES);
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
    pub(crate) kind: u32,
    pub(crate) arg: u32,
    pub(crate) value: u64,
    pub(crate) len: u64,
}

impl Header {
    const SIZE: usize = 24;

    fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.arg.to_le_bytes());
        b[8..16].copy_from_slice(&self.value.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(b: &[u8; Self::SIZE]) -> Self {
        let word = |r: std::ops::Range<usize>| {
            let mut v = [0u8; 8];
            v[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(v)
        };
        Header {
            kind: word(0..4) as u32,
            arg: word(4..8) as u32,
            value: word(8..16),
            len: word(16..24),
        }
    }
}

/// One end of the channel.
pub(crate) struct Link {
    // Declared before `_backing` (held for its Drop): unmapped before the
    // grants are given up.
    map: Mapping,
    _backing: Backing,
    events: EventChannel,
    tx: Ring,
    rx: Ring,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Link {
    /// Grants the region to `peer`, listens on an event channel and
    /// publishes both for it; returns once the peer has joined.
    pub(crate) fn offer(peer: u16) -> io::Result<Self> {
        let dev = Gntalloc::open()?;
        let (index, refs) = dev.grant(peer, 1 + DOWN_PAGES, true)?;
        let map = dev.map(index, 1 + DOWN_PAGES);
        // From here on the grants are given up when `backing` is dropped.
        let backing = Backing::Granted { dev, index };
        let map = map?;
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
            map,
            _backing: backing,
            events,
            tx: DOWN,
            rx: UP,
        };
        let hello = link.recv()?.0;
        if hello.kind != HELLO {
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
        if refs.len() != 1 + DOWN_PAGES {
            return Err(other(format!("offer of {} pages", refs.len())));
        }
        let dev = Gntdev::open()?;
        let range = dev.prepare(peer, &refs)?;
        let map = dev.map(&range, true)?;
        let events = EventChannel::connect(peer, port)?;
        let mut link = Link {
            map,
            _backing: Backing::Mapped {
                dev,
                range: Some(range),
            },
            events,
            tx: UP,
            rx: DOWN,
        };
        link.send(HELLO, 0, 0, &[])?;
        Ok(link)
    }

    fn index(&self, at: usize) -> u32 {
        self.map
            .atomic_u32(at)
            .expect("ring indexes are inside page 0")
            .load(Ordering::Acquire)
    }

    fn publish(&self, at: usize, value: u32) -> io::Result<()> {
        self.map
            .atomic_u32(at)
            .expect("ring indexes are inside page 0")
            .store(value, Ordering::Release);
        self.events.notify()
    }

    /// Writes all of `src` into the outgoing ring.
    fn write_all(&mut self, src: &[u8]) -> io::Result<()> {
        let ring = self.tx;
        let mut done = 0;
        while done < src.len() {
            let prod = self.index(ring.prod);
            let used = prod.wrapping_sub(self.index(ring.cons));
            if used > ring.cap {
                return Err(other("the peer corrupted the ring indexes"));
            }
            let free = ring.cap - used;
            if free == 0 {
                self.events.wait(PEER_TIMEOUT)?;
                continue;
            }
            let at = (prod % ring.cap) as usize;
            let n = (free as usize)
                .min(ring.cap as usize - at)
                .min(src.len() - done);
            let bytes = self.map.as_mut_slice().expect("mapped writable");
            bytes[ring.data + at..ring.data + at + n].copy_from_slice(&src[done..done + n]);
            self.publish(ring.prod, prod.wrapping_add(n as u32))?;
            done += n;
        }
        Ok(())
    }

    /// Fills all of `dst` from the incoming ring.
    fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let ring = self.rx;
        let mut done = 0;
        while done < dst.len() {
            let cons = self.index(ring.cons);
            let avail = self.index(ring.prod).wrapping_sub(cons);
            if avail > ring.cap {
                return Err(other("the peer corrupted the ring indexes"));
            }
            if avail == 0 {
                self.events.wait(PEER_TIMEOUT)?;
                continue;
            }
            let at = (cons % ring.cap) as usize;
            let n = (avail as usize)
                .min(ring.cap as usize - at)
                .min(dst.len() - done);
            let bytes = self.map.as_slice();
            dst[done..done + n].copy_from_slice(&bytes[ring.data + at..ring.data + at + n]);
            self.publish(ring.cons, cons.wrapping_add(n as u32))?;
            done += n;
        }
        Ok(())
    }

    /// Sends a message with `payload`.
    pub(crate) fn send(
        &mut self,
        kind: u32,
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
        Ok(Header::decode(&raw))
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

/// The first message, from the joining side.
const HELLO: u32 = 0x4845_4c4f;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header {
            kind: 7,
            arg: u32::MAX,
            value: 1 << 40,
            len: 268_435_456,
        };
        assert_eq!(Header::decode(&h.encode()), h);
    }
}
