// SPDX-License-Identifier: MIT
//! Starting QEMU with Xen, dom0's kernel and initramfs, and reading its
//! serial line.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The boot images made by `platform/build-images.sh`.
#[derive(Clone, Debug)]
pub struct Images {
    /// Xen hypervisor (multiboot ELF).
    pub xen: PathBuf,
    /// The platform kernel.
    pub bzimage: PathBuf,
    /// dom0's initramfs.
    pub dom0_initrd: PathBuf,
}

impl Images {
    /// The images in `dir`.
    pub fn in_dir(dir: &Path) -> Result<Self, String> {
        let images = Images {
            xen: dir.join("xen"),
            bzimage: dir.join("bzImage"),
            dom0_initrd: dir.join("dom0.cpio.gz"),
        };
        bootable(
            &[&images.xen, &images.bzimage, &images.dom0_initrd],
            "make images",
        )?;
        Ok(images)
    }
}

/// Checks that every file of `paths` exists (else says to run `make`)
/// and can be named to QEMU, whose option syntax has no comma in a path.
fn bootable(paths: &[&PathBuf], make: &str) -> Result<(), String> {
    for p in paths {
        if !p.is_file() {
            return Err(format!("{} missing: run `{make}`", p.display()));
        }
        if p.to_string_lossy().contains(',') {
            return Err(format!(
                "{}: QEMU cannot take a comma in a path",
                p.display()
            ));
        }
    }
    Ok(())
}

/// The Debian dom0 made by `platform/build-debian-dom0.sh`: Xen and the
/// kernel as apt installed them (copied out of the disk's `/boot`), and
/// the disk.
#[derive(Clone, Debug)]
pub struct DebianImages {
    /// Xen hypervisor (multiboot ELF).
    pub xen: PathBuf,
    /// The kernel of the `linux-image` package.
    pub vmlinuz: PathBuf,
    /// dom0's root filesystem (ext4, raw).
    pub disk: PathBuf,
}

impl DebianImages {
    /// The images in `dir`.
    pub fn in_dir(dir: &Path) -> Result<Self, String> {
        let images = DebianImages {
            xen: dir.join("xen"),
            vmlinuz: dir.join("vmlinuz"),
            disk: dir.join("disk.img"),
        };
        bootable(
            &[&images.xen, &images.vmlinuz, &images.disk],
            "make debian-dom0",
        )?;
        Ok(images)
    }
}

/// What dom0 boots: the embedded platform's initramfs, or the Debian
/// dom0's disk through a copy-on-write overlay of it (`disk`), which the
/// boots of one run share.
#[derive(Clone, Copy, Debug)]
pub enum Dom0<'a> {
    /// Xen, the kernel and dom0's initramfs.
    Initramfs(&'a Images),
    /// Xen and the kernel of the Debian dom0, its root on `disk`.
    Disk {
        /// The Debian dom0's images.
        images: &'a DebianImages,
        /// The qcow2 overlay over `images.disk` this run writes to.
        disk: &'a Path,
    },
}

/// Creates `overlay`, a qcow2 file backed by the raw `base`, with qemu-img.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img create {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Xen's command line.
///
/// dom0 gets one vCPU: with two, its boot sometimes died of an `int3` Oops
/// in `sched_clock_tick` (a CPU running code another CPU was patching with
/// `text_poke_bp` under QEMU TCG, about one boot in five). Xen still has
/// two physical CPUs for dom0 and the domUs.
///
/// Sharing a 1 GiB buffer takes 262,144 grants in the exporter and as many
/// maptrack entries (twice that with a PV user mapping) in the importer:
/// Xen's defaults (64 grant frames, 1024 maptrack frames) are raised for
/// dom0 here and for domUs in their xl configs.
///
/// Every console (Xen's, dom0's, and the domUs' relayed by dom0) reaches
/// the runner through Xen's serial transmit buffer, 16 KiB by default;
/// Xen drops what does not fit, and a burst on a loaded host once lost a
/// guest's end marker. 1 MiB takes any burst our scenarios make.
pub const XEN_CMDLINE: &str = "console=com1 com1=115200,8n1 serial_tx_buffer=1M \
     dom0_mem=2048M,max:2048M \
     dom0_max_vcpus=1 gnttab_max_frames=2048 gnttab_max_maptrack_frames=4096 \
     loglvl=all guest_loglvl=all";

