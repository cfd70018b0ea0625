#!/bin/sh
# SPDX-License-Identifier: MIT
# Buffer sizes with a PV domU, the other direction: dom0 exports 4 KiB,
# 8 MiB and 1 GiB (the default max_buffer_mib) to it, and it verifies every
# byte of each through its PV grant mappings; it exports 4 KiB and 8 MiB to
# dom0, which verifies them. Counters end at zero.
#
# hdm: description = dom0 and a PV domU share 4 KiB, 8 MiB and 1 GiB buffers both ways
# hdm: domains = pv
# hdm: xl.pv = memory=1536
# hdm: attach = yes
# hdm: timeout = 600
# hdm: boot-timeout = 300
. /hdm/lib.sh

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    hdm_load_check
    ;;
dom0/guests)
    hdm_watch /tmp/events 900
    hdm_wait_connected
    hdm_export_each "$(xl domid pv)" 4K:21 8M:22 1G:23 &
    exporter=$!
    hdm_import_each /tmp/events 4K:1 8M:2
    wait $exporter || hdm_fail "dom0's exports failed"
    hdm_check_released 120
    ;;
pv/main)
    hdm_load
    hdm_load_check
    hdm_watch /tmp/events 900
    hdm_wait_connected
    hdm_export_each 0 4K:1 8M:2 &
    exporter=$!
    hdm_import_each /tmp/events 4K:21 8M:22 1G:23
    wait $exporter || hdm_fail "the guest's exports failed"
    hdm_check_released 120
    ;;
esac
