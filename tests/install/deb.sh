#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# What `make deb` built (issue 17, point 2), checked from the packages'
# own files (lintian has already passed them):
#
#   1. hdmabuf holds the command, its service, udev rule, group, module
#      options and completions, and one man page per command: the same
#      list the packaged binary generates;
#   2. the service's ExecStart is the packaged binary's daemon;
#   3. hyper-dmabuf-dkms holds the module's source and nothing built, with
#      its version in dkms.conf;
#   4. DKMS, from those files, builds hyper_dmabuf.ko against the platform
#      kernel's tree with the XenBus aliases udev loads it by;
#   5. DKMS skips Debian's stock kernel (Rust off) as not for it (exit 77);
#   6. with another rustc than the kernel's, the build fails and make.log
#      carries the preflight's report.
#
# Usage: tests/install/deb.sh DEB_DIR PLATFORM_KDIR RUSTC BINDGEN
# Writes "<passed> <failed>" to $COUNTS_FILE when set; exit status: the
# number of failed cases. DKMS runs with trees of its own under a scratch
# directory: nothing is installed on the host (dkms may create its module
# signing key in /var/lib/dkms, as on any Debian system, for the stock
# kernel's tree).
set -uo pipefail

[[ $# -eq 4 ]] || { echo "usage: $0 DEB_DIR PLATFORM_KDIR RUSTC BINDGEN" >&2; exit 64; }
DEB_DIR=$1 PLATFORM_KDIR=$2 KRUSTC=$3 KBINDGEN=$4
passed=0 failed=0
pass() { printf '[deb] %s: ok\n' "$1"; passed=$((passed + 1)); }
fail() { printf '[deb] %s: FAILED: %s\n' "$1" "$2"; failed=$((failed + 1)); }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
one_deb() { # one_deb GLOB: the single package file matching
    local found=("$DEB_DIR"/$1)
    [[ ${#found[@]} -eq 1 && -f ${found[0]} ]] || { echo "no single $1 in $DEB_DIR" >&2; exit 1; }
    echo "${found[0]}"
}
tools_deb=$(one_deb 'hdmabuf_*_amd64.deb')
dkms_deb=$(one_deb 'hyper-dmabuf-dkms_*_all.deb')
version=$(dpkg-deb -f "$dkms_deb" Version)
tools=$scratch/hdmabuf dkms_root=$scratch/dkms
dpkg-deb -x "$tools_deb" "$tools"
dpkg-deb -x "$dkms_deb" "$dkms_root"

# 1. The tools' package.
name="hdmabuf: command, service, udev rule, group, options, completions"
absent=()
for f in usr/bin/hdmabuf lib/systemd/system/hdmabuf-xl.service \
    lib/udev/rules.d/60-hdmabuf.rules usr/lib/sysusers.d/hdmabuf.conf \
    etc/modprobe.d/hdmabuf.conf usr/share/bash-completion/completions/hdmabuf \
    usr/share/zsh/vendor-completions/_hdmabuf \
    usr/share/fish/vendor_completions.d/hdmabuf.fish; do
    [[ -s $tools/$f ]] || absent+=("$f")
done
if ((${#absent[@]})); then fail "$name" "missing ${absent[*]}"; else pass "$name"; fi

name="hdmabuf: a man page for every command"
"$tools/usr/bin/hdmabuf" generate man "$scratch/man"
want=$(cd "$scratch/man" && ls | sed 's/$/.gz/')
have=$(ls "$tools/usr/share/man/man1")
if [[ $want == "$have" && $have == *hdmabuf-xl-daemon.1.gz* ]]; then
    pass "$name ($(wc -l <<<"$have"))"
else
    fail "$name" "packaged: $(echo $have); the binary's: $(echo $want)"
fi

# 2. The service runs what the package ships.
name="hdmabuf-xl.service runs the packaged daemon"
exec_start=$(sed -n 's/^ExecStart=//p' "$tools/lib/systemd/system/hdmabuf-xl.service")
read -r bin args <<<"$exec_start"
if [[ $bin == /usr/bin/hdmabuf && $args == "xl daemon" ]] &&
    "$tools$bin" $args --help | grep -q "Usage: hdmabuf xl daemon"; then
    pass "$name"
else
    fail "$name" "ExecStart=$exec_start"
fi

# 3. The module's source.
name="hyper-dmabuf-dkms: the module's source, nothing built"
src=$dkms_root/usr/src/hyper-dmabuf-$version
built=$(find "$src" \( -name '*.o' -o -name '*.ko' -o -name '*.cmd' -o -path '*/test/*' \) -print)
if [[ -f $src/driver/Kbuild && -x $src/driver/preflight.sh && -z $built ]] &&
    grep -qx "PACKAGE_VERSION=\"$version\"" "$src/dkms.conf"; then
    pass "$name"
else
    fail "$name" "in $src: built files [$built], dkms.conf: $(grep VERSION "$src/dkms.conf")"
fi

# 4-6. DKMS from the package's own files.
dkms_tree=$scratch/dkms-tree
dkms_() { dkms "$@" -m hyper-dmabuf -v "$version" --sourcetree "$dkms_root/usr/src" --dkmstree "$dkms_tree"; }
mkdir -p "$dkms_tree"
dkms_ add >/dev/null || { fail "dkms add" "the package's source tree"; }

name="DKMS builds hyper_dmabuf.ko against the platform kernel"
kver=$(cat "$PLATFORM_KDIR/include/config/kernel.release")
out=$(RUSTC=$KRUSTC BINDGEN=$KBINDGEN dkms_ build -k "$kver" --kernelsourcedir "$PLATFORM_KDIR" 2>&1)
status=$?
ko=$dkms_tree/hyper-dmabuf/$version/$kver/x86_64/module/hyper_dmabuf.ko
if [[ $status -eq 0 && -f $ko ]] && [[ $(modinfo -F vermagic "$ko") == "$kver "* ]] &&
    modinfo -F alias "$ko" | grep -qx 'xen-backend:hyper_dmabuf' &&
    modinfo -F alias "$ko" | grep -qx 'xen:hyper_dmabuf'; then
    pass "$name ($kver)"
else
    fail "$name" "exit $status: $out"
fi

name="DKMS skips Debian's stock kernel (Rust off)"
if stock=$("$(dirname "$0")/stock-headers.sh"); then
    skver=${stock#/usr/src/linux-headers-}
    out=$(dkms_ build -k "$skver" --kernelsourcedir "$stock" 2>&1)
    status=$?
    if [[ $status -eq 77 && $out == *"BUILD_EXCLUSIVE directive which does not match"* ]]; then
        pass "$name ($skver)"
    else
        fail "$name" "exit $status: $out"
    fi
else
    fail "$name" "linux-headers-amd64 did not install"
fi

name="DKMS with another rustc: make.log names it"
other_rustc=$(command -v rustc || true)
if [[ -n $other_rustc && $("$other_rustc" --version) != $("$KRUSTC" --version) ]]; then
    dkms_ unbuild -k "$kver" >/dev/null 2>&1
    out=$(RUSTC=$other_rustc BINDGEN=$KBINDGEN dkms_ build -k "$kver" --kernelsourcedir "$PLATFORM_KDIR" 2>&1)
    status=$?
    log=$dkms_tree/hyper-dmabuf/$version/build/make.log
    if [[ $status -ne 0 ]] && grep -q "MISSING: the rustc the kernel was built with" "$log"; then
        pass "$name"
    else
        fail "$name" "exit $status: $out; make.log: $(head -20 "$log" 2>/dev/null)"
    fi
else
    printf '[deb] %s: no second rustc on PATH, case not run\n' "$name"
fi

[[ -n ${COUNTS_FILE:-} ]] && echo "$passed $failed" >"$COUNTS_FILE"
exit "$failed"
