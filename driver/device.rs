// SPDX-License-Identifier: GPL-2.0

//! `/dev/xen/hyper_dmabuf`: the ioctls and the event queue of each open
//! file. Every record is copied in whole, decoded by `common::uapi` (which
//! rejects unknown flags and non-zero reserved fields), and answered with
//! the errno `docs/uapi.md` lists.

use core::cell::{Cell, RefCell};

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserPtr, UserSlice};

use super::common::id::HyperDmabufId;
use super::common::uapi::{
    self, Event, ExportArgs, ImportArgs, ListArgs, ListEntry, LostEvents, QueryArgs, QueryItem,
    UnexportArgs, EVENT_QUEUE_LEN, IMPORT_RW,
};
use super::common::wire::ExportFlags;
use super::common::xen::DomId;
use super::common::Error as ProtoError;
use crate::ffi::FileWaker;
use crate::registry::Driver;
use crate::{export, import, stats};

/// Peers whose lost events a queue reports separately.
const LOST_PEERS_TRACKED: usize = 16;

/// The events waiting for one reader: a ring of whole records, shared
/// fairly between peers (`uapi::event_admitted`). A record that is not
/// admitted is dropped and counted in the `lost` of the next record about
/// the same peer.
struct EventQueue {
    slots: KVVec<[u8; Event::SIZE]>,
    head: usize,
    len: usize,
    lost: LostEvents<LOST_PEERS_TRACKED>,
}

impl EventQueue {
    fn new() -> Result<Self> {
        Ok(EventQueue {
            slots: KVVec::from_elem([0u8; Event::SIZE], EVENT_QUEUE_LEN, GFP_KERNEL)?,
            head: 0,
            len: 0,
            lost: LostEvents::default(),
        })
    }

    /// The queued records, oldest first.
    fn queued(&self) -> impl Iterator<Item = &[u8; Event::SIZE]> {
        (0..self.len).filter_map(|i| self.slots.get((self.head + i) % EVENT_QUEUE_LEN))
    }

    fn push(&mut self, event: &Event, peers: usize) {
        let from_peer = self
            .queued()
            .filter(|r| Event::is_about(r, event.peer))
            .count();
        if !uapi::event_admitted(EVENT_QUEUE_LEN, self.len, from_peer, peers) {
            self.lost.note(event.peer);
            stats::EVENTS_LOST.inc();
            return;
        }
        let mut e = *event;
        e.lost = self.lost.take(event.peer);
        let index = (self.head + self.len) % EVENT_QUEUE_LEN;
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = e.encode();
            self.len += 1;
        }
    }

    fn pop(&mut self) -> Option<[u8; Event::SIZE]> {
        if self.len == 0 {
            return None;
        }
        let record = *self.slots.get(self.head)?;
        self.head = (self.head + 1) % EVENT_QUEUE_LEN;
        self.len -= 1;
        Some(record)
    }
}

/// One open file of the control device.
#[pin_data]
pub(crate) struct FileCtx {
    /// Registry key, and the owner of the buffers it exports.
    pub(crate) id: u64,
    waker: FileWaker,
    #[pin]
    queue: Mutex<EventQueue>,
}

impl FileCtx {
    /// A new open file.
    pub(crate) fn new(id: u64, waker: FileWaker) -> Result<Arc<Self>> {
        let queue = EventQueue::new()?;
        Arc::pin_init(
            pin_init!(FileCtx {
                id,
                waker,
                queue <- new_mutex!(queue),
            }),
            GFP_KERNEL,
        )
    }

    /// Queues events (`peers`: how many peers are connected) and wakes
    /// readers.
    pub(crate) fn push(&self, events: &[Event], peers: usize) {
        {
            let mut queue = self.queue.lock();
            for e in events {
                queue.push(e, peers);
            }
        }
        self.waker.wake();
    }

    /// Whether an event is waiting.
    pub(crate) fn readable(&self) -> bool {
        self.queue.lock().len > 0
    }

    /// Copies one whole event to `buf`: its size, `EAGAIN` if none.
    pub(crate) fn read(&self, buf: UserPtr, len: usize) -> Result<isize> {
        if len < Event::SIZE {
            return Err(EINVAL);
        }
        // Take the record only once it can be delivered: a bad address
        // must not lose it. A concurrent reader may take it first.
        let record = {
            let queue = self.queue.lock();
            if queue.len == 0 {
                return Err(EAGAIN);
            }
            *queue.slots.get(queue.head).ok_or(EAGAIN)?
        };
        UserSlice::new(buf, Event::SIZE)
            .writer()
            .write_slice(&record)?;
        let mut queue = self.queue.lock();
        if queue.slots.get(queue.head) == Some(&record) {
            queue.pop();
        }
        Ok(Event::SIZE as isize)
    }

