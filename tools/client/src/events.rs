// SPDX-License-Identifier: MIT
//! Events: what the peers and the importers did.
//!
//! Each open [`Device`] has its own queue of [`Event`] records: a peer
//! exported a buffer to this domain (`NewExport`, with its size, flags and
//! private data), changed or revoked one (`Update`, `Unexport`), an
//! importer mapped or released one of this file's exports (`Mapped`,
//! `Released`), an unexport finished (`GrantsEnded`), a peer came or went
//! (`PeerConnected`, `PeerDisconnected`). A file opened late starts with
//! a `PeerConnected` per connected peer and a `NewExport` per buffer it
//! may import.
//!
//! Three ways to read them:
//!
//! * a thread that does nothing else iterates over [`Device::events`],
//!   which waits for each;
//! * a loop with deadlines calls [`Device::wait_event`] with a timeout;
//! * an event loop waits for the device to be readable along with its
//!   other descriptors (`poll`, `epoll`, an async runtime: [`Device`] is
//!   [`AsFd`] and [`AsRawFd`](std::os::fd::AsRawFd)), then drains the
//!   queue with [`Device::try_next_event`], which never waits.
//!
//! With `poll` (here through rustix; `libc::poll` is the same):
//!
//! ```no_run
//! use hyper_dmabuf_client::{Device, EventType};
//! use rustix::event::{poll, PollFd, PollFlags};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::open()?;
//! let stdin = std::io::stdin();
//! loop {
//!     let mut fds = [
//!         PollFd::new(&device, PollFlags::IN),
//!         PollFd::new(&stdin, PollFlags::IN),
//!     ];
//!     poll(&mut fds, None)?;
//!     if fds[1].revents().contains(PollFlags::IN) {
//!         break; // a line on stdin: stop
//!     }
//!     while let Some(event) = device.try_next_event()? {
//!         if event.kind == EventType::NewExport {
//!             println!("domain {} offers {:?}", event.peer, event.hid);
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! With tokio (not a dependency of this crate, hence not compiled here),
//! through `AsyncFd`, which wants the descriptor non-blocking:
//!
//! ```ignore
//! use hyper_dmabuf_client::Device;
//! use tokio::io::unix::AsyncFd;
//!
//! let device = Device::open()?;
//! device.set_nonblocking(true)?;
//! let device = AsyncFd::new(device)?;
//! loop {
//!     let mut ready = device.readable().await?;
//!     while let Some(event) = ready.get_inner().try_next_event()? {
//!         println!("{event:?}");
//!     }
//!     // The queue is empty: wait for the next wake-up.
//!     ready.clear_ready();
//! }
//! ```
//!
//! Events are never merged, but a queue is bounded: when a peer's events
//! overflow its share, the next event about that peer counts the lost ones
//! in [`Event::lost`]. A consumer that sees a loss re-reads the state it
//! needs with [`Device::list`].

use std::io;
use std::iter::FusedIterator;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use hyper_dmabuf_common::uapi::Event;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::device::Device;
use crate::error::{Error, Result};

/// The action of a failed read.
const READING: &str = "reading an event";

/// What one `read` of the device gave.
enum Read {
    /// A whole record.
    Record,
    /// Nothing queued (`EAGAIN`): another reader took it, or nothing came.
    Empty,
    /// End of file: the device never ends, but a pipe standing for it in
    /// tests does.
    Closed,
}

/// Waits until `fd` is readable, at most `timeout` (`None`: for as long
/// as it takes); whether it is.
///
/// # Errors
///
/// What `poll` says (an interrupted wait is resumed, for what is left of
/// the timeout).
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let left = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .and_then(|left| Timespec::try_from(left).ok());
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, left.as_ref()) {
            Ok(ready) => return Ok(ready > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Device {
    /// Reads one record into `record`, if one is queued.
    fn read_record(&self, record: &mut [u8; Event::SIZE]) -> Result<Read> {
        loop {
            return match rustix::io::read(self, &mut record[..]) {
                Ok(0) => Ok(Read::Closed),
                Ok(Event::SIZE) => Ok(Read::Record),
                Ok(n) => Err(Error::invalid_data(
                    READING,
                    format_args!("a short record of {n} bytes"),
                )),
                Err(Errno::AGAIN) => Ok(Read::Empty),
                Err(Errno::INTR) => continue,
                Err(e) => Err(Error::new(READING, e.into())),
            };
        }
    }

    /// The next event, if one is queued; never waits.
    ///
    /// # Errors
    ///
    /// What `poll` or `read` says; a record this crate cannot decode (a
    /// newer driver's event) is `InvalidData`, and is gone from the
    /// queue: the next call reads the one after it.
    pub fn try_next_event(&self) -> Result<Option<Event>> {
        self.wait_event(Some(Duration::ZERO))
    }

    /// The next event, waiting for one at most `timeout` (`None`: for as
    /// long as it takes); `None` if none came in time.
    ///
    /// # Errors
    ///
    /// As [`Device::try_next_event`].
    pub fn wait_event(&self, timeout: Option<Duration>) -> Result<Option<Event>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // Ask first: a driver whose read waited when nothing is queued
            // would then never block here.
            if !wait_readable(self.as_fd(), left)
                .map_err(|e| Error::new("waiting for events", e))?
            {
                return Ok(None);
            }
            let mut record = [0u8; Event::SIZE];
            match self.read_record(&mut record)? {
                Read::Record => {
                    return Event::decode(&record)
                        .map(Some)
                        .map_err(|e| Error::invalid_data(READING, e))
                }
                Read::Closed => return Ok(None),
                // Another reader of the same file took it: wait again.
                Read::Empty => {}
            }
        }
    }

    /// The events as they come: an iterator that waits for each.
    ///
    /// ```no_run
    /// use hyper_dmabuf_client::{Device, EventType};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let device = Device::open()?;
    /// for event in device.events() {
    ///     let event = event?;
    ///     if let (EventType::NewExport, Some(id)) = (event.kind, event.hid) {
    ///         let imported = device.import(&id, false)?;
    ///         println!("{id}: {} bytes, {:?}", imported.size, event.priv_data);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> Events<'_> {
        Events {
            device: self,
            done: false,
        }
    }
}

