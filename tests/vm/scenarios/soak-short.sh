#!/bin/sh
# SPDX-License-Identifier: MIT
# The soak of soak.sh for one minute, for `make test`: dom0 and two PV
# guests share every way while g1 is destroyed and created again, agents
# are killed and g1's driver restarted (faults every 8 to 15 s per
# domain). g2, the driver domain, kills its agent where the long soak
# restarts its driver: that restart can meet an upstream xenbus deadlock
# with dom0's destruction of g1 (docs/security.md), about once in eight
# runs, which a gate of every commit cannot carry.
#
# hdm: description = 1-minute randomized soak (soak.sh): destroy/re-create, agent kills, driver restarts under traffic
# hdm: timeout = 600
# The guests' boot took 65 s of a 60 s start on a loaded host, which
# left dom0 no time for a fault: a longer start, a short quiet tail.
SOAK_SECONDS=60
SOAK_START=75
FAULT_TAIL=20
FAULT_MIN=8
FAULT_MAX=15
SOAK_SEED=${SOAK_SEED:-7}
BACKEND_RESTARTS=0
. /hdm/scenarios/soak.sh
