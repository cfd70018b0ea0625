#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Can hyper_dmabuf.ko be built against a kernel tree? An out-of-tree Rust
# module needs more than a C one: a kernel built with CONFIG_RUST, the Rust
# files of that build (rust/*.rmeta, libmacros.so), the very rustc that
# built it (its metadata is tied to the exact compiler: error E0514
# otherwise), bindgen with libclang, and the kernel's C compiler. This
# checks each and names what is missing with how to get it, so that a user
# meets one clear message instead of a wall of compiler errors.
#
#   driver/preflight.sh [KDIR]   (default /lib/modules/$(uname -r)/build)
#   driver/preflight.sh --rust-files   the Rust build files it checks, one
#                                      per line, relative to the tree
#
# The tools are those `make` would use: RUSTC (rustc), BINDGEN (bindgen),
# LLVM (as passed to the kernel's make: 1, -19 or a prefix ending in /, for
# a clang-built kernel) from the environment. Exit status: 0 ready, 1
# something is missing. `make modules KDIR=...` and the platform's own
# build (platform/build-modules.sh) run it before building.
set -uo pipefail

# The metadata of every crate the module's `kernel` dependency loads, the
# proc-macro library, and what Kbuild reads to compile Rust (6.12).
rust_files=(rust/libcore.rmeta rust/libcompiler_builtins.rmeta rust/libffi.rmeta
    rust/libbindings.rmeta rust/libuapi.rmeta rust/libbuild_error.rmeta
    rust/libkernel.rmeta rust/libmacros.so include/generated/rustc_cfg scripts/target.json)
if [[ ${1:-} == --rust-files ]]; then
    printf '%s\n' "${rust_files[@]}"
    exit 0
fi

KDIR=${1:-/lib/modules/$(uname -r)/build}
RUSTC=${RUSTC:-rustc}
BINDGEN=${BINDGEN:-bindgen}
LLVM=${LLVM:-}
# The oldest bindgen the kernel accepts (6.12: scripts/min-tool-version.sh).
MIN_BINDGEN=0.65.1

failed=0
ok() { printf 'preflight: ok: %s\n' "$*"; }
note() { printf 'preflight: note: %s\n' "$*"; }
missing() {
    printf 'preflight: MISSING: %s\n' "$1"
    shift
    for how in "$@"; do printf '           %s\n' "$how"; done
    failed=1
}
verdict() {
    if ((failed)); then
        printf 'preflight: %s cannot build hyper_dmabuf.ko (see above; docs/install.md)\n' "$KDIR"
        exit 1
    fi
    printf 'preflight: ready to build against %s\n' "$KDIR"
    exit 0
}

# A kernel configuration value from the prepared tree, empty if unset.
config() {
    sed -n "s/^$1=//p" "$KDIR/include/config/auto.conf" | sed 's/^"\(.*\)"$/\1/'
}

# Version a >= version b, for dotted numbers.
version_ge() {
    [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1) == "$2" ]]
}

# --- the tree -------------------------------------------------------------
if [[ ! -f $KDIR/Makefile || ! -f $KDIR/include/config/auto.conf ]]; then
    missing "a prepared kernel tree at $KDIR" \
        "for the running kernel: its headers package (Debian, Ubuntu: linux-headers-\$(uname -r))" \
        "for a kernel you build: pass its build tree, KDIR=/path/to/linux, after 'make' or 'make modules_prepare'"
    verdict
fi
release=$(cat "$KDIR/include/config/kernel.release" 2>/dev/null || echo unknown)
# The module's Rust code follows one release's `kernel` crate, which
# changes with every release.
if [[ $release == 6.12.* ]]; then
    ok "kernel tree $KDIR ($release)"
else
    missing "a Linux 6.12 kernel (this tree is $release)" \
        "hyper_dmabuf's Rust code is written against 6.12's kernel crate (tested: 6.12.118)," \
        "which changes with every release"
fi
if [[ $(config CONFIG_X86_64) != y ]]; then
    missing "an x86-64 kernel" "hyper_dmabuf is built and tested for x86-64 only"
fi

if [[ $(config CONFIG_RUST) != y ]]; then
    missing "Rust support in this kernel (CONFIG_RUST is not set)" \
        "hyper_dmabuf is a Rust module: it needs a kernel built with CONFIG_RUST=y." \
        "Debian's and Arch's stock kernels have it off: build one with it on (docs/install.md)."
    verdict
fi
ok "CONFIG_RUST=y"

# Both XenBus roles are registered, whichever the domain uses.
for option in CONFIG_XEN CONFIG_DMA_SHARED_BUFFER CONFIG_XEN_BACKEND CONFIG_XEN_XENBUS_FRONTEND; do
    value=$(config $option)
    if [[ $value == y || ($value == m && $option == CONFIG_XEN_XENBUS_FRONTEND) ]]; then
        ok "$option=$value"
    else
        missing "$option in this kernel" "hyper_dmabuf shares dma-bufs between Xen domains, in both" \
            "XenBus roles: enable it and rebuild the kernel"
    fi
