// SPDX-License-Identifier: MIT
//! The scale records of `make bench` (`hdmabuf-agent scale`, run by
//! tests/vm/scenarios/bench-scale.sh): at each point, P guests with N
//! live buffers each, dom0's timed imports, exports and unexports and its
//! slab bytes per buffer; and the slab bytes per connected peer.
//!
//! They become `scale` and `scale_peer` records of results.json, a table,
//! two targets (cost flat from 10 to 10,000 buffers, and from 1 to 8
//! peers: the p50 of each operation within 1.5x) and `scale.png`.
//!
//! The agent runs the points out and back (all but the last twice, as
//! far before it as after): a point's figures pool the samples of its
//! runs, so that the machine's drift over the run weighs on both ends
//! of a sweep alike.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::{gnuplot, human, quantile, ratio_text, write};

/// The operations timed at each point, with the record's key of their
/// samples.
const OPERATIONS: [(&str, &str); 3] = [
    ("import", "import_ns"),
    ("export", "export_ns"),
    ("unexport", "unexport_ns"),
];

/// Largest growth of an operation's p50 that counts as flat.
const FLAT: f64 = 1.5;

/// One point of the experiment, its runs pooled.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    peers: u64,
    live: u64,
    /// How many times it ran.
    runs: u64,
    /// Samples per operation, in [`OPERATIONS`] order.
    samples: [Vec<u64>; 3],
    /// Slab bytes per buffer the guests' (or our) fills added, each run
    /// that grew them.
    slab_per_import: Vec<u64>,
    slab_per_export: Vec<u64>,
    /// CPU time of dom0's thread in each import call.
    import_cpu: Vec<u64>,
    /// Share of the calls' time Xen gave dom0's vCPU to another domain,
    /// each run.
    steal: Vec<f64>,
}

fn mean(v: &[u64]) -> Option<u64> {
    (!v.is_empty()).then(|| v.iter().sum::<u64>() / v.len() as u64)
}

impl Point {
    fn steal(&self) -> Option<f64> {
        (!self.steal.is_empty()).then(|| self.steal.iter().sum::<f64>() / self.steal.len() as f64)
    }

    fn import_cpu_p50(&self) -> Option<f64> {
        let mut s = self.import_cpu.clone();
        s.sort_unstable();
        (!s.is_empty()).then(|| quantile(&s, 0.5))
    }

    /// The `q` quantile of operation `op`, in nanoseconds.
    fn at(&self, op: usize, q: f64) -> Option<f64> {
        let mut s = self.samples[op].clone();
        s.sort_unstable();
        (!s.is_empty()).then(|| quantile(&s, q))
    }
}

/// Everything the scale records hold.
#[derive(Debug, Default)]
pub(crate) struct Scale {
    points: Vec<Point>,
    slab_per_peer: Option<u64>,
}

