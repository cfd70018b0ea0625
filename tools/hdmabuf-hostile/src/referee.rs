//! `hdmabuf-hostile referee`: runs in the victim's domain, beside the
//! real driver, and judges each case of the hostile peer from there.
//!
//! The two work in lockstep through a xenstore mailbox (`xs::mailbox`):
//! the peer writes `<seq> <command>`, the referee answers `<seq> ok` or
//! `<seq> <why not>`. Commands:
//!
//! * `begin CASE [limited]` — note the driver's counters and the end of
//!   the kernel log; for a case whose lines go through the driver's rate
//!   limit (`limited`), first wait until the limit's window (printk's
//!   default: 10 lines per 5 s, shared by every peer) has passed since the
//!   last such line, so that the case's lines are not suppressed;
//! * `import ID ERRNO` — import the buffer as the victim's user space
//!   would; the ioctl must fail with ERRNO (`0`: succeed; the buffer is
//!   released at once);
//! * `end CASE PROTOCOL_ERRORS RING_ERRORS MIN MAX` — within 15 s the
//!   counters `protocol_errors` and `ring_errors` moved by exactly those
//!   amounts; between MIN and MAX kernel warning lines name the hostile
//!   domain; no line of the driver naming no domain at all appeared
//!   (printk's "callbacks suppressed" excepted; lines about the
//!   well-behaved peer are its own business) and no kernel defect report
//!   (`BUG`, `WARNING`, an oops); no buffer from the hostile domain is
//!   left. Other kernel warnings (a loaded host makes the clocksource
//!   watchdog complain) are not the driver's and are ignored;
//! * `done` — stop; the exit status says whether every case passed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use hdmabuf::sys::adopt_fd;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{self, ImportArgs, ListArgs, ListEntry, DEVICE_PATH};

use crate::ffi::{Arena, UserAddr};
use crate::xs::{mailbox, Xs};

const STATS: &str = "/sys/kernel/debug/hyper_dmabuf/stats";

/// How long the counters may take to settle after a case.
const SETTLE: Duration = Duration::from_secs(15);

/// printk's default rate-limit window (`DEFAULT_RATELIMIT_INTERVAL`),
/// with a margin.
const RATELIMIT_WINDOW: Duration = Duration::from_millis(5200);

