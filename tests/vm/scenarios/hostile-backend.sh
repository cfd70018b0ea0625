#!/bin/sh
# SPDX-License-Identifier: MIT
# Issue 13, point 4: a hostile BACKEND against the driver's frontend.
#
# `victim` runs the real driver as the frontend of two devices: devid 0
# backed by dom0, devid 1 by `dd`, a driver domain running the real
# driver (the well-behaved peer). dom0 keeps its own hyper_dmabuf.ko
# loaded (it stays the backend of any other device, as in every other
# scenario) but unbinds the victim's devid 0 from its backend driver,
# which bound it when the toolstack created the device: from then on
# `hdmabuf-hostile backend attack`, a user-space process, plays that
# device's backend (xenstore nodes, the frontend's rings mapped through
# /dev/xen/gntdev, its port bound through /dev/xen/evtchn) and attacks
# the frontend one named case at a time: malformed, missing and changing
# backend nodes, state jumps, broken rings and answers, an event storm,
# old rings kept mapped, requests the frontend must refuse, bad page
# directories the victim imports, floods, and a hostile importer of the
# victim's own exports (maps grants before their announcement, lies in
# MAPPED, RELEASE and its answers, never releases, keeps mappings across
# an unexport, a failed export and the device's removal). The victim
# loads its driver only once the device is the attacker's (`backend
# await`), so the kernel backend never talked to it.
#
# In the victim, `hdmabuf-hostile backend referee` judges every case
# (tests/hostile/src/backend/referee.rs): the counters, exactly
# the expected lines about the device (printed, or counted suppressed by
# the peer's log budget), the exporter's gauges, nothing left behind; the
# attacker checks that no frontend node, grant or port of the victim is
# left that it could still reach. Meanwhile dd exports buffers of 64 KiB
# to 1 MiB to the victim one after the other (`hdmabuf export --once`),
# which imports each and verifies every byte (`hdmabuf import --verify`)
# and must lose none of its events about dd; dd's device must stay
# connected throughout, and no line may name it. (Not `hdmabuf-agent stress`:
# its revocations race the victim's imports by design, and the victim's
# lines about those, charged to dd, would be suppressed past dd's budget
# into the one counter, `log_lines_suppressed`, the referee reads for the
# lines about the attacker.)
#
# hdm: description = a hostile user-space backend in dom0 attacks a guest's frontend while a driver domain shares with it
# hdm: domains = dd:pv victim:pv
# hdm: hyper_dmabuf.victim = "backend=0, devid=0, rw=1", "backend=dd, devid=1, rw=1"
# hdm: xl.victim = memory=512
# hdm: timeout = 900
# hdm: boot-timeout = 240
. /hdm/lib.sh

# Buffers dd shares with the victim during the attack (about as long).
SHARES=225

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    victim=$(xl domid victim)
    dd=$(xl domid dd)
    echo "$victim $dd" >/tmp/ids
    dev=hyper_dmabuf-$victim-0
    # The backend driver binds the device as soon as it appears.
    deadline=$(hdm_deadline 60)
    until [ -e /sys/bus/xen-backend/devices/$dev/driver ]; do
        hdm_in_time $deadline || hdm_fail "dom0's backend never bound $dev"
        sleep 0.1
    done
    echo -n $dev >/sys/bus/xen-backend/drivers/hyper_dmabuf/unbind || hdm_fail "unbinding $dev"
    hdm_log "unbound $dev from dom0's backend driver"
    hdmabuf-hostile backend attack --domain "$victim" --devid 0 --bystander "$dd" --seed 13 ||
        hdm_fail "hostile backend cases failed"
    # dom0's own driver served nothing of it.
    hdm_check_clean
    ;;
dom0/final)
    read -r victim dd </tmp/ids
    hdm_no_nodes "$victim"
    hdm_no_nodes "$dd"
    ;;
victim/main)
    hdmabuf-hostile backend await --timeout "$(hdm_limit 300)" || hdm_fail "the hostile backend never took the device"
    hdm_load
    dd=$(hdm_domid dd)
    hdm_wait_connected 1 120
    hdm_watch /tmp/events 900
    (
        i=1
        while [ $i -le $SHARES ]; do
            id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"share-$i\"" 120)
            hdmabuf import "$id" --verify $i >/dev/null || hdm_fail "import $i from dd failed"
            i=$((i + 1))
        done
        hdm_log "imported and verified $SHARES buffers from dd"
    ) &
    importer=$!
    hdmabuf-hostile backend referee --peer 0 --devid 0 --good "$dd" --good-devid 1 --timeout "$(hdm_limit 860)" ||
        hdm_fail "the referee judged a case failed"
    hdm_log "attack over; dd has announced $(grep -c '"priv":"share-' /tmp/events) of its $SHARES buffers"
    wait $importer || hdm_fail "sharing with the driver domain failed under attack"
    kill "$HDM_WATCH_PID"
    wait "$HDM_WATCH_PID" 2>/dev/null || true
    ! grep '"peer":'"$dd"',' /tmp/events | grep -q '"lost":[1-9]' ||
        hdm_fail "the victim lost events about dd: $(grep '"lost":[1-9]' /tmp/events | head -n 3)"
    hdm_check_released 60
    hdm_log "counters: $(hdm_stats)"
    ;;
dd/main)
    hdm_load
    hdm_watch /tmp/events 900
    # The victim loads its driver once the attacker holds its devid 0.
    deadline=$(hdm_deadline 300)
    until grep -q '"event":"PeerConnected"' /tmp/events; do
        hdm_in_time $deadline || hdm_fail "the victim never connected"
        sleep 0.2
    done
    victim=$(grep '"event":"PeerConnected"' /tmp/events | head -n 1 | sed -n 's/.*"peer":\([0-9]*\).*/\1/p')
    hdm_log "the victim is domain $victim"
    i=1
    while [ $i -le $SHARES ]; do
        hdmabuf export --domain "$victim" --size $((64 * (i % 16 + 1)))K --seed $i \
            --priv share-$i --once >/tmp/export.out 2>&1 || {
            cat /tmp/export.out
            hdm_fail "sharing buffer $i with the victim failed while it was under attack"
        }
        i=$((i + 1))
    done
    hdm_log "exported $SHARES buffers to the victim, each imported, released, its grants ended"
    kill "$HDM_WATCH_PID"
    wait "$HDM_WATCH_PID" 2>/dev/null || true
    hdm_check_clean
    # Up, and its device connected, until the victim is done and gone.
    hdm_wait_stat connections_live 0 400
    ;;
esac
