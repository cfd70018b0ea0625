#!/bin/sh
# A PV domU exports an 8 MiB buffer to dom0; dom0 learns of it from an
# event, imports it, verifies every byte and releases it; the domU then
# unexports it and both sides end with every counter back at zero.
#
# hdm: description = PV domU exports 8 MiB to dom0, which imports and verifies it
# hdm: domains = pv
# hdm: attach = yes
# hdm: timeout = 180
# hdm: boot-timeout = 300
. /hdm/lib.sh

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    hdm_watch /tmp/events
    hdm_wait_connected
    id=$(hdm_wait_event /tmp/events NewExport '"size":8388608')
    hdm_log "learnt of $id"
    hdmabuf import "$id" --verify 7 || hdm_fail "import of $id failed"
    hdm_wait_stat connections_live 0 60
    hdm_check_released
    hdm_log "share ok (dom0)"
    ;;
pv/main)
    hdm_load
    hdm_wait_connected
    hdmabuf export --domain 0 --size 8M --seed 7 --hold 15 || hdm_fail "export failed"
    hdm_check_released
    hdm_log "share ok ($HDM_DOMAIN)"
    ;;
esac
