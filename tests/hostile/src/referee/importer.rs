// SPDX-License-Identifier: MIT
//! The referee's side of the hostile-importer cases: this domain exports
//! buffers to the hostile peer, which then misbehaves as their importer
//! (maps grants it was never told of, keeps mappings across an unexport, a
//! failed export, the loss of the connection and the unbinding of the
//! device, lies in its answers). The referee checks what the exporter's
//! driver must do: keep every buffer pinned, and its grants draining,
//! while the peer maps one of them, and let go (`GrantsEnded`) only once
//! it unmapped.
//!
//! Commands (see `referee.rs` for the mailbox):
//!
//! * `export NAME PAGES SEED` — export, in the background, a new buffer of
//!   PAGES pages holding the test pattern of SEED to the hostile domain
//!   (private data `hostile-importer NAME`); answered at once;
//! * `exported NAME ERRNO [ID]` — that export's ioctl ended with ERRNO
//!   (`0`, `ENOSPC`, `ETIMEDOUT`, ...); a failed export returns no id, so
//!   the peer names the one it was announced with, for its `GrantsEnded`;
//! * `unexport NAME` — revoke it;
//! * `busy NAME 0|1` — what `QUERY BUSY` says of it;
//! * `gauges PINNED DRAINING` — within 10 s `dmabufs_pinned` and
//!   `grants_draining` are that far above their values at `begin`;
//! * `hold NAME PINNED DRAINING` — 2.5 s later (two retries of the
//!   driver's drain) still so, and no `GrantsEnded` for NAME came;
//! * `drop NAME` — close our own descriptors of its dma-buf and memfd,
//!   then dirty 128 MiB of fresh memory: a page the driver let go too
//!   early would be reused and overwritten, and the peer, which keeps
//!   reading it through its mapping, would see it;
//! * `ended NAME` — within 10 s its `GrantsEnded` came;
//! * `unbind` — close every file of ours on the device, unbind every
//!   hyper_dmabuf device of this domain; `rmmod hyper_dmabuf` must then be
//!   refused (the peer still maps a grant);
//! * `unloaded` — once the peer unmapped, the gauges reach zero and
//!   `rmmod` succeeds; load the module again (`--module`).

use crate::limits::scaled;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_client::{Device, Error as DeviceError, ExportOptions, Udmabuf};
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{EventType, QueryItem, DEVICE_PATH};
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_common::xen::DomId;

/// How long a gauge may take to reach its value (the drain retries every
/// second).
const GAUGES_WITHIN: Duration = Duration::from_secs(10);

/// How long a held mapping must keep the gauges where they are: two
/// retries of the driver's drain.
const HOLD: Duration = Duration::from_millis(2500);

/// How long an export's ioctl may take (the driver gives the peer 5 s).
const EXPORT_WITHIN: Duration = Duration::from_secs(20);

/// Memory dirtied after a buffer is dropped, to reuse freed pages.
const CHURN_BYTES: usize = 128 << 20;

/// Where the driver's XenBus drivers list their bound devices.
const DRIVER_DIRS: [&str; 2] = [
    "/sys/bus/xen-backend/drivers/hyper_dmabuf",
    "/sys/bus/xen/drivers/hyper_dmabuf",
];

type Outcome = (Udmabuf, Result<HyperDmabufId, DeviceError>);

/// One buffer exported to the hostile peer.
#[derive(Default)]
struct Buffer {
    /// The export under way.
    pending: Option<JoinHandle<Outcome>>,
    /// Our dma-buf and memfd, until `drop`.
    udmabuf: Option<Udmabuf>,
    /// Its id once exported.
    hid: Option<HyperDmabufId>,
}

/// The exports of one case, through one open file of the device (the
/// owner of the exports, told of their `GrantsEnded`).
#[derive(Default)]
pub(crate) struct Exports {
    dev: Option<Arc<Device>>,
    buffers: BTreeMap<String, Buffer>,
    /// Buffers whose `GrantsEnded` came.
    ended: Vec<HyperDmabufId>,
}

/// The errno an `ERRNO` word names.
fn errno_of(name: &str) -> Result<i32, String> {
    Ok(match name {
        "0" => 0,
        "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        "ENOTCONN" => libc::ENOTCONN,
        other => return Err(format!("unknown errno {other}")),
    })
}

pub(crate) fn number<T: std::str::FromStr>(word: &str) -> Result<T, String> {
    word.parse().map_err(|_| format!("bad number {word:?}"))
}

