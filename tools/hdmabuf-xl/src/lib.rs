// SPDX-License-Identifier: MIT
//! The toolstack's part for `hyper_dmabuf` devices, which xl itself does
//! not know: `hdmabuf xl ...` (docs/xl.md). [`XlCommand`] is the command
//! line the `hdmabuf` command offers as its `xl` subcommand, [`run`] does
//! what it says. It runs in the domain with xenstored, normally dom0.
//!
//! * `toolstack`: devices created and removed with libxl's layout and
//!   permissions, listed with their states;
//! * `xlcfg`: xl domain configuration files and their `hyper_dmabuf`
//!   entries;
//! * `xlcreate`: `xl create` with the devices of the configuration;
//! * `xldaemon`: the domains followed through their lives;
//! * `xladopt`: the configuration files of domains started by plain
//!   `xl create` or xendomains, which the daemon adopts;
//! * [`xsclient`]: the client of xenstored they all speak through, which
//!   the test tools use too.

use std::time::Duration;

use hyper_dmabuf_xenbus_proto::parse;
use hyper_dmabuf_xenbus_proto::schema::{self, DeviceSpec};
use serde_json::{json, Value};

use toolstack::Line;
use xlcfg::Domain;

mod toolstack;
mod xladopt;
mod xlcfg;
mod xlcreate;
mod xldaemon;
pub mod xsclient;

/// `hdmabuf xl ...`.
#[derive(clap::Subcommand)]
pub enum XlCommand {
    /// Create a domain with `xl create -p`, attach the devices of its
    /// config's `hyper_dmabuf` entries, then unpause it (see docs/xl.md).
    Create(XlCreate),
    /// Give domain DOMID a hyper_dmabuf device, described by SPEC (the
    /// config entry syntax) or by the flags.
    Attach(XlAttach),
    /// Close and remove a device.
    Detach(XlDetach),
    /// List devices and their states.
    List(XlList),
    /// Follow domains: remove the nodes of destroyed ones, give a domain
    /// created with `hdmabuf xl create` its devices again when it reboots,
    /// and one started by plain `xl create` or xendomains the devices of
    /// its file in /etc/xen/auto or /etc/xen (see docs/xl.md). Runs until
    /// killed.
    Daemon(XlDaemon),
    /// Drop every record and mark the daemon keeps in xenstore, for when
    /// it stops for good (removing the Debian package runs it). Devices
    /// stay as they are.
    Forget(XlForget),
}

/// A domain id xenstore can hold: below `DOMID_FIRST_RESERVED`, so that a
/// reserved id is a usage error (exit 2) rather than a failure.
fn domid_parser() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(..i64::from(parse::DOMID_FIRST_RESERVED))
}

