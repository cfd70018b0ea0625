// SPDX-License-Identifier: MIT
//! The xenstore schema of the `hyper_dmabuf` device, and the functions that
//! publish and read it.
//!
//! # Example configuration
//!
//! Frontend domain 5, backend domain 0, device id 0:
//!
//! ```text
//! /local/domain/5/device/hyper_dmabuf/0/backend = "/local/domain/0/backend/hyper_dmabuf/5/0"
//! /local/domain/5/device/hyper_dmabuf/0/backend-id = "0"
//! /local/domain/5/device/hyper_dmabuf/0/state = "4"
//! /local/domain/5/device/hyper_dmabuf/0/version = "2"
//! /local/domain/5/device/hyper_dmabuf/0/ring-page-order = "1"
//! /local/domain/5/device/hyper_dmabuf/0/ring-ref0 = "2832"
//! /local/domain/5/device/hyper_dmabuf/0/ring-ref1 = "2833"
//! /local/domain/5/device/hyper_dmabuf/0/back-ring-ref0 = "2834"
//! /local/domain/5/device/hyper_dmabuf/0/back-ring-ref1 = "2835"
//! /local/domain/5/device/hyper_dmabuf/0/event-channel = "15"
//!
//! /local/domain/0/backend/hyper_dmabuf/5/0/frontend = "/local/domain/5/device/hyper_dmabuf/0"
//! /local/domain/0/backend/hyper_dmabuf/5/0/frontend-id = "5"
//! /local/domain/0/backend/hyper_dmabuf/5/0/online = "1"
//! /local/domain/0/backend/hyper_dmabuf/5/0/state = "4"
//! /local/domain/0/backend/hyper_dmabuf/5/0/versions = "1,2,3"
//! /local/domain/0/backend/hyper_dmabuf/5/0/max-ring-page-order = "2"
//! /local/domain/0/backend/hyper_dmabuf/5/0/max-buffer-size = "1073741824"
//! /local/domain/0/backend/hyper_dmabuf/5/0/feature-rw = "0"
//! ```
//!
//! Permissions (libxl's layout): the frontend directory is `n<front>,
//! r<back>` (owned by the frontend, readable by the backend), the backend
//! directory `n<back>, r<front>`.
//!
//! # Value syntax
//!
//! Every numeric value is canonical decimal: ASCII digits only, no sign,
//! no whitespace, no leading zero except `"0"`; see [`super::parse`].
//! A value that breaks these rules is a protocol error, never "0".
//!
//! # Toolstack nodes, frontend directory
//!
//! * `backend` — Values: `<string>` (absolute path). The backend
//!   directory. Read by the xenbus core, not by this crate.
//! * `backend-id` — Values: `<uint16_t>` below `DOMID_FIRST_RESERVED`.
//!   The backend domain.
//! * `state` — Values: `<uint32_t>` 1..=8 ([`XenbusState`]). Written `1`
//!   by the toolstack, then owned by the frontend driver.
//!
//! # Toolstack nodes, backend directory
//!
//! * `frontend`, `frontend-id` — as `backend`, `backend-id` above, for the
//!   frontend.
//! * `online` — Values: `"0"` | `"1"`. `1` while the device exists; the
//!   toolstack writes `0` (then `state` = 5) to remove it. A backend whose
//!   frontend closes goes back to InitWait only while `online` is `1`.
//!   Absent means `0`.
//! * `state` — as in the frontend directory, owned by the backend driver.
//! * `max-ring-page-order` — Values: `<uint32_t>` 0..=[`MAX_RING_PAGE_ORDER`].
//!   Optional. The largest ring the administrator allows; the backend
//!   driver uses its own default when absent and rewrites the effective
//!   value.
//! * `max-buffer-size` — Values: `<uint64_t>` bytes, at least 1. Optional.
//!   The largest buffer that may be shared over this device; the backend
//!   driver caps it at its own ceiling and rewrites the effective value.
//! * `feature-rw` — Values: `"0"` | `"1"`. Optional, default `0`. Whether
//!   read-write exports are allowed on this device.
//!
//! # Backend nodes (published before InitWait)
//!
//! * `versions` — Values: `<list of uint32_t>`, comma-separated, strictly
//!   increasing, at most [`parse::MAX_VERSIONS`] items and [`parse::MAX_VERSIONS_LEN`]
//!   bytes. The protocol versions the backend speaks: this crate speaks
//!   [`SUPPORTED_VERSIONS`], 1 to 3 ([`PROTOCOL_VERSION`]).
//! * `max-ring-page-order` — Values: `<uint32_t>` 0..=[`MAX_RING_PAGE_ORDER`].
//!   The largest `ring-page-order` the frontend may choose. Required.
//! * `max-buffer-size` — Values: `<uint64_t>` bytes, at least 1. Neither
//!   end shares or accepts a buffer larger than this. Required.
//! * `feature-rw` — Values: `"0"` | `"1"`. `1` if the backend accepts and
//!   makes read-write exports; with `0` every grant is read-only.
//!   Required.
//!
//! # Frontend nodes (published in one transaction before Initialised)
//!
//! * `version` — Values: `<uint32_t>`. The version chosen from the
//!   backend's `versions`.
//! * `ring-page-order` — Values: `<uint32_t>` 0..=`max-ring-page-order`.
//!   Each of the two rings is `2^ring-page-order` pages.
//! * `ring-ref%u` — Values: `<uint32_t>` grant reference, at least 8 (0..7
//!   are Xen's reserved entries). For `%u` in `0..2^ring-page-order`,
//!   exactly: the pages of the frontend-requester ring (the frontend sends
//!   requests, the backend answers), in ring order. No other `ring-ref%u`
//!   node may exist below index 16.
//! * `back-ring-ref%u` — Values: as `ring-ref%u`. The pages of the
//!   backend-requester ring (the backend sends requests, the frontend
//!   answers). Both rings are granted by the frontend. All grant
//!   references of both rings are distinct.
//! * `event-channel` — Values: `<uint32_t>` port, not 0. One unbound port
//!   of the frontend for both rings.

