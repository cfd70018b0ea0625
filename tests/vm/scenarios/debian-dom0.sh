#!/bin/sh
# SPDX-License-Identifier: MIT
# A Debian dom0 as a user has one (issue 17, point 3): Debian bookworm made
# from Debian's packages, xen-system-amd64 installed by apt, the platform
# kernel as Debian packages, hyper-dmabuf-dkms and hdmabuf installed with
# apt from a local repository, DKMS having built the module inside the
# image (platform/build-debian-dom0.sh). dom0 runs systemd; the driver
# here runs as hdm-scenario.service (platform/debian/).
#
# Boot 1:
#   1. The packages are installed, DKMS built hyper_dmabuf.ko for the
#      running kernel into updates/dkms, hdmabuf-xl.service is active, and
#      the module is not loaded: nothing asked for it yet.
#   2. guest is created by plain `xl create /etc/xen/auto/guest.cfg`, a
#      file with a `hyper_dmabuf` line: the daemon adopts it, udev loads
#      the module in dom0 by its xen-backend alias (nothing here loads
#      it), /dev/xen/hyper_dmabuf is the hdmabuf group's (the packaged
#      udev rule), and the guest shares 4 MiB with dom0, which verifies
#      every byte. The guest then powers off.
# Boot 2, from the same disk:
#   3. xendomains starts guest from /etc/xen/auto, with no step of ours;
#      the daemon adopts it, udev loads the module, and sharing works as
#      in 2.
#   4. Once the guest is gone, apt-get purge of both packages leaves no
#      hyper_dmabuf.ko under /lib/modules, no hdmabuf-xl unit, no node
#      under /tool/hyper_dmabuf and no hyper_dmabuf device directory; the
#      module unloads.
#
# hdm: description = Debian dom0: apt, DKMS, udev, systemd, plain xl create, a second boot, removal
# hdm: dom0 = debian
# hdm: dom0-boots = 2
# hdm: dom0-boot-timeout = 300
# hdm: domains = guest:pv
# hdm: auto.guest = yes
# hdm: hyper_dmabuf.guest = "backend=0, rw=1"
# hdm: timeout = 240
. /hdm/lib.sh

# The id of the first buffer domain $1 has announced to this one, once
# there is one.
announced_by() {
    local deadline=$(hdm_deadline ${2:-120}) id
    while :; do
        id=$(hdmabuf --json list 2>/dev/null | tr '{' '\n' |
            grep '"kind":"imported"' | grep "\"peer\":$1," | sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | head -n 1)
        [ -n "$id" ] && { echo "$id"; return 0; }
        hdm_in_time "$deadline" || hdm_fail "no buffer announced by domain $1: $(hdmabuf list 2>&1)"
        sleep 0.2
    done
}

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    release=$(uname -r)
    for p in hdmabuf hyper-dmabuf-dkms "linux-image-$release" "linux-lib-rust-$release" xen-system-amd64; do
        dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" ||
            hdm_fail "1: package $p is not installed"
    done
    dkms status hyper-dmabuf -k "$release" 2>/dev/null | grep ": installed" >/dev/null ||
        hdm_fail "1: DKMS has not installed the module for $release: $(dkms status 2>&1)"
    path=$(modinfo -n hyper_dmabuf) || hdm_fail "1: modinfo finds no hyper_dmabuf"
    case $path in
    */updates/dkms/hyper_dmabuf.ko*) ;;
    *) hdm_fail "1: hyper_dmabuf is $path, not DKMS's" ;;
    esac
    systemctl is-active --quiet hdmabuf-xl.service ||
        hdm_fail "1: hdmabuf-xl.service: $(systemctl status hdmabuf-xl.service 2>&1 | head -5)"
    # At the second boot, xendomains has started guest already.
    if [ "$HDM_BOOT" = 1 ]; then
        [ ! -d /sys/module/hyper_dmabuf ] || hdm_fail "1: the module is loaded before any device asked for it"
    fi
    hdm_log "1: boot $HDM_BOOT: packages installed, $path, hdmabuf-xl active"
    ;;
dom0/guests)
    guest=$(xl domid guest) || hdm_fail "no domain guest"
    echo "$guest" >/tmp/guest
    # 2 and 3: udev loads the module when the backend device appears.
    deadline=$(hdm_deadline 120)
    until [ -c /dev/xen/hyper_dmabuf ]; do
        hdm_in_time "$deadline" || hdm_fail "udev did not load hyper_dmabuf: $(journalctl -b -u hdmabuf-xl --no-pager | tail -5)"
        sleep 0.2
    done
    journalctl -b -u hdmabuf-xl --no-pager | grep -q "adopted domain guest .*/etc/xen/auto/guest.cfg" ||
        hdm_fail "the daemon did not adopt guest: $(journalctl -b -u hdmabuf-xl --no-pager | tail -5)"
    mode=$(stat -c '%G %a' /dev/xen/hyper_dmabuf)
    [ "$mode" = "hdmabuf 660" ] || hdm_fail "/dev/xen/hyper_dmabuf is '$mode', not the udev rule's 'hdmabuf 660'"
    hdm_wait_device "$guest" 0 Connected Connected 120
    id=$(announced_by "$guest")
    hdmabuf import "$id" --verify 81 || hdm_fail "import of the guest's buffer failed"
    hdm_log "boot $HDM_BOOT: the module loaded by udev ($(modinfo -n hyper_dmabuf)), guest $guest shared 4 MiB"
    ;;
dom0/final)
    guest=$(cat /tmp/guest)
    hdm_no_nodes "$guest" 90
    [ "$HDM_BOOT" = 2 ] || exit 0
    # 4
    t0=$(date +%s)
    apt-get purge -y -q hdmabuf hyper-dmabuf-dkms >/tmp/purge.log 2>&1 ||
        hdm_fail "4: apt-get purge failed: $(tail -5 /tmp/purge.log)"
    hdm_log "4: apt-get purge took $(($(date +%s) - t0)) s; triggers:" \
        "$(sed -n 's/^Processing triggers for \([^ ]*\).*/\1/p' /tmp/purge.log | tr '\n' ' ')"
    rmmod hyper_dmabuf || hdm_fail "4: the module does not unload"
    left=$(find /lib/modules -name 'hyper_dmabuf.ko*')
    [ -z "$left" ] || hdm_fail "4: modules left: $left"
    [ ! -e /lib/systemd/system/hdmabuf-xl.service ] &&
        [ ! -e /etc/systemd/system/multi-user.target.wants/hdmabuf-xl.service ] ||
        hdm_fail "4: the hdmabuf-xl unit is left"
    nodes=$(xenstore-ls -f 2>&1 | grep -E '^/tool/hyper_dmabuf|/hyper_dmabuf/' || true)
    [ -z "$nodes" ] || hdm_fail "4: xenstore nodes left: $nodes"
    hdm_log "4: purged: no module, unit or xenstore node left"
    ;;
guest/main)
    hdm_load
    hdm_wait_connected 1 120
    hdmabuf export --domain 0 --size 4M --seed 81 --priv debian --once ||
        hdm_fail "export to dom0 failed"
    ;;
esac
