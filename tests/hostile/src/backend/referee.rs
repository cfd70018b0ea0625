// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile backend referee`: runs in the victim guest, beside the
//! real driver whose frontend the hostile backend attacks, and judges each
//! case from there.
//!
//! The two work in lockstep through the victim's mailbox
//! (`xs::mailbox(<victim>)`: the backend writes `<seq> <command>`, the
//! referee answers `<seq> ok` or `<seq> <why not>`). Commands:
//!
//! * `hello` — the referee is up (the victim's driver is loaded);
//! * `begin CASE` — note the driver's counters and the end of the kernel
//!   log; forget the previous case's exports; the good peer's device must
//!   be connected;
//! * `reprobe` — unbind the attacked device from the driver (if bound) and
//!   bind it again: a new frontend instance, Initialising (a frontend
//!   stopped by an error reconnects only so, docs/protocol.md section 7);
//! * `remove` — unbind it: the device's removal, as a detach or an unload
//!   does it;
//! * `import ID ERRNO` — import the buffer as the victim's user space
//!   would; the ioctl must fail with ERRNO (`0`: succeed; released at
//!   once);
//! * the exporter's commands of `referee/importer.rs` (`export`,
//!   `exported` (with the id, for an export that failed), `unexport`,
//!   `busy`, `drop`, `ended`), and `gauges PINNED
//!   DRAINING`, `hold NAME PINNED DRAINING`: how far `dmabufs_pinned` and
//!   `grants_draining` are above their values at `begin` (the victim
//!   exports to no one else, so they are exact);
//! * `end CASE PROTOCOL_ERRORS RING_ERRORS WARNINGS INFOS` — within 15 s
//!   `protocol_errors` and `ring_errors` moved by exactly those amounts,
//!   nothing imported from or exported to the hostile domain is left, the
//!   gauges are back where they were; the lines about the attacked device
//!   (naming it, `device/hyper_dmabuf/N:`, or the hostile domain) are at
//!   most WARNINGS warnings and INFOS others, and with the growth of
//!   `log_lines_suppressed` they add up to WARNINGS + INFOS, no more
//!   printed than the peer's budget allows (`referee::judge_lines`); no
//!   line names the good peer (its connection never flapped); no other
//!   warning of the driver, the grant table or XenBus, and no kernel
//!   defect report; the good peer's device is still connected;
//! * `done` — stop; the exit status says whether every case passed.

use crate::limits::scaled;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyper_dmabuf_client::Device;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::DEVICE_PATH;

use super::RefereeArgs;
use crate::referee::importer::{self, Exports};
use crate::referee::{concerns_the_verdict, judge_lines, stats, Kmsg, LineExpect, Lines};
use crate::xs::{Inbox, Xs};

/// How long the counters may take to settle after a case.
const SETTLE: Duration = Duration::from_secs(15);

/// Where the frontend driver lists its devices.
const FRONT_DRIVER: &str = "/sys/bus/xen/drivers/hyper_dmabuf";

/// The driver's view of every connection.
const RINGS: &str = "/sys/kernel/debug/hyper_dmabuf/rings";

/// Whether `line` names device `devid` of this domain
/// (`device/hyper_dmabuf/N:`, as the lines about a connection do).
fn names_device(line: &str, devid: u32) -> bool {
    line.contains(&format!("device/hyper_dmabuf/{devid}:"))
}

