// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile referee`: runs in the victim's domain, beside the
//! real driver, and judges each case of the hostile peer from there.
//!
//! The two work in lockstep through a xenstore mailbox (`xs::mailbox`):
//! the peer writes `<seq> <command>`, the referee answers `<seq> ok` or
//! `<seq> <why not>`. Commands:
//!
//! * `begin CASE [quiet]` — note the driver's counters and the end of
//!   the kernel log; with `quiet`, first wait up to 400 s for the file
//!   `--quiet-after` to exist: the well-behaved peer is done sharing (the
//!   latency measurement wants it idle, and the unload takes its device
//!   away);
//! * `import ID ERRNO` — import the buffer as the victim's user space
//!   would; the ioctl must fail with ERRNO (`0`: succeed; the buffer is
//!   released at once);
//! * `end CASE PROTOCOL_ERRORS RING_ERRORS MIN MAX [info=I] [linux=L]
//!   [cycles=C ms=T]` — within 15 s the counters `protocol_errors` and
//!   `ring_errors` moved by exactly those amounts, `dmabufs_pinned` and
//!   `grants_draining` are back where they were, and no buffer from the
//!   hostile domain is left. Then the lines: every line the driver logs
//!   about a peer is charged to that peer's budget
//!   (`common::logbudget`), and past it only counted
//!   (`log_lines_suppressed`); so the case caused between MIN and MAX
//!   warning lines and exactly I info lines (connections,
//!   disconnections) about the hostile domain if the lines of the driver
//!   naming it that were printed, plus the growth of
//!   `log_lines_suppressed`, add up to between MIN + I and MAX + I; no
//!   more than MAX warnings and I info lines were printed, and all MIN
//!   warnings if nothing was suppressed; no more than the budget allows
//!   for the case's duration D (`LOG_BURST + ceil(D / LOG_REFILL_MS)`,
//!   plus one for a refill falling due as the window closes); exactly L
//!   warning lines of Linux's own (not the driver's, so not charged) name
//!   the domain; no line of the driver naming no domain at all appeared
//!   (lines about the well-behaved peer are its own business) and no
//!   kernel defect report (`BUG`, `WARNING`, an oops). Other kernel
//!   warnings (a loaded host makes the clocksource watchdog complain) are
//!   not the driver's and are ignored. Without `info=` the lines are not
//!   added up (the case unloaded the module, and its counter with it).
//!   With `cycles` and `ms` (the peer's reconnections and their time) the
//!   referee prints the figure `CASE: C cycles in T s, P lines logged, S
//!   suppressed`;
//! * `measure baseline|flood SECONDS` — measure for SECONDS what a local
//!   process and the well-behaved peer (`--good`) wait for
//!   (`latency.rs`), with the hostile peer idle, then while it floods; the
//!   flood's p99 must stay within [`LATENCY_FACTOR`] times the baseline's
//!   plus [`LATENCY_SLACK`];
//! * the hostile-importer commands of `referee/importer.rs` (`export`,
//!   `exported`, `unexport`, `busy`, `gauges`, `hold`, `drop`, `ended`,
//!   `unbind`, `unloaded`);
//! * the commands of `referee/imports.rs` (`map`, `verify`, `listed`,
//!   `unmap`), which keep the hostile peer's buffers imported and mapped
//!   across its sessions, and `imports IMPORTS PAGES DMABUFS`: within
//!   10 s `imports_live`, `pages_mapped` and `dmabufs_live` are that far
//!   above their values at `begin`;
//! * `done` — stop; the exit status says whether every case passed.

pub(crate) mod importer;
mod imports;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::logbudget::{LogBudget, Verdict, LOG_BURST, LOG_REFILL_MS};
use hyper_dmabuf_common::uapi::{self, ImportArgs, ListArgs, ListEntry, DEVICE_PATH};
use hyper_dmabuf_common::xen::DomId;

use crate::ffi::{Arena, UserAddr};
use crate::latency::{self, Figures, Spread};
use crate::limits::scaled;
use crate::xs::{mailbox, Xs};
use importer::Exports;
use imports::Imports;

/// `hdmabuf-hostile referee`'s arguments.
#[derive(clap::Args)]
pub(crate) struct RefereeArgs {
    /// The hostile peer's domain.
    #[arg(long)]
    domain: u16,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// A well-behaved peer, connected, whose round trips `measure` times.
    #[arg(long)]
    good: Option<u16>,
    /// A file that exists once the other peers are done sharing: cases
    /// begun with `quiet` wait for it.
    #[arg(long)]
    quiet_after: Option<PathBuf>,
    /// The module, for `unloaded` to load it again.
    #[arg(long)]
    module: Option<PathBuf>,
}

