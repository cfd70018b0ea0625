#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build (or reuse) the boot images of the embedded platform:
#
#   <dir>/xen            the Xen 4.17 hypervisor (multiboot ELF)
#   <dir>/bzImage        the platform kernel (dom0 and domUs)
#   <dir>/dom0.cpio.gz   dom0 initramfs: busybox, the Xen user space (xl,
#                        xenstored, xenconsoled, xenconsole, xen-init-dom0 and their
#                        libraries), our modules and tools, the scenarios,
#                        the xl domU configs, and the domU kernel + initramfs
#   <dir>/domU.cpio.gz   domU initramfs: busybox, modules, tools, scenarios
#
#   build-images.sh          build if needed, print <dir>
#   build-images.sh --dir    only print <dir> for the current inputs
#
# <dir> is $HDMABUF_CACHE/images/<key>, the key hashing every input file:
# kernel image, Xen packages, modules, scenarios, init scripts, xl configs,
# busybox and the user-space tools. A change of any input gives a new image.
#
# User-space tools: HDMABUF_VM_TOOLS is a space-separated list of host-built
# binaries installed into /usr/bin of every domain: static ones as they
# are, dynamic ones with the shared libraries ldd finds for them.
#
# Progress and errors go to stderr, the path to stdout: a failure says
# what failed even when stdout is discarded (as `make images` does).
set -Eeuo pipefail
STAGE_NAME=images
. "$(dirname "$0")/lib.sh"
# Any command that fails without a message of its own (set -e would end
# the script silently) is named, with its line. -E: also inside functions.
trap 'die "line $LINENO: \`$BASH_COMMAND\` failed (exit status $?)"' ERR

KDIR=$("$PLATFORM_DIR/build-kernel.sh" --dir)
XEN=$("$PLATFORM_DIR/fetch-xen.sh" --dir)
BUSYBOX=/bin/busybox
SCEN_DIR=$REPO_DIR/tests/vm/scenarios
# The driver, and the test-only module the scenarios that read a buffer as
# a kernel importer load beside it (hdm_load_check).
KOS=("$MODULE_OUT/hyper_dmabuf.ko" "$MODULE_OUT/hyper_dmabuf_check.ko")
read -r -a TOOLS <<<"${HDMABUF_VM_TOOLS:-}"
XEN_BINS=(xl xenstored xenconsoled xenconsole xen-init-dom0)

