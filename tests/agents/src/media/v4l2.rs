// SPDX-License-Identifier: MIT
//! The little of V4L2 the media agents use, on one single-planar video
//! node: find vivid's, set a format, request buffers, queue the device's
//! own or a dma-buf, dequeue, export one (`VIDIOC_EXPBUF`), stream.
//!
//! Written here with rustix's ioctl patterns rather than taken from a
//! crate: `v4l` cannot queue dma-bufs and `v4l2r` runs bindgen at build
//! time behind a 0.0.x API (docs/kernel-notes.md, section 11.5). The
//! command numbers come from `linux-raw-sys`, and each record below is
//! checked at compile time against the size its number encodes, so a
//! layout mistake does not build.
//!
//! Every record carries numbers only (types, indexes, lengths, file
//! descriptors; never `V4L2_MEMORY_USERPTR` or a multi-planar `planes`
//! pointer), and is exactly as long as its command says the kernel
//! touches: that is what each `unsafe` block relies on.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use hdmabuf::Failure;
use linux_raw_sys::ioctl as op;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::ioctl::{ioctl, Opcode, Setter, Updater};

/// The size a command number encodes (`_IOC_SIZE`).
const fn encoded_size(opcode: u32) -> usize {
    ((opcode >> 16) & 0x3fff) as usize
}

macro_rules! record_of {
    ($opcode:expr, $record:ty) => {
        const _: () = assert!(encoded_size($opcode) == size_of::<$record>());
    };
}

/// `V4L2_PIX_FMT_XBGR32` ("XR24"): bytes B, G, R, X in memory, the same
/// layout and fourcc as DRM's `XRGB8888`.
pub(crate) const XR24: u32 = u32::from_le_bytes(*b"XR24");

const CAP_VIDEO_CAPTURE: u32 = 0x1;
const CAP_VIDEO_OUTPUT: u32 = 0x2;
const CAP_STREAMING: u32 = 0x0400_0000;
const FIELD_NONE: u32 = 1;
const BUF_FLAG_ERROR: u32 = 0x40;

/// Which way frames go through a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Direction {
    /// The device writes frames (a camera).
    Capture,
    /// The device reads frames (a display).
    Output,
}

impl Direction {
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE` or `_OUTPUT`.
    fn buf_type(self) -> u32 {
        match self {
            Direction::Capture => 1,
            Direction::Output => 2,
        }
    }

    fn capability(self) -> u32 {
        match self {
            Direction::Capture => CAP_VIDEO_CAPTURE,
            Direction::Output => CAP_VIDEO_OUTPUT,
        }
    }
}

/// Where the memory of a node's buffers comes from (`V4L2_MEMORY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Memory {
    /// The device allocates it (and may export it).
    Mmap = 1,
    /// Each queued buffer is a dma-buf of someone else's.
    DmaBuf = 4,
}

/// `struct v4l2_capability`.
#[repr(C)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}
record_of!(op::VIDIOC_QUERYCAP, Capability);

/// `struct v4l2_pix_format`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PixFormat {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixelformat: u32,
    field: u32,
    pub(crate) bytesperline: u32,
    pub(crate) sizeimage: u32,
    colorspace: u32,
    private: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// `struct v4l2_format` with its union as `pix` (the union is 200 bytes
/// and 8-aligned: it holds a pointer in `v4l2_window`).
#[repr(C)]
struct Format {
    buf_type: u32,
    pad: u32,
    pix: PixFormat,
    rest: [u64; 19],
}
record_of!(op::VIDIOC_S_FMT, Format);

/// `struct v4l2_requestbuffers`.
#[repr(C)]
#[derive(Default)]
struct RequestBuffers {
    count: u32,
    buf_type: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}
record_of!(op::VIDIOC_REQBUFS, RequestBuffers);

/// `struct v4l2_buffer`, single-planar. `m` is the union of `offset`,
/// `userptr`, `planes` and `fd`; only `fd` (its first four bytes on this
/// little-endian target) is ever set here.
#[repr(C)]
#[derive(Default)]
struct Buffer {
    index: u32,
    buf_type: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: [i64; 2],
    timecode: [u32; 4],
    sequence: u32,
    memory: u32,
    m: u64,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}
record_of!(op::VIDIOC_QBUF, Buffer);
record_of!(op::VIDIOC_DQBUF, Buffer);

/// `struct v4l2_exportbuffer`.
#[repr(C)]
#[derive(Default)]
struct ExportBuffer {
    buf_type: u32,
    index: u32,
    plane: u32,
    flags: u32,
    fd: i32,
    reserved: [u32; 11],
}
record_of!(op::VIDIOC_EXPBUF, ExportBuffer);

record_of!(op::VIDIOC_STREAMON, u32);
record_of!(op::VIDIOC_S_INPUT, u32);
record_of!(op::VIDIOC_S_OUTPUT, u32);

/// A read-write ioctl on `record`.
///
/// # Safety
///
/// `OPCODE`'s record is `T` and carries no user address.
unsafe fn update<const OPCODE: Opcode, T>(
    fd: BorrowedFd<'_>,
    record: &mut T,
) -> rustix::io::Result<()> {
    // SAFETY: as the caller promises, the kernel reads and writes exactly
    // the `T` it is given, which holds no pointer.
    unsafe { ioctl(fd, Updater::<OPCODE, T>::new(record)) }.map(drop)
}

/// A dequeued buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dequeued {
    /// The buffer's index in the queue.
    pub(crate) index: u32,
    /// The frame's number in the stream (it skips frames the device
    /// dropped).
    pub(crate) sequence: u32,
    /// Bytes of the frame.
    pub(crate) bytesused: u32,
}