use core::fmt::Write;

use super::error::{Error, ValueError};
use super::parse::{self, Decimal, FixedBuf, ValueBuf, Versions, MAX_VERSIONS_LEN};
use super::state::XenbusState;
use super::store::{with_transaction, NodePath, Perm, PermKind, Store, Txn, TRANSACTION_TRIES};

/// The XenBus device type: `/local/domain/<F>/device/hyper_dmabuf/...`.
pub const DEVICE_TYPE: &str = "hyper_dmabuf";
/// The protocol version this crate implements.
pub const PROTOCOL_VERSION: u32 = 3;
/// The versions this crate speaks, in increasing order: 2 adds inline
/// grant references to EXPORT, 3 fences that cross domains
/// (docs/protocol.md, section 1).
pub const SUPPORTED_VERSIONS: &[u32] = &[1, 2, PROTOCOL_VERSION];
/// Largest `ring-page-order` of the protocol (16 pages per ring).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Largest number of pages per ring (`1 << MAX_RING_PAGE_ORDER`).
pub const MAX_RING_PAGES: usize = 1 << MAX_RING_PAGE_ORDER;

/// Node `state`.
pub const NODE_STATE: &str = "state";
/// Node `backend` (frontend directory).
pub const NODE_BACKEND: &str = "backend";
/// Node `backend-id` (frontend directory).
pub const NODE_BACKEND_ID: &str = "backend-id";
/// Node `frontend` (backend directory).
pub const NODE_FRONTEND: &str = "frontend";
/// Node `frontend-id` (backend directory).
pub const NODE_FRONTEND_ID: &str = "frontend-id";
/// Node `online` (backend directory).
pub const NODE_ONLINE: &str = "online";
/// Node `versions` (backend directory).
pub const NODE_VERSIONS: &str = "versions";
/// Node `max-ring-page-order` (backend directory).
pub const NODE_MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
/// Node `max-buffer-size` (backend directory).
pub const NODE_MAX_BUFFER_SIZE: &str = "max-buffer-size";
/// Node `feature-rw` (backend directory).
pub const NODE_FEATURE_RW: &str = "feature-rw";
/// Node `version` (frontend directory).
pub const NODE_VERSION: &str = "version";
/// Node `ring-page-order` (frontend directory).
pub const NODE_RING_PAGE_ORDER: &str = "ring-page-order";
/// Prefix of nodes `ring-ref%u` (frontend directory).
pub const NODE_RING_REF: &str = "ring-ref";
/// Prefix of nodes `back-ring-ref%u` (frontend directory).
pub const NODE_BACK_RING_REF: &str = "back-ring-ref";
/// Node `event-channel` (frontend directory).
pub const NODE_EVENT_CHANNEL: &str = "event-channel";

/// Room for any value this crate reads: one byte more than the longest
/// valid value, so that an over-long value is seen as too long.
const READ_BUF_LEN: usize = MAX_VERSIONS_LEN + 1;

