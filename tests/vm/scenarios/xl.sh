#!/bin/sh
# SPDX-License-Identifier: MIT
# `hdmabuf xl` as the toolstack's part for hyper_dmabuf devices. dom0
# creates both guests with `hdmabuf xl create` from config files with
# `hyper_dmabuf = [...]` entries (platform/images/dom0-init):
#   dd     a driver domain: a PV guest that runs the backend role;
#   guest  two devices, devid 0 backed by dom0 and devid 1 by dd (by name).
#
#   1. Both of guest's devices reach Connected at both ends.
#   2. guest shares an 8 MiB buffer with dd, which verifies every byte: two
#      domUs share pages with dom0 nowhere in the data path.
#   3. dom0 detaches devid 0 (naming the guest): both ends close, the nodes
#      go, and neither dom0 nor the guest holds a grant or mapping of it.
#   4. (final phase) rb, created from a config with on_reboot = "restart", holds a bound
#      device (unloading the module is refused), then reboots: xl gives it
#      a new domid and `hdmabuf xl daemon` gives it its device again,
#      which connects; no node of the old domid is left.
#   5. xl destroy of rb, and the guests' own power-off: the daemon removes
#      every node they leave (libxl leaves ours behind). rb's config lives
#      in /etc/xen, where the daemon adopts from: `hdmabuf xl create`'s
#      marker keeps it from attaching rb's device a second time.
#   6. ad, created by plain `xl create` from /etc/xen/auto (as xendomains
#      does at boot): the daemon adopts it from that file and gives it its
#      device, which connects; ad shares 1 MiB with dom0, which verifies
#      it; xl destroy, and no node is left.
#
# hdm: description = hdmabuf xl: devices from config entries, a driver domain, detach, reboot, destroy
# hdm: domains = dd:pv guest:pv
# hdm: hyper_dmabuf.guest = "backend=0, devid=0, rw=1", "backend=dd, devid=1"
# hdm: timeout = 360
# hdm: boot-timeout = 300
. /hdm/lib.sh

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    guest=$(xl domid guest)
    dd=$(xl domid dd)
    echo "$guest $dd" >/tmp/ids
    hdm_watch /tmp/events
    # 1
    hdm_wait_device "$guest" 0 Connected Connected 120
    hdm_wait_device "$guest" 1 Connected Connected 120
    hdmabuf xl list

    # 2 happens between the guests; the guest tells us when it is done.
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"xl-done"' 240)
    hdmabuf import "$id" --verify 72 || hdm_fail "import of the guest's signal failed"

    # 3
    hdmabuf xl detach guest --devid 0 || hdm_fail "detaching device 0 of guest failed"
    hdmabuf xl list "$guest" | awk '$2 == 0 { exit 1 }' ||
        hdm_fail "device 0 of guest is still listed: $(hdmabuf xl list "$guest")"
    hdm_wait_stat connections_live 0
    hdm_check_released
    hdm_log "3: device 0 detached; dom0 holds nothing of it"
    kill "$HDM_WATCH_PID"
    wait "$HDM_WATCH_PID" 2>/dev/null || true
    ;;
