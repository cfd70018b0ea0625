// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile latency`: what a local process and a well-behaved
//! peer wait for while a hostile peer keeps the driver busy (the
//! `refill-flood` case; the referee runs the same measurement in-process,
//! once with the hostile peer idle and once while it floods).
//!
//! Two measurements run side by side for a fixed time:
//!
//! * **ioctl**: `HDMABUF_IOCTL_LIST`, which takes the lock of every
//!   connection, the hostile one's included, every [`IOCTL_PACE`];
//! * **export**: a round trip with the well-behaved peer: `EXPORT` of a
//!   small buffer (the ioctl returns once the peer's driver has answered),
//!   then its unexport, waiting for `GrantsEnded` before the next one. The
//!   figure is the export ioctl's time: our request out, the peer's answer
//!   back through this domain's event handling.
//!
//! Beside them, this domain's CPU time from `/proc/stat` over the same
//! window, and then over [`CPU_WINDOW`] with no measurement running: how
//! busy the flood alone keeps it.

use crate::limits::scaled;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper_dmabuf_client::testing::{pattern, retry_full};
use hyper_dmabuf_client::{Device, ExportOptions, Udmabuf};
use hyper_dmabuf_common::uapi::{EventType, DEVICE_PATH};
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_common::xen::DomId;

/// Time between two LIST calls.
const IOCTL_PACE: Duration = Duration::from_millis(2);

/// Pages of the buffer exported to the well-behaved peer.
const EXPORT_PAGES: u64 = 4;

/// The window of CPU time with nothing of ours running.
const CPU_WINDOW: Duration = Duration::from_secs(5);

/// How long an unexport's `GrantsEnded` may take (the peer never maps).
const ENDED_WITHIN: Duration = Duration::from_secs(10);

/// `hdmabuf-hostile latency`'s arguments.
#[derive(clap::Args)]
pub(crate) struct LatencyArgs {
    /// The well-behaved peer to export to (its driver answers; nothing
    /// needs to run in its user space).
    #[arg(long)]
    peer: u16,
    /// How long to measure.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// One distribution of waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    /// Samples.
    pub(crate) count: usize,
    /// Median.
    pub(crate) p50: Duration,
    /// 99th percentile.
    pub(crate) p99: Duration,
    /// Longest.
    pub(crate) max: Duration,
}

impl Spread {
    fn of(mut samples: Vec<Duration>) -> Result<Self, String> {
        if samples.is_empty() {
            return Err("no samples".into());
        }
        samples.sort_unstable();
        let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
        Ok(Spread {
            count: samples.len(),
            p50: at(50),
            p99: at(99),
            max: samples[samples.len() - 1],
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50={} p99={} max={} (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

/// Milliseconds with three decimals.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1000.0)
}

/// What one window measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    /// LIST ioctl latency.
    pub(crate) ioctl: Spread,
    /// Export round trip with the well-behaved peer.
    pub(crate) export: Spread,
    /// Share of this domain's CPU time spent busy, in percent.
    pub(crate) busy_pct: f64,
    /// Of that, in the kernel (system, irq, softirq), in percent.
    pub(crate) kernel_pct: f64,
    /// Share busy with no measurement running, in percent.
    pub(crate) alone_busy_pct: f64,
    /// Of that, in the kernel, in percent.
    pub(crate) alone_kernel_pct: f64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ioctl {}; export {}; cpu busy {:.1}% (kernel {:.1}%), with nothing measured \
             {:.1}% ({:.1}%)",
            self.ioctl,
            self.export,
            self.busy_pct,
            self.kernel_pct,
            self.alone_busy_pct,
            self.alone_kernel_pct
        )
    }
}

/// The `cpu` line of `/proc/stat`: (busy, kernel, total) ticks.
fn cpu_ticks() -> Result<(u64, u64, u64), String> {
    let text = fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat has no cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    if v.len() < 8 {
        return Err(format!("/proc/stat: short cpu line {line:?}"));
    }
    // user nice system idle iowait irq softirq steal
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4];
    let steal = v[7];
    let kernel = v[2] + v[5] + v[6];
    Ok((total - idle - steal, kernel, total - steal))
}

/// Busy and kernel shares of this domain's CPU time, in percent, between
/// two samples of [`cpu_ticks`].
fn shares(before: (u64, u64, u64), after: (u64, u64, u64)) -> (f64, f64) {
    let total = after.2.saturating_sub(before.2).max(1) as f64;
    (
        after.0.saturating_sub(before.0) as f64 * 100.0 / total,
        after.1.saturating_sub(before.1) as f64 * 100.0 / total,
    )
}

/// Measures for `window`, exporting to `peer`.
pub(crate) fn measure(peer: DomId, window: Duration) -> Result<Figures, String> {
    let lister = Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())?;
    let exporter = Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())?;
    let buf = Udmabuf::with_contents(EXPORT_PAGES * 4096, |at, b| pattern::fill_at(1, at, b))
        .map_err(|e| format!("udmabuf: {e}"))?;
    let priv_data = PrivData::new(b"hostile latency").map_err(|e| e.to_string())?;
    let options = ExportOptions::new().private_data(priv_data);
    let start = cpu_ticks()?;
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + window;
    let (ioctl, export) = std::thread::scope(|s| {
        let lists = s.spawn(|| -> Result<Vec<Duration>, String> {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                lister.list().map_err(|e| e.to_string())?;
                samples.push(t.elapsed());
                std::thread::sleep(IOCTL_PACE);
            }
            Ok(samples)
        });
        let mut samples = Vec::new();
        let exports = (|| -> Result<(), String> {
            while Instant::now() < deadline {
                let t = Instant::now();
                let hid = retry_full(|| exporter.export(&buf, peer, &options))
                    .map_err(|e| e.to_string())?;
                samples.push(t.elapsed());
                exporter
                    .unexport(&hid, Duration::ZERO)
                    .map_err(|e| e.to_string())?;
                let until = Instant::now() + scaled(ENDED_WITHIN);
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(format!(
                            "no GrantsEnded for {hid} within {} s",
                            scaled(ENDED_WITHIN).as_secs()
                        ));
                    }
                    let event = exporter.wait_event(Some(left)).map_err(|e| e.to_string())?;
                    if event.is_some_and(|e| {
                        e.kind == EventType::GrantsEnded && e.hid.is_some_and(|h| h.matches(&hid))
                    }) {
                        break;
                    }
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let lists = lists
            .join()
            .map_err(|_| "the LIST thread panicked".to_string());
        (lists, exports.map(|()| samples))
    });
    let measured = cpu_ticks()?;
    std::thread::sleep(CPU_WINDOW);
    let (busy_pct, kernel_pct) = shares(start, measured);
    let (alone_busy_pct, alone_kernel_pct) = shares(measured, cpu_ticks()?);
    Ok(Figures {
        ioctl: Spread::of(ioctl??)?,
        export: Spread::of(export?)?,
        busy_pct,
        kernel_pct,
        alone_busy_pct,
        alone_kernel_pct,
    })
}

/// `hdmabuf-hostile latency`: one window, printed.
pub(crate) fn run(args: &LatencyArgs) -> Result<(), String> {
    let peer = DomId::new(u32::from(args.peer)).map_err(|e| format!("--peer: {e:?}"))?;
    let figures = measure(peer, Duration::from_secs(args.seconds))?;
    println!("latency: {figures}");
    Ok(())
}
