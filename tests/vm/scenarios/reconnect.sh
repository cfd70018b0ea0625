#!/bin/sh
# SPDX-License-Identifier: MIT
# Peer loss and recovery: the guest's frontend is unbound and bound again,
# then dom0's backend is; each time the other end goes through Closing and
# the device reconnects, and a buffer is shared over the new connection.
#
# hdm: description = frontend and backend unbind/bind: the device reconnects and shares again
# hdm: domains = pv
# hdm: attach = yes
# hdm: timeout = 240
# hdm: boot-timeout = 300
. /hdm/lib.sh

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    hdm_load_check
    ;;
dom0/guests)
    hdm_watch /tmp/events 600
    hdm_wait_connected
    pvid=$(xl domid pv)
    hdm_import_each /tmp/events 1M:41
    hdm_log "shared over the first connection"
    # The guest rebinds its frontend after that; we see it go and come back.
    hdm_wait_count /tmp/events PeerDisconnected 1
    hdm_wait_connected
    hdm_import_each /tmp/events 2M:42
    hdm_log "shared after the frontend came back"
    dev=hyper_dmabuf-$pvid-0
    echo -n "$dev" >/sys/bus/xen-backend/drivers/hyper_dmabuf/unbind || hdm_fail "unbind $dev"
    hdm_wait_stat connections_live 0
    echo -n "$dev" >/sys/bus/xen-backend/drivers/hyper_dmabuf/bind || hdm_fail "bind $dev"
    hdm_wait_connected
    hdm_import_each /tmp/events 3M:43
    hdm_log "shared after the backend came back"
    hdm_check_released
    ;;
pv/main)
    hdm_load
    hdm_watch /tmp/events 600
    hdm_wait_connected
    hdm_export_each 0 1M:41
    echo -n hyper_dmabuf-0 >/sys/bus/xen/drivers/hyper_dmabuf/unbind || hdm_fail "unbind"
    hdm_wait_stat connections_live 0
    echo -n hyper_dmabuf-0 >/sys/bus/xen/drivers/hyper_dmabuf/bind || hdm_fail "bind"
    hdm_wait_connected
    hdm_export_each 0 2M:42
    # dom0 now rebinds its backend: wait until we are connected again.
    hdm_wait_count /tmp/events PeerDisconnected 2
    hdm_wait_connected
    hdm_export_each 0 3M:43
    hdm_check_released
    ;;
esac
