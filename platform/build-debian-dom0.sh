#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The Debian flavour of the platform's dom0 (issue 17, docs/install.md):
# a Debian bookworm root filesystem made from Debian's packages, with
# xen-system-amd64 installed by apt, the platform kernel installed as
# Debian packages, and this project's packages (make deb) installed from a
# local repository, DKMS building the module inside the image. The VM then
# boots what a user's machine would have: Xen and the kernel from the
# image's /boot, dom0's root on a virtio disk, systemd.
#
#   build-debian-dom0.sh DEB_DIR [DOMU_IMAGES]   build if needed, print the directory
#   build-debian-dom0.sh --dir DEB_DIR [...]     only print where it lives
#
# DEB_DIR holds hdmabuf_*.deb and hyper-dmabuf-dkms_*.deb. DOMU_IMAGES
# (platform/build-images.sh's directory) gives the domUs' kernel and
# initramfs and the scenario files, installed under /hdm for the tests.
#
# Three stages, each cached by its own inputs:
#   base    mmdebstrap of bookworm: systemd, udev, xen-system-amd64, dkms,
#           the kernel's toolchain (rustc-web, clang-19, lld-19, llvm-19,
#           libclang) and bindgen-cli from the host's cargo install, as a
#           user would (bookworm's bindgen, 0.60, is older than the 0.65.1
#           the kernel needs); keyed by its mmdebstrap command (the package
#           list, the mirrors) and the toolchain's versions
#   kernel  linux-image and linux-headers from the flavour's tree by
#           `make bindeb-pkg`, and linux-lib-rust-<release>: the Rust build
#           files an out-of-tree Rust module needs, which 6.12's headers
#           package leaves out (as Ubuntu ships them); keyed by the tree
#   disk    the base, a local apt repository of the kernel's and this
#           project's packages, `apt-get install` in a chroot (DKMS builds
#           hyper_dmabuf.ko for the platform kernel there), the test
#           harness under /hdm; `mkfs.ext4 -d` makes disk.img, and Xen and
#           the kernel are copied out of its /boot; keyed by everything
set -euo pipefail
STAGE_NAME=debian-dom0
. "$(dirname "$0")/lib.sh"

only_dir=0
if [[ ${1:-} == --dir ]]; then
    only_dir=1
    shift
