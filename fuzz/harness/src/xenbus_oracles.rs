// SPDX-License-Identifier: MIT
//! The oracles of the `xenstore_values`, `xenstore_schema` and
//! `xenbus_machines` targets (and of property tests), over
//! `hyper-dmabuf-xenbus-proto`'s public API; kept out of that crate so
//! that the kernel module, which compiles its sources, does not carry them.
//!
//! Each function takes arbitrary bytes, drives part of the crate with
//! them, and checks an oracle. It returns `Err` with a description when the
//! oracle fails (a bug of this crate); the fuzz target asserts `is_ok()`.
//! None of them allocates, and any panic inside them is a bug too.
//!
//! * [`check_value_parsers`] — every node-value parser on the same bytes;
//!   an accepted value must be canonical (formatting the parsed value gives
//!   the input back) and in range.
//! * [`check_schema_readers`] — a xenstore whose node values come from the
//!   input, read by every schema reader; accepted results must satisfy the
//!   schema's invariants.
//! * [`check_machines`] — a sequence of events decoded from the input,
//!   delivered to a frontend and a backend machine; the action lists must
//!   keep the invariants of [`hyper_dmabuf_xenbus_proto::machine`].

use core::fmt::Write;

use hyper_dmabuf_xenbus_proto::error::Error;
use hyper_dmabuf_xenbus_proto::machine::{Action, Actions, BackendMachine, FrontendMachine};
use hyper_dmabuf_xenbus_proto::parse::{self, Decimal, FixedBuf};
use hyper_dmabuf_xenbus_proto::schema::{
    self, BackendConfig, BackendLimits, MAX_RING_PAGES, MAX_RING_PAGE_ORDER,
};
use hyper_dmabuf_xenbus_proto::state::XenbusState;
use hyper_dmabuf_xenbus_proto::store::{Store, Txn};

fn canonical(input: &[u8], value: u64, what: &'static str) -> Result<(), &'static str> {
    if Decimal::u64(value).as_bytes() == input {
        Ok(())
    } else {
        Err(what)
    }
}

/// Runs every node-value parser on `data` and checks that accepted values
/// are canonical and in range.
///
/// # Errors
///
/// A description of the broken oracle.
pub fn check_value_parsers(data: &[u8]) -> Result<(), &'static str> {
    if let Ok(v) = parse::parse_u64(data) {
        canonical(data, v, "parse_u64 accepted a non-canonical value")?;
    }
    if let Ok(v) = parse::parse_u32(data) {
        canonical(data, v.into(), "parse_u32 accepted a non-canonical value")?;
    }
    if let Ok(v) = parse::parse_bool(data) {
        canonical(data, v.into(), "parse_bool accepted a non-canonical value")?;
    }
    if let Ok(s) = parse::parse_state(data) {
        if s == XenbusState::Unknown {
            return Err("parse_state accepted Unknown");
        }
        canonical(
            data,
            s.as_u32().into(),
            "parse_state accepted a non-canonical value",
        )?;
    }
    if let Ok(g) = parse::parse_gref(data) {
        if g < parse::GNTTAB_NR_RESERVED_ENTRIES {
            return Err("parse_gref accepted a reserved entry");
        }
        canonical(data, g.into(), "parse_gref accepted a non-canonical value")?;
    }
    if let Ok(p) = parse::parse_evtchn(data) {
        if p == 0 {
            return Err("parse_evtchn accepted port 0");
        }
        canonical(
            data,
            p.into(),
            "parse_evtchn accepted a non-canonical value",
        )?;
    }
    if let Ok(d) = parse::parse_domid(data) {
        if d >= parse::DOMID_FIRST_RESERVED {
            return Err("parse_domid accepted a reserved domid");
        }
        canonical(data, d.into(), "parse_domid accepted a non-canonical value")?;
    }
    if let Ok(o) = parse::parse_u32_in(data, 0, MAX_RING_PAGE_ORDER) {
        if o > MAX_RING_PAGE_ORDER {
            return Err("parse_u32_in accepted a value out of range");
        }
    }
    if let Ok(v) = parse::parse_versions(data) {
        let items = v.as_slice();
        if items.is_empty() || items.len() > parse::MAX_VERSIONS {
            return Err("parse_versions accepted a bad item count");
        }
        if items.windows(2).any(|w| matches!(w, [a, b] if a >= b)) || items.contains(&0) {
            return Err("parse_versions accepted a non-increasing list");
        }
        if schema::format_versions(&v).as_bytes() != data {
            return Err("parse_versions accepted a non-canonical list");
        }
        if parse::Versions::new(items) != Ok(v) {
            return Err("Versions::new disagrees with parse_versions");
        }
    }
    Ok(())
}

