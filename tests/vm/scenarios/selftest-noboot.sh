#!/bin/sh
# SPDX-License-Identifier: MIT
# Runner self-test: the PV domU never comes up (hdm.hang=1 on its kernel
# command line stops its init before the scenario starts). The runner must
# FAIL the run on the boot timeout of that guest, showing the guest's
# console log; `expect-fail` turns that expected failure into a pass.
#
# hdm: description = runner self-test: a guest that never comes up fails the run
# hdm: domains = pv
# hdm: timeout = 30
# hdm: boot-timeout = 15
# hdm: extra.pv = hdm.hang=1
# hdm: expect-fail = create pv: did not come up
. /hdm/lib.sh
exit 0
