#!/usr/bin/env bash
# Build the kernel modules front/ and back/ out of tree against the cached
# platform kernel (Kbuild; incremental: Kbuild itself skips what is up to
# date). Prints the paths of the .ko files.
set -euo pipefail
STAGE_NAME=modules
. "$(dirname "$0")/lib.sh"

KDIR=$("$PLATFORM_DIR/build-kernel.sh" --dir)
[[ -f $KDIR/.hdm-complete ]] || die "kernel not built for the current inputs: run 'make kernel' first"

for m in front back; do
    say "building $m/ against $KDIR"
    make -C "$KDIR" -s "${KMAKE_VARS[@]}" M="$REPO_DIR/$m" -j2 modules >&2
done
stage_done "built $(cd "$REPO_DIR" && ls front/*.ko back/*.ko | tr '\n' ' ')"
ls "$REPO_DIR"/front/*.ko "$REPO_DIR"/back/*.ko
