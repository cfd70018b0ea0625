// SPDX-License-Identifier: MIT
//! `hdmabuf`: share dma-bufs between Xen domains from the command line.
//!
//! Exit status: 0 success, 1 an operation failed (the message says why and
//! what to do), 2 bad usage, 3 verification found different bytes, 4 a
//! wait timed out.

use clap::{Args, CommandFactory, Parser, Subcommand};
use hdmabuf::{check_pattern, follow_export, time_left, ExportArgs, Failure, Options, Output};
use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_client::{
    uapi, CpuAccess, Device, DomId, ExportOptions, HyperDmabufId, PrivData, Udmabuf,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Share dma-bufs between Xen domains through /dev/xen/hyper_dmabuf.
#[derive(Parser)]
#[command(version, about, after_help = hdmabuf::EXIT_STATUS_HELP)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a buffer filled with a test pattern and export it to a domain;
    /// stays running while the buffer is shared (closing the device
    /// unexports it).
    Export(ExportArgs),
    /// Import a buffer, map it and check or write its bytes.
    Import(ImportArgs),
    /// Print events as they arrive.
    Watch(WatchArgs),
    /// Show what is known about a buffer.
    Query(QueryArgs),
    /// List the buffers this domain exports and imports.
    List,
    /// Toolstack commands for hyper_dmabuf devices (in the domain with
    /// xenstored, normally dom0).
    Xl {
        #[command(subcommand)]
        command: hdmabuf_xl::XlCommand,
    },
    /// Revoke a buffer this domain exported.
    Unexport(UnexportArgs),
    /// Give a buffer this domain exports new private data (a new frame):
    /// the importer gets an Update event; does not wait for it.
    Update(UpdateArgs),
    /// Write the man pages or a shell's completions, generated from this
    /// command line's own definition (for packages).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
}

// `hdmabuf generate`.
#[derive(Subcommand)]
enum Generated {
    /// One man page per command (hdmabuf.1, hdmabuf-export.1, ...,
    /// hdmabuf-xl-daemon.1) into DIR.
    Man { dir: PathBuf },
    /// The completions of SHELL into DIR.
    Completions {
        shell: clap_complete::Shell,
        dir: PathBuf,
    },
}

// `hdmabuf import`.
#[derive(Args)]
struct ImportArgs {
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
}

// `hdmabuf watch`.
#[derive(Args)]
struct WatchArgs {
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds (exit status 4 if --count was not reached).
    #[arg(long)]
    timeout: Option<u64>,
}

// `hdmabuf query`.
#[derive(Args)]
struct QueryArgs {
    /// The buffer id.
    id: HyperDmabufId,
}

// `hdmabuf unexport`.
#[derive(Args)]
struct UnexportArgs {
    /// The buffer id.
    id: HyperDmabufId,
    /// Start the revocation after this many milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u32,
}

// `hdmabuf update`.
#[derive(Args)]
struct UpdateArgs {
    /// The buffer id.
    id: HyperDmabufId,
    /// The new private data (at most 192 bytes).
    #[arg(long = "priv", default_value = "")]
    r#priv: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit("hdmabuf", cli.options.json),
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let out = Output {
        json: cli.options.json,
    };
    let device = cli.options.device.as_str();
    match &cli.command {
        Command::Export(args) => export(args, device, &out),
        Command::Import(args) => import(args, device, &out),
        Command::Watch(args) => watch(args, device, &out),
        Command::Query(args) => query(args, device, &out),
        Command::List => list(device, &out),
        Command::Xl { command } => {
            hdmabuf_xl::run(command, cli.options.json).map_err(Failure::Error)
        }
        Command::Unexport(args) => unexport(args, device, &out),
        Command::Update(args) => update(args, device, &out),
        Command::Generate { what } => generate(what),
    }
}

/// `hdmabuf generate`: what a package installs, from the definition the
/// parser uses, so that neither can drift from the other.
fn generate(what: &Generated) -> Result<(), Failure> {
    let mut command = Cli::command();
    match what {
        Generated::Man { dir } => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(command, dir)?;
        }
        Generated::Completions { shell, dir } => {
            std::fs::create_dir_all(dir)?;
            clap_complete::generate_to(*shell, &mut command, "hdmabuf", dir)?;
        }
    }
    Ok(())
}