/// The QEMU command that boots Xen with dom0; `dom0_args` is appended to
/// dom0's kernel command line. `interactive` keeps QEMU's monitor on the
/// serial multiplexer (Ctrl-a x quits).
pub fn command(qemu: &str, dom0: Dom0<'_>, dom0_args: &str, interactive: bool) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-machine",
        "q35",
        "-cpu",
        "qemu64,+svm,+npt",
        "-m",
        "6144",
        "-smp",
        "2",
    ]);
    c.args(["-display", "none", "-nodefaults", "-no-reboot"]);
    if interactive {
        c.args(["-serial", "mon:stdio"]);
    } else {
        c.args(["-serial", "stdio", "-monitor", "none"]);
    }
    let common = "console=hvc0 earlyprintk=xen udmabuf.size_limit_mb=2048";
    match dom0 {
        Dom0::Initramfs(images) => {
            c.arg("-kernel").arg(&images.xen);
            c.args(["-append", XEN_CMDLINE]);
            let modules = format!(
                "{} {common} rdinit=/init {dom0_args},{}",
                images.bzimage.display(),
                images.dom0_initrd.display()
            );
            c.arg("-initrd").arg(modules);
        }
        Dom0::Disk { images, disk } => {
            c.arg("-kernel").arg(&images.xen);
            c.args(["-append", XEN_CMDLINE]);
            let modules = format!(
                "{} {common} root=/dev/vda rw {dom0_args}",
                images.vmlinuz.display()
            );
            c.arg("-initrd").arg(modules);
            c.arg("-drive").arg(format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                disk.display()
            ));
        }
    }
    c
}

/// The CPU time a QEMU process has used, from `/proc/PID/stat`, sampled
/// while it runs: the last sample before it exits is kept. The runner
/// calls [`CpuClock::sample`] for every serial line and at least once a
/// second; the file is read once a second at most, so at most about two
/// seconds go uncounted.
pub struct CpuClock {
    stat: PathBuf,
    last_ticks: Option<u64>,
    sampled_at: Option<Instant>,
}

impl CpuClock {
    /// The clock of process `pid`, not yet sampled.
    pub fn new(pid: u32) -> Self {
        CpuClock {
            stat: PathBuf::from(format!("/proc/{pid}/stat")),
            last_ticks: None,
            sampled_at: None,
        }
    }

    /// Reads the process's user and system time, if it still runs and the
    /// last read is a second old.
    pub fn sample(&mut self) {
        let now = Instant::now();
        if self
            .sampled_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.sampled_at = Some(now);
        if let Some(ticks) = fs::read_to_string(&self.stat)
            .ok()
            .and_then(|stat| cpu_ticks(&stat))
        {
            self.last_ticks = Some(ticks);
        }
    }

    /// The CPU seconds of the last sample.
    pub fn seconds(&self) -> Option<f64> {
        let hz = rustix::param::clock_ticks_per_second();
        self.last_ticks.map(|t| t as f64 / hz as f64)
    }
}

/// `utime + stime` of a `/proc/PID/stat` line, in clock ticks: fields 14
/// and 15, counted after the command name, which may hold spaces and
/// parentheses (so from the last `)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // After the name: field 3 (state) is the first.
    let mut fields = after_comm.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// What the reader threads send.
#[derive(Debug)]
pub enum Event {
    /// One serial line, line ending and carriage returns removed.
    Line(String),
    /// QEMU's stdout closed.
    Eof,
}

/// Starts QEMU with its stdout and stderr read line by line into a channel.
pub fn spawn(mut cmd: Command) -> Result<(Child, Receiver<Event>), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().ok_or("QEMU stdout not captured")?;
    let stderr = child.stderr.take().ok_or("QEMU stderr not captured")?;
    let tx2 = tx.clone();
    thread::spawn(move || {
        read_lines(stdout, |l| tx.send(Event::Line(l)).is_ok());
        let _ = tx.send(Event::Eof);
    });
    thread::spawn(move || {
        read_lines(stderr, |l| {
            tx2.send(Event::Line(format!("qemu: {l}"))).is_ok()
        });
    });
    Ok((child, rx))
}

fn read_lines(r: impl Read, mut send: impl FnMut(String) -> bool) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
                if !send(line) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A name with a space and a parenthesis; utime 1234, stime 56.
        let stat = "4242 (qemu (x) 2) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 5 0";
        assert_eq!(cpu_ticks(stat), Some(1290));
        assert_eq!(cpu_ticks("4242 (qemu) S 1"), None);
        assert_eq!(cpu_ticks("garbage"), None);
    }
}
