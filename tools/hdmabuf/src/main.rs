//! `hdmabuf`: share dma-bufs between Xen domains from the command line.
//!
//! Exit status: 0 success, 1 an operation failed (the message says why and
//! what to do), 2 bad usage, 3 verification found different bytes, 4 a
//! wait timed out.

mod bench;
mod device;
mod imported;
mod kcheck;
mod link;
mod pattern;
mod soak;
mod stress;
mod toolstack;
mod xendev;
mod xlcfg;
mod xlcreate;
mod xldaemon;

use clap::{Parser, Subcommand};
use device::{dmabuf_sync, Device};
use hdmabuf::{buffer, rng, sys, xsclient};
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{self, Event, EventType, QueryItem, DEVICE_PATH};
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_common::xen::DomId;
use hyper_dmabuf_xenbus_proto::parse;
use hyper_dmabuf_xenbus_proto::schema::{self, DeviceSpec};
use serde_json::{json, Value};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xlcfg::Domain;

/// Share dma-bufs between Xen domains through /dev/xen/hyper_dmabuf.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Exit status: 0 ok, 1 failure, 2 usage, 3 verification mismatch, 4 timeout."
)]
struct Cli {
    /// Print machine-readable JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The device node.
    #[arg(long, global = true, default_value = DEVICE_PATH)]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a buffer filled with a test pattern and export it to a domain;
    /// stays running while the buffer is shared (closing the device
    /// unexports it).
    Export {
        /// The domain to share with.
        #[arg(long, short)]
        domain: u32,
        /// Buffer size (bytes, or with K/M/G suffix); rounded up to pages.
        #[arg(long, short, default_value = "1M", value_parser = parse_size)]
        size: u64,
        /// Seed of the test pattern.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Let the importer map the buffer writable.
        #[arg(long)]
        rw: bool,
        /// Private data for the importer (at most 192 bytes).
        #[arg(long, default_value = "")]
        r#priv: String,
        /// Give up (unexport and exit) after this many seconds; by default
        /// wait until someone unexports the buffer.
        #[arg(long)]
        hold: Option<u64>,
        /// Unexport as soon as an importer has released the buffer, then
        /// wait until its grants have ended.
        #[arg(long)]
        once: bool,
        /// After an importer released it, verify the buffer holds the
        /// pattern of this seed (what a read-write importer wrote).
        #[arg(long)]
        expect_seed: Option<u64>,
    },
    /// Import a buffer, map it and check or write its bytes.
    Import {
        /// The buffer id, as printed by `export` or `watch`.
        id: HyperDmabufId,
        /// Map writable (the export must be read-write).
        #[arg(long)]
        rw: bool,
        /// Verify the bytes hold the test pattern of this seed.
        #[arg(long)]
        verify: Option<u64>,
        /// Write the test pattern of this seed (needs --rw).
        #[arg(long, requires = "rw")]
        write: Option<u64>,
        /// Keep the buffer imported this many seconds before releasing it.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// While holding, read the whole mapping again and again, checking
        /// the pattern of --verify each time (what a process reading a
        /// buffer sees if the exporter dies meanwhile).
        #[arg(long, requires = "verify")]
        reread: bool,
        /// Also have the driver read the buffer as a kernel importer does
        /// (attach, sg table, vmap) through debugfs, and compare its sum of
        /// the bytes with ours.
        #[arg(long)]
        kernel_check: bool,
    },
    /// Print events as they arrive.
    Watch {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (exit status 4 if --count was not reached).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Show what is known about a buffer.
    Query {
        /// The buffer id.
        id: HyperDmabufId,
    },
    /// List the buffers this domain exports and imports.
    List,
    /// Randomized export/import/unexport cycles with a peer running the
    /// other side (soak tests).
    Stress {
        #[command(subcommand)]
        command: stress::StressCommand,
    },
    /// One domain's agent of the long randomized soak: exports to every
    /// connected peer and imports and verifies what they export, for
    /// --seconds, tolerating (and counting) the errors of peers that die
    /// or restart (`make soak`).
    Soak(soak::SoakArgs),
    /// Measure sharing against gntdev-dmabuf, the grant-map floor and a
    /// copy, with a peer running the other side (`make bench`).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Toolstack commands for hyper_dmabuf devices (in the domain with
    /// xenstored, normally dom0).
    Xl {
        #[command(subcommand)]
        command: XlCommand,
    },
    /// Revoke a buffer this domain exported.
    Unexport {
        /// The buffer id.
        id: HyperDmabufId,
        /// Start the revocation after this many milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u32,
    },
}

/// `hdmabuf xl ...`.
#[derive(Subcommand)]
enum XlCommand {
    /// Create a domain with `xl create -p`, attach the devices of its
    /// config's `hyper_dmabuf` entries, then unpause it (see docs/xl.md).
    Create(XlCreate),
    /// Give domain DOMID a hyper_dmabuf device, described by SPEC (the
    /// config entry syntax) or by the flags.
    Attach(XlAttach),
    /// Close and remove a device.
    Detach {
        #[command(flatten)]
        device: XlDevice,
        /// Seconds to wait for the drivers to close before removing.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// List devices and their states.
    List {
        /// Only this domain's (a domain id or name).
        domain: Option<Domain>,
    },
    /// Follow domains: remove the nodes of destroyed ones, give a domain
    /// created with `hdmabuf xl create` its devices again when it reboots
    /// (see docs/xl.md). Runs until killed.
    Daemon {
        /// Reconcile once and exit (no watching).
        #[arg(long)]
        once: bool,
    },
}

/// A domain id xenstore can hold: below `DOMID_FIRST_RESERVED`, so that a
/// reserved id is a usage error (exit 2) rather than a failure.
fn domid_parser() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(..i64::from(parse::DOMID_FIRST_RESERVED))
}

/// Which device `xl attach` and `xl detach` work on.
#[derive(clap::Args)]
struct XlDevice {
    /// The frontend domain (a domain id or name).
    domain: Domain,
    /// The backend domain (a domain id or name).
    #[arg(long, default_value = "0")]
    backend: Domain,
    /// The device number.
    #[arg(long, default_value_t = 0)]
    devid: u32,
}

/// The id of `domain`: a name is looked up with `xl domid`, which a dry
/// run cannot do.
fn domid(domain: &Domain, what: &str, dry_run: bool) -> Result<u16, Failure> {
    match domain {
        Domain::Id(id) => Ok(*id),
        Domain::Name(n) if dry_run => Err(Failure::Error(format!(
            "{what} {n:?} is a domain name, and resolving names needs a running Xen; \
             give its domain id for a dry run"
        ))),
        Domain::Name(n) => xlcreate::domid_of(&mut xlcreate::RealHost, n)
            .map_err(|e| Failure::Error(format!("{what}: no domain {n:?}: {e}"))),
    }
}

impl XlDevice {
    /// The device with no optional configuration, its domains resolved.
    fn spec(&self, dry_run: bool) -> Result<DeviceSpec, Failure> {
        Ok(DeviceSpec {
            front: domid(&self.domain, "DOMAIN", dry_run)?,
            back: domid(&self.backend, "--backend", dry_run)?,
            devid: self.devid,
            max_ring_page_order: None,
            max_buffer_size: None,
            feature_rw: None,
        })
    }
}

/// `hdmabuf xl attach`.
#[derive(clap::Args)]
struct XlAttach {
    #[command(flatten)]
    device: XlDevice,
    /// Largest ring the backend offers (2^order pages per ring).
    #[arg(long, value_parser = clap::value_parser!(u32).range(..=i64::from(schema::MAX_RING_PAGE_ORDER)))]
    ring_page_order: Option<u32>,
    /// Largest buffer shared over the device, in MiB.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=u64::MAX >> 20))]
    max_buffer_mib: Option<u64>,
    /// Allow read-write exports (feature-rw = 1; else 0).
    #[arg(long)]
    rw: bool,
    /// Print the nodes, values and permissions instead of writing them.
    #[arg(long)]
    dry_run: bool,
    /// The device as a config entry, `backend=DOMID-OR-NAME, devid=N,
    /// ring-page-order=K, max-buffer-mib=M, rw=0|1`, every key optional.
    /// Not with the device flags.
    #[arg(conflicts_with_all = ["backend", "devid", "ring_page_order", "max_buffer_mib", "rw"])]
    spec: Option<String>,
}

/// `hdmabuf xl create`.
#[derive(clap::Args)]
struct XlCreate {
    /// Touch neither xl nor xenstore: print the nodes every entry would
    /// write, as if the new domain were --domid.
    #[arg(long, requires = "domid")]
    dry_run: bool,
    /// The domain id a dry run gives the new domain.
    #[arg(long, requires = "dry_run", value_parser = domid_parser())]
    domid: Option<u16>,
    /// The xl domain configuration file.
    cfg: String,
    /// Passed to `xl create` after CFG; KEY=VALUE ones are also read as
    /// settings that override the file's, as xl does.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    xl_args: Vec<String>,
}

impl XlAttach {
    /// The device to create, as an entry (what a record keeps) and as a
    /// spec with its domains resolved.
    fn device(&self) -> Result<(xlcfg::Entry, DeviceSpec), Failure> {
        let front = domid(&self.device.domain, "DOMAIN", self.dry_run)?;
        let entry = match &self.spec {
            Some(text) => xlcfg::Entry::parse(text, 0)
                .map_err(|e| Failure::Error(format!("SPEC {text:?}: {e}")))?,
            None => xlcfg::Entry {
                backend: self.device.backend.clone(),
                devid: self.device.devid,
                ring_page_order: self.ring_page_order,
                max_buffer_mib: self.max_buffer_mib,
                rw: Some(self.rw),
            },
        };
        let what = if self.spec.is_some() {
            "SPEC: key backend"
        } else {
            "--backend"
        };
        let back = domid(&entry.backend, what, self.dry_run)?;
        let spec = entry.spec(front, back);
        Ok((entry, spec))
    }
}

/// Why the tool stopped.
enum Failure {
    Error(String),
    Mismatch(String),
    Timeout(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, message) = match failure {
                Failure::Error(m) => (1, m),
                Failure::Mismatch(m) => (3, m),
                Failure::Timeout(m) => (4, m),
            };
            if cli.json {
                println!("{}", json!({ "error": message, "exit": code }));
            } else {
                eprintln!("hdmabuf: {message}");
            }
            ExitCode::from(code)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let out = Output { json: cli.json };
    match &cli.command {
        Command::Export {
            domain,
            size,
            seed,
            rw,
            r#priv,
            hold,
            once,
            expect_seed,
        } => {
            let domain = DomId::new(*domain)
                .map_err(|e| Failure::Error(format!("--domain {domain}: {e}")))?;
            let priv_data = PrivData::new(r#priv.as_bytes())
                .map_err(|e| Failure::Error(format!("--priv: {e}")))?;
            let dev = Device::open(&cli.device)?;
            let buf = buffer::create_udmabuf(*size, |bytes| pattern::fill(*seed, bytes))
                .map_err(|e| Failure::Error(format!("creating a {size}-byte udmabuf: {e}")))?;
            let hid = dev.export(buf.dmabuf.as_fd(), domain, *rw, priv_data)?;
            out.line(
                format!("exported {hid} ({} bytes, seed {seed}) to domain {domain}", buf.size),
                json!({ "exported": hid.to_string(), "size": buf.size, "seed": seed, "domain": domain.get(), "rw": rw }),
            );
            let deadline = hold.map(|s| Instant::now() + Duration::from_secs(s));
            let mut released = false;
            loop {
                let Some(event) = dev.next_event(wait_ms(deadline))? else {
                    // Held long enough: revoke and wait for the end of it.
                    dev.unexport(&hid, 0)?;
                    out.line(
                        format!("unexporting {hid}"),
                        json!({ "unexporting": hid.to_string() }),
                    );
                    wait_for(
                        &dev,
                        &out,
                        &hid,
                        EventType::GrantsEnded,
                        Duration::from_secs(30),
                    )?;
                    break;
                };
                out.event(&event);
                if event.hid.as_ref().is_some_and(|h| h.matches(&hid)) {
                    match event.kind {
                        EventType::Released if *once && !released => {
                            released = true;
                            dev.unexport(&hid, 0)?;
                            out.line(
                                format!("released; unexporting {hid}"),
                                json!({ "unexporting": hid.to_string() }),
                            );
                        }
                        EventType::Released => released = true,
                        EventType::GrantsEnded => break,
                        _ => {}
                    }
                }
            }
            if let Some(expect) = expect_seed {
                if !released {
                    return Err(Failure::Error(
                        "the buffer was never released by an importer".into(),
                    ));
                }
                let len = usize::try_from(buf.size)?;
                let map = sys::Mapping::new(buf.memfd.as_fd(), len, false)?;
                check_pattern(&out, *expect, map.as_slice())?;
            }
            Ok(())
        }
        Command::Import {
            id,
            rw,
            verify,
            write,
            hold,
            reread,
            kernel_check,
        } => {
            let dev = Device::open(&cli.device)?;
            let started = Instant::now();
            let (fd, size) = dev.import(id, *rw)?;
            let import_us = started.elapsed().as_micros();
            let len = usize::try_from(size)?;
            let mut map = sys::Mapping::new(fd.as_fd(), len, *rw)
                .map_err(|e| Failure::Error(format!("mapping the imported buffer: {e}")))?;
            out.line(
                format!("imported {id}: {size} bytes in {import_us} us"),
                json!({ "imported": id.to_string(), "size": size, "import_us": import_us }),
            );
            dmabuf_sync(fd.as_fd(), true, write.is_some())?;
            let checked = verify.map(|seed| check_pattern(&out, seed, map.as_slice()));
            if let (Some(seed), Some(bytes)) = (write, map.as_mut_slice()) {
                pattern::fill(*seed, bytes);
                out.line(
                    format!("wrote pattern {seed}"),
                    json!({ "wrote_seed": seed }),
                );
            }
            dmabuf_sync(fd.as_fd(), false, write.is_some())?;
            if *kernel_check {
                let report = kcheck::run(fd.as_fd(), map.as_slice())?;
                out.line(
                    format!("kernel importer view: {report}"),
                    json!({ "kernel_check": report }),
                );
            }
            let held = Instant::now() + Duration::from_secs(*hold);
            match verify {
                Some(seed) if *reread => {
                    let mut passes = 0u64;
                    while Instant::now() < held {
                        if let Some(at) = pattern::first_mismatch(*seed, map.as_slice()) {
                            return Err(Failure::Mismatch(format!(
                                "reading again (pass {}): byte {at} differs from the pattern",
                                passes + 1
                            )));
                        }
                        passes += 1;
                    }
                    out.line(
                        format!(
                            "read the mapping {passes} times while holding it: every byte matched"
                        ),
                        json!({ "reread_passes": passes }),
                    );
                }
                _ => std::thread::sleep(held.saturating_duration_since(Instant::now())),
            }
            checked.transpose()?;
            Ok(())
        }
        Command::Watch { count, timeout } => {
            let dev = Device::open(&cli.device)?;
            let deadline = timeout.map(|s| Instant::now() + Duration::from_secs(s));
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                match dev.next_event(wait_ms(deadline))? {
                    Some(event) => {
                        out.event(&event);
                        seen += 1;
                    }
                    None if count.is_some() => {
                        return Err(Failure::Timeout(format!(
                            "{seen} of {} events before the timeout",
                            count.unwrap_or(0)
                        )))
                    }
                    None => break,
                }
            }
            Ok(())
        }
        Command::Query { id } => {
            let dev = Device::open(&cli.device)?;
            let mut fields = serde_json::Map::new();
            for (name, item) in QUERY_ITEMS {
                fields.insert(name.to_string(), json!(dev.query(id, item)?));
            }
            let data = dev.query_priv(id)?;
            fields.insert("priv".into(), json!(String::from_utf8_lossy(&data)));
            if out.json {
                println!("{}", Value::Object(fields));
            } else {
                for (name, value) in &fields {
                    println!("{name:>18}: {value}");
                }
            }
            Ok(())
        }
        Command::List => {
            let dev = Device::open(&cli.device)?;
            let entries = dev.list()?;
            if out.json {
                let list: Vec<Value> = entries.iter().map(list_json).collect();
                println!("{}", json!({ "buffers": list }));
            } else if entries.is_empty() {
                println!("no buffers");
            } else {
                println!(
                    "{:<49} {:>8} {:>6} {:>12}  state",
                    "id", "kind", "peer", "size"
                );
                for e in &entries {
                    let kind = if e.kind == uapi::KIND_IMPORTED {
                        "imported"
                    } else {
                        "exported"
                    };
                    println!(
                        "{:<49} {kind:>8} {:>6} {:>12}  {}",
                        e.hid.to_string(),
                        e.peer,
                        e.size,
                        state_words(e.state)
                    );
                }
            }
            Ok(())
        }
        Command::Xl { command } => run_xl(command, &out),
        Command::Stress { command } => stress::run(command, &cli.device, &out),
        Command::Soak(args) => soak::run(args, &cli.device, &out),
        Command::Bench { command } => bench::run(command, &cli.device),
        Command::Unexport { id, delay_ms } => {
            let dev = Device::open(&cli.device)?;
            dev.unexport(id, *delay_ms)?;
            out.line(
                format!("unexport of {id} scheduled in {delay_ms} ms"),
                json!({ "unexport": id.to_string(), "delay_ms": delay_ms }),
            );
            Ok(())
        }
    }
}

fn run_xl(command: &XlCommand, out: &Output) -> Result<(), Failure> {
    let lines = match command {
        XlCommand::Create(args) => {
            let cfg = xlcfg::Config::read(&args.cfg, &args.xl_args)?;
            match args.domid {
                Some(domid) => xlcreate::dry_run(&cfg, domid)?,
                None => xlcreate::create(&mut xlcreate::RealHost, &args.cfg, &args.xl_args, &cfg)?,
            }
        }
        XlCommand::Attach(args) => {
            let (entry, spec) = args.device()?;
            let lines = toolstack::attach(&spec, args.dry_run)?;
            if !args.dry_run {
                toolstack::record(&spec, &entry, false)?;
            }
            lines
        }
        XlCommand::Detach { device, timeout } => {
            let spec = device.spec(false)?;
            // First, so that the daemon does not create it again.
            toolstack::forget(&spec)?;
            toolstack::detach(&spec, Duration::from_secs(*timeout))?
        }
        XlCommand::Daemon { once } => {
            xldaemon::run(*once, &|line| out.line(line.text, line.json))?;
            return Ok(());
        }
        XlCommand::List { domain } => {
            let domain = match domain {
                Some(d) => Some(domid(d, "DOMAIN", false)?),
                None => None,
            };
            let devices = toolstack::list(domain)?;
            // One object for the whole list, as `hdmabuf list --json`.
            if out.json {
                let all: Vec<Value> = devices.iter().map(toolstack::DeviceInfo::json).collect();
                println!("{}", json!({ "devices": all }));
            } else if devices.is_empty() {
                println!("no hyper_dmabuf devices");
            } else {
                println!("{}", toolstack::LIST_HEADER);
                for d in &devices {
                    println!("{}", d.line());
                }
            }
            return Ok(());
        }
    };
    for line in lines {
        out.line(line.text, line.json);
    }
    Ok(())
}

const QUERY_ITEMS: [(&str, QueryItem); 9] = [
    ("type", QueryItem::Type),
    ("exporter", QueryItem::Exporter),
    ("importer", QueryItem::Importer),
    ("size", QueryItem::Size),
    ("busy", QueryItem::Busy),
    ("unexported", QueryItem::Unexported),
    ("delayed_unexported", QueryItem::DelayedUnexported),
    ("priv_size", QueryItem::PrivSize),
    ("flags", QueryItem::Flags),
];

fn check_pattern(out: &Output, seed: u64, bytes: &[u8]) -> Result<(), Failure> {
    match pattern::first_mismatch(seed, bytes) {
        None => {
            out.line(
                format!("verified {} bytes (seed {seed})", bytes.len()),
                json!({ "verified": bytes.len(), "seed": seed }),
            );
            Ok(())
        }
        Some(at) => Err(Failure::Mismatch(format!(
            "byte {at} (page {}) differs from the pattern of seed {seed}",
            at / 4096
        ))),
    }
}

fn wait_for(
    dev: &Device,
    out: &Output,
    hid: &HyperDmabufId,
    kind: EventType,
    limit: Duration,
) -> Result<Event, Failure> {
    let deadline = Some(Instant::now() + limit);
    loop {
        let Some(event) = dev.next_event(wait_ms(deadline))? else {
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

fn wait_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => i32::try_from(d.saturating_duration_since(Instant::now()).as_millis())
            .unwrap_or(i32::MAX),
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
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

fn state_words(state: u32) -> String {
    let words: Vec<&str> = [
        (uapi::STATE_BUSY, "busy"),
        (uapi::STATE_UNEXPORTED, "unexported"),
        (uapi::STATE_DELAYED_UNEXPORT, "delayed-unexport"),
        (uapi::STATE_RW, "rw"),
    ]
    .iter()
    .filter(|(bit, _)| state & bit != 0)
    .map(|(_, word)| *word)
    .collect();
    if words.is_empty() {
        "-".into()
    } else {
        words.join(",")
    }
}

fn list_json(e: &uapi::ListEntry) -> Value {
    json!({
        "id": e.hid.to_string(),
        "kind": if e.kind == uapi::KIND_IMPORTED { "imported" } else { "exported" },
        "peer": e.peer.get(),
        "size": e.size,
        "state": state_words(e.state),
    })
}

/// Human or JSON output.
struct Output {
    json: bool,
}

impl Output {
    fn line(&self, text: String, value: Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    fn event(&self, event: &Event) {
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

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// The lines `hdmabuf xl attach --dry-run ARGS...` prints.
    fn dry_run(args: &[&str]) -> Vec<String> {
        let argv = ["hdmabuf", "xl", "attach", "--dry-run"].iter().chain(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Xl {
            command: XlCommand::Attach(attach),
        } = &cli.command
        else {
            panic!("not xl attach");
        };
        assert!(attach.dry_run);
        let spec = attach.device().ok().unwrap().1;
        toolstack::attach(&spec, true)
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect()
    }

    #[test]
    fn xl_attach_dry_run() {
        let f = "/local/domain/5/device/hyper_dmabuf/0";
        let b = "/local/domain/0/backend/hyper_dmabuf/5/0";
        let expect = [
            format!("{f} = \"\" (n5,r0)"),
            format!("{b} = \"\" (n0,r5)"),
            format!("{f}/backend = \"{b}\" (n5,r0)"),
            format!("{f}/backend-id = \"0\" (n5,r0)"),
            format!("{f}/state = \"1\" (n5,r0)"),
            format!("{b}/frontend = \"{f}\" (n0,r5)"),
            format!("{b}/frontend-id = \"5\" (n0,r5)"),
            format!("{b}/online = \"1\" (n0,r5)"),
            format!("{b}/state = \"1\" (n0,r5)"),
            format!("{b}/feature-rw = \"0\" (n0,r5)"),
        ];
        assert_eq!(dry_run(&["5"]), expect);
    }

    #[test]
    fn xl_attach_dry_run_with_every_option() {
        let lines = dry_run(&[
            "--backend",
            "3",
            "--devid",
            "2",
            "--ring-page-order",
            "4",
            "--max-buffer-mib",
            "256",
            "--rw",
            "7",
        ]);
        let b = "/local/domain/3/backend/hyper_dmabuf/7/2";
        assert_eq!(
            lines[..2],
            [
                "/local/domain/7/device/hyper_dmabuf/2 = \"\" (n7,r3)".to_string(),
                format!("{b} = \"\" (n3,r7)"),
            ]
        );
        assert_eq!(
            lines[9..],
            [
                format!("{b}/max-ring-page-order = \"4\" (n3,r7)"),
                format!("{b}/max-buffer-size = \"268435456\" (n3,r7)"),
                format!("{b}/feature-rw = \"1\" (n3,r7)"),
            ]
        );
    }

    #[test]
    fn xl_attach_spec_equals_the_flags() {
        let flags = dry_run(&[
            "--backend",
            "3",
            "--devid",
            "2",
            "--ring-page-order",
            "4",
            "--max-buffer-mib",
            "256",
            "--rw",
            "7",
        ]);
        let spec = dry_run(&[
            "7",
            "backend=3, devid=2, ring-page-order=4, max-buffer-mib=256, rw=1",
        ]);
        assert_eq!(spec, flags);
        // Defaults: backend 0, devid 0, feature-rw 0, as with no flags.
        assert_eq!(dry_run(&["5", ""]), dry_run(&["5"]));
    }

    #[test]
    fn xl_attach_spec_errors() {
        let spec = |args: &[&str]| {
            let argv = ["hdmabuf", "xl", "attach"].iter().chain(args);
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Xl {
                command: XlCommand::Attach(attach),
            } = &cli.command
            else {
                panic!("not xl attach");
            };
            match attach.device().map(|(_, spec)| spec) {
                Err(Failure::Error(e)) => e,
                _ => panic!("no error"),
            }
        };
        assert_eq!(
            spec(&["5", "rw=2"]),
            "SPEC \"rw=2\": key rw: \"2\" is out of range (0 to 1)"
        );
        assert!(spec(&["--dry-run", "5", "backend=dd"]).contains("needs a running Xen"));
    }

    #[test]
    fn xl_create_arguments() {
        let argv = [
            "hdmabuf",
            "xl",
            "create",
            "--dry-run",
            "--domid",
            "7",
            "g.cfg",
            "-q",
            "name=x",
        ];
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Xl {
            command: XlCommand::Create(create),
        } = &cli.command
        else {
            panic!("not xl create");
        };
        assert_eq!(create.domid, Some(7));
        assert_eq!(create.xl_args, ["-q", "name=x"]);
    }

    #[test]
    fn xl_usage_errors() {
        for args in [
            &["xl", "attach", "5", "rw=1", "--rw"][..],
            &["xl", "attach", "5", "--backend", "3", "backend=3"],
            &["xl", "create", "--dry-run", "g.cfg"],
            &["xl", "create", "--domid", "7", "g.cfg"],
            &["xl", "create", "--dry-run", "--domid", "32752", "g.cfg"],
            &["xl", "create"],
            &["xl", "attach"],
            &["xl", "attach", "32752"],
            &["xl", "attach", "5", "--backend", "65535"],
            &["xl", "attach", "5", "--ring-page-order", "5"],
            &["xl", "attach", "5", "--max-buffer-mib", "0"],
            &["xl", "attach", "5", "--max-buffer-mib", "17592186044416"],
            &["xl", "detach", "-1"],
            &["xl", "list", "a/b"],
            &["xl", "attach", "guest 1"],
        ] {
            let argv = std::iter::once(&"hdmabuf").chain(args);
            let e = Cli::try_parse_from(argv).err().unwrap();
            // clap exits 2 for every usage error.
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
