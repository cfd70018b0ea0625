#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# DKMS's build and clean commands (dkms.conf), run from the top of the
# module's source tree:
#
#   driver/dkms/make.sh KDIR modules|clean
#
# The toolchain is the one the kernel was built with: RUSTC, BINDGEN and
# LLVM from the environment when set, as for `make modules KDIR=`;
# otherwise rustc and bindgen from PATH and, for a kernel built with clang
# N, LLVM=-N when clang-N is installed (Debian's and Ubuntu's naming), else
# LLVM=1. dkms passes neither, and a kernel built with LLVM=-19 needs it
# again for its modules.
set -eu
# apt runs maintainer scripts, and so DKMS, with its DPkg::Path
# (/usr/sbin:/usr/bin:/sbin:/bin), which leaves out /usr/local/bin: where
# `cargo install --root /usr/local bindgen-cli` puts the bindgen that
# Debian bookworm lacks (its own is 0.60).
case ":$PATH:" in *:/usr/local/bin:*) ;; *) PATH=$PATH:/usr/local/bin ;; esac
export PATH

kdir=$1   # dkms may add CC= and LD= after the action: ignored
action=$2
driver=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${LLVM:-}" ]; then
    # A headers package has the configuration as include/config/auto.conf
    # (Debian's has no .config).
    clang=$(sed -n 's/^CONFIG_CLANG_VERSION=\([0-9][0-9]*\)$/\1/p' "$kdir/include/config/auto.conf" 2>/dev/null || true)
    if [ -n "$clang" ] && [ "$clang" -gt 0 ]; then
        major=$((clang / 10000))
        if command -v "clang-$major" >/dev/null; then LLVM=-$major; else LLVM=1; fi
    fi
fi
set -- M="$driver" HDM_TEST_MODULES=n
[ -n "${LLVM:-}" ] && set -- "$@" LLVM="$LLVM"
[ -n "${RUSTC:-}" ] && set -- "$@" RUSTC="$RUSTC"
[ -n "${BINDGEN:-}" ] && set -- "$@" BINDGEN="$BINDGEN"

case $action in
modules)
    LLVM=${LLVM:-} "$driver/preflight.sh" "$kdir"
    exec make -C "$kdir" "$@" modules
    ;;
clean)
    exec make -C "$kdir" "$@" clean
    ;;
*)
    echo "usage: $0 KDIR modules|clean" >&2
    exit 2
    ;;
esac
