#!/usr/bin/env bash
# Build (or reuse) the platform kernel: Linux 6.12 from Debian's
# linux-source-6.12 with platform/kernel/hyper-dmabuf.config, plus
# kernel/debug.config for the debug flavour (HDMABUF_KERNEL, lib.sh), and
# the fixes of kernel/patches/ (each says which report of which debug
# check it fixes).
#
#   build-kernel.sh          build if needed, print the tree's path
#   build-kernel.sh --dir    only print where the tree for these inputs lives
#
# The tree is cached under $HDMABUF_CACHE/kernel/<flavour>-<key>, where the
# key hashes the source package version, the config fragments, this script
# and the toolchain versions. A finished tree carries a `.hdm-complete` stamp; a
# second run with the same inputs does no work.
set -euo pipefail
STAGE_NAME=kernel
. "$(dirname "$0")/lib.sh"

SRC_TAR=/usr/src/linux-source-6.12.tar.xz
KERNEL_PATCHES=("$PLATFORM_DIR"/kernel/patches/*.patch)

[[ -f $SRC_TAR ]] || die "$SRC_TAR missing: run platform/install-deps.sh"
[[ -x $KBINDGEN ]] || die "$KBINDGEN missing: run platform/install-deps.sh"

key=$( {
    printf 'linux-source-6.12: %s\n' "$(dpkg-query -W -f='${Version}' linux-source-6.12)"
    toolchain_id
    printf 'flavour: %s\n' "$HDMABUF_KERNEL"
    cat "${KERNEL_FRAGMENTS[@]}" "${KERNEL_PATCHES[@]}" "$0" "$PLATFORM_DIR/lib.sh"
} | hash16)
TREE=$HDMABUF_CACHE/kernel/$HDMABUF_KERNEL-$key
KDIR=$TREE/linux

if [[ ${1:-} == --dir ]]; then
    echo "$KDIR"
    exit 0
fi

if [[ -f $KDIR/.hdm-complete ]]; then
    stage_done "cache hit: $KDIR"
    echo "$KDIR"
    exit 0
fi

say "cache miss: building Linux $(dpkg-query -W -f='${Version}' linux-source-6.12) ($HDMABUF_KERNEL) into $KDIR"
rm -rf "$TREE"
mkdir -p "$KDIR"
say "unpacking $SRC_TAR"
tar -xJf "$SRC_TAR" -C "$KDIR" --strip-components=1
for p in "${KERNEL_PATCHES[@]}"; do
    say "applying $(basename "$p")"
    patch -d "$KDIR" -p1 -s --no-backup-if-mismatch <"$p" || die "$(basename "$p") does not apply"
done

km() { make -C "$KDIR" -s "${KMAKE_VARS[@]}" "$@"; }

say "configuring: x86_64_defconfig + xen.config + ${KERNEL_FRAGMENTS[*]##*/}"
km x86_64_defconfig
km xen.config >/dev/null
(cd "$KDIR" && ./scripts/kconfig/merge_config.sh -m .config "${KERNEL_FRAGMENTS[@]}" >/dev/null)
km olddefconfig
km rustavailable >/dev/null || die "make rustavailable failed: toolchain not usable for Rust"

# Every symbol the fragments set must have survived olddefconfig.
bad=0
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Z0-9_]+)=(.*)$ ]]; then
        if ! grep -qx "$line" "$KDIR/.config"; then
            say "config: $line requested, got: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$KDIR/.config" || echo unset)"
            bad=1
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Z0-9_]+)\ is\ not\ set$ ]]; then
        if grep -q "^${BASH_REMATCH[1]}=" "$KDIR/.config"; then
            say "config: ${BASH_REMATCH[1]} should be unset but is $(grep "^${BASH_REMATCH[1]}=" "$KDIR/.config")"
            bad=1
        fi
    fi
done < <(cat "${KERNEL_FRAGMENTS[@]}")
((bad == 0)) || die "config fragments not honoured (see above)"

say "building bzImage and modules with -j2 (cold: about 8 minutes on 2 cores)"
km -j2 bzImage modules
touch "$KDIR/.hdm-complete"

# Keep the two newest trees of this flavour (3 to 4 GiB each); drop the
# others, and trees of the layout before flavours.
ls -1dt "$HDMABUF_CACHE/kernel/$HDMABUF_KERNEL"-*/ | tail -n +3 | xargs -r rm -rf
find "$HDMABUF_CACHE/kernel" -mindepth 1 -maxdepth 1 -type d \
    ! -name 'debug-*' ! -name 'release-*' -exec rm -rf {} +
stage_done "built $KDIR/arch/x86/boot/bzImage"
echo "$KDIR"
