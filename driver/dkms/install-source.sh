#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Lays out the module's source for DKMS: everything Kbuild compiles into
# hyper_dmabuf.ko (driver/, the role code of front/ and back/, and the
# protocol crates' sources it includes by path), dkms.conf at the top with
# its version filled in. Nothing of the build products, the tests or the
# test-only module.
#
#   driver/dkms/install-source.sh DEST VERSION
#
# The Debian package's rules call it; on another distribution,
#   driver/dkms/install-source.sh /usr/src/hyper-dmabuf-0.1.0 0.1.0
#   dkms install hyper-dmabuf/0.1.0
set -eu

[ $# -eq 2 ] || { echo "usage: $0 DEST VERSION" >&2; exit 2; }
dest=$1
version=$2
top=$(cd "$(dirname "$0")/../.." && pwd)

copy() { # copy SRC-DIR PATTERN...: the named files of one directory
    dir=$1
    shift
    mkdir -p "$dest/$dir"
    for pattern in "$@"; do
        for f in "$top/$dir"/$pattern; do
            [ -f "$f" ] || { echo "install-source: no $dir/$pattern" >&2; exit 1; }
            install -m "$( [ -x "$f" ] && echo 0755 || echo 0644)" "$f" "$dest/$dir/"
        done
    done
}

copy driver Kbuild '*.rs' shim.h bindings_helper.h bindgen_parameters preflight.sh
copy driver/ffi '*.rs'
copy driver/shim '*.c' '*.h'
copy driver/dkms make.sh
copy front '*.rs'
copy back '*.rs'
copy common/src '*.rs'
copy common/src/uapi '*.rs'
copy xenbus-proto/src '*.rs'
sed "s/#MODULE_VERSION#/$version/" "$top/driver/dkms/dkms.conf" >"$dest/dkms.conf"
chmod 0644 "$dest/dkms.conf"
