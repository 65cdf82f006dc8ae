#!/bin/bash
# dracut module: give Linux back the disk vboot emulated at boot (see docs/handoff-table.md).
# The Debian package installs it in /usr/lib/dracut/modules.d/90vboot-attach/ with the binary in
# /usr/bin. By hand: copy this directory there, the binary to /usr/local/sbin/vboot-attach.
# Then `dracut -f --add vboot-attach`.
check() {
	require_binaries vboot-attach || return 1
	return 255 # only when asked for with --add
}
depends() {
	return 0
}
installkernel() {
	instmods nbd
}
install() {
	inst_binary "$(command -v vboot-attach)" /sbin/vboot-attach
	# After udev has settled, before the root device is waited for (initqueue/finished).
	inst_hook initqueue/settled 50 "$moddir/vboot-attach.sh"
}
