// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile trust`: the local trust model of docs/uapi.md ("Who
//! may do what"), checked from three open files of the device.
//!
//! * `A`, opened by root, exports a buffer to `--peer`: it owns the
//!   export.
//! * `D`, opened by root (an administrator's file), then kept by a process
//!   that dropped to uid `--nobody`: an open file is the capability, so it
//!   still sees and manages every export.
//! * `U`, opened by uid `--nobody` itself (the device is made 0666 for the
//!   moment): it may not see or manage `A`'s export — QUERY says `ENOENT`,
//!   LIST leaves it out, UNEXPORT is `EPERM`, and its exporter-side events
//!   never reach `U` — while the events about the peer reach it as they
//!   reach everyone.
//!
//! The unprivileged part runs in a child process started as root
//! (`trust-check`), which opens `D` before it drops its privileges.

use crate::limits::scaled;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_dmabuf_client::{Device, Error as DeviceError, ExportOptions, Udmabuf};
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType, QueryItem, DEVICE_PATH};
use hyper_dmabuf_common::xen::DomId;

use crate::ffi;

/// How long an event may take to arrive (the peer answers the unexport).
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// Arguments of `trust`.
#[derive(clap::Args)]
pub(crate) struct TrustArgs {
    /// A connected peer domain to export to.
    #[arg(long)]
    peer: u16,
    /// The unprivileged uid and gid.
    #[arg(long, default_value_t = 65534)]
    nobody: u32,
}

/// Arguments of `trust-check` (started by `trust`).
#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    /// The export of another file.
    #[arg(long)]
    hid: HyperDmabufId,
    /// The peer it is exported to.
    #[arg(long)]
    peer: u16,
    /// The unprivileged uid and gid.
    #[arg(long)]
    nobody: u32,
}

/// The whole check, from the exporting root process.
pub(crate) fn run(args: &TrustArgs) -> Result<(), String> {
    let owner = Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())?;
    let buffer = Udmabuf::with_contents(64 * 1024, |_, b| b.fill(0x3c))
        .map_err(|e| format!("udmabuf: {e}"))?;
    let peer = DomId::new(u32::from(args.peer)).map_err(|e| format!("--peer: {e}"))?;
    let hid = owner
        .export(&buffer, peer, &ExportOptions::new())
        .map_err(|e| e.to_string())?;
    println!("trust: file A exported {hid} to domain {}", args.peer);

    let mode = std::fs::metadata(DEVICE_PATH)
        .map_err(|e| format!("{DEVICE_PATH}: {e}"))?
        .permissions()
        .mode();
    let widen = |m: u32| {
        std::fs::set_permissions(DEVICE_PATH, std::fs::Permissions::from_mode(m))
            .map_err(|e| format!("chmod {DEVICE_PATH}: {e}"))
    };
    widen(0o666)?;
    let child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["trust-check", "--hid", &hid.to_string()])
        .args(["--peer", &args.peer.to_string()])
        .args(["--nobody", &args.nobody.to_string()])
        .status();
    widen(mode & 0o7777)?;
    let child = child.map_err(|e| format!("starting trust-check: {e}"))?;
    if !child.success() {
        return Err(format!("trust-check failed ({child})"));
    }
    // The delegated administrator's file unexported A's buffer: its owner
    // is told the grants ended, as an administrator's file was.
    wait_event(&owner, EventType::GrantsEnded, &hid)
        .map_err(|e| format!("file A (the owner): {e}"))?;
    println!("trust: file A (the owner) got GrantsEnded");
    Ok(())
}

/// The unprivileged part: `D` opened as root, then `U` as `--nobody`.
pub(crate) fn check(args: &CheckArgs) -> Result<(), String> {
    let delegated = Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())?;
    ffi::become_user(args.nobody, args.nobody)
        .map_err(|e| format!("setuid({}): {e}", args.nobody))?;
    let unprivileged = Device::open_path(DEVICE_PATH)
        .map_err(|e| format!("uid {} opening the (0666) device: {e}", args.nobody))?;
    let hid = &args.hid;
    let mut failures = Vec::new();
    let mut expect = |what: &str, ok: bool| {
        println!("trust: {what}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failures.push(what.to_string());
        }
    };

    // U: not its export, not visible, not its to revoke.
    expect(
        "U's QUERY of A's export is ENOENT",
        errno(unprivileged.query(hid, QueryItem::Size)) == libc::ENOENT,
    );
    let listed = |d: &Device| d.list().is_ok_and(|l| l.iter().any(|e| e.hid.matches(hid)));
    expect("U's LIST leaves A's export out", !listed(&unprivileged));
    expect(
        "U's UNEXPORT of A's export is EPERM",
        errno(unprivileged.unexport(hid, Duration::ZERO)) == libc::EPERM,
    );
    // The peer's events are everyone's: U's queue starts with it.
    let peer_seen = drain(&unprivileged).iter().any(|e| {
        e.kind == EventType::PeerConnected && u32::from(e.peer.get()) == u32::from(args.peer)
    });
    expect("U was told of the connected peer", peer_seen);

    // D: an administrator's file, kept after setuid, manages everything.
    expect(
        "D (root's file, now in uid nobody's hands) queries A's export",
        delegated.query(hid, QueryItem::Size).is_ok_and(|s| s > 0),
    );
    expect("D lists A's export", listed(&delegated));
    expect(
        "D unexports A's export",
        delegated.unexport(hid, Duration::ZERO).is_ok(),
    );
    expect(
        "D is told the grants ended",
        wait_event(&delegated, EventType::GrantsEnded, hid).is_ok(),
    );
    // By now every event about the export was posted: none reached U.
    let leaked: Vec<String> = drain(&unprivileged)
        .iter()
        .filter(|e| e.hid.is_some_and(|h| h.matches(hid)))
        .map(|e| format!("{:?}", e.kind))
        .collect();
    expect(
        &format!("U got no event of A's export (got {leaked:?})"),
        leaked.is_empty(),
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The errno a device call failed with (0: it succeeded).
fn errno<T>(r: Result<T, DeviceError>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// Every event queued for `dev` now.
fn drain(dev: &Device) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(Some(e)) = dev.try_next_event() {
        events.push(e);
    }
    events
}

/// Waits for an event `kind` about `hid` on `dev`.
fn wait_event(dev: &Device, kind: EventType, hid: &HyperDmabufId) -> Result<(), String> {
    let deadline = Instant::now() + scaled(EVENT_WAIT);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match dev.wait_event(Some(left.max(Duration::from_millis(1)))) {
            Ok(Some(e)) if e.kind == kind && e.hid.is_some_and(|h| h.matches(hid)) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "no {kind:?} for {hid} within {:?}",
        scaled(EVENT_WAIT)
    ))
}
