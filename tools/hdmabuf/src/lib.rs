// SPDX-License-Identifier: MIT
//! The conventions of the `hdmabuf` command line, which the project's
//! test agents (`tests/agents`) keep too, so that scripts read them alike:
//! sizes with a K/M/G suffix ([`parse_size`]), a line of text or one JSON
//! object per result ([`Output`]), and the exit status of each way to fail
//! ([`Failure`]): 0 success, 1 an operation failed (the message says why
//! and what to do), 2 bad usage (clap's), 3 verification found different
//! bytes, 4 a wait timed out. And what every exporter of a test buffer
//! does after the export, whoever made the buffer ([`follow_export`],
//! [`check_pattern`]).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_client::{uapi, Device, Event, EventType, HyperDmabufId, Mapping, DEVICE_PATH};
use serde_json::{json, Value};

/// The exit statuses, for the end of `--help`.
pub const EXIT_STATUS_HELP: &str =
    "Exit status: 0 ok, 1 failure, 2 usage, 3 verification mismatch, 4 timeout.";

/// The options every command takes.
#[derive(clap::Args)]
pub struct Options {
    /// Print machine-readable JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The device node.
    #[arg(long, global = true, default_value = DEVICE_PATH)]
    pub device: String,
}

/// The options of `hdmabuf export`, which the test agents that export
/// other producers' buffers take too (`hdmabuf-agent export-from`).
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The domain to share with.
    #[arg(long, short)]
    pub domain: u32,
    /// Buffer size (bytes, or with K/M/G suffix); rounded up to pages.
    #[arg(long, short, default_value = "1M", value_parser = parse_size)]
    pub size: u64,
    /// Seed of the test pattern.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Let the importer map the buffer writable.
    #[arg(long)]
    pub rw: bool,
    /// Private data for the importer (at most 192 bytes).
    #[arg(long, default_value = "")]
    pub r#priv: String,
    /// Give up (unexport and exit) after this many seconds; by default
    /// wait until someone unexports the buffer.
    #[arg(long)]
    pub hold: Option<u64>,
    /// Unexport as soon as an importer has released the buffer, then
    /// wait until its grants have ended.
    #[arg(long)]
    pub once: bool,
    /// After an importer released it, verify the buffer holds the
    /// pattern of this seed (what a read-write importer wrote).
    #[arg(long)]
    pub expect_seed: Option<u64>,
}

/// Why a command stopped.
#[derive(Debug)]
pub enum Failure {
    /// An operation failed (exit status 1).
    Error(String),
    /// Verification found bytes other than the pattern's (exit status 3).
    Mismatch(String),
    /// A wait timed out (exit status 4).
    Timeout(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.to_string())
    }
}

impl Failure {
    /// Reports the failure of `tool` (on stderr, or as a JSON object on
    /// stdout with `json`) and returns its exit status.
    pub fn exit(self, tool: &str, json: bool) -> ExitCode {
        let (code, message) = match self {
            Failure::Error(m) => (1, m),
            Failure::Mismatch(m) => (3, m),
            Failure::Timeout(m) => (4, m),
        };
        if json {
            println!("{}", json!({ "error": message, "exit": code }));
        } else {
            eprintln!("{tool}: {message}");
        }
        ExitCode::from(code)
    }
}

