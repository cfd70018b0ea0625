#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build hyper_dmabuf.ko (driver/, with front/, back/, common/ and
# xenbus-proto/ compiled in) and the test-only hyper_dmabuf_check.ko
# (driver/test/, which the VM tests load beside it) out of tree against the
# cached platform kernel of the flavour HDMABUF_KERNEL (lib.sh), and copy
# both to target/modules/<flavour>/. Kbuild itself skips what is up to
# date; a build for the other flavour's tree first cleans driver/.
# Prints the path of the driver's .ko file.
set -euo pipefail
STAGE_NAME=modules
. "$(dirname "$0")/lib.sh"

KDIR=$("$PLATFORM_DIR/build-kernel.sh" --dir)
[[ -f $KDIR/.hdm-complete ]] || die "kernel not built for the current inputs: run 'make kernel' first"

# What a user's build checks first (driver/preflight.sh): here it must pass.
RUSTC=$KRUSTC BINDGEN=$KBINDGEN LLVM=$KLLVM "$REPO_DIR/driver/preflight.sh" "$KDIR" >/dev/null ||
    die "driver/preflight.sh refuses the platform kernel: run it for the reason"

# driver/ holds one Kbuild output; remember which tree it was built for.
STAMP=$REPO_DIR/driver/.hdm-kdir
if [[ ! -f $STAMP || $(cat "$STAMP") != "$KDIR" ]]; then
    make -C "$KDIR" -s "${KMAKE_VARS[@]}" M="$REPO_DIR/driver" clean >&2
    rm -f "$REPO_DIR/driver/bindings_generated.rs.inc"
    echo "$KDIR" >"$STAMP"
fi

# Through clippy-driver (Debian's, matching the rustc-web the kernel was
# built with): the kernel's lints plus clippy's, every warning an error.
CLIPPY_DRIVER=/usr/bin/clippy-driver
[[ -x $CLIPPY_DRIVER ]] || die "no $CLIPPY_DRIVER: run 'make deps' (package rust-web-clippy)"

say "building driver/ against $KDIR ($HDMABUF_KERNEL), with clippy"
make -C "$KDIR" -s "${KMAKE_VARS[@]}" CLIPPY=1 CLIPPY_DRIVER="$CLIPPY_DRIVER" \
    M="$REPO_DIR/driver" -j2 modules >&2
mkdir -p "$MODULE_OUT"
cp "$REPO_DIR/driver/hyper_dmabuf.ko" "$REPO_DIR/driver/hyper_dmabuf_check.ko" "$MODULE_OUT/"
stage_done "built $MODULE_OUT/hyper_dmabuf.ko and hyper_dmabuf_check.ko"
echo "$MODULE_OUT/hyper_dmabuf.ko"
