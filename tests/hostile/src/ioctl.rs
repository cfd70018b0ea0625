// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile ioctl`: abuse of `/dev/xen/hyper_dmabuf` by a local
//! process (issue 8, point 4).
//!
//! First the named cases, each with the exact errno `docs/uapi.md`
//! documents: unknown commands, wrong sizes and directions, bad
//! addresses, descriptors that are closed or not dma-bufs, exports to
//! ourselves and to domains that do not exist, imports of ids that were
//! not exported to us, malformed records, reads of the event queue, and
//! an unprivileged caller. Then `--calls` seeded random ioctls: real
//! commands with random records, real numbers with a wrong size or
//! direction, and random numbers, at random addresses. Every answer must
//! be one the command may give for that input; an import must never
//! succeed; whatever an export created is unexported at the end.
//!
//! The kernel writes only into the [`Arena`] (see its docs), so random
//! records can never make it scribble over this process.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};

use hdmabuf_agent::rng::Rng;
use hyper_dmabuf_client::Udmabuf;
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::uapi::{
    self, iowr, Event, EventType, ExportArgs, ImportArgs, ListArgs, QueryArgs, QueryItem,
    UnexportArgs, DEVICE_PATH, IOCTL_MAGIC, MAX_UNEXPORT_DELAY_MS,
};
use hyper_dmabuf_common::wire::{ExportFlags, PrivData};
use hyper_dmabuf_common::xen::DomId;
use rustix::fs::{memfd_create, MemfdFlags};

use crate::ffi::{self, Arena, UserAddr};

use libc::{
    E2BIG, EACCES, EAGAIN, EBADF, EFAULT, EINVAL, ENOENT, ENOMEM, ENOSPC, ENOTCONN, ENOTTY, EPERM,
    ERANGE, ETIMEDOUT,
};

/// The five commands, their record sizes and their names.
const COMMANDS: [(u32, usize, &str); 5] = [
    (uapi::IOCTL_EXPORT, ExportArgs::SIZE, "export"),
    (uapi::IOCTL_IMPORT, ImportArgs::SIZE, "import"),
    (uapi::IOCTL_UNEXPORT, UnexportArgs::SIZE, "unexport"),
    (uapi::IOCTL_QUERY, QueryArgs::SIZE, "query"),
    (uapi::IOCTL_LIST, ListArgs::SIZE, "list"),
];

/// Largest record an ioctl number can name (14 size bits).
const MAX_IOC_SIZE: usize = (1 << 14) - 1;
/// The arena: room for the largest record anywhere in it, and for a LIST
/// of every buffer this test can create.
const ARENA: usize = 64 * 1024;
/// Where QUERY and LIST write their data (past any record).
const DATA_AT: usize = 32 * 1024;

/// `_IOC(dir, type, nr, size)`.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// Options of the run.
pub(crate) struct Options {
    /// Random calls after the named cases.
    pub(crate) calls: u64,
    /// Seed of the random calls.
    pub(crate) seed: u64,
    /// A domain connected to this one, for the cases that need one.
    pub(crate) peer: u16,
    /// The unprivileged identity to try the device as.
    pub(crate) nobody: u32,
}

/// A named case.
type Case = fn(&mut Abuse);