/// The node names the fuzz store serves, indexed by the input's node byte.
const FUZZ_NODES: [&str; 10] = [
    schema::NODE_VERSION,
    schema::NODE_RING_PAGE_ORDER,
    schema::NODE_EVENT_CHANNEL,
    schema::NODE_VERSIONS,
    schema::NODE_MAX_RING_PAGE_ORDER,
    schema::NODE_MAX_BUFFER_SIZE,
    schema::NODE_FEATURE_RW,
    schema::NODE_STATE,
    schema::NODE_ONLINE,
    // Index 9 selects `ring-ref%u` / `back-ring-ref%u` below.
    "",
];

/// Most nodes one fuzz input defines.
const FUZZ_MAX_ENTRIES: usize = 48;

/// The directory the fuzz store serves.
const FUZZ_DIR: &str = "/local/domain/1/device/hyper_dmabuf/0";

/// A read-only store whose values are slices of the fuzz input.
struct SliceStore<'a> {
    /// (node name, index for ring refs or `u32::MAX`, value).
    entries: [(&'static str, u32, &'a [u8]); FUZZ_MAX_ENTRIES],
    len: usize,
    /// Fail every n-th transaction commit with `Again` (0: never).
    again_every: u8,
    commits: u32,
}

impl<'a> SliceStore<'a> {
    /// Decodes `data` as records `[node, len, value bytes...]`. For node 9
    /// the next byte selects the ring (bit 7) and index (bits 0..5).
    fn decode(data: &'a [u8]) -> Self {
        let mut s = Self {
            entries: [("", u32::MAX, &[]); FUZZ_MAX_ENTRIES],
            len: 0,
            again_every: data.first().map_or(0, |b| b % 4),
            commits: 0,
        };
        let mut rest = data.get(1..).unwrap_or(&[]);
        while let [node, more @ ..] = rest {
            let (name, index, more) = match FUZZ_NODES.get(usize::from(*node) % FUZZ_NODES.len()) {
                Some(&"") | None => match more {
                    [sel, tail @ ..] => {
                        let prefix = if sel & 0x80 != 0 {
                            schema::NODE_BACK_RING_REF
                        } else {
                            schema::NODE_RING_REF
                        };
                        (prefix, u32::from(sel & 0x3f), tail)
                    }
                    [] => break,
                },
                Some(name) => (*name, u32::MAX, more),
            };
            let [len, tail @ ..] = more else { break };
            let n = usize::from(*len).min(tail.len());
            let (value, tail) = tail.split_at(n);
            if let Some(slot) = s.entries.get_mut(s.len) {
                *slot = (name, index, value);
                s.len += 1;
            }
            rest = tail;
        }
        s
    }

    fn lookup(&self, path: &str) -> Option<&'a [u8]> {
        let node = path.strip_prefix(FUZZ_DIR)?.strip_prefix('/')?;
        let mut want = FixedBuf::<64>::new();
        // Later records override earlier ones, as later writes would.
        self.entries
            .get(..self.len)?
            .iter()
            .rev()
            .find(|(name, index, _)| {
                want.clear();
                let ok = if *index == u32::MAX {
                    want.write_str(name).is_ok()
                } else {
                    write!(want, "{name}{index}").is_ok()
                };
                ok && want.as_str() == node
            })
            .map(|e| e.2)
    }
}

impl Store for SliceStore<'_> {
    fn read(&mut self, _txn: Txn, path: &str, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        match self.lookup(path) {
            None => Ok(None),
            Some(v) => {
                let dst = buf.get_mut(..v.len()).ok_or(Error::ValueTooLong)?;
                dst.copy_from_slice(v);
                Ok(Some(v.len()))
            }
        }
    }

    fn write(&mut self, _txn: Txn, _path: &str, _value: &[u8]) -> Result<(), Error> {
        Ok(())
    }

    fn remove(&mut self, _txn: Txn, _path: &str) -> Result<(), Error> {
        Ok(())
    }

    fn transaction_start(&mut self) -> Result<Txn, Error> {
        Ok(Txn(1))
    }

    fn transaction_end(&mut self, _txn: Txn, commit: bool) -> Result<(), Error> {
        if commit {
            self.commits = self.commits.wrapping_add(1);
            if self.again_every != 0 && self.commits.is_multiple_of(u32::from(self.again_every)) {
                return Err(Error::Again);
            }
        }
        Ok(())
    }
}