/// Reads `<dir>/<node>` (or `<dir>/<node><index>`) into `buf`; `Ok(None)`
/// if absent. A value too long for `buf` is a [`ValueError::TooLong`] of
/// that node.
fn read_raw<'b, S: Store + ?Sized>(
    store: &mut S,
    txn: Txn,
    dir: &str,
    node: &'static str,
    index: Option<u32>,
    buf: &'b mut [u8; READ_BUF_LEN],
) -> Result<Option<&'b [u8]>, Error> {
    let path = match index {
        Some(i) => NodePath::indexed(dir, node, i)?,
        None => NodePath::new(dir, node)?,
    };
    match store.read(txn, path.as_str(), buf) {
        Ok(None) => Ok(None),
        Ok(Some(len)) => match buf.get(..len) {
            Some(v) => Ok(Some(v)),
            // A store reporting more bytes than the buffer holds is broken;
            // treat it as an over-long value rather than panic.
            None => Err(Error::value(
                node,
                index,
                ValueError::TooLong {
                    max: MAX_VERSIONS_LEN,
                },
            )),
        },
        Err(Error::ValueTooLong) => Err(Error::value(
            node,
            index,
            ValueError::TooLong {
                max: MAX_VERSIONS_LEN,
            },
        )),
        Err(e) => Err(e),
    }
}

/// Reads and parses an optional node.
fn read_opt<S, T, P>(
    store: &mut S,
    txn: Txn,
    dir: &str,
    node: &'static str,
    index: Option<u32>,
    parse: P,
) -> Result<Option<T>, Error>
where
    S: Store + ?Sized,
    P: FnOnce(&[u8]) -> Result<T, ValueError>,
{
    let mut buf = [0u8; READ_BUF_LEN];
    match read_raw(store, txn, dir, node, index, &mut buf)? {
        None => Ok(None),
        Some(v) => parse(v).map(Some).map_err(|e| Error::value(node, index, e)),
    }
}

/// Reads and parses a required node.
fn read_req<S, T, P>(
    store: &mut S,
    txn: Txn,
    dir: &str,
    node: &'static str,
    index: Option<u32>,
    parse: P,
) -> Result<T, Error>
where
    S: Store + ?Sized,
    P: FnOnce(&[u8]) -> Result<T, ValueError>,
{
    read_opt(store, txn, dir, node, index, parse)?.ok_or(Error::Missing { node, index })
}

fn write_node<S: Store + ?Sized>(
    store: &mut S,
    txn: Txn,
    dir: &str,
    node: &str,
    value: &[u8],
) -> Result<(), Error> {
    store.write(txn, NodePath::new(dir, node)?.as_str(), value)
}

/// Whether node `path` exists, whatever its value.
fn node_exists<S: Store + ?Sized>(store: &mut S, txn: Txn, path: &str) -> Result<bool, Error> {
    match store.read(txn, path, &mut [0; 0]) {
        Ok(found) => Ok(found.is_some()),
        // The node exists: only its value does not fit.
        Err(Error::ValueTooLong) => Ok(true),
        Err(e) => Err(e),
    }
}

fn write_u64<S: Store + ?Sized>(
    store: &mut S,
    txn: Txn,
    dir: &str,
    node: &str,
    value: u64,
) -> Result<(), Error> {
    write_node(store, txn, dir, node, Decimal::u64(value).as_bytes())
}

/// Reads the `state` node of `dir`.
///
/// An absent node is [`XenbusState::Unknown`] (the peer is gone or not yet
/// created); this is how Linux's xenbus reads a peer's state too.
///
/// # Errors
///
/// [`Error::Value`] for a malformed value (including `"0"`), which the
/// driver treats as a protocol error of the peer; store errors.
pub fn read_state<S: Store + ?Sized>(store: &mut S, dir: &str) -> Result<XenbusState, Error> {
    Ok(
        read_opt(store, Txn::NONE, dir, NODE_STATE, None, parse::parse_state)?
            .unwrap_or(XenbusState::Unknown),
    )
}

/// Writes the `state` node of `dir`.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for [`XenbusState::Unknown`], which is never
/// written; store errors.
pub fn write_state<S: Store + ?Sized>(
    store: &mut S,
    dir: &str,
    state: XenbusState,
) -> Result<(), Error> {
    if state == XenbusState::Unknown {
        return Err(Error::InvalidArgument);
    }
    write_u64(store, Txn::NONE, dir, NODE_STATE, state.as_u32().into())
}

/// Reads the `online` node of a backend directory; absent means `false`.
///
/// # Errors
///
/// [`Error::Value`] for anything but `"0"` or `"1"`; store errors.
pub fn read_online<S: Store + ?Sized>(store: &mut S, backend_dir: &str) -> Result<bool, Error> {
    Ok(read_opt(
        store,
        Txn::NONE,
        backend_dir,
        NODE_ONLINE,
        None,
        parse::parse_bool,
    )?
    .unwrap_or(false))
}