dom0/final)
    # The guests are gone (they powered off after their main phase): the
    # daemon removed what they left.
    read -r guest dd </tmp/ids
    hdm_no_nodes "$guest"
    hdm_no_nodes "$dd"
    hdmabuf xl list | grep -q "^no hyper_dmabuf devices" ||
        hdm_fail "devices left: $(hdmabuf xl list)"

    # 4
    {
        cat /etc/xen/pv.cfg
        echo 'name = "rb"'
        echo "extra = \"console=hvc0 hdm.scenario=xl.sh hdm.domain=rb hdm.type=pv hdm.time_scale=$HDM_TIME_SCALE\""
        echo 'on_reboot = "restart"'
        echo 'hyper_dmabuf = [ "backend=0" ]'
    } >/etc/xen/rb.cfg
    # rb is not one of the runner's domains: its console comes here.
    log=/var/log/xen/console/guest-rb.log
    : >"$log"
    tail -F -n +1 "$log" 2>/dev/null | while IFS= read -r line; do echo "[rb] $line"; done &
    hdmabuf xl create /etc/xen/rb.cfg || hdm_fail "hdmabuf xl create of rb failed"
    rb1=$(xl domid rb)
    hdm_wait_device "$rb1" 0 Connected Connected 120
    if rmmod hyper_dmabuf 2>/tmp/rmmod; then
        hdm_fail "4: the module unloaded while a device was bound"
    fi
    hdm_log "4: unload refused while bound: $(cat /tmp/rmmod)"
    xl reboot rb || hdm_fail "xl reboot rb failed"
    deadline=$(hdm_deadline 120)
    until rb2=$(xl domid rb 2>/dev/null) && [ "$rb2" != "$rb1" ]; do
        hdm_in_time $deadline || hdm_fail "4: rb did not come back under a new domid"
        sleep 0.1
    done
    hdm_log "4: rb rebooted: domain $rb1 is now $rb2"
    hdm_wait_device "$rb2" 0 Connected Connected 120
    hdm_no_nodes "$rb1"

    # 5
    xl destroy rb || hdm_fail "xl destroy rb failed"
    hdm_no_nodes "$rb2"
    hdm_wait_stat connections_live 0
    hdm_check_released
    grep -q "adopted domain rb" /var/log/hdmabuf-xl-daemon.log &&
        hdm_fail "5: the daemon adopted rb, which hdmabuf xl create was creating"

    # 6
    mkdir -p /etc/xen/auto
    {
        cat /etc/xen/pv.cfg
        echo 'name = "ad"'
        echo "extra = \"console=hvc0 hdm.scenario=xl.sh hdm.domain=ad hdm.type=pv hdm.time_scale=$HDM_TIME_SCALE\""
        echo 'hyper_dmabuf = [ "backend=0, devid=3" ]'
    } >/etc/xen/auto/ad.cfg
    log=/var/log/xen/console/guest-ad.log
    : >"$log"
    tail -F -n +1 "$log" 2>/dev/null | while IFS= read -r line; do echo "[ad] $line"; done &
    hdm_watch /tmp/events-ad
    xl create /etc/xen/auto/ad.cfg || hdm_fail "6: xl create of ad failed"
    ad=$(xl domid ad)
    hdm_wait_device "$ad" 3 Connected Connected 120
    grep "adopted domain ad " /var/log/hdmabuf-xl-daemon.log | grep -q "/etc/xen/auto/ad.cfg" ||
        hdm_fail "6: the daemon did not say it adopted ad from /etc/xen/auto/ad.cfg"
    # What xl kept of ad's configuration (docs/xl.md, "Plain xl create").
    for f in /var/lib/xen/userdata-d."$ad".*; do
        grep -q hyper_dmabuf "$f" && kept=" (it has hyper_dmabuf)" || kept=" (no hyper_dmabuf)"
        hdm_log "6: xl's userdata: ${f##*/}$kept"
    done
    id=$(hdm_wait_event /tmp/events-ad NewExport '"priv":"adopted"' 120)
    hdmabuf import "$id" --verify 73 || hdm_fail "6: import of ad's buffer failed"
    hdm_log "6: ad, from plain xl create, shared 1 MiB with dom0"
    xl destroy ad || hdm_fail "xl destroy ad failed"
    hdm_no_nodes "$ad"
    hdm_wait_stat connections_live 0
    hdm_check_released
    sed 's/^/xl daemon: /' /var/log/hdmabuf-xl-daemon.log
    ;;
dd/main)
    hdm_load
    hdm_load_check
    hdm_watch /tmp/events
    # The backend of guest's device 1.
    hdm_wait_connected 1 120
    hdm_import_each /tmp/events 8M:71
    # guest powers off; the daemon removes our backend directory of it.
    hdm_wait_stat connections_live 0 120
    hdm_check_released
    ;;
guest/main)
    hdm_load
    hdm_watch /tmp/events
    hdm_wait_connected 2 120
    dd=$(hdm_domid dd)
    hdmabuf export --domain "$dd" --size 8M --seed 71 --priv size-8M --once ||
        hdm_fail "export to the driver domain $dd failed"
    hdm_log "2: shared 8 MiB with the driver domain $dd"
    hdmabuf export --domain 0 --size 4K --seed 72 --priv xl-done --once ||
        hdm_fail "export of the signal to dom0 failed"
    # dom0 detaches our device 0.
    hdm_wait_stat connections_live 1 120
    hdm_check_released
    hdm_log "3: device 0 is gone; nothing of it is held here"
    ;;
rb/main)
    # Up until dom0 reboots or destroys this domain.
    hdm_load
    while :; do sleep 3600; done
    ;;
ad/main)
    hdm_load
    hdm_wait_connected 1 120
    hdmabuf export --domain 0 --size 1M --seed 73 --priv adopted --once ||
        hdm_fail "6: export to dom0 failed"
    while :; do sleep 3600; done
    ;;
esac