    /// Unexports what this file exported (it is being closed).
    pub(crate) fn close(&self, driver: &Driver) {
        if let Ok(conns) = driver.all_conns() {
            for conn in conns.iter() {
                conn.unexport_owned_by(driver, self.id);
            }
        }
    }
}

/// Tells a reader that just opened the device what it missed: a
/// `PeerConnected` for each connected peer and a `NewExport` for each
/// buffer it may import. Registered before this runs, the reader may see
/// an announcement made meanwhile twice, but never miss one.
pub(crate) fn replay(driver: &Driver, file: &FileCtx) {
    let mut events = KVec::new();
    let mut peers = 0;
    if let Ok(conns) = driver.all_conns() {
        peers = conns.len();
        for conn in conns.iter() {
            conn.replay(&mut events);
        }
    }
    if !events.is_empty() {
        file.push(&events, peers);
    }
}

/// A user record that does not decode (unknown flags or items, reserved
/// fields set, out-of-range values) is `EINVAL`.
fn bad_record(_: ProtoError) -> Error {
    EINVAL
}

/// Reads the fixed-size record at `arg`.
fn read_record<const N: usize>(arg: usize) -> Result<[u8; N]> {
    let mut record = [0u8; N];
    UserSlice::new(arg, N).reader().read_slice(&mut record)?;
    Ok(record)
}

fn write_record(arg: usize, record: &[u8]) -> Result {
    UserSlice::new(arg, record.len())
        .writer()
        .write_slice(record)
}

/// Handles one ioctl of file `file`.
pub(crate) fn ioctl(driver: &Driver, file: &FileCtx, cmd: u32, arg: usize) -> Result<isize> {
    match cmd {
        uapi::IOCTL_EXPORT => {
            let record = read_record::<{ ExportArgs::SIZE }>(arg)?;
            let mut args = ExportArgs::decode_in(&record).map_err(bad_record)?;
            let hid = export::export(driver, file.id, &args)?;
            args.hid = Some(hid);
            write_record(arg, &args.encode())?;
        }
        uapi::IOCTL_IMPORT => {
            let record = read_record::<{ ImportArgs::SIZE }>(arg)?;
            let args = ImportArgs::decode_in(&record).map_err(bad_record)?;
            import::import(
                driver,
                &args.hid,
                args.flags & IMPORT_RW != 0,
                |fd, size| {
                    let out = ImportArgs { fd, size, ..args };
                    write_record(arg, &out.encode())
                },
            )?;
        }
        uapi::IOCTL_UNEXPORT => {
            let record = read_record::<{ UnexportArgs::SIZE }>(arg)?;
            let args = UnexportArgs::decode(&record).map_err(bad_record)?;
            let conns = driver.all_conns()?;
            let conn = conns
                .iter()
                .find(|c| c.with_export(&args.hid, |_| ()).is_some())
                .ok_or(ENOENT)?;
            conn.unexport(driver, &args.hid, args.delay_ms)?;
        }
        uapi::IOCTL_QUERY => {
            let record = read_record::<{ QueryArgs::SIZE }>(arg)?;
            let mut args = QueryArgs::decode(&record).map_err(bad_record)?;
            args.value = query(driver, &args)?;
            write_record(arg, &args.encode())?;
        }
        uapi::IOCTL_LIST => {
            let record = read_record::<{ ListArgs::SIZE }>(arg)?;
            let mut args = ListArgs::decode(&record);
            args.count = list(driver, &args)?;
            write_record(arg, &args.encode())?;
        }
        _ => return Err(ENOTTY),
    }
    Ok(0)
}

/// What QUERY reports about one buffer, copied out under its lock.
struct Facts {
    imported: bool,
    exporter: DomId,
    importer: DomId,
    size: u64,
    busy: bool,
    unexported: bool,
    delayed: bool,
    flags: ExportFlags,
    priv_data: super::common::wire::PrivData,
}