/// Which device `xl attach` and `xl detach` work on.
#[derive(clap::Args)]
pub struct XlDevice {
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
fn domid(domain: &Domain, what: &str, dry_run: bool) -> Result<u16, String> {
    match domain {
        Domain::Id(id) => Ok(*id),
        Domain::Name(n) if dry_run => Err(format!(
            "{what} {n:?} is a domain name, and resolving names needs a running Xen; \
             give its domain id for a dry run"
        )),
        Domain::Name(n) => xlcreate::domid_of(&mut xlcreate::RealHost, n)
            .map_err(|e| format!("{what}: no domain {n:?}: {e}")),
    }
}

impl XlDevice {
    /// The device with no optional configuration, its domains resolved.
    fn spec(&self, dry_run: bool) -> Result<DeviceSpec, String> {
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
pub struct XlAttach {
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
pub struct XlCreate {
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

/// `hdmabuf xl detach`.
#[derive(clap::Args)]
pub struct XlDetach {
    #[command(flatten)]
    device: XlDevice,
    /// Seconds to wait for the drivers to close before removing.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// `hdmabuf xl list`.
#[derive(clap::Args)]
pub struct XlList {
    /// Only this domain's (a domain id or name).
    domain: Option<Domain>,
}

/// `hdmabuf xl forget`.
#[derive(clap::Args)]
pub struct XlForget {
    /// Every domain's (the only choice so far: a single domain's record
    /// would come back, adopted again from its file).
    #[arg(long, required = true)]
    all: bool,
}

/// `hdmabuf xl daemon`.
#[derive(clap::Args)]
pub struct XlDaemon {
    /// Reconcile once and exit (no watching).
    #[arg(long)]
    once: bool,
    /// Give a domain started by plain `xl create` or by xendomains the
    /// devices of the configuration file in DIR that names it (repeatable;
    /// default: /etc/xen/auto and /etc/xen).
    #[arg(long, value_name = "DIR")]
    adopt_from: Vec<std::path::PathBuf>,
    /// Adopt no domain: only those created with `hdmabuf xl create` get
    /// their devices back.
    #[arg(long, conflicts_with = "adopt_from")]
    no_adopt: bool,
}

impl XlAttach {
    /// The device to create, as an entry (what a record keeps) and as a
    /// spec with its domains resolved.
    fn device(&self) -> Result<(xlcfg::Entry, DeviceSpec), String> {
        let front = domid(&self.device.domain, "DOMAIN", self.dry_run)?;
        let entry = match &self.spec {
            Some(text) => {
                xlcfg::Entry::parse(text, 0).map_err(|e| format!("SPEC {text:?}: {e}"))?
            }
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

/// Prints a line: its text, or its object with `json`.
fn print(json: bool, line: Line) {
    if json {
        println!("{}", line.json);
    } else {
        println!("{}", line.text);
    }
}

/// Runs `hdmabuf xl COMMAND`, printing what it did (one JSON object per
/// line with `json`); the error says why it failed and what to do.
pub fn run(command: &XlCommand, json: bool) -> Result<(), String> {
    let lines = match command {
        XlCommand::Create(args) => {
            let cfg = xlcfg::Config::read(&args.cfg, &args.xl_args).map_err(|e| e.to_string())?;
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
        XlCommand::Detach(args) => {
            let spec = args.device.spec(false)?;
            // First, so that the daemon does not create it again.
            toolstack::forget(&spec)?;
            toolstack::detach(&spec, Duration::from_secs(args.timeout))?
        }
        XlCommand::Daemon(args) => {
            let adopt_from = match (args.no_adopt, args.adopt_from.is_empty()) {
                (true, _) => Vec::new(),
                (false, true) => xladopt::DEFAULT_DIRS.iter().map(Into::into).collect(),
                (false, false) => args.adopt_from.clone(),
            };
            return xldaemon::run(args.once, adopt_from, &|line| print(json, line));
        }
        XlCommand::List(args) => return list(args, json),
        XlCommand::Forget(_) => toolstack::forget_all()?,
    };
    for line in lines {
        print(json, line);
    }
    Ok(())
}

/// `hdmabuf xl list`: a table, or one object for the whole list, as
/// `hdmabuf list --json`.
fn list(args: &XlList, json: bool) -> Result<(), String> {
    let domain = match &args.domain {
        Some(d) => Some(domid(d, "DOMAIN", false)?),
        None => None,
    };
    let devices = toolstack::list(domain)?;
    if json {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The shape of the `hdmabuf` command line around `xl`.
    #[derive(Parser)]
    #[command(name = "hdmabuf")]
    struct Hdmabuf {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(clap::Subcommand)]
    enum Top {
        Xl {
            #[command(subcommand)]
            command: XlCommand,
        },
    }

    fn parse(args: &[&str]) -> XlCommand {
        let argv = ["hdmabuf", "xl"].iter().chain(args);
        let Top::Xl { command } = Hdmabuf::try_parse_from(argv).unwrap().command;
        command
    }

    /// The lines `hdmabuf xl attach --dry-run ARGS...` prints.
    fn dry_run(args: &[&str]) -> Vec<String> {
        let argv: Vec<&str> = ["attach", "--dry-run"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        let XlCommand::Attach(attach) = parse(&argv) else {
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
            let argv: Vec<&str> = ["attach"].iter().chain(args).copied().collect();
            let XlCommand::Attach(attach) = parse(&argv) else {
                panic!("not xl attach");
            };
            match attach.device().map(|(_, spec)| spec) {
                Err(e) => e,
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
        let XlCommand::Create(create) = parse(&[
            "create",
            "--dry-run",
            "--domid",
            "7",
            "g.cfg",
            "-q",
            "name=x",
        ]) else {
            panic!("not xl create");
        };
        assert_eq!(create.domid, Some(7));
        assert_eq!(create.xl_args, ["-q", "name=x"]);
    }
}
