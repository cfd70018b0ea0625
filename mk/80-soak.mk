# SPDX-License-Identifier: MIT
# make soak: the long randomized soak (issue 8; docs/security.md, "Long
# run"): tests/vm/scenarios/soak.sh, 20 minutes of sharing between dom0
# and two PV guests while guests are destroyed and created again, agents
# killed and drivers restarted. Not part of `make test`, which runs the
# one-minute soak-short in vm-drivers.
#
#   make soak          run it, print the figures, write target/soak/summary.txt
#   make soak-report   the figures again, from the logs of the last run

.PHONY: soak soak-report

SOAK_OUT := target/soak
SOAK_LOGS := target/vmtest/soak

soak: images vm-runner
	@$(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --images "$(VM_IMAGES)" soak
	@$(MAKE) -s soak-report

# The scenario's `soak-summary` report lines of dom0's log, as KEY=VALUE
# lines (one per counter) for scripts.
soak-report:
	@mkdir -p $(SOAK_OUT)
	@sed -n 's/.*report| \[dom0\] soak-summary //p' $(SOAK_LOGS)/dom0.log >$(SOAK_OUT)/report.txt
	@test -s $(SOAK_OUT)/report.txt || { echo "soak: no summary in $(SOAK_LOGS)/dom0.log"; exit 1; }
	@echo; echo "hyper-dmabuf soak:"; sed 's/^/  /' $(SOAK_OUT)/report.txt
	@tr ' ' '\n' <$(SOAK_OUT)/report.txt | sed -n 's/^\([a-z_.0-9A-Z]*=[0-9]*\)$$/\1/p' >$(SOAK_OUT)/summary.txt
	@echo "  (key=value: $(SOAK_OUT)/summary.txt)"
