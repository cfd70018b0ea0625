# SPDX-License-Identifier: MIT
# The Debian dom0 (issue 17, point 3): the platform's second flavour, where
# dom0 is Debian bookworm installed from Debian's packages on a disk, with
# this project's packages installed by apt and the module built by DKMS.
#
#   make debian-dom0      the disk, Xen and kernel (platform/build-debian-dom0.sh;
#                         cached by inputs: the base system, the kernel's
#                         packages and the disk each by their own)
#   make vm-debian        the debian-dom0 scenario alone: two boots of that
#                         dom0 (`make test` runs it among vm-drivers' scenarios)
#   make vm-debian-shell  boot it with root logged in on the console
#
# Needs root (mmdebstrap, chroot and mount build the image).

.PHONY: debian-dom0 vm-debian vm-debian-shell

DEBIAN_DOM0_ARGS = $(DEB_DIR) "$(VM_IMAGES)"

debian-dom0: deb images
	@platform/build-debian-dom0.sh $(DEBIAN_DOM0_ARGS) >/dev/null

vm-debian: debian-dom0 vm-runner
	@$(VM_RUNNER) run --time-scale $(VM_TIME_SCALE) --counts "$(COUNTS_DIR)/vm-debian" \
	  --debian "$$(platform/build-debian-dom0.sh --dir $(DEBIAN_DOM0_ARGS))" debian-dom0

vm-debian-shell: debian-dom0 vm-runner
	@$(VM_RUNNER) shell --debian "$$(platform/build-debian-dom0.sh --dir $(DEBIAN_DOM0_ARGS))"
