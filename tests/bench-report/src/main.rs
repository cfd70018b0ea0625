// SPDX-License-Identifier: MIT
//! `hdmabuf-bench`: the host half of `make bench`.
//!
//! The VM benchmark (`hdmabuf-agent bench export` in dom0, see
//! tests/agents/src/bench.rs) prints one `bench| {json}` line per series
//! of raw samples into the domain's log. This reads those lines and
//! writes, into the output directory:
//!
//! * a table of every figure, ours against each anchor, with ratios
//!   (stdout and `table.txt`);
//! * `results.json`: one record per case (size, metric) with `ours_ns`,
//!   one `<anchor>_ns` and `ratio_vs_<anchor>` per anchor measured for
//!   that metric, `reps` and the `spread` of every path;
//! * `latency.png`: end-to-end latency against size for the four paths
//!   (through gnuplot, from `latency.dat` and `latency.gp`);
//! * the scale records, their table, targets and `scale.png` ([`scale`]).
//!
//! Usage: `hdmabuf-bench LOG... --out DIR`

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod scale;
use scale::Scale;

/// The anchors, in table order; `first_import` is ours' own first import
/// and `noop_ioctl` an ioctl the device does not know, timed in the
/// importer (the anchors of a cached re-import); `update_rtt` an UPDATE
/// and the importer's answer, through the driver (the anchor of a fence's
/// signal).
const ANCHORS: [&str; 6] = [
    "gntdev",
    "floor",
    "copy",
    "first_import",
    "noop_ioctl",
    "update_rtt",
];

/// The metrics, in table order, with what they measure.
const METRICS: [(&str, &str); 12] = [
    (
        "end_to_end",
        "export to first byte readable in the importer",
    ),
    ("export", "export call in the exporter"),
    ("import", "import (map) in the importer"),
    ("reimport", "import of a buffer still mapped"),
    ("unexport", "unexport to grants ended"),
    ("frame", "swapchain, time per frame"),
    ("export_cpu", "CPU time of the export call (exporter)"),
    ("import_cpu", "CPU time of the import call (importer)"),
    (
        "end_to_end_cpu_exporter",
        "CPU time of the exporter, end to end",
    ),
    (
        "end_to_end_cpu_importer",
        "CPU time of the importer, end to end",
    ),
    ("round_trip", "the link's round trip"),
    (
        "fence_signal",
        "a fence signalled in the exporter to the importer's reader awake, and its answer",
    ),
];

/// One series of samples from the logs.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    path: String,
    metric: String,
    size: u64,
    samples: Vec<u64>,
}

/// Everything the logs hold.
#[derive(Debug, Default)]
struct Run {
    series: Vec<Series>,
    /// (path, size, why) of anchors that failed at a size.
    failures: Vec<(String, u64, String)>,
    /// (path, note) about how a path was measured.
    notes: Vec<(String, String)>,
    /// The scale experiment's records.
    scale: Scale,
}

/// Reads the `bench|` lines of a log.
fn parse(log: &str, run: &mut Run) -> Result<(), String> {
    for line in log.lines() {
        let Some(record) = line.strip_prefix("bench| ") else {
            continue;
        };
        let v: Value = serde_json::from_str(record).map_err(|e| format!("{e}: {record}"))?;
        if run.scale.take(&v)? {
            continue;
        }
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let path = text("path").ok_or_else(|| format!("no path: {record}"))?;
        let size = v.get("size").and_then(Value::as_u64).unwrap_or(0);
        if let Some(why) = text("failed") {
            run.failures.push((path, size, why));
        } else if let Some(note) = text("note") {
            run.notes.push((path, note));
        } else {
            let samples = v
                .get("samples_ns")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("no samples: {record}"))?
                .iter()
                .map(|s| s.as_u64().ok_or_else(|| format!("bad sample: {record}")))
                .collect::<Result<Vec<_>, _>>()?;
            let metric = text("metric").ok_or_else(|| format!("no metric: {record}"))?;
            run.series.push(Series {
                path,
                metric,
                size,
                samples,
            });
        }
    }
    Ok(())
}

