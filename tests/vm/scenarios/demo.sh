#!/bin/sh
# SPDX-License-Identifier: MIT
# `make demo`: a PV domU and dom0 share buffers both ways.
#
#   1. The domU exports an 8 MiB and a 256 MiB buffer (read-only) to dom0;
#      dom0 learns of them from events, imports each and verifies every
#      byte through its mapping.
#   2. The domU exports an 8 MiB buffer read-write; dom0 imports it
#      writable and writes a new pattern; the domU sees that pattern in its
#      own pages once dom0 released the buffer.
#   3. dom0 exports an 8 MiB buffer to the domU, which verifies it.
#   4. Camera to display: the domU's vivid camera captures 100 frames
#      (1280x720 XR24) into a ring of 4 buffers and exports each frame to
#      dom0, which shows it on vkms's plane, reads the composed frame back
#      through the writeback connector and finds it equal to the buffer,
#      pixel for pixel, and to the fingerprint the domU sent with it
#      (tests/agents/src/media/stream.rs). The domU times each frame from
#      capture to dom0's acknowledgement.
#   5. Every buffer is unexported; both domains' counters show no grant,
#      mapping or buffer left.
#
# Each export is `hdmabuf export --once`: it stays exported until an
# importer has released it, then is unexported, and the tool waits for
# the grants to end. Each line starting `report|` goes to the demo report.
#
# hdm: description = make demo: domU and dom0 share 8 MiB and 256 MiB buffers both ways
# hdm: domains = guest:pv
# hdm: xl.guest = memory=768
# hdm: attach = yes
# hdm: timeout = 600
# hdm: boot-timeout = 300
. /hdm/lib.sh

checks=0
check() { checks=$((checks + 1)); hdm_report "ok  $*"; }

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    modprobe vkms || hdm_fail "modprobe vkms failed"
    ;;
dom0/guests)
    hdm_watch /tmp/events 600
    hdm_wait_connected
    guest=$(xl domid guest)
    hdm_report "dom0 created the guest with \`hdmabuf xl create\` from a config with $(grep '^hyper_dmabuf' /etc/xen/hdm-guest.cfg)"
    hdm_report "dom0 is connected to the guest (domain $guest)"
    for spec in 8M:11 256M:12; do
        size=${spec%:*} seed=${spec#*:}
        id=$(hdm_wait_event /tmp/events NewExport "\"priv\":\"demo-$size\"" 120)
        check "event: the guest exported $size as $id"
        t0=$(hdm_ms)
        hdmabuf import "$id" --verify "$seed" >/tmp/import.out 2>&1 || {
            cat /tmp/import.out
            hdm_fail "import of the $size buffer failed"
        }
        cat /tmp/import.out
        check "dom0 imported the $size buffer and verified every byte ($(($(hdm_ms) - t0)) ms, $(sed -n 's/.* in \([0-9]*\) us/\1 us to map/p' /tmp/import.out))"
    done
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"demo-rw"' 120)
    hdmabuf query "$id" | sed 's/^/  /'
    hdmabuf import "$id" --rw --write 14 || hdm_fail "read-write import failed"
    check "dom0 wrote pattern 14 into the guest's read-write buffer"
    hdmabuf export --domain "$guest" --size 8M --seed 15 --priv demo-back --once ||
        hdm_fail "dom0's export to the guest failed"
    check "dom0 exported 8 MiB to the guest; it was imported, released and unexported"
    hdmabuf-agent display --from "$guest" --frames 100 >/tmp/display.out 2>&1 || {
        cat /tmp/display.out
        hdm_fail "showing the guest's camera frames failed"
    }
    grep "lost" /tmp/display.out | head -n 5
    check "dom0 $(tail -n 1 /tmp/display.out)"
    hdm_check_released 60
    check "dom0: no export, import, grant or mapping left ($(hdm_stats))"
    hdm_report "dom0: $checks checks passed"
    ;;
guest/main)
    hdm_load
    modprobe vivid n_devs=1 node_types=0x1 no_error_inj=1 || hdm_fail "modprobe vivid failed"
    hdm_watch /tmp/events 600
    hdm_wait_connected
    hdmabuf export --domain 0 --size 8M --seed 11 --priv demo-8M --once >/tmp/e8 2>&1 &
    p8=$!
    hdmabuf export --domain 0 --size 256M --seed 12 --priv demo-256M --once >/tmp/e256 2>&1 &
    p256=$!
    wait $p8 || { cat /tmp/e8; hdm_fail "the 8 MiB export failed"; }
    check "the 8 MiB buffer was imported by dom0, released, unexported; its grants ended"
    wait $p256 || { cat /tmp/e256; hdm_fail "the 256 MiB export failed"; }
    check "the 256 MiB buffer was imported by dom0, released, unexported; its grants ended"
    hdmabuf export --domain 0 --size 8M --seed 13 --rw --priv demo-rw --once --expect-seed 14 ||
        hdm_fail "the read-write export failed, or dom0's pattern is not in the guest's pages"
    check "the guest sees in its own pages the pattern dom0 wrote (seed 14)"
    id=$(hdm_wait_event /tmp/events NewExport '"priv":"demo-back"' 120)
    hdmabuf import "$id" --verify 15 || hdm_fail "importing dom0's buffer failed"
    check "the guest imported dom0's 8 MiB buffer and verified every byte"
    # dom0's display says it is ready by exporting its acknowledgement page.
    ack=$(hdm_wait_event /tmp/events NewExport '"priv":"shown=none"' 120)
    hdmabuf-agent camera --domain 0 --frames 100 --ack "$ack" >/tmp/camera.out 2>&1 || {
        cat /tmp/camera.out
        hdm_fail "the camera's frames did not all reach dom0's display"
    }
    check "the guest's vivid camera sent $(tail -n 1 /tmp/camera.out)"
    hdm_check_released 60
    check "guest: no export, import, grant or mapping left ($(hdm_stats))"
    hdm_report "guest: $checks checks passed"
    ;;
esac
