#!/bin/sh
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
#    while its processes hold their fds; once they are killed the module
#    unloads, with dom0 still mapping the guest's pages (the grants go to
#    the kernel's grant layer, which keeps the pages until dom0 unmaps).
#    dom0's reader keeps seeing the right bytes throughout, and the
#    reloaded module reconnects. dom0 keeps that mapping until the
#    guest's new instance has announced its next buffer, which often has
#    the same number (numbering starts again): it must be accepted.
# C  The same with the roles swapped: dom0 unbinds its backend, unloads
#    and reloads, while the guest floods it and maps its buffer.
# At the end every gauge of both domains is zero and no request was
# refused.
#
# hdm: description = rmmod under traffic is refused; unbind, unload and reload with buffers mapped both ways under an export flood, in the guest and in dom0
# hdm: domains = pv
# hdm: attach = yes
# hdm: timeout = 420
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
    hdmabuf stress import --domain "$1" --timeout 300 >/tmp/a-import 2>&1 &
    local importer=$!
    hdmabuf stress export --domain "$1" --cycles 40 --seed "$2" --max-size 1M \
        --timeout 300 >/tmp/a-export 2>&1 &
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
        timeout 60 hdmabuf export --domain "$1" --size $(((i % 8 + 1) * 4))K --seed $i \
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

# watch_stuck K: in the background, if step K is not done in 60 s, log
# every process's kernel stack once (a run hung once in dom0's 4th cycle
# of C, before its unbind, with no line from either domain saying where).
# STUCK_PID holds the watcher's pid; both roles of a cycle run one.
watch_stuck() {
    (
        sleep 60
        hdm_log "$1: not done after 60 s: $(hdm_stats)"
        hdm_log "$1: rings: $(tr '\n' ' ' </sys/kernel/debug/hyper_dmabuf/rings 2>/dev/null)"
        hdm_log "$1: irqs: $(grep hyper_dmabuf /proc/interrupts | tr -s ' ')"
        hdm_log "$1: tasks in the kernel:"
        for t in /proc/[0-9]*; do
            [ -r "$t/stack" ] || continue
            hdm_log "$1: ${t#/proc/} $(cat "$t/comm" 2>/dev/null) $(cat "$t/wchan" 2>/dev/null)" \
                "$(tr '\n' ' ' <"$t/stack" 2>/dev/null)"
        done
    ) &
    STUCK_PID=$!
}

# unload_cycle K PEER UNBIND DEVICE: step K of B or C, in the domain that
# unloads: map buffers both ways, unbind DEVICE, unload, reload.
unload_cycle() {
    local k=$1 peer=$2 events=/tmp/events.$1 mine theirs watcher exporter reader deadline
    watch_stuck "$k"
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
    deadline=$(hdm_deadline 10)
    until rmmod hyper_dmabuf 2>/tmp/rmmod.err; do
        hdm_in_time $deadline || hdm_fail "$k: no unload once every user was gone: $(cat /tmp/rmmod.err)"
        sleep 0.1
    done
    ! loaded || hdm_fail "$k: rmmod succeeded but the module is still listed"
    hdm_log "$k: unloaded with the peer still mapping our buffer"
    hdm_load
    kill $STUCK_PID 2>/dev/null
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
# and on, until the peer's next instance has announced its next buffer.
# A reloaded module numbers its buffers from the start again, so that
# buffer often has the number of the one we still map (REUSED counts
# those); it must be accepted all the same (a run hung once when it was
# refused as a duplicate).
HELD_READER=
HELD_ID=
REUSED=0
serve_cycle() {
    local k=$1 peer=$2 events=$3 id exporter reader
    watch_stuck "$k"
    hdmabuf export --domain "$peer" --size $REREAD_SIZE --seed $((200 + k)) \
        --priv "serve-$k" --hold 600 >/tmp/s-export.$k 2>&1 &
    exporter=$!
    id=$(hdm_wait_event "$events" NewExport "\"priv\":\"unload-$k\"" 120)
    hdmabuf import "$id" --verify $((100 + k)) --hold 600 --reread >/tmp/s-import.$k 2>&1 &
    reader=$!
    release_held "$id"
    hdm_wait_count "$events" PeerDisconnected "$k" 180
    wait_back "$events" "$k"
    # The peer's module was gone meanwhile; its pages stayed ours to read.
    alive $reader || hdm_fail "$k: the reader of the unloaded peer's pages died: $(cat /tmp/s-import.$k)"
    kill $exporter
    wait $exporter 2>/dev/null
    HELD_READER=$reader HELD_ID=$id
    kill $STUCK_PID 2>/dev/null
    hdm_log "$k: read the peer's pages while its module was unloaded and reloaded: every byte matched"
}

# release_held [NEW_ID]: stop the reader kept from the last cycle (still
# reading, or it failed), noting whether NEW_ID has the same number.
release_held() {
    [ -n "$HELD_READER" ] || return 0
    alive $HELD_READER || hdm_fail "the reader of an ended session's buffer died: $(cat /tmp/s-import.*)"
    [ "${1%%-*}" != "${HELD_ID%%-*}" ] || REUSED=$((REUSED + 1))
    kill $HELD_READER
    wait $HELD_READER 2>/dev/null
    HELD_READER=
}

# serve_all EVENTS PEER PART: the serving side of part PART.
serve_all() {
    local k=1
    start_flood "$2"
    while [ $k -le $UNLOADS ]; do
        serve_cycle $k "$2" "$1"
        k=$((k + 1))
    done
    release_held
    stop_flood
    hdm_log "$3: $(cat /tmp/flood-stop.count) exports flooded per flooder while the peer unloaded;" \
        "$REUSED of its new buffers had the number of one we still mapped"
    [ "$REUSED" -gt 0 ] || hdm_fail "$3: no new buffer reused a number we still mapped; this no longer tests that"
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