/// The device parameters the backend publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// `max-ring-page-order`, at most [`MAX_RING_PAGE_ORDER`].
    pub max_ring_page_order: u32,
    /// `max-buffer-size` in bytes, at least 1.
    pub max_buffer_size: u64,
    /// `feature-rw`.
    pub feature_rw: bool,
}

impl BackendConfig {
    /// Checks the ranges of the schema.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if a field is out of range.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_ring_page_order > MAX_RING_PAGE_ORDER || self.max_buffer_size == 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(())
    }
}

/// The backend driver's defaults and ceilings for the toolstack's optional
/// configuration nodes (given by the driver, for example from module
/// parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendLimits {
    /// `max-ring-page-order` when the toolstack wrote none.
    pub default_ring_page_order: u32,
    /// Largest `max-ring-page-order` the driver accepts from the toolstack
    /// (at most [`MAX_RING_PAGE_ORDER`]).
    pub max_ring_page_order: u32,
    /// `max-buffer-size` when the toolstack wrote none.
    pub default_max_buffer_size: u64,
    /// Ceiling applied to the toolstack's `max-buffer-size`.
    pub max_buffer_size_ceiling: u64,
}

impl BackendLimits {
    fn validate(&self) -> Result<(), Error> {
        if self.max_ring_page_order > MAX_RING_PAGE_ORDER
            || self.default_ring_page_order > self.max_ring_page_order
            || self.default_max_buffer_size == 0
            || self.max_buffer_size_ceiling == 0
        {
            return Err(Error::InvalidArgument);
        }
        Ok(())
    }
}

/// Reads the toolstack's optional configuration from a backend directory
/// and applies the driver's defaults and ceilings (backend, at probe).
///
/// A present `max-ring-page-order` above `limits.max_ring_page_order` is
/// refused (the administrator asked for something this driver does not
/// allow); a `max-buffer-size` above the ceiling is lowered to it; the
/// default buffer size is lowered to the ceiling too.
///
/// # Errors
///
/// [`Error::Value`] for a malformed node, [`Error::InvalidArgument`] for
/// inconsistent `limits`, store errors.
pub fn read_toolstack_config<S: Store + ?Sized>(
    store: &mut S,
    backend_dir: &str,
    limits: &BackendLimits,
) -> Result<BackendConfig, Error> {
    limits.validate()?;
    let order = read_opt(
        store,
        Txn::NONE,
        backend_dir,
        NODE_MAX_RING_PAGE_ORDER,
        None,
        |v| parse::parse_u32_in(v, 0, limits.max_ring_page_order),
    )?
    .unwrap_or(limits.default_ring_page_order);
    let size = read_opt(
        store,
        Txn::NONE,
        backend_dir,
        NODE_MAX_BUFFER_SIZE,
        None,
        |v| parse::parse_u64_in(v, 1, u64::MAX),
    )?
    .unwrap_or(limits.default_max_buffer_size)
    .min(limits.max_buffer_size_ceiling);
    let rw = read_opt(
        store,
        Txn::NONE,
        backend_dir,
        NODE_FEATURE_RW,
        None,
        parse::parse_bool,
    )?
    .unwrap_or(false);
    Ok(BackendConfig {
        max_ring_page_order: order,
        max_buffer_size: size,
        feature_rw: rw,
    })
}

/// Publishes the backend nodes (`versions`, `max-ring-page-order`,
/// `max-buffer-size`, `feature-rw`) in one transaction (backend, before
/// InitWait).
///
/// # Errors
///
/// [`Error::InvalidArgument`] for an out-of-range `config`, store errors,
/// [`Error::RetriesExhausted`].
pub fn publish_backend<S: Store + ?Sized>(
    store: &mut S,
    backend_dir: &str,
    config: &BackendConfig,
) -> Result<(), Error> {
    config.validate()?;
    let versions = Versions::new(SUPPORTED_VERSIONS).map_err(|_| Error::InvalidArgument)?;
    let mut text = ValueBuf::new();
    write!(text, "{versions}").map_err(|_| Error::InvalidArgument)?;
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        write_node(s, txn, backend_dir, NODE_VERSIONS, text.as_bytes())?;
        write_u64(
            s,
            txn,
            backend_dir,
            NODE_MAX_RING_PAGE_ORDER,
            config.max_ring_page_order.into(),
        )?;
        write_u64(
            s,
            txn,
            backend_dir,
            NODE_MAX_BUFFER_SIZE,
            config.max_buffer_size,
        )?;
        write_node(
            s,
            txn,
            backend_dir,
            NODE_FEATURE_RW,
            Decimal::bool(config.feature_rw).as_bytes(),
        )
    })
}

