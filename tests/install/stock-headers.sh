#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Prints the directory of Debian's stock kernel headers (the tree the
# metapackage linux-headers-amd64 names: Rust off), installing them from
# apt first when missing and root or password-less sudo allows. Exit 1,
# with nothing printed, when they cannot be had.
set -uo pipefail

stock_package() {
    dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null | sed 's/ .*//'
}
if [[ -z $(stock_package) ]] || ! dpkg-query -W "$(stock_package)" >/dev/null 2>&1; then
    echo "[install] installing Debian's stock kernel headers (linux-headers-amd64, Rust off)" >&2
    sudo=$([[ $(id -u) -eq 0 ]] || echo "sudo -n")
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q --no-install-recommends linux-headers-amd64 >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null &&
            $sudo apt-get install -y -q --no-install-recommends linux-headers-amd64 >/dev/null; }
fi
package=$(stock_package)
[[ -n $package && -d /usr/src/$package ]] || exit 1
echo "/usr/src/$package"
