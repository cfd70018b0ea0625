#!/bin/sh
# SPDX-License-Identifier: MIT
# Runner self-test: every limit of a run is stretched by the runner's
# --time-scale, dom0's own kill of a phase included (it once was not, and a
# slow CI host had two scenarios killed at their unscaled limit while the
# runner still waited). dom0's main phase outlives the scenario's
# `timeout` of 4 s; with the scale of `make test` (200) the limit is 8 s
# and the phase must end on its own, with rc=0.
#
# hdm: description = runner self-test: a phase may outlast its unscaled limit on a scaled run
# hdm: timeout = 4
# hdm: boot-timeout = 300
. /hdm/lib.sh

[ "$HDM_PHASE" = main ] || exit 0
if [ "$(hdm_limit 4)" -lt 6 ]; then
    hdm_log "time scale $HDM_TIME_SCALE: no room past the limit to check"
    exit 0
fi
sleep 5
hdm_log "the phase outlived its unscaled limit of 4 s"
