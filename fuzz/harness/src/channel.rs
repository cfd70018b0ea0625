// SPDX-License-Identifier: MIT
//! The `channel` target: [`Channel`], the per-connection protocol logic
//! both drivers run, against a hostile peer.
//!
//! The channel under test owns two rings: ours (it requests, the peer
//! answers) and theirs (the peer requests, it answers). The peer is a real
//! [`Requester`] on theirs and a real [`Responder`] on ours, so it can
//! speak the protocol correctly, plus raw writes to any word of either
//! ring. The channel's [`Host`] is a model that records exports, imports,
//! events and completions and checks every call the channel makes.
//!
//! Oracles: no panic; `outstanding()` never exceeds our ring; a fatal
//! error is only one a hostile peer may cause (overflow, a response to
//! nothing, a malformed response), and never happens while the peer has
//! only spoken the protocol (no raw write, no forged response); every completion token handed to the
//! channel completes at most once, and all of them exactly once after
//! [`Channel::disconnect`]; the channel ends only exports that exist and
//! forgets only imports that are not mapped; a local call that fails
//! leaves the host's state as it was, so the caller can retry.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};

use hyper_dmabuf_common::channel::{Channel, ChannelConfig, ExportState, Host, ImportState};
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::ring::{init_shared, Requester, Responder};
use hyper_dmabuf_common::uapi::Event;
use hyper_dmabuf_common::wire::{request_id, request_op, Message, Slot, VERSION_1, VERSION_2};
use hyper_dmabuf_common::xen::{DomId, Status};
use hyper_dmabuf_common::Error;

use crate::input::{decode_all, Reader, Writer};
use crate::wire::{
    max_preset, response, sample_epoch, sample_hid, sample_request, status_from_byte,
};

/// Ids the operations pick from, so that the peer's messages name buffers
/// that exist.
const HIDS: u8 = 6;

fn hid(sel: u8) -> HyperDmabufId {
    sample_hid(u32::from(sel % HIDS))
}

/// Channel and ring settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Page order of our ring, modulo 3.
    pub our_order: u8,
    /// Page order of the peer's ring, modulo 3.
    pub their_order: u8,
    /// Selects the largest buffer accepted ([`max_preset`]).
    pub max: u8,
    /// Bit 0: the peer may export read-write. Bits 1..=3: imports kept.
    /// Bit 7: the session speaks version 2 (inline references).
    pub flags: u8,
}

/// One step of a channel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOp {
    /// Local: export buffer `hid` to the peer.
    Announce {
        /// Selects the id.
        hid: u8,
        /// Selects size, flags and private data.
        tag: u32,
    },
    /// Local: revoke the export of `hid`.
    Revoke {
        /// Selects the id.
        hid: u8,
    },
    /// Local: this domain mapped the import `hid`.
    ImportMapped {
        /// Selects the id.
        hid: u8,
    },
    /// Local: this domain unmapped the import `hid`.
    ImportUnmapped {
        /// Selects the id.
        hid: u8,
    },
    /// Local: handle what the peer sent (the event-channel handler).
    Process,
    /// Local: the connection closed.
    Disconnect,
    /// Peer: sends a well-formed request about `hid`.
    PeerRequest {
        /// Selects the id.
        hid: u8,
        /// Selects the message.
        tag: u32,
    },
    /// Peer: answers our oldest request; `mangle` not zero alters the
    /// echoed id.
    PeerAnswer {
        /// Selects the status.
        status: u8,
        /// XORed into the echoed request id.
        mangle: u32,
    },
    /// Peer: publishes its requests and responses.
    PeerPublish,
    /// Peer: writes any word of either ring.
    PeerWrite {
        /// Bit 15 selects the ring, the rest the word.
        word: u16,
        /// The value written.
        value: u32,
    },
}

impl Setup {
    /// Reads a setup.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        Setup {
            our_order: r.u8(),
            their_order: r.u8(),
            max: r.u8(),
            flags: r.u8(),
        }
    }

    /// Writes a setup.
    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.our_order)
            .u8(self.their_order)
            .u8(self.max)
            .u8(self.flags);
    }
}

impl ChannelOp {
    /// Reads one operation.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        match r.u8() % 10 {
            0 => ChannelOp::Announce {
                hid: r.u8(),
                tag: r.u32(),
            },
            1 => ChannelOp::Revoke { hid: r.u8() },
            2 => ChannelOp::ImportMapped { hid: r.u8() },
            3 => ChannelOp::ImportUnmapped { hid: r.u8() },
            4 => ChannelOp::Process,
            5 => ChannelOp::Disconnect,
            6 => ChannelOp::PeerRequest {
                hid: r.u8(),
                tag: r.u32(),
            },
            7 => ChannelOp::PeerAnswer {
                status: r.u8(),
                mangle: r.u32(),
            },
            8 => ChannelOp::PeerPublish,
            _ => ChannelOp::PeerWrite {
                word: r.u16(),
                value: r.u32(),
            },
        }
    }

    /// Writes one operation.
    pub fn encode(&self, w: &mut Writer) {
        match *self {
            ChannelOp::Announce { hid, tag } => w.u8(0).u8(hid).u32(tag),
            ChannelOp::Revoke { hid } => w.u8(1).u8(hid),
            ChannelOp::ImportMapped { hid } => w.u8(2).u8(hid),
            ChannelOp::ImportUnmapped { hid } => w.u8(3).u8(hid),
            ChannelOp::Process => w.u8(4),
            ChannelOp::Disconnect => w.u8(5),
            ChannelOp::PeerRequest { hid, tag } => w.u8(6).u8(hid).u32(tag),
            ChannelOp::PeerAnswer { status, mangle } => w.u8(7).u8(status).u32(mangle),
            ChannelOp::PeerPublish => w.u8(8),
            ChannelOp::PeerWrite { word, value } => w.u8(9).u16(word).u32(value),
        };
    }
}

