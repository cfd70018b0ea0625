# SPDX-License-Identifier: MIT
# Installing on a user's system (issue 17, docs/install.md).
#
#   make modules KDIR=...  (mk/50-vm.mk) builds against a user's kernel tree
#   make test-install      driver/preflight.sh against the platform
#                          kernel's tree, with its tools and with another
#                          rustc, against Debian's stock kernel headers
#                          (Rust off; installed from apt when missing) and
#                          against no tree at all; part of `make test`
#   make deb               the Debian packages hyper-dmabuf-dkms and hdmabuf
#                          (debian/) into target/deb/, checked by lintian
#   make test-deb          make deb, then what the packages hold and a DKMS
#                          build from hyper-dmabuf-dkms's own files against
#                          the platform kernel and Debian's stock one;
#                          part of `make test`

.PHONY: test-install deb test-deb

test: test-install

test-install: kernel
	@echo "[install] driver/preflight.sh against real kernel trees"
	@. platform/lib.sh && COUNTS_FILE=$(COUNTS_DIR)/install \
	  tests/install/preflight.sh "$$(platform/build-kernel.sh --dir)" "$$KRUSTC" "$$KBINDGEN" "$$KLLVM"

DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
DEB_DIR := target/deb

# dpkg-buildpackage writes its products beside the tree it builds: it runs
# in a copy (of what git tracks or would, with the changes not yet
# committed) under $(DEB_DIR). The Rust toolchain is rustup's, which dpkg
# does not know of, hence -d (no check of Build-Depends); cargo reuses
# target/. lintian's warnings fail the build like its errors.
deb: deps
	@t0=$$(date +%s); src=$(DEB_DIR)/hyper-dmabuf-$(DEB_VERSION); \
	  rm -rf $(DEB_DIR) && mkdir -p "$$src"; \
	  git ls-files -z --cached --others --exclude-standard \
	    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$$src"; \
	  (cd "$$src" && CARGO_TARGET_DIR=$(CURDIR)/target dpkg-buildpackage -b -us -uc -d) \
	    >$(DEB_DIR)/build.log 2>&1 || { tail -40 $(DEB_DIR)/build.log; exit 1; }; \
	  lintian --fail-on error,warning --info $(DEB_DIR)/*.changes; \
	  echo "[deb] $$(cd $(DEB_DIR) && ls *.deb | tr '\n' ' ')($$(( $$(date +%s) - t0 )) s; log $(DEB_DIR)/build.log)"

test: test-deb

test-deb: deb kernel
	@. platform/lib.sh && COUNTS_FILE=$(COUNTS_DIR)/deb \
	  tests/install/deb.sh $(DEB_DIR) "$$(platform/build-kernel.sh --dir)" "$$KRUSTC" "$$KBINDGEN"