/// What the frontend finds in the backend directory at InitWait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendOffer {
    /// `versions`.
    pub versions: Versions,
    /// `max-ring-page-order`, `max-buffer-size`, `feature-rw`.
    pub config: BackendConfig,
}

/// Reads and validates the backend nodes (frontend, on backend InitWait).
/// All four are required.
///
/// # Errors
///
/// [`Error::Missing`], [`Error::Value`], store errors.
pub fn read_backend_config<S: Store + ?Sized>(
    store: &mut S,
    backend_dir: &str,
) -> Result<BackendOffer, Error> {
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        let versions = read_req(
            s,
            txn,
            backend_dir,
            NODE_VERSIONS,
            None,
            parse::parse_versions,
        )?;
        let max_ring_page_order =
            read_req(s, txn, backend_dir, NODE_MAX_RING_PAGE_ORDER, None, |v| {
                parse::parse_u32_in(v, 0, MAX_RING_PAGE_ORDER)
            })?;
        let max_buffer_size = read_req(s, txn, backend_dir, NODE_MAX_BUFFER_SIZE, None, |v| {
            parse::parse_u64_in(v, 1, u64::MAX)
        })?;
        let feature_rw = read_req(
            s,
            txn,
            backend_dir,
            NODE_FEATURE_RW,
            None,
            parse::parse_bool,
        )?;
        Ok(BackendOffer {
            versions,
            config: BackendConfig {
                max_ring_page_order,
                max_buffer_size,
                feature_rw,
            },
        })
    })
}

/// The frontend driver's own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendLimits {
    /// Largest `ring-page-order` the frontend wants (at most
    /// [`MAX_RING_PAGE_ORDER`]); it chooses `min(this, backend's max)`.
    pub max_ring_page_order: u32,
    /// Largest buffer the frontend driver handles, in bytes.
    pub max_buffer_size: u64,
}

/// The parameters both ends use for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol version (`version`).
    pub version: u32,
    /// Ring size (`ring-page-order`).
    pub ring_page_order: u32,
    /// Largest buffer either end shares or accepts, in bytes.
    pub max_buffer_size: u64,
    /// Whether read-write exports are allowed.
    pub feature_rw: bool,
}

/// Chooses the session parameters from the backend's offer and the
/// frontend's limits: the highest common version, the smaller ring order,
/// the smaller buffer size.
///
/// # Errors
///
/// [`Error::NoCommonVersion`]; [`Error::InvalidArgument`] for limits out
/// of the protocol's range.
pub fn negotiate(offer: &BackendOffer, limits: &FrontendLimits) -> Result<Negotiated, Error> {
    if limits.max_ring_page_order > MAX_RING_PAGE_ORDER || limits.max_buffer_size == 0 {
        return Err(Error::InvalidArgument);
    }
    let version = offer
        .versions
        .highest_common(SUPPORTED_VERSIONS)
        .ok_or(Error::NoCommonVersion)?;
    Ok(Negotiated {
        version,
        ring_page_order: offer
            .config
            .max_ring_page_order
            .min(limits.max_ring_page_order),
        max_buffer_size: offer.config.max_buffer_size.min(limits.max_buffer_size),
        feature_rw: offer.config.feature_rw,
    })
}

/// The ring parameters the frontend publishes.
///
/// # Invariants
///
/// `ring_page_order <= MAX_RING_PAGE_ORDER`; the first
/// `1 << ring_page_order` entries of each array are valid, distinct grant
/// references (at least 8); the rest are zero; `event_channel != 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendRings {
    version: u32,
    ring_page_order: u32,
    ring_refs: [u32; MAX_RING_PAGES],
    back_ring_refs: [u32; MAX_RING_PAGES],
    event_channel: u32,
}

fn check_grefs(a: &[u32], b: &[u32]) -> Result<(), Error> {
    let mut seen = [0u32; 2 * MAX_RING_PAGES];
    for (n, &g) in a.iter().chain(b).enumerate() {
        if g < parse::GNTTAB_NR_RESERVED_ENTRIES {
            return Err(Error::InvalidArgument);
        }
        let earlier = seen.get(..n).unwrap_or(&[]);
        if earlier.contains(&g) {
            return Err(Error::DuplicateGref(g));
        }
        // More than 2 * MAX_RING_PAGES grefs is a caller bug.
        let slot = seen.get_mut(n).ok_or(Error::InvalidArgument)?;
        *slot = g;
    }
    Ok(())
}