/// Why the device cannot be used.
const CLOSED: &str = "the device is closed (module unloaded)";

/// How long a `quiet` case waits for `--quiet-after`.
const QUIET_WITHIN: Duration = Duration::from_secs(400);

/// Under a flood, a p99 latency may be at most this many times the
/// baseline's...
const LATENCY_FACTOR: u32 = 10;
/// ...plus this.
const LATENCY_SLACK: Duration = Duration::from_millis(20);

const STATS: &str = "/sys/kernel/debug/hyper_dmabuf/stats";

/// How long the counters may take to settle after a case.
const SETTLE: Duration = Duration::from_secs(15);

/// How the driver's own lines begin (its module's name).
const DRIVER_PREFIX: &str = "hyper_dmabuf: ";

/// How long a case may wait for the hostile domain's budget to be full.
const BUDGET_WITHIN: Duration = Duration::from_secs(15);

/// How far the kernel log's clock, the driver's (jiffies) and
/// `/proc/uptime` may disagree.
const CLOCK_MARGIN_MS: u64 = 300;

/// Milliseconds since boot (`/proc/uptime`).
fn uptime_ms() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/uptime").map_err(|e| format!("/proc/uptime: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .ok_or_else(|| format!("/proc/uptime: {text:?}"))
}

/// Whether a log line names some domain (`domN`, `hyper_dmabuf/N/`,
/// `hyper_dmabuf-N-`).
fn names_a_domain(line: &str) -> bool {
    let follows_digit = |pat: &str| {
        line.match_indices(pat)
            .any(|(i, _)| line[i + pat.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    follows_digit("dom") || follows_digit("hyper_dmabuf/") || follows_digit("hyper_dmabuf-")
}

/// Whether a kernel log line is the driver's own or reports a kernel
/// defect, whoever caused it. The rest of the kernel's warnings (the
/// clocksource watchdog on a loaded host, say) are not the case's
/// business.
pub(crate) fn concerns_the_verdict(line: &str) -> bool {
    const DEFECTS: [&str; 8] = [
        "BUG",
        "WARNING:",
        "Oops",
        "RIP:",
        "Call Trace",
        "refcount_t:",
        "list_add corruption",
        "list_del corruption",
    ];
    // Grant-table and XenBus lines are about what the driver asked of Xen.
    const OURS: [&str; 3] = ["hyper_dmabuf", "xen:grant_table", "xenbus"];
    OURS.iter().any(|o| line.starts_with(o)) || DEFECTS.iter().any(|d| line.contains(d))
}

/// The counters of `hyper_dmabuf`'s debugfs `stats`, by name.
pub(crate) fn stats() -> Result<BTreeMap<String, i64>, String> {
    let text = std::fs::read_to_string(STATS).map_err(|e| format!("{STATS}: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// The kernel log from a point on (`/dev/kmsg`).
pub(crate) struct Kmsg(File);

impl Kmsg {
    pub(crate) fn open() -> Result<Self, String> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| format!("/dev/kmsg: {e}"))?;
        f.seek(SeekFrom::End(0))
            .map_err(|e| format!("/dev/kmsg: {e}"))?;
        Ok(Kmsg(f))
    }

    /// The records logged since the last call, as (level, text).
    pub(crate) fn drain(&mut self) -> Vec<(u8, String)> {
        self.drain_timed()
            .into_iter()
            .map(|(level, _, text)| (level, text))
            .collect()
    }

    /// The records logged since the last call, as (level, milliseconds
    /// since boot, text).
    fn drain_timed(&mut self) -> Vec<(u8, u64, String)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let (head, text) = rec.split_once(';').unwrap_or(("", &rec));
                    // prio,seq,usec,flags
                    let mut fields = head.split(',');
                    let prio: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let usec: u64 = fields.nth(1).and_then(|t| t.parse().ok()).unwrap_or(0);
                    let text = text.lines().next().unwrap_or("").to_string();
                    out.push(((prio & 7) as u8, usec / 1000, text));
                }
                // EPIPE: records were overwritten; read on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// The referee's state.
struct Referee<'a> {
    args: &'a RefereeArgs,
    hostile: u16,
    /// Our file of the device (closed while the module is unloaded).
    dev: Option<File>,
    arena: Arena,
    kmsg: Kmsg,
    before: BTreeMap<String, i64>,
    /// When the case began.
    began: Instant,
    /// The hostile-importer case's exports.
    exports: Exports,
    /// The case's imports, kept mapped.
    imports: Imports,
    /// The latency measured with the hostile peer idle.
    baseline: Option<Figures>,
    /// The driver's budget of lines about the hostile domain, as the
    /// lines it printed show it.
    budget: LogBudget,
    /// Lines about the hostile domain that earlier cases caused and the
    /// driver suppressed, not yet reported by a printed line.
    carry: i64,
    /// Whether the case began once the other peers were done (then every
    /// line suppressed is about the hostile domain).
    quiet: bool,
    failures: Vec<String>,
}

fn open_device() -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE_PATH)
        .map_err(|e| format!("{DEVICE_PATH}: {e}"))
}

/// Judges the hostile peer in domain `--domain` until it says `done`.
pub(crate) fn run(args: &RefereeArgs) -> Result<(), String> {
    let hostile = args.domain;
    let mut xs = Xs::open()?;
    let (cmd, ack) = mailbox(hostile);
    xs.remove(&ack)?;
    let mut r = Referee {
        args,
        hostile,
        dev: Some(open_device()?),
        arena: Arena::new(64 * 1024).map_err(|e| format!("arena: {e}"))?,
        kmsg: Kmsg::open()?,
        before: BTreeMap::new(),
        began: Instant::now(),
        exports: Exports::default(),
        imports: Imports::default(),
        baseline: None,
        budget: LogBudget::new(0),
        carry: 0,
        quiet: false,
        failures: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last_seq = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the hostile peer in domain {hostile} did not finish in time"
            ));
        }
        let value = xs.wait_for(&cmd, left, |v| {
            v.and_then(|v| v.split_once(' '))
                .and_then(|(s, _)| s.parse::<u64>().ok())
                .is_some_and(|s| s > last_seq)
        })?;
        let value = value.unwrap_or_default();
        let (seq, command) = value.split_once(' ').unwrap_or(("0", ""));
        last_seq = seq.parse().unwrap_or(last_seq + 1);
        let words: Vec<&str> = command.split_whitespace().collect();
        let verdict = match words.as_slice() {
            ["begin", case, flags @ ..] => r.begin(case, flags),
            ["import", id, errno] => r.import(id, errno),
            ["end", case, pe, re, min, max, extra @ ..] => r.end(case, [pe, re, min, max], extra),
            ["measure", what, seconds] => r.measure(what, seconds),
            ["export", name, pages, seed] => r.exports.export(hostile, name, pages, seed),
            ["exported", name, errno] => r.exports.exported(name, errno),
            ["exported", name, errno, hid] => r.exports.exported_as(name, errno, Some(hid)),
            ["unexport", name] => r.exports.unexport(name),
            ["busy", name, v] => r.exports.busy(name, v),
            ["gauges", pinned, draining] => r.gauges(pinned, draining),
            ["hold", name, pinned, draining] => r.hold(name, pinned, draining),
            ["drop", name] => r.exports.drop_buffer(name),
            ["ended", name] => r.exports.ended(name),
            ["map", name, id, seed, size] => r.imports.map(name, id, seed, size),
            ["verify", name] => r.imports.verify(name),
            ["listed", name, state] => r.imports.listed(hostile, name, state),
            ["unmap", name] => r.imports.unmap(name),
            ["imports", imports, pages, dmabufs] => r.imports_mapped([imports, pages, dmabufs]),
            ["unbind"] => r.unbind(),
            ["unloaded"] => r.unloaded(),
            ["done"] => {
                xs.write(&ack, &format!("{seq} ok"))?;
                break;
            }
            _ => Err(format!("unknown command {command:?}")),
        };
        let text = match verdict {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                println!("referee: {command}: {e}");
                r.failures.push(format!("{command}: {e}"));
                e
            }
        };
        xs.write(&ack, &format!("{seq} {text}"))?;
    }
    if r.failures.is_empty() {
        println!("referee: every case judged ok");
        Ok(())
    } else {
        Err(r.failures.join("\n"))
    }
}