/// Whether `line` names domain `dom` (`domN` not followed by a digit, as
/// the lines about a peer's buffers and requests do).
fn names_domain(line: &str, dom: u16) -> bool {
    let domain = format!("dom{dom}");
    line.match_indices(&domain)
        .any(|(i, _)| !line[i + domain.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Whether the driver's `rings` file shows device `devid` connected to
/// domain `dom`, its ring not broken.
fn connected(rings: &str, dom: u16, devid: u32) -> bool {
    let head = format!("device/hyper_dmabuf/{devid}: dom{dom} ");
    rings
        .lines()
        .any(|l| l.starts_with(&head) && !l.contains("not connected") && !l.contains("broken"))
}

/// The errno an `ERRNO` word of `import` names.
fn import_errno(name: &str) -> Result<i32, String> {
    Ok(match name {
        "0" => 0,
        "ENOENT" => libc::ENOENT,
        "EIO" => libc::EIO,
        other => return Err(format!("unknown errno {other}")),
    })
}

/// The kernel log of a case, by whom each line is about.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sorted {
    /// Lines about the attacked device (level, text).
    hostile: Vec<(u8, String)>,
    /// Lines about the good peer's device: its connection flapped or
    /// broke. (Lines about its buffers are its own traffic's business:
    /// its stress revokes buffers while we map them.)
    good: Vec<String>,
    /// Warnings of the driver, Xen's grant table or XenBus naming neither
    /// peer, and kernel defect reports.
    others: Vec<String>,
}

impl Sorted {
    fn new(log: &[(u8, String)], hostile: (u16, u32), good: (u16, u32)) -> Self {
        let mut out = Sorted::default();
        for (level, text) in log {
            if names_device(text, hostile.1) || names_domain(text, hostile.0) {
                out.hostile.push((*level, text.clone()));
            } else if names_device(text, good.1) {
                if *level <= 6 {
                    out.good.push(text.clone());
                }
            } else if !names_domain(text, good.0) && *level <= 4 && concerns_the_verdict(text) {
                out.others.push(text.clone());
            }
        }
        out
    }

    /// The lines about the attacked device, counted as the referee of
    /// the hostile frontend counts them.
    fn count(&self, suppressed: i64) -> Lines {
        Lines::count(
            self.hostile.iter().map(|(l, t)| (*l, t.as_str())),
            suppressed,
        )
    }
}

/// The referee's state.
struct Judge<'a> {
    args: &'a RefereeArgs,
    control: Device,
    kmsg: Kmsg,
    before: BTreeMap<String, i64>,
    began: Instant,
    exports: Exports,
}

/// Judges the hostile backend of device `--devid` until it says `done`.
pub(crate) fn run(args: &RefereeArgs) -> Result<(), String> {
    let mut xs = Xs::open()?;
    let own = crate::own_domid()?;
    let mut inbox = Inbox::new(&mut xs, own)?;
    let mut judge = Judge {
        args,
        control: Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())?,
        kmsg: Kmsg::open()?,
        before: stats()?,
        began: Instant::now(),
        exports: Exports::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut failures = Vec::new();
    loop {
        let (seq, command) = inbox.next(&mut xs, deadline)?;
        let words: Vec<&str> = command.split_whitespace().collect();
        let hostile = args.peer;
        let verdict = match words.as_slice() {
            ["hello"] => Ok(()),
            ["begin", case] => judge.begin(case),
            ["reprobe"] => judge.unbind().and_then(|()| bind(args.devid)),
            ["remove"] => judge.unbind(),
            ["import", id, errno] => judge.import(id, errno),
            ["export", name, pages, seed] => judge.exports.export(hostile, name, pages, seed),
            ["exported", name, errno] => judge.exports.exported(name, errno),
            ["exported", name, errno, id] => judge.exports.exported_as(name, errno, Some(id)),
            ["unexport", name] => judge.exports.unexport(name),
            ["busy", name, v] => judge.exports.busy(name, v),
            ["drop", name] => judge.exports.drop_buffer(name),
            ["ended", name] => judge.exports.ended(name),
            ["gauges", pinned, draining] => judge.gauges(pinned, draining),
            ["hold", name, pinned, draining] => judge.hold(name, pinned, draining),
            ["end", case, pe, re, w, i] => judge.end(case, [pe, re, w, i]),
            ["done"] => {
                inbox.answer(&mut xs, seq, &Ok(()))?;
                break;
            }
            _ => Err(format!("unknown command {command:?}")),
        };
        if let Err(e) = &verdict {
            println!("referee: {command}: {e}");
            failures.push(format!("{command}: {e}"));
        }
        inbox.answer(&mut xs, seq, &verdict)?;
    }
    if failures.is_empty() {
        println!("referee: every case judged ok");
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Binds device `devid` to the frontend driver: a new instance.
fn bind(devid: u32) -> Result<(), String> {
    std::fs::write(
        format!("{FRONT_DRIVER}/bind"),
        format!("hyper_dmabuf-{devid}"),
    )
    .map_err(|e| format!("binding hyper_dmabuf-{devid}: {e}"))
}

impl Judge<'_> {
    fn begin(&mut self, case: &str) -> Result<(), String> {
        self.exports.close();
        self.good_connected()?;
        self.before = stats()?;
        self.kmsg.drain();
        self.began = Instant::now();
        println!("referee: begin {case}");
        Ok(())
    }

    /// The good peer's device is connected, its ring whole.
    fn good_connected(&self) -> Result<(), String> {
        let rings = std::fs::read_to_string(RINGS).map_err(|e| format!("{RINGS}: {e}"))?;
        if connected(&rings, self.args.good, self.args.good_devid) {
            Ok(())
        } else {
            Err(format!(
                "the good peer's device {} is not connected: {rings}",
                self.args.good_devid
            ))
        }
    }

    /// Unbinds the attacked device if the driver holds it (the call
    /// returns once the driver let go of it).
    fn unbind(&mut self) -> Result<(), String> {
        let name = format!("hyper_dmabuf-{}", self.args.devid);
        if !std::path::Path::new(&format!("{FRONT_DRIVER}/{name}")).exists() {
            return Ok(());
        }
        std::fs::write(format!("{FRONT_DRIVER}/unbind"), &name)
            .map_err(|e| format!("unbinding {name}: {e}"))
    }

    fn import(&mut self, id: &str, errno: &str) -> Result<(), String> {
        let hid: HyperDmabufId = id.parse().map_err(|e| format!("id {id}: {e:?}"))?;
        let want = import_errno(errno)?;
        let got = match self.control.import(&hid, false) {
            // Released at once.
            Ok(imported) => {
                drop(imported);
                0
            }
            Err(e) => e.raw_os_error().unwrap_or(-1),
        };
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "import of {hid} gave errno {got}, expected {errno}"
            ))
        }
    }

    /// How far a counter is above its value at `begin`.
    fn delta(&self, now: &BTreeMap<String, i64>, k: &str) -> i64 {
        now.get(k).copied().unwrap_or(0) - self.before.get(k).copied().unwrap_or(0)
    }

    /// `dmabufs_pinned` and `grants_draining` above their values at `begin`.
    fn held(&self) -> Result<(i64, i64), String> {
        let now = stats()?;
        Ok((
            self.delta(&now, "dmabufs_pinned"),
            self.delta(&now, "grants_draining"),
        ))
    }

    fn gauges(&mut self, pinned: &str, draining: &str) -> Result<(), String> {
        importer::await_gauges(|| self.held(), importer::pair(pinned, draining)?)
    }

    /// Two drain retries later, the gauges are still there and no
    /// `GrantsEnded` came for `name`.
    fn hold(&mut self, name: &str, pinned: &str, draining: &str) -> Result<(), String> {
        let want = importer::pair(pinned, draining)?;
        importer::hold();
        let got = self.held()?;
        if got != want {
            return Err(format!(
                "while the peer may map {name:?}: dmabufs_pinned and grants_draining moved \
                 by {got:?}, expected {want:?}"
            ));
        }
        self.exports.still_held(name)
    }

    /// Buffers exported to or imported from the hostile domain that the
    /// driver still lists.
    fn leftovers(&self) -> Result<usize, String> {
        Ok(self
            .control
            .list()
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|e| e.peer.get() == self.args.peer)
            .count())
    }

    fn end(&mut self, case: &str, expected: [&&str; 4]) -> Result<(), String> {
        let num = |s: &str| s.parse::<i64>().map_err(|_| format!("bad number {s:?}"));
        let [pe, re, warnings, infos] = expected.map(|s| num(s));
        let (pe, re, warnings, infos) = (pe?, re?, warnings?, infos?);
        let duration = self.began.elapsed();
        let hostile = (self.args.peer, self.args.devid);
        let good = (self.args.good, self.args.good_devid);
        let deadline = Instant::now() + scaled(SETTLE);
        let mut log = Vec::new();
        let (mut now, mut left, mut sorted, mut seen);
        loop {
            log.extend(self.kmsg.drain());
            now = stats()?;
            left = self.leftovers()?;
            sorted = Sorted::new(&log, hostile, good);
            seen = sorted.count(self.delta(&now, "log_lines_suppressed"));
            let settled = (
                self.delta(&now, "protocol_errors"),
                self.delta(&now, "ring_errors"),
                self.held()?,
                left,
                seen.warnings + seen.info + seen.suppressed,
            ) == (pe, re, (0, 0), 0, warnings + infos);
            if settled || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.exports.close();
        for (_, t) in &sorted.hostile {
            println!("referee: {case}: log: {t}");
        }
        let mut problems = Vec::new();
        for (what, got, want) in [
            ("protocol_errors", self.delta(&now, "protocol_errors"), pe),
            ("ring_errors", self.delta(&now, "ring_errors"), re),
            ("dmabufs_pinned", self.delta(&now, "dmabufs_pinned"), 0),
            ("grants_draining", self.delta(&now, "grants_draining"), 0),
            ("pages_leaked", self.delta(&now, "pages_leaked"), 0),
        ] {
            if got != want {
                problems.push(format!("{what} moved by {got}, expected {want}"));
            }
        }
        if left != 0 {
            problems.push(format!(
                "{left} buffers shared with domain {} are left",
                self.args.peer
            ));
        }
        let expect = LineExpect {
            warnings: (warnings, warnings),
            info: Some(infos),
            linux: 0,
        };
        problems.extend(judge_lines(&expect, &seen, duration));
        if !sorted.good.is_empty() {
            problems.push(format!("lines about the good peer: {:?}", sorted.good));
        }
        if !sorted.others.is_empty() {
            problems.push(format!("other warnings: {:?}", sorted.others));
        }
        if let Err(e) = self.good_connected() {
            problems.push(e);
        }
        let summary = format!(
            "protocol_errors +{}, ring_errors +{}, {} warnings and {} info lines printed, {} \
             suppressed",
            self.delta(&now, "protocol_errors"),
            self.delta(&now, "ring_errors"),
            seen.warnings,
            seen.info,
            seen.suppressed,
        );
        let why = problems.join("; ");
        println!(
            "referee: end {case}: {summary}{}{why}",
            if why.is_empty() { "" } else { ": " }
        );
        problems.is_empty().then_some(()).ok_or(why)
    }
}