/// An open video node of vivid's, for one direction.
pub(crate) struct Video {
    file: File,
    direction: Direction,
    name: String,
}

impl AsFd for Video {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn v4l2_error(what: &str, node: &str, e: rustix::io::Errno) -> Failure {
    Failure::Error(format!("{node}: {what}: {e}"))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Video {
    /// Opens the `direction` video node of vivid's instance `instance`
    /// (`modprobe vivid n_devs=...` first), non-blocking: a dequeue waits
    /// with a bound ([`Video::dequeue`]).
    pub(crate) fn open_vivid(instance: u32, direction: Direction) -> Result<Self, Failure> {
        let bus_info = format!("platform:vivid-{instance:03}");
        let nodes = std::fs::read_dir("/dev").map_err(|e| Failure::Error(format!("/dev: {e}")))?;
        let mut names: Vec<_> = nodes
            .flatten()
            .map(|n| n.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("video"))
            .collect();
        names.sort();
        for name in names {
            let path = format!("/dev/{name}");
            let Ok(file) = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            else {
                continue;
            };
            let mut cap = Capability {
                driver: [0; 16],
                card: [0; 32],
                bus_info: [0; 32],
                version: 0,
                capabilities: 0,
                device_caps: 0,
                reserved: [0; 3],
            };
            // SAFETY: QUERYCAP's record is a `v4l2_capability`, numbers
            // and strings only.
            if unsafe { update::<{ op::VIDIOC_QUERYCAP as Opcode }, _>(file.as_fd(), &mut cap) }
                .is_err()
            {
                continue;
            }
            let wanted = direction.capability() | CAP_STREAMING;
            if c_string(&cap.driver) == "vivid"
                && c_string(&cap.bus_info) == bus_info
                && cap.device_caps & wanted == wanted
            {
                return Ok(Video {
                    file,
                    direction,
                    name: path,
                });
            }
        }
        Err(Failure::Error(format!(
            "no {direction:?} node of vivid's instance {instance} in /dev \
             (modprobe vivid n_devs={} node_types=0x101,...)",
            instance + 1
        )))
    }

    /// Selects input (capture) or output `index` (`VIDIOC_S_INPUT`,
    /// `VIDIOC_S_OUTPUT`).
    pub(crate) fn select(&self, index: u32) -> Result<(), Failure> {
        let mut value = index;
        let fd = self.file.as_fd();
        // SAFETY: S_INPUT and S_OUTPUT take an `int`.
        let done = unsafe {
            match self.direction {
                Direction::Capture => update::<{ op::VIDIOC_S_INPUT as Opcode }, _>(fd, &mut value),
                Direction::Output => update::<{ op::VIDIOC_S_OUTPUT as Opcode }, _>(fd, &mut value),
            }
        };
        done.map_err(|e| {
            v4l2_error(
                &format!("selecting {:?} {index}", self.direction),
                &self.name,
                e,
            )
        })
    }

    /// Asks for a progressive `width`×`height` format of `fourcc`; returns
    /// what the driver chose (it may adjust the size).
    pub(crate) fn set_format(
        &self,
        width: u32,
        height: u32,
        fourcc: u32,
    ) -> Result<PixFormat, Failure> {
        let mut format = Format {
            buf_type: self.direction.buf_type(),
            pad: 0,
            pix: PixFormat {
                width,
                height,
                pixelformat: fourcc,
                field: FIELD_NONE,
                ..PixFormat::default()
            },
            rest: [0; 19],
        };
        // SAFETY: S_FMT's record is a `v4l2_format`; its `pix` member
        // holds numbers only.
        unsafe { update::<{ op::VIDIOC_S_FMT as Opcode }, _>(self.file.as_fd(), &mut format) }
            .map_err(|e| v4l2_error(&format!("format {width}x{height}"), &self.name, e))?;
        if format.pix.pixelformat != fourcc {
            return Err(Failure::Error(format!(
                "{}: the driver does not take the format {:?}",
                self.name,
                fourcc.to_le_bytes().map(char::from)
            )));
        }
        Ok(format.pix)
    }

    /// Asks for `count` buffers of `memory` (0 frees them); returns how
    /// many the driver gave.
    pub(crate) fn request(&self, count: u32, memory: Memory) -> Result<u32, Failure> {
        let mut request = RequestBuffers {
            count,
            buf_type: self.direction.buf_type(),
            memory: memory as u32,
            ..RequestBuffers::default()
        };
        // SAFETY: REQBUFS's record is a `v4l2_requestbuffers`, numbers only.
        unsafe { update::<{ op::VIDIOC_REQBUFS as Opcode }, _>(self.file.as_fd(), &mut request) }
            .map_err(|e| v4l2_error(&format!("requesting {count} buffers"), &self.name, e))?;
        Ok(request.count)
    }

    /// Queues the device's own buffer `index` (`V4L2_MEMORY_MMAP`).
    pub(crate) fn queue(&self, index: u32) -> Result<(), Failure> {
        self.queue_buffer(Buffer {
            index,
            memory: Memory::Mmap as u32,
            ..Buffer::default()
        })
    }

    /// Queues `dmabuf` (of `length` bytes) as buffer `index`
    /// (`V4L2_MEMORY_DMABUF`); for an output, `bytesused` bytes of it are
    /// the frame.
    pub(crate) fn queue_dmabuf(
        &self,
        index: u32,
        dmabuf: BorrowedFd<'_>,
        length: u32,
        bytesused: u32,
    ) -> Result<(), Failure> {
        let fd = u32::try_from(dmabuf.as_raw_fd()).expect("an open descriptor is not negative");
        self.queue_buffer(Buffer {
            index,
            memory: Memory::DmaBuf as u32,
            m: u64::from(fd),
            length,
            bytesused,
            field: FIELD_NONE,
            ..Buffer::default()
        })
    }

    fn queue_buffer(&self, mut buffer: Buffer) -> Result<(), Failure> {
        buffer.buf_type = self.direction.buf_type();
        let index = buffer.index;
        // SAFETY: QBUF's record is a `v4l2_buffer`; of MMAP or DMABUF
        // memory and single-planar, it holds no user address.
        unsafe { update::<{ op::VIDIOC_QBUF as Opcode }, _>(self.file.as_fd(), &mut buffer) }
            .map_err(|e| v4l2_error(&format!("queueing buffer {index}"), &self.name, e))
    }

    /// Waits at most `limit` for a buffer the device is done with and
    /// dequeues it. A buffer the device marks as failed is an error.
    pub(crate) fn dequeue(&self, memory: Memory, limit: Duration) -> Result<Dequeued, Failure> {
        let events = match self.direction {
            Direction::Capture => PollFlags::IN,
            Direction::Output => PollFlags::OUT,
        };
        let timeout = Timespec::try_from(limit).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&self.file, events)];
        let ready = poll(&mut fds, Some(&timeout))
            .map_err(|e| v4l2_error("waiting for a frame", &self.name, e))?;
        if ready == 0 {
            return Err(Failure::Timeout(format!(
                "{}: no frame within {} s",
                self.name,
                limit.as_secs()
            )));
        }
        let mut buffer = Buffer {
            buf_type: self.direction.buf_type(),
            memory: memory as u32,
            ..Buffer::default()
        };
        // SAFETY: DQBUF's record is a `v4l2_buffer`, single-planar: the
        // kernel writes numbers into it.
        unsafe { update::<{ op::VIDIOC_DQBUF as Opcode }, _>(self.file.as_fd(), &mut buffer) }
            .map_err(|e| v4l2_error("dequeueing", &self.name, e))?;
        if buffer.flags & BUF_FLAG_ERROR != 0 {
            return Err(Failure::Error(format!(
                "{}: the device failed buffer {} (frame {})",
                self.name, buffer.index, buffer.sequence
            )));
        }
        Ok(Dequeued {
            index: buffer.index,
            sequence: buffer.sequence,
            bytesused: buffer.bytesused,
        })
    }