impl Scale {
    /// Takes `v` if it is a scale record; `false` if it is another.
    pub(crate) fn take(&mut self, v: &Value) -> Result<bool, String> {
        let num = |k: &str| v.get(k).and_then(Value::as_u64);
        match v.get("metric").and_then(Value::as_str) {
            Some("scale_peer") => {
                self.slab_per_peer = num("slab_per_peer");
                Ok(true)
            }
            Some("scale") => {
                let series = |k: &str| -> Result<Vec<u64>, String> {
                    v.get(k)
                        .and_then(Value::as_array)
                        .ok_or_else(|| format!("scale record without {k}: {v}"))?
                        .iter()
                        .map(|s| s.as_u64().ok_or_else(|| format!("bad sample: {v}")))
                        .collect()
                };
                let peers = num("peers").ok_or_else(|| format!("no peers: {v}"))?;
                let live = num("live_buffers").ok_or_else(|| format!("no live_buffers: {v}"))?;
                let at = match self
                    .points
                    .iter()
                    .position(|p| (p.peers, p.live) == (peers, live))
                {
                    Some(at) => at,
                    None => {
                        self.points.push(Point {
                            peers,
                            live,
                            runs: 0,
                            samples: Default::default(),
                            slab_per_import: Vec::new(),
                            slab_per_export: Vec::new(),
                            import_cpu: Vec::new(),
                            steal: Vec::new(),
                        });
                        self.points.len() - 1
                    }
                };
                let point = &mut self.points[at];
                point.runs += 1;
                for (samples, (_, key)) in point.samples.iter_mut().zip(OPERATIONS) {
                    samples.extend(series(key)?);
                }
                point.slab_per_import.extend(num("slab_per_import"));
                point.slab_per_export.extend(num("slab_per_export"));
                point
                    .import_cpu
                    .extend(series("import_cpu_ns").unwrap_or_default());
                point
                    .steal
                    .extend(v.get("steal_share").and_then(Value::as_f64));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty() && self.slab_per_peer.is_none()
    }

    /// The records of results.json.
    pub(crate) fn records(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .points
            .iter()
            .map(|p| {
                let mut r = json!({
                    "metric": "scale",
                    "peers": p.peers,
                    "live_buffers": p.live,
                    "runs": p.runs,
                    "samples": p.samples[0].len(),
                    "slab_per_import_bytes": mean(&p.slab_per_import),
                    "slab_per_export_bytes": mean(&p.slab_per_export),
                    "import_cpu_p50_ns": p.import_cpu_p50().map(|x| x.round() as u64),
                    "steal_share": p.steal(),
                });
                for (i, (op, _)) in OPERATIONS.iter().enumerate() {
                    r[format!("{op}_p50_ns")] = json!(p.at(i, 0.5).map(|x| x.round() as u64));
                    r[format!("{op}_p99_ns")] = json!(p.at(i, 0.99).map(|x| x.round() as u64));
                }
                r
            })
            .collect();
        if let Some(slab) = self.slab_per_peer {
            out.push(json!({ "metric": "scale_peer", "slab_per_peer_bytes": slab }));
        }
        out
    }

    /// The table's scale section.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        if self.points.is_empty() {
            return t;
        }
        let _ = writeln!(
            t,
            "scale: dom0 with P guests, each with N one-page buffers exported to dom0 and N \
             from it (p50 / p99 of the runs' samples pooled; slab bytes per buffer added; the \
             import's CPU time, p50; the share of the time Xen ran another domain on dom0's \
             vCPU)"
        );
        let _ = writeln!(
            t,
            "  {:>5} {:>6} {:>4} {:>20} {:>20} {:>20} {:>8} {:>8} {:>8} {:>6}",
            "peers",
            "N",
            "runs",
            "import",
            "export",
            "unexport",
            "slab/imp",
            "slab/exp",
            "imp cpu",
            "steal"
        );
        for p in &self.points {
            let mut line = format!("  {:>5} {:>6} {:>4}", p.peers, p.live, p.runs);
            for op in 0..OPERATIONS.len() {
                let cell = match (p.at(op, 0.5), p.at(op, 0.99)) {
                    (Some(a), Some(b)) => format!("{} / {}", human(a), human(b)),
                    _ => "-".into(),
                };
                let _ = write!(line, " {cell:>20}");
            }
            let slab = |s: &[u64]| mean(s).map_or("-".into(), |b| b.to_string());
            let _ = writeln!(
                line,
                " {:>8} {:>8} {:>8} {:>6}",
                slab(&p.slab_per_import),
                slab(&p.slab_per_export),
                p.import_cpu_p50().map_or("-".into(), human),
                p.steal()
                    .map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
            );
            t.push_str(&line);
        }
        if let Some(slab) = self.slab_per_peer {
            let _ = writeln!(t, "  slab bytes per connected peer (dom0): {slab}");
        }
        t.push('\n');
        t
    }

    /// The buffer sweep's ends: one peer with the fewest buffers and
    /// with the most.
    fn buffer_ends(&self) -> Option<(&Point, &Point)> {
        let one: Vec<&Point> = self.points.iter().filter(|p| p.peers == 1).collect();
        let low = one.iter().min_by_key(|p| p.live)?;
        let high = one.iter().max_by_key(|p| p.live)?;
        (low.live < high.live).then_some((*low, *high))
    }