/// Serves node values decoded from `data` to every schema reader and
/// checks the invariants of what they accept.
///
/// # Errors
///
/// A description of the broken oracle.
pub fn check_schema_readers(data: &[u8]) -> Result<(), &'static str> {
    let mut store = SliceStore::decode(data);
    let offered = BackendConfig {
        max_ring_page_order: MAX_RING_PAGE_ORDER,
        max_buffer_size: 1 << 30,
        feature_rw: false,
    };
    if let Ok(r) = schema::read_frontend_rings(&mut store, FUZZ_DIR, &offered) {
        let pages = r.ring_pages();
        if r.ring_page_order() > MAX_RING_PAGE_ORDER
            || pages > MAX_RING_PAGES
            || r.ring_refs().len() != pages
            || r.back_ring_refs().len() != pages
            || r.event_channel() == 0
            || !schema::SUPPORTED_VERSIONS.contains(&r.version())
        {
            return Err("read_frontend_rings accepted an inconsistent ring set");
        }
        let all = r.ring_refs().iter().chain(r.back_ring_refs());
        if all.clone().any(|&g| g < parse::GNTTAB_NR_RESERVED_ENTRIES) {
            return Err("read_frontend_rings accepted a reserved gref");
        }
        for (i, g) in all.clone().enumerate() {
            if all.clone().skip(i + 1).any(|h| h == g) {
                return Err("read_frontend_rings accepted a duplicate gref");
            }
        }
        if schema::FrontendRings::new(
            r.version(),
            r.ring_page_order(),
            r.ring_refs(),
            r.back_ring_refs(),
            r.event_channel(),
        ) != Ok(r)
        {
            return Err("FrontendRings::new refuses what read_frontend_rings accepted");
        }
    }
    if let Ok(o) = schema::read_backend_config(&mut store, FUZZ_DIR) {
        if o.config.validate().is_err() || o.versions.as_slice().is_empty() {
            return Err("read_backend_config accepted an invalid offer");
        }
    }
    let limits = BackendLimits {
        default_ring_page_order: 1,
        max_ring_page_order: 3,
        default_max_buffer_size: 1 << 20,
        max_buffer_size_ceiling: 1 << 30,
    };
    if let Ok(c) = schema::read_toolstack_config(&mut store, FUZZ_DIR, &limits) {
        if c.max_ring_page_order > limits.max_ring_page_order
            || c.max_buffer_size == 0
            || c.max_buffer_size > limits.max_buffer_size_ceiling
        {
            return Err("read_toolstack_config exceeded its limits");
        }
    }
    if schema::read_state(&mut store, FUZZ_DIR) == Ok(XenbusState::Unknown)
        && store
            .lookup("/local/domain/1/device/hyper_dmabuf/0/state")
            .is_some()
    {
        return Err("read_state turned a present value into Unknown");
    }
    let _ = schema::read_online(&mut store, FUZZ_DIR);
    Ok(())
}

/// What the fuzz model of one end holds.
#[derive(Default)]
struct Held {
    resources: bool,
}

impl Held {
    /// Applies an action list to the model and checks it against the
    /// machine's resulting `state`.
    fn apply(
        &mut self,
        acts: &Actions,
        state: XenbusState,
        holding_states: &[XenbusState],
    ) -> Result<(), &'static str> {
        if acts.overflowed() {
            return Err("action list overflowed");
        }
        for a in acts {
            match a {
                Action::SwitchState(XenbusState::Unknown) => {
                    return Err("switch to Unknown");
                }
                Action::AllocRingsAndPublish | Action::MapRingsAndBind => self.resources = true,
                Action::Teardown => self.resources = false,
                _ => {}
            }
        }
        if let Some(s) = acts.final_switch() {
            if s != state {
                return Err("last SwitchState differs from the machine's state");
            }
        }
        if self.resources && !holding_states.contains(&state) {
            return Err("resources held in a state that must hold none");
        }
        Ok(())
    }
}

