# SPDX-License-Identifier: MIT
# make demo: boot the embedded Xen and share buffers between a PV domU and
# dom0 both ways (tests/vm/scenarios/demo.sh), then print the report the
# scenario wrote in each domain's log and one verdict line.

.PHONY: demo

DEMO_LOGS := target/vmtest/demo

# The demo runs on the release kernel, as a user's would (a sub-make, so
# that `make test demo` builds both flavours' images).
demo: export HDMABUF_KERNEL := release
demo:
	@$(MAKE) --no-print-directory images vm-runner
	@rc=0; $(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --images "$(VM_IMAGES)" demo || rc=$$?; \
	  echo; echo "hyper-dmabuf demo report"; \
	  for log in $(DEMO_LOGS)/dom0.log $(DEMO_LOGS)/guest-*.log; do \
	    [ -f "$$log" ] && sed -n 's/^report| //p' "$$log"; done; \
	  ok=$$(cat $(DEMO_LOGS)/dom0.log $(DEMO_LOGS)/guest-*.log 2>/dev/null | grep -c '^report| \[[a-z0-9]*\] ok ' || true); \
	  if [ $$rc -eq 0 ]; then echo "demo: PASS, all $$ok checks passed"; \
	  else echo "demo: FAIL after $$ok checks passed (logs in $(DEMO_LOGS))"; exit 1; fi