#[cfg(test)]
mod tests {
    use super::{connected, names_device, names_domain, Sorted};

    #[test]
    fn lines_name_a_device_or_a_domain() {
        let line = "hyper_dmabuf: device/hyper_dmabuf/0: ReadBackendNodes failed: node versions";
        assert!(names_device(line, 0));
        assert!(!names_device(line, 1));
        assert!(!names_domain(line, 0));
        assert!(names_domain(
            "hyper_dmabuf: dom0: bad directory for buffer 5",
            0
        ));
        assert!(names_domain("x (3 earlier lines about dom0 suppressed)", 0));
        let good = "hyper_dmabuf: device/hyper_dmabuf/1: connected to dom12";
        assert!(!names_domain(good, 1));
        assert!(names_domain(good, 12));
    }

    #[test]
    fn lines_are_sorted_by_peer() {
        let log = [
            (
                4,
                "hyper_dmabuf: device/hyper_dmabuf/0: refused a request from dom0: x".into(),
            ),
            (
                6,
                "hyper_dmabuf: device/hyper_dmabuf/0: connected to dom0 (buffers)".into(),
            ),
            (
                6,
                "hyper_dmabuf: device/hyper_dmabuf/1: disconnected from dom2".into(),
            ),
            (
                4,
                "hyper_dmabuf: dom2: 3 of 3 grants could not be mapped (status -1)".into(),
            ),
            (
                4,
                "xen:grant_table: WARNING: g.e. 0x1a2 still in use!".into(),
            ),
            (4, "clocksource: timekeeping watchdog on CPU0".into()),
            (7, "xen:grant_table: deferring g.e. 0x1a2".into()),
        ];
        let sorted = Sorted::new(&log, (0, 0), (2, 1));
        assert_eq!(sorted.hostile.len(), 2);
        assert_eq!(sorted.good.len(), 1);
        assert_eq!(
            sorted.others,
            vec!["xen:grant_table: WARNING: g.e. 0x1a2 still in use!".to_string()]
        );
        let seen = sorted.count(3);
        assert_eq!((seen.warnings, seen.info, seen.suppressed), (1, 1, 3));
    }

    #[test]
    fn the_rings_file_tells_a_live_connection() {
        let rings = "device/hyper_dmabuf/0: dom0 not connected\n\
                     device/hyper_dmabuf/1: dom2 outstanding=0 waiters=0\n  we request: x\n";
        assert!(connected(rings, 2, 1));
        assert!(!connected(rings, 0, 0));
        assert!(!connected(
            "device/hyper_dmabuf/1: dom2 broken outstanding=0",
            2,
            1
        ));
        assert!(!connected(rings, 3, 1));
    }
}
