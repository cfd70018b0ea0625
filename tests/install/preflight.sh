#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# driver/preflight.sh against real kernel trees (issue 17, point 1):
#
#   1. the platform kernel's build tree with the tools it was built with:
#      ready (exit 0);
#   2. the same tree with another rustc (rustup's, on PATH): refused, naming
#      both compilers;
#   3. Debian's stock kernel headers (the package linux-headers-amd64
#      names, Rust off), installed from apt when missing and root or
#      password-less sudo allows: refused for CONFIG_RUST;
#   4. a directory that is no kernel tree: refused, naming the headers
#      package;
#   5. copies of the platform tree's configuration without its Rust files,
#      with no LLVM=, and as if built with gcc: each refused with its
#      reason.
#
# Usage: tests/install/preflight.sh PLATFORM_KDIR RUSTC BINDGEN LLVM
# Prints one line per case and writes "<passed> <failed>" to $COUNTS_FILE
# when set. Exit status: the number of failed cases (0 when all pass).
set -uo pipefail

[[ $# -eq 4 ]] || { echo "usage: $0 PLATFORM_KDIR RUSTC BINDGEN LLVM" >&2; exit 64; }
PLATFORM_KDIR=$1 KRUSTC=$2 KBINDGEN=$3 KLLVM=$4
PREFLIGHT=$(dirname "$0")/../../driver/preflight.sh
passed=0 failed=0

# case NAME WANT_STATUS WANT_TEXT KDIR [VAR=VALUE...]: runs the preflight
# with the tools given as environment and checks its status and output.
case_() {
    local name=$1 want_status=$2 want_text=$3 kdir=$4
    shift 4
    local out status
    out=$(env "$@" "$PREFLIGHT" "$kdir" 2>&1)
    status=$?
    if [[ $status -eq $want_status && $out == *"$want_text"* ]]; then
        printf '[install] preflight: %s: ok\n' "$name"
        passed=$((passed + 1))
    else
        printf '[install] preflight: %s: FAILED (exit %s, wanted %s and "%s"):\n%s\n' \
            "$name" "$status" "$want_status" "$want_text" "$out"
        failed=$((failed + 1))
    fi
}

tools=(RUSTC="$KRUSTC" BINDGEN="$KBINDGEN" LLVM="$KLLVM")

case_ "platform kernel tree, its own tools" 0 "ready to build" "$PLATFORM_KDIR" "${tools[@]}"

other_rustc=$(command -v rustc || true)
if [[ -n $other_rustc && $("$other_rustc" --version) != $("$KRUSTC" --version) ]]; then
    case_ "platform kernel tree, another rustc" 1 "MISSING: the rustc the kernel was built with" \
        "$PLATFORM_KDIR" RUSTC="$other_rustc" BINDGEN="$KBINDGEN" LLVM="$KLLVM"
else
    printf '[install] preflight: another rustc: no second rustc on PATH, case not run\n'
fi

# Debian's stock kernel headers: the real tree a Debian user has.
if stock=$("$(dirname "$0")/stock-headers.sh"); then
    case_ "Debian's stock headers (${stock##*/})" 1 "CONFIG_RUST is not set" "$stock" "${tools[@]}"
else
    printf '[install] preflight: Debian stock headers: FAILED (linux-headers-amd64 did not install)\n'
    failed=$((failed + 1))
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
case_ "no kernel tree" 1 "linux-headers-" "$scratch" "${tools[@]}"

# The platform tree's configuration alone: what a headers package without
# rust/ looks like to the preflight; then the same as if gcc had built it.
fake=$scratch/headers
mkdir -p "$fake/include/config"
cp "$PLATFORM_KDIR/Makefile" "$fake/"
cp "$PLATFORM_KDIR/include/config/auto.conf" "$PLATFORM_KDIR/include/config/kernel.release" \
    "$fake/include/config/"
case_ "headers without the Rust files" 1 "MISSING: the kernel's Rust build files" "$fake" "${tools[@]}"
case_ "no LLVM= for a clang-built kernel" 1 "MISSING: LLVM= for a kernel built with clang" \
    "$PLATFORM_KDIR" RUSTC="$KRUSTC" BINDGEN="$KBINDGEN" LLVM=
sed -i 's/^CONFIG_CC_IS_CLANG=y$/CONFIG_CC_IS_GCC=y/' "$fake/include/config/auto.conf"
case_ "a gcc-built kernel" 1 "MISSING: a kernel built with clang" "$fake" "${tools[@]}"

[[ -n ${COUNTS_FILE:-} ]] && echo "$passed $failed" >"$COUNTS_FILE"
exit "$failed"
