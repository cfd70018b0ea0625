// SPDX-License-Identifier: MIT
//! `hdmabuf-agent`: the project's test agents, which the VM scenarios run
//! in each domain with a peer doing the other side: randomized cycles
//! (`stress`), frames announced faster than they are taken (`frames`),
//! the long randomized soak (`soak`), the benchmark (`bench`), the
//! kernel importer's view of a buffer (`kcheck`), buffers of real
//! drivers (`export-from`, `import-to`) and buffers the driver must refuse
//! (`refused`). Not part of the user's `hdmabuf` command; they keep its
//! conventions (`--json`, sizes, exit statuses: see the `hdmabuf`
//! library).

mod bench;
mod fences;
mod frames;
mod kcheck;
mod media;
mod refused;
mod scale;
mod soak;
mod stress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hdmabuf::{Options, Output};

/// The test agents of hyper-dmabuf's VM scenarios.
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
    /// Frames announced faster than the importer takes them: order,
    /// newest frame per buffer, no call that waits or fails.
    Frames {
        #[command(subcommand)]
        command: frames::FramesCommand,
    },
    /// Fences that cross domains: vgem's write fences on an exported
    /// buffer make the importer's readers wait, until signalled or timed
    /// out.
    Fences {
        #[command(subcommand)]
        command: fences::FencesCommand,
    },
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
    /// Import a buffer, verify its test pattern, and have the driver read
    /// it as a kernel importer does (attach, sg table, vmap) through
    /// debugfs, comparing its sum of the bytes with ours.
    Kcheck(kcheck::KcheckArgs),
    /// Export a buffer that a real driver made (vgem, vivid), filled
    /// with the test pattern, and follow it as `hdmabuf export` does.
    ExportFrom {
        #[command(subcommand)]
        producer: media::Producer,
    },
    /// Import a buffer and hand it to a real driver (vivid) that reads
    /// or writes it.
    ImportTo {
        #[command(subcommand)]
        consumer: media::Consumer,
    },
    /// What one more buffer costs as the buffers and the peers grow:
    /// dom0 drives, every guest serves (`make bench`'s scale records).
    Scale {
        #[command(subcommand)]
        command: scale::ScaleCommand,
    },
    /// Export a dma-buf the driver must refuse (from the test module:
    /// device memory, a partial page, an offset) and check it does, with
    /// EINVAL.
    Refused(refused::RefusedArgs),
    /// Capture frames with vivid and export each to the display's domain
    /// (the guest's side of the camera-to-display demo).
    Camera(media::CameraArgs),
    /// Show the frames a camera domain exports on vkms and check each
    /// written-back frame against them (dom0's side of the demo).
    Display(media::DisplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output {
        json: cli.options.json,
    };
    let done = match &cli.command {
        Command::Frames { command } => frames::run(command, &cli.options.device, &out),
        Command::Fences { command } => fences::run(command, &cli.options.device, &out),
        Command::Stress { command } => stress::run(command, &cli.options.device, &out),
        Command::Soak(args) => soak::run(args, &cli.options.device, &out),
        Command::Bench { command } => bench::run(command, &cli.options.device),
        Command::Kcheck(args) => kcheck::run(args, &cli.options.device, &out),
        Command::ExportFrom { producer } => media::export_from(producer, &cli.options.device, &out),
        Command::ImportTo { consumer } => media::import_to(consumer, &cli.options.device, &out),
        Command::Scale { command } => scale::run(command, &cli.options.device, &out),
        Command::Refused(args) => refused::run(args, &cli.options.device, &out),
        Command::Camera(args) => media::camera(args, &cli.options.device, &out),
        Command::Display(args) => media::display(args, &cli.options.device, &out),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit("hdmabuf-agent", cli.options.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
