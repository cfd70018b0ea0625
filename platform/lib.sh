# Shared helpers of the platform scripts (sourced, not run).
# shellcheck shell=bash

PLATFORM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$PLATFORM_DIR/.." && pwd)
HDMABUF_CACHE=${HDMABUF_CACHE:-$HOME/.cache/hyper-dmabuf}
export HDMABUF_CACHE

# The kernel flavour every domain boots: `debug` (lockdep, slab poisoning
# and red zones, atomic-sleep and list checks: what `make test` runs) or
# `release` (the base config alone: `make bench`, `make demo`). Each has
# its own cached kernel tree, module build and images.
HDMABUF_KERNEL=${HDMABUF_KERNEL:-debug}
case $HDMABUF_KERNEL in
debug) KERNEL_FRAGMENTS=("$PLATFORM_DIR/kernel/hyper-dmabuf.config" "$PLATFORM_DIR/kernel/debug.config") ;;
release) KERNEL_FRAGMENTS=("$PLATFORM_DIR/kernel/hyper-dmabuf.config") ;;
*)
    printf '[platform] error: HDMABUF_KERNEL=%s: expected debug or release\n' "$HDMABUF_KERNEL" >&2
    exit 1
    ;;
esac
export HDMABUF_KERNEL
# Where the module is built for this flavour (one Kbuild output per tree).
MODULE_OUT=$REPO_DIR/target/modules/$HDMABUF_KERNEL

# The toolchain the kernel and the modules are built with (PLATFORM.md).
KLLVM=-19
KRUSTC=/usr/bin/rustc
KBINDGEN=${CARGO_HOME:-$HOME/.cargo}/bin/bindgen
KMAKE_VARS=(LLVM="$KLLVM" RUSTC="$KRUSTC" BINDGEN="$KBINDGEN")

STAGE_NAME=${STAGE_NAME:-platform}
STAGE_T0=$(date +%s.%N)

say() { printf '[%s] %s\n' "$STAGE_NAME" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Seconds since the script started, one decimal.
elapsed() { awk -v a="$STAGE_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# `stage_done WHAT`: the per-stage timing line every script ends with.
stage_done() { say "$1 ($(elapsed) s)"; }

# sha256 of the arguments' contents and of stdin lines, 16 hex digits.
hash16() { sha256sum | cut -c1-16; }

toolchain_id() {
    printf 'rustc: %s\n' "$("$KRUSTC" --version)"
    printf 'clang: %s\n' "$(clang$KLLVM --version | head -1)"
    printf 'bindgen: %s\n' "$("$KBINDGEN" --version)"
}
