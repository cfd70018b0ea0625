#!/bin/sh
# Issue 8, points 1 and 4: an untrusted peer and untrusted user space.
#
# `evil` runs no hyper_dmabuf.ko: hdmabuf-hostile plays the frontend of its
# device from user space (xenstore, gntalloc, evtchn) and attacks dom0's
# backend, one named case at a time: unknown ops, reserved fields, bad
# values, stale and forged ids, replays, malformed page directories (dom0
# imports each), ring overflows, floods, malformed xenstore nodes, state
# jumps. In dom0 `hdmabuf-hostile referee` judges every case: the
# answer, the counters, exactly the expected warning lines, nothing left
# behind. Meanwhile `good` (the real driver) shares buffers with dom0 and
# must not notice (1400 cycles last about as long as the attacks); then it
# abuses its own /dev/xen/hyper_dmabuf with the
# named ioctl cases and 100,000 seeded random ioctls, and as an
# unprivileged user.
#
# hdm: description = a hostile user-space peer attacks dom0's backend while a good guest shares; ioctl abuse
# hdm: domains = evil:pv good:pv
# hdm: attach = yes
# hdm: timeout = 600
# hdm: boot-timeout = 300
. /hdm/lib.sh

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    ;;
dom0/guests)
    hdmabuf stress import --domain "$(xl domid good)" >/tmp/import.out 2>&1 &
    importer=$!
    hdmabuf-hostile referee --domain "$(xl domid evil)" --timeout 580 ||
        hdm_fail "the referee judged a case failed"
    wait $importer || { cat /tmp/import.out; hdm_fail "the good guest's sharing failed under attack"; }
    cat /tmp/import.out
    hdm_wait_stat connections_live 0 120
    hdm_check_released 60
    [ "$(hdm_stat pages_leaked)" = 0 ] || hdm_fail "pages leaked: $(hdm_stats)"
    ;;
evil/main)
    hdmabuf-hostile peer --seed 8 || hdm_fail "hostile peer cases failed"
    ;;
good/main)
    hdm_load
    hdm_wait_connected
    hdmabuf stress export --domain 0 --cycles 1400 --seed 3 --max-size 1M ||
        hdm_fail "sharing with dom0 failed while it was under attack"
    hdmabuf-hostile ioctl --peer 0 --calls 100000 --seed 4 || hdm_fail "ioctl abuse found a wrong answer"
    hdm_check_released 60
    [ "$(hdm_stat protocol_errors)" = 0 ] || hdm_fail "requests were refused: $(hdm_stats)"
    ;;
esac