/// The driver's rate-limited warnings (`ffi::log_ratelimited`).
const LIMITED: [&str; 4] = [
    "refused a request",
    "bad directory",
    "could not be mapped",
    "callbacks suppressed",
];

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
fn concerns_the_verdict(line: &str) -> bool {
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

fn stats() -> Result<BTreeMap<String, i64>, String> {
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
struct Kmsg(File);

impl Kmsg {
    fn open() -> Result<Self, String> {
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
    fn drain(&mut self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let (head, text) = rec.split_once(';').unwrap_or(("", &rec));
                    let prio: u32 = head
                        .split(',')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    let text = text.lines().next().unwrap_or("").to_string();
                    out.push(((prio & 7) as u8, text));
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
struct Referee {
    hostile: u16,
    dev: File,
    arena: Arena,
    kmsg: Kmsg,
    before: BTreeMap<String, i64>,
    /// When a rate-limited line was last seen.
    last_limited: Option<Instant>,
    failures: Vec<String>,
}

/// Judges the hostile peer in domain `hostile` until it says `done`.
pub(crate) fn run(hostile: u16, timeout: Duration) -> Result<(), String> {
    let mut xs = Xs::open()?;
    let (cmd, ack) = mailbox(hostile);
    xs.remove(&ack)?;
    let mut r = Referee {
        hostile,
        dev: OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE_PATH)
            .map_err(|e| format!("{DEVICE_PATH}: {e}"))?,
        arena: Arena::new(64 * 1024).map_err(|e| format!("arena: {e}"))?,
        kmsg: Kmsg::open()?,
        before: BTreeMap::new(),
        last_limited: None,
        failures: Vec::new(),
    };
    let deadline = Instant::now() + timeout;
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
            ["begin", case] => r.begin(case, false),
            ["begin", case, "limited"] => r.begin(case, true),
            ["import", id, errno] => r.import(id, errno),
            ["end", case, pe, re, min, max] => r.end(case, pe, re, min, max),
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

impl Referee {
    /// The kernel log since the last call, noting rate-limited lines.
    fn drain(&mut self) -> Vec<(u8, String)> {
        let lines = self.kmsg.drain();
        if lines
            .iter()
            .any(|(_, t)| LIMITED.iter().any(|l| t.contains(l)))
        {
            self.last_limited = Some(Instant::now());
        }
        lines
    }

    fn begin(&mut self, case: &str, limited: bool) -> Result<(), String> {
        self.drain();
        if let Some(seen) = self.last_limited.filter(|_| limited) {
            std::thread::sleep((seen + RATELIMIT_WINDOW).saturating_duration_since(Instant::now()));
        }
        self.before = stats()?;
        self.drain();
        println!("referee: begin {case}");
        Ok(())
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
        let got = match self
            .arena
            .ioctl(self.dev.as_fd(), uapi::IOCTL_IMPORT, UserAddr::Arena(0))
        {
            Ok(_) => {
                let mut out = [0u8; ImportArgs::SIZE];
                self.arena.read(0, &mut out);
                let fd = ImportArgs::decode(&out).map_err(|e| format!("{e:?}"))?.fd;
                // Released at once.
                drop(adopt_fd(fd).map_err(|e| format!("import returned fd {fd}: {e}"))?);
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
        self.arena
            .ioctl(self.dev.as_fd(), uapi::IOCTL_LIST, UserAddr::Arena(0))
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

    fn end(&mut self, case: &str, pe: &str, re: &str, min: &str, max: &str) -> Result<(), String> {
        let num = |s: &str| s.parse::<i64>().map_err(|_| format!("bad number {s:?}"));
        let (pe, re, min, max) = (num(pe)?, num(re)?, num(min)?, num(max)?);
        let deadline = Instant::now() + SETTLE;
        let delta = |now: &BTreeMap<String, i64>, before: &BTreeMap<String, i64>, k: &str| {
            now.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
        };
        let (mut dpe, mut dre, mut left);
        loop {
            let now = stats()?;
            dpe = delta(&now, &self.before, "protocol_errors");
            dre = delta(&now, &self.before, "ring_errors");
            left = self.leftovers()?;
            if (dpe, dre, left) == (pe, re, 0) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let lines = self.drain();
        let needles = [
            format!("dom{} ", self.hostile),
            format!("dom{}:", self.hostile),
            format!("hyper_dmabuf/{}/", self.hostile),
            format!("hyper_dmabuf-{}-", self.hostile),
        ];
        let warnings: Vec<&String> = lines
            .iter()
            .filter(|(level, _)| *level <= 4)
            .map(|(_, t)| t)
            .collect();
        let (ours, others): (Vec<&String>, Vec<&String>) = warnings
            .iter()
            .partition(|t| needles.iter().any(|n| t.contains(n.as_str())));
        let others: Vec<&String> = others
            .into_iter()
            .filter(|t| {
                concerns_the_verdict(t) && !t.contains("callbacks suppressed") && !names_a_domain(t)
            })
            .collect();
        for t in &ours {
            println!("referee: {case}: log: {t}");
        }
        let mut problems = Vec::new();
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
        let n = ours.len() as i64;
        if n < min || n > max {
            problems.push(format!(
                "{n} warning lines name domain {}, expected {min} to {max}",
                self.hostile
            ));
        }
        if !others.is_empty() {
            problems.push(format!("other warnings: {others:?}"));
        }
        println!(
            "referee: end {case}: protocol_errors +{dpe}, ring_errors +{dre}, {n} lines{}",
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

#[cfg(test)]
mod tests {
    use super::{concerns_the_verdict, names_a_domain};

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
