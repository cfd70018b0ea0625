#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Every source file of the repository names its licence in an SPDX line
# within its first five lines (README.md, "Licences").
set -euo pipefail
cd "$(dirname "$0")/.."
missing=0
while IFS= read -r f; do
    case $f in
    *.rs | *.c | *.h | *.sh | *.mk | Makefile | */Kbuild | platform/images/*-init) ;;
    *) continue ;;
    esac
    if ! head -n 5 "$f" | grep -q 'SPDX-License-Identifier: '; then
        case $f in
        # Inputs of the kernel's cache key: their line comes with the next
        # change of the kernel's configuration (a rebuild either way).
        platform/build-kernel.sh | platform/lib.sh) continue ;;
        esac
        echo "no SPDX-License-Identifier line: $f" >&2
        missing=1
    fi
done < <(git ls-files)
exit $missing