fi
[[ $# -ge 1 ]] || die "usage: $0 [--dir] DEB_DIR [DOMU_IMAGES]"
DEB_DIR=$(cd "$1" && pwd)
DOMU_IMAGES=${2:-}

SUITE=bookworm
MIRRORS=(
    "deb http://deb.debian.org/debian $SUITE main"
    "deb http://deb.debian.org/debian $SUITE-updates main"
    "deb http://deb.debian.org/debian-security $SUITE-security main"
)
# What a Xen dom0 with this project installed has, and what DKMS needs to
# build a Rust module for the platform kernel (driver/preflight.sh).
BASE_PKGS=(
    systemd-sysv udev kmod dbus procps iproute2 less
    xenstore-utils
    xen-system-amd64
    dkms make gcc libc6-dev
    rustc-web rust-web-src clang-19 lld-19 llvm-19 libclang-19-dev
)
KDIR=$("$PLATFORM_DIR/build-kernel.sh" --dir)
KRELEASE=$(cat "$KDIR/include/config/kernel.release")

# The base system is what this mmdebstrap command makes: its key is the
# command itself and the toolchain it must match, not the whole script
# (a change elsewhere here must not cost a new base).
MMDEBSTRAP_ARGS=(--mode=root --variant=minbase --format=tar
    --include="$(IFS=,; echo "${BASE_PKGS[*]}")"
    --customize-hook="copy-in $KBINDGEN /usr/local/bin"
    --customize-hook='echo dom0 >"$1/etc/hostname"'
    "$SUITE")
base_key=$({ printf '%s\n' "${MMDEBSTRAP_ARGS[@]}" "${MIRRORS[@]}"; toolchain_id; } | hash16)
BASE=$HDMABUF_CACHE/debian-dom0/base-$base_key.tar
KDEBS=$HDMABUF_CACHE/debian-dom0/kernel-$(basename "$(dirname "$KDIR")")

debs=("$DEB_DIR"/hdmabuf_*_amd64.deb "$DEB_DIR"/hyper-dmabuf-dkms_*_all.deb)
for d in "${debs[@]}"; do [[ -f $d ]] || die "$d missing: run make deb"; done
disk_key=$({
    echo "$base_key $KDEBS"
    sha256sum "${debs[@]}" | cut -d' ' -f1
    [[ -z $DOMU_IMAGES ]] || echo "$DOMU_IMAGES"
    cat "$0" "$PLATFORM_DIR"/debian/*
} | hash16)
OUT=$HDMABUF_CACHE/debian-dom0/$HDMABUF_KERNEL-$disk_key

if ((only_dir)); then
    echo "$OUT"
    exit 0
fi
if [[ -f $OUT/.hdm-complete ]]; then
    stage_done "cache hit: $OUT"
    echo "$OUT"
    exit 0
fi
mkdir -p "$HDMABUF_CACHE/debian-dom0"

# --- base ---------------------------------------------------------------------
if [[ ! -f $BASE ]]; then
    say "base: mmdebstrap $SUITE with ${#BASE_PKGS[@]} packages and their dependencies (cold: several minutes)"
    t=$(date +%s)
    mmdebstrap "${MMDEBSTRAP_ARGS[@]}" "$BASE.tmp" "${MIRRORS[@]}" >&2
    mv "$BASE.tmp" "$BASE"
    say "base: $(du -h "$BASE" | cut -f1) in $(($(date +%s) - t)) s"
    # Keep the newest two bases.
    ls -1t "$HDMABUF_CACHE"/debian-dom0/base-*.tar | tail -n +3 | xargs -r rm -f
fi

# --- kernel packages ------------------------------------------------------------
if [[ ! -f $KDEBS/.hdm-complete ]]; then
    say "kernel: make bindeb-pkg in a copy of $KDIR"
    rm -rf "$KDEBS"
    mkdir -p "$KDEBS"
    t=$(date +%s)
    # bindeb-pkg runs `make all` with the package's revision as the build
    # number and the time of day as the build's, so it relinks vmlinux:
    # run in the tree itself, it changed the bzImage under the images
    # built from it earlier in the same `make test`, whose key then named
    # images that did not exist. So it runs in a copy of the tree (only
    # the link steps run again there); the packages land beside the copy.
    # The version is the release's, so that the packages' names say which
    # tree they came from.
    copy=$HDMABUF_CACHE/debian-dom0/kernel-tree.tmp
    rm -rf "$copy"
    mkdir -p "$copy"
    bzimage_sum=$(sha256sum <"$KDIR/arch/x86/boot/bzImage")
    cp -a "$KDIR" "$copy/linux"
    make -C "$copy/linux" -s "${KMAKE_VARS[@]}" -j2 KDEB_PKGVERSION="$KRELEASE-1" bindeb-pkg >&2
    mv "$copy"/linux-image-"$KRELEASE"_*.deb "$copy"/linux-headers-"$KRELEASE"_*.deb "$KDEBS/"
    rm -rf "$copy"
    [[ $(sha256sum <"$KDIR/arch/x86/boot/bzImage") == "$bzimage_sum" ]] ||
        die "the kernel in $KDIR changed while its packages were made"
    "$PLATFORM_DIR/debian/linux-lib-rust.sh" "$KDIR" "$KRELEASE" "$KDEBS" >&2
    touch "$KDEBS/.hdm-complete"
    say "kernel: $(cd "$KDEBS" && ls *.deb | tr '\n' ' ')in $(($(date +%s) - t)) s"
fi

# --- disk -------------------------------------------------------------------------
say "disk: the base, then apt-get install of the kernel's and our packages (DKMS builds the module)"
rm -rf "$OUT" "$OUT.tmp"
mkdir -p "$OUT.tmp/root"
root=$OUT.tmp/root
cleanup() {
    for m in dev/pts dev proc sys; do umount "$root/$m" 2>/dev/null || true; done
}
trap cleanup EXIT
tar -xf "$BASE" -C "$root"

repo=$root/srv/hdm-repo
mkdir -p "$repo"
cp "$KDEBS"/*.deb "${debs[@]}" "$repo/"
(cd "$repo" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null)
echo "deb [trusted=yes] file:/srv/hdm-repo ./" >"$root/etc/apt/sources.list.d/hdm.list"

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
in_root() { chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root DEBIAN_FRONTEND=noninteractive "$@"; }
# Only the local repository: the image is made with what the base has.
apt_local=(-o Dir::Etc::sourcelist=sources.list.d/hdm.list -o Dir::Etc::sourceparts=-
    -o APT::Get::List-Cleanup=0)
in_root apt-get "${apt_local[@]}" update -q >&2
t=$(date +%s)
in_root apt-get "${apt_local[@]}" install -y -q --no-install-recommends \
    "linux-image-$KRELEASE" "linux-headers-$KRELEASE" "linux-lib-rust-$KRELEASE" \
    hyper-dmabuf-dkms hdmabuf >"$OUT.tmp/apt.log" 2>&1 ||
    { tail -40 "$OUT.tmp/apt.log" >&2; die "apt-get install in the image failed (log: $OUT.tmp/apt.log)"; }
ko=$(find "$root/lib/modules/$KRELEASE/updates/dkms" -name 'hyper_dmabuf.ko*' 2>/dev/null | head -1)
[[ -n $ko ]] || { tail -40 "$OUT.tmp/apt.log" >&2; die "DKMS installed no hyper_dmabuf.ko for $KRELEASE"; }
say "disk: apt-get install and DKMS in $(($(date +%s) - t)) s: ${ko#"$root"}"
cleanup
trap - EXIT

# The test harness: the scenario driver and its unit, the domUs' images,
# the scenarios. None of it is part of what a user installs.
"$PLATFORM_DIR/debian/install-harness.sh" "$root" "$DOMU_IMAGES" >&2

# Xen and the kernel, as apt installed them, for QEMU to boot.
gunzip -c "$root"/boot/xen-4.17-amd64.gz >"$OUT.tmp/xen"
cp "$root/boot/vmlinuz-$KRELEASE" "$OUT.tmp/vmlinuz"
size_mb=$(($(du -sm "$root" | cut -f1) * 5 / 4 + 1024))
mkfs.ext4 -q -F -L hdm-dom0 -d "$root" "$OUT.tmp/disk.img" "${size_mb}M"
rm -rf "$root"
echo "$KRELEASE" >"$OUT.tmp/kernel.release"
mv "$OUT.tmp" "$OUT"
touch "$OUT/.hdm-complete"
# Keep the newest two disks of this flavour.
ls -1dt "$HDMABUF_CACHE/debian-dom0/$HDMABUF_KERNEL"-*/ | tail -n +3 | xargs -r rm -rf
stage_done "disk $(du -h --apparent-size "$OUT/disk.img" | cut -f1) ($(du -h "$OUT/disk.img" | cut -f1) used): $OUT"
echo "$OUT"
