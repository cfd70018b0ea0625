#!/bin/sh
# SPDX-License-Identifier: MIT
# Real producers and consumers (issue 14): the kernel's virtual camera
# and display (vivid) and GEM driver (vgem), with dom0 and a PV and a PVH
# guest, each of which loads vivid with an instance per allocator
# (0: vmalloc, 1: dma-contig).
#
#   1. dom0 exports dma-bufs the driver must refuse (device memory, a
#      partial page, an offset, a segment in part of a page: the test
#      module makes them); each export fails with EINVAL and the kernel
#      log says why.
#   2. Each guest captures a frame into a buffer of each of its vivid
#      instances and exports it (VIDIOC_EXPBUF) to dom0, which checks
#      every byte in user space and as a kernel importer.
#   3. dom0 does the same towards each guest, which checks every byte.
#   4. Each guest imports a buffer of dom0's and exports it on, which
#      the driver refuses: the pages are dom0's, only dom0 can grant them.
#      Then dom0 exports a vgem buffer (PRIME) to each guest, whose vivid
#      output takes it as a frame (V4L2_MEMORY_DMABUF: vb2 vmaps the
#      imported dma-buf) and gives it back shown.
#   5. dom0 exports a vgem buffer read-write to each guest, whose vivid
#      captures a frame into it. The guest prints the digest of what it
#      sees and sends it back in the private data of an export; dom0
#      finds the same digest in its own pages, which vivid's frame
#      replaced.
#
# vivid and vgem unload at the end in every domain (nothing still holds
# one of their buffers) and every counter is back to zero.
#
# hdm: description = vivid's and vgem's buffers shared both ways; vivid shows and captures into imported ones
# hdm: domains = pv pvh
# hdm: attach = yes
# hdm: timeout = 300
# hdm: boot-timeout = 300
. /hdm/lib.sh

# Instance 0 allocates with vmalloc, 1 with dma-contig; without CMA
# dma-contig gets 4 MiB at most, and a 720p frame takes an order-10
# block: its frames here are 640x480 (docs/kernel-notes.md, 11.2).
load_vivid() {
    modprobe vivid n_devs=2 node_types=0x101,0x101 allocators=0,1 multiplanar=1,1 \
        no_error_inj=1 || hdm_fail "modprobe vivid failed"
}
VIVID_SIZES="0:4M 1:2M"

# The digest an `hdmabuf-agent` output file printed.
digest_in() { sed -n 's/^digest \([0-9a-f]*\) .*/\1/p' "$1"; }

case $HDM_DOMAIN in pv) base=100 ;; pvh) base=200 ;; esac

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    hdm_load_check
    load_vivid
    modprobe vgem || hdm_fail "modprobe vgem failed"
    ;;
