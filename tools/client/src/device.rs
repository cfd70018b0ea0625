// SPDX-License-Identifier: MIT
//! `/dev/xen/hyper_dmabuf`, through the records of `common::uapi`.

use crate::sys;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{
    self, Event, ExportArgs, ImportArgs, ListArgs, ListEntry, QueryArgs, QueryItem, UnexportArgs,
};
use hyper_dmabuf_common::wire::{ExportFlags, PrivData};
use hyper_dmabuf_common::xen::DomId;
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// A failed operation on the device, with what the user can do about it.
#[derive(Debug)]
pub struct DeviceError {
    /// What was being done.
    pub action: String,
    /// The system error.
    pub source: io::Error,
    /// Advice for the errno in this context.
    pub hint: Option<&'static str>,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.action, self.source)?;
        if let Some(hint) = self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DeviceError {}

fn fail(
    action: impl Into<String>,
    source: io::Error,
    hint: impl Fn(i32) -> Option<&'static str>,
) -> DeviceError {
    let hint = source.raw_os_error().and_then(&hint);
    DeviceError {
        action: action.into(),
        source,
        hint,
    }
}

/// The open device.
pub struct Device {
    fd: OwnedFd,
}

impl Device {
    /// Opens the device node at `path`.
    pub fn open(path: &str) -> Result<Self, DeviceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                fail(format!("opening {path}"), e, |errno| {
                    match errno {
                libc::ENOENT => Some(
                    "the hyper_dmabuf driver is not loaded in this domain: modprobe hyper_dmabuf",
                ),
                libc::EACCES | libc::EPERM => Some("the device is root-only: run as root"),
                _ => None,
            }
                })
            })?;
        Ok(Device { fd: file.into() })
    }

    /// Exports a local dma-buf to `domain`.
    pub fn export(
        &self,
        dmabuf: BorrowedFd<'_>,
        domain: DomId,
        writable: bool,
        priv_data: PrivData,
    ) -> Result<HyperDmabufId, DeviceError> {
        let args = ExportArgs {
            dmabuf_fd: dmabuf.as_raw_fd(),
            remote: domain,
            flags: if writable {
                ExportFlags::WRITABLE
            } else {
                ExportFlags::default()
            },
            priv_data,
            hid: None,
        };
        let mut record = args.encode();
        let action = format!("exporting to domain {domain}");
        sys::ioctl_record(self.fd.as_fd(), uapi::IOCTL_EXPORT, &mut record).map_err(|e| {
            fail(action.clone(), e, |errno| match errno {
                libc::ENOTCONN => Some(
                    "no connected hyper_dmabuf device links this domain to that one: attach one \
                     (hdmabuf xl attach DOMID in dom0) and load the driver in both domains",
                ),
                libc::EPERM => Some("read-write sharing is not enabled on this device (feature-rw=0 / rw=0)"),
                libc::E2BIG => Some("the buffer is larger than the device's max-buffer-size"),
                libc::ETIMEDOUT => Some("the peer domain did not answer; is its driver running?"),
                libc::EINVAL => Some(
                    "the fd must be a dma-buf of this domain's own RAM pages (not an import), whole pages from offset 0",
                ),
                libc::EAGAIN => Some("the ring to that domain is full: retry"),
                _ => None,
            })
        })?;
        ExportArgs::decode_out(&record).map_err(|e| {
            fail(
                action,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("driver returned a bad id: {e}"),
                ),
                |_| None,
            )
        })
    }

    /// Imports a buffer as a new dma-buf fd; returns it and its size.
    pub fn import(
        &self,
        hid: &HyperDmabufId,
        writable: bool,
    ) -> Result<(OwnedFd, u64), DeviceError> {
        let mut record = ImportArgs {
            hid: *hid,
            flags: if writable { uapi::IMPORT_RW } else { 0 },
            fd: -1,
            size: 0,
        }
        .encode();
        let action = format!("importing {hid}");
        sys::ioctl_record(self.fd.as_fd(), uapi::IOCTL_IMPORT, &mut record).map_err(|e| {
            fail(action.clone(), e, |errno| match errno {
                libc::ENOENT => Some(
                    "no buffer with this id was exported to this domain (unexported, or the exporter is gone); \
                     `hdmabuf list` shows what is available",
                ),
                libc::EPERM => Some("the exporter shared this buffer read-only: import without --rw"),
                libc::EIO => Some("mapping the exporter's grants failed; see the kernel log"),
                _ => None,
            })
        })?;
        let out = ImportArgs::decode(&record).map_err(|e| {
            fail(
                action.clone(),
                io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                |_| None,
            )
        })?;
        let fd = sys::adopt_fd(out.fd).map_err(|e| fail(action, e, |_| None))?;
        Ok((fd, out.size))
    }

    /// Revokes an export, after `delay_ms`.
    pub fn unexport(&self, hid: &HyperDmabufId, delay_ms: u32) -> Result<(), DeviceError> {
        let mut record = UnexportArgs {
            hid: *hid,
            delay_ms,
        }
        .encode();
        sys::ioctl_record(self.fd.as_fd(), uapi::IOCTL_UNEXPORT, &mut record)
            .map(drop)
            .map_err(|e| {
                fail(format!("unexporting {hid}"), e, |errno| match errno {
                    libc::ENOENT => Some("this domain exports no buffer with this id"),
                    _ => None,
                })
            })
    }

    /// Asks one [`QueryItem`] (not [`QueryItem::Priv`]).
    pub fn query(&self, hid: &HyperDmabufId, item: QueryItem) -> Result<u64, DeviceError> {
        let mut record = QueryArgs {
            hid: *hid,
            item,
            value: 0,
            data_ptr: 0,
            data_len: 0,
        }
        .encode();
        sys::ioctl_record(self.fd.as_fd(), uapi::IOCTL_QUERY, &mut record).map_err(|e| {
            fail(format!("querying {hid}"), e, |errno| match errno {
                libc::ENOENT => Some("no buffer with this id is exported by or to this domain"),
                _ => None,
            })
        })?;
        let out = QueryArgs::decode(&record).map_err(|e| {
            fail(
                "querying",
                io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                |_| None,
            )
        })?;
        Ok(out.value)
    }

    /// The private data of a buffer.
    pub fn query_priv(&self, hid: &HyperDmabufId) -> Result<Vec<u8>, DeviceError> {
        let mut data = vec![0u8; hyper_dmabuf_common::limits::MAX_PRIV_LEN];
        let mut record = QueryArgs {
            hid: *hid,
            item: QueryItem::Priv,
            value: 0,
            data_ptr: data.as_mut_ptr() as u64,
            data_len: data.len() as u32,
        }
        .encode();
        // The kernel writes at most data_len bytes to data_ptr, a live
        // buffer of that length.
        sys::ioctl_record(self.fd.as_fd(), uapi::IOCTL_QUERY, &mut record)
            .map_err(|e| fail(format!("querying private data of {hid}"), e, |_| None))?;
        let out = QueryArgs::decode(&record).map_err(|e| {
            fail(
                "querying",
                io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                |_| None,
            )
        })?;
        data.truncate(usize::try_from(out.value).unwrap_or(0).min(data.len()));
        Ok(data)
    }

    /// Every buffer this domain exports or imports.
    pub fn list(&self) -> Result<Vec<ListEntry>, DeviceError> {
        let mut capacity = 64u32;
        loop {
            let mut entries = vec![0u8; capacity as usize * ListEntry::SIZE];
            let mut record = ListArgs {
                entries_ptr: entries.as_mut_ptr() as u64,
                capacity,
                count: 0,
            }
            .encode();
            sys::ioctl_record(self.fd.as_fd(), uapi::IOCTL_LIST, &mut record)
                .map_err(|e| fail("listing buffers", e, |_| None))?;
            let count = ListArgs::decode(&record).count;
            if count > capacity {
                capacity = count.saturating_add(16);
                continue;
            }
            return entries
                .chunks_exact(ListEntry::SIZE)
                .take(count as usize)
                .map(|chunk| {
                    let mut raw = [0u8; ListEntry::SIZE];
                    raw.copy_from_slice(chunk);
                    ListEntry::decode(&raw).map_err(|e| {
                        fail(
                            "listing buffers",
                            io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                            |_| None,
                        )
                    })
                })
                .collect();
        }
    }

    /// The next event, waiting at most `timeout_ms` (negative: forever).
    pub fn next_event(&self, timeout_ms: i32) -> Result<Option<Event>, DeviceError> {
        if !sys::poll_readable(self.fd.as_fd(), timeout_ms)
            .map_err(|e| fail("waiting for events", e, |_| None))?
        {
            return Ok(None);
        }
        let mut record = [0u8; Event::SIZE];
        let n = sys::read(self.fd.as_fd(), &mut record)
            .map_err(|e| fail("reading an event", e, |_| None))?;
        if n != Event::SIZE {
            return Err(fail(
                "reading an event",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("short event record of {n} bytes"),
                ),
                |_| None,
            ));
        }
        Event::decode(&record).map(Some).map_err(|e| {
            fail(
                "reading an event",
                io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                |_| None,
            )
        })
    }
}

/// `DMA_BUF_IOCTL_SYNC` around CPU access to a dma-buf mapping.
pub fn dmabuf_sync(dmabuf: BorrowedFd<'_>, start: bool, write: bool) -> io::Result<()> {
    const DMA_BUF_IOCTL_SYNC: u32 = 0x4008_6200;
    const SYNC_READ: u64 = 1;
    const SYNC_WRITE: u64 = 2;
    const SYNC_END: u64 = 4;
    let flags = SYNC_READ | if write { SYNC_WRITE } else { 0 } | if start { 0 } else { SYNC_END };
    let mut record = flags.to_le_bytes();
    sys::ioctl_record(dmabuf, DMA_BUF_IOCTL_SYNC, &mut record).map(drop)
}
