// SPDX-License-Identifier: MIT
//! The step state machine of one VM run, fed with console lines and time.
//!
//! Everything arrives on QEMU's serial line: Xen's lines (`(XEN) ...`),
//! dom0's console, and each domU's console streamed by dom0 as
//! `@[name] line`. The init scripts mark progress with
//! `@@HDM <event> <domain> [detail]` lines; each step runs from one marker
//! to the next under a hard time limit:
//!
//! | step          | from                        | to                          | limit        |
//! |---------------|-----------------------------|-----------------------------|--------------|
//! | `boot`        | QEMU start                  | `ready dom0`                | dom0-boot-timeout |
//! | `dom0 main`   | `begin dom0 main`           | `end dom0 main rc=N`        | timeout      |
//! | `create NAME` | `create NAME TYPE`          | `@[NAME] begin NAME main`   | boot-timeout |
//! | `NAME`        | `@[NAME] begin NAME main`   | `@[NAME] end NAME main rc=N`| timeout      |
//! | `wait NAME`   | `@[NAME] end NAME main ...` | `gone NAME`                 | 60 s         |
//!
//! (A `destroyed NAME` marker from dom0 ends the steps of a domU its
//! scenario destroyed on purpose, as passed.)
//! | `dom0 final`  | `begin dom0 final`          | `end dom0 final rc=N`       | timeout      |
//! | `shutdown`    | `done dom0 ...`             | QEMU exits                  | 60 s         |
//!
//! The first failure wins: a step over its limit, a non-zero `rc`, or a
//! report line in any log (see [`RULES`]: Xen's and Linux's crashes and
//! warnings, and every report of the debug kernel's checks), blamed on the
//! active step of the domain whose log has it, unless [`EXCLUSIONS`] lists
//! it as a known report of others' code.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::scenario::{DomainType, Scenario};

/// Whether a report means that a kernel or Xen died, or that a check
/// found a bug and the system went on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// An Oops, a panic, `BUG()`, a crashed domain: before any scenario
    /// code ran in that domain this may be a platform flake (see
    /// [`Monitor::platform_flake`]).
    Crash,
    /// A check of the debug kernel (lockdep, SLUB, list and VM checks,
    /// sleeping in atomic context, stalls) or a `WARNING`: a bug found
    /// where it happened, never retried.
    Check,
}

/// Where in a console line a rule looks.
#[derive(Clone, Copy, Debug)]
enum Match {
    /// Anywhere in the line.
    Anywhere(&'static str),
    /// Anywhere in the line, ASCII case ignored (given in lower case).
    AnywhereNoCase(&'static str),
    /// At the start of a message (see [`messages`]).
    Start(&'static str),
    /// At the start of a message that also contains the second text.
    StartWith(&'static str, &'static str),
    /// At the start of a message or right after a `": "` or `"[ "` in it,
    /// so after a prefix such as `watchdog: ` or `xen:grant_table: `.
    Tag(&'static str),
    /// [`Match::Tag`] followed by text that contains the second one
    /// (given in lower case; ASCII case ignored).
    TagWith(&'static str, &'static str),
    /// SLUB's `BUG <cache> (<taint>): <reason>` (mm/slub.c, `__slab_bug`).
    SlabBug,
    /// SLUB's `FIX <cache>: <action>` (mm/slub.c, `slab_fix`).
    SlabFix,
}

/// One kind of report line that fails a run.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The text a failure names, as in ``"`WARNING:` in the pv log: ..."``.
    pub name: &'static str,
    /// Crash or check.
    pub severity: Severity,
    how: Match,
}

const fn crash(name: &'static str, how: Match) -> Rule {
    Rule {
        name,
        severity: Severity::Crash,
        how,
    }
}

const fn check(name: &'static str, how: Match) -> Rule {
    Rule {
        name,
        severity: Severity::Check,
        how,
    }
}

/// What SLUB's `slab_fix()` says it did after a report (mm/slub.c).
const SLAB_FIXES: &[&str] = &[
    "Restoring ",
    "Isolate corrupted freechain",
    "Freelist cleared",
    "Number of objects adjusted",
    "Object count adjusted",
    "Marking all objects used",
    "Object at 0x",
];

/// The report lines that fail a run, from any log (Xen, dom0, each guest),
/// the first that matches naming the failure. The first lines of the
/// reports of Linux 6.12 (the debug kernel's `CONFIG_SLUB_DEBUG_ON`,
/// `PROVE_LOCKING`, `DEBUG_ATOMIC_SLEEP`, `DEBUG_LIST`, `DEBUG_SG`,
/// `DEBUG_VM`, `SCHED_STACK_END_CHECK`, and KASAN, KFENCE, UBSAN should
/// a build enable them) and of Xen 4.17, taken from their sources.
///
/// Most rules are anchored at the start of a message: after the line's
/// `@[name] `, `(XEN) ` or `(dN) ` prefix and the kernel's timestamp, or
/// after such a prefix or timestamp in the middle of a line (the consoles
/// share one serial line, so a line of one can land inside a line of
/// another). Prose that only mentions a report ("no BUG here", "a
/// WARNING: line") does not match. `panic`, `domain_crash` and `Triple
/// fault` match anywhere, `panic` in any case (Linux prints `Kernel
/// panic`, Xen `Panic on CPU`, Rust programs `panicked`).
pub const RULES: &[Rule] = &[
    // Xen (xen/arch/x86: hvm.c, traps.c; xen/common/bug.c). A domain Xen
    // crashed (`domain_crash called from ...`), an HVM/PVH guest that
    // crashed too early to print anything.
    crash(TRIPLE_FAULT, Match::Anywhere(TRIPLE_FAULT)),
    crash("domain_crash", Match::Anywhere("domain_crash")),
    crash("Xen BUG at", Match::Start("Xen BUG at ")),
    crash(
        "Assertion failed",
        Match::StartWith("Assertion '", "' failed at "),
    ),
    crash("FATAL TRAP", Match::Start("FATAL TRAP")),
    crash("FATAL PAGE FAULT", Match::Start("FATAL PAGE FAULT")),
    check("Xen WARN at", Match::Start("Xen WARN at ")),
    // Linux crashes: `Oops: <what>: <code> [#n]` (x86 `__die_header`;
    // other architectures `Internal error: Oops: `), `BUG()` (lib/bug.c),
    // the page-fault and stack-overflow headers of an Oops
    // (arch/x86/mm/fault.c, arch/x86/kernel/traps.c), other
    // architectures' fault header, the stack checks' panics.
    crash("Oops:", Match::Tag("Oops:")),
    crash("kernel BUG at", Match::Start("kernel BUG at ")),
    crash("kernel BUG at", Match::Start("Kernel BUG at ")),
    crash("BUG:", Match::TagWith("BUG:", " unable to handle ")),
    crash("BUG:", Match::TagWith("BUG:", "null pointer dereference")),
    crash("BUG:", Match::TagWith("BUG:", "stack guard page was hit")),
    crash(
        "Unable to handle kernel",
        Match::Start("Unable to handle kernel "),
    ),
    crash(
        "Kernel stack is corrupted",
        Match::Anywhere("stack-protector: Kernel stack is corrupted in"),
    ),
    crash(
        "corrupted stack end",
        Match::Anywhere("corrupted stack end detected inside scheduler"),
    ),
    // SLUB (mm/slub.c): `[<area> overwritten] 0x...-0x... @offset=N. First
    // byte 0x.. instead of 0x..` (check_bytes_and_report), then the report
    // `BUG <cache> (<taint>): <reason>` (object_err, slab_err, slab_bug),
    // then what it repaired: `FIX <cache>: <action>` (slab_fix).
    check("BUG <cache> (<taint>):", Match::SlabBug),
    check(
        "[<area> overwritten]",
        Match::StartWith("[", " overwritten] 0x"),
    ),
    check("FIX <cache>:", Match::SlabFix),
    // DEBUG_LIST (lib/list_debug.c), through CHECK_DATA_CORRUPTION: the
    // message, then a WARNING (or BUG with BUG_ON_DATA_CORRUPTION).
    check("list_add corruption", Match::Start("list_add corruption. ")),
    check("list_add double add", Match::Start("list_add double add: ")),
    check("list_del corruption", Match::Start("list_del corruption, ")),
    check("list_del corruption", Match::Start("list_del corruption. ")),
    // DEBUG_VM (mm/debug.c): a VM_BUG_ON_PAGE/FOLIO or VM_WARN_ON_*PAGE/
    // FOLIO dumps the page first; `Bad page state` (page_alloc.c) too.
    check(
        "page dumped because:",
        Match::Start("page dumped because: "),
    ),
    // lockdep (kernel/locking/lockdep.c) reports that say neither WARNING
    // nor BUG: at the start: an uninitialised lock, lockdep switching
    // itself off (its tables full: `BUG: MAX_... too low!`, at KERN_DEBUG),
    // lock debugging off after a taint (kernel/panic.c); the lock
    // debugging checks of mutexes, rt-mutexes, ww-mutexes and rwsems
    // (their message, then a WARNING).
    check(
        "INFO: trying to register non-static key",
        Match::Start("INFO: trying to register non-static key"),
    ),
    check(
        "turning off the locking correctness validator",
        Match::Start("turning off the locking correctness validator"),
    ),
    check(
        "Disabling lock debugging",
        Match::Start("Disabling lock debugging due to kernel taint"),
    ),
    check("DEBUG_LOCKS_WARN_ON", Match::Start("DEBUG_LOCKS_WARN_ON(")),
    check(
        "DEBUG_RWSEMS_WARN_ON",
        Match::Start("DEBUG_RWSEMS_WARN_ON("),
    ),
    // Hung tasks (kernel/hung_task.c), RCU stalls (kernel/rcu/
    // tree_stall.h, tree_exp.h with `rcu: `, tasks.h), lockups
    // (kernel/watchdog.c; soft lockups say `BUG:`).
    check(
        "INFO: task blocked",
        Match::TagWith("INFO:", "blocked for more than"),
    ),
    check("INFO: stall", Match::TagWith("INFO:", "stall")),
    check("hard LOCKUP", Match::Tag("Watchdog detected hard LOCKUP")),
    // UBSAN (lib/ubsan.c).
    check("UBSAN:", Match::Tag("UBSAN: ")),
    // A user program's #GP (`traps: prog[pid] general protection fault
    // ip:...`); the kernel's is an `Oops: general protection fault`.
    check(
        "general protection fault",
        Match::Anywhere("general protection fault"),
    ),
    // Everything else: `WARNING: CPU: n PID: n at file:line` (every WARN,
    // VM_WARN_ON, and the WARN_ON after each SLUB report), lockdep's
    // `WARNING: possible circular locking dependency detected` and the
    // like, `[ BUG: Invalid wait context ]`, and every `BUG: ...`: sleeping
    // in atomic context, scheduling while atomic, spinlock checks, bad page
    // state, bad rss-counter, bad page map, soft lockups, KASAN, KFENCE,
    // KCSAN, KMSAN, lockdep's full tables.
    check("WARNING:", Match::Tag("WARNING:")),
    check("BUG:", Match::Tag("BUG:")),
    // Last, so that a report naming a file or function with "panic" in it
    // keeps its own name and severity.
    crash("panic", Match::AnywhereNoCase("panic")),
];

/// Where Xen's guest debug output `(dN)` ends in `s`, if `s` starts so.
fn guest_debug_len(s: &str) -> Option<usize> {
    let digits = s.strip_prefix("(d")?;
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    (n > 0 && digits[n..].starts_with(')')).then_some(2 + n + 1)
}

/// Whether `t` is a kernel timestamp's number, `12.345678`.
fn is_seconds(t: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    t.split_once('.')
        .is_some_and(|(s, us)| digits(s) && digits(us))
}

/// The length of the timestamp in brackets `s` starts with: the kernel's
/// `[   12.345678]` (with `lenient`, also a caller id `[    T42]` and other
/// numeric brackets).
fn stamp_len(s: &str, lenient: bool) -> Option<usize> {
    let end = s.strip_prefix('[')?.find(']')?;
    let inner = s[1..=end].trim();
    let caller = inner
        .strip_prefix(['T', 'C'])
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let numeric = inner.bytes().any(|b| b.is_ascii_digit())
        && inner
            .bytes()
            .all(|b| b.is_ascii_digit() || b".:-".contains(&b));
    let ok = is_seconds(inner) || (lenient && (caller || numeric));
    ok.then_some(end + 2)
}

/// The message of `s`: without leading `(XEN)`/`(dN)` prefixes and
/// timestamps.
fn message_at(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("(XEN)") {
            s = rest;
        } else if let Some(n) = guest_debug_len(s).or_else(|| stamp_len(s, true)) {
            s = &s[n..];
        } else {
            return s;
        }
    }
}

/// The messages a console line (without its `@[name] ` prefix) may hold:
/// the one it starts with, and one after each `(XEN)`, `(dN)` or kernel
/// timestamp inside it (another console's line that landed in this one).
fn messages(text: &str) -> Vec<&str> {
    let mut out = vec![message_at(text)];
    for (i, c) in text.char_indices().skip(1) {
        let rest = &text[i..];
        let starts = match c {
            '[' => stamp_len(rest, false).is_some(),
            '(' => rest.starts_with("(XEN)") || guest_debug_len(rest).is_some(),
            _ => false,
        };
        if starts {
            out.push(message_at(rest));
        }
    }
    out
}

/// What follows `tag` in `m` where it starts `m` or follows `": "` or
/// `"[ "`.
fn after_tag<'a>(m: &'a str, tag: &str) -> Option<&'a str> {
    if let Some(rest) = m.strip_prefix(tag) {
        return Some(rest);
    }
    [": ", "[ "].iter().find_map(|sep| {
        m.match_indices(sep)
            .find_map(|(i, _)| m[i + sep.len()..].strip_prefix(tag))
    })
}