impl Referee<'_> {
    /// Whether a line names the hostile domain.
    fn about(&self, line: &str) -> bool {
        let h = self.hostile;
        [
            format!("dom{h} "),
            format!("dom{h}:"),
            format!("hyper_dmabuf/{h}/"),
            format!("hyper_dmabuf-{h}-"),
        ]
        .iter()
        .any(|n| line.contains(n.as_str()))
    }

    /// The kernel log since the last call; the driver's lines about the
    /// hostile domain are charged to the copy of its budget.
    fn drain(&mut self) -> Vec<(u8, String)> {
        let lines = self.kmsg.drain_timed();
        for (_, ms, text) in &lines {
            if text.starts_with(DRIVER_PREFIX) && self.about(text) {
                self.budget.admit(*ms);
            }
        }
        lines.into_iter().map(|(l, _, t)| (l, t)).collect()
    }

    /// Waits until the hostile domain's budget is full again, so that the
    /// next case's lines are printed (at most [`LOG_BURST`] lines; a case
    /// that causes more is a flood, accounted for by the driver's counts
    /// of suppressed lines).
    fn await_full_budget(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + scaled(BUDGET_WITHIN);
        loop {
            self.drain();
            let now = uptime_ms()?.saturating_sub(CLOCK_MARGIN_MS);
            let mut b = self.budget;
            let tokens = (0..LOG_BURST)
                .take_while(|_| matches!(b.admit(now), Verdict::Print { .. }))
                .count();
            if tokens == LOG_BURST as usize {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the budget of lines about domain {} is not full after {} s ({tokens} lines)",
                    self.hostile,
                    scaled(BUDGET_WITHIN).as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn begin(&mut self, case: &str, flags: &[&str]) -> Result<(), String> {
        self.quiet = flags.contains(&"quiet");
        if self.quiet {
            self.await_quiet()?;
        }
        self.await_full_budget()?;
        self.exports.close();
        self.imports.clear();
        self.before = stats()?;
        self.drain();
        self.began = Instant::now();
        println!("referee: begin {case}");
        Ok(())
    }

    /// Waits for `--quiet-after` to exist.
    fn await_quiet(&self) -> Result<(), String> {
        let Some(flag) = &self.args.quiet_after else {
            return Ok(());
        };
        let deadline = Instant::now() + scaled(QUIET_WITHIN);
        while !flag.exists() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not appear within {} s",
                    flag.display(),
                    scaled(QUIET_WITHIN).as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// How far the counters `keys` are above their values at `begin`.
    fn above_begin<const N: usize>(&self, keys: [&str; N]) -> Result<[i64; N], String> {
        let now = stats()?;
        Ok(keys
            .map(|k| now.get(k).copied().unwrap_or(0) - self.before.get(k).copied().unwrap_or(0)))
    }

    /// How far `dmabufs_pinned` and `grants_draining` are above their
    /// values at `begin`.
    fn pinned_draining(&self) -> Result<(i64, i64), String> {
        let [pinned, draining] = self.above_begin(["dmabufs_pinned", "grants_draining"])?;
        Ok((pinned, draining))
    }

    /// `imports IMPORTS PAGES DMABUFS`.
    fn imports_mapped(&self, want: [&str; 3]) -> Result<(), String> {
        let want: Vec<i64> = want
            .iter()
            .map(|w| importer::number(w))
            .collect::<Result<_, _>>()?;
        let keys = ["imports_live", "pages_mapped", "dmabufs_live"];
        importer::await_values(
            "imports_live, pages_mapped and dmabufs_live moved by",
            || Ok(self.above_begin(keys)?.to_vec()),
            want,
        )
    }

    fn gauges(&mut self, pinned: &str, draining: &str) -> Result<(), String> {
        let want = importer::pair(pinned, draining)?;
        importer::await_gauges(|| self.pinned_draining(), want)
    }

    fn hold(&mut self, name: &str, pinned: &str, draining: &str) -> Result<(), String> {
        let want = importer::pair(pinned, draining)?;
        importer::hold();
        let got = self.pinned_draining()?;
        if got != want {
            return Err(format!(
                "while the peer maps {name:?}: dmabufs_pinned and grants_draining moved by \
                 {got:?}, expected {want:?}"
            ));
        }
        self.exports.still_held(name)
    }

    /// `unbind`: nothing of ours may hold the module.
    fn unbind(&mut self) -> Result<(), String> {
        self.exports.close_file();
        self.dev = None;
        importer::unbind_all()
    }

    /// `unloaded`: the gauges drop to zero, the module goes and comes
    /// back; the counters start again from the new module's.
    fn unloaded(&mut self) -> Result<(), String> {
        let module = self
            .args
            .module
            .clone()
            .ok_or("unloaded: the referee needs --module")?;
        importer::await_gauges(
            || {
                let now = stats()?;
                let get = |k: &str| now.get(k).copied().unwrap_or(0);
                Ok((get("dmabufs_pinned"), get("grants_draining")))
            },
            (0, 0),
        )?;
        // The module's counters go with it: these are the run's totals.
        let last = stats()?;
        let totals: Vec<String> = last.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("referee: counters before the unload: {}", totals.join(" "));
        if last.get("pages_leaked").copied().unwrap_or(0) != 0 {
            return Err("pages leaked before the unload".into());
        }
        importer::unload_and_reload(Path::new(&module))?;
        self.dev = Some(open_device()?);
        self.before = stats()?;
        Ok(())
    }

    /// `measure baseline|flood SECONDS`.
    fn measure(&mut self, what: &str, seconds: &str) -> Result<(), String> {
        let good = self.args.good.ok_or("measure: the referee needs --good")?;
        let good = DomId::new(u32::from(good)).map_err(|e| e.to_string())?;
        let seconds: u64 = seconds
            .parse()
            .map_err(|_| format!("bad number {seconds:?}"))?;
        let figures = latency::measure(good, Duration::from_secs(seconds))?;
        println!("referee: latency {what}: {figures}");
        match what {
            "baseline" => {
                self.baseline = Some(figures);
                Ok(())
            }
            "flood" => {
                let base = self
                    .baseline
                    .ok_or("measure flood before measure baseline")?;
                report_latency(&base, &figures)
            }
            _ => Err(format!("measure {what:?}: baseline or flood")),
        }
    }

    fn import(&mut self, id: &str, errno: &str) -> Result<(), String> {
        let hid: HyperDmabufId = id.parse().map_err(|e| format!("id {id}: {e:?}"))?;
        let want = match errno {
            "0" => 0,
            "ENOENT" => libc::ENOENT,
            "EIO" => libc::EIO,
            other => return Err(format!("unknown errno {other}")),
        };
        let record = ImportArgs {
            hid,
            flags: 0,
            fd: -1,
            size: 0,
        }
        .encode();
        self.arena.write(0, &record);
        let dev = self.dev.as_ref().ok_or(CLOSED)?.as_fd();
        let got = match self.arena.import(dev) {
            Ok(dmabuf) => {
                // Released at once.
                drop(dmabuf);
                0
            }
            Err(e) => e,
        };
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "import of {hid} gave errno {got}, expected {errno}"
            ))
        }
    }

    /// Buffers imported from the hostile domain that the driver still
    /// lists.
    fn leftovers(&mut self) -> Result<u32, String> {
        const DATA: usize = 4096;
        let capacity = ((64 * 1024 - DATA) / ListEntry::SIZE) as u32;
        let record = ListArgs {
            entries_ptr: self.arena.pointer(UserAddr::Arena(DATA)),
            capacity,
            count: 0,
        }
        .encode();
        self.arena.write(0, &record);
        let dev = self.dev.as_ref().ok_or(CLOSED)?.as_fd();
        self.arena
            .ioctl(dev, uapi::IOCTL_LIST, UserAddr::Arena(0))
            .map_err(|e| format!("LIST: errno {e}"))?;
        let mut out = [0u8; ListArgs::SIZE];
        self.arena.read(0, &mut out);
        let count = ListArgs::decode(&out).count.min(capacity);
        let mut n = 0;
        for i in 0..count as usize {
            let mut raw = [0u8; ListEntry::SIZE];
            self.arena.read(DATA + i * ListEntry::SIZE, &mut raw);
            if ListEntry::decode(&raw).is_ok_and(|e| e.peer.get() == self.hostile) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn end(&mut self, case: &str, expected: [&&str; 4], extra: &[&str]) -> Result<(), String> {
        let num = |s: &str| s.parse::<i64>().map_err(|_| format!("bad number {s:?}"));
        let [pe, re, min, max] = expected;
        let (pe, re, min, max) = (num(pe)?, num(re)?, num(min)?, num(max)?);
        let extra: BTreeMap<&str, i64> = extra
            .iter()
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("bad figure {kv:?}"))?;
                Ok((k, num(v)?))
            })
            .collect::<Result<_, String>>()?;
        let duration = self.began.elapsed();
        let deadline = Instant::now() + scaled(SETTLE);
        let delta = |now: &BTreeMap<String, i64>, before: &BTreeMap<String, i64>, k: &str| {
            now.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
        };
        let (mut dpe, mut dre, mut left, mut held, mut suppressed);
        loop {
            let now = stats()?;
            dpe = delta(&now, &self.before, "protocol_errors");
            dre = delta(&now, &self.before, "ring_errors");
            suppressed = delta(&now, &self.before, "log_lines_suppressed");
            held = (
                delta(&now, &self.before, "dmabufs_pinned"),
                delta(&now, &self.before, "grants_draining"),
            );
            left = self.leftovers()?;
            if (dpe, dre, left, held) == (pe, re, 0, (0, 0)) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.exports.close();
        self.imports.clear();
        let lines = self.drain();
        let about = |t: &str| self.about(t);
        let ours: Vec<&(u8, String)> = lines.iter().filter(|(_, t)| about(t)).collect();
        let others: Vec<&String> = lines
            .iter()
            .filter(|(level, t)| {
                *level <= 4 && !about(t) && concerns_the_verdict(t) && !names_a_domain(t)
            })
            .map(|(_, t)| t)
            .collect();
        for (_, t) in &ours {
            println!("referee: {case}: log: {t}");
        }
        let mut seen = Lines::count(ours.iter().map(|(l, t)| (*l, t.as_str())), suppressed);
        let expect = LineExpect {
            warnings: (min, max),
            info: extra.get("info").copied(),
            linux: extra.get("linux").copied().unwrap_or(0),
        };
        let mut problems = Vec::new();
        // What the driver suppressed of this case's lines, by its own
        // account: every printed line says how many lines about the
        // domain it suppressed since the last one printed.
        match expect.info {
            Some(info) => {
                let caused = max + info;
                let printed = seen.warnings + seen.info;
                if self.quiet && suppressed != caused - printed {
                    problems.push(format!(
                        "log_lines_suppressed grew by {suppressed}, but {} of the {caused} lines \
                         caused were not printed",
                        caused - printed
                    ));
                }
                if caused <= i64::from(LOG_BURST) {
                    // Begun with a full budget: the first line printed
                    // reports what earlier cases left, and no line of this
                    // case may be suppressed.
                    seen.suppressed = seen.reported - self.carry;
                    self.carry = 0;
                } else {
                    // A flood: what it leaves unreported is checked at the
                    // next case's first line.
                    seen.suppressed = caused - printed;
                    self.carry += caused - printed - seen.reported;
                    if self.carry < 0 {
                        problems.push(format!(
                            "the driver reported {} suppressed lines, more than were caused",
                            seen.reported
                        ));
                        self.carry = 0;
                    }
                }
            }
            None => {
                // The module was unloaded: its budgets went with it.
                self.carry = 0;
                self.budget = LogBudget::new(0);
            }
        }
        if dpe != pe {
            problems.push(format!("protocol_errors moved by {dpe}, expected {pe}"));
        }
        if dre != re {
            problems.push(format!("ring_errors moved by {dre}, expected {re}"));
        }
        if left != 0 {
            problems.push(format!(
                "{left} buffers from domain {} are left",
                self.hostile
            ));
        }
        problems.extend(judge_lines(&expect, &seen, duration));
        if !others.is_empty() {
            problems.push(format!("other warnings: {others:?}"));
        }
        if held != (0, 0) {
            problems.push(format!(
                "dmabufs_pinned and grants_draining are {held:?} above their values at begin"
            ));
        }
        if let (Some(cycles), Some(ms)) = (extra.get("cycles"), extra.get("ms")) {
            println!(
                "{case}: {cycles} cycles in {:.1} s, {} lines logged, {suppressed} suppressed",
                *ms as f64 / 1000.0,
                seen.warnings + seen.info,
            );
        }
        let n = seen.warnings;
        println!(
            "referee: end {case}: protocol_errors +{dpe}, ring_errors +{dre}, {n} warnings, \
             {} info lines, {} of Linux, {} suppressed ({suppressed} by any peer){}",
            seen.info,
            seen.linux,
            seen.suppressed,
            if problems.is_empty() {
                String::new()
            } else {
                format!(": {}", problems.join("; "))
            }
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The lines about the hostile domain a case must cause.
pub(crate) struct LineExpect {
    /// Fewest and most warnings of the driver.
    pub(crate) warnings: (i64, i64),
    /// Info lines of the driver (connections, disconnections); `None`:
    /// not added up.
    pub(crate) info: Option<i64>,
    /// Warnings of Linux's own, not charged to the budget.
    pub(crate) linux: i64,
}

/// The lines about the hostile domain a case caused.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// The driver's warnings printed.
    pub(crate) warnings: i64,
    /// The driver's info lines printed.
    pub(crate) info: i64,
    /// Linux's own warnings printed.
    pub(crate) linux: i64,
    /// Lines suppressed before them, as the printed lines report
    /// (`(N earlier lines about domD suppressed)`).
    pub(crate) reported: i64,
    /// Lines suppressed: the growth of `log_lines_suppressed` (every
    /// peer's), or the referee's own account for this domain.
    pub(crate) suppressed: i64,
}

impl Lines {
    /// Sorts `(level, text)` lines that name the domain.
    pub(crate) fn count<'a>(lines: impl Iterator<Item = (u8, &'a str)>, suppressed: i64) -> Self {
        let mut n = Lines {
            suppressed,
            ..Lines::default()
        };
        for (level, text) in lines {
            n.reported += reported(text);
            // The driver's lines carry its module's prefix; Linux's
            // (xenbus_dev_fatal) the driver and device names.
            match (text.starts_with(DRIVER_PREFIX), level <= 4) {
                (true, true) => n.warnings += 1,
                (true, false) => n.info += 1,
                (false, true) => n.linux += 1,
                (false, false) => {}
            }
        }
        n
    }
}

