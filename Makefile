# SPDX-License-Identifier: MIT
# hyper-dmabuf — top-level entry points.
#
#   make test       every test: host checks and tests, fuzz smoke, VM tests
#   make test-host  the host part alone (no kernel, no VM)
#   make demo       boot the embedded Xen and share a buffer between domains
#   make bench      benchmarks (not part of the tests)
#   make fuzz       coverage-guided fuzzers, FUZZ_SECONDS each
#   make soak       20-minute randomized soak with peer kills (not in make test)
#
# The rules live in mk/*.mk, one file per area, so that each area can grow
# without touching the others. `test` collects its prerequisites from them
# in include order: host checks first, then the VM tests.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Heavy outputs (kernel tree, Xen packages, images) are cached outside the
# repository, keyed by their inputs.
HDMABUF_CACHE ?= $(HOME)/.cache/hyper-dmabuf
export HDMABUF_CACHE

.PHONY: help test
help:
	@sed -n '2,9p' Makefile | sed 's/^# \{0,1\}//'

include $(sort $(wildcard mk/*.mk))

# Runs after every prerequisite collected from mk/*.mk has passed.
test:
	@awk '{p += $$1; f += $$2} END {printf "make test: %d passed, %d failed\n", p, f}' $(COUNTS_DIR)/* 