/// Whether `m` is SLUB's `BUG <cache> (Not tainted): ...` or
/// `BUG <cache> (Tainted: <flags>): ...`.
fn slab_bug(m: &str) -> bool {
    let Some((cache, rest)) = m.strip_prefix("BUG ").and_then(|r| r.split_once(" (")) else {
        return false;
    };
    let tainted = rest
        .strip_prefix("Tainted: ")
        .and_then(|r| r.split_once("): "))
        .is_some_and(|(flags, _)| !flags.contains(['(', ')']));
    !cache.is_empty() && !cache.contains(' ') && (rest.starts_with("Not tainted): ") || tainted)
}

/// Whether `m` is SLUB's `FIX <cache>: <action>`.
fn slab_fix(m: &str) -> bool {
    m.strip_prefix("FIX ")
        .and_then(|r| r.split_once(": "))
        .is_some_and(|(cache, action)| {
            !cache.is_empty()
                && !cache.contains(' ')
                && SLAB_FIXES.iter().any(|f| action.starts_with(f))
        })
}

impl Rule {
    fn matches_message(&self, m: &str) -> bool {
        match self.how {
            Match::Anywhere(_) | Match::AnywhereNoCase(_) => false,
            Match::Start(p) => m.starts_with(p),
            Match::StartWith(p, q) => m.starts_with(p) && m.contains(q),
            Match::Tag(t) => after_tag(m, t).is_some(),
            Match::TagWith(t, q) => {
                after_tag(m, t).is_some_and(|r| r.to_ascii_lowercase().contains(q))
            }
            Match::SlabBug => slab_bug(m),
            Match::SlabFix => slab_fix(m),
        }
    }

    fn matches(&self, text: &str, lower: &str, messages: &[&str]) -> bool {
        match self.how {
            Match::Anywhere(p) => text.contains(p),
            Match::AnywhereNoCase(p) => lower.contains(p),
            _ => messages.iter().any(|m| self.matches_message(m)),
        }
    }
}

/// The rule a console line's text (without its `@[name] ` prefix) matches
/// first, if any.
pub fn report(text: &str) -> Option<&'static Rule> {
    let lower = text.to_ascii_lowercase();
    let messages = messages(text);
    RULES.iter().find(|r| r.matches(text, &lower, &messages))
}

/// The name of the rule `text` matches, if any.
pub fn forbidden(text: &str) -> Option<&'static str> {
    report(text).map(|r| r.name)
}

/// The kind of domain whose log has a line, for [`Exclusion`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// Xen's own lines.
    Xen,
    /// dom0's console.
    Dom0,
    /// A PV domU's console.
    Pv,
    /// A PVH domU's console.
    Pvh,
}

/// Where the evidence of every exclusion is written.
pub const EVIDENCE: &str = "docs/security.md#known-reports-of-others-code";

/// A report of code that is not ours, understood and written down, that
/// does not fail a run: a line of a `domain` log that matches rule `rule`,
/// with `text` on that line or on one of the next [`REPORT_BODY_LINES`]
/// lines of that log (the report's body: a lockdep report names the code
/// in its lock lines, a warning in its call trace). The line is still
/// printed in the run's summary as `excluded: ...`.
#[derive(Clone, Copy, Debug)]
pub struct Exclusion {
    /// The [`Rule::name`] of the rule it silences; no other rule's.
    pub rule: &'static str,
    /// Exact text of the report (its matched line or its body): the fixed
    /// part that names the code (a function, a file and line), not just
    /// the report's kind.
    pub text: &'static str,
    /// The only kind of domain it applies to.
    pub domain: DomainKind,
    /// Why it is not our bug, in one line.
    pub reason: &'static str,
    /// Where its evidence is written: [`EVIDENCE`] and the entry's title.
    pub evidence: &'static str,
}

impl Exclusion {
    fn applies(&self, rule: &Rule, domain: Option<DomainKind>) -> bool {
        self.rule == rule.name && Some(self.domain) == domain
    }
}

/// How many further lines of its log may hold the text of an exclusion of
/// a report.
pub const REPORT_BODY_LINES: usize = 100;

/// How long the runner waits for the rest of a report an exclusion may
/// cover, before it fails the run.
pub const REPORT_BODY_WAIT: Duration = Duration::from_secs(3);

/// A report line, with the step and log it is blamed on.
#[derive(Clone, Debug)]
struct Report {
    source: Source,
    rule: &'static Rule,
    line: String,
    /// Where the line is in the serial log.
    serial_at: usize,
    at: Duration,
    step: String,
    log: Source,
}

/// A report that exclusions may still cover: their text may come in its
/// body.
#[derive(Clone, Debug)]
struct Pending {
    report: Report,
    candidates: Vec<&'static Exclusion>,
    lines_left: usize,
}

/// Reports of others' code that do not fail a run, each written down in
/// docs/security.md ("Known reports of others' code"). Empty: no report
/// has needed one.
pub const EXCLUSIONS: &[Exclusion] = &[];

/// How long to keep reading after a failure, to catch the rest of a
/// backtrace, before QEMU is killed. A guest's console reaches the serial
/// line through xenconsoled's log file and `tail -F`, which polls once a
/// second, so its last lines (an Oops before its death) may come seconds
/// after Xen's about the same moment.
pub const GRACE: Duration = Duration::from_secs(6);

/// How long dom0 may go with no step active before the run fails (this
/// and the two below at the scenario's time scale).
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);

const WAIT_LIMIT: Duration = Duration::from_secs(60);
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

/// Which log a console line belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The hypervisor (`(XEN)` lines and guest debug output `(dN)`).
    Xen,
    /// dom0's console.
    Dom0,
    /// A domU's console, streamed by dom0.
    Guest(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Xen => f.write_str("xen"),
            Source::Dom0 => f.write_str("dom0"),
            Source::Guest(name) => f.write_str(name),
        }
    }
}

/// The rule of an HVM guest's triple fault, as Xen says it.
const TRIPLE_FAULT: &str = "Triple fault";

/// How Xen's own console lines begin.
const XEN_PREFIX: &str = "(XEN) ";

/// Splits a serial line into its source and its text.
pub fn classify(line: &str) -> (Source, &str) {
    if let Some(rest) = line.strip_prefix("@[") {
        if let Some((name, text)) = rest.split_once("] ") {
            return (Source::Guest(name.to_string()), text);
        }
        if let Some(name) = rest.strip_suffix(']') {
            return (Source::Guest(name.to_string()), "");
        }
    }
    let is_guest_debug =
        line.starts_with("(d") && line[2..].chars().take_while(char::is_ascii_digit).count() > 0;
    if line.starts_with("(XEN)") || is_guest_debug {
        (Source::Xen, line)
    } else {
        (Source::Dom0, line)
    }
}

/// A Xen line's `dNvM` vCPU tag, if it has one.
fn vcpu_tag(text: &str) -> Option<&str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| {
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            word.strip_prefix('d')
                .and_then(|w| w.split_once('v'))
                .is_some_and(|(dom, vcpu)| digits(dom) && digits(vcpu))
        })
}

/// The domain id of a Xen line's `dNvM` vCPU tag, if it has one.
fn vcpu_domid(text: &str) -> Option<u32> {
    let (dom, _) = vcpu_tag(text)?.strip_prefix('d')?.split_once('v')?;
    dom.parse().ok()
}

/// A failure the platform, not our code, most likely caused: the run is
/// booted again (tests/vm/README.md, "Platform flakes").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flake {
    /// Xen, dom0 or a domU crashed before any scenario code ran there.
    BeforeScenario(String),
    /// A PVH guest triple-faulted with no report on its console, possibly
    /// after its scenario started.
    PvhTripleFault(String),
    /// The same, with Xen's own registers in the guest's dump: QEMU's.
    EmulationFault(String),
}

