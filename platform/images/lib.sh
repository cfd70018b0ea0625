# SPDX-License-Identifier: MIT
# Shell helpers for scenarios and the init scripts, at /hdm/lib.sh in every
# domain's initramfs. Scenarios start with `. /hdm/lib.sh`.
#
# Environment a scenario runs with:
#   HDM_DOMAIN  the domain's name: dom0, or the name given in `# hdm: domains`
#   HDM_TYPE    dom0, pv or pvh
#   HDM_PHASE   main (every domain), final (dom0 only, after the domUs ended)
#   HDM_ROLE    the role the modules must log: "dom0 PV", "domU PV", "domU PVH"
#   HDM_TIME_SCALE  every wait's limit in percent of what the scenario says
#               (hdm.time_scale= from the VM test runner's --time-scale)

HDM_MODDIR=/hdm/modules

# Marker lines the VM test runner reads: `@@HDM <event> <domain> [detail]`.
hdm_mark() { echo "@@HDM $*"; }

# Kernel messages printed straight to the console by printk can land in
# the middle of a line user space is writing there (a marker, a streamed
# guest line). So only emergencies go to the console directly; the rest is
# copied from /proc/kmsg by a user-space reader, one whole line per write.
hdm_forward_kmsg() {
    # What /proc/kmsg holds now was printed on the console during boot:
    # drain it first (a read blocks when it is empty), then lower the level.
    cat /proc/kmsg >/dev/null 2>&1 &
    local drain=$!
    sleep 1
    kill "$drain" 2>/dev/null
    wait "$drain" 2>/dev/null
    dmesg -n 1
    (while IFS= read -r l; do echo "${l#<*>}"; done </proc/kmsg) &
}

# Let the kmsg reader catch up before a marker that closes a step.
hdm_settle() { sleep 1; }

# Log a line of the scenario (it shows in the domain's log).
hdm_log() { echo "hdm[$HDM_DOMAIN]: $*"; }

# Stop the scenario with a failure message. Called inside `$(...)` or a
# background job, `exit` alone would end only that subshell, and in
# `$(...)` the message would be captured: the caller would go on with an
# empty value and might wait for something that never comes. So the
# message goes to stderr and the scenario's own shell ($$, the same in
# every subshell) is stopped too.
hdm_fail() {
    echo "hdm[$HDM_DOMAIN]: FAIL: $*" >&2
    kill -TERM $$ 2>/dev/null
    exit 1
}

# hdm_insmod NAME [PARAM=VALUE...]: load one of our modules.
hdm_insmod() {
    local m=$1
    shift
    insmod "$HDM_MODDIR/$m.ko" "$@" || hdm_fail "insmod $m failed"
    hdm_log "loaded $m"
}

# hdm_rmmod NAME: unload one of our modules.
hdm_rmmod() {
    rmmod "$1" || hdm_fail "rmmod $1 failed"
    hdm_log "unloaded $1"
}

# hdm_expect_dmesg TEXT: the kernel log must contain TEXT (fixed string).
hdm_expect_dmesg() {
    dmesg | grep -qF -- "$1" || hdm_fail "kernel log lacks: $1"
    hdm_log "kernel log has: $1"
}

# hdm_role_of TYPE: the role string the modules log in a domain of TYPE.
hdm_role_of() {
    case $1 in
    dom0) echo "dom0 PV" ;;
    pv) echo "domU PV" ;;
    pvh) echo "domU PVH" ;;
    *) echo "unknown" ;;
    esac
}

# hdm_cmdline KEY: the value of KEY=VALUE on the kernel command line.
hdm_cmdline() {
    local w
    for w in $(cat /proc/cmdline); do
        case $w in "$1"=*) echo "${w#*=}"; return 0 ;; esac
    done
    return 1
}

