# SPDX-License-Identifier: MIT
# The embedded Xen platform and the VM tests (issue 4).
#
#   make deps        install the host toolchain (apt, bindgen-cli), idempotent
#   make kernel      Linux 6.12 with platform/kernel/hyper-dmabuf.config (cached)
#   make xen         Xen 4.17 + tools from Debian, unpacked into the cache
#   make modules     hyper_dmabuf.ko (driver/), and the test-only
#                    hyper_dmabuf_check.ko, out of tree against the cached kernel
#   make modules KDIR=/lib/modules/$(uname -r)/build  [RUSTC= BINDGEN= LLVM=]
#                    hyper_dmabuf.ko against another kernel tree, after
#                    driver/preflight.sh (docs/install.md)
#   make images      dom0 + domU initramfs (cached, keyed by their inputs)
#   make vm-smoke    dom0 + a PV and a PVH domU load the modules
#   make vm-selftest the runner must fail on a module WARNING and a dead guest,
#                    and stretch dom0's own limits by its time scale
#   make vm-drivers  the driver scenarios of VM_DRIVER_TESTS
#   make test-vm     all three; part of `make test`
#   make vm-shell    boot Xen + dom0 with a shell on the console
#   make vm-run SCENARIOS="a b"   run scenarios from tests/vm/scenarios
#
# Heavy outputs live in $(HDMABUF_CACHE); every stage prints its time.
#
# HDMABUF_KERNEL picks the kernel every domain boots: `debug` (the default:
# lockdep, slab poisoning and red zones, atomic-sleep, list, sg and VM
# checks; what `make test` runs) or `release` (`make demo`, `make bench`).
# Each flavour has its own cached kernel tree, module build and images.
# HDMABUF_VM_TOOLS: the host-built binaries installed into every domain's
# /usr/bin (see platform/build-images.sh): by default the hdmabuf CLI,
# the test-only hdmabuf-agent (stress, soak, bench, kcheck) and
# hdmabuf-hostile (the hostile peer, its referee, the ioctl abuser), and
# the C example (mk/20-c.mk). Setting it replaces that list, which the
# scenarios need; HDMABUF_VM_EXTRA_TOOLS adds binaries beside it.

.PHONY: deps kernel xen modules modules-clean vm-tools images vm-runner vm-smoke \
	vm-selftest vm-drivers test-vm vm-shell vm-run vm-list

HDMABUF_KERNEL ?= debug
export HDMABUF_KERNEL

VM_RUNNER := target/release/hdmabuf-vmtest
HDMABUF_VM_TOOLS ?= $(CURDIR)/target/release/hdmabuf $(CURDIR)/target/release/hdmabuf-agent \
	$(CURDIR)/target/release/hdmabuf-hostile $(CURDIR)/$(C_EXAMPLE)
HDMABUF_VM_EXTRA_TOOLS ?=
# What build-images.sh installs, and what its image key (--dir) hashes:
# both lists, passed to every call of it.
VM_TOOLS = $(strip $(HDMABUF_VM_TOOLS) $(HDMABUF_VM_EXTRA_TOOLS))
COUNTS_DIR ?= target/test-counts
VM_IMAGES = $$(HDMABUF_VM_TOOLS="$(VM_TOOLS)" platform/build-images.sh --dir)
# Scenarios of vm-drivers run at once, each in its own QEMU: two on the
# 2-core reference machine take 1.3x less time than one after the other
# (lifecycle, reconnect, cycles, demo: 230 s in a row, 176 s two at once).
VM_JOBS ?= 2
# Every time limit of a VM run, the runner's and those the domains wait
# with, in percent of what the scenarios say. The limits only catch hangs;
# they were sized on this machine, and CI once ran the hostile scenarios
# 1.5x slower than that: 200 leaves room for a slow or loaded host, and a
# real hang is still reported by its own step.
VM_TIME_SCALE ?= 200
SCENARIOS ?= smoke
# The driver's VM tests: both directions, PV and PVH, 4 KiB to 1 GiB, the
# make-demo scenario, randomized cycles, the xl toolstack commands, peer
# death at every step, a hostile peer and ioctl abuse, module unload under
# traffic, a one-minute soak with guests destroyed, agents killed and drivers
# restarted.
# The Debian dom0 (mk/55-debian-dom0.mk): apt, DKMS, udev, systemd, plain
# xl create, a second boot from the same disk, the packages' removal.
# Longest first (debug kernel, seconds two at a time in a clean-clone
# make test of 2026-12-06: hostile-backend 514, hostile 502, death 301,
# unload 260, mm 201, sizes-pvh 186, soak-short 178, xl 172, sizes-pv 165,
# cycles 108, share 100, demo 86, lifecycle 63, reconnect 54; debian-dom0
# about 400 alone on 2026-12-07), so that the two jobs end together.
VM_DRIVER_TESTS ?= hostile hostile-backend debian-dom0 mm sizes-pvh unload soak-short death xl sizes-pv share media cycles demo lifecycle reconnect
# The Debian dom0's images, built and passed only when a scenario needs them.
VM_DEBIAN = $(if $(filter debian-dom0,$(VM_DRIVER_TESTS)),debian-dom0)

