// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile backend`: a hostile BACKEND (issue 13, point 4).
//!
//! In dom0 (or a driver domain) a user-space process plays the backend of
//! a guest's `hyper_dmabuf` device while the guest runs the real driver as
//! its frontend, and attacks it: malformed and changing backend nodes,
//! state jumps, broken rings and answers, requests the frontend must
//! refuse, page directories it must not map, and a hostile importer of
//! the guest's own exports (`attack`, `cases.rs`, over the plumbing of
//! `session.rs`). A referee in the guest judges each case (`referee`,
//! `referee.rs`). See tests/vm/scenarios/hostile-backend.sh.
//!
//! No kernel backend may serve the device meanwhile: the scenario unbinds
//! it from dom0's driver (`/sys/bus/xen-backend/drivers/hyper_dmabuf/
//! unbind`) before `attack` takes it over, and the guest loads its driver
//! only once `await` returns.

mod cases;
mod referee;
mod session;

use std::time::Duration;

use hdmabuf_agent::xendev::Gntdev;

use crate::xs::{mailbox, Xs};

/// `hdmabuf-hostile backend ...`.
#[derive(clap::Args)]
pub(crate) struct BackendArgs {
    #[command(subcommand)]
    command: BackendCommand,
}

#[derive(clap::Subcommand)]
enum BackendCommand {
    /// In the backend's domain: play the backend of device --devid of
    /// domain --domain, which no kernel backend may serve, and attack its
    /// frontend.
    Attack {
        /// The victim: the frontend's domain.
        #[arg(long)]
        domain: u16,
        /// The device.
        #[arg(long, default_value_t = 0)]
        devid: u32,
        /// Seed of ids.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A domain other than the victim (the well-behaved peer), to
        /// grant pages to that the victim must not be able to map.
        #[arg(long)]
        bystander: u16,
        /// Grant references 8 to this are tried when we look for grants
        /// of the victim we were never told of.
        #[arg(long, default_value_t = 2048)]
        scan_limit: u32,
        /// Run only these cases (all by default).
        cases: Vec<String>,
    },
    /// In the victim: judge the hostile backend of device --devid.
    Referee(RefereeArgs),
    /// In the victim, before loading the driver: wait until the hostile
    /// backend has taken the device over.
    Await {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

/// `hdmabuf-hostile backend referee`'s arguments.
#[derive(clap::Args)]
pub(crate) struct RefereeArgs {
    /// The hostile backend's domain.
    #[arg(long)]
    peer: u16,
    /// The attacked device of this domain.
    #[arg(long, default_value_t = 0)]
    devid: u32,
    /// The well-behaved peer, backend of device --good-devid.
    #[arg(long)]
    good: u16,
    /// The good peer's device.
    #[arg(long)]
    good_devid: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// The node that says the device is ours: `go` in the victim's mailbox
/// directory.
fn go_node(victim: u16) -> String {
    let (cmd, _) = mailbox(victim);
    match cmd.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/go"),
        None => "go".to_string(),
    }
}

/// Runs `hdmabuf-hostile backend ...`.
pub(crate) fn run(args: BackendArgs) -> Result<(), String> {
    match args.command {
        BackendCommand::Attack {
            domain,
            devid,
            seed,
            bystander,
            scan_limit,
            cases,
        } => {
            let own = crate::own_domid()?;
            let mut xs = Xs::open()?;
            let dev = session::BackDevice::find(&mut xs, own, domain, devid)?;
            let gntdev = Gntdev::open().map_err(|e| format!("gntdev: {e}"))?;
            let gntalloc = crate::peer::open_gntalloc()?;
            println!(
                "hostile backend: domain {own}, device {} of domain {domain}",
                dev.back
            );
            let go = go_node(domain);
            let mut ctx = cases::Ctx::new(xs, dev, &gntdev, &gntalloc, seed, bystander, scan_limit);
            cases::run(&mut ctx, &cases, &go)
        }
        BackendCommand::Referee(args) => referee::run(&args),
        BackendCommand::Await { timeout } => {
            let mut xs = Xs::open()?;
            let go = go_node(crate::own_domid()?);
            xs.wait_for(&go, Duration::from_secs(timeout), |v| v.is_some())
                .map(drop)
                .map_err(|e| format!("the hostile backend did not take the device over: {e}"))
        }
    }
}
