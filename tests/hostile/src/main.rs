// SPDX-License-Identifier: MIT
//! `hdmabuf-hostile`: test-only tools that attack `hyper_dmabuf.ko`
//! (issue 8): a hostile frontend in user space (`peer`), the referee that
//! judges it from the victim's domain (`referee`), and an abuser of the
//! control device's ioctls (`ioctl`). See tests/vm/scenarios/hostile.sh.
//!
//! Exit status: 0 every case passed, 1 a case failed (listed), 2 usage.

mod backend;
mod cases;
mod ffi;
mod ioctl;
mod latency;
mod limits;
mod malformed;
mod mm;
mod peer;
mod referee;
mod trust;
mod xs;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Attack hyper_dmabuf from user space (test only).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play the frontend of device --devid against the real backend, and
    /// attack it (the domain must not run hyper_dmabuf.ko).
    Peer {
        /// The device of this domain to use.
        #[arg(long, default_value_t = 0)]
        devid: u32,
        /// Seed of ids and other random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A domain that is not the backend, to grant pages to that the
        /// backend must not be able to map.
        #[arg(long, default_value_t = 0x7fef)]
        bystander: u16,
        /// How many times `reconnect-flood` reconnects.
        #[arg(long, default_value_t = 1000)]
        reconnects: u32,
        /// Run only these cases (all by default).
        cases: Vec<String>,
    },
    /// In the backend's domain: judge the hostile peer in --domain.
    Referee(referee::RefereeArgs),
    /// Measure the latency of a local ioctl and of an export round trip
    /// with a well-behaved peer (what the referee measures under a flood).
    Latency(latency::LatencyArgs),
    /// Abuse /dev/xen/hyper_dmabuf: the named cases, then --calls random
    /// ioctls; finally try the device as an unprivileged user.
    Ioctl {
        /// A domain connected to this one.
        #[arg(long)]
        peer: u16,
        /// Random calls after the named cases.
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
        /// Seed of the random calls.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The unprivileged uid and gid to try the device as.
        #[arg(long, default_value_t = 65534)]
        nobody: u32,
    },
    /// Import a buffer and run every mm operation on its mapping as an
    /// unprivileged process: the bytes, errnos, signals and counters of
    /// docs/uapi.md ("What a process can do with an imported buffer's
    /// mapping").
    Mm(mm::MmArgs),
    /// A hostile backend in user space against a guest's frontend, and
    /// its referee in the guest (tests/vm/scenarios/hostile-backend.sh).
    Backend(backend::BackendArgs),
    /// The local trust model (docs/uapi.md, "Who may do what"): an
    /// export is managed by its file or an administrator's, an open file
    /// is the capability; checked from an unprivileged file.
    Trust(trust::TrustArgs),
    /// The unprivileged half of `trust` (started by it).
    #[command(hide = true)]
    TrustCheck(trust::CheckArgs),
}

/// This domain's id, from xenstore's relative `domid` node.
fn own_domid() -> Result<u16, String> {
    let mut xs = xs::Xs::open()?;
    xs.read("domid")?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "xenstore has no domid for this domain".to_string())
}

fn peer(
    devid: u32,
    seed: u64,
    bystander: u16,
    reconnects: u32,
    only: &[String],
) -> Result<(), String> {
    let own = own_domid()?;
    let mut xs = xs::Xs::open()?;
    let dev = peer::Device::find(&mut xs, own, devid)?;
    let gntalloc = peer::open_gntalloc()?;
    println!(
        "hostile: domain {own}, device {} (backend domain {})",
        dev.front, dev.backend_id
    );
    let mut ctx = cases::Ctx::new(xs, dev, &gntalloc, seed, bystander);
    ctx.reconnects = reconnects;
    let outcome = cases::run(&mut ctx, only);
    ctx.finish().and(outcome)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Peer {
            devid,
            seed,
            bystander,
            reconnects,
            cases,
        } => peer(devid, seed, bystander, reconnects, &cases),
        Command::Referee(args) => referee::run(&args),
        Command::Latency(args) => latency::run(&args),
        Command::Ioctl {
            peer,
            calls,
            seed,
            nobody,
        } => ioctl::run(&ioctl::Options {
            calls,
            seed,
            peer,
            nobody,
        }),
        Command::Mm(args) => mm::run(args),
        Command::Backend(args) => backend::run(args),
        Command::Trust(args) => trust::run(&args),
        Command::TrustCheck(args) => trust::check(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hdmabuf-hostile: FAILED:\n{e}");
            ExitCode::FAILURE
        }
    }
}
