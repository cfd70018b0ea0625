#!/usr/bin/env bash
# Build (or reuse) the platform kernel: Linux 6.12 from Debian's
# linux-source-6.12 with platform/kernel/hyper-dmabuf.config.
#
#   build-kernel.sh          build if needed, print the tree's path
#   build-kernel.sh --dir    only print where the tree for these inputs lives
#
# The tree is cached under $HDMABUF_CACHE/kernel/<key>, where the key hashes
# the source package version, the config fragment, this script and the
# toolchain versions. A finished tree carries a `.hdm-complete` stamp; a
# second run with the same inputs does no work.
set -euo pipefail
STAGE_NAME=kernel
. "$(dirname "$0")/lib.sh"

SRC_TAR=/usr/src/linux-source-6.12.tar.xz
FRAGMENT=$PLATFORM_DIR/kernel/hyper-dmabuf.config

[[ -f $SRC_TAR ]] || die "$SRC_TAR missing: run platform/install-deps.sh"
[[ -x $KBINDGEN ]] || die "$KBINDGEN missing: run platform/install-deps.sh"

key=$( {
    printf 'linux-source-6.12: %s\n' "$(dpkg-query -W -f='${Version}' linux-source-6.12)"
    toolchain_id
    cat "$FRAGMENT" "$0" "$PLATFORM_DIR/lib.sh"
} | hash16)
KDIR=$HDMABUF_CACHE/kernel/$key/linux

if [[ ${1:-} == --dir ]]; then
    echo "$KDIR"
    exit 0
fi

if [[ -f $KDIR/.hdm-complete ]]; then
    stage_done "cache hit: $KDIR"
    echo "$KDIR"
    exit 0
fi

say "cache miss: building Linux $(dpkg-query -W -f='${Version}' linux-source-6.12) into $KDIR"
rm -rf "$HDMABUF_CACHE/kernel/$key"
mkdir -p "$KDIR"
say "unpacking $SRC_TAR"
tar -xJf "$SRC_TAR" -C "$KDIR" --strip-components=1

km() { make -C "$KDIR" -s "${KMAKE_VARS[@]}" "$@"; }

say "configuring: x86_64_defconfig + xen.config + $(basename "$FRAGMENT")"
km x86_64_defconfig
km xen.config >/dev/null
(cd "$KDIR" && ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >/dev/null)
km olddefconfig
km rustavailable >/dev/null || die "make rustavailable failed: toolchain not usable for Rust"

# Every symbol the fragment sets must have survived olddefconfig.
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
done <"$FRAGMENT"
((bad == 0)) || die "config fragment not honoured (see above)"

say "building bzImage and modules with -j2 (cold: about 8 minutes on 2 cores)"
km -j2 bzImage modules
touch "$KDIR/.hdm-complete"

# Keep the two newest kernel trees (about 3 GiB each); drop the others.
ls -1dt "$HDMABUF_CACHE"/kernel/*/ | tail -n +3 | xargs -r rm -rf
stage_done "built $KDIR/arch/x86/boot/bzImage"
echo "$KDIR"