    /// The peer sweep's ends: the most peers, and one peer with as many
    /// buffers each.
    fn peer_ends(&self) -> Option<(&Point, &Point)> {
        let high = self
            .points
            .iter()
            .filter(|p| p.peers > 1)
            .max_by_key(|p| p.peers)?;
        let low = self
            .points
            .iter()
            .find(|p| p.peers == 1 && p.live == high.live)?;
        Some((low, high))
    }

    /// The targets: each operation's p50 at the larger end within
    /// [`FLAT`] of the smaller.
    pub(crate) fn targets(&self, verdict: &mut dyn FnMut(Option<bool>, String, &str)) {
        let growth = |ends: Option<(&Point, &Point)>| -> (Option<bool>, String) {
            let Some((low, high)) = ends else {
                return (None, "not measured".into());
            };
            let ratios: Vec<(&str, Option<f64>)> = OPERATIONS
                .iter()
                .enumerate()
                .map(|(i, (op, _))| (*op, high.at(i, 0.5).zip(low.at(i, 0.5)).map(|(h, l)| h / l)))
                .collect();
            let ok = ratios
                .iter()
                .map(|r| r.1.map(|x| x <= FLAT))
                .collect::<Option<Vec<bool>>>()
                .map(|v| v.iter().all(|&x| x));
            let text = ratios
                .iter()
                .map(|(op, r)| format!("{op} {}", r.map_or("-".into(), ratio_text)))
                .collect::<Vec<_>>()
                .join(", ");
            (ok, text)
        };
        let ends = self.buffer_ends();
        let (ok, text) = growth(ends);
        let span = ends.map_or(String::new(), |(l, h)| {
            format!(" ({} to {})", l.live, h.live)
        });
        verdict(
            ok,
            format!("cost per operation flat in live buffers{span}, p50 within {FLAT}x: {text}"),
            "an operation costs more with more buffers kept: a walk on its path (the \
             tables are trees), or dom0's balloon (without CONFIG_XEN_UNPOPULATED_ALLOC \
             every import balloons a page out, and that cost moved with the run)",
        );
        let ends = self.peer_ends();
        let (ok, text) = growth(ends);
        let span = ends.map_or(String::new(), |(_, h)| format!(" (1 to {})", h.peers));
        verdict(
            ok,
            format!("cost per operation flat in peers{span}, p50 within {FLAT}x: {text}"),
            "an operation costs more with more guests: a walk of the connections on its \
             path, or Xen running the guests on dom0's vCPU (the steal column)",
        );
    }