/// Encodes a whole run.
pub fn encode(setup: &Setup, ops: &[ChannelOp]) -> Vec<u8> {
    let mut w = Writer::new();
    setup.encode(&mut w);
    for op in ops {
        op.encode(&mut w);
    }
    w.finish()
}

/// What a failed local call must leave unchanged: exports and imports by
/// id number, with their states.
type Snapshot = (Vec<(u64, ExportState)>, Vec<(u64, bool, bool)>);

/// The host model: what a driver keeps about one connection.
#[derive(Default, Clone, PartialEq, Eq, Debug)]
struct Model {
    exports: HashMap<HyperDmabufId, ExportState>,
    imports: HashMap<HyperDmabufId, ImportState>,
    max_imports: usize,
    events: usize,
    issued: HashSet<u64>,
    completed: HashSet<u64>,
    protocol_errors: usize,
}

impl Host for Model {
    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportState> {
        self.exports.get_mut(hid)
    }

    fn end_export(&mut self, hid: &HyperDmabufId) {
        assert!(
            self.exports.remove(hid).is_some(),
            "channel ended an export that does not exist"
        );
        self.events += 1;
    }

    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportState> {
        self.imports.get_mut(hid)
    }

    fn add_import(&mut self, import: ImportState) -> Result<(), Status> {
        assert!(
            !self.imports.contains_key(&import.export.hid),
            "channel added an import twice"
        );
        if self.imports.len() >= self.max_imports {
            return Err(Status::NoSpace);
        }
        self.imports.insert(import.export.hid, import);
        Ok(())
    }

    fn remove_import(&mut self, hid: &HyperDmabufId) {
        let import = self
            .imports
            .remove(hid)
            .expect("channel removed an import that does not exist");
        assert!(!import.mapped(), "channel forgot an import that is mapped");
    }

    fn post_event(&mut self, _event: Event) {
        self.events += 1;
    }

    fn complete(&mut self, token: u64, _status: Status) {
        assert!(
            self.issued.contains(&token),
            "completed a token never issued"
        );
        assert!(self.completed.insert(token), "token completed twice");
    }

    fn protocol_error(&mut self, _error: Error) {
        self.protocol_errors += 1;
    }
}

impl Model {
    /// The state a failed local call must leave unchanged (events and
    /// counters excluded).
    fn snapshot(&self) -> Snapshot {
        let mut exports: Vec<_> = self.exports.iter().map(|(h, s)| (h.number(), *s)).collect();
        exports.sort_by_key(|e| e.0);
        let mut imports: Vec<_> = self
            .imports
            .iter()
            .map(|(h, s)| (h.number(), s.mapped(), s.revoked()))
            .collect();
        imports.sort_by_key(|e| e.0);
        (exports, imports)
    }
}

fn ring(order: u8) -> Vec<AtomicU32> {
    let words = (XEN_PAGE_SIZE << (order % 3)) / 4;
    let mem: Vec<AtomicU32> = (0..words).map(|_| AtomicU32::new(0)).collect();
    init_shared(&mem[..]).expect("whole pages");
    mem
}

fn fatal_allowed(err: Error) {
    match err {
        Error::RingOverflow { .. }
        | Error::UnexpectedResponse(_)
        | Error::UnknownOp(_)
        | Error::ReservedNotZero { .. }
        | Error::BadStatus(_)
        | Error::BadEpoch => {}
        other => panic!("process failed with {other:?}, which no peer can cause"),
    }
}