impl Exports {
    fn dev(&mut self) -> Result<Arc<Device>, String> {
        if self.dev.is_none() {
            self.dev = Some(Arc::new(
                Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())?,
            ));
        }
        Ok(self.dev.clone().expect("just opened"))
    }

    fn buffer(&mut self, name: &str) -> Result<&mut Buffer, String> {
        self.buffers
            .get_mut(name)
            .ok_or_else(|| format!("no buffer {name:?} in this case"))
    }

    fn hid(&mut self, name: &str) -> Result<HyperDmabufId, String> {
        self.buffer(name)?
            .hid
            .ok_or_else(|| format!("buffer {name:?} was not exported"))
    }

    /// Closes the case's file, which unexports what is still exported
    /// (the buffers stay ours until `drop`).
    pub(crate) fn close_file(&mut self) {
        self.dev = None;
    }

    /// Closes the case's file and forgets its buffers; an export still
    /// under way is waited for.
    pub(crate) fn close(&mut self) {
        for (_, b) in std::mem::take(&mut self.buffers) {
            if let Some(t) = b.pending {
                drop(t.join());
            }
        }
        self.dev = None;
        self.ended.clear();
    }

    /// `export NAME PAGES SEED` to `peer`.
    pub(crate) fn export(
        &mut self,
        peer: u16,
        name: &str,
        pages: &str,
        seed: &str,
    ) -> Result<(), String> {
        let (pages, seed): (u64, u64) = (number(pages)?, number(seed)?);
        if self.buffers.contains_key(name) {
            return Err(format!("buffer {name:?} exists already"));
        }
        let dev = self.dev()?;
        let peer = DomId::new(u32::from(peer)).map_err(|e| e.to_string())?;
        let buf = Udmabuf::with_contents(pages * 4096, |at, b| pattern::fill_at(seed, at, b))
            .map_err(|e| format!("udmabuf: {e}"))?;
        let priv_data = PrivData::new(format!("hostile-importer {name}").as_bytes())
            .map_err(|e| e.to_string())?;
        let pending = std::thread::spawn(move || {
            let options = ExportOptions::new().private_data(priv_data);
            let outcome = dev.export(&buf, peer, &options);
            (buf, outcome)
        });
        self.buffers.insert(
            name.to_string(),
            Buffer {
                pending: Some(pending),
                ..Buffer::default()
            },
        );
        Ok(())
    }

    /// `exported NAME ERRNO`.
    pub(crate) fn exported(&mut self, name: &str, errno: &str) -> Result<(), String> {
        self.exported_as(name, errno, None)
    }

    /// `exported NAME ERRNO [ID]`.
    pub(crate) fn exported_as(
        &mut self,
        name: &str,
        errno: &str,
        announced: Option<&str>,
    ) -> Result<(), String> {
        let want = errno_of(errno)?;
        let announced: Option<HyperDmabufId> = announced
            .map(|id| id.parse().map_err(|e| format!("id {id}: {e:?}")))
            .transpose()?;
        let b = self.buffer(name)?;
        let t = b
            .pending
            .take()
            .ok_or_else(|| format!("no export of {name:?} under way"))?;
        let deadline = Instant::now() + scaled(EXPORT_WITHIN);
        while !t.is_finished() {
            if Instant::now() >= deadline {
                b.pending = Some(t);
                return Err(format!("the export of {name:?} did not end within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (udmabuf, outcome) = t
            .join()
            .map_err(|_| format!("the export of {name:?} panicked"))?;
        b.udmabuf = Some(udmabuf);
        let got = match outcome {
            Ok(hid) => {
                b.hid = Some(hid);
                println!("referee: exported {name} as {hid}");
                0
            }
            Err(e) => {
                b.hid = announced;
                e.raw_os_error().unwrap_or(-1)
            }
        };
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "the export of {name:?} ended with errno {got}, expected {errno}"
            ))
        }
    }

    /// `unexport NAME`.
    pub(crate) fn unexport(&mut self, name: &str) -> Result<(), String> {
        let hid = self.hid(name)?;
        self.dev()?
            .unexport(&hid, Duration::ZERO)
            .map_err(|e| e.to_string())
    }

    /// `busy NAME V`.
    pub(crate) fn busy(&mut self, name: &str, want: &str) -> Result<(), String> {
        let want: u64 = number(want)?;
        let hid = self.hid(name)?;
        let got = self
            .dev()?
            .query(&hid, QueryItem::Busy)
            .map_err(|e| e.to_string())?;
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "QUERY BUSY of {name:?} says {got}, expected {want}"
            ))
        }
    }

    /// Reads the events that came, noting `GrantsEnded`; waits at most
    /// `wait_ms` for the first.
    fn read_events(&mut self, wait_ms: u64) -> Result<(), String> {
        let Some(dev) = self.dev.clone() else {
            return Ok(());
        };
        let mut wait = Duration::from_millis(wait_ms);
        while let Some(e) = dev.wait_event(Some(wait)).map_err(|e| e.to_string())? {
            wait = Duration::ZERO;
            if e.kind == EventType::GrantsEnded {
                if let Some(hid) = e.hid {
                    self.ended.push(hid);
                }
            }
        }
        Ok(())
    }

    fn has_ended(&self, hid: &HyperDmabufId) -> bool {
        self.ended.iter().any(|h| h.matches(hid))
    }

    /// `hold NAME ...` (the gauges are the caller's): no `GrantsEnded`.
    pub(crate) fn still_held(&mut self, name: &str) -> Result<(), String> {
        let hid = self.hid(name)?;
        self.read_events(0)?;
        if self.has_ended(&hid) {
            Err(format!(
                "GrantsEnded came for {name:?} while the peer maps its pages"
            ))
        } else {
            Ok(())
        }
    }

    /// `drop NAME`.
    pub(crate) fn drop_buffer(&mut self, name: &str) -> Result<(), String> {
        let b = self.buffer(name)?;
        if b.pending.is_some() {
            return Err(format!("the export of {name:?} is still under way"));
        }
        drop(b.udmabuf.take());
        let mut churn = vec![0x5au8; CHURN_BYTES];
        churn[CHURN_BYTES - 1] = 0xa5;
        std::hint::black_box(&churn);
        Ok(())
    }

    /// `ended NAME`.
    pub(crate) fn ended(&mut self, name: &str) -> Result<(), String> {
        let hid = self.hid(name)?;
        let deadline = Instant::now() + scaled(GAUGES_WITHIN);
        loop {
            if self.has_ended(&hid) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no GrantsEnded for {name:?} within 10 s"));
            }
            self.read_events(u64::try_from(left.as_millis().min(200)).unwrap_or(200))?;
        }
    }
}

