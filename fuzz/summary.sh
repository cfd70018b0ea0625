#!/bin/sh
# SPDX-License-Identifier: MIT
# fuzz/summary.sh LOGDIR TARGET...: one table row per target from the logs
# `make fuzz` leaves (libFuzzer with -print_final_stats=1): seconds run,
# executions, executions per second, edges covered (`cov`), features
# (`ft`), corpus entries and size, peak memory, and crashes (inputs in
# fuzz/artifacts/TARGET/). Markdown, so it can go into docs as it is.
set -eu
dir=$1
shift
echo "| target | seconds | executions | exec/s | cov | ft | corpus | peak RSS MiB | crashes |"
echo "|---|---:|---:|---:|---:|---:|---|---:|---:|"
for t in "$@"; do
    log=$dir/$t.log
    [ -f "$log" ] || { echo "| $t | no log | | | | | | | |"; continue; }
    awk -v t="$t" -v crashes="$(find "fuzz/artifacts/$t" -name 'crash-*' 2>/dev/null | wc -l)" '
        /^#[0-9]+[ \t]/ && / cov: / {
            for (i = 1; i <= NF; i++) {
                if ($i == "cov:") cov = $(i + 1)
                if ($i == "ft:") ft = $(i + 1)
                if ($i == "corp:") corp = $(i + 1)
            }
        }
        /^Done [0-9]+ runs in [0-9]+ second/ { secs = $5 }
        /^stat::number_of_executed_units:/ { execs = $2 }
        /^stat::average_exec_per_sec:/ { rate = $2 }
        /^stat::peak_rss_mb:/ { rss = $2 }
        END {
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                t, secs, execs, rate, cov, ft, corp, rss, crashes
        }' "$log"
done
