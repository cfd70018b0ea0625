#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The VM tests' part of the Debian dom0 image (platform/build-debian-dom0.sh),
# none of which a user's system has: the root filesystem's fstab, the
# domUs' kernel and initramfs and their xl configs under /hdm and
# /etc/xen, the scenarios and their helpers, and root's login on the
# console (for `make vm-shell`-style debugging).
#
#   install-harness.sh ROOT [DOMU_IMAGES]
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 ROOT [DOMU_IMAGES]" >&2; exit 2; }
root=$1 images=${2:-}
platform=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$platform/.." && pwd)

echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$root/etc/fstab"
# No password: the console is the only way in, and it is the test's.
chroot "$root" passwd -d root >/dev/null
# The console is the scenario's when one runs (a getty would hang the
# line up under it), else root's, logged in.
mkdir -p "$root/etc/systemd/system/serial-getty@hvc0.service.d"
cat >"$root/etc/systemd/system/serial-getty@hvc0.service.d/hdm.conf" <<'UNIT'
[Unit]
ConditionKernelCommandLine=!hdm.scenario
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,38400,9600 %I $TERM
UNIT
install -m 0644 "$platform/debian/hdm-scenario.service" "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../hdm-scenario.service "$root/etc/systemd/system/multi-user.target.wants/"
# The guests' consoles in files, which the scenario streams to its own:
# on tmpfs, so that a boot's logs hold only its own lines (a guest's
# markers of the boot before would mislead the runner).
mkdir -p "$root/var/log/xen"
ln -sfn /run/xen-console "$root/var/log/xen/console"
echo 'd /run/xen-console 0755 root root -' >"$root/etc/tmpfiles.d/hdm-xen-console.conf"
echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/run/xen-console"' >>"$root/etc/default/xen"

mkdir -p "$root/hdm/scenarios" "$root/hdm/domU" "$root/etc/xen"
install -m 0644 "$platform/images/lib.sh" "$root/hdm/lib.sh"
install -m 0755 "$platform/images/dom0-scenario" "$platform/debian/debian-scenario" "$root/hdm/"
install -m 0644 "$repo"/tests/vm/scenarios/*.sh "$root/hdm/scenarios/"
install -m 0644 "$platform"/xl/pv.cfg "$platform"/xl/pvh.cfg "$root/etc/xen/"
if [[ -n $images ]]; then
    install -m 0644 "$images/bzImage" "$root/hdm/domU/bzImage"
    install -m 0644 "$images/domU.cpio.gz" "$root/hdm/domU/initrd.gz"
fi