/// The `channel` target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let setup = Setup::decode(&mut r);
    let ops = decode_all(&mut r, ChannelOp::decode);

    let ours = ring(setup.our_order);
    let theirs = ring(setup.their_order);
    let (ours, theirs) = (&ours[..], &theirs[..]);
    let config = ChannelConfig {
        // Both versions: 2 reads EXPORT's inline references.
        version: if setup.flags & 0x80 != 0 {
            VERSION_2
        } else {
            VERSION_1
        },
        max_buffer_bytes: max_preset(setup.max),
        allow_rw: setup.flags & 1 != 0,
    };
    let peer_id = DomId::new(1).expect("not reserved");
    let mut channel = Channel::new(peer_id, config, ours, theirs).expect("ring fits");
    let mut peer_req = Requester::new(theirs).expect("ring fits");
    let mut peer_rsp = Responder::new(ours).expect("ring fits");
    let ring_size = peer_rsp.size() as usize;
    let mut host = Model {
        max_imports: usize::from(setup.flags >> 1) % 8,
        ..Model::default()
    };
    let mut next_token = 0u64;
    let mut next_peer_req = 0u32;
    let mut slot: Slot = [0u8; 256];
    // No raw write and no forged response so far: the peer speaks the
    // protocol, so nothing may be fatal.
    let mut honest = true;

    for op in ops {
        honest &= !matches!(
            op,
            ChannelOp::PeerWrite { .. } | ChannelOp::PeerAnswer { mangle: 1.., .. }
        );
        let before = host.snapshot();
        let local = match op {
            ChannelOp::Announce { hid: sel, tag } => {
                let id = hid(sel);
                if host.exports.contains_key(&id) {
                    continue;
                }
                let Message::Export(mut export) = sample_request(tag - tag % 5, 0).message else {
                    unreachable!("tag % 5 == 0 selects an export")
                };
                export.hid = id;
                host.exports.insert(id, ExportState::new(export.size));
                let token = next_token;
                next_token += 1;
                host.issued.insert(token);
                let result = channel.announce(export, Some(token));
                if result.is_err() {
                    // The driver drops an export it could not announce.
                    host.exports.remove(&id);
                    host.issued.remove(&token);
                }
                Some(result.map(drop))
            }
            ChannelOp::Revoke { hid: sel } => {
                let token = next_token;
                next_token += 1;
                host.issued.insert(token);
                let result = channel.revoke(&mut host, &hid(sel), Some(token));
                if !matches!(result, Ok(true) | Ok(false)) || !sent_unexport(&host, &before, sel) {
                    // Nothing sent: the token is not waited for.
                    host.issued.remove(&token);
                }
                Some(result.map(drop))
            }
            ChannelOp::ImportMapped { hid: sel } => {
                Some(channel.import_mapped(&mut host, &hid(sel)).map(drop))
            }
            ChannelOp::ImportUnmapped { hid: sel } => {
                Some(channel.import_unmapped(&mut host, &hid(sel)).map(drop))
            }
            ChannelOp::Process => {
                match channel.process(&mut host) {
                    Ok(_) => {}
                    Err(e) => {
                        assert!(!honest, "an honest peer made process fail: {e:?}");
                        fatal_allowed(e);
                        // The driver closes the connection.
                        channel.disconnect(&mut host);
                        check_all_completed(&host);
                        return;
                    }
                }
                None
            }
            ChannelOp::Disconnect => {
                channel.disconnect(&mut host);
                check_all_completed(&host);
                return;
            }
            ChannelOp::PeerRequest { hid: sel, tag } => {
                let mut request = sample_request(tag, next_peer_req);
                set_hid(&mut request.message, hid(sel));
                if peer_req.push(&request.encode()).is_ok() {
                    next_peer_req = next_peer_req.wrapping_add(1);
                }
                None
            }
            ChannelOp::PeerAnswer { status, mangle } => {
                if let Ok(true) = peer_rsp.pop(&mut slot) {
                    let answer = response(
                        request_id(&slot) ^ mangle,
                        request_op(&slot),
                        status_from_byte(status),
                        sample_epoch(mangle),
                    );
                    let _ = peer_rsp.push(&answer.encode());
                }
                None
            }
            ChannelOp::PeerPublish => {
                peer_req.publish();
                peer_rsp.publish();
                let _ = peer_req.pop(&mut slot);
                None
            }
            ChannelOp::PeerWrite { word, value } => {
                let mem = if word & 0x8000 != 0 { ours } else { theirs };
                mem[usize::from(word & 0x7fff) % mem.len()].store(value, Ordering::Relaxed);
                None
            }
        };
        if let Some(Err(e)) = local {
            assert!(
                matches!(e, Error::RingFull | Error::BadId),
                "local call failed with {e:?}"
            );
            assert_eq!(
                host.snapshot(),
                before,
                "{op:?} failed with {e:?} but changed the host's state"
            );
        }
        assert!(
            channel.outstanding() <= ring_size,
            "more outstanding than slots"
        );
    }
    channel.disconnect(&mut host);
    check_all_completed(&host);
}

/// Whether a revoke call changed the export's phase (so it sent UNEXPORT).
fn sent_unexport(host: &Model, before: &Snapshot, sel: u8) -> bool {
    let number = hid(sel).number();
    let was = before.0.iter().find(|e| e.0 == number).map(|e| e.1);
    let now = host.exports.get(&hid(sel)).copied();
    matches!((was, now), (Some(a), Some(b)) if a != b)
}

fn set_hid(message: &mut Message, id: HyperDmabufId) {
    match message {
        Message::Export(export) => export.hid = id,
        Message::Update { hid, .. }
        | Message::Unexport(hid)
        | Message::Release { hid, .. }
        | Message::Mapped { hid, .. }
        | Message::Signal { hid, .. } => *hid = id,
    }
}

fn check_all_completed(host: &Model) {
    let missing = host.issued.difference(&host.completed).count();
    assert_eq!(missing, 0, "{missing} waiting requests never completed");
}
