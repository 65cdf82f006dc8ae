#!/bin/sh
# dracut initqueue/settled hook: attach the vboot disk once (vboot.attach=1 or root=/dev/nbd*).
# vboot.drive= takes a BIOS number or a kind (harddisk, cdrom, floppy).
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh
[ -e /tmp/vboot-attach.done ] && return 0 2>/dev/null
attach=$(getarg vboot.attach=)
case "$(getarg root=)" in
/dev/nbd*) [ -n "$attach" ] || attach=1 ;;
esac
[ "$attach" = "1" ] || { : > /tmp/vboot-attach.done; return 0 2>/dev/null; }
drive=$(getarg vboot.drive=); drive=${drive:-0x80}
timeout=$(getarg vboot.timeout=); timeout=${timeout:-30}
modprobe nbd nbds_max=4 max_part=16
if /sbin/vboot-attach --drive "$drive" --device /dev/nbd0 --timeout "$timeout"; then
	: > /tmp/vboot-attach.done
else
	warn "vboot-attach failed; the root filesystem inside the image is not available"
	: > /tmp/vboot-attach.done
fi
