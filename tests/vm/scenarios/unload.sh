#!/bin/sh
# SPDX-License-Identifier: MIT
# Unloading the module while buffers are live and traffic runs.
#
# A  While randomized stress cycles run both ways between dom0 and the
#    guest, each domain tries to unload the module again and again. Every
#    attempt is refused (bound devices, open files and imported dma-bufs
#    each hold a module reference: "in use"), and every byte of the
#    traffic still verifies.
# B  The guest, UNLOADS times: it exports a buffer that dom0 maps and keeps
#    re-reading, maps and re-reads one of dom0's, and then, while dom0
#    floods it with exports, unbinds its frontend. rmmod stays refused
#    while its processes hold their fds, and still after they are gone,
#    as long as dom0 maps the guest's pages: an export keeps its dma-buf
#    pinned, and the module, until every grant of it has ended
#    (`grants_draining`, `dmabufs_pinned`). dom0's reader keeps seeing the
#    right bytes after the guest went away; once dom0 lets go the grants
#    end, the module unloads, and the reloaded module reconnects.
# C  The same with the roles swapped: dom0 unbinds its backend, unloads
#    and reloads, while the guest floods it and maps its buffer.
# (A peer whose module was reloaded numbers its buffers from 1 again; an
# import of its previous session that we still map must not refuse them.
# Our own driver can no longer unload while its buffers are mapped, so
# the hostile scenario's `renumber` case plays such a peer.)
# At the end every gauge of both domains is zero and no request was
# refused.
#
# hdm: description = rmmod under traffic is refused; unbind, unload and reload with buffers mapped both ways under an export flood, in the guest and in dom0
# hdm: domains = pv
# hdm: attach = yes
# hdm: timeout = 600
# hdm: boot-timeout = 300
. /hdm/lib.sh

UNLOADS=4
REREAD_SIZE=256K
REREAD_PAGES=64

# alive PID...: whether any of these processes still runs.
alive() {
    local p
    for p; do kill -0 "$p" 2>/dev/null && return 0; done
    return 1
}

# loaded: whether the module is in the kernel.
loaded() { grep -q '^hyper_dmabuf ' /proc/modules; }

# refuse_unload_while PID...: try to unload the module until these
# processes have exited; every attempt must be refused.
refuse_unload_while() {
    local n=0
    while alive "$@"; do
        rmmod hyper_dmabuf 2>/tmp/rmmod.err && hdm_fail "A: the module unloaded under traffic"
        [ $n -gt 0 ] || hdm_log "A: unload refused under traffic: $(cat /tmp/rmmod.err)" \
            "(module use count $(awk '$1 == "hyper_dmabuf" { print $3 }' /proc/modules))"
        n=$((n + 1))
        sleep 0.05
    done
    [ $n -gt 0 ] || hdm_fail "A: the traffic ended before an unload was tried"
    hdm_log "A: all $n unloads tried under traffic were refused"
}

# stress_both_ways PEER: stress cycles to and from PEER (the peer runs the
# same), while refusing unloads.
stress_both_ways() {
    hdmabuf-agent stress import --domain "$1" --timeout "$(hdm_limit 300)" >/tmp/a-import 2>&1 &
    local importer=$!
    hdmabuf-agent stress export --domain "$1" --cycles 40 --seed "$2" --max-size 1M \
        --timeout "$(hdm_limit 300)" >/tmp/a-export 2>&1 &
    local exporter=$!
    refuse_unload_while $importer $exporter
    wait $importer || { cat /tmp/a-import; hdm_fail "A: stress import failed"; }
    wait $exporter || { cat /tmp/a-export; hdm_fail "A: stress export failed"; }
    hdm_log "A: $(tail -n 1 /tmp/a-import)"
}

