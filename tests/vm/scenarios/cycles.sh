#!/bin/sh
# SPDX-License-Identifier: MIT
# 200 randomized export/import/unexport cycles in each direction at once:
# a PV guest exports to dom0 while dom0 exports to a second PV guest (sizes from
# 4 KiB to 2 MiB, read-only and read-write, imported then unexported,
# unexported before the import, exported again with new private data). The
# importer verifies every byte it maps. Then a short run of `make bench`'s
# scale experiment (hdmabuf-agent scale): both guests keep 10 and then one
# guest 1,000 one-page buffers exported to dom0 and dom0 as many to them,
# dom0 lists exactly those and imports, exports and unexports among them.
# Afterwards every counter of every domain is back at zero and no request
# was refused.
#
# Two PV guests, not a PVH one: under QEMU's emulated nested SVM a PVH
# guest that runs this long sometimes triple-faults in its timer interrupt
# (pvclock_clocksource_read), a platform fault the runner cannot always
# tell from a guest crash. PVH sharing is covered by share and sizes-pvh.
#
# hdm: description = 200 randomized cycles each way (PV guest to dom0, dom0 to another PV guest), a short scale run, counters back to zero
# hdm: domains = pv pv2:pv
# hdm: attach = yes
# hdm: timeout = 600
# hdm: boot-timeout = 300
. /hdm/lib.sh

CYCLES=200

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    hdm_wait_connected 2
    hdm_log "baseline: $(hdm_stats)"
    hdmabuf-agent stress import --domain "$(xl domid pv)" >/tmp/import.out 2>&1 &
    importer=$!
    hdmabuf-agent stress export --domain "$(xl domid pv2)" --cycles $CYCLES --seed 2 --max-size 2M ||
        hdm_fail "stress export to pv2 failed"
    wait $importer || { cat /tmp/import.out; hdm_fail "stress import from pv failed"; }
    cat /tmp/import.out
    hdmabuf-agent scale drive --guests "$(xl domid pv),$(xl domid pv2)" --live 10,1000 \
        --peers 1,2 --peers-live 10 --samples 20 || hdm_fail "scale drive failed"
    hdm_wait_stat connections_live 0 120
    hdm_check_clean
    ;;
pv/main)
    hdm_load
    hdm_wait_connected
    hdmabuf-agent stress export --domain 0 --cycles $CYCLES --seed 1 --max-size 2M ||
        hdm_fail "stress export failed"
    hdmabuf-agent scale serve --domain 0 || hdm_fail "scale serve failed"
    hdm_check_clean
    ;;
pv2/main)
    hdm_load
    hdm_wait_connected
    hdmabuf-agent stress import --domain 0 || hdm_fail "stress import failed"
    hdmabuf-agent scale serve --domain 0 || hdm_fail "scale serve failed"
    hdm_check_clean
    ;;
esac