impl FrontendRings {
    /// Describes two rings of `1 << ring_page_order` pages each.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the order is above
    /// [`MAX_RING_PAGE_ORDER`], a slice length is not `1 << order`, a gref
    /// is reserved, the version is 0 or the port is 0;
    /// [`Error::DuplicateGref`].
    pub fn new(
        version: u32,
        ring_page_order: u32,
        ring_refs: &[u32],
        back_ring_refs: &[u32],
        event_channel: u32,
    ) -> Result<Self, Error> {
        if ring_page_order > MAX_RING_PAGE_ORDER || version == 0 || event_channel == 0 {
            return Err(Error::InvalidArgument);
        }
        let pages = 1usize << ring_page_order;
        if ring_refs.len() != pages || back_ring_refs.len() != pages {
            return Err(Error::InvalidArgument);
        }
        check_grefs(ring_refs, back_ring_refs)?;
        let mut out = Self {
            version,
            ring_page_order,
            ring_refs: [0; MAX_RING_PAGES],
            back_ring_refs: [0; MAX_RING_PAGES],
            event_channel,
        };
        // PANIC: pages <= MAX_RING_PAGES since the order was checked, and
        // both slices have exactly `pages` entries; `get_mut` keeps this
        // panic-free regardless.
        out.ring_refs
            .get_mut(..pages)
            .ok_or(Error::InvalidArgument)?
            .copy_from_slice(ring_refs);
        out.back_ring_refs
            .get_mut(..pages)
            .ok_or(Error::InvalidArgument)?
            .copy_from_slice(back_ring_refs);
        Ok(out)
    }

    /// `version`.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `ring-page-order`.
    pub fn ring_page_order(&self) -> u32 {
        self.ring_page_order
    }

    /// Pages per ring, `1 << ring_page_order`.
    pub fn ring_pages(&self) -> usize {
        1usize << self.ring_page_order.min(MAX_RING_PAGE_ORDER)
    }

    /// `ring-ref%u`: the frontend-requester ring's pages, in order.
    pub fn ring_refs(&self) -> &[u32] {
        self.ring_refs.get(..self.ring_pages()).unwrap_or(&[])
    }

    /// `back-ring-ref%u`: the backend-requester ring's pages, in order.
    pub fn back_ring_refs(&self) -> &[u32] {
        self.back_ring_refs.get(..self.ring_pages()).unwrap_or(&[])
    }

    /// `event-channel`.
    pub fn event_channel(&self) -> u32 {
        self.event_channel
    }
}

fn index_u32(i: usize) -> u32 {
    // Indices are below MAX_RING_PAGES (16).
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Publishes the frontend nodes in one transaction, started again on
/// conflict (frontend, on backend InitWait, before Initialised). Stale
/// `ring-ref%u`/`back-ring-ref%u` nodes of a larger earlier ring are
/// removed in the same transaction.
///
/// # Errors
///
/// Store errors, [`Error::RetriesExhausted`].
pub fn publish_frontend<S: Store + ?Sized>(
    store: &mut S,
    frontend_dir: &str,
    rings: &FrontendRings,
) -> Result<(), Error> {
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        write_u64(s, txn, frontend_dir, NODE_VERSION, rings.version.into())?;
        write_u64(
            s,
            txn,
            frontend_dir,
            NODE_RING_PAGE_ORDER,
            rings.ring_page_order.into(),
        )?;
        for (prefix, refs) in [
            (NODE_RING_REF, rings.ring_refs()),
            (NODE_BACK_RING_REF, rings.back_ring_refs()),
        ] {
            for (i, &g) in refs.iter().enumerate() {
                let path = NodePath::indexed(frontend_dir, prefix, index_u32(i))?;
                s.write(txn, path.as_str(), Decimal::u64(g.into()).as_bytes())?;
            }
            for i in refs.len()..MAX_RING_PAGES {
                let path = NodePath::indexed(frontend_dir, prefix, index_u32(i))?;
                s.remove(txn, path.as_str())?;
            }
        }
        write_u64(
            s,
            txn,
            frontend_dir,
            NODE_EVENT_CHANNEL,
            rings.event_channel.into(),
        )
    })
}

/// Removes every node [`publish_frontend`] writes (frontend, at teardown),
/// in one transaction.
///
/// # Errors
///
/// Store errors, [`Error::RetriesExhausted`].
pub fn clear_frontend<S: Store + ?Sized>(store: &mut S, frontend_dir: &str) -> Result<(), Error> {
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        for node in [NODE_VERSION, NODE_RING_PAGE_ORDER, NODE_EVENT_CHANNEL] {
            s.remove(txn, NodePath::new(frontend_dir, node)?.as_str())?;
        }
        for prefix in [NODE_RING_REF, NODE_BACK_RING_REF] {
            for i in 0..MAX_RING_PAGES {
                let path = NodePath::indexed(frontend_dir, prefix, index_u32(i))?;
                s.remove(txn, path.as_str())?;
            }
        }
        Ok(())
    })
}

