# SPDX-License-Identifier: MIT
# Host checks and tests: everything that needs neither a kernel nor a VM.
#
#   make test-host   fmt, clippy, docs, unit/property/simulation tests,
#                    then a short run of every fuzzer
#
# Each test stage records "<passed> <failed>" in $(COUNTS_DIR)/<stage>;
# `make test` ends by printing the total.

CARGO ?= cargo
COUNTS_DIR := target/test-counts
export COUNTS_DIR

.PHONY: test-host fmt-check clippy docs host-tests counts-reset

test: test-host
test-host: counts-reset fmt-check clippy docs host-tests fuzz-smoke

counts-reset:
	@rm -rf $(COUNTS_DIR) && mkdir -p $(COUNTS_DIR)

fmt-check:
	@echo "[host] cargo fmt --check; rustfmt --check of the kernel module"
	@$(CARGO) fmt --all --check
	@rustfmt --edition 2021 --check driver/hyper_dmabuf_main.rs
	@echo "[host] every unsafe block of the kernel module has a SAFETY comment"
	@platform/check-safety.sh driver/*.rs driver/*/*.rs front/*.rs back/*.rs
	@echo "[host] every source file has an SPDX licence line"
	@platform/check-spdx.sh

clippy:
	@echo "[host] cargo clippy (-D warnings -D clippy::undocumented_unsafe_blocks)"
	@$(CARGO) clippy -q --workspace --all-targets -- -D warnings -D clippy::undocumented_unsafe_blocks

docs:
	@echo "[host] cargo doc (-D warnings)"
	@RUSTDOCFLAGS="-D warnings" $(CARGO) doc -q --workspace --no-deps

# The protocol crates are no_std and must stay free of unsafe code: they
# parse everything the peer sends.
host-tests:
	@echo "[host] no unsafe in the protocol crates"
	@! grep -rnE '\bunsafe\b *(\{|fn\b|impl\b)' common/src xenbus-proto/src --include='*.rs'
	@echo "[host] cargo test --workspace"
	@mkdir -p $(COUNTS_DIR); t0=$$(date +%s); log=$$(mktemp); status=0; \
	  $(CARGO) test -q --workspace >"$$log" 2>&1 || status=$$?; \
	  grep -vE '^(running [0-9]+ tests?|test result: ok.*|[.]*|)$$' "$$log" || true; \
	  passed=$$(awk '/^test result:/ {for (i = 2; i <= NF; i++) if ($$i ~ /^passed;?$$/) p += $$(i-1)} END {print p + 0}' "$$log"); \
	  failed=$$(awk '/^test result:/ {for (i = 2; i <= NF; i++) if ($$i ~ /^failed;?$$/) f += $$(i-1)} END {print f + 0}' "$$log"); \
	  rm -f "$$log"; echo "$$passed $$failed" > $(COUNTS_DIR)/host-tests; \
	  echo "[host] $$passed passed, $$failed failed ($$(( $$(date +%s) - t0 )) s)"; \
	  exit $$status
