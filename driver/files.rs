// SPDX-License-Identifier: GPL-2.0

//! The open files of the control device: each one's queue of events, and
//! the table through which every event reaches the files that may read
//! it.

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::rbtree::RBTree;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserPtr, UserSlice};

use super::common::uapi::{self, Event, LostEvents, EVENT_QUEUE_LEN};
use crate::ffi::device::FileWaker;
use crate::stats;

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

/// An event and who may read it: every open file, or only those that may
/// manage the export `owner` exported (`uapi::may_manage_export`).
#[derive(Clone, Copy)]
pub(crate) struct Addressed {
    /// The event.
    pub(crate) event: Event,
    /// The file that exported the buffer, for an exporter-side event.
    pub(crate) owner: Option<u64>,
}

/// One open file of the control device.
#[pin_data]
pub(crate) struct FileCtx {
    /// Registry key, and the owner of the buffers it exports.
    pub(crate) id: u64,
    /// Whether its opener had `CAP_SYS_ADMIN` (it then manages every
    /// export of this domain, `uapi::may_manage_export`).
    pub(crate) admin: bool,
    waker: FileWaker,
    #[pin]
    queue: Mutex<EventQueue>,
    /// Held by a `read` from its look at the oldest record until it is
    /// taken, so that two readers of one file never both deliver it.
    /// Apart from `queue`'s lock: the copy to user space may fault, and
    /// the fault path may post events (`queue` is taken under the mmap
    /// lock), so `queue` is never held across the copy; this lock is
    /// taken by nothing but `read`, never under the mmap lock.
    #[pin]
    reader: Mutex<()>,
}

impl FileCtx {
    /// A new open file.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the file or its event queue cannot be allocated.
    pub(crate) fn new(id: u64, admin: bool, waker: FileWaker) -> Result<Arc<Self>> {
        let queue = EventQueue::new()?;
        Arc::pin_init(
            pin_init!(FileCtx {
                id,
                admin,
                waker,
                queue <- new_mutex!(queue, "FileCtx::queue"),
                reader <- new_mutex!((), "FileCtx::reader"),
            }),
            GFP_KERNEL,
        )
    }

    /// Whether this file may see and manage an export of `owner`.
    pub(crate) fn manages(&self, owner: u64) -> bool {
        uapi::may_manage_export(owner, self.id, self.admin)
    }

    /// Queues the events this file may read (`peers`: how many peers are
    /// connected) and wakes readers.
    pub(crate) fn push(&self, events: &[Addressed], peers: usize) {
        let mut any = false;
        {
            let mut queue = self.queue.lock();
            for a in events {
                if a.owner.map_or(true, |owner| self.manages(owner)) {
                    queue.push(&a.event, peers);
                    any = true;
                }
            }
        }
        if any {
            self.waker.wake();
        }
    }

    /// Whether an event is waiting.
    pub(crate) fn readable(&self) -> bool {
        self.queue.lock().len > 0
    }

    /// Copies one whole event to `buf` and returns its size.
    ///
    /// # Errors
    ///
    /// `EINVAL` if `len` is smaller than one event, `EAGAIN` if none is
    /// queued, `EFAULT` if `buf` cannot be written (the event stays queued).
    pub(crate) fn read(&self, buf: UserPtr, len: usize) -> Result<isize> {
        if len < Event::SIZE {
            return Err(EINVAL);
        }
        // One reader at a time: only a read takes records, so the oldest
        // record this one copies is still the oldest when it takes it.
        let _one_reader = self.reader.lock();
        // Take the record only once it is delivered: a bad address must
        // not lose it.
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
        self.queue.lock().pop();
        Ok(Event::SIZE as isize)
    }
}

/// Every open file.
#[pin_data]
pub(crate) struct Files {
    #[pin]
    table: Mutex<RBTree<u64, Arc<FileCtx>>>,
}

impl Files {
    /// No open file yet.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Files {
            table <- new_mutex!(RBTree::new(), "Files::table"),
        })
    }

    /// Registers an open file.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the table's node cannot be allocated.
    pub(crate) fn add(&self, file: Arc<FileCtx>) -> Result {
        self.table
            .lock()
            .try_create_and_insert(file.id, file, GFP_KERNEL)?;
        Ok(())
    }

    /// Forgets an open file.
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<FileCtx>> {
        self.table.lock().remove(&id)
    }

    /// Queues `events` for the open files that may read them and wakes
    /// their readers; `peers` connections share each queue.
    pub(crate) fn post(&self, events: &[Addressed], peers: usize) {
        if events.is_empty() {
            return;
        }
        for file in self.table.lock().values() {
            file.push(events, peers);
        }
    }
}
