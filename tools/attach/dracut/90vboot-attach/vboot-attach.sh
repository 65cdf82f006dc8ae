#!/bin/sh
# Run once from dracut's initqueue (queued by parse-vboot-attach.sh): serve the emulated drive
# on /dev/nbd0. vboot.drive=0x80 (a BIOS number or a kind: harddisk, cdrom, floppy) and vboot.timeout=30 (seconds to wait for the host disk) are
# passed on. vboot-attach stays as @vboot-attach, which systemd spares at shutdown.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
drive=$(getarg vboot.drive=)
timeout=$(getarg vboot.timeout=)
info "vboot-attach: attaching drive ${drive:-0x80} on /dev/nbd0"
# Out of dracut-initqueue.service's cgroup into the root one, where the server is under
# initramfs-tools too (started before systemd): stopping the unit at switch-root must not reach it.
echo $$ > /sys/fs/cgroup/cgroup.procs 2> /dev/null
if ! modprobe nbd nbds_max=4 max_part=16; then
	warn "vboot-attach: cannot load the nbd module"
# The server's messages go to the console: the journal it would write to stops at switch-root.
elif ! /sbin/vboot-attach --netlink --drive "${drive:-0x80}" --device /dev/nbd0 --timeout "${timeout:-30}" 2> /dev/console; then
	warn "vboot-attach failed: the root filesystem inside the image is not available"
fi
: > /tmp/vboot-attach.done
