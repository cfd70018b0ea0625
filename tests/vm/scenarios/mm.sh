#!/bin/sh
# SPDX-License-Identifier: MIT
# Every mm operation a process can do to an imported buffer's mapping, as
# an unprivileged process (uid 65534) holding only the dma-buf fd:
# `hdmabuf-hostile mm` runs each case of docs/uapi.md ("What a process can
# do with an imported buffer's mapping") in its own process and checks the
# bytes, the errnos, the signals and the importer's counters after each.
#
#   importers  the PV guest and the PVH guest import from dom0 while dom0
#              (PV) imports from the PV guest: a read-only and a
#              read-write buffer each (the exporter then checks that every
#              page holds what the importer wrote: `--expect-seed`); one
#              of the two is 4 MiB (mappings start on a 2 MiB boundary, so
#              its cases cross page tables).
#   vmsplice-hold  the importer leaves pages of a buffer in a pipe and
#              closes it: the close returns at once, the buffer stays
#              mapped (unmaps_pending 1). It then exports a marker,
#              `mm-hold ID`, to the exporter, which unexports the buffer
#              and must see no release for it; the exporter imports the
#              marker to say so, and only then is the pipe read: the
#              exporter sees Released, then GrantsEnded. (The exporter's
#              import moves its own counters: no case runs there then.)
#   unload     the PV guest maps a buffer of dom0's; unloading its module
#              is refused (devices bound, then unbound) and the mapping
#              keeps its bytes; after munmap and close it unloads; it is
#              loaded again and reconnects.
#   peer-death dom0 maps a buffer of the PV guest, then destroys the
#              guest: the mapping still reads the same bytes; munmap and
#              close release everything.
# Every gauge ends at zero in every domain left.
#
# hdm: description = every mm operation on an imported buffer's mapping, unprivileged: PV dom0, PV and PVH importers, read-only and read-write; pages held by a pipe; unload; peer death
# hdm: domains = pv pvh
# hdm: attach = yes
# hdm: timeout = 450
# hdm: boot-timeout = 300
. /hdm/lib.sh

MM_FAILED=

# mm_export PEER NAME SIZE SEED [hdmabuf export options]: export a buffer
# with private data `mm-NAME` to PEER, in the background (output in
# /tmp/export-NAME.out, pid from `mm_pid NAME`).
mm_export() {
    local peer=$1 name=$2 size=$3 seed=$4
    shift 4
    hdmabuf export --domain "$peer" --size "$size" --seed "$seed" --priv "mm-$name" "$@" \
        >"/tmp/export-$name.out" 2>&1 &
    eval "MM_PID_$(echo "$name" | tr - _)=$!"
}

mm_pid() { eval "echo \$MM_PID_$(echo "$1" | tr - _)"; }

# mm_run NAME [hdmabuf-hostile mm options]: once buffer NAME is announced,
# run the mm cases on it; a failure is remembered (mm_check).
mm_run() {
    local name=$1 id
    shift
    id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"mm-$name\"" 240)
    hdm_log "mm cases on $name ($id) $*"
    hdmabuf-hostile mm --id "$id" "$@" || MM_FAILED="$MM_FAILED $name"
}

# mm_check: fail the phase if a run of mm cases failed (dom0: here or in
# a guest).
mm_check() {
    local guest
    for guest in pv pvh; do
        grep -q "\"priv\":\"mm-failed-$guest\"" /tmp/events &&
            MM_FAILED="$MM_FAILED $guest(see its log)"
    done
    [ -z "$MM_FAILED" ] || hdm_fail "mm cases failed on:$MM_FAILED"
}

# mm_report PEER: a guest's failed runs go to dom0, which fails the run at
# its end, so that one failure does not stop the other parts.
mm_report() {
    [ -n "$MM_FAILED" ] || return 0
    hdm_log "mm cases failed on:$MM_FAILED"
    mm_signal "$1" failed
}

# mm_signal PEER WHAT: tell PEER something happened here (it learns of a
# 4 KiB buffer `mm-WHAT-DOMAIN`; nobody imports it).
mm_signal() {
    hdmabuf export --domain "$1" --size 4K --priv "mm-$2-$HDM_DOMAIN" --hold 3 \
        >/dev/null 2>&1 &
    MM_SIGNAL_PIDS="$MM_SIGNAL_PIDS $!"
}

# mm_wait_signal WHAT DOMAIN: until DOMAIN said WHAT.
mm_wait_signal() {
    hdm_wait_event /tmp/events NewExport "\"priv\":\"mm-$1-$2\"" 280 >/dev/null
}

# mm_end NAME: unexport buffer NAME and wait for its exporter (which, for a
# read-write buffer, checks every byte the importer left).
mm_end() {
    local id
    id=$(hdm_export_id "/tmp/export-$1.out")
    hdmabuf unexport "$id" >/dev/null || hdm_fail "unexport of $1 failed"
    wait "$(mm_pid "$1")" || { cat "/tmp/export-$1.out"; hdm_fail "the exporter of $1 failed"; }
    hdm_log "$1 ended: $(grep -E '^(verified|byte)' "/tmp/export-$1.out" || echo 'grants ended')"
}

