#!/bin/sh
# SPDX-License-Identifier: MIT
# The life-cycle of shared buffers between dom0 and a PV domU, and the
# death of the domU with buffers mapped both ways.
#
#   A. Closing the fd that exported a buffer unexports it.
#   B. Unexport while dom0 maps the buffer: the exporter keeps its grants
#      until dom0 releases (RELEASE comes before the grants end); a second
#      import of the mapped buffer reuses the mapping.
#   C. A delayed unexport is reported by QUERY, then happens.
#   D. dom0 and the domU each map a buffer of the other; dom0 destroys the
#      domU. dom0's process keeps reading its mapping of the dead domain's
#      pages, dom0's export to it ends, and once the process lets go every
#      counter is back at zero.
#   E. `hdmabuf xl daemon` removes the dead domU's device from dom0's
#      xenstore (libxl leaves it behind); the backend device goes with it
#      and the module unloads. (Unloading refused while a device is bound
#      is tested by scenario xl.)
#
# hdm: description = close/unexport/delayed unexport/re-import, peer death with buffers mapped both ways, unload
# hdm: domains = pv
# hdm: xl.pv = memory=512
# hdm: attach = yes
# hdm: timeout = 300
# hdm: boot-timeout = 300
# hdm: expect-log = dom0: hyper_dmabuf: unloaded (dom0 PV)
. /hdm/lib.sh

# line_of FILE EVENT ID: the line number of EVENT about ID in FILE.
line_of() { grep -n "\"event\":\"$2\"" "$1" | grep -F "$3" | head -n 1 | cut -d: -f1; }

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    hdm_watch /tmp/events 600
    hdm_wait_connected
    pvid=$(xl domid pv)
    echo "$pvid" >/tmp/pvid

    # A
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"lc-close"')
    hdm_wait_event /tmp/events Unexport "$id" >/dev/null
    hdm_log "A: the guest's buffer was unexported when its exporter died"

    # B
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"lc-busy"')
    mapped=$(hdm_stat buffers_mapped)
    hdmabuf import "$id" --verify 32 --hold 600 >/tmp/holder 2>&1 &
    holder=$!
    hdm_wait_stat pages_mapped 1024
    hdmabuf import "$id" --verify 32 || hdm_fail "B: second import failed"
    n=$(($(hdm_stat buffers_mapped) - mapped))
    [ "$n" = 1 ] || hdm_fail "B: the second import mapped the buffer again ($n mappings)"
    # Tell the guest it may unexport now: a small buffer of ours.
    hdmabuf export --domain "$pvid" --size 4K --seed 30 --priv lc-go --once >/tmp/go 2>&1 &
    go=$!
    hdm_wait_event /tmp/events Unexport "$id" >/dev/null
    [ "$(hdm_stat pages_mapped)" = 1024 ] || hdm_fail "B: the mapping went away before we released it"
    kill "$holder"
    wait "$holder" 2>/dev/null
    wait "$go" || hdm_fail "B: the go signal failed: $(cat /tmp/go)"
    hdm_wait_stat pages_mapped 0
    hdm_log "B: unexport waited for our release; the re-import reused the mapping"

    # C
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"lc-delay"')
    hdm_wait_event /tmp/events Unexport "$id" >/dev/null
    hdm_log "C: the delayed unexport happened"

    # D
    hdmabuf export --domain "$pvid" --size 8M --seed 35 --priv lc-death >/tmp/death 2>&1 &
    exporter=$!
    deathid=$(hdm_export_id /tmp/death)
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"lc-death2"')
    hdmabuf import "$id" --verify 36 --hold 600 >/tmp/holder2 2>&1 &
    holder=$!
    hdm_wait_stat pages_mapped 1024
    hdm_wait_event /tmp/events Mapped "$deathid" >/dev/null
    hdm_log "D: buffers mapped both ways; destroying the guest: $(hdm_stats)"
    hdm_mark destroyed pv
    xl destroy pv || hdm_fail "xl destroy failed"
    hdm_wait_stat connections_live 0
    wait "$exporter" || hdm_fail "D: dom0's export did not end cleanly: $(cat /tmp/death)"
    kill -0 "$holder" || hdm_fail "D: the process mapping the dead guest's buffer died: $(cat /tmp/holder2)"
    kill "$holder"
    wait "$holder" 2>/dev/null
    hdm_check_released 60
    hdm_log "D: the guest's death was cleaned up"
    # Our event reader holds the device open (and so the module).
    kill "$HDM_WATCH_PID"
    ;;
dom0/final)
    pvid=$(cat /tmp/pvid)
    hdm_no_nodes "$pvid"
    i=0
    until rmmod hyper_dmabuf 2>/tmp/rmmod; do
        i=$((i + 1))
        [ $i -le 100 ] || hdm_fail "E: the module did not unload after the device was removed: $(cat /tmp/rmmod)"
        sleep 0.1
    done
    hdm_expect_dmesg "hyper_dmabuf: unloaded (dom0 PV)"
    ;;
pv/main)
    hdm_load
    hdm_watch /tmp/events 600
    hdm_wait_connected

    # A: the exporter dies; its fd is closed, which unexports.
    hdmabuf export --domain 0 --size 1M --seed 31 --priv lc-close >/tmp/close 2>&1 &
    pid=$!
    hdm_export_id /tmp/close >/dev/null
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    hdm_check_released
    hdm_log "A: closing the exporting fd unexported the buffer"

    # B
    hdmabuf --json export --domain 0 --size 4M --seed 32 --priv lc-busy >/tmp/busy 2>&1 &
    pid=$!
    id=$(hdm_wait_event /tmp/events Mapped "")
    # dom0 imports it a second time, then signals with a buffer of its own
    # (unexported, the buffer could not be imported again).
    go=$(hdm_wait_event /tmp/events NewExport '"priv":"lc-go"')
    hdmabuf import "$go" --verify 30 || hdm_fail "B: importing dom0's signal failed"
    hdmabuf unexport "$id" || hdm_fail "B: unexport failed"
    wait "$pid" || hdm_fail "B: the export did not end cleanly: $(cat /tmp/busy)"
    released=$(grep -n '"event":"Released"' /tmp/busy | head -n 1 | cut -d: -f1)
    ended=$(grep -n '"event":"GrantsEnded"' /tmp/busy | head -n 1 | cut -d: -f1)
    [ -n "$released" ] && [ -n "$ended" ] && [ "$released" -lt "$ended" ] ||
        hdm_fail "B: the grants ended before dom0 released the buffer: $(cat /tmp/busy)"
    hdm_check_released
    hdm_log "B: grants ended only after dom0's release"

    # C
    hdmabuf export --domain 0 --size 1M --seed 33 --priv lc-delay >/tmp/delay 2>&1 &
    pid=$!
    id=$(hdm_export_id /tmp/delay)
    hdmabuf unexport "$id" --delay-ms 3000 || hdm_fail "C: delayed unexport failed"
    hdmabuf --json query "$id" | grep -q '"delayed_unexported":1' ||
        hdm_fail "C: QUERY does not report the delayed unexport"
    wait "$pid" || hdm_fail "C: the export did not end: $(cat /tmp/delay)"
    hdm_check_released
    hdm_log "C: delayed unexport reported, then done"

    # D: map dom0's buffer and share one; dom0 destroys this domain.
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"lc-death"')
    hdmabuf import "$id" --verify 35 --hold 600 &
    hdmabuf export --domain 0 --size 4M --seed 36 --priv lc-death2 &
    sleep 600
    ;;
esac
