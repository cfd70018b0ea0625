# SPDX-License-Identifier: MIT
# make bench: hyper_dmabuf against what a user would otherwise use, on the
# embedded platform (issue 7; docs/performance.md).
#
#   make bench       bench-host (mk/30-fuzz-bench.mk), then bench-vm
#   make bench-vm    boot Xen, run tests/vm/scenarios/bench.sh (dom0 exports
#                    to a PVH guest: ours, gntdev-dmabuf + a user-space
#                    transport, the grant-map floor, a copy) and
#                    bench-scale.sh (eight PV guests; 10 to 10,000 buffers
#                    per peer, 1 to 8 peers), then write the table,
#                    target/bench/results.json, target/bench/latency.png and
#                    target/bench/scale.png
#
# The plot needs gnuplot; it is installed from apt when missing.

.PHONY: bench-vm bench-report bench-plot-deps

BENCH_OUT := target/bench
BENCH_LOGS := target/vmtest/bench target/vmtest/bench-scale

bench: bench-vm

bench-plot-deps:
	@command -v gnuplot >/dev/null || { \
	  echo "[bench] installing gnuplot-nox (for the plot)"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -q --no-install-recommends gnuplot-nox >/dev/null 2>&1 || { \
	    $$sudo apt-get update -q >/dev/null && \
	    $$sudo apt-get install -y -q --no-install-recommends gnuplot-nox >/dev/null; }; }

# Timings on the release kernel: the debug checks would distort them.
bench-vm: export HDMABUF_KERNEL := release
bench-vm: bench-plot-deps
	@$(MAKE) --no-print-directory images vm-runner
	@$(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --images "$(VM_IMAGES)" bench bench-scale
	@$(MAKE) -s bench-report

# The report alone, from the logs of the last run.
bench-report:
	@cargo build -q --release -p hdmabuf-bench
	@echo; echo "hyper-dmabuf benchmark: dom0 -> PVH guest, and dom0 with 8 PV guests (emulated platform: ratios matter, not absolute times)"
	@target/release/hdmabuf-bench $(addsuffix /dom0.log,$(BENCH_LOGS)) --out $(BENCH_OUT)
