#!/bin/sh
# Smoke test of the platform: dom0, a PV domU and a PVH domU each load both
# modules, which detect and log the domain's role, and unload them cleanly.
#
# Scenario format (see tests/vm/README.md): `# hdm: KEY = VALUE` header
# lines for the runner and dom0's init; the body runs in every domain with
# HDM_DOMAIN, HDM_TYPE, HDM_ROLE and HDM_PHASE set.
#
# hdm: description = modules load, log the domain role and unload in dom0, PV and PVH
# hdm: domains = pv pvh
# hdm: timeout = 60
# hdm: boot-timeout = 300
# hdm: expect-log = dom0: hyper_dmabuf_back: role: dom0 PV
# hdm: expect-log = dom0: hyper_dmabuf_front: frontend unloaded (dom0 PV)
# hdm: expect-log = pv: hyper_dmabuf_front: role: domU PV
# hdm: expect-log = pv: hyper_dmabuf_back: backend unloaded (domU PV)
# hdm: expect-log = pvh: hyper_dmabuf_front: role: domU PVH
# hdm: expect-log = pvh: hyper_dmabuf_back: backend unloaded (domU PVH)
. /hdm/lib.sh

[ "$HDM_PHASE" = main ] || exit 0

# The backend by file, the frontend by its module alias, as udev loads it
# when a hyper_dmabuf XenBus device appears.
hdm_insmod hyper_dmabuf_back
modprobe xen:hyper_dmabuf || hdm_fail "modprobe xen:hyper_dmabuf failed"
grep -q '^hyper_dmabuf_front ' /proc/modules || hdm_fail "the alias did not load the frontend"
for m in hyper_dmabuf_back hyper_dmabuf_front; do
    hdm_expect_dmesg "$m: role: $HDM_ROLE"
    hdm_expect_dmesg "$m: protocol core: XEN_PAGE_SIZE 4096"
done
hdm_rmmod hyper_dmabuf_front
hdm_rmmod hyper_dmabuf_back
hdm_expect_dmesg "hyper_dmabuf_front: frontend unloaded ($HDM_ROLE)"
hdm_expect_dmesg "hyper_dmabuf_back: backend unloaded ($HDM_ROLE)"
hdm_log "smoke ok"