fn read_refs<S: Store + ?Sized>(
    store: &mut S,
    txn: Txn,
    dir: &str,
    prefix: &'static str,
    pages: usize,
    out: &mut [u32; MAX_RING_PAGES],
) -> Result<(), Error> {
    for (i, slot) in out.iter_mut().enumerate() {
        let index = Some(index_u32(i));
        let value = read_opt(store, txn, dir, prefix, index, parse::parse_gref)?;
        match (i < pages, value) {
            (true, Some(g)) => *slot = g,
            (true, None) => {
                return Err(Error::Missing {
                    node: prefix,
                    index,
                })
            }
            (false, Some(_)) => {
                return Err(Error::ExtraNode {
                    node: prefix,
                    index: index_u32(i),
                })
            }
            (false, None) => *slot = 0,
        }
    }
    Ok(())
}

/// Reads and validates the frontend nodes (backend, on frontend
/// Initialised), in one transaction, against what the backend offered.
///
/// `version` must be one of [`SUPPORTED_VERSIONS`]; `ring-page-order` at
/// most `offered.max_ring_page_order`; exactly `2^order` valid grant
/// references in each of `ring-ref%u` and `back-ring-ref%u` (no gap, no
/// extra node below index 16), all distinct; `event-channel` non-zero.
///
/// # Errors
///
/// [`Error::Missing`], [`Error::Value`], [`Error::ExtraNode`],
/// [`Error::DuplicateGref`], [`Error::UnsupportedVersion`],
/// [`Error::RingOrderTooLarge`], store errors.
pub fn read_frontend_rings<S: Store + ?Sized>(
    store: &mut S,
    frontend_dir: &str,
    offered: &BackendConfig,
) -> Result<FrontendRings, Error> {
    offered.validate()?;
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        let version = read_req(s, txn, frontend_dir, NODE_VERSION, None, parse::parse_u32)?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Error::UnsupportedVersion(version));
        }
        let order = read_req(
            s,
            txn,
            frontend_dir,
            NODE_RING_PAGE_ORDER,
            None,
            parse::parse_u32,
        )?;
        if order > offered.max_ring_page_order {
            return Err(Error::RingOrderTooLarge {
                order,
                max: offered.max_ring_page_order,
            });
        }
        let pages = 1usize << order;
        let mut rings = FrontendRings {
            version,
            ring_page_order: order,
            ring_refs: [0; MAX_RING_PAGES],
            back_ring_refs: [0; MAX_RING_PAGES],
            event_channel: 0,
        };
        read_refs(
            s,
            txn,
            frontend_dir,
            NODE_RING_REF,
            pages,
            &mut rings.ring_refs,
        )?;
        read_refs(
            s,
            txn,
            frontend_dir,
            NODE_BACK_RING_REF,
            pages,
            &mut rings.back_ring_refs,
        )?;
        check_grefs(rings.ring_refs(), rings.back_ring_refs())?;
        rings.event_channel = read_req(
            s,
            txn,
            frontend_dir,
            NODE_EVENT_CHANNEL,
            None,
            parse::parse_evtchn,
        )?;
        // INVARIANT: order <= offered max <= MAX_RING_PAGE_ORDER; exactly
        // `pages` grefs per ring, each >= 8, distinct; port != 0.
        Ok(rings)
    })
}

/// What the toolstack needs to create one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Frontend domain.
    pub front: u16,
    /// Backend domain.
    pub back: u16,
    /// Device id (`<devid>` in both paths).
    pub devid: u32,
    /// Optional `max-ring-page-order` for the backend directory.
    pub max_ring_page_order: Option<u32>,
    /// Optional `max-buffer-size` for the backend directory.
    pub max_buffer_size: Option<u64>,
    /// Optional `feature-rw` for the backend directory.
    pub feature_rw: Option<bool>,
}

