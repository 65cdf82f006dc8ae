#!/bin/sh
# dracut cmdline hook: when the command line asks for it (vboot.attach=1, or root=/dev/nbd*
# without vboot.attach=0), queue the attach for when udev has settled (the host disk's driver
# is loaded by then) and keep the initqueue waiting until it was tried, so root=/dev/nbd0p2 or
# root=UUID=... of a filesystem inside the image is found.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
vboot_attach=$(getarg vboot.attach=)
case "$(getarg root=)" in
/dev/nbd*) [ -n "$vboot_attach" ] || vboot_attach=1 ;;
esac
if [ "$vboot_attach" = "1" ]; then
	/sbin/initqueue --settled --onetime --unique --name vboot-attach /sbin/vboot-attach-dracut
	echo '[ -e /tmp/vboot-attach.done ]' > "$hookdir/initqueue/finished/vboot-attach.sh"
fi
unset vboot_attach