inputs() {
    printf '%s\n' "$KDIR/arch/x86/boot/bzImage" "$XEN/xen" "$XEN/versions" "$BUSYBOX" \
        "${KOS[@]}" "$0" "$PLATFORM_DIR/lib.sh" \
        "$PLATFORM_DIR"/images/* "$PLATFORM_DIR"/xl/* "$SCEN_DIR"/*
    ((${#TOOLS[@]} == 0)) || printf '%s\n' "${TOOLS[@]}"
}

key=$(inputs | while IFS= read -r f; do
    [[ -f $f ]] || { echo "missing $f"; continue; }
    printf '%s %s\n' "$(sha256sum <"$f" | cut -c1-64)" "${f#"$REPO_DIR"/}"
done | hash16)
OUT=$HDMABUF_CACHE/images/$key

if [[ ${1:-} == --dir ]]; then
    echo "$OUT"
    exit 0
fi
if [[ -f $OUT/.hdm-complete ]]; then
    stage_done "cache hit: $OUT"
    echo "$OUT"
    exit 0
fi

[[ -f $KDIR/.hdm-complete ]] || die "kernel not built: run 'make kernel'"
[[ -f $XEN/.hdm-complete ]] || die "Xen not fetched: run 'make xen'"
for f in "${KOS[@]}"; do [[ -f $f ]] || die "missing $f (run 'make modules')"; done
for f in "${TOOLS[@]}"; do [[ -f $f ]] || die "missing tool $f (HDMABUF_VM_TOOLS, HDMABUF_VM_EXTRA_TOOLS: build it first)"; done
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing (busybox-static)"
KVER=$(cat "$KDIR/include/config/kernel.release")

say "cache miss: building images into $OUT"
rm -rf "$OUT" "$OUT.tmp"
mkdir -p "$OUT.tmp"
T=$OUT.tmp

# is_dynamic BIN: whether BIN names a program interpreter (ld.so), that is
# whether it loads shared libraries at all. ldd fails on a static binary.
# (A test on the whole output, not `readelf | grep -q`: grep's early exit
# would fail readelf, and the pipeline, under pipefail.)
is_dynamic() { [[ $(LC_ALL=C readelf -l "$1" 2>/dev/null) == *'Requesting program interpreter'* ]]; }

# copy_with_libs ROOT BIN DEST: BIN to ROOT/DEST and, if it is dynamic, its
# shared libraries (resolved with the unpacked Xen libraries first) to the
# same paths.
copy_with_libs() {
    local root=$1 bin=$2 dest=$3 lib rel
    install -D -m 0755 "$bin" "$root/$dest"
    is_dynamic "$bin" || return 0
    LD_LIBRARY_PATH=$XEN/root/usr/lib/x86_64-linux-gnu ldd "$bin" |
        awk '/=> \// { print $3 } /^\t\// { print $1 }' | while IFS= read -r lib; do
        rel=${lib#"$XEN/root"}
        rel=${rel#/}
        [[ -e $root/$rel ]] || install -D -m 0755 "$(readlink -f "$lib")" "$root/$rel"
    done
}

# base_root DIR INIT: busybox, init, modules, scenarios and tools.
base_root() {
    local root=$1 init=$2 applet t
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,var,root}
    mkdir -p "$root"/hdm/{modules,scenarios}
    install -m 0755 "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list-full); do
        [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done
    install -m 0755 "$init" "$root/init"
    install -m 0644 "$PLATFORM_DIR/images/lib.sh" "$root/hdm/lib.sh"
    install -m 0644 "${KOS[@]}" "$root/hdm/modules/"
    # Also as a module tree with depmod's indexes, so that modprobe and
    # modinfo work and aliases (xen:hyper_dmabuf) resolve.
    install -D -m 0644 -t "$root/lib/modules/$KVER/extra" "${KOS[@]}"
    # The kernel's own modules (vivid, vkms, vgem and what they need: the
    # real producers and consumers of issue 14), where modules_install
    # puts them, listed by the build's modules.order.
    sed 's/\.o$/.ko/' "$KDIR/modules.order" | while IFS= read -r ko; do
        install -D -m 0644 "$KDIR/$ko" "$root/lib/modules/$KVER/kernel/$ko"
    done
    install -m 0644 "$KDIR"/modules.builtin{,.modinfo} "$root/lib/modules/$KVER/"
    (cd "$root/lib/modules/$KVER" && { sed 's|^|kernel/|; s/\.o$/.ko/' "$KDIR/modules.order"; ls extra/*.ko; } >modules.order)
    "$(command -v depmod || echo /usr/sbin/depmod)" -b "$root" "$KVER"
    install -m 0644 "$SCEN_DIR"/* "$root/hdm/scenarios/"
    for t in "${TOOLS[@]}"; do copy_with_libs "$root" "$t" "usr/bin/$(basename "$t")"; done
    # Which kernel the image boots (smoke checks the debug one's checks).
    echo "$HDMABUF_KERNEL" >"$root/hdm/kernel-flavour"
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
}

mkcpio() { (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$2"; }

# domU initramfs.
base_root "$T/domU" "$PLATFORM_DIR/images/domU-init"
mkcpio "$T/domU" "$T/domU.cpio.gz"

# dom0 initramfs.
base_root "$T/dom0" "$PLATFORM_DIR/images/dom0-init"
install -m 0755 "$PLATFORM_DIR/images/dom0-scenario" "$T/dom0/hdm/dom0-scenario"
for b in "${XEN_BINS[@]}"; do
    copy_with_libs "$T/dom0" "$XEN/root/usr/lib/xen-4.17/bin/$b" "usr/lib/xen-4.17/bin/$b"
done
# xl aborts in pthread_cancel without libgcc_s (dlopen'ed by glibc).
gcc_s=$(readlink -f /lib/x86_64-linux-gnu/libgcc_s.so.1)
install -D -m 0644 "$gcc_s" "$T/dom0/lib/x86_64-linux-gnu/libgcc_s.so.1"
mkdir -p "$T/dom0/etc/xen" "$T/dom0/hdm/domU"
install -m 0644 "$PLATFORM_DIR"/xl/*.cfg "$T/dom0/etc/xen/"
printf 'autoballoon="off"\n' >"$T/dom0/etc/xen/xl.conf"
install -m 0644 "$KDIR/arch/x86/boot/bzImage" "$T/dom0/hdm/domU/bzImage"
install -m 0644 "$T/domU.cpio.gz" "$T/dom0/hdm/domU/initrd.gz"
mkcpio "$T/dom0" "$T/dom0.cpio.gz"

install -m 0644 "$XEN/xen" "$T/xen"
install -m 0644 "$KDIR/arch/x86/boot/bzImage" "$T/bzImage"
rm -rf "$T/dom0" "$T/domU"
touch "$T/.hdm-complete"
mv "$T" "$OUT"

# Keep the four newest image sets.
ls -1dt "$HDMABUF_CACHE"/images/*/ 2>/dev/null | tail -n +5 | xargs -r rm -rf

stage_done "dom0 $(du -h "$OUT/dom0.cpio.gz" | cut -f1), domU $(du -h "$OUT/domU.cpio.gz" | cut -f1)"
echo "$OUT"
