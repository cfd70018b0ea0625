# SPDX-License-Identifier: MIT
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, on the stable
# toolchain) and the host benchmarks. See fuzz/README.md.
#
#   make fuzz            every fuzz target for FUZZ_SECONDS each (600); the figures
#                        of the run (executions, coverage, crashes) in
#                        target/fuzz-logs/summary.md (fuzz/summary.sh)
#   make fuzz-smoke      fuzz-check, seed corpus, regression replay, every target
#                        for FUZZ_SMOKE_SECONDS each (10); `make test` runs it
#   make fuzz-coverage   line coverage of the corpus (llvm-cov), target/fuzz-coverage/
#   make fuzz-check      fmt and clippy of the fuzz workspace
#   make bench-host      ring and page-directory benchmarks (not tests)
#
# FUZZ_TARGETS selects targets (default: all). A crash leaves its input in
# fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ to keep it
# as a regression test (fuzz/README.md).

CARGO ?= cargo
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_TARGETS ?= ring_responder ring_requester channel ledger wire pgdir uapi \
	xenstore_values xenstore_schema xenbus_machines
# libFuzzer options added to every run (e.g. FUZZ_ARGS=-jobs=2).
FUZZ_ARGS ?=

# cargo-fuzz is installed once, pinned, into the cache (not ~/.cargo).
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TOOLS := $(HDMABUF_CACHE)/cargo-tools
CARGO_FUZZ_STAMP := $(FUZZ_TOOLS)/.cargo-fuzz-$(CARGO_FUZZ_VERSION)
# No sanitizer: every fuzzed crate forbids unsafe code, so AddressSanitizer
# (nightly-only) would find nothing that Rust's own checks miss; overflow
# and debug assertions stay on. This keeps fuzzing on the stable toolchain.
CARGO_FUZZ_FLAGS := --sanitizer none --debug-assertions
FUZZ_LOGS := target/fuzz-logs
FUZZ_COUNTS := $(or $(COUNTS_DIR),target/test-counts)
WITH_FUZZ := PATH="$(FUZZ_TOOLS)/bin:$$PATH"
# Runs use the binaries `fuzz-build` made, so that every target of one run
# is the same build and nothing is recompiled between targets.
FUZZ_TRIPLE = $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
FUZZ_BIN = fuzz/target/$(FUZZ_TRIPLE)/release

.PHONY: fuzz fuzz-smoke fuzz-build fuzz-seeds fuzz-coverage fuzz-check \
	fuzz-tools bench bench-host

bench: bench-host

fuzz-tools: $(CARGO_FUZZ_STAMP)
$(CARGO_FUZZ_STAMP):
	@echo "[fuzz] installing cargo-fuzz $(CARGO_FUZZ_VERSION) into $(FUZZ_TOOLS) (once)"
	@mkdir -p $(FUZZ_TOOLS)
	@$(CARGO) install --locked --quiet --version $(CARGO_FUZZ_VERSION) \
	  --root $(FUZZ_TOOLS) cargo-fuzz
	@touch $@

# The harness crate's tests write the seed corpus and replay the
# regressions (fuzz/harness/tests/).
fuzz-seeds:
	@echo "[fuzz] harness tests: seed corpus -> fuzz/corpus/, regressions replay"
	@mkdir -p $(FUZZ_COUNTS); log=$$(mktemp); status=0; \
	  $(CARGO) test -q --manifest-path fuzz/Cargo.toml -p hyper-dmabuf-fuzz-harness \
	    >"$$log" 2>&1 || status=$$?; \
	  grep -vE '^(running [0-9]+ tests?|test result: ok.*|[.i]*|)$$' "$$log" || true; \
	  passed=$$(awk '/^test result:/ {for (i = 2; i <= NF; i++) if ($$i ~ /^passed;?$$/) p += $$(i-1)} END {print p + 0}' "$$log"); \
	  failed=$$(awk '/^test result:/ {for (i = 2; i <= NF; i++) if ($$i ~ /^failed;?$$/) f += $$(i-1)} END {print f + 0}' "$$log"); \
	  rm -f "$$log"; echo "$$passed $$failed" > $(FUZZ_COUNTS)/fuzz-harness; \
	  echo "[fuzz] harness: $$passed passed, $$failed failed"; exit $$status

fuzz-build: fuzz-tools
	@echo "[fuzz] cargo fuzz build $(CARGO_FUZZ_FLAGS)"
	@cd fuzz && $(WITH_FUZZ) $(CARGO) fuzz build $(CARGO_FUZZ_FLAGS)

# $(1): seconds per target, $(2): counts file name.
# Targets run FUZZ_JOBS at a time (one per core by default): each is
# single-threaded, so the smoke costs ceil(targets / cores) x its time.
FUZZ_JOBS ?= $(shell nproc 2>/dev/null || echo 1)