# The scale of every time limit (see HDM_TIME_SCALE above). dom0's init
# hands it on to each domU's command line.
if [ -z "${HDM_TIME_SCALE:-}" ]; then
    HDM_TIME_SCALE=$(hdm_cmdline hdm.time_scale) || HDM_TIME_SCALE=100
    export HDM_TIME_SCALE
fi

# hdm_limit SECONDS: a scenario's limit of SECONDS, scaled: the seconds to
# wait for, and to pass to a tool's --timeout. Limits catch hangs; a slow
# host needs longer ones, not different tests.
hdm_limit() { echo $(($1 * HDM_TIME_SCALE / 100)); }

# hdm_header FILE KEY: the values of `# hdm: KEY = VALUE` lines of a scenario.
hdm_header() {
    sed -n "s/^# hdm: *$2 *= *//p" "$1"
}

# --- hyper_dmabuf helpers ------------------------------------------------------

# hdm_load [PARAM=VALUE...]: load hyper_dmabuf.ko; mount debugfs for its
# counters (/sys/kernel/debug/hyper_dmabuf/stats).
hdm_load() {
    grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug
    hdm_insmod hyper_dmabuf "$@"
}

HDM_STATS=/sys/kernel/debug/hyper_dmabuf/stats
HDM_CHECK=/sys/kernel/debug/hyper_dmabuf/check

# hdm_load_check: after hdm_load, load the test-only hyper_dmabuf_check.ko,
# whose $HDM_CHECK lets `hdmabuf-agent kcheck` read a buffer as a
# kernel importer would (the shipped hyper_dmabuf.ko has no such hook).
hdm_load_check() {
    hdm_insmod hyper_dmabuf_check
    [ -e "$HDM_CHECK" ] || hdm_fail "hyper_dmabuf_check.ko loaded, but $HDM_CHECK is missing"
}

# hdm_stat NAME: the value of one counter.
hdm_stat() { awk -v n="$1" '$1 == n { print $2 }' "$HDM_STATS"; }

# hdm_stats: all counters on one line (for logs).
hdm_stats() { awk '{ printf "%s=%s ", $1, $2 } END { print "" }' "$HDM_STATS"; }

# hdm_wait_stat NAME VALUE [SECONDS]: wait until counter NAME reads VALUE.
hdm_wait_stat() {
    local deadline=$(hdm_deadline ${3:-30})
    while [ "$(hdm_stat "$1")" != "$2" ]; do
        hdm_in_time $deadline ||
            hdm_fail "counter $1 is $(hdm_stat "$1"), not $2, after $(hdm_limit ${3:-30}) s ($(hdm_stats))"
        sleep 0.1
    done
}

# hdm_wait_connected [N] [SECONDS]: wait for N connected devices (default 1).
hdm_wait_connected() {
    hdm_wait_stat connections_live "${1:-1}" "${2:-60}"
    hdm_log "connected: $(hdm_stats)"
}

# hdm_domid NAME: the domain id of domU NAME (in a domU: of the domUs dom0
# created before it, from hdm.domid.NAME= on its command line).
hdm_domid() {
    if [ "$HDM_DOMAIN" = dom0 ]; then xl domid "$1"; else hdm_cmdline "hdm.domid.$1"; fi
}

# hdm_wait_device DOMID DEVID FRONT BACK [SECONDS]: wait (in dom0) until
# `hdmabuf xl list DOMID` shows device DEVID with frontend state FRONT and
# backend state BACK (state names as xl list prints them).
hdm_wait_device() {
    local deadline=$(hdm_deadline ${5:-60}) line
    while :; do
        line=$(hdmabuf xl list "$1" | awk -v d="$2" '$2 == d { print $4 "/" $5 }')
        [ "$line" = "$3/$4" ] && break
        hdm_in_time $deadline || hdm_fail "device $2 of domain $1 is ${line:-absent}, not $3/$4, after $(hdm_limit ${5:-60}) s"
        sleep 0.1
    done
    hdm_log "device $2 of domain $1: $3/$4"
}

