#!/bin/sh
# SPDX-License-Identifier: MIT
# Issue 8, points 1 and 4: an untrusted peer and untrusted user space;
# issue 13, point 3: a hostile importer, floods, an unload under a mapping.
#
# `evil` runs no hyper_dmabuf.ko: hdmabuf-hostile plays the frontend of its
# device from user space (xenstore, gntalloc, gntdev, evtchn) and attacks
# dom0's backend, one named case at a time: as the importer of dom0's
# buffers (grants mapped before their announcement, and kept across an
# unexport, a refused and an unanswered export, the loss of the
# connection; lies in MAPPED, RELEASE and answers), unknown ops, reserved
# fields, bad values, stale and forged ids, replays, malformed page
# directories (dom0 imports each), ring overflows, floods, malformed
# xenstore nodes, state jumps, a hundred reconnections, a ring kept full. In
# dom0 `hdmabuf-hostile referee` judges every case: the answer, the
# counters, exactly the expected warning lines, the log budget, nothing
# left behind. Meanwhile `good` (the real driver) abuses its own
# /dev/xen/hyper_dmabuf with the named ioctl cases and 100,000 seeded
# random ioctls, and as an unprivileged user, then shares buffers with
# dom0, which must not notice. Once `good` is done (/tmp/good-idle), the
# referee times dom0's ioctls and its round trips with `good` while
# `evil` is idle and while it keeps its ring full; last, dom0 unbinds
# every device and unloads its module while `evil` still maps one of its
# buffers (refused until `evil` unmaps), and loads it again. `good`
# waits for that disconnection before its own final checks.
#
# hdm: description = a hostile user-space peer attacks dom0's backend (also as importer) while a good guest shares; ioctl abuse; latency under a flood; unload under a mapping
# hdm: domains = evil:pv good:pv
# hdm: attach = yes
# hdm: hyper_dmabuf.evil = "backend=0, rw=1, ring-page-order=4"
# hdm: timeout = 900
# hdm: boot-timeout = 300
. /hdm/lib.sh

# reconnect-flood's cycles: each takes about 0.2 s here (the xenstore
# round trips of both ends), so make test runs a hundred; the figures for
# 1,000 are in docs/security.md.
RECONNECTS=100

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    good=$(xl domid good)
    (
        hdmabuf-agent stress import --domain "$good" --timeout "$(hdm_limit 600)" >/tmp/import.out 2>&1
        echo $? >/tmp/import.status
        touch /tmp/good-idle
    ) &
    importer=$!
    hdmabuf-hostile referee --domain "$(xl domid evil)" --timeout "$(hdm_limit 860)" --good "$good" \
        --quiet-after /tmp/good-idle --module "$HDM_MODDIR/hyper_dmabuf.ko" ||
        hdm_fail "the referee judged a case failed"
    wait $importer
    cat /tmp/import.out
    [ "$(cat /tmp/import.status)" = 0 ] || hdm_fail "the good guest's sharing failed under attack"
    hdm_wait_stat connections_live 0 120
    hdm_check_released 60
    [ "$(hdm_stat pages_leaked)" = 0 ] || hdm_fail "pages leaked: $(hdm_stats)"
    ;;
evil/main)
    hdmabuf-hostile peer --seed 8 --reconnects "$RECONNECTS" || hdm_fail "hostile peer cases failed"
    ;;
good/main)
    hdm_load
    hdm_wait_connected
    hdmabuf-hostile trust --peer 0 || hdm_fail "the local trust model does not hold"
    hdmabuf-hostile ioctl --peer 0 --calls 100000 --seed 4 || hdm_fail "ioctl abuse found a wrong answer"
    hdmabuf-agent stress export --domain 0 --cycles 700 --seed 3 --max-size 1M \
        --timeout "$(hdm_limit 600)" ||
        hdm_fail "sharing with dom0 failed while it was under attack"
    # dom0 times its round trips with us, then unbinds our device to
    # unload its module (importer-unload); we stay until then.
    deadline=$(hdm_deadline 480)
    until dmesg | grep -q "disconnected from dom0"; do
        hdm_in_time $deadline || hdm_fail "dom0 never unbound our device"
        sleep 1
    done
    hdm_check_released 60
    [ "$(hdm_stat protocol_errors)" = 0 ] || hdm_fail "requests were refused: $(hdm_stats)"
    ;;
esac
