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
//! forbidden pattern (`BUG:`, `WARNING:`, `Oops`, `panic`, `domain_crash`)
//! in any log, blamed on the active step of the domain whose log has it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::scenario::Scenario;

/// Text that fails a run wherever it appears. `panic` is matched without
/// regard to case (Linux prints `Kernel panic`, Xen `Panic on CPU`).
/// `Triple fault` is Xen's word for an HVM/PVH guest that crashed too
/// early to print anything.
pub const FORBIDDEN: &[&str] = &[
    "BUG:",
    "WARNING:",
    "Oops",
    "panic",
    "domain_crash",
    "Triple fault",
];

/// Patterns of a crash (as opposed to a warning) in a failure reason.
const CRASHES: &[&str] = &["Oops", "panic", "domain_crash", "Triple fault", "BUG:"];

/// How long to keep reading after a failure, to catch the rest of a
/// backtrace, before QEMU is killed.
pub const GRACE: Duration = Duration::from_secs(3);

/// How long dom0 may go with no step active before the run fails.
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

/// The forbidden pattern `text` contains, if any.
pub fn forbidden(text: &str) -> Option<&'static str> {
    FORBIDDEN.iter().copied().find(|p| {
        if *p == "panic" {
            text.to_ascii_lowercase().contains(p)
        } else {
            text.contains(p)
        }
    })
}

/// The domain id of a Xen line's `dNvM` vCPU tag, if it has one.
fn vcpu_domid(text: &str) -> Option<u32> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .find_map(|word| {
            let (dom, vcpu) = word.strip_prefix('d')?.split_once('v')?;
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            (digits(dom) && digits(vcpu)).then(|| dom.parse().ok())?
        })
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
    domains: Vec<String>,
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
            domains: scenario.domains.iter().map(|d| d.name.clone()).collect(),
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
        if self.failure.is_none() {
            self.news.push(format!("step {step}: FAILED: {reason}"));
            self.failure = Some(Failure {
                step: step.to_string(),
                reason,
                log,
                at: now,
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
    pub fn line(&mut self, now: Duration, raw: &str) {
        self.serial.push(raw.to_string());
        let (source, text) = classify(raw);
        self.logs
            .entry(source.clone())
            .or_default()
            .push(text.to_string());
        if let Some(p) = forbidden(text) {
            let about = match source {
                Source::Xen => self.xen_line_domain(text).unwrap_or(Source::Xen),
                _ => source.clone(),
            };
            let (step, log) = self.blame(&about);
            self.fail(
                now,
                &step,
                format!("`{p}` in the {source} log: {}", text.trim()),
                log,
            );
        }
        if let Some(marker) = text.trim().strip_prefix("@@HDM ") {
            let words: Vec<&str> = marker.split_whitespace().collect();
            self.marker(now, &source, &words);
        }
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
                self.start(now, "shutdown", SHUTDOWN_LIMIT, Source::Dom0);
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
                    self.start(now, &format!("wait {dom}"), WAIT_LIMIT, Source::Dom0);
                }
            }
            _ => {}
        }
    }

    /// If the run failed because something crashed before any scenario
    /// code ran where it crashed — Xen or dom0 before dom0's init was up,
    /// or a domU before its init started the scenario — a description of
    /// it. Timeouts, warnings and failures of scenario code never count.
    pub fn platform_flake(&self) -> Option<String> {
        let f = self.failure.as_ref()?;
        let crashed = CRASHES.iter().any(|c| {
            if *c == "panic" {
                f.reason.to_ascii_lowercase().contains(c)
            } else {
                f.reason.contains(c)
            }
        });
        let before_scenario = f.step == "boot" || f.step.starts_with("create ");
        if crashed && before_scenario {
            return Some(format!("step `{}`: {}", f.step, f.reason));
        }
        self.nested_svm_crash().then(|| {
            format!(
                "step `{}`: {} (a dump of Xen's own state)",
                f.step, f.reason
            )
        })
    }

    /// Whether a PVH guest's triple fault is QEMU's: under TCG with nested
    /// SVM a guest sometimes "triple faults" with Xen's own registers in
    /// the dump (code segment `e008`, a hypervisor RIP), at any time. A
    /// real guest crash shows the guest's registers; this pattern is never
    /// the guest's code, so it may be retried even after the scenario ran.
    fn nested_svm_crash(&self) -> bool {
        let Some(at) = self.serial.iter().position(|l| l.contains("Triple fault")) else {
            return false;
        };
        let dump = &self.serial[at..self.serial.len().min(at + 40)];
        dump.iter().any(|l| l.contains("CONTEXT: hvm guest"))
            && dump.iter().any(|l| l.contains("cs: e008"))
    }

    /// Checks the time limits at `now`.
    pub fn tick(&mut self, now: Duration) {
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
            if !self.done && now.saturating_sub(idle) > IDLE_LIMIT {
                self.idle_since = None;
                let reason = format!("no progress for {} s", IDLE_LIMIT.as_secs());
                self.fail(now, "dom0", reason, Source::Dom0);
            }
        }
    }

    /// The earliest time a limit can expire, for the read timeout.
    pub fn next_deadline(&self) -> Option<Duration> {
        let steps = self.active.iter().map(|s| s.started + s.limit);
        let idle = self.idle_since.map(|i| i + IDLE_LIMIT);
        let grace = self.failure.as_ref().map(|f| f.at + GRACE);
        steps.chain(idle).chain(grace).min()
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
        assert_eq!(forbidden("Oops: 0000 [#1] SMP"), Some("Oops"));
        assert_eq!(forbidden("hyper_dmabuf_front: role: domU PV"), None);
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

    #[test]
    fn a_triple_fault_with_xens_registers_is_a_platform_flake_at_any_step() {
        let sc = scenario();
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD[..8].to_vec();
        lines.extend([
            "(XEN) d1v0 Triple fault - invoking HVM shutdown action 1",
            "(XEN) RFLAGS: 0000000000000246   CONTEXT: hvm guest (d1v0)",
            "(XEN) ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: 0000   cs: e008",
        ]);
        feed(&mut m, &lines);
        m.exited(s(20), "exit status: 0", &sc.expect_log);
        assert!(m.failure.is_some());
        assert!(m.platform_flake().is_some());
        // The guest's own registers in the dump: a real crash, no retry.
        let mut m = Monitor::new(&sc);
        let mut lines = GOOD[..8].to_vec();
        lines.extend([
            "(XEN) d1v0 Triple fault - invoking HVM shutdown action 1",
            "(XEN) RFLAGS: 0000000000000246   CONTEXT: hvm guest (d1v0)",
            "(XEN) ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: 0018   cs: 0010",
        ]);
        feed(&mut m, &lines);
        m.exited(s(20), "exit status: 0", &sc.expect_log);
        assert!(m.platform_flake().is_none());
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
}
