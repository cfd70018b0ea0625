// SPDX-License-Identifier: MIT
//! vivid, the kernel's virtual V4L2 camera and display: a frame captured
//! into one of its own buffers and exported (`VIDIOC_EXPBUF`), and a
//! dma-buf queued to it (`V4L2_MEMORY_DMABUF`), for it to show (output)
//! or to capture into (capture).
//!
//! The scenarios load it as `modprobe vivid n_devs=2
//! node_types=0x101,0x101 allocators=0,1`: instance 0 allocates with
//! vmalloc, instance 1 with dma-contig (docs/kernel-notes.md, section
//! 11.2). Frames are XR24 (B, G, R, X), from input 0, the webcam.

use std::os::fd::AsFd;
use std::time::Duration;

use hdmabuf::Failure;
use hyper_dmabuf_client::DmaBuf;

use super::v4l2::{Dequeued, Direction, Memory, PixFormat, Video, XR24};

/// What vivid's webcam offers, smallest first (`vivid-vid-cap.c`).
const WEBCAM_SIZES: [(u32, u32); 5] = [
    (320, 180),
    (640, 360),
    (640, 480),
    (1280, 720),
    (1920, 1080),
];

/// How long a frame may take. The webcam runs at 5 to 30 frames a
/// second; an emulated vCPU under load is slower, never by this much.
const FRAME_LIMIT: Duration = Duration::from_secs(60);

/// The largest webcam frame in XR24 that fits in `bytes`.
fn webcam_size_within(bytes: u64) -> Result<(u32, u32), Failure> {
    WEBCAM_SIZES
        .iter()
        .rev()
        .find(|(w, h)| u64::from(w * h * 4) <= bytes)
        .copied()
        .ok_or_else(|| {
            Failure::Error(format!(
                "{bytes} bytes: smaller than vivid's smallest frame (320x180 XR24, 230,400 bytes)"
            ))
        })
}

/// A frame vivid captured into a buffer of its own, exported.
pub(crate) struct Captured {
    /// The capture node: its queue owns the buffer the dma-buf exports.
    _camera: Video,
    /// The exported buffer.
    pub(crate) buffer: DmaBuf,
    /// Its format.
    pub(crate) format: PixFormat,
    /// The frame's number in the stream.
    pub(crate) sequence: u32,
}

/// Captures one frame, as large as fits in `max_bytes`, into a buffer of
/// vivid's `instance` and exports that buffer.
pub(crate) fn capture_and_export(instance: u32, max_bytes: u64) -> Result<Captured, Failure> {
    let camera = Video::open_vivid(instance, Direction::Capture)?;
    camera.select(0)?;
    let (width, height) = webcam_size_within(max_bytes)?;
    let format = camera.set_format(width, height, XR24)?;
    if camera.request(1, Memory::Mmap)? < 1 {
        return Err(Failure::Error("vivid gave no capture buffer".into()));
    }
    camera.queue(0)?;
    camera.stream(true)?;
    let frame = camera.dequeue(Memory::Mmap, FRAME_LIMIT)?;
    camera.stream(false)?;
    let buffer = DmaBuf::from_fd(camera.export(frame.index)?)?;
    Ok(Captured {
        _camera: camera,
        buffer,
        format,
        sequence: frame.sequence,
    })
}

/// What happened to a dma-buf queued to vivid.
pub(crate) struct Queued {
    /// The format vivid took it with.
    pub(crate) format: PixFormat,
    /// The frame it was.
    pub(crate) frame: Dequeued,
}

/// Queues `dmabuf` (`size` bytes) to vivid's `instance` as one frame
/// `direction`, streams until vivid is done with it, and stops.
///
/// A capture writes into the buffer: the caller must have it read-write
/// (vb2 never looks at the dma-buf's mode: docs/kernel-notes.md, 11.2).
pub(crate) fn queue_one(
    instance: u32,
    direction: Direction,
    dmabuf: &impl AsFd,
    size: u64,
) -> Result<Queued, Failure> {
    let video = Video::open_vivid(instance, direction)?;
    video.select(0)?;
    let (width, height) = webcam_size_within(size)?;
    // An output may insist on its standard's size; it says which.
    let format = video.set_format(width, height, XR24)?;
    if u64::from(format.sizeimage) > size {
        return Err(Failure::Error(format!(
            "vivid's {:?} frame is {}x{} ({} bytes): more than the buffer's {size}",
            direction, format.width, format.height, format.sizeimage
        )));
    }
    // vivid's output shows a buffer only once another is queued behind
    // it (for its loopback): the same dma-buf goes into two slots.
    let (slots, used) = match direction {
        Direction::Capture => (1, 0),
        Direction::Output => (2, format.sizeimage),
    };
    if video.request(slots, Memory::DmaBuf)? < slots {
        return Err(Failure::Error(format!(
            "vivid took fewer than {slots} dma-buf slots"
        )));
    }
    let length = u32::try_from(size)
        .map_err(|_| Failure::Error(format!("{size} bytes: too large for a V4L2 plane")))?;
    for index in 0..slots {
        video.queue_dmabuf(index, dmabuf.as_fd(), length, used)?;
    }
    video.stream(true)?;
    let frame = video.dequeue(Memory::DmaBuf, FRAME_LIMIT)?;
    video.stream(false)?;
    video.request(0, Memory::DmaBuf)?;
    Ok(Queued { format, frame })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_webcam_frame_that_fits_is_chosen() {
        assert_eq!(webcam_size_within(4 << 20).ok(), Some((1280, 720)));
        assert_eq!(webcam_size_within(2 << 20).ok(), Some((640, 480)));
        assert_eq!(webcam_size_within(640 * 480 * 4).ok(), Some((640, 480)));
        assert_eq!(webcam_size_within(1 << 20).ok(), Some((640, 360)));
        assert!(webcam_size_within(4096).is_err());
    }
}