/// Creates a buffer holding the pattern of --seed, exports it and follows
/// its events until it is unexported (or --hold runs out).
fn export(args: &ExportArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let ExportArgs {
        domain,
        size,
        seed,
        rw,
        r#priv,
        hold,
        once,
        expect_seed,
    } = args;
    let domain =
        DomId::new(*domain).map_err(|e| Failure::Error(format!("--domain {domain}: {e}")))?;
    let priv_data =
        PrivData::new(r#priv.as_bytes()).map_err(|e| Failure::Error(format!("--priv: {e}")))?;
    let dev = Device::open_path(device)?;
    let buf = Udmabuf::with_contents(*size, |offset, piece| {
        pattern::fill_at(*seed, offset, piece)
    })?;
    let options = ExportOptions::new().writable(*rw).private_data(priv_data);
    let hid = dev.export(&buf, domain, &options)?;
    out.line(
        format!("exported {hid} ({} bytes, seed {seed}) to domain {domain}", buf.size),
        json!({ "exported": hid.to_string(), "size": buf.size, "seed": seed, "domain": domain.get(), "rw": rw }),
    );
    let released = follow_export(&dev, out, &hid, *hold, *once)?;
    if let Some(expect) = expect_seed {
        if !released {
            return Err(Failure::Error(
                "the buffer was never released by an importer".into(),
            ));
        }
        check_pattern(out, *expect, &buf.map(false)?)?;
    }
    Ok(())
}

/// Imports a buffer, maps it, checks or writes its bytes and holds it.
fn import(args: &ImportArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let ImportArgs {
        id,
        rw,
        verify,
        write,
        hold,
        reread,
    } = args;
    let dev = Device::open_path(device)?;
    let started = Instant::now();
    let imported = dev.import(id, *rw)?;
    let import_us = started.elapsed().as_micros();
    let size = imported.size;
    let map = imported.map()?;
    out.line(
        format!("imported {id}: {size} bytes in {import_us} us"),
        json!({ "imported": id.to_string(), "size": size, "import_us": import_us }),
    );
    let access = CpuAccess::begin(&imported, write.is_some())?;
    let checked = verify.map(|seed| check_pattern(out, seed, &map));
    if let Some(seed) = write {
        // Mapped writable: --write requires --rw.
        pattern::fill_mapping(*seed, &map);
        out.line(
            format!("wrote pattern {seed}"),
            json!({ "wrote_seed": seed }),
        );
    }
    access.end()?;
    let held = Instant::now() + Duration::from_secs(*hold);
    match verify {
        Some(seed) if *reread => {
            let mut passes = 0u64;
            while Instant::now() < held {
                if let Some(at) = pattern::first_mismatch_in(*seed, &map) {
                    return Err(Failure::Mismatch(format!(
                        "reading again (pass {}): byte {at} differs from the pattern",
                        passes + 1
                    )));
                }
                passes += 1;
            }
            out.line(
                format!("read the mapping {passes} times while holding it: every byte matched"),
                json!({ "reread_passes": passes }),
            );
        }
        _ => std::thread::sleep(held.saturating_duration_since(Instant::now())),
    }
    checked.transpose()?;
    Ok(())
}

/// Prints events as they arrive.
fn watch(args: &WatchArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let WatchArgs { count, timeout } = args;
    let dev = Device::open_path(device)?;
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        match dev.wait_event(time_left(deadline))? {
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

/// Prints every item the driver knows of a buffer.
fn query(args: &QueryArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let QueryArgs { id } = args;
    let info = Device::open_path(device)?.info(id)?;
    let fields = json!({
        "type": u64::from(info.imported),
        "exporter": info.exporter.get(),
        "importer": info.importer.get(),
        "size": info.size,
        "busy": u64::from(info.busy),
        "unexported": u64::from(info.unexported),
        "delayed_unexported": u64::from(info.delayed_unexport),
        "priv_size": info.priv_data.len(),
        "flags": info.flags.bits(),
        "priv": String::from_utf8_lossy(info.priv_data.as_bytes()),
    });
    let Value::Object(fields) = fields else {
        unreachable!("json! of an object");
    };
    if out.json {
        println!("{}", Value::Object(fields));
    } else {
        for (name, value) in &fields {
            println!("{name:>18}: {value}");
        }
    }
    Ok(())
}

/// Lists the buffers this domain exports and imports.
fn list(device: &str, out: &Output) -> Result<(), Failure> {
    let entries = Device::open_path(device)?.list()?;
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

/// Schedules the revocation of an export.
fn unexport(args: &UnexportArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let UnexportArgs { id, delay_ms } = args;
    Device::open_path(device)?.unexport(id, Duration::from_millis(u64::from(*delay_ms)))?;
    out.line(
        format!("unexport of {id} scheduled in {delay_ms} ms"),
        json!({ "unexport": id.to_string(), "delay_ms": delay_ms }),
    );
    Ok(())
}

fn update(args: &UpdateArgs, device: &str, out: &Output) -> Result<(), Failure> {
    let priv_data = PrivData::new(args.r#priv.as_bytes())
        .map_err(|e| Failure::Error(format!("--priv: {e}")))?;
    Device::open_path(device)?.update(&args.id, priv_data)?;
    out.line(
        format!("update of {} sent", args.id),
        json!({ "update": args.id.to_string(), "priv_size": priv_data.len() }),
    );
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The man pages a package installs: one per visible command, each
    /// naming its own command line, none for the hidden `generate`.
    #[test]
    fn man_pages_cover_every_command() {
        let dir = std::env::temp_dir().join(format!("hdmabuf-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        generate(&Generated::Man { dir: dir.clone() }).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        for want in [
            "hdmabuf.1",
            "hdmabuf-export.1",
            "hdmabuf-update.1",
            "hdmabuf-xl.1",
            "hdmabuf-xl-create.1",
            "hdmabuf-xl-daemon.1",
        ] {
            assert!(pages.iter().any(|p| p == want), "{want} not in {pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("generate")), "{pages:?}");
        let daemon = std::fs::read_to_string(dir.join("hdmabuf-xl-daemon.1")).unwrap();
        assert!(daemon.starts_with(".ie"), "not roff: {}", &daemon[..40]);
        assert!(daemon.contains("hdmabuf\\-xl\\-daemon"), "{daemon}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_for_each_shell() {
        let dir = std::env::temp_dir().join(format!("hdmabuf-comp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            generate(&Generated::Completions {
                shell,
                dir: dir.clone(),
            })
            .unwrap();
        }
        let bash = std::fs::read_to_string(dir.join("hdmabuf.bash")).unwrap();
        assert!(bash.contains("daemon") && bash.contains("unexport"));
        assert!(dir.join("_hdmabuf").exists());
        std::fs::remove_dir_all(&dir).unwrap();
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
