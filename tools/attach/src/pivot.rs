//! The pivot (`vboot-attach --pivot FILE`, issue 17): what the server checks before it serves
//! the image through the host filesystem instead of the raw host-disk sectors, and the messages of
//! the control channel between `--pivot` and the server (docs/vboot-attach.md, "The pivot").
//! Everything here is pure (no system calls), for the unit tests; the system side is in the
//! program's `control.rs`.

use vboot::fs::Extent;

const SECTOR_BYTES: u64 = 512;

/// The abstract Unix socket name (no file: it survives the initramfs's switch-root) of the server
/// of `device` (/dev/nbdN): `vboot-attach/nbdN`.
pub fn socket_name(device: &str) -> String {
    format!("vboot-attach/{}", device.trim_start_matches("/dev/"))
}

/// `extents` clipped to the first `sectors` sectors of the file, in file order, neighbours that
/// continue each other (in the file and on the disk) merged: two lists that put every sector of
/// the file at the same host sector normalise to the same list, however they were split.
pub fn normalise(extents: &[Extent], sectors: u64) -> Vec<Extent> {
    let mut v: Vec<Extent> = extents
        .iter()
        .filter(|e| e.sectors > 0 && e.file_sector < sectors)
        .map(|e| Extent { file_sector: e.file_sector, lba: e.lba, sectors: e.sectors.min(sectors - e.file_sector) })
        .collect();
    v.sort_by_key(|e| e.file_sector);
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if l.file_sector + l.sectors == e.file_sector && l.lba + l.sectors == e.lba => l.sectors += e.sectors,
            _ => out.push(e),
        }
    }
    out
}

/// The host sector holding file sector `s`, if any extent maps it.
fn host_sector(list: &[Extent], s: u64) -> Option<u64> {
    list.iter().find(|e| s >= e.file_sector && s < e.file_sector + e.sectors).map(|e| e.lba + (s - e.file_sector))
}

/// Whether the filesystem's extents of a file (`found`, from FIEMAP, in host-disk sectors) put
/// every sector of its `size_bytes` where the hand-off table's `table` does. Contiguous pieces
/// split differently compare equal; the extents past the file's last sector (the rest of a
/// cluster or block) are not compared. The error names the first file sector that differs.
pub fn compare_extents(table: &[Extent], found: &[Extent], size_bytes: u64) -> Result<(), String> {
    let sectors = size_bytes.div_ceil(SECTOR_BYTES);
    let (t, f) = (normalise(table, sectors), normalise(found, sectors));
    if t == f && t.iter().map(|e| e.sectors).sum::<u64>() == sectors {
        return Ok(());
    }
    // Between two consecutive extent boundaries both maps are linear, so the first difference is
    // at a boundary of one of them.
    let mut points: Vec<u64> = std::iter::once(0).chain(t.iter().chain(f.iter()).flat_map(|e| [e.file_sector, e.file_sector + e.sectors])).filter(|&p| p < sectors).collect();
    points.sort_unstable();
    let at = |o: Option<u64>| o.map_or_else(|| String::from("nowhere"), |l| format!("host sector {}", l));
    for p in points {
        let (a, b) = (host_sector(&t, p), host_sector(&f, p));
        if a != b || a.is_none() {
            return Err(format!("file sector {} is at {} in the hand-off table but at {} on the filesystem", p, at(a), at(b)));
        }
    }
    Err(String::from("the extents differ"))
}

/// What the server tells a `--pivot` client when it connects: one line, tab-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// /dev/nbdN.
    pub device: String,
    /// The host partition's device number, `major:minor` as in /proc/self/mountinfo.
    pub partition: String,
    pub pivoted: bool,
    /// Whether the server writes the leaf (not read-only, not immutable): then the leaf must be
    /// opened read-write after the pivot.
    pub writes: bool,
    /// The table's paths of the chain's files, leaf first (from the host partition's root).
    pub layers: Vec<String>,
}

impl Hello {
    pub fn encode(&self) -> String {
        let mut f = vec![
            "hello",
            &self.device,
            &self.partition,
            if self.pivoted { "pivoted" } else { "raw" },
            if self.writes { "writes" } else { "reads" },
        ];
        f.extend(self.layers.iter().map(|s| s.as_str()));
        format!("{}\n", f.join("\t"))
    }