/// Median and quartiles of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    median: f64,
    p25: f64,
    p75: f64,
    n: usize,
}

/// The value at quantile `q` by linear interpolation between the two
/// nearest ranks.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = pos - lo as f64;
    sorted[lo] as f64 * (1.0 - frac) + sorted[hi] as f64 * frac
}

fn stats(samples: &[u64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    Some(Stats {
        median: quantile(&sorted, 0.5),
        p25: quantile(&sorted, 0.25),
        p75: quantile(&sorted, 0.75),
        n: sorted.len(),
    })
}

impl Run {
    fn stats(&self, path: &str, metric: &str, size: u64) -> Option<Stats> {
        // A cached re-import's anchor is ours' first import.
        let (path, metric) = match path {
            "first_import" if metric == "reimport" => ("ours", "import"),
            "noop_ioctl" if metric == "reimport" => ("ours", "noop_ioctl"),
            "first_import" | "noop_ioctl" => return None,
            p => (p, metric),
        };
        self.series
            .iter()
            .find(|s| s.path == path && s.metric == metric && s.size == size)
            .and_then(|s| stats(&s.samples))
    }

    fn sizes(&self) -> BTreeSet<u64> {
        self.series
            .iter()
            .filter(|s| s.path == "ours")
            .map(|s| s.size)
            .collect()
    }
}

/// One record of results.json per (size, metric) that ours was measured
/// for.
fn records(run: &Run) -> Vec<Value> {
    let mut out = Vec::new();
    for (metric, _) in METRICS {
        for size in run.sizes() {
            let Some(ours) = run.stats("ours", metric, size) else {
                continue;
            };
            let mut r = Map::new();
            r.insert("size_bytes".into(), json!(size));
            r.insert("metric".into(), json!(metric));
            r.insert("ours_ns".into(), json!(ours.median.round() as u64));
            let mut spread = Map::new();
            spread.insert("ours".into(), spread_of(&ours));
            for anchor in ANCHORS {
                if let Some(a) = run.stats(anchor, metric, size) {
                    r.insert(format!("{anchor}_ns"), json!(a.median.round() as u64));
                    r.insert(
                        format!("ratio_vs_{anchor}"),
                        json!(round_sig(ours.median / a.median)),
                    );
                    spread.insert(anchor.into(), spread_of(&a));
                }
            }
            for (path, _, why) in run.failures.iter().filter(|f| f.1 == size) {
                r.insert(format!("{path}_failed"), json!(why));
            }
            r.insert("reps".into(), json!(ours.n));
            r.insert("spread".into(), Value::Object(spread));
            out.push(Value::Object(r));
        }
    }
    out
}

fn spread_of(s: &Stats) -> Value {
    json!({ "p25_ns": s.p25.round() as u64, "p75_ns": s.p75.round() as u64, "n": s.n })
}

/// Rounded to 4 significant digits (ratios span 1e-5 to 1e2).
fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// A duration for the table.
pub(crate) fn human(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.0} us", ns / 1e3)
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// The table: per metric, a row per size with every path's median and
/// ours' ratio to each anchor.
fn table(run: &Run, records: &[Value]) -> String {
    let mut t = String::new();
    if let Some(rtt) = run.stats("link", "round_trip", 0) {
        let _ = writeln!(
            t,
            "link round trip (median of {}): {}; half of it is taken off every end-to-end figure\n",
            rtt.n,
            human(rtt.median)
        );
    }
    for (metric, what) in METRICS {
        let rows: Vec<&Value> = records.iter().filter(|r| r["metric"] == metric).collect();
        if rows.is_empty() {
            continue;
        }
        let anchors: Vec<&str> = ANCHORS
            .into_iter()
            .filter(|a| rows.iter().any(|r| r.get(format!("{a}_ns")).is_some()))
            .collect();
        let _ = writeln!(t, "{metric}: {what} (median; ours/anchor)");
        let mut header = format!("  {:>9} {:>10}", "size", "ours");
        for a in &anchors {
            let _ = write!(header, " {a:>12}");
        }
        for a in &anchors {
            let _ = write!(header, " {:>9}", format!("/{a}"));
        }
        if metric == "frame" {
            let _ = write!(
                header,
                "  fps (ours{})",
                anchors.iter().map(|a| format!(", {a}")).collect::<String>()
            );
        }
        let _ = writeln!(t, "{header}");
        for r in rows {
            let ns = |k: &str| r.get(k).and_then(Value::as_f64);
            let mut line = format!(
                "  {:>9} {:>10}",
                human_size(r["size_bytes"].as_u64().unwrap_or(0)),
                human(ns("ours_ns").unwrap_or(0.0))
            );
            for a in &anchors {
                let cell = ns(&format!("{a}_ns"))
                    .map(human)
                    .unwrap_or_else(|| "-".into());
                let _ = write!(line, " {cell:>12}");
            }
            for a in &anchors {
                let cell = ns(&format!("ratio_vs_{a}"))
                    .map(ratio_text)
                    .unwrap_or_else(|| "-".into());
                let _ = write!(line, " {cell:>9}");
            }
            if metric == "frame" {
                let fps = |v: Option<f64>| {
                    v.map(|ns| format!("{:.0}", 1e9 / ns))
                        .unwrap_or_else(|| "-".into())
                };
                let _ = write!(line, "  {}", fps(ns("ours_ns")));
                for a in &anchors {
                    let _ = write!(line, ", {}", fps(ns(&format!("{a}_ns"))));
                }
            }
            let _ = writeln!(t, "{line}");
        }
        let _ = writeln!(t);
    }
    for (path, note) in &run.notes {
        let _ = writeln!(t, "note: {path}: {note}");
    }
    for (path, size, why) in &run.failures {
        let _ = writeln!(t, "failed: {path} at {}: {why}", human_size(*size));
    }
    t
}

/// The targets, each with where we stand and, when missed, why
/// (docs/performance.md, "Why, and what would fix it", measures each
/// reason).
fn targets(records: &[Value], scale: &Scale) -> String {
    let find = |metric: &str, size: u64| {
        records
            .iter()
            .find(|r| r["metric"] == metric && r["size_bytes"] == size)
    };
    let ratio = |r: Option<&Value>, a: &str| r.and_then(|r| r[format!("ratio_vs_{a}")].as_f64());
    let mut t = String::from("targets:\n");
    let mut verdict = |ok: Option<bool>, text: String, why: &str| {
        let mark = match ok {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(t, "  [{mark}] {text}");
        if ok == Some(false) {
            let _ = writeln!(t, "           why: {why}");
        }
    };
    let r = ratio(find("import", 8 << 20), "floor");
    verdict(
        r.map(|x| x <= 1.2),
        format!(
            "import of 8 MiB within 1.2x of the grant-map floor: {}",
            fmt_ratio(r)
        ),
        "work per page beyond gntdev's one batched map: reading the directory, \
         the dma-buf's page array, a balloon the floor did not pay",
    );
    let e2e: Vec<&Value> = records
        .iter()
        .filter(|r| r["metric"] == "end_to_end")
        .collect();
    let list = |a: &str, only: &dyn Fn(u64) -> bool| {
        e2e.iter()
            .filter(|r| only(r["size_bytes"].as_u64().unwrap_or(0)))
            .map(|r| {
                (
                    human_size(r["size_bytes"].as_u64().unwrap_or(0)),
                    ratio(Some(r), a),
                )
            })
            .collect::<Vec<_>>()
    };
    let all_below = |v: &[(String, Option<f64>)], limit: f64| {
        let known: Vec<f64> = v.iter().filter_map(|x| x.1).collect();
        (!known.is_empty()).then(|| known.iter().all(|&x| x <= limit))
    };
    let show = |v: &[(String, Option<f64>)]| {
        v.iter()
            .map(|(s, x)| format!("{s} {}", fmt_ratio(*x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let g = list("gntdev", &|_| true);
    verdict(
        all_below(&g, 1.0),
        format!(
            "end to end no slower than gntdev + transport at every size: {}",
            show(&g)
        ),
        "EXPORT waits for the importer's answer (IMP_TO_REFS answers at once), and \
         the NewExport event reaches the reader through the driver's work item, \
         where the transport wakes its reader from the event-channel interrupt",
    );
    let re: Vec<(String, Option<f64>)> = records
        .iter()
        .filter(|r| r["metric"] == "reimport")
        .map(|r| {
            let first = r["first_import_ns"].as_f64();
            let again = r["ours_ns"].as_f64().filter(|&x| x > 0.0);
            (
                human_size(r["size_bytes"].as_u64().unwrap_or(0)),
                first.zip(again).map(|(f, a)| f / a),
            )
        })
        .collect();
    let known: Vec<f64> = re.iter().filter_map(|x| x.1).collect();
    verdict(
        (!known.is_empty()).then(|| known.iter().all(|&x| x >= 100.0)),
        format!(
            "cached re-import at least 100x faster than a first import: {}",
            re.iter()
                .map(|(s, x)| format!(
                    "{s} {}",
                    x.map(|x| format!("{x:.0}x")).unwrap_or("-".into())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "a first import of that size costs less than 100 re-imports: the re-import \
         is a look-up and a new descriptor whatever the size",
    );
    // Ours against `anchor` at each size `metric` was measured at.
    let ratios = |metric: &str, anchor: &str| -> Vec<(String, Option<f64>)> {
        records
            .iter()
            .filter(|r| r["metric"] == metric)
            .map(|r| {
                (
                    human_size(r["size_bytes"].as_u64().unwrap_or(0)),
                    ratio(Some(r), anchor),
                )
            })
            .collect()
    };
    let noop = ratios("reimport", "noop_ioctl");
    verdict(
        all_below(&noop, 2.0),
        format!(
            "cached re-import within 2x of a no-op ioctl at every size: {}",
            show(&noop)
        ),
        "beyond the system call, a re-import looks the buffer up (the index, the \
         connection, its ledger, each under its lock), takes a reference to the \
         dma-buf and installs a new descriptor",
    );
    let frames = ratios("frame", "gntdev");
    verdict(
        all_below(&frames, 1.0),
        format!(
            "swapchain time per frame no slower than gntdev + transport at every size: {}",
            show(&frames)
        ),
        "each frame reaches the importer's reader through the driver's work item \
         (interrupt, work item, poll, read), where the transport's reader wakes \
         from the interrupt itself",
    );
    let fences = ratios("fence_signal", "update_rtt");
    verdict(
        all_below(&fences, 1.5),
        format!(
            "a fence's signal and the answer to it within 1.5x of an UPDATE and its answer: {}",
            show(&fences)
        ),
        "the signal passes vgem's fence callback and the exporter's work item \
         before the ring, and the importer wakes its reader from the dma_fence",
    );
    let c = list("copy", &|s| s >= 8 << 20);
    verdict(
        all_below(&c, 1.0),
        format!("end to end faster than the copy from 8 MiB: {}", show(&c)),
        "under QEMU's emulation mapping a foreign page costs more than copying it: \
         the grant-map floor, with no protocol at all, is slower than the copy too",
    );
    scale.targets(&mut verdict);
    t
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(ratio_text).unwrap_or_else(|| "not measured".into())
}

/// A ratio with two significant digits when it is small.
pub(crate) fn ratio_text(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.1e}x")
    } else {
        format!("{x:.2}x")
    }
}

/// gnuplot data and script for latency against size, and the PNG.
fn plot(run: &Run, out: &Path) -> Result<(), String> {
    let paths = ["ours", "gntdev", "floor", "copy"];
    let mut dat =
        String::from("# size_bytes then median, p25, p75 (ms) of ours gntdev floor copy\n");
    for size in run.sizes() {
        let _ = write!(dat, "{size}");
        for p in paths {
            match run.stats(p, "end_to_end", size) {
                Some(s) => {
                    let _ = write!(dat, " {} {} {}", s.median / 1e6, s.p25 / 1e6, s.p75 / 1e6);
                }
                None => dat.push_str(" NaN NaN NaN"),
            }
        }
        dat.push('\n');
    }
    let labels = [
        "hyper\\_dmabuf",
        "gntdev-dmabuf + transport",
        "grant-map floor",
        "copy through shared pages",
    ];
    let mut gp = String::from(
        "set terminal pngcairo size 1000,650 noenhanced\n\
         set output 'latency.png'\n\
         set title 'Export to first byte readable, dom0 to a PVH guest (emulated platform; median, p25-p75)'\n\
         set logscale xy\n\
         set xlabel 'buffer size (bytes)'\n\
         set ylabel 'latency (ms)'\n\
         set key top left\n\
         set grid\n\
         set xtics ('4 KiB' 4096, '1 MiB' 1048576, '8 MiB' 8388608, '32 MiB' 33554432, '256 MiB' 268435456)\n\
         plot ",
    );
    let parts: Vec<String> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let c = 2 + 3 * i;
            format!(
                "'latency.dat' using 1:{}:{}:{} with yerrorlines title '{}'",
                c,
                c + 1,
                c + 2,
                label.replace("\\_", "_")
            )
        })
        .collect();
    gp.push_str(&parts.join(", \\\n     "));
    gp.push('\n');
    write(&out.join("latency.dat"), &dat)?;
    gnuplot(out, "latency.gp", &gp)
}

/// Writes the gnuplot script `name` into `out` and runs it there.
pub(crate) fn gnuplot(out: &Path, name: &str, script: &str) -> Result<(), String> {
    write(&out.join(name), script)?;
    let status = Command::new("gnuplot")
        .arg(name)
        .current_dir(out)
        .status()
        .map_err(|e| format!("running gnuplot (apt-get install gnuplot-nox): {e}"))?;
    if !status.success() {
        return Err(format!("gnuplot failed on {name}: {status}"));
    }
    Ok(())
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    let mut logs = Vec::new();
    let mut out = PathBuf::from("target/bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => match args.next() {
                Some(dir) => out = PathBuf::from(dir),
                None => return usage(),
            },
            a if a.starts_with('-') => return usage(),
            a => logs.push(PathBuf::from(a)),
        }
    }
    if logs.is_empty() {
        return usage();
    }
    match report(&logs, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hdmabuf-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: hdmabuf-bench LOG... [--out DIR]");
    ExitCode::from(2)
}

fn report(logs: &[PathBuf], out: &Path) -> Result<(), String> {
    let mut run = Run::default();
    for log in logs {
        let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
        parse(&text, &mut run)?;
    }
    if run.sizes().is_empty() && run.scale.is_empty() {
        return Err("no bench| records of ours in the logs".into());
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut records = records(&run);
    let text = format!(
        "{}{}{}",
        table(&run, &records),
        run.scale.table(),
        targets(&records, &run.scale)
    );
    records.extend(run.scale.records());
    print!("{text}");
    write(&out.join("table.txt"), &text)?;
    let json = serde_json::to_string_pretty(&records).map_err(|e| e.to_string())?;
    write(&out.join("results.json"), &format!("{json}\n"))?;
    if !run.sizes().is_empty() {
        plot(&run, out)?;
    }
    run.scale.plot(out)?;
    println!(
        "wrote {}, {}, {} and {}",
        out.join("table.txt").display(),
        out.join("results.json").display(),
        out.join("latency.png").display(),
        out.join("scale.png").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[ 1.0] kernel noise
bench| {\"path\":\"link\",\"metric\":\"round_trip\",\"size\":0,\"samples_ns\":[10,20,30]}
bench| {\"path\":\"ours\",\"metric\":\"import\",\"size\":8388608,\"samples_ns\":[120,100,110]}
bench| {\"path\":\"ours\",\"metric\":\"reimport\",\"size\":8388608,\"samples_ns\":[1,1,1]}
bench| {\"path\":\"floor\",\"metric\":\"import\",\"size\":8388608,\"samples_ns\":[100,90,95,105]}
bench| {\"path\":\"ours\",\"metric\":\"end_to_end\",\"size\":8388608,\"samples_ns\":[200]}
bench| {\"path\":\"gntdev\",\"metric\":\"end_to_end\",\"size\":8388608,\"samples_ns\":[400]}
bench| {\"path\":\"copy\",\"metric\":\"end_to_end\",\"size\":8388608,\"samples_ns\":[100]}
bench| {\"path\":\"gntdev\",\"size\":4096,\"failed\":\"EINVAL\"}
bench| {\"path\":\"gntdev\",\"note\":\"stand-in\"}
";

    fn run() -> Run {
        let mut run = Run::default();
        parse(LOG, &mut run).unwrap();
        run
    }

    #[test]
    fn parses_series_failures_and_notes() {
        let run = run();
        assert_eq!(run.series.len(), 7);
        assert_eq!(run.failures, vec![("gntdev".into(), 4096, "EINVAL".into())]);
        assert_eq!(run.notes, vec![("gntdev".into(), "stand-in".into())]);
        assert!(parse("bench| {not json", &mut Run::default()).is_err());
    }

    #[test]
    fn quartiles_interpolate() {
        let s = stats(&[4, 1, 3, 2]).unwrap();
        assert_eq!((s.median, s.p25, s.p75, s.n), (2.5, 1.75, 3.25, 4));
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn records_carry_ratios_per_anchor() {
        let records = records(&run());
        let import = records.iter().find(|r| r["metric"] == "import").unwrap();
        assert_eq!(import["ours_ns"], 110);
        assert_eq!(import["floor_ns"], 98);
        assert_eq!(import["ratio_vs_floor"], 1.128);
        assert_eq!(round_sig(0.000_123_456), 0.000_123_5);
        assert_eq!(import["reps"], 3);
        assert!(import.get("gntdev_ns").is_none());
        let re = records.iter().find(|r| r["metric"] == "reimport").unwrap();
        assert_eq!(re["first_import_ns"], 110);
        let e2e = records
            .iter()
            .find(|r| r["metric"] == "end_to_end")
            .unwrap();
        assert_eq!(e2e["ratio_vs_gntdev"], 0.5);
        assert_eq!(e2e["ratio_vs_copy"], 2.0);
        // The link's round trip has no "ours" series: it is context only.
        assert!(records.iter().all(|r| r["metric"] != "round_trip"));
    }

    #[test]
    fn targets_report_met_and_missed() {
        let t = targets(&records(&run()), &Scale::default());
        assert!(t.contains("[met   ] import of 8 MiB within 1.2x"), "{t}");
        assert!(
            t.contains("[met   ] end to end no slower than gntdev"),
            "{t}"
        );
        assert!(t.contains("[met   ] cached re-import"), "{t}");
        assert!(
            t.contains("[MISSED] end to end faster than the copy"),
            "{t}"
        );
        // A miss names its reason on the next line; a target met does not.
        let lines: Vec<&str> = t.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let next_is_why = lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("why: "));
            assert_eq!(line.contains("[MISSED]"), next_is_why, "{t}");
        }
    }
}
