#!/usr/bin/env bash
# Build hyper_dmabuf.ko (driver/, with front/, back/, common/ and
# xenbus-proto/ compiled in) out of tree against the cached platform
# kernel (Kbuild; incremental: Kbuild itself skips what is up to date).
# Prints the path of the .ko file.
set -euo pipefail
STAGE_NAME=modules
. "$(dirname "$0")/lib.sh"

KDIR=$("$PLATFORM_DIR/build-kernel.sh" --dir)
[[ -f $KDIR/.hdm-complete ]] || die "kernel not built for the current inputs: run 'make kernel' first"

say "building driver/ against $KDIR"
make -C "$KDIR" -s "${KMAKE_VARS[@]}" M="$REPO_DIR/driver" -j2 modules >&2
stage_done "built driver/hyper_dmabuf.ko"
ls "$REPO_DIR"/driver/hyper_dmabuf.ko