impl fmt::Display for Flake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flake::BeforeScenario(what)
            | Flake::PvhTripleFault(what)
            | Flake::EmulationFault(what) => f.write_str(what),
        }
    }
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Name of the failed step.
    pub step: String,
    /// What went wrong, one line.
    pub reason: String,
    /// The log to show with the failure.
    pub log: Source,
    /// Time of the failure since QEMU started.
    pub at: Duration,
    /// The report that failed the run; none for a failure of another kind
    /// (a time limit, a scenario's exit status).
    pub report: Option<FailedReport>,
}

impl Failure {
    /// Whether it is a report of [`Severity::Crash`].
    pub fn crash(&self) -> bool {
        self.report.is_some_and(|r| r.severity == Severity::Crash)
    }
}

/// The report line that failed a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedReport {
    /// Its rule's name.
    pub rule: &'static str,
    /// Its rule's severity.
    pub severity: Severity,
    /// Where the line is in the serial log.
    pub serial_at: usize,
}

#[derive(Clone, Debug)]
struct Step {
    name: String,
    started: Duration,
    limit: Duration,
    source: Source,
}

/// A finished step and how long it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Step name.
    pub step: String,
    /// Wall time from its start marker to its end marker.
    pub took: Duration,
}

/// The state of one VM run.
#[derive(Debug)]
pub struct Monitor {
    timeout: Duration,
    boot_timeout: Duration,
    time_scale: u32,
    domains: Vec<String>,
    guest_types: Vec<(String, DomainType)>,
    exclusions: &'static [Exclusion],
    pending: Vec<Pending>,
    active: Vec<Step>,
    idle_since: Option<Duration>,
    passed: Vec<String>,
    gone: Vec<String>,
    domids: Vec<(u32, String)>,
    done: bool,
    exited: bool,
    /// Steps finished so far, in order.
    pub timings: Vec<Timing>,
    /// The first failure.
    pub failure: Option<Failure>,
    /// Failures after the first one (for the report only).
    pub later_failures: Vec<String>,
    /// Report lines [`EXCLUSIONS`] let pass, with the exclusion's reason
    /// and evidence (for the summary).
    pub excluded: Vec<String>,
    /// Every serial line, as received.
    pub serial: Vec<String>,
    /// Lines per source.
    pub logs: BTreeMap<Source, Vec<String>>,
    /// Progress messages not yet printed.
    pub news: Vec<String>,
}

impl Monitor {
    /// A run of `scenario`, QEMU started at time zero.
    pub fn new(scenario: &Scenario) -> Self {
        let mut m = Monitor {
            timeout: scenario.timeout,
            boot_timeout: scenario.boot_timeout,
            time_scale: scenario.time_scale,
            domains: scenario.domains.iter().map(|d| d.name.clone()).collect(),
            guest_types: scenario
                .domains
                .iter()
                .map(|d| (d.name.clone(), d.kind))
                .collect(),
            exclusions: EXCLUSIONS,
            pending: Vec::new(),
            active: Vec::new(),
            idle_since: None,
            passed: Vec::new(),
            gone: Vec::new(),
            domids: Vec::new(),
            done: false,
            exited: false,
            timings: Vec::new(),
            failure: None,
            later_failures: Vec::new(),
            excluded: Vec::new(),
            serial: Vec::new(),
            logs: BTreeMap::new(),
            news: Vec::new(),
        };
        m.start(
            Duration::ZERO,
            "boot",
            scenario.dom0_boot_timeout,
            Source::Dom0,
        );
        m
    }

    /// One of the runner's fixed limits at the scenario's time scale.
    fn scaled(&self, limit: Duration) -> Duration {
        limit * self.time_scale / 100
    }

    fn start(&mut self, now: Duration, name: &str, limit: Duration, source: Source) {
        self.idle_since = None;
        self.active.push(Step {
            name: name.to_string(),
            started: now,
            limit,
            source,
        });
    }

    fn end(&mut self, now: Duration, name: &str) {
        if let Some(i) = self.active.iter().position(|s| s.name == name) {
            let step = self.active.remove(i);
            let took = now.saturating_sub(step.started);
            if self.failure.is_none() {
                self.news
                    .push(format!("step {name}: ok ({:.1} s)", took.as_secs_f64()));
            }
            self.timings.push(Timing {
                step: step.name,
                took,
            });
        }
        if self.active.is_empty() {
            self.idle_since = Some(now);
        }
    }

    /// Records a failure of `step`; only the first one counts.
    pub fn fail(&mut self, now: Duration, step: &str, reason: String, log: Source) {
        self.record(now, step, reason, log, None);
    }

    fn record(
        &mut self,
        now: Duration,
        step: &str,
        reason: String,
        log: Source,
        report: Option<FailedReport>,
    ) {
        if self.failure.is_none() {
            self.news.push(format!("step {step}: FAILED: {reason}"));
            self.failure = Some(Failure {
                step: step.to_string(),
                reason,
                log,
                at: now,
                report,
            });
        } else {
            self.later_failures.push(format!("{step}: {reason}"));
        }
    }

    /// The domU a Xen line is about (`d2v0`, `(d2)`, `Dom2`, `Domain 2`).
    ///
    /// A line about a vCPU (`dNvM`) of a domain whose id dom0 has not
    /// reported yet is about the domain dom0 is creating: a guest can crash
    /// between its unpause and dom0's `created` marker.
    fn xen_line_domain(&self, text: &str) -> Option<Source> {
        let known = self.domids.iter().find_map(|(id, name)| {
            let tags = [
                format!("d{id}v"),
                format!("(d{id})"),
                format!(" d{id} "),
                format!("Dom{id} "),
                format!("Domain {id} "),
            ];
            tags.iter()
                .any(|t| text.contains(t.as_str()))
                .then(|| Source::Guest(name.clone()))
        });
        known.or_else(|| {
            vcpu_domid(text)?;
            self.active.iter().rev().find_map(|s| {
                let dom = s.name.strip_prefix("create ")?;
                let unknown = !self.domids.iter().any(|(_, n)| n == dom);
                unknown.then(|| Source::Guest(dom.to_string()))
            })
        })
    }

    /// The active step a line of `source` is blamed on.
    fn blame(&self, source: &Source) -> (String, Source) {
        if let Some(s) = self.active.iter().rev().find(|s| &s.source == source) {
            return (s.name.clone(), source.clone());
        }
        match (source, self.active.last()) {
            (Source::Guest(name), _) => (name.clone(), source.clone()),
            (_, Some(s)) => (s.name.clone(), source.clone()),
            (_, None) => ("dom0".to_string(), source.clone()),
        }
    }

    /// Feeds one serial line (without its line ending) received at `now`.
    ///
    /// Xen writes to the serial port itself, between dom0's writes, so one
    /// of its lines can start in the middle of a line of dom0's or of a
    /// guest's dom0 relays (`...disconnected from dom0(XEN) d2v0 Triple
    /// fault`): the line is cut there, and each part is read as its own.
    pub fn line(&mut self, now: Duration, raw: &str) {
        if let Some(at) = raw.find(XEN_PREFIX).filter(|&at| at > 0) {
            self.one_line(now, &raw[..at]);
            self.one_line(now, &raw[at..]);
        } else {
            self.one_line(now, raw);
        }
    }

    fn one_line(&mut self, now: Duration, raw: &str) {
        self.serial.push(raw.to_string());
        let (source, text) = classify(raw);
        self.logs
            .entry(source.clone())
            .or_default()
            .push(text.to_string());
        self.follow_reports(&source, text);
        if let Some(rule) = report(text) {
            self.reported(now, &source, text, rule);
        }
        if let Some(marker) = text.trim().strip_prefix("@@HDM ") {
            let words: Vec<&str> = marker.split_whitespace().collect();
            self.marker(now, &source, &words);
        }
    }