/// The events of a [`Device`], each waited for ([`Device::events`]).
///
/// An item is an error when a record cannot be decoded (the iteration
/// goes on with the next record) or when waiting or reading fails (the
/// iteration ends after it, since the next attempt would fail alike). It
/// never ends otherwise.
#[derive(Debug)]
pub struct Events<'d> {
    device: &'d Device,
    done: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.device.wait_event(None) {
            Ok(Some(event)) => Some(Ok(event)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Some(Err(e)),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for Events<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
    use hyper_dmabuf_common::uapi::EventType;
    use hyper_dmabuf_common::wire::{ExportFlags, PrivData};
    use hyper_dmabuf_common::xen::DomId;
    use rustix::pipe::{pipe_with, PipeFlags};
    use std::os::fd::OwnedFd;
    use std::thread;

    fn event(n: u64, kind: EventType) -> Event {
        Event {
            kind,
            peer: DomId::new(3).unwrap(),
            hid: Some(HyperDmabufId::new(n, [n as u8; KEY_LEN]).unwrap()),
            size: n * 4096,
            flags: ExportFlags::WRITABLE,
            priv_data: PrivData::new(format!("frame {n}").as_bytes()).unwrap(),
            lost: 0,
        }
    }

    /// A device whose events are whatever is written to the returned
    /// pipe end, the way the driver delivers them: one record per read,
    /// `EAGAIN` when none is queued.
    fn fed_device() -> (Device, OwnedFd) {
        let (reader, writer) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).unwrap();
        // SAFETY: a pipe answers no ioctl.
        (unsafe { Device::from_fd_unchecked(reader) }, writer)
    }

    fn send(writer: &OwnedFd, record: &[u8]) {
        assert_eq!(rustix::io::write(writer, record).unwrap(), record.len());
    }

    #[test]
    fn try_next_event_never_waits() {
        let (device, writer) = fed_device();
        assert_eq!(device.try_next_event().unwrap(), None);
        send(&writer, &event(1, EventType::NewExport).encode());
        send(&writer, &event(2, EventType::Unexport).encode());
        assert_eq!(
            device.try_next_event().unwrap(),
            Some(event(1, EventType::NewExport))
        );
        assert_eq!(
            device.try_next_event().unwrap(),
            Some(event(2, EventType::Unexport))
        );
        assert_eq!(device.try_next_event().unwrap(), None);
    }

    #[test]
    fn wait_event_times_out_then_sees_a_late_event() {
        let (device, writer) = fed_device();
        let started = Instant::now();
        assert_eq!(
            device.wait_event(Some(Duration::from_millis(30))).unwrap(),
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            send(&writer, &event(7, EventType::Mapped).encode());
            writer
        });
        assert_eq!(
            device.wait_event(Some(Duration::from_secs(10))).unwrap(),
            Some(event(7, EventType::Mapped))
        );
        drop(late.join().unwrap());
    }

    #[test]
    fn the_iterator_waits_for_each_event_and_ends_with_the_file() {
        let (device, writer) = fed_device();
        let feeder = thread::spawn(move || {
            for n in 1..=5 {
                send(&writer, &event(n, EventType::NewExport).encode());
                thread::sleep(Duration::from_millis(2));
            }
            // Closing the writer is the end of the pipe's "device".
        });
        let seen: Vec<Event> = device.events().map(Result::unwrap).collect();
        feeder.join().unwrap();
        let expected: Vec<Event> = (1..=5).map(|n| event(n, EventType::NewExport)).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_bad_record_is_an_error_and_the_next_one_is_read() {
        let (device, writer) = fed_device();
        let mut unknown = event(1, EventType::Update).encode();
        unknown[0] = 0xee; // an event type this version does not know
        send(&writer, &unknown);
        send(&writer, &event(2, EventType::Update).encode());
        drop(writer);
        let mut events = device.events();
        let first = events.next().unwrap().unwrap_err();
        assert_eq!(first.kind(), io::ErrorKind::InvalidData);
        assert_eq!(first.action(), "reading an event");
        assert_eq!(events.next().unwrap().unwrap(), event(2, EventType::Update));
        assert!(events.next().is_none());
        assert!(events.next().is_none(), "fused");
    }

    #[test]
    fn a_short_record_is_refused() {
        let (device, writer) = fed_device();
        send(&writer, &event(1, EventType::Released).encode()[..100]);
        let e = device.try_next_event().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("100 bytes"), "{e}");
    }

    #[test]
    fn a_failing_read_ends_the_iteration() {
        // A directory polls readable, and its read fails (EISDIR): not
        // worth another try.
        // SAFETY: a directory answers none of the device's commands.
        let device =
            unsafe { Device::from_fd_unchecked(OwnedFd::from(std::fs::File::open("/").unwrap())) };
        let mut events = device.events();
        let e = events.next().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::ISDIR.raw_os_error()));
        assert!(events.next().is_none());
    }
}
