#!/bin/sh
# SPDX-License-Identifier: MIT
# `make bench`: hyper_dmabuf against gntdev-dmabuf (with a user-space
# transport), the grant-map floor and a copy, from dom0 to a PVH guest
# (gntdev-dmabuf maps grants into a dma-buf only in PVH/HVM). dom0 runs
# `hdmabuf-agent bench export`, which drives and prints a `bench| {json}` line
# per figure; the guest runs `hdmabuf-agent bench import`. The host turns the
# lines into a table, target/bench/results.json and a plot. Last, fences
# across domains: vgem's write fences on dom0's frames, the time from the
# signal in dom0 to the guest's reader awake and its answer, against an
# UPDATE and its answer (`hdmabuf-agent fences`).
#
# hdm: description = make bench: ours vs gntdev-dmabuf, grant-map floor and copy, dom0 to PVH
# hdm: domains = pvh
# hdm: xl.pvh = memory=1024
# hdm: attach = yes
# hdm: timeout = 900
# hdm: boot-timeout = 300
. /hdm/lib.sh

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    # gntalloc grants at most 1024 pages by default: the floor grants as
    # many pages as the largest buffer, the link 259.
    echo 262144 >/sys/module/xen_gntalloc/parameters/limit
    modprobe vgem || hdm_fail "modprobe vgem failed"
    ;;
dom0/guests)
    hdm_wait_connected
    hdmabuf-agent bench export --domain "$(xl domid pvh)" || hdm_fail "bench export failed"
    hdmabuf-agent fences send --domain "$(xl domid pvh)" --rounds 100 --size 4096 --bench ||
        hdm_fail "fences failed"
    hdm_check_released 60
    ;;
pvh/main)
    hdm_load
    hdm_wait_connected
    hdmabuf-agent bench import --domain 0 || hdm_fail "bench import failed"
    hdmabuf-agent fences receive --domain 0 --rounds 100 || hdm_fail "fences failed"
    hdm_check_released 60
    ;;
esac