    pub fn decode(line: &str) -> Option<Hello> {
        let f: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        if f.len() < 6 || f[0] != "hello" {
            return None;
        }
        Some(Hello {
            device: f[1].to_string(),
            partition: f[2].to_string(),
            pivoted: f[3] == "pivoted",
            writes: f[4] == "writes",
            layers: f[5..].iter().map(|s| s.to_string()).collect(),
        })
    }
}

/// One mount of the host partition, from /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the filesystem mounted there (`/` unless a bind mount of a subtree).
    pub root: String,
    pub point: String,
    pub read_write: bool,
    /// The per-mount options (`rw,nosuid,relatime` ...), kept on a remount.
    pub options: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn under(path: &str, dir: &str) -> Option<String> {
    if dir == "/" {
        return path.starts_with('/').then(|| path.to_string());
    }
    let rest = path.strip_prefix(dir)?;
    match rest {
        "" => Some(String::from("/")),
        r if r.starts_with('/') => Some(r.to_string()),
        _ => None,
    }
}

/// The mount of device `majmin` through which the absolute, canonical `path` is reached (the
/// longest mount point above it), if any.
pub fn mount_of(mountinfo: &str, majmin: &str, path: &str) -> Option<Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 5 && f[2] == majmin).then(|| Mount {
                root: unescape(f[3]),
                point: unescape(f[4]),
                read_write: f[5].split(',').any(|o| o == "rw"),
                options: f[5].split(',').map(String::from).collect(),
            })
        })
        .filter(|m| under(path, &m.point).is_some())
        .max_by_key(|m| m.point.len())
}

fn join(dir: &str, rest: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), rest.trim_start_matches('/'))
}

/// The path of `path` (reached through `mount`) from the root of the filesystem: what the table
/// calls it.
pub fn path_in_filesystem(mount: &Mount, path: &str) -> Option<String> {
    under(path, &mount.point).map(|rest| join(&mount.root, &rest))
}

/// Where the table's `table_path` (from the filesystem's root) is through `mount`; `None` when
/// the mount shows only a subtree that does not hold it.
pub fn path_through_mount(mount: &Mount, table_path: &str) -> Option<String> {
    under(table_path, &mount.root).map(|rest| join(&mount.point, &rest))
}