# mm_serve_hold NAME: the exporter's half of vmsplice-hold on buffer NAME.
mm_serve_hold() {
    local name=$1 id marker n late order
    id=$(hdm_export_id "/tmp/export-$name.out")
    marker=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"mm-hold $id\"" 280)
    # The importer holds the pages in its pipe from now until the marker
    # is imported below; what this domain sees about the buffer from here
    # on comes after its release was asked.
    n=$(wc -l </tmp/events)
    hdmabuf unexport "$id" >/dev/null || hdm_fail "$name: unexport failed"
    # Give a release that would come too early time to show.
    sleep 2
    late=$(tail -n +$((n + 1)) /tmp/events | grep -F "\"id\":\"$id\"" |
        grep -E '"event":"(Released|GrantsEnded)"')
    [ -z "$late" ] ||
        hdm_fail "$name: released while the importer's pipe still held its pages: $late"
    hdmabuf import "$marker" >/dev/null || hdm_fail "$name: import of the marker $marker failed"
    hdm_wait_event /tmp/events GrantsEnded "\"id\":\"$id\"" 120 >/dev/null
    order=$(tail -n +$((n + 1)) /tmp/events | grep -F "\"id\":\"$id\"" |
        sed -n 's/.*"event":"\([A-Za-z]*\)".*/\1/p' | tr '\n' ' ')
    [ "$order" = "Released GrantsEnded " ] ||
        hdm_fail "$name: after its unexport the exporter saw: $order(expected Released, GrantsEnded)"
    hdm_log "$name: no release while the pipe held its pages; then Released, GrantsEnded"
}

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    hdm_watch /tmp/events 300
    hdm_wait_connected 2 280
    pv=$(xl domid pv)
    pvh=$(xl domid pvh)

    # The guests import; their vmsplice-hold first, while nothing else
    # moves this domain's import counters.
    mm_export "$pv" pv-hold 1M 13
    mm_export "$pv" pv-ro 1M 11
    mm_export "$pv" pv-rw 4M 12 --rw --expect-seed 112
    mm_export "$pvh" pvh-hold 1M 23
    mm_export "$pvh" pvh-ro 4M 21
    mm_export "$pvh" pvh-rw 1M 22 --rw --expect-seed 122
    mm_serve_hold pv-hold &
    serve_pv=$!
    mm_serve_hold pvh-hold &
    serve_pvh=$!
    wait $serve_pv || hdm_fail "pv-hold"
    wait $serve_pvh || hdm_fail "pvh-hold"

    # Meanwhile dom0 imports from the PV guest (its exports do not move
    # the guests' import counters, nor theirs this domain's).
    mm_run dom0-ro --seed 31
    mm_run dom0-rw --seed 32 --rw --write-seed 132
    # The PV guest serves this one once its own cases are done.
    mm_run dom0-hold --seed 33 vmsplice-hold
    mm_signal "$pv" done
    for guest in pv pvh; do
        mm_wait_signal done $guest
        mm_end $guest-ro
        mm_end $guest-rw
    done

    # The PV guest unloads its module under a mapping of this buffer.
    mm_export "$pv" pv-unload 1M 14
    wait "$(mm_pid pv-unload)" || { cat /tmp/export-pv-unload.out; hdm_fail "the exporter of pv-unload failed"; }

    # Peer death: the reloaded guest's buffer, mapped here when it dies.
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"mm-death"' 120)
    hdmabuf-hostile mm --id "$id" --seed 34 peer-death >/tmp/death.out 2>&1 &
    victim=$!
    deadline=$(hdm_deadline 60)
    until grep -q 'peer-death: mapped' /tmp/death.out; do
        kill -0 $victim 2>/dev/null || { cat /tmp/death.out; hdm_fail "peer-death ended early"; }
        hdm_in_time "$deadline" || { cat /tmp/death.out; hdm_fail "peer-death never mapped"; }
        sleep 0.1
    done
    hdm_mark destroyed pv
    xl destroy pv || hdm_fail "xl destroy pv failed"
    wait $victim || MM_FAILED="$MM_FAILED death"
    cat /tmp/death.out

    wait $MM_SIGNAL_PIDS
    hdm_wait_stat connections_live 0 60
    hdm_check_released 30
    mm_check
    ;;
pv/main | pvh/main)
    hdm_load
    hdm_watch /tmp/events 300
    hdm_wait_connected
    me=$HDM_DOMAIN
    if [ $me = pv ]; then
        mm_export 0 dom0-ro 4M 31
        mm_export 0 dom0-rw 1M 32 --rw --expect-seed 132
        mm_export 0 dom0-hold 1M 33
    fi
    case $me in pv) seed=1 ;; *) seed=2 ;; esac
    mm_run $me-hold --seed ${seed}3 vmsplice-hold
    mm_run $me-ro --seed ${seed}1
    mm_run $me-rw --seed ${seed}2 --rw --write-seed 1${seed}2
    if [ $me = pvh ]; then
        mm_report 0
        mm_signal 0 done
        wait $MM_SIGNAL_PIDS
        hdm_check_released 120
        exit 0
    fi
    mm_signal 0 done

    # The PV guest serves dom0's vmsplice-hold now that its own cases are
    # done, then ends dom0's buffers.
    mm_serve_hold dom0-hold
    mm_wait_signal done dom0
    mm_end dom0-ro
    mm_end dom0-rw
    mm_report 0

    # Unload under a mapping: nothing else may hold the module.
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"mm-pv-unload"' 120)
    kill "$HDM_WATCH_PID"
    wait "$HDM_WATCH_PID" $MM_SIGNAL_PIDS "$(mm_pid dom0-hold)"
    hdmabuf-hostile mm --id "$id" --seed 14 unload || hdm_fail "the unload case failed"
    hdm_load
    hdm_wait_connected
    hdm_log "reloaded and reconnected: $(hdm_stats)"

    # dom0 maps this one and destroys this domain.
    hdmabuf export --domain 0 --size 2M --seed 34 --priv mm-death
    while :; do sleep 3600; done
    ;;
esac
