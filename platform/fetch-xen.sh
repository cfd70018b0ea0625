#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Download Xen 4.17 (hypervisor and tools) from Debian's archive and unpack
# it into the cache. Nothing is installed on the host.
#
#   fetch-xen.sh          fetch if needed, print the unpacked root
#   fetch-xen.sh --dir    only print where it lives for these inputs
#
# Keyed by the candidate versions of the packages; a finished root carries
# `.hdm-complete`. The hypervisor is gunzipped to <root>/xen (a multiboot
# ELF that QEMU's -kernel loads).
set -euo pipefail
STAGE_NAME=xen
. "$(dirname "$0")/lib.sh"

PKGS=(xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common libxenmisc4.17
      libxenstore4 libxencall1 libxendevicemodel1 libxenevtchn1
      libxenforeignmemory1 libxengnttab1 libxentoolcore1 libxentoollog1
      libxenhypfs1 libyajl2)

versions() {
    # One apt-cache call for all packages (one per package takes seconds).
    local out
    out=$(apt-cache policy "${PKGS[@]}" 2>/dev/null | awk '
        /^[^ ].*:$/ { pkg = substr($0, 1, length($0) - 1) }
        /^  Candidate:/ { if ($2 != "(none)") print pkg "=" $2 }')
    [[ $(grep -c . <<<"$out") -eq ${#PKGS[@]} ]] || return 1
    echo "$out"
}

if ! vers=$(versions); then
    say "package lists lack Xen: apt-get update"
    apt-get update -q >&2
    vers=$(versions) || die "Xen 4.17 packages not found in the apt sources"
fi
key=$( { echo "$vers"; cat "$0"; } | hash16)
ROOT=$HDMABUF_CACHE/xen/$key

if [[ ${1:-} == --dir ]]; then
    echo "$ROOT"
    exit 0
fi
if [[ -f $ROOT/.hdm-complete ]]; then
    stage_done "cache hit: $ROOT"
    echo "$ROOT"
    exit 0
fi

say "cache miss: downloading ${#PKGS[@]} packages into $ROOT"
rm -rf "$ROOT"
mkdir -p "$ROOT/debs" "$ROOT/root"
# apt-get download writes into the current directory; run it as an
# unprivileged-safe operation (no dpkg database touched).
(cd "$ROOT/debs" && apt-get download -q -o APT::Sandbox::User="$(id -un)" $(echo "$vers" | tr '\n' ' ') >&2)
for deb in "$ROOT"/debs/*.deb; do
    dpkg-deb -x "$deb" "$ROOT/root"
done
gunzip -c "$ROOT"/root/boot/xen-4.17-amd64.gz >"$ROOT/xen"
echo "$vers" >"$ROOT/versions"
touch "$ROOT/.hdm-complete"
stage_done "unpacked Xen $(grep -m1 xen-hypervisor "$ROOT/versions")"
echo "$ROOT"