deps:
	@platform/install-deps.sh

kernel: deps
	@platform/build-kernel.sh >/dev/null

xen: deps
	@platform/fetch-xen.sh >/dev/null

# Only a KDIR given on the command line: kernel developers often export
# one, and the platform's targets must keep building for the platform.
ifeq ($(origin KDIR),command line)
# Against a kernel tree of the user's (docs/install.md), such as
# /lib/modules/$(uname -r)/build: the preflight names what is missing
# before the compiler meets it. The shipped module alone; RUSTC, BINDGEN
# and LLVM go to the kernel's make as given. driver/ holds one Kbuild
# output: a build for another tree than the last one cleans it first.
KDIR_TOOLS = $(foreach v,RUSTC BINDGEN LLVM,$(if $($(v)),$(v)="$($(v))"))
modules:
	@$(KDIR_TOOLS) driver/preflight.sh "$(KDIR)"
	@kdir=$$(cd "$(KDIR)" && pwd -P); \
	  if [[ ! -f driver/.hdm-kdir || $$(cat driver/.hdm-kdir) != "$$kdir" ]]; then \
	    $(MAKE) -C "$$kdir" -s $(KDIR_TOOLS) M="$(CURDIR)/driver" clean; \
	    rm -f driver/bindings_generated.rs.inc; echo "$$kdir" >driver/.hdm-kdir; fi; \
	  $(MAKE) -C "$$kdir" $(KDIR_TOOLS) M="$(CURDIR)/driver" HDM_TEST_MODULES=n modules
else
modules: kernel
	@platform/build-modules.sh >/dev/null
endif

modules-clean:
	@kdir=$$(cat driver/.hdm-kdir 2>/dev/null || platform/build-kernel.sh --dir); \
	  make -C "$$kdir" -s M="$(CURDIR)/driver" clean
	@rm -f driver/bindings_generated.rs.inc driver/.hdm-kdir

vm-tools:
	@cargo build --release -q -p hdmabuf -p hdmabuf-agent -p hdmabuf-hostile

# The script's stdout is the images' path; what it does and why it failed
# go to stderr, which stays visible.
images: modules xen vm-tools c-example
	@HDMABUF_VM_TOOLS="$(VM_TOOLS)" platform/build-images.sh >/dev/null

vm-runner:
	@t0=$$(date +%s.%N); cargo build --release -q -p hdmabuf-vmtest; \
	  echo "[vm-runner] built $(VM_RUNNER) ($$(awk -v a=$$t0 -v b=$$(date +%s.%N) 'BEGIN{printf "%.1f", b-a}') s)"

vm-smoke: images vm-runner
	@$(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --counts "$(COUNTS_DIR)/vm-smoke" --images "$(VM_IMAGES)" smoke

VM_SELFTESTS := selftest-warn selftest-noboot selftest-scale

vm-selftest: images vm-runner
	@$(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --counts "$(COUNTS_DIR)/vm-selftest" --images "$(VM_IMAGES)" \
	  $(VM_SELFTESTS)

# $(1): the scenarios, VM_JOBS at a time.
define vm_drivers
	@$(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --jobs $(VM_JOBS) --counts "$(COUNTS_DIR)/vm-drivers" --images "$(VM_IMAGES)" \
	  $(if $(VM_DEBIAN),--debian "$$(platform/build-debian-dom0.sh --dir $(DEBIAN_DOM0_ARGS))") $(1)
endef

vm-drivers: images vm-runner $(VM_DEBIAN)
	$(call vm_drivers,$(VM_DRIVER_TESTS))

# make test: the smoke first, alone (nothing else is worth running if it
# fails), then the driver scenarios with the runner's self-tests last, in
# one queue two at a time: the short self-tests fill the slot the last
# long scenario leaves free, instead of running one at a time after it.
test-vm: vm-smoke vm-runner images $(VM_DEBIAN)
	$(call vm_drivers,$(VM_DRIVER_TESTS) $(VM_SELFTESTS))

test: test-vm

vm-run: images vm-runner
	@$(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --images "$(VM_IMAGES)" $(SCENARIOS)

vm-list: vm-runner
	@$(VM_RUNNER) list

vm-shell: images vm-runner
	@$(VM_RUNNER) shell --images "$(VM_IMAGES)"