fn facts(driver: &Driver, hid: &HyperDmabufId) -> Result<Facts> {
    let own = crate::entry::own_domid();
    for conn in driver.all_conns()?.iter() {
        if let Some(f) = conn.with_export(hid, |e| Facts {
            imported: false,
            exporter: own,
            importer: conn.peer,
            size: e.info.size,
            busy: e.state.peer_maps(),
            unexported: e.state.unexported(),
            delayed: e.unexport_at.is_some(),
            flags: e.info.flags,
            priv_data: e.info.priv_data,
        }) {
            return Ok(f);
        }
        if let Some(f) = conn.with_import(hid, |e| Facts {
            imported: true,
            exporter: conn.peer,
            importer: own,
            size: e.state.export.size,
            busy: e.live.is_some(),
            unexported: e.state.revoked() || e.orphaned,
            delayed: false,
            flags: e.state.export.flags,
            priv_data: e.state.export.priv_data,
        }) {
            return Ok(f);
        }
    }
    Err(ENOENT)
}

fn query(driver: &Driver, args: &QueryArgs) -> Result<u64> {
    let f = facts(driver, &args.hid)?;
    Ok(match args.item {
        QueryItem::Type => u64::from(if f.imported {
            uapi::KIND_IMPORTED
        } else {
            uapi::KIND_EXPORTED
        }),
        QueryItem::Exporter => u64::from(f.exporter.get()),
        QueryItem::Importer => u64::from(f.importer.get()),
        QueryItem::Size => f.size,
        QueryItem::Busy => u64::from(f.busy),
        QueryItem::Unexported => u64::from(f.unexported),
        QueryItem::DelayedUnexported => u64::from(f.delayed),
        QueryItem::PrivSize => f.priv_data.len() as u64,
        QueryItem::Flags => u64::from(f.flags.bits()),
        QueryItem::Priv => {
            let data = f.priv_data.as_bytes();
            if (args.data_len as usize) < data.len() {
                return Err(ERANGE);
            }
            let ptr = usize::try_from(args.data_ptr).map_err(|_| EFAULT)?;
            UserSlice::new(ptr, data.len()).writer().write_slice(data)?;
            data.len() as u64
        }
    })
}

/// Writes up to `capacity` entries; returns how many buffers exist.
fn list(driver: &Driver, args: &ListArgs) -> Result<u32> {
    let entries: RefCell<KVVec<ListEntry>> = RefCell::new(KVVec::new());
    let alloc_failed = Cell::new(false);
    let push = |e: ListEntry| {
        if entries.borrow_mut().push(e, GFP_KERNEL).is_err() {
            alloc_failed.set(true);
        }
    };
    for conn in driver.all_conns()?.iter() {
        let peer = conn.peer;
        conn.for_each(
            |e| {
                let mut state = 0;
                if e.state.peer_maps() {
                    state |= uapi::STATE_BUSY;
                }
                if e.state.unexported() {
                    state |= uapi::STATE_UNEXPORTED;
                }
                if e.unexport_at.is_some() {
                    state |= uapi::STATE_DELAYED_UNEXPORT;
                }
                if e.info.flags.contains(ExportFlags::WRITABLE) {
                    state |= uapi::STATE_RW;
                }
                push(ListEntry {
                    hid: e.info.hid,
                    size: e.info.size,
                    peer,
                    kind: uapi::KIND_EXPORTED,
                    state,
                });
            },
            |e| {
                let mut state = 0;
                if e.live.is_some() {
                    state |= uapi::STATE_BUSY;
                }
                if e.state.revoked() || e.orphaned {
                    state |= uapi::STATE_UNEXPORTED;
                }
                if e.state.export.flags.contains(ExportFlags::WRITABLE) {
                    state |= uapi::STATE_RW;
                }
                push(ListEntry {
                    hid: e.state.export.hid,
                    size: e.state.export.size,
                    peer,
                    kind: uapi::KIND_IMPORTED,
                    state,
                });
            },
        );
    }
    if alloc_failed.get() {
        return Err(ENOMEM);
    }
    let entries = entries.into_inner();
    let ptr = usize::try_from(args.entries_ptr).map_err(|_| EFAULT)?;
    let shown = entries.len().min(args.capacity as usize);
    if shown > 0 {
        let mut writer = UserSlice::new(ptr, shown * ListEntry::SIZE).writer();
        for e in entries.iter().take(shown) {
            writer.write_slice(&e.encode())?;
        }
    }
    Ok(u32::try_from(entries.len()).unwrap_or(u32::MAX))
}
