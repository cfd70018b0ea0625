#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Checks that every `unsafe` block or `unsafe impl` in the given Rust files
# has a `// SAFETY:` comment on one of the lines just above it (the rule
# clippy's undocumented_unsafe_blocks enforces for the workspace, which
# cannot run on the kernel module). Generated bindings (*.rs.inc) are not
# given to it.
set -euo pipefail
status=0
for f in "$@"; do
    awk -v file="$f" '
        { lines[NR] = $0 }
        /unsafe *\{|unsafe impl/ && !/^ *\/\// {
            ok = 0
            for (i = NR; i >= NR - 6 && i > 0; i--) {
                if (lines[i] ~ /SAFETY:/) { ok = 1; break }
            }
            if (!ok) { printf "%s:%d: unsafe without a SAFETY comment\n", file, NR; bad = 1 }
        }
        END { exit bad }
    ' "$f" || status=1
done
exit $status