/// The state of a run.
struct Abuse {
    dev: File,
    arena: Arena,
    rng: Rng,
    own: u16,
    peer: u16,
    /// A real dma-buf of this domain.
    udmabuf: Udmabuf,
    /// Descriptors that are open but not dma-bufs.
    not_dmabufs: Vec<File>,
    /// A memfd (also not a dma-buf).
    memfd: std::os::fd::OwnedFd,
    /// A descriptor number that is closed.
    closed_fd: i32,
    /// Every id an export of this run returned.
    exported: Vec<HyperDmabufId>,
    /// Errnos seen, by command name.
    seen: BTreeMap<(&'static str, i32), u64>,
    failures: Vec<String>,
}

/// Runs the named cases then the random calls; returns the failures.
pub(crate) fn run(opts: &Options) -> Result<(), String> {
    let own = crate::own_domid()?;
    let dev = open_device().map_err(|e| format!("{DEVICE_PATH}: {e}"))?;
    let arena = Arena::new(ARENA).map_err(|e| format!("arena: {e}"))?;
    let udmabuf =
        Udmabuf::with_contents(4096, |_, b| b.fill(0x5a)).map_err(|e| format!("udmabuf: {e}"))?;
    let not_dmabufs = vec![
        File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?,
        open_device().map_err(|e| format!("{DEVICE_PATH}: {e}"))?,
    ];
    let memfd = memfd_create("hostile", MemfdFlags::CLOEXEC).map_err(|e| format!("memfd: {e}"))?;
    let closed_fd = {
        let f = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        f.as_raw_fd()
    };
    let mut a = Abuse {
        dev,
        arena,
        rng: Rng::new(opts.seed),
        own,
        peer: opts.peer,
        udmabuf,
        not_dmabufs,
        memfd,
        closed_fd,
        exported: Vec::new(),
        seen: BTreeMap::new(),
        failures: Vec::new(),
    };
    let cases: [(&str, Case); 12] = [
        ("unknown-command", Abuse::unknown_command),
        ("wrong-size", Abuse::wrong_size),
        ("wrong-direction", Abuse::wrong_direction),
        ("bad-address", Abuse::bad_address),
        ("export-bad-fd", Abuse::export_bad_fd),
        ("export-not-dmabuf", Abuse::export_not_dmabuf),
        ("export-to-self", Abuse::export_to_self),
        ("export-no-such-domain", Abuse::export_no_such_domain),
        ("export-bad-record", Abuse::export_bad_record),
        ("ids-not-ours", Abuse::ids_not_ours),
        ("list-and-read", Abuse::list_and_read),
        ("query-and-unexport", Abuse::query_and_unexport),
    ];
    let mut named = 0u64;
    for (name, case) in cases {
        let before = a.failures.len();
        let calls = a.total();
        case(&mut a);
        named += a.total() - calls;
        let verdict = if a.failures.len() == before {
            "ok"
        } else {
            "FAILED"
        };
        println!("ioctl case {name}: {verdict} ({} calls)", a.total() - calls);
    }
    a.random(opts.calls);
    a.cleanup();
    let random = a.total() - named;
    println!("ioctl random: {random} calls, seed {}", opts.seed);
    for ((cmd, errno), n) in &a.seen {
        println!("  {cmd:>10} {:<10} {n}", errno_name(*errno));
    }
    println!("ioctl total: {} calls", a.total());
    let failures = std::mem::take(&mut a.failures);
    drop(a);
    let mut failures = failures;
    match unprivileged(opts.nobody) {
        Ok(()) => println!("ioctl case unprivileged: ok"),
        Err(e) => failures.push(format!("unprivileged: {e}")),
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn open_device() -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(DEVICE_PATH)
}

/// As uid/gid `nobody`, opening the device must fail with EACCES (it is
/// root's, mode 0600). Irreversible: the last thing a run does.
fn unprivileged(nobody: u32) -> Result<(), String> {
    ffi::become_user(nobody, nobody).map_err(|e| format!("setuid({nobody}): {e}"))?;
    match open_device() {
        Ok(_) => Err(format!("uid {nobody} opened {DEVICE_PATH}")),
        Err(e) if e.raw_os_error() == Some(EACCES) => Ok(()),
        Err(e) => Err(format!("uid {nobody}: open gave {e}, expected EACCES")),
    }
}

/// The symbolic name of an errno (`ok` for 0).
pub(crate) fn errno_name(errno: i32) -> String {
    let name = match errno {
        0 => "ok",
        EACCES => "EACCES",
        libc::EIO => "EIO",
        libc::ENODEV => "ENODEV",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EXDEV => "EXDEV",
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EBADF => "EBADF",
        E2BIG => "E2BIG",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EFAULT => "EFAULT",
        EINVAL => "EINVAL",
        ENOTTY => "ENOTTY",
        ENOSPC => "ENOSPC",
        ERANGE => "ERANGE",
        ENOTCONN => "ENOTCONN",
        ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("errno{errno}"),
    };
    name.to_string()
}

/// Record offset used for well-formed calls.
const AT: usize = 0;

impl Abuse {
    fn total(&self) -> u64 {
        self.seen.values().sum()
    }

    /// Issues `cmd` with `record` at `AT` (or at `addr`), counts it, and
    /// returns 0 or the errno.
    fn call(&mut self, name: &'static str, cmd: u32, record: &[u8], addr: Option<UserAddr>) -> i32 {
        let addr = addr.unwrap_or(UserAddr::Arena(AT));
        if let UserAddr::Arena(at) = addr {
            self.arena.write(at, record);
        }
        let errno = match self.arena.ioctl(self.dev.as_fd(), cmd, addr) {
            Ok(_) => 0,
            Err(e) => e,
        };
        *self.seen.entry((name, errno)).or_default() += 1;
        errno
    }

    fn expect(&mut self, what: &str, got: i32, want: i32) {
        if got != want {
            self.failures.push(format!(
                "{what}: got {}, expected {}",
                errno_name(got),
                errno_name(want)
            ));
        }
    }

    fn export_record(&self, fd: i32, remote: u32) -> [u8; ExportArgs::SIZE] {
        let mut r = [0u8; ExportArgs::SIZE];
        r[0..4].copy_from_slice(&fd.to_le_bytes());
        r[4..8].copy_from_slice(&remote.to_le_bytes());
        r
    }

    fn dmabuf_fd(&self) -> i32 {
        self.udmabuf.dmabuf.as_raw_fd()
    }

    /// Exports the udmabuf to the peer; its id.
    fn export_ok(&mut self, what: &str) -> Option<HyperDmabufId> {
        let args = ExportArgs {
            dmabuf_fd: self.dmabuf_fd(),
            remote: DomId::new(u32::from(self.peer)).ok()?,
            flags: ExportFlags::default(),
            priv_data: PrivData::new(b"hostile ioctl").ok()?,
            hid: None,
        };
        let got = self.call("export", uapi::IOCTL_EXPORT, &args.encode(), None);
        self.expect(what, got, 0);
        if got != 0 {
            return None;
        }
        let mut out = [0u8; ExportArgs::SIZE];
        self.arena.read(AT, &mut out);
        match ExportArgs::decode_out(&out) {
            Ok(hid) => {
                if !self.exported.iter().any(|h| h.matches(&hid)) {
                    self.exported.push(hid);
                }
                Some(hid)
            }
            Err(e) => {
                self.failures
                    .push(format!("{what}: the driver wrote no id: {e}"));
                None
            }
        }
    }

    fn unknown_command(&mut self) {
        let record = [0u8; 64];
        for nr in [0u8, 6, 7, 0x7f, 0xff] {
            for size in [0usize, 16, 40, 232] {
                let cmd = iowr(IOCTL_MAGIC, nr, size);
                let got = self.call("unknown", cmd, &record, None);
                self.expect(&format!("nr {nr} size {size}"), got, ENOTTY);
            }
        }
        // Other drivers' commands: DMA_BUF_IOCTL_SYNC, TCGETS, gntalloc's.
        for cmd in [0x4008_6200u32, 0x5401, ioc(0, b'G', 5, 24)] {
            let got = self.call("unknown", cmd, &record, None);
            self.expect(&format!("foreign command {cmd:#x}"), got, ENOTTY);
        }
    }

    fn wrong_size(&mut self) {
        let record = [0u8; 512];
        for (cmd, size, name) in COMMANDS {
            let nr = (cmd & 0xff) as u8;
            for bad in [0, size - 1, size + 1, size + 8, MAX_IOC_SIZE] {
                let got = self.call("wrong-size", iowr(IOCTL_MAGIC, nr, bad), &record, None);
                self.expect(&format!("{name} with size {bad}"), got, ENOTTY);
            }
        }
    }

    fn wrong_direction(&mut self) {
        let record = [0u8; 512];
        for (cmd, size, name) in COMMANDS {
            let nr = (cmd & 0xff) as u8;
            for dir in [0u32, 1, 2] {
                let got = self.call("wrong-dir", ioc(dir, IOCTL_MAGIC, nr, size), &record, None);
                self.expect(&format!("{name} with direction {dir}"), got, ENOTTY);
            }
        }
    }

    fn bad_address(&mut self) {
        for (cmd, size, name) in COMMANDS {
            let straddle = UserAddr::Arena(self.arena.usable() - size + 1);
            for addr in [
                UserAddr::Null,
                UserAddr::Guard,
                UserAddr::Kernel,
                UserAddr::NonCanonical,
                straddle,
            ] {
                let got = self.call(name, cmd, &[], Some(addr));
                self.expect(&format!("{name} at {addr:?}"), got, EFAULT);
            }
        }
    }

    fn export_bad_fd(&mut self) {
        let peer = u32::from(self.peer);
        for fd in [-1, self.closed_fd, 1 << 20, i32::MAX] {
            let r = self.export_record(fd, peer);
            let got = self.call("export", uapi::IOCTL_EXPORT, &r, None);
            self.expect(&format!("export of fd {fd}"), got, EBADF);
        }
    }

    fn export_not_dmabuf(&mut self) {
        let peer = u32::from(self.peer);
        let mut fds: Vec<i32> = self.not_dmabufs.iter().map(|f| f.as_raw_fd()).collect();
        fds.push(self.memfd.as_raw_fd());
        fds.push(self.dev.as_raw_fd());
        for fd in fds {
            let r = self.export_record(fd, peer);
            let got = self.call("export", uapi::IOCTL_EXPORT, &r, None);
            self.expect(&format!("export of non-dma-buf fd {fd}"), got, EINVAL);
        }
    }

    fn export_to_self(&mut self) {
        let r = self.export_record(self.dmabuf_fd(), u32::from(self.own));
        let got = self.call("export", uapi::IOCTL_EXPORT, &r, None);
        self.expect("export to ourselves", got, ENOTCONN);
    }

    fn export_no_such_domain(&mut self) {
        // Valid ids of domains with no device to us.
        for domid in [0x7fef, 31_999] {
            let r = self.export_record(self.dmabuf_fd(), domid);
            let got = self.call("export", uapi::IOCTL_EXPORT, &r, None);
            self.expect(&format!("export to absent domain {domid}"), got, ENOTCONN);
        }
        // Reserved ids (DOMID_FIRST_RESERVED, DOMID_SELF, DOMID_IO) and
        // values that are not domain ids at all.
        for domid in [0x7ff0, 0x7ff0 + 2, 0x7ff1, 0xffff, 0x1_0000, u32::MAX] {
            let r = self.export_record(self.dmabuf_fd(), domid);
            let got = self.call("export", uapi::IOCTL_EXPORT, &r, None);
            self.expect(
                &format!("export to reserved domain {domid:#x}"),
                got,
                EINVAL,
            );
        }
    }

    fn export_bad_record(&mut self) {
        let base = self.export_record(self.dmabuf_fd(), u32::from(self.peer));
        let mut cases: Vec<(&str, [u8; ExportArgs::SIZE])> = Vec::new();
        let mut r = base;
        r[8..12].copy_from_slice(&2u32.to_le_bytes());
        cases.push(("unknown flag", r));
        let mut r = base;
        r[8..12].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        cases.push(("high flag", r));
        let mut r = base;
        r[12..16].copy_from_slice(&193u32.to_le_bytes());
        cases.push(("priv_len 193", r));
        let mut r = base;
        r[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("priv_len u32::MAX", r));
        let mut r = base;
        r[12..16].copy_from_slice(&4u32.to_le_bytes());
        r[16 + 4] = 1;
        cases.push(("private byte past priv_len", r));
        for (what, r) in cases {
            let got = self.call("export", uapi::IOCTL_EXPORT, &r, None);
            self.expect(&format!("export with {what}"), got, EINVAL);
        }
    }

    /// Ids this domain may not import: random ones, ours (exported to
    /// the peer, not to us), ours with another key, number zero.
    fn ids_not_ours(&mut self) {
        let Some(hid) = self.export_ok("export to the peer") else {
            return;
        };
        let mut other_key = *hid.key();
        other_key[KEY_LEN - 1] ^= 1;
        let forged = HyperDmabufId::new(hid.number(), other_key)
            .expect("the number of a real id is not zero");
        let random = self.random_hid();
        for (what, id) in [
            ("our own export", hid),
            ("our export with another key", forged),
            ("a random id", random),
        ] {
            let r = ImportArgs {
                hid: id,
                flags: 0,
                fd: -1,
                size: 0,
            }
            .encode();
            let got = self.call("import", uapi::IOCTL_IMPORT, &r, None);
            self.expect(&format!("import of {what}"), got, ENOENT);
        }
        for (what, id) in [("another key", forged), ("a random id", random)] {
            let r = query_record(&id, QueryItem::Size as u32, 0, 0);
            let got = self.call("query", uapi::IOCTL_QUERY, &r, None);
            self.expect(&format!("query of {what}"), got, ENOENT);
            let r = UnexportArgs {
                hid: id,
                delay_ms: 0,
            }
            .encode();
            let got = self.call("unexport", uapi::IOCTL_UNEXPORT, &r, None);
            self.expect(&format!("unexport of {what}"), got, ENOENT);
        }
        // Number zero is not an id; unknown import flags.
        let mut r = ImportArgs {
            hid,
            flags: 0,
            fd: -1,
            size: 0,
        }
        .encode();
        r[0..8].fill(0);
        let got = self.call("import", uapi::IOCTL_IMPORT, &r, None);
        self.expect("import of id number 0", got, EINVAL);
        let r = ImportArgs {
            hid,
            flags: 2,
            fd: -1,
            size: 0,
        }
        .encode();
        let got = self.call("import", uapi::IOCTL_IMPORT, &r, None);
        self.expect("import with unknown flags", got, EINVAL);
    }

    fn list_and_read(&mut self) {
        // An export exists (ids-not-ours): a LIST that may show it must
        // be able to write it.
        let r = ListArgs {
            entries_ptr: self.arena.pointer(UserAddr::Guard),
            capacity: 4,
            count: 0,
        }
        .encode();
        let got = self.call("list", uapi::IOCTL_LIST, &r, None);
        self.expect("list into the guard page", got, EFAULT);
        let r = ListArgs {
            entries_ptr: 0,
            capacity: 0,
            count: 0,
        }
        .encode();
        let got = self.call("list", uapi::IOCTL_LIST, &r, None);
        self.expect("list with capacity 0 and no array", got, 0);
        // A fresh open file starts with a PeerConnected for the peer.
        let fresh = match open_device() {
            Ok(f) => f,
            Err(e) => return self.failures.push(format!("reopening: {e}")),
        };
        let short = ffi::read_into(
            &mut self.arena,
            fresh.as_fd(),
            UserAddr::Arena(AT),
            Event::SIZE - 1,
        );
        self.expect("read of 255 bytes", short.err().unwrap_or(0), EINVAL);
        let fault = ffi::read_into(&mut self.arena, fresh.as_fd(), UserAddr::Guard, Event::SIZE);
        self.expect("read into the guard page", fault.err().unwrap_or(0), EFAULT);
        // The event was not lost to the bad address.
        match ffi::read_into(
            &mut self.arena,
            fresh.as_fd(),
            UserAddr::Arena(AT),
            Event::SIZE,
        ) {
            Ok(n) if n == Event::SIZE => {
                let mut raw = [0u8; Event::SIZE];
                self.arena.read(AT, &mut raw);
                match Event::decode(&raw) {
                    Ok(e) if e.kind == EventType::PeerConnected => {}
                    other => self
                        .failures
                        .push(format!("first event after the fault: {other:?}")),
                }
            }
            other => self
                .failures
                .push(format!("read after the fault: {other:?}")),
        }
    }

    fn query_and_unexport(&mut self) {
        let Some(hid) = self.exported.first().copied() else {
            return self.failures.push("no export to query".to_string());
        };
        let r = query_record(&hid, 999, 0, 0);
        let got = self.call("query", uapi::IOCTL_QUERY, &r, None);
        self.expect("query of item 999", got, EINVAL);
        let data = self.arena.pointer(UserAddr::Arena(DATA_AT));
        let r = query_record(&hid, QueryItem::Priv as u32, data, 3);
        let got = self.call("query", uapi::IOCTL_QUERY, &r, None);
        self.expect("query of private data into 3 bytes", got, ERANGE);
        let guard = self.arena.pointer(UserAddr::Guard);
        let r = query_record(&hid, QueryItem::Priv as u32, guard, 192);
        let got = self.call("query", uapi::IOCTL_QUERY, &r, None);
        self.expect("query of private data into the guard page", got, EFAULT);
        let r = UnexportArgs {
            hid,
            delay_ms: MAX_UNEXPORT_DELAY_MS + 1,
        }
        .encode();
        let got = self.call("unexport", uapi::IOCTL_UNEXPORT, &r, None);
        self.expect("unexport with a delay over the maximum", got, EINVAL);
        let r = UnexportArgs { hid, delay_ms: 0 }.encode();
        let got = self.call("unexport", uapi::IOCTL_UNEXPORT, &r, None);
        self.expect("unexport", got, 0);
    }

    fn random_hid(&mut self) -> HyperDmabufId {
        let mut key = [0u8; KEY_LEN];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        HyperDmabufId::new(self.rng.next_u64() | 1, key).expect("odd numbers are not zero")
    }

    /// A hid for a random record: random, one of ours, or one of ours
    /// with a flipped key bit.
    fn some_hid(&mut self) -> (HyperDmabufId, bool) {
        if !self.exported.is_empty() && self.rng.chance(40) {
            let hid = self.rng.pick(&self.exported);
            if self.rng.chance(50) {
                return (hid, true);
            }
            let mut key = *hid.key();
            key[self.rng.below(KEY_LEN as u64) as usize] ^= 1 << self.rng.below(8);
            return (
                HyperDmabufId::new(hid.number(), key).expect("a real id's number"),
                false,
            );
        }
        (self.random_hid(), false)
    }

    fn some_fd(&mut self) -> i32 {
        match self.rng.below(6) {
            0 => self.dmabuf_fd(),
            1 => self.closed_fd,
            2 => self.memfd.as_raw_fd(),
            3 => self.dev.as_raw_fd(),
            4 => self.rng.next_u64() as i32,
            _ => self.not_dmabufs[0].as_raw_fd(),
        }
    }

    fn some_domid(&mut self) -> u32 {
        match self.rng.below(6) {
            0 | 1 => u32::from(self.peer),
            2 => u32::from(self.own),
            3 => 0x7ff0 + self.rng.below(16) as u32,
            4 => self.rng.below(0x7ff0) as u32,
            _ => self.rng.next_u64() as u32,
        }
    }

    /// A user address for a pointer field: mostly the data area.
    fn some_pointer(&mut self) -> u64 {
        let addr = match self.rng.below(8) {
            0 => UserAddr::Null,
            1 => UserAddr::Guard,
            2 => UserAddr::Kernel,
            3 => UserAddr::NonCanonical,
            _ => UserAddr::Arena(DATA_AT),
        };
        self.arena.pointer(addr)
    }

    fn random(&mut self, calls: u64) {
        let mut record = vec![0u8; MAX_IOC_SIZE + 1];
        for _ in 0..calls {
            for b in record.chunks_mut(8).take(40) {
                b.copy_from_slice(&self.rng.next_u64().to_le_bytes()[..b.len()]);
            }
            let pick = self.rng.below(100);
            let (cmd, index) = if pick < 75 {
                let i = self.rng.below(5) as usize;
                (COMMANDS[i].0, Some(i))
            } else if pick < 88 {
                let (cmd, _, _) = self.rng.pick(&COMMANDS);
                // Same number, another size or direction.
                let size = ((cmd >> 16) & 0x3fff) as usize;
                let bad = (size + 1 + self.rng.below(MAX_IOC_SIZE as u64 - 1) as usize) & 0x3fff;
                let dir = self.rng.below(4) as u32;
                let mutated = ioc(dir, IOCTL_MAGIC, cmd as u8, bad);
                (mutated, None)
            } else {
                (random_foreign_command(&mut self.rng), None)
            };
            // A well-placed record, one that runs into the guard page, or
            // a bad address.
            let size = ((cmd >> 16) & 0x3fff) as usize;
            let r = self.rng.below(100);
            let addr = if r < 88 {
                UserAddr::Arena(
                    8 * self
                        .rng
                        .below(((ARENA - DATA_AT - MAX_IOC_SIZE) / 8) as u64)
                        as usize,
                )
            } else if r < 92 && size > 0 {
                UserAddr::Arena(
                    self.arena.usable() - size + 1 + self.rng.below(size as u64) as usize,
                )
            } else {
                self.rng.pick(&[
                    UserAddr::Null,
                    UserAddr::Guard,
                    UserAddr::Kernel,
                    UserAddr::NonCanonical,
                ])
            };
            let in_arena = matches!(addr, UserAddr::Arena(at) if at + size <= self.arena.usable());
            match index {
                Some(i) => self.random_command(i, &mut record, addr, in_arena),
                None => {
                    let got = self.call("other", cmd, &record[..size.max(1)], Some(addr));
                    self.expect(&format!("command {cmd:#x}"), got, ENOTTY);
                }
            }
        }
    }

    /// One of the five commands with a random, mostly plausible record.
    fn random_command(&mut self, index: usize, record: &mut [u8], addr: UserAddr, in_arena: bool) {
        let (cmd, size, name) = COMMANDS[index];
        let mut known = false;
        let mut pointer_field = None;
        let record = &mut record[..size];
        match index {
            0 => {
                let fd = self.some_fd();
                let remote = self.some_domid();
                record[0..4].copy_from_slice(&fd.to_le_bytes());
                record[4..8].copy_from_slice(&remote.to_le_bytes());
                if self.rng.chance(70) {
                    record[8..12].copy_from_slice(&(self.rng.below(2) as u32).to_le_bytes());
                }
                if self.rng.chance(70) {
                    let len = self.rng.below(193) as usize;
                    record[12..16].copy_from_slice(&(len as u32).to_le_bytes());
                    record[16 + len..208].fill(0);
                }
            }
            1 => {
                let (hid, _) = self.some_hid();
                record[0..24].copy_from_slice(&hid.encode());
                if self.rng.chance(70) {
                    record[24..28].copy_from_slice(&(self.rng.below(2) as u32).to_le_bytes());
                }
            }
            2 => {
                let (hid, ours) = self.some_hid();
                known = ours;
                record[0..24].copy_from_slice(&hid.encode());
                if self.rng.chance(80) {
                    record[24..28].copy_from_slice(&(self.rng.below(50) as u32).to_le_bytes());
                }
                if self.rng.chance(80) {
                    record[28..32].fill(0);
                }
            }
            3 => {
                let (hid, ours) = self.some_hid();
                known = ours;
                let data = self.some_pointer();
                pointer_field = Some(data);
                let item = if self.rng.chance(80) {
                    self.rng.below(12) as u32
                } else {
                    self.rng.next_u64() as u32
                };
                let len = if self.rng.chance(50) {
                    self.rng.below(256) as u32
                } else {
                    self.rng.next_u64() as u32
                };
                let r = query_record(&hid, item, data, len);
                record.copy_from_slice(&r);
                // Reserved words, never the pointer.
                if self.rng.chance(10) {
                    record[28..32].copy_from_slice(&(self.rng.next_u64() as u32).to_le_bytes());
                }
                if self.rng.chance(10) {
                    record[52..56].copy_from_slice(&(self.rng.next_u64() as u32).to_le_bytes());
                }
            }
            _ => {
                let ptr = self.some_pointer();
                pointer_field = Some(ptr);
                // The data area holds far more entries than this run can
                // create, whatever capacity is asked.
                let cap = if self.rng.chance(50) {
                    self.rng.below(8) as u32
                } else {
                    self.rng.next_u64() as u32
                };
                record.copy_from_slice(
                    &ListArgs {
                        entries_ptr: ptr,
                        capacity: cap,
                        count: 0,
                    }
                    .encode(),
                );
            }
        }
        let got = self.call(name, cmd, record, Some(addr));
        let data_ok =
            pointer_field.is_none_or(|p| p == self.arena.pointer(UserAddr::Arena(DATA_AT)));
        let allowed: &[i32] = match index {
            0 => &[
                EBADF, EINVAL, ENOTCONN, EPERM, E2BIG, ENOSPC, ENOMEM, ETIMEDOUT, EAGAIN,
            ],
            1 => &[ENOENT, EINVAL],
            2 => &[ENOENT, EINVAL],
            3 => &[ENOENT, EINVAL, ERANGE],
            _ => &[ENOMEM],
        };
        let ok = match got {
            0 => match index {
                0 => true,
                1 => false,
                2 | 3 => known,
                _ => true,
            },
            EFAULT => !in_arena || !data_ok,
            e => allowed.contains(&e),
        };
        if !ok {
            self.failures.push(format!(
                "random {name} at {addr:?}: {} is not a documented answer (record {:02x?})",
                errno_name(got),
                &record[..size.min(48)]
            ));
        }
        if got == 0 && index == 0 && in_arena {
            let mut out = [0u8; ExportArgs::SIZE];
            if let UserAddr::Arena(at) = addr {
                self.arena.read(at, &mut out);
            }
            if let Ok(hid) = ExportArgs::decode_out(&out) {
                if !self.exported.iter().any(|h| h.matches(&hid)) {
                    self.exported.push(hid);
                }
            }
        }
    }

    /// Unexports whatever the run exported (`ENOENT` for what is already
    /// gone).
    fn cleanup(&mut self) {
        for hid in std::mem::take(&mut self.exported) {
            let r = UnexportArgs { hid, delay_ms: 0 }.encode();
            let got = self.call("unexport", uapi::IOCTL_UNEXPORT, &r, None);
            if got != 0 && got != ENOENT {
                self.failures
                    .push(format!("final unexport of {hid}: {}", errno_name(got)));
            }
        }
    }
}

fn query_record(
    hid: &HyperDmabufId,
    item: u32,
    data_ptr: u64,
    data_len: u32,
) -> [u8; QueryArgs::SIZE] {
    let mut r = QueryArgs {
        hid: *hid,
        item: QueryItem::Size,
        value: 0,
        data_ptr,
        data_len,
    }
    .encode();
    r[24..28].copy_from_slice(&item.to_le_bytes());
    r
}

/// A random command number of no driver that the VFS handles itself
/// (`FIOCLEX`, `FIONBIO`, `FIGETBSZ`, ...: types 0, 'T', 'X', 'f', 0x94
/// and 0x15 are avoided) and not ours.
fn random_foreign_command(rng: &mut Rng) -> u32 {
    loop {
        let cmd = rng.next_u64() as u32;
        let ty = (cmd >> 8) as u8;
        if ![0u8, b'T', b'X', b'f', 0x94, 0x15].contains(&ty)
            && !COMMANDS.iter().any(|c| c.0 == cmd)
        {
            return cmd;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_commands_avoid_the_vfs_and_ours() {
        let mut rng = Rng::new(9);
        for _ in 0..100_000 {
            let cmd = random_foreign_command(&mut rng);
            let ty = (cmd >> 8) as u8;
            assert!(
                ![0u8, b'T', b'X', b'f', 0x94, 0x15].contains(&ty),
                "{cmd:#x}"
            );
            assert!(COMMANDS.iter().all(|c| c.0 != cmd));
        }
    }

    #[test]
    fn ioc_matches_the_uapi_encoding() {
        for (cmd, size, _) in COMMANDS {
            assert_eq!(ioc(3, IOCTL_MAGIC, cmd as u8, size), cmd);
        }
    }
}
