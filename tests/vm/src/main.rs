// SPDX-License-Identifier: MIT
//! `hdmabuf-vmtest`: the VM test runner of hyper-dmabuf.
//!
//! Boots Xen 4.17 with a PV dom0 under QEMU (TCG), lets dom0 create the
//! PV/PVH domUs a scenario names with `xl`, runs the scenario in each
//! domain, and checks every log (Xen's serial output, dom0's console, each
//! guest's console) with a hard time limit per step. See the library's
//! `monitor` module for the steps and `scenario` for the scenario files.
//!
//! ```text
//! hdmabuf-vmtest run --images DIR [--debian DIR] [--scenarios DIR] [--out DIR]
//!                    [--counts FILE] [--jobs N] [--time-scale PERCENT] [-v]
//!                    SCENARIO...
//! hdmabuf-vmtest shell --images DIR | --debian DIR
//! hdmabuf-vmtest list [--scenarios DIR]
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use hdmabuf_vmtest::monitor::{self, Flake, Monitor, Source};
use hdmabuf_vmtest::qemu;
use hdmabuf_vmtest::scenario::{self, Dom0Kind, Scenario};

/// Boots again after a platform crash before the scenario ran.
const PLATFORM_RETRIES: u32 = 4;

/// Lines of a log shown with a failure (the whole log is in the out dir).
const SHOW_LINES: usize = 250;

struct Options {
    images: Option<PathBuf>,
    /// The Debian dom0's images (scenarios with `dom0 = debian`).
    debian: Option<PathBuf>,
    scenarios: PathBuf,
    out: PathBuf,
    qemu: String,
    verbose: bool,
    counts: Option<PathBuf>,
    /// Scenarios run at once, each in its own QEMU.
    jobs: usize,
    /// Every time limit, the runner's and the domains' own, at this
    /// percentage of what the scenario says.
    time_scale: u32,
    names: Vec<String>,
}

