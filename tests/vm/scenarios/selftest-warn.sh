#!/bin/sh
# SPDX-License-Identifier: MIT
# Runner self-test: the frontend prints a kernel WARNING in the PV domU
# (module parameter inject_warn=1). The runner must FAIL this run, blaming
# the pv domain's step and showing its log; `expect-fail` turns that
# expected failure into a pass of the self-test.
#
# hdm: description = runner self-test: a module WARNING in a guest fails the run
# hdm: domains = pv
# hdm: timeout = 60
# hdm: boot-timeout = 300
# hdm: expect-fail = pv: WARNING:
. /hdm/lib.sh

[ "$HDM_PHASE" = main ] || exit 0
[ "$HDM_TYPE" = pv ] || exit 0
hdm_insmod hyper_dmabuf inject_warn=1
hdm_rmmod hyper_dmabuf
