#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install the host toolchain the embedded Xen platform needs, idempotently.
#
# Debian bookworm packages (after `apt-get update`, only when something is
# missing) and bindgen-cli through `cargo install`. Nothing from Xen is
# installed on the host: platform/fetch-xen.sh unpacks Xen into the cache.
#
# Prints what it does; a second run only checks and says "ok".
set -euo pipefail

BINDGEN_VERSION=0.69.5
PKGS=(
    linux-source-6.12
    rustc-web rust-web-src rust-web-clippy
    clang-19 libclang-19-dev llvm-19 lld-19
    bc bison flex libelf-dev libssl-dev cpio kmod patch
    qemu-system-x86 busybox-static
    # build-essential: `cc` for the C header's host test
    # (common/tests/c_header.rs) and libc6-dev's libc.a for the static C
    # example (examples/c/).
    build-essential pkg-config zstd xz-utils
    # `make deb` (debian/): the package tools, and DKMS for the test that
    # builds the module from the package's own files.
    debhelper dh-dkms dkms lintian
    # The Debian dom0 (platform/build-debian-dom0.sh): its root filesystem,
    # and the copy-on-write overlay each run boots it from.
    mmdebstrap qemu-utils e2fsprogs
    # make bindeb-pkg (the platform kernel as Debian packages) builds with these.
    rsync
)

say() { printf '[deps] %s\n' "$*"; }

# Without a cargo on PATH (rustup's), use Debian's matching the rustc-web.
command -v cargo >/dev/null || PKGS+=(cargo-web)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    SUDO=
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "Debian packages: ok (${#PKGS[@]} present)"
fi

BINDGEN="${CARGO_HOME:-$HOME/.cargo}/bin/bindgen"
if [[ -x $BINDGEN ]] && [[ $("$BINDGEN" --version 2>/dev/null) == "bindgen $BINDGEN_VERSION" ]]; then
    say "bindgen-cli $BINDGEN_VERSION: ok"
else
    say "installing bindgen-cli $BINDGEN_VERSION with cargo (about 2 minutes)"
    # bindgen-cli is an ordinary host tool: build it with whatever cargo is
    # on PATH (rustup's or Debian's), locked to its published lock file.
    LIBCLANG_PATH=/usr/lib/llvm-19/lib cargo install --locked bindgen-cli --version "$BINDGEN_VERSION"
fi

if [[ ! -d /usr/lib/rustlib/src/rust/library ]] && ! ls -d /usr/lib/rust-*/lib/rustlib/src/rust/library >/dev/null 2>&1; then
    say "warning: rust-src of /usr/bin/rustc not found"
fi
say "done"