# hdm_no_nodes DOMID [SECONDS]: wait (in dom0) until no hyper_dmabuf node of
# domain DOMID is left in xenstore: neither a frontend directory of it nor
# a backend directory for it in any domain (`hdmabuf xl list` shows both).
hdm_no_nodes() {
    local deadline=$(hdm_deadline ${2:-30})
    until hdmabuf xl list "$1" | grep -q "^no hyper_dmabuf devices"; do
        hdm_in_time $deadline || hdm_fail "nodes of domain $1 left after $(hdm_limit ${2:-30}) s: $(hdmabuf xl list "$1")"
        sleep 0.1
    done
    hdm_log "no hyper_dmabuf node of domain $1 is left"
}

# hdm_check_released: every gauge of buffers, grants and mappings is back at
# zero (the connection itself may stay up).
hdm_check_released() {
    local c
    for c in exports_live imports_live grants_live grants_draining pages_mapped dmabufs_live pages_leaked \
        fences_in_live fences_out_live; do
        hdm_wait_stat "$c" 0 "${1:-30}"
    done
    hdm_log "all released: $(hdm_stats)"
}

# hdm_check_clean: every gauge back at zero (as hdm_check_released, 60 s),
# and no request refused nor ring closed since the module loaded.
hdm_check_clean() {
    hdm_check_released 60
    [ "$(hdm_stat protocol_errors)" = 0 ] || hdm_fail "requests were refused: $(hdm_stats)"
    [ "$(hdm_stat ring_errors)" = 0 ] || hdm_fail "a ring broke: $(hdm_stats)"
}

# hdm_watch FILE [SECONDS]: record events as JSON lines in FILE, in the
# background, for SECONDS (300, scaled) at most (the watcher's pid in
# HDM_WATCH_PID and in FILE.pid, where hdm_wait_event looks for it).
hdm_watch() {
    hdmabuf --json watch --timeout "$(hdm_limit ${2:-300})" >"$1" 2>&1 &
    HDM_WATCH_PID=$!
    echo $HDM_WATCH_PID >"$1.pid"
}

# hdm_wait_event FILE EVENT [MATCH] [SECONDS]: wait until FILE has an event
# EVENT (e.g. NewExport) whose line also contains MATCH; print its id.
# Fails at once if the hdm_watch writing FILE has ended: no event can come.
hdm_wait_event() {
    local deadline=$(hdm_deadline ${4:-60}) line watcher
    watcher=$(cat "$1.pid" 2>/dev/null)
    while :; do
        line=$(grep "\"event\":\"$2\"" "$1" | grep -F -- "${3:-}" | head -n 1)
        [ -z "$line" ] || break
        if [ -n "$watcher" ] && ! kill -0 "$watcher" 2>/dev/null; then
            # It may have written the event just before it ended.
            line=$(grep "\"event\":\"$2\"" "$1" | grep -F -- "${3:-}" | head -n 1)
            [ -n "$line" ] && break
            hdm_fail "no $2 event${3:+ matching $3}: the event watch writing $1 has ended ($(tail -n 1 "$1"))"
        fi
        hdm_in_time $deadline || hdm_fail "no $2 event${3:+ matching $3} within $(hdm_limit ${4:-60}) s"
        sleep 0.1
    done
    echo "$line" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}

# hdm_export_id FILE [SECONDS]: the id an `hdmabuf export` writing to FILE
# printed, once it has.
hdm_export_id() {
    local deadline=$(hdm_deadline ${2:-60})
    until grep -q '^exported ' "$1" 2>/dev/null; do
        hdm_in_time $deadline || hdm_fail "no export in $1: $(cat "$1")"
        sleep 0.1
    done
    sed -n 's/^exported \([^ ]*\) .*/\1/p' "$1"
}

# hdm_count_events FILE EVENT: how many EVENT records FILE has.
hdm_count_events() { grep -c "\"event\":\"$2\"" "$1"; }

