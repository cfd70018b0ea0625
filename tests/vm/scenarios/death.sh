#!/bin/sh
# SPDX-License-Identifier: MIT
# Peer death at each step of a buffer's life (issue 8): dom0 destroys a PV
# guest with `xl destroy` at a chosen moment, one guest per step, and must
# clean up fully each time; its processes get errors or keep their
# mappings, never a crash.
#
#   export  dom0 exports 512 MiB to d1 and destroys d1 while the export
#           is being granted and sent: the export fails (or, if it got
#           through, ends when the connection goes) and every grant ends.
#   import  d2 exports 384 MiB; dom0 destroys d2 while dom0 maps it: the
#           import fails, or succeeds with pages that stay readable.
#   read    d3 exports 8 MiB; dom0 maps it and reads it again and again;
#           dom0 destroys d3: every read still sees the same bytes (the
#           mapping keeps the frames) until the process lets go.
#   unexport dom0 exports 8 MiB to d4, which maps it; dom0 unexports, so
#           the handshake waits for d4's RELEASE; dom0 destroys d4: the
#           grants end anyway (Xen unmaps a dead domain's mappings).
# After each: every gauge of dom0 is back to zero.
#
# hdm: description = peer death at every step: during export, import, reading a mapping, the unexport handshake
# hdm: domains = d1:pv d2:pv d3:pv d4:pv
# hdm: xl.d2 = memory=768
# hdm: attach = yes
# hdm: timeout = 600
# hdm: boot-timeout = 300
. /hdm/lib.sh

# kill_guest NAME: destroy domU NAME (the runner expects its death).
kill_guest() {
    hdm_mark destroyed "$1"
    xl destroy "$1" || hdm_fail "xl destroy $1 failed"
}

# until_positive COUNTER PID OUTPUT: wait until dom0's COUNTER is above
# 0, while process PID (which writes OUTPUT) runs. At most 300 s: the
# exporter first fills its buffer, on the debug kernel while three other
# guests fill theirs.
until_positive() {
    local deadline=$(hdm_deadline 300)
    until [ "$(hdm_stat "$1")" -gt 0 ]; do
        kill -0 "$2" 2>/dev/null || hdm_fail "$1 stayed 0 and the process ended: $(cat "$3")"
        hdm_in_time $deadline || hdm_fail "$1 stayed 0 ($(hdm_stats)): $(cat "$3")"
        sleep 0.02
    done
}

# settled WHAT: after WHAT, dom0 holds no export, grant, mapping or
# dma-buf. (imports_live also counts the announced buffers of the guests
# still alive, which dom0 has yet to import; the last step checks it.)
settled() {
    local c
    for c in exports_live grants_live grants_draining pages_mapped dmabufs_live pages_leaked; do
        hdm_wait_stat "$c" 0 60
    done
    hdm_log "$1: dom0 cleaned up: $(hdm_stats)"
}

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    hdm_watch /tmp/events 600
    hdm_wait_connected 4 120

    # export
    hdmabuf export --domain "$(xl domid d1)" --size 512M --seed 81 --priv death-export \
        >/tmp/export.out 2>&1 &
    exporter=$!
    # The pages are being granted: d1 dies before it hears of the buffer.
    until_positive grants_live "$exporter" /tmp/export.out
    kill_guest d1
    wait "$exporter"
    hdm_log "export: the exporter exited with $? and said: $(tail -n 2 /tmp/export.out | tr '\n' ' ')"
    settled export

    # import
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"death-import"' 120)
    hdmabuf import "$id" --verify 82 >/tmp/import.out 2>&1 &
    importer=$!
    # Mapping 98,304 grants takes dom0 most of a second: d2 dies in the
    # middle (or, on a fast host, just after; the log says which).
    sleep 0.1
    kill_guest d2
    wait "$importer"
    hdm_log "import: the importer exited with $? and said: $(tail -n 2 /tmp/import.out | tr '\n' ' ')"
    settled import

    # read
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"death-read"' 120)
    hdmabuf import "$id" --verify 83 --hold 15 --reread >/tmp/read.out 2>&1 &
    reader=$!
    hdm_wait_stat pages_mapped 2048 60
    kill_guest d3
    wait "$reader" || hdm_fail "read: the reader failed: $(cat /tmp/read.out)"
    hdm_log "read: $(tail -n 1 /tmp/read.out)"
    settled read

    # unexport
    hdmabuf --json export --domain "$(xl domid d4)" --size 8M --seed 84 --priv death-unexport \
        >/tmp/unexport.out 2>&1 &
    exporter=$!
    deadline=$(hdm_deadline 60)
    until id=$(sed -n 's/.*"exported":"\([^"]*\)".*/\1/p' /tmp/unexport.out) && [ -n "$id" ]; do
        hdm_in_time $deadline || hdm_fail "unexport: no export: $(cat /tmp/unexport.out)"
        sleep 0.1
    done
    hdm_wait_event /tmp/events Mapped "$id" 120 >/dev/null
    hdmabuf unexport "$id" || hdm_fail "unexport: unexport failed"
    # The handshake is under way: d4 is told, and holds its mapping.
    hdmabuf --json query "$id" | grep -q '"busy":1' ||
        hdm_fail "unexport: the buffer is not busy: $(hdmabuf --json query "$id")"
    kill_guest d4
    wait "$exporter" || hdm_fail "unexport: the exporter failed: $(cat /tmp/unexport.out)"
    grep -q '"event":"GrantsEnded"' /tmp/unexport.out ||
        hdm_fail "unexport: no GrantsEnded: $(cat /tmp/unexport.out)"
    settled unexport
    hdm_wait_stat connections_live 0 60
    hdm_check_released
    kill "$HDM_WATCH_PID"
    ;;
d1/main)
    hdm_load
    hdm_wait_connected 1 120
    while :; do sleep 3600; done
    ;;
d2/main | d3/main)
    hdm_load
    hdm_wait_connected 1 120
    case $HDM_DOMAIN in d2) size=384M seed=82 what=import ;; *) size=8M seed=83 what=read ;; esac
    hdmabuf export --domain 0 --size $size --seed $seed --priv death-$what --once
    while :; do sleep 3600; done
    ;;
d4/main)
    hdm_load
    hdm_watch /tmp/events 600
    hdm_wait_connected 1 120
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"death-unexport"' 240)
    hdmabuf import "$id" --verify 84 --hold 600
    ;;
esac
