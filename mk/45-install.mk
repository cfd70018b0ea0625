# SPDX-License-Identifier: MIT
# Installing on a user's system (issue 17, docs/install.md).
#
#   make modules KDIR=...  (mk/50-vm.mk) builds against a user's kernel tree
#   make test-install      driver/preflight.sh against the platform
#                          kernel's tree, with its tools and with another
#                          rustc, against Debian's stock kernel headers
#                          (Rust off; installed from apt when missing) and
#                          against no tree at all; part of `make test`

.PHONY: test-install

test: test-install

test-install: kernel
	@echo "[install] driver/preflight.sh against real kernel trees"
	@. platform/lib.sh && COUNTS_FILE=$(COUNTS_DIR)/install \
	  tests/install/preflight.sh "$$(platform/build-kernel.sh --dir)" "$$KRUSTC" "$$KBINDGEN" "$$KLLVM"
