//! What the tool learns from Linux: physical memory, the firmware's reserved ranges, the host
//! disk by its identity, and whether its partition is mounted.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vboot::handoff::{HostDisk, HostPartition, HostScheme};

/// Read physical memory with pread on /dev/mem (mmap is refused for some ranges; pread is not).
pub fn phys_reader(mem: &File) -> impl FnMut(u64, &mut [u8]) -> Result<(), String> + '_ {
    move |at, buf| mem.read_exact_at(buf, at).map_err(|e| format!("/dev/mem at {:#x}: {}", at, e))
}

/// The firmware's reserved ranges (base, length): /sys/firmware/memmap, else /proc/iomem's
/// top-level "Reserved" lines.
pub fn reserved_ranges() -> Result<Vec<(u64, u64)>, String> {
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir("/sys/firmware/memmap") {
        for e in dir.flatten() {
            let p = e.path();
            let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
            if read("type").trim() == "Reserved" {
                if let (Some(a), Some(b)) = (hex(&read("start")), hex(&read("end"))) {
                    out.push((a, b + 1 - a));
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
    }
    let iomem = fs::read_to_string("/proc/iomem").map_err(|e| format!("/proc/iomem: {}", e))?;
    for line in iomem.lines().filter(|l| !l.starts_with(' ')) {
        if let Some((range, kind)) = line.split_once(" : ") {
            if kind.trim() == "Reserved" {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Some(a), Some(b)) = (hex(a), hex(b)) {
                        out.push((a, b + 1 - a));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(String::from("neither /sys/firmware/memmap nor /proc/iomem lists a reserved range"));
    }
    Ok(out)
}

/// A block device that may be the host disk.
#[derive(Debug)]
pub struct Found {
    pub name: String,
    pub dev: PathBuf,
    /// The partition whose start and length match the table's, if the kernel lists one.
    pub partition: Option<String>,
}

fn read_sector(dev: &Path, lba: u64) -> Option<[u8; 512]> {
    let f = File::open(dev).ok()?;
    let mut s = [0u8; 512];
    f.read_exact_at(&mut s, lba * 512).ok()?;
    Some(s)
}

fn sys_u64(p: PathBuf) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether the disk `name` (in /sys/block) carries the host disk's identity (MBR signature or GPT
/// disk GUID), and whether its size is the one the BIOS reported.
fn matches(name: &str, host: &HostDisk) -> (bool, bool) {
    let size_ok = sys_u64(Path::new("/sys/block").join(name).join("size")) == Some(host.sectors);
    let dev = Path::new("/dev").join(name);
    let Some(s0) = read_sector(&dev, 0) else { return (false, size_ok) };
    let id_ok = match host.scheme {
        HostScheme::Mbr => vboot::part::has_boot_signature(&s0) && u32::from_le_bytes(s0[0x1B8..0x1BC].try_into().unwrap()) == host.mbr_signature,
        HostScheme::Gpt => read_sector(&dev, 1).is_some_and(|h| &h[..8] == b"EFI PART" && h[56..72] == host.disk_guid),
    };
    (id_ok, size_ok)
}

fn partition_of(name: &str, part: &HostPartition) -> Option<String> {
    let dir = fs::read_dir(Path::new("/sys/block").join(name)).ok()?;
    dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|p| p.starts_with(name)).find(|p| {
        let base = Path::new("/sys/block").join(name).join(p);
        sys_u64(base.join("start")) == Some(part.start_lba) && sys_u64(base.join("size")) == Some(part.sectors)
    })
}

/// Find the host disk by its identity and size, waiting up to `timeout` for it to appear.
pub fn find_host_disk(host: &HostDisk, part: &HostPartition, timeout: Duration) -> Result<Found, String> {
    let start = Instant::now();
    loop {
        // Identity and size first; a BIOS may report a slightly different size (a host
        // protected area, a USB bridge), so the identity alone will do if it is unique.
        let (mut hits, mut id_only) = (Vec::new(), Vec::new());
        for e in fs::read_dir("/sys/block").map_err(|e| format!("/sys/block: {}", e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["nbd", "loop", "ram", "zram", "dm-", "sr"].iter().any(|p| name.starts_with(p)) {
                continue;
            }
            match matches(&name, host) {
                (true, true) => hits.push(name),
                (true, false) => id_only.push(name),
                _ => {}
            }
        }
        if hits.is_empty() && id_only.len() == 1 && !(host.scheme == HostScheme::Mbr && host.mbr_signature == 0) {
            eprintln!(
                "vboot-attach: warning: /dev/{} has the host disk's identity but not the size the BIOS reported ({} sectors); using it",
                id_only[0], host.sectors
            );
            hits = id_only;
        }
        match hits.len() {
            1 => {
                let name = hits.pop().unwrap();
                let partition = partition_of(&name, part);
                return Ok(Found { dev: Path::new("/dev").join(&name), partition, name });
            }
            0 if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(200)),
            0 => {
                let id = match host.scheme {
                    HostScheme::Mbr => format!("MBR disk signature {:08x}", host.mbr_signature),
                    HostScheme::Gpt => format!("GPT disk GUID {}", vboot::part::format_guid(&host.disk_guid)),
                };
                return Err(format!(
                    "the host disk ({}, {} sectors; BIOS drive {:#04x} at boot) did not appear within {} s: is its driver \
                     (virtio_blk, ahci, nvme, usb-storage ...) loaded?",
                    id,
                    host.sectors,
                    host.bios_drive,
                    timeout.as_secs()
                ));
            }
            _ => return Err(format!("{} disks match the host disk's identity ({}); refusing to guess", hits.len(), hits.join(", "))),
        }
    }
}

/// The mount point of `dev_name` (a /sys/block name) if it is mounted read-write anywhere.
pub fn mounted_read_write(dev_name: &str) -> Option<String> {
    let sys = Path::new("/sys/class/block").join(dev_name).join("dev");
    let majmin = fs::read_to_string(sys).ok()?.trim().to_string();
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 5 && f[2] == majmin && f[5].split(',').any(|o| o == "rw")).then(|| f[4].to_string())
    })
}

/// The mount point of `dev_name` (a /sys/block name) if it is mounted at all (`--direct`: the
/// dm table needs the host partition unclaimed).
pub fn mounted(dev_name: &str) -> Option<String> {
    let (major, minor) = dev_numbers(dev_name)?;
    let majmin = format!("{}:{}", major, minor);
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 5 && f[2] == majmin).then(|| f[4].to_string())
    })
}

/// The (major, minor) of block device `dev_name` (a /sys/class/block name: `vda1`, `nbd0`).
pub fn dev_numbers(dev_name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string(Path::new("/sys/class/block").join(dev_name).join("dev")).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
