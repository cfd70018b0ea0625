//! `hdmabuf-hostile`: test-only tools that attack `hyper_dmabuf.ko`
//! (issue 8): a hostile frontend in user space (`peer`), the referee that
//! judges it from the victim's domain (`referee`), and an abuser of the
//! control device's ioctls (`ioctl`). See tests/vm/scenarios/hostile.sh.
//!
//! Exit status: 0 every case passed, 1 a case failed (listed), 2 usage.

mod cases;
mod ffi;
mod ioctl;
mod peer;
mod referee;
mod xs;

use std::process::ExitCode;
use std::time::Duration;

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
        /// Run only these cases (all by default).
        cases: Vec<String>,
    },
    /// In the backend's domain: judge the hostile peer in --domain.
    Referee {
        /// The hostile peer's domain.
        #[arg(long)]
        domain: u16,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
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
}

/// This domain's id, from xenstore's relative `domid` node.
fn own_domid() -> Result<u16, String> {
    let mut xs = xs::Xs::open()?;
    xs.read("domid")?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "xenstore has no domid for this domain".to_string())
}

fn peer(devid: u32, seed: u64, bystander: u16, only: &[String]) -> Result<(), String> {
    let own = own_domid()?;
    let mut xs = xs::Xs::open()?;
    let dev = peer::Device::find(&mut xs, own, devid)?;
    let gntalloc = peer::open_gntalloc()?;
    println!(
        "hostile: domain {own}, device {} (backend domain {})",
        dev.front, dev.backend_id
    );
    let mut ctx = cases::Ctx::new(xs, dev, &gntalloc, seed, bystander);
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
            cases,
        } => peer(devid, seed, bystander, &cases),
        Command::Referee { domain, timeout } => referee::run(domain, Duration::from_secs(timeout)),
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
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hdmabuf-hostile: FAILED:\n{e}");
            ExitCode::FAILURE
        }
    }
}