# flood PEER STOPFILE: export small buffers to PEER and revoke them at
# once, one after the other, until STOPFILE exists. Exports to a peer that
# is away fail, and that is expected; none may hang.
flood() {
    local i=0
    while [ ! -e "$2" ]; do
        i=$((i + 1))
        timeout "$(hdm_limit 60)" hdmabuf export --domain "$1" --size $(((i % 8 + 1) * 4))K --seed $i \
            --priv flood --hold 0 >/dev/null 2>&1
        # busybox timeout: the status of the child it terminated.
        [ $? != 143 ] || hdm_fail "a flood export to domain $1 hung"
    done
    echo $i >"$2.count"
}

# start_flood PEER: three flooders (FLOODERS holds their pids).
start_flood() {
    rm -f /tmp/flood-stop /tmp/flood-stop.count
    FLOODERS=
    local j
    for j in 1 2 3; do
        flood "$1" /tmp/flood-stop &
        FLOODERS="$FLOODERS $!"
    done
}

stop_flood() {
    touch /tmp/flood-stop
    local p
    for p in $FLOODERS; do wait "$p" || hdm_fail "a flooder failed"; done
}

# unload_cycle K PEER UNBIND DEVICE: step K of B or C, in the domain that
# unloads: map buffers both ways, unbind DEVICE, unload once the peer has
# let go of our buffer, reload.
unload_cycle() {
    local k=$1 peer=$2 events=/tmp/events.$1 mine theirs watcher exporter reader deadline
    hdm_watch_stuck "$k" 60
    hdm_watch "$events" 300
    watcher=$HDM_WATCH_PID
    # The watcher's open, then the export's: in this order, each reloaded
    # module gives the export the same number (see serve_cycle).
    hdm_wait_event "$events" PeerConnected "" 60 >/dev/null
    hdmabuf export --domain "$peer" --size $REREAD_SIZE --seed $((100 + k)) \
        --priv "unload-$k" --hold 600 >/tmp/u-export.$k 2>&1 &
    exporter=$!
    mine=$(hdm_export_id /tmp/u-export.$k)
    theirs=$(hdm_wait_event "$events" NewExport "\"priv\":\"serve-$k\"" 120)
    hdmabuf import "$theirs" --verify $((200 + k)) --hold 600 --reread >/tmp/u-import.$k 2>&1 &
    reader=$!
    hdm_wait_event "$events" Mapped "$mine" 120 >/dev/null
    hdm_wait_stat pages_mapped $REREAD_PAGES 60
    echo -n "$4" >"$3" || hdm_fail "$k: unbind $4"
    hdm_wait_stat connections_live 0 60
    rmmod hyper_dmabuf 2>/tmp/rmmod.err &&
        hdm_fail "$k: the module unloaded while processes held its buffers"
    alive $reader || hdm_fail "$k: our reader died when we unbound: $(cat /tmp/u-import.$k)"
    kill $watcher $exporter $reader
    wait $watcher $exporter $reader 2>/dev/null
    # Our processes are gone, but the peer still maps our buffer (it holds
    # it for a while after seeing us go): its grants drain, the dma-buf
    # stays pinned, and so does the module.
    [ "$(hdm_stat dmabufs_pinned)" -gt 0 ] && [ "$(hdm_stat grants_draining)" -gt 0 ] ||
        hdm_fail "$k: nothing pinned while the peer maps our buffer: $(hdm_stats)"
    rmmod hyper_dmabuf 2>/tmp/rmmod.err &&
        hdm_fail "$k: the module unloaded while the peer mapped its buffer"
    hdm_log "$k: unload refused while the peer maps our buffer: $(cat /tmp/rmmod.err)"
    deadline=$(hdm_deadline 60)
    until rmmod hyper_dmabuf 2>/tmp/rmmod.err; do
        hdm_in_time $deadline || hdm_fail "$k: no unload once the peer let go: $(cat /tmp/rmmod.err) ($(hdm_stats))"
        sleep 0.1
    done
    ! loaded || hdm_fail "$k: rmmod succeeded but the module is still listed"
    hdm_log "$k: unloaded once the peer let go of our buffer"
    hdm_load
    kill $HDM_STUCK_PID 2>/dev/null
    hdm_wait_connected 1 120
}

