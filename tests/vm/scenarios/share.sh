#!/bin/sh
# SPDX-License-Identifier: MIT
# dom0 paired with two guests at once, a PV and a PVH one: each guest
# exports an 8 MiB buffer to dom0, which learns of both from events,
# imports them and verifies every byte (in user space and as a kernel
# importer); dom0 exports a buffer to each guest, which verifies it. Then
# the C example (examples/c/, nothing but the uapi header and libc) with
# hdmabuf at the other end: the PV guest exports with it to dom0, which
# verifies with hdmabuf, and imports with it what hdmabuf exports from
# dom0. Then buffers that a real driver made (issue 14): dom0 exports a
# vgem GEM buffer (PRIME) to each guest read-write, which the guest
# checks and overwrites and dom0 then finds in its own buffer; the PVH
# guest exports one to dom0, which reads it in user space and as a
# kernel importer. (Not the PV guest: writing a vgem buffer through its
# CPU mapping never ends in a PV domU, each access faulting again in
# drm_gem_shmem_fault; docs/kernel-notes.md, 11.4.) vgem unloads at the
# end: nothing still holds one of its buffers. Last, frames announced
# faster than the importer takes them (HDMABUF_IOCTL_UPDATE): the PV guest
# to dom0 and dom0 to the PVH guest, each importer hearing them in order
# and each buffer's newest. Then fences across domains (protocol version
# 3): dom0 exports a vgem buffer to each guest and, each frame, attaches a
# vgem write fence before announcing it; the guest's sync_file, poll and
# CPU access wait for it until dom0 signals, and then see the frame. The
# guests' modules time out a fence in 2 s (fence_timeout_ms): a last
# fence dom0 never signals ends ETIMEDOUT in the PVH guest, long before
# vgem's own 10 s. Every counter ends at zero in every domain.
#
# hdm: description = dom0 shares both ways with a PV and a PVH guest at the same time
# hdm: domains = pv pvh
# hdm: attach = yes
# hdm: timeout = 240
# hdm: boot-timeout = 300
. /hdm/lib.sh

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    hdm_load_check
    modprobe vgem || hdm_fail "modprobe vgem failed"
    ;;
dom0/guests)
    hdm_watch /tmp/events
    hdm_wait_connected 2
    # Listening from the start: the PV guest's frames come last.
    hdmabuf-agent frames receive --domain "$(xl domid pv)" >/tmp/frames-pv.out 2>&1 &
    from_pv=$!
    hdm_export_each "$(xl domid pv)" 8M:51 &
    to_pv=$!
    hdm_export_each "$(xl domid pvh)" 8M:52 &
    to_pvh=$!
    for guest in pv:61 pvh:62; do
        id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"from-${guest%:*}\"")
        hdm_log "learnt of $id from ${guest%:*}"
        hdmabuf-agent kcheck "$id" --verify "${guest#*:}" ||
            hdm_fail "import from ${guest%:*} failed"
    done
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"c-example"' 180)
    hdmabuf import "$id" --verify 71 || hdm_fail "import of the C example's export failed"
    hdmabuf export --domain "$(xl domid pv)" --size 1M --seed 72 --priv to-c-example --once ||
        hdm_fail "export to the C example failed"
    wait $to_pv || hdm_fail "export to pv failed"
    wait $to_pvh || hdm_fail "export to pvh failed"
    for guest in pv:81 pvh:82; do
        hdmabuf-agent export-from vgem --domain "$(xl domid "${guest%:*}")" --size 4M \
            --seed "${guest#*:}" --rw --priv "vgem-to-${guest%:*}" --once \
            --expect-seed "$((${guest#*:} + 10))" >"/tmp/vgem-${guest%:*}.out" 2>&1 &
        echo $! >"/tmp/vgem-${guest%:*}.pid"
    done
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"vgem-from-pvh"')
    hdmabuf-agent kcheck "$id" --verify 84 || hdm_fail "import of pvh's vgem buffer failed"
    for guest in pv pvh; do
        wait "$(cat "/tmp/vgem-$guest.pid")" ||
            hdm_fail "vgem buffer to $guest: $(cat "/tmp/vgem-$guest.out")"
        grep -q "verified" "/tmp/vgem-$guest.out" || hdm_fail "no verification: $(cat "/tmp/vgem-$guest.out")"
    done
    hdm_log "vgem buffers shared both ways with pvh, to pv; dom0's written by the guests"
    # Frames announced faster than the importer takes them: the PV guest
    # to dom0, dom0 to the PVH guest, 2000 each.
    full=$(hdm_stat ring_full)
    hdmabuf-agent frames send --domain "$(xl domid pvh)" || hdm_fail "frames to pvh failed"
    wait $from_pv || hdm_fail "frames from pv: $(cat /tmp/frames-pv.out)"
    hdm_log "frames from pv: $(cat /tmp/frames-pv.out)"
    hdm_log "frames: the ring to a peer was full $(($(hdm_stat ring_full) - full)) times"
    # Fences: vgem's write fences on dom0's frames to each guest.
    for g in pv pvh; do
        last=
        [ $g = pvh ] && last=--timeout-round
        hdmabuf-agent fences send --domain "$(xl domid $g)" $last >"/tmp/fences-$g.out" 2>&1 &
        echo $! >"/tmp/fences-$g.pid"
    done
    for g in pv pvh; do
        wait "$(cat "/tmp/fences-$g.pid")" || hdm_fail "fences to $g: $(cat "/tmp/fences-$g.out")"
        hdm_log "fences to $g: $(cat "/tmp/fences-$g.out")"
    done
    hdm_wait_stat connections_live 0 120
    hdm_check_released
    rmmod vgem || hdm_fail "vgem does not unload: something holds one of its buffers"
    ;;