done

# --- the Rust files of the kernel's build (rust_files, above) ---------------
absent=()
for f in "${rust_files[@]}"; do
    [[ -e $KDIR/$f ]] || absent+=("$f")
done
if ((${#absent[@]})); then
    missing "the kernel's Rust build files (${absent[*]})" \
        "Ubuntu: apt install linux-lib-rust-$release" \
        "Qubes R4.3: its kernel-devel leaves out rust/; build against the kernel's full build tree" \
        "a kernel you build: its build tree after 'make' has them (the headers package of" \
        "6.12's 'make bindeb-pkg' leaves them out: docs/install.md)"
else
    ok "the kernel's Rust build files (rust/*.rmeta, libmacros.so)"
fi

# --- the compilers ---------------------------------------------------------
want_rustc=$(config CONFIG_RUSTC_VERSION_TEXT)
have_rustc=$("$RUSTC" --version 2>/dev/null)
if [[ -z $have_rustc ]]; then
    missing "a Rust compiler ($RUSTC)" "install the one the kernel was built with: ${want_rustc:-unknown}"
elif [[ -n $want_rustc && $have_rustc != "$want_rustc" ]]; then
    missing "the rustc the kernel was built with" \
        "the kernel: $want_rustc" \
        "RUSTC=$RUSTC: $have_rustc" \
        "Rust metadata only loads in the compiler that wrote it (E0514), even one of the same" \
        "version built elsewhere: point RUSTC at the kernel's (Ubuntu: the rustc-1.xx package its" \
        "kernel names; Debian: rustc-web's /usr/bin/rustc)."
elif [[ -z $want_rustc ]]; then
    note "this kernel does not record its rustc: $have_rustc must be the one that built it"
else
    ok "rustc: $have_rustc"
fi

have_bindgen=$("$BINDGEN" --version 2>/dev/null | sed -n 's/^bindgen \([0-9.]*\).*/\1/p')
if [[ -z $have_bindgen ]]; then
    missing "bindgen ($BINDGEN)" \
        "cargo install --locked bindgen-cli (>= $MIN_BINDGEN), then BINDGEN=~/.cargo/bin/bindgen"
elif ! version_ge "$have_bindgen" "$MIN_BINDGEN"; then
    missing "bindgen >= $MIN_BINDGEN ($BINDGEN is $have_bindgen)" \
        "Debian bookworm's bindgen is 0.60: cargo install --locked bindgen-cli"
else
    # bindgen loads libclang at run time: try it on a header of one line.
    probe=$(mktemp -d)
    echo 'struct hdm_probe { int x; };' >"$probe/probe.h"
    if "$BINDGEN" "$probe/probe.h" -o "$probe/probe.rs" >/dev/null 2>"$probe/err"; then
        ok "bindgen $have_bindgen with libclang"
    else
        missing "libclang for bindgen ($(head -1 "$probe/err"))" \
            "Debian: apt install libclang-dev (or libclang-NN-dev), or set LIBCLANG_PATH"
    fi
    rm -rf "$probe"
fi

if [[ $(config CONFIG_CC_IS_CLANG) == y ]]; then
    major=$(($(config CONFIG_CLANG_VERSION) / 10000))
    case $LLVM in
    -*) cc=clang$LLVM ;;
    */) cc=${LLVM}clang ;;
    1) cc=clang ;;
    *) cc= ;;
    esac
    if [[ -z $cc ]]; then
        missing "LLVM= for a kernel built with clang $major" \
            "pass LLVM=-$major (clang-$major) or LLVM=1 (clang), as the kernel was built"
    elif ! command -v "$cc" >/dev/null; then
        missing "$cc (the kernel was built with clang $major)" "Debian: apt install clang-$major lld-$major llvm-$major"
    elif [[ $("$cc" -dumpversion | cut -d. -f1) != "$major" ]]; then
        missing "clang $major ($cc is $("$cc" -dumpversion))" "pass LLVM=-$major with clang-$major installed"
    else
        ok "C compiler: $cc (clang $major, as the kernel)"
    fi
else
    # driver/Kbuild hands the kernel's C flags to bindgen (libclang) as
    # they are; a gcc-built kernel's include gcc-only ones, which the
    # kernel's own rust/Makefile filters out with a list of its own.
    missing "a kernel built with clang (this one: $(config CONFIG_CC_VERSION_TEXT))" \
        "hyper_dmabuf's bindings are generated with the kernel's C flags, which" \
        "must be clang's: gcc-built Rust kernels (Ubuntu's) are not supported yet (docs/install.md)"
fi

verdict
