#!/bin/bash
# dracut module: give Linux back the disk vboot emulated at boot (see docs/vboot-attach.md).
# The Debian package installs it in /usr/lib/dracut/modules.d/90vboot-attach/ with the binary in
# /usr/bin. By hand: copy this directory there, the binary to /usr/local/sbin/vboot-attach.
# Then `dracut -f` (tested with Debian 12's dracut 059, systemd in the initramfs).
check() {
	# In every initramfs once vboot-attach is installed, as the initramfs-tools hook is: the
	# scripts do nothing unless the command line asks (vboot.attach=1 or root=/dev/nbd*).
	require_binaries vboot-attach || return 1
	return 0
}
depends() {
	echo rootfs-block
	return 0
}
installkernel() {
	# The host disk's driver and the root filesystem come with a generic initramfs (Debian's
	# default); in hostonly mode name them in add_drivers+= / filesystems+=.
	instmods nbd
}
install() {
	inst_binary "$(command -v vboot-attach)" /sbin/vboot-attach
	inst_script "$moddir/vboot-attach.sh" /sbin/vboot-attach-dracut
	inst_hook cmdline 90 "$moddir/parse-vboot-attach.sh"
	# With systemd in the initramfs, dracut-initqueue.service (which runs the attach) only
	# starts when this file exists.
	dracut_need_initqueue
}