fn usage() -> String {
    "usage: hdmabuf-vmtest run --images DIR [--debian DIR] [--scenarios DIR] [--out DIR]\n\
     \x20                          [--qemu BIN] [--counts FILE] [--jobs N]\n\
     \x20                          [--time-scale PERCENT] [-v] SCENARIO...\n\
     \x20      hdmabuf-vmtest shell --images DIR | --debian DIR\n\
     \x20      hdmabuf-vmtest list [--scenarios DIR]"
        .to_string()
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        images: None,
        debian: None,
        scenarios: root.join("scenarios"),
        out: root
            .ancestors()
            .nth(2)
            .unwrap_or(root)
            .join("target/vmtest"),
        qemu: "qemu-system-x86_64".to_string(),
        verbose: std::env::var_os("HDM_VM_VERBOSE").is_some_and(|v| v == "1"),
        counts: None,
        jobs: 1,
        time_scale: 100,
        names: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--images" => o.images = Some(PathBuf::from(value()?)),
            "--debian" => o.debian = Some(PathBuf::from(value()?)),
            "--scenarios" => o.scenarios = PathBuf::from(value()?),
            "--out" => o.out = PathBuf::from(value()?),
            "--qemu" => o.qemu = value()?,
            "--counts" => o.counts = Some(PathBuf::from(value()?)),
            "--jobs" | "-j" => {
                let v = value()?;
                o.jobs = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("--jobs {v}: a number from 1"))?;
            }
            "--time-scale" => {
                let v = value()?;
                o.time_scale = v
                    .parse()
                    .ok()
                    .filter(|p| (10..=1000).contains(p))
                    .ok_or_else(|| format!("--time-scale {v}: a percentage from 10 to 1000"))?;
            }
            "-v" | "--verbose" => o.verbose = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{}", usage())),
            s => o.names.push(s.to_string()),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let opts = match parse_args(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "run" => run_all(&opts),
        "shell" => shell(&opts),
        "list" => list(&opts),
        _ => Err(usage()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hdmabuf-vmtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// What the scenarios' dom0s boot from: the embedded platform's images
/// (`--images`) and the Debian dom0's (`--debian`), each if given.
struct Platforms {
    busybox: Option<qemu::Images>,
    debian: Option<qemu::DebianImages>,
}

fn platforms(opts: &Options) -> Result<Platforms, String> {
    let p = Platforms {
        busybox: opts
            .images
            .as_deref()
            .map(qemu::Images::in_dir)
            .transpose()?,
        debian: opts
            .debian
            .as_deref()
            .map(qemu::DebianImages::in_dir)
            .transpose()?,
    };
    if p.busybox.is_none() && p.debian.is_none() {
        return Err(format!("--images or --debian is required\n{}", usage()));
    }
    Ok(p)
}

fn list(opts: &Options) -> Result<bool, String> {
    for name in scenario::list(&opts.scenarios)? {
        let s = scenario::load(&opts.scenarios, &name)?;
        let kind = if s.expect_fail.is_some() {
            " (expected to fail)"
        } else {
            ""
        };
        println!("{:<20} {}{kind}", s.name, s.description);
    }
    Ok(true)
}

fn shell(opts: &Options) -> Result<bool, String> {
    let p = platforms(opts)?;
    eprintln!("[vm] booting Xen + dom0 with a shell on the console; Ctrl-a x quits QEMU");
    // The Debian dom0 logs root in on its console when no scenario runs;
    // what the shell changes stays in an overlay under the out dir.
    let overlay = opts.out.join("shell.disk.qcow2");
    let cmd = match (&p.busybox, &p.debian) {
        (Some(images), _) => qemu::command(
            &opts.qemu,
            qemu::Dom0::Initramfs(images),
            "hdm.shell=1",
            true,
        ),
        (None, Some(images)) => {
            fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
            let _ = fs::remove_file(&overlay);
            qemu::create_overlay(&images.disk, &overlay)?;
            let dom0 = qemu::Dom0::Disk {
                images,
                disk: &overlay,
            };
            qemu::command(&opts.qemu, dom0, "", true)
        }
        (None, None) => unreachable!("platforms() requires one"),
    };
    let mut cmd = cmd;
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start QEMU: {e}"))?;
    Ok(status.success())
}

/// The CPU time, in milliseconds, every QEMU of this run used, flaky boots
/// included: with the run's wall time it says how busy the cores were.
static QEMU_CPU_MS: AtomicU64 = AtomicU64::new(0);

fn run_all(opts: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let platforms = platforms(opts)?;
    if opts.names.is_empty() {
        return Err(format!("no scenario named\n{}", usage()));
    }
    let scenarios: Vec<Scenario> = opts
        .names
        .iter()
        .map(|n| scenario::load(&opts.scenarios, n).map(|s| s.scaled(opts.time_scale)))
        .collect::<Result<_, _>>()?;
    // Up to `jobs` QEMUs at once, each taking the next scenario in order.
    let next = Mutex::new(scenarios.iter());
    let verdicts: Mutex<Vec<Result<Verdict, String>>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..opts.jobs.min(scenarios.len()) {
            scope.spawn(|| loop {
                let Some(s) = next.lock().map(|mut it| it.next()).unwrap_or(None) else {
                    return;
                };
                let verdict = run_one(opts, &platforms, s);
                if let Ok(mut v) = verdicts.lock() {
                    v.push(verdict);
                }
            });
        }
    });
    let verdicts = verdicts
        .into_inner()
        .map_err(|_| "a runner thread panicked")?;
    let mut passed = 0;
    let mut failures = Vec::new();
    for verdict in verdicts {
        match verdict? {
            Verdict::Pass => passed += 1,
            Verdict::Fail(why) => failures.push(why),
        }
    }
    // Each failure again at the end: a log cut to its last lines (CI keeps
    // a tail) still names what failed, when the full report scrolled away.
    for why in &failures {
        println!("[vm] failed: {why}");
    }
    let failed = failures.len();
    let wall = started.elapsed().as_secs_f64();
    let cpu = QEMU_CPU_MS.load(Ordering::Relaxed) as f64 / 1000.0;
    println!(
        "[vm] {passed} passed, {failed} failed in {wall:.0} s; QEMU used {cpu:.0} s of CPU \
         ({:.2} cores)",
        cpu / wall.max(1.0)
    );
    if let Some(path) = &opts.counts {
        // `make test` adds up "<passed> <failed>" files of every stage.
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        fs::write(path, format!("{passed} {failed}\n"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(failed == 0)
}

/// What one scenario came to; a failure carries a one-line summary.
enum Verdict {
    Pass,
    Fail(String),
}

fn say(s: &Scenario, msg: &str) {
    println!("[vm] {}: {msg}", s.name);
}

/// Boots the platform for scenario `s`; it passes if it ran to its end
/// cleanly (for a negative scenario: if it failed as expected).
///
/// A run that failed because Xen, dom0 or a domU crashed before any of the
/// scenario's code ran there, or because a PVH guest triple-faulted (see
/// [`monitor::Monitor::platform_flake`]), is booted again, up to
/// [`PLATFORM_RETRIES`] times, and says so: under QEMU TCG's nested SVM a
/// PVH guest sometimes triple-faults, which is not what the scenario
/// tests. A triple fault after the scenario started is retried once at
/// most, unless Xen's own registers are in the dump: a bug of ours that
/// broke a guest's exception delivery silently would look the same, and
/// still fails a run unless it strikes less often than every other time.
/// `HDM_VM_RETRY=N` sets the number of retries (0: none). A passing run
/// names the flakes it needed.
fn run_one(opts: &Options, platforms: &Platforms, s: &Scenario) -> Result<Verdict, String> {
    let images = match (s.dom0, &platforms.busybox, &platforms.debian) {
        (Dom0Kind::Busybox, Some(images), _) => images,
        (Dom0Kind::Debian, _, Some(images)) => return run_debian(opts, images, s),
        (Dom0Kind::Busybox, None, _) => return Err(format!("{}: needs --images", s.name)),
        (Dom0Kind::Debian, _, None) => return Err(format!("{}: needs --debian", s.name)),
    };
    let dom0 = qemu::Dom0::Initramfs(images);
    let out = opts.out.join(&s.name);
    let (mut m, mut took) = boot_once(opts, dom0, s, &out, 1)?;
    let retries: u32 = std::env::var("HDM_VM_RETRY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PLATFORM_RETRIES);
    let mut flakes = Vec::new();
    for attempt in 1..=retries {
        let Some(flake) = m.platform_flake() else {
            break;
        };
        let late = matches!(flake, Flake::PvhTripleFault(_));
        if late && flakes.iter().any(|f| matches!(f, Flake::PvhTripleFault(_))) {
            say(
                s,
                &format!("a second PVH triple fault is not retried: {flake}"),
            );
            break;
        }
        let kept = opts.out.join(format!("{}.flake{attempt}", s.name));
        let _ = fs::remove_dir_all(&kept);
        let _ = fs::rename(&out, &kept);
        say(s, &format!("PLATFORM FLAKE: {flake}"));
        say(
            s,
            &format!(
                "logs kept in {}; boot {} of {}",
                kept.display(),
                attempt + 1,
                retries + 1
            ),
        );
        flakes.push(flake);
        (m, took) = boot_once(opts, dom0, s, &out, 1)?;
    }
    if !flakes.is_empty() {
        say(
            s,
            &format!(
                "{} platform flake(s) before this run: {}",
                flakes.len(),
                flakes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }
    judge(s, &m, took, &out)
}

/// A scenario on the Debian dom0: every boot of dom0 (`dom0-boots`) from
/// one copy-on-write overlay of its disk, so that the later boots find
/// what the earlier ones left, as a user's machine would. Each boot is
/// judged as a run of its own (logs in `boot<N>/` when there are several);
/// the first that fails is the verdict. No boot is retried: what the
/// first left on the disk would be lost.
fn run_debian(
    opts: &Options,
    images: &qemu::DebianImages,
    s: &Scenario,
) -> Result<Verdict, String> {
    let out = opts.out.join(&s.name);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let disk = opts.out.join(format!("{}.disk.qcow2", s.name));
    let _ = fs::remove_file(&disk);
    qemu::create_overlay(&images.disk, &disk)?;
    let dom0 = qemu::Dom0::Disk {
        images,
        disk: &disk,
    };
    let mut verdict = Verdict::Pass;
    for boot in 1..=s.dom0_boots {
        let boot_out = if s.dom0_boots == 1 {
            out.clone()
        } else {
            out.join(format!("boot{boot}"))
        };
        say(s, &format!("dom0 boot {boot} of {}", s.dom0_boots));
        let (m, took) = boot_once(opts, dom0, s, &boot_out, boot)?;
        verdict = judge(s, &m, took, &boot_out)?;
        if matches!(verdict, Verdict::Fail(_)) {
            break;
        }
    }
    // Gigabytes once the image was written to: the logs stay, the disk goes.
    let _ = fs::remove_file(&disk);
    Ok(verdict)
}

/// One boot of the platform for scenario `s`, logs written to `out`.
fn boot_once(
    opts: &Options,
    dom0: qemu::Dom0<'_>,
    s: &Scenario,
    out: &Path,
    boot: u32,
) -> Result<(Monitor, Took), String> {
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut serial = fs::File::create(out.join("serial.log")).map_err(|e| e.to_string())?;

    let domus: Vec<String> = s
        .domains
        .iter()
        .map(|d| format!("{} ({})", d.name, d.kind))
        .collect();
    say(
        s,
        &format!(
            "booting Xen + dom0, domUs: {}",
            if domus.is_empty() {
                "none".into()
            } else {
                domus.join(", ")
            }
        ),
    );
    let cmd = qemu::command(
        &opts.qemu,
        dom0,
        &format!(
            "hdm.scenario={} hdm.time_scale={} hdm.boot={boot}",
            s.file_name, opts.time_scale
        ),
        false,
    );
    let (mut child, rx) = qemu::spawn(cmd)?;
    let t0 = Instant::now();
    let mut m = Monitor::new(s);
    let mut eof = false;
    let mut cpu = qemu::CpuClock::new(child.id());

    loop {
        let now = t0.elapsed();
        cpu.sample();
        m.tick(now);
        for n in m.news.drain(..) {
            say(s, &n);
        }
        if m.should_stop(now) || eof {
            break;
        }
        let wait = m
            .next_deadline()
            .map_or(Duration::from_secs(1), |d| d.saturating_sub(now))
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        match rx.recv_timeout(wait) {
            Ok(qemu::Event::Line(line)) => {
                let _ = writeln!(serial, "{line}");
                if opts.verbose {
                    println!("  | {line}");
                }
                m.line(t0.elapsed(), &line);
            }
            Ok(qemu::Event::Eof) | Err(RecvTimeoutError::Disconnected) => eof = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
    // Collect what is left, then stop QEMU if it still runs.
    let status = match child.try_wait() {
        Ok(Some(st)) => st.to_string(),
        _ if eof => child
            .wait()
            .map(|st| st.to_string())
            .unwrap_or_else(|e| e.to_string()),
        _ => {
            let _ = child.kill();
            let st = child
                .wait()
                .map(|st| st.to_string())
                .unwrap_or_else(|e| e.to_string());
            format!("killed by the runner, {st}")
        }
    };
    while let Ok(qemu::Event::Line(line)) = rx.recv_timeout(Duration::from_millis(200)) {
        let _ = writeln!(serial, "{line}");
        m.line(t0.elapsed(), &line);
    }
    if m.failure.is_none() {
        m.exited(t0.elapsed(), &status, &s.expect_log);
    }
    for n in m.news.drain(..) {
        say(s, &n);
    }
    let took = Took {
        wall_s: t0.elapsed().as_secs_f64(),
        qemu_cpu_s: cpu.seconds(),
    };
    if let Some(cpu) = took.qemu_cpu_s {
        QEMU_CPU_MS.fetch_add((cpu * 1000.0) as u64, Ordering::Relaxed);
    }
    write_logs(out, &m, took);
    Ok((m, took))
}

/// How long a boot took: wall-clock time, and the CPU time QEMU used (its
/// threads, user and system), which is what two runs at once share.
#[derive(Clone, Copy, Debug)]
struct Took {
    wall_s: f64,
    qemu_cpu_s: Option<f64>,
}

impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} s", self.wall_s)?;
        match self.qemu_cpu_s {
            Some(cpu) => write!(f, ", QEMU used {cpu:.0} s of CPU"),
            None => Ok(()),
        }
    }
}

/// The verdict on a finished run.
fn judge(s: &Scenario, m: &Monitor, took: Took, out: &Path) -> Result<Verdict, String> {
    // Reports of others' code the exclusion table let pass: always shown.
    for e in &m.excluded {
        say(s, &format!("excluded: {e}"));
    }
    match (&m.failure, &s.expect_fail) {
        (None, None) => {
            say(s, &format!("PASS ({took}, logs in {})", out.display()));
            Ok(Verdict::Pass)
        }
        (Some(f), None) => {
            report_failure(s, m, f, out);
            say(s, &format!("FAIL ({took})"));
            Ok(Verdict::Fail(summary(s, f)))
        }
        (Some(f), Some(e)) if f.step == e.step && f.reason.contains(&e.text) => {
            say(
                s,
                &format!("expected failure observed: step `{}`: {}", f.step, f.reason),
            );
            print_log(s, m, &f.log, 40);
            say(s, &format!("PASS (negative test, {took})"));
            Ok(Verdict::Pass)
        }
        (Some(f), Some(e)) => {
            report_failure(s, m, f, out);
            say(
                s,
                &format!("FAIL: expected step `{}` to fail with `{}`", e.step, e.text),
            );
            Ok(Verdict::Fail(summary(s, f)))
        }
        (None, Some(e)) => {
            say(
                s,
                &format!(
                    "FAIL: the run passed, but step `{}` should have failed with `{}`",
                    e.step, e.text
                ),
            );
            Ok(Verdict::Fail(format!(
                "{}: passed, but step `{}` should have failed",
                s.name, e.step
            )))
        }
    }
}

/// One line naming the scenario, the step and the first line of the reason.
fn summary(s: &Scenario, f: &monitor::Failure) -> String {
    let reason = f.reason.lines().next().unwrap_or_default();
    let cut: String = reason.chars().take(200).collect();
    format!(
        "{}: step `{}` after {:.1} s: {cut}",
        s.name,
        f.step,
        f.at.as_secs_f64()
    )
}

fn log_file(source: &Source) -> String {
    match source {
        Source::Xen => "xen.log".into(),
        Source::Dom0 => "dom0.log".into(),
        Source::Guest(g) => format!("guest-{g}.log"),
    }
}

fn write_logs(out: &Path, m: &Monitor, took: Took) {
    for (source, lines) in &m.logs {
        let mut text = lines.join("\n");
        text.push('\n');
        let _ = fs::write(out.join(log_file(source)), text);
    }
    let mut timings: String = m
        .timings
        .iter()
        .map(|t| format!("{:<16} {:7.1} s\n", t.step, t.took.as_secs_f64()))
        .collect();
    timings.push_str(&format!("{:<16} {:7.1} s\n", "(whole run)", took.wall_s));
    if let Some(cpu) = took.qemu_cpu_s {
        timings.push_str(&format!("{:<16} {cpu:7.1} s\n", "(QEMU's CPU)"));
    }
    let _ = fs::write(out.join("timings.txt"), timings);
}

fn print_log(s: &Scenario, m: &Monitor, source: &Source, max: usize) {
    // A failure during boot is best read in the interleaved serial log.
    let (title, lines) = match source {
        Source::Dom0 | Source::Xen => ("serial (Xen + dom0)".to_string(), &m.serial),
        g => (format!("{g} console"), m.logs.get(g).unwrap_or(&m.serial)),
    };
    let skip = lines.len().saturating_sub(max);
    say(
        s,
        &format!(
            "---- {title}, last {} of {} lines ----",
            lines.len() - skip,
            lines.len()
        ),
    );
    for l in &lines[skip..] {
        println!("  | {l}");
    }
    say(s, &format!("---- end of {title} ----"));
}

fn report_failure(s: &Scenario, m: &Monitor, f: &monitor::Failure, out: &Path) {
    say(
        s,
        &format!(
            "step `{}` FAILED after {:.1} s: {}",
            f.step,
            f.at.as_secs_f64(),
            f.reason
        ),
    );
    for later in m.later_failures.iter().take(5) {
        say(s, &format!("  then: {later}"));
    }
    if m.later_failures.len() > 5 {
        say(s, &format!("  and {} more", m.later_failures.len() - 5));
    }
    print_log(s, m, &f.log, SHOW_LINES);
    say(s, &format!("all logs: {}", out.display()));
}