    /// Exports the device's buffer `index` as a dma-buf open for reading
    /// and writing (`VIDIOC_EXPBUF`).
    pub(crate) fn export(&self, index: u32) -> Result<OwnedFd, Failure> {
        let mut export = ExportBuffer {
            buf_type: self.direction.buf_type(),
            index,
            flags: (libc::O_RDWR | libc::O_CLOEXEC) as u32,
            ..ExportBuffer::default()
        };
        // SAFETY: EXPBUF's record is a `v4l2_exportbuffer`, numbers only.
        unsafe { update::<{ op::VIDIOC_EXPBUF as Opcode }, _>(self.file.as_fd(), &mut export) }
            .map_err(|e| v4l2_error(&format!("exporting buffer {index}"), &self.name, e))?;
        // SAFETY: EXPBUF returned a new descriptor, which is ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(export.fd) })
    }

    /// Starts (`on`) or stops streaming; stopping returns every queued
    /// buffer to user space without a frame.
    pub(crate) fn stream(&self, on: bool) -> Result<(), Failure> {
        let kind = self.direction.buf_type();
        let fd = self.file.as_fd();
        // SAFETY: STREAMON and STREAMOFF read an `int`, the buffer type.
        let done = unsafe {
            if on {
                ioctl(
                    fd,
                    Setter::<{ op::VIDIOC_STREAMON as Opcode }, u32>::new(kind),
                )
            } else {
                ioctl(
                    fd,
                    Setter::<{ op::VIDIOC_STREAMOFF as Opcode }, u32>::new(kind),
                )
            }
        };
        done.map_err(|e| {
            v4l2_error(
                if on { "streaming on" } else { "streaming off" },
                &self.name,
                e,
            )
        })
    }
}
