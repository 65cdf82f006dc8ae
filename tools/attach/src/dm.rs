//! The device-mapper ioctls (linux/dm-ioctl.h) on /dev/mapper/control, for `--direct`: create a
//! device, load a table, suspend and resume it, ask its open count, remove it. Spoken directly so that an
//! initramfs needs no `dmsetup`. Every `unsafe` of `--direct` is in this module.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// `struct dm_ioctl`: the header of every request and answer.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    /// The whole buffer's size, this header included.
    data_size: u32,
    /// Where the payload starts, from the start of this header.
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    /// The device's dev_t, in the kernel's "huge" encoding (see [`decode_dev`]).
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);

/// `struct dm_target_spec`, followed by its NUL-terminated parameters.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// From the start of this spec to the next one.
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

const HEADER_BYTES: usize = std::mem::size_of::<DmIoctl>();
const SPEC_BYTES: usize = std::mem::size_of::<DmTargetSpec>();

/// Interface 4.x: the kernel accepts any minor up to its own.
const DM_VERSION: [u32; 3] = [4, 0, 0];
const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_SUSPEND_FLAG: u32 = 1 << 1;
const DM_SKIP_LOCKFS_FLAG: u32 = 1 << 10;

/// _IOWR(0xfd, nr, struct dm_ioctl).
const fn dm_request(nr: u32) -> u32 {
    (3 << 30) | ((HEADER_BYTES as u32) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: u32 = dm_request(3);
const DM_DEV_REMOVE: u32 = dm_request(4);
const DM_DEV_SUSPEND: u32 = dm_request(6);
const DM_DEV_STATUS: u32 = dm_request(7);
const DM_TABLE_LOAD: u32 = dm_request(9);

/// One target of a table: start and length in sectors, type (`linear`), parameters.
pub struct TargetLine {
    pub start_sector: u64,
    pub sectors: u64,
    pub target_type: &'static str,
    pub params: String,
}

/// /dev/mapper/control, open.
pub struct Control(File);

impl Control {
    pub fn open() -> Result<Control, String> {
        OpenOptions::new().read(true).write(true).open("/dev/mapper/control").map(Control).map_err(|e| {
            format!("opening /dev/mapper/control: {} (load the device-mapper module: modprobe dm-mod, or insmod dm-mod.ko; create the node with mknod /dev/mapper/control c 10 236 if there is no devtmpfs)", e)
        })
    }

    /// One request: the header for `name` with `flags` and `target_count`, then `payload`.
    /// Gives the kernel's answer header.
    fn call(&self, request: u32, name: &str, flags: u32, target_count: u32, payload: &[u8]) -> io::Result<DmIoctl> {
        if name.len() >= DM_NAME_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the name {} is too long for device-mapper", name)));
        }
        // u64s so that the buffer, and the target specs at 8-byte offsets in it, are aligned;
        // room after the payload for the kernel's answer.
        let bytes = HEADER_BYTES + payload.len().max(4096);
        let mut buf = vec![0u64; bytes.div_ceil(8)];
        let mut header = DmIoctl {
            version: DM_VERSION,
            data_size: (buf.len() * 8) as u32,
            data_start: HEADER_BYTES as u32,
            target_count,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        header.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `buf` holds at least HEADER_BYTES + payload.len() bytes (sized above) and is
        // 8-byte aligned, which DmIoctl (align 8) needs; the payload goes after the header,
        // within the buffer.
        unsafe {
            std::ptr::write(buf.as_mut_ptr() as *mut DmIoctl, header);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), (buf.as_mut_ptr() as *mut u8).add(HEADER_BYTES), payload.len());
        }
        // SAFETY: the request takes a pointer to a dm_ioctl of `data_size` bytes, which `buf`
        // is, alive and writable for the call; the kernel writes no more than data_size.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, buf.as_mut_ptr()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the buffer starts with the (answered) header, aligned, every bit pattern valid.
        Ok(unsafe { std::ptr::read(buf.as_ptr() as *const DmIoctl) })
    }

    /// A new device without a table: its (major, minor).
    pub fn create(&self, name: &str) -> io::Result<(u32, u32)> {
        let answer = self.call(DM_DEV_CREATE, name, 0, 0, &[])?;
        Ok(decode_dev(answer.dev))
    }

    /// Load `targets` as the device's next table (read-only: the table opens its devices
    /// read-only and refuses writes).
    pub fn load(&self, name: &str, targets: &[TargetLine], read_only: bool) -> io::Result<()> {
        let mut payload = Vec::new();
        for t in targets {
            if t.target_type.len() >= DM_MAX_TYPE_NAME {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "target type name too long"));
            }
            // The spec, the parameters and their NUL, padded to 8 bytes.
            let size = (SPEC_BYTES + t.params.len() + 1).div_ceil(8) * 8;
            let mut spec = DmTargetSpec { sector_start: t.start_sector, length: t.sectors, status: 0, next: size as u32, target_type: [0; DM_MAX_TYPE_NAME] };
            spec.target_type[..t.target_type.len()].copy_from_slice(t.target_type.as_bytes());
            let at = payload.len();
            payload.resize(at + size, 0);
            // SAFETY: `spec` is a plain #[repr(C)] value; viewing its SPEC_BYTES bytes is
            // reading initialized memory (it has no padding: 8+8+4+4+16).
            let spec_bytes = unsafe { std::slice::from_raw_parts(&spec as *const DmTargetSpec as *const u8, SPEC_BYTES) };
            payload[at..at + SPEC_BYTES].copy_from_slice(spec_bytes);
            payload[at + SPEC_BYTES..at + SPEC_BYTES + t.params.len()].copy_from_slice(t.params.as_bytes());
        }
        let flags = if read_only { DM_READONLY_FLAG } else { 0 };
        self.call(DM_TABLE_LOAD, name, flags, targets.len() as u32, &payload).map(|_| ())
    }

    /// Hold the device's I/O (those in flight finish first) so that a loaded table can replace
    /// the live one at [`Self::resume`]. The filesystem on it is not frozen (the tables
    /// exchanged read the same data).
    pub fn suspend(&self, name: &str) -> io::Result<()> {
        self.call(DM_DEV_SUSPEND, name, DM_SUSPEND_FLAG | DM_SKIP_LOCKFS_FLAG, 0, &[]).map(|_| ())
    }

    /// Make the loaded table live (DM_DEV_SUSPEND without the suspend flag is "resume").
    pub fn resume(&self, name: &str) -> io::Result<()> {
        self.call(DM_DEV_SUSPEND, name, 0, 0, &[]).map(|_| ())
    }

    /// How many openers the device has (a mount is one).
    pub fn open_count(&self, name: &str) -> io::Result<i32> {
        Ok(self.call(DM_DEV_STATUS, name, 0, 0, &[])?.open_count)
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.call(DM_DEV_REMOVE, name, 0, 0, &[]).map(|_| ())
    }
}