/// Waits at most [`GAUGES_WITHIN`] until `get` returns `want`.
pub(crate) fn await_gauges(
    get: impl FnMut() -> Result<(i64, i64), String>,
    want: (i64, i64),
) -> Result<(), String> {
    await_values("dmabufs_pinned and grants_draining moved by", get, want)
}

/// Waits at most [`GAUGES_WITHIN`] until `get` returns `want`; `what`
/// says what the values are ("... moved by").
pub(crate) fn await_values<T: PartialEq + std::fmt::Debug>(
    what: &str,
    mut get: impl FnMut() -> Result<T, String>,
    want: T,
) -> Result<(), String> {
    let deadline = Instant::now() + scaled(GAUGES_WITHIN);
    loop {
        let got = get()?;
        if got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} {got:?}, expected {want:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `hold`'s wait.
pub(crate) fn hold() {
    std::thread::sleep(HOLD);
}

/// Parses `PINNED DRAINING`.
pub(crate) fn pair(pinned: &str, draining: &str) -> Result<(i64, i64), String> {
    Ok((number(pinned)?, number(draining)?))
}

/// The module's use count, if it is loaded.
fn module_users() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/modules").ok()?;
    text.lines()
        .find(|l| l.starts_with("hyper_dmabuf "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
}

/// Runs `rmmod hyper_dmabuf`; its error output if it failed.
fn rmmod() -> Result<(), String> {
    let out = Command::new("rmmod")
        .arg("hyper_dmabuf")
        .output()
        .map_err(|e| format!("rmmod: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `unbind`: every device of this domain unbound (the caller has closed
/// its files); then `rmmod` must be refused.
pub(crate) fn unbind_all() -> Result<(), String> {
    let mut unbound = Vec::new();
    for dir in DRIVER_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for name in entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("hyper_dmabuf-"))
        {
            std::fs::write(Path::new(dir).join("unbind"), &name)
                .map_err(|e| format!("unbinding {name}: {e}"))?;
            unbound.push(name);
        }
    }
    println!("referee: unbound {}", unbound.join(" "));
    match rmmod() {
        Ok(()) => Err("rmmod hyper_dmabuf succeeded while the peer maps a grant".into()),
        Err(why) => {
            let users = module_users().ok_or("hyper_dmabuf is gone from /proc/modules")?;
            println!("referee: rmmod refused ({why}); module use count {users}");
            if users == 0 {
                Err("the module's use count is 0 while the peer maps a grant".into())
            } else {
                Ok(())
            }
        }
    }
}

/// `unloaded`: the module unloads now (retried while the last export
/// lets go of it), and is loaded again from `module`.
pub(crate) fn unload_and_reload(module: &Path) -> Result<(), String> {
    let deadline = Instant::now() + scaled(GAUGES_WITHIN);
    loop {
        match rmmod() {
            Ok(()) => break,
            Err(why) if Instant::now() >= deadline => {
                return Err(format!(
                    "rmmod still refused 10 s after the peer unmapped: {why} (use count {:?})",
                    module_users()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    println!("referee: rmmod hyper_dmabuf succeeded once the peer unmapped");
    let out = Command::new("insmod")
        .arg(module)
        .output()
        .map_err(|e| format!("insmod: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "insmod {}: {}",
            module.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let deadline = Instant::now() + scaled(GAUGES_WITHIN);
    while !Path::new(super::STATS).exists() {
        if Instant::now() >= deadline {
            return Err(format!("{} did not come back", super::STATS));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