pv/main | pvh/main)
    hdm_load fence_timeout_ms=2000
    hdm_load_check
    modprobe vgem || hdm_fail "modprobe vgem failed"
    hdm_watch /tmp/events
    hdm_wait_connected
    case $HDM_DOMAIN in pv) mine=61 theirs=51 ;; *) mine=62 theirs=52 ;; esac
    hdmabuf export --domain 0 --size 8M --seed $mine --priv "from-$HDM_DOMAIN" --once ||
        hdm_fail "export failed"
    hdm_import_each /tmp/events 8M:$theirs
    if [ "$HDM_DOMAIN" = pv ]; then
        hdmabuf-example export 0 1048576 71 c-example || hdm_fail "C example: export failed"
        id=$(hdm_wait_event /tmp/events NewExport '"priv":"to-c-example"')
        hdmabuf-example import "$id" 72 || hdm_fail "C example: import failed"
    fi
    case $HDM_DOMAIN in pv) theirs=81 ;; *) theirs=82 ;; esac
    if [ "$HDM_DOMAIN" = pvh ]; then
        hdmabuf-agent export-from vgem --domain 0 --size 4M --seed 84 --priv vgem-from-pvh \
            --once || hdm_fail "export of a vgem buffer failed"
    fi
    id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"vgem-to-$HDM_DOMAIN\"")
    hdmabuf import "$id" --rw --verify $theirs --write $((theirs + 10)) ||
        hdm_fail "import of dom0's vgem buffer failed"
    if [ "$HDM_DOMAIN" = pv ]; then
        hdmabuf-agent frames send --domain 0 || hdm_fail "frames to dom0 failed"
    else
        hdmabuf-agent frames receive --domain 0 || hdm_fail "frames from dom0 failed"
    fi
    last=
    [ "$HDM_DOMAIN" = pvh ] && last=--timeout-round
    hdmabuf-agent fences receive --domain 0 $last || hdm_fail "fences from dom0 failed"
    timed_out=$(hdm_stat fences_timed_out)
    [ "$timed_out" = "$([ -n "$last" ] && echo 1 || echo 0)" ] ||
        hdm_fail "$timed_out fences timed out: $(hdm_stats)"
    hdm_check_released
    rmmod vgem || hdm_fail "vgem does not unload: something holds one of its buffers"
    ;;
esac