/// Paths compared as the table's paths are (`vboot::image::chain::find_listed`): normalised,
/// without case (FAT, NTFS and exFAT ignore case; stage2 found the file by this name).
pub fn same_path(a: &str, b: &str) -> bool {
    vboot::image::chain::normalize(a).eq_ignore_ascii_case(&vboot::image::chain::normalize(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(file_sector: u64, lba: u64, sectors: u64) -> Extent {
        Extent { file_sector, lba, sectors }
    }

    #[test]
    fn equal_extents_compare_equal() {
        let t = [x(0, 1000, 64), x(64, 5000, 64), x(128, 3000, 10)];
        assert_eq!(compare_extents(&t, &t, 138 * 512), Ok(()));
        // Out of order in the list, same map.
        assert_eq!(compare_extents(&t, &[t[2], t[0], t[1]], 138 * 512), Ok(()));
    }

    #[test]
    fn split_differently_but_same_sectors_compare_equal() {
        // The table merged what FIEMAP reports as several pieces (one per cluster, say).
        let t = [x(0, 1000, 64), x(64, 5000, 8)];
        let f = [x(0, 1000, 8), x(8, 1008, 8), x(16, 1016, 48), x(64, 5000, 4), x(68, 5004, 4)];
        assert_eq!(compare_extents(&t, &f, 72 * 512), Ok(()));
        assert_eq!(compare_extents(&f, &t, 72 * 512), Ok(()));
    }

    #[test]
    fn past_the_last_sector_is_not_compared() {
        // 1000 bytes: two sectors; the filesystem's block goes on to 8 sectors, the table's
        // cluster to 4.
        assert_eq!(compare_extents(&[x(0, 1000, 4)], &[x(0, 1000, 8)], 1000), Ok(()));
        assert!(compare_extents(&[x(0, 1000, 4)], &[x(0, 1000, 1)], 1000).is_err(), "the second sector is missing");
    }

    #[test]
    fn shifted_extents_differ_and_name_the_sector() {
        let t = [x(0, 1000, 64), x(64, 5000, 64)];
        let f = [x(0, 1000, 64), x(64, 5001, 64)];
        let e = compare_extents(&t, &f, 128 * 512).unwrap_err();
        assert_eq!(e, "file sector 64 is at host sector 5000 in the hand-off table but at host sector 5001 on the filesystem");
        // The whole file elsewhere (another file).
        let e = compare_extents(&t, &[x(0, 9000, 128)], 128 * 512).unwrap_err();
        assert!(e.starts_with("file sector 0 is at host sector 1000"), "{}", e);
        // A piece in the middle elsewhere: found though both lists start alike.
        let f = [x(0, 1000, 32), x(32, 7000, 32), x(64, 5000, 64)];
        let e = compare_extents(&t, &f, 128 * 512).unwrap_err();
        assert!(e.starts_with("file sector 32 is at host sector 1032"), "{}", e);
    }

    #[test]
    fn holes_and_short_lists_differ() {
        let t = [x(0, 1000, 64)];
        let e = compare_extents(&t, &[x(0, 1000, 16), x(32, 1032, 32)], 64 * 512).unwrap_err();
        assert_eq!(e, "file sector 16 is at host sector 1016 in the hand-off table but at nowhere on the filesystem");
        // The file grew since boot: the table does not cover it (the size is checked before, this
        // is the last line of defence).
        assert!(compare_extents(&t, &[x(0, 1000, 80)], 80 * 512).is_err());
        assert!(compare_extents(&[], &[], 512).is_err());
    }

    #[test]
    fn hello_round_trip() {
        let h = Hello {
            device: "/dev/nbd0".into(),
            partition: "254:1".into(),
            pivoted: false,
            writes: true,
            layers: vec!["/vm/child vm.vhd".into(), "/vm/base.vhd".into()],
        };
        assert_eq!(Hello::decode(&h.encode()), Some(h.clone()));
        assert_eq!(Hello::decode("refused\tno"), None);
        assert_eq!(socket_name("/dev/nbd3"), "vboot-attach/nbd3");
    }

    const MOUNTINFO: &str = "22 1 0:20 / / rw,relatime - rootfs rootfs rw
30 22 254:1 / /host ro,nosuid,relatime - vfat /dev/vda1 ro,fmask=0022
31 22 254:1 /vm /images\\040dir rw,relatime - vfat /dev/vda1 rw
32 30 254:2 / /host/other rw - ext4 /dev/vda2 rw
";

    #[test]
    fn mounts_and_paths() {
        let m = mount_of(MOUNTINFO, "254:1", "/host/vm/x.vhd").unwrap();
        assert_eq!((m.root.as_str(), m.point.as_str(), m.read_write), ("/", "/host", false));
        assert_eq!(m.options, ["ro", "nosuid", "relatime"]);
        assert_eq!(path_in_filesystem(&m, "/host/vm/x.vhd").as_deref(), Some("/vm/x.vhd"));
        assert_eq!(path_through_mount(&m, "/vm/base.vhd").as_deref(), Some("/host/vm/base.vhd"));
        // A bind mount of /vm, with a space in its mount point.
        let b = mount_of(MOUNTINFO, "254:1", "/images dir/x.vhd").unwrap();
        assert_eq!((b.root.as_str(), b.point.as_str(), b.read_write), ("/vm", "/images dir", true));
        assert_eq!(path_in_filesystem(&b, "/images dir/x.vhd").as_deref(), Some("/vm/x.vhd"));
        assert_eq!(path_through_mount(&b, "/vm/base.vhd").as_deref(), Some("/images dir/base.vhd"));
        assert_eq!(path_through_mount(&b, "/other/base.vhd"), None, "outside the bind mount");
        // Another device's mount, or a path on no mount of the partition.
        assert_eq!(mount_of(MOUNTINFO, "254:1", "/host/other/x.vhd").map(|m| m.point), Some("/host".to_string()));
        assert_eq!(mount_of(MOUNTINFO, "254:1", "/hostx/x.vhd"), None);
        assert_eq!(mount_of(MOUNTINFO, "254:9", "/host/vm/x.vhd"), None);
        assert!(same_path("/VM/./X.vhd", "/vm/x.VHD"));
        assert!(!same_path("/vm/y.vhd", "/vm/x.vhd"));
    }
}
