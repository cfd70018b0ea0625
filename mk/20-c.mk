# SPDX-License-Identifier: MIT
# The C side of the uapi: examples/c/hdmabuf-example.c, a client written
# against include/uapi/linux/hyper_dmabuf.h and libc alone. It is linked
# statically, so that it runs as it is in every domain's initramfs
# (mk/50-vm.mk installs it; the share VM scenario runs it).
#
#   make c-example   target/c/hdmabuf-example; `make test-host` builds it
#
# The header itself is checked against the Rust definitions by
# common/tests/c_header.rs, part of `cargo test`.

C_EXAMPLE := target/c/hdmabuf-example
C_EXAMPLE_CFLAGS := -std=c11 -O2 -Wall -Wextra -Werror -pedantic -Iinclude/uapi

.PHONY: c-example
c-example: $(C_EXAMPLE)
test-host: c-example

$(C_EXAMPLE): examples/c/hdmabuf-example.c include/uapi/linux/hyper_dmabuf.h
	@echo "[c] $(CC) -static $< -> $@"
	@mkdir -p $(@D)
	@$(CC) $(C_EXAMPLE_CFLAGS) -static -o $@ $<