dom0/guests)
    hdm_watch /tmp/events
    hdm_wait_connected 2
    # What the driver refuses to grant, each from the test module as a
    # real exporter can make it: EINVAL, and a kernel log line saying why.
    for kind in not-ram partial-page offset ragged; do
        hdmabuf-agent refused "$kind" --domain "$(xl domid pv)" || hdm_fail "a $kind dma-buf was not refused"
    done
    hdm_expect_dmesg "refused: page 0 is not system RAM"
    hdm_expect_dmesg "the dma-buf is 4608 bytes, not a whole number of pages"
    hdm_expect_dmesg "refused: it starts 512 bytes into a page"
    hdm_expect_dmesg "refused: its exporter mapped segment 0 in part of a page"
    for guest in pv:100 pvh:200; do
        g=${guest%:*} base=${guest#*:}
        for spec in $VIVID_SIZES; do
            n=${spec%:*}
            id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"vivid$n-from-$g\"" 120)
            hdmabuf-agent kcheck "$id" --verify $((base + n)) ||
                hdm_fail "import of $g's vivid $n buffer failed"
        done
        hdm_log "$g's vivid buffers (vmalloc, dma-contig) verified"
    done
    # One process at a time has a vivid queue: to one guest, then the other.
    for guest in pv:100 pvh:200; do
        g=${guest%:*} base=${guest#*:}
        for spec in $VIVID_SIZES; do
            n=${spec%:*}
            hdmabuf-agent export-from vivid --instance "$n" --domain "$(xl domid "$g")" \
                --size "${spec#*:}" --seed $((base + 10 + n)) --priv "vivid$n-to-$g" --once \
                >/tmp/vivid.out 2>&1 || hdm_fail "vivid $n buffer to $g: $(cat /tmp/vivid.out)"
        done
    done
    hdm_log "dom0's vivid buffers verified by both guests"
    for guest in pv:100 pvh:200; do
        g=${guest%:*} base=${guest#*:} domid=$(xl domid "${guest%:*}")
        (
            hdmabuf export --domain "$domid" --size 1M --seed $((base + 40)) --priv "reexport-$g" \
                --once >"/tmp/reexport-$g.out" 2>&1 ||
                hdm_fail "buffer for $g to export on: $(cat "/tmp/reexport-$g.out")"
            hdmabuf-agent export-from vgem --domain "$domid" --size 2M --seed $((base + 20)) \
                --priv "vgem-show-$g" --once >"/tmp/show-$g.out" 2>&1 ||
                hdm_fail "vgem buffer shown by $g: $(cat "/tmp/show-$g.out")"
            hdmabuf-agent export-from vgem --domain "$domid" --size 2M --seed $((base + 30)) \
                --rw --priv "vgem-capture-$g" --once --digest >"/tmp/capture-$g.out" 2>&1 ||
                hdm_fail "vgem buffer captured into by $g: $(cat "/tmp/capture-$g.out")"
        ) &
        echo $! >"/tmp/serve-$g.pid"
    done
    for g in pv pvh; do
        wait "$(cat "/tmp/serve-$g.pid")" || hdm_fail "serving $g failed"
        id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"vivid-wrote-$g:" 120)
        seen=$(grep -F "\"id\":\"$id\"" /tmp/events | sed -n 's/.*"priv":"vivid-wrote-[a-z]*:\([0-9a-f]*\)".*/\1/p' | head -n 1)
        hdmabuf import "$id" --verify 1 >/dev/null || hdm_fail "import of $g's digest failed"
        mine=$(digest_in "/tmp/capture-$g.out")
        [ -n "$mine" ] && [ "$mine" = "$seen" ] ||
            hdm_fail "vivid in $g captured into dom0's vgem buffer: $g saw digest '$seen', dom0 has '$mine'"
        hdm_log "$g's vivid captured into dom0's vgem buffer: both see digest $mine"
    done
    hdm_wait_stat connections_live 0 120
    hdm_check_released
    for driver in vivid vgem; do
        rmmod "$driver" || hdm_fail "$driver does not unload: something holds one of its buffers"
    done
    ;;
pv/main | pvh/main)
    hdm_load
    load_vivid
    hdm_watch /tmp/events
    hdm_wait_connected
    for spec in $VIVID_SIZES; do
        n=${spec%:*}
        hdmabuf-agent export-from vivid --instance "$n" --domain 0 --size "${spec#*:}" \
            --seed $((base + n)) --priv "vivid$n-from-$HDM_DOMAIN" --once ||
            hdm_fail "export of a vivid $n buffer failed"
    done
    for spec in $VIVID_SIZES; do
        n=${spec%:*}
        id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"vivid$n-to-$HDM_DOMAIN\"" 300)
        hdmabuf import "$id" --verify $((base + 10 + n)) || hdm_fail "import of dom0's vivid $n buffer failed"
    done
    id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"reexport-$HDM_DOMAIN\"" 120)
    hdmabuf-agent refused imported --id "$id" --domain 0 || hdm_fail "an imported buffer was exported on"
    hdm_expect_dmesg "refused: page 0 is another domain's"
    id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"vgem-show-$HDM_DOMAIN\"" 120)
    hdmabuf-agent import-to vivid "$id" --queue output --verify $((base + 20)) ||
        hdm_fail "vivid's output did not show dom0's vgem buffer"
    id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"vgem-capture-$HDM_DOMAIN\"" 120)
    hdmabuf-agent import-to vivid "$id" --queue capture --verify $((base + 30)) >/tmp/capture.out 2>&1 ||
        hdm_fail "vivid did not capture into dom0's vgem buffer: $(cat /tmp/capture.out)"
    cat /tmp/capture.out
    digest=$(digest_in /tmp/capture.out)
    hdmabuf export --domain 0 --size 4K --seed 1 --priv "vivid-wrote-$HDM_DOMAIN:$digest" --once ||
        hdm_fail "export of the digest failed"
    hdm_check_released
    rmmod vivid || hdm_fail "vivid does not unload: something holds one of its buffers"
    ;;
esac