    /// The kind of domain whose log `source` is.
    fn domain_kind(&self, source: &Source) -> Option<DomainKind> {
        match source {
            Source::Xen => Some(DomainKind::Xen),
            Source::Dom0 => Some(DomainKind::Dom0),
            Source::Guest(name) => {
                self.guest_types
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| match t {
                        DomainType::Pv => DomainKind::Pv,
                        DomainType::Pvh => DomainKind::Pvh,
                    })
            }
        }
    }

    /// A line of `source` matched `rule`: the run fails, unless an
    /// exclusion covers the report (if one may, once its body is read).
    fn reported(&mut self, now: Duration, source: &Source, text: &str, rule: &'static Rule) {
        let about = match source {
            Source::Xen => self.xen_line_domain(text).unwrap_or(Source::Xen),
            _ => source.clone(),
        };
        let (step, log) = self.blame(&about);
        let report = Report {
            source: source.clone(),
            rule,
            line: text.trim().to_string(),
            serial_at: self.serial.len().saturating_sub(1),
            at: now,
            step,
            log,
        };
        let kind = self.domain_kind(source);
        let candidates: Vec<&'static Exclusion> = self
            .exclusions
            .iter()
            .filter(|e| e.applies(rule, kind))
            .collect();
        if let Some(e) = candidates.iter().find(|e| text.contains(e.text)) {
            self.exclude(&report, e);
        } else if candidates.is_empty() {
            self.fail_report(report);
        } else {
            self.pending.push(Pending {
                report,
                candidates,
                lines_left: REPORT_BODY_LINES,
            });
        }
    }

    /// Reads a line of `source` as the body of the reports waiting for it.
    fn follow_reports(&mut self, source: &Source, text: &str) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if &p.report.source != source {
                i += 1;
                continue;
            }
            if let Some(e) = p.candidates.iter().copied().find(|e| text.contains(e.text)) {
                let p = self.pending.remove(i);
                self.exclude(&p.report, e);
                continue;
            }
            p.lines_left -= 1;
            // A warning's or an Oops' report ends with its end marker.
            if p.lines_left == 0 || text.contains("---[ end trace ") {
                let p = self.pending.remove(i);
                self.fail_report(p.report);
                continue;
            }
            i += 1;
        }
    }

    /// Fails the run for the reports that waited long enough (all of them
    /// with `all`).
    fn settle_reports(&mut self, now: Duration, all: bool) {
        let (due, wait): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| all || now >= p.report.at + REPORT_BODY_WAIT);
        self.pending = wait;
        for p in due {
            self.fail_report(p.report);
        }
    }

    fn exclude(&mut self, r: &Report, e: &Exclusion) {
        self.excluded.push(format!(
            "`{}` in the {} log: {} ({}; {})",
            r.rule.name, r.source, r.line, e.reason, e.evidence
        ));
    }

    fn fail_report(&mut self, r: Report) {
        let reason = format!("`{}` in the {} log: {}", r.rule.name, r.source, r.line);
        let report = FailedReport {
            rule: r.rule.name,
            severity: r.rule.severity,
            serial_at: r.serial_at,
        };
        self.record(r.at, &r.step, reason, r.log, Some(report));
    }

    fn rc_of<'a>(words: &[&'a str]) -> Option<&'a str> {
        words.iter().find_map(|w| w.strip_prefix("rc="))
    }

    fn marker(&mut self, now: Duration, source: &Source, words: &[&str]) {
        let (event, dom) = match words {
            [event, dom, ..] => (*event, *dom),
            _ => return,
        };
        let detail = words.get(2).copied().unwrap_or("");
        match (source, event) {
            (Source::Dom0, "ready") => self.end(now, "boot"),
            (Source::Dom0, "begin") => {
                let name = format!("dom0 {detail}");
                self.start(now, &name, self.timeout, Source::Dom0);
            }
            (Source::Dom0, "end") => {
                let name = format!("dom0 {detail}");
                match Self::rc_of(words) {
                    Some("0") => self.end(now, &name),
                    rc => {
                        let rc = rc.unwrap_or("?").to_string();
                        self.fail(
                            now,
                            &name,
                            format!("scenario exited with rc={rc}"),
                            Source::Dom0,
                        );
                    }
                }
            }
            (Source::Dom0, "create") => {
                let name = format!("create {dom}");
                self.start(
                    now,
                    &name,
                    self.boot_timeout,
                    Source::Guest(dom.to_string()),
                );
            }
            (Source::Dom0, "create-failed") => {
                let reason = format!("xl create of {dom} failed");
                self.fail(now, &format!("create {dom}"), reason, Source::Dom0);
            }
            (Source::Dom0, "timeout") => {
                let reason = format!("dom0 gave up waiting for {dom} and destroyed it");
                self.fail(now, dom, reason, Source::Guest(dom.to_string()));
            }
            (Source::Dom0, "created") => {
                if let Some(id) = words.get(2).and_then(|w| w.parse().ok()) {
                    self.domids.push((id, dom.to_string()));
                }
            }
            // dom0's scenario destroyed a domU on purpose (a peer-death
            // test): its step ends there, as passed.
            (Source::Dom0, "destroyed") => {
                self.end(now, &format!("create {dom}"));
                self.end(now, dom);
                if !self.passed.iter().any(|p| p == dom) {
                    self.passed.push(dom.to_string());
                }
            }
            (Source::Dom0, "gone") => {
                self.gone.push(dom.to_string());
                self.end(now, &format!("wait {dom}"));
            }
            (Source::Dom0, "done") => {
                self.done = true;
                if detail != "scenario" {
                    let reason = format!("dom0's init stopped early ({detail})");
                    self.fail(now, "boot", reason, Source::Dom0);
                }
                self.start(now, "shutdown", self.scaled(SHUTDOWN_LIMIT), Source::Dom0);
            }
            (Source::Guest(g), "begin") if g == dom => {
                self.end(now, &format!("create {dom}"));
                self.start(now, dom, self.timeout, source.clone());
            }
            (Source::Guest(g), "end") if g == dom => {
                match Self::rc_of(words) {
                    Some("0") => {
                        self.end(now, dom);
                        self.passed.push(dom.to_string());
                    }
                    rc => {
                        let rc = rc.unwrap_or("?").to_string();
                        self.fail(
                            now,
                            dom,
                            format!("scenario exited with rc={rc}"),
                            source.clone(),
                        );
                    }
                }
                // The stream of a guest's console lags behind dom0's own
                // lines: dom0 may have seen the domain go already.
                if !self.gone.iter().any(|g| g == dom) {
                    let limit = self.scaled(WAIT_LIMIT);
                    self.start(now, &format!("wait {dom}"), limit, Source::Dom0);
                }
            }
            _ => {}
        }
    }

    /// If the run failed because something crashed where the platform,
    /// not our code, is the likely cause, what it was: Xen or dom0 before
    /// dom0's init was up, or a domU before its init started the scenario
    /// ([`Flake::BeforeScenario`]); or a PVH guest's triple fault at any
    /// step, with no report on its console and its own dump after Xen's
    /// line ([`Flake::EmulationFault`] if that dump shows Xen's registers,
    /// [`Flake::PvhTripleFault`] otherwise).
    /// Timeouts, warnings, the reports of the debug kernel's checks
    /// ([`Severity::Check`]) and failures of scenario code never count.
    pub fn platform_flake(&self) -> Option<Flake> {
        let f = self.failure.as_ref().filter(|f| f.crash())?;
        if f.step == "boot" || f.step.starts_with("create ") {
            return Some(Flake::BeforeScenario(format!(
                "step `{}`: {}",
                f.step, f.reason
            )));
        }
        let dump = self.pvh_triple_fault(f)?;
        // Xen's own code segment in a guest's dump: QEMU ran Xen's code
        // in the guest's context (the fetch faulted at Xen's RIP, `cr2`
        // equal to it), which no guest can cause.
        let in_xen = dump.iter().any(|l| l.contains("cs: e008"));
        let what = format!(
            "step `{}`: {} (a PVH guest's triple fault, no report on its console{})",
            f.step,
            f.reason,
            if in_xen { ", Xen's registers" } else { "" }
        );
        Some(if in_xen {
            Flake::EmulationFault(what)
        } else {
            Flake::PvhTripleFault(what)
        })
    }

    /// If failure `f` is a PVH guest's triple fault that nothing of the
    /// guest's own explains, Xen's dump of that vCPU. Under QEMU TCG's nested SVM a PVH guest
    /// "triple faults" now and then at any step: with Xen's own registers
    /// in the dump, with its stack pointer on an entry stack of Linux's CPU
    /// entry area, and with ordinary guest state (a timer interrupt reading
    /// the pvclock, the x2APIC EOI write). A fault the guest's kernel
    /// cannot handle ends in a double fault it reports (an Oops, a panic),
    /// so the guest's console must have no report at all, before or after
    /// Xen's line (its console lags behind Xen's: see [`GRACE`]). What this
    /// cannot see is a corruption that breaks the guest's exception
    /// delivery silently (a page table or a stack page of the guest's
    /// written through a stale mapping): the runner retries this kind at
    /// most once per scenario, so such a bug still fails a run unless it
    /// strikes less often than every other time.
    fn pvh_triple_fault(&self, f: &Failure) -> Option<&[String]> {
        let at = f.report.filter(|r| r.rule == TRIPLE_FAULT)?.serial_at;
        if self.domain_kind(&f.log) != Some(DomainKind::Pvh) {
            return None;
        }
        let guest_reported = self
            .logs
            .get(&f.log)
            .is_some_and(|lines| lines.iter().any(|l| report(l).is_some()));
        if guest_reported {
            return None;
        }
        // Xen's dump of that same vCPU follows its line.
        let vcpu = self.serial.get(at).and_then(|l| vcpu_tag(l))?;
        let context = format!("CONTEXT: hvm guest ({vcpu})");
        let dump = &self.serial[at + 1..self.serial.len().min(at + 41)];
        dump.iter().any(|l| l.contains(&context)).then_some(dump)
    }

    /// Checks the time limits at `now`.
    pub fn tick(&mut self, now: Duration) {
        self.settle_reports(now, false);
        let over: Vec<Step> = self
            .active
            .iter()
            .filter(|s| now.saturating_sub(s.started) > s.limit)
            .cloned()
            .collect();
        for s in over {
            let secs = s.limit.as_secs();
            let reason = if let Some(dom) = s.name.strip_prefix("create ") {
                format!("domain {dom} did not come up within {secs} s")
            } else if s.name == "boot" {
                format!("Xen + dom0 did not come up within {secs} s")
            } else {
                format!("step did not finish within {secs} s")
            };
            self.active.retain(|a| a.name != s.name);
            self.fail(now, &s.name, reason, s.source);
        }
        if let Some(idle) = self.idle_since {
            let limit = self.scaled(IDLE_LIMIT);
            if !self.done && now.saturating_sub(idle) > limit {
                self.idle_since = None;
                let reason = format!("no progress for {} s", limit.as_secs());
                self.fail(now, "dom0", reason, Source::Dom0);
            }
        }
    }

    /// The earliest time a limit can expire, for the read timeout.
    pub fn next_deadline(&self) -> Option<Duration> {
        let steps = self.active.iter().map(|s| s.started + s.limit);
        let idle = self.idle_since.map(|i| i + self.scaled(IDLE_LIMIT));
        let grace = self.failure.as_ref().map(|f| f.at + GRACE);
        let reports = self.pending.iter().map(|p| p.report.at + REPORT_BODY_WAIT);
        steps.chain(idle).chain(grace).chain(reports).min()
    }

    /// Whether the run is over and QEMU should be stopped.
    pub fn should_stop(&self, now: Duration) -> bool {
        self.exited || self.failure.as_ref().is_some_and(|f| now >= f.at + GRACE)
    }

    /// QEMU exited (`status` describes how) at `now`; runs the final checks.
    pub fn exited(
        &mut self,
        now: Duration,
        status: &str,
        expect_log: &[crate::scenario::ExpectLog],
    ) {
        self.exited = true;
        self.settle_reports(now, true);
        if !self.done {
            let (step, log) = match self.active.last() {
                Some(s) => (s.name.clone(), s.source.clone()),
                None => ("boot".to_string(), Source::Dom0),
            };
            self.fail(
                now,
                &step,
                format!("QEMU exited before the scenario finished ({status})"),
                log,
            );
            return;
        }
        self.end(now, "shutdown");
        if self.failure.is_some() {
            return;
        }
        for dom in self.domains.clone() {
            if !self.passed.contains(&dom) {
                self.fail(
                    now,
                    &dom,
                    "the scenario never ran in this domain".into(),
                    Source::Guest(dom.clone()),
                );
            }
        }
        for e in expect_log {
            let source = match e.domain.as_str() {
                "xen" => Source::Xen,
                "dom0" => Source::Dom0,
                g => Source::Guest(g.to_string()),
            };
            let found = self
                .logs
                .get(&source)
                .is_some_and(|lines| lines.iter().any(|l| l.contains(&e.text)));
            if !found {
                self.fail(
                    now,
                    "checks",
                    format!("the {source} log lacks `{}`", e.text),
                    source,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn scenario() -> Scenario {
        parse(
            "t.sh",
            "# hdm: domains = pv\n# hdm: timeout = 10\n# hdm: boot-timeout = 20\n\
             # hdm: dom0-boot-timeout = 20\n# hdm: expect-log = pv: role: domU PV\n",
        )
        .unwrap()
    }

    const GOOD: &[&str] = &[
        "(XEN) Xen version 4.17",
        "@@HDM boot dom0",
        "@@HDM ready dom0",
        "@@HDM begin dom0 main",
        "@@HDM end dom0 main rc=0",
        "@@HDM create pv pv",
        "@[pv] [    0.000000] Linux version 6.12",
        "@[pv] @@HDM begin pv main",
        "@[pv] [    1.0] hyper_dmabuf_front: role: domU PV",
        "@[pv] @@HDM end pv main rc=0",
        "@@HDM gone pv",
        "@@HDM begin dom0 final",
        "@@HDM end dom0 final rc=0",
        "@@HDM done dom0 scenario",
    ];

    fn feed(m: &mut Monitor, lines: &[&str]) {
        for (i, l) in lines.iter().enumerate() {
            m.line(s(i as u64), l);
            m.tick(s(i as u64));
        }
    }

    #[test]
    fn classifies_lines() {
        assert_eq!(classify("(XEN) hi"), (Source::Xen, "(XEN) hi"));
        assert_eq!(classify("(d1) hi"), (Source::Xen, "(d1) hi"));
        assert_eq!(classify("(dom0) x"), (Source::Dom0, "(dom0) x"));
        assert_eq!(classify("@[pv] x y"), (Source::Guest("pv".into()), "x y"));
        assert_eq!(classify("[ 1.0] x"), (Source::Dom0, "[ 1.0] x"));
    }

    /// The rule a serial line matches, as the monitor sees it.
    fn caught(raw: &str) -> Option<(&'static str, Severity)> {
        let (_, text) = classify(raw);
        report(text).map(|r| (r.name, r.severity))
    }

    /// Linux message `msg` is caught as `name` in every form a console
    /// gives it: bare, after the timestamp, from a guest (`@[name] `), from
    /// a PVH guest's early debug output through Xen (`(dN) `), and inside
    /// another line of the same console.
    fn assert_linux(msg: &str, name: &str, severity: Severity) {
        let forms = [
            msg.to_string(),
            format!("[   12.345678] {msg}"),
            format!("@[pv] {msg}"),
            format!("@[pvh] [ 1234.000001] {msg}"),
            format!("(d2) [    0.512000] {msg}"),
            format!("hdm[dom0]: sharing 4 pa[   12.345678] {msg}"),
        ];
        for line in &forms {
            assert_eq!(caught(line), Some((name, severity)), "{line}");
        }
    }

    fn assert_checks(name: &str, msgs: &[&str]) {
        for msg in msgs {
            assert_linux(msg, name, Severity::Check);
        }
    }

    /// Xen message `msg` is caught as `name`: a line of its own, with a
    /// Xen timestamp, and inside a guest's line.
    fn assert_xen(msg: &str, name: &str, severity: Severity) {
        let forms = [
            format!("(XEN) {msg}"),
            format!("(XEN) [    5.123456] {msg}"),
            format!("@[pv] [    4.400000] CPU topo(XEN) {msg}"),
        ];
        for line in &forms {
            assert_eq!(caught(line), Some((name, severity)), "{line}");
        }
    }

    #[test]
    fn forbidden_patterns() {
        assert_eq!(forbidden("WARNING: CPU: 0 PID: 1 at x"), Some("WARNING:"));
        assert_eq!(forbidden("Kernel panic - not syncing"), Some("panic"));
        assert_eq!(forbidden("(XEN) Panic on CPU 0:"), Some("panic"));
        assert_eq!(
            forbidden("(XEN) domain_crash called from x"),
            Some("domain_crash")
        );
        assert_eq!(
            forbidden("BUG: kernel NULL pointer dereference"),
            Some("BUG:")
        );
        assert_eq!(forbidden("Oops: 0000 [#1] SMP"), Some("Oops:"));
        assert_eq!(forbidden("hyper_dmabuf_front: role: domU PV"), None);
    }

    #[test]
    fn slub_reports() {
        // mm/slub.c of 6.12: check_bytes_and_report(), then object_err() or
        // slab_err() (`__slab_bug`), then slab_fix().
        assert_checks(
            "[<area> overwritten]",
            &[
                "[Poison overwritten] 0xffff888004a1b010-0xffff888004a1b013 @offset=16. First byte 0x6c instead of 0x6b",
                "[End Poison overwritten] 0xffff888004a1b03f-0xffff888004a1b03f @offset=63. First byte 0x0 instead of 0xa5",
                "[Left Redzone overwritten] 0xffff888004a1b000-0xffff888004a1b007 @offset=0. First byte 0x0 instead of 0xbb",
                "[Right Redzone overwritten] 0xffff888004a1b050-0xffff888004a1b057 @offset=80. First byte 0x41 instead of 0xcc",
                "[kmalloc Redzone overwritten] 0xffff888004a1b02c-0xffff888004a1b03f @offset=44. First byte 0x0 instead of 0xcc",
                "[Alignment padding overwritten] 0xffff888004a1b040-0xffff888004a1b047 @offset=64. First byte 0x0 instead of 0x5a",
                "[Object padding overwritten] 0xffff888004a1b0e8-0xffff888004a1b0ef @offset=232. First byte 0x0 instead of 0x5a",
            ],
        );
        assert_checks(
            "BUG <cache> (<taint>):",
            &[
                "BUG kmalloc-64 (Not tainted): Object corrupt",
                "BUG kmalloc-64 (Tainted: G    B      O       ): Object already free",
                "BUG kmalloc-rcl-128 (Tainted: G           O       ): Freepointer corrupt",
                "BUG kmalloc-1k (Not tainted): Freechain corrupt",
                "BUG kmalloc-cg-192 (Not tainted): Freelist Pointer check fails",
                "BUG <unknown> (Not tainted): No slab cache for object 0x00000000a1b2c3d4",
                "BUG hdm_conn (Tainted: G           O       ): Objects remaining on __kmem_cache_shutdown()",
                "BUG kmalloc-64 (Not tainted): Padding overwritten. 0xffff888004a1bfc0-0xffff888004a1bfff @offset=4032",
                "BUG kmalloc-512 (Not tainted): Wrong object count. Counter is 3 but counted were 2",
                "BUG kmalloc-512 (Not tainted): Wrong number of objects. Found 7 but should be 8",
                "BUG skbuff_head_cache (Not tainted): Invalid object pointer 0x00000000deadbeef",
                "BUG task_struct (Not tainted): Attempt to free object(0x00000000deadbeef) outside of slab",
                "BUG kmalloc-64 (Not tainted): page slab pointer corrupt.",
                "BUG kmalloc-8k (Not tainted): Not a valid slab page",
                "BUG kmalloc-8k (Not tainted): Slab disabled since SLUB metadata consistency check failed",
            ],
        );
        assert_checks(
            "FIX <cache>:",
            &[
                "FIX kmalloc-64: Restoring Poison 0xffff888004a1b010-0xffff888004a1b013=0x6b",
                "FIX kmalloc-64: Isolate corrupted freechain",
                "FIX kmalloc-1k: Freelist cleared",
                "FIX kmalloc-512: Number of objects adjusted",
                "FIX kmalloc-512: Object count adjusted",
                "FIX kmalloc-64: Marking all objects used",
                "FIX hdm_conn: Object at 0xffff888004a1b000 not freed",
            ],
        );
        // Then the WARN_ON(1) of object_err() and slab_err().
        assert_checks(
            "WARNING:",
            &["WARNING: CPU: 0 PID: 142 at mm/slub.c:1127 object_err+0x4b/0x60"],
        );
    }

    #[test]
    fn lockdep_reports() {
        // kernel/locking/lockdep.c of 6.12, the banner's title line.
        assert_checks(
            "WARNING:",
            &[
                "WARNING: possible circular locking dependency detected",
                "WARNING: possible recursive locking detected",
                "WARNING: inconsistent lock state",
                "WARNING: possible irq lock inversion dependency detected",
                "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected",
                "WARNING: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected",
                "WARNING: bad unlock balance detected!",
                "WARNING: bad contention detected!",
                "WARNING: held lock freed!",
                "WARNING: hdmabuf/231 still has locks held!",
                "WARNING: lock held when returning to user space!",
                "WARNING: suspicious RCU usage",
                "WARNING: chain_key collision",
                "WARNING: Nested lock was not taken",
            ],
        );
        assert_checks(
            "BUG:",
            &[
                "[ BUG: Invalid wait context ]",
                "BUG: MAX_LOCKDEP_KEYS too low!",
                "BUG: MAX_LOCKDEP_ENTRIES too low!",
                "BUG: MAX_LOCKDEP_CHAINS too low!",
                "BUG: MAX_LOCKDEP_CHAIN_HLOCKS too low!",
                "BUG: MAX_STACK_TRACE_ENTRIES too low!",
                "BUG: MAX_LOCK_DEPTH too low!",
                "BUG: key ffff888003f1c2a0 has not been registered!",
                "BUG: looking up invalid subclass: 8",
                // kernel/locking/spinlock_debug.c
                "BUG: spinlock bad magic on CPU#0, hdmabuf/231",
                "BUG: spinlock already unlocked on CPU#1, kworker/1:2/57",
                "BUG: rwlock wrong owner on CPU#0, hdmabuf/231, ffff888004a1b000",
            ],
        );
        // The reports that say neither WARNING: nor BUG: at their start.
        assert_checks(
            "INFO: trying to register non-static key",
            &["INFO: trying to register non-static key."],
        );
        assert_checks(
            "turning off the locking correctness validator",
            &["turning off the locking correctness validator."],
        );
        assert_checks(
            "Disabling lock debugging",
            &["Disabling lock debugging due to kernel taint"],
        );
        assert_checks(
            "DEBUG_LOCKS_WARN_ON",
            &[
                "DEBUG_LOCKS_WARN_ON(lock->magic != lock)",
                "DEBUG_LOCKS_WARN_ON(__owner != current)",
            ],
        );
        assert_checks(
            "DEBUG_RWSEMS_WARN_ON",
            &["DEBUG_RWSEMS_WARN_ON((rwsem_owner(sem) != current) && !rwsem_test_oflags(sem, RWSEM_NONSPINNABLE)): count = 0x0, magic = 0xffff888004a1b000, owner = 0x0, curr 0xffff888003f1c2a0, list empty"],
        );
    }

    #[test]
    fn atomic_sleep_list_sg_and_vm_reports() {
        // DEBUG_ATOMIC_SLEEP (kernel/sched/core.c).
        assert_checks(
            "BUG:",
            &[
                "BUG: sleeping function called from invalid context at kernel/locking/mutex.c:585",
                "BUG: scheduling while atomic: hdmabuf/231/0x00000002",
                "BUG: assuming non migratable context at kernel/sched/core.c:2345",
                "BUG: workqueue leaked atomic, lock or RCU: kworker/0:1[12]",
            ],
        );
        // DEBUG_LIST (lib/list_debug.c).
        assert_checks(
            "list_add corruption",
            &[
                "list_add corruption. prev is NULL.",
                "list_add corruption. next->prev should be prev (ffff888004a1b008), but was ffff888004a1b108. (next=ffff888004a1b208).",
                "list_add corruption. prev->next should be next (ffff888004a1b208), but was dead000000000100. (prev=ffff888004a1b008).",
            ],
        );
        assert_checks(
            "list_add double add",
            &["list_add double add: new=ffff888004a1b008, prev=ffff888004a1b008, next=ffff888004a1b208."],
        );
        assert_checks(
            "list_del corruption",
            &[
                "list_del corruption, ffff888004a1b008->next is LIST_POISON1 (dead000000000100)",
                "list_del corruption, ffff888004a1b008->prev is LIST_POISON2 (dead000000000122)",
                "list_del corruption, ffff888004a1b008->next is NULL",
                "list_del corruption. prev->next should be ffff888004a1b008, but was ffff888004a1b108. (prev=ffff888004a1b208)",
            ],
        );
        // DEBUG_VM (include/linux/mmdebug.h, mm/debug.c) and the page
        // checks of mm/page_alloc.c, mm/memory.c, kernel/fork.c.
        assert_checks(
            "page dumped because:",
            &[
                "page dumped because: VM_BUG_ON_PAGE(page_ref_count(page) == 0)",
                "page dumped because: VM_WARN_ON_ONCE_FOLIO(folio_test_large(folio))",
                "page dumped because: nonzero mapcount",
            ],
        );
        assert_checks(
            "BUG:",
            &[
                "BUG: Bad page state in process hdmabuf  pfn:1a2b3",
                "BUG: Bad page map in process hdmabuf  pte:8000000012345067 pmd:1234567067",
                "BUG: Bad rss-counter state mm:00000000a1b2c3d4 type:MM_FILEPAGES val:1",
                "BUG: Bad page cache in process hdmabuf  pfn:1a2b3",
                "BUG: non-zero pgtables_bytes on freeing mm: 4096",
                "BUG: mempool element poison mismatch",
            ],
        );
        // VM_BUG_ON and DEBUG_SG's BUG_ON (lib/bug.c): the kernel dies.
        for msg in [
            "kernel BUG at mm/huge_memory.c:2921!",
            "kernel BUG at include/linux/scatterlist.h:115!",
            "Kernel BUG at sg_init_one+0x82/0x90 [verbose debug info unavailable]",
        ] {
            assert_linux(msg, "kernel BUG at", Severity::Crash);
        }
    }

    #[test]
    fn sanitizer_stall_and_lockup_reports() {
        assert_checks(
            "BUG:",
            &[
                "BUG: KASAN: slab-use-after-free in hdm_import_release+0x1c/0x90 [hyper_dmabuf]",
                "BUG: KASAN: invalid-access",
                "BUG: KFENCE: use-after-free read in hdm_export_put+0x2a/0x80 [hyper_dmabuf]",
                "BUG: KFENCE: memory corruption in hdm_conn_free+0x11/0x40 [hyper_dmabuf]",
                "BUG: KCSAN: data-race in hdm_ring_poll / hdm_ring_push",
                "BUG: KMSAN: uninit-value in hdm_wire_decode+0x1f/0x200",
                "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [hdmabuf:231]",
                "BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!",
            ],
        );
        assert_checks(
            "UBSAN:",
            &[
                "UBSAN: array-index-out-of-bounds in driver/shim.c:120:9",
                "UBSAN: shift-out-of-bounds in lib/bitmap.c:44:12",
            ],
        );
        assert_checks(
            "INFO: task blocked",
            &["INFO: task hdmabuf:231 blocked for more than 122 seconds."],
        );
        assert_checks(
            "INFO: stall",
            &[
                "rcu: INFO: rcu_preempt self-detected stall on CPU",
                "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
                "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 0-... } 21002 jiffies s: 173 root: 0x1/.",
                "rcu: INFO: rcu_preempt detected stall, but suppressed full report due to a stuck CSD-lock.",
                "rcu: INFO: Stall ended before state dump start",
                "INFO: rcu_tasks detected stalls on tasks:",
            ],
        );
        assert_checks(
            "hard LOCKUP",
            &["watchdog: Watchdog detected hard LOCKUP on cpu 1"],
        );
        assert_checks(
            "general protection fault",
            &["traps: hdmabuf[231] general protection fault ip:55d0c1a2b3c4 sp:7ffd1a2b3c40 error:0 in hdmabuf[1a2b3,55d0c1a00000+80000]"],
        );
        assert_checks(
            "WARNING:",
            &[
                "WARNING: CPU: 0 PID: 42 at driver/shim.c:87 hdm_warn+0x1e/0x30 [hyper_dmabuf]",
                "WARNING: CPU: 1 PID: 0 at kernel/rcu/tree.c:2761 rcu_core+0x8a/0x3c0",
                "xen:grant_table: WARNING: g.e. 0x1a2 still in use!",
            ],
        );
    }

    #[test]
    fn crashes() {
        for (msg, name) in [
            ("Oops: 0000 [#1] SMP", "Oops:"),
            ("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", "Oops:"),
            (
                "Oops: general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI",
                "Oops:",
            ),
            ("Internal error: Oops: 0000000096000004 [#1] PREEMPT SMP", "Oops:"),
            (
                "BUG: kernel NULL pointer dereference, address: 0000000000000008",
                "BUG:",
            ),
            (
                "BUG: unable to handle page fault for address: ffffc90000a3c000",
                "BUG:",
            ),
            (
                "BUG: ENTRY_TRAMPOLINE stack guard page was hit at 00000000a1b2c3d4 (stack is 00000000a1b2c3d4..00000000a1b2c3d4)",
                "BUG:",
            ),
            (
                "Unable to handle kernel paging request at virtual address dead000000000108",
                "Unable to handle kernel",
            ),
            (
                "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: hdm_ioctl+0x2f1/0x300 [hyper_dmabuf]",
                "Kernel stack is corrupted",
            ),
            (
                "Kernel panic - not syncing: corrupted stack end detected inside scheduler",
                "corrupted stack end",
            ),
            ("Kernel panic - not syncing: Fatal exception", "panic"),
            ("PANIC: double fault, error_code: 0x0", "panic"),
            (
                "thread 'main' panicked at tools/src/hostile.rs:88:5:",
                "panic",
            ),
        ] {
            assert_linux(msg, name, Severity::Crash);
        }
    }

    #[test]
    fn xen_reports() {
        assert_xen(
            "Xen WARN at grant_table.c:1234",
            "Xen WARN at",
            Severity::Check,
        );
        assert_xen("Xen BUG at mm.c:3456", "Xen BUG at", Severity::Crash);
        assert_xen(
            "Assertion 'd->is_dying' failed at ...rch/x86/mm/p2m-pod.c:123",
            "Assertion failed",
            Severity::Crash,
        );
        assert_xen(
            "FATAL TRAP: vector = 6 (invalid opcode)",
            "FATAL TRAP",
            Severity::Crash,
        );
        assert_xen("FATAL PAGE FAULT", "FATAL PAGE FAULT", Severity::Crash);
        assert_xen("Panic on CPU 0:", "panic", Severity::Crash);
        assert_xen(
            "domain_crash called from common/grant_table.c:1456",
            "domain_crash",
            Severity::Crash,
        );
        assert_xen(
            "d1v0 Triple fault - invoking HVM shutdown action 1",
            "Triple fault",
            Severity::Crash,
        );
    }

    #[test]
    fn ordinary_lines_do_not_match() {
        for line in [
            // Prose about reports.
            "hdm[pv]: no BUG here",
            "hdm[dom0]: checking that the BUG report test ran",
            "hdm[dom0]: a WARNING: line would fail the run",
            "@[pv] hdm[pv]: expecting no WARNING from the driver",
            "BUG fixes: 3",
            "BUG kmalloc-64 is what we look for",
            "FIX kmalloc-64: later",
            "FIX the ring: Restoring order",
            "[Poison overwritten] in prose",
            "hdm[pv]: INFO: ready",
            "Oopsie",
            "hdm[pv]: oops, retrying",
            "list_add corruption is what DEBUG_LIST reports",
            "hdm[pv]: list_del corruption would be caught",
            "Warning: unable to open an initial console.",
            // Informational under TCG, not a report (arch/x86/kernel/nmi.c).
            "[   40.000000] INFO: NMI handler (perf_event_nmi_handler) took too long to run: 1.234 msecs",
            // Ordinary boot lines of Linux and Xen.
            "[    0.000000] Linux version 6.12.118 (root@build) (gcc (Debian 14.2.0-19) 14.2.0) #1 SMP PREEMPT_DYNAMIC",
            "[    0.091234] SLUB: HWalign=64, Order=0-3, MinObjects=0, CPUs=1, Nodes=1",
            "[    0.101234] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar",
            "[    0.101235] ... MAX_LOCKDEP_CHAINS:      131072",
            "[    0.101236] ... MAX_LOCK_DEPTH:          48",
            "[    0.201234] rcu: \tRCU CPU stall warnings timeout set to 21 (rcu_cpu_stall_timeout).",
            "[    0.201235] rcu: Preemptible hierarchical RCU implementation.",
            "[    1.000000] hyper_dmabuf: loading out-of-tree module taints kernel.",
            "[    1.000000] hyper_dmabuf: module verification failed: signature and/or required key missing - tainting kernel",
            "[    1.000000] hyper_dmabuf: role: domU PV",
            "@[pv] [    1.200000] hyper_dmabuf: unloaded (domU PV)",
            "[    0.500000] x86/mm: Checked W+X mappings: passed, no W+X pages found.",
            "(XEN) Xen version 4.17.6-pre (Debian 4.17.5+72-g01140da4e8-1)",
            "(XEN) Dom0 has maximum 1 VCPUs",
            "(XEN) [1] d0v0 timer",
            "(d1) [    0.000000] Booting paravirtualized kernel on Xen PVH",
            "@@HDM end pv main rc=0",
        ] {
            assert_eq!(caught(line), None, "{line}");
        }
    }

    #[test]
    fn message_starts() {
        assert_eq!(message_at("[   12.345678] x"), "x");
        assert_eq!(message_at("(XEN) [    5.000000] x"), "x");
        assert_eq!(message_at("(d12) [    0.1] x"), "x");
        assert_eq!(message_at("[    T42] x"), "x");
        // CONFIG_PRINTK_CALLER, should a build enable it.
        assert_eq!(message_at("[   12.345678][    T42] x"), "x");
        assert_eq!(message_at("[   12.345678][     C1] x"), "x");
        assert_eq!(
            message_at("[ BUG: Invalid wait context ]"),
            "[ BUG: Invalid wait context ]"
        );
        assert_eq!(
            message_at("[Poison overwritten] 0x1"),
            "[Poison overwritten] 0x1"
        );
        assert_eq!(
            messages("a[ 1.5] b(XEN) c(d3) d [#1] e"),
            [
                "a[ 1.5] b(XEN) c(d3) d [#1] e",
                "b(XEN) c(d3) d [#1] e",
                "c(d3) d [#1] e",
                "d [#1] e"
            ]
        );
    }

    #[test]
    fn a_slub_report_in_a_guest_fails_its_step() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines.insert(
            9,
            "@[pv] [   23.456789] BUG kmalloc-64 (Tainted: G           O       ): Object already free",
        );
        feed(&mut m, &lines);
        let f = m.failure.clone().unwrap();
        assert!(!f.crash());
        assert_eq!((f.step.as_str(), f.log), ("pv", Source::Guest("pv".into())));
        assert_eq!(
            f.reason,
            "`BUG <cache> (<taint>):` in the pv log: [   23.456789] \
             BUG kmalloc-64 (Tainted: G           O       ): Object already free"
        );
    }

    #[test]
    fn a_debug_report_before_the_scenario_is_no_platform_flake() {
        // A check's report while a guest boots is Linux's bug, not QEMU's:
        // never retried, unlike the crash of a guest that boots.
        let sc = scenario();
        for (line, flake) in [
            ("@[pv] [    2.1] BUG: sleeping function called from invalid context at mm/slub.c:4120", false),
            ("@[pv] [    2.1] WARNING: possible circular locking dependency detected", false),
            ("@[pv] [    2.1] list_del corruption, ffff888004a1b008->next is NULL", false),
            ("@[pv] [    2.1] BUG: kernel NULL pointer dereference, address: 0000000000000008", true),
            ("@[pv] [    2.1] kernel BUG at mm/huge_memory.c:2921!", true),
        ] {
            let mut m = Monitor::new(&sc);
            let mut lines = GOOD[..7].to_vec();
            lines.push(line);
            feed(&mut m, &lines);
            assert_eq!(m.failure.clone().unwrap().step, "create pv", "{line}");
            assert_eq!(m.platform_flake().is_some(), flake, "{line}");
        }
    }

    const TEST_EXCLUSIONS: &[Exclusion] = &[
        Exclusion {
            rule: "WARNING:",
            text: "at drivers/xen/xenbus/xenbus_probe.c:123 xenbus_dev_probe+",
            domain: DomainKind::Pv,
            reason: "test entry",
            evidence: EVIDENCE,
        },
        // A lockdep report names the code in its body only.
        Exclusion {
            rule: "WARNING:",
            text: "(&example->lock){+.+.}-{3:3}, at: example_ioctl+",
            domain: DomainKind::Dom0,
            reason: "test entry 2",
            evidence: EVIDENCE,
        },
    ];

    #[test]
    fn an_excluded_report_passes_and_is_listed() {
        let sc = scenario();
        let warn = "@[pv] [    1.1] WARNING: CPU: 0 PID: 9 at drivers/xen/xenbus/xenbus_probe.c:123 xenbus_dev_probe+0x1e/0x30";
        let mut m = Monitor::new(&sc);
        m.exclusions = TEST_EXCLUSIONS;
        let mut lines = GOOD.to_vec();
        lines.insert(9, warn);
        feed(&mut m, &lines);
        m.exited(s(20), "exit status: 0", &sc.expect_log);
        assert_eq!(m.failure, None);
        assert_eq!(m.excluded.len(), 1);
        assert!(m.excluded[0].starts_with("`WARNING:` in the pv log: [    1.1] WARNING: CPU: 0"));
        assert!(m.excluded[0].ends_with(&format!("(test entry; {EVIDENCE})")));

        // The same text in another kind of domain, or another report on
        // that line, still fails.
        for line in [
            "[    1.1] WARNING: CPU: 0 PID: 9 at drivers/xen/xenbus/xenbus_probe.c:123 xenbus_dev_probe+0x1e/0x30",
            "@[pv] [    1.1] BUG: scheduling while atomic: at drivers/xen/xenbus/xenbus_probe.c:123 xenbus_dev_probe+",
            "@[pv] [    1.1] WARNING: CPU: 0 PID: 9 at drivers/xen/xenbus/xenbus_probe.c:124 xenbus_dev_probe+0x1e/0x30",
        ] {
            let mut m = Monitor::new(&sc);
            m.exclusions = TEST_EXCLUSIONS;
            let mut lines = GOOD.to_vec();
            lines.insert(9, line);
            feed(&mut m, &lines);
            assert!(m.failure.is_some(), "{line}");
            assert!(m.excluded.is_empty());
        }
    }

    #[test]
    fn an_exclusion_may_name_the_code_in_the_reports_body() {
        let sc = scenario();
        let report = [
            "[    3.000000] ======================================================",
            "[    3.000001] WARNING: possible circular locking dependency detected",
            "[    3.000002] 6.12.118 #1 Tainted: G           O",
            "[    3.000003] ------------------------------------------------------",
            "[    3.000004] hdmabuf/231 is trying to acquire lock:",
            "[    3.000005] ffff888004a1b0a8 (&example->lock){+.+.}-{3:3}, at: example_ioctl+0x2f/0x300",
        ];
        // A report in dom0's main phase, its lines within a second.
        let run = |report: &[&str]| {
            let mut m = Monitor::new(&sc);
            m.exclusions = TEST_EXCLUSIONS;
            feed(&mut m, &GOOD[..4]);
            for l in report {
                m.line(s(4), l);
                m.tick(s(4));
            }
            for (i, l) in GOOD[4..].iter().enumerate() {
                m.line(s(5 + i as u64), l);
                m.tick(s(5 + i as u64));
            }
            m.exited(s(30), "exit status: 0", &sc.expect_log);
            m
        };
        let m = run(&report);
        assert_eq!(m.failure, None);
        assert_eq!(m.excluded.len(), 1);
        assert!(m.excluded[0].contains("(test entry 2; "));

        // Without that line, the report fails the run once its wait is
        // over, blamed on the step it came in, at the time it came.
        let m = run(&report[..5]);
        let f = m.failure.clone().unwrap();
        assert_eq!((f.step.as_str(), f.at), ("dom0 main", s(4)));
        assert!(
            f.reason.contains("possible circular locking"),
            "{}",
            f.reason
        );
        assert!(m.excluded.is_empty());

        // Nor does the end of a warning's trace, or the end of the run.
        for end in [
            "[    3.1] ---[ end trace 0000000000000000 ]---",
            "@@HDM done dom0 scenario",
        ] {
            let mut m = Monitor::new(&sc);
            m.exclusions = TEST_EXCLUSIONS;
            m.line(s(1), "@@HDM ready dom0");
            m.line(s(1), report[1]);
            m.line(s(1), end);
            assert_eq!(m.failure.is_some(), !end.starts_with("@@"), "{end}");
            m.exited(s(1), "exit status: 0", &sc.expect_log);
            assert!(m.failure.unwrap().reason.contains("circular"), "{end}");
        }
    }

    #[test]
    fn every_exclusion_is_narrow_and_written_down() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/security.md"),
        )
        .unwrap();
        assert!(doc.contains("Known reports of others' code"));
        for e in EXCLUSIONS.iter().chain(TEST_EXCLUSIONS) {
            assert!(RULES.iter().any(|r| r.name == e.rule), "{e:?}");
            // More than the report's kind: the code it is about.
            assert!(e.text.len() >= 24, "{e:?}");
            assert!(!e.reason.is_empty(), "{e:?}");
            assert!(e.evidence.starts_with(EVIDENCE), "{e:?}");
        }
        for e in EXCLUSIONS {
            assert!(doc.contains(e.text), "{e:?} is not in docs/security.md");
        }
    }

    #[test]
    fn good_run_passes() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        feed(&mut m, GOOD);
        m.exited(s(20), "exit status: 0", &sc.expect_log);
        assert_eq!(m.failure, None);
        let steps: Vec<&str> = m.timings.iter().map(|t| t.step.as_str()).collect();
        assert_eq!(
            steps,
            [
                "boot",
                "dom0 main",
                "create pv",
                "pv",
                "wait pv",
                "dom0 final",
                "shutdown"
            ]
        );
        assert_eq!(m.logs[&Source::Guest("pv".into())].len(), 4);
    }

    #[test]
    fn warning_in_guest_fails_its_step() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines.insert(
            9,
            "@[pv] [    1.1] WARNING: CPU: 0 PID: 42 at front/shim.c:60 hdm_warn",
        );
        feed(&mut m, &lines);
        let f = m.failure.clone().unwrap();
        assert_eq!(f.step, "pv");
        assert_eq!(f.log, Source::Guest("pv".into()));
        assert!(f.reason.contains("WARNING:"), "{}", f.reason);
        assert!(m.should_stop(f.at + GRACE));
    }

    #[test]
    fn guest_that_never_boots_times_out() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        feed(&mut m, &GOOD[..7]);
        assert!(m.failure.is_none());
        m.tick(s(5 + 21));
        let f = m.failure.clone().unwrap();
        assert_eq!(f.step, "create pv");
        assert!(
            f.reason.contains("did not come up within 20 s"),
            "{}",
            f.reason
        );
        assert_eq!(f.log, Source::Guest("pv".into()));
    }

    #[test]
    fn nonzero_rc_and_early_exit_fail() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines[9] = "@[pv] @@HDM end pv main rc=1";
        feed(&mut m, &lines);
        assert_eq!(m.failure.clone().unwrap().step, "pv");

        let mut m = Monitor::new(&sc);
        feed(&mut m, &GOOD[..4]);
        m.exited(s(5), "signal 9", &sc.expect_log);
        let f = m.failure.unwrap();
        assert_eq!(f.step, "dom0 main");
        assert!(f.reason.contains("QEMU exited"));
    }

    #[test]
    fn missing_expected_log_fails() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let lines: Vec<&str> = GOOD
            .iter()
            .copied()
            .filter(|l| !l.contains("role:"))
            .collect();
        feed(&mut m, &lines);
        m.exited(s(20), "exit status: 0", &sc.expect_log);
        assert_eq!(m.failure.unwrap().step, "checks");
    }

    #[test]
    fn a_guest_destroyed_by_dom0_on_purpose_passes() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        // The guest never ends its main phase: dom0 destroys it.
        lines[9] = "@@HDM destroyed pv";
        feed(&mut m, &lines);
        m.tick(s(20));
        m.exited(s(20), "exit status: 0", &sc.expect_log);
        assert_eq!(m.failure, None);
    }

    #[test]
    fn a_guest_that_vanishes_without_the_marker_fails() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines.remove(9);
        feed(&mut m, &lines);
        m.tick(s(60));
        m.exited(s(60), "exit status: 0", &sc.expect_log);
        assert!(m.failure.is_some());
    }

    /// A scenario with one PVH guest, `pvh`, whose domid dom0 reports.
    fn pvh_scenario() -> Scenario {
        parse(
            "t.sh",
            "# hdm: domains = pvh\n# hdm: timeout = 10\n# hdm: boot-timeout = 20\n\
             # hdm: dom0-boot-timeout = 20\n",
        )
        .unwrap()
    }

    /// The lines of a run whose guest `pvh` (domid 1) triple-faults in its
    /// scenario, `before` on its console first, `after` once Xen's dump
    /// (of vCPU `dump_vcpu`, with `cs`, `rip` and `rsp`) is out.
    fn triple_fault(
        before: &[&str],
        dump_vcpu: &str,
        (cs, rip, rsp): (&str, &str, &str),
        after: &[&str],
    ) -> Vec<String> {
        let mut lines: Vec<String> = [
            "(XEN) Xen version 4.17",
            "@@HDM boot dom0",
            "@@HDM ready dom0",
            "@@HDM begin dom0 main",
            "@@HDM end dom0 main rc=0",
            "@@HDM create pvh pvh",
            "@@HDM created pvh 1",
            "@[pvh] [    0.000000] Linux version 6.12",
            "@[pvh] @@HDM begin pvh main",
        ]
        .iter()
        .map(|l| l.to_string())
        .collect();
        lines.extend(before.iter().map(|l| l.to_string()));
        lines.extend([
            "(XEN) d1v0 Triple fault - invoking HVM shutdown action 1".to_string(),
            "(XEN) *** Dumping Dom1 vcpu#0 state: ***".to_string(),
            format!("(XEN) RIP:    {cs}:[<{rip}>]"),
            format!("(XEN) RFLAGS: 0000000000000006   CONTEXT: hvm guest ({dump_vcpu})"),
            format!("(XEN) rbp: 0000000000000000   rsp: {rsp}   r8:  0000000000000000"),
            format!("(XEN) ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: 0018   cs: {cs}"),
        ]);
        lines.extend(after.iter().map(|l| l.to_string()));
        lines
    }

    fn judged(sc: &Scenario, lines: &[String]) -> Monitor {
        let mut m = Monitor::new(sc);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        feed(&mut m, &lines);
        m.exited(s(30), "exit status: 0", &sc.expect_log);
        m
    }

    /// Seen: Xen's own registers (cycles), an entry stack (share), the
    /// x2APIC EOI write on an IRQ stack (mm).
    const DUMPS: [(&str, &str, &str); 3] = [
        ("e008", "ffff82d0402044a5", "ffff8301fad17f70"),
        ("0010", "ffffffff81a01280", "fffffe0000002fd0"),
        ("0010", "ffffffff8190baa7", "ffffc90000003e60"),
    ];

    #[test]
    fn a_pvh_triple_fault_is_a_platform_flake_at_any_step() {
        for regs in DUMPS {
            let m = judged(&pvh_scenario(), &triple_fault(&[], "d1v0", regs, &[]));
            let f = m.failure.as_ref().expect("a triple fault fails the run");
            assert_eq!(
                (f.step.as_str(), &f.log),
                ("pvh", &Source::Guest("pvh".into()))
            );
            // Only Xen's own code segment makes it QEMU's for certain.
            match (regs.0, m.platform_flake()) {
                ("e008", Some(Flake::EmulationFault(_))) => {}
                ("0010", Some(Flake::PvhTripleFault(_))) => {}
                (_, other) => panic!("{regs:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_xen_line_cut_into_a_guests_line_is_xens() {
        // As in a clean-clone run of 2026-12-07: the PV guest's line, then
        // Xen's about the PVH guest, with no line ending between them.
        let sc = parse(
            "t.sh",
            "# hdm: domains = pv pvh\n# hdm: timeout = 10\n# hdm: boot-timeout = 20\n\
             # hdm: dom0-boot-timeout = 20\n",
        )
        .unwrap();
        let mut lines = triple_fault(&[], "d1v0", DUMPS[0], &[]);
        let at = lines
            .iter()
            .position(|l| l.contains("Triple fault"))
            .unwrap();
        let glued = format!(
            "@[pv] [  205.956216] hyper_dmabuf: disconnected from dom0{}",
            lines[at]
        );
        lines[at] = glued;
        let m = judged(&sc, &lines);
        let f = m.failure.as_ref().expect("a triple fault fails the run");
        assert_eq!(f.log, Source::Guest("pvh".into()));
        assert!(matches!(m.platform_flake(), Some(Flake::EmulationFault(_))));
        assert!(m.logs[&Source::Guest("pv".into())]
            .iter()
            .any(|l| l.ends_with("disconnected from dom0")));
    }

    #[test]
    fn a_report_on_the_guests_console_makes_a_triple_fault_no_platform_flake() {
        let oops =
            "@[pvh] [    5.0] Oops: general protection fault, probably for non-canonical address";
        let warning = "@[pvh] [    5.0] WARNING: CPU: 0 PID: 61 at driver/x.rs:9 f+0x1/0x2";
        for (before, after) in [(&[oops][..], &[][..]), (&[warning], &[]), (&[], &[oops])] {
            let m = judged(
                &pvh_scenario(),
                &triple_fault(before, "d1v0", DUMPS[2], after),
            );
            assert!(m.failure.is_some(), "{before:?} {after:?}");
            assert_eq!(m.platform_flake(), None, "{before:?} {after:?}");
        }
    }

    #[test]
    fn a_triple_fault_without_its_own_dump_is_no_platform_flake() {
        // No dump, or the dump of another vCPU.
        let mut lines = triple_fault(&[], "d1v0", DUMPS[2], &[]);
        lines.retain(|l| !l.contains("CONTEXT"));
        assert_eq!(judged(&pvh_scenario(), &lines).platform_flake(), None);
        let lines = triple_fault(&[], "d3v0", DUMPS[2], &[]);
        assert_eq!(judged(&pvh_scenario(), &lines).platform_flake(), None);
    }

    #[test]
    fn a_pv_guests_triple_fault_or_crash_in_its_scenario_is_no_platform_flake() {
        // The same lines, but the guest is PV (as the scenario says).
        let pv = parse(
            "t.sh",
            "# hdm: domains = pvh:pv\n# hdm: timeout = 10\n# hdm: boot-timeout = 20\n\
             # hdm: dom0-boot-timeout = 20\n",
        )
        .unwrap();
        let m = judged(&pv, &triple_fault(&[], "d1v0", DUMPS[2], &[]));
        assert!(m.failure.is_some());
        assert_eq!(m.platform_flake(), None);
        let mut lines: Vec<String> = GOOD[..8].iter().map(|l| l.to_string()).collect();
        lines.push("(XEN) domain_crash called from arch/x86/pv/traps.c:57".to_string());
        lines.push("(XEN) Domain 1 (vcpu#0) crashed on cpu#1:".to_string());
        let m = judged(&scenario(), &lines);
        assert!(m.failure.is_some());
        assert_eq!(m.platform_flake(), None);
    }

    #[test]
    fn gone_before_the_guest_stream_ends_is_fine() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines.swap(9, 10);
        feed(&mut m, &lines);
        m.tick(s(20));
        m.exited(s(20), "exit status: 0", &sc.expect_log);
        assert_eq!(m.failure, None);
    }

    #[test]
    fn crash_before_the_scenario_is_a_platform_flake() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines.insert(
            7,
            "@[pv] [ 4.4] CPU topo(XEN) d2v0 Triple fault - invoking HVM shutdown",
        );
        feed(&mut m, &lines);
        assert_eq!(m.failure.clone().unwrap().step, "create pv");
        assert!(m.platform_flake().is_some());

        // Xen's own line about the guest's domid blames the guest's step.
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines.insert(6, "@@HDM created pv 3");
        lines.insert(
            7,
            "(XEN) d3v0 Triple fault - invoking HVM shutdown action 1",
        );
        feed(&mut m, &lines);
        let f = m.failure.clone().unwrap();
        assert_eq!(
            (f.step.as_str(), f.log),
            ("create pv", Source::Guest("pv".into()))
        );
        assert!(m.platform_flake().is_some());

        // A warning, a timeout, or a crash once the scenario runs are real.
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD.to_vec();
        lines.insert(9, "@[pv] Oops: 0000 [#1] SMP");
        feed(&mut m, &lines);
        assert_eq!(m.failure.clone().unwrap().step, "pv");
        assert!(m.platform_flake().is_none());
        let mut m = Monitor::new(&sc);
        feed(&mut m, &GOOD[..7]);
        m.tick(s(100));
        assert!(m.platform_flake().is_none());
    }

    #[test]
    fn a_guest_crashing_before_dom0_reports_its_id_is_a_platform_flake() {
        // pv runs its scenario while dom0 still creates pvh; pvh crashes
        // before dom0 prints `created pvh 2`.
        let sc = parse(
            "smoke.sh",
            "# hdm: domains = pv pvh:pvh\n# hdm: timeout = 100\n",
        )
        .unwrap();
        let mut m = Monitor::new(&sc);
        feed(
            &mut m,
            &[
                "@@HDM ready dom0",
                "@@HDM create pv pv",
                "@@HDM created pv 1",
                "@@HDM create pvh pvh",
                "@[pv] @@HDM begin pv",
                "(XEN) d2v0 Triple fault - invoking HVM shutdown action 1",
                "(XEN) RFLAGS: 0000000000000006   CONTEXT: hvm guest (d2v0)",
                "(XEN) ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: 0018   cs: 0010",
                "@@HDM created pvh 2",
            ],
        );
        let f = m.failure.clone().unwrap();
        assert_eq!(
            (f.step.as_str(), f.log),
            ("create pvh", Source::Guest("pvh".into()))
        );
        assert!(m.platform_flake().is_some());
    }

    #[test]
    fn vcpu_tags() {
        assert_eq!(vcpu_domid("(XEN) d12v3 Triple fault"), Some(12));
        assert_eq!(vcpu_domid("CONTEXT: hvm guest (d2v0)"), Some(2));
        assert_eq!(vcpu_domid("(XEN) dv0 x"), None);
        assert_eq!(vcpu_domid("(XEN) d2 x devices"), None);
    }

    #[test]
    fn boot_timeout() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        m.line(s(1), "(XEN) Xen version 4.17");
        m.tick(s(21));
        assert_eq!(m.failure.unwrap().step, "boot");
    }

    #[test]
    fn a_scaled_run_waits_longer_for_every_limit() {
        let sc = scenario().scaled(200);
        let mut m = Monitor::new(&sc);
        m.line(s(1), "(XEN) Xen version 4.17");
        m.tick(s(39));
        assert!(m.failure.is_none(), "boot's 20 s are 40 s at 200 %");
        m.line(s(39), "@@HDM ready dom0");
        // No step active: the idle limit, 60 s unscaled.
        m.tick(s(39 + 100));
        assert!(m.failure.is_none(), "60 s of no step are 120 s at 200 %");
        m.tick(s(39 + 121));
        assert!(m.failure.unwrap().reason.contains("no progress for 120 s"));
    }
}
