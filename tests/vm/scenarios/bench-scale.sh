#!/bin/sh
# SPDX-License-Identifier: MIT
# `make bench`, scale: what one more buffer costs as the buffers and the
# guests sharing with dom0 grow. Eight PV guests; `hdmabuf-agent scale`
# (tests/agents/src/scale.rs) has 1 guest keep 10, 100, 1,000 and 10,000
# one-page buffers exported to dom0 (dom0 as many to it), and 1, 2, 4
# and 8 guests 100 each, and at each point dom0 times importing a
# guest's buffer and exporting and unexporting one more, and reads the
# kernel's slab bytes per buffer. Every domain admits 16,384 imports
# per peer (the module parameter max_imports; 4,096 by default).
#
# First, the slab bytes per peer: dom0 unbinds the backend of every guest
# and binds it again, reading /proc/slabinfo (active objects times their
# size) with none connected and with all eight again; the guests wait
# for that before they serve.
#
# hdm: description = make bench: cost per buffer as buffers (10 to 10,000) and guests (1 to 8) grow
# hdm: domains = g1:pv g2:pv g3:pv g4:pv g5:pv g6:pv g7:pv g8:pv
# hdm: attach = yes
# hdm: timeout = 1800
# hdm: boot-timeout = 600
. /hdm/lib.sh

GUESTS="g1 g2 g3 g4 g5 g6 g7 g8"

# Bytes in the active objects of every slab cache.
slab_bytes() { awk 'NR > 2 { s += $2 * $4 } END { print s }' /proc/slabinfo; }

# rebind unbind|bind: every guest's backend device.
rebind() {
    for g in $GUESTS; do
        dev=hyper_dmabuf-$(xl domid "$g")-0
        echo -n "$dev" >"/sys/bus/xen-backend/drivers/hyper_dmabuf/$1" || hdm_fail "$1 $dev"
    done
}

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load max_imports=16384
    ;;
dom0/guests)
    hdm_wait_connected 8 600
    rebind unbind
    hdm_wait_stat connections_live 0 120
    none=$(slab_bytes)
    rebind bind
    hdm_wait_connected 8 600
    all=$(slab_bytes)
    echo "bench| {\"metric\":\"scale_peer\",\"peers\":8,\"slab_per_peer\":$(((all - none) / 8))}"
    ids=$(for g in $GUESTS; do printf "%s," "$(xl domid "$g")"; done)
    hdmabuf-agent scale drive --guests "${ids%,}" || hdm_fail "scale drive failed"
    hdm_check_released 120
    ;;
*/main)
    hdm_load max_imports=16384
    hdm_watch /tmp/events 1800
    hdm_wait_connected 1 600
    # dom0 rebinds our backend first.
    hdm_wait_count /tmp/events PeerDisconnected 1 600
    hdm_wait_connected 1 600
    hdmabuf-agent scale serve --domain 0 || hdm_fail "scale serve failed"
    hdm_check_released 120
    ;;
esac