/// Creates both device directories with libxl's layout and permissions in
/// one transaction (toolstack).
///
/// An existing directory at either end is refused with [`Error::Exists`],
/// checked inside the transaction so that two concurrent creations of one
/// device cannot both succeed: rewriting `state` = 1 under a live device
/// would break its connection.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for reserved domain ids or out-of-range
/// options; [`Error::Exists`]; store errors (including the store's refusal
/// of `set_perms`).
pub fn create_device<S: Store + ?Sized>(store: &mut S, spec: &DeviceSpec) -> Result<(), Error> {
    if spec.front >= parse::DOMID_FIRST_RESERVED
        || spec.back >= parse::DOMID_FIRST_RESERVED
        || spec
            .max_ring_page_order
            .is_some_and(|o| o > MAX_RING_PAGE_ORDER)
        || spec.max_buffer_size == Some(0)
    {
        return Err(Error::InvalidArgument);
    }
    let fdir = NodePath::frontend_dir(spec.front, spec.devid)?;
    let bdir = NodePath::backend_dir(spec.back, spec.front, spec.devid)?;
    let (fdir, bdir) = (fdir.as_str(), bdir.as_str());
    let front_perms = [
        Perm {
            domid: spec.front,
            kind: PermKind::None,
        },
        Perm {
            domid: spec.back,
            kind: PermKind::Read,
        },
    ];
    let back_perms = [
        Perm {
            domid: spec.back,
            kind: PermKind::None,
        },
        Perm {
            domid: spec.front,
            kind: PermKind::Read,
        },
    ];
    let initialising = Decimal::u64(XenbusState::Initialising.as_u32().into());
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        for dir in [fdir, bdir] {
            if node_exists(s, txn, dir)? {
                return Err(Error::Exists);
            }
        }
        s.mkdir(txn, fdir)?;
        s.set_perms(txn, fdir, &front_perms)?;
        s.mkdir(txn, bdir)?;
        s.set_perms(txn, bdir, &back_perms)?;
        write_node(s, txn, fdir, NODE_BACKEND, bdir.as_bytes())?;
        write_u64(s, txn, fdir, NODE_BACKEND_ID, spec.back.into())?;
        write_node(s, txn, fdir, NODE_STATE, initialising.as_bytes())?;
        write_node(s, txn, bdir, NODE_FRONTEND, fdir.as_bytes())?;
        write_u64(s, txn, bdir, NODE_FRONTEND_ID, spec.front.into())?;
        write_node(s, txn, bdir, NODE_ONLINE, b"1")?;
        write_node(s, txn, bdir, NODE_STATE, initialising.as_bytes())?;
        if let Some(o) = spec.max_ring_page_order {
            write_u64(s, txn, bdir, NODE_MAX_RING_PAGE_ORDER, o.into())?;
        }
        if let Some(m) = spec.max_buffer_size {
            write_u64(s, txn, bdir, NODE_MAX_BUFFER_SIZE, m)?;
        }
        if let Some(rw) = spec.feature_rw {
            write_node(s, txn, bdir, NODE_FEATURE_RW, Decimal::bool(rw).as_bytes())?;
        }
        Ok(())
    })
}

/// First step of the toolstack's removal, as libxl does it: backend
/// `online` = 0 and `state` = 5 (Closing), in one transaction. The
/// toolstack then waits (bounded) for the backend `state` to become 6
/// (Closed) and calls [`remove_device_dirs`].
///
/// A backend directory that is gone is not written again (a write would
/// create it, and nothing would ever close it).
///
/// # Errors
///
/// [`Error::Missing`] (`state`) if the backend directory has no `state`
/// node; store errors.
pub fn begin_remove_device<S: Store + ?Sized>(
    store: &mut S,
    spec: &DeviceSpec,
) -> Result<(), Error> {
    let bdir = NodePath::backend_dir(spec.back, spec.front, spec.devid)?;
    let state = NodePath::new(bdir.as_str(), NODE_STATE)?;
    let closing = Decimal::u64(XenbusState::Closing.as_u32().into());
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        if !node_exists(s, txn, state.as_str())? {
            return Err(Error::Missing {
                node: NODE_STATE,
                index: None,
            });
        }
        write_node(s, txn, bdir.as_str(), NODE_ONLINE, b"0")?;
        write_node(s, txn, bdir.as_str(), NODE_STATE, closing.as_bytes())
    })
}

/// Last step of the toolstack's removal: removes both directories in one
/// transaction.
///
/// # Errors
///
/// Store errors.
pub fn remove_device_dirs<S: Store + ?Sized>(
    store: &mut S,
    spec: &DeviceSpec,
) -> Result<(), Error> {
    let fdir = NodePath::frontend_dir(spec.front, spec.devid)?;
    let bdir = NodePath::backend_dir(spec.back, spec.front, spec.devid)?;
    with_transaction(store, TRANSACTION_TRIES, |s, txn| {
        s.remove(txn, fdir.as_str())?;
        s.remove(txn, bdir.as_str())
    })
}

/// Formats a `versions` value (used by tests and the fuzz oracle).
pub fn format_versions(v: &Versions) -> FixedBuf<{ MAX_VERSIONS_LEN }> {
    let mut out = FixedBuf::new();
    // Eight u32s and seven commas can exceed 64 bytes only for lists no
    // parser accepts; a failed write leaves a prefix, never a panic.
    let _ = write!(out, "{v}");
    out
}