/// The kernel's huge_encode_dev: minor's low 8 bits, major, minor's high bits.
fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// A block device node `path` for (major, minor), made when nothing (no udev) made it: an
/// existing node is left alone.
pub fn make_node(path: &str, major: u32, minor: u32) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
        return Ok(());
    }
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is a NUL-terminated path alive for the call; mknod reads nothing else of ours.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(major, minor)) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // udev made it meanwhile.
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// Remove the node `path` if it is the block device (major, minor) (one we made; udev removes
/// its own).
pub fn remove_node(path: &str, major: u32, minor: u32) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_block_device() && m.rdev() == libc::makedev(major, minor) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_and_dev_decoding_match_the_kernel() {
        // dm-ioctl.h as strace prints them: DM_DEV_CREATE is 0xc138fd03, DM_TABLE_LOAD 0xc138fd09.
        assert_eq!(DM_DEV_CREATE, 0xc138fd03);
        assert_eq!(DM_TABLE_LOAD, 0xc138fd09);
        assert_eq!(DM_DEV_SUSPEND, 0xc138fd06);
        // 254:0 and 253:300.
        assert_eq!(decode_dev(0xfe00), (254, 0));
        assert_eq!(decode_dev((253 << 8) | (300 & 0xff) | ((300 & !0xff) << 12)), (253, 300));
    }
}
