// SPDX-License-Identifier: MIT
//! A small, honest timing harness: warm-up, a batch size calibrated so
//! that one sample lasts long enough for the clock, many samples, and the
//! median with the 10th and 90th percentiles.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// One benchmark result.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Bytes the operation covers (message or buffer size).
    pub size_bytes: u64,
    /// The unit of `ns_median`, e.g. `ns/msg`.
    pub metric: &'static str,
    /// Median time per unit, in nanoseconds.
    pub ns_median: f64,
    /// 10th percentile.
    pub ns_p10: f64,
    /// 90th percentile.
    pub ns_p90: f64,
    /// Samples taken.
    pub reps: usize,
    /// Calls of the measured closure per sample.
    pub batch: u64,
}

impl Measurement {
    /// `(p90 - p10) / median`: the relative spread of the samples.
    pub fn spread(&self) -> f64 {
        if self.ns_median > 0.0 {
            (self.ns_p90 - self.ns_p10) / self.ns_median
        } else {
            0.0
        }
    }
}

/// How long to run.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Warm-up before calibration.
    pub warm_up: Duration,
    /// Shortest sample; the batch grows until one takes this long.
    pub min_sample: Duration,
    /// Samples to take.
    pub samples: usize,
}

/// Times `f`, which performs `units` units of work per call (messages,
/// decodes), and reports nanoseconds per unit.
pub fn measure(
    name: impl Into<String>,
    size_bytes: u64,
    metric: &'static str,
    units: u64,
    budget: Budget,
    mut f: impl FnMut(),
) -> Measurement {
    let start = Instant::now();
    while start.elapsed() < budget.warm_up {
        f();
    }
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed() >= budget.min_sample || batch >= 1 << 30 {
            break;
        }
        batch *= 2;
    }
    let mut per_unit: Vec<f64> = (0..budget.samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            let ns = t.elapsed().as_nanos() as f64;
            black_box(ns) / (batch * units) as f64
        })
        .collect();
    per_unit.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| per_unit[((per_unit.len() - 1) as f64 * q).round() as usize];
    Measurement {
        name: name.into(),
        size_bytes,
        metric,
        ns_median: at(0.5),
        ns_p10: at(0.1),
        ns_p90: at(0.9),
        reps: per_unit.len(),
        batch,
    }
}

/// The results as a JSON array of records.
pub fn to_json(results: &[Measurement]) -> String {
    let mut out = String::from("[\n");
    for (i, m) in results.iter().enumerate() {
        out.push_str(&format!(
            "  {{\"name\": \"{}\", \"size_bytes\": {}, \"metric\": \"{}\", \"ns_median\": {:.3}, \
             \"ns_p10\": {:.3}, \"ns_p90\": {:.3}, \"spread\": {:.4}, \"reps\": {}, \"batch\": {}}}{}\n",
            m.name.replace('"', "'"),
            m.size_bytes,
            m.metric,
            m.ns_median,
            m.ns_p10,
            m.ns_p90,
            m.spread(),
            m.reps,
            m.batch,
            if i + 1 == results.len() { "" } else { "," }
        ));
    }
    out.push_str("]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_and_serialises() {
        let budget = Budget {
            warm_up: Duration::from_millis(1),
            min_sample: Duration::from_micros(50),
            samples: 5,
        };
        let mut x = 0u64;
        let m = measure("spin", 8, "ns/op", 1, budget, || x = black_box(x + 1));
        assert_eq!(m.reps, 5);
        assert!(m.ns_p10 <= m.ns_median && m.ns_median <= m.ns_p90);
        let json = to_json(&[m.clone(), m]);
        assert!(json.starts_with("[\n  {\"name\": \"spin\""));
        assert_eq!(json.matches("\"reps\": 5").count(), 2);
    }
}
