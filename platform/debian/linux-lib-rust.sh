#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# linux-lib-rust-<release>: what an out-of-tree Rust module needs of a
# kernel's build beyond its headers package (driver/preflight.sh
# --rust-files: the crates' metadata rust/*.rmeta, rust/libmacros.so,
# include/generated/rustc_cfg, scripts/target.json), installed into the
# headers' tree. 6.12's `make bindeb-pkg` leaves them out of
# linux-headers-<release>; Ubuntu ships them the same way, in a package of
# this name beside its headers.
#
#   linux-lib-rust.sh KDIR RELEASE OUT_DIR
#
# Takes from KDIR each listed file the headers package in OUT_DIR lacks,
# and builds the package into OUT_DIR with dpkg-deb.
set -euo pipefail
[[ $# -eq 3 ]] || { echo "usage: $0 KDIR RELEASE OUT_DIR" >&2; exit 2; }
KDIR=$1 RELEASE=$2 OUT=$3
here=$(cd "$(dirname "$0")" && pwd)
headers=$(ls "$OUT"/linux-headers-"$RELEASE"_*.deb)
version=$(dpkg-deb -f "$headers" Version)
prefix=usr/src/linux-headers-$RELEASE

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
in_headers=$(dpkg-deb -c "$headers" | awk '{ print $6 }' | sed 's|^\./||')
added=()
while IFS= read -r f; do
    grep -qx "$prefix/$f" <<<"$in_headers" && continue
    [[ -f $KDIR/$f ]] || { echo "linux-lib-rust: $KDIR/$f missing" >&2; exit 1; }
    install -D -m 0644 "$KDIR/$f" "$stage/$prefix/$f"
    added+=("$f")
done < <("$here/../../driver/preflight.sh" --rust-files)

mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: linux-lib-rust-$RELEASE
Version: $version
Architecture: amd64
Section: kernel
Priority: optional
Maintainer: hyper-dmabuf developers <maintainers@users.noreply.r-seed-c0733ecd.example>
Depends: linux-headers-$RELEASE (= $version)
Description: Rust build files of Linux $RELEASE, for out-of-tree Rust modules
 The Rust crates' metadata (rust/*.rmeta), the kernel's proc-macro library
 (rust/libmacros.so) and the Rust configuration of the build that made
 linux-image-$RELEASE, which its headers package leaves out. With them and
 the rustc, bindgen and clang the kernel was built with, DKMS can build
 Rust modules such as hyper_dmabuf.ko against linux-headers-$RELEASE.
CONTROL
dpkg-deb --root-owner-group -Zxz --build "$stage" \
    "$OUT/linux-lib-rust-${RELEASE}_${version}_amd64.deb" >/dev/null
echo "linux-lib-rust-$RELEASE: ${added[*]}"