# wait_back EVENTS K: until EVENTS has a PeerConnected after its K-th
# PeerDisconnected (a reader opened while the peer connects may be told
# twice, so counting PeerConnected alone could run ahead).
wait_back() {
    local deadline=$(hdm_deadline 180)
    until awk -v k="$2" '/"event":"PeerDisconnected"/ { d++ }
            /"event":"PeerConnected"/ && d >= k { back = 1 }
            END { exit !back }' "$1"; do
        hdm_in_time $deadline || hdm_fail "$2: the peer did not come back within 180 s"
        sleep 0.1
    done
}

# serve_cycle K PEER EVENTS: step K of B or C, in the peer of the domain
# that unloads: map its buffer and keep re-reading it while it goes away,
# and for HOLD_AFTER seconds more (it cannot unload meanwhile), then let
# go and wait for its next instance.
HOLD_AFTER=10
serve_cycle() {
    local k=$1 peer=$2 events=$3 id exporter reader
    hdm_watch_stuck "$k" 60
    hdmabuf export --domain "$peer" --size $REREAD_SIZE --seed $((200 + k)) \
        --priv "serve-$k" --hold 600 >/tmp/s-export.$k 2>&1 &
    exporter=$!
    id=$(hdm_wait_event "$events" NewExport "\"priv\":\"unload-$k\"" 120)
    hdmabuf import "$id" --verify $((100 + k)) --hold 600 --reread >/tmp/s-import.$k 2>&1 &
    reader=$!
    hdm_wait_count "$events" PeerDisconnected "$k" 180
    sleep $HOLD_AFTER
    # The peer is gone; its pages stayed ours to read, every byte right.
    alive $reader || hdm_fail "$k: the reader of the departed peer's pages died: $(cat /tmp/s-import.$k)"
    kill $reader
    wait $reader 2>/dev/null
    wait_back "$events" "$k"
    kill $exporter
    wait $exporter 2>/dev/null
    kill $HDM_STUCK_PID 2>/dev/null
    hdm_log "$k: read the departed peer's pages until we let go, which let it unload: every byte matched"
}

# serve_all EVENTS PEER PART: the serving side of part PART.
serve_all() {
    local k=1
    start_flood "$2"
    while [ $k -le $UNLOADS ]; do
        serve_cycle $k "$2" "$1"
        k=$((k + 1))
    done
    stop_flood
    hdm_log "$3: $(cat /tmp/flood-stop.count) exports flooded per flooder while the peer unloaded"
}

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    pv=$(xl domid pv)
    hdm_watch /tmp/events 1200
    hdm_wait_connected
    stress_both_ways "$pv" 21

    # B: we serve, the guest unloads.
    serve_all /tmp/events "$pv" B

    # C: we unload, the guest serves.
    kill "$HDM_WATCH_PID"
    wait "$HDM_WATCH_PID" 2>/dev/null
    k=1
    while [ $k -le $UNLOADS ]; do
        unload_cycle $k "$pv" /sys/bus/xen-backend/drivers/hyper_dmabuf/unbind "hyper_dmabuf-$pv-0"
        k=$((k + 1))
    done
    hdm_check_clean
    ;;
pv/main)
    hdm_load
    hdm_watch /tmp/events 300
    hdm_wait_connected
    stress_both_ways 0 22
    kill "$HDM_WATCH_PID"
    wait "$HDM_WATCH_PID" 2>/dev/null

    # B: we unload, dom0 serves.
    k=1
    while [ $k -le $UNLOADS ]; do
        unload_cycle $k 0 /sys/bus/xen/drivers/hyper_dmabuf/unbind hyper_dmabuf-0
        k=$((k + 1))
    done

    # C: we serve, dom0 unloads.
    hdm_watch /tmp/events.C 600
    hdm_wait_connected
    serve_all /tmp/events.C 0 C
    hdm_check_clean
    ;;
esac
