#!/bin/sh
# SPDX-License-Identifier: MIT
# Smoke test of the platform: dom0, a PV domU and a PVH domU each load
# hyper_dmabuf.ko, which logs the domain's role and creates the control
# device, and unload it cleanly. On the debug kernel (`make test`), each
# domain also shows that the checks are on: lockdep still enabled (it
# turns itself off after its first report), and every slab cache poisoned,
# red-zoned, owner-tracked and consistency-checked (slub_debug=FZPU).
#
# Scenario format (see tests/vm/README.md): `# hdm: KEY = VALUE` header
# lines for the runner and dom0's init; the body runs in every domain with
# HDM_DOMAIN, HDM_TYPE, HDM_ROLE and HDM_PHASE set.
#
# hdm: description = the module loads, logs the domain role and unloads in dom0, PV and PVH; so do vivid, vkms and vgem
# hdm: domains = pv pvh
# hdm: timeout = 60
# hdm: boot-timeout = 300
# hdm: expect-log = dom0: hyper_dmabuf: role: dom0 PV
# hdm: expect-log = dom0: hyper_dmabuf: unloaded (dom0 PV)
# hdm: expect-log = pv: hyper_dmabuf: role: domU PV
# hdm: expect-log = pv: hyper_dmabuf: unloaded (domU PV)
# hdm: expect-log = pvh: hyper_dmabuf: role: domU PVH
# hdm: expect-log = pvh: hyper_dmabuf: unloaded (domU PVH)
. /hdm/lib.sh

[ "$HDM_PHASE" = main ] || exit 0

# By its module alias, as udev loads it when a hyper_dmabuf XenBus device
# appears.
modprobe xen:hyper_dmabuf || hdm_fail "modprobe xen:hyper_dmabuf failed"
grep -q '^hyper_dmabuf ' /proc/modules || hdm_fail "the alias did not load the module"
hdm_expect_dmesg "hyper_dmabuf: role: $HDM_ROLE"
[ -c /dev/xen/hyper_dmabuf ] || hdm_fail "no /dev/xen/hyper_dmabuf"
hdm_rmmod hyper_dmabuf
hdm_expect_dmesg "hyper_dmabuf: unloaded ($HDM_ROLE)"
# The per-peer import limit is root's to set (docs/driver.md).
hdm_insmod hyper_dmabuf max_imports=10000
[ "$(cat /sys/module/hyper_dmabuf/parameters/max_imports)" = 10000 ] ||
    hdm_fail "max_imports is $(cat /sys/module/hyper_dmabuf/parameters/max_imports 2>&1)"
hdm_rmmod hyper_dmabuf

# The kernel's own producers and consumers (issue 14) load in every
# domain and make their devices: vivid a camera and an output, vkms and
# vgem a DRM device each. The debug kernel's checks watch them as they
# watch us.
modprobe vivid n_devs=1 node_types=0x101 no_error_inj=1 || hdm_fail "modprobe vivid failed"
modprobe vkms || hdm_fail "modprobe vkms failed"
modprobe vgem || hdm_fail "modprobe vgem failed"
# Both register a bare platform device named after themselves.
for driver in vkms vgem; do
    grep -qx "platform:$driver" /sys/class/drm/card*/device/modalias 2>/dev/null ||
        hdm_fail "no DRM device of $driver: $(cat /sys/class/drm/card*/device/modalias 2>&1)"
done
grep -q vivid /sys/class/video4linux/video*/name || hdm_fail "no vivid video device"
[ "$(ls /dev/video* | wc -l)" -ge 2 ] || hdm_fail "vivid made $(ls /dev/video* 2>&1)"
for driver in vivid vkms vgem; do
    rmmod "$driver" || hdm_fail "$driver does not unload"
    ! grep -q "^$driver " /proc/modules || hdm_fail "$driver is still loaded"
done
hdm_log "vivid, vkms and vgem loaded and unloaded"

if [ "$(cat /hdm/kernel-flavour)" = debug ]; then
    grep -q '^ *debug_locks: *1$' /proc/lockdep_stats ||
        hdm_fail "lockdep is off: $(grep debug_locks /proc/lockdep_stats)"
    for cache in /sys/kernel/slab/kmalloc-64 /sys/kernel/slab/kmalloc-4k; do
        for check in sanity_checks red_zone poison store_user; do
            [ "$(cat "$cache/$check")" = 1 ] || hdm_fail "$cache/$check is not on"
        done
    done
    hdm_log "debug kernel: lockdep on, slab caches poisoned and red-zoned"
fi
hdm_log "smoke ok"