define fuzz_run
	@mkdir -p $(FUZZ_LOGS) $(FUZZ_COUNTS); running=0; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t fuzz/artifacts/$$t; \
	  rm -f $(FUZZ_LOGS)/$$t.status; \
	  ( $(FUZZ_BIN)/$$t -artifact_prefix=fuzz/artifacts/$$t/ \
	        -max_total_time=$(1) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	        $(FUZZ_ARGS) fuzz/corpus/$$t >$(FUZZ_LOGS)/$$t.log 2>&1; \
	    echo $$? > $(FUZZ_LOGS)/$$t.status ) & \
	  running=$$((running + 1)); \
	  if [ $$running -ge $(FUZZ_JOBS) ]; then wait -n || true; running=$$((running - 1)); fi; \
	done; \
	wait; passed=0; failed=0; bad=""; \
	for t in $(FUZZ_TARGETS); do \
	  log=$(FUZZ_LOGS)/$$t.log; \
	  if [ "$$(cat $(FUZZ_LOGS)/$$t.status 2>/dev/null)" = 0 ]; then \
	    passed=$$((passed + 1)); \
	    echo "[fuzz] $$t: ok, $$(grep -E '^#[0-9]+' "$$log" | tail -1 | sed -E 's/^#([0-9]+)[[:space:]]+[A-Z]+[[:space:]]+/\1 execs, /')"; \
	  else \
	    failed=$$((failed + 1)); bad="$$bad $$t"; \
	    echo "[fuzz] $$t: FAILED (log: $$log)"; \
	    grep -E "panicked at|Test unit written to|^thread" "$$log" | head -5 | sed 's/^/    /'; \
	  fi; \
	done; \
	echo "$$passed $$failed" > $(FUZZ_COUNTS)/$(2); \
	fuzz/summary.sh $(FUZZ_LOGS) $(FUZZ_TARGETS) > $(FUZZ_LOGS)/summary.md; \
	echo "[fuzz] targets: $$passed passed, $$failed failed"; \
	if [ -n "$$bad" ]; then \
	  echo "[fuzz] keep each crash as a regression: cp fuzz/artifacts/<target>/crash-* fuzz/regressions/<target>/"; \
	  exit 1; \
	fi
endef

fuzz-smoke: fuzz-check fuzz-seeds fuzz-build
	@echo "[fuzz] smoke: $(FUZZ_SMOKE_SECONDS) s per target, $(FUZZ_JOBS) at a time"
	$(call fuzz_run,$(FUZZ_SMOKE_SECONDS),fuzz-smoke)

fuzz: fuzz-seeds fuzz-build
	@echo "[fuzz] $(FUZZ_SECONDS) s per target"
	$(call fuzz_run,$(FUZZ_SECONDS),fuzz)
	@echo "[fuzz] figures ($(FUZZ_LOGS)/summary.md):"; cat $(FUZZ_LOGS)/summary.md

# Source-based line coverage of the corpus (rustc -Cinstrument-coverage is
# stable). The rustup llvm-tools component cannot be fetched here, so the
# llvm-profdata/llvm-cov of Debian's llvm-19 (or newer) are used; they read
# what rustc 1.95 (LLVM 22) writes. Report in target/fuzz-coverage/.
FUZZ_LLVM_BIN ?= $(firstword $(wildcard /usr/lib/llvm-22/bin /usr/lib/llvm-21/bin \
	/usr/lib/llvm-20/bin /usr/lib/llvm-19/bin))
FUZZ_COV_DIR := target/fuzz-coverage
FUZZ_COV_BIN := fuzz/target/x86_64-unknown-linux-gnu/coverage/x86_64-unknown-linux-gnu/release
fuzz-coverage: fuzz-seeds fuzz-tools
	@llvm="$(FUZZ_LLVM_BIN)"; \
	if [ -z "$$llvm" ]; then \
	  echo "[fuzz] no llvm >= 19 found: apt-get install -y llvm-19"; \
	  apt-get install -y -qq llvm-19 >/dev/null; llvm=/usr/lib/llvm-19/bin; \
	fi; \
	mkdir -p $(FUZZ_COV_DIR); objects=""; profiles=""; \
	for t in $(FUZZ_TARGETS); do \
	  echo "[fuzz] coverage of $$t over fuzz/corpus/$$t"; \
	  (cd fuzz && $(WITH_FUZZ) $(CARGO) fuzz coverage --sanitizer none \
	     --llvm-path "$$llvm" $$t) >$(FUZZ_COV_DIR)/$$t.log 2>&1 \
	    || { echo "[fuzz] coverage of $$t failed: $(FUZZ_COV_DIR)/$$t.log"; exit 1; }; \
	  objects="$$objects -object $(FUZZ_COV_BIN)/$$t"; \
	  profiles="$$profiles fuzz/coverage/$$t/coverage.profdata"; \
	done; \
	"$$llvm/llvm-profdata" merge -sparse $$profiles -o $(FUZZ_COV_DIR)/all.profdata; \
	filter='--ignore-filename-regex=(/rustc/|/\.cargo/|/fuzz/)'; \
	"$$llvm/llvm-cov" report $$objects -instr-profile=$(FUZZ_COV_DIR)/all.profdata "$$filter" \
	  | tee $(FUZZ_COV_DIR)/report.txt; \
	"$$llvm/llvm-cov" show $$objects -instr-profile=$(FUZZ_COV_DIR)/all.profdata "$$filter" \
	  -format=html -output-dir=$(FUZZ_COV_DIR)/html >/dev/null; \
	echo "[fuzz] coverage: $(FUZZ_COV_DIR)/report.txt, $(FUZZ_COV_DIR)/html/index.html"

fuzz-check:
	@echo "[fuzz] cargo fmt --check, clippy -D warnings (fuzz workspace)"
	@$(CARGO) fmt --manifest-path fuzz/Cargo.toml --all --check
	@$(CARGO) clippy -q --manifest-path fuzz/Cargo.toml --workspace --all-targets -- -D warnings

# Host benchmarks: ring push+publish+pop against memcpy, page-directory
# encode/decode at 8 MiB, 256 MiB and 1 GiB. Prints a table and writes
# target/bench/host.json. BENCH_HOST_ARGS=--quick for a fast look.
BENCH_HOST_ARGS ?=
bench-host:
	@echo "[bench] host benchmarks (release build, one core)"
	@$(CARGO) build -q --release -p hyper-dmabuf-hostbench
	@taskset -c 0 true 2>/dev/null && pin="taskset -c 0" || pin=""; \
	  $$pin target/release/hostbench --out target/bench/host.json $(BENCH_HOST_ARGS)