# hdm_wait_count FILE EVENT N [SECONDS]: until FILE has N EVENT records.
hdm_wait_count() {
    local deadline=$(hdm_deadline ${4:-60})
    while [ "$(hdm_count_events "$1" "$2")" -lt "$3" ]; do
        hdm_in_time $deadline || hdm_fail "fewer than $3 $2 events after $(hdm_limit ${4:-60}) s"
        sleep 0.1
    done
}

# hdm_report TEXT: a line of a scenario's human report (`make demo` prints
# these lines of every domain's log).
hdm_report() { echo "report| [$HDM_DOMAIN] $*"; }

# hdm_ms: milliseconds since boot (for the report's durations).
hdm_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# hdm_deadline SECONDS: the hdm_ms time a limit of SECONDS (scaled, see
# hdm_limit) from now. Waits count time, not rounds: a round's processes
# take as long as its sleep on a busy host.
hdm_deadline() { echo $(($(hdm_ms) + $1 * HDM_TIME_SCALE * 10)); }

# hdm_in_time DEADLINE: whether DEADLINE (from hdm_deadline) is not past.
hdm_in_time() { [ "$(hdm_ms)" -le "$1" ]; }

# hdm_watch_stuck LABEL SECONDS: in the background, if LABEL is not done
# within SECONDS (the caller kills $HDM_STUCK_PID when it is), log the
# driver's gauges and rings and every task's kernel stack once. A step
# blocked in the kernel says nothing else: a run of unload hung once in
# dom0's 4th cycle, a soak-short guest once in the unbind of its driver
# restart, both with no line saying where.
hdm_watch_stuck() {
    (
        sleep "$2"
        hdm_log "$1: not done after $2 s: $(hdm_stats)"
        hdm_log "$1: rings: $(tr '\n' ' ' </sys/kernel/debug/hyper_dmabuf/rings 2>/dev/null)"
        hdm_log "$1: irqs: $(grep hyper_dmabuf /proc/interrupts | tr -s ' ')"
        hdm_log "$1: tasks in the kernel:"
        for t in /proc/[0-9]*; do
            [ -r "$t/stack" ] || continue
            hdm_log "$1: ${t#/proc/} $(cat "$t/comm" 2>/dev/null) $(cat "$t/wchan" 2>/dev/null)" \
                "$(tr '\n' ' ' <"$t/stack" 2>/dev/null)"
        done
    ) &
    HDM_STUCK_PID=$!
}

# hdm_export_each PEER SIZE:SEED...: export a buffer of each size to PEER,
# one after the other, each until its importer released it (`--once`).
hdm_export_each() {
    local peer=$1 spec
    shift
    for spec in "$@"; do
        hdmabuf export --domain "$peer" --size "${spec%:*}" --seed "${spec#*:}" \
            --priv "size-${spec%:*}" --once >/tmp/export.out 2>&1 || {
            cat /tmp/export.out
            hdm_fail "export of ${spec%:*} to domain $peer failed"
        }
        hdm_log "exported ${spec%:*} to domain $peer: imported, released, grants ended"
    done
}

# hdm_import_each EVENTS SIZE:SEED...: for each size, wait for its export
# (recorded by hdm_watch in EVENTS), import it and verify every byte, in
# user space and as a kernel importer (hdmabuf-agent kcheck; call
# hdm_load_check first).
hdm_import_each() {
    local events=$1 spec id
    shift
    [ -e "$HDM_CHECK" ] || hdm_fail "hdm_import_each: no $HDM_CHECK (call hdm_load_check after hdm_load)"
    for spec in "$@"; do
        id=$(hdm_wait_event "$events" NewExport "\"priv\":\"size-${spec%:*}\"" 300)
        hdmabuf-agent kcheck "$id" --verify "${spec#*:}" || hdm_fail "import of ${spec%:*} ($id) failed"
    done
}