/// Decodes `data` as a sequence of events for a frontend and a backend
/// machine (each byte: bits 0..3 the peer state or a special event, bit 4
/// `online`, bit 5 which machine) and checks every action list.
///
/// # Errors
///
/// A description of the broken oracle.
pub fn check_machines(data: &[u8]) -> Result<(), &'static str> {
    let mut front = FrontendMachine::new();
    let mut back = BackendMachine::new();
    let (mut fh, mut bh) = (Held::default(), Held::default());
    let front_holding = [
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
    ];
    let back_holding = [XenbusState::Connected];
    for &b in data {
        let online = b & 0x10 != 0;
        let code = u32::from(b & 0x0f);
        if b & 0x20 == 0 {
            let acts = match code {
                9 | 10 => front.start(),
                11 | 12 => front.on_local_error(),
                13 => front.on_remove(),
                _ => front
                    .on_peer_state(XenbusState::from_u32(code % 9).unwrap_or(XenbusState::Unknown)),
            };
            fh.apply(&acts, front.state(), &front_holding)?;
        } else {
            let acts = match code {
                9 | 10 => back.start(),
                11 => back.on_local_error(),
                12 => back.on_online_changed(online),
                13 => back.on_remove(),
                _ => back.on_peer_state(
                    XenbusState::from_u32(code % 9).unwrap_or(XenbusState::Unknown),
                    online,
                ),
            };
            bh.apply(&acts, back.state(), &back_holding)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn slice_store_serves_decoded_nodes() {
        // Node 1 (`ring-page-order`) = "0"; node 9 selector 0x81
        // (`back-ring-ref1`) = "12".
        let data = [0u8, 1, 1, b'0', 9, 0x81, 2, b'1', b'2'];
        let s = SliceStore::decode(&data);
        assert_eq!(
            s.lookup("/local/domain/1/device/hyper_dmabuf/0/ring-page-order"),
            Some(&b"0"[..])
        );
        assert_eq!(
            s.lookup("/local/domain/1/device/hyper_dmabuf/0/back-ring-ref1"),
            Some(&b"12"[..])
        );
        assert_eq!(
            s.lookup("/local/domain/1/device/hyper_dmabuf/0/version"),
            None
        );
    }

    #[test]
    fn valid_frontend_input_is_accepted() {
        // version 1, order 0, ring-ref0 = 8, back-ring-ref0 = 9, port 3.
        let data = [
            0u8, 0, 1, b'1', 1, 1, b'0', 9, 0x00, 1, b'8', 9, 0x80, 1, b'9', 2, 1, b'3',
        ];
        let mut s = SliceStore::decode(&data);
        let offered = BackendConfig {
            max_ring_page_order: 4,
            max_buffer_size: 1,
            feature_rw: false,
        };
        let r = schema::read_frontend_rings(&mut s, FUZZ_DIR, &offered).unwrap();
        assert_eq!((r.ring_refs(), r.back_ring_refs()), (&[8][..], &[9][..]));
        assert_eq!(check_schema_readers(&data), Ok(()));
    }

    #[test]
    fn machine_oracle_on_known_sequences() {
        // Front start, backend start, the normal connection, then chaos.
        assert_eq!(
            check_machines(&[9, 0x29, 2, 0x33, 4, 0x24, 0, 0x21, 13, 0x2d]),
            Ok(())
        );
        assert_eq!(check_machines(&[]), Ok(()));
    }

    proptest! {
        #[test]
        fn value_parsers_oracle(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            prop_assert_eq!(check_value_parsers(&data), Ok(()));
        }

        #[test]
        fn value_parsers_oracle_on_near_miss_text(s in "[0-9,+ x-]{0,40}") {
            prop_assert_eq!(check_value_parsers(s.as_bytes()), Ok(()));
        }

        #[test]
        fn schema_readers_oracle(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert_eq!(check_schema_readers(&data), Ok(()));
        }

        #[test]
        fn machines_oracle(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert_eq!(check_machines(&data), Ok(()));
        }

        #[test]
        fn value_oracle(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(check_value_parsers(&data), Ok(()));
        }
    }
}