/// A size in bytes, or with a K, M or G suffix (KiB, MiB, GiB); not zero.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "m" | "MiB" => 20,
        "G" | "g" | "GiB" => 30,
        _ => return Err(format!("unknown unit {unit:?}: use K, M or G")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    value
        .checked_mul(1 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{text:?} is zero or too large"))
}

/// Human or JSON output.
pub struct Output {
    /// One JSON object per line instead of text.
    pub json: bool,
}

impl Output {
    /// Prints `text`, or `value` in JSON mode.
    pub fn line(&self, text: String, value: Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    /// Prints an event of the device.
    pub fn event(&self, event: &Event) {
        let hid = event.hid.map(|h| h.to_string());
        let priv_text = String::from_utf8_lossy(event.priv_data.as_bytes()).into_owned();
        let value = json!({
            "event": format!("{:?}", event.kind),
            "peer": event.peer.get(),
            "id": hid,
            "size": event.size,
            "rw": event.flags.bits() & uapi::EXPORT_RW != 0,
            "priv": priv_text,
            "lost": event.lost,
        });
        let text = format!(
            "{:?} from domain {}{}{}{}",
            event.kind,
            event.peer,
            hid.as_deref()
                .map(|h| format!(" id {h}"))
                .unwrap_or_default(),
            if event.size > 0 {
                format!(" size {}", event.size)
            } else {
                String::new()
            },
            if priv_text.is_empty() {
                String::new()
            } else {
                format!(" priv {priv_text:?}")
            },
        );
        self.line(text, value);
        if event.lost > 0 && !self.json {
            println!(
                "  ({} earlier events about domain {} were lost: it used up its share of the queue)",
                event.lost, event.peer
            );
        }
    }
}

/// Follows the events of the export `hid` until its grants have ended:
/// printed as they come; with `once`, the buffer is unexported as soon as
/// an importer has released it; after `hold` seconds (if given), it is
/// unexported. Returns whether an importer released it.
///
/// # Errors
///
/// A failed wait or unexport; no `GrantsEnded` within 30 s of an unexport
/// is a [`Failure::Timeout`].
pub fn follow_export(
    dev: &Device,
    out: &Output,
    hid: &HyperDmabufId,
    hold: Option<u64>,
    once: bool,
) -> Result<bool, Failure> {
    let deadline = hold.map(|s| Instant::now() + Duration::from_secs(s));
    let mut released = false;
    loop {
        let Some(event) = dev.wait_event(time_left(deadline))? else {
            // Held long enough: revoke and wait for the end of it.
            dev.unexport(hid, Duration::ZERO)?;
            out.line(
                format!("unexporting {hid}"),
                json!({ "unexporting": hid.to_string() }),
            );
            wait_for(
                dev,
                out,
                hid,
                EventType::GrantsEnded,
                Duration::from_secs(30),
            )?;
            return Ok(released);
        };
        out.event(&event);
        if event.hid.as_ref().is_some_and(|h| h.matches(hid)) {
            match event.kind {
                EventType::Released if once && !released => {
                    released = true;
                    dev.unexport(hid, Duration::ZERO)?;
                    out.line(
                        format!("released; unexporting {hid}"),
                        json!({ "unexporting": hid.to_string() }),
                    );
                }
                EventType::Released => released = true,
                EventType::GrantsEnded => return Ok(released),
                _ => {}
            }
        }
    }
}

/// Checks that `map` holds the pattern of `seed`.
///
/// # Errors
///
/// [`Failure::Mismatch`] naming the first byte that differs.
pub fn check_pattern(out: &Output, seed: u64, map: &Mapping) -> Result<(), Failure> {
    match pattern::first_mismatch_in(seed, map) {
        None => {
            out.line(
                format!("verified {} bytes (seed {seed})", map.len()),
                json!({ "verified": map.len(), "seed": seed }),
            );
            Ok(())
        }
        Some(at) => Err(Failure::Mismatch(format!(
            "byte {at} (page {}) differs from the pattern of seed {seed}",
            at / 4096
        ))),
    }
}

/// Waits at most `limit` for an event of `kind` about `hid`, printing
/// every event.
///
/// # Errors
///
/// A failed wait; none within `limit` is a [`Failure::Timeout`].
pub fn wait_for(
    dev: &Device,
    out: &Output,
    hid: &HyperDmabufId,
    kind: EventType,
    limit: Duration,
) -> Result<Event, Failure> {
    let deadline = Some(Instant::now() + limit);
    loop {
        let Some(event) = dev.wait_event(time_left(deadline))? else {
            return Err(Failure::Timeout(format!(
                "no {kind:?} event for {hid} within {} s",
                limit.as_secs()
            )));
        };
        out.event(&event);
        if event.kind == kind && event.hid.as_ref().is_some_and(|h| h.matches(hid)) {
            return Ok(event);
        }
    }
}

/// What is left until `deadline`; `None` (wait forever) without one.
pub fn time_left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("3X").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