/// How many suppressed lines a printed line reports: the `N` of its
/// `(N earlier lines about domD suppressed)`.
fn reported(line: &str) -> i64 {
    line.strip_suffix(" suppressed)")
        .and_then(|head| head.rsplit_once(" ("))
        .and_then(|(_, tail)| tail.split_once(' '))
        .filter(|(_, rest)| rest.starts_with("earlier lines about dom"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

/// Whether the lines a case caused are those expected and within the
/// domain's budget for `duration`. The problems.
pub(crate) fn judge_lines(expect: &LineExpect, seen: &Lines, duration: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let (min, max) = expect.warnings;
    if seen.linux != expect.linux {
        problems.push(format!(
            "{} lines of Linux's own name the domain, expected {}",
            seen.linux, expect.linux
        ));
    }
    if seen.warnings > max {
        problems.push(format!(
            "{} warnings name the domain, expected at most {max}",
            seen.warnings
        ));
    }
    let printed = seen.warnings + seen.info;
    match expect.info {
        Some(info) => {
            if seen.info > info {
                problems.push(format!(
                    "{} info lines name the domain, expected at most {info}",
                    seen.info
                ));
            }
            let caused = printed + seen.suppressed;
            if caused < min + info || caused > max + info {
                problems.push(format!(
                    "{printed} lines printed and {} suppressed: the case caused {caused}, \
                     expected {} to {}",
                    seen.suppressed,
                    min + info,
                    max + info
                ));
            }
        }
        None if seen.warnings + seen.suppressed < min => problems.push(format!(
            "{} warnings and {} lines suppressed, expected at least {min} warnings",
            seen.warnings, seen.suppressed
        )),
        None => {}
    }
    if seen.suppressed == 0 && seen.warnings < min {
        problems.push(format!(
            "{} warnings name the domain and none was suppressed, expected at least {min}",
            seen.warnings
        ));
    }
    // LOG_BURST at once, one per LOG_REFILL_MS after, and one more for a
    // refill that falls due as the window closes.
    let refills = (duration.as_millis() as u64).div_ceil(LOG_REFILL_MS);
    let allowed = i64::from(LOG_BURST) + refills as i64 + 1;
    if printed > allowed {
        problems.push(format!(
            "{printed} lines about the domain in {:.1} s, its budget allows {allowed}",
            duration.as_secs_f64()
        ));
    }
    problems
}

/// Compares the latency under a flood with the baseline; prints the
/// lines the report quotes.
fn report_latency(base: &Figures, flood: &Figures) -> Result<(), String> {
    let mut problems = Vec::new();
    for (what, b, f) in [
        ("ioctl", &base.ioctl, &flood.ioctl),
        ("export", &base.export, &flood.export),
    ] {
        println!(
            "latency {what} p50={} p99={} max={} n={} (baseline p50={} p99={} max={} n={})",
            latency::ms(f.p50),
            latency::ms(f.p99),
            latency::ms(f.max),
            f.count,
            latency::ms(b.p50),
            latency::ms(b.p99),
            latency::ms(b.max),
            b.count
        );
        let bound = latency_bound(b);
        if f.p99 > bound {
            problems.push(format!(
                "{what} p99 {} under the flood, above {}",
                latency::ms(f.p99),
                latency::ms(bound)
            ));
        }
    }
    println!(
        "latency cpu: dom0 busy {:.1}% (kernel {:.1}%) under the flood with nothing else \
         running, baseline {:.1}% ({:.1}%); while measuring {:.1}% ({:.1}%), baseline {:.1}% \
         ({:.1}%)",
        flood.alone_busy_pct,
        flood.alone_kernel_pct,
        base.alone_busy_pct,
        base.alone_kernel_pct,
        flood.busy_pct,
        flood.kernel_pct,
        base.busy_pct,
        base.kernel_pct
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The most a flood may raise a p99 latency to.
fn latency_bound(base: &Spread) -> Duration {
    base.p99 * LATENCY_FACTOR + LATENCY_SLACK
}

#[cfg(test)]
mod tests {
    use super::{concerns_the_verdict, judge_lines, names_a_domain, LineExpect, Lines};
    use hyper_dmabuf_common::logbudget::{LOG_BURST, LOG_REFILL_MS};
    use std::time::Duration;

    fn flood(printed_info: i64, suppressed: i64) -> Lines {
        Lines {
            info: printed_info,
            suppressed,
            ..Lines::default()
        }
    }

    const RECONNECTS: LineExpect = LineExpect {
        warnings: (0, 0),
        info: Some(2002),
        linux: 0,
    };

    /// What the budget lets through in `secs` seconds, at the edge.
    fn allowed(secs: u64) -> i64 {
        i64::from(LOG_BURST) + (secs * 1000).div_ceil(LOG_REFILL_MS) as i64 + 1
    }

    #[test]
    fn a_flood_within_its_budget_passes() {
        let d = Duration::from_secs(30);
        let most = allowed(30);
        assert!(judge_lines(&RECONNECTS, &flood(most, 2002 - most), d).is_empty());
        assert!(judge_lines(&RECONNECTS, &flood(10, 1992), d).is_empty());
    }

    #[test]
    fn a_flood_over_its_budget_or_miscounted_fails() {
        let d = Duration::from_secs(30);
        let most = allowed(30);
        assert_eq!(
            judge_lines(&RECONNECTS, &flood(most + 1, 2001 - most), d).len(),
            1
        );
        assert_eq!(judge_lines(&RECONNECTS, &flood(16, 1900), d).len(), 1);
    }

    #[test]
    fn suppressed_warnings_count_but_printed_ones_must_be_due() {
        let five = LineExpect {
            warnings: (5, 5),
            info: Some(2),
            linux: 0,
        };
        let d = Duration::from_secs(2);
        let seen = |warnings, info, suppressed| Lines {
            warnings,
            info,
            linux: 0,
            reported: 0,
            suppressed,
        };
        // All printed; some suppressed; a line missing; one too many.
        assert!(judge_lines(&five, &seen(5, 2, 0), d).is_empty());
        assert!(judge_lines(&five, &seen(1, 1, 5), d).is_empty());
        assert!(!judge_lines(&five, &seen(4, 2, 0), d).is_empty());
        assert!(!judge_lines(&five, &seen(5, 2, 1), d).is_empty());
        assert!(!judge_lines(&five, &seen(6, 1, 0), d).is_empty());
    }

    #[test]
    fn lines_are_sorted_by_whose_they_are() {
        let lines = [
            (
                4,
                "hyper_dmabuf: backend/hyper_dmabuf/1/0: MapRingsAndBind failed: EINVAL",
            ),
            (
                6,
                "hyper_dmabuf: backend/hyper_dmabuf/1/0: connected to dom1",
            ),
            (
                3,
                "hyper_dmabuf hyper_dmabuf-1-0: 3 mapping in shared page 65500 from domain 1",
            ),
        ];
        let n = Lines::count(lines.into_iter(), 7);
        assert_eq!((n.warnings, n.info, n.linux, n.suppressed), (1, 1, 1, 7));
        let late = [(
            6,
            "hyper_dmabuf: backend/hyper_dmabuf/1/0: connected to dom1 (buffers up to 1 bytes) \
             (6 earlier lines about dom1 suppressed)",
        )];
        assert_eq!(Lines::count(late.into_iter(), 0).reported, 6);
    }

    #[test]
    fn platform_noise_is_not_the_drivers() {
        assert!(!concerns_the_verdict(
            "clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable"
        ));
        assert!(!concerns_the_verdict(
            "clocksource: Not enough CPUs to check clocksource 'tsc'."
        ));
        assert!(concerns_the_verdict(
            "hyper_dmabuf: xenstore: node version: bad"
        ));
        assert!(concerns_the_verdict(
            "xen:grant_table: g.e. 0x3a still in use!"
        ));
        assert!(concerns_the_verdict(
            "WARNING: CPU: 0 PID: 56 at mm/slub.c:1234"
        ));
        assert!(concerns_the_verdict(
            "BUG: unable to handle page fault for address"
        ));
    }

    #[test]
    fn lines_about_a_domain_are_recognised() {
        assert!(names_a_domain(
            "hyper_dmabuf: dom2: 3 of 3 grants could not be mapped (status -1)"
        ));
        assert!(names_a_domain(
            "hyper_dmabuf: backend/hyper_dmabuf/1/0: MapRingsAndBind failed: EINVAL"
        ));
        assert!(names_a_domain(
            "hyper_dmabuf hyper_dmabuf-1-0: 3 mapping in shared page 65500 from domain 1"
        ));
        assert!(!names_a_domain(
            "hyper_dmabuf: xenstore: node version: number with a leading zero"
        ));
        assert!(!names_a_domain("hyper_dmabuf: domain list empty"));
    }
}
