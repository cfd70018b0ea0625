// SPDX-License-Identifier: GPL-2.0

//! `/dev/xen/hyper_dmabuf`: the ioctls and the event queue of each open
//! file. Every record is copied in whole, decoded by `common::uapi` (which
//! rejects unknown flags and non-zero reserved fields), and answered with
//! the errno `docs/uapi.md` lists.

use core::cell::{Cell, RefCell};

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

use super::common::id::HyperDmabufId;
use super::common::ledger::FileRights;
use super::common::uapi::{
    self, ExportArgs, ImportArgs, ListArgs, ListEntry, QueryArgs, QueryItem, UnexportArgs,
    UpdateArgs, IMPORT_RW,
};
use super::common::wire::ExportFlags;
use super::common::xen::DomId;
use super::common::Error as ProtoError;
use crate::conn::UNDER_LOCK;
use crate::files::{Addressed, FileCtx};
use crate::registry::Driver;
use crate::{export, import};

/// Unexports what `file` exported (it is being closed).
pub(crate) fn close(driver: &Driver, file: &FileCtx) {
    if let Ok(conns) = driver.all_conns() {
        for conn in conns.iter() {
            conn.unexport_owned_by(driver, file.id);
        }
    }
}

/// Tells a reader that just opened the device what it missed: a
/// `PeerConnected` for each connected peer and a `NewExport` for each
/// buffer it may import. Registered before this runs, the reader may see
/// an announcement made meanwhile twice, but never miss one.
pub(crate) fn replay(driver: &Driver, file: &FileCtx) {
    let mut events: KVec<Addressed> = KVec::new();
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
///
/// # Errors
///
/// The ioctl's errno as docs/uapi.md lists it: `ENOTTY` for an unknown
/// command, `EFAULT` for an argument that cannot be copied, `EINVAL` for a
/// malformed record, and each operation's own errors.
pub(crate) fn ioctl(driver: &Driver, file: &FileCtx, cmd: u32, arg: usize) -> Result<isize> {
    match cmd {
        uapi::IOCTL_EXPORT => {
            let record = read_record::<{ ExportArgs::SIZE }>(arg)?;
            let mut args = ExportArgs::decode_in(&record).map_err(bad_record)?;
            let rights = FileRights {
                file: file.id,
                admin: file.admin,
            };
            let hid = export::export(driver, rights, &args)?;
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
                |fd, size, writable| write_record(arg, &args.returned(fd, size, writable).encode()),
            )?;
        }
        uapi::IOCTL_UNEXPORT => {
            let record = read_record::<{ UnexportArgs::SIZE }>(arg)?;
            let args = UnexportArgs::decode(&record).map_err(bad_record)?;
            let conns = driver.all_conns()?;
            let (conn, owner) = conns
                .iter()
                .find_map(|c| Some((c, c.with_export(&args.hid, |e| e.owner)?)))
                .ok_or(ENOENT)?;
            if !file.manages(owner) {
                return Err(EPERM);
            }
            conn.unexport(driver, &args.hid, args.delay_ms)?;
        }
        uapi::IOCTL_UPDATE => {
            let record = read_record::<{ UpdateArgs::SIZE }>(arg)?;
            let args = UpdateArgs::decode(&record).map_err(bad_record)?;
            let conns = driver.all_conns()?;
            let conn = conns
                .iter()
                .find(|c| c.with_export(&args.hid, |_| ()).is_some())
                .ok_or(ENOENT)?;
            let rights = FileRights {
                file: file.id,
                admin: file.admin,
            };
            conn.update(driver, &args.hid, rights, None, args.priv_data)?;
        }
        uapi::IOCTL_QUERY => {
            let record = read_record::<{ QueryArgs::SIZE }>(arg)?;
            let mut args = QueryArgs::decode(&record).map_err(bad_record)?;
            args.value = query(driver, file, &args)?;
            write_record(arg, &args.encode())?;
        }
        uapi::IOCTL_LIST => {
            let record = read_record::<{ ListArgs::SIZE }>(arg)?;
            let mut args = ListArgs::decode(&record);
            args.count = list(driver, file, &args)?;
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

/// What `file` may know of buffer `hid`: exports only if it manages them.
fn facts(driver: &Driver, file: &FileCtx, hid: &HyperDmabufId) -> Result<Facts> {
    let own = driver.own_domid();
    for conn in driver.all_conns()?.iter() {
        let managed = conn.with_export(hid, |e| file.manages(e.owner));
        if let Some(f) = conn.with_export(hid, |e| Facts {
            imported: false,
            exporter: own,
            importer: conn.peer,
            size: e.info.size,
            busy: e.state.peer_maps(),
            unexported: e.state.unexported(),
            delayed: e.unexport_at().is_some(),
            flags: e.info.flags,
            priv_data: e.info.priv_data,
        }) {
            if managed == Some(true) {
                return Ok(f);
            }
            // Another file's export: as if it did not exist.
            continue;
        }
        if let Some(f) = conn.with_import(hid, |e| Facts {
            imported: true,
            exporter: conn.peer,
            importer: own,
            size: e.state.export.size,
            busy: e.held(),
            unexported: e.ended(),
            delayed: false,
            flags: e.state.export.flags,
            priv_data: e.state.export.priv_data,
        }) {
            return Ok(f);
        }
    }
    Err(ENOENT)
}

fn query(driver: &Driver, file: &FileCtx, args: &QueryArgs) -> Result<u64> {
    let f = facts(driver, file, &args.hid)?;
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

/// Lists into `entries` within its capacity: `None` if it was too small.
fn list_into(
    driver: &Driver,
    file: &FileCtx,
    entries: KVVec<ListEntry>,
) -> Result<Option<KVVec<ListEntry>>> {
    let entries = RefCell::new(entries);
    let full = Cell::new(false);
    let push = |e: ListEntry| {
        let mut v = entries.borrow_mut();
        if v.len() < v.capacity() {
            // Within the capacity: no allocation.
            let _ = v.push(e, UNDER_LOCK);
        } else {
            full.set(true);
        }
    };
    for conn in driver.all_conns()?.iter() {
        let peer = conn.peer;
        conn.for_each(
            |e| {
                if !file.manages(e.owner) {
                    return;
                }
                let mut state = 0;
                if e.state.peer_maps() {
                    state |= uapi::STATE_BUSY;
                }
                if e.state.unexported() {
                    state |= uapi::STATE_UNEXPORTED;
                }
                if e.unexport_at().is_some() {
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
                if e.held() {
                    state |= uapi::STATE_BUSY;
                }
                if e.ended() {
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
    if full.get() {
        return Ok(None);
    }
    Ok(Some(entries.into_inner()))
}

/// Writes up to `capacity` entries; returns how many buffers `file` may
/// see exist (its exports, or all for an administrator's, and imports).
fn list(driver: &Driver, file: &FileCtx, args: &ListArgs) -> Result<u32> {
    // Room is made before each connection's lock is taken, never under it
    // (`conn::UNDER_LOCK`): a listing that outgrows it starts again with
    // twice the room.
    let mut room = 256usize;
    let entries = loop {
        let listed = list_into(driver, file, KVVec::with_capacity(room, GFP_KERNEL)?)?;
        match listed {
            Some(entries) => break entries,
            None => room = room.checked_mul(2).ok_or(ENOMEM)?,
        }
    };
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