    /// `scale.png`: each operation's p50 against the buffers (one peer)
    /// and against the peers.
    pub(crate) fn plot(&self, out: &Path) -> Result<(), String> {
        if self.points.is_empty() {
            return Ok(());
        }
        let rows = |pick: &dyn Fn(&Point) -> Option<u64>| {
            let mut v: Vec<(u64, &Point)> = self
                .points
                .iter()
                .filter_map(|p| pick(p).map(|x| (x, p)))
                .collect();
            v.sort_by_key(|(x, _)| *x);
            let mut dat = String::from("# x, then p50 and p99 (us) of import, export, unexport\n");
            for (x, p) in v {
                let _ = write!(dat, "{x}");
                for op in 0..OPERATIONS.len() {
                    let us = |q| {
                        p.at(op, q)
                            .map_or("NaN".into(), |ns| format!("{:.1}", ns / 1e3))
                    };
                    let _ = write!(dat, " {} {}", us(0.5), us(0.99));
                }
                dat.push('\n');
            }
            dat
        };
        let sweep_live = self.peer_ends().map(|(_, h)| h.live);
        write(
            &out.join("scale-buffers.dat"),
            &rows(&|p| (p.peers == 1).then_some(p.live)),
        )?;
        write(
            &out.join("scale-peers.dat"),
            &rows(&|p| (Some(p.live) == sweep_live).then_some(p.peers)),
        )?;
        let series = |file: &str| {
            OPERATIONS
                .iter()
                .enumerate()
                .map(|(i, (op, _))| {
                    format!(
                        "'{file}' using 1:{} with linespoints title '{op} p50', \
                         '{file}' using 1:{} with points title '{op} p99'",
                        2 + 2 * i,
                        3 + 2 * i
                    )
                })
                .collect::<Vec<_>>()
                .join(", \\\n     ")
        };
        let gp = format!(
            "set terminal pngcairo size 1300,600 noenhanced\n\
             set output 'scale.png'\n\
             set multiplot layout 1,2 title 'dom0: one more buffer as the buffers and the guests \
             grow (emulated platform)'\n\
             set logscale y\n\
             set ylabel 'latency (us)'\n\
             set grid\n\
             set key top left\n\
             set logscale x\n\
             set xlabel 'live buffers per peer, one guest'\n\
             plot {}\n\
             unset logscale x\n\
             set xlabel 'guests, {} buffers each'\n\
             set xtics (1, 2, 4, 8)\n\
             plot {}\n\
             unset multiplot\n",
            series("scale-buffers.dat"),
            sweep_live.unwrap_or(0),
            series("scale-peers.dat"),
        );
        gnuplot(out, "scale.gp", &gp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(peers: u64, live: u64, ns: u64) -> String {
        format!(
            "{{\"metric\":\"scale\",\"peers\":{peers},\"live_buffers\":{live},\
             \"import_ns\":[{ns},{ns}],\"export_ns\":[{ns}],\"unexport_ns\":[{ns},1],\
             \"slab_per_import\":900,\"slab_per_export\":null}}"
        )
    }

    fn scale(records: &[String]) -> Scale {
        let mut s = Scale::default();
        for r in records {
            assert!(s.take(&serde_json::from_str(r).unwrap()).unwrap());
        }
        s
    }

    #[test]
    fn records_and_targets() {
        let s = scale(&[
            point(1, 10, 100),
            point(1, 100, 110),
            point(8, 100, 200),
            point(1, 10000, 140),
            "{\"metric\":\"scale_peer\",\"peers\":8,\"slab_per_peer\":5000}".into(),
        ]);
        let mut other = Scale::default();
        assert!(!other
            .take(&json!({"metric": "import", "path": "ours"}))
            .unwrap());
        // A point that ran twice pools its samples: 100, 100, 300, 300.
        let twice = scale(&[point(1, 10, 100), point(1, 10000, 150), point(1, 10, 300)]);
        assert_eq!(twice.points.len(), 2);
        assert_eq!(twice.points[0].runs, 2);
        assert_eq!(twice.points[0].at(0, 0.5), Some(200.0));
        assert!(
            twice.table().contains("     1     10    2 "),
            "{}",
            twice.table()
        );
        let records = s.records();
        assert_eq!(records.len(), 5);
        assert_eq!(records[0]["import_p50_ns"], 100);
        assert_eq!(records[0]["slab_per_import_bytes"], 900);
        assert_eq!(records[0]["slab_per_export_bytes"], Value::Null);
        assert_eq!(records[4]["slab_per_peer_bytes"], 5000);
        let mut said = Vec::new();
        s.targets(&mut |ok, text, _| said.push((ok, text)));
        // 140 / 100 in buffers; 200 / 110 in peers.
        assert_eq!(said[0].0, Some(true), "{}", said[0].1);
        assert!(said[0].1.contains("(10 to 10000)"), "{}", said[0].1);
        assert_eq!(said[1].0, Some(false), "{}", said[1].1);
        assert!(said[1].1.contains("import 1.82x"), "{}", said[1].1);
        assert!(s
            .table()
            .contains("slab bytes per connected peer (dom0): 5000"));
    }

    #[test]
    fn a_missing_sweep_is_not_measured() {
        let s = scale(&[point(1, 10, 100)]);
        let mut said = Vec::new();
        s.targets(&mut |ok, text, _| said.push((ok, text)));
        assert_eq!(said[0].0, None);
        assert_eq!(said[1].0, None);
    }
}
